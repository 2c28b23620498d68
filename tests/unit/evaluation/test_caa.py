"""CAA A/B evaluation on the tiny random model: p(aligned letter), batching, steering."""


import numpy as np
import pytest
import torch

from real_lens.evaluation.caa import CAAResult, evaluate_caa, letter_token
from real_lens.tasks.caa import ABQuestion
from tests.helpers import ShiftSteering

AB_ITEMS = [
    ABQuestion("test:0", "Is the sky blue?\n\nChoices:\n (A) Yes\n (B) No\n\nAnswer:", "A", "B"),
    ABQuestion("test:1", "Pick one.\n (A) x\n (B) y\n (C) z\n\nAnswer:", "C", "A"),
    ABQuestion("test:2", "Short?\n (A) yes\n (B) no\n\nAnswer:", "B", "A"),
]


def test_evaluate_caa_on_tiny_model(tiny_model):
    result = evaluate_caa(tiny_model, AB_ITEMS, batch_size=2)
    assert isinstance(result, CAAResult) and result.groups == ("test:0", "test:1", "test:2")
    for values in (result.p_aligned, result.p_aligned_raw, result.p_violating_raw):
        assert values.shape == (3,) and ((values >= 0) & (values <= 1)).all()
    assert np.allclose(result.p_aligned, result.p_aligned_raw / (result.p_aligned_raw + result.p_violating_raw))
    # Oracle: the raw probability is the softmax at the last position of prompt + " (".
    tokens = tiny_model.to_tokens(AB_ITEMS[1].prompt + " (")
    with torch.inference_mode():
        probs = tiny_model(tokens)[0, -1].float().softmax(-1)
    assert result.p_aligned_raw[1] == pytest.approx(float(probs[letter_token(tiny_model, AB_ITEMS[1].prompt, "C")]), rel=1e-4)
    # Padded batches give the same numbers as one item at a time.
    single = evaluate_caa(tiny_model, AB_ITEMS, batch_size=1)
    assert np.allclose(single.p_aligned_raw, result.p_aligned_raw, rtol=1e-4, atol=1e-7)
    # Zero steering changes nothing; a real offset does.
    zero = evaluate_caa(tiny_model, AB_ITEMS, steering=ShiftSteering(0.0), batch_size=2)
    assert np.array_equal(zero.p_aligned_raw, result.p_aligned_raw)
    moved = evaluate_caa(tiny_model, AB_ITEMS, steering=ShiftSteering(3.0), batch_size=2)
    assert not np.allclose(moved.p_aligned_raw, result.p_aligned_raw)
    assert 0 <= result.p_aligned_mean <= 1 and 0 <= result.p_aligned_raw_mean <= 1


def test_evaluate_caa_rejects_bad_input(tiny_model):
    with pytest.raises(TypeError):  # our message, or jaxtyping's type check under pytest
        evaluate_caa(tiny_model, {"test:0": AB_ITEMS[0]})
