"""Batched greedy generation (real_lens.generation.generate_greedy) against TransformerLens's own loop."""

import pytest
import torch

from real_lens.tokens import tokenize
from real_lens.evaluation.nq_swap import evaluate_nq_swap, first_line
from real_lens.generation import first_line_complete, generate_greedy
from real_lens.steering import Steering
from real_lens.tasks.nq_swap import ConflictQuestion

# Different lengths, so a batch holds left padding of 0 to ~50 tokens.
TEXTS = [
    "abc",
    "The quick brown fox jumps over the lazy dog, again and again.",
    "context: Bob wrote it .\nquestion: who wrote it?\nanswer:",
    "x y",
    "Once upon a time, in a land far away, there lived a very small model.",
]


def _prompts(model):
    return [tokenize(model, t) for t in TEXTS]


def _one_at_a_time(model, prompts, max_new_tokens):
    """TransformerLens's own KV-cached greedy loop, one prompt per call: the oracle."""
    outs = []
    with torch.inference_mode():
        for p in prompts:
            out = model.generate(p[None], max_new_tokens=max_new_tokens, do_sample=False,
                                 use_past_kv_cache=True, verbose=False)
            outs.append(out[0, len(p):].cpu())
    return outs


def _steering(model, alpha=0.2):
    """Offsets of ~1-4 x the std of hook_z (~0.05 in the tiny model): tokens change, they do not collapse."""
    gen = torch.Generator().manual_seed(0)
    modules = ((0, 1), (1, 2), (1, 3))
    directions = torch.randn(len(modules), model.cfg.d_head, generator=gen)
    directions = directions / directions.norm(dim=-1, keepdim=True)
    return Steering("head_z", modules, directions, torch.ones(3), torch.ones(3), alpha)


@pytest.mark.parametrize("batch_size", [1, 2, 5])
def test_batched_greedy_equals_one_prompt_at_a_time(tiny_model, batch_size):
    prompts = _prompts(tiny_model)
    expected = _one_at_a_time(tiny_model, prompts, 8)
    with torch.inference_mode():
        got = generate_greedy(tiny_model, prompts, max_new_tokens=8, batch_size=batch_size)
    assert len(got) == len(prompts)
    for g, e in zip(got, expected):
        assert torch.equal(g, e)


def test_steering_hooks_apply_to_every_step_of_a_batch(tiny_model):
    prompts = _prompts(tiny_model)
    steering = _steering(tiny_model)
    with steering.applied(tiny_model):
        expected = _one_at_a_time(tiny_model, prompts, 8)
        with torch.inference_mode():
            got = generate_greedy(tiny_model, prompts, max_new_tokens=8, batch_size=5)
    for g, e in zip(got, expected):
        assert torch.equal(g, e)
    with torch.inference_mode():
        plain = generate_greedy(tiny_model, prompts, max_new_tokens=8, batch_size=5)
    assert any(not torch.equal(p, g) for p, g in zip(plain, got)), "the steering changed no token"


def test_a_row_stops_at_the_first_token_its_stop_rule_accepts(tiny_model):
    prompts = _prompts(tiny_model)
    decode = lambda ids: tiny_model.tokenizer.decode(ids, skip_special_tokens=True)  # noqa: E731
    stop = lambda text: len(text) >= 3  # noqa: E731 -- byte tokenizer: one character per token
    with torch.inference_mode():
        full = generate_greedy(tiny_model, prompts, max_new_tokens=8, batch_size=5)
        cut = generate_greedy(tiny_model, prompts, max_new_tokens=8, batch_size=5, stop=stop)
    for f, c in zip(full, cut):
        assert torch.equal(c, f[:len(c)])  # a prefix of the free-running continuation
        assert stop(decode(c)) or len(c) == 8
        assert not stop(decode(c[:-1]))  # and no longer than needed


def test_a_row_ends_with_the_end_of_sequence_token(tiny_model, monkeypatch):
    prompts = _prompts(tiny_model)[:2]
    with torch.inference_mode():
        free = generate_greedy(tiny_model, prompts, max_new_tokens=8, batch_size=2)
    # Declare the first row's third token the end-of-sequence token (where it does not occur earlier).
    eos = int(free[0][2])
    assert eos not in free[0][:2].tolist()
    monkeypatch.setattr(tiny_model.cfg, "eos_token_id", eos)
    with torch.inference_mode():
        stopped = generate_greedy(tiny_model, prompts, max_new_tokens=8, batch_size=2)
    assert torch.equal(stopped[0], free[0][:3])  # the EOS token is kept, nothing after it
    cut = next((i + 1 for i, t in enumerate(free[1].tolist()) if t == eos), 8)
    assert torch.equal(stopped[1], free[1][:cut])  # the other row runs on, unaffected


def test_first_line_complete():
    assert not first_line_complete("")
    assert not first_line_complete("\n\n  \n")  # only empty lines so far
    assert not first_line_complete(" The answer is")
    assert first_line_complete("\n The answer\n")
    assert first_line_complete("Bob\nquestion")
    # Once it holds, later text cannot change the first line.
    assert first_line("\n Bob\n") == first_line("\n Bob\nAlice\n")


def test_batched_nq_swap_predictions_equal_one_item_at_a_time(tiny_model):
    items = [ConflictQuestion(f"g{i}", t, ("Bob",), ("Alice",), "context") for i, t in enumerate(TEXTS)]
    steering = _steering(tiny_model, alpha=0.1)
    batched = evaluate_nq_swap(tiny_model, items, steering=steering, max_new_tokens=6, batch_size=3)
    single = evaluate_nq_swap(tiny_model, items, steering=steering, max_new_tokens=6, batch_size=1)
    with steering.applied(tiny_model):
        oracle = _one_at_a_time(tiny_model, [tokenize(tiny_model, t) for t in TEXTS], 6)
    expected = tuple(first_line(tiny_model.tokenizer.decode(o, skip_special_tokens=True)) for o in oracle)
    assert batched.predictions == single.predictions == expected


def test_generate_greedy_rejects_bad_input(tiny_model):
    prompts = _prompts(tiny_model)
    with pytest.raises(ValueError, match="max_new_tokens"):
        generate_greedy(tiny_model, prompts, max_new_tokens=0)
    with pytest.raises(ValueError, match="batch_size"):
        generate_greedy(tiny_model, prompts, max_new_tokens=2, batch_size=0)
    with pytest.raises((ValueError, TypeError)):  # our message, or jaxtyping's check under pytest
        generate_greedy(tiny_model, [prompts[0][None]], max_new_tokens=2)
    with pytest.raises(ValueError, match="non-empty 1-D"):
        generate_greedy(tiny_model, [torch.zeros(0, dtype=torch.long)], max_new_tokens=2)
