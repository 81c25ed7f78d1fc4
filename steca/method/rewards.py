"""Monte Carlo step rewards and sample weights (STeCa, arXiv 2502.14276, Sec. 3)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence


def step_reward(outcomes: Sequence[float]) -> float:
    """Monte Carlo step reward ``r(s, a) = (1/N) * sum_i R_i`` over the N rollout outcomes ``R_i``.

    Paper: arXiv 2502.14276, Sec. 3, step-level reward acquisition (the expected outcome of the base
    agent from the state after ``a``, estimated by N Monte Carlo rollouts).
    Raises ValueError for an empty list (a state with no finished rollout has no reward).
    """
    if len(outcomes) == 0:
        raise ValueError("a step reward needs at least one rollout outcome")
    return float(sum(float(o) for o in outcomes) / len(outcomes))


@dataclass(frozen=True)
class WeightScheme:
    """Per-set sample weights from the deviation distance ``d`` (released STeCa values).

    ``w_c = 1 + scale * d`` (calibrated), ``w_s = 1 + scale * d`` (expert sub-trajectories),
    ``w_e = 1 - scale * d`` (explored successes), and an explored success is kept only when
    ``d < explored_max_distance``.

    Paper: arXiv 2502.14276, Sec. 3, reinforced training (the trajectory deviation distance ``d``
    turned into a per-sample reward); the scales (ALFWorld 0.01, VirtualHome 1) are the released code's.
    """

    name: str
    scale: float
    explored_max_distance: float

    def calibrated(self, d: float) -> float:
        """``1 + scale * d``."""
        return 1.0 + self.scale * d

    def expert(self, d: float) -> float:
        """``1 + scale * d``."""
        return 1.0 + self.scale * d

    def explored(self, d: float) -> float:
        """``1 - scale * d``."""
        return 1.0 - self.scale * d

    def keep_explored(self, d: float) -> bool:
        """``d < explored_max_distance``."""
        return d < self.explored_max_distance


ALFWORLD_WEIGHTS = WeightScheme("alfworld", scale=0.01, explored_max_distance=0.013)
VIRTUALHOME_WEIGHTS = WeightScheme("virtualhome", scale=1.0, explored_max_distance=1e-22)
WEIGHT_SCHEMES = {s.name: s for s in (ALFWORLD_WEIGHTS, VIRTUALHOME_WEIGHTS)}
