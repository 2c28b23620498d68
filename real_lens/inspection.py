"""Hook-level debugging: what a steering attaches, what it changes, and which hooks ran.

    print(list_hooks(model))                    # every hook point with its shape, by layer
    print(steering.describe(model))             # every hook the steering attaches; |added| vs typical |act|
    print(compare_logits(model, prompt, steering))   # next-token top-k steered vs not, KL per position,
                                                     # and the hooks that actually fired (counted)

``real-lens hooks`` and ``real-lens inspect`` print the same objects.
"""

from __future__ import annotations

import warnings
from collections import defaultdict
from dataclasses import dataclass

import torch
from jaxtyping import Float
from torch import Tensor

from . import hooks
from .errors import RealLensError
from .models import model_identity
from .names import DEFAULT_HOOKS_PROMPT



class LargeSteeringWarning(UserWarning):
    """A steering adds vectors much longer than the activations they are added to."""


# --------------------------------------------------------------------------- hook points
@dataclass(frozen=True)
class HookPoints:
    """Every hook point of a model with its activation shape on a prompt, grouped by layer."""

    model: str
    by_group: dict[str, dict[str, tuple[int, ...]]]  # "model" / "blocks.{l}" -> {hook name: shape}
    n_tokens: int
    summary: str

    @property
    def names(self) -> list[str]:
        return [name for group in self.by_group.values() for name in group]

    def __str__(self) -> str:
        lines = [f"{self.model}: {self.summary}; prompt of {self.n_tokens} tokens; shapes are [batch, pos, ...]"]
        for group, entries in self.by_group.items():
            lines += ["", group] + [f"  {name:45s} {list(shape)}" for name, shape in entries.items()]
        return "\n".join(lines)


def list_hooks(model, *, prompt: str = DEFAULT_HOOKS_PROMPT, contains: str | None = None) -> HookPoints:
    """Every hook point (optionally only names containing ``contains``) with its shape on ``prompt``."""
    _, cache = model.run_with_cache(prompt)
    by_group: dict[str, dict[str, tuple[int, ...]]] = defaultdict(dict)
    for name, act in cache.items():
        if contains and contains not in name:
            continue
        group = ".".join(name.split(".")[:2]) if name.startswith("blocks.") else "model"
        by_group[group][name] = tuple(act.shape)
    order = sorted(by_group, key=lambda g: (g != "model", int(g.split(".")[1]) if g.startswith("blocks.") else -1))
    cfg = model.cfg
    return HookPoints(
        model=str(model_identity(model).get("name")),
        by_group={g: dict(by_group[g]) for g in order},
        n_tokens=int(model.to_tokens(prompt).shape[1]),
        summary=f"{cfg.n_layers} layers, {cfg.n_heads} heads, d_head {cfg.d_head}, d_model {cfg.d_model}",
    )


# --------------------------------------------------------------------------- describe a steering
@dataclass(frozen=True)
class ModuleEffect:
    module: str  # L{layer}H{head} or L{layer}
    hook: str
    strength: float
    sigma: float
    added_norm: float  # ‖α · strength · σ · u‖ = |α · strength · σ| (u is a unit vector)
    act_norm: float | None  # mean ‖activation‖ of the module over the bank; None if not recorded
    ratio: float | None  # added_norm / act_norm


@dataclass(frozen=True)
class SteeringDescription:
    method: str
    site: str
    alpha: float
    model: str
    hooks: dict[str, float]  # hook name -> ‖everything added at that hook‖ (per position)
    modules: tuple[ModuleEffect, ...]
    warn_ratio: float
    warnings: tuple[str, ...]

    def __str__(self) -> str:
        lines = [f"steering: {self.method or '?'} at {self.site}, {len(self.modules)} modules, alpha {self.alpha:g}, "
                 f"on {self.model}; {len(self.hooks)} hooks:"]
        lines += [f"  {name:32s} ‖added‖ {norm:9.4f}" for name, norm in self.hooks.items()]
        lines += ["", f"  {'module':8s} {'hook':32s} {'strength':>8s} {'sigma':>9s} {'‖added‖':>9s} "
                      f"{'mean ‖act‖':>10s} {'ratio':>7s}"]
        for m in self.modules:
            act = "?" if m.act_norm is None else f"{m.act_norm:.4f}"
            ratio = "?" if m.ratio is None else f"{m.ratio:.3f}"
            flag = "  <- large" if m.ratio is not None and m.ratio > self.warn_ratio else ""
            lines.append(f"  {m.module:8s} {m.hook:32s} {m.strength:8.3f} {m.sigma:9.4f} {m.added_norm:9.4f} "
                         f"{act:>10s} {ratio:>7s}{flag}")
        lines += [f"warning: {w}" for w in self.warnings]
        return "\n".join(lines)


