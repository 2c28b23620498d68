"""Baseline scorers (ITI probe, activation/attribution patching, random), comparison, plots."""

import importlib
import math
import sys
from dataclasses import replace

import pytest
import torch

from real_lens import hooks
from real_lens.bank import ActivationBank
from real_lens.compare import compare_scores
from real_lens.errors import ScoringError
from real_lens.models import model_identity
from real_lens.plotting import plot_score_heatmap, plot_score_heatmaps
from real_lens.scoring import SCORERS, ModuleScores, get_scorer
from real_lens.scoring.attribution import AttributionConfig, attribute_pairs
from real_lens.scoring.pairs import (
    SKIP_LENGTH,
    SKIP_ONE_LABEL,
    build_contrast_pairs,
    caa_prompt,
    question_from_prompt,
)
from real_lens.scoring.patching import PatchingConfig, patch_pairs
from real_lens.scoring.probe import ProbeConfig, score_probe, split_groups
from real_lens.scoring.random import score_random
from real_lens.tasks.base import Example
from transformer_lens.tools.analysis.attribution_patching import Node

EMBED = Node(kind="embed", position=0).hook_name  # "hook_embed"

QUESTIONS = [
    ("Is the sky blue?", "Yes, it is blue.", "No, it is green."),
    ("Do fish swim?", "Yes, fish swim.", "No, fish fly."),
    ("Is fire cold?", "No, it is hot.", "Yes, it is icy."),
    ("Can cats bark?", "No, cats meow.", "Yes, loudly."),
    ("Is water wet?", "Yes, water is wet.", "No, it is dry."),
]
# Gaps on the random tiny model are ~1e-3..1e-2 logits; keep every pair for the oracles.
TINY_MIN_GAP = 1e-6


def toy_examples(questions=QUESTIONS):
    examples = []
    for q, aligned, violating in questions:
        prompt = f"Q: {q} A:"
        examples += [Example(prompt, " " + aligned, 1, q), Example(prompt, " " + violating, 0, q)]
    return tuple(examples)


def toy_bank(site="head_z", *, model="tiny-llama", examples=None, shape=(2, 4, 16)):
    examples = toy_examples() if examples is None else examples
    acts = torch.randn(len(examples), *shape, generator=torch.Generator().manual_seed(0))
    return ActivationBank(acts, examples, {"site": site, "model": model, "task": "toy"})


@pytest.fixture(scope="module")
def pairs(tiny_model):
    return build_contrast_pairs(toy_examples(), tiny_model, n_pairs=8, seed=0)


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


# --------------------------------------------------------------------------- pairs
def test_question_and_caa_prompt():
    assert question_from_prompt("Q: Is it? A:") == "Is it?"
    assert question_from_prompt("Plain prompt") == "Plain prompt"
    assert caa_prompt("Is it?", " Yes.", " No.") == "Is it?\n\nChoices:\n (A) Yes.\n (B) No.\nAnswer: ("


def test_pairs_have_equal_lengths_and_swap_options(tiny_model, pairs):
    assert len(pairs) == len(QUESTIONS) and not pairs.skipped
    assert pairs.clean.shape == pairs.corrupted.shape
    for i in range(len(pairs)):
        n = int(pairs.lengths[i])
        assert not torch.equal(pairs.clean[i, :n], pairs.corrupted[i, :n])
        assert sorted(pairs.clean[i, :n].tolist()) == sorted(pairs.corrupted[i, :n].tolist())
    assert tiny_model.tokenizer.decode([pairs.token_a]) == "A"
    assert tiny_model.tokenizer.decode([pairs.token_b]) == "B"
    # seeded: same seed, same pairs; n_pairs caps the count
    again = build_contrast_pairs(toy_examples(), tiny_model, n_pairs=8, seed=0)
    assert torch.equal(again.clean, pairs.clean) and again.groups == pairs.groups
    assert len(build_contrast_pairs(toy_examples(), tiny_model, n_pairs=2, seed=0)) == 2


class _MergingTokenizer:
    """The tiny model's tokenizer, except '(A) Yes, it' loses a token: option order changes length."""

    def __init__(self, model):
        self.model, self.tokenizer = model, model.tokenizer

    def to_tokens(self, text):
        return self.model.to_tokens(text.replace("(A) Yes, it", "(A)Yes, it"))


