"""What every evaluation forward pass shares: the steering context and log-probs (tokens: :mod:`real_lens.tokens`).

Steered and unsteered evaluation run the same code: every forward pass happens inside
``steering_context(model, steering)``, which is ``steering.applied(model)`` when a steering
is given and a no-op otherwise.
"""

from __future__ import annotations

import contextlib
from typing import ContextManager, Protocol, runtime_checkable

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor


@runtime_checkable
class SteeringLike(Protocol):
    """Anything with ``applied(model)``: a context manager that hooks the model (``real_lens.steering.Steering``)."""

    def applied(self, model) -> ContextManager: ...


def steering_context(model, steering: SteeringLike | None) -> ContextManager:
    if steering is None:
        return contextlib.nullcontext()
    if not callable(getattr(steering, "applied", None)):
        raise TypeError(
            f"steering must have an applied(model) context manager (a real_lens.steering.Steering) or be None; "
            f"found {type(steering).__name__}"
        )
    return steering.applied(model)


def target_logprobs(
    logits: Float[Tensor, "batch pos vocab"], targets: Int[Tensor, "batch pos"]
) -> Float[Tensor, "batch pos"]:
    """log p(targets[b, p] | logits[b, p]), in float32."""
    logp = logits.float().log_softmax(dim=-1)
    return logp.gather(-1, targets[..., None].to(logp.device))[..., 0]


def masked_sum(values: Float[Tensor, "batch pos"], mask: Bool[Tensor, "batch pos"]) -> Float[Tensor, " batch"]:
    """Row sums of ``values`` where ``mask`` holds, in float64 (padding never contributes, even as NaN)."""
    mask = mask.to(values.device)
    return torch.where(mask, values.double(), torch.zeros((), dtype=torch.float64, device=values.device)).sum(-1)
