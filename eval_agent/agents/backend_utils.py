"""Helpers shared by the policy backends: per-row sampling parameters, stop strings, chat rendering."""
from __future__ import annotations

from typing import Any, Sequence

from eval_agent.agents.policy import RowParams, SamplingParams
from eval_agent.types import Message


def params_per_row(params: RowParams, n: int) -> list[SamplingParams]:
    """One :class:`SamplingParams` per conversation.

    A single ``SamplingParams`` applies to every row. Its ``seed`` then seeds row ``i`` with
    ``seed + i``, so rows that share a prompt (the N rollouts of one Monte Carlo state) still draw
    different samples. A sequence gives each row its own parameters (and seed) unchanged.
    """
    if isinstance(params, SamplingParams):
        if params.seed is None:
            return [params] * n
        return [_with_seed(params, params.seed + i) for i in range(n)]
    rows = list(params)
    if len(rows) != n:
        raise ValueError(f"got {len(rows)} SamplingParams for {n} conversations")
    return rows


def _with_seed(p: SamplingParams, seed: int) -> SamplingParams:
    return SamplingParams(temperature=p.temperature, top_p=p.top_p, max_new_tokens=p.max_new_tokens,
                          stop=p.stop, seed=seed)


def group_key(p: SamplingParams) -> tuple[Any, ...]:
    """Rows with equal keys can share one generation call (everything but the seed)."""
    return (p.temperature, p.top_p, p.max_new_tokens, tuple(p.stop))


def truncate_at_stop(text: str, stop: Sequence[str]) -> str:
    """``text`` up to (not including) the earliest occurrence of any stop string."""
    cut = len(text)
    for s in stop:
        if s:
            i = text.find(s)
            if i != -1:
                cut = min(cut, i)
    return text[:cut]


def to_chat(messages: Sequence[Message]) -> list[dict[str, str]]:
    """Messages as the ``[{"role", "content"}]`` dicts chat templates and chat APIs expect."""
    return [{"role": m.role, "content": m.content} for m in messages]
