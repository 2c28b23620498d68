"""REAL scorer: oracle tests for its parts, a planted-signal bank, batching, seeding, errors."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from sklearn.metrics import roc_auc_score

from real_lens.bank import ActivationBank
from real_lens.errors import ScoringError
from real_lens.scoring import SCORERS, ModuleScores
from real_lens.scoring import real as real_module
from real_lens.scoring.prior import ModuleGRULM, clip_grad_norm_per_module, roc_auc
from real_lens.scoring.real_config import RealConfig
from real_lens.scoring.real import (
    check_inputs,
    module_generators,
    score_real,
    score_real_tensors,
    split_heldout,
)
from real_lens.scoring.vqae import (
    ModuleVQAE,
    ema_update,
    perplexity,
    quantize,
    straight_through,
    supcon_loss,
)
from real_lens.tasks.base import Example

# Small but complete: every stage runs, a run over 8 modules takes about a second.
SMALL = RealConfig(
    n_codes=8, n_groups=2, vq_epochs=4, prior_epochs=6, prior_lr=1e-2, prior_embed=16, prior_hidden=16
)
N_LAYERS, N_HEADS, D_HEAD = 2, 4, 8
PLANTED = {(0, 2), (1, 1)}


def make_examples(n: int, per_group: int = 4) -> tuple[Example, ...]:
    """Alternating labels, ``per_group`` consecutive examples per question (both labels in each)."""
    return tuple(Example(f"Q{i // per_group}", f" A{i}", i % 2, f"q{i // per_group}") for i in range(n))


def planted_acts(n: int, *, seed: int = 0) -> torch.Tensor:
    """``[n, layer, head, d_head]`` noise; the PLANTED heads hold an XOR-like cluster structure.

    Aligned examples sit at ±3·e0, violating ones at ±3·e1 (sign at random), so both classes
    have mean ≈ 0: a linear mean-difference direction does not see the label, clusters do.
    """
    g = torch.Generator().manual_seed(seed)
    acts = 0.3 * torch.randn(n, N_LAYERS, N_HEADS, D_HEAD, generator=g)
    labels = torch.arange(n) % 2
    sign = torch.where(torch.rand(n, generator=g) < 0.5, -1.0, 1.0)
    for layer, head in PLANTED:
        acts[:, layer, head, 0] += 3.0 * sign * labels
        acts[:, layer, head, 1] += 3.0 * sign * (1 - labels)
    return acts


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """These tensors are tiny: a second intra-op thread only adds synchronisation (and, on a
    busy machine, waits for a descheduled thread). Results do not depend on it."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def bank() -> ActivationBank:
    n = 320
    return ActivationBank(planted_acts(n), make_examples(n), {"site": "head_z", "model": "synthetic", "task": "planted"})


@pytest.fixture(scope="module")
def scores(bank) -> ModuleScores:
    return score_real(bank, cfg=SMALL, seed=0)


# --- the whole scorer ------------------------------------------------------------------
def test_planted_fixture_hides_the_label_from_a_mean_difference(bank):
    acts, labels = bank.acts, bank.labels
    for layer, head in PLANTED:
        gap = acts[labels == 1, layer, head].mean(0) - acts[labels == 0, layer, head].mean(0)
        assert gap.norm() < 1.0  # vs. cluster separation 3·sqrt(2)


def test_planted_heads_rank_first(scores):
    assert set(scores.ranking()[: len(PLANTED)]) == PLANTED
    for layer, head in PLANTED:
        assert scores.scores[layer, head] > 0.9


def test_scores_shape_diagnostics_and_metadata(scores):
    assert scores.method == "real"
    assert scores.scores.shape == (N_LAYERS, N_HEADS)
    assert set(scores.diagnostics) == {"recon_loss", "perplexity", "collapsed", "auc"}
    assert all(v.shape == (N_LAYERS, N_HEADS) for v in scores.diagnostics.values())
    assert torch.equal(scores.diagnostics["auc"], scores.scores)  # nothing collapsed by default
    assert scores.diagnostics["collapsed"].sum() == 0
    assert ((scores.diagnostics["perplexity"] >= 1) & (scores.diagnostics["perplexity"] <= SMALL.n_codes)).all()
    assert scores.meta["site"] == "head_z" and scores.meta["model"] == "synthetic"
    assert scores.meta["task"] == "planted" and scores.meta["seed"] == 0 and "version" in scores.meta
    assert scores.config == dataclasses.asdict(SMALL)


