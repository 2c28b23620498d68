"""Baseline scorers (ITI probe, random), comparison, plots. Patching-style scorers: test_patching.py."""

import importlib
import math
import sys

import pytest
import torch

from real_lens.bank import ActivationBank
from real_lens.compare import compare_scores
from real_lens.errors import ScoringError
from real_lens.plotting import plot_score_heatmap, plot_score_heatmaps
from real_lens.scoring import SCORERS, ModuleScores, get_scorer
from real_lens.scoring.iti import ProbeConfig, score_probe, split_groups
from real_lens.scoring.random import score_random
from real_lens.tasks.base import Example


def toy_bank(site="head_z", *, model="tiny-llama", shape=(2, 4, 16)):
    examples = tuple(Example(f"Q: q{i // 2} A:", f" a{i}", i % 2, f"q{i // 2}") for i in range(10))
    acts = torch.randn(len(examples), *shape, generator=torch.Generator().manual_seed(0))
    return ActivationBank(acts, examples, {"site": site, "model": model, "task": "toy"})


# --------------------------------------------------------------------------- registry
def test_every_baseline_is_registered():
    for name in ("iti", "patching", "attribution", "random"):
        assert callable(get_scorer(name))
    assert {"iti", "patching", "attribution", "random"} <= set(SCORERS)


def test_scoring_random_module_does_not_shadow_stdlib_random():
    import real_lens.scoring.random as ours

    stdlib = importlib.import_module("random")
    assert stdlib is not ours and "real_lens" not in (stdlib.__file__ or "")
    assert 0 <= stdlib.random() < 1
    assert sys.modules["random"] is stdlib


# --------------------------------------------------------------------------- probe
def planted_bank(n_groups=40, per_group=5, shape=(3, 4, 8), planted=(1, 2)):
    gen = torch.Generator().manual_seed(1)
    examples = []
    for g in range(n_groups):
        for i in range(per_group):
            examples.append(Example(f"Q: q{g} A:", f" a{i}", int(i % 2 == 0), f"q{g}"))
    labels = torch.tensor([e.label for e in examples])
    acts = torch.randn(len(examples), *shape, generator=gen)
    acts[:, planted[0], planted[1], 0] += 2.5 * (2 * labels.float() - 1)  # a linear signal
    return ActivationBank(acts, tuple(examples), {"site": "head_z", "model": "toy", "task": "planted"})


def test_probe_ranks_planted_head_first():
    bank = planted_bank()
    scores = get_scorer("iti")(bank, seed=0)
    assert scores.scores.shape == (3, 4)
    assert scores.ranking()[0] == (1, 2)
    assert scores.scores[1, 2] > 0.9
    others = torch.cat([scores.scores.flatten()[:6], scores.scores.flatten()[7:]])
    assert others.max() < 0.8  # noise modules stay near chance
    assert scores.diagnostics["val_auc"][1, 2] > 0.95
    assert scores.meta["site"] == "head_z" and scores.meta["task"] == "planted" and scores.meta["seed"] == 0
    assert scores.config == {"val_fraction": 0.2, "C": 1.0, "max_iter": 1000, "standardize": True}


def test_probe_split_is_by_group_and_seeded():
    groups = [f"q{i // 3}" for i in range(60)]
    train, val = split_groups(groups, val_fraction=0.2, seed=3)
    assert not train & val and train | val == set(groups) and len(val) == 4
    assert split_groups(groups, val_fraction=0.2, seed=3) == (train, val)
    assert split_groups(groups, val_fraction=0.2, seed=4) != (train, val)


def test_probe_layer_site_and_fixed_val_groups():
    bank = planted_bank(shape=(3, 4, 8))
    acts = bank.acts[:, :, 2, :]  # [example, layer, d]: layer 1 carries the signal
    scores = score_probe(acts, bank.labels, bank.groups, val_groups={f"q{g}" for g in range(8)})
    assert scores.scores.shape == (3,) and scores.ranking()[0] == (1, None)
    assert scores.meta["split"]["n_val_groups"] == 8


def test_probe_rejects_bad_input():
    bank = planted_bank()
    with pytest.raises(ScoringError, match="at least 2 groups"):
        score_probe(bank.acts, bank.labels, ["one"] * len(bank.examples))
    with pytest.raises(ScoringError, match="labels must be 0"):
        score_probe(bank.acts, bank.labels * 2, bank.groups)
    with pytest.raises(ScoringError, match="one label and one group per example"):
        score_probe(bank.acts, bank.labels, bank.groups[:-1])
    with pytest.raises(ScoringError, match="val_fraction"):
        ProbeConfig(val_fraction=1.5)


# --------------------------------------------------------------------------- random
def test_random_scores_are_a_seeded_permutation():
    a = score_random((3, 5), seed=0)
    assert a.shape == (3, 5)
    assert torch.equal(a.flatten().sort().values, torch.arange(1, 16).float() / 15)
    assert torch.equal(a, score_random((3, 5), seed=0))
    assert not torch.equal(a, score_random((3, 5), seed=1))
    scores = get_scorer("random")(toy_bank(), seed=2)
    assert torch.equal(scores.scores, score_random((2, 4), seed=2)) and scores.meta["seed"] == 2
    assert scores.top_k(3).strengths[0] == 1.0


# --------------------------------------------------------------------------- compare and plots
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


def _assert_png(path):
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1000
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]


def test_heatmaps_are_written(tmp_path):
    heads = _scores(torch.randn(6, 4), "patching", site="head_z")
    probe = _scores(torch.rand(6, 4), "iti", site="head_z", score_unit="probe validation accuracy")
    _assert_png(plot_score_heatmap(heads, tmp_path / "one.png", title="patching"))
    _assert_png(plot_score_heatmaps([heads, probe, _scores(torch.ones(6, 4), "random")], tmp_path / "side.png"))
    _assert_png(plot_score_heatmap(_scores(torch.randn(6), "attribution"), tmp_path / "sub" / "layers.png"))
    with pytest.raises(ValueError, match="one title per score set"):
        plot_score_heatmaps([heads, probe], tmp_path / "x.png", titles=["only one"])
