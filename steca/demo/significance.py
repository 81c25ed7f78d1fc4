"""Statistics of the results table: intervals of success rates, paired tests between methods, and the
number of games a difference needs. Pure functions; the report (:mod:`steca.demo.results`) formats them.

Every evaluation is greedy, so a method's outcome on a game is fixed for a seed: two methods evaluated
on the same games of a seed are *paired*, and only the games on which they disagree (the discordant
games) carry information about which is better (McNemar's test). Seeds are independent replications
(each seed generates its own games and trains its own models).

McNemar's test holds each seed's trained models fixed: it measures which games a model wins, not how
much its success moves when it is trained again. Training the same data in another order can move it by
more than the test's noise (README, "The `full` profile"). The seed-level t test
(:func:`seed_difference_test`) uses the spread of the per-seed differences instead, which contains that
variation; with a handful of seeds it is weak.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist
from typing import Mapping, Sequence

import numpy as np

ALPHA = 0.05   # two-sided significance level of every test and interval in the report
POWER = 0.8    # power of the sample-size computations
DELTA = 0.05   # the difference in success rate (5 points) the sample-size computations target
N_BOOT = 4000  # bootstrap resamples of a multi-seed mean


def z_quantile(q: float) -> float:
    """The standard normal quantile ``Phi^-1(q)``."""
    return NormalDist().inv_cdf(q)


def wilson_interval(k: int, n: int, alpha: float = ALPHA) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion ``k/n`` (as fractions):

        p = k/n,  z = Phi^-1(1 - alpha/2)
        centre = (p + z^2/(2n)) / (1 + z^2/n)
        half   = z * sqrt(p(1-p)/n + z^2/(4n^2)) / (1 + z^2/n)
        interval = [centre - half, centre + half]

    Unlike the normal (Wald) interval it stays inside [0, 1] and is not empty at k = 0 or k = n.
    At k = 0 the lower bound is exactly 0 and at k = n the upper bound exactly 1 (in floating point
    ``centre - half`` can land a rounding error above 0, which would put the interval beside its estimate).
    Raises ``ValueError`` for n < 1 or k outside 0..n.
    """
    if n < 1 or not 0 <= k <= n:
        raise ValueError(f"wilson_interval needs 0 <= k <= n and n >= 1, got k={k}, n={n}")
    z = z_quantile(1 - alpha / 2)
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    lo = 0.0 if k == 0 else max(0.0, centre - half)
    hi = 1.0 if k == n else min(1.0, centre + half)
    return lo, hi


def exact_binomial_two_sided(k: int, n: int) -> float:
    """Two-sided exact binomial test of ``k`` successes in ``n`` trials against probability 1/2:

        p = min(1, 2 * sum_{i=0}^{min(k, n-k)} C(n, i) / 2^n)

    (the distribution is symmetric, so doubling the smaller tail is the usual two-sided p). ``n = 0``
    gives 1.
    """
    if n < 0 or not 0 <= k <= n:
        raise ValueError(f"exact_binomial_two_sided needs 0 <= k <= n, got k={k}, n={n}")
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(k, n - k) + 1))
    return min(1.0, 2 * tail / 2 ** n)


@dataclass(frozen=True)
class PairedCounts:
    """Two methods on the same games: ``only_a`` games won by A alone, ``only_b`` by B alone (the
    discordant games), ``both`` and ``neither`` the concordant ones."""

    both: int
    only_a: int
    only_b: int
    neither: int

    @property
    def n(self) -> int:
        return self.both + self.only_a + self.only_b + self.neither

    def __add__(self, other: "PairedCounts") -> "PairedCounts":
        return PairedCounts(self.both + other.both, self.only_a + other.only_a, self.only_b + other.only_b,
                            self.neither + other.neither)


def paired_counts(a: Mapping[str, bool], b: Mapping[str, bool]) -> PairedCounts:
    """Cross-tabulate two methods' outcomes ``{game id: success}`` on the games both were evaluated on.

    Raises ``ValueError`` when they share no game (they cannot be paired).
    """
    common = sorted(set(a) & set(b))
    if not common:
        raise ValueError("the two methods share no evaluated game; a paired test needs the same games")
    both = sum(1 for g in common if a[g] and b[g])
    only_a = sum(1 for g in common if a[g] and not b[g])
    only_b = sum(1 for g in common if b[g] and not a[g])
    return PairedCounts(both, only_a, only_b, len(common) - both - only_a - only_b)


