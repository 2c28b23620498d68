import itertools
import math

import numpy as np
import pytest
from scipy import stats

from real_lens.evaluation.paired import (
    PairedComparison,
    compare_paired,
    holm,
    min_detectable_difference,
    n_for_difference,
    paired_difference,
    paired_power,
    sign_flip_pvalue,
)


def _scipy_pvalue(a, b, n_resamples, rng=0):
    result = stats.permutation_test(
        (a, b), lambda x, y, axis: np.mean(x - y, axis=axis), permutation_type="samples",
        vectorized=True, n_resamples=n_resamples, rng=rng,
    )
    return result.pvalue


# --------------------------------------------------------------------------- sign-flip test
def test_exact_sign_flip_by_hand():
    # d = a − b = (1, 2, 3, 4, −0.5): sum 9.5. Of the 32 sign patterns, |sum| >= 9.5 for:
    # all-plus (9.5), flipping only −0.5 (10.5), and their mirror images: 4 patterns -> p = 4/32.
    a = np.array([1.0, 2.0, 3.0, 4.0, 0.0])
    b = np.array([0.0, 0.0, 0.0, 0.0, 0.5])
    hand = sum(abs(sum(s * d for s, d in zip(signs, a - b))) >= 9.5 - 1e-12
               for signs in itertools.product([1, -1], repeat=5)) / 32
    assert hand == 4 / 32
    cmp = paired_difference(a, b, n_perm=10000)
    assert cmp.exact and cmp.n_perm == 32
    assert cmp.p_value == pytest.approx(4 / 32, abs=1e-15)
    assert cmp.difference == pytest.approx(1.9)
    assert cmp.mean_a == pytest.approx(2.0) and cmp.mean_b == pytest.approx(0.1)
    assert cmp.sd_diff == pytest.approx(np.std(a - b, ddof=1))


def test_ties_with_the_observed_statistic_count():
    # d = (1, 2, −3, 5)/10: flipping the first three gives the observed sum 0.5 again (1 + 2 − 3 = 0),
    # but in floats 0.1 + 0.2 − 0.3 is not 0. Integers sum exactly: they give the true p.
    integers = np.array([1, 2, -3, 5])
    exact = sum(abs(int(np.dot(signs, integers))) >= 5 for signs in itertools.product([1, -1], repeat=4)) / 16
    assert exact == 10 / 16  # 5 patterns with the last sign +, and their mirror images
    assert sign_flip_pvalue(integers / 10)[0] == exact
    assert sign_flip_pvalue(np.full(4, 0.1))[0] == 2 / 16


def test_zero_differences_give_p_one():
    cmp = paired_difference(np.ones(6), np.ones(6))
    assert cmp.p_value == 1.0 and cmp.difference == 0.0 and cmp.sd_diff == 0.0
    assert (cmp.ci_low, cmp.ci_high) == (0.0, 0.0)


@pytest.mark.parametrize("n", [5, 9, 13])
def test_exact_pvalue_equals_scipy(n):
    rng = np.random.default_rng(n)
    a, b = rng.normal(0.4, 1, n), rng.normal(0, 1, n)
    cmp = paired_difference(a, b, n_perm=2**13)
    assert cmp.exact
    assert cmp.p_value == pytest.approx(_scipy_pvalue(a, b, 10**6), rel=1e-12)


def test_monte_carlo_pvalue_agrees_with_scipy_and_is_seeded():
    rng = np.random.default_rng(0)
    a, b = rng.normal(0.25, 1, 60), rng.normal(0, 1, 60)  # 2^60 patterns: Monte Carlo
    cmp = paired_difference(a, b, n_perm=20000, seed=3)
    assert not cmp.exact and cmp.n_perm == 20000
    reference = _scipy_pvalue(a, b, 20000)
    # Two independent estimates of the same p, each with SE sqrt(p(1-p)/20000) <= 0.0036.
    assert cmp.p_value == pytest.approx(reference, abs=0.015)
    assert 0.01 < reference < 0.99  # the comparison above is informative
    assert cmp == paired_difference(a, b, n_perm=20000, seed=3)
    assert paired_difference(a, b, n_perm=20000, seed=4).p_value != cmp.p_value
    # +1 correction: a Monte Carlo p is never 0, even when no pattern reaches the observed sum.
    strong = paired_difference(np.arange(1.0, 41.0), np.zeros(40), n_perm=500)
    assert strong.p_value == pytest.approx(1 / 501)


