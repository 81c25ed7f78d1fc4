"""Stage 4: STeCa's reinforced training on ``{id, prompt, chosen, rejected, reward}`` pair files.

Per pair the loss is ``reward * [ -log sigmoid(beta * delta) - lp(chosen) ]`` (see
:mod:`steca.training.losses`), with ``lp`` summed over the continuation's assistant tokens only.
``beta = 0`` (the released setting and our default) makes it a reward-weighted summed NLL of the
chosen continuation: no reference model is loaded and the rejected side is not even tokenised.
With ``beta > 0`` the reference is the frozen starting model (``--ref_model_name_or_path``, default the
start model); its log-probabilities are computed once before training in one process and read from
``--ref_logps_file`` (:mod:`steca.training.reference_logps`), so every rank of an FSDP or ZeRO-3 run
uses the same correct values and no second model is held during training.
``--no_reward_weighting`` gives the paper's "no reward weighting" ablation (every weight 1).

    python -m steca.training.reinforced --model_name_or_path out/sft --data_path data/steca_pairs.json \\
        --output_dir out/steca --learning_rate 3e-6 --num_train_epochs 1
"""
from __future__ import annotations

import logging
import os
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch

from steca.records import PairRecord, RecordError, load_pairs
from steca.training.chat import IGNORE_INDEX, RELEASED_MAX_LENGTH, PromptTooLongError, encode_prompt_continuation
from steca.training.trainer_setup import (DataArguments, ModelArguments, PairLengthArguments, TrainResult,
                                          encode_records, load_model, load_tokenizer, load_trainable_model,
                                          parse_trainer_args, record_indices, reference_model_arguments,
                                          run_trainer_main, train_and_save)
from steca.training.losses import sequence_logprobs, steca_loss
from steca.training.reference_logps import COLUMNS as REF_COLUMNS
from steca.training.reference_logps import FILE_NAME as REF_FILE_NAME
from steca.training.reference_logps import attach_reference_logps, ref_logps_file_field

logger = logging.getLogger(__name__)


@dataclass
class ReinforcedArguments(PairLengthArguments):
    """Options of STeCa's objective (and the cuts of :class:`PairLengthArguments`)."""

    beta: float = field(default=0.0, metadata={"help": "weight of the DPO term; 0 (released) = reward-weighted NLL"})
    no_reward_weighting: bool = field(default=False, metadata={"help": "ablation: every pair weighs 1"})
    ref_model_name_or_path: str | None = field(default=None, metadata={
        "help": "reference model for beta > 0 (default: --model_name_or_path)"})
    ref_logps_file: str | None = ref_logps_file_field()  # beta > 0 only


def encode_pairs(records: Sequence[PairRecord], tokenizer, max_prompt_length: int | None,
                 max_target_length: int | None, with_rejected: bool, path: str | os.PathLike | None = None,
                 strict: bool = False, indices: Sequence[int] | None = None,
                 max_length: int | None = None) -> list[dict[str, Any]]:
    """Tokenise pairs: ``chosen_input_ids``/``chosen_labels`` (and the rejected ones when asked) and ``reward``.

    Lengths as :func:`~steca.training.chat.encode_prompt_continuation` (released: whole prompt,
    concatenation cut on the right at ``max_length``). A pair whose prompt alone exceeds
    ``max_length``, that the chat template refuses, or with no chosen assistant token left after
    truncation is skipped with a warning naming its id (``strict``: raised).
    """
    def encode(rec: PairRecord, i: int) -> dict[str, Any]:
        row: dict[str, Any] = {"reward": float(rec.reward)}
        for side in ("chosen", "rejected") if with_rejected else ("chosen",):
            try:
                enc = encode_prompt_continuation(tokenizer, rec.prompt, getattr(rec, side), max_prompt_length,
                                                 max_target_length, max_length)
            except PromptTooLongError as e:
                raise RecordError(path, i, "prompt", f"{e}; the record is skipped (a prompt is never cut)",
                                  rec.id) from e
            except Exception as e:  # the chat template refused the conversation
                raise RecordError(path, i, side, f"cannot render with the chat template: {e}", rec.id) from e
            if side == "chosen" and enc.n_trained == 0:
                raise RecordError(path, i, "chosen", "no assistant token left to train after truncation", rec.id)
            row[f"{side}_input_ids"], row[f"{side}_labels"] = enc.input_ids, enc.labels
        return row

    return encode_records(records, encode, path, strict, indices, "pairs")


