"""Pieces shared by the SFT, reinforced and DPO trainers: script arguments, model/tokenizer loading,
LoRA, checkpoint resume and saving a directory that ``AutoModelForCausalLM`` loads."""
from __future__ import annotations

import json
import logging
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence, TypeVar

from steca.records import RecordError, log_summary
from steca.training.chat import RELEASED_MAX_LENGTH

logger = logging.getLogger(__name__)

R = TypeVar("R")
T = TypeVar("T")

# Trainer defaults that suit a CPU and the tiny model; the shell scripts pass the released GPU settings.
CPU_FRIENDLY_DEFAULTS: dict[str, Any] = {
    "bf16": False,
    "gradient_checkpointing": False,
    "report_to": "none",
    "save_strategy": "steps",
    "save_steps": 200,
    "save_total_limit": 2,
    "logging_steps": 5,
    "dataloader_num_workers": 0,
}


@dataclass
class ModelArguments:
    """Which model to start from and how to adapt it."""

    model_name_or_path: str = field(metadata={"help": "local HF model directory (bootstrap output, SFT output, Llama-2-7b-chat-hf)"})
    dtype: str = field(default="auto", metadata={"help": "auto | float32 | bfloat16 | float16"})
    attn_implementation: str | None = field(default=None, metadata={"help": "e.g. sdpa, eager, flash_attention_2"})
    use_lora: bool = field(default=False, metadata={"help": "train LoRA adapters (peft) instead of all weights"})
    lora_r: int = field(default=16)
    lora_alpha: int = field(default=32)
    lora_dropout: float = field(default=0.05)
    lora_target_modules: str = field(default="q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj",
                                     metadata={"help": "comma-separated module names"})
    merge_lora: bool = field(default=True, metadata={
        "help": "after LoRA training, save the merged full model in output_dir (adapter in output_dir/adapter)"})


@dataclass
class DataArguments:
    """The training file and how strictly to read it."""

    data_path: str = field(metadata={"help": "training file (JSON array or JSONL)"})
    strict_data: bool = field(default=False, metadata={
        "help": "stop at the first malformed record instead of skipping it with a warning"})
    skip_invalid: bool = field(default=False, metadata={
        "help": "drop records whose reward/weight is not finite or out of range (counted) instead of stopping"})
    resume: str = field(default="auto", metadata={
        "help": "auto: continue from the last checkpoint in output_dir if any; never; or a checkpoint path"})


PROMPT_CUT_HELP = "option, not released: keep only the prompt's last N tokens (released: whole prompt)"
TARGET_CUT_HELP = "option, not released: keep only the continuation's first N tokens"


@dataclass
class PairLengthArguments:
    """How the reinforced and IPR trainers cut a tokenised pair (see
    :func:`~steca.training.chat.encode_prompt_continuation`). DPO takes ``max_length`` from ``DPOConfig``
    and the other two from :func:`max_prompt_length_field` and :func:`max_target_length_field`."""

    max_length: int | None = field(default=RELEASED_MAX_LENGTH, metadata={
        "help": "prompt + continuation tokens kept (cut on the right); a longer prompt alone skips the record"})
    max_prompt_length: int | None = field(default=None, metadata={"help": PROMPT_CUT_HELP})
    max_target_length: int | None = field(default=None, metadata={"help": TARGET_CUT_HELP})


def max_prompt_length_field() -> Any:
    """:class:`PairLengthArguments`' ``max_prompt_length`` option, for an arguments class that cannot extend it."""
    return field(default=None, metadata={"help": PROMPT_CUT_HELP})


def max_target_length_field() -> Any:
    """:class:`PairLengthArguments`' ``max_target_length`` option, for an arguments class that cannot extend it."""
    return field(default=None, metadata={"help": TARGET_CUT_HELP})


def encode_records(records: Sequence[R], encode: Callable[[R, int], T], path: str | os.PathLike | None,
                   strict: bool = False, indices: Sequence[int] | None = None, what: str = "records") -> list[T]:
    """``encode(record, file_position)`` for every record; a record whose ``encode`` raises
    :class:`~steca.records.RecordError` is skipped (one summary warning) or, with ``strict``, stops the run."""
    from tqdm import tqdm

    out: list[T] = []
    skipped: list[RecordError] = []
    for k, rec in enumerate(tqdm(records, desc=f"tokenising {what}", disable=len(records) < 200)):
        try:
            out.append(encode(rec, indices[k] if indices is not None else k))
        except RecordError as e:
            if strict:
                raise
            skipped.append(e)
    log_summary(f"{path} (tokenising)", skipped, len(records))
    return out


