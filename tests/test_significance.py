"""The report's statistics against values computed by hand (formulas in steca/demo/significance.py)."""
from __future__ import annotations

import pytest

from steca.demo.significance import (PairedCounts, bootstrap_interval, exact_binomial_two_sided, games_for_difference,
                                     games_for_paired_difference, mcnemar_exact, paired_counts, pooled_mcnemar,
                                     seed_difference_test, student_t_quantile, student_t_two_sided_p,
                                     wilson_interval, z_quantile)


def test_wilson_interval_by_hand():
    # 3/40, z = 1.959964: p = 0.075, 1 + z^2/n = 1.0960365, centre = (0.075 + 0.0480182) / 1.0960365 = 0.112238,
    # half = 1.959964 * sqrt(0.069375/40 + 3.841459/6400) / 1.0960365 = 0.0864037
    lo, hi = wilson_interval(3, 40)
    assert lo == pytest.approx(0.112238 - 0.0864037, abs=2e-6) and hi == pytest.approx(0.112238 + 0.0864037, abs=2e-6)
    # 5/10: centre 0.5 exactly, half = 1.959964 * sqrt(0.025 + 3.841459/400) / 1.3841459 = 0.3645935 / 1.3841459
    #       = 0.263407
    lo, hi = wilson_interval(5, 10)
    assert (lo, hi) == (pytest.approx(0.5 - 0.263407, abs=2e-6), pytest.approx(0.5 + 0.263407, abs=2e-6))
    # 0/40: [0, z^2/(n + z^2)] = [0, 3.841459 / 43.841459]
    lo, hi = wilson_interval(0, 40)
    assert lo == pytest.approx(0.0, abs=1e-12) and hi == pytest.approx(3.841459 / 43.841459, abs=2e-6)
    assert wilson_interval(40, 40)[1] == pytest.approx(1.0)
    with pytest.raises(ValueError):
        wilson_interval(3, 0)
    with pytest.raises(ValueError):
        wilson_interval(5, 4)


def test_wilson_interval_holds_its_estimate_at_zero_and_all_wins():
    # centre - half is a rounding error above 0 at k = 0 for n = 10, 20, 40 (2.8e-17, 1.4e-17, 6.9e-18): the
    # demo's plot then got a negative error bar and the whole seed run stopped at its report
    for n in range(1, 301):
        assert wilson_interval(0, n)[0] == 0.0 and wilson_interval(n, n)[1] == 1.0
        for k in range(n + 1):
            lo, hi = wilson_interval(k, n)
            assert 0.0 <= lo <= k / n <= hi <= 1.0


def test_exact_binomial_and_mcnemar_by_hand():
    # 1 of 7: 2 * (C(7,0) + C(7,1)) / 2^7 = 2 * 8 / 128
    assert exact_binomial_two_sided(1, 7) == 0.125
    assert exact_binomial_two_sided(6, 7) == 0.125
    assert exact_binomial_two_sided(0, 5) == 2 / 32
    assert exact_binomial_two_sided(3, 6) == 1.0          # 2 * 42/64 > 1
    assert exact_binomial_two_sided(0, 0) == 1.0
    # McNemar: only the discordant games count (both/neither do not change p)
    assert mcnemar_exact(PairedCounts(both=10, only_a=1, only_b=6, neither=23)) == 0.125
    assert mcnemar_exact(PairedCounts(both=0, only_a=1, only_b=6, neither=0)) == 0.125
    assert mcnemar_exact(PairedCounts(3, 0, 0, 37)) == 1.0


def test_paired_counts_use_common_games_only():
    a = {"g1": True, "g2": True, "g3": False, "g4": False, "extra": True}
    b = {"g1": True, "g2": False, "g3": True, "g4": False, "other": False}
    assert paired_counts(a, b) == PairedCounts(both=1, only_a=1, only_b=1, neither=1)
    with pytest.raises(ValueError, match="no evaluated game"):
        paired_counts({"x": True}, {"y": True})


def test_pooled_mcnemar_sums_discordant_counts():
    # seeds (only_a, only_b) = (0, 3) and (1, 4) -> (1, 7): 2 * (1 + 8) / 256
    total, p = pooled_mcnemar([PairedCounts(1, 0, 3, 6), PairedCounts(0, 1, 4, 5)])
    assert total == PairedCounts(1, 1, 7, 11) and total.n == 20
    assert p == 18 / 256
    with pytest.raises(ValueError):
        pooled_mcnemar([])


