"""Direction attribution: each module ranked by the first-order effect of its own steering offset.

Steering one module alone adds ``α·σ·u`` to its activation at every position
(:mod:`real_lens.steering`, METHOD.md §4; u and σ from the same bank by the same code,
:func:`real_lens.directions.center_of_mass`). To first order in α its effect on a metric is ::

    d metric / d α |_(α=0)  =  σ · ⟨u, g⟩,    g = ∂ metric / ∂ δ  at δ = 0,

where δ is an additive offset at the module's hook, the same vector at every position (so g is the
sum over positions of the activation's gradient). One backward per batch gives g for every module
at once: a zero offset per row, layer and module (``[row, n_layers, n_heads, d_head]``, or
``[row, n_layers, d_model]`` at a layer site) is added at every ``blocks.{l}.attn.hook_z`` through
hooks and differentiated. Unlike attribution patching, which asks what the *clean activation*
would restore, this asks what the *steering vector itself* does — the quantity REAL, ITI and every
other method are finally judged by, so it is the baseline that ranks by the thing that is steered.

The metric (a stated choice, so the scores sit beside attribution patching's): the contrast pairs of
:mod:`real_lens.scoring.pairs` (the same seeded pairs; with the main job's settings the first of
attribution's) and their log-prob gap, log p(aligned answer | context + prompt) −
log p(violating answer | context + prompt), on the **corrupted** context (demonstrations answered
with violating answers: the run attribution patching differentiates, and one where the behaviour has
room to move); ``context="clean"`` reads the clean one instead. No clean−corrupted gap enters, so no
pair is dropped for a small gap. A module's score is the **mean over pairs** of its effect, in nats
of log-prob gap per unit α, signed: a module whose offset lowers the gap ranks low. Its standard error
over pairs is in the diagnostics (``stderr``), with σ (``sigma``).

σ comes from the bank scored (the fold's fitting examples in the main job). A run with
``--sigma-bank tuning`` steers with σ from the tuning bank instead; the scorer does not see that
bank, so its σ (a per-module positive factor, which can reorder modules) is the scoring bank's.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass

import torch
from jaxtyping import Float
from torch import Tensor
from tqdm.auto import tqdm

from .. import hooks
from ..directions import center_of_mass
from ..errors import RealLensError, ScoringError
from ..tokens import pad_id
from .pair_rows import full_rows
from .pairs import ContrastPairs, build_contrast_pairs, check_model_for_bank
from .registry import register_scorer
from .scores import ModuleScores

METHOD = "direction-attribution"
CONTEXTS = ("corrupted", "clean")
SCORE_UNIT = "d(log-prob gap)/d(alpha) at alpha 0 of the module's own steering offset alpha*sigma*u, nats, mean over pairs"
METRIC_DESCRIPTION = (
    "log p(aligned answer | context + prompt) - log p(violating answer | context + prompt), summed over answer "
    "tokens, on the pair's {context} context; score = mean over pairs of sigma * <u, d metric / d offset>"
)


@dataclass(frozen=True)
class DirectionAttributionConfig:
    """Options of direction attribution.

    ``n_pairs`` contrast pairs with ``n_demos`` demonstrations each (:mod:`real_lens.scoring.pairs`,
    seeded as attribution patching seeds them); ``context``: which of the pair's two contexts the
    metric is read on ("corrupted", the default, or "clean"); ``batch_tokens``: at most this many
    tokens per forward and backward pass.
    """

    n_pairs: int = 64
    n_demos: int = 3
    context: str = "corrupted"  # one of CONTEXTS
    batch_tokens: int = 2048

    def __post_init__(self):
        if self.n_pairs < 1:
            raise ScoringError(f"n_pairs must be at least 1; got {self.n_pairs}")
        if self.n_demos < 1:
            raise ScoringError(f"n_demos must be at least 1 (the demonstrations make the context); got {self.n_demos}")
        if self.context not in CONTEXTS:
            raise ScoringError(f"context must be one of {list(CONTEXTS)}; got {self.context!r}")
        if self.batch_tokens < 1:
            raise ScoringError(f"batch_tokens must be at least 1; got {self.batch_tokens}")


def _experiment_options(experiment) -> dict:
    # The main job's attribution settings: the same pairs as attribution patching, so the two sit side by side.
    return {"cfg": DirectionAttributionConfig(n_pairs=experiment.attribution_pairs, n_demos=experiment.pair_demos,
                                              batch_tokens=experiment.attribution_batch_tokens)}


@register_scorer(METHOD, config=DirectionAttributionConfig, needs_model=True, progress=True,
                 experiment_settings=("attribution_pairs", "pair_demos", "attribution_batch_tokens"),
                 experiment_options=_experiment_options)
def direction_attribution_scorer(
    bank, *, model=None, seed: int = 0, device=None, cfg: DirectionAttributionConfig | None = None,
    progress: bool = True,
) -> ModuleScores:
    """Every module's first-order steering effect on the bank's contrast pairs (module docstring).

    Needs the model the bank was collected from; reads the bank's examples (for the pairs) and its
    activations (for u and σ). Runs where the model is (``device`` is unused)."""
    cfg = cfg or DirectionAttributionConfig()
    check_model_for_bank(bank, model, method=METHOD)
    pairs = build_contrast_pairs(bank.examples, model, n_pairs=cfg.n_pairs, n_demos=cfg.n_demos, seed=seed)
    directions, sigmas = unit_directions(bank)
    effects, metric = direction_effects(model, pairs, directions, sigmas, site=bank.site, context=cfg.context,
                                        batch_tokens=cfg.batch_tokens, progress=progress)
    n = effects.shape[0]
    stderr = effects.std(0) / n**0.5 if n > 1 else torch.full(effects.shape[1:], float("nan"), dtype=effects.dtype)
    config = asdict(cfg)
    meta = {
        "site": bank.site, "model": bank.meta.get("model"), "task": bank.meta.get("task"), "seed": seed,
        "method": METHOD, "score_unit": SCORE_UNIT, "config": config,
        "pairs": {"n_built": len(pairs), "n_groups_skipped": len(pairs.skipped),
                  "skipped": dict(Counter(s.reason for s in pairs.skipped)), "n_demos": pairs.n_demos,
                  "context": cfg.context, "mean_metric_nats": float(metric.mean()),
                  "metric": METRIC_DESCRIPTION.format(context=cfg.context)},
    }
    return ModuleScores(effects.mean(0).float(), METHOD, config,
                        diagnostics={"stderr": stderr.float(), "sigma": sigmas.float()}, meta=meta)


def unit_directions(bank, *, sigma_bank=None) -> tuple[Float[Tensor, "layer *head d"], Float[Tensor, "layer *head"]]:
    """u and σ of every module of ``bank``, shaped like its modules: what ``build_steering`` would use.

    A module whose two class means coincide has no direction: :class:`ScoringError`."""
    shape = tuple(bank.module_shape)
    if bank.is_head_site:
        modules = [(layer, head) for layer in range(shape[0]) for head in range(shape[1])]
    else:
        modules = [(layer, None) for layer in range(shape[0])]
    try:
        found = center_of_mass(bank, modules, sigma_bank=sigma_bank)
    except RealLensError as exc:
        raise ScoringError(f"{METHOD}: {exc}") from None
    return found.directions.reshape(*shape, -1), found.sigmas.reshape(shape)


def direction_effects(
    model,
    pairs: ContrastPairs,
    directions: Float[Tensor, "layer *head d"],
    sigmas: Float[Tensor, "layer *head"],
    *,
    site: str,
    context: str = "corrupted",
    batch_tokens: int = 2048,
    progress: bool = True,
) -> tuple[Float[Tensor, "pair layer *head"], Float[Tensor, " pair"]]:
    """Per pair and module, ``σ·⟨u, ∂metric/∂δ⟩`` (nats per unit α), and the pair's metric (nats); float64.

    ``directions``/``sigmas``: u and σ of every module at ``site`` (:func:`unit_directions`). The offset
    δ is added at every position of ``context + prompt + answer``, as ``Steering.applied`` adds α·σ·u;
    one forward and one backward per batch of pairs."""
    if context not in CONTEXTS:
        raise ScoringError(f"context must be one of {list(CONTEXTS)}; got {context!r}")
    if model.training:
        raise ScoringError(f"{METHOD} needs the model in evaluation mode; call model.eval() first")
    cfg, head_site = model.cfg, hooks.is_head_site(site)
    module_shape = (cfg.n_layers, cfg.n_heads) if head_site else (cfg.n_layers,)
    width = cfg.d_head if head_site else cfg.d_model
    if tuple(directions.shape) != (*module_shape, width) or tuple(sigmas.shape) != module_shape:
        raise ScoringError(f"{METHOD}: expected directions {(*module_shape, width)} and sigmas {module_shape} for this "
                           f"model at {site!r}; found {tuple(directions.shape)} and {tuple(sigmas.shape)}")
    device = cfg.device
    param = next(model.parameters())
    dtype = torch.promote_types(param.dtype, torch.float32)  # float64 models differentiate in float64
    unit = (directions.double() * sigmas.double()[..., None]).to(device)  # σ·u per module
    names = [hooks.hook_name(site, layer) for layer in range(cfg.n_layers)]
    pad = pad_id(model)
    effects, metrics = [], []
    bar = tqdm(total=len(pairs), desc=f"{METHOD} {len(pairs)} pairs", unit="pair", disable=not progress)
    with bar:
        for batch in pairs.batches(batch_tokens):
            rows = full_rows(batch.pairs, context, positions="answer", pad=pad).to(device)
            offset = torch.zeros(rows.tokens.shape[0], *module_shape, width, dtype=dtype, device=device,
                                 requires_grad=True)

            def add_offset(layer):
                def hook(act: Tensor, hook) -> Tensor:
                    return act + offset[:, layer].unsqueeze(1).to(act.dtype)  # the same δ at every position

                return hook

            with torch.enable_grad(), model.hooks(fwd_hooks=[(name, add_offset(i)) for i, name in enumerate(names)]):
                logits = model(rows.tokens, logits_to_keep=rows.logits_to_keep)
                metric = rows.metric(logits)
                (grad,) = torch.autograd.grad(metric.sum(), [offset], allow_unused=True)
            if grad is None:
                raise ScoringError(f"{METHOD} got no gradient at the {site} offsets; this TransformerLens version does "
                                   "not use what a hook returns there")
            grad = grad.double().reshape(len(batch), 2, *module_shape, width).sum(1)  # both answers share the pair
            effects.append((grad * unit).sum(-1).cpu())
            metrics.append(metric.detach().double().cpu())
            bar.update(len(batch))
    return torch.cat(effects), torch.cat(metrics)