@dataclass
class TrainResult:
    """What a finished training run produced (every trainer: SFT, reinforced, DPO, IPR)."""

    output_dir: Path
    global_step: int
    losses: list[float] = field(default_factory=list)
    train_runtime: float = 0.0


def torch_dtype(name: str):
    import torch

    if name == "auto":
        return "auto"
    try:
        return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]
    except KeyError:
        raise ValueError(f"--dtype must be auto, float32, bfloat16 or float16, got {name!r}") from None


def load_tokenizer(path: str | os.PathLike):
    """The model directory's tokenizer with a chat template and a pad token guaranteed."""
    from transformers import AutoTokenizer

    from steca.training.chat import ensure_chat_template

    tok = AutoTokenizer.from_pretrained(path)
    ensure_chat_template(tok)
    return tok


def load_model(args: ModelArguments):
    """``AutoModelForCausalLM`` from a local directory (no hub access is attempted for local paths)."""
    from transformers import AutoModelForCausalLM

    kwargs: dict[str, Any] = {"dtype": torch_dtype(args.dtype)}
    if args.attn_implementation:
        kwargs["attn_implementation"] = args.attn_implementation
    model = AutoModelForCausalLM.from_pretrained(args.model_name_or_path, **kwargs)
    # Training forwards never use a KV cache, and one built during a forward breaks activation
    # checkpointing's recompute (FSDP's ``fsdp_activation_checkpointing``: "Recomputed values ... have
    # different metadata"). The saved model gets ``use_cache`` back (see :func:`save_final`).
    model.config.use_cache = False
    return model


def lora_config(args: ModelArguments):
    """A peft ``LoraConfig`` for causal-LM training, or None when LoRA is off."""
    if not args.use_lora:
        return None
    from peft import LoraConfig

    return LoraConfig(r=args.lora_r, lora_alpha=args.lora_alpha, lora_dropout=args.lora_dropout,
                      target_modules=[m.strip() for m in args.lora_target_modules.split(",") if m.strip()],
                      task_type="CAUSAL_LM", bias="none")


def load_trainable_model(args: ModelArguments):
    """:func:`load_model`, wrapped in a peft LoRA model when ``args.use_lora`` (see :func:`lora_config`)."""
    model = load_model(args)
    peft_cfg = lora_config(args)
    if peft_cfg is None:
        return model
    from peft import get_peft_model

    return get_peft_model(model, peft_cfg)


def reference_model_arguments(args: ModelArguments, ref_model_name_or_path: str | None) -> ModelArguments:
    """The frozen reference model's arguments: ``ref_model_name_or_path`` (the policy's start when empty),
    loaded with the policy's dtype and attention implementation and never with LoRA."""
    return ModelArguments(model_name_or_path=ref_model_name_or_path or args.model_name_or_path,
                          dtype=args.dtype, attn_implementation=args.attn_implementation)