def test_paired_pvalue_is_symmetric_in_the_arms():
    rng = np.random.default_rng(5)
    a, b = rng.normal(size=30), rng.normal(size=30)
    ab, ba = paired_difference(a, b, n_perm=4000), paired_difference(b, a, n_perm=4000)
    assert ab.p_value == ba.p_value
    assert ab.difference == pytest.approx(-ba.difference)
    assert (ab.ci_low, ab.ci_high) == pytest.approx((-ba.ci_high, -ba.ci_low))


# --------------------------------------------------------------------------- bootstrap
def test_paired_bootstrap_resamples_items_for_both_arms():
    rng = np.random.default_rng(2)
    item = rng.normal(0, 3, 50)  # large item effect shared by both arms
    a, b = item + 0.3 + rng.normal(0, 0.2, 50), item + rng.normal(0, 0.2, 50)
    cmp = paired_difference(a, b, n_boot=4000, seed=1)
    # The same resample for both arms: the interval is that of mean(a − b), computed by hand here.
    idx = np.random.default_rng(1).integers(0, 50, size=(4000, 50))
    means = (a - b)[idx].mean(axis=1)
    assert (cmp.ci_low, cmp.ci_high) == pytest.approx(tuple(np.quantile(means, [0.025, 0.975])))
    # Pairing removes the item effect: far narrower than resampling the arms independently.
    assert cmp.ci_low > 0.15 and cmp.ci_high < 0.45
    scipy_ci = stats.bootstrap((a, b), lambda x, y, axis: np.mean(x - y, axis=axis), paired=True, vectorized=True,
                               method="percentile", n_resamples=4000, rng=7).confidence_interval
    assert cmp.ci_low == pytest.approx(scipy_ci.low, abs=0.02)
    assert cmp.ci_high == pytest.approx(scipy_ci.high, abs=0.02)


# --------------------------------------------------------------------------- Holm
def test_holm_textbook_example():
    # m = 4: sorted 0.005, 0.01, 0.03, 0.04 -> 4·0.005, 3·0.01, 2·0.03, max(1·0.04, 0.06).
    got = holm([0.01, 0.04, 0.03, 0.005])
    assert got == pytest.approx([0.03, 0.06, 0.06, 0.02])


def test_holm_properties():
    rng = np.random.default_rng(0)
    p = rng.uniform(0, 0.2, 12)
    adjusted = holm(p)
    assert np.all(adjusted >= p) and np.all(adjusted <= 1)
    order = np.argsort(p)
    assert np.all(np.diff(adjusted[order]) >= 0)  # the order of the p-values is kept
    assert adjusted[order[0]] == pytest.approx(12 * p[order[0]])  # smallest: Bonferroni
    assert holm([0.2]) == pytest.approx([0.2])
    assert holm([0.6, 0.7]) == pytest.approx([1.0, 1.0])
    assert holm([]).size == 0
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        holm([0.1, float("nan")])


def test_compare_paired_builds_a_holm_adjusted_table():
    rng = np.random.default_rng(3)
    arms = {"unsteered": rng.normal(size=20), "real": rng.normal(0.8, 1, 20), "iti": rng.normal(size=20)}
    pairs = [("real", "unsteered"), ("iti", "unsteered"), ("real", "iti")]
    rows = compare_paired(arms, pairs, n_boot=500, n_perm=2000)
    assert [(r.a, r.b) for r in rows] == pairs
    assert [r.p_holm for r in rows] == pytest.approx(list(holm([r.comparison.p_value for r in rows])))
    assert rows[0].comparison == paired_difference(arms["real"], arms["unsteered"], n_boot=500, n_perm=2000)
    with pytest.raises(ValueError, match="not in arms"):
        compare_paired(arms, [("real", "patching")])


