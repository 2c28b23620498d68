"""REAL module relevance: VQ-AE codes + GRU priors + ROC-AUC, as described and as released.

    scores = score_real(bank, cfg=RealConfig(), seed=0)                    # METHOD.md §3
    scores = score_real_release(bank, cfg=RealConfig(variant="release"))   # METHOD.md §3a (OneForAll.py)
    scores = score_real_release_utils(bank)                                # the release's older utils.py path
    auc, diagnostics = score_real_tensors(acts, labels, groups, cfg=cfg, seed=0)

Described variant (the paper's method, METHOD.md §3): train a VQ-AE on all the bank's
examples (:mod:`.vqae`), turn every example into ``U`` code indices, train one causal GRU
LM on the aligned and one on the violating examples of the prior-training part, and score
the held-out part by the mean-per-position log-likelihood ratio (:mod:`.prior`). The
held-out part is chosen by group (question) unless ``heldout_split="answer"``, from REAL's own
seed stream (``heldout_stream="real"``), so it is not ITI's validation split of the same seed;
``cross_fit=n`` averages the AUC over ``n`` disjoint held-out parts (:class:`RealConfig`).

Release variant (the authors' camera-ready OneForAll.py, METHOD.md §3a;
:data:`RELEASE_DIFFERENCES` lists every difference and why it matters): per-head seeds
``mix_seed(seed, layer, head)``, undebiased EMA started from a copy of the codebook, SupCon
with the anchor in its denominator, 30 VQ-AE epochs, a random per-answer 80/20 split of each
class drawn for every head with a class-balanced held-out part, TWO priors (6 epochs, clipped)
whose input at step t is code t itself, score = mean-per-position log-likelihood ratio.

Release-utils variant (the release's older utils.py path, :data:`RELEASE_UTILS_DIFFERENCES`):
bias-free VQ-AE, the same EMA, SupCon with the anchor among its positives, ONE prior trained
on 80 % of the aligned answers, held out = the other aligned answers + the first as many
violating answers in bank order, score = float32 sequence probability.

All modules of a chunk train as one tensor program. Module ``m``'s initialisation,
minibatch orders and (release) split come from generators seeded by ``(seed, m, stage)``, or
by ``mix_seed(seed, layer, head)`` in the release variant, so its score does not depend on
which chunk it is trained in: batched equals one module at a time, in every variant.
"""

from __future__ import annotations

import math
from dataclasses import asdict
from typing import Sequence

import torch
from jaxtyping import Float, Int
from torch import Tensor
from tqdm.auto import tqdm

from .._version import __version__
from ..errors import ScoringError
from ..hooks import module_label
from .registry import register_scorer
from .scores import ModuleScores
from .prior import roc_auc, train_prior
from .real_config import METHOD_NAMES, RealConfig
from .real_splits import (
    init_generators, loader_permutation, module_generators, module_position, release_seeds, seeded_generators, split_heldout, split_heldout_folds, split_release_heldout,
    split_release_per_answer,
)
from .vqae import supcon_loss, supcon_loss_anchor_positive, supcon_loss_release, train_vqae

