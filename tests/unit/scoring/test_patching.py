"""Contrast pairs, activation patching and attribution patching (METHOD.md §5a) on the tiny model."""

from dataclasses import replace

import pytest
import torch
from transformer_lens.tools.analysis.attribution_patching import Node

from real_lens import hooks
from real_lens.bank import ActivationBank
from real_lens.compare import compare_scores
from real_lens.errors import ScoringError
from real_lens.evaluation.truthfulqa import answer_logprobs
from real_lens.models import load_model, model_identity
from real_lens.scoring import ModuleScores, get_scorer
from real_lens.scoring.attribution import AttributionConfig, attribute_pairs
from real_lens.scoring.pairs import (
    DEMO_SEPARATOR,
    SKIP_NO_DEMOS,
    SKIP_ONE_LABEL,
    SKIP_SMALL_GAP,
    ContrastPair,
    ContrastPairs,
    PairConfig,
    build_contrast_pairs,
    scores_from_pair_effects,
)
from real_lens.scoring.pair_rows import fed_rows, full_rows, prefix_tokens, run_and_capture
from real_lens.tokens import pad_id
from real_lens.scoring.patching import (
    PatchingConfig,
    _patch_hook,
    _rows_of,
    as_patching_config,
    patch_pairs,
    patch_pairs_looped,
)
from real_lens.tasks.base import Example
from tests.helpers import each_tiny_model

EMBED = Node(kind="embed", position=0).hook_name  # "hook_embed"

QUESTIONS = [
    ("Is the sky blue?", ["Yes, it is blue.", "It is blue."], ["No, it is green.", "It is red."]),
    ("Do fish swim?", ["Yes, fish swim."], ["No, fish fly.", "Fish walk."]),
    ("Is fire cold?", ["No, it is hot."], ["Yes, it is icy."]),
    ("Can cats bark?", ["No, cats meow.", "Cats meow."], ["Yes, loudly."]),
    ("Is water wet?", ["Yes, water is wet."], ["No, it is dry."]),
    ("Is ice hot?", ["No, ice is cold."], ["Yes, ice burns."]),
]
# Gaps on the random tiny model are ~1e-2..1e-1 nats: keep every pair for the oracles.
KEEP_ALL = 0.0
# Batched (KV-cached, many modules per forward) vs looped (TransformerLens, one full forward per
# module): the same arithmetic in another order, but TransformerLens stores each row's log-prob sum
# (~30-60 nats here) in float32, whose spacing there is 4e-6; an effect combines four such values.
BATCHED_TOL = 3e-5


def toy_examples(questions=QUESTIONS):
    examples = []
    for q, aligned, violating in questions:
        prompt = f"Q: {q} A:"
        examples += [Example(prompt, " " + a, 1, q) for a in aligned]
        examples += [Example(prompt, " " + v, 0, q) for v in violating]
    return tuple(examples)


def toy_bank(site="head_z", *, model="tiny-llama", examples=None, shape=(2, 4, 16)):
    examples = toy_examples() if examples is None else examples
    acts = torch.randn(len(examples), *shape, generator=torch.Generator().manual_seed(0))
    return ActivationBank(acts, examples, {"site": site, "model": model, "task": "toy"})


def decode(model, tokens) -> str:
    return model.tokenizer.decode(tokens.tolist())


@pytest.fixture(scope="module")
def pairs(tiny_model):
    return build_contrast_pairs(toy_examples(), tiny_model, n_pairs=8, n_demos=2, seed=0)


