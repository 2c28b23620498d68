"""Activation patching baseline: how much of a behaviour one module's activation restores.

For each contrast pair (:mod:`real_lens.scoring.pairs`: a two-option prompt and the same
prompt with the options swapped), run the corrupted prompt, replace one module's activation
(at every position by default) with its value on the clean prompt, and measure
``metric = logit("A") - logit("B")`` at the last token ("A" = the aligned answer's letter in
the clean prompt). Score of a module = mean over pairs of
``(patched - corrupted) / (clean - corrupted)``: the fraction of the clean-corrupted gap
restored. 1 = patching this module alone restores the clean behaviour, 0 = no effect.

The sweep is TransformerLens's :func:`transformer_lens.patching.generic_activation_patch`
(for heads at all positions it is exactly ``get_act_patch_attn_head_out_all_pos``): one
forward of a batch of pairs per module, so ``n_layers * n_heads + 2`` forwards per batch.
On SmolLM2-135M (270 heads) on 2 CPU cores a forward of 2 pairs takes ~0.5 s, so 2 pairs
cost ~2.5 min and the default 64 pairs over an hour; attribution patching
(:mod:`real_lens.scoring.attribution`) estimates the same scores in ~2 forwards + 1 backward.

Layer sites with ``positions="all"``: patching ``hook_resid_post`` at every position replaces
everything downstream of that layer, so every layer scores exactly 1. Use
``positions="last"`` there for an informative ranking.
"""

from __future__ import annotations

import torch
import transformer_lens.utilities as tl_utils
from jaxtyping import Float
from torch import Tensor
from transformer_lens.patching import generic_activation_patch, layer_head_vector_patch_setter

from .. import hooks
from ..errors import ScoringError
from . import ModuleScores, register_scorer
from .pairs import ContrastPairs, PairConfig, Positions, score_with_pairs

METHOD = "patching"
SCORE_UNIT = "fraction of logit-diff gap restored"

# generic_activation_patch builds hook names itself with get_act_name(short, layer); these
# short names give exactly the names real_lens.hooks spells (checked in _tl_act_name).
_TL_ACT_NAMES = {"head_z": "z", "attn_out": "attn_out", "mlp_out": "mlp_out", "resid_post": "resid_post"}


PatchingConfig = PairConfig


@register_scorer(METHOD)
def patching_scorer(
    bank, *, model=None, seed: int = 0, device=None, cfg: PatchingConfig | None = None
) -> ModuleScores:
    """Activation patching at the bank's site, on contrast pairs built from its examples.

    Needs the model the bank was collected from; reads the bank's examples, not its
    activations. Runs where the model is (``device`` is unused).
    """
    return score_with_pairs(
        bank, model, seed=seed, cfg=cfg or PatchingConfig(), effects_fn=patch_pairs, method=METHOD, unit=SCORE_UNIT
    )


def patch_pairs(
    model, pairs: ContrastPairs, *, site: str, batch_size: int = 8, positions: Positions = "all"
) -> tuple[Float[Tensor, "pair layer *head"], Float[Tensor, "pair"]]:
    """Patch every module of ``site`` on every pair: ``(patched - corrupted, clean - corrupted)``.

    Metric values in logits, per pair; the first tensor is ``[pair, n_layers, n_heads]`` for
    heads, ``[pair, n_layers]`` for layer sites.
    """
    if model.training:
        raise ScoringError("activation patching needs the model in evaluation mode; call model.eval() first")
    act_name = _tl_act_name(site, model.cfg.n_layers)
    axes = ("layer", "head") if hooks.is_head_site(site) else ("layer",)
    names = [hooks.hook_name(site, layer) for layer in range(model.cfg.n_layers)]
    effects, gaps = [], []
    with torch.no_grad():
        for batch in pairs.batches(batch_size):
            batch = batch.to(model.cfg.device)
            clean_logits, clean_cache = model.run_with_cache(batch.clean, names_filter=names)
            result = generic_activation_patch(
                model,
                batch.corrupted,
                clean_cache,
                batch.logit_diff,
                patch_setter=_patch_setter(site, positions, batch),
                activation_name=act_name,
                index_axis_names=axes,
                reduce="none",  # keep per-pair values: [*module, pair]
                baseline=True,  # + the unpatched corrupted metric: [pair]
            )
            corrupted = result.baseline
            patched = result.values.movedim(-1, 0)
            effects.append((patched - corrupted.reshape(-1, *[1] * (patched.ndim - 1))).cpu())
            gaps.append((batch.logit_diff(clean_logits) - corrupted).cpu())
    return torch.cat(effects), torch.cat(gaps)


def _patch_setter(site: str, positions: Positions, batch: ContrastPairs):
    """``setter(corrupted_act, index, clean_act)`` for generic_activation_patch."""
    if hooks.is_head_site(site) and positions == "all":
        return layer_head_vector_patch_setter  # index = [layer, head]
    last = batch.last_position_mask().bool()  # [pair, pos]; pairs are right-padded

    def head_last(corrupted, index, clean):
        head = index[1]
        corrupted[:, :, head][last] = clean[:, :, head][last]
        return corrupted

    def layer_all(corrupted, index, clean):
        return clean.clone()

    def layer_last(corrupted, index, clean):
        corrupted[last] = clean[last]
        return corrupted

    if hooks.is_head_site(site):
        return head_last
    return layer_all if positions == "all" else layer_last


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
