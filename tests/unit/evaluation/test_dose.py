import math

import pytest
import torch

from real_lens.bank import ActivationBank
from real_lens.evaluation import SideEffects, evaluate_side_effects
from real_lens.evaluation.dose import (
    DoseCalibration,
    calibrate_alpha,
    evaluate_kl,
    prepare_kl_reference,
    search_alpha,
    split_texts,
)
from real_lens.scoring import Selection
from real_lens.steering import build_steering
from real_lens.tasks import Example

TEXTS = [
    "The tower is 324 metres tall, about the same height as an 81-storey building.",
    "Robert Boulter is an English film, television and theatre actor.",
    "A short one.",
    "Its base is square, measuring 125 metres on each side, and during its construction it surpassed the Washington Monument.",
]
MAX_TOKENS, BATCH = 40, 3


@pytest.fixture(scope="module")
def steering(tiny_model):
    cfg = tiny_model.cfg
    g = torch.Generator().manual_seed(0)
    acts = torch.randn(40, cfg.n_layers, cfg.n_heads, cfg.d_head, generator=g)
    examples = tuple(Example("p", " a", i % 2, f"q{i // 2}") for i in range(40))
    acts[1::2, 1, 2] += 3.0
    bank = ActivationBank(acts, examples, {"site": "head_z"})
    return build_steering(bank, Selection(((1, 2), (0, 1)), (1.0, 0.5), "test"), alpha=15.0)


@pytest.fixture(scope="module")
def reference(tiny_model):
    return prepare_kl_reference(tiny_model, TEXTS, max_tokens=MAX_TOKENS, batch_size=BATCH)


def _held_out(model, steering, alpha):
    return evaluate_side_effects(model, TEXTS, steering=steering.with_alpha(alpha), max_tokens=MAX_TOKENS, batch_size=BATCH)


def _calibrate(model, steering, target, reference, **kwargs):
    return calibrate_alpha(model, steering, TEXTS, target, max_tokens=MAX_TOKENS, batch_size=BATCH,
                           reference=reference, **kwargs)


# --------------------------------------------------------------------------- KL against a reference
@pytest.mark.parametrize("alpha", [0.0, 0.3, 4.0])
def test_reference_kl_equals_evaluate_side_effects(tiny_model, steering, reference, alpha):
    got = evaluate_kl(tiny_model, reference, steering=steering.with_alpha(alpha))
    expected = _held_out(tiny_model, steering, alpha)
    assert got.kl == pytest.approx(expected.kl, rel=1e-5, abs=1e-12)
    assert got.ce == pytest.approx(expected.ce, rel=1e-6)
    if alpha == 0.0:
        assert got.kl == 0.0  # adding a zero vector changes nothing, so KL is exactly 0
    else:
        assert got.kl > 1e-4


def test_reference_without_steering(tiny_model, reference):
    unsteered = evaluate_side_effects(tiny_model, TEXTS, max_tokens=MAX_TOKENS, batch_size=BATCH)
    got = evaluate_kl(tiny_model, reference)
    assert got.kl == 0.0 and got.ce == pytest.approx(unsteered.ce, rel=1e-6)
    assert reference.n_tokens == sum(min(len(tiny_model.to_tokens(t)[0]), MAX_TOKENS) - 1 for t in TEXTS)


# --------------------------------------------------------------------------- calibration on the tiny model
def test_calibration_hits_a_reachable_target(tiny_model, steering, reference):
    target = 0.01
    dose = _calibrate(tiny_model, steering, target, reference, tol=0.05)
    assert isinstance(dose, DoseCalibration)
    assert dose.reached and dose.reason == "reached"
    assert abs(dose.kl - target) <= 0.05 * target
    assert dose.n_evaluations == len(dose.trace) <= 20
    assert dose.trace[-1] == (dose.alpha, dose.kl)
    # Re-evaluated from scratch (both passes), the chosen α gives the same KL.
    assert _held_out(tiny_model, steering, dose.alpha).kl == pytest.approx(dose.kl, rel=1e-5)
    tighter = _calibrate(tiny_model, steering, target, reference, tol=0.005)
    assert tighter.reached and abs(tighter.kl - target) <= 0.005 * target


def test_calibration_is_deterministic_and_reference_is_optional(tiny_model, steering, reference):
    first = _calibrate(tiny_model, steering, 0.015, reference)
    assert _calibrate(tiny_model, steering, 0.015, reference) == first
    built_inside = calibrate_alpha(tiny_model, steering, TEXTS, 0.015, max_tokens=MAX_TOKENS, batch_size=BATCH)
    assert built_inside.alpha == first.alpha and built_inside.kl == pytest.approx(first.kl, rel=1e-6)
    # The steering's own α does not matter: only with_alpha is used.
    assert _calibrate(tiny_model, steering.with_alpha(0.1), 0.015, reference) == first