# --------------------------------------------------------------------------- power
def test_mdd_matches_the_issue_numbers_and_the_normal_formula():
    # Issue 12: paired SD 0.34–0.45 over 80 questions detects only differences of about 0.11–0.13+.
    z = stats.norm.ppf(0.975) + stats.norm.ppf(0.8)
    for sd in (0.34, 0.45):
        assert min_detectable_difference(sd, 80, method="normal") == pytest.approx(z * sd / math.sqrt(80))
        t = min_detectable_difference(sd, 80)
        assert paired_power(t, sd, 80) == pytest.approx(0.8, abs=1e-9)
        assert 1.0 < t / min_detectable_difference(sd, 80, method="normal") < 1.02  # t is a little wider at n 80
    assert min_detectable_difference(0.34, 80) == pytest.approx(0.108, abs=0.001)
    assert min_detectable_difference(0.45, 80) == pytest.approx(0.143, abs=0.001)


def test_mdd_is_monotone_in_n_and_sd():
    ns = [2, 3, 5, 10, 40, 80, 400]
    by_n = [min_detectable_difference(0.4, n) for n in ns]
    assert all(x > y for x, y in zip(by_n, by_n[1:]))
    by_sd = [min_detectable_difference(sd, 40) for sd in (0.1, 0.2, 0.4, 0.8)]
    assert all(x < y for x, y in zip(by_sd, by_sd[1:]))
    assert by_sd[1] == pytest.approx(2 * by_sd[0])  # linear in sd
    assert min_detectable_difference(0.0, 10) == 0.0


def test_power_against_simulation():
    # The paired t-test's rejection rate on simulated normal differences matches paired_power.
    rng = np.random.default_rng(0)
    n, sd, delta = 12, 1.0, 0.7
    d = rng.normal(delta, sd, size=(20000, n))
    rejected = stats.ttest_1samp(d, 0.0, axis=1).pvalue < 0.05
    assert paired_power(delta, sd, n) == pytest.approx(rejected.mean(), abs=0.012)
    assert paired_power(0.0, sd, n) == pytest.approx(0.05)


def test_n_for_difference_inverts_the_mdd():
    for sd, delta in [(0.34, 0.05), (0.45, 0.1), (1.0, 2.0)]:
        n = n_for_difference(delta, sd)
        assert paired_power(delta, sd, n) >= 0.8
        assert n == 2 or paired_power(delta, sd, n - 1) < 0.8
        assert min_detectable_difference(sd, n) <= delta < min_detectable_difference(sd, max(n - 1, 2)) or n == 2
        assert n_for_difference(delta, sd, method="normal") <= n
    assert n_for_difference(0.05, 0.34) == 365


def test_bad_input():
    with pytest.raises(ValueError, match="same order"):
        paired_difference([1.0, 2.0], [1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="at least 2 items"):
        paired_difference([1.0], [2.0])
    with pytest.raises(ValueError, match="finite"):
        paired_difference([1.0, float("nan")], [1.0, 2.0])
    with pytest.raises(ValueError, match="power method"):
        min_detectable_difference(0.3, 10, method="exact")
    with pytest.raises(ValueError, match="power must be between"):
        min_detectable_difference(0.3, 10, power=0.01)
    with pytest.raises(ValueError, match="n must be an integer >= 2"):
        paired_power(0.1, 0.3, 1)
    with pytest.raises(ValueError, match="non-zero"):
        n_for_difference(0.0, 0.3)
    with pytest.raises(ValueError, match="ci_low"):
        PairedComparison(3, 0.0, 0.0, 0.0, 1.0, 0.0, 0.5, 1.0, True, 8, 10)