def test_registered_under_real():
    assert SCORERS["real"].score is score_real


def test_layer_site_scores_have_layer_shape():
    n, n_layers, d_model = 120, 3, 8
    acts = torch.randn(n, n_layers, d_model, generator=torch.Generator().manual_seed(1))
    bank = ActivationBank(acts, make_examples(n), {"site": "resid_post"})
    result = score_real(bank, cfg=dataclasses.replace(SMALL, vq_epochs=1, prior_epochs=1))
    assert result.scores.shape == (n_layers,)
    assert all(v.shape == (n_layers,) for v in result.diagnostics.values())


def test_save_load_round_trip(scores, tmp_path):
    loaded = ModuleScores.load(scores.save(tmp_path / "real"))
    assert torch.equal(loaded.scores, scores.scores)
    assert loaded.diagnostics.keys() == scores.diagnostics.keys()
    assert all(torch.equal(loaded.diagnostics[k], v) for k, v in scores.diagnostics.items())
    assert (loaded.method, loaded.config, loaded.meta) == (scores.method, scores.config, scores.meta)


# --- batching and seeding ----------------------------------------------------------------
FAST = dataclasses.replace(SMALL, vq_epochs=2, prior_epochs=2)


@pytest.fixture(scope="module")
def small_inputs():
    """5 modules (two of them planted) of 120 examples: enough to train, quick to repeat."""
    n = 120
    examples = make_examples(n)
    acts = planted_acts(n, seed=1).reshape(n, N_LAYERS * N_HEADS, D_HEAD)[:, 2:7]
    return acts, torch.tensor([e.label for e in examples]), [e.group for e in examples]


def test_batched_equals_one_module_at_a_time(small_inputs):
    # Tolerance: none (torch.equal). Module m's weights and minibatch orders come from its own
    # generator seeded by (seed, m); every op is per module (bmm over the module axis, sums
    # within a module) and Adam is elementwise, so on CPU each module sees bit-identical
    # arithmetic whatever its chunk. (A BLAS that rounded a batched gemm differently from a
    # single one would break this, and training would then diverge chaotically, not by ~1e-6.)
    batched = score_real_tensors(*small_inputs, cfg=FAST, seed=3)
    for chunk in (1, 2):  # one module at a time; chunks of sizes [2, 2, 1]
        chunked = score_real_tensors(*small_inputs, cfg=dataclasses.replace(FAST, module_chunk=chunk), seed=3)
        assert torch.equal(chunked[0], batched[0])
        for name, value in batched[1].items():
            assert torch.equal(chunked[1][name], value), name


def test_module_result_does_not_depend_on_the_other_modules(small_inputs):
    acts, labels, groups = small_inputs
    full, _ = score_real_tensors(acts, labels, groups, cfg=FAST, seed=5)
    first_three, _ = score_real_tensors(acts[:, :3], labels, groups, cfg=FAST, seed=5)
    assert torch.equal(first_three, full[:3])


def test_same_seed_identical_different_seed_different(small_inputs):
    auc, diagnostics = score_real_tensors(*small_inputs, cfg=FAST, seed=0)
    again, again_diagnostics = score_real_tensors(*small_inputs, cfg=FAST, seed=0)
    assert torch.equal(again, auc)
    assert all(torch.equal(again_diagnostics[k], v) for k, v in diagnostics.items())
    _, other = score_real_tensors(*small_inputs, cfg=FAST, seed=1)
    assert not torch.equal(other["recon_loss"], diagnostics["recon_loss"])


def test_module_generators_depend_on_seed_module_and_stage():
    def first_draw(seed, module, stage):
        return torch.rand(3, generator=module_generators(seed, [module], stage)[0])

    assert torch.equal(first_draw(0, 4, "vqae"), first_draw(0, 4, "vqae"))
    assert not torch.equal(first_draw(0, 4, "vqae"), first_draw(1, 4, "vqae"))
    assert not torch.equal(first_draw(0, 4, "vqae"), first_draw(0, 5, "vqae"))
    assert not torch.equal(first_draw(0, 4, "vqae"), first_draw(0, 4, "prior_aligned"))


