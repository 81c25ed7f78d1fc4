"""Stage 1: supervised fine-tuning on expert trajectories (STeCa's SFT format), loss on assistant turns only.

Uses trl's ``SFTTrainer`` on a dataset we tokenise ourselves: each conversation is rendered with the
tokenizer's chat template and every token outside an assistant turn (instruction, observations,
role markers) gets label ``-100``; each assistant turn's tokens and its end-of-turn token are trained
(see :mod:`steca.training.chat`). All ``transformers``/``trl`` training options are accepted on the
command line (``--learning_rate``, ``--num_train_epochs``, ``--fsdp``, ``--deepspeed``, ...).

    python -m steca.training.sft --model_name_or_path models/tiny --data_path data/alfworld_sft.json \\
        --output_dir out/sft --num_train_epochs 3 --learning_rate 1e-3

Multi-GPU: ``accelerate launch --config_file sft/configs/fsdp.yaml -m steca.training.sft ...``.
An existing ``checkpoint-*`` in ``output_dir`` is resumed from (``--resume auto``, the default).
"""
from __future__ import annotations

import logging
import os
from typing import Sequence

from eval_agent.types import Message
from steca.records import RecordError, SFTRecord, load_sft
from steca.training.chat import EncodedChat, encode_chat, truncate_keep_start
from steca.training.trainer_setup import (DataArguments, ModelArguments, TrainResult, encode_records, load_model,
                                          load_tokenizer, lora_config, parse_trainer_args, record_indices,
                                          run_trainer_main, train_and_save)

logger = logging.getLogger(__name__)

# The character cut before tokenising keeps CHARS_PER_TOKEN characters per token wanted, and is
# widened until the kept text gives CUT_MARGIN tokens more than wanted (see encode_truncated).
CHARS_PER_TOKEN = 8
CUT_MARGIN = 64


def cut_messages(messages: Sequence[Message], max_chars: int) -> tuple[list[Message], bool]:
    """The first ``max_chars`` characters of the messages' texts (the message it ends in is cut);
    and whether anything was cut."""
    out: list[Message] = []
    used = 0
    for m in messages:
        room = max_chars - used
        if room <= 0:
            return out, True
        if len(m.content) > room:
            out.append(Message(m.role, m.content[:room]))
            return out, True
        out.append(m)
        used += len(m.content)
    return out, False


def encode_truncated(tokenizer, messages: Sequence[Message], max_length: int | None) -> EncodedChat:
    """The first ``max_length`` tokens (and labels) of :func:`~steca.training.chat.encode_chat`, without
    tokenising the whole of a long conversation: the text is cut by characters first, and the cut is
    widened until it yields ``CUT_MARGIN`` more tokens than kept, so the kept tokens are those of the
    whole conversation (memory stays bounded by ``max_length``, not by the record's size)."""
    if max_length is None:
        return encode_chat(tokenizer, messages)
    budget = max_length * CHARS_PER_TOKEN
    while True:
        kept, was_cut = cut_messages(messages, budget)
        enc = encode_chat(tokenizer, kept)
        if not was_cut or len(enc.input_ids) >= max_length + CUT_MARGIN:
            return truncate_keep_start(enc, max_length)
        budget *= 2


def encode_sft_records(records: Sequence[SFTRecord], tokenizer, max_length: int | None,
                       path: str | os.PathLike | None = None, strict: bool = False,
                       indices: Sequence[int] | None = None) -> list[EncodedChat]:
    """Tokenise SFT records with assistant-only labels; a record the template rejects, or with nothing
    left to train after truncation, is skipped with a warning naming it (or raises with ``strict``)."""
    def encode(rec: SFTRecord, i: int) -> EncodedChat:
        try:
            enc = encode_truncated(tokenizer, rec.conversations, max_length)
        except Exception as e:  # the chat template refused the conversation (e.g. roles do not alternate)
            raise RecordError(path, i, "conversations", f"cannot render with the chat template: {e}", rec.id) from e
        if enc.n_trained == 0:
            raise RecordError(path, i, "conversations", "no assistant token left to train after truncation "
                              f"to {max_length} tokens", rec.id)
        return enc

    return encode_records(records, encode, path, strict, indices, "SFT data")


def build_sft_dataset(path: str | os.PathLike, tokenizer, max_length: int | None = None, strict: bool = False,
                      skip_invalid: bool = False):
    """A ``datasets.Dataset`` with ``input_ids`` and ``labels`` from an SFT file.

    Malformed records are skipped with a warning naming the file, record and field (``strict``:
    raise the first). Raises ``ValueError`` naming the file when no usable record is left.
    """
    from datasets import Dataset

    res = load_sft(path, strict=strict, skip_invalid=skip_invalid)
    encoded = encode_sft_records(res.records, tokenizer, max_length, path, strict,
                                 record_indices(len(res.records), res.errors))
    n_bad = len(res.errors) + len(res.records) - len(encoded)
    if n_bad:
        logger.warning("%s: %d of %d record(s) skipped", path, n_bad, len(res.records) + len(res.errors))
    if not encoded:
        raise ValueError(f"{path}: no usable SFT record")
    return Dataset.from_dict({"input_ids": [e.input_ids for e in encoded], "labels": [e.labels for e in encoded]})


def train_sft(model_args: ModelArguments, data_args: DataArguments, config, callbacks: list | None = None) -> TrainResult:
    """Run SFT with trl's ``SFTTrainer``; ``config`` is a ``trl.SFTConfig``. Resumes per ``data_args.resume``."""
    from trl import SFTTrainer

    tokenizer = load_tokenizer(model_args.model_name_or_path)
    dataset = build_sft_dataset(data_args.data_path, tokenizer, config.max_length, data_args.strict_data,
                                data_args.skip_invalid)
    logger.info("SFT of %s on %d conversations of %s, %d tokens, %d trained", model_args.model_name_or_path,
                len(dataset), data_args.data_path, sum(len(x) for x in dataset["input_ids"]), sum(sum(1 for t in x if t != -100) for x in dataset["labels"]))
    model = load_model(model_args)
    trainer = SFTTrainer(model=model, args=config, train_dataset=dataset, processing_class=tokenizer,
                         peft_config=lora_config(model_args), callbacks=callbacks)
    return train_and_save(trainer, tokenizer, data_args.resume, config.output_dir, model_args.merge_lora)


def parse_args(argv: Sequence[str] | None = None):
    from trl import SFTConfig

    return parse_trainer_args((ModelArguments, DataArguments, SFTConfig), {"max_length": 4096}, argv)


def main(argv: Sequence[str] | None = None) -> TrainResult:
    return run_trainer_main(parse_args, train_sft, "SFT", argv)


if __name__ == "__main__":
    main()
