"""Shared helper of the training tests: one nano model per test session, bootstrapped from the
shared ALFWorld trajectories (the first 60, enough for a byte-level BPE of 1k tokens)."""
from __future__ import annotations

from pathlib import Path

from steca.training.bootstrap import bootstrap_model, sft_texts


def nano_model(tmp_path_factory, alfworld_sft_sample: Path) -> Path:
    """Path of the session's nano model directory (built on first use)."""
    out = tmp_path_factory.getbasetemp() / "training_nano_model"
    if not (out / "model.safetensors").is_file():
        texts = sft_texts(alfworld_sft_sample)
        bootstrap_model(texts[: len(texts) * 60 // 151], out, size="nano", seed=0)
    return out
