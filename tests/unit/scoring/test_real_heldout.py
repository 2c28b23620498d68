"""REAL's held-out split against ITI's validation split (issue 20 §4), and cross-fitting over several splits."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from real_lens.errors import RealLensError, ScoringError
from real_lens.experiment import config_for
from real_lens.experiment.config import jsonable
from real_lens.experiment.store import _scores_key, cell_path, scorer_options
from real_lens.scoring import real as real_module
from real_lens.scoring.iti import split_groups
from real_lens.scoring.real import heldout_size, score_real_tensors
from real_lens.scoring.real_config import RealConfig
from real_lens.scoring.real_splits import (
    release_seeds,
    split_heldout,
    split_heldout_folds,
    split_release_heldout,
    split_release_per_answer,
)

from .test_real import FAST, make_examples, planted_acts


@pytest.fixture(scope="module")
def small_inputs():
    """test_real.py's: 5 modules (two of them planted) of 120 examples, 30 questions."""
    examples = make_examples(120)
    acts = planted_acts(120, seed=1).reshape(120, -1, 8)[:, 2:7]
    return acts, torch.tensor([e.label for e in examples]), [e.group for e in examples]


def truthfulqa_like(n_questions: int = 160, seed: int = 0) -> tuple[torch.Tensor, list[str]]:
    """A fold's train+val as the main job scores it: 160 questions (80 train + 80 val), each with 1-5 true and
    2-7 false answers in a row (TruthfulQA's mc2 targets: true answers first)."""
    rng = np.random.default_rng(seed + 1000)
    labels, groups = [], []
    for q in range(n_questions):
        n_true, n_false = int(rng.integers(1, 6)), int(rng.integers(2, 8))
        labels += [1] * n_true + [0] * n_false
        groups += [f"question {q}"] * (n_true + n_false)
    return torch.tensor(labels), groups


def heldout_groups(labels, groups, seed: int, stream: str) -> frozenset[str]:
    _, held = split_heldout(labels, groups, how="group", fraction=0.2, seed=seed, stream=stream)
    return frozenset(groups[i] for i in held.tolist())


# --- the shared stream: REAL held out ITI's validation questions -------------------------------
def test_with_one_seed_the_shared_stream_holds_out_exactly_itis_validation_questions():
    """The claim of issue 20 §4, as every score before ``heldout_stream`` was made: both draw
    ``default_rng(seed).permutation(n_groups)`` and take its first 20 %."""
    labels, groups = truthfulqa_like()
    for seed in range(20):
        _, val = split_groups(groups, val_fraction=0.2, seed=seed)
        assert heldout_groups(labels, groups, seed, "shared") == val


def test_the_shared_stream_is_the_old_split_draw_for_draw():
    """``"shared"`` reproduces the split scores were made with before (so their cache keys stay valid)."""
    labels, groups = truthfulqa_like()
    names = list(dict.fromkeys(groups))
    rng = np.random.default_rng(7)
    old_groups = {names[i] for i in rng.permutation(len(names))[:round(0.2 * len(names))]}
    assert heldout_groups(labels, groups, 7, "shared") == old_groups
    rng, held = np.random.default_rng(7), []
    for c in (0, 1):
        idx = np.flatnonzero(labels.numpy() == c)
        held += rng.permutation(idx)[:round(0.2 * len(idx))].tolist()
    _, answer_held = split_heldout(labels, groups, how="answer", fraction=0.2, seed=7, stream="shared")
    assert answer_held.tolist() == sorted(held)