def build_pair_dataset(path: str | os.PathLike, tokenizer, max_prompt_length: int | None = None,
                       max_target_length: int | None = None, with_rejected: bool = False, strict: bool = False,
                       skip_invalid: bool = False, max_length: int | None = RELEASED_MAX_LENGTH):
    """A ``datasets.Dataset`` of tokenised pairs from a pair file (see :func:`encode_pairs`)."""
    from datasets import Dataset

    res = load_pairs(path, strict=strict, skip_invalid=skip_invalid)
    rows = encode_pairs(res.records, tokenizer, max_prompt_length, max_target_length, with_rejected, path, strict,
                        record_indices(len(res.records), res.errors), max_length)
    n_bad = len(res.errors) + len(res.records) - len(rows)
    if n_bad:
        logger.warning("%s: %d of %d record(s) skipped", path, n_bad, len(res.records) + len(res.errors))
    if not rows:
        raise ValueError(f"{path}: no usable training pair")
    return Dataset.from_list(rows)


def _pad(seqs: list[list[int]], value: int) -> torch.Tensor:
    n = max(len(s) for s in seqs)
    return torch.tensor([s + [value] * (n - len(s)) for s in seqs], dtype=torch.long)


@dataclass
class PairCollator:
    """Right-pads a batch; with rejected sequences, rows ``[0, B)`` are chosen and ``[B, 2B)`` rejected."""

    pad_token_id: int

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        ids = [r["chosen_input_ids"] for r in rows]
        labels = [r["chosen_labels"] for r in rows]
        if "rejected_input_ids" in rows[0]:
            ids += [r["rejected_input_ids"] for r in rows]
            labels += [r["rejected_labels"] for r in rows]
        out = {
            "input_ids": _pad(ids, self.pad_token_id),
            "attention_mask": _pad([[1] * len(s) for s in ids], 0),
            "labels": _pad(labels, IGNORE_INDEX),
            "reward": torch.tensor([float(r["reward"]) for r in rows], dtype=torch.float32),
        }
        if REF_COLUMNS[0] in rows[0]:  # stored reference log-probabilities (steca.training.reference_logps)
            out["ref_logps"] = torch.tensor([r[REF_COLUMNS[0]] for r in rows] + [r[REF_COLUMNS[1]] for r in rows],
                                            dtype=torch.float32)
        return out


def _trainer_class():
    from transformers import Trainer

    class ReinforcedTrainer(Trainer):
        """``transformers.Trainer`` whose loss is STeCa's objective on tokenised pairs (:class:`PairCollator`)."""

        def __init__(self, *args: Any, beta: float = 0.0, reward_weighting: bool = True,
                     ref_model: torch.nn.Module | None = None, **kwargs: Any):
            super().__init__(*args, **kwargs)
            self.beta = beta
            self.reward_weighting = reward_weighting
            self.ref_model = ref_model
            if ref_model is not None:
                self.ref_model = ref_model.to(self.args.device).eval()
                for p in self.ref_model.parameters():
                    p.requires_grad_(False)
            # our loss is a mean over pairs, not normalised by a token count: let Trainer divide by GA steps
            self.loss_is_scaled_for_ga = False
            self._pair_metrics: dict[str, list[float]] = defaultdict(list)

        def _reference_logps(self, model, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
            """``lp_ref`` of every row: the stored values when the batch has them, else a frozen forward."""
            if "ref_logps" in inputs:
                return inputs["ref_logps"].to(self.args.device)
            with torch.no_grad():
                if self.ref_model is not None:
                    logits = self.ref_model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"],
                                            use_cache=False).logits
                else:  # LoRA: the base model with the adapter switched off is the starting policy
                    unwrapped = self.accelerator.unwrap_model(model)
                    with unwrapped.disable_adapter():
                        logits = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"],
                                       use_cache=False).logits
                return sequence_logprobs(logits, inputs["labels"])

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            rewards = inputs["reward"]
            b = rewards.shape[0]
            out = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], use_cache=False)
            logps = sequence_logprobs(out.logits, inputs["labels"])
            if self.beta > 0:
                if logps.shape[0] != 2 * b:
                    raise ValueError("beta > 0 needs rejected sequences in the batch (build the dataset with_rejected)")
                ref = self._reference_logps(model, inputs)
                res = steca_loss(logps[:b], rewards, self.beta, logps[b:], ref[:b], ref[b:], self.reward_weighting)
            else:
                res = steca_loss(logps[:b], rewards, 0.0, reward_weighting=self.reward_weighting)
            self._pair_metrics["nll_chosen"].append(res.nll.detach().mean().item())
            if res.margin is not None:
                self._pair_metrics["margin"].append(res.margin.detach().mean().item())
                self._pair_metrics["preference_loss"].append(res.preference.detach().mean().item())
            return (res.loss, out) if return_outputs else res.loss

        def log(self, logs: dict[str, float], *args: Any, **kwargs: Any) -> None:
            for k, v in self._pair_metrics.items():
                if v:
                    logs[k] = sum(v) / len(v)
            self._pair_metrics.clear()
            super().log(logs, *args, **kwargs)

    return ReinforcedTrainer