# --------------------------------------------------------------------------- building pairs
def test_pairs_are_the_question_after_aligned_or_violating_demonstrations(tiny_model, pairs):
    by_text = {(e.prompt + e.answer): e for e in toy_examples()}
    assert len(pairs) == len(QUESTIONS) and not pairs.skipped
    for pair in pairs.pairs:
        assert pair.group not in pair.demo_groups and len(set(pair.demo_groups)) == 2
        for context, label in ((pair.clean_context, 1), (pair.corrupted_context, 0)):
            assert int(context[0]) == tiny_model.tokenizer.bos_token_id
            demos = decode(tiny_model, context[1:]).split(DEMO_SEPARATOR)
            assert demos[-1] == ""  # the context ends with the separator before the pair's prompt
            shown = [by_text[d] for d in demos[:-1]]
            assert [e.group for e in shown] == list(pair.demo_groups) and all(e.label == label for e in shown)
        prompt = decode(tiny_model, pair.prompt)
        assert prompt == f"Q: {pair.group} A:"
        for answer, label in ((pair.aligned, 1), (pair.violating, 0)):
            assert by_text[prompt + decode(tiny_model, answer)].label == label


def test_pairs_are_seeded_and_the_first_ones_do_not_depend_on_n_pairs(tiny_model, pairs):
    again = build_contrast_pairs(toy_examples(), tiny_model, n_pairs=8, n_demos=2, seed=0)
    assert again.groups == pairs.groups
    assert all(torch.equal(a.clean_context, b.clean_context) for a, b in zip(again.pairs, pairs.pairs))
    fewer = build_contrast_pairs(toy_examples(), tiny_model, n_pairs=2, n_demos=2, seed=0)
    assert fewer.groups == pairs.groups[:2]
    assert all(torch.equal(a.corrupted_context, b.corrupted_context) for a, b in zip(fewer.pairs, pairs.pairs))
    other = build_contrast_pairs(toy_examples(), tiny_model, n_pairs=8, n_demos=2, seed=1)
    assert [p.demo_groups for p in other.pairs] != [p.demo_groups for p in pairs.pairs]


def test_demonstrations_come_only_from_the_given_groups(tiny_model):
    """The scorer builds pairs from its bank (the fold's train+val): nothing else can appear."""
    train = toy_examples(QUESTIONS[:4])
    built = build_contrast_pairs(train, tiny_model, n_pairs=10, n_demos=3, seed=0)
    allowed = {q for q, *_ in QUESTIONS[:4]}
    assert set(built.groups) == allowed
    for pair in built.pairs:
        assert set(pair.demo_groups) == allowed - {pair.group}
        text = decode(tiny_model, pair.clean_context) + decode(tiny_model, pair.corrupted_context)
        assert all(q not in text for q, *_ in QUESTIONS[4:]) and pair.group not in text


def test_skipped_groups_are_counted(tiny_model):
    one_sided = Example("Q: Lonely? A:", " Yes.", 1, "Lonely?")
    built = build_contrast_pairs(toy_examples() + (one_sided,), tiny_model, n_pairs=10, n_demos=2, seed=0)
    assert built.skipped_counts == {SKIP_ONE_LABEL: 1} and len(built) == len(QUESTIONS)
    with pytest.raises(ScoringError, match=f"no contrast pair.*'{SKIP_NO_DEMOS}': 3"):
        build_contrast_pairs(toy_examples(QUESTIONS[:3]), tiny_model, n_pairs=10, n_demos=3, seed=0)


def test_letter_answers_are_balanced_by_mirrored_demonstrations(tiny_model):
    """CAA-style items: every answer is " (A)" or " (B)". Demonstrations come in mirrored couples,
    so the clean and the corrupted context show each letter equally often."""
    examples = []
    for i in range(40):
        aligned, violating = ("A", "B") if i % 4 else ("B", "A")  # 3/4 of the items have aligned A
        prompt = f"Item {i}?\n\nChoices:\n (A) x\n (B) y\n\nAnswer:"
        examples += [Example(prompt, f" ({aligned})", 1, f"g{i}"), Example(prompt, f" ({violating})", 0, f"g{i}")]
    built = build_contrast_pairs(examples, tiny_model, n_pairs=12, n_demos=4, seed=0)
    for pair in built.pairs:
        clean, corrupted = decode(tiny_model, pair.clean_context), decode(tiny_model, pair.corrupted_context)
        assert clean.count("Answer: (A)") == clean.count("Answer: (B)") == 2
        assert corrupted.count("Answer: (A)") == corrupted.count("Answer: (B)") == 2