# --- input checks ------------------------------------------------------------------------
def check_inputs(acts, labels, groups, cfg: RealConfig, module_names: Sequence[str] | None = None) -> None:
    """Every check that can fail, before any training; messages say what, found, and fix."""
    if not isinstance(acts, Tensor) or acts.ndim != 3 or 0 in acts.shape:
        found = tuple(acts.shape) if isinstance(acts, Tensor) else type(acts).__name__
        raise ScoringError(
            f"REAL expects activations [example, module, d] with every size > 0; found {found}. "
            "Flatten a bank with bank.flat() or call score_real(bank)"
        )
    if not acts.is_floating_point():
        raise ScoringError(f"REAL expects floating-point activations; found dtype {acts.dtype}")
    n, n_modules, d = acts.shape
    if not isinstance(labels, Tensor) or labels.shape != (n,):
        found = tuple(labels.shape) if isinstance(labels, Tensor) else type(labels).__name__
        raise ScoringError(f"REAL expects one label per example, shape ({n},); found {found}. Pass bank.labels")
    if len(groups) != n:
        raise ScoringError(f"REAL expects one group per example ({n}); found {len(groups)}. Pass bank.groups")
    values = sorted({int(v) for v in labels.unique().tolist()}) if not labels.is_floating_point() else None
    if values is None or not set(values) <= {0, 1}:
        found = labels.unique().tolist()[:5] if values is None else values
        raise ScoringError(
            f"REAL expects labels 0 (violating) or 1 (aligned); found values {found}. Map the labels to 0/1"
        )
    counts = {c: int((labels == c).sum()) for c in (0, 1)}
    if min(counts.values()) == 0:
        only = 1 if counts[1] else 0
        raise ScoringError(
            f"REAL needs both aligned (1) and violating (0) examples; found only label {only} "
            f"({counts[only]} examples). Score a bank with both kinds of answers"
        )
    need = cfg.min_per_class
    if min(counts.values()) < need:
        raise ScoringError(
            f"REAL's {1 - cfg.heldout_fraction:.0%}/{cfg.heldout_fraction:.0%} prior split needs at least {need} "
            f"examples per class; found {counts[1]} aligned and {counts[0]} violating. Collect more examples"
        )
    if cfg.heldout_split == "group" and len(set(groups)) < need:
        raise ScoringError(
            f"REAL's by-group held-out split needs at least {need} groups (questions); found {len(set(groups))}. "
            "Collect more questions or use RealConfig(heldout_split='answer')"
        )
    b = cfg.code_dim_for(d)
    if b < cfg.n_groups or b % cfg.n_groups:
        raise ScoringError(
            f"REAL splits the code of b={b} dims (d={d}{'/2' if cfg.code_dim is None else ''}) into "
            f"n_groups={cfg.n_groups} equal groups, so b must be a positive multiple of n_groups. "
            "Set RealConfig(n_groups=...) to a divisor of b, or RealConfig(code_dim=...)"
        )
    finite = torch.isfinite(acts).all(dim=2).all(dim=0)
    if not finite.all():
        bad = (~finite).nonzero().flatten().tolist()
        names = [module_names[i] if module_names else f"module {i}" for i in bad[:5]]
        raise ScoringError(
            f"activations contain NaN or inf in {len(bad)} module(s): {', '.join(names)}"
            f"{' ...' if len(bad) > 5 else ''}; expected finite values. Collect the bank again "
            "(e.g. in float32) or drop those examples"
        )


# --- scoring -----------------------------------------------------------------------------
def score_real_tensors(
    acts: Float[Tensor, "example module d"],
    labels: Int[Tensor, "example"],
    groups: Sequence[str],
    *,
    cfg: RealConfig = RealConfig(),
    seed: int = 0,
    device=None,
    modules: Sequence[int] | None = None,
    module_shape: Sequence[int] | None = None,
) -> tuple[Float[Tensor, "module"], dict[str, Tensor]]:
    """REAL relevance (held-out ROC-AUC, 0 for collapsed modules) of every module, in ``cfg.variant``.

    Returns ``(auc, diagnostics)``; diagnostics, each ``[module]``: ``recon_loss``,
    ``perplexity``, ``collapsed`` (0./1.) and ``auc`` (before collapse zeroing); the
    release-utils variant adds ``underflow``, the fraction of held-out examples whose float32
    sequence probability is exactly 0. ``modules``: train only these indices of the module axis
    (a process's share under torchrun); the others are NaN. A module's result does not depend on
    which others train. ``module_shape``: ``(n_layers, n_heads)`` of the flat module axis, which
    the release variant's per-head seeds need; None = one layer, module ``m`` = head ``m``.
    """
    return _score(acts, labels, groups, cfg=cfg, seed=seed, device=device, modules=modules, module_shape=module_shape)


