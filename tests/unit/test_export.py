"""Exports reproduce our own steered logits: per-layer o_proj vectors on the bridge, the
lm-evaluation-harness steer file and the steering-vectors fields on a plain Hugging Face model.

The harness and steering-vectors are not installed here (lm-eval is heavy; steering-vectors
requires transformers < 5), so the tests apply their files/fields with the semantics those
packages document and implement: lm-eval's ``steered`` model loads the ``.pt`` with
``torch.load(weights_only=True)`` and, for each hookpoint (a module name under
``model.base_model``), adds ``steering_coefficient * steering_vector`` to that module's output
(the first element when the output is a tuple); steering-vectors' ``SteeringVector(...).apply``
adds ``layer_activations[l]`` to the output of layer ``l``'s module of ``layer_type``.
"""

import contextlib

import pytest
import torch

from real_lens import hooks
from real_lens.bank import ActivationBank
from real_lens.errors import RealLensError
from real_lens.export import (
    find_hf_module,
    to_lm_eval_config,
    save_lm_eval_steering,
    to_steering_vector_fields,
    to_layer_steering,
    to_layer_vectors,
    to_steering_vector,
)
from real_lens.models import build_tiny_hf_model, model_identity
from real_lens.scoring import Selection
from real_lens.steering import build_steering
from real_lens.tasks import Example
from tests.helpers import each_tiny_model

pytestmark = each_tiny_model  # every export, on each tiny architecture (tiny-qwen2: q/k/v biases, d_head != d_model / n_heads)

PROMPT = "Q: Is the sky blue? A: Yes, it is."
# float32 logits of a 2-layer model; the exported path adds the same offset after a matmul
# instead of before it, so the two differ by rounding only (observed <= 2.1e-7 against a 0.9 steering effect).
ATOL = 1e-5


def _bank(model, site="head_z", seed=0):
    cfg = model.cfg
    shape = (cfg.n_layers, cfg.n_heads, cfg.d_head) if hooks.is_head_site(site) else (cfg.n_layers, cfg.d_model)
    g = torch.Generator().manual_seed(seed)
    examples = tuple(Example("p", " a", i % 2, f"q{i // 2}") for i in range(40))
    acts = torch.randn(len(examples), *shape, generator=g)
    acts[1::2] += 0.5 * torch.randn(*shape, generator=g)  # a different mean for the aligned examples
    return ActivationBank(acts, examples, {"site": site, "model": model_identity(model)})


def _head_steering(model, alpha=40.0):
    modules = ((0, 1), (1, 0), (1, 3), (0, 2))
    return build_steering(_bank(model), Selection(modules, (1.0, 0.8, 0.5, 0.3), "real"), alpha=alpha)


def _steered_logits(model, steering):
    tokens = model.to_tokens(PROMPT)
    with torch.inference_mode(), steering.applied(model):
        return model(tokens)[0]


@pytest.fixture(scope="module")
def hf_model(tiny_model):
    """The tiny model as plain Hugging Face modules (same seed, so the bridge's weights)."""
    model, _ = build_tiny_hf_model(model_identity(tiny_model)["name"])
    return model


def _hf_logits(hf_model, tiny_model, add_to: dict[str, torch.Tensor]):
    """Logits of the HF model with ``add_to[module name] `` added to that module's output."""
    modules = dict(hf_model.named_modules())

    def adder(vector):
        def hook(module, inputs, output):
            if isinstance(output, tuple):
                return (output[0] + vector, *output[1:])
            return output + vector
        return hook

    tokens = tiny_model.to_tokens(PROMPT)
    with contextlib.ExitStack() as stack, torch.inference_mode():
        for name, vector in add_to.items():
            stack.callback(modules[name].register_forward_hook(adder(vector)).remove)
        return hf_model(tokens).logits[0]


def test_the_plain_hf_model_equals_the_bridge(tiny_model, hf_model):
    tokens = tiny_model.to_tokens(PROMPT)
    with torch.inference_mode():
        assert torch.equal(hf_model(tokens).logits[0], tiny_model(tokens)[0])


def test_per_layer_vectors_are_each_head_through_W_O(tiny_model):
    steering = _head_steering(tiny_model)
    vectors = to_layer_vectors(steering, tiny_model)
    assert vectors.site == "attn_out" and sorted(vectors.vectors) == [0, 1]
    offsets = steering.layer_offsets(tiny_model.cfg.n_heads)
    for layer, v in vectors.vectors.items():
        W_O = tiny_model.blocks[layer].attn.W_O.detach()  # [n_heads, d_head, d_model]
        expected = sum(offsets[layer][h] @ W_O[h] for h in range(tiny_model.cfg.n_heads))
        assert torch.allclose(v, expected, atol=1e-6)