def test_pairs_report_skipped_groups(tiny_model):
    one_sided = Example("Q: Lonely? A:", " Yes.", 1, "Lonely?")
    examples = toy_examples() + (one_sided,)
    built = build_contrast_pairs(examples, _MergingTokenizer(tiny_model), n_pairs=10, seed=0)
    n_merged = sum(a.startswith("Yes, it") != v.startswith("Yes, it") for _, a, v in QUESTIONS)
    assert n_merged == 2
    assert built.skipped_counts == {SKIP_ONE_LABEL: 1, SKIP_LENGTH: n_merged}
    assert len(built) == len(QUESTIONS) - n_merged
    assert "Lonely?" not in built.groups and built.report()["skipped"] == built.skipped_counts


def test_right_padding_does_not_change_the_metric(tiny_model, pairs):
    with torch.no_grad():
        batched = pairs.logit_diff(tiny_model(pairs.clean))
        for i in range(len(pairs)):
            alone = next(iter(replace(pairs, clean=pairs.clean[i : i + 1], corrupted=pairs.corrupted[i : i + 1],
                                      lengths=pairs.lengths[i : i + 1], groups=pairs.groups[i : i + 1]).batches(1)))
            assert alone.clean.shape[1] == int(pairs.lengths[i])  # padding trimmed
            assert torch.allclose(alone.logit_diff(tiny_model(alone.clean)), batched[i : i + 1], atol=1e-5)


# --------------------------------------------------------------------------- activation patching
def test_patching_every_head_at_once_restores_clean_exactly(tiny_model, pairs):
    """Oracle: attention is the only path between positions, and the last token ("(") is the
    same in both prompts; with every head's z patched at every position, the last position
    sees exactly its clean inputs. Leaving out one head breaks it (so the oracle can fail).
    """
    from real_lens.scoring.patching import _patch_setter

    n_layers, n_heads = tiny_model.cfg.n_layers, tiny_model.cfg.n_heads
    z_names = [hooks.head_z(layer) for layer in range(n_layers)]
    assert torch.equal(pairs.clean[torch.arange(len(pairs)), pairs.lengths - 1],
                       pairs.corrupted[torch.arange(len(pairs)), pairs.lengths - 1])
    with torch.no_grad():
        clean_logits, cache = tiny_model.run_with_cache(pairs.clean, names_filter=z_names)
        corrupted = pairs.logit_diff(tiny_model(pairs.corrupted))
    clean = pairs.logit_diff(clean_logits)
    setter = _patch_setter("head_z", "all", pairs)  # the setter the scorer uses

    def patched_metric(skip=None):
        def make_hook(layer):
            def hook(z, hook):
                z = z.clone()
                for head in range(n_heads):
                    if (layer, head) != skip:
                        z = setter(z, [layer, head], cache[z_names[layer]])
                return z
            return hook

        fwd_hooks = [(name, make_hook(layer)) for layer, name in enumerate(z_names)]
        with torch.no_grad():
            return pairs.logit_diff(tiny_model.run_with_hooks(pairs.corrupted, fwd_hooks=fwd_hooks))

    assert not torch.allclose(corrupted, clean, atol=1e-5)
    assert torch.allclose(patched_metric(), clean, atol=1e-6)  # fraction restored = 1
    assert not torch.allclose(patched_metric(skip=(0, 1)), clean, atol=1e-6)


def test_patching_nothing_gives_zero(tiny_model, pairs):
    same = replace(pairs, corrupted=pairs.clean)
    effects, gaps = patch_pairs(tiny_model, same, site="head_z", batch_size=2)
    assert effects.shape == (len(pairs), 2, 4)
    assert torch.equal(effects, torch.zeros_like(effects)) and torch.equal(gaps, torch.zeros_like(gaps))


def test_patching_resid_post_everywhere_restores_clean(tiny_model):
    """Oracle: a layer's residual stream at every position determines everything after it."""
    bank = toy_bank("resid_post", shape=(2, 64))
    scores = get_scorer("patching")(bank, model=tiny_model, cfg=PatchingConfig(min_gap=TINY_MIN_GAP))
    assert scores.scores.shape == (2,)
    assert torch.allclose(scores.scores, torch.ones(2), atol=1e-3)


@pytest.mark.parametrize("positions", ["all", "last"])
def test_patching_scorer_matches_a_manual_hook(tiny_model, pairs, positions):
    effects, gaps = patch_pairs(tiny_model, pairs, site="head_z", batch_size=3, positions=positions)
    layer, head = 1, 2
    name = hooks.head_z(layer)
    rows = torch.arange(len(pairs))
    with torch.no_grad():
        clean_logits, cache = tiny_model.run_with_cache(pairs.clean, names_filter=[name])
        corrupted = pairs.logit_diff(tiny_model(pairs.corrupted))

        def hook(z, hook):
            z = z.clone()
            if positions == "all":
                z[:, :, head] = cache[name][:, :, head]
            else:
                last = pairs.lengths - 1
                z[rows, last, head] = cache[name][rows, last, head]
            return z

        patched = pairs.logit_diff(tiny_model.run_with_hooks(pairs.corrupted, fwd_hooks=[(name, hook)]))
    assert torch.allclose(effects[:, layer, head], patched - corrupted, atol=1e-5)
    assert torch.allclose(gaps, pairs.logit_diff(clean_logits) - corrupted, atol=1e-5)


