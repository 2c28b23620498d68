"""Steering through hook functions (METHOD.md §4), identical for every selection method.

For each kept module: direction u = mean(aligned acts) − mean(violating acts) over the
bank (the fold's train+val part), unit-normalised; σ = std of the projections of all the
bank's activations onto u. During the forward pass α·strength·σ·u is added to that module's
activation (a head's slice of ``hook_z``, or a layer site) at the chosen positions.
REAL's strengths are score / max score among the kept modules; ITI's are all 1.

    steering = build_steering(bank, scores.top_k(16), alpha=15)
    with steering.applied(model):
        logits = model(tokens)
"""

from __future__ import annotations

import contextlib
import math
from collections import defaultdict
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from . import hooks
from .bank import ActivationBank
from .errors import ArtifactError, ArtifactMissingError, RealLensError, unknown_name_error
from .artifacts import artifact_writer, load_artifact
from .io import read_json, read_tensors, write_json, write_tensors
from .provenance import check_same_model
from .scoring import Selection

POSITIONS = ("all", "prompt", "generated")
STEERING_FILE, STEERING_META_FILE = "steering.safetensors", "steering.json"
STEERING_KIND = "steering"


@dataclass(frozen=True)
class Steering:
    site: str
    modules: tuple[tuple[int, int | None], ...]
    directions: Float[Tensor, "module d"]
    sigmas: Float[Tensor, " module"]
    strengths: Float[Tensor, " module"]
    alpha: float
    method: str = ""
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        n = len(self.modules)
        if not (self.directions.shape[0] == self.sigmas.shape[0] == self.strengths.shape[0] == n):
            raise RealLensError(
                f"steering needs one direction, sigma and strength per module ({n}); found "
                f"{self.directions.shape[0]}, {self.sigmas.shape[0]}, {self.strengths.shape[0]}"
            )
        if hooks.is_head_site(self.site) and any(h is None for _, h in self.modules):
            raise RealLensError(f"site {self.site!r} steers heads; every module needs a head index")
        if not math.isfinite(self.alpha):
            raise RealLensError(f"alpha must be a finite number; got {self.alpha}")

    def with_alpha(self, alpha: float) -> "Steering":
        return replace(self, alpha=float(alpha))

    def vectors(self) -> Float[Tensor, "module d"]:
        """What is added to each module: α · strength · σ · u."""
        return self.alpha * (self.strengths * self.sigmas)[:, None] * self.directions

    def layer_offsets(self, n_heads: int | None = None) -> dict[int, Tensor]:
        """Per layer, the tensor added to the hook's activation: ``[n_heads, d_head]`` or ``[d_model]``."""
        offsets: dict[int, Tensor] = {}
        vectors = self.vectors()
        by_layer: dict[int, list[int]] = defaultdict(list)
        for i, (layer, _) in enumerate(self.modules):
            by_layer[layer].append(i)
        for layer, idx in by_layer.items():
            if hooks.is_head_site(self.site):
                if n_heads is None:
                    raise RealLensError("layer_offsets of a head site needs n_heads")
                offset = torch.zeros(n_heads, vectors.shape[1], dtype=vectors.dtype)
                for i in idx:
                    offset[self.modules[i][1]] += vectors[i]
            else:
                offset = vectors[idx].sum(0)
            offsets[layer] = offset
        return offsets

    def fwd_hooks(self, model, *, positions: str = "all", prompt_length: int | None = None):
        """``[(hook_name, hook_fn)]`` for ``model.run_with_hooks`` / ``model.hooks``.

        ``positions``: ``"all"`` (the paper), ``"prompt"`` (positions < ``prompt_length``) or
        ``"generated"`` (positions >= ``prompt_length``). Positions are counted per
        sequence: a call with more than one position starts a new sequence at 0 and a
        one-position call (a KV-cached decoding step) continues it — which is how
        ``generate`` runs, cached or not.
        """
        if positions not in POSITIONS:
            raise unknown_name_error("positions", positions, POSITIONS)
        if positions != "all" and (prompt_length is None or prompt_length < 1):
            raise RealLensError(f"positions={positions!r} needs prompt_length >= 1 (the prompt's token count)")
        check_same_model(self.meta.get("model"), model, what="this steering",
                         fix="apply it to the model its bank was collected from, or build it from a bank of this model")
        offsets = self.layer_offsets(model.cfg.n_heads if hooks.is_head_site(self.site) else None)
        fns = []
        for layer, offset in offsets.items():
            fns.append((hooks.hook_name(self.site, layer), _make_hook(offset, positions, prompt_length)))
        return fns

    @contextlib.contextmanager
    def applied(self, model, *, positions: str = "all", prompt_length: int | None = None):
        """Hooks on for the duration of the block; removed in ``finally``, even on error."""
        with model.hooks(fwd_hooks=self.fwd_hooks(model, positions=positions, prompt_length=prompt_length)):
            yield model

    # --- storage -----------------------------------------------------------
    def save(self, directory) -> Path:
        """Publish the steering at ``directory`` as one verified artifact (safetensors + JSON + manifest)."""
        directory = Path(directory)
        with artifact_writer(directory, kind=STEERING_KIND, replaces={STEERING_FILE, STEERING_META_FILE}) as staging:
            write_tensors(staging / STEERING_FILE, {
                "directions": self.directions, "sigmas": self.sigmas, "strengths": self.strengths,
            })
            write_json(staging / STEERING_META_FILE, {
                "site": self.site, "modules": [list(m) for m in self.modules], "alpha": self.alpha,
                "method": self.method, "meta": self.meta,
            })
        return directory

    @classmethod
    def load(cls, directory, *, allow_unverified: bool = True) -> "Steering":
        """The steering saved at ``directory``, after checking its manifest (RealLensError if anything is off)."""
        directory = Path(directory)
        try:
            return load_artifact(directory, kind=STEERING_KIND, read=cls._read,
                                 legacy_files=(STEERING_FILE, STEERING_META_FILE),
                                 allow_unverified=allow_unverified, what="the steering")
        except ArtifactMissingError as exc:
            raise RealLensError(
                f"{directory} holds no steering{f' ({exc})' if str(exc) else ''}: {STEERING_FILE} and {STEERING_META_FILE} expected; "
                "save one with Steering.save"
            ) from None
        except ArtifactError as exc:
            raise RealLensError(f"steering {directory} is unreadable: {exc}; save it again") from exc

    @classmethod
    def _read(cls, directory: Path) -> "Steering":
        try:
            tensors = read_tensors(directory / STEERING_FILE)
            meta = read_json(directory / STEERING_META_FILE)
            return cls(
                meta["site"], tuple((m[0], m[1]) for m in meta["modules"]), tensors["directions"],
                tensors["sigmas"], tensors["strengths"], meta["alpha"], meta["method"], meta["meta"],
            )
        except RealLensError:
            raise
        except Exception as exc:  # corrupt file: say which, never a raw traceback
            raise RealLensError(f"steering {directory} is unreadable ({exc}); save it again") from exc


