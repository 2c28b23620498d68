"""Attribution patching (first-order AtP) baseline: a linear estimate of activation patching.

On the same contrast pairs, positions, metric and aggregation as :mod:`real_lens.scoring.patching`,
the effect of patching a module's clean activation into the corrupted run is estimated to first
order as ``(a_clean - a_corrupted) . d metric / d a`` (gradient on the corrupted run), summed over
``d_head`` (or ``d_model``) and the patched positions. The two runs have different contexts, so
the clean and corrupted activations are matched at the patched positions counted from the start
of the pair's own prompt (:class:`~real_lens.scoring.pairs.Rows.gather`). Each pair's two answers
are two rows that share the prompt; patching a shared prompt position changes both answers'
log-probs, and its gradient is the sum of the two rows' gradients, so summing the product over
both rows is exact to first order.

That needs one clean forward plus one corrupted forward and backward per batch of pairs (the
whole input of both answers), instead of one forward per module: ~64 pairs cost about what
activation patching spends on one or two.

The passes are those of TransformerLens's
:func:`transformer_lens.tools.analysis.attribution_patching.cache_activation_and_gradient`
(forward hooks for the activations, backward hooks for the gradients, the backward driven by
``torch.autograd.grad``), run on a whole batch of pairs at once by
:func:`real_lens.scoring.pairs.run_and_capture`, which keeps only the patched positions as it reads
them and computes logits only where the metric reads them (TransformerLens's function keeps every
position, which on whole inputs of demonstrations costs GBs). Its :func:`attribution_patch` loops
one pair at a time; batching gives the same numbers, because pairs are independent rows and the
gradient of the summed metric w.r.t. one row's activation is that row's own gradient.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jaxtyping import Float
from torch import Tensor
from tqdm.auto import tqdm
from transformer_lens.tools.analysis.attribution_patching import Node

from .. import hooks
from ..errors import ScoringError
from .registry import register_scorer
from .scores import ModuleScores
from ..tokens import pad_id
from .pair_rows import full_rows, run_and_capture
from .pairs import ContrastPairs, PairConfig, score_with_pairs

METHOD = "attribution"
SCORE_UNIT = "estimated fraction of the summed clean-corrupted log-prob-difference gap restored (AtP)"

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


@dataclass(frozen=True)
class AttributionConfig(PairConfig):
    """:class:`~real_lens.scoring.pairs.PairConfig` as attribution patching uses it (its defaults: 64 pairs)."""


def _experiment_options(experiment) -> dict:
    return {"cfg": AttributionConfig(n_pairs=experiment.attribution_pairs, n_demos=experiment.pair_demos,
                                     min_gap=experiment.pair_min_gap, batch_tokens=experiment.attribution_batch_tokens)}


@register_scorer(METHOD, config=AttributionConfig, accepts=PairConfig, needs_model=True, progress=True,
                 experiment_settings=("attribution_pairs", "pair_demos", "pair_min_gap", "attribution_batch_tokens"),
                 experiment_options=_experiment_options)
def attribution_scorer(
    bank, *, model=None, seed: int = 0, device=None, cfg: PairConfig | None = None, progress: bool = True
) -> ModuleScores:
    """Attribution patching at the bank's site, on contrast pairs built from its examples.

    Needs the model the bank was collected from; reads the bank's examples, not its
    activations. Runs where the model is (``device`` is unused).
    """
    return score_with_pairs(
        bank, model, seed=seed, cfg=cfg or AttributionConfig(), effects_fn=attribute_pairs, method=METHOD, unit=SCORE_UNIT,
        progress=progress,
    )


def attribute_pairs(
    model, pairs: ContrastPairs, *, site: str, cfg: PairConfig | None = None, progress: bool = True
) -> tuple[Float[Tensor, "pair layer *head"], Float[Tensor, " pair"]]:
    """AtP estimate of ``patched - corrupted`` per pair and module, and ``clean - corrupted`` (nats, float64).

    Same layout as :func:`real_lens.scoring.patching.patch_pairs`.
    """
    cfg = cfg or AttributionConfig()
    if model.training:
        raise ScoringError("attribution patching needs the model in evaluation mode; call model.eval() first")
    names = [hooks.hook_name(site, layer) for layer in range(model.cfg.n_layers)]
    pad, device = pad_id(model), model.cfg.device
    effects, gaps = [], []
    bar = tqdm(total=len(pairs), desc=f"attribution {len(pairs)} pairs", unit="pair", disable=not progress)
    with bar:
        for batch in pairs.batches(cfg.batch_tokens):
            clean_rows = full_rows(batch.pairs, "clean", positions=cfg.positions, pad=pad).to(device)
            corrupted_rows = full_rows(batch.pairs, "corrupted", positions=cfg.positions, pad=pad).to(device)
            with torch.no_grad():  # activations only
                clean = run_and_capture(model, clean_rows, names)
            with torch.enable_grad():
                try:
                    corrupted = run_and_capture(model, corrupted_rows, names, gradient=True, upstream=_UPSTREAM_HOOK)
                except torch.OutOfMemoryError as exc:
                    raise ScoringError(
                        f"attribution patching ran out of device memory on a backward over {corrupted_rows.tokens.numel()} "
                        f"tokens (batch_tokens={cfg.batch_tokens}); lower it (--attribution-batch-tokens, e.g. "
                        f"{max(1, cfg.batch_tokens // 4)}): the scores do not depend on it") from exc
            mask = corrupted_rows.patch_mask.to(device)
            per_layer = []
            for name in names:
                grad = corrupted.gradients.get(name)
                if grad is None:
                    raise ScoringError(f"attribution patching got no gradient at {name}; this TransformerLens "
                                       "version breaks the hook_z workaround in real_lens.scoring.attribution")
                delta = clean.activations[name] - corrupted.activations[name]  # at the patched positions
                product = (delta * grad).sum(-1)  # over d_head / d_model: [row, patch, *head]
                product = (product * mask.reshape(*mask.shape, *[1] * (product.ndim - 2))).sum(1)  # [row, *head]
                per_layer.append(product.reshape(len(batch), 2, *product.shape[1:]).sum(1))  # both answers
            effects.append(torch.stack(per_layer, dim=1).detach().cpu().double())
            gaps.append((clean.metric - corrupted.metric).cpu())
            bar.update(len(batch))
    return torch.cat(effects), torch.cat(gaps)