def test_bracket_phase_moves_one_way_and_kl_grows_with_alpha(tiny_model, steering, reference):
    up = _calibrate(tiny_model, steering, 0.015, reference, alpha_start=0.02)
    bracket = up.trace[:up.n_bracket]
    assert len(bracket) >= 2
    assert all(1 < a2 / a1 <= 16 for (a1, _), (a2, _) in zip(bracket, bracket[1:]))  # up, at most growth^4
    assert all(k1 < k2 for (_, k1), (_, k2) in zip(bracket, bracket[1:]))  # this steering's KL grows with α
    assert up.monotone and up.reached
    down = _calibrate(tiny_model, steering, 0.001, reference, alpha_start=8.0)
    bracket = down.trace[:down.n_bracket]
    assert all(1 / 16 <= a2 / a1 < 1 for (a1, _), (a2, _) in zip(bracket, bracket[1:]))
    assert down.reached


def test_bracket_steps_follow_the_kl_slope():
    """KL ∝ α²: the first step (p = 2) lands on the target; KL ∝ α: the first step (p = 2) stops
    short and the second follows the measured slope onto it. Where the KL is 0 α moves by
    ``growth``; no step exceeds growth^4."""
    square = search_alpha(_curve(lambda a: (a / 7) ** 2), 0.3, tol=0.001)
    assert square.reached and square.n_evaluations == 2 and square.n_bracket == 2
    linear = search_alpha(_curve(lambda a: 0.01 * a), 0.3, tol=0.01, alpha_start=1.0)
    assert linear.reached and linear.n_evaluations <= 5
    alphas = [a for a, _ in linear.trace[:linear.n_bracket]]
    assert alphas[1] == pytest.approx(math.sqrt(30))  # p = 2 before a slope is measured
    assert alphas[2] == pytest.approx(30, rel=1e-6)  # then the measured slope, 1, lands on it
    flat = search_alpha(_curve(lambda a: 0.0 if a < 3 else (a - 3) ** 2), 0.5, tol=0.01, alpha_start=0.5)
    assert [a for a, _ in flat.trace[:3]] == [0.5, 1.0, 2.0]  # KL 0: doubling
    far = search_alpha(_curve(lambda a: 1e-12 * a ** 2), 0.3, alpha_max=1e9, growth=2.0)
    ratios = [a2 / a1 for (a1, _), (a2, _) in zip(far.trace, far.trace[1:])]
    assert max(ratios) == pytest.approx(16) and far.reached


def test_unreachable_target_is_reported(tiny_model, steering, reference):
    dose = _calibrate(tiny_model, steering, 0.01, reference, alpha_max=0.05)
    assert not dose.reached and dose.reason == "above_alpha_max"
    assert dose.alpha == 0.05
    assert dose.kl == pytest.approx(_held_out(tiny_model, steering, 0.05).kl, rel=1e-5)
    assert dose.kl < 0.01 * 0.95
    assert dose.trace[-1][0] == 0.05
    too_strong = _calibrate(tiny_model, steering, 1e-4, reference, alpha_min=0.5, alpha_start=1.0)
    assert not too_strong.reached and too_strong.reason == "below_alpha_min"
    assert too_strong.alpha == 0.5 and too_strong.kl > 1e-4


def test_reference_must_match_the_texts(tiny_model, steering, reference):
    with pytest.raises(ValueError, match="other texts or settings"):
        calibrate_alpha(tiny_model, steering, TEXTS[:2], 0.01, max_tokens=MAX_TOKENS, batch_size=BATCH,
                        reference=reference)
    with pytest.raises(ValueError, match="other texts or settings"):
        calibrate_alpha(tiny_model, steering, TEXTS, 0.01, max_tokens=20, batch_size=BATCH, reference=reference)
    with pytest.raises(TypeError, match="with_alpha"):
        calibrate_alpha(tiny_model, object(), TEXTS, 0.01)


# --------------------------------------------------------------------------- the search, model-free
def _curve(f):
    return lambda alpha: SideEffects(ce=3.0, kl=f(alpha))