# --------------------------------------------------------------------------- the metric
def test_metric_is_the_evaluations_log_prob_difference(tiny_model, pairs):
    """Oracle: the evaluation's own answer scorer on the same text."""
    rows = full_rows(pairs.pairs, "clean", positions="answer", pad=pad_id(tiny_model))
    with torch.no_grad():
        metric = rows.metric(tiny_model(rows.tokens))
        kept = rows.metric(tiny_model(rows.tokens, logits_to_keep=rows.logits_to_keep))
    assert rows.logits_to_keep < rows.tokens.shape[1]
    for i, pair in enumerate(pairs.pairs):
        prompt = decode(tiny_model, pair.clean_context[1:]) + decode(tiny_model, pair.prompt)
        a, v = answer_logprobs(tiny_model, prompt, [decode(tiny_model, pair.aligned), decode(tiny_model, pair.violating)])
        assert float(metric[i]) == pytest.approx(a - v, abs=1e-4)
    assert torch.allclose(kept, metric, atol=1e-5)


@each_tiny_model
def test_fed_rows_after_the_prefix_cache_equal_the_whole_input(tiny_model, pairs):
    pad = pad_id(tiny_model)
    for positions in ("answer", "question"):
        whole = full_rows(pairs.pairs[:1], "corrupted", positions=positions, pad=pad)
        fed = fed_rows(pairs.pairs[0], positions=positions, pad=pad)
        with torch.no_grad():
            _, cache = tiny_model(prefix_tokens(pairs.pairs[0], positions=positions)[None],
                                  return_type="logits_and_cache", use_cache=True, logits_to_keep=1)
            cached = fed.metric(tiny_model(fed.tokens, past_key_values=_rows_of(cache, 2)))
            assert torch.allclose(cached, whole.metric(tiny_model(whole.tokens)), atol=1e-5)
        assert fed.patch_mask.sum() == whole.patch_mask.sum()


# --------------------------------------------------------------------------- aggregation
def _fake_pairs(n):
    """Pairs whose tokens do not matter: aggregation reads only their groups."""
    t = torch.tensor([1])
    return ContrastPairs(tuple(ContrastPair(f"g{i}", (), t, t, t, t, t) for i in range(n)))


def test_scores_are_sum_of_effects_over_sum_of_gaps():
    gaps = torch.tensor([2.0, -1.0, 0.05, 4.0])
    effects = torch.tensor([[1.0, 0.0], [-0.5, 3.0], [5.0, 5.0], [1.0, 1.0]])  # [pair, layer]
    scores = scores_from_pair_effects(effects, gaps, _fake_pairs(4), min_gap=0.1, method="patching", unit="u",
                                      site="resid_post", seed=3, config={"x": 1}, bank_meta={"task": "t"})
    # hand computation over the kept pairs 0, 1, 3 (pair 2's |gap| 0.05 < 0.1 is dropped)
    expected = torch.tensor([(1.0 - 0.5 + 1.0) / (2 - 1 + 4), (0.0 + 3.0 + 1.0) / 5])
    assert torch.allclose(scores.scores, expected)
    info = scores.meta["pairs"]
    assert info["n_built"] == 4 and info["n_kept"] == 3 and info["n_dropped_small_gap"] == 1
    assert info["skipped"] == {SKIP_SMALL_GAP: 1} and info["min_gap_nats"] == 0.1
    assert info["mean_gap_nats"] == pytest.approx(5.05 / 4) and info["mean_kept_gap_nats"] == pytest.approx(5 / 3)
    assert info["n_negative_gap"] == 1
    assert torch.allclose(scores.diagnostics["effect_nats"], torch.tensor([1.5 / 3, 4 / 3]))
    # a module that restores the same fraction of every pair's gap has that score and no spread
    same = scores_from_pair_effects(0.3 * gaps[:, None].repeat(1, 2), gaps, _fake_pairs(4), min_gap=0.0,
                                    method="m", unit="u", site="resid_post", seed=0, config={}, bank_meta={})
    assert torch.allclose(same.scores, torch.full((2,), 0.3)) and torch.allclose(same.diagnostics["stderr"], torch.zeros(2), atol=1e-7)


