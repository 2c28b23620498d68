"""Uncertainty over questions: a seeded percentile bootstrap of the mean."""

from __future__ import annotations

import numpy as np


def bootstrap_ci(values, *, n_boot: int = 1000, seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of ``mean(values)``: resample the values (e.g. per-question
    MC1) with replacement ``n_boot`` times with ``default_rng(seed)``; return the
    ``(1 − level)/2`` and ``(1 + level)/2`` quantiles of the resampled means."""
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 1 or values.size == 0:
        raise ValueError(f"bootstrap_ci needs a non-empty 1-D array of per-item values; found shape {values.shape}")
    if not np.isfinite(values).all():
        raise ValueError("bootstrap_ci needs finite values; found NaN or inf")
    if n_boot < 1:
        raise ValueError(f"n_boot must be at least 1; got {n_boot}")
    if not 0 < level < 1:
        raise ValueError(f"level must be between 0 and 1 (e.g. 0.95); got {level}")
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, values.size, size=(n_boot, values.size))].mean(axis=1)
    low, high = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return float(low), float(high)