def test_search_refines_a_crossed_bracket_along_its_line():
    # KL ∝ α²: from far below, a step of growth^4 stops short, the next lands on the target.
    dose = search_alpha(_curve(lambda a: (a / 70) ** 2), 0.3, tol=0.001)
    assert dose.reached and dose.alpha == pytest.approx(70 * math.sqrt(0.3), rel=1e-3)
    assert [a for a, _ in dose.trace] == pytest.approx([1.0, 16.0, 70 * math.sqrt(0.3)])
    # KL ∝ α⁴ from below: the first step (p = 2) overshoots; a line through the bracket's ends in
    # (log α, log KL) then lands on the target.
    steep = search_alpha(_curve(lambda a: (a / 7) ** 4), 0.3, tol=0.001)
    assert steep.reached and steep.n_bracket == 2 and steep.n_evaluations == 3


@pytest.mark.parametrize("f", [
    lambda a: 1e-3 * math.exp(a),                       # steep
    lambda a: 0.0 if a < 3 else (a - 3) ** 4,           # flat at zero, then steep
    lambda a: 0.5 * (1 - math.exp(-(a / 5) ** 2)),      # saturating
    lambda a: 0.2 * math.log1p(a),                      # slow
])
@pytest.mark.parametrize("target", [0.01, 0.1, 0.3])
def test_search_converges_on_hard_monotone_curves(f, target):
    dose = search_alpha(_curve(f), target, tol=0.01)
    assert dose.reached, dose
    assert abs(f(dose.alpha) - target) <= 0.01 * target
    assert dose.n_evaluations <= 14
    assert dose.monotone


def test_search_on_a_non_monotone_curve_ends_at_a_crossing_and_says_so():
    f = lambda a: 0.2 * math.sin(a) ** 2 + 0.001 * a  # noqa: E731  rises and falls, peak 0.2 at α ≈ 1.57
    dose = search_alpha(_curve(f), 0.15, tol=0.01, alpha_start=0.4, growth=4.0)
    assert dose.reached and abs(dose.kl - 0.15) <= 0.0015
    assert dose.alpha < math.pi / 2 + 0.2  # the crossing inside the first bracket
    unreachable = search_alpha(_curve(f), 0.5, alpha_max=50.0, alpha_start=0.4, growth=4.0)
    assert not unreachable.reached and unreachable.reason == "above_alpha_max"
    assert not unreachable.monotone
    # The best point found is reported, not the last one: closest to the target of every evaluation.
    assert unreachable.kl == max(k for _, k in unreachable.trace)


def test_default_start_moves_into_the_range():
    dose = search_alpha(_curve(lambda a: (a / 7) ** 2), 1e-6, alpha_min=0.5, alpha_max=0.9)
    assert dose.trace[0][0] == 0.9 and dose.reason == "below_alpha_min" and dose.alpha == 0.5


def test_search_reports_running_out_of_steps():
    dose = search_alpha(_curve(lambda a: 1e-3 * math.exp(a)), 0.3, tol=1e-6, max_steps=6)
    assert not dose.reached and dose.reason == "max_steps" and dose.n_evaluations == 6
    assert abs(dose.kl / 0.3 - 1) == min(abs(k / 0.3 - 1) for _, k in dose.trace)
    short = search_alpha(_curve(lambda a: (a / 50) ** 2), 0.3, max_steps=2)
    assert short.reason == "max_steps" and short.n_bracket == 2


@pytest.mark.parametrize("kwargs, match", [
    ({"target_kl": 0.0}, "target_kl"),
    ({"tol": 1.5}, "tol"),
    ({"alpha_min": 2.0, "alpha_start": 0.5}, "alpha_min <= alpha_start"),
    ({"alpha_min": 2.0, "alpha_max": 1.0}, "alpha_min <= alpha_start"),
    ({"growth": 1.0}, "growth"),
    ({"max_steps": 0}, "max_steps"),
])
def test_search_bad_input(kwargs, match):
    args = {"target_kl": 0.1, **kwargs}
    with pytest.raises(ValueError, match=match):
        search_alpha(_curve(lambda a: a), **args)


# --------------------------------------------------------------------------- split
def test_split_texts_is_disjoint_seeded_and_drops_repeats():
    texts = [f"paragraph {i}" for i in range(20)] + ["paragraph 3", "paragraph 7"]
    calibration, report = split_texts(texts, 6, seed=1)
    assert len(calibration) == 6 and len(report) == 14
    assert not set(calibration) & set(report)
    assert set(calibration) | set(report) == set(texts)
    assert calibration == sorted(calibration, key=texts.index)  # input order kept
    assert split_texts(texts, 6, seed=1) == (calibration, report)
    assert split_texts(texts, 6, seed=2)[0] != calibration
    with pytest.raises(ValueError, match="n_calibration"):
        split_texts(texts, 20)
    with pytest.raises(TypeError, match="single string"):
        split_texts("one text", 1)
