"""Shared helper of the training tests: one nano model per test session, bootstrapped from the
shared ALFWorld trajectories (the first 60, enough for a byte-level BPE of 1k tokens)."""
from __future__ import annotations

import json
from pathlib import Path

from steca.training.bootstrap import bootstrap_model, sft_texts


def nano_model(tmp_path_factory, alfworld_sft_sample: Path) -> Path:
    """Path of the session's nano model directory (built on first use)."""
    out = tmp_path_factory.getbasetemp() / "training_nano_model"
    if not (out / "model.safetensors").is_file():
        texts = sft_texts(alfworld_sft_sample)
        bootstrap_model(texts[: len(texts) * 60 // 151], out, size="nano", seed=0)
    return out


def rank_digests(directory: Path, world_size: int) -> list[str]:
    """The weight digests each rank wrote at the end of training (``STECA_TEST_RANK_DIGEST_DIR``), by rank."""
    files = sorted(directory.glob("rank*.json"))
    found = [json.loads(f.read_text()) for f in files]
    assert sorted(d["rank"] for d in found) == list(range(world_size)), found
    return [d["sha256"] for d in sorted(found, key=lambda d: d["rank"])]


def weights_digest(model_dir: Path, tmp: Path) -> str:
    """The same digest of a saved model directory's weights."""
    from transformers import AutoModelForCausalLM

    from steca.training.trainer_setup import write_rank_digest

    path = write_rank_digest(AutoModelForCausalLM.from_pretrained(model_dir), tmp)
    return json.loads(path.read_text())["sha256"]


def write_small_pairs(alfworld_sft_sample: Path, path: Path) -> Path:
    """Eight STeCa pairs from the shared trajectories (trajectory i's turns chosen, i+8's rejected, rewards
    1.0 .. 1.7): the pairs of ``scripts/gpu_smoke_checks.py pairs``, defined there once."""
    import importlib.util

    script = Path(__file__).resolve().parents[1] / "scripts" / "gpu_smoke_checks.py"
    spec = importlib.util.spec_from_file_location("gpu_smoke_checks", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.write_pairs(alfworld_sft_sample, path)