def _score(acts, labels, groups, *, cfg: RealConfig, seed: int, device, module_names=None, modules=None,
           progress: bool = False, module_shape=None):
    if not isinstance(seed, int) or seed < 0:
        raise ScoringError(f"seed must be a non-negative integer; found {seed!r}")
    check_inputs(acts, labels, groups, cfg, module_names)
    device = _resolve_device(device, acts)
    labels = labels.long().cpu()
    n_modules = acts.shape[1]
    if module_shape is None:
        module_shape = (1, n_modules)
    if math.prod(module_shape) != n_modules:
        raise ScoringError(f"module_shape {tuple(module_shape)} does not hold the {n_modules} modules of the "
                           "activations; pass (n_layers, n_heads) of the bank")
    if cfg.variant == "release":
        split = [module_position(m, module_shape) for m in range(n_modules)]  # each head draws its own
        if min(int((labels == c).sum()) for c in (0, 1)) < 2:  # as OneForAll.py: too few to split, 0.0
            nan = torch.full((n_modules,), torch.nan)
            diagnostics = {"recon_loss": nan, "perplexity": nan.clone(), "collapsed": torch.zeros(n_modules),
                           "auc": torch.zeros(n_modules)}
            return torch.zeros(n_modules), diagnostics
    elif cfg.variant == "release-utils":
        split = split_release_heldout(labels, fraction=cfg.heldout_fraction, seed=seed)
    else:
        split = _described_splits(labels, groups, cfg, seed)
    trained = _check_modules(modules, n_modules)

    # auc, recon_loss, perplexity, collapsed[, underflow (release-utils) | the AUC of each cross-fit split]
    n_extra = 1 if cfg.variant == "release-utils" else cfg.cross_fit if cfg.cross_fit > 1 else 0
    n_rows = 4 + n_extra
    results = [torch.empty(n_rows, 0)]
    chunks = _chunks(len(trained), cfg.module_chunk_for(device))
    label = {"described": "REAL", "release": "REAL release", "release-utils": "REAL release (utils.py)"}[cfg.variant]
    for part in tqdm(chunks, desc=f"{label} {len(trained)} modules", unit="chunk", disable=not progress):
        chunk = [trained[i] for i in part]
        x = acts[:, chunk].to(device=device, dtype=torch.float32).transpose(0, 1).contiguous()
        results.append(_score_chunk(x, labels, split, chunk, cfg=cfg, seed=seed))
    auc, recon_loss, perplexity, collapsed, *extra = torch.full((n_rows, n_modules), torch.nan).index_copy(
        1, torch.tensor(trained, dtype=torch.long), torch.cat(results, dim=1)
    )
    diagnostics = {"recon_loss": recon_loss, "perplexity": perplexity, "collapsed": collapsed, "auc": auc}
    if cfg.variant == "release-utils":
        diagnostics["underflow"] = extra[0]
    else:
        diagnostics.update({f"auc_split{i}": value for i, value in enumerate(extra)})
    return torch.where(collapsed == 1, torch.zeros_like(auc), auc), diagnostics


def _described_splits(labels, groups, cfg: RealConfig, seed: int) -> list[tuple[Tensor, Tensor, Tensor]]:
    """The described variant's ``cfg.cross_fit`` splits (one by default), each ``(aligned prior-training,
    violating prior-training, held-out)`` example indices, drawn from ``cfg.heldout_stream``."""
    folds = split_heldout_folds(labels, groups, how=cfg.heldout_split, fraction=cfg.heldout_fraction, seed=seed,
                                stream=cfg.heldout_stream, n_splits=cfg.cross_fit)
    return [(train[labels[train] == 1], train[labels[train] == 0], heldout) for train, heldout in folds]


def _heldout_parts(labels, groups, cfg: RealConfig, seed: int) -> list[Tensor]:
    """The held-out examples the modules' AUCs are computed on: one part per split (``cfg.cross_fit`` in the
    described variant, else one). The release draws one per head — this is head L0H0's, and every head's
    held-out set has the same size (both classes cut to the smaller one's held-out count)."""
    if cfg.variant == "release":
        generator = torch.Generator().manual_seed(release_seeds(seed, 0, 0)["split"])
        return [split_release_per_answer(labels, generator, fraction=cfg.heldout_fraction)[-1]]
    if cfg.variant == "release-utils":
        return [split_release_heldout(labels, fraction=cfg.heldout_fraction, seed=seed)[-1]]
    return [split[-1] for split in _described_splits(labels, groups, cfg, seed)]


def heldout_size(labels, groups, cfg: RealConfig, seed: int = 0) -> dict[str, int]:
    """What each module's AUC rests on: the held-out examples and the questions (groups) they come from,
    over all ``n_splits`` held-out parts (``RealConfig.cross_fit``; they are disjoint).

    A few held-out questions make the AUC coarse (with 5 questions, 10 examples, it moves in steps
    of 1/25) and many modules tie; summary.md says so."""
    parts = _heldout_parts(labels.long().cpu(), groups, cfg, seed)
    heldout = torch.cat(parts).tolist()
    return {"n_examples": len(heldout), "n_questions": len({groups[i] for i in heldout}),
            "n_aligned": int(labels.long().cpu()[heldout].sum()), "n_splits": len(parts)}


