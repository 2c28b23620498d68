"""REAL as the release's older utils.py path computes it (variant "release-utils") beside REAL as described (§3).

Every release behaviour has a test parametrised over both variants that asserts the
contrasting outcome, so each one fails on the described variant.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from real_lens.bank import ActivationBank
from real_lens.errors import ScoringError
from real_lens.scoring import SCORERS, get_scorer
from real_lens.scoring import real as real_module
from real_lens.scoring.prior import ModuleGRULM, roc_auc, train_prior
from real_lens.scoring.real import (
    module_generators,
    score_real,
    score_real_release_utils,
    score_real_tensors,
    split_heldout,
    split_release_heldout,
)
from real_lens.scoring.real_config import RELEASE_UTILS_DIFFERENCES, RELEASE_SETTINGS_NOT_FOLLOWED, RealConfig
from real_lens.scoring.vqae import ModuleVQAE, supcon_loss, supcon_loss_anchor_positive, train_vqae

from .test_real import PLANTED, SMALL, make_examples, planted_acts

VARIANTS = ("described", "release-utils")


def small(variant: str, **changes) -> RealConfig:
    """``SMALL`` (test_real.py) in ``variant``, with the variant-dependent fields re-resolved."""
    fields = {f.name: getattr(SMALL, f.name) for f in dataclasses.fields(SMALL)}
    fields.update(variant=variant, heldout_split=None, heldout_stream=None, prior_grad_clip=None)
    return RealConfig(**{**fields, **changes})


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny tensors: one intra-op thread is faster, and results do not depend on it."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def bank() -> ActivationBank:
    n = 320
    return ActivationBank(planted_acts(n), make_examples(n), {"site": "head_z", "model": "synthetic", "task": "planted"})


# --- the prior: one that reads the code it predicts ------------------------------------------
@pytest.mark.parametrize("variant", VARIANTS)
def test_copy_prior_reaches_far_lower_heldout_loss_on_random_codes(variant):
    # Uniform random codes carry no structure: a causal prior cannot beat log K per code on
    # held-out sequences. A prior whose input at step t IS code t learns to copy it.
    n_codes, length = 8, 4
    codes = torch.randint(0, n_codes, (2, 384, length), generator=torch.Generator().manual_seed(0))
    train, held = codes[:, :256], codes[:, 256:]
    prior = train_prior(
        train, module_generators(0, [0, 1], "prior_aligned"), n_codes=n_codes, d_embed=16, d_hidden=16,
        lr=1e-2, weight_decay=0.01, grad_clip=None, epochs=15, batch_size=32, copy_input=variant == "release-utils",
    )
    with torch.no_grad():
        heldout_loss = prior.token_nll(held).mean((1, 2))
    uniform = math.log(n_codes)
    if variant == "release-utils":
        assert (heldout_loss < 0.1 * uniform).all(), heldout_loss
    else:
        assert (heldout_loss > 0.95 * uniform).all(), heldout_loss


@pytest.mark.parametrize("variant", VARIANTS)
def test_prior_output_at_t_depends_on_code_t_only_in_the_release(variant):
    model = ModuleGRULM(module_generators(0, [0], "prior_aligned"), n_codes=5, d_embed=4, d_hidden=6,
                        copy_input=variant == "release-utils")
    codes = torch.tensor([[[0, 1, 2, 3]]])
    changed = codes.clone()
    changed[..., 2] = 4  # change code 2: positions 0-1 never see it; position 2 sees it only when copying
    before, after = model(codes), model(changed)
    assert torch.equal(before[..., :2, :], after[..., :2, :])
    assert not torch.equal(before[..., 3, :], after[..., 3, :])
    assert torch.equal(before[..., 2, :], after[..., 2, :]) == (variant == "described")


def test_release_prior_matches_embedding_gru_linear_on_the_codes_themselves():
    # The release's GRUPrior: nn.Embedding(K) -> nn.GRU -> nn.Linear applied to the codes as they
    # are, logits at t scored against code t. float64 so values and gradients compare tightly.
    n_codes, length = 5, 4
    model = ModuleGRULM(module_generators(0, [0, 1], "prior_aligned"), n_codes=n_codes, d_embed=4, d_hidden=6,
                        copy_input=True).double()
    assert model.embed.shape == (2, n_codes, 4)  # no start-token row
    codes = torch.randint(0, n_codes, (2, 7, length), generator=torch.Generator().manual_seed(1))
    weights = torch.arange(1.0, 8.0, dtype=torch.float64)
    (model.log_likelihood(codes) * weights).sum().backward()
    for m in range(2):
        embed = torch.nn.Embedding(n_codes, 4).double()
        gru = torch.nn.GRU(4, 6, batch_first=True).double()
        out = torch.nn.Linear(6, n_codes).double()
        with torch.no_grad():
            embed.weight.copy_(model.embed[m])
            gru.weight_ih_l0.copy_(model.w_ih[m].T)
            gru.weight_hh_l0.copy_(model.w_hh[m].T)
            gru.bias_ih_l0.copy_(model.b_ih[m])
            gru.bias_hh_l0.copy_(model.b_hh[m])
            out.weight.copy_(model.w_out[m].T)
            out.bias.copy_(model.b_out[m])
        logits = out(gru(embed(codes[m]))[0])
        expected = torch.log_softmax(logits, -1).gather(-1, codes[m].unsqueeze(-1)).squeeze(-1)
        (expected.mean(-1) * weights).sum().backward()
        assert torch.allclose(model(codes)[m], logits, atol=1e-10)
        assert torch.allclose(model.embed.grad[m], embed.weight.grad, atol=1e-10)
        assert torch.allclose(model.w_hh.grad[m], gru.weight_hh_l0.grad.T, atol=1e-10)
        # The release's score of a sequence: exp of the summed log-probabilities.
        probability = model.sequence_probability(codes, eval_batch=3)[m]
        assert torch.allclose(probability, expected.sum(-1).exp().float(), rtol=1e-5)


def test_sequence_probability_underflows_to_ties_like_float32():
    model = ModuleGRULM(module_generators(0, [0], "prior_aligned"), n_codes=4, d_embed=4, d_hidden=4, copy_input=True)
    with torch.no_grad():
        model.w_out.zero_()
        model.b_out.copy_(torch.tensor([[0.0, 0.0, -40.0, -60.0]]))  # log p(2) ≈ -40.7, log p(3) ≈ -60.7
    codes = torch.tensor([[[2, 2, 2], [3, 3, 3], [0, 1, 0]]])  # Σ log p ≈ -122, -182, -2.1
    p = model.sequence_probability(codes, eval_batch=8)
    assert p.dtype == torch.float32
    assert p[0, 0] == 0 and p[0, 1] == 0 and p[0, 2] > 0.1  # in float64 the first two would differ
    # The tie counts 1/2 in the AUC: aligned = the [3, 3, 3] example.
    assert roc_auc(p, torch.tensor([0, 1, 0])).item() == pytest.approx(0.25)


# --- the EMA codebook ----------------------------------------------------------------------
def _codebook_after_one_update(variant: str) -> tuple[torch.Tensor, torch.Tensor]:
    release = variant == "release-utils"
    model = ModuleVQAE(module_generators(0, [0], "vqae"), d=8, code_dim=4, n_groups=2, n_codes=4, leaky_slope=0.01,
                       ema_decay=0.99, ema_eps=1e-5, mlp_bias=not release, debias_ema=not release)
    initial = model.codebook.clone()
    z = initial[:, :1].repeat(1, 32, 1).reshape(1, 16, 4) + 0.01  # every group right next to entry 0
    _, codes = model.quantize(z)
    assert (codes == 0).all()
    model.update_codebook(z, codes)
    return initial, model.codebook


@pytest.mark.parametrize("variant", VARIANTS)
def test_ema_entry_unused_at_the_first_update(variant):
    initial, codebook = _codebook_after_one_update(variant)
    unused_ratio = codebook[0, 1:].norm(dim=-1) / initial[0, 1:].norm(dim=-1)
    if variant == "release-utils":
        # sums start as the codebook, counts at 0, no debiasing: e_k = 0.99·e_k / ~eps.
        n = 0.01 * 32  # EMA count after one update of 32 vectors
        expected = 0.99 / (1e-5 * n / (n + 4 * 1e-5))
        assert torch.allclose(unused_ratio, torch.full_like(unused_ratio, expected), rtol=1e-4)
        assert (unused_ratio > 0.9e5).all()
    else:
        assert torch.equal(codebook[0, 1:], torch.zeros_like(codebook[0, 1:]))  # at the origin, near the data
    assert torch.allclose(codebook[0, 0], initial[0, 0] + 0.01, atol=1e-3) == (variant == "described")


def test_release_ema_unused_entry_returns_after_about_1146_updates():
    # decay^t / eps = 1 at t = ln(1e5) / -ln(0.99) ≈ 1146: only then is a never-chosen entry back
    # at its initial scale, where it can be chosen again.
    model = ModuleVQAE(module_generators(0, [0], "vqae"), d=8, code_dim=4, n_groups=2, n_codes=4, leaky_slope=0.01,
                       ema_decay=0.99, ema_eps=1e-5, mlp_bias=False, debias_ema=False)
    initial = model.codebook.clone()
    z = initial[:, :1].repeat(1, 32, 1).reshape(1, 16, 4)
    codes = torch.zeros(1, 16, 2, dtype=torch.long)
    norms = []
    for _ in range(1146):
        model.update_codebook(z, codes)
        norms.append(model.codebook[0, 1:].norm(dim=-1) / initial[0, 1:].norm(dim=-1))
    assert (norms[599] > 100).all()  # still far out after 600 updates
    assert torch.allclose(norms[-1], torch.ones(3), rtol=0.02)


@pytest.mark.parametrize("variant", VARIANTS)
def test_short_training_collapses_the_release_codebook_to_one_code(bank, variant):
    # The consequence in a short run (4 epochs x 10 minibatches = 40 EMA updates, far below ~1146):
    # the release's codebook keeps one code per module, so every held-out example scores the same
    # and every module's AUC is exactly 0.5. The described variant keeps its codes and finds the heads.
    scores = get_scorer("real-release-utils" if variant == "release-utils" else "real")(bank, cfg=small(variant))
    if variant == "release-utils":
        assert (scores.diagnostics["perplexity"] < 1.1).all()
        assert (scores.scores == 0.5).all()
    else:
        assert (scores.diagnostics["perplexity"] > 2).all()
        assert set(scores.ranking()[: len(PLANTED)]) == PLANTED


def test_planted_heads_rank_first_in_the_release_given_enough_ema_updates(bank):
    # 40 epochs of 40 minibatches = 1600 EMA updates (a TruthfulQA fold of the main job: ~900-1800),
    # past the ~1146 the release's codebook needs to recover from its first update. (The described
    # variant ranks them first in the short run: test_real.py::test_planted_heads_rank_first.)
    scores = score_real_release_utils(bank, cfg=small("release-utils", batch_size=8, vq_epochs=40))
    assert set(scores.ranking()[: len(PLANTED)]) == PLANTED
    for layer, head in PLANTED:
        assert scores.scores[layer, head] > 0.9
    assert (scores.diagnostics["perplexity"] > 4).all()


# --- the VQ-AE's layers ----------------------------------------------------------------------
@pytest.mark.parametrize("variant", VARIANTS)
def test_release_vqae_layers_have_no_bias(variant):
    release = variant == "release-utils"
    model = ModuleVQAE(module_generators(0, [0, 1], "vqae"), d=8, code_dim=4, n_groups=2, n_codes=4, leaky_slope=0.01,
                       ema_decay=0.99, ema_eps=1e-5, mlp_bias=not release, debias_ema=not release)
    names = {name for name, _ in model.named_parameters()}
    assert (names == {"enc1_w", "enc2_w", "dec1_w", "dec2_w"}) == release
    x = torch.randn(2, 5, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():  # bias-free LeakyReLU MLP: positively homogeneous
        assert torch.allclose(model.encode(3 * x), 3 * model.encode(x), atol=1e-5) == release


# --- SupCon ----------------------------------------------------------------------------------
@pytest.mark.parametrize("variant", VARIANTS)
def test_supcon_with_the_anchor_among_its_positives_hand_computed(variant):
    # Three unit vectors a = b = (1, 0), c = (-1, 0); labels 0, 0, 1; temperature 1.
    features = torch.tensor([[[1.0, 0.0], [1.0, 0.0], [-1.0, 0.0]]])
    labels = torch.tensor([[0, 0, 1]])
    e = math.e
    if variant == "described":
        # a: positive b, denominator {b, c}: -(1 - log(e + 1/e)) = log(1 + e^-2); b alike; c has no
        # positive and does not count.
        expected = math.log(1 + e**-2)
        value = supcon_loss(features, labels, temperature=1.0)
    else:
        # Row maximum 1 (the anchor itself). a: positives {a, b}, both at shifted logit 0, denominator
        # {b, c}: 2·log(1 + e^-2 + 1e-6) / (2 + 1e-6); b alike. c: positive {c} at shifted logit 0,
        # denominator {a, b} at -2: log(2e^-2 + 1e-6) / (1 + 1e-6) < 0. Mean over the three anchors.
        loss_a = 2 * math.log(1 + e**-2 + 1e-6) / (2 + 1e-6)
        loss_c = math.log(2 * e**-2 + 1e-6) / (1 + 1e-6)
        expected = (2 * loss_a + loss_c) / 3
        value = supcon_loss_anchor_positive(features, labels, temperature=1.0)
    assert value.item() == pytest.approx(expected, rel=1e-6)
    assert (value.item() < 0) == (variant == "release-utils")  # the anchor's own term can make it negative


def test_release_supcon_matches_a_per_anchor_loop():
    g = torch.Generator().manual_seed(0)
    features = torch.randn(2, 6, 3, generator=g)
    labels = torch.tensor([[0, 0, 1, 1, 1, 0], [1, 0, 0, 0, 0, 0]])
    temperature = 0.07
    expected = []
    for m in range(2):
        f = torch.nn.functional.normalize(features[m].double(), dim=-1)
        per_anchor = []
        for i in range(6):
            logits = f[i] @ f.T / temperature
            logits = logits - logits.max()
            denominator = torch.log(sum(torch.exp(logits[a]) for a in range(6) if a != i) + 1e-6)
            positives = [p for p in range(6) if labels[m, p] == labels[m, i]]  # the anchor included
            per_anchor.append(-sum(logits[p] - denominator for p in positives) / (len(positives) + 1e-6))
        expected.append(torch.stack(per_anchor).mean())
    value = supcon_loss_anchor_positive(features, labels, temperature=temperature)
    assert torch.allclose(value.double(), torch.stack(expected), rtol=1e-5)
    assert not torch.allclose(value, supcon_loss(features, labels, temperature=temperature), rtol=1e-2)


# --- the held-out split ------------------------------------------------------------------------
@pytest.mark.parametrize("variant", VARIANTS)
def test_release_split_is_per_answer_takes_the_first_violating_and_is_balanced(variant):
    # 50 questions of 5 answers: 2 aligned, then 3 violating (TruthfulQA's mc2 order).
    labels = torch.tensor([1, 1, 0, 0, 0] * 50)
    groups = [f"q{i // 5}" for i in range(250)]
    if variant == "release-utils":
        train, held = split_release_heldout(labels, fraction=0.2, seed=0)
        assert (labels[train] == 1).all()  # the one prior sees aligned answers only
    else:
        train, held = split_heldout(labels, groups, how="group", fraction=0.2, seed=0)
    held_aligned, held_violating = held[labels[held] == 1], held[labels[held] == 0]
    violating = torch.nonzero(labels == 0).flatten()
    crossing = {groups[i] for i in train.tolist()} & {groups[i] for i in held.tolist()}
    if variant == "release-utils":
        assert len(held_aligned) == 100 - int(0.8 * 100) == 20
        assert sorted(train.tolist() + held_aligned.tolist()) == torch.nonzero(labels == 1).flatten().tolist()
        assert torch.equal(held_violating, violating[:20])  # the first 20 in bank order
        assert len(crossing) > 0  # per answer: questions on both sides
    else:
        assert not crossing
        assert len(held_violating) == 30 and not torch.equal(held_violating, violating[:30])


def test_release_split_keeps_all_violating_when_fewer_than_heldout_aligned():
    labels = torch.tensor([1] * 40 + [0] * 5)
    _, held = split_release_heldout(labels, fraction=0.2, seed=3)
    assert (labels[held] == 1).sum() == 8 and (labels[held] == 0).sum() == 5


# --- the score -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def small_inputs():
    n = 120
    examples = make_examples(n)
    acts = planted_acts(n, seed=1).reshape(n, 8, 8)[:, 2:7]
    return acts, torch.tensor([e.label for e in examples]), [e.group for e in examples]


# ema_decay 0.8: the release's codebook recovers after ~52 updates instead of ~1146, so a short
# run has non-trivial codes. Only these tests change it; the release's value is 0.99.
QUICK_RELEASE = small("release-utils", vq_epochs=8, prior_epochs=2, batch_size=8, ema_decay=0.8)


@pytest.mark.parametrize("variant", VARIANTS)
def test_release_score_is_one_prior_sequence_probability_auc(small_inputs, monkeypatch, variant):
    acts, labels, groups = small_inputs
    cfg = (dataclasses.replace(QUICK_RELEASE, variant=variant, heldout_split=None, heldout_stream=None)
           if variant == "described" else QUICK_RELEASE)
    codes, priors = [], []

    def spy_vqae(*args, **kwargs):
        result = train_vqae(*args, **kwargs)
        codes.append(result.codes)
        return result

    def spy_prior(train_codes, generators, **kwargs):
        prior = train_prior(train_codes, generators, **kwargs)
        priors.append((train_codes, kwargs, prior))
        return prior

    monkeypatch.setattr(real_module, "train_vqae", spy_vqae)
    monkeypatch.setattr(real_module, "train_prior", spy_prior)
    auc, diagnostics = score_real_tensors(acts, labels, groups, cfg=cfg, seed=0)
    if variant == "release-utils":
        assert len(priors) == 1
        train_codes, kwargs, prior = priors[0]
        assert kwargs["copy_input"] and kwargs["grad_clip"] is None
        train, held = split_release_heldout(labels, fraction=0.2, seed=0)
        assert torch.equal(train_codes, codes[0][:, train])
        probability = prior.sequence_probability(codes[0][:, held], eval_batch=256)
        expected = [roc_auc_score(labels[held].numpy(), row.numpy()) for row in probability]
        assert torch.allclose(auc, torch.tensor(expected, dtype=torch.float32), atol=1e-6)
        assert torch.equal(diagnostics["underflow"], (probability == 0).float().mean(-1))
        assert (diagnostics["perplexity"] > 2).all()  # non-trivial codes, so the check means something
    else:
        assert len(priors) == 2 and not priors[0][1]["copy_input"]
        assert "underflow" not in diagnostics


def test_batched_equals_one_module_at_a_time_release(small_inputs):
    # Tolerance: none (torch.equal), as for the described variant in test_real.py.
    batched = score_real_tensors(*small_inputs, cfg=QUICK_RELEASE, seed=3)
    assert (batched[1]["perplexity"] > 2).all()
    for chunk in (1, 2):
        chunked = score_real_tensors(*small_inputs, cfg=dataclasses.replace(QUICK_RELEASE, module_chunk=chunk), seed=3)
        assert torch.equal(chunked[0], batched[0])
        for name, value in batched[1].items():
            assert torch.equal(chunked[1][name], value), name


# --- registration, config, metadata --------------------------------------------------------------
def test_both_variants_are_registered_scorers_with_their_names(bank):
    assert SCORERS["real"].score is score_real and SCORERS["real-release-utils"].score is score_real_release_utils
    quick = small("release-utils", vq_epochs=1, prior_epochs=1)
    scores = get_scorer("real-release-utils")(bank, cfg=quick, seed=2, model=None, device=None)
    assert scores.method == "real-release-utils" and scores.meta["variant"] == "release-utils"
    assert scores.config == dataclasses.asdict(quick) and scores.config["variant"] == "release-utils"
    assert scores.config["heldout_split"] == "answer" and scores.config["prior_grad_clip"] is None
    assert set(scores.diagnostics) == {"recon_loss", "perplexity", "collapsed", "auc", "underflow"}
    described = score_real(bank, cfg=small("described", vq_epochs=1, prior_epochs=1))
    assert described.method == "real" and described.meta["variant"] == "described"


class _Stop(Exception):
    pass


def test_scorer_defaults_are_their_variant(monkeypatch, bank):
    seen = []

    def record_config(*args, cfg, **kwargs):
        seen.append(cfg)
        raise _Stop  # the config is all this test needs; skip the training

    monkeypatch.setattr(real_module, "_score", record_config)
    for scorer in (score_real, score_real_release_utils):
        with pytest.raises(_Stop):
            scorer(bank)
    assert seen == [RealConfig(), RealConfig(variant="release-utils")]


@pytest.mark.parametrize(
    "scorer, cfg, pattern",
    [
        (score_real_release_utils, RealConfig(), r"'real-release-utils' needs RealConfig\(variant='release-utils'\); found variant='described'"),
        (score_real, RealConfig(variant="release-utils"), r"'real' needs RealConfig\(variant='described'\); found variant='release-utils'"),
    ],
)
def test_scorer_refuses_the_other_variant(bank, scorer, cfg, pattern):
    with pytest.raises(ScoringError, match=pattern):
        scorer(bank, cfg=cfg)


def test_config_resolves_and_validates_the_variant():
    described, release = RealConfig(), RealConfig(variant="release-utils")
    assert (described.heldout_split, described.prior_grad_clip, described.method) == ("group", 1.0, "real")
    assert (release.heldout_split, release.prior_grad_clip, release.method) == ("answer", None, "real-release-utils")
    assert RealConfig(heldout_split="answer").heldout_split == "answer"
    # Under pytest jaxtyping checks the Literal annotation before __post_init__ runs; outside
    # pytest __post_init__'s own message is what a user sees, so run it on a config changed in place.
    unknown = RealConfig()
    object.__setattr__(unknown, "variant", "paper")
    with pytest.raises(ScoringError, match=r"variant must be one of \('described', 'release', 'release-utils'\); found 'paper'"):
        unknown.__post_init__()
    with pytest.raises(ScoringError, match=r"holds out per answer.*found heldout_split='group'"):
        RealConfig(variant="release-utils", heldout_split="group")
    with pytest.raises(ScoringError, match=r"does not clip.*found prior_grad_clip=1.0"):
        RealConfig(variant="release-utils", prior_grad_clip=1.0)
    with pytest.raises(ScoringError, match=r"prior_grad_clip must be > 0"):
        RealConfig(prior_grad_clip=0.0)


def test_release_difference_lists_are_rendered_text():
    for entries in (RELEASE_UTILS_DIFFERENCES, RELEASE_SETTINGS_NOT_FOLLOWED):
        assert entries and all(len(e) == 2 and all(isinstance(s, str) and s.strip() for s in e) for e in entries)
    # one entry per behaviour METHOD.md §3a lists, plus the bias-free layers found in the code
    assert len(RELEASE_UTILS_DIFFERENCES) == 8
    assert np.unique([what for what, _ in RELEASE_UTILS_DIFFERENCES]).size == len(RELEASE_UTILS_DIFFERENCES)
