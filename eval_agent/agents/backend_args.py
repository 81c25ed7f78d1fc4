"""Command-line options for model-backed agents, shared by ``eval_agent.main`` and the stage scripts.

``add_backend_arguments(parser)`` adds the backend options (endpoint, key variable, device, dtype,
tensor parallelism, top_p) to a parser that already has ``--agent_config``, ``--model_name``,
``--temperature``, ``--max_new_tokens`` and ``--seed``; ``policy_from_args(args)`` builds the
policy and the default sampling parameters from ``--agent_config`` (``hf`` / ``vllm`` /
``openai`` or a JSON file) plus the overrides given on the command line.
"""
from __future__ import annotations

import argparse
from typing import Any

from eval_agent.agents import BACKENDS, load_agent_config, make_policy, sampling_from_config
from eval_agent.agents.policy import Policy, SamplingParams


def add_backend_arguments(ap: argparse.ArgumentParser) -> None:
    g = ap.add_argument_group("model backends (--agent_config hf | vllm | openai)")
    g.add_argument("--base_url", default=None, help="openai: endpoint, e.g. http://127.0.0.1:8000/v1 "
                                                     "(default: the config's, else api.openai.com)")
    g.add_argument("--api_key_env", default=None, help="openai: environment variable holding the key "
                                                        "(default OPENAI_API_KEY); never pass a key itself")
    g.add_argument("--device", default=None, help="hf: cpu, cuda, cuda:1 (default: cuda when available)")
    g.add_argument("--dtype", default=None, help="hf/vllm: float32, bfloat16, float16 or auto")
    g.add_argument("--tensor_parallel_size", type=int, default=None, help="vllm: GPUs to shard the model over")
    g.add_argument("--top_p", type=float, default=None, help="nucleus sampling mass (with --temperature > 0)")


def is_model_agent(name: str) -> bool:
    """True for ``hf``/``vllm``/``openai`` or a JSON config file (not the scripted ``expert``)."""
    return name in BACKENDS or name.endswith(".json")


def policy_from_args(args: argparse.Namespace) -> tuple[Policy, SamplingParams]:
    """The policy and default sampling parameters the options describe."""
    if not getattr(args, "model_name", None):
        raise SystemExit(f"--agent_config {args.agent_config} needs --model_name (a model directory or served name)")
    cfg = load_agent_config(args.agent_config)
    backend = cfg["backend"]
    get = lambda name: getattr(args, name, None)  # noqa: E731
    overrides: dict[str, Any] = {}
    if backend == "openai":
        overrides.update(base_url=get("base_url"), api_key_env=get("api_key_env"))
    elif backend == "hf":
        overrides.update(device=get("device"), dtype=get("dtype"))
    elif backend == "vllm":
        overrides.update(dtype=get("dtype"), tensor_parallel_size=get("tensor_parallel_size"), seed=get("seed"))
    params = sampling_from_config(cfg, temperature=get("temperature"), top_p=get("top_p"),
                                  max_new_tokens=get("max_new_tokens"))
    return make_policy(cfg, args.model_name, **overrides), params