def test_layer_steering_reproduces_the_head_steering_on_the_bridge(tiny_model):
    steering = _head_steering(tiny_model)
    exported = to_layer_steering(steering, tiny_model)
    assert exported.site == "attn_out" and exported.alpha == steering.alpha
    reference = _steered_logits(tiny_model, steering)
    assert not torch.allclose(reference, _steered_logits(tiny_model, steering.with_alpha(0.0)), atol=1e-2)
    assert torch.allclose(_steered_logits(tiny_model, exported), reference, atol=ATOL)
    # alpha scales both the same way.
    assert torch.allclose(_steered_logits(tiny_model, exported.with_alpha(7.0)),
                          _steered_logits(tiny_model, steering.with_alpha(7.0)), atol=ATOL)


def test_lm_eval_file_reproduces_our_steered_logits(tmp_path, tiny_model, hf_model):
    steering = _head_steering(tiny_model)
    path = save_lm_eval_steering(steering, tiny_model, tmp_path / "steer.pt")
    config = torch.load(path, weights_only=True)  # exactly how the harness reads it
    assert set(config) == {"layers.0.self_attn.o_proj", "layers.1.self_attn.o_proj"}
    for entry in config.values():
        assert entry["action"] == "add" and entry["bias"] is None and entry["head_index"] is None
        assert entry["steering_coefficient"] == steering.alpha and entry["steering_vector"].shape == (tiny_model.cfg.d_model,)
    base = dict(hf_model.base_model.named_modules())  # the harness resolves hookpoints here
    prefix = f"{hf_model.base_model_prefix}."
    added = {prefix + name: e["steering_coefficient"] * e["steering_vector"] for name, e in config.items()
             if name in base}
    assert len(added) == len(config)
    assert torch.allclose(_hf_logits(hf_model, tiny_model, added), _steered_logits(tiny_model, steering), atol=ATOL)


@pytest.mark.parametrize("site, hf_suffix, layer_type", [("resid_post", "", "decoder_block"),
                                                         ("mlp_out", ".mlp", "mlp"),
                                                         ("attn_out", ".self_attn.o_proj", "self_attn")])
def test_layer_sites_export_to_their_own_modules(tiny_model, hf_model, site, hf_suffix, layer_type):
    steering = build_steering(_bank(tiny_model, site), Selection(((0, None), (1, None)), (1.0, 0.5), "iti"), alpha=3.0)
    config = to_lm_eval_config(steering, tiny_model)
    assert set(config) == {f"layers.{layer}{hf_suffix}" for layer in (0, 1)}
    added = {f"model.{name}": e["steering_coefficient"] * e["steering_vector"] for name, e in config.items()}
    reference = _steered_logits(tiny_model, steering)
    assert torch.allclose(_hf_logits(hf_model, tiny_model, added), reference, atol=ATOL)
    layer_activations, kind = to_steering_vector_fields(steering, tiny_model)
    assert kind == layer_type
    sv_modules = {"decoder_block": "model.layers.{l}", "mlp": "model.layers.{l}.mlp",
                  "self_attn": "model.layers.{l}.self_attn"}[kind]
    sv_added = {sv_modules.format(l=layer): v for layer, v in layer_activations.items()}
    assert torch.allclose(_hf_logits(hf_model, tiny_model, sv_added), reference, atol=ATOL)


def test_steering_vectors_fields_reproduce_our_steered_logits(tiny_model, hf_model):
    steering = _head_steering(tiny_model)
    layer_activations, layer_type = to_steering_vector_fields(steering, tiny_model)
    assert layer_type == "self_attn"  # steering-vectors adds to the attention module's output[0]
    added = {f"model.layers.{layer}.self_attn": v for layer, v in layer_activations.items()}
    assert torch.allclose(_hf_logits(hf_model, tiny_model, added), _steered_logits(tiny_model, steering), atol=ATOL)


def test_hf_module_names_exist_in_the_hf_model(tiny_model, hf_model):
    base = dict(hf_model.base_model.named_modules())
    for site in ("attn_out", "mlp_out", "resid_post"):
        for layer in range(tiny_model.cfg.n_layers):
            assert find_hf_module(tiny_model, layer, site) in base


def test_export_mistakes(tmp_path, tiny_model):
    steering = _head_steering(tiny_model)
    with pytest.raises(RealLensError, match="ending in .pt or .pth"):
        save_lm_eval_steering(steering, tiny_model, tmp_path / "steer.json")
    with pytest.raises(RealLensError, match="no per-layer Hugging Face module"):
        find_hf_module(tiny_model, 0, "head_z")
    try:
        import steering_vectors  # noqa: F401
    except ModuleNotFoundError:
        with pytest.raises(RealLensError, match="pip install steering-vectors"):
            to_steering_vector(steering, tiny_model)
    else:
        assert to_steering_vector(steering, tiny_model).layer_type == "self_attn"