def _score_chunk(x, labels, split, modules: list[int], *, cfg: RealConfig, seed: int) -> Tensor:
    """VQ-AE -> codes -> prior(s) -> held-out AUC for the modules of one chunk.

    Returns on the CPU ``[4, module]``: AUC, reconstruction loss, perplexity, collapsed;
    the release-utils variant appends a fifth row, the held-out underflow fraction. The described
    variant with ``cfg.cross_fit = n > 1`` (``split`` holds ``n`` splits) trains the VQ-AE once and two
    priors per split; its AUC is the mean of the splits' AUCs, which follow as ``n`` more rows.
    """
    if cfg.variant == "release":
        return _score_chunk_release(x, labels, [split[m] for m in modules], cfg=cfg, seed=seed)
    device = x.device
    release = cfg.variant == "release-utils"
    vq = train_vqae(
        x, labels, module_generators(seed, modules, "vqae"),
        code_dim=cfg.code_dim_for(x.shape[-1]), n_groups=cfg.n_groups, n_codes=cfg.n_codes, beta=cfg.beta,
        supcon_weight=cfg.supcon_weight, temperature=cfg.temperature, lr=cfg.lr,
        batch_size=cfg.batch_size, epochs=cfg.vq_epochs, leaky_slope=cfg.leaky_slope,
        ema_decay=cfg.ema_decay, ema_eps=cfg.ema_eps, collapse_threshold=cfg.collapse_threshold,
        collapse_patience=cfg.collapse_patience, eval_batch=cfg.eval_batch,
        mlp_bias=not release, debias_ema=not release, supcon=supcon_loss_anchor_positive if release else supcon_loss,
    )
    prior = dict(
        n_codes=cfg.n_codes, d_embed=cfg.prior_embed, d_hidden=cfg.prior_hidden, lr=cfg.prior_lr,
        weight_decay=cfg.prior_weight_decay, grad_clip=cfg.prior_grad_clip,
        epochs=cfg.prior_epochs, batch_size=cfg.prior_batch_size, copy_input=release,
    )
    diagnostics = [vq.recon_loss, vq.perplexity, vq.collapsed.float()]
    if release:
        train_aligned, heldout = (idx.to(device) for idx in split)
        aligned = train_prior(vq.codes[:, train_aligned], module_generators(seed, modules, "prior_aligned"), **prior)
        s = aligned.sequence_probability(vq.codes[:, heldout], eval_batch=cfg.eval_batch)
        diagnostics.append((s == 0).float().mean(-1))
    else:
        aucs = []
        for i, part in enumerate(split):  # one split, or cfg.cross_fit disjoint ones
            train_aligned, train_violating, heldout = (idx.to(device) for idx in part)
            aligned = train_prior(vq.codes[:, train_aligned], module_generators(seed, modules, "prior_aligned", split=i),
                                  **prior)
            violating = train_prior(
                vq.codes[:, train_violating], module_generators(seed, modules, "prior_violating", split=i), **prior
            )
            held = vq.codes[:, heldout]
            s = aligned.score(held, eval_batch=cfg.eval_batch) - violating.score(held, eval_batch=cfg.eval_batch)
            aucs.append(roc_auc(s, labels[heldout.cpu()]))
        if len(aucs) == 1:
            return torch.stack([aucs[0], *diagnostics]).cpu()
        return torch.stack([torch.stack(aucs).mean(0), *diagnostics, *aucs]).cpu()
    auc = roc_auc(s, labels[heldout.cpu()])
    return torch.stack([auc, *diagnostics]).cpu()


