import pytest
import torch

from real_lens.activations import collect_activations
from real_lens.generation import generate_text
from real_lens.models import load_model
from real_lens.tasks import load_task

pytestmark = pytest.mark.integration


def test_embedded_model_shape(smollm):
    cfg = smollm.cfg
    assert (cfg.n_layers, cfg.n_heads, cfg.d_head, cfg.d_model) == (30, 9, 64, 576)
    assert cfg.n_key_value_heads == 3


def test_answers_capital_of_france(smollm):
    assert "Paris" in generate_text(smollm, "What is the capital of France?", max_new_tokens=20)


def test_kv_cached_generation_equals_uncached(smollm):
    tokens = smollm.to_tokens("Q: What is the tallest mountain on Earth? A:")
    kwargs = dict(max_new_tokens=15, do_sample=False, verbose=False, stop_at_eos=False)
    assert torch.equal(
        smollm.generate(tokens, use_past_kv_cache=True, **kwargs),
        smollm.generate(tokens, use_past_kv_cache=False, **kwargs),
    )


def test_second_load_comes_from_the_cache(smollm):
    again = load_model()
    assert again.real_lens_identity == smollm.real_lens_identity
    tokens = smollm.to_tokens("same weights")
    assert torch.equal(again(tokens), smollm(tokens))


def test_truthfulqa_head_bank(smollm):
    task = load_task("truthfulqa").limit(24)
    batched = collect_activations(smollm, task, batch_size=8, cache=False, progress=False)
    single = collect_activations(smollm, task, batch_size=1, cache=False, progress=False)
    assert batched.acts.shape == (len(task.examples), 30, 9, 64)
    assert set(batched.labels.tolist()) == {0, 1}
    # Same tolerance argument as the unit test: padding after the last real token is
    # invisible under causal attention; only float reduction order may differ.
    assert torch.allclose(batched.acts, single.acts, atol=1e-4)
