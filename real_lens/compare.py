"""How much two module rankings agree: Spearman correlation and top-K overlap."""

from __future__ import annotations

import math

import torch
from scipy.stats import spearmanr

from .errors import ScoringError
from .scoring import ModuleScores


def compare_scores(a: ModuleScores, b: ModuleScores, *, k: int) -> dict:
    """Agreement of two scorers on the same modules.

    Returns ``{"spearman": rho over all modules, "jaccard_top_k": |A ∩ B| / |A ∪ B| of the two
    top-``k`` sets, "overlap_top_k": |A ∩ B|, "k", "n_modules", "methods"}``. Spearman is NaN
    when either side's scores are constant (a ranking without order). Top-k ties are broken by
    module index, as :meth:`ModuleScores.select` does.
    """
    if tuple(a.scores.shape) != tuple(b.scores.shape):
        raise ScoringError(
            f"cannot compare {a.method} scores of shape {tuple(a.scores.shape)} with {b.method} scores "
            f"of shape {tuple(b.scores.shape)}; score the same site of the same model"
        )
    _check_finite(a)
    _check_finite(b)
    top_a = set(a.select(k, strengths="uniform").modules)
    top_b = set(b.select(k, strengths="uniform").modules)
    x = a.scores.flatten().double().cpu().numpy()
    y = b.scores.flatten().double().cpu().numpy()
    constant = bool((x == x[0]).all() or (y == y[0]).all())
    rho = math.nan if constant else float(spearmanr(x, y).statistic)
    return {
        "spearman": rho,
        "jaccard_top_k": len(top_a & top_b) / len(top_a | top_b),
        "overlap_top_k": len(top_a & top_b),
        "k": k,
        "n_modules": a.n_modules,
        "methods": [a.method, b.method],
    }


def compare_all(scores: list[ModuleScores], *, k: int) -> dict[tuple[str, str], dict]:
    """:func:`compare_scores` for every pair, keyed by ``(method_a, method_b)``."""
    out = {}
    for i, a in enumerate(scores):
        for b in scores[i + 1 :]:
            out[(a.method, b.method)] = compare_scores(a, b, k=k)
    return out


def _check_finite(scores: ModuleScores) -> None:
    if not torch.isfinite(scores.scores).all():
        raise ScoringError(f"{scores.method} scores contain NaN or inf; they cannot be ranked")