def test_patching_scores_and_metadata(tiny_model, tmp_path):
    bank = toy_bank()
    cfg = PatchingConfig(n_pairs=4, batch_size=3, min_gap=TINY_MIN_GAP)
    scores = get_scorer("patching")(bank, model=tiny_model, seed=0, cfg=cfg)
    assert scores.scores.shape == (2, 4) and torch.isfinite(scores.scores).all()
    assert scores.method == "patching"
    assert scores.config == {"n_pairs": 4, "batch_size": 3, "min_gap": TINY_MIN_GAP, "positions": "all"}
    assert scores.meta["site"] == "head_z" and scores.meta["model"] == "tiny-llama" and scores.meta["task"] == "toy"
    assert scores.meta["pairs"]["n_used"] == 4 and scores.meta["seed"] == 0
    assert set(scores.diagnostics) == {"stderr", "effect_logits"}
    loaded = ModuleScores.load(scores.save(tmp_path / "patching"))
    assert torch.equal(loaded.scores, scores.scores) and loaded.meta == scores.meta
    # last-position patching of a layer site runs and differs from all-position patching
    last = get_scorer("patching")(toy_bank("resid_post", shape=(2, 64)), model=tiny_model,
                                  cfg=PatchingConfig(min_gap=TINY_MIN_GAP, positions="last"))
    assert last.scores.shape == (2,) and not torch.allclose(last.scores, torch.ones(2))


def test_small_gap_pairs_are_skipped_and_counted(tiny_model, pairs):
    effects, gaps = patch_pairs(tiny_model, pairs, site="head_z", batch_size=8)
    threshold = float(gaps.abs().median())
    from real_lens.scoring.pairs import SKIP_SMALL_GAP, scores_from_pair_effects

    scores = scores_from_pair_effects(
        effects, gaps, pairs, min_gap=threshold, method="patching", unit="u", site="head_z",
        seed=0, config={}, bank_meta={},
    )
    n_small = int((gaps.abs() < threshold).sum())
    assert n_small > 0 and scores.meta["pairs"]["skipped"] == {SKIP_SMALL_GAP: n_small}
    keep = gaps.abs() >= threshold
    expected = (effects[keep] / gaps[keep][:, None, None]).mean(0)
    assert torch.allclose(scores.scores, expected.float(), atol=1e-6)


# --------------------------------------------------------------------------- attribution patching
def test_attribution_matches_patching_in_the_linear_regime(tiny_model, pairs):
    """AtP is exact to first order: shrink the corruption and the two must agree.

    The corrupted prompt is the clean prompt with one token changed, and a hook on the
    embedding moves that token's embedding only a fraction EPS of the way from the clean
    embedding to the corrupted one. Patching effects and gaps are then O(EPS), and AtP's error
    (the second-order Taylor term) is O(EPS) relative to them. Measured on this model at
    EPS = 0.03: max |AtP - patching| = 0.06% of the largest |patching| fraction; float32
    round-off on ~1e-4-logit gaps adds ~0.1%. A 1% tolerance covers both with margin, and a
    wrong gradient (wrong head, wrong sign, missing layer) is off by O(100%).
    """
    eps, position = 0.03, 3
    corrupted_tokens = pairs.clean.clone()
    corrupted_tokens[:, position] = (corrupted_tokens[:, position] + 7) % 256
    close = replace(pairs, corrupted=corrupted_tokens)
    embed = EMBED
    with torch.no_grad():
        _, cache = tiny_model.run_with_cache(pairs.clean, names_filter=[embed])
    clean_embedding = cache[embed][:, position].clone()

    def shrink_corruption(embedding, hook):
        embedding = embedding.clone()  # the clean run is unchanged: its difference is 0
        embedding[:, position] = clean_embedding + eps * (embedding[:, position] - clean_embedding)
        return embedding

    tiny_model.add_hook(embed, shrink_corruption, is_permanent=True)
    try:
        effects, gaps = patch_pairs(tiny_model, close, site="head_z", batch_size=len(close))
        estimates, atp_gaps = attribute_pairs(tiny_model, close, site="head_z", batch_size=len(close))
    finally:
        tiny_model.reset_hooks(including_permanent=True)
    assert torch.allclose(gaps, atp_gaps) and (gaps.abs() > 0).all()
    measured = effects / gaps[:, None, None]
    estimated = estimates / gaps[:, None, None]
    assert (measured - estimated).abs().max() <= 0.01 * measured.abs().max()


