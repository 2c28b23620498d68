"""REAL module relevance: VQ-AE codes + class-conditional GRU priors + ROC-AUC (METHOD.md §3).

    scores = score_real(bank, cfg=RealConfig(), seed=0)               # ModuleScores
    auc, diagnostics = score_real_tensors(acts, labels, groups, cfg=cfg, seed=0)

Pipeline per module: train a VQ-AE on all the bank's examples (:mod:`.vqae`), turn every
example into ``U`` code indices, train one GRU LM on the aligned and one on the violating
examples of the prior-training part, and score the held-out part (:mod:`.prior`).
The held-out part is chosen by group (question) unless ``heldout_split="answer"``.

All modules of a chunk train as one tensor program. Module ``m``'s initialisation and
minibatch orders come from generators seeded by ``(seed, m)``, so its score does not
depend on which chunk it is trained in: batched equals one module at a time.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np
import torch
from jaxtyping import Float, Int
from torch import Tensor
from tqdm.auto import tqdm

from .. import __version__
from ..errors import ScoringError
from ..hooks import module_label
from . import ModuleScores, register_scorer
from .prior import roc_auc, train_prior
from .vqae import train_vqae

HELDOUT_SPLITS = ("group", "answer")
_STAGES = {"vqae": 0, "prior_aligned": 1, "prior_violating": 2}


@dataclass(frozen=True)
class RealConfig:
    """REAL hyper-parameters; the defaults are the paper's release (METHOD.md §3)."""

    # VQ-AE
    n_codes: int = 32  # METHOD.md's codebook size K (entries of the one codebook); not the number of kept heads
    n_groups: int = 8  # U: code groups per example = length of the code sequence
    code_dim: int | None = None  # b; None = d/2
    beta: float = 0.25  # commitment weight
    supcon_weight: float = 1e-3  # lambda
    temperature: float = 0.07  # SupCon temperature
    lr: float = 1e-3  # Adam
    batch_size: int = 32
    vq_epochs: int = 20
    leaky_slope: float = 0.01
    ema_decay: float = 0.99
    ema_eps: float = 1e-5
    collapse_threshold: float = 0.0  # perplexity/K below this ... (0 = never collapse, as released)
    collapse_patience: int = 5  # ... for more than this many consecutive epochs -> score 0
    # prior
    prior_embed: int = 64
    prior_hidden: int = 64
    prior_lr: float = 1e-3  # AdamW
    prior_weight_decay: float = 0.01
    prior_grad_clip: float = 1.0  # per module
    prior_epochs: int = 10
    prior_batch_size: int = 32
    heldout_split: str = "group"  # "group" (by question) or "answer" (the release's per-answer split)
    heldout_fraction: float = 0.2
    # execution (does not change results)
    module_chunk: int | None = None  # modules trained together; None: 64 on CPU (cache-sized), 1024 elsewhere
    eval_batch: int = 256  # examples per slice when encoding / scoring without gradients

    def __post_init__(self):
        positive_ints = (
            "n_codes", "n_groups", "batch_size", "vq_epochs", "prior_embed", "prior_hidden",
            "prior_epochs", "prior_batch_size", "eval_batch",
        ) + (("module_chunk",) if self.module_chunk is not None else ())
        for name in positive_ints:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ScoringError(f"RealConfig.{name} must be a positive integer; found {value!r}. Pass e.g. {name}=1 or more")
        for name in ("beta", "supcon_weight", "prior_weight_decay", "collapse_threshold"):
            if not getattr(self, name) >= 0:
                raise ScoringError(f"RealConfig.{name} must be >= 0; found {getattr(self, name)!r}")
        for name in ("temperature", "lr", "prior_lr", "prior_grad_clip", "ema_eps"):
            if not getattr(self, name) > 0:
                raise ScoringError(f"RealConfig.{name} must be > 0; found {getattr(self, name)!r}")
        if not 0 <= self.ema_decay < 1:
            raise ScoringError(f"RealConfig.ema_decay must be in [0, 1); found {self.ema_decay!r} (the release uses 0.99)")
        if not isinstance(self.collapse_patience, int) or self.collapse_patience < 0:
            raise ScoringError(f"RealConfig.collapse_patience must be an integer >= 0; found {self.collapse_patience!r}")
        if self.code_dim is not None and (self.code_dim < 1 or self.code_dim % self.n_groups):
            raise ScoringError(
                f"RealConfig.code_dim must be a positive multiple of n_groups={self.n_groups}; found {self.code_dim}. "
                "Pick code_dim divisible by n_groups, or leave it None (= d/2)"
            )
        if self.heldout_split not in HELDOUT_SPLITS:
            raise ScoringError(f"RealConfig.heldout_split must be one of {HELDOUT_SPLITS}; found {self.heldout_split!r}")
        if not 0 < self.heldout_fraction < 1:
            raise ScoringError(f"RealConfig.heldout_fraction must be in (0, 1); found {self.heldout_fraction!r}")

    def module_chunk_for(self, device: torch.device) -> int:
        """How many modules train together on ``device`` (results do not depend on it)."""
        if self.module_chunk is not None:
            return self.module_chunk
        return 64 if device.type == "cpu" else 1024

    def code_dim_for(self, d: int) -> int:
        """``b`` for modules of width ``d``."""
        return self.code_dim if self.code_dim is not None else d // 2

    @property
    def min_per_class(self) -> int:
        """Examples (or groups) needed per class so both prior parts are non-empty."""
        return math.ceil(1 / self.heldout_fraction)