def mcnemar_exact(counts: PairedCounts) -> float:
    """Exact McNemar test: under "A and B succeed equally often" every discordant game is won by A or
    by B with probability 1/2, so ``only_a ~ Binomial(only_a + only_b, 1/2)``; the p-value is
    :func:`exact_binomial_two_sided` ``(only_a, only_a + only_b)``."""
    return exact_binomial_two_sided(counts.only_a, counts.only_a + counts.only_b)


def pooled_mcnemar(per_seed: Sequence[PairedCounts]) -> tuple[PairedCounts, float]:
    """McNemar's exact test combined over seeds by pooling the discordant counts:

        b = sum_s only_a_s,  c = sum_s only_b_s,  p = exact_binomial_two_sided(b, b + c)

    Valid because under the null every discordant game of every seed is a fair coin, whatever the
    seed's success rate (the stratified, Mantel-Haenszel-type McNemar test); seeds with no discordant
    game add nothing. Returns the summed counts and p.
    """
    if not per_seed:
        raise ValueError("pooled_mcnemar of no seeds")
    total = per_seed[0]
    for c in per_seed[1:]:
        total = total + c
    return total, mcnemar_exact(total)


def bootstrap_interval(per_seed: Sequence[tuple[int, int]], alpha: float = ALPHA, n_boot: int = N_BOOT,
                       seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean success rate over seeds, resampling seeds and games.

    ``per_seed`` is ``[(wins, games), ...]``, one entry per seed. One resample draws ``S`` seeds with
    replacement, then, for each drawn seed s, its ``n_s`` games with replacement; for win/loss outcomes
    the resampled wins are ``Binomial(n_s, k_s/n_s)``, drawn directly. The statistic is the mean over
    the drawn seeds of ``wins/n_s``; the interval is its ``alpha/2`` and ``1 - alpha/2`` quantiles over
    ``n_boot`` resamples (numpy's PCG64 generator seeded with ``seed``: the same numbers everywhere).
    With one seed it is the bootstrap over games alone.
    """
    if not per_seed or any(n < 1 or not 0 <= k <= n for k, n in per_seed):
        raise ValueError(f"bootstrap_interval needs (wins, games) with 0 <= wins <= games >= 1, got {per_seed}")
    rng = np.random.default_rng(seed)
    k = np.array([w for w, _ in per_seed], dtype=float)
    n = np.array([g for _, g in per_seed], dtype=np.int64)
    pick = rng.integers(0, len(per_seed), size=(n_boot, len(per_seed)))
    wins = rng.binomial(n[pick], k[pick] / n[pick])
    stat = (wins / n[pick]).mean(axis=1)
    lo, hi = np.quantile(stat, [alpha / 2, 1 - alpha / 2])
    return float(lo), float(hi)


def games_for_difference(p: float, delta: float = DELTA, alpha: float = ALPHA, power: float = POWER) -> int:
    """Games per method for a two-sided two-proportion z test to detect ``p`` vs ``p + delta``
    (unpaired: the methods on independent games):

        p1 = p, p2 = p + delta, pbar = (p1 + p2)/2
        n = (z_{1-alpha/2} sqrt(2 pbar (1 - pbar)) + z_{power} sqrt(p1(1-p1) + p2(1-p2)))^2 / delta^2

    rounded up. ``p + delta`` must stay within (0, 1].
    """
    p2 = p + delta
    if not 0 <= p < 1 or not 0 < p2 <= 1 or delta <= 0:
        raise ValueError(f"games_for_difference needs 0 <= p < p + delta <= 1, got p={p}, delta={delta}")
    za, zb = z_quantile(1 - alpha / 2), z_quantile(power)
    pbar = (p + p2) / 2
    root = za * math.sqrt(2 * pbar * (1 - pbar)) + zb * math.sqrt(p * (1 - p) + p2 * (1 - p2))
    return math.ceil(root * root / (delta * delta))


def games_for_paired_difference(discordant: float, delta: float = DELTA, alpha: float = ALPHA,
                                power: float = POWER) -> int:
    """Games (pairs) for McNemar's test to detect a difference ``delta`` in success rate when a
    fraction ``discordant`` (psi = P(only A) + P(only B)) of the games is won by one method only
    (Connor 1987, Biometrics 43:207):

        n = (z_{1-alpha/2} sqrt(psi) + z_{power} sqrt(psi - delta^2))^2 / delta^2

    rounded up. A difference of delta needs psi >= delta, so psi is raised to delta when the measured
    discordance is smaller.
    """
    if delta <= 0 or not 0 <= discordant <= 1:
        raise ValueError(f"games_for_paired_difference needs 0 <= discordant <= 1 and delta > 0, got "
                         f"{discordant}, {delta}")
    psi = max(discordant, delta)
    za, zb = z_quantile(1 - alpha / 2), z_quantile(power)
    root = za * math.sqrt(psi) + zb * math.sqrt(psi - delta * delta)
    return math.ceil(root * root / (delta * delta))


def student_t_two_sided_p(t: float, df: int) -> float:
    """``P(|T| >= |t|)`` for Student's t distribution with ``df`` degrees of freedom.

    With ``t = sqrt(df) tan(theta)`` the density of ``theta`` on ``(-pi/2, pi/2)`` is proportional to
    ``cos(theta)^(df-1)``, so

        p = 1 - F(atan(|t| / sqrt(df))) / F(pi/2),   F(x) = int_0^x cos(u)^(df-1) du,

    both integrals by Simpson's rule (bounded, smooth integrand; error far below the printed digits).
    """
    if df < 1:
        raise ValueError(f"student_t_two_sided_p needs df >= 1, got {df}")
    if math.isinf(t):
        return 0.0

    def integral(x: float, panels: int = 2000) -> float:
        h = x / panels
        total = 1.0 + math.cos(x) ** (df - 1)
        for i in range(1, panels):
            total += (4 if i % 2 else 2) * math.cos(i * h) ** (df - 1)
        return total * h / 3

    return max(0.0, 1.0 - integral(math.atan(abs(t) / math.sqrt(df))) / integral(math.pi / 2))


def student_t_quantile(q: float, df: int) -> float:
    """The quantile ``t`` with ``P(T <= t) = q`` (``0.5 < q < 1``), by bisection on
    :func:`student_t_two_sided_p` (``P(T <= t) = 1 - p(t) / 2`` for ``t > 0``)."""
    if not 0.5 < q < 1:
        raise ValueError(f"student_t_quantile needs 0.5 < q < 1, got {q}")
    lo, hi = 0.0, 1.0
    while 1 - student_t_two_sided_p(hi, df) / 2 < q:
        hi *= 2
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if 1 - student_t_two_sided_p(mid, df) / 2 < q else (lo, mid)
    return (lo + hi) / 2


@dataclass(frozen=True)
class SeedTest:
    """Seed-level comparison of two rows: ``mean`` of the per-seed differences in success rate, its 95 %
    t interval ``[lo, hi]`` and the two-sided p-value of the one-sample t test of mean 0 (fractions); ``p`` is
    None when every seed has the same nonzero difference (no spread: the t statistic is undefined)."""

    mean: float
    lo: float
    hi: float
    p: float | None
    n_seeds: int


def seed_difference_test(diffs: Sequence[float], alpha: float = ALPHA) -> SeedTest:
    """One-sample t test over seeds of the per-seed differences ``d_s`` (row minus other, each on its seed's
    common games), S >= 2 seeds:

        mean = sum_s d_s / S,  sd = sqrt(sum_s (d_s - mean)^2 / (S - 1)),  se = sd / sqrt(S)
        interval = mean -/+ t_{1-alpha/2, S-1} se,   p = P(|T_{S-1}| >= |mean / se|)

    The seeds are the replications: the spread of ``d_s`` contains the variation between training runs,
    which McNemar's test on the games does not see. With ``sd = 0`` the interval is the point ``mean`` and
    ``p`` is None (1 when ``mean`` is 0 too): equal differences on a few seeds happen by chance with counts of
    games, and a p of 0 would claim a certainty that two or three seeds cannot give.
    """
    if len(diffs) < 2:
        raise ValueError(f"seed_difference_test needs at least two seeds, got {len(diffs)}")
    n = len(diffs)
    mean = sum(diffs) / n
    sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (n - 1))
    if sd == 0:
        return SeedTest(mean, mean, mean, 1.0 if mean == 0 else None, n)
    se = sd / math.sqrt(n)
    half = student_t_quantile(1 - alpha / 2, n - 1) * se
    return SeedTest(mean, mean - half, mean + half, student_t_two_sided_p(mean / se, n - 1), n)