def test_one_tiny_gap_cannot_dominate():
    """A mean of per-pair ratios would give 1e3 here; the ratio of sums stays at the pairs' scale."""
    gaps = torch.tensor([1.0, 1.0, 1e-3])
    effects = torch.tensor([[0.5], [0.5], [1.0]])
    scores = scores_from_pair_effects(effects, gaps, _fake_pairs(3), min_gap=0.0, method="m", unit="u",
                                      site="resid_post", seed=0, config={}, bank_meta={})
    assert float(scores.scores[0]) == pytest.approx(2.0 / 2.001)


def test_no_kept_gap_is_an_error():
    with pytest.raises(ScoringError, match="nothing to restore"):
        scores_from_pair_effects(torch.ones(2, 3), torch.tensor([0.1, -0.2]), _fake_pairs(2), min_gap=0.5,
                                 method="m", unit="u", site="resid_post", seed=0, config={}, bank_meta={})
    with pytest.raises(ScoringError, match="sum to"):  # kept, but they cancel
        scores_from_pair_effects(torch.ones(2, 3), torch.tensor([1.0, -1.0]), _fake_pairs(2), min_gap=0.5,
                                 method="m", unit="u", site="resid_post", seed=0, config={}, bank_meta={})


# --------------------------------------------------------------------------- activation patching
@each_tiny_model
@pytest.mark.parametrize("site", ["head_z", "resid_post"])
@pytest.mark.parametrize("positions", ["answer", "question"])
def test_batched_patching_equals_the_transformer_lens_loop(tiny_model, pairs, site, positions):
    cfg = PatchingConfig(positions=positions, modules_per_batch=3, batch_tokens=400)  # chunks cross layers
    batched, gaps = patch_pairs(tiny_model, pairs, site=site, cfg=cfg, progress=False)
    looped, looped_gaps = patch_pairs_looped(tiny_model, pairs, site=site, cfg=cfg)
    assert batched.shape == ((len(pairs), 2, 4) if site == "head_z" else (len(pairs), 2))
    assert batched.abs().max() > 1e-3  # something to compare
    print("max |batched - looped| =", float((batched - looped).abs().max()))
    assert torch.allclose(batched, looped, atol=BATCHED_TOL) and torch.allclose(gaps, looped_gaps, atol=BATCHED_TOL)


@each_tiny_model
def test_patching_every_head_restores_clean_exactly(tiny_model, pairs):
    """Oracle: every position-wise computation at the patched positions depends only on the token
    there and the attention outputs; give every head its clean z there and the metric is clean,
    whatever the demonstrations before them. Leaving out one head breaks it."""
    pad, names = pad_id(tiny_model), [hooks.head_z(layer) for layer in range(tiny_model.cfg.n_layers)]
    for positions in ("answer", "question"):
        for pair in pairs.pairs[:3]:
            clean = run_and_capture(tiny_model, full_rows([pair], "clean", positions=positions, pad=pad), names)
            fed = fed_rows(pair, positions=positions, pad=pad)
            with torch.no_grad():
                _, cache = tiny_model(prefix_tokens(pair, positions=positions)[None],
                                      return_type="logits_and_cache", use_cache=True, logits_to_keep=1)

                def patched(skip=None):
                    fwd = [(name, _patch_hook(clean.activations[name], [(0, h) for h in range(4) if (layer, h) != skip]))
                           for layer, name in enumerate(names)]
                    with tiny_model.hooks(fwd_hooks=fwd):
                        return fed.metric(tiny_model(fed.tokens, past_key_values=_rows_of(cache, 2)))

                corrupted = fed.metric(tiny_model(fed.tokens, past_key_values=_rows_of(cache, 2)))
                assert not torch.allclose(corrupted, clean.metric, atol=1e-4)
                assert torch.allclose(patched(), clean.metric, atol=1e-5)
                assert not torch.allclose(patched(skip=(0, 1)), clean.metric, atol=1e-5)