def checkpoint_problem(path: str | os.PathLike) -> str | None:
    """Why a ``checkpoint-N`` directory cannot be resumed from (torn by a crash while saving), or None.

    Cheap checks of what a crash leaves behind: ``trainer_state.json`` must parse, every
    safetensors file must have a complete header and data, every torch file (optimizer,
    scheduler, RNG states, ``.bin`` weights) must be a complete zip archive.
    """
    import zipfile

    p = Path(path)
    state = p / "trainer_state.json"
    if not state.is_file():
        return "no trainer_state.json"
    try:
        json.loads(state.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        return f"trainer_state.json is not readable JSON ({e})"
    for f in sorted(p.rglob("*.safetensors")):
        problem = _safetensors_problem(f)
        if problem:
            return f"{f.name}: {problem}"
    for f in sorted([*p.rglob("*.pt"), *p.rglob("*.pth"), *p.rglob("*.bin")]):
        try:
            with zipfile.ZipFile(f):
                pass
        except (zipfile.BadZipFile, OSError) as e:
            return f"{f.name}: incomplete ({e})"
    return None


def _safetensors_problem(path: Path) -> str | None:
    """The safetensors layout: an 8-byte header length, a JSON header, then exactly the tensors' bytes."""
    size = path.stat().st_size
    with path.open("rb") as f:
        head = f.read(8)
        if len(head) < 8:
            return "incomplete (no header)"
        n = int.from_bytes(head, "little")
        if n > size - 8:
            return "incomplete (header cut)"
        try:
            header = json.loads(f.read(n))
        except ValueError as e:
            return f"unreadable header ({e})"
    end = max((int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"), default=0)
    return None if 8 + n + end == size else f"incomplete ({size} bytes, {8 + n + end} expected)"


def resolve_resume(resume: str, output_dir: str | os.PathLike) -> str | None:
    """The checkpoint to resume from: ``auto`` takes the newest ``checkpoint-*`` in ``output_dir`` that
    passes :func:`checkpoint_problem`; a torn newer one (a crash while saving) is skipped with a warning."""
    if resume == "never":
        return None
    if resume == "auto":
        out = Path(output_dir)
        if not out.is_dir():
            return None
        steps = sorted((int(m.group(1)), d) for d in out.iterdir()
                       if d.is_dir() and (m := re.fullmatch(r"checkpoint-(\d+)", d.name)))
        for _, ckpt in reversed(steps):
            problem = checkpoint_problem(ckpt)
            if problem is None:
                logger.info("resuming from %s", ckpt)
                return str(ckpt)
            logger.warning("skipping checkpoint %s: %s (torn by an interrupted save?)", ckpt, problem)
        if steps:
            logger.warning("no checkpoint in %s can be resumed from; training starts from the model", out)
        return None
    if not Path(resume).is_dir():
        raise FileNotFoundError(f"--resume {resume}: no such checkpoint directory")
    return resume


# For tests only: when set, every rank writes a digest of its final weights there (multi-process checks).
RANK_DIGEST_ENV = "STECA_TEST_RANK_DIGEST_DIR"


def write_rank_digest(model, directory: str | os.PathLike) -> Path:
    """Write ``<directory>/rank<R>.json``: this process's rank and a sha256 of its parameters
    (sorted by name, float32 bytes), so a test can check that every rank ends with the same weights."""
    import hashlib
    import json

    import torch.distributed as dist

    rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
    digest = hashlib.sha256()
    for name, p in sorted(model.named_parameters()):
        digest.update(name.encode())
        digest.update(p.detach().float().cpu().numpy().tobytes())
    path = Path(directory) / f"rank{rank}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"rank": rank, "sha256": digest.hexdigest()}))
    return path


class NonFiniteWeightsError(RuntimeError):
    """Training produced NaN or infinite weights; the model is not saved."""


def first_nonfinite_parameter(model) -> str | None:
    """Name of the first parameter holding a NaN or an infinity (this process's shard), or None."""
    import torch

    for name, p in model.named_parameters():
        if p.numel() and not bool(torch.isfinite(p.detach()).all()):
            return name
    return None


def check_finite_weights(trainer, output_dir: str | os.PathLike) -> None:
    """Raise :class:`NonFiniteWeightsError` when any process's weights are not finite (all processes agree)."""
    import torch
    import torch.distributed as dist

    bad = first_nonfinite_parameter(trainer.model)
    if dist.is_available() and dist.is_initialized():
        flag = torch.tensor([0.0 if bad is None else 1.0], device=trainer.args.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        if flag.item() > 0 and bad is None:
            bad = "a parameter of another process"
    if bad is not None:
        raise NonFiniteWeightsError(f"training produced non-finite weights ({bad} holds NaN or inf); nothing was "
                                    f"saved to {output_dir}. Check the training data's rewards and the learning rate.")


def save_final(trainer, tokenizer, output_dir: str | os.PathLike, merge_lora: bool = True) -> Path:
    """Save the trained model so that ``AutoModelForCausalLM.from_pretrained(output_dir)`` loads it.

    For a peft model the adapter goes to ``output_dir/adapter`` (saved by the trainer, which gathers
    ZeRO-3 shards; under FSDP2 by :mod:`steca.training.lora_save`) and, with ``merge_lora``, the merged
    full model to ``output_dir``: once every process has saved, the main process alone loads the base
    model from disk, applies the saved adapter and merges it (:func:`steca.training.merge_lora.merge_lora`); the sharded training weights
    are never merged in place. Weights that are not finite are never saved (:class:`NonFiniteWeightsError`).
    """
    out = Path(output_dir)
    check_finite_weights(trainer, out)
    model = trainer.model
    trainer.accelerator.unwrap_model(model).config.use_cache = True  # off for training only (load_model)
    if os.environ.get(RANK_DIGEST_ENV):
        write_rank_digest(trainer.accelerator.unwrap_model(model), os.environ[RANK_DIGEST_ENV])
    try:
        from peft import PeftModel
        is_peft = isinstance(trainer.accelerator.unwrap_model(model), PeftModel)
    except ImportError:  # peft is optional
        is_peft = False
    if not is_peft:
        trainer.save_model(str(out))
        if trainer.is_world_process_zero():
            tokenizer.save_pretrained(out)
        trainer.accelerator.wait_for_everyone()  # no process returns before the model is on disk
        return out
    if trainer.accelerator.is_fsdp2:  # the Trainer's save writes an empty adapter there (lora_save.py)
        from steca.training.lora_save import lora_weights, write_adapter

        weights = lora_weights(model)  # every process: gathers the shards
        if trainer.is_world_process_zero():
            write_adapter(trainer.accelerator.unwrap_model(model), weights, out / "adapter")
    else:
        trainer.save_model(str(out / "adapter"))
    if trainer.is_world_process_zero():
        tokenizer.save_pretrained(out / "adapter")
    trainer.accelerator.wait_for_everyone()
    if merge_lora and trainer.is_world_process_zero():
        from steca.training.merge_lora import merge_in_new_process

        merge_in_new_process(out / "adapter", out)
        logger.info("saved the merged LoRA model to %s", out)
    trainer.accelerator.wait_for_everyone()
    return out


def apply_defaults(parser, arg_classes: tuple, defaults: dict[str, Any]) -> None:
    """Set parser defaults only for options that the dataclasses ``arg_classes`` (the parser's) declare."""
    import dataclasses

    known = {f.name for c in arg_classes for f in dataclasses.fields(c)}
    parser.set_defaults(**{k: v for k, v in defaults.items() if k in known})


def record_indices(n_records: int, errors: list) -> list[int]:
    """File positions of the records a lenient reader kept (the positions not named by its errors)."""
    bad = {e.index for e in errors if e.index is not None}
    return [i for i in range(n_records + len(bad)) if i not in bad][:n_records]



def train_and_save(trainer, tokenizer, resume: str, output_dir: str | os.PathLike,
                   merge_lora: bool = True) -> TrainResult:
    """Train (resuming per :func:`resolve_resume`), save with :func:`save_final` and report the run."""
    run = trainer.train(resume_from_checkpoint=resolve_resume(resume, output_dir))
    out = save_final(trainer, tokenizer, output_dir, merge_lora)
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return TrainResult(Path(out), trainer.state.global_step, losses, float(run.metrics.get("train_runtime", 0.0)))


def parse_trainer_args(arg_classes: tuple, defaults: dict[str, Any], argv: Sequence[str] | None = None) -> tuple:
    """``HfArgumentParser`` over ``arg_classes`` with :data:`CPU_FRIENDLY_DEFAULTS` updated by ``defaults``."""
    from transformers import HfArgumentParser

    parser = HfArgumentParser(arg_classes)
    apply_defaults(parser, arg_classes, {**CPU_FRIENDLY_DEFAULTS, **defaults})
    return parser.parse_args_into_dataclasses(args=list(argv) if argv is not None else None)


def run_trainer_main(parse_args: Callable[[Sequence[str]], tuple], train: Callable[..., TrainResult], name: str,
                     argv: Sequence[str] | None = None) -> TrainResult:
    """A trainer module's ``main``: set up logging, parse the command line, train, log where the model went."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    result = train(*parse_args(argv if argv is not None else sys.argv[1:]))
    logger.info("%s done: %d steps, model saved to %s", name, result.global_step, result.output_dir)
    close_process_group()
    return result


def close_process_group() -> None:
    """Wait for every process, then close the distributed process group, if one is open.

    Without it each rank tears its group down at interpreter exit, in no set order; a gloo rank whose
    peer has already closed its sockets can then abort (SIGABRT) after a successful run.
    """
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        rank = dist.get_rank()
        dist.barrier()
        dist.destroy_process_group()
        logger.info("rank %d closed the distributed process group", rank)