# --- REAL's own stream: independent of ITI's ---------------------------------------------------
def test_reals_own_stream_is_not_itis_validation_split_and_overlaps_it_by_chance():
    labels, groups = truthfulqa_like()
    n, h = 160, 32
    chance = h * h / n  # hypergeometric mean: 6.4 shared questions
    sd = (h * (h / n) * ((n - h) / n) * ((n - h) / (n - 1))) ** 0.5  # ~2.0
    _, val = split_groups(groups, val_fraction=0.2, seed=0)
    held = heldout_groups(labels, groups, 0, "real")  # the main job's default seed
    assert held != val and len(held) == len(val) == h
    assert abs(len(held & val) - chance) < 3 * sd
    overlaps = [len(heldout_groups(labels, groups, s, "real") & split_groups(groups, val_fraction=0.2, seed=s)[1])
                for s in range(200)]
    assert abs(np.mean(overlaps) - chance) < 4 * sd / 200**0.5  # the mean over seeds is the chance expectation
    assert max(overlaps) < h


def test_the_default_configuration_uses_reals_own_stream():
    assert RealConfig().heldout_stream == "real"
    assert RealConfig(variant="release").heldout_stream == "per-head"
    assert RealConfig(variant="release-utils").heldout_stream == "shared"


@pytest.mark.parametrize("variant", ["release", "release-utils"])
def test_the_release_variants_hold_out_answers_not_itis_questions(variant):
    """Neither release variant coincides with ITI's validation split: they hold out answers, from all over
    the bank, so the share of held-out answers whose question ITI validates on is near 20 %, not 100 %."""
    labels, groups = truthfulqa_like()
    _, val = split_groups(groups, val_fraction=0.2, seed=0)
    in_val = torch.tensor([g in val for g in groups])
    shares = []
    if variant == "release":  # each head its own split, from mix_seed(42, layer, head)
        for layer, head in [(0, 0), (3, 5), (29, 8)]:
            generator = torch.Generator().manual_seed(release_seeds(42, layer, head)["split"])
            held = split_release_per_answer(labels, generator, fraction=0.2)[-1]
            shares.append(float(in_val[held].float().mean()))
    else:
        held = split_release_heldout(labels, fraction=0.2, seed=0)[-1]
        shares.append(float(in_val[held].float().mean()))
    assert all(0.05 < share < 0.4 for share in shares), shares


# --- cross-fitting ----------------------------------------------------------------------------
def test_cross_fit_parts_are_disjoint_equal_sized_and_the_first_is_the_single_split():
    labels, groups = truthfulqa_like()
    folds = split_heldout_folds(labels, groups, how="group", fraction=0.2, seed=0, stream="real", n_splits=5)
    held_groups = [{groups[i] for i in held.tolist()} for _, held in folds]
    assert [len(g) for g in held_groups] == [32] * 5
    assert set().union(*held_groups) == set(groups)  # 5 x 20 %: every question held out once
    for (train, held), part in zip(folds, held_groups):
        assert not {groups[i] for i in train.tolist()} & part
        assert sorted(train.tolist() + held.tolist()) == list(range(len(groups)))
    single = split_heldout(labels, groups, how="group", fraction=0.2, seed=0, stream="real")
    assert all(torch.equal(a, b) for a, b in zip(folds[0], single))
    answer = split_heldout_folds(labels, groups, how="answer", fraction=0.2, seed=0, n_splits=3)
    assert not set(answer[0][1].tolist()) & set(answer[1][1].tolist())
    assert torch.equal(answer[0][1], split_heldout(labels, groups, how="answer", fraction=0.2, seed=0)[1])


def test_cross_fit_one_is_the_single_split_and_split_zero_of_more(small_inputs):
    """The VQ-AE trains once, and split 0's priors draw from the single split's streams: cross_fit=3's first
    AUC is the single-split score exactly, and cross_fit=1 is the single split."""
    single, diagnostics = score_real_tensors(*small_inputs, cfg=FAST, seed=2)
    one, one_diagnostics = score_real_tensors(*small_inputs, cfg=dataclasses.replace(FAST, cross_fit=1), seed=2)
    assert torch.equal(one, single) and one_diagnostics.keys() == diagnostics.keys()
    assert not any(k.startswith("auc_split") for k in diagnostics)
    _, three = score_real_tensors(*small_inputs, cfg=dataclasses.replace(FAST, cross_fit=3), seed=2)
    assert torch.equal(three["auc_split0"], single)
    for name in ("recon_loss", "perplexity", "collapsed"):  # the same VQ-AE
        assert torch.equal(three[name], diagnostics[name])