def _make_hook(offset: Tensor, positions: str, prompt_length: int | None):
    state = {"seen": 0}

    def hook(act: Tensor, hook) -> Tensor:
        delta = offset.to(device=act.device, dtype=act.dtype)
        if positions == "all":
            return act + delta
        n_pos = act.shape[1]
        start = 0 if n_pos > 1 else state["seen"]
        state["seen"] = start + n_pos
        absolute = torch.arange(start, start + n_pos, device=act.device)
        keep = absolute < prompt_length if positions == "prompt" else absolute >= prompt_length
        mask = keep.to(act.dtype).view(1, n_pos, *([1] * (act.ndim - 2)))
        return act + mask * delta

    return hook


def build_steering(bank: ActivationBank, selection: Selection, *, alpha: float) -> Steering:
    """Center-of-mass directions and σ from ``bank`` for the modules in ``selection``."""
    labels = bank.labels
    if labels.unique().numel() < 2:
        raise RealLensError("steering directions need both aligned (1) and violating (0) examples in the bank")
    modules = selection.modules
    n_layers = bank.module_shape[0]
    for layer, head in modules:
        if not 0 <= layer < n_layers or (bank.is_head_site and not 0 <= head < bank.module_shape[1]):
            raise RealLensError(f"selected module L{layer}H{head} is outside the bank's modules {bank.module_shape}")
    if bank.is_head_site:
        acts = torch.stack([bank.acts[:, layer, head] for layer, head in modules], dim=1)
    else:
        acts = torch.stack([bank.acts[:, layer] for layer, _ in modules], dim=1)
    acts = acts.double()  # [example, module, d]
    diff = acts[labels == 1].mean(0) - acts[labels == 0].mean(0)
    norms = diff.norm(dim=-1, keepdim=True)
    if (norms == 0).any():
        raise RealLensError("a selected module has identical aligned and violating means; it has no direction to steer")
    directions = diff / norms
    sigmas = torch.einsum("emd,md->em", acts, directions).std(dim=0)
    return Steering(
        site=bank.site,
        modules=tuple(modules),
        directions=directions.float(),
        sigmas=sigmas.float(),
        strengths=torch.tensor(selection.strengths, dtype=torch.float32),
        alpha=float(alpha),
        method=selection.method,
        meta={"model": bank.meta.get("model"), "task": bank.meta.get("task"), "n_examples": len(bank.examples),
              "bank_digest": bank.digest},
    )
