import pytest
import torch

from real_lens import activations
from real_lens.activations import collect_activations
from real_lens.bank import ActivationBank
from real_lens.errors import BankError, RealLensError
from real_lens.tasks import Example
from tests.helpers import each_tiny_model


def _examples(n_groups=6):
    out = []
    for g in range(n_groups):
        prompt = f"Q: question number {g}{'?' * (g % 3)} A:"
        out.append(Example(prompt, f" yes{' indeed' * g}", 1, f"q{g}"))
        out.append(Example(prompt, " no", 0, f"q{g}"))
    return tuple(out)


# Right padding under a causal mask changes nothing for real tokens, so batched readouts
# should match one-at-a-time ones up to float reduction order: 1e-5 absolute is ~1e-5
# relative to these O(1) activations.
TOL = 1e-5


@each_tiny_model
@pytest.mark.parametrize("site", ["head_z", "resid_post"])
@pytest.mark.parametrize("readout", ["last", "mean_answer"])
def test_batched_equals_one_at_a_time(tiny_model, site, readout):
    examples = _examples()
    batched = collect_activations(tiny_model, examples, site=site, readout=readout, batch_size=5, cache=False, progress=False)
    single = collect_activations(tiny_model, examples, site=site, readout=readout, batch_size=1, cache=False, progress=False)
    assert torch.allclose(batched.acts, single.acts, atol=TOL)


@each_tiny_model
def test_shapes_and_readouts_match_run_with_cache(tiny_model):
    examples = _examples(2)
    cfg = tiny_model.cfg
    last = collect_activations(tiny_model, examples, cache=False, progress=False)
    mean = collect_activations(tiny_model, examples, readout="mean_answer", cache=False, progress=False)
    layer = collect_activations(tiny_model, examples, site="mlp_out", cache=False, progress=False)
    assert last.acts.shape == (4, cfg.n_layers, cfg.n_heads, cfg.d_head)
    assert layer.acts.shape == (4, cfg.n_layers, cfg.d_model)
    e = examples[0]
    _, cache = tiny_model.run_with_cache(e.text)
    n_prompt = tiny_model.to_tokens(e.prompt).shape[1]
    z = cache["blocks.1.attn.hook_z"][0]
    assert torch.allclose(last.acts[0, 1], z[-1], atol=TOL)
    assert torch.allclose(mean.acts[0, 1], z[n_prompt:].mean(0), atol=TOL)
    assert torch.allclose(layer.acts[0, 0], cache["blocks.0.hook_mlp_out"][0, -1], atol=TOL)
    assert last.meta["hook"] == "blocks.{layer}.attn.hook_z" and last.meta["readout"] == "last"


def test_collection_unembeds_no_position_nobody_reads(tiny_model):
    """The logits of a collection forward are never read: the unembedding runs on one position per row."""
    examples = _examples(2)
    unembedded = []
    handle = tiny_model.unembed.register_forward_hook(lambda module, args, out: unembedded.append(tuple(out.shape)))
    try:
        collect_activations(tiny_model, examples, batch_size=4, cache=False, progress=False)
    finally:
        handle.remove()
    assert unembedded == [(4, 1, tiny_model.cfg.d_vocab)]


def test_bank_round_trip(tmp_path, tiny_model):
    bank = collect_activations(tiny_model, _examples(2), cache=False, progress=False)
    loaded = ActivationBank.load(bank.save(tmp_path / "bank"))
    assert torch.equal(loaded.acts, bank.acts) and loaded.examples == bank.examples and loaded.meta == bank.meta


