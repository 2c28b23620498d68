"""The public API: the README's end-to-end snippet, one scorer calling convention, the method's own
strengths, steering that checks its model, hook-level inspection."""

import re
import subprocess
import sys
import warnings
from dataclasses import replace
from pathlib import Path

import pytest
import torch

import real_lens as rl
from real_lens import hooks
from real_lens.errors import RealLensError, ScoringError
from real_lens.inspection import LargeSteeringWarning
from real_lens.scoring import ModuleScores, score_modules, strength_rule

ROOT = Path(__file__).resolve().parents[2]


def write_even_task(path: Path, n: int = 24) -> Path:
    """A small paired ``file:`` task: "Q: Is i even? A:" with the true and the false answer."""
    rows = ["prompt,aligned,violating"] + [
        f"Q: Is {i} even? A:,{'Yes' if i % 2 == 0 else 'No'},{'No' if i % 2 == 0 else 'Yes'}" for i in range(n)]
    path.write_text("\n".join(rows) + "\n")
    return path


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    return rl.load_task(f"file:{write_even_task(tmp_path_factory.mktemp('task') / 'even.csv')}")


@pytest.fixture(scope="module")
def bank(tiny_model, task):
    fold = task.folds[0]
    return rl.collect(tiny_model, task, progress=False).select(fold.train | fold.val)


# --------------------------------------------------------------------------- the README snippet
def readme_snippet() -> str:
    text = (ROOT / "README.md").read_text()
    match = re.search(r"<!-- api-snippet[^>]*-->\n```python\n(.*?)```", text, re.S)
    assert match, "README.md lost its api-snippet block"
    return match.group(1)


def test_the_readme_snippet_runs_end_to_end(tmp_path, tiny_model, capsys):
    code = readme_snippet()
    assert 12 <= len([line for line in code.splitlines() if line.strip()]) <= 18  # "~15 lines"
    csv = write_even_task(tmp_path / "even.csv")
    # The same code on the tiny random model (8 heads) and a small file: task.
    for old, new in (('"smollm2-135m-instruct"', '"tiny-llama"'), ('"truthfulqa"', f'"file:{csv}"'),
                     ("scores.select(16)", "scores.select(4)")):
        assert code.count(old) == 1, old
        code = code.replace(old, new)
    namespace: dict = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", LargeSteeringWarning)
        exec(compile(code, "README.md", "exec"), namespace)
    out = capsys.readouterr().out

    scores, selection, steering = namespace["scores"], namespace["selection"], namespace["steering"]
    assert scores.method == "real" and len(selection.modules) == 4
    kept = sorted(scores.scores.flatten().tolist(), reverse=True)[:4]
    assert selection.strengths == pytest.approx([s / kept[0] for s in kept])  # REAL: score / max
    assert steering.meta["model"]["name"] == "tiny-llama"
    # Steered at a KL target: α is the calibrated one, and the calibration says whether it got there.
    calibration = steering.meta["calibration"]
    assert calibration["target_kl"] == 0.1 and steering.alpha == calibration["alpha"] > 0
    assert calibration["reached"] == (abs(calibration["kl"] / 0.1 - 1) <= calibration["tol"])
    assert "hooks fired" in out and hooks.head_z(0).split(".")[0] in out
    metrics = re.search(r"fold 0 test \((\d+) questions.*p_aligned ([0-9.]+), top_aligned ([0-9.]+)", out)
    assert metrics and int(metrics.group(1)) > 0 and 0 <= float(metrics.group(2)) <= 1


def test_import_is_light_and_every_public_name_resolves():
    code = "import sys, real_lens; assert 'torch' not in sys.modules, 'import real_lens imported torch'"
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)
    for name in rl.__all__:
        assert getattr(rl, name) is not None, name
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        rl.nope  # noqa: B018


# --------------------------------------------------------------------------- scores.select
def _scores(method, values=(0.9, 0.3, 0.6, 0.1, 0.45, 0.2, 0.8, 0.05)):
    return ModuleScores(torch.tensor(values).reshape(2, 4), method)


