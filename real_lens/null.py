"""A random null for head selection: many seeded random rankings, and where a method falls among them.

One random draw says little ("random does as well as any scorer" from one draw is an
anecdote). :func:`random_null_scores` gives ``n_draws`` random rankings for a fold, each a
:func:`~real_lens.scoring.random.score_random` permutation whose seed comes from
``numpy.random.SeedSequence([seed, fold, draw])``, so draws differ across draws, folds and run
seeds, and the same ``(seed, fold, draw)`` always gives the same ranking. Each draw is steered at
the same K and dose as the methods; :func:`null_band` summarises the draws' metric values and
:func:`percentile_in_null` places a method among them.

    null = random_null_scores(bank.module_shape, n_draws=10, fold=0, seed=cfg.seed)
    values = [evaluate(build_steering(bank, s.select(k), alpha=...)) for s in null]
    band = null_band(values)                  # mean and 5–95 % band
    percentile_in_null(method_value, values)  # e.g. 85.0
"""

from __future__ import annotations

from dataclasses import dataclass
import numpy as np
from numpy.typing import ArrayLike
from scipy import stats

from .scoring import ModuleScores
from .scoring.random import METHOD, SCORE_UNIT, score_random


@dataclass(frozen=True)
class NullBand:
    """The null draws' mean and the ``percentiles`` band (``low``, ``high``) of a metric over ``n_draws`` draws."""

    mean: float
    low: float
    high: float
    n_draws: int
    percentiles: tuple[float, float]


def null_seed(seed: int, fold: int, draw: int) -> int:
    """The ``score_random`` seed of one null draw: ``SeedSequence([seed, fold, draw])``'s first 32-bit word.

    A SeedSequence hashes its whole entropy list, so nearby ``(seed, fold, draw)`` triples give
    unrelated seeds (``seed + fold`` would repeat draws between runs and folds)."""
    for name, value in (("seed", seed), ("fold", fold), ("draw", draw)):
        if int(value) != value or value < 0:
            raise ValueError(f"{name} must be an integer >= 0 (SeedSequence entropy); got {value!r}")
    return int(np.random.SeedSequence([int(seed), int(fold), int(draw)]).generate_state(1)[0])


def random_null_scores(module_shape: tuple[int, ...], *, n_draws: int, fold: int, seed: int) -> list[ModuleScores]:
    """``n_draws`` random rankings of the modules of ``module_shape`` (``[n_layers, n_heads]`` or
    ``[n_layers]``) for ``fold``; draw ``d`` is ``score_random(module_shape, seed=null_seed(seed, fold, d))``.
    Each :class:`ModuleScores` is method ``"random"`` with ``meta`` holding the draw, fold, run seed
    and derived seed."""
    shape = tuple(int(s) for s in module_shape)
    if len(shape) not in (1, 2) or min(shape, default=0) < 1:
        raise ValueError(
            f"module_shape must be (n_layers, n_heads) or (n_layers,) with positive sizes (bank.module_shape); "
            f"got {tuple(module_shape)}"
        )
    if n_draws < 1:
        raise ValueError(f"n_draws must be at least 1; got {n_draws}")
    draws = []
    for draw in range(n_draws):
        derived = null_seed(seed, fold, draw)
        meta = {"method": METHOD, "score_unit": SCORE_UNIT, "seed": derived, "run_seed": seed, "fold": fold,
                "draw": draw, "config": {}}
        draws.append(ModuleScores(score_random(shape, seed=derived), METHOD, {}, {}, meta))
    return draws


def null_band(values: ArrayLike, percentiles: tuple[float | int, float | int] = (5, 95)) -> NullBand:
    """Mean and the ``percentiles`` of ``values`` (one metric value per null draw; ``numpy.percentile``,
    linear interpolation between draws — with 10 draws the 5–95 % band sits inside the extreme draws)."""
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1 or array.size == 0:
        raise ValueError(f"null_band needs a non-empty 1-D sequence of per-draw values; found shape {array.shape}")
    if not np.isfinite(array).all():
        raise ValueError("null_band needs finite values; found NaN or inf")
    low_pct, high_pct = percentiles
    if not 0 <= low_pct < high_pct <= 100:
        raise ValueError(f"percentiles must be (low, high) with 0 <= low < high <= 100, e.g. (5, 95); got {percentiles}")
    low, high = np.percentile(array, [low_pct, high_pct])
    return NullBand(float(array.mean()), float(low), float(high), int(array.size), (float(low_pct), float(high_pct)))


def percentile_in_null(value: float, null_values: ArrayLike) -> float:
    """Percent of the null draws below ``value``, ties counting half (``scipy.stats.percentileofscore``,
    kind ``"mean"``): 100 = above every draw, 50 = in the middle."""
    array = np.asarray(null_values, dtype=np.float64)
    if array.ndim != 1 or array.size == 0:
        raise ValueError(f"percentile_in_null needs a non-empty 1-D sequence of null values; found shape {array.shape}")
    if not (np.isfinite(array).all() and np.isfinite(value)):
        raise ValueError("percentile_in_null needs finite values; found NaN or inf")
    return float(stats.percentileofscore(array, value, kind="mean"))
