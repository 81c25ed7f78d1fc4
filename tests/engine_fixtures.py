"""Shared fixtures of the engine and backend tests: the tiny random-weights chat model.

The model is a Llama from ``steca.training.bootstrap`` whose non-embedding weights are redrawn
with a large scale: with the bootstrap's small init and tied embeddings a random model only
repeats its last input token, which would make "batched equals one-at-a-time" trivially true.
"""
from __future__ import annotations

import json
from pathlib import Path


def build_tiny_chat_model(out: Path, sft_file: Path, n_records: int = 40) -> Path:
    """A nano Llama + BPE tokenizer with a chat template, random weights with varied greedy outputs."""
    import torch
    from transformers import AutoModelForCausalLM

    from steca.training.bootstrap import bootstrap_model

    if (out / "config.json").exists():
        return out
    records = json.loads(sft_file.read_text())[:n_records]
    texts = [m["content"] for r in records for m in r["conversations"]]
    bootstrap_model(texts, out, size="nano", seed=0)
    model = AutoModelForCausalLM.from_pretrained(out)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 2 and "embed" not in name:
                p.normal_(0.0, 0.3, generator=g)
    model.save_pretrained(out)
    return out
