"""Direction attribution: the first-order effect of each head's own steering offset (issue #20 §4)."""

import csv
import json

import pytest
import torch

from real_lens.cli import main
from real_lens.errors import ScoringError
from real_lens.models import TINY_MODELS, load_model, model_identity
from real_lens.scoring import ModuleScores, Selection, get_scorer, score_modules, scorer_spec
from real_lens.scoring.direction_attribution import (
    METHOD,
    DirectionAttributionConfig,
    direction_effects,
    unit_directions,
)
from real_lens.scoring.pair_rows import full_rows
from real_lens.scoring.pairs import build_contrast_pairs
from real_lens.steering import build_steering
from real_lens.tokens import pad_id
from tests.helpers import each_tiny_model, needs_data
from tests.unit.scoring.test_patching import toy_bank, toy_examples

# Central differences in α of the real steering hooks. The float64 tiny models still round some steps at
# float32 precision (the metric sums ~50 nats), so the step is not tiny: measured max |FD - effect| /
# max |effect| over all 8 heads at EPS 3e-3 is 4e-5 (tiny-llama) and 8e-5 (tiny-qwen2); the truncation
# error grows as EPS² above it and the rounding error as 1/EPS below. A wrong head, sign or set of
# positions is off by O(100 %).
EPS, TOLERANCE = 3e-3, 1e-3


@pytest.fixture(scope="module", params=TINY_MODELS)
def model_f64(request):
    model = load_model(request.param).to(torch.float64)
    assert model.W_E.dtype == torch.float64
    return model


def steered_metric(model, rows, steering):
    with torch.no_grad(), steering.applied(model):
        return rows.metric(model(rows.tokens))


@pytest.mark.parametrize("context", ["corrupted", "clean"])
def test_first_order_effect_matches_a_central_difference_of_the_real_steering(model_f64, context):
    """σ·⟨u, ∂metric/∂δ⟩ is d metric / dα of `build_steering` for that head alone, α·σ·u at every position."""
    bank = toy_bank(model=model_identity(model_f64)["name"])
    pairs = build_contrast_pairs(toy_examples(), model_f64, n_pairs=4, n_demos=2, seed=0)
    directions, sigmas = unit_directions(bank)
    effects, metric = direction_effects(model_f64, pairs, directions, sigmas, site="head_z", context=context,
                                        batch_tokens=200, progress=False)  # several batches
    assert effects.shape == (4, 2, 4) and effects.dtype == torch.float64
    rows = full_rows(pairs.pairs, context, positions="answer", pad=pad_id(model_f64))
    unsteered = steered_metric(model_f64, rows, build_steering(bank, Selection(((0, 0),), (1.0,), "x"), alpha=0.0))
    assert torch.allclose(metric, unsteered, atol=1e-9)
    worst = 0.0
    for layer in range(2):
        for head in range(4):
            steering = build_steering(bank, Selection(((layer, head),), (1.0,), "x"), alpha=EPS)
            difference = (steered_metric(model_f64, rows, steering)
                          - steered_metric(model_f64, rows, steering.with_alpha(-EPS))) / (2 * EPS)
            worst = max(worst, float((difference - effects[:, layer, head]).abs().max()))
    print(f"max |central difference - first-order effect| / max |effect| = {worst / float(effects.abs().max()):.2e}")
    assert worst <= TOLERANCE * float(effects.abs().max())


@each_tiny_model
def test_the_scorer_is_the_mean_effect_over_pairs_with_u_and_sigma_of_the_steering(tiny_model):
    bank = toy_bank(model=model_identity(tiny_model)["name"])
    cfg = DirectionAttributionConfig(n_pairs=5, n_demos=2)
    scores = score_modules(bank, METHOD, model=tiny_model, cfg=cfg, progress=False)
    pairs = build_contrast_pairs(bank.examples, tiny_model, n_pairs=5, n_demos=2, seed=0)
    directions, sigmas = unit_directions(bank)
    effects, _ = direction_effects(tiny_model, pairs, directions, sigmas, site="head_z", progress=False)
    assert scores.scores.shape == (2, 4) and scores.method == METHOD
    assert torch.allclose(scores.scores.double(), effects.mean(0), atol=1e-6)
    steering = build_steering(bank, Selection(((1, 2),), (1.0,), "x"), alpha=1.0)
    assert torch.equal(directions[1, 2], steering.directions[0]) and torch.equal(sigmas[1, 2], steering.sigmas[0])
    assert torch.equal(scores.diagnostics["sigma"], sigmas) and set(scores.diagnostics) == {"stderr", "sigma"}
    assert scores.meta["pairs"]["n_built"] == 5 and scores.meta["pairs"]["context"] == "corrupted"
    assert scores.select(3).strengths == (1.0, 1.0, 1.0)  # steered like ITI and attribution: uniform