@pytest.mark.parametrize("method, rule", [("real", "score"), ("real-release", "score"), ("iti", "uniform"),
                                          ("patching", "uniform"), ("attribution", "uniform"), ("random", "uniform"),
                                          ("real-published", "score")])
def test_select_applies_the_method_s_own_strength_rule(method, rule):
    scores = _scores(method)
    assert strength_rule(method) == rule
    chosen = scores.select(3)
    assert chosen.modules == ((0, 0), (1, 2), (0, 2))
    expected = [0.9 / 0.9, 0.8 / 0.9, 0.6 / 0.9] if rule == "score" else [1.0, 1.0, 1.0]
    assert chosen.strengths == pytest.approx(expected)
    # top_k, the old second spelling, still answers (one release) but says it is deprecated.
    with pytest.warns(DeprecationWarning, match="select"):
        assert scores.top_k(3, uniform=rule == "uniform") == chosen
    # Overrides, and top_k keeps its explicit meaning.
    assert scores.select(3, strengths="uniform").strengths == (1.0, 1.0, 1.0)
    assert scores.select(3, strengths="score").strengths == pytest.approx([1.0, 0.8 / 0.9, 0.6 / 0.9])
    assert scores.top_k(3) == scores.select(3, strengths="score")


def test_select_bad_input():
    with pytest.raises(ScoringError, match="k must be between 1 and the number of modules"):
        _scores("iti").select(9)
    with pytest.raises(RealLensError, match="unknown strengths rule 'loud'"):
        _scores("iti").select(2, strengths="loud")
    with pytest.raises(ScoringError, match="all <= 0"):
        _scores("real", values=(0.0,) * 8).select(2)


# --------------------------------------------------------------------------- one calling convention
def test_every_scorer_runs_through_one_call(bank, tiny_model, tmp_path):
    import numpy as np

    from real_lens.scoring import SCORERS, get_scorer

    get_scorer("real")  # registers the built-ins
    ranking = np.empty((bank.flat().shape[1], 2), dtype=object)  # a published ranking (real-published's file)
    ranking[:, 0] = [divmod(i, bank.module_shape[1]) for i in range(len(ranking))]
    ranking[:, 1] = np.linspace(0.4, 0.9, len(ranking)).tolist()
    np.save(tmp_path / "ranking.npy", ranking)
    options = {"real": dict(vq_epochs=1, prior_epochs=1), "patching": dict(n_pairs=2, min_gap=0.0),
               "attribution": dict(n_pairs=2, min_gap=0.0), "real-published": dict(path=str(tmp_path / "ranking.npy"))}
    for method in SCORERS:
        scores = rl.score(bank, method, model=tiny_model, seed=1, progress=False, **options.get(method, {}))
        assert scores.method == method and tuple(scores.scores.shape) == bank.module_shape


def test_options_by_field_equal_the_config_object(bank):
    by_field = rl.score(bank, "real", seed=3, vq_epochs=2, prior_epochs=1, n_codes=8, progress=False)
    by_cfg = rl.score(bank, "real", seed=3, cfg=rl.RealConfig(vq_epochs=2, prior_epochs=1, n_codes=8), progress=False)
    assert torch.equal(by_field.scores, by_cfg.scores)
    assert by_field.config["n_codes"] == 8
    assert torch.equal(rl.score(bank, "iti", cfg=None, progress=False).scores, rl.score(bank, "iti", progress=False).scores)


def test_scorer_option_mistakes(bank, tiny_model):
    with pytest.raises(ScoringError, match=r"unknown option\(s\) \['epochs'\].*vq_epochs"):
        rl.score(bank, "real", epochs=3)
    with pytest.raises(ScoringError, match="random' takes no options"):
        rl.score(bank, "random", n_codes=3)
    with pytest.raises(ScoringError, match="expects cfg to be a ProbeConfig"):
        rl.score(bank, "iti", cfg=rl.RealConfig())
    with pytest.raises(RealLensError, match="unknown scoring method 'magic'"):
        rl.score(bank, "magic")
    with pytest.raises(ScoringError, match="model=None"):
        rl.score(bank, "patching")