def test_patching_identical_runs_gives_zero(tiny_model, pairs):
    same = ContrastPairs(tuple(replace(p, corrupted_context=p.clean_context) for p in pairs.pairs))
    effects, gaps = patch_pairs(tiny_model, same, site="head_z", cfg=PatchingConfig(), progress=False)
    assert torch.allclose(effects, torch.zeros_like(effects), atol=1e-6)
    assert torch.allclose(gaps, torch.zeros_like(gaps), atol=1e-5)


def test_patching_shows_progress(tiny_model, pairs, capsys):
    patch_pairs(tiny_model, pairs[:1], site="head_z", cfg=PatchingConfig(modules_per_batch=4), progress=True)
    err = capsys.readouterr().err
    assert "patching 1 pairs x 8 modules" in err and "2/2" in err


# --------------------------------------------------------------------------- attribution patching
@pytest.fixture(scope="module")
def tiny_model_f64(tiny_model):
    """The tiny model in float64: the linear regime's gaps are ~1e-4 nats, below float32's resolution
    of ~30-nat log-prob sums."""
    model = load_model(model_identity(tiny_model)["name"]).to(torch.float64)
    assert model.W_E.dtype == torch.float64
    return model


@each_tiny_model
def test_attribution_matches_patching_in_the_linear_regime(tiny_model, tiny_model_f64, pairs):
    """AtP is exact to first order: shrink the corruption and the two must agree.

    The corrupted context is the clean one with its last token (the separator's newline before
    the pair's prompt) replaced by a marker token (a byte the texts never use), and a hook on the embedding moves the marker's embedding only a fraction
    EPS of the way from the clean token's embedding, wherever it occurs (the patching sweep runs
    the context and the patched positions in separate forwards). Effects and gaps are then
    O(EPS) and AtP's error (the second-order term) is O(EPS) relative to them. Measured on this
    model (float64) at EPS = 0.03: max |AtP - patching| = 0.09 % of the largest |patching| fraction; a 1 %
    tolerance covers it, and a wrong gradient (wrong head, position or sign) is off by O(100 %).
    """
    eps, marker, position = 0.03, 250, -1
    close = []
    for pair in pairs.pairs:
        corrupted = pair.clean_context.clone()
        corrupted[position] = marker
        close.append(replace(pair, corrupted_context=corrupted))
    close = ContrastPairs(tuple(close))
    w_e = tiny_model_f64.W_E
    marker_row = w_e[marker].detach().clone()
    clean_rows = {int(p.clean_context[position]): w_e[int(p.clean_context[position])].detach().clone() for p in close.pairs}
    assert len(clean_rows) == 1  # every context ends with the separator's newline
    clean_row = next(iter(clean_rows.values()))

    def shrink_corruption(embedding, hook):
        is_marker = (embedding == marker_row.to(embedding.dtype)).all(-1)
        shrunk = clean_row + eps * (marker_row - clean_row)
        return torch.where(is_marker[..., None], shrunk.to(embedding.dtype), embedding)

    tiny_model_f64.add_hook(EMBED, shrink_corruption, is_permanent=True)
    try:
        cfg = PatchingConfig(positions="question", modules_per_batch=8)
        effects, gaps = patch_pairs(tiny_model_f64, close, site="head_z", cfg=cfg, progress=False)
        estimates, atp_gaps = attribute_pairs(tiny_model_f64, close, site="head_z", cfg=cfg, progress=False)
    finally:
        tiny_model_f64.reset_hooks(including_permanent=True)
    assert torch.allclose(gaps, atp_gaps, atol=1e-6) and (gaps.abs() > 0).all()
    measured = effects / gaps[:, None, None]
    estimated = estimates / gaps[:, None, None]
    print("max |AtP - patching| / max |patching| =", float((measured - estimated).abs().max() / measured.abs().max()))
    assert (measured - estimated).abs().max() <= 0.01 * measured.abs().max()


