"""REAL as the authors' camera-ready code computes it (OneForAll.py, METHOD.md §3a) beside REAL as described (§3).

Every release behaviour has a test that fails on the described variant (parametrised over both
where the described variant has a contrasting outcome). The release's older utils.py path is
``variant="release-utils"`` (test_real_release_utils.py).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score
from torch.utils.data import DataLoader, TensorDataset

from real_lens.experiment.config import METHODS
from real_lens.scoring import SCORERS
from real_lens.scoring import real as real_module
from real_lens.scoring.prior import roc_auc, train_prior
from real_lens.scoring.real import score_real_release, score_real_release_utils, score_real_tensors
from real_lens.scoring.real_splits import (
    loader_permutation,
    mix_seed,
    release_seeds,
    split_heldout,
    split_release_per_answer,
)
from real_lens.scoring.real_config import RELEASE_DIFFERENCES, RealConfig
from real_lens.scoring.vqae import supcon_loss, supcon_loss_release, train_vqae

from .test_real import make_examples, planted_acts

VARIANTS = ("described", "release")

# Small and quick; ema_decay 0.8 lets the release's EMA codebook recover after ~52 updates (0.99: ~1146).
QUICK = dict(n_codes=8, n_groups=2, vq_epochs=6, prior_epochs=2, prior_lr=1e-2, prior_embed=16, prior_hidden=16,
             batch_size=8, ema_decay=0.8)


def quick(variant: str, **changes) -> RealConfig:
    return RealConfig(variant=variant, **{**QUICK, **changes})


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def small_inputs():
    n = 120
    examples = make_examples(n)
    acts = planted_acts(n, seed=1).reshape(n, 8, 8)[:, 2:7]
    return acts, torch.tensor([e.label for e in examples]), [e.group for e in examples]


# --- seeds and random-number order -------------------------------------------------------------------
def test_mix_seed_is_the_release_formula():
    assert mix_seed(42, 0, 0) == 42
    assert mix_seed(42, 1, 0) == (42 ^ 0x9E3779B97F4A7C15) % (2**31 - 1)
    x = (7 ^ (3 * 0x9E3779B97F4A7C15)) & (2**64 - 1)
    assert mix_seed(7, 3, 5) == ((x ^ (5 * 0xC2B2AE3D27D4EB4F)) & (2**64 - 1)) % (2**31 - 1)
    assert len({mix_seed(42, layer, head) for layer in range(30) for head in range(9)}) == 270
    job = mix_seed(42, 2, 3)
    assert release_seeds(42, 2, 3) == {"init": job, "vqae_order": job + 21, "split": (job + 132) % (2**31 - 1),
                                       "prior_order": (job + 233) % (2**31 - 1)}


@pytest.mark.parametrize("n, batch", [(10, 3), (64, 32), (7, 32)])
def test_loader_permutation_is_a_dataloaders_order_over_epochs(n, batch):
    # Two DataLoaders sharing one generator, iterated alternately for three epochs, as the release's
    # priors are trained; then one more draw from the generator must agree too.
    g_ours, g_torch = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    first = DataLoader(TensorDataset(torch.arange(n)), batch_size=batch, shuffle=True, generator=g_torch)
    second = DataLoader(TensorDataset(torch.arange(n - 1)), batch_size=batch, shuffle=True, generator=g_torch)
    for _ in range(3):
        for loader, size in ((first, n), (second, n - 1)):
            expected = torch.cat([b for (b,) in loader])
            assert torch.equal(loader_permutation(g_ours, size), expected)
    assert torch.equal(torch.randint(0, 1000, (4,), generator=g_ours), torch.randint(0, 1000, (4,), generator=g_torch))


# --- the split -------------------------------------------------------------------------------------
@pytest.mark.parametrize("variant", VARIANTS)
def test_release_split_is_per_answer_random_per_class_and_balanced(variant):
    # 50 questions of 5 answers: 2 aligned, then 3 violating (TruthfulQA's mc2 order).
    labels = torch.tensor([1, 1, 0, 0, 0] * 50)
    groups = [f"q{i // 5}" for i in range(250)]
    if variant == "release":
        train_aligned, train_violating, held = split_release_per_answer(
            labels, torch.Generator().manual_seed(3), fraction=0.2)
        train = torch.cat([train_aligned, train_violating])
        assert len(train_aligned) == int(0.8 * 100) and len(train_violating) == int(0.8 * 150)
        assert (labels[train_aligned] == 1).all() and (labels[train_violating] == 0).all()
        # the release's draws: randperm of the aligned, then of the violating, from one generator
        g = torch.Generator().manual_seed(3)
        aligned, violating = torch.nonzero(labels == 1).flatten(), torch.nonzero(labels == 0).flatten()
        perm_aligned, perm_violating = torch.randperm(100, generator=g), torch.randperm(150, generator=g)
        assert torch.equal(train_aligned, aligned[perm_aligned[:80]])
        assert torch.equal(held, torch.cat([aligned[perm_aligned[80:]], violating[perm_violating[120:140]]]))
    else:
        train, held = split_heldout(labels, groups, how="group", fraction=0.2, seed=3)
    crossing = {groups[i] for i in train.tolist()} & {groups[i] for i in held.tolist()}
    n_aligned, n_violating = int((labels[held] == 1).sum()), int((labels[held] == 0).sum())
    assert (n_aligned == n_violating == 20) == (variant == "release")  # balanced: 30 violating cut to 20
    assert bool(crossing) == (variant == "release")  # per answer: questions on both sides


def test_release_split_differs_between_heads(small_inputs, monkeypatch):
    acts, labels, groups = small_inputs
    splits = []

    def spy(labels, generator, *, fraction):
        result = split_release_per_answer(labels, generator, fraction=fraction)
        splits.append(result[2])
        return result

    monkeypatch.setattr(real_module, "split_release_per_answer", spy)
    score_real_tensors(acts[:, :2], labels, groups, cfg=quick("release", vq_epochs=1, prior_epochs=1), seed=42,
                       module_shape=(1, 2))
    assert len(splits) == 2 and not torch.equal(splits[0], splits[1])  # each head its own held-out answers


# --- SupCon ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("variant", VARIANTS)
def test_supcon_denominator_holds_the_anchor_hand_computed(variant):
    # Unit vectors a = b = (1, 0), c = (-1, 0); labels 0, 0, 1; temperature 1.
    features = torch.tensor([[[1.0, 0.0], [1.0, 0.0], [-1.0, 0.0]]])
    labels = torch.tensor([[0, 0, 1]])
    e = math.e
    if variant == "described":
        # a: positive b over {b, c}: log(1 + e^-2); b alike; c has no positive and does not count.
        expected = math.log(1 + e**-2)
        value = supcon_loss(features, labels, temperature=1.0)
    else:
        # a: positive b, denominator {a, b, c}: -(1 - log(e + e + 1/e)); b alike; c has no positive
        # and counts 0 in the mean over all three anchors.
        loss_a = -(1 - math.log(2 * e + 1 / e))
        expected = 2 * loss_a / 3
        value = supcon_loss_release(features, labels, temperature=1.0)
    assert value.item() == pytest.approx(expected, rel=1e-6)


def test_release_supcon_matches_a_per_anchor_loop():
    g = torch.Generator().manual_seed(0)
    features = torch.randn(2, 6, 3, generator=g)
    labels = torch.tensor([[0, 0, 1, 1, 1, 0], [1, 0, 0, 0, 0, 0]])
    expected = []
    for m in range(2):
        f = torch.nn.functional.normalize(features[m].double(), dim=-1)
        logits = f @ f.T / 0.07
        log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)  # the anchor in the denominator
        per_anchor = []
        for i in range(6):
            positives = [p for p in range(6) if p != i and labels[m, p] == labels[m, i]]
            per_anchor.append(-sum((log_prob[i, p] for p in positives), torch.tensor(0.0)) / max(len(positives), 1))
        expected.append(torch.stack(per_anchor).mean())
    value = supcon_loss_release(features, labels, temperature=0.07)
    assert torch.allclose(value.double(), torch.stack(expected), rtol=1e-5)
    assert not torch.allclose(value, supcon_loss(features, labels, temperature=0.07), rtol=1e-2)


# --- what the scorer trains, and the score ----------------------------------------------------------
@pytest.mark.parametrize("variant", VARIANTS)
def test_release_trains_its_vqae_and_two_copy_priors_and_scores_the_mean_log_ratio(small_inputs, monkeypatch, variant):
    acts, labels, groups = small_inputs
    cfg = quick(variant)
    vqaes, priors = [], []

    def spy_vqae(*args, **kwargs):
        orders = kwargs.get("orders")
        kwargs["orders"] = None if orders is None else list(orders)
        result = train_vqae(*args, **kwargs)
        vqaes.append((kwargs, result))
        return result

    def spy_prior(train_codes, generators, **kwargs):
        prior = train_prior(train_codes, generators, **kwargs)
        priors.append((train_codes, kwargs, prior))
        return prior

    monkeypatch.setattr(real_module, "train_vqae", spy_vqae)
    monkeypatch.setattr(real_module, "train_prior", spy_prior)
    auc, diagnostics = score_real_tensors(acts, labels, groups, cfg=cfg, seed=42, module_shape=(1, 5))
    (kwargs, vq), = vqaes
    assert len(priors) == 2
    copies = [p[1]["copy_input"] for p in priors]
    assert copies == [variant == "release"] * 2
    assert [p[1]["grad_clip"] for p in priors] == [1.0, 1.0]
    assert kwargs["mlp_bias"] is True
    assert kwargs["debias_ema"] == (variant == "described")
    assert kwargs["supcon"] is (supcon_loss_release if variant == "release" else supcon_loss)
    assert "underflow" not in diagnostics
    if variant == "described":
        assert kwargs["orders"] is None
        return
    # VQ-AE minibatch order: the DataLoader of generator job + 21, every epoch.
    for head in range(5):
        g = torch.Generator().manual_seed(release_seeds(42, 0, head)["vqae_order"])
        for epoch in range(cfg.vq_epochs):
            assert torch.equal(kwargs["orders"][epoch][head], loader_permutation(g, len(labels)))
    # Each head's priors train on its own split; the score is the mean log-likelihood ratio's AUC.
    for head in range(5):
        train_aligned, train_violating, held = split_release_per_answer(
            labels, torch.Generator().manual_seed(release_seeds(42, 0, head)["split"]), fraction=0.2)
        assert torch.equal(priors[0][0][head], vq.codes[head, train_aligned])
        assert torch.equal(priors[1][0][head], vq.codes[head, train_violating])
        g = torch.Generator().manual_seed(release_seeds(42, 0, head)["prior_order"])
        for epoch in range(cfg.prior_epochs):  # aligned loader, then violating loader, each epoch
            assert torch.equal(priors[0][1]["orders"][epoch][head], loader_permutation(g, len(train_aligned)))
            assert torch.equal(priors[1][1]["orders"][epoch][head], loader_permutation(g, len(train_violating)))
        codes = vq.codes[:, held]  # every head's codes of this head's held-out answers
        with torch.no_grad():  # mean log p_aligned - mean log p_violating
            score = (priors[0][2].log_likelihood(codes) - priors[1][2].log_likelihood(codes))[head]
        expected = roc_auc_score(labels[held].numpy(), score.numpy())
        assert auc[head].item() == pytest.approx(expected, abs=1e-6)
    assert (diagnostics["perplexity"] > 2).all()  # non-trivial codes, so the checks mean something


def test_batched_equals_one_module_at_a_time_release(small_inputs):
    cfg = quick("release")
    batched = score_real_tensors(*small_inputs, cfg=cfg, seed=3, module_shape=(1, 5))
    for chunk in (1, 2):
        chunked = score_real_tensors(*small_inputs, cfg=dataclasses.replace(cfg, module_chunk=chunk), seed=3,
                                     module_shape=(1, 5))
        assert torch.equal(chunked[0], batched[0])
        for name, value in batched[1].items():
            assert torch.equal(chunked[1][name], value), name
    alone = score_real_tensors(*small_inputs, cfg=cfg, seed=3, module_shape=(1, 5), modules=[3])
    assert torch.equal(alone[0][3], batched[0][3]) and alone[0][[0, 1, 2, 4]].isnan().all()


def test_planted_heads_rank_first_in_the_release():
    n = 320
    examples = make_examples(n)
    labels = torch.tensor([e.label for e in examples])
    acts = planted_acts(n).reshape(n, 8, 8)
    cfg = quick("release", vq_epochs=10, prior_epochs=6, ema_decay=0.9)
    auc, _ = score_real_tensors(acts, labels, [e.group for e in examples], cfg=cfg, seed=42, module_shape=(2, 4))
    assert set(auc.argsort(descending=True)[:2].tolist()) == {2, 5}  # PLANTED (0, 2), (1, 1)


@pytest.mark.parametrize("variant", VARIANTS)
def test_release_scores_zero_when_a_class_has_one_example(variant, small_inputs):
    acts, labels, groups = small_inputs
    keep = torch.cat([torch.nonzero(labels == 1).flatten(), torch.nonzero(labels == 0).flatten()[:1]])
    args = (acts[keep], labels[keep], [groups[i] for i in keep.tolist()])
    if variant == "release":
        auc, _ = score_real_tensors(*args, cfg=quick(variant), seed=0)
        assert torch.equal(auc, torch.zeros(5))
    else:
        with pytest.raises(real_module.ScoringError, match="at least 5 examples per class"):
            score_real_tensors(*args, cfg=quick(variant), seed=0)


def test_auc_is_half_when_a_class_is_missing_and_sklearns_otherwise():
    scores = torch.tensor([[0.1, 0.4, 0.4, 0.9], [3.0, 2.0, 1.0, 0.0]])
    assert torch.equal(roc_auc(scores, torch.tensor([1, 1, 1, 1])), torch.tensor([0.5, 0.5]))
    labels = torch.tensor([0, 1, 0, 1])
    expected = [roc_auc_score(labels.numpy(), row.numpy()) for row in scores]
    assert torch.allclose(roc_auc(scores, labels), torch.tensor(expected, dtype=torch.float32))


# --- configuration, registration, the difference list -----------------------------------------------
def test_config_defaults_follow_the_variant():
    described, release, utils = RealConfig(), RealConfig(variant="release"), RealConfig(variant="release-utils")
    assert (described.vq_epochs, described.prior_epochs, described.heldout_split, described.prior_grad_clip) == (
        20, 10, "group", 1.0)
    assert (release.vq_epochs, release.prior_epochs, release.heldout_split, release.prior_grad_clip) == (
        30, 6, "answer", 1.0)
    assert (utils.vq_epochs, utils.prior_epochs, utils.prior_grad_clip) == (20, 10, None)
    assert RealConfig(variant="release", vq_epochs=2).vq_epochs == 2
    with pytest.raises(real_module.ScoringError, match=r"holds out per answer.*found heldout_split='group'"):
        RealConfig(variant="release", heldout_split="group")


def test_registered_names_defaults_and_the_main_jobs_methods():
    assert SCORERS["real-release"].score is score_real_release
    assert SCORERS["real-release-utils"].score is score_real_release_utils
    assert "real-release" in METHODS and "real-release-utils" not in METHODS
    import inspect

    assert inspect.signature(score_real_release).parameters["seed"].default == 42  # the release's --seed
    assert SCORERS["real-release"].experiment_settings == ("real_release_epochs", "real_release_prior_epochs")
    from real_lens.experiment.config import ExperimentConfig

    options = SCORERS["real-release"].options_for(ExperimentConfig())
    assert options["cfg"] == RealConfig(variant="release", vq_epochs=30, prior_epochs=6)


def test_release_difference_list_is_rendered_text():
    assert all(len(e) == 2 and all(isinstance(s, str) and s.strip() for s in e) for e in RELEASE_DIFFERENCES)
    assert len(RELEASE_DIFFERENCES) == 6
    assert np.unique([what for what, _ in RELEASE_DIFFERENCES]).size == len(RELEASE_DIFFERENCES)
