"""Policy backends behind one interface (:class:`~eval_agent.agents.policy.Policy`).

``hf`` (local transformers model, CPU/GPU), ``vllm`` (offline vLLM engine, GPUs only) and
``openai`` (any OpenAI-compatible endpoint). Each backend has a JSON config in
``eval_agent/configs/<name>.json``: constructor options plus a ``generation`` block with the
default :class:`~eval_agent.agents.policy.SamplingParams`. Build one with :func:`make_policy`.
Backends import their heavy dependencies lazily, so ``import eval_agent.agents`` is cheap.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from eval_agent.agents.policy import Policy, SamplingParams

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
BACKENDS = ("hf", "vllm", "openai")


def load_agent_config(name_or_path: str) -> dict[str, Any]:
    """A backend config: ``hf``/``vllm``/``openai`` (from ``eval_agent/configs``) or a JSON file path."""
    path = Path(name_or_path)
    if not path.suffix and not path.exists():
        path = CONFIG_DIR / f"{name_or_path}.json"
    if not path.exists():
        raise FileNotFoundError(f"agent config {name_or_path!r}: no file {path} (built-in: {', '.join(BACKENDS)})")
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON (line {e.lineno}): {e.msg}") from e
    if not isinstance(cfg, dict) or cfg.get("backend") not in BACKENDS:
        raise ValueError(f"{path}: field 'backend' must be one of {BACKENDS}, got {cfg.get('backend')!r}")
    return cfg


def sampling_from_config(cfg: dict[str, Any], **overrides: Any) -> SamplingParams:
    """The config's ``generation`` block as SamplingParams; ``overrides`` that are not None win."""
    gen = dict(cfg.get("generation") or {})
    gen.update({k: v for k, v in overrides.items() if v is not None})
    unknown = set(gen) - {"temperature", "top_p", "max_new_tokens", "stop", "seed"}
    if unknown:
        raise ValueError(f"agent config field 'generation' has unknown keys {sorted(unknown)}")
    if "stop" in gen:
        gen["stop"] = tuple(gen["stop"] or ())
    return SamplingParams(**gen)


def make_policy(cfg: dict[str, Any], model_name: str, **overrides: Any) -> Policy:
    """Build the backend named by ``cfg['backend']`` for ``model_name`` (a path or a served name)."""
    opts = {k: v for k, v in cfg.items() if k not in ("backend", "generation") and not k.startswith("_")}
    opts.update({k: v for k, v in overrides.items() if v is not None})
    backend = cfg["backend"]
    if backend == "hf":
        from eval_agent.agents.hf import HFPolicy

        return HFPolicy(model_name, **opts)
    if backend == "vllm":
        from eval_agent.agents.vllm_backend import VLLMPolicy

        return VLLMPolicy(model_name, **opts)
    if backend == "openai":
        from eval_agent.agents.openai_backend import OpenAIPolicy

        return OpenAIPolicy(model_name, **opts)
    raise ValueError(f"unknown backend {backend!r}")


__all__ = ["Policy", "SamplingParams", "make_policy", "load_agent_config", "sampling_from_config", "BACKENDS"]