@each_tiny_model
def test_attribution_ranks_like_patching_and_covers_layer_sites(tiny_model):
    cfg, name = AttributionConfig(min_gap=KEEP_ALL, n_demos=2), model_identity(tiny_model)["name"]
    heads = get_scorer("attribution")(toy_bank(model=name), model=tiny_model, cfg=cfg)
    patching = get_scorer("patching")(toy_bank(model=name), model=tiny_model,
                                      cfg=PatchingConfig(min_gap=KEEP_ALL, n_demos=2))
    assert heads.scores.shape == (2, 4) and heads.method == "attribution"
    assert compare_scores(heads, patching, k=4)["spearman"] > 0.9  # the random tiny model is nearly linear
    for site in ("attn_out", "mlp_out", "resid_post"):
        bank = toy_bank(site, model=name, shape=(2, tiny_model.cfg.d_model))
        layer = get_scorer("attribution")(bank, model=tiny_model, cfg=cfg)
        assert layer.scores.shape == (2,) and torch.isfinite(layer.scores).all()


def test_attribution_of_identical_runs_is_zero(tiny_model, pairs):
    same = ContrastPairs(tuple(replace(p, corrupted_context=p.clean_context) for p in pairs.pairs))
    estimates, gaps = attribute_pairs(tiny_model, same, site="head_z", progress=False)
    assert torch.equal(estimates, torch.zeros_like(estimates)) and torch.equal(gaps, torch.zeros_like(gaps))


@each_tiny_model
def test_attribution_batches_do_not_change_the_estimates(tiny_model, pairs):
    one = attribute_pairs(tiny_model, pairs, site="head_z", cfg=PairConfig(batch_tokens=1), progress=False)
    many = attribute_pairs(tiny_model, pairs, site="head_z", cfg=PairConfig(batch_tokens=10_000), progress=False)
    assert len(pairs.batches(1)) == len(pairs) and len(pairs.batches(10_000)) == 1
    assert torch.allclose(one[0], many[0], atol=1e-6) and torch.allclose(one[1], many[1], atol=1e-5)


def test_attribution_out_of_memory_names_the_setting_that_bounds_it(tiny_model, pairs, monkeypatch):
    def out_of_memory(*args, gradient=False, **kwargs):
        if gradient:
            raise torch.OutOfMemoryError("CUDA out of memory")
        return run_and_capture(*args, **kwargs)

    monkeypatch.setattr("real_lens.scoring.attribution.run_and_capture", out_of_memory)
    with pytest.raises(ScoringError, match=r"batch_tokens=2048.*--attribution-batch-tokens, e.g. 512"):
        attribute_pairs(tiny_model, pairs, site="head_z", progress=False)


def test_the_run_setting_bounds_both_attribution_scorers_batches():
    from real_lens.experiment import ExperimentConfig
    from real_lens.experiment.store import scorer_options

    cfg = ExperimentConfig(attribution_batch_tokens=300)
    assert scorer_options(cfg, "attribution")["cfg"].batch_tokens == 300
    assert scorer_options(cfg, "direction-attribution")["cfg"].batch_tokens == 300
    with pytest.raises(Exception, match="attribution_batch_tokens must be an integer >= 1"):
        ExperimentConfig(attribution_batch_tokens=0)