def _score_chunk_release(x, labels, positions: list[tuple[int, int]], *, cfg: RealConfig, seed: int) -> Tensor:
    """OneForAll.py's ``train_single_adaptor`` for the heads at ``positions``, as one tensor program.

    Per head: VQ-AE on every example (minibatch order from ``mix_seed + 21``), codes of every
    example, its own per-answer split (:func:`split_release_per_answer`), two copy-input priors
    trained in the release's minibatch orders, and the AUC of the mean-per-position
    log-likelihood ratio on the balanced held-out part. Returns ``[4, module]`` as :func:`_score_chunk`.
    """
    device = x.device
    n_examples = x.shape[1]
    seeds = [release_seeds(seed, layer, head) for layer, head in positions]
    jobs = [s["init"] for s in seeds]
    vq_order = seeded_generators([s["vqae_order"] for s in seeds])
    vq = train_vqae(
        x, labels, init_generators(jobs, "vqae"),
        code_dim=cfg.code_dim_for(x.shape[-1]), n_groups=cfg.n_groups, n_codes=cfg.n_codes, beta=cfg.beta,
        supcon_weight=cfg.supcon_weight, temperature=cfg.temperature, lr=cfg.lr,
        batch_size=cfg.batch_size, epochs=cfg.vq_epochs, leaky_slope=cfg.leaky_slope,
        ema_decay=cfg.ema_decay, ema_eps=cfg.ema_eps, collapse_threshold=cfg.collapse_threshold,
        collapse_patience=cfg.collapse_patience, eval_batch=cfg.eval_batch,
        mlp_bias=True, debias_ema=False, supcon=supcon_loss_release,
        orders=(torch.stack([loader_permutation(g, n_examples) for g in vq_order]) for _ in range(cfg.vq_epochs)),
    )
    splits = [split_release_per_answer(labels, g, fraction=cfg.heldout_fraction)
              for g in seeded_generators([s["split"] for s in seeds])]
    train_aligned, train_violating, heldout = (torch.stack(part).to(device) for part in zip(*splits))
    # Both priors' DataLoaders share one generator: each epoch the aligned one, then the violating one.
    aligned_orders, violating_orders = [], []
    prior_order = seeded_generators([s["prior_order"] for s in seeds])
    for _ in range(cfg.prior_epochs):
        epoch = [(loader_permutation(g, train_aligned.shape[1]), loader_permutation(g, train_violating.shape[1]))
                 for g in prior_order]
        aligned_orders.append(torch.stack([a for a, _ in epoch]))
        violating_orders.append(torch.stack([v for _, v in epoch]))
    prior = dict(
        n_codes=cfg.n_codes, d_embed=cfg.prior_embed, d_hidden=cfg.prior_hidden, lr=cfg.prior_lr,
        weight_decay=cfg.prior_weight_decay, grad_clip=cfg.prior_grad_clip,
        epochs=cfg.prior_epochs, batch_size=cfg.prior_batch_size, copy_input=True,
    )
    module = torch.arange(len(positions), device=device).unsqueeze(1)
    codes = vq.codes
    aligned = train_prior(codes[module, train_aligned], init_generators(jobs, "prior_aligned"),
                          orders=aligned_orders, **prior)
    violating = train_prior(codes[module, train_violating], init_generators(jobs, "prior_violating"),
                            orders=violating_orders, **prior)
    held = codes[module, heldout]
    s = aligned.score(held, eval_batch=cfg.eval_batch) - violating.score(held, eval_batch=cfg.eval_batch)
    n_eval = heldout.shape[1] // 2
    auc = roc_auc(s, torch.tensor([1] * n_eval + [0] * n_eval))
    return torch.stack([auc, vq.recon_loss, vq.perplexity, vq.collapsed.float()]).cpu()


def _experiment_options(variant: str, epochs: str, prior_epochs: str, cross_fit: str | None = None):
    def options(experiment) -> dict:
        more = {"cross_fit": getattr(experiment, cross_fit)} if cross_fit else {}
        return {"cfg": RealConfig(variant=variant, vq_epochs=getattr(experiment, epochs),
                                  prior_epochs=getattr(experiment, prior_epochs), **more)}

    return options


_REAL_SPEC = dict(config=RealConfig, shardable=True, progress=True, strength="score")
_DESCRIBED_EPOCHS = ("real_epochs", "real_prior_epochs")
_DESCRIBED_SETTINGS = (*_DESCRIBED_EPOCHS, "real_cross_fit")
_RELEASE_EPOCHS = ("real_release_epochs", "real_release_prior_epochs")


@register_scorer("real", **_REAL_SPEC, experiment_settings=_DESCRIBED_SETTINGS,
                 experiment_options=_experiment_options("described", *_DESCRIBED_SETTINGS))
def score_real(
    bank, *, cfg: RealConfig | None = None, seed: int = 0, device=None, model=None,
    modules: Sequence[int] | None = None, progress: bool = True,
) -> ModuleScores:
    """REAL scores, as described (METHOD.md §3), of every module of an :class:`~real_lens.bank.ActivationBank`.

    ``model`` is unused; ``cfg`` None = ``RealConfig()``. The bank should hold the fold's
    train+val examples only; the VQ-AE trains on all of them and the priors' held-out part
    is split off inside (by group by default). ``modules``: flat (layer-major) module indices
    to score; the rest are NaN (:func:`real_lens.distributed.score_distributed` gives each
    process a slice).
    """
    return _score_bank(bank, cfg=RealConfig() if cfg is None else cfg, variant="described", seed=seed, device=device,
                       modules=modules, progress=progress)


@register_scorer("real-release", **_REAL_SPEC, experiment_settings=_RELEASE_EPOCHS,
                 experiment_options=_experiment_options("release", *_RELEASE_EPOCHS))
