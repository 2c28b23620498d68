"""Attribution patching (first-order AtP) baseline: a linear estimate of activation patching.

On the same contrast pairs as :mod:`real_lens.scoring.patching`, the effect of patching a
module's clean activation into the corrupted run is estimated to first order as
``(a_clean - a_corrupted) . d metric / d a`` (gradient on the corrupted run), summed over
``d_head`` (or ``d_model``) and positions. That needs one clean forward plus one corrupted
forward and backward per batch of pairs, instead of one forward per module. Estimates are
divided by each pair's clean-corrupted gap exactly as activation patching's measured effects
are, so the two scorers are on the same scale ("fraction of the gap restored").

The passes are TransformerLens's
:func:`transformer_lens.tools.analysis.attribution_patching.cache_activation_and_gradient`,
run on a whole batch at once. (Its :func:`attribution_patch` loops one pair at a time and
returns a Python dict per position, head and pair; batching gives the same numbers faster,
because pairs are independent rows and the gradient of the summed metric w.r.t. one row's
activation is that row's own gradient.)
"""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor
from transformer_lens.tools.analysis.attribution_patching import Node, cache_activation_and_gradient

from .. import hooks
from ..errors import ScoringError
from . import ModuleScores, register_scorer
from .pairs import ContrastPairs, PairConfig, Positions, score_with_pairs

METHOD = "attribution"
SCORE_UNIT = "estimated fraction of logit-diff gap restored (AtP)"

# Workaround for TransformerBridge (TransformerLens 4.3). The tensor a forward hook sees at
# ``attn.hook_z`` is a reshaped view that the model's forward never consumes, so when only
# hook_z points are cached, ``torch.autograd.grad(metric, inputs=[those views])`` has nothing
# on the path to differentiate, runs no backward at all, and every hook_z gradient comes back
# None. Caching one point upstream that the forward does consume (the embedding) makes the
# backward run through every layer, so the hook_z backward hooks fire and deliver the real
# gradients (the linearity test in tests/unit/test_baselines.py checks them against patching).
# TransformerLens's own node sweep always caches hook_embed, which is why attribution_patch
# does not hit this. The name comes from TransformerLens's Node, not spelled here.
_UPSTREAM_HOOK = Node(kind="embed", position=0).hook_name


AttributionConfig = PairConfig


@register_scorer(METHOD)
def attribution_scorer(
    bank, *, model=None, seed: int = 0, device=None, cfg: AttributionConfig | None = None
) -> ModuleScores:
    """Attribution patching at the bank's site, on contrast pairs built from its examples.

    Needs the model the bank was collected from; reads the bank's examples, not its
    activations. Runs where the model is (``device`` is unused).
    """
    return score_with_pairs(
        bank, model, seed=seed, cfg=cfg or AttributionConfig(), effects_fn=attribute_pairs, method=METHOD, unit=SCORE_UNIT
    )


def attribute_pairs(
    model, pairs: ContrastPairs, *, site: str, batch_size: int = 8, positions: Positions = "all"
) -> tuple[Float[Tensor, "pair layer *head"], Float[Tensor, "pair"]]:
    """AtP estimate of ``patched - corrupted`` per pair and module, and ``clean - corrupted``.

    Same layout as :func:`real_lens.scoring.patching.patch_pairs`.
    """
    if model.training:
        raise ScoringError("attribution patching needs the model in evaluation mode; call model.eval() first")
    names = [hooks.hook_name(site, layer) for layer in range(model.cfg.n_layers)]
    effects, gaps = [], []
    with torch.enable_grad():
        for batch in pairs.batches(batch_size):
            batch = batch.to(model.cfg.device)
            metric = _RecordingMetric(batch)
            with torch.no_grad():  # activations only: no graph needed
                clean = cache_activation_and_gradient(model, batch.clean, metric, names_filter=names, compute_gradient=False)
            clean_metric = metric.last
            corrupted = cache_activation_and_gradient(model, batch.corrupted, metric, names_filter=[_UPSTREAM_HOOK, *names])
            corrupted_metric = metric.last
            mask = batch.position_mask() if positions == "all" else batch.last_position_mask()
            per_layer = []
            for name in names:
                grad = corrupted.gradients.get(name)
                if grad is None:
                    raise ScoringError(f"attribution patching got no gradient at {name}; this TransformerLens "
                                       "version breaks the hook_z workaround in real_lens.scoring.attribution")
                product = (clean.activations[name] - corrupted.activations[name]) * grad
                product = product.sum(-1)  # over d_head / d_model: [pair, pos, *head]
                mask_ = mask.reshape(*mask.shape, *[1] * (product.ndim - 2))
                per_layer.append((product * mask_).sum(1))  # over positions: [pair, *head]
            effects.append(torch.stack(per_layer, dim=1).detach().cpu())
            gaps.append((clean_metric - corrupted_metric).cpu())
    return torch.cat(effects), torch.cat(gaps)


class _RecordingMetric:
    """The summed per-pair metric (a scalar to differentiate), remembering the per-pair values."""

    def __init__(self, batch: ContrastPairs):
        self.batch = batch
        self.last: Tensor | None = None

    def __call__(self, logits: Tensor) -> Tensor:
        per_pair = self.batch.logit_diff(logits)
        self.last = per_pair.detach()
        return per_pair.sum()
