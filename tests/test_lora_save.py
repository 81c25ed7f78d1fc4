"""LoRA adapters saved from a model sharded by FSDP2 with activation checkpointing (the wrapping of
sft/configs/fsdp.yaml), on the CPU with two gloo processes: peft's own save keeps no weight there (the
empty adapter seen on a GPU), steca.training.lora_save keeps every one, whole, under the keys peft loads."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import warnings
from pathlib import Path

import pytest
import torch

from training_fixtures import nano_model

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow(seconds=40)
def test_fsdp2_lora_adapter_is_saved_whole_and_loads(alfworld_sft_sample, tmp_path_factory, tmp_path):
    from peft import PeftModel
    from peft.utils import get_peft_model_state_dict
    from transformers import AutoModelForCausalLM

    base = nano_model(tmp_path_factory, alfworld_sft_sample)
    torchrun = shutil.which("torchrun")
    assert torchrun, "torchrun (torch's launcher) is not on PATH"
    proc = subprocess.run([torchrun, "--standalone", "--nproc_per_node", "2", str(REPO / "tests" / "lora_save_worker.py"),
                           str(base), str(tmp_path)], cwd=REPO, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{REPO / 'tests'}"})
    assert proc.returncode == 0, proc.stderr[-4000:]
    facts = json.loads((tmp_path / "facts.json").read_text())
    # the setting of the GPU failure: wrapped layers, LoRA weights split over the two ranks, and peft's own
    # filter keeping nothing of the gathered state dict
    assert facts["wrapped"] and facts["sharded_lora_weights"] > 0 and facts["peft_kept"] == 0, facts
    expected = torch.load(tmp_path / "expected.pt")
    assert facts["lora_weights"] == len(expected) == 3 * 2 * 2  # 3 modules x (A, B) x 2 layers

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), str(tmp_path / "adapter"))
    assert not [w for w in caught if "missing adapter keys" in str(w.message)]
    got = get_peft_model_state_dict(loaded)
    assert sorted(got) == sorted(expected)
    for key, value in expected.items():
        assert torch.equal(got[key], value), key


def test_merge_in_new_process_ignores_the_run_environment(alfworld_sft_sample, tmp_path_factory, tmp_path, monkeypatch):
    """The merge after training runs in a process of its own, without the launcher's variables (inside a ZeRO-3
    run the base model loads partitioned and the merge fails): same model as merging here; a failure names the
    adapter and the command to rerun."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from steca.training.merge_lora import merge_in_new_process, merge_lora

    base = nano_model(tmp_path_factory, alfworld_sft_sample)
    peft_model = get_peft_model(AutoModelForCausalLM.from_pretrained(base), LoraConfig(r=4, target_modules=["q_proj"]))
    for name, param in peft_model.named_parameters():
        if "lora_" in name:
            param.data = torch.randn(param.shape, generator=torch.Generator().manual_seed(len(name)))
    peft_model.save_pretrained(tmp_path / "adapter")
    here = AutoModelForCausalLM.from_pretrained(merge_lora(tmp_path / "adapter", tmp_path / "here")).state_dict()
    for name, value in {"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1", "MASTER_ADDR": "10.255.255.1",
                        "MASTER_PORT": "1", "ACCELERATE_USE_DEEPSPEED": "true"}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    there = AutoModelForCausalLM.from_pretrained(merge_in_new_process(tmp_path / "adapter", tmp_path / "there")).state_dict()
    assert sorted(here) == sorted(there) and all(torch.equal(here[k], there[k]) for k in here)
    assert not torch.equal(here["model.layers.0.self_attn.q_proj.weight"],
                           AutoModelForCausalLM.from_pretrained(base).state_dict()["model.layers.0.self_attn.q_proj.weight"])

    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "adapter_config.json").write_text('{"base_model_name_or_path": ""}')
    with pytest.raises(RuntimeError, match="broken.*rerun by hand"):
        merge_in_new_process(tmp_path / "broken", tmp_path / "none")
