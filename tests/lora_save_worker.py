"""One rank of tests/test_lora_save.py (run by torchrun on the CPU with gloo): a nano model with LoRA, each
decoder layer in an activation-checkpoint wrapper and sharded by FSDP2, as accelerate prepares it with
sft/configs/fsdp.yaml; then the adapter saved by peft's own save and by steca.training.lora_save.

The rank ends by dropping the model and the device mesh (they hold the process group), closing the group the
trainers' way, and leaving with ``os._exit``: a gloo group torn down during interpreter finalization can abort
the process after its work is done ("terminate called without an active exception", seen in about 1 of 40
launches under load on 2 cores), which would fail this test on a correctly saved adapter."""
from __future__ import annotations

import gc
import json
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist


def main(base: str, out: str) -> None:
    from peft import LoraConfig, get_peft_model, get_peft_model_state_dict
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import (apply_activation_checkpointing,
                                                                             checkpoint_wrapper)
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    from transformers import AutoModelForCausalLM

    from steca.training.lora_save import lora_weights, write_adapter
    from steca.training.trainer_setup import close_process_group

    dist.init_process_group("gloo")
    rank = dist.get_rank()
    torch.manual_seed(0)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base),
                           LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"]))
    for name, param in model.named_parameters():  # "trained" LoRA weights, the same on every rank
        if "lora_" in name:
            param.data = torch.randn(param.shape, generator=torch.Generator().manual_seed(len(name)))
    expected = {k: v.clone() for k, v in get_peft_model_state_dict(model).items()}
    layer_cls = type(model.base_model.model.model.layers[0])
    apply_activation_checkpointing(model, checkpoint_wrapper_fn=checkpoint_wrapper,
                                   auto_wrap_policy=lambda module, recurse, nonwrapped_numel: recurse or isinstance(module, layer_cls))
    mesh = init_device_mesh("cpu", (dist.get_world_size(),))
    for module in model.modules():
        if isinstance(module, layer_cls):
            fully_shard(module, mesh=mesh)
    fully_shard(model, mesh=mesh)
    sharded = [n for n, p in model.named_parameters() if "lora_" in n and p.to_local().shape != p.shape]
    full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    peft_kept = get_peft_model_state_dict(model, state_dict=full)  # what peft's save_pretrained writes here
    weights = lora_weights(model)
    if rank == 0:
        write_adapter(model, weights, Path(out) / "adapter")
        torch.save(expected, Path(out) / "expected.pt")
        Path(out, "facts.json").write_text(json.dumps({
            "wrapped": any("_checkpoint_wrapped_module" in n for n, _ in model.named_modules()),
            "sharded_lora_weights": len(sharded), "peft_kept": len(peft_kept), "lora_weights": len(weights)}))
    del model, full, peft_kept, weights, mesh
    gc.collect()
    close_process_group()


def run(base: str, out: str) -> None:
    """:func:`main`, then leave at once (no interpreter finalization): the files are written and closed."""
    try:
        main(base, out)
    except BaseException:
        import traceback
        traceback.print_exc()
        sys.stderr.flush()
        os._exit(1)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    run(sys.argv[1], sys.argv[2])
