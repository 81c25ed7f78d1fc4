"""Merge a saved LoRA adapter into its base model and save a plain model directory.

``steca.training.trainer_setup.save_final`` calls it at the end of every LoRA training run (the main
process, once every process has saved the adapter), so the sharded FSDP / ZeRO-3 training weights are
never merged in place. It runs in a Python process of its own (:func:`merge_in_new_process`): inside a
ZeRO-3 run, transformers loads every model partitioned, so the base model's weights are empty there and
the merge fails ("The size of tensor a (0) must match ...", seen on one H200 on 2026-12-04). By hand,
after a run with ``--merge_lora false``:

    python -m steca.training.merge_lora --adapter_dir out/sft/adapter --output_dir out/sft_merged \\
        [--base_model_name_or_path models/Llama-2-7b-chat-hf] [--dtype bfloat16]
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Sequence

from steca.training.trainer_setup import torch_dtype

logger = logging.getLogger(__name__)

# the launcher's variables that describe the distributed run; the merge process gets none of them
RUN_ENV_NAMES = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "GROUP_RANK", "ROLE_RANK", "MASTER_ADDR",
                 "MASTER_PORT", "TORCHELASTIC_RUN_ID")
RUN_ENV_PREFIXES = ("ACCELERATE_", "FSDP_", "TORCHELASTIC_")


def merge_lora(adapter_dir: str | Path, output_dir: str | Path, base_model: str | None = None,
               dtype: str = "auto") -> Path:
    """Load ``base_model`` (default: the adapter's ``base_model_name_or_path``), apply the adapter,
    merge it into the weights and save model + tokenizer to ``output_dir``."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from steca.training.trainer_setup import load_tokenizer

    adapter_dir = Path(adapter_dir)
    cfg_path = adapter_dir / "adapter_config.json"
    if not cfg_path.is_file():
        raise FileNotFoundError(f"{cfg_path}: no adapter_config.json (is {adapter_dir} a LoRA adapter directory?)")
    base = base_model or json.loads(cfg_path.read_text()).get("base_model_name_or_path")
    if not base:
        raise ValueError(f"{cfg_path}: field 'base_model_name_or_path' is empty; pass --base_model_name_or_path")
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch_dtype(dtype))
    merged = PeftModel.from_pretrained(model, str(adapter_dir)).merge_and_unload()
    out = Path(output_dir)
    merged.save_pretrained(out)
    tok_src = adapter_dir if (adapter_dir / "tokenizer_config.json").is_file() else Path(base)
    load_tokenizer(tok_src).save_pretrained(out)
    logger.info("merged %s into %s -> %s", adapter_dir, base, out)
    return out


def merge_in_new_process(adapter_dir: str | Path, output_dir: str | Path, base_model: str | None = None,
                         dtype: str = "auto") -> Path:
    """:func:`merge_lora` in a new Python process without the distributed run's environment variables
    (:data:`RUN_ENV_NAMES`, :data:`RUN_ENV_PREFIXES`), so that nothing of the training run (ZeRO-3's partitioned
    loading, the process group) reaches the merge."""
    command = [sys.executable, "-m", "steca.training.merge_lora", "--adapter_dir", str(adapter_dir),
               "--output_dir", str(output_dir), "--dtype", dtype]
    if base_model:
        command += ["--base_model_name_or_path", base_model]
    env = {k: v for k, v in os.environ.items() if k not in RUN_ENV_NAMES and not k.startswith(RUN_ENV_PREFIXES)}
    done = subprocess.run(command, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"merging the LoRA adapter {adapter_dir} failed (exit {done.returncode}); the adapter is "
                           f"saved: rerun by hand with\n  {' '.join(command)}")
    return Path(output_dir)


def main(argv: Sequence[str] | None = None) -> Path:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--adapter_dir", required=True)
    ap.add_argument("--output_dir", required=True)
    ap.add_argument("--base_model_name_or_path", default=None)
    ap.add_argument("--dtype", default="auto")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return merge_lora(args.adapter_dir, args.output_dir, args.base_model_name_or_path, args.dtype)


if __name__ == "__main__":
    main()