def test_sample_sizes_by_hand():
    za, zb = z_quantile(0.975), z_quantile(0.8)
    assert za == pytest.approx(1.959964, abs=1e-6) and zb == pytest.approx(0.841621, abs=1e-6)
    # 10 % vs 15 %: (1.959964 sqrt(2 * 0.125 * 0.875) + 0.841621 sqrt(0.09 + 0.1275))^2 / 0.0025 = 685.6 -> 686
    assert games_for_difference(0.10) == 686
    # Connor: psi 0.1, delta 0.05: (1.959964 sqrt(0.1) + 0.841621 sqrt(0.0975))^2 / 0.0025 = 311.6 -> 312
    assert games_for_paired_difference(0.10) == 312
    # a measured discordance below delta is raised to delta: psi = 0.05 ->
    # (1.959964 * 0.2236068 + 0.841621 * 0.2179449)^2 / 0.0025 = 0.621690^2 / 0.0025 = 154.6 -> 155
    assert games_for_paired_difference(0.01) == games_for_paired_difference(0.05) == 155
    with pytest.raises(ValueError):
        games_for_difference(0.97)


def test_bootstrap_interval_is_seeded_and_brackets_the_mean():
    runs = [(3, 40), (5, 40), (2, 40)]
    lo, hi = bootstrap_interval(runs)
    assert bootstrap_interval(runs) == (lo, hi)           # same numbers on every call (seeded PCG64)
    assert lo < 10 / 120 < hi and 0 <= lo and hi <= 1
    # all-or-nothing seeds: resampling can only give 0 or 1 per seed
    assert bootstrap_interval([(0, 10), (0, 10)]) == (0.0, 0.0)
    # one seed: the bootstrap over games alone, wider than with three seeds of the same total rate
    lo1, hi1 = bootstrap_interval([(10, 40)])
    lo3, hi3 = bootstrap_interval([(10, 40)] * 3)
    assert hi1 - lo1 > hi3 - lo3
    with pytest.raises(ValueError):
        bootstrap_interval([(5, 4)])


def test_student_t_against_closed_forms_and_tables():
    import math
    for t in (0.1, 1.0, 2.5, 9.0, 250.0):
        # df = 1 (Cauchy): p = 1 - (2/pi) atan|t|; df = 2: p = 1 - |t| / sqrt(2 + t^2)
        assert student_t_two_sided_p(t, 1) == pytest.approx(1 - 2 / math.pi * math.atan(t), abs=1e-9)
        assert student_t_two_sided_p(-t, 2) == pytest.approx(1 - t / math.sqrt(2 + t * t), abs=1e-9)
    assert student_t_two_sided_p(0.0, 5) == pytest.approx(1.0) and student_t_two_sided_p(math.inf, 5) == 0.0
    # printed tables of t_{0.975, df}
    for df, t975 in ((1, 12.7062), (2, 4.3027), (3, 3.1824), (10, 2.2281), (30, 2.0423)):
        assert student_t_quantile(0.975, df) == pytest.approx(t975, abs=1e-4)
    with pytest.raises(ValueError):
        student_t_two_sided_p(1.0, 0)


def test_seed_difference_test_by_hand():
    # per-seed differences 0.4, 0.4, 0.4, 0.3: mean 0.375, sd = sqrt(3 * 0.025^2 + 0.075^2) / sqrt(3) = 0.05,
    # se = 0.025, t = 15 with 3 df; half-width t_{0.975,3} se = 3.182446 * 0.025 = 0.0795612
    test = seed_difference_test([0.4, 0.4, 0.4, 0.3])
    assert test.mean == pytest.approx(0.375) and test.n_seeds == 4
    assert (test.lo, test.hi) == pytest.approx((0.375 - 0.0795612, 0.375 + 0.0795612), abs=1e-6)
    assert test.p == pytest.approx(student_t_two_sided_p(15.0, 3)) and test.p < 0.001
    # a spread as large as the mean: not significant, the interval covers 0
    wide = seed_difference_test([0.2, -0.1, 0.05])
    assert wide.lo < 0 < wide.hi and wide.p > 0.05
    # no spread: no t statistic (None), not a p of 0; no difference at all: p = 1
    assert seed_difference_test([0.1, 0.1]).p is None and seed_difference_test([0.0, 0.0]).p == 1.0
    with pytest.raises(ValueError, match="at least two seeds"):
        seed_difference_test([0.1])
