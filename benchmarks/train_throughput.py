"""Training throughput on CPU: tokens/s of SFT and of STeCa's reinforced training on the tiny model.

Both trainers run one epoch over the same N trajectories in one process (reinforced pairs are made
from them: prompt = instruction and first observation, chosen = the rest, beta = 0). Throughput =
tokens in the epoch (unpadded sequence lengths) / the trainer's ``train_runtime``.
A baseline for later work, not a target. Last line: ``tokens_per_s=<SFT tokens/s>``.

    python benchmarks/train_throughput.py [--sft_file ../shared/data/alfworld/alfworld_sft_sample.json]
        [--size tiny] [--n_records 32] [--batch_size 4] [--max_length 2048]
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_SFT = Path(os.environ.get("STECA_SHARED_DATA", REPO.parent / "shared" / "data")) / "alfworld" / "alfworld_sft_sample.json"


def main() -> None:
    import torch
    from transformers import TrainingArguments
    from trl import SFTConfig

    from steca.training.bootstrap import bootstrap_model, sft_texts
    from steca.training.trainer_setup import DataArguments, ModelArguments
    from steca.training.reinforced import ReinforcedArguments, train_reinforced
    from steca.training.sft import train_sft

    ap = argparse.ArgumentParser()
    ap.add_argument("--sft_file", default=str(DEFAULT_SFT))
    ap.add_argument("--size", default="tiny")
    ap.add_argument("--n_records", type=int, default=32)
    ap.add_argument("--batch_size", type=int, default=4)
    ap.add_argument("--max_length", type=int, default=2048)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)

    records = json.loads(Path(args.sft_file).read_text())[: args.n_records]
    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        model_dir = bootstrap_model(sft_texts(args.sft_file), t / "model", size=args.size)
        sft_file = t / "sft.json"
        sft_file.write_text(json.dumps(records))
        pair_file = t / "pairs.jsonl"
        with pair_file.open("w") as f:
            for r in records:
                c = r["conversations"]
                f.write(json.dumps({"id": r["id"], "prompt": c[:3], "chosen": c[3:], "rejected": [], "reward": 1.0}) + "\n")

        common = dict(per_device_train_batch_size=args.batch_size, num_train_epochs=1, learning_rate=1e-3,
                      report_to="none", save_strategy="no", logging_steps=1000, bf16=False,
                      gradient_checkpointing=False, use_cpu=True, disable_tqdm=True)
        from steca.training.trainer_setup import load_tokenizer
        from steca.training.reinforced import build_pair_dataset
        from steca.training.sft import build_sft_dataset

        tok = load_tokenizer(model_dir)
        sft_tokens = sum(len(x) for x in build_sft_dataset(sft_file, tok, args.max_length)["input_ids"])
        rl_tokens = sum(len(x) for x in build_pair_dataset(pair_file, tok, 512, args.max_length - 512)["chosen_input_ids"])

        cfg = SFTConfig(output_dir=str(t / "sft"), max_length=args.max_length, **common)
        sft = train_sft(ModelArguments(str(model_dir)), DataArguments(str(sft_file), resume="never"), cfg)
        sft_runtime = sft.train_runtime
        rl_cfg = TrainingArguments(output_dir=str(t / "rl"), lr_scheduler_type="constant", **common)
        rl = train_reinforced(ModelArguments(str(sft.output_dir)), DataArguments(str(pair_file), resume="never"),
                         ReinforcedArguments(max_prompt_length=512, max_target_length=args.max_length - 512), rl_cfg)
        rl_runtime = rl.train_runtime

    print(f"threads={torch.get_num_threads()} size={args.size} records={len(records)} batch={args.batch_size}")
    print(f"sft_tokens={sft_tokens} sft_seconds={sft_runtime:.2f}")
    print(f"reinforced_tokens={rl_tokens} reinforced_seconds={rl_runtime:.2f}")
    print(f"reinforced_tokens_per_s={rl_tokens / rl_runtime:.1f}")
    print(f"tokens_per_s={sft_tokens / sft_runtime:.1f}")


if __name__ == "__main__":
    main()