def test_signed_scores_and_batches(tiny_model):
    """A head whose offset lowers the metric scores below 0 (signed, not |effect|); batching changes nothing."""
    bank = toy_bank(model=model_identity(tiny_model)["name"])
    pairs = build_contrast_pairs(bank.examples, tiny_model, n_pairs=6, n_demos=2, seed=0)
    directions, sigmas = unit_directions(bank)
    one = direction_effects(tiny_model, pairs, directions, sigmas, site="head_z", batch_tokens=1, progress=False)
    many = direction_effects(tiny_model, pairs, directions, sigmas, site="head_z", batch_tokens=10_000, progress=False)
    assert torch.allclose(one[0], many[0], atol=1e-5) and torch.allclose(one[1], many[1], atol=1e-4)
    mean = many[0].mean(0)
    assert (mean < 0).any() and (mean > 0).any()
    flipped = direction_effects(tiny_model, pairs, -directions, sigmas, site="head_z", progress=False)[0]
    assert torch.allclose(flipped, -many[0], atol=1e-9)


def test_layer_sites_and_bad_input(tiny_model):
    name = model_identity(tiny_model)["name"]
    cfg = DirectionAttributionConfig(n_pairs=2, n_demos=2)
    layer = get_scorer(METHOD)(toy_bank("resid_post", model=name, shape=(2, tiny_model.cfg.d_model)), model=tiny_model,
                               cfg=cfg, progress=False)
    assert layer.scores.shape == (2,) and torch.isfinite(layer.scores).all()
    with pytest.raises(ScoringError, match="model=None"):
        get_scorer(METHOD)(toy_bank(model=name), model=None)
    with pytest.raises(ScoringError, match="context"):
        DirectionAttributionConfig(context="both")
    with pytest.raises(ScoringError, match="n_pairs"):
        DirectionAttributionConfig(n_pairs=0)
    dead = toy_bank(model=name)
    dead.acts[:, 0, 1] = 0.0  # a head with no direction to steer
    with pytest.raises(ScoringError, match="no direction"):
        get_scorer(METHOD)(dead, model=tiny_model, cfg=cfg)
    spec = scorer_spec(METHOD)
    assert spec.needs_model and spec.progress and not spec.shardable and spec.strength == "uniform"


def test_score_command_takes_the_pair_options(tiny_model, tmp_path, capsys):
    bank_dir = toy_bank(model=model_identity(tiny_model)).save(tmp_path / "bank")
    assert main(["--quiet", "score", "--bank", str(bank_dir), "--method", METHOD, "--n-pairs", "3", "--n-demos", "2",
                 "--out", str(tmp_path / "s")]) == 0
    saved = ModuleScores.load(tmp_path / "s")
    assert saved.method == METHOD and saved.config["n_pairs"] == 3 and saved.config["n_demos"] == 2
    capsys.readouterr()
    assert main(["--quiet", "score", "--bank", str(bank_dir), "--method", METHOD, "--min-gap", "1",
                 "--out", str(tmp_path / "t")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--min-gap" in err and "Traceback" not in err


@needs_data
def test_direction_attribution_runs_through_the_main_job(tmp_path, tiny_model, capsys):
    argv = ["--quiet", "run", "--quick", "--model", "tiny-llama", "--methods", f"{METHOD},random",
            "--folds", "0", "--out", str(tmp_path)]
    assert main(argv) == 0
    capsys.readouterr()
    with open(tmp_path / "results.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["method"] == METHOD]
    assert rows and all(r["split"] == "test" and r["k"] == "2" and float(r["alpha"]) > 0 for r in rows)
    scores = ModuleScores.load(tmp_path / "scores" / "fold0" / METHOD)
    assert scores.config["n_pairs"] == 1 and scores.config["n_demos"] == 1  # the quick preset's attribution pairs
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert (METHOD, "random null") in {(r["a"], r["b"]) for r in summary["paired"]}
