"""The truth-vs-length decomposition recovers what synthetic steering did to the answers' log-probs."""

import numpy as np
import pytest

from real_lens.evaluation.decomposition import answer_deltas, decompose, question_design


def answers(n_questions=60, seed=0):
    """Questions with 3–8 answers each, mixed truth, lengths 2–30 tokens (true answers a bit shorter)."""
    rng = np.random.default_rng(seed)
    groups, true, tokens = [], [], []
    for q in range(n_questions):
        n = int(rng.integers(3, 9))
        labels = np.r_[1, 0, rng.integers(0, 2, n - 2)]
        lengths = rng.integers(2, 31, n) - 3 * labels
        groups += [f"q{q}"] * n
        true += labels.tolist()
        tokens += np.maximum(lengths, 1).tolist()
    return groups, np.array(true, float), np.array(tokens, float)


def test_a_pure_length_effect_has_no_truth_effect():
    groups, true, tokens = answers()
    fit = decompose(groups, true, tokens, -0.3 * tokens)
    assert fit.beta_truth == pytest.approx(0.0, abs=1e-9) and fit.beta_len == pytest.approx(-0.3)
    assert fit.ci_truth[0] <= 0.0 <= fit.ci_truth[1] and fit.p_truth > 0.5


def test_a_pure_truth_effect_has_no_length_effect():
    groups, true, tokens = answers()
    fit = decompose(groups, true, tokens, 0.8 * true)
    assert fit.beta_truth == pytest.approx(0.8) and fit.beta_len == pytest.approx(0.0, abs=1e-9)
    assert fit.p_truth < 1e-3 and fit.ci_truth[0] > 0


def test_both_effects_are_recovered_together_under_noise_and_question_offsets():
    groups, true, tokens = answers(n_questions=200)
    rng = np.random.default_rng(1)
    offsets = {g: rng.normal(0, 5) for g in set(groups)}  # a per-question shift the fixed effects remove
    delta = 0.5 * true - 0.05 * tokens + np.array([offsets[g] for g in groups]) + rng.normal(0, 0.3, len(groups))
    fit = decompose(groups, true, tokens, delta)
    assert fit.ci_truth[0] < 0.5 < fit.ci_truth[1] and fit.ci_len[0] < -0.05 < fit.ci_len[1]
    assert abs(fit.beta_truth - 0.5) < 0.1 and abs(fit.beta_len + 0.05) < 0.01
    assert fit.n_questions == 200 and fit.n_answers == len(groups)
    assert 0 < fit.min_detectable_truth < 0.5


def test_contributions_sum_to_beta_and_uninformative_questions_drop_out():
    groups, true, tokens = answers(n_questions=10)
    delta = 0.4 * true + 0.01 * tokens
    a, b = question_design(groups + ["same", "same"], np.r_[true, 1, 1], np.r_[tokens, 5, 5], np.r_[delta, 9, 2])
    assert len(a) == 10  # the two identical answers carry nothing within their question
    beta = np.linalg.solve(a.sum(0), b.sum(0))
    assert beta == pytest.approx([0.4, 0.01])


def test_collinear_truth_and_length_are_refused():
    groups = ["q0", "q0", "q1", "q1"]
    with pytest.raises(ValueError, match="collinear"):
        decompose(groups, [1, 0, 1, 0], [3, 5, 3, 5], [0.1, 0.2, 0.3, 0.1])
    with pytest.raises(ValueError, match="one group, truth label"):
        decompose(groups, [1, 0, 1], [3, 5, 3, 5], [0.1, 0.2, 0.3, 0.1])


def test_answer_deltas_refuse_different_answers():
    a = {"group": ["q"], "answer": ["x"], "logprob": [-1.0]}
    assert answer_deltas(a, {**a, "logprob": [-3.0]}) == pytest.approx([2.0])
    with pytest.raises(ValueError, match="different answers"):
        answer_deltas(a, {**a, "answer": ["y"]})