def test_attribution_scores_shape_scale_and_layer_sites(tiny_model):
    cfg = AttributionConfig(min_gap=TINY_MIN_GAP)
    heads = get_scorer("attribution")(toy_bank(), model=tiny_model, cfg=cfg)
    patching = get_scorer("patching")(toy_bank(), model=tiny_model, cfg=PatchingConfig(min_gap=TINY_MIN_GAP))
    assert heads.scores.shape == (2, 4) and heads.method == "attribution"
    # the random tiny model is nearly linear, so even real corruptions rank alike
    assert compare_scores(heads, patching, k=4)["spearman"] > 0.9
    for site in ("attn_out", "mlp_out", "resid_post"):
        layer = get_scorer("attribution")(toy_bank(site, shape=(2, 64)), model=tiny_model, cfg=cfg)
        assert layer.scores.shape == (2,) and torch.isfinite(layer.scores).all()


def test_attribution_of_identical_runs_is_zero(tiny_model, pairs):
    estimates, gaps = attribute_pairs(tiny_model, replace(pairs, corrupted=pairs.clean), site="head_z")
    assert torch.equal(estimates, torch.zeros_like(estimates)) and torch.equal(gaps, torch.zeros_like(gaps))


# --------------------------------------------------------------------------- bad input
CONFIGS = {"patching": PatchingConfig, "attribution": AttributionConfig}


@pytest.mark.parametrize("method", ["patching", "attribution"])
def test_model_based_scorers_reject_bad_input(tiny_model, method):
    scorer = get_scorer(method)
    with pytest.raises(ScoringError, match="model=None"):
        scorer(toy_bank(), model=None)
    with pytest.raises(ScoringError, match="collected from model 'smollm2"):
        scorer(toy_bank(model="smollm2-135m-instruct"), model=tiny_model)
    with pytest.raises(ScoringError, match="collected from model 'other'"):  # activations.collect's format
        scorer(toy_bank(model={"name": "other", "fingerprint": "x"}), model=tiny_model)
    matching = CONFIGS[method](n_pairs=1, min_gap=0.0)
    assert scorer(toy_bank(model=model_identity(tiny_model)), model=tiny_model, cfg=matching).scores.shape == (2, 4)
    with pytest.raises(ScoringError, match=r"modules of shape \(3, 4\)"):
        scorer(toy_bank(model=None, shape=(3, 4, 16)), model=tiny_model)
    only_aligned = tuple(e for e in toy_examples() if e.label == 1)
    with pytest.raises(ScoringError, match="no contrast pair could be built"):
        scorer(toy_bank(examples=only_aligned), model=tiny_model)
    with pytest.raises(ScoringError, match="min_gap"):
        scorer(toy_bank(), model=tiny_model, cfg=CONFIGS[method](min_gap=1e6))
    with pytest.raises(ScoringError, match="n_pairs"):
        PatchingConfig(n_pairs=0)


def test_model_in_training_mode_is_refused(tiny_model, pairs):
    tiny_model.train()
    try:
        with pytest.raises(ScoringError, match="model.eval"):
            patch_pairs(tiny_model, pairs, site="head_z")
        with pytest.raises(ScoringError, match="model.eval"):
            attribute_pairs(tiny_model, pairs, site="head_z")
    finally:
        tiny_model.eval()


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


def test_lettered_choices_pair_on_their_texts():
    from real_lens.scoring.pairs import pair_texts
    from real_lens.tasks.base import Example

    prompt = "Do you agree?\n\nChoices:\n (A) Yes, gladly\n (B) No\n\nAnswer:"
    aligned, violating = Example(prompt, " (B)", 1, "g"), Example(prompt, " (A)", 0, "g")
    assert pair_texts(aligned, violating) == ("Do you agree?", "No", "Yes, gladly")
    # Answers that are not letters of the prompt's own choices are used as they are.
    plain = Example("Q: Is the sky blue? A:", " Yes.", 1, "q"), Example("Q: Is the sky blue? A:", " No.", 0, "q")
    assert pair_texts(*plain) == ("Is the sky blue?", " Yes.", " No.")
