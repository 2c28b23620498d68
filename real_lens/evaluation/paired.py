"""Paired comparisons of two conditions evaluated on the same items (e.g. per-question MC2).

Two arms ``a`` and ``b`` measured on the same ``n`` items are compared through the per-item
differences ``d = a − b``; item-to-item spread (question difficulty) cancels, which is what
makes a paired test far more sensitive than comparing two marginal CIs.

- :func:`paired_difference`: mean difference, a paired percentile bootstrap CI (one resample of
  items for both arms, i.e. a resample of ``d``), a two-sided sign-flip permutation p-value
  and the SD of ``d`` — one :class:`PairedComparison`.
- :func:`holm`: Holm–Bonferroni adjusted p-values across a table of comparisons.
- :func:`paired_power`, :func:`min_detectable_difference`, :func:`n_for_difference`: power of
  the two-sided paired t-test (noncentral t, ``scipy.stats.nct``; or the normal approximation),
  the difference it detects with given power, and the items needed for a given difference.
  The sign-flip test's power is close to the paired t-test's for n of a few dozen and more.

    cmp = paired_difference(mc2_steered, mc2_unsteered, n_boot=2000, seed=0)
    cmp.difference, (cmp.ci_low, cmp.ci_high), cmp.p_value
    holm([c.p_value for c in comparisons])
    min_detectable_difference(cmp.sd_diff, cmp.n)   # 80% power, two-sided 0.05
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np
from jaxtyping import Float
from numpy.typing import ArrayLike
from scipy import optimize, stats

from .stats import bootstrap_ci

POWER_METHODS = ("t", "normal")
# Sign patterns drawn per chunk in the Monte Carlo test (bounds memory at n_chunk x n floats).
_PERM_CHUNK = 4096


@dataclass(frozen=True)
class PairedComparison:
    """Arm ``a`` minus arm ``b`` over the same ``n`` items.

    ``p_value``: two-sided sign-flip permutation test of "the mean difference is 0";
    ``exact``: all ``2**n`` sign patterns were enumerated (else ``n_perm`` seeded Monte Carlo
    patterns with the +1 correction). ``ci_low``/``ci_high``: paired percentile bootstrap
    interval of the mean difference at ``level``. ``sd_diff``: SD of the per-item differences
    (ddof 1), the input of :func:`min_detectable_difference`.
    """

    n: int
    mean_a: float
    mean_b: float
    difference: float
    ci_low: float
    ci_high: float
    p_value: float
    sd_diff: float
    exact: bool
    n_perm: int
    n_boot: int
    level: float = 0.95

    def __post_init__(self):
        if self.n < 2:
            raise ValueError(f"a paired comparison needs at least 2 items; found {self.n}")
        if not 0.0 <= self.p_value <= 1.0:
            raise ValueError(f"p_value must be in [0, 1]; found {self.p_value}")
        if not self.ci_low <= self.ci_high:
            raise ValueError(f"ci_low must not exceed ci_high; found ({self.ci_low}, {self.ci_high})")


@dataclass(frozen=True)
class PairedRow:
    """One row of a comparison table: ``a`` vs ``b``, with its Holm-adjusted p-value."""

    a: str
    b: str
    comparison: PairedComparison
    p_holm: float


def paired_difference(
    a: ArrayLike,
    b: ArrayLike,
    *,
    n_boot: int = 2000,
    seed: int = 0,
    n_perm: int = 10000,
    level: float = 0.95,
) -> PairedComparison:
    """Compare arm ``a`` with arm ``b`` item by item (``a[i]`` and ``b[i]`` measure the same item).

    Bootstrap: ``n_boot`` resamples of the items with ``default_rng(seed)``, the same resample
    for both arms (so it resamples ``d = a − b``); percentile interval at ``level``.
    Permutation: under "no difference" each ``d[i]`` is as likely ``+d[i]`` as ``−d[i]``;
    p = share of sign patterns whose ``|mean|`` is at least the observed one — all ``2**n``
    patterns when ``2**n <= n_perm`` (exact), else ``n_perm`` patterns drawn with
    ``default_rng([seed, 1])`` and p = (hits + 1) / (n_perm + 1).
    """
    a, b = _as_items(a, "a"), _as_items(b, "b")
    if a.shape != b.shape:
        raise ValueError(
            f"paired arms need one value per item in the same order; found {a.size} values in a and {b.size} in b"
        )
    if a.size < 2:
        raise ValueError(f"a paired comparison needs at least 2 items; found {a.size}")
    if n_boot < 1 or n_perm < 1:
        raise ValueError(f"n_boot and n_perm must be at least 1; got {n_boot} and {n_perm}")
    d = a - b
    ci_low, ci_high = bootstrap_ci(d, n_boot=n_boot, seed=seed, level=level)
    p_value, exact, used = sign_flip_pvalue(d, n_perm=n_perm, seed=seed)
    return PairedComparison(
        n=int(d.size),
        mean_a=float(a.mean()),
        mean_b=float(b.mean()),
        difference=float(d.mean()),
        ci_low=ci_low,
        ci_high=ci_high,
        p_value=p_value,
        sd_diff=float(d.std(ddof=1)),
        exact=exact,
        n_perm=used,
        n_boot=n_boot,
        level=level,
    )


def sign_flip_pvalue(d: ArrayLike, *, n_perm: int = 10000, seed: int = 0) -> tuple[float, bool, int]:
    """Two-sided sign-flip p-value of ``mean(d) == 0``: ``(p, exact, n_patterns)``.

    Written here rather than calling ``scipy.stats.permutation_test(permutation_type="samples")``
    because scipy's two-sided Monte Carlo p is 2·min(one-sided p), not the share of ``|mean|`` at
    least as large; exact p-values agree (tests/unit/test_paired.py checks both against scipy).
    The flipped sums are one matrix product of ±1 patterns with ``d``.
    """
    d = _as_items(d, "d")
    n = d.size
    observed = abs(float(d.sum()))
    # Sums of the same numbers in another order differ by float rounding; a pattern that ties
    # the observed |sum| must count as "at least as large" (scipy uses a relative slack too).
    slack = 1e-9 * max(float(np.abs(d).sum()), np.finfo(float).tiny)
    if n < 63 and 2**n <= n_perm:
        bits = (np.arange(2**n)[:, None] >> np.arange(n)[None, :]) & 1
        sums = np.abs((1 - 2 * bits) @ d)
        return float(np.mean(sums >= observed - slack)), True, 2**n
    rng = np.random.default_rng([seed, 1])
    hits = 0
    for start in range(0, n_perm, _PERM_CHUNK):
        signs = rng.choice(np.array([-1.0, 1.0]), size=(min(_PERM_CHUNK, n_perm - start), n))
        hits += int(np.sum(np.abs(signs @ d) >= observed - slack))
    return (hits + 1) / (n_perm + 1), False, n_perm


def holm(pvalues: ArrayLike) -> Float[np.ndarray, " test"]:
    """Holm–Bonferroni adjusted p-values, in the input order.

    Sorted ascending, the i-th smallest (1-based) becomes ``max_{j<=i} min(1, (m − j + 1)·p_(j))``.
    Hand-written: scipy has no Holm (``scipy.stats.false_discovery_control`` does BH/BY, which
    control the false discovery rate, not the family-wise error) and statsmodels is not a
    dependency.
    """
    p = np.asarray(pvalues, dtype=np.float64)
    if p.ndim != 1:
        raise ValueError(f"holm needs a 1-D sequence of p-values; found shape {p.shape}")
    if p.size == 0:
        return p.copy()
    if not np.all((p >= 0) & (p <= 1)):  # also rejects NaN
        raise ValueError(f"p-values must be in [0, 1]; found {p[~((p >= 0) & (p <= 1))][:3].tolist()}")
    m = p.size
    order = np.argsort(p, kind="stable")
    scaled = np.minimum(1.0, (m - np.arange(m)) * p[order])
    adjusted = np.empty(m)
    adjusted[order] = np.maximum.accumulate(scaled)
    return adjusted


def compare_paired(
    arms: Mapping[str, ArrayLike],
    pairs: Sequence[tuple[str, str]],
    *,
    n_boot: int = 2000,
    seed: int = 0,
    n_perm: int = 10000,
    level: float = 0.95,
) -> list[PairedRow]:
    """``paired_difference(arms[a], arms[b])`` for each ``(a, b)`` in ``pairs``, Holm-adjusted across them.

    Every comparison uses the same ``seed``, so a pair's row does not depend on the table around it
    (only its Holm-adjusted p does)."""
    missing = sorted({name for pair in pairs for name in pair} - set(arms))
    if missing:
        raise ValueError(f"pairs name arm(s) {missing} that are not in arms; expected names among {sorted(arms)}")
    comparisons = [paired_difference(arms[a], arms[b], n_boot=n_boot, seed=seed, n_perm=n_perm, level=level)
                   for a, b in pairs]
    adjusted = holm([c.p_value for c in comparisons])
    return [PairedRow(a, b, c, float(p)) for (a, b), c, p in zip(pairs, comparisons, adjusted)]


# --------------------------------------------------------------------------- power
def paired_power(difference: float, sd_diff: float, n: int, *, alpha: float = 0.05, method: str = "t") -> float:
    """Power of the two-sided paired test at level ``alpha`` to detect a true mean difference ``difference``.

    ``method="t"``: the paired t-test exactly, P(|T| > t_crit) with T ~ noncentral t(df n − 1,
    nc = difference·√n / sd_diff) (``scipy.stats.nct``). ``"normal"``: the same with the
    standard normal in place of t (known SD), Φ(δ√n/sd − z) + Φ(−δ√n/sd − z), z = z_{1−α/2}.
    """
    _check_power_args(sd_diff, n, alpha, method)
    shift = abs(difference) * math.sqrt(n) / sd_diff
    if method == "normal":
        z = stats.norm.ppf(1 - alpha / 2)
        return float(stats.norm.sf(z - shift) + stats.norm.cdf(-z - shift))
    df = n - 1
    t_crit = stats.t.ppf(1 - alpha / 2, df)
    # The opposite tail is at most P(Z + nc < 0) = Φ(−nc); scipy's nct.cdf returns NaN for some
    # such tiny values (e.g. df 5, nc 10), so it is left out once that bound is below 1e-12.
    lower = 0.0 if stats.norm.cdf(-shift) < 1e-12 else stats.nct.cdf(-t_crit, df, shift)
    return float(stats.nct.sf(t_crit, df, shift) + lower)


def min_detectable_difference(
    sd_diff: float, n: int, *, alpha: float = 0.05, power: float = 0.8, method: str = "t"
) -> float:
    """The smallest true mean difference the two-sided paired test at ``alpha`` detects with ``power``.

    ``method="t"``: solves :func:`paired_power` (noncentral t) = ``power`` with ``scipy.optimize.brentq``.
    ``"normal"``: the textbook (z_{1−α/2} + z_{power}) · sd_diff / √n, which leaves out the opposite
    tail (below α/2 of power). ``sd_diff == 0`` gives 0 (the arms differ by a constant).
    """
    if not (sd_diff >= 0 and math.isfinite(sd_diff)):
        raise ValueError(f"sd_diff must be a finite value >= 0; got {sd_diff}")
    _check_power_args(sd_diff or 1.0, n, alpha, method)
    _check_target_power(power, alpha)
    if sd_diff == 0:
        return 0.0
    normal = (stats.norm.ppf(1 - alpha / 2) + stats.norm.ppf(power)) * sd_diff / math.sqrt(n)
    if method == "normal":
        return float(normal)
    high = normal
    while paired_power(high, sd_diff, n, alpha=alpha) < power:  # t needs a larger difference than z
        high *= 2
    return float(optimize.brentq(lambda delta: paired_power(delta, sd_diff, n, alpha=alpha) - power,
                                 0.0, high, xtol=1e-12 * high, rtol=1e-10))


def n_for_difference(
    difference: float, sd_diff: float, *, alpha: float = 0.05, power: float = 0.8, method: str = "t"
) -> int:
    """The fewest items (at least 2) for which the two-sided paired test at ``alpha`` detects a
    true mean difference ``difference`` with at least ``power`` (:func:`paired_power`)."""
    _check_power_args(sd_diff, 2, alpha, method)
    _check_target_power(power, alpha)
    if difference == 0 or not math.isfinite(difference):
        raise ValueError(f"difference must be a finite non-zero value; got {difference}")
    z = stats.norm.ppf(1 - alpha / 2) + stats.norm.ppf(power)
    n = max(2, math.ceil((z * sd_diff / abs(difference)) ** 2))  # the normal answer, then walk to the exact one
    while paired_power(difference, sd_diff, n, alpha=alpha, method=method) < power:
        n += 1
    while n > 2 and paired_power(difference, sd_diff, n - 1, alpha=alpha, method=method) >= power:
        n -= 1
    return n


def _check_power_args(sd_diff: float, n: int, alpha: float, method: str) -> None:
    if method not in POWER_METHODS:
        raise ValueError(f"unknown power method {method!r}; expected one of: {', '.join(POWER_METHODS)}")
    if not (sd_diff > 0 and math.isfinite(sd_diff)):
        raise ValueError(f"sd_diff must be a finite value > 0; got {sd_diff}")
    if int(n) != n or n < 2:
        raise ValueError(f"n must be an integer >= 2 (a paired test needs 2 items); got {n}")
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be between 0 and 1 (e.g. 0.05); got {alpha}")


def _check_target_power(power: float, alpha: float) -> None:
    if not alpha < power < 1:
        raise ValueError(f"power must be between alpha ({alpha}) and 1 (e.g. 0.8); got {power}")


def _as_items(values, name: str) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1 or array.size == 0:
        raise ValueError(f"{name} must be a non-empty 1-D array of per-item values; found shape {array.shape}")
    if not np.isfinite(array).all():
        raise ValueError(f"{name} must hold finite values; found NaN or inf")
    return array
