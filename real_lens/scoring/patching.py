"""Activation patching baseline: how much of a behaviour one module's activation restores.

On each contrast pair (:mod:`real_lens.scoring.pairs`: the pair's own question after
demonstrations answered aligned (clean) or violating (corrupted)), run the corrupted input,
replace one module's activation at the patched positions with its value in the clean run, and
measure ``metric = log p(aligned answer) - log p(violating answer)``. Score of a module =
``Σ (patched - corrupted) / Σ (clean - corrupted)`` over the kept pairs.

Batched, cached sweep (:func:`patch_pairs`). Patching a module only at the patched positions (the
end of the input) leaves every earlier position exactly as in the corrupted run, so per pair:

1. one clean forward (both answers) gives the clean activations at the patched positions;
2. one forward of the corrupted input *up to* the patched positions gives its KV cache
   (``return_type="logits_and_cache"``, Hugging Face ``DynamicCache``), shared by every patch;
3. the modules are patched in chunks (``modules_per_batch``): one forward per chunk whose batch
   rows are (module, answer) pairs, each row patching a different module, fed only the patched
   positions (a few tokens) after its copy of the cache (``batch_select_indices``).

A pair then costs ``n_modules * 2`` rows of a few tokens instead of ``n_modules`` forwards of the
whole input. ``transformer_lens.patching.generic_activation_patch`` cannot do this: it runs one
full forward per index, with one patch applied to the whole batch, and has no KV cache; so the
batched hook is written here. The TransformerLens sweep is kept as :func:`patch_pairs_looped`
(one full forward per module, no cache), the reference the batched sweep is tested against and
benchmarked on (``benchmarks/bench_scorers.py``).

Layer sites with ``positions="question"``: patching ``hook_resid_post`` at every patched position
gives those positions their clean residual stream, but later layers still attend to the corrupted
demonstrations, so unlike whole-input patching the score is not trivially 1.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass

import torch
import transformer_lens.utilities as tl_utils
from jaxtyping import Float
from torch import Tensor
from tqdm.auto import tqdm
from transformer_lens.patching import generic_activation_patch

from .. import hooks
from ..errors import ScoringError
from .registry import register_scorer
from .scores import ModuleScores
from ..tokens import pad_id
from .pair_rows import Rows, fed_rows, full_rows, prefix_tokens, run_and_capture
from .pairs import ContrastPair, ContrastPairs, PairConfig, score_with_pairs

METHOD = "patching"
SCORE_UNIT = "fraction of the summed clean-corrupted log-prob-difference gap restored"

# generic_activation_patch builds hook names itself with get_act_name(short, layer); these
# short names give exactly the names real_lens.hooks spells (checked in _tl_act_name).
_TL_ACT_NAMES = {"head_z": "z", "attn_out": "attn_out", "mlp_out": "mlp_out", "resid_post": "resid_post"}


@dataclass(frozen=True)
class PatchingConfig(PairConfig):
    """:class:`~real_lens.scoring.pairs.PairConfig` with activation patching's own defaults.

    ``n_pairs`` 8: a pair costs ``n_modules * 2`` rows of ~10 tokens (TruthfulQA; SmolLM2's 270
    heads: ~5,000 tokens, ~15-20 s on 2 CPU cores), so 8 pairs take a few minutes.
    ``modules_per_batch``: at most this many modules patched in one forward (rows = 2x that).
    ``max_cached_tokens``: fewer when the rows' cached prefixes would hold more tokens than this
    (each row holds its own copy of the corrupted prefix's keys and values: 16,384 tokens are
    ~0.75 GB on SmolLM2; a TruthfulQA pair keeps all 32 modules, an NQ-Swap pair ~12).
    """

    n_pairs: int = 8
    modules_per_batch: int = 32
    max_cached_tokens: int = 16384

    def __post_init__(self):
        super().__post_init__()
        if self.modules_per_batch < 1:
            raise ScoringError(f"modules_per_batch must be at least 1; got {self.modules_per_batch}")
        if self.max_cached_tokens < 1:
            raise ScoringError(f"max_cached_tokens must be at least 1; got {self.max_cached_tokens}")

    def modules_per_forward(self, pair: ContrastPair) -> int:
        """Modules patched per forward on ``pair``: ``modules_per_batch``, fewer for long prefixes."""
        fed = len(pair.prompt) - pair.patch_start(self.positions) + max(len(pair.aligned), len(pair.violating))
        tokens_per_module = 2 * (len(prefix_tokens(pair, positions=self.positions)) + fed)
        return max(1, min(self.modules_per_batch, self.max_cached_tokens // tokens_per_module))


def _experiment_options(experiment) -> dict:
    # The shared pair fields only (a PairConfig, made a PatchingConfig by the scorer): the run's cell digests
    # carry exactly these settings.
    return {"cfg": PairConfig(n_pairs=experiment.patching_pairs, n_demos=experiment.pair_demos,
                              min_gap=experiment.pair_min_gap)}


@register_scorer(METHOD, config=PatchingConfig, accepts=PairConfig, needs_model=True, progress=True,
                 experiment_settings=("patching_pairs", "pair_demos", "pair_min_gap"),
                 experiment_options=_experiment_options)
def patching_scorer(
    bank, *, model=None, seed: int = 0, device=None, cfg: PairConfig | None = None, progress: bool = True
) -> ModuleScores:
    """Activation patching at the bank's site, on contrast pairs built from its examples.

    Needs the model the bank was collected from; reads the bank's examples, not its
    activations. Runs where the model is (``device`` is unused). A plain ``PairConfig`` gets
    :class:`PatchingConfig`'s ``modules_per_batch``.
    """
    cfg = as_patching_config(cfg)
    return score_with_pairs(bank, model, seed=seed, cfg=cfg, effects_fn=patch_pairs, method=METHOD, unit=SCORE_UNIT,
                            progress=progress)


def as_patching_config(cfg: PairConfig | None) -> PatchingConfig:
    if cfg is None:
        return PatchingConfig()
    if isinstance(cfg, PatchingConfig):
        return cfg
    if not isinstance(cfg, PairConfig):
        raise ScoringError(f"patching needs a PatchingConfig (or PairConfig); got {type(cfg).__name__}")
    return PatchingConfig(**asdict(cfg))


# --------------------------------------------------------------------------- batched, cached sweep
def patch_pairs(
    model, pairs: ContrastPairs, *, site: str, cfg: PairConfig | None = None, progress: bool = True
) -> tuple[Float[Tensor, "pair layer *head"], Float[Tensor, " pair"]]:
    """Patch every module of ``site`` on every pair: ``(patched - corrupted, clean - corrupted)`` in nats (float64).

    The first tensor is ``[pair, n_layers, n_heads]`` for heads, ``[pair, n_layers]`` for layer sites.
    """
    cfg = as_patching_config(cfg)
    _check_eval(model)
    modules = _modules(model, site)
    sizes = [cfg.modules_per_forward(pair) for pair in pairs.pairs]
    names = [hooks.hook_name(site, layer) for layer in range(model.cfg.n_layers)]
    pad, device = pad_id(model), model.cfg.device
    effects, gaps = [], []
    bar = tqdm(total=sum(-(-len(modules) // size) for size in sizes), desc=f"patching {len(pairs)} pairs x {len(modules)} modules",
               unit="forward", disable=not progress)
    with torch.inference_mode(), bar:
        for pair, size in zip(pairs.pairs, sizes):
            clean = run_and_capture(model, full_rows([pair], "clean", positions=cfg.positions, pad=pad).to(device), names)
            clean_metric = clean.metric[0]
            patches = [clean.activations[name] for name in names]  # per layer [answer, patch, *module]
            fed = fed_rows(pair, positions=cfg.positions, pad=pad).to(device)
            _, prefix_cache = model(prefix_tokens(pair, positions=cfg.positions)[None].to(device),
                                    return_type="logits_and_cache", use_cache=True, logits_to_keep=1)
            corrupted = fed.metric(model(fed.tokens, past_key_values=_rows_of(prefix_cache, 2),
                                         logits_to_keep=fed.logits_to_keep))[0]
            pair_effects = torch.empty(len(modules), dtype=torch.float64)
            done = 0
            for chunk in (modules[i:i + size] for i in range(0, len(modules), size)):
                patched = _patched_metrics(model, site, fed, prefix_cache, patches, chunk)
                pair_effects[done:done + len(chunk)] = (patched - corrupted).cpu()
                done += len(chunk)
                bar.update(1)
            effects.append(pair_effects.reshape(_module_shape(model, site)))
            gaps.append(float(clean_metric - corrupted))
    return torch.stack(effects), torch.tensor(gaps, dtype=torch.float64)


def _patched_metrics(model, site: str, fed: Rows, prefix_cache, patches, chunk) -> Float[Tensor, " module"]:
    """One forward: rows ``2*m, 2*m+1`` patch ``chunk[m]`` (aligned, violating answer)."""
    n = len(chunk)
    tokens = fed.tokens.repeat(n, 1)
    rows = Rows(tokens, fed.patch_index.repeat(n, 1), fed.patch_mask.repeat(n, 1), fed.score_index.repeat(n, 1),
                fed.targets.repeat(n, 1), fed.target_mask.repeat(n, 1), fed.sign.repeat(n),
                torch.arange(2 * n, device=tokens.device) // 2, n)
    by_layer: dict[int, list[tuple[int, int | None]]] = {}
    for m, (layer, head) in enumerate(chunk):
        by_layer.setdefault(layer, []).append((m, head))
    fwd_hooks = [(hooks.hook_name(site, layer), _patch_hook(patches[layer], entries))
                 for layer, entries in by_layer.items()]
    with model.hooks(fwd_hooks=fwd_hooks):
        logits = model(tokens, past_key_values=_rows_of(prefix_cache, 2 * n), logits_to_keep=fed.logits_to_keep)
    return rows.metric(logits)


def _patch_hook(clean: Tensor, entries: list[tuple[int, int | None]]):
    """Row ``2*m + answer`` gets ``clean[answer]`` at module ``head`` (or the whole layer)."""
    module_rows = torch.tensor([m for m, _ in entries])
    rows = torch.stack([2 * module_rows, 2 * module_rows + 1], dim=1).flatten()  # [aligned, violating] per module
    answer = torch.tensor([0, 1] * len(entries))
    heads = None if entries[0][1] is None else torch.tensor([h for _, h in entries]).repeat_interleave(2)

    def hook(act: Tensor, hook) -> Tensor:
        act = act.clone()
        width = min(act.shape[1], clean.shape[1])
        source = clean[:, :width].to(act.device, act.dtype)
        if heads is None:
            act[rows, :width] = source[answer]
        else:
            act[rows, :width, heads] = source[answer, :, heads]  # [row, pos, d_head]
        return act

    return hook


def _rows_of(cache, n: int):
    """A fresh copy of a one-row KV cache with ``n`` identical rows (the forward appends to it)."""
    copied = copy.deepcopy(cache)
    copied.batch_select_indices(torch.zeros(n, dtype=torch.long, device=_cache_device(cache)))
    return copied


def _cache_device(cache):
    for layer in getattr(cache, "layers", []):
        keys = getattr(layer, "keys", None)
        if keys is not None and keys.numel():
            return keys.device
    return "cpu"


def _modules(model, site: str) -> list[tuple[int, int | None]]:
    if hooks.is_head_site(site):
        return [(layer, head) for layer in range(model.cfg.n_layers) for head in range(model.cfg.n_heads)]
    return [(layer, None) for layer in range(model.cfg.n_layers)]


def _module_shape(model, site: str) -> tuple[int, ...]:
    return (model.cfg.n_layers, model.cfg.n_heads) if hooks.is_head_site(site) else (model.cfg.n_layers,)


def _check_eval(model) -> None:
    if model.training:
        raise ScoringError("activation patching needs the model in evaluation mode; call model.eval() first")


# --------------------------------------------------------------------------- the per-module loop (reference)
def patch_pairs_looped(
    model, pairs: ContrastPairs, *, site: str, cfg: PairConfig | None = None
) -> tuple[Float[Tensor, "pair layer *head"], Float[Tensor, " pair"]]:
    """The same effects as :func:`patch_pairs` from TransformerLens's per-module sweep.

    :func:`transformer_lens.patching.generic_activation_patch` on whole inputs (demonstrations,
    prompt, answer) of up to ``cfg.batch_tokens`` tokens at a time, one forward per module, no cache.
    Slow; kept as the reference for tests and ``benchmarks/bench_scorers.py``.
    """
    cfg = cfg or PairConfig()
    _check_eval(model)
    act_name = _tl_act_name(site, model.cfg.n_layers)
    axes = ("layer", "head") if hooks.is_head_site(site) else ("layer",)
    names = [hooks.hook_name(site, layer) for layer in range(model.cfg.n_layers)]
    pad, device = pad_id(model), model.cfg.device
    effects, gaps = [], []
    with torch.inference_mode():
        for batch in pairs.batches(cfg.batch_tokens):
            clean = full_rows(batch.pairs, "clean", positions=cfg.positions, pad=pad).to(device)
            corrupted = full_rows(batch.pairs, "corrupted", positions=cfg.positions, pad=pad).to(device)
            clean_logits, clean_cache = model.run_with_cache(clean.tokens, names_filter=names)
            result = generic_activation_patch(
                model, corrupted.tokens, clean_cache, corrupted.logprobs,
                patch_setter=_aligned_setter(clean, corrupted, hooks.is_head_site(site)),
                activation_name=act_name, index_axis_names=axes,
                reduce="none",  # per row: [*module, row]
                baseline=True,  # + the unpatched corrupted values: [row]
            )
            # TransformerLens stores the per-row values in float32 (log-prob sums of ~-30 nats: ~2e-6 resolution)
            signed = result.values.double() * corrupted.sign.to(result.values.device, torch.float64)
            patched = signed.reshape(*signed.shape[:-1], len(batch), 2).sum(-1)  # [*module, pair]
            base = (result.baseline.double() * corrupted.sign.to(result.baseline.device, torch.float64)).reshape(len(batch), 2).sum(-1)
            effects.append((patched - base).movedim(-1, 0).cpu())
            gaps.append((clean.metric(clean_logits) - base).cpu())
    return torch.cat(effects), torch.cat(gaps)


def _aligned_setter(clean: Rows, corrupted: Rows, heads: bool):
    """``setter(corrupted_act, index, clean_act)``: the clean activation at each row's patched
    positions, written at the corrupted row's patched positions (the two contexts differ in length)."""
    def setter(corrupted_act, index, clean_act):
        mask = corrupted.patch_mask.to(corrupted_act.device)
        source = clean.gather(clean_act)[mask]  # [n_patched, *module, d]
        row = torch.arange(corrupted_act.shape[0], device=corrupted_act.device)[:, None].expand_as(mask)[mask]
        pos = corrupted.patch_index.to(corrupted_act.device)[mask]
        if heads:
            head = index[1]
            corrupted_act[row, pos, head] = source[:, head].to(corrupted_act.dtype)
        else:
            corrupted_act[row, pos] = source.to(corrupted_act.dtype)
        return corrupted_act

    return setter


def _tl_act_name(site: str, n_layers: int) -> str:
    short = _TL_ACT_NAMES[hooks.check_site(site)]
    for layer in range(n_layers):
        tl_name = tl_utils.get_act_name(short, layer=layer)
        if tl_name != hooks.hook_name(site, layer):  # only if TransformerLens renames its hooks
            raise ScoringError(
                f"TransformerLens names {short!r} of layer {layer} {tl_name!r}, but real-lens reads "
                f"{hooks.hook_name(site, layer)!r}; update real_lens.scoring.patching._TL_ACT_NAMES"
            )
    return short
