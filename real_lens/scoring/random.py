"""Random baseline: a seeded random ranking of the modules.

Scores are a random permutation of ``1/n, 2/n, ..., 1`` (``n`` = number of modules), so every
module has a distinct score in (0, 1] and ``top_k`` strengths stay positive. Model-free.
"""

from __future__ import annotations

import torch

from .registry import register_scorer
from .scores import ModuleScores

METHOD = "random"
SCORE_UNIT = "random rank / n_modules"


def score_random(module_shape: tuple[int, ...], *, seed: int = 0) -> torch.Tensor:
    """A seeded random permutation of ``(1..n) / n`` shaped ``module_shape``."""
    n = 1
    for size in module_shape:
        n *= size
    generator = torch.Generator().manual_seed(seed)
    ranks = torch.randperm(n, generator=generator) + 1
    return (ranks.float() / n).reshape(module_shape)


@register_scorer(METHOD, every_rank=True)
def random_scorer(bank, *, model=None, seed: int = 0, device=None) -> ModuleScores:
    """Registry entry: ignores the activations, the model and the device."""
    meta = {
        "site": bank.site,
        "model": bank.meta.get("model"),
        "task": bank.meta.get("task"),
        "seed": seed,
        "method": METHOD,
        "score_unit": SCORE_UNIT,
        "config": {},
    }
    return ModuleScores(score_random(bank.module_shape, seed=seed), METHOD, {}, {}, meta)