def describe_steering(steering, model, *, warn_ratio: float = 1.0) -> SteeringDescription:
    """What ``steering`` attaches to ``model``: see :meth:`real_lens.steering.Steering.describe`."""
    if not warn_ratio > 0:
        raise RealLensError(f"warn_ratio must be > 0; got {warn_ratio}")
    steering.check_model(model)
    vectors = steering.vectors()
    act_norms = steering.meta.get("act_norms")
    if act_norms is not None and len(act_norms) != len(steering.modules):
        raise RealLensError(f"steering meta has {len(act_norms)} act_norms for {len(steering.modules)} modules")
    modules = []
    for i, (layer, head) in enumerate(steering.modules):
        added = float(vectors[i].norm())
        act = None if act_norms is None else float(act_norms[i])
        modules.append(ModuleEffect(
            module=hooks.module_label(layer, head), hook=hooks.hook_name(steering.site, layer),
            strength=float(steering.strengths[i]), sigma=float(steering.sigmas[i]), added_norm=added,
            act_norm=act, ratio=None if not act else added / act,
        ))
    n_heads = model.cfg.n_heads if hooks.is_head_site(steering.site) else None
    per_hook = {hooks.hook_name(steering.site, layer): float(offset.norm())
                for layer, offset in sorted(steering.layer_offsets(n_heads).items())}
    large = [m for m in modules if m.ratio is not None and m.ratio > warn_ratio]
    notes = []
    if large:
        worst = max(large, key=lambda m: m.ratio)
        notes.append(
            f"{len(large)} of {len(modules)} modules get a vector longer than {warn_ratio:g}x their mean activation norm "
            f"(largest: {worst.module}, {worst.ratio:.2f}x); alpha {steering.alpha:g} may push the model off its "
            "activation distribution — try a smaller alpha"
        )
    if act_norms is None:
        notes.append("this steering does not record its bank's activation norms (built by an older real-lens); "
                     "rebuild it to see the ratios")
    if large:
        warnings.warn(notes[0], LargeSteeringWarning, stacklevel=3)
    return SteeringDescription(
        method=steering.method, site=steering.site, alpha=steering.alpha, model=str(model_identity(model).get("name")),
        hooks=per_hook, modules=tuple(modules), warn_ratio=warn_ratio, warnings=tuple(notes),
    )


# --------------------------------------------------------------------------- compare logits
@dataclass(frozen=True)
class LogitComparison:
    """Steered vs unsteered forward pass on one prompt."""

    tokens: tuple[str, ...]  # the prompt's tokens as the model reads them
    unsteered_top: tuple[tuple[str, float], ...]  # next-token top-k (token, probability) after the prompt
    steered_top: tuple[tuple[str, float], ...]
    kl: Float[Tensor, " pos"]  # KL(unsteered ‖ steered) of the next-token distribution at every position
    max_logit_change: float
    hooks_fired: dict[str, int]  # every hook the steering attached -> how many times it ran (counted)

    def __str__(self) -> str:
        width = max(len(repr(t)) for t, _ in (*self.unsteered_top, *self.steered_top))
        lines = [f"next token after {len(self.tokens)} prompt tokens (top {len(self.unsteered_top)}):",
                 f"  {'unsteered':{width + 9}s}   steered"]
        for (a, pa), (b, pb) in zip(self.unsteered_top, self.steered_top):
            lines.append(f"  {a!r:{width}s} {pa:7.4f}   {b!r:{width}s} {pb:7.4f}")
        lines += ["", "KL(unsteered ‖ steered) per position:"]
        lines += [f"  {i:3d} {tok!r:14s} {float(kl):.5f}" for i, (tok, kl) in enumerate(zip(self.tokens, self.kl))]
        lines += ["", f"max |logit change| {self.max_logit_change:.4f}", "hooks fired (calls in the steered pass):"]
        lines += [f"  {name:32s} {count}" for name, count in self.hooks_fired.items()]
        silent = [name for name, count in self.hooks_fired.items() if count == 0]
        if silent:
            lines.append(f"warning: {len(silent)} hook(s) never ran: {', '.join(silent)}")
        return "\n".join(lines)


def compare_logits(model, prompt: str, steering, *, n_tokens: int = 10, positions: str = "all",
                   prompt_length: int | None = None, top_k: int | None = None) -> LogitComparison:
    """One unsteered and one steered forward pass on ``prompt``; which hooks fired is counted.

    Each of the steering's hook functions is wrapped in a counter, so ``hooks_fired`` records
    what ran, not what was meant to run. The steered pass uses exactly the hooks
    ``steering.applied(model, positions=..., prompt_length=...)`` attaches.
    """
    if top_k is not None:  # top_k counts heads everywhere else in real-lens
        warnings.warn("compare_logits(top_k=) is deprecated: it counts next-token candidates, so it is now "
                      "n_tokens=; top_k means modules (heads) everywhere in real-lens", DeprecationWarning, stacklevel=2)
        n_tokens = top_k
    if n_tokens < 1:
        raise RealLensError(f"n_tokens must be at least 1; got {n_tokens}")
    tokens = model.to_tokens(prompt)
    fired: dict[str, int] = {}

    def counted(name, fn):
        fired[name] = 0

        def hook(act, hook):
            fired[name] += 1
            return fn(act, hook)

        return hook

    fwd_hooks = [(name, counted(name, fn))
                 for name, fn in steering.fwd_hooks(model, positions=positions, prompt_length=prompt_length)]
    with torch.inference_mode():
        clean = model(tokens)[0].float()
        with model.hooks(fwd_hooks=fwd_hooks):
            steered = model(tokens)[0].float()
    logp_clean, logp_steered = clean.log_softmax(-1), steered.log_softmax(-1)
    kl = (logp_clean.exp() * (logp_clean - logp_steered)).sum(-1).clamp(min=0.0)
    k = min(n_tokens, clean.shape[-1])

    def top(logp: Tensor) -> tuple[tuple[str, float], ...]:
        values, ids = logp[-1].exp().topk(k)
        return tuple((model.tokenizer.decode([int(i)]), float(v)) for v, i in zip(values, ids))

    return LogitComparison(
        tokens=tuple(model.tokenizer.decode([int(t)]) for t in tokens[0]),
        unsteered_top=top(logp_clean), steered_top=top(logp_steered), kl=kl.cpu(),
        max_logit_change=float((steered - clean).abs().max()), hooks_fired=fired,
    )