# --- held-out split ------------------------------------------------------------------------
def test_group_split_keeps_every_question_on_one_side():
    examples = make_examples(200, per_group=5)
    labels = torch.tensor([e.label for e in examples])
    groups = [e.group for e in examples]
    train, held = split_heldout(labels, groups, how="group", fraction=0.2, seed=0)
    assert not {groups[i] for i in train.tolist()} & {groups[i] for i in held.tolist()}
    assert sorted(train.tolist() + held.tolist()) == list(range(200))
    assert len({groups[i] for i in held.tolist()}) == 8  # 20% of 40 questions
    assert set(labels[held].tolist()) == set(labels[train].tolist()) == {0, 1}


def test_answer_split_holds_out_a_fraction_of_each_class():
    labels = torch.tensor([1] * 30 + [0] * 70)
    train, held = split_heldout(labels, ["same"] * 100, how="answer", fraction=0.2, seed=0)
    assert (labels[held] == 1).sum() == 6 and (labels[held] == 0).sum() == 14
    assert sorted(train.tolist() + held.tolist()) == list(range(100))


# --- the parts, against hand-computed values ---------------------------------------------
def test_quantize_picks_nearest_entry_and_lowest_index_on_ties():
    codebook = torch.tensor([[[0.0], [2.0], [-2.0]]])
    z = torch.tensor([[[0.4], [1.6], [-5.0], [1.0]]])  # 1.0 is equidistant from entries 0 and 1
    q, codes = quantize(z, codebook)
    assert codes.tolist() == [[0, 1, 2, 0]]
    assert q.tolist() == [[[0.0], [2.0], [-2.0], [0.0]]]


def test_ema_codebook_update_hand_computed():
    # One module, K = 2 entries, 1-D codes, decay 0.5.
    z1, codes1 = torch.tensor([[[1.0], [3.0], [10.0]]]), torch.tensor([[0, 0, 1]])
    zeros_n, zeros_w = torch.zeros(1, 2), torch.zeros(1, 2, 1)
    # eps -> 0: step 1 debias 1-0.5: counts N = [2, 1], sums m = [4, 10] -> e = [2, 10].
    codebook, hidden_n, hidden_w = ema_update(zeros_n, zeros_w, 1, z1, codes1, decay=0.5, eps=0.0)
    assert torch.allclose(codebook, torch.tensor([[[2.0], [10.0]]]))
    # step 2 with z = [0, 4] -> codes [0, 1]: h_N = [1, .5]/2 + [1, 1]/2 = [1, .75], debias .75
    # -> N = [4/3, 1]; h_m = [2, 5]/2 + [0, 4]/2 = [1, 4.5] -> m = [4/3, 6] -> e = [1, 6].
    codebook, _, _ = ema_update(hidden_n, hidden_w, 2, torch.tensor([[[0.0], [4.0]]]), torch.tensor([[0, 1]]), decay=0.5, eps=0.0)
    assert torch.allclose(codebook, torch.tensor([[[1.0], [6.0]]]))
    # Laplace smoothing, eps = 0.1: Ñ = (N + .1) / (3 + 2·.1) · 3 = [1.96875, 1.03125].
    codebook, _, _ = ema_update(zeros_n, zeros_w, 1, z1, codes1, decay=0.5, eps=0.1)
    assert torch.allclose(codebook, torch.tensor([[[4 / 1.96875], [10 / 1.03125]]]))


def test_ema_entry_never_chosen_sits_at_origin():
    codebook, _, _ = ema_update(torch.zeros(1, 3), torch.zeros(1, 3, 2), 1, torch.ones(1, 4, 2), torch.zeros(1, 4, dtype=torch.long), decay=0.99, eps=1e-5)
    assert torch.allclose(codebook[0, 0], torch.ones(2), atol=1e-4)
    assert torch.equal(codebook[0, 1:], torch.zeros(2, 2))


def test_straight_through_passes_gradient_to_encoder():
    z = torch.tensor([[[0.4], [1.6]]], requires_grad=True)
    q, _ = quantize(z, torch.tensor([[[0.0], [2.0]]]))
    out = straight_through(z, q)
    assert out.tolist() == [[[0.0], [2.0]]]
    out.backward(torch.tensor([[[3.0], [-1.0]]]))
    assert z.grad.tolist() == [[[3.0], [-1.0]]]