def test_corrupt_bank_file_is_reported(tmp_path, tiny_model):
    bank = collect_activations(tiny_model, _examples(2), cache=False, progress=False)
    bank.save(tmp_path)
    (tmp_path / "acts.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(BankError, match="unreadable"):
        ActivationBank.load(tmp_path)
    with pytest.raises(BankError, match="holds no activation bank"):
        ActivationBank.load(tmp_path / "missing")


def test_cache_is_reused_and_keyed_by_site(tmp_path, tiny_model, monkeypatch):
    examples = _examples(3)
    first = collect_activations(tiny_model, examples, cache_dir=tmp_path, progress=False)
    monkeypatch.setattr(activations, "_collect", lambda *a, **k: pytest.fail("cache was not used"))
    again = collect_activations(tiny_model, examples, cache_dir=tmp_path, progress=False)
    assert torch.equal(first.acts, again.acts)
    with pytest.raises(BaseException, match="cache was not used"):  # another site is another key
        collect_activations(tiny_model, examples, site="resid_post", cache_dir=tmp_path, progress=False)
    with pytest.raises(BaseException, match="cache was not used"):  # other examples, other key
        collect_activations(tiny_model, examples[:4], cache_dir=tmp_path, progress=False)


def test_interrupted_collection_resumes_from_finished_chunks(tmp_path, tiny_model, monkeypatch):
    examples = _examples(6)  # 12 examples, chunks of 4
    reference = collect_activations(tiny_model, examples, cache=False, progress=False)
    real_collect, calls = activations._collect, []

    def interrupted(model, part, *args):
        calls.append(len(part))
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_collect(model, part, *args)

    monkeypatch.setattr(activations, "_collect", interrupted)
    with pytest.raises(KeyboardInterrupt):
        collect_activations(tiny_model, examples, chunk_size=4, cache_dir=tmp_path, progress=False)
    calls.clear()
    monkeypatch.setattr(activations, "_collect", lambda m, part, *a: calls.append(len(part)) or real_collect(m, part, *a))
    bank = collect_activations(tiny_model, examples, chunk_size=4, cache_dir=tmp_path, progress=False)
    assert calls == [4, 4]  # the first chunk came from disk
    assert torch.allclose(bank.acts, reference.acts, atol=TOL)


def test_corrupt_cache_is_rebuilt(tmp_path, tiny_model):
    examples = _examples(2)
    bank = collect_activations(tiny_model, examples, cache_dir=tmp_path, progress=False)
    folder = tmp_path / bank.meta["cache_key"]
    (folder / "acts.safetensors").write_bytes(b"garbage")
    rebuilt = collect_activations(tiny_model, examples, cache_dir=tmp_path, progress=False)
    assert torch.equal(rebuilt.acts, bank.acts)


def test_bad_arguments(tiny_model):
    with pytest.raises(RealLensError, match="unknown readout 'first'"):
        collect_activations(tiny_model, _examples(1), readout="first", cache=False)
    with pytest.raises(RealLensError, match="unknown site"):
        collect_activations(tiny_model, _examples(1), site="hook_q", cache=False)
    with pytest.raises(RealLensError, match="has only label 1"):
        collect_activations(tiny_model, _examples(1)[:1], cache=False)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_banks_store_the_stated_dtype(tmp_path, tiny_model, dtype):
    examples = _examples(3)
    full = collect_activations(tiny_model, examples, cache=False, progress=False)
    half = collect_activations(tiny_model, examples, dtype=dtype, cache_dir=tmp_path, progress=False)
    assert full.meta["dtype"] == "float32" and half.meta["dtype"] == dtype
    # The readout is taken in float32 and rounded once on storage.
    assert torch.equal(half.acts, full.acts.to(getattr(torch, dtype)))
    loaded = ActivationBank.load(half.save(tmp_path / "bank"))
    assert loaded.acts.dtype == getattr(torch, dtype) and torch.equal(loaded.acts, half.acts)
    assert half.meta["cache_key"] != full.meta["cache_key"]  # another dtype is another cache entry


def test_a_bank_whose_acts_contradict_its_stated_dtype_is_refused(tiny_model):
    bank = collect_activations(tiny_model, _examples(2), cache=False, progress=False)
    with pytest.raises(BankError, match="bank activations are torch.bfloat16 but its metadata states 'float32'"):
        ActivationBank(bank.acts.bfloat16(), bank.examples, bank.meta)
    with pytest.raises(RealLensError, match="unsupported bank dtype 'int8'"):
        collect_activations(tiny_model, _examples(2), dtype="int8", cache=False, progress=False)


def test_cached_and_uncached_collection_give_the_same_bank(tmp_path, tiny_model):
    """Both run the same chunks (the unit torchrun ranks share), so they agree bit for bit."""
    examples = _examples(6)
    cached = collect_activations(tiny_model, examples, chunk_size=5, cache_dir=tmp_path, progress=False)
    uncached = collect_activations(tiny_model, examples, chunk_size=5, cache=False, progress=False)
    assert torch.equal(cached.acts, uncached.acts) and cached.meta == uncached.meta
    assert not list(tmp_path.rglob("chunk_*.safetensors"))  # chunk files are removed once the bank is saved


def test_a_half_precision_model_gives_a_float32_bank_by_default(tiny_model):
    from real_lens.models import load_model

    examples = _examples(2)
    bf16 = collect_activations(load_model("tiny-llama", dtype="bfloat16"), examples, cache=False, progress=False)
    full = collect_activations(tiny_model, examples, cache=False, progress=False)
    assert bf16.acts.dtype == torch.float32 and bf16.meta["model"]["dtype"] == "bfloat16"
    # Same tolerance as the logits (tests/unit/test_models.py): 2% of the largest activation.
    assert (bf16.acts - full.acts).abs().max() <= 0.02 * full.acts.abs().max()
