"""ActivationBank: the labelled activations of every module for one task.

Stored as ``acts.safetensors`` (activations, labels) + ``bank.json`` (examples, metadata) +
``manifest.json`` (each file's size and SHA-256), published as one directory
(:func:`real_lens.io.artifact_writer`) and verified when loaded.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from . import hooks
from .errors import BankError
from .artifacts import ArtifactType, artifact_writer, load_verified
from .io import read_json, read_tensors, write_json, write_tensors
from .tasks.base import Example

TENSORS_FILE, META_FILE = "acts.safetensors", "bank.json"
KIND = "bank"
BANK_ARTIFACT = ArtifactType(KIND, (TENSORS_FILE, META_FILE), "an activation bank", BankError,
                             "create one with `real-lens collect --out DIR`", "collect it again")


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

    @cached_property
    def digest(self) -> str:
        """SHA-256 of the bank's content (activations, examples, metadata): what scores and steering
        record as the bank they came from. Equal for a bank and its saved-and-loaded copy."""
        digest = hashlib.sha256(b"real-lens-bank/1")
        acts = self.acts.detach().cpu().float().contiguous()
        digest.update(json.dumps([list(acts.shape), [e.__dict__ for e in self.examples], self.meta],
                                 sort_keys=True).encode())
        digest.update(acts.view(torch.uint8).numpy().data if acts.numel() else b"")
        return digest.hexdigest()

    # --- storage -----------------------------------------------------------
    def save(self, directory, *, replaces=()) -> Path:
        """Publish the bank at ``directory`` as one verified artifact (a previous bank there is replaced
        whole; a directory holding anything else is refused). ``replaces=None``: a cache folder."""
        directory = Path(directory)
        with artifact_writer(directory, kind=KIND, replaces=None if replaces is None else {TENSORS_FILE, META_FILE, *replaces}) as staging:
            write_tensors(staging / TENSORS_FILE, {"acts": self.acts, "labels": self.labels})
            write_json(staging / META_FILE, {"meta": self.meta, "examples": [e.__dict__ for e in self.examples]})
        return directory

    @classmethod
    def load(cls, directory, *, allow_unverified: bool = False) -> "ActivationBank":
        """The bank saved at ``directory``, after checking its manifest (BankError if anything is off).

        A bank written before manifests existed is read with a notice only when ``allow_unverified``
        (the CLI's ``--allow-unverified``); refused by default, since a deleted manifest would otherwise hide
        any damage."""
        return load_verified(directory, BANK_ARTIFACT, read=cls._read, allow_unverified=allow_unverified)

    @classmethod
    def _read(cls, directory: Path) -> "ActivationBank":
        try:
            tensors = read_tensors(directory / TENSORS_FILE)
            stored = read_json(directory / META_FILE)
            examples = tuple(Example(**e) for e in stored["examples"])
            bank = cls(tensors["acts"], examples, stored["meta"])
        except Exception as exc:  # corrupt file: say which, never a raw traceback
            raise BankError(f"activation bank {directory} is unreadable ({exc}); delete it and collect again") from exc
        if not torch.equal(tensors["labels"], bank.labels):
            raise BankError(f"activation bank {directory}: labels do not match its examples; collect again")
        return bank