# --- seeding and splitting -------------------------------------------------------------
def module_generators(seed: int, modules: Sequence[int], stage: str) -> list[torch.Generator]:
    """One CPU generator per module, seeded from ``(seed, module, stage)`` only."""
    generators = []
    for m in modules:
        high, low = np.random.SeedSequence([seed, m, _STAGES[stage]]).generate_state(2, dtype=np.uint32)
        generators.append(torch.Generator().manual_seed(int(high) << 32 | int(low)))
    return generators


def split_heldout(
    labels: Int[Tensor, "example"], groups: Sequence[str], *, how: str, fraction: float, seed: int
) -> tuple[Int[Tensor, "train"], Int[Tensor, "heldout"]]:
    """Example indices for training the priors and for scoring them (the same for all modules).

    ``how="group"``: a random ``fraction`` of the groups (questions) is held out, so no question
    is on both sides. ``how="answer"``: ``fraction`` of each class's examples is held out.
    """
    rng = np.random.default_rng(seed)
    y = labels.cpu().numpy()
    if how == "group":
        names = list(dict.fromkeys(groups))
        shuffled = [names[i] for i in rng.permutation(len(names))]
        held_groups = frozenset(shuffled[: max(1, round(fraction * len(names)))])
        held = np.array([g in held_groups for g in groups])
    else:
        held = np.zeros(len(y), dtype=bool)
        for c in (0, 1):
            idx = np.flatnonzero(y == c)
            held[rng.permutation(idx)[: max(1, round(fraction * len(idx)))]] = True
    for part, mask in (("prior-training", ~held), ("held-out", held)):
        missing = [c for c in (0, 1) if not (y[mask] == c).any()]
        if missing:
            raise ScoringError(
                f"the {how} split left no examples of label {missing[0]} in the {part} part; "
                "every group should have both labels — add groups or use heldout_split='answer'"
            )
    return torch.from_numpy(np.flatnonzero(~held)), torch.from_numpy(np.flatnonzero(held))


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
) -> tuple[Float[Tensor, "module"], dict[str, Tensor]]:
    """REAL relevance (held-out ROC-AUC, 0 for collapsed modules) of every module.

    Returns ``(auc, diagnostics)``; diagnostics, each ``[module]``: ``recon_loss``,
    ``perplexity``, ``collapsed`` (0./1.) and ``auc`` (before collapse zeroing).
    """
    return _score(acts, labels, groups, cfg=cfg, seed=seed, device=device)


