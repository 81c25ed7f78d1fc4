"""IPR's training step (Xiong et al., EMNLP 2024, arXiv 2406.11176): outcome-level DPO + step-level DPO
+ SFT in one objective, on the file written by ``data_collection/data_baselines.py ipr``.

Each record is a pair record with a ``level`` extra (``outcome`` | ``step`` | ``sft``). The loss is
:func:`steca.training.preference_losses.ipr_loss`: DPO on the pairs, NLL per token on the SFT records,
each record scaled by ``lambda_k * N / N_k`` (:func:`~steca.training.preference_losses.level_scales`) so
that a batch estimates ``L_o-DPO + L_s-DPO + L_SFT`` whatever its mix. The reference policy is the
frozen starting model (the SFT agent in the first iteration): the log-probabilities of the outcome and
step pairs under it are computed once before training, in one process, and read from
``--ref_logps_file`` (:mod:`steca.training.reference_logps`, ``--ipr``), so every rank of an FSDP or
ZeRO-3 run uses the same correct values and no second model is held during training.

    python -m steca.training.ipr --model_name_or_path out/sft --data_path data/ipr.json \\
        --output_dir out/ipr --beta 0.1 --learning_rate 1e-6
"""
from __future__ import annotations

import logging
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch

from steca.records import load_pairs
from steca.training.trainer_setup import (DataArguments, ModelArguments, PairLengthArguments, TrainResult,
                                          load_model, load_tokenizer, load_trainable_model, parse_trainer_args,
                                          record_indices, reference_model_arguments, run_trainer_main,
                                          train_and_save)
from steca.training.losses import IGNORE_INDEX, sequence_logprobs
from steca.training.preference_losses import LEVEL_CODES, ipr_loss, level_scales
from steca.training.reference_logps import FILE_NAME as REF_FILE_NAME
from steca.training.reference_logps import attach_reference_logps, ref_logps_file_field
from steca.training.reinforced import PairCollator, _trainer_class, encode_pairs

logger = logging.getLogger(__name__)


@dataclass
class IPRArguments(PairLengthArguments):
    """Options of IPR's mixture objective (and the cuts of :class:`PairLengthArguments`)."""

    beta: float = field(default=0.1, metadata={"help": "DPO temperature of both preference levels"})
    outcome_weight: float = field(default=1.0, metadata={"help": "lambda of the outcome-level DPO term"})
    step_weight: float = field(default=1.0, metadata={"help": "lambda of the step-level DPO term"})
    sft_weight: float = field(default=1.0, metadata={"help": "lambda of the SFT term"})
    ref_model_name_or_path: str | None = field(default=None, metadata={
        "help": "reference model (default: --model_name_or_path)"})
    ref_logps_file: str | None = ref_logps_file_field()

    def weights(self) -> dict[str, float]:
        return {"outcome": self.outcome_weight, "step": self.step_weight, "sft": self.sft_weight}


def build_ipr_dataset(path: str | os.PathLike, tokenizer, args: IPRArguments, strict: bool = False,
                      skip_invalid: bool = False):
    """Tokenised IPR records (chosen and rejected sides, ``level`` code and ``scale``).

    A record without a known ``level`` is an error naming the file and the record.
    """
    from datasets import Dataset

    res = load_pairs(path, strict=strict, skip_invalid=skip_invalid)
    indices = record_indices(len(res.records), res.errors)
    rows, levels = [], []
    for rec, i in zip(res.records, indices):
        level = rec.extra.get("level")
        if level not in LEVEL_CODES:
            raise ValueError(f"{path}, record {i} (id={rec.id!r}), field 'level': expected one of "
                             f"{sorted(LEVEL_CODES)}, got {level!r}")
        enc = encode_pairs([rec], tokenizer, args.max_prompt_length, args.max_target_length, True, path, strict, [i],
                           args.max_length)
        if enc:
            rows.append({**enc[0], "level": LEVEL_CODES[level]})
            levels.append(level)
    if not rows:
        raise ValueError(f"{path}: no usable IPR record")
    scales = level_scales(Counter(levels), args.weights())
    for row, level in zip(rows, levels):
        row["scale"] = scales[level]
    logger.info("IPR records per level: %s; scales %s", dict(Counter(levels)), scales)
    return Dataset.from_list(rows)


@dataclass
class LevelCollator(PairCollator):
    """:class:`PairCollator` (chosen rows then rejected rows) plus each record's ``level`` and ``scale``."""

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        out = super().__call__(rows)
        out["level"] = torch.tensor([int(r["level"]) for r in rows], dtype=torch.long)
        out["scale"] = torch.tensor([float(r["scale"]) for r in rows], dtype=torch.float32)
        return out


def _ipr_trainer_class():
    base = _trainer_class()

    class IPRTrainer(base):
        """The reinforced trainer (stored reference log-probabilities) with IPR's mixture loss."""

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            b = inputs["level"].shape[0]
            out = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], use_cache=False)
            logps = sequence_logprobs(out.logits, inputs["labels"])
            ref = self._reference_logps(model, inputs)
            n_tokens = (inputs["labels"][:b, 1:] != IGNORE_INDEX).sum(-1)
            res = ipr_loss(inputs["level"], inputs["scale"], logps[:b], logps[b:], ref[:b], ref[b:], n_tokens,
                           self.beta)
            for name, value in res.level_means.items():
                self._pair_metrics[f"{name}_loss"].append(value)
            return (res.loss, out) if return_outputs else res.loss

    return IPRTrainer


def train_ipr(model_args: ModelArguments, data_args: DataArguments, ipr_args: IPRArguments, config,
              callbacks: list | None = None) -> TrainResult:
    """Run IPR's objective from ``model_args.model_name_or_path``; ``config`` is a ``transformers.TrainingArguments``."""
    tokenizer = load_tokenizer(model_args.model_name_or_path)
    dataset = build_ipr_dataset(data_args.data_path, tokenizer, ipr_args, data_args.strict_data,
                                data_args.skip_invalid)
    ref_args = reference_model_arguments(model_args, ipr_args.ref_model_name_or_path)
    dataset = attach_reference_logps(dataset, data_args.data_path, ref_args.model_name_or_path,
                                     ipr_args.ref_logps_file or Path(config.output_dir) / REF_FILE_NAME,
                                     lambda: load_model(ref_args), tokenizer.pad_token_id)
    config.remove_unused_columns = False
    trainer = _ipr_trainer_class()(model=load_trainable_model(model_args), args=config, train_dataset=dataset,
                                   processing_class=tokenizer, data_collator=LevelCollator(tokenizer.pad_token_id),
                                   beta=ipr_args.beta, callbacks=callbacks)
    return train_and_save(trainer, tokenizer, data_args.resume, config.output_dir, model_args.merge_lora)


def parse_args(argv: Sequence[str] | None = None):
    from transformers import TrainingArguments

    return parse_trainer_args((ModelArguments, DataArguments, IPRArguments, TrainingArguments),
                              {"num_train_epochs": 1.0}, argv)


def main(argv: Sequence[str] | None = None) -> TrainResult:
    return run_trainer_main(parse_args, train_ipr, "IPR training", argv)


if __name__ == "__main__":
    main()
