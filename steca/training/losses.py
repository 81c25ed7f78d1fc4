"""STeCa's reinforced-training objective as pure tensor functions.

Notation, per training pair i (prompt x, chosen continuation y_c, rejected continuation y_r,
weight w_i = the record's ``reward``):

* ``lp(y) = sum_t log pi(y_t | x, y_<t)`` over the continuation's assistant tokens only (labels != -100);
* ``delta_i = (lp(y_c) - lp(y_r)) - (lp_ref(y_c) - lp_ref(y_r))``, the DPO log-ratio margin against a
  frozen reference policy;
* ``loss_i = w_i * [ -log sigmoid(beta * delta_i) - lp(y_c) ]`` and the batch loss is ``mean_i loss_i``.

With ``beta = 0`` the preference term is the constant ``log 2`` (zero gradient) and is left out, so the
objective is exactly the reward-weighted summed NLL of the chosen continuation,
``mean_i w_i * (-lp(y_c))``; the rejected side and the reference model are then not needed.
"No reward weighting" is the same objective with every ``w_i = 1``.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100


def sequence_logprobs(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Summed token log-probabilities per sequence.

    ``logits``: ``[B, T, V]`` from a causal LM over ``input_ids``; ``labels``: ``[B, T]`` with ``-100``
    on tokens that do not count. Returns ``lp[b] = sum_{t: labels[b,t] != -100} log softmax(logits[b, t-1])[labels[b, t]]``
    (the usual one-position shift: the logit at t-1 predicts the token at t).
    """
    if logits.shape[:2] != labels.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and labels {tuple(labels.shape)} disagree")
    shift_logits = logits[:, :-1, :]
    shift_labels = labels[:, 1:]
    mask = shift_labels != IGNORE_INDEX
    safe = shift_labels.masked_fill(~mask, 0)
    token_lp = torch.gather(shift_logits.float().log_softmax(-1), 2, safe.unsqueeze(-1)).squeeze(-1)
    return (token_lp * mask).sum(-1)


@dataclass
class ReinforcedLossOutput:
    """Batch loss and its parts (per pair) for logging."""

    loss: torch.Tensor
    per_pair: torch.Tensor
    nll: torch.Tensor
    preference: torch.Tensor | None
    margin: torch.Tensor | None


def steca_loss(policy_chosen_logps: torch.Tensor, weights: torch.Tensor, beta: float = 0.0,
               policy_rejected_logps: torch.Tensor | None = None,
               ref_chosen_logps: torch.Tensor | None = None,
               ref_rejected_logps: torch.Tensor | None = None,
               reward_weighting: bool = True) -> ReinforcedLossOutput:
    """``loss = mean_i w_i * [ -log sigmoid(beta * delta_i) - lp(y_c)_i ]`` (see the module docstring).

    ``delta_i = (policy_chosen_logps - policy_rejected_logps) - (ref_chosen_logps - ref_rejected_logps)``.
    For ``beta == 0`` only ``policy_chosen_logps`` and ``weights`` are used and the constant
    ``log 2`` is dropped. ``reward_weighting=False`` sets every ``w_i = 1``.
    Paper: arXiv 2502.14276, Sec. 3, reinforced training; the released objective (beta = 0) is the
    reward-weighted NLL of ``y_c``.
    """
    if beta < 0:
        raise ValueError(f"beta must be >= 0, got {beta}")
    w = weights.to(policy_chosen_logps.dtype) if reward_weighting else torch.ones_like(policy_chosen_logps)
    nll = -policy_chosen_logps
    preference = margin = None
    per_pair_unweighted = nll
    if beta > 0:
        if policy_rejected_logps is None or ref_chosen_logps is None or ref_rejected_logps is None:
            raise ValueError("beta > 0 needs rejected log-probs and the reference model's log-probs")
        margin = (policy_chosen_logps - policy_rejected_logps) - (ref_chosen_logps - ref_rejected_logps)
        preference = -F.logsigmoid(beta * margin)
        per_pair_unweighted = preference + nll
    per_pair = w * per_pair_unweighted
    return ReinforcedLossOutput(per_pair.mean(), per_pair, nll, preference, margin)