def score_real_release(
    bank, *, cfg: RealConfig | None = None, seed: int = 42, device=None, model=None,
    modules: Sequence[int] | None = None, progress: bool = True,
) -> ModuleScores:
    """REAL scores as the authors' camera-ready code computes them (OneForAll.py, METHOD.md §3a).

    ``seed`` plays the release's ``--seed`` (default 42): head ``(layer, head)`` is seeded by
    ``mix_seed(seed, layer, head)`` (:func:`release_seeds`). ``model`` is unused; ``cfg`` None =
    ``RealConfig(variant="release")``; ``modules`` as :func:`score_real`. :data:`RELEASE_DIFFERENCES`
    lists how it differs from :func:`score_real`.
    """
    cfg = RealConfig(variant="release") if cfg is None else cfg
    return _score_bank(bank, cfg=cfg, variant="release", seed=seed, device=device, modules=modules, progress=progress)


@register_scorer("real-release-utils", **_REAL_SPEC, experiment_settings=_DESCRIBED_EPOCHS,
                 experiment_options=_experiment_options("release-utils", *_DESCRIBED_EPOCHS))
def score_real_release_utils(
    bank, *, cfg: RealConfig | None = None, seed: int = 0, device=None, model=None,
    modules: Sequence[int] | None = None, progress: bool = True,
) -> ModuleScores:
    """REAL scores as the release's older utils.py path computes them (:data:`RELEASE_UTILS_DIFFERENCES`).

    Not among the main job's default methods. ``model`` is unused; ``cfg`` None =
    ``RealConfig(variant="release-utils")``; ``modules`` as :func:`score_real`.
    """
    cfg = RealConfig(variant="release-utils") if cfg is None else cfg
    return _score_bank(bank, cfg=cfg, variant="release-utils", seed=seed, device=device, modules=modules,
                       progress=progress)


def _score_bank(bank, *, cfg: RealConfig, variant: str, seed: int, device, modules=None, progress=True) -> ModuleScores:
    if not isinstance(cfg, RealConfig) or cfg.variant != variant:
        found = f"variant={cfg.variant!r}" if isinstance(cfg, RealConfig) else type(cfg).__name__
        raise ScoringError(
            f"scorer {METHOD_NAMES[variant]!r} needs RealConfig(variant={variant!r}); found {found}. "
            f"Pass RealConfig(variant={variant!r}, ...), or use the scorer of that variant "
            f"({', '.join(repr(m) for m in METHOD_NAMES.values())})"
        )
    shape = bank.module_shape
    names = (
        [module_label(layer, head) for layer in range(shape[0]) for head in range(shape[1])]
        if len(shape) == 2
        else [module_label(layer) for layer in range(shape[0])]
    )
    auc, diagnostics = _score(
        bank.flat(), bank.labels, bank.groups, cfg=cfg, seed=seed, device=device, module_names=names, modules=modules,
        progress=progress, module_shape=shape,
    )
    meta = {k: bank.meta[k] for k in ("site", "model", "task") if k in bank.meta}
    meta.update(site=bank.site, seed=seed, version=__version__, n_examples=len(bank.examples), variant=cfg.variant,
                heldout=heldout_size(bank.labels, bank.groups, cfg, seed))
    return ModuleScores(
        auc.reshape(shape), cfg.method, asdict(cfg), {k: v.reshape(shape) for k, v in diagnostics.items()}, meta
    )


def _check_modules(modules: Sequence[int] | None, n_modules: int) -> list[int]:
    """The module indices to train, ascending; all of them for ``None``."""
    if modules is None:
        return list(range(n_modules))
    trained = sorted({int(m) for m in modules})
    if trained and not 0 <= trained[0] <= trained[-1] < n_modules:
        raise ScoringError(f"modules must be indices in [0, {n_modules}); found {trained[0]}..{trained[-1]}")
    return trained


def _chunks(n: int, size: int) -> list[list[int]]:
    """``range(n)`` in near-equal consecutive chunks of at most ``size``."""
    n_chunks = math.ceil(n / size)
    bounds = [round(i * n / n_chunks) for i in range(n_chunks + 1)]
    return [list(range(a, b)) for a, b in zip(bounds, bounds[1:])]


def _resolve_device(device, acts: Tensor) -> torch.device:
    device = acts.device if device is None else torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ScoringError("device 'cuda' was requested but torch.cuda.is_available() is False; pass device='cpu'")
    return device
