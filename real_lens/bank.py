"""ActivationBank: the labelled activations of every module for one task.

Stored as ``acts.safetensors`` (activations, labels) + ``bank.json`` (examples, metadata).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from . import hooks
from .errors import BankError
from .io import read_json, read_tensors, write_json, write_tensors
from .tasks.base import Example

TENSORS_FILE, META_FILE = "acts.safetensors", "bank.json"


@dataclass(frozen=True)
class ActivationBank:
    """``acts``: ``[example, layer, head, d_head]`` (head site) or ``[example, layer, d_model]``.

    ``meta`` records where the activations came from: model, site, hook template,
    readout, task, prompt format, package version, and the storage ``dtype`` (float32,
    bfloat16 or float16; absent in banks older than the option, which are float32).
    """

    acts: Float[Tensor, "example layer *module d"]
    examples: tuple[Example, ...]
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        n = len(self.examples)
        if self.acts.ndim not in (3, 4) or self.acts.shape[0] != n:
            raise BankError(
                f"bank activations must be [example, layer, head, d_head] or [example, layer, d_model] "
                f"with one row per example ({n}); found shape {tuple(self.acts.shape)}"
            )
        stated = self.meta.get("dtype")  # absent in banks made before the option (float32)
        if stated is not None and str(self.acts.dtype).removeprefix("torch.") != stated:
            raise BankError(
                f"bank activations are {self.acts.dtype} but its metadata states {stated!r}; "
                "collect the bank again (or cast acts to the stated dtype)"
            )
        site = self.meta.get("site")
        if site is not None and hooks.is_head_site(site) != (self.acts.ndim == 4):
            raise BankError(f"site {site!r} does not match activation shape {tuple(self.acts.shape)}")

    # --- views -------------------------------------------------------------
    @property
    def labels(self) -> Int[Tensor, "example"]:
        return torch.tensor([e.label for e in self.examples], dtype=torch.long)

    @property
    def groups(self) -> list[str]:
        return [e.group for e in self.examples]

    @property
    def site(self) -> str:
        return self.meta.get("site", "head_z" if self.acts.ndim == 4 else "resid_post")

    @property
    def is_head_site(self) -> bool:
        return self.acts.ndim == 4

    @property
    def module_shape(self) -> tuple[int, ...]:
        """``(n_layers, n_heads)`` for heads, ``(n_layers,)`` for layers."""
        return tuple(self.acts.shape[1:-1])

    @property
    def d(self) -> int:
        return self.acts.shape[-1]

    def flat(self) -> Float[Tensor, "example module d"]:
        """Activations with every module on one axis (layer-major)."""
        return self.acts.reshape(self.acts.shape[0], -1, self.d)

    def select(self, groups) -> "ActivationBank":
        """The examples whose group is in ``groups`` (order kept)."""
        keep = frozenset(groups)
        idx = [i for i, e in enumerate(self.examples) if e.group in keep]
        return replace(self, acts=self.acts[idx], examples=tuple(self.examples[i] for i in idx))

    # --- storage -----------------------------------------------------------
    def save(self, directory) -> Path:
        directory = Path(directory)
        write_tensors(directory / TENSORS_FILE, {"acts": self.acts, "labels": self.labels})
        write_json(
            directory / META_FILE,
            {"meta": self.meta, "examples": [e.__dict__ for e in self.examples]},
        )
        return directory

    @classmethod
    def load(cls, directory) -> "ActivationBank":
        directory = Path(directory)
        if not (directory / TENSORS_FILE).is_file() or not (directory / META_FILE).is_file():
            raise BankError(
                f"{directory} is not an activation bank: expected {TENSORS_FILE} and {META_FILE}; "
                "create one with `real-lens collect --out DIR`"
            )
        try:
            tensors = read_tensors(directory / TENSORS_FILE)
            stored = read_json(directory / META_FILE)
            examples = tuple(Example(**e) for e in stored["examples"])
        except Exception as exc:  # corrupt file: say which, never a raw traceback
            raise BankError(f"activation bank {directory} is unreadable ({exc}); delete it and collect again") from exc
        bank = cls(tensors["acts"], examples, stored["meta"])
        if not torch.equal(tensors["labels"], bank.labels):
            raise BankError(f"activation bank {directory}: labels do not match its examples; collect again")
        return bank
