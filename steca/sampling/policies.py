"""Policies for the sampling stages: one backend, or several OpenAI-compatible servers at once."""
from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Sequence

from eval_agent.agents import load_agent_config, make_policy
from eval_agent.agents.policy import Policy, SamplingParams
from eval_agent.agents.errors import RowErrors
from eval_agent.types import Message

logger = logging.getLogger(__name__)


class MultiServerPolicy(Policy):
    """Spreads each batch over several policies (e.g. one OpenAI client per server) in parallel.

    Row ``i`` of a batch goes to policy ``i % len(policies)``; the parts are sent concurrently and
    the answers put back in order. Per-row failures of any part come back as one ``RowErrors``.
    """

    supports_row_params = True

    def __init__(self, policies: Sequence[Policy]):
        if not policies:
            raise ValueError("MultiServerPolicy needs at least one policy")
        self.policies = list(policies)
        self._pool = ThreadPoolExecutor(max_workers=len(self.policies), thread_name_prefix="servers")

    def generate(self, batch: Sequence[Sequence[Message]], params) -> list[str]:
        rows = [params] * len(batch) if isinstance(params, SamplingParams) else list(params)
        k = len(self.policies)
        parts = [list(range(j, len(batch), k)) for j in range(k)]
        futures = [self._pool.submit(pol.generate, [batch[i] for i in idx], [rows[i] for i in idx])
                   if idx else None for pol, idx in zip(self.policies, parts)]
        outputs: list[str | None] = [None] * len(batch)
        errors: dict[int, str] = {}
        for idx, fut in zip(parts, futures):
            if fut is None:
                continue
            try:
                texts: list[str | None] = list(fut.result())
            except RowErrors as e:
                texts = list(e.outputs)
                errors.update({idx[j]: msg for j, msg in e.errors.items()})
            for i, t in zip(idx, texts):
                outputs[i] = t
        if errors:
            raise RowErrors(outputs, errors)
        return [o or "" for o in outputs]

    def close(self) -> None:
        for p in self.policies:
            p.close()
        self._pool.shutdown(wait=False)


def build_policy(backend: str, model: str, api_base: str | None = None, config: str | None = None,
                 **overrides) -> Policy:
    """``backend`` (hf / vllm / openai) for ``model`` via :func:`eval_agent.agents.make_policy`.

    ``api_base`` may list several comma-separated OpenAI-compatible servers; each gets its own
    client and :class:`MultiServerPolicy` spreads every batch over them.
    """
    try:
        cfg = load_agent_config(config or backend)
    except FileNotFoundError:
        cfg = {"backend": backend}
    if cfg.get("backend") != "openai" or not api_base:
        return make_policy(cfg, model, **overrides)
    urls = [u.strip() for u in api_base.split(",") if u.strip()]
    policies = [make_policy(cfg, model, base_url=u, **overrides) for u in urls]
    if len(policies) == 1:
        return policies[0]
    logger.info("spreading generation over %d servers", len(policies))
    return MultiServerPolicy(policies)