# --------------------------------------------------------------------------- scorers, metadata, bad input
@pytest.mark.parametrize("method", ["patching", "attribution"])
def test_scores_and_metadata(tiny_model, tmp_path, method):
    cfg = (PatchingConfig if method == "patching" else AttributionConfig)(n_pairs=4, n_demos=2, min_gap=KEEP_ALL)
    scores = get_scorer(method)(toy_bank(), model=tiny_model, seed=0, cfg=cfg)
    assert scores.scores.shape == (2, 4) and torch.isfinite(scores.scores).all() and scores.method == method
    assert scores.config["n_pairs"] == 4 and scores.config["n_demos"] == 2 and scores.config["positions"] == "answer"
    assert scores.meta["site"] == "head_z" and scores.meta["model"] == "tiny-llama" and scores.meta["task"] == "toy"
    info = scores.meta["pairs"]
    assert info["n_built"] == 4 and info["n_kept"] == 4 and info["n_demos"] == 2 and "log p(aligned" in info["metric"]
    assert set(scores.diagnostics) == {"stderr", "effect_nats"}
    loaded = ModuleScores.load(scores.save(tmp_path / method))
    assert torch.equal(loaded.scores, scores.scores) and loaded.meta == scores.meta


def test_patching_uses_the_first_of_attributions_pairs(tiny_model):
    """Same seed: activation patching's few pairs are the first of attribution's many, so the
    two scorers' gaps agree pair by pair."""
    patching = patch_pairs(tiny_model, build_contrast_pairs(toy_examples(), tiny_model, n_pairs=2, n_demos=2),
                           site="head_z", progress=False)
    atp = attribute_pairs(tiny_model, build_contrast_pairs(toy_examples(), tiny_model, n_pairs=5, n_demos=2),
                          site="head_z", progress=False)
    assert torch.allclose(patching[1], atp[1][:2], atol=1e-5)


def test_a_plain_pair_config_is_accepted_by_patching():
    cfg = as_patching_config(PairConfig(n_pairs=5, min_gap=0.2))
    assert isinstance(cfg, PatchingConfig) and cfg.n_pairs == 5 and cfg.min_gap == 0.2
    assert cfg.modules_per_batch == PatchingConfig().modules_per_batch
    assert PatchingConfig().n_pairs < PairConfig().n_pairs  # patching is the expensive one


@pytest.mark.parametrize("method", ["patching", "attribution"])
def test_model_based_scorers_reject_bad_input(tiny_model, method):
    scorer = get_scorer(method)
    with pytest.raises(ScoringError, match="model=None"):
        scorer(toy_bank(), model=None)
    with pytest.raises(ScoringError, match="collected from model 'smollm2"):
        scorer(toy_bank(model="smollm2-135m-instruct"), model=tiny_model)
    with pytest.raises(ScoringError, match="collected from model 'other'"):  # activations.collect's format
        scorer(toy_bank(model={"name": "other", "fingerprint": "x"}), model=tiny_model)
    matching = PairConfig(n_pairs=2, n_demos=2, min_gap=KEEP_ALL)
    assert scorer(toy_bank(model=model_identity(tiny_model)), model=tiny_model, cfg=matching).scores.shape == (2, 4)
    with pytest.raises(ScoringError, match=r"modules of shape \(3, 4\)"):
        scorer(toy_bank(model=None, shape=(3, 4, 16)), model=tiny_model)
    only_aligned = tuple(e for e in toy_examples() if e.label == 1)
    with pytest.raises(ScoringError, match="no contrast pair could be built"):
        scorer(toy_bank(examples=only_aligned), model=tiny_model)
    with pytest.raises(ScoringError, match="min_gap"):
        scorer(toy_bank(), model=tiny_model, cfg=PairConfig(n_pairs=2, n_demos=2, min_gap=1e6))


