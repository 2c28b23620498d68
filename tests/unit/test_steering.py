import pytest
import torch

from real_lens import hooks
from real_lens.bank import ActivationBank
from real_lens.errors import RealLensError
from real_lens.scoring import Selection
from real_lens.steering import Steering, build_steering
from real_lens.tasks import Example
from tests.helpers import each_tiny_model

PROMPT = "Q: Is water wet? A: Yes"


def _bank(cfg, n=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    acts = torch.randn(n, cfg.n_layers, cfg.n_heads, cfg.d_head, generator=g)
    examples = tuple(Example("p", " a", i % 2, f"q{i // 2}") for i in range(n))
    acts[1::2, 1, 2] += 3.0  # aligned examples (odd indices, label 1) differ at L1H2
    return ActivationBank(acts, examples, {"site": "head_z"})


def _steering(model, *, alpha=4.0, modules=((1, 2),), strengths=(0.5,)):
    bank = _bank(model.cfg)
    return build_steering(bank, Selection(tuple(modules), tuple(strengths), "test"), alpha=alpha)


def test_direction_and_sigma_match_their_definition(tiny_model):
    bank = _bank(tiny_model.cfg)
    steering = build_steering(bank, Selection(((1, 2),), (1.0,), "test"), alpha=1.0)
    acts, labels = bank.acts[:, 1, 2].double(), bank.labels
    u = acts[labels == 1].mean(0) - acts[labels == 0].mean(0)
    u = u / u.norm()
    assert torch.allclose(steering.directions[0].double(), u, atol=1e-6)
    assert torch.allclose(steering.sigmas[0].double(), (acts @ u).std(), atol=1e-5)


@each_tiny_model
def test_hooked_z_gets_exactly_the_steering_vector_at_one_head(tiny_model):
    steering = _steering(tiny_model)
    _, clean = tiny_model.run_with_cache(PROMPT)
    with steering.applied(tiny_model):
        _, steered = tiny_model.run_with_cache(PROMPT)
    added = 4.0 * 0.5 * steering.sigmas[0] * steering.directions[0]
    z_clean, z_steered = clean[hooks.head_z(1)], steered[hooks.head_z(1)]
    # Every position of head 2 moved by exactly the vector (float addition: 1 ulp-level).
    assert torch.allclose(z_steered[0, :, 2] - z_clean[0, :, 2], added.expand_as(z_clean[0, :, 2]), atol=1e-6)
    others = [h for h in range(tiny_model.cfg.n_heads) if h != 2]
    assert torch.equal(z_steered[0, :, others], z_clean[0, :, others])
    # Nothing upstream of the hooked layer changes.
    assert torch.equal(steered[hooks.head_z(0)], clean[hooks.head_z(0)])
    assert torch.equal(steered[hooks.resid_post(0)], clean[hooks.resid_post(0)])


@each_tiny_model
def test_removing_the_hooks_restores_the_logits(tiny_model):
    tokens = tiny_model.to_tokens(PROMPT)
    before = tiny_model(tokens)
    with steering_applied(tiny_model, _steering(tiny_model)):
        during = tiny_model(tokens)
    assert not torch.allclose(during, before)
    assert torch.equal(tiny_model(tokens), before)


def steering_applied(model, steering):
    return steering.applied(model)


def test_hooks_are_removed_even_on_error(tiny_model):
    tokens = tiny_model.to_tokens(PROMPT)
    before = tiny_model(tokens)
    with pytest.raises(ZeroDivisionError):
        with _steering(tiny_model).applied(tiny_model):
            1 / 0
    assert torch.equal(tiny_model(tokens), before)


@each_tiny_model
def test_alpha_zero_equals_unsteered_exactly(tiny_model):
    tokens = tiny_model.to_tokens(PROMPT)
    with _steering(tiny_model, alpha=0.0).applied(tiny_model):
        steered = tiny_model(tokens)
    assert torch.equal(steered, tiny_model(tokens))


@each_tiny_model
def test_run_with_hooks_and_generate(tiny_model):
    steering = _steering(tiny_model, alpha=50.0)
    tokens = tiny_model.to_tokens(PROMPT)
    with steering.applied(tiny_model):
        expected = tiny_model(tokens)
    assert not torch.allclose(expected, tiny_model(tokens), atol=1e-3)  # the steering changes the logits
    assert torch.equal(tiny_model.run_with_hooks(tokens, fwd_hooks=steering.fwd_hooks(tiny_model)), expected)
    kwargs = dict(max_new_tokens=8, do_sample=False, verbose=False, stop_at_eos=False)
    with steering.applied(tiny_model):
        cached = tiny_model.generate(tokens, use_past_kv_cache=True, **kwargs)
    with steering.applied(tiny_model):
        uncached = tiny_model.generate(tokens, use_past_kv_cache=False, **kwargs)
    assert torch.equal(cached, uncached)
    assert not torch.equal(cached, tiny_model.generate(tokens, use_past_kv_cache=True, **kwargs))  # and the tokens


@each_tiny_model
@pytest.mark.parametrize("positions", ["prompt", "generated"])
def test_position_modes(tiny_model, positions):
    steering = _steering(tiny_model)
    tokens = tiny_model.to_tokens(PROMPT)
    n = tokens.shape[1]
    split = n - 3
    _, clean = tiny_model.run_with_cache(tokens)
    with steering.applied(tiny_model, positions=positions, prompt_length=split):
        _, steered = tiny_model.run_with_cache(tokens)
    moved = (steered[hooks.head_z(1)][0, :, 2] - clean[hooks.head_z(1)][0, :, 2]).abs().sum(-1) > 0
    expected = torch.arange(n) < split if positions == "prompt" else torch.arange(n) >= split
    assert torch.equal(moved, expected)


@each_tiny_model
def test_generated_mode_during_kv_cached_generation(tiny_model):
    """Prompt untouched, every generated token steered: equals steering the full sequence's tail."""
    steering = _steering(tiny_model, alpha=50.0)
    tokens = tiny_model.to_tokens(PROMPT)
    kwargs = dict(max_new_tokens=6, do_sample=False, verbose=False, stop_at_eos=False)
    with steering.applied(tiny_model, positions="generated", prompt_length=tokens.shape[1]):
        cached = tiny_model.generate(tokens, use_past_kv_cache=True, **kwargs)
    with steering.applied(tiny_model, positions="generated", prompt_length=tokens.shape[1]):
        uncached = tiny_model.generate(tokens, use_past_kv_cache=False, **kwargs)
    assert torch.equal(cached, uncached)
    assert not torch.equal(cached, tiny_model.generate(tokens, use_past_kv_cache=True, **kwargs))  # it steered


def test_layer_site_steering(tiny_model):
    cfg = tiny_model.cfg
    g = torch.Generator().manual_seed(1)
    acts = torch.randn(20, cfg.n_layers, cfg.d_model, generator=g)
    examples = tuple(Example("p", " a", i % 2, f"q{i // 2}") for i in range(20))
    bank = ActivationBank(acts, examples, {"site": "resid_post"})
    steering = build_steering(bank, Selection(((0, None),), (1.0,), "test"), alpha=2.0)
    _, clean = tiny_model.run_with_cache(PROMPT)
    with steering.applied(tiny_model):
        _, steered = tiny_model.run_with_cache(PROMPT)
    delta = steered[hooks.resid_post(0)] - clean[hooks.resid_post(0)]
    assert torch.allclose(delta[0], steering.vectors()[0].expand_as(delta[0]), atol=1e-5)


def test_save_load_round_trip(tmp_path, tiny_model):
    steering = _steering(tiny_model, modules=((1, 2), (0, 1)), strengths=(1.0, 0.25))
    loaded = Steering.load(steering.save(tmp_path))
    assert loaded.modules == steering.modules and loaded.alpha == steering.alpha
    assert torch.equal(loaded.vectors(), steering.vectors())


def test_bad_input(tiny_model):
    with pytest.raises(RealLensError, match="unknown positions"):
        _steering(tiny_model).fwd_hooks(tiny_model, positions="middle")
    with pytest.raises(RealLensError, match="needs prompt_length"):
        _steering(tiny_model).fwd_hooks(tiny_model, positions="prompt")
    with pytest.raises(RealLensError, match="outside the bank"):
        _steering(tiny_model, modules=((5, 0),))


def test_sigma_bank_gives_sigma_and_leaves_the_direction(tiny_model):
    bank, tuning = _bank(tiny_model.cfg), _bank(tiny_model.cfg, n=30, seed=1)
    tuning.acts[:, 1, 2] *= 5.0  # a wider spread: σ must follow the tuning bank, not the scoring bank
    selection = Selection(((1, 2),), (1.0,), "test")
    plain = build_steering(bank, selection, alpha=1.0)
    steering = build_steering(bank, selection, alpha=1.0, sigma_bank=tuning)
    u = steering.directions[0].double()
    assert torch.equal(steering.directions, plain.directions)
    assert torch.allclose(steering.sigmas[0].double(), (tuning.acts[:, 1, 2].double() @ u).std(), atol=1e-5)
    assert steering.sigmas[0] > 3 * plain.sigmas[0]
    assert steering.meta["sigma_bank_digest"] == tuning.digest and "sigma_bank_digest" not in plain.meta


def test_sigma_bank_of_another_shape_is_refused(tiny_model):
    bank = _bank(tiny_model.cfg)
    other = ActivationBank(torch.zeros(4, 1, 1, tiny_model.cfg.d_head), bank.examples[:4], {"site": "head_z"})
    with pytest.raises(RealLensError, match=r"sigma_bank must be read at the bank's site 'head_z' with module shape"):
        build_steering(bank, Selection(((1, 2),), (1.0,), "test"), alpha=1.0, sigma_bank=other)