def test_cross_fit_score_is_the_mean_of_its_splits_aucs(small_inputs):
    auc, diagnostics = score_real_tensors(*small_inputs, cfg=dataclasses.replace(FAST, cross_fit=3), seed=2)
    splits = torch.stack([diagnostics[f"auc_split{i}"] for i in range(3)])
    assert torch.equal(auc, splits.mean(0)) and torch.equal(diagnostics["auc"], auc)
    assert not torch.equal(splits[1], splits[0]) and not torch.equal(splits[2], splits[0])


def test_cross_fit_is_deterministic_and_batched_equals_one_module_at_a_time(small_inputs):
    cfg = dataclasses.replace(FAST, cross_fit=2)
    auc, diagnostics = score_real_tensors(*small_inputs, cfg=cfg, seed=4)
    for again_cfg in (cfg, dataclasses.replace(cfg, module_chunk=1)):
        again, again_diagnostics = score_real_tensors(*small_inputs, cfg=again_cfg, seed=4)
        assert torch.equal(again, auc)
        assert again_diagnostics.keys() == diagnostics.keys()
        assert all(torch.equal(again_diagnostics[k], v) for k, v in diagnostics.items())


def test_the_stream_changes_the_score_and_shared_is_what_it_was(small_inputs, monkeypatch):
    acts, labels, groups = small_inputs
    real, _ = score_real_tensors(acts, labels, groups, cfg=FAST, seed=0)
    shared, _ = score_real_tensors(acts, labels, groups, cfg=dataclasses.replace(FAST, heldout_stream="shared"), seed=0)
    assert not torch.equal(real, shared)
    seen = []
    original = real_module.split_heldout_folds
    monkeypatch.setattr(real_module, "split_heldout_folds",
                        lambda *a, **k: seen.append(k["stream"]) or original(*a, **k))
    score_real_tensors(acts[:, :1], labels, groups, cfg=dataclasses.replace(FAST, heldout_stream="shared"), seed=0)
    assert seen == ["shared"]


def test_heldout_size_counts_every_cross_fit_part():
    labels, groups = truthfulqa_like()
    one = heldout_size(labels, groups, RealConfig(), seed=0)
    three = heldout_size(labels, groups, RealConfig(cross_fit=3), seed=0)
    assert (one["n_questions"], one["n_splits"]) == (32, 1)
    assert (three["n_questions"], three["n_splits"]) == (96, 3)


def test_too_many_cross_fit_parts_for_the_questions_is_refused_before_training(monkeypatch):
    monkeypatch.setattr(real_module, "train_vqae", lambda *a, **k: pytest.fail("trained before the check"))
    labels, groups = truthfulqa_like(8)  # round(1.6) = 2 per part: 5 parts need 10
    acts = torch.randn(len(groups), 2, 8)
    with pytest.raises(ScoringError, match=r"cross_fit=5 needs 5 disjoint held-out parts of 2 groups.*found only 8"):
        score_real_tensors(acts, labels, groups, cfg=dataclasses.replace(FAST, cross_fit=5, n_groups=2))


@pytest.mark.parametrize(
    "kwargs, pattern",
    [
        ({"heldout_stream": "iti"}, r"draws its held-out split from 'real' or 'shared'; found heldout_stream='iti'"),
        ({"variant": "release", "heldout_stream": "real"}, r"variant='release'.*from 'per-head'"),
        ({"variant": "release-utils", "heldout_stream": "real"}, r"variant='release-utils'.*from 'shared'"),
        ({"cross_fit": 0}, r"cross_fit must be a positive integer; found 0"),
        ({"variant": "release", "cross_fit": 2}, r"holds out one split as the release does; found cross_fit=2"),
        ({"cross_fit": 6}, r"cross_fit=6.*Pass cross_fit <= 5"),
        ({"cross_fit": 3, "heldout_fraction": 0.4}, r"Pass cross_fit <= 2"),
    ],
)
def test_config_checks_the_stream_and_cross_fit(kwargs, pattern):
    with pytest.raises(ScoringError, match=pattern):
        RealConfig(**kwargs)


