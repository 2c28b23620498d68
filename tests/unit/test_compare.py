"""Rank agreement between two methods' scores (Spearman, top-K Jaccard)."""

import math

import pytest
import torch

from real_lens.compare import compare_scores
from real_lens.errors import ScoringError
from real_lens.scoring import ModuleScores


def _scores(values, method="m", **meta):
    return ModuleScores(torch.as_tensor(values, dtype=torch.float32), method, meta=meta)


def test_compare_scores_on_known_inputs():
    a = _scores(torch.arange(12.0).reshape(3, 4), "a")
    same = compare_scores(a, _scores(a.scores * 2 + 1, "b"), k=3)
    assert same["spearman"] == pytest.approx(1.0) and same["jaccard_top_k"] == 1.0 and same["overlap_top_k"] == 3
    rev = compare_scores(a, _scores(-a.scores, "b"), k=3)
    assert rev["spearman"] == pytest.approx(-1.0) and rev["jaccard_top_k"] == 0.0
    half = compare_scores(_scores([4.0, 3, 2, 1]), _scores([4.0, 1, 3, 2]), k=2)  # tops {0,1} vs {0,2}
    assert half["jaccard_top_k"] == pytest.approx(1 / 3)
    assert math.isnan(compare_scores(a, _scores(torch.ones(3, 4)), k=2)["spearman"])
    with pytest.raises(ScoringError, match="shape"):
        compare_scores(a, _scores(torch.ones(12)), k=2)
    with pytest.raises(ScoringError, match="k must be between 1 and"):
        compare_scores(a, a, k=13)