def make_reinforced_trainer(model, tokenizer, train_dataset, args, beta: float = 0.0, reward_weighting: bool = True,
                            ref_model=None, callbacks: list | None = None):
    """A ``ReinforcedTrainer`` (``transformers.Trainer`` subclass) ready to ``train()``."""
    args.remove_unused_columns = False
    return _trainer_class()(model=model, args=args, train_dataset=train_dataset, processing_class=tokenizer,
                            data_collator=PairCollator(tokenizer.pad_token_id), beta=beta,
                            reward_weighting=reward_weighting, ref_model=ref_model, callbacks=callbacks)


def train_reinforced(model_args: ModelArguments, data_args: DataArguments, rl_args: ReinforcedArguments, config,
                     callbacks: list | None = None) -> TrainResult:
    """Run STeCa's reinforced training; ``config`` is a ``transformers.TrainingArguments``."""
    tokenizer = load_tokenizer(model_args.model_name_or_path)
    need_rejected = rl_args.beta > 0
    dataset = build_pair_dataset(data_args.data_path, tokenizer, rl_args.max_prompt_length,
                                 rl_args.max_target_length, need_rejected, data_args.strict_data,
                                 data_args.skip_invalid, rl_args.max_length)
    logger.info("reinforced training of %s on %d pairs of %s (beta=%g, reward weighting %s)",
                model_args.model_name_or_path, len(dataset), data_args.data_path, rl_args.beta,
                "off" if rl_args.no_reward_weighting else "on")
    if need_rejected:  # the reference is never loaded in the training processes (see reference_logps.py)
        ref_args = reference_model_arguments(model_args, rl_args.ref_model_name_or_path)
        dataset = attach_reference_logps(dataset, data_args.data_path, ref_args.model_name_or_path,
                                         rl_args.ref_logps_file or Path(config.output_dir) / REF_FILE_NAME,
                                         lambda: load_model(ref_args), tokenizer.pad_token_id)
    trainer = make_reinforced_trainer(load_trainable_model(model_args), tokenizer, dataset, config, rl_args.beta,
                                      not rl_args.no_reward_weighting, None, callbacks)
    return train_and_save(trainer, tokenizer, data_args.resume, config.output_dir, model_args.merge_lora)


def parse_args(argv: Sequence[str] | None = None):
    from transformers import TrainingArguments

    return parse_trainer_args((ModelArguments, DataArguments, ReinforcedArguments, TrainingArguments),
                              {"lr_scheduler_type": "constant_with_warmup", "warmup_steps": 0.1,
                               "num_train_epochs": 1.0}, argv)


def main(argv: Sequence[str] | None = None) -> TrainResult:
    return run_trainer_main(parse_args, train_reinforced, "reinforced training", argv)


if __name__ == "__main__":
    main()
