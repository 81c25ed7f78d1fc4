"""Save a LoRA adapter from a model trained under FSDP2 with activation checkpointing.

peft finds an adapter's weights in a state dict by the names of the model's LoRA modules. Under
FSDP2 with activation checkpointing (``sft/configs/fsdp.yaml``), each decoder layer sits inside a
checkpoint wrapper, so those module names carry ``_checkpoint_wrapped_module.`` while the gathered
state dict's keys do not: peft's ``save_pretrained`` then keeps none of them and writes an adapter
file with no tensors. Merging that adapter gives back the base model. Seen on one H200 on 2026-12-04
(``scripts/gpu_smoke.sh``, step ``rl_fsdp_lora``: "0 tensors in the adapter file"); the CPU test
``tests/test_lora_save.py`` rebuilds the same wrapping.

Here the weights are taken by parameter name instead, gathered whole, and written in peft's adapter
format (``adapter_model.safetensors`` with the adapter name left out of each key, and
``adapter_config.json``), which ``PeftModel.from_pretrained`` loads.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

CHECKPOINT_WRAPPER_PREFIX = "_checkpoint_wrapped_module."


def lora_weights(model, adapter_name: str = "default") -> dict[str, Any]:
    """The adapter ``adapter_name``'s LoRA weights of ``model``, whole and on the CPU, keyed as peft's adapter
    file keys them (wrapper prefixes and the adapter name left out). A weight sharded by FSDP2 (a ``DTensor``) is
    gathered with ``full_tensor``, a collective: every process calls this."""
    from torch.distributed.tensor import DTensor

    marker = f".{adapter_name}."
    weights = {}
    for name, param in model.named_parameters():
        if ".lora_" not in name or marker not in name:
            continue
        whole = param.full_tensor() if isinstance(param, DTensor) else param
        key = name.replace(CHECKPOINT_WRAPPER_PREFIX, "").replace(marker, ".", 1)
        weights[key] = whole.detach().to("cpu", copy=True).contiguous()
    return weights


def write_adapter(peft_model, weights: dict[str, Any], adapter_dir: str | Path, adapter_name: str = "default") -> Path:
    """Write ``weights`` (from :func:`lora_weights`) and the adapter's config to ``adapter_dir`` (main process only)."""
    from safetensors.torch import save_file

    if not weights:
        raise ValueError(f"no LoRA weights of adapter {adapter_name!r} in the model; nothing to save to {adapter_dir}")
    out = Path(adapter_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_file(weights, str(out / "adapter_model.safetensors"), metadata={"format": "pt"})
    config = peft_model.peft_config[adapter_name]
    was_inference = config.inference_mode
    config.inference_mode = True  # as peft saves it
    try:
        config.save_pretrained(str(out))
    finally:
        config.inference_mode = was_inference
    logger.info("saved %d LoRA weights of adapter %r to %s", len(weights), adapter_name, out)
    return out
