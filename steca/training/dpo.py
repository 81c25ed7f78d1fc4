"""The paper's "SFT + DPO" comparison: trl's ``DPOTrainer`` on the same pair files as STeCa.

trl tokenises conversational pairs itself and scores every completion token, observations
included. To compare like with like, we hand it pairs tokenised by :mod:`steca.training.chat`
and a collator whose ``completion_mask`` marks only the continuation's assistant tokens (each
with its end-of-turn token); the DPO loss, the reference model (a frozen copy, or the disabled
adapter with LoRA) and everything else are trl's. The record's ``reward`` is not used (DPO has no
per-pair weight).

    python -m steca.training.dpo --model_name_or_path out/sft --data_path data/steca_pairs.json \\
        --output_dir out/dpo --beta 0.1 --learning_rate 5e-7
"""
from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch

from steca.records import load_pairs
from steca.training.chat import IGNORE_INDEX
from steca.training.trainer_setup import (CPU_FRIENDLY_DEFAULTS, DataArguments, ModelArguments, apply_defaults,
                                   load_model, load_tokenizer, lora_config, record_indices, resolve_resume,
                                   save_final)
from steca.training.reinforced import TrainResult, encode_pairs

logger = logging.getLogger(__name__)

MASK_COLUMNS = ("chosen_train_mask", "rejected_train_mask")


@dataclass
class DPODataArguments:
    """Length limits of the tokenised pairs."""

    max_prompt_length: int = 512
    max_target_length: int = 3072


def split_shared_prompt(row: dict[str, Any]) -> dict[str, Any]:
    """``prompt_ids`` (shared by both sides, up to the first trained token), ``chosen_ids``/``rejected_ids``
    and 0/1 train masks over them, from :func:`encode_pairs` output with rejected sequences."""
    c_ids, c_lab = row["chosen_input_ids"], row["chosen_labels"]
    r_ids, r_lab = row["rejected_input_ids"], row["rejected_labels"]
    n = 0
    limit = min(len(c_ids), len(r_ids))
    while n < limit and c_ids[n] == r_ids[n] and c_lab[n] == IGNORE_INDEX and r_lab[n] == IGNORE_INDEX:
        n += 1
    return {
        "prompt_ids": c_ids[:n], "chosen_ids": c_ids[n:], "rejected_ids": r_ids[n:],
        "chosen_train_mask": [int(x != IGNORE_INDEX) for x in c_lab[n:]],
        "rejected_train_mask": [int(x != IGNORE_INDEX) for x in r_lab[n:]],
    }


def build_dpo_dataset(path: str | os.PathLike, tokenizer, max_prompt_length: int | None = 512,
                      max_target_length: int | None = 3072, strict: bool = False, skip_invalid: bool = False):
    from datasets import Dataset

    res = load_pairs(path, strict=strict, skip_invalid=skip_invalid)
    rows = encode_pairs(res.records, tokenizer, max_prompt_length, max_target_length, True, path, strict,
                        record_indices(len(res.records), res.errors))
    if not rows:
        raise ValueError(f"{path}: no usable training pair")
    return Dataset.from_list([split_shared_prompt(r) for r in rows])


def _pad(seqs: list[list[int]], value: int) -> torch.Tensor:
    n = max(len(s) for s in seqs)
    return torch.tensor([s + [value] * (n - len(s)) for s in seqs], dtype=torch.long)


@dataclass
class AssistantOnlyPreferenceCollator:
    """trl's preference batch layout (chosen rows, then rejected rows) with ``completion_mask`` set on
    the continuation's assistant tokens only."""

    pad_token_id: int

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        ids = [e["prompt_ids"] + e["chosen_ids"] for e in examples] + \
              [e["prompt_ids"] + e["rejected_ids"] for e in examples]
        masks = [[0] * len(e["prompt_ids"]) + list(e["chosen_train_mask"]) for e in examples] + \
                [[0] * len(e["prompt_ids"]) + list(e["rejected_train_mask"]) for e in examples]
        out = {"input_ids": _pad(ids, self.pad_token_id), "attention_mask": _pad([[1] * len(s) for s in ids], 0),
               "completion_mask": _pad(masks, 0)}
        for key in ("ref_chosen_logps", "ref_rejected_logps"):
            if key in examples[0]:
                out[key] = torch.tensor([e[key] for e in examples])
        return out


def _trainer_class():
    from trl import DPOTrainer

    class AssistantOnlyDPOTrainer(DPOTrainer):
        """``DPOTrainer`` that takes our pre-tokenised pairs as they are."""

        def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
            if "prompt_ids" in next(iter(dataset)):
                return dataset
            return super()._prepare_dataset(dataset, processing_class, args, dataset_name)

        def _set_signature_columns_if_needed(self):
            super()._set_signature_columns_if_needed()
            self._signature_columns = list(self._signature_columns) + list(MASK_COLUMNS)

    return AssistantOnlyDPOTrainer


def train_dpo(model_args: ModelArguments, data_args: DataArguments, dpo_data: DPODataArguments, config,
              callbacks: list | None = None) -> TrainResult:
    """Run trl's DPO on a pair file; ``config`` is a ``trl.DPOConfig``."""
    tokenizer = load_tokenizer(model_args.model_name_or_path)
    dataset = build_dpo_dataset(data_args.data_path, tokenizer, dpo_data.max_prompt_length,
                                dpo_data.max_target_length, data_args.strict_data,
                                data_args.skip_invalid)
    logger.info("DPO on %d pairs (beta=%g)", len(dataset), config.beta)
    model = load_model(model_args)
    peft_cfg = lora_config(model_args)
    ref_model = None
    if peft_cfg is None:
        ref_model = load_model(model_args)
    trainer = _trainer_class()(model=model, ref_model=ref_model, args=config, train_dataset=dataset,
                               processing_class=tokenizer, peft_config=peft_cfg, callbacks=callbacks,
                               data_collator=AssistantOnlyPreferenceCollator(tokenizer.pad_token_id))
    run = trainer.train(resume_from_checkpoint=resolve_resume(data_args.resume, config.output_dir))
    out = save_final(trainer, tokenizer, config.output_dir, model_args.merge_lora)
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return TrainResult(Path(out), trainer.state.global_step, losses, float(run.metrics.get('train_runtime', 0.0)))


def parse_args(argv: Sequence[str] | None = None):
    from transformers import HfArgumentParser
    from trl import DPOConfig

    parser = HfArgumentParser((ModelArguments, DataArguments, DPODataArguments, DPOConfig))
    apply_defaults(parser, {**CPU_FRIENDLY_DEFAULTS, "max_length": None, "num_train_epochs": 1.0})
    return parser.parse_args_into_dataclasses(args=list(argv) if argv is not None else None)


def main(argv: Sequence[str] | None = None) -> TrainResult:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    model_args, data_args, dpo_data, config = parse_args(argv if argv is not None else sys.argv[1:])
    result = train_dpo(model_args, data_args, dpo_data, config)
    logger.info("DPO done: %d steps, model saved to %s", result.global_step, result.output_dir)
    return result


if __name__ == "__main__":
    main()