@pytest.mark.parametrize("bad, match", [
    (dict(n_pairs=0), "n_pairs"), (dict(n_demos=0), "n_demos"), (dict(min_gap=-1.0), "min_gap"),
    (dict(positions="all"), "positions"), (dict(batch_tokens=0), "batch_tokens"),
])
def test_pair_config_is_validated(bad, match):
    with pytest.raises(ScoringError, match=match):
        PairConfig(**bad)
    with pytest.raises(ScoringError, match=match):
        PatchingConfig(**bad)
    with pytest.raises(ScoringError, match="modules_per_batch"):
        PatchingConfig(modules_per_batch=0)
    with pytest.raises(ScoringError, match="max_cached_tokens"):
        PatchingConfig(max_cached_tokens=0)


def test_long_prefixes_patch_fewer_modules_per_forward(tiny_model, pairs):
    pair = pairs.pairs[0]
    per_module = 2 * (len(prefix_tokens(pair, positions="answer")) + len(pair.aligned[:-1]) + 1)
    assert PatchingConfig(modules_per_batch=6).modules_per_forward(pair) == 6
    assert PatchingConfig(modules_per_batch=6, max_cached_tokens=3 * per_module).modules_per_forward(pair) <= 3
    assert PatchingConfig(max_cached_tokens=1).modules_per_forward(pair) == 1
    small = PatchingConfig(max_cached_tokens=3 * per_module + 5)
    assert torch.allclose(patch_pairs(tiny_model, pairs[:2], site="head_z", cfg=small, progress=False)[0],
                          patch_pairs(tiny_model, pairs[:2], site="head_z", progress=False)[0], atol=1e-6)


def test_model_in_training_mode_is_refused(tiny_model, pairs):
    tiny_model.train()
    try:
        with pytest.raises(ScoringError, match="model.eval"):
            patch_pairs(tiny_model, pairs, site="head_z", progress=False)
        with pytest.raises(ScoringError, match="model.eval"):
            attribute_pairs(tiny_model, pairs, site="head_z", progress=False)
        with pytest.raises(ScoringError, match="model.eval"):
            get_scorer("patching")(toy_bank(), model=tiny_model)
    finally:
        tiny_model.eval()


# --------------------------------------------------------------------------- command line
@pytest.fixture(scope="module")
def bank_dir(tmp_path_factory, tiny_model):
    folder = tmp_path_factory.mktemp("bank")
    toy_bank(model=model_identity(tiny_model)).save(folder)
    return folder


def test_score_command_takes_the_pair_options(bank_dir, tmp_path, capsys):
    from real_lens.cli import main

    assert main(["score", "--bank", str(bank_dir), "--method", "patching", "--n-pairs", "3", "--n-demos", "2",
                 "--min-gap", "0", "--positions", "question", "--out", str(tmp_path / "s")]) == 0
    captured = capsys.readouterr()
    assert "contrast pairs: 3 built, 3 kept (|gap| >= 0 nats)" in captured.out
    assert "patching 3 pairs x 8 modules" in captured.err  # the progress bar
    saved = ModuleScores.load(tmp_path / "s")
    assert saved.config["n_pairs"] == 3 and saved.config["n_demos"] == 2 and saved.config["positions"] == "question"
    assert saved.config["modules_per_batch"] == PatchingConfig().modules_per_batch


@pytest.mark.parametrize("argv", [
    ["--method", "iti", "--n-pairs", "3"],
    ["--method", "attribution", "--min-gap", "-1"],
    ["--method", "patching", "--n-pairs", "0"],
    ["--method", "attribution", "--positions", "all"],
])
def test_score_command_refuses_bad_pair_options(bank_dir, tmp_path, capsys, argv):
    from real_lens.cli import main

    try:
        code = main(["score", "--bank", str(bank_dir), *argv, "--out", str(tmp_path / "s")])
    except SystemExit as exc:  # argparse's own checks
        code = exc.code
    assert code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "error:" in err and "Traceback" not in err