def test_vqae_reconstruction_gradient_reaches_encoder_not_codebook():
    gens = module_generators(0, [0, 1], "vqae")
    model = ModuleVQAE(gens, d=8, code_dim=4, n_groups=2, n_codes=4, leaky_slope=0.01, ema_decay=0.99, ema_eps=1e-5)
    x = torch.randn(2, 5, 8)
    z = model.encode(x)
    q, codes = model.quantize(z)
    assert codes.shape == (2, 5, 2)
    model.decode(straight_through(z, q)).pow(2).sum().backward()
    assert model.enc1_w.grad.abs().sum() > 0 and model.dec2_w.grad.abs().sum() > 0
    assert not model.codebook.requires_grad


def test_perplexity_hand_computed():
    counts = torch.tensor([[4.0, 0, 0, 0], [1, 1, 1, 1], [2, 2, 0, 0]])
    assert torch.allclose(perplexity(counts), torch.tensor([1.0, 4.0, 2.0]))


def test_supcon_matches_a_per_anchor_loop():
    g = torch.Generator().manual_seed(0)
    features = torch.randn(2, 6, 3, generator=g)
    labels = torch.tensor([[0, 0, 1, 1, 1, 0], [1, 0, 0, 0, 0, 0]])  # module 1: anchor 0 has no positive
    temperature = 0.5
    expected = []
    for m in range(2):
        f = torch.nn.functional.normalize(features[m], dim=-1)
        per_anchor = []
        for i in range(6):
            others = [a for a in range(6) if a != i]
            positives = [p for p in others if labels[m, p] == labels[m, i]]
            if not positives:
                continue
            denominator = torch.logsumexp(torch.stack([f[i] @ f[a] / temperature for a in others]), 0)
            per_anchor.append(-torch.stack([f[i] @ f[p] / temperature - denominator for p in positives]).mean())
        expected.append(torch.stack(per_anchor).mean())
    assert torch.allclose(supcon_loss(features, labels, temperature=temperature), torch.stack(expected), atol=1e-5)


def test_collapse_detected_on_constant_input():
    n = 120
    acts = torch.randn(n, 3, 8, generator=torch.Generator().manual_seed(0))
    acts[:, 1] = 0.7  # one constant module: every example gets the same code -> perplexity 1
    examples = make_examples(n)
    labels, groups = torch.tensor([e.label for e in examples]), [e.group for e in examples]
    cfg = dataclasses.replace(SMALL, vq_epochs=3, prior_epochs=1, collapse_threshold=0.2, collapse_patience=1)
    auc, diagnostics = score_real_tensors(acts, labels, groups, cfg=cfg)
    assert diagnostics["collapsed"].tolist() == [0.0, 1.0, 0.0]
    assert diagnostics["perplexity"][1] == 1.0
    assert auc[1] == 0.0 and auc[0] == diagnostics["auc"][0]
    # The release's threshold 0 never collapses anything.
    _, never = score_real_tensors(acts, labels, groups, cfg=dataclasses.replace(cfg, collapse_threshold=0.0))
    assert never["collapsed"].sum() == 0


def _torch_gru_reference(model: ModuleGRULM, m: int, codes: torch.Tensor):
    """Module m's language model rebuilt from nn.Embedding + nn.GRU + nn.Linear."""
    n_codes, d_embed = model.n_codes, model.embed.shape[-1]
    d_hidden = model.w_hh.shape[1]
    embed = torch.nn.Embedding(n_codes + 1, d_embed).double()
    gru = torch.nn.GRU(d_embed, d_hidden, batch_first=True).double()
    out = torch.nn.Linear(d_hidden, n_codes).double()
    with torch.no_grad():
        embed.weight.copy_(model.embed[m])
        gru.weight_ih_l0.copy_(model.w_ih[m].T)
        gru.weight_hh_l0.copy_(model.w_hh[m].T)
        gru.bias_ih_l0.copy_(model.b_ih[m])
        gru.bias_hh_l0.copy_(model.b_hh[m])
        out.weight.copy_(model.w_out[m].T)
        out.bias.copy_(model.b_out[m])
    inputs = torch.cat([torch.full((codes.shape[1], 1), n_codes), codes[m, :, :-1]], dim=1)
    logits = out(gru(embed(inputs))[0])
    log_likelihood = torch.log_softmax(logits, -1).gather(-1, codes[m].unsqueeze(-1)).squeeze(-1).mean(-1)
    grads = {
        "embed": lambda: embed.weight.grad, "w_ih": lambda: gru.weight_ih_l0.grad.T,
        "w_hh": lambda: gru.weight_hh_l0.grad.T, "b_ih": lambda: gru.bias_ih_l0.grad,
        "b_hh": lambda: gru.bias_hh_l0.grad, "w_out": lambda: out.weight.grad.T, "b_out": lambda: out.bias.grad,
    }
    return logits, log_likelihood, grads