def test_progress_bars_follow_the_flag(bank, capsys):
    score_modules(bank, "real", vq_epochs=1, prior_epochs=1, progress=True)
    assert "REAL 8 modules" in capsys.readouterr().err
    score_modules(bank, "real", vq_epochs=1, prior_epochs=1, progress=False)
    score_modules(bank, "iti", progress=False)
    assert capsys.readouterr().err == ""


# --------------------------------------------------------------------------- steering checks itself
def _steering(bank, alpha=15.0, k=3):
    return rl.build_steering(bank, _scores("real", values=tuple(range(8, 0, -1))).select(k), alpha=alpha)


def _other_tiny_bridge(**shape):
    from transformer_lens.model_bridge import TransformerBridge

    from real_lens.models import build_tiny_hf_model

    hf_model, tokenizer = build_tiny_hf_model(**shape)
    bridge = TransformerBridge.boot_transformers("tiny-llama", hf_model=hf_model, tokenizer=tokenizer)
    bridge.enable_compatibility_mode(no_processing=True)
    return bridge.eval()


def test_steering_records_its_model_and_shapes(bank):
    steering = _steering(bank)
    assert steering.meta["model"]["name"] == "tiny-llama"
    assert steering.meta["module_shape"] == [2, 4]
    expected = [float(bank.acts[:, layer, head].double().norm(dim=-1).mean()) for layer, head in steering.modules]
    assert steering.meta["act_norms"] == pytest.approx(expected)


def test_a_steering_for_another_model_fails_before_any_forward_pass(bank, tiny_model):
    renamed = replace(_steering(bank), meta={**_steering(bank).meta, "model": {"name": "smollm2-135m-instruct",
                                                                            "hf_name": "HuggingFaceTB/SmolLM2-135M-Instruct"}})
    with pytest.raises(rl.SteeringMismatchError, match="built from activations of model 'smollm2-135m-instruct'"):
        with renamed.applied(tiny_model):
            pytest.fail("the block ran: the model was hooked and could run a forward pass")
    wider = _other_tiny_bridge(n_heads=2, n_kv_heads=1, d_head=32)  # same name, other shapes
    with pytest.raises(rl.SteeringMismatchError, match=r"modules are \(2, 4\), the model's are \(2, 2\).*16 wide.*d_head is 32"):
        _steering(bank).fwd_hooks(wider)
    with pytest.raises(rl.SteeringMismatchError):
        rl.compare_logits(wider, "Q: Is 3 even? A:", _steering(bank))
    # An explicit opt-out stays possible (e.g. the same weights loaded under another name).
    with renamed.applied(tiny_model, check=False):
        tiny_model(tiny_model.to_tokens("Q: Is 3 even? A:"))


# --------------------------------------------------------------------------- describe / compare / hooks
def test_describe_reports_every_hook_and_the_norm_ratio(bank, tiny_model):
    steering = _steering(bank, alpha=15.0)
    with pytest.warns(LargeSteeringWarning, match="longer than 0.5x"):
        described = steering.describe(tiny_model, warn_ratio=0.5)
    layers = sorted({layer for layer, _ in steering.modules})
    assert list(described.hooks) == [hooks.head_z(layer) for layer in layers]
    vectors = steering.vectors()
    for i, effect in enumerate(described.modules):
        assert effect.added_norm == pytest.approx(float(vectors[i].norm()), rel=1e-6)
        assert effect.added_norm == pytest.approx(15.0 * float(steering.strengths[i] * steering.sigmas[i]), rel=1e-5)
        assert effect.ratio == pytest.approx(effect.added_norm / steering.meta["act_norms"][i])
    text = str(described)
    assert "<- large" in text and "warning:" in text
    with warnings.catch_warnings():
        warnings.simplefilter("error", LargeSteeringWarning)  # a small alpha warns about nothing
        quiet = steering.with_alpha(0.01).describe(tiny_model)
    assert not quiet.warnings and "<- large" not in str(quiet)


