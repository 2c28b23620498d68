import numpy as np
import pytest
import torch

from real_lens.null import NullBand, null_band, null_seed, percentile_in_null, random_null_scores
from real_lens.scoring import ModuleScores
from real_lens.scoring.random import score_random

SHAPE = (4, 6)  # 24 heads: 24! orderings, so two different seeds giving one ranking is negligible


def _top(scores: ModuleScores, k: int = 5):
    return scores.top_k(k).modules


def test_draws_are_seeded_random_permutations():
    draws = random_null_scores(SHAPE, n_draws=4, fold=1, seed=7)
    assert len(draws) == 4
    for d, s in enumerate(draws):
        assert isinstance(s, ModuleScores) and s.method == "random"
        assert tuple(s.scores.shape) == SHAPE
        assert torch.equal(torch.sort(s.scores.flatten()).values, torch.arange(1, 25) / 24)
        assert s.meta["draw"] == d and s.meta["fold"] == 1 and s.meta["run_seed"] == 7
        # The permutation itself is score_random's, at the seed derived from (seed, fold, draw).
        assert s.meta["seed"] == null_seed(7, 1, d) == int(np.random.SeedSequence([7, 1, d]).generate_state(1)[0])
        assert torch.equal(s.scores, score_random(SHAPE, seed=s.meta["seed"]))


def test_same_inputs_give_the_same_draws():
    first = random_null_scores(SHAPE, n_draws=3, fold=0, seed=0)
    again = random_null_scores(SHAPE, n_draws=3, fold=0, seed=0)
    assert all(torch.equal(a.scores, b.scores) for a, b in zip(first, again))
    # A longer run's first draws are the shorter run's draws.
    longer = random_null_scores(SHAPE, n_draws=5, fold=0, seed=0)
    assert all(torch.equal(a.scores, b.scores) for a, b in zip(first, longer))


def test_draws_differ_across_draws_folds_and_seeds():
    grid = {(seed, fold): random_null_scores(SHAPE, n_draws=6, fold=fold, seed=seed)
            for seed in (0, 1) for fold in (0, 1)}
    rankings = [tuple(s.ranking()) for draws in grid.values() for s in draws]
    assert len(set(rankings)) == len(rankings) == 24
    seeds = [s.meta["seed"] for draws in grid.values() for s in draws]
    assert len(set(seeds)) == 24
    # The old shortcut `seed + fold` would repeat: (seed 1, fold 0) == (seed 0, fold 1). Not here.
    assert _top(grid[(1, 0)][0]) != _top(grid[(0, 1)][0])


def test_layer_sites_and_bad_input():
    draws = random_null_scores((5,), n_draws=2, fold=0, seed=0)
    assert tuple(draws[0].scores.shape) == (5,)
    with pytest.raises(ValueError, match="n_draws"):
        random_null_scores(SHAPE, n_draws=0, fold=0, seed=0)
    with pytest.raises(ValueError, match="module_shape"):
        random_null_scores((2, 3, 4), n_draws=1, fold=0, seed=0)
    with pytest.raises(ValueError, match="fold must be an integer >= 0"):
        null_seed(0, -1, 0)


def test_null_band():
    values = np.arange(11, dtype=float)  # 0..10: percentiles are easy to read off
    band = null_band(values)
    assert band == NullBand(mean=5.0, low=0.5, high=9.5, n_draws=11, percentiles=(5.0, 95.0))
    assert null_band(values, (25, 75)) == NullBand(5.0, 2.5, 7.5, 11, (25.0, 75.0))
    one = null_band([0.42])
    assert (one.mean, one.low, one.high) == (0.42, 0.42, 0.42)
    with pytest.raises(ValueError, match="percentiles"):
        null_band(values, (95, 5))
    with pytest.raises(ValueError, match="non-empty"):
        null_band([])


def test_percentile_in_null():
    null = [0.40, 0.41, 0.42, 0.43]
    assert percentile_in_null(0.50, null) == 100.0
    assert percentile_in_null(0.30, null) == 0.0
    assert percentile_in_null(0.415, null) == 50.0
    assert percentile_in_null(0.42, null) == pytest.approx(62.5)  # 2 below, 1 tie counting half: 2.5 / 4
    with pytest.raises(ValueError, match="finite"):
        percentile_in_null(float("nan"), null)