def _score(acts, labels, groups, *, cfg: RealConfig, seed: int, device, module_names=None, progress: bool = False):
    if not isinstance(seed, int) or seed < 0:
        raise ScoringError(f"seed must be a non-negative integer; found {seed!r}")
    check_inputs(acts, labels, groups, cfg, module_names)
    device = _resolve_device(device, acts)
    labels = labels.long().cpu()
    train, heldout = split_heldout(labels, groups, how=cfg.heldout_split, fraction=cfg.heldout_fraction, seed=seed)
    train_aligned, train_violating = train[labels[train] == 1], train[labels[train] == 0]
    n_modules = acts.shape[1]

    results = []
    chunks = _chunks(n_modules, cfg.module_chunk_for(device))
    for modules in tqdm(chunks, desc=f"REAL {n_modules} modules", unit="chunk", disable=not progress):
        x = acts[:, modules].to(device=device, dtype=torch.float32).transpose(0, 1).contiguous()
        results.append(_score_chunk(x, labels, (train_aligned, train_violating, heldout), modules, cfg=cfg, seed=seed))
    auc, recon_loss, perplexity, collapsed = torch.cat(results, dim=1)
    diagnostics = {"recon_loss": recon_loss, "perplexity": perplexity, "collapsed": collapsed, "auc": auc}
    return torch.where(collapsed.bool(), torch.zeros_like(auc), auc), diagnostics


def _score_chunk(x, labels, split, modules: list[int], *, cfg: RealConfig, seed: int) -> Tensor:
    """VQ-AE -> codes -> two priors -> held-out AUC for the modules of one chunk.

    Returns ``[4, module]`` on the CPU: AUC, reconstruction loss, perplexity, collapsed.
    """
    device = x.device
    train_aligned, train_violating, heldout = (idx.to(device) for idx in split)
    vq = train_vqae(
        x, labels, module_generators(seed, modules, "vqae"),
        code_dim=cfg.code_dim_for(x.shape[-1]), n_groups=cfg.n_groups, n_codes=cfg.n_codes, beta=cfg.beta,
        supcon_weight=cfg.supcon_weight, temperature=cfg.temperature, lr=cfg.lr,
        batch_size=cfg.batch_size, epochs=cfg.vq_epochs, leaky_slope=cfg.leaky_slope,
        ema_decay=cfg.ema_decay, ema_eps=cfg.ema_eps, collapse_threshold=cfg.collapse_threshold,
        collapse_patience=cfg.collapse_patience, eval_batch=cfg.eval_batch,
    )
    prior = dict(
        n_codes=cfg.n_codes, d_embed=cfg.prior_embed, d_hidden=cfg.prior_hidden, lr=cfg.prior_lr,
        weight_decay=cfg.prior_weight_decay, grad_clip=cfg.prior_grad_clip,
        epochs=cfg.prior_epochs, batch_size=cfg.prior_batch_size,
    )
    aligned = train_prior(vq.codes[:, train_aligned], module_generators(seed, modules, "prior_aligned"), **prior)
    violating = train_prior(vq.codes[:, train_violating], module_generators(seed, modules, "prior_violating"), **prior)
    held = vq.codes[:, heldout]
    s = aligned.score(held, eval_batch=cfg.eval_batch) - violating.score(held, eval_batch=cfg.eval_batch)
    auc = roc_auc(s, labels[heldout.cpu()])
    return torch.stack([auc, vq.recon_loss, vq.perplexity, vq.collapsed.float()]).cpu()


@register_scorer("real")
def score_real(
    bank, *, cfg: RealConfig = RealConfig(), seed: int = 0, device=None, model=None, progress: bool = True
) -> ModuleScores:
    """REAL scores of every module of an :class:`~real_lens.bank.ActivationBank` (``model`` is unused).

    The bank should hold the fold's train+val examples only; the VQ-AE trains on all of
    them and the priors' held-out part is split off inside (by group by default).
    """
    shape = bank.module_shape
    names = (
        [module_label(layer, head) for layer in range(shape[0]) for head in range(shape[1])]
        if len(shape) == 2
        else [module_label(layer) for layer in range(shape[0])]
    )
    auc, diagnostics = _score(bank.flat(), bank.labels, bank.groups, cfg=cfg, seed=seed, device=device,
                              module_names=names, progress=progress)
    meta = {k: bank.meta[k] for k in ("site", "model", "task") if k in bank.meta}
    meta.update(site=bank.site, seed=seed, version=__version__, n_examples=len(bank.examples))
    return ModuleScores(
        auc.reshape(shape), "real", asdict(cfg), {k: v.reshape(shape) for k, v in diagnostics.items()}, meta
    )


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