@pytest.mark.parametrize("length", [4, 1])
def test_batched_gru_matches_torch_gru_values_and_gradients(length):
    # float64 so that the hand-written backward is checked tightly against autograd on nn.GRU.
    n_codes = 5
    model = ModuleGRULM(module_generators(0, [0, 1, 2], "prior_aligned"), n_codes=n_codes, d_embed=4, d_hidden=6).double()
    codes = torch.randint(0, n_codes, (3, 7, length), generator=torch.Generator().manual_seed(0))
    logits = model(codes)
    weights = torch.arange(1.0, 8.0, dtype=torch.float64)  # an uneven loss, so every example matters
    (model.log_likelihood(codes) * weights).sum().backward()
    for m in range(3):
        expected_logits, expected_ll, expected_grads = _torch_gru_reference(model, m, codes)
        (expected_ll * weights).sum().backward()
        assert torch.allclose(logits[m], expected_logits, atol=1e-10)
        for name, grad in expected_grads.items():
            assert torch.allclose(getattr(model, name).grad[m], grad(), atol=1e-10), name


def test_grad_clip_is_per_module():
    weight = torch.nn.Parameter(torch.zeros(2, 2))
    weight.grad = torch.tensor([[6.0, 8.0], [0.3, 0.4]])  # norms 10 and 0.5
    norms = clip_grad_norm_per_module([weight], 1.0)
    assert torch.allclose(norms, torch.tensor([10.0, 0.5]))
    assert torch.allclose(weight.grad, torch.tensor([[0.6, 0.8], [0.3, 0.4]]), atol=1e-6)


def test_roc_auc_matches_sklearn_with_ties():
    g = torch.Generator().manual_seed(0)
    scores = (torch.randn(5, 40, generator=g) * 2).round() / 2  # many ties
    labels = torch.randint(0, 2, (40,), generator=g)
    expected = [roc_auc_score(labels.numpy(), row.numpy()) for row in scores]
    assert torch.allclose(roc_auc(scores, labels), torch.tensor(expected, dtype=torch.float32), atol=1e-6)


# --- errors, all before training -----------------------------------------------------------
@pytest.fixture
def no_training(monkeypatch):
    """Fail loudly if any training starts: input errors must come first."""

    def fail(*args, **kwargs):
        raise AssertionError("training started before the input was validated")

    monkeypatch.setattr(real_module, "train_vqae", fail)
    monkeypatch.setattr(real_module, "train_prior", fail)


def _inputs(n=40, modules=3, d=8):
    examples = make_examples(n)
    acts = torch.randn(n, modules, d, generator=torch.Generator().manual_seed(0))
    return acts, torch.tensor([e.label for e in examples]), [e.group for e in examples]


def test_error_single_class(no_training):
    acts, labels, groups = _inputs()
    with pytest.raises(ScoringError, match=r"both aligned \(1\) and violating \(0\).*found only label 1"):
        score_real_tensors(acts, torch.ones_like(labels), groups, cfg=SMALL)


def test_error_too_few_examples_per_class(no_training):
    acts, labels, groups = _inputs()
    labels = torch.zeros_like(labels)
    labels[:3] = 1
    with pytest.raises(ScoringError, match=r"at least 5 examples per class; found 3 aligned and 37 violating"):
        score_real_tensors(acts, labels, groups, cfg=SMALL)


def test_error_too_few_groups_for_group_split(no_training):
    acts, labels, _ = _inputs()
    with pytest.raises(ScoringError, match=r"at least 5 groups.*found 2.*heldout_split='answer'"):
        score_real_tensors(acts, labels, ["a", "b"] * 20, cfg=SMALL)


