"""Steering through hook functions (METHOD.md §4), identical for every selection method.

For each kept module: direction u = mean(aligned acts) − mean(violating acts) over the
bank (the fold's train+val part), unit-normalised; σ = std of the projections of all the
bank's activations onto u. During the forward pass α·strength·σ·u is added to that module's
activation (a head's slice of ``hook_z``, or a layer site) at the chosen positions.
REAL's strengths are score / max score among the kept modules; ITI's are all 1
(``scores.select(k)`` applies the method's own rule).

    steering = build_steering(bank, scores.select(16), alpha=15)
    print(steering.describe(model))      # every hook, |added vector| vs the module's typical norm
    with steering.applied(model):        # checks the model first: same model, same shapes
        logits = model(tokens)

A steering records the model its bank came from and the bank's module shape; applying it to
another model raises :class:`SteeringMismatchError` before any forward pass.
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
from .directions import center_of_mass
from .errors import ProvenanceError, RealLensError, unknown_name_error
from .artifacts import ArtifactType, artifact_writer, load_verified
from .io import read_json, read_tensors, write_json, write_tensors
from .models import model_identity, names_match
from .provenance import check_same_model
from .scoring import Selection

POSITIONS = ("all", "prompt", "generated")
STEERING_FILE, STEERING_META_FILE = "steering.safetensors", "steering.json"
STEERING_KIND = "steering"
STEERING_ARTIFACT = ArtifactType(STEERING_KIND, (STEERING_FILE, STEERING_META_FILE), "a steering", RealLensError,
                                 "save one with Steering.save", "save it again")


class SteeringMismatchError(ProvenanceError):
    """A steering is applied to a model it was not built for (another model, or other shapes)."""


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
        for layer, idx in sorted(by_layer.items()):  # hooks in layer order
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

    def fwd_hooks(self, model, *, positions: str = "all", prompt_length: int | None = None, check: bool = True):
        """``[(hook_name, hook_fn)]`` for ``model.run_with_hooks`` / ``model.hooks``.

        ``positions``: ``"all"`` (the paper), ``"prompt"`` (positions < ``prompt_length``) or
        ``"generated"`` (positions >= ``prompt_length``). Positions are counted per
        sequence: a call with more than one position starts a new sequence at 0 and a
        one-position call (a KV-cached decoding step) continues it — which is how
        ``generate`` runs, cached or not.

        ``check`` (default on): :meth:`check_model` first, so a steering built on another model
        fails with one clear error before any forward pass.
        """
        if check:
            self.check_model(model)
        if positions not in POSITIONS:
            raise unknown_name_error("positions", positions, POSITIONS)
        if positions != "all" and (prompt_length is None or prompt_length < 1):
            raise RealLensError(f"positions={positions!r} needs prompt_length >= 1 (the prompt's token count)")
        offsets = self.layer_offsets(model.cfg.n_heads if hooks.is_head_site(self.site) else None)
        fns = []
        for layer, offset in offsets.items():
            fns.append((hooks.hook_name(self.site, layer), _make_hook(offset, positions, prompt_length)))
        return fns

    @contextlib.contextmanager
    def applied(self, model, *, positions: str = "all", prompt_length: int | None = None, check: bool = True):
        """Hooks on for the duration of the block; removed in ``finally``, even on error.

        Checks the model first (:meth:`check_model`) unless ``check=False``.
        """
        fwd_hooks = self.fwd_hooks(model, positions=positions, prompt_length=prompt_length, check=check)
        with model.hooks(fwd_hooks=fwd_hooks):
            yield model

    def check_model(self, model) -> None:
        """Raise :class:`SteeringMismatchError` unless ``model`` is the model this steering was built for.

        Compares the recorded model (``meta["model"]``, from the bank) with the model's identity —
        the weights fingerprint when one was recorded (:func:`real_lens.provenance.check_same_model`),
        else the name — then the shapes: every module's layer and head exist in the model, the
        vectors are ``d_head`` (head sites) or ``d_model`` wide, and the bank's module shape (when
        recorded) is the model's. Every problem found is in the one message. Costs no forward pass.
        """
        cfg = model.cfg
        recorded = self.meta.get("model")
        problems = []
        try:
            check_same_model(recorded, model, what="this steering",
                             fix="apply it to the model its bank was collected from, or build it from a bank of this model")
        except ProvenanceError as exc:
            problems.append(str(exc))
        if not problems and recorded and not names_match(recorded, model):
            shown = recorded.get("name", recorded) if isinstance(recorded, dict) else recorded
            problems.append(
                f"this steering was built from activations of model {shown!r}, but it is applied to "
                f"{model_identity(model).get('name')!r}; load {shown!r}, or collect a bank on this model and build "
                "the steering from it"
            )
        head_site = hooks.is_head_site(self.site)
        expected_shape = (cfg.n_layers, cfg.n_heads) if head_site else (cfg.n_layers,)
        width, width_name = (cfg.d_head, "d_head") if head_site else (cfg.d_model, "d_model")
        recorded_shape = self.meta.get("module_shape")
        shapes = []
        if recorded_shape is not None and tuple(recorded_shape) != expected_shape:
            shapes.append(f"its bank's modules are {tuple(recorded_shape)}, the model's are {expected_shape}")
        if self.directions.shape[1] != width:
            shapes.append(f"its vectors are {self.directions.shape[1]} wide, the model's {width_name} is {width}")
        outside = [hooks.module_label(layer, head) for layer, head in self.modules
                   if not 0 <= layer < cfg.n_layers or (head_site and not 0 <= head < cfg.n_heads)]
        if outside:
            shapes.append(f"modules {', '.join(outside[:5])} do not exist in a model of {expected_shape}")
        if shapes:
            problems.append(
                f"this steering ({self.site}, {len(self.modules)} modules) does not fit the model "
                f"{model_identity(model).get('name')!r}: {'; '.join(shapes)}. Build the steering from a bank "
                "collected on this model"
            )
        if problems:
            raise SteeringMismatchError(" Also: ".join(problems))

    def describe(self, model, *, warn_ratio: float = 1.0):
        """Every hook this steering attaches, and per module ‖added vector‖ against the module's
        typical activation norm (from the bank); warns when that ratio exceeds ``warn_ratio``.

        Returns a :class:`real_lens.inspection.SteeringDescription` (print it for a table).
        """
        from .inspection import describe_steering

        return describe_steering(self, model, warn_ratio=warn_ratio)

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
    def load(cls, directory, *, allow_unverified: bool = False) -> "Steering":
        """The steering saved at ``directory``, after checking its manifest (RealLensError if anything is off).

        A steering without a manifest is read (with a notice) only when ``allow_unverified``."""
        return load_verified(directory, STEERING_ARTIFACT, read=cls._read, allow_unverified=allow_unverified)

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


def build_steering(bank: ActivationBank, selection: Selection, *, alpha: float | None = None, kl: float | None = None,
                   model=None, texts=None, sigma_bank: ActivationBank | None = None) -> Steering:
    """Center-of-mass directions and σ from ``bank`` for the modules in ``selection``, at a dose.

    The dose is either ``alpha`` (the steering strength α) or ``kl``: the target KL(unsteered ‖
    steered) in nats per token that α is calibrated to on ``model``, exactly as the main job does
    (:func:`real_lens.evaluation.dose.calibrate`; ``texts``: the paragraphs that choose α, default the
    job's held-apart WikiText-2 ones). Give one of the two.

    ``sigma_bank``: take σ from this bank's activations instead (labels unused), as the REAL
    release does with its unlabelled "tuning" bank (METHOD.md §3a;
    :func:`real_lens.tasks.truthfulqa.tuning_examples`). It must be read at the same site from a
    model of the same module shape; the directions still come from ``bank``.
    """
    if (alpha is None) == (kl is None):
        raise RealLensError("build_steering needs one dose: alpha=α (a fixed strength) or kl=target with model= "
                            "(α calibrated to that KL, as `real-lens run` does)")
    if kl is not None:
        if model is None:
            raise RealLensError("build_steering(kl=...) calibrates α on a model: pass model= as well")
        from .evaluation.dose import calibrate

        return calibrate(model, build_steering(bank, selection, alpha=1.0, sigma_bank=sigma_bank), kl=kl, texts=texts)
    found = center_of_mass(bank, selection.modules, sigma_bank=sigma_bank)
    return Steering(
        site=bank.site,
        modules=found.modules,
        directions=found.directions,
        sigmas=found.sigmas,
        strengths=torch.tensor(selection.strengths, dtype=torch.float32),
        alpha=float(alpha),
        method=selection.method,
        meta={"model": bank.meta.get("model"), "task": bank.meta.get("task"), "n_examples": len(bank.examples),
              "module_shape": list(bank.module_shape), "act_norms": [float(v) for v in found.act_norms],
              "bank_digest": bank.digest,
              **({} if sigma_bank is None else {"sigma_bank_digest": sigma_bank.digest,
                                                "sigma_n_examples": len(sigma_bank.examples)})},
    )

