"""The paper's "SFT + DPO" comparison: trl's ``DPOTrainer`` on the same pair files as STeCa.

trl tokenises conversational pairs itself and scores every completion token, observations
included. To compare like with like, we hand it pairs tokenised by :mod:`steca.training.chat`
and a collator whose ``completion_mask`` marks only the continuation's assistant tokens (each
with its end-of-turn token). The reference log-probabilities are computed once before training
(:mod:`steca.training.reference_logps`, correct under FSDP and ZeRO-3); the DPO loss and everything
else are trl's (through :mod:`steca.training.trl_adapter`; with an untested trl, the same loss on
transformers' ``Trainer``). The record's ``reward`` is not used (DPO has no per-pair weight).

    python -m steca.training.dpo --model_name_or_path out/sft --data_path data/steca_pairs.json \\
        --output_dir out/dpo --beta 0.1 --learning_rate 5e-7
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch

from steca.records import load_pairs
from steca.training.chat import IGNORE_INDEX, RELEASED_MAX_LENGTH
from steca.training.trainer_setup import (DataArguments, ModelArguments, TrainResult, load_model, load_tokenizer,
                                          lora_config, max_prompt_length_field, max_target_length_field,
                                          parse_trainer_args, record_indices, run_trainer_main, train_and_save)
from steca.training.losses import sequence_logprobs
from steca.training.reference_logps import COLUMNS as REF_COLUMNS
from steca.training.reference_logps import FILE_NAME as REF_FILE_NAME
from steca.training.reference_logps import attach_reference_logps, ref_logps_file_field
from steca.training.reinforced import PairCollator, build_pair_dataset, encode_pairs
from steca.training.trl_adapter import pretokenised_dpo_trainer_class, trl_fast_path

logger = logging.getLogger(__name__)

MASK_COLUMNS = ("chosen_train_mask", "rejected_train_mask")


@dataclass
class DPODataArguments:
    """Options that cut the tokenised pairs beyond ``max_length`` (DPOConfig's, cut on the right).

    Both default to None, the released trainer's behaviour: prompt and continuation kept whole.
    """

    max_prompt_length: int | None = max_prompt_length_field()
    max_target_length: int | None = max_target_length_field()
    ref_logps_file: str | None = ref_logps_file_field()


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


def build_dpo_dataset(path: str | os.PathLike, tokenizer, max_prompt_length: int | None = None,
                      max_target_length: int | None = None, strict: bool = False, skip_invalid: bool = False,
                      max_length: int | None = RELEASED_MAX_LENGTH):
    from datasets import Dataset

    res = load_pairs(path, strict=strict, skip_invalid=skip_invalid)
    rows = encode_pairs(res.records, tokenizer, max_prompt_length, max_target_length, True, path, strict,
                        record_indices(len(res.records), res.errors), max_length)
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
    """trl's ``DPOTrainer`` on our pre-tokenised pairs (:mod:`steca.training.trl_adapter`'s fast path)."""
    return pretokenised_dpo_trainer_class(MASK_COLUMNS)


def _public_dpo_trainer_class():
    """DPO on transformers' public ``Trainer`` API, for a trl outside the tested range.

    Per pair ``l = -log sigmoid(beta * [(lp(y_w) - lp_ref(y_w)) - (lp(y_l) - lp_ref(y_l))])``
    (:func:`steca.training.preference_losses.dpo_loss`, trl's default ``sigmoid`` loss), mean over the
    batch, on the same assistant tokens and the same stored reference values as the trl path.
    """
    from steca.training.preference_losses import dpo_loss
    from steca.training.reinforced import _trainer_class as reinforced_trainer_class

    class PublicDPOTrainer(reinforced_trainer_class()):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            b = inputs["reward"].shape[0]
            out = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], use_cache=False)
            logps = sequence_logprobs(out.logits, inputs["labels"])
            ref = self._reference_logps(model, inputs)
            loss = dpo_loss(logps[:b], logps[b:], ref[:b], ref[b:], self.beta).mean()
            return (loss, out) if return_outputs else loss

    return PublicDPOTrainer


def to_trl_rows(pairs) -> "Any":
    """trl's tokenised preference rows (:func:`split_shared_prompt`) with the stored reference columns."""
    from datasets import Dataset

    rows = []
    for r in pairs:
        row = split_shared_prompt(r)
        for c in REF_COLUMNS:
            if c in r:
                row[c] = r[c]
        rows.append(row)
    return Dataset.from_list(rows)


def make_dpo_trainer(model, tokenizer, pairs, config, peft_cfg=None, callbacks: list | None = None, fast: bool | None = None):
    """A trainer for DPO on tokenised pairs with stored reference log-probabilities (``pairs``:
    :func:`~steca.training.reinforced.build_pair_dataset` output with rejected sides and the
    :mod:`~steca.training.reference_logps` columns): trl's ``DPOTrainer`` when :func:`trl_fast_path`,
    else the public-API trainer. ``fast`` forces one of them."""
    fast = trl_fast_path() if fast is None else fast
    if fast:
        config.precompute_ref_log_probs = True  # the stored columns (no reference model in training)
        return _trainer_class()(model=model, ref_model=None, args=config, train_dataset=to_trl_rows(pairs),
                                processing_class=tokenizer, peft_config=peft_cfg, callbacks=callbacks,
                                data_collator=AssistantOnlyPreferenceCollator(tokenizer.pad_token_id))
    if peft_cfg is not None:
        from peft import get_peft_model

        model = get_peft_model(model, peft_cfg)
    config.remove_unused_columns = False
    return _public_dpo_trainer_class()(model=model, args=config, train_dataset=pairs, processing_class=tokenizer,
                                       data_collator=PairCollator(tokenizer.pad_token_id), beta=config.beta,
                                       callbacks=callbacks)


def train_dpo(model_args: ModelArguments, data_args: DataArguments, dpo_data: DPODataArguments, config,
              callbacks: list | None = None) -> TrainResult:
    """Run DPO on a pair file; ``config`` is a ``trl.DPOConfig``. The reference log-probabilities are read
    from ``dpo_data.ref_logps_file`` (default ``output_dir/reference_logps.jsonl``; computed when missing
    in a one-process run)."""
    tokenizer = load_tokenizer(model_args.model_name_or_path)
    pairs = build_pair_dataset(data_args.data_path, tokenizer, dpo_data.max_prompt_length, dpo_data.max_target_length,
                               True, data_args.strict_data, data_args.skip_invalid, config.max_length)
    pairs = attach_reference_logps(pairs, data_args.data_path, model_args.model_name_or_path,
                                   dpo_data.ref_logps_file or Path(config.output_dir) / REF_FILE_NAME,
                                   lambda: load_model(model_args), tokenizer.pad_token_id)
    logger.info("DPO on %d pairs (beta=%g)", len(pairs), config.beta)
    trainer = make_dpo_trainer(load_model(model_args), tokenizer, pairs, config, lora_config(model_args), callbacks)
    return train_and_save(trainer, tokenizer, data_args.resume, config.output_dir, model_args.merge_lora)


def parse_args(argv: Sequence[str] | None = None):
    from trl import DPOConfig

    return parse_trainer_args((ModelArguments, DataArguments, DPODataArguments, DPOConfig),
                              {"max_length": RELEASED_MAX_LENGTH, "num_train_epochs": 1.0}, argv)


def main(argv: Sequence[str] | None = None) -> TrainResult:
    return run_trainer_main(parse_args, train_dpo, "DPO", argv)


if __name__ == "__main__":
    main()
