"""The baselines' objectives as pure tensor functions: DPO (ETO, IPR) and IPR's mixture loss.

Notation as in :mod:`steca.training.losses`: ``lp(y) = sum_t log pi(y_t | x, y_<t)`` over a
continuation's assistant tokens only; ``lp_ref`` the same under the frozen reference policy (the
agent the iteration starts from: the SFT agent in the first iteration).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import torch
import torch.nn.functional as F

LEVEL_CODES = {"outcome": 0, "step": 1, "sft": 2}
_PREFERENCE_CODES = (LEVEL_CODES["outcome"], LEVEL_CODES["step"])


def dpo_loss(policy_chosen_logps: torch.Tensor, policy_rejected_logps: torch.Tensor,
             ref_chosen_logps: torch.Tensor, ref_rejected_logps: torch.Tensor, beta: float) -> torch.Tensor:
    """Per-pair DPO loss (Rafailov et al. 2023, Eq. 7), as ETO (arXiv 2403.02502, Sec. 3.3) applies it to
    whole trajectories and IPR (arXiv 2406.11176, Sec. 3.3) to trajectories and to step continuations:

        l_i = -log sigmoid( beta * [ (lp(y_w) - lp_ref(y_w)) - (lp(y_l) - lp_ref(y_l)) ] )

    Returns the ``[B]`` vector of ``l_i`` (the batch loss is its mean).
    """
    if beta <= 0:
        raise ValueError(f"DPO needs beta > 0, got {beta}")
    margin = (policy_chosen_logps - ref_chosen_logps) - (policy_rejected_logps - ref_rejected_logps)
    return -F.logsigmoid(beta * margin)


def token_mean_nll(policy_logps: torch.Tensor, n_tokens: torch.Tensor) -> torch.Tensor:
    """Per-sequence SFT loss ``-lp(y) / |y|``: the negative log-likelihood per trained token
    (``|y|`` = number of assistant tokens, at least 1)."""
    return -policy_logps / n_tokens.clamp(min=1).to(policy_logps.dtype)


def level_scales(counts: Mapping[str, int], weights: Mapping[str, float] | None = None) -> dict[str, float]:
    """Per-record scales ``c_k = lambda_k * N / N_k`` for a training file with ``N_k`` records of level ``k``
    (``N = sum_k N_k``; ``lambda_k`` = ``weights[k]``, default 1; levels with no record are left out).

    With records drawn uniformly from the file, ``E[c_k(i) * l_i] = sum_k (N_k/N) * c_k * E_k[l] =
    sum_k lambda_k * L_k``: the mean of scaled per-record losses over any batch estimates IPR's sum of
    level losses without bias, whatever mix of levels a batch happens to hold.
    """
    n = sum(counts.values())
    out = {}
    for level, n_k in counts.items():
        if level not in LEVEL_CODES:
            raise ValueError(f"unknown IPR level {level!r} (expected one of {sorted(LEVEL_CODES)})")
        if n_k > 0:
            out[level] = float((weights or {}).get(level, 1.0)) * n / n_k
    return out


@dataclass
class IPRLossOutput:
    """Batch loss, per-record losses (before scaling) and each level's mean in the batch (for logging)."""

    loss: torch.Tensor
    per_record: torch.Tensor
    level_means: dict[str, float]


def ipr_loss(levels: torch.Tensor, scales: torch.Tensor, policy_chosen_logps: torch.Tensor,
             policy_rejected_logps: torch.Tensor, ref_chosen_logps: torch.Tensor,
             ref_rejected_logps: torch.Tensor, n_chosen_tokens: torch.Tensor, beta: float) -> IPRLossOutput:
    """IPR's mixture objective (arXiv 2406.11176, Sec. 3.3): ``L = L_o-DPO + L_s-DPO + L_SFT``, where

    * ``L_o-DPO`` = DPO over (expert trajectory, failed agent trajectory) pairs on the task prompt;
    * ``L_s-DPO`` = DPO over (expert continuation from step t, the agent's continuation from its own
      step t) pairs on the expert prefix;
    * ``L_SFT`` = NLL of the expert trajectories, per trained token (:func:`token_mean_nll`).

    Each record ``i`` has a level ``k(i)`` (``LEVEL_CODES``) and a scale ``c_k(i)`` (:func:`level_scales`):
    ``l_i`` is :func:`dpo_loss` for outcome and step records and :func:`token_mean_nll` for SFT records,
    and ``loss = mean_i c_k(i) * l_i``. An SFT record's rejected and reference values are ignored.
    """
    is_pref = (levels == _PREFERENCE_CODES[0]) | (levels == _PREFERENCE_CODES[1])
    pref = dpo_loss(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta)
    nll = token_mean_nll(policy_chosen_logps, n_chosen_tokens)
    per_record = torch.where(is_pref, pref, nll)
    loss = (scales.to(per_record.dtype) * per_record).mean()
    means = {}
    for name, code in LEVEL_CODES.items():
        mask = levels == code
        if bool(mask.any()):
            means[name] = float(per_record.detach()[mask].mean())
    return IPRLossOutput(loss, per_record, means)
