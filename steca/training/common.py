"""Pieces shared by the SFT, reinforced and DPO trainers: script arguments, model/tokenizer loading,
LoRA, checkpoint resume and saving a directory that ``AutoModelForCausalLM`` loads."""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

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
    resume: str = field(default="auto", metadata={
        "help": "auto: continue from the last checkpoint in output_dir if any; never; or a checkpoint path"})


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


def resolve_resume(resume: str, output_dir: str | os.PathLike) -> str | None:
    """The checkpoint to resume from: ``auto`` finds the last ``checkpoint-*`` in ``output_dir``."""
    from transformers.trainer_utils import get_last_checkpoint

    if resume == "never":
        return None
    if resume == "auto":
        if not Path(output_dir).is_dir():
            return None
        last = get_last_checkpoint(str(output_dir))
        if last:
            logger.info("resuming from %s", last)
        return last
    if not Path(resume).is_dir():
        raise FileNotFoundError(f"--resume {resume}: no such checkpoint directory")
    return resume


def save_final(trainer, tokenizer, output_dir: str | os.PathLike, merge_lora: bool = True) -> Path:
    """Save the trained model so that ``AutoModelForCausalLM.from_pretrained(output_dir)`` loads it.

    For a peft model the adapter goes to ``output_dir/adapter`` and, with ``merge_lora``, the merged
    full model to ``output_dir`` (merging needs the full weights on one process, so under ZeRO-3 or
    FSDP with LoRA set ``merge_lora`` false and merge the adapter afterwards).
    """
    out = Path(output_dir)
    model = trainer.model
    trainer.accelerator.unwrap_model(model).config.use_cache = True  # off for training only (load_model)
    try:
        from peft import PeftModel
        is_peft = isinstance(trainer.accelerator.unwrap_model(model), PeftModel)
    except ImportError:  # peft is optional
        is_peft = False
    if not is_peft:
        trainer.save_model(str(out))
        if trainer.is_world_process_zero():
            tokenizer.save_pretrained(out)
        return out
    trainer.save_model(str(out / "adapter"))
    if trainer.is_world_process_zero():
        tokenizer.save_pretrained(out / "adapter")
        if merge_lora:
            merged = trainer.accelerator.unwrap_model(model).merge_and_unload()
            merged.save_pretrained(out)
            tokenizer.save_pretrained(out)
            logger.info("saved the merged LoRA model to %s", out)
    return out


def apply_defaults(parser, defaults: dict[str, Any]) -> None:
    """Set parser defaults only for options the parser knows."""
    known = {a.dest for a in parser._actions}
    parser.set_defaults(**{k: v for k, v in defaults.items() if k in known})


def record_indices(n_records: int, errors: list) -> list[int]:
    """File positions of the records a lenient reader kept (the positions not named by its errors)."""
    bad = {e.index for e in errors if e.index is not None}
    return [i for i in range(n_records + len(bad)) if i not in bad][:n_records]

