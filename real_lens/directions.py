"""Center-of-mass steering directions u and their σ (METHOD.md §4), for any modules of a bank.

One implementation, read by :func:`real_lens.steering.build_steering` (which adds α·strength·σ·u) and
by the ``direction-attribution`` scorer (:mod:`real_lens.scoring.direction_attribution`, which ranks
modules by the first-order effect of that same offset). It sits below both in the layers: scoring
may not import steering.

For each module: u = mean(aligned acts) − mean(violating acts) over the bank, unit-normalised;
σ = std of the projections of the bank's activations onto u (or of ``sigma_bank``'s, as the REAL
release takes σ from its unlabelled tuning bank). Both are computed in float64 and returned in
float32, as a :class:`~real_lens.steering.Steering` holds them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from jaxtyping import Float
from torch import Tensor

from .bank import ActivationBank
from .errors import RealLensError


@dataclass(frozen=True)
class ModuleDirections:
    """Per module (in the order asked): the unit direction u and σ (float32, as a steering holds them), and the
    mean activation norm on the bank (float64)."""

    modules: tuple[tuple[int, int | None], ...]
    directions: Float[Tensor, "module d"]
    sigmas: Float[Tensor, " module"]
    act_norms: Float[Tensor, " module"]


def center_of_mass(bank: ActivationBank, modules: Sequence[tuple[int, int | None]], *,
                   sigma_bank: ActivationBank | None = None) -> ModuleDirections:
    """u and σ of ``modules`` (``(layer, head)``, or ``(layer, None)`` at a layer site) from ``bank``.

    ``sigma_bank``: take σ from this bank's activations instead (labels unused); it must be read at the
    bank's site with the bank's module shape. Raises :class:`RealLensError` when the bank lacks a class,
    a module is outside the bank, or a module's two class means coincide (it has no direction)."""
    labels = bank.labels
    if labels.unique().numel() < 2:
        raise RealLensError("steering directions need both aligned (1) and violating (0) examples in the bank")
    modules = tuple(modules)
    n_layers = bank.module_shape[0]
    for layer, head in modules:
        if not 0 <= layer < n_layers or (bank.is_head_site and not 0 <= head < bank.module_shape[1]):
            raise RealLensError(f"selected module L{layer}H{head} is outside the bank's modules {bank.module_shape}")
    acts = module_acts(bank, modules).double()  # [example, module, d]
    act_norms = acts.norm(dim=-1).mean(0)  # the typical size of each module's activation
    diff = acts[labels == 1].mean(0) - acts[labels == 0].mean(0)
    norms = diff.norm(dim=-1, keepdim=True)
    if (norms == 0).any():
        raise RealLensError("a selected module has identical aligned and violating means; it has no direction to steer")
    directions = diff / norms
    spread = acts if sigma_bank is None else module_acts(check_sigma_bank(sigma_bank, bank), modules).double()
    sigmas = torch.einsum("emd,md->em", spread, directions).std(dim=0)
    return ModuleDirections(modules, directions.float(), sigmas.float(), act_norms)


def module_acts(bank: ActivationBank, modules) -> Float[Tensor, "example module d"]:
    """The bank's activations of ``modules``, stacked on a module axis."""
    if bank.is_head_site:
        return torch.stack([bank.acts[:, layer, head] for layer, head in modules], dim=1)
    return torch.stack([bank.acts[:, layer] for layer, _ in modules], dim=1)


def check_sigma_bank(sigma_bank, bank: ActivationBank) -> ActivationBank:
    """``sigma_bank`` if it can give σ for ``bank``'s modules; one-line errors otherwise."""
    if not isinstance(sigma_bank, ActivationBank):
        raise RealLensError(f"sigma_bank must be an ActivationBank; found {type(sigma_bank).__name__}. "
                            "Collect one with collect_activations(model, tuning_examples(...))")
    if sigma_bank.site != bank.site or sigma_bank.module_shape != bank.module_shape:
        raise RealLensError(
            f"sigma_bank must be read at the bank's site {bank.site!r} with module shape {bank.module_shape}; found "
            f"{sigma_bank.site!r} with {sigma_bank.module_shape}. Collect it from the same model at the same site")
    if len(sigma_bank.examples) < 2:
        raise RealLensError(f"sigma_bank needs at least 2 examples for a standard deviation; found "
                            f"{len(sigma_bank.examples)}")
    return sigma_bank
