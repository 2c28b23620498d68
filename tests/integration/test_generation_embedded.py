"""Batched, steered greedy generation on the embedded model and real NQ-Swap items, against two oracles."""

import pytest
import torch

from real_lens.tokens import tokenize
from real_lens.evaluation.nq_swap import evaluate_nq_swap, first_line
from real_lens.generation import generate_greedy
from real_lens.models import DEFAULT_MODEL
from real_lens.models.loading import load_hf
from real_lens.steering import Steering
from real_lens.tasks import load_task
from real_lens.tasks.data import resolve_data_dir

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(resolve_data_dir() is None, reason="../shared/data is not present"),
]


@pytest.fixture(scope="module")
def items():
    """Four real items of different lengths (so a batch holds padding)."""
    task = load_task("nq-swap")
    qa = [q for g in task.groups[:12] for q in task.eval_data["qa"][g]]
    by_length = sorted(qa, key=lambda q: len(q.prompt))
    return [by_length[0], by_length[len(by_length) // 3], by_length[2 * len(by_length) // 3], by_length[-1]]


@pytest.fixture(scope="module")
def steering(smollm):
    cfg = smollm.cfg
    gen = torch.Generator().manual_seed(0)
    modules = ((2, 3), (9, 0), (9, 5), (17, 8))
    directions = torch.randn(len(modules), cfg.d_head, generator=gen)
    directions = directions / directions.norm(dim=-1, keepdim=True)
    return Steering("head_z", modules, directions, torch.full((4,), 0.5), torch.ones(4), alpha=4.0)


def test_batched_steered_generation_equals_transformer_lens_one_at_a_time(smollm, items, steering):
    prompts = [tokenize(smollm, q.prompt) for q in items]
    assert len({len(p) for p in prompts}) == len(prompts)
    with steering.applied(smollm), torch.inference_mode():
        expected = [smollm.generate(p[None], max_new_tokens=12, do_sample=False, use_past_kv_cache=True,
                                    verbose=False)[0, len(p):].cpu() for p in prompts]
        got = generate_greedy(smollm, prompts, max_new_tokens=12, batch_size=4)
    for g, e in zip(got, expected):
        assert torch.equal(g, e)
    result = evaluate_nq_swap(smollm, items, steering=steering, batch_size=4)
    assert result.predictions == tuple(first_line(smollm.tokenizer.decode(e, skip_special_tokens=True))
                                       for e in expected)


def test_steered_bridge_equals_plain_hf_with_an_o_proj_pre_hook(smollm, items, steering):
    """hook_z is o_proj's input with the heads concatenated: the benchmark's baseline is the same model."""
    hf_model, _, _ = load_hf(DEFAULT_MODEL, dtype=torch.float32)
    for layer, offset in steering.layer_offsets(smollm.cfg.n_heads).items():
        delta = offset.flatten()
        hf_model.model.layers[layer].self_attn.o_proj.register_forward_pre_hook(
            lambda module, args, delta=delta: (args[0] + delta,))
    tokens = tokenize(smollm, items[1].prompt)
    with torch.inference_mode():
        hf_new = hf_model.generate(tokens[None], attention_mask=torch.ones_like(tokens)[None], max_new_tokens=12,
                                   do_sample=False)[0, len(tokens):]
        with steering.applied(smollm):
            (ours,) = generate_greedy(smollm, [tokens], max_new_tokens=12)
        (plain,) = generate_greedy(smollm, [tokens], max_new_tokens=12)
    assert torch.equal(ours, hf_new)
    assert not torch.equal(ours, plain), "the steering changed no token; the comparison would prove nothing"
