"""Trajectory deviation distance: dynamic time warping over embedded action sequences."""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from eval_agent.types import parse_action
from eval_agent.types import Message
from steca.method.encoders import ActionEncoder


def cosine_cost_matrix(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """``C[i, j] = 1 - cos(x_i, y_j)`` for row vectors ``x`` (n, d) and ``y`` (m, d).

    A zero vector has cosine 0 with everything (cost 1).
    """
    nx = np.linalg.norm(x, axis=1, keepdims=True)
    ny = np.linalg.norm(y, axis=1, keepdims=True)
    xs = np.divide(x, nx, out=np.zeros_like(x, dtype=np.float64), where=nx > 0)
    ys = np.divide(y, ny, out=np.zeros_like(y, dtype=np.float64), where=ny > 0)
    return 1.0 - xs @ ys.T


def dtw_total_cost(cost: np.ndarray) -> float:
    """Total cost of the cheapest monotone alignment of two sequences given their pair costs.

    ``D[0, 0] = 0``, ``D[i, 0] = D[0, j] = inf`` (i, j > 0) and
    ``D[i, j] = C[i-1, j-1] + min(D[i-1, j], D[i, j-1], D[i-1, j-1])``; returns ``D[n, m]``.
    Raises ValueError when either sequence is empty (no alignment exists).
    """
    n, m = cost.shape
    if n == 0 or m == 0:
        raise ValueError(f"DTW needs two non-empty sequences, got lengths {n} and {m}")
    d = np.full((n + 1, m + 1), np.inf)
    d[0, 0] = 0.0
    for i in range(1, n + 1):
        row_prev, row = d[i - 1], d[i]
        for j in range(1, m + 1):
            row[j] = cost[i - 1, j - 1] + min(row_prev[j], row[j - 1], row_prev[j - 1])
    return float(d[n, m])


def dtw_distance(x: np.ndarray, y: np.ndarray) -> float:
    """Deviation distance between two embedded action sequences (released STeCa definition).

    ``d = DTW(x, y) / sqrt(n^2 + m^2)`` with pair cost ``1 - cos(x_i, y_j)``
    (:func:`dtw_total_cost`), ``n = len(x)``, ``m = len(y)``.
    """
    return dtw_total_cost(cosine_cost_matrix(np.asarray(x, np.float64), np.asarray(y, np.float64))) / math.sqrt(
        len(x) ** 2 + len(y) ** 2)


def assistant_actions(messages: Sequence[Message]) -> list[str]:
    """The action strings of the assistant turns (the whole text when a turn has no ``Action:`` line)."""
    out = []
    for m in messages:
        if m.role == "assistant":
            action = parse_action(m.content)
            out.append(action if action is not None else m.content.strip())
    return out


def action_cost_matrix(a: Sequence[str], b: Sequence[str], encoder: ActionEncoder) -> np.ndarray:
    """``C[i, j] = 1 - cos(emb(a_i), emb(b_j))``, exactly 0 where ``a_i == b_j`` and never below 0.

    Floating-point rounding leaves ``1 - cos(x, x)`` at about 1e-16 instead of 0, which would make two
    identical action sequences look different to a threshold like VirtualHome's ``d < 1e-22``.
    """
    cost = np.maximum(cosine_cost_matrix(encoder.encode(list(a)), encoder.encode(list(b))), 0.0)
    same = np.asarray([[x == y for y in b] for x in a], dtype=bool)
    cost[same] = 0.0
    return cost


def trajectory_distance(chosen: Sequence[Message], rejected: Sequence[Message], encoder: ActionEncoder) -> float:
    """DTW deviation distance between the actions of two continuations' assistant turns:
    ``d = DTW(C) / sqrt(n^2 + m^2)`` with ``C`` from :func:`action_cost_matrix` (identical sequences: 0)."""
    a, b = assistant_actions(chosen), assistant_actions(rejected)
    if not a or not b:
        raise ValueError(f"no assistant action to align (chosen has {len(a)}, rejected has {len(b)})")
    return dtw_total_cost(action_cost_matrix(a, b, encoder)) / math.sqrt(len(a) ** 2 + len(b) ** 2)
