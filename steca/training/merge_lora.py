"""Merge a saved LoRA adapter into its base model and save a plain model directory.

``steca.training.trainer_setup.save_final`` calls it at the end of every LoRA training run (the main
process, once every process has saved the adapter), so the sharded FSDP / ZeRO-3 training weights are
never merged in place. By hand, after a run with ``--merge_lora false``:

    python -m steca.training.merge_lora --adapter_dir out/sft/adapter --output_dir out/sft_merged \\
        [--base_model_name_or_path models/Llama-2-7b-chat-hf] [--dtype bfloat16]
"""
from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Sequence

from steca.training.trainer_setup import torch_dtype

logger = logging.getLogger(__name__)


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