def test_compare_logits_counts_the_hooks_that_fired(bank, tiny_model):
    steering = _steering(bank, alpha=40.0)
    prompt = "Q: Is 4 even? A:"
    comparison = rl.compare_logits(tiny_model, prompt, steering, top_k=5)
    tokens = tiny_model.to_tokens(prompt)
    with torch.inference_mode():
        clean = tiny_model(tokens)[0]
        with steering.applied(tiny_model):
            steered = tiny_model(tokens)[0]
    lp, lq = clean.log_softmax(-1), steered.log_softmax(-1)
    assert torch.allclose(comparison.kl, (lp.exp() * (lp - lq)).sum(-1).clamp(min=0), atol=1e-7)
    assert comparison.max_logit_change == pytest.approx(float((steered - clean).abs().max()))
    assert comparison.steered_top[0][1] == pytest.approx(float(lq[-1].exp().max()))
    assert len(comparison.tokens) == tokens.shape[1] and len(comparison.unsteered_top) == 5
    layers = sorted({layer for layer, _ in steering.modules})
    assert comparison.hooks_fired == {hooks.head_z(layer): 1 for layer in layers}  # one forward pass each
    # alpha 0 changes nothing, yet its hooks still ran: the count is measured, not assumed.
    zero = rl.compare_logits(tiny_model, prompt, steering.with_alpha(0.0))
    assert float(zero.kl.max()) == 0.0 and set(zero.hooks_fired.values()) == {1}
    assert "hooks fired" in str(comparison)


def test_list_hooks_has_every_site_with_its_shape(tiny_model):
    found = rl.list_hooks(tiny_model, prompt="Q: Is 2 even? A:")
    cfg = tiny_model.cfg
    n = found.n_tokens
    assert found.by_group[f"blocks.{cfg.n_layers - 1}"][hooks.head_z(cfg.n_layers - 1)] == (1, n, cfg.n_heads, cfg.d_head)
    assert found.by_group["blocks.0"][hooks.resid_post(0)] == (1, n, cfg.d_model)
    assert list(found.by_group)[0] == "model"
    only_z = rl.list_hooks(tiny_model, contains="hook_z")
    assert only_z.names == [hooks.head_z(layer) for layer in range(cfg.n_layers)]
    assert "hook_z" in str(only_z)


# --------------------------------------------------------------------------- generate / evaluate
def test_generate_with_a_steering_equals_generating_inside_applied(bank, tiny_model):
    steering = _steering(bank, alpha=200.0)
    with steering.applied(tiny_model):
        inside = rl.generate(tiny_model, "Q: Is 5 even? A:", max_new_tokens=6)
    assert rl.generate(tiny_model, "Q: Is 5 even? A:", steering=steering, max_new_tokens=6) == inside
    assert rl.generate(tiny_model, "Q: Is 5 even? A:", max_new_tokens=6) != inside  # the steering did something


def test_evaluate_matches_the_main_job_s_cells(bank, tiny_model, task):
    from real_lens.evaluation.suite import eval_items, evaluation_for

    steering = _steering(bank, alpha=30.0)
    result = rl.evaluate(tiny_model, task, steering, fold=0, split="val", progress=False)
    evaluation = evaluation_for(task)
    items = eval_items(evaluation, task, task.folds[0].val, None, 0)
    direct = evaluation.evaluate(tiny_model, items, steering)
    assert result.metrics == {m: pytest.approx(float(v.mean())) for m, v in direct.items()}
    assert set(result.groups) == set(task.folds[0].val)
    assert rl.evaluate(tiny_model, task, None, fold=0, split="val", max_questions=2, progress=False).per_item[
        "p_aligned"].shape == (2,)
    with pytest.raises(RealLensError, match="split must be one of"):
        rl.evaluate(tiny_model, task, split="dev")
    with pytest.raises(RealLensError, match="has 2 fold"):
        rl.evaluate(tiny_model, task, fold=2)