def test_error_labels_not_binary(no_training):
    acts, labels, groups = _inputs()
    with pytest.raises(ScoringError, match=r"labels 0 \(violating\) or 1 \(aligned\); found values \[0, 1, 2\]"):
        score_real_tensors(acts, labels.index_fill(0, torch.tensor([0]), 2), groups, cfg=SMALL)


def test_error_nan_names_the_module(no_training, bank):
    acts = bank.acts.clone()
    acts[5, 1, 2, 3] = float("nan")
    acts[0, 0, 3, 0] = float("inf")
    nan_bank = ActivationBank(acts, bank.examples, bank.meta)
    with pytest.raises(ScoringError, match=r"NaN or inf in 2 module\(s\): L0H3, L1H2"):
        score_real(nan_bank, cfg=SMALL)
    with pytest.raises(ScoringError, match=r"NaN or inf in 2 module\(s\): module 3, module 6"):
        score_real_tensors(nan_bank.flat(), bank.labels, bank.groups, cfg=SMALL)


def test_error_code_not_divisible_into_groups(no_training):
    acts, labels, groups = _inputs(d=10)  # b = 5, n_groups = 2
    with pytest.raises(ScoringError, match=r"b=5.*n_groups=2.*divisor"):
        score_real_tensors(acts, labels, groups, cfg=SMALL)


@pytest.mark.parametrize(
    "change, pattern",
    [
        (lambda a, l, g: (a[0], l, g), r"\[example, module, d\].*found \(3, 8\)"),
        (lambda a, l, g: (a, l[:-1], g), r"one label per example, shape \(40,\); found \(39,\)"),
        (lambda a, l, g: (a, l, g[:-1]), r"one group per example \(40\); found 39"),
        (lambda a, l, g: (a, l.float(), g), r"labels 0 \(violating\) or 1 \(aligned\)"),
    ],
)
def test_error_wrong_shapes(change, pattern):
    # check_inputs directly: under pytest's jaxtyping checks the annotated public functions
    # would reject these shapes before REAL's own, friendlier message.
    with pytest.raises(ScoringError, match=pattern):
        check_inputs(*change(*_inputs()), SMALL)


@pytest.mark.parametrize(
    "kwargs, pattern",
    [
        ({"n_codes": 0}, r"n_codes must be a positive integer; found 0"),
        ({"ema_decay": 1.0}, r"ema_decay must be in \[0, 1\); found 1.0"),
        ({"heldout_split": "question"}, r"heldout_split must be one of \('group', 'answer'\); found 'question'"),
        ({"code_dim": 6, "n_groups": 4}, r"code_dim must be a positive multiple of n_groups=4; found 6"),
        ({"heldout_fraction": 1.0}, r"heldout_fraction must be in \(0, 1\)"),
        ({"temperature": 0.0}, r"temperature must be > 0"),
    ],
)
def test_config_is_validated(kwargs, pattern):
    with pytest.raises(ScoringError, match=pattern):
        RealConfig(**kwargs)


def test_defaults_are_the_described_method():
    cfg = RealConfig()
    assert (cfg.n_codes, cfg.n_groups, cfg.supcon_weight, cfg.beta, cfg.lr, cfg.batch_size) == (32, 8, 1e-3, 0.25, 1e-3, 32)
    assert (cfg.vq_epochs, cfg.prior_epochs, cfg.ema_decay, cfg.collapse_threshold) == (20, 10, 0.99, 0.0)
    assert (cfg.variant, cfg.heldout_split, cfg.prior_grad_clip) == ("described", "group", 1.0)


def test_meta_says_how_many_held_out_questions_the_auc_rests_on(bank, scores):
    """The AUC of every module is computed on the held-out part of one split: its size is in the meta."""
    train, heldout = split_heldout(bank.labels, bank.groups, how=SMALL.heldout_split, fraction=SMALL.heldout_fraction,
                                   seed=0)
    held = scores.meta["heldout"]
    assert held["n_examples"] == len(heldout) and held["n_questions"] == len({bank.groups[i] for i in heldout.tolist()})
    assert held["n_aligned"] == int(bank.labels[heldout].sum())
    assert 0 < held["n_questions"] < len(set(bank.groups))