# --- cache keys --------------------------------------------------------------------------------
# The described variant's scorer options as key.json held them before heldout_stream and cross_fit existed.
OLD_REAL_OPTIONS = {"cfg": {
    "batch_size": 32, "beta": 0.25, "code_dim": None, "collapse_patience": 5, "collapse_threshold": 0.0,
    "ema_decay": 0.99, "ema_eps": 1e-05, "eval_batch": 256, "heldout_fraction": 0.2, "heldout_split": "group",
    "leaky_slope": 0.01, "lr": 0.001, "module_chunk": None, "n_codes": 32, "n_groups": 8, "prior_batch_size": 32,
    "prior_embed": 64, "prior_epochs": 10, "prior_grad_clip": 1.0, "prior_hidden": 64, "prior_lr": 0.001,
    "prior_weight_decay": 0.01, "supcon_weight": 0.001, "temperature": 0.07, "variant": "described", "vq_epochs": 20,
}}


def _key(experiment, method, options=None):
    """A fold's scores key (key.json); ``options`` replace the scorer options the run would pass."""
    bank = SimpleNamespace(meta={"cache_key": "k"}, examples=range(10))
    key = _scores_key(experiment, 0, method, bank)
    if options is not None:
        key["options"] = jsonable(options)
    return key


def test_the_new_split_changes_reals_cache_key_and_nothing_elses():
    cfg = config_for(None)
    new = _key(cfg, "real")
    assert new["options"]["cfg"]["heldout_stream"] == "real" and "cross_fit" not in new["options"]["cfg"]
    assert new["options"] != OLD_REAL_OPTIONS  # cached REAL scores of the shared split are recomputed
    shared = _key(cfg, "real", {"cfg": RealConfig(heldout_stream="shared")})
    assert shared["options"] == OLD_REAL_OPTIONS  # ... and "shared" still finds them
    for variant in ("release", "release-utils"):  # unchanged scores keep their keys
        options = scorer_options(cfg, "real-release") if variant == "release" else {"cfg": RealConfig(variant=variant)}
        keyed = _key(cfg, "x", options)["options"]["cfg"]
        assert "heldout_stream" not in keyed and "cross_fit" not in keyed


def test_real_cross_fit_reaches_the_scorer_and_only_reals_keys():
    base, three = config_for("quick"), config_for("quick", real_cross_fit=3)
    assert scorer_options(three, "real")["cfg"].cross_fit == 3
    assert _key(three, "real") != _key(base, "real")
    assert _key(three, "real")["options"]["cfg"]["cross_fit"] == 3
    for method in ("real-release", "iti", "random"):
        assert _key(three, method) == _key(base, method)
    for method in ("real", "iti"):
        key = {"method": method, "split": "test", "k": 2, "dose": "KL 0.3"}
        assert (cell_path(Path("run"), three, 0, key) != cell_path(Path("run"), base, 0, key)) == (method == "real")


def test_real_cross_fit_is_checked_with_the_config():
    with pytest.raises(RealLensError, match=r"real_cross_fit \(--real-cross-fit\) must be at most 5.*got 6"):
        config_for(None, real_cross_fit=6)
    with pytest.raises(RealLensError, match=r"real_cross_fit must be an integer >= 1; got 0"):
        config_for(None, real_cross_fit=0)


def test_run_takes_real_cross_fit_on_the_command_line():
    from real_lens.cli import build_parser
    from real_lens.configs import read_overrides
    from real_lens.experiment import ExperimentConfig

    args = build_parser().parse_args(["run", "--real-cross-fit", "3"])
    assert read_overrides(args, ExperimentConfig) == {"real_cross_fit": 3}
