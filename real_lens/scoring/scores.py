"""What every scorer returns: :class:`ModuleScores` (one score per module) and the :class:`Selection` of its top K.

Scores are ``[n_layers, n_heads]`` for head sites and ``[n_layers]`` for layer sites, higher =
more relevant to the behaviour. They are saved as one verified artifact (safetensors + JSON +
manifest, :mod:`real_lens.artifacts`).
"""

from __future__ import annotations

import math
import operator
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..artifacts import ArtifactType, artifact_writer, load_verified
from ..errors import ScoringError, unknown_name_error
from ..hooks import module_label
from ..names import STRENGTHS
from .registry import strength_rule
from ..io import read_json, read_tensors, write_json, write_tensors

SCORES_FILE, SCORES_META_FILE = "scores.safetensors", "scores.json"


SCORES_KIND = "scores"
SCORES_ARTIFACT = ArtifactType(SCORES_KIND, (SCORES_FILE, SCORES_META_FILE), "module scores", ScoringError,
                               "create them with `real-lens score --out DIR`", "score again")
# Files a scores directory may also hold: the heatmap `real-lens score` draws, a run's cache key.
SCORES_EXTRAS = ("heatmap.png", "key.json")


@dataclass(frozen=True)
class Selection:
    """Kept modules, best first, with their steering strengths.

    ``modules`` are ``(layer, head)`` pairs, or ``(layer, None)`` for layer sites.
    """

    modules: tuple[tuple[int, int | None], ...]
    strengths: tuple[float, ...]
    method: str

    @property
    def labels(self) -> list[str]:
        return [module_label(layer, head) for layer, head in self.modules]


@dataclass(frozen=True)
class ModuleScores:
    scores: Tensor
    method: str
    config: dict[str, Any] = field(default_factory=dict)
    diagnostics: dict[str, Tensor] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        if self.scores.ndim not in (1, 2):
            raise ScoringError(f"scores must be [n_layers, n_heads] or [n_layers]; found {tuple(self.scores.shape)}")
        for name, value in self.diagnostics.items():
            if tuple(value.shape) != tuple(self.scores.shape):
                raise ScoringError(
                    f"diagnostic {name!r} has shape {tuple(value.shape)}; expected the scores' shape "
                    f"{tuple(self.scores.shape)}"
                )

    @property
    def n_modules(self) -> int:
        return self.scores.numel()

    def _module(self, flat_index: int) -> tuple[int, int | None]:
        if self.scores.ndim == 1:
            return flat_index, None
        n_heads = self.scores.shape[1]
        return flat_index // n_heads, flat_index % n_heads

    @property
    def tie_break(self) -> str | None:
        """The diagnostic that orders modules with equal scores (higher first), or None (module index).

        A scorer names it in ``meta["tie_break"]`` (ITI: ``"val_auc"``, since dozens of probes reach val
        accuracy 1.000 on a small task); it is used only where the scores carry that diagnostic."""
        name = self.meta.get("tie_break")
        return name if isinstance(name, str) and name in self.diagnostics else None

    def _order(self) -> Tensor:
        """Flat module indices, best first: by score, then by the :attr:`tie_break` diagnostic (higher
        first; NaN last), then by module index — one rule for every method."""
        order = torch.arange(self.n_modules)
        if self.tie_break is not None:
            secondary = self.diagnostics[self.tie_break].flatten().double().nan_to_num(nan=-math.inf)
            order = torch.argsort(-secondary, stable=True)
        return order[torch.argsort(-self.scores.flatten().double()[order], stable=True)]

    def ranking(self) -> list[tuple[int, int | None]]:
        """All modules, best first (ties broken by :attr:`tie_break`, then by module index, so it is deterministic)."""
        return [self._module(int(i)) for i in self._order()]

    @property
    def n_tied_at_top(self) -> int:
        """How many modules share the best score (1 when one module stands alone)."""
        flat = self.scores.flatten().double()
        return int((flat == flat.max()).sum()) if flat.numel() else 0

    def ties_at(self, k: int) -> dict[str, Any]:
        """Whether the top ``k`` is decided by a tie: ``n_tied`` modules share the k-th score, ``n_inside`` of
        them are in the top ``k``; ``decided_by_ties`` when some are left out, which then only the
        tie-break (``broken_by``: the :attr:`tie_break` diagnostic, or module index) chose."""
        flat = self.scores.flatten().double()
        order = self._order()
        kth = flat[order[k - 1]]
        tied = flat == kth
        n_tied, n_inside = int(tied.sum()), int(tied[order[:k]].sum())
        return {"k": k, "score": float(kth), "n_tied": n_tied, "n_inside": n_inside,
                "decided_by_ties": n_tied > n_inside, "broken_by": self.tie_break or "module index"}

    def select(self, k: int, *, strengths: str = "method") -> Selection:
        """The ``k`` best modules with their steering strengths (METHOD.md §4), in :meth:`ranking`'s order
        (equal scores ordered by the :attr:`tie_break` diagnostic, then by module index).

        ``strengths``: ``"method"`` (default) applies this method's own rule,
        :func:`strength_rule`: REAL and its variants (every method named ``real*``) steer with
        score / max kept score, every other method (ITI, patching, attribution, random) with 1.
        ``"score"`` or ``"uniform"`` force one rule for any method.
        """
        if strengths not in STRENGTHS:
            raise unknown_name_error("strengths rule", strengths, STRENGTHS)
        rule = strength_rule(self.method) if strengths == "method" else strengths
        try:
            k = operator.index(k)
        except TypeError:
            raise ScoringError(f"k (the number of modules to keep) must be an integer; got {k!r}") from None
        if not 1 <= k <= self.n_modules:
            raise ScoringError(f"k must be between 1 and the number of modules ({self.n_modules}); got {k} "
                               "(k is the number of modules to keep)")
        flat = self.scores.flatten().double()
        order = self._order()[:k]
        kept = flat[order]
        if rule == "uniform":
            values = torch.ones_like(kept)
        else:
            if not kept.max() > 0:
                raise ScoringError(
                    f"{self.method} scores of the top {k} modules are all <= 0, so score/max strengths "
                    "are undefined; use uniform strengths (select(k, strengths='uniform'))"
                )
            values = (kept / kept.max()).clamp(min=0.0)
        return Selection(
            tuple(self._module(int(i)) for i in order),
            tuple(float(s) for s in values),
            self.method,
        )

    def top_k(self, k: int, *, uniform: bool = False) -> Selection:
        """Deprecated: ``select(k, strengths="score")`` (or ``strengths="uniform"``); :meth:`select` is the one
        spelling of top-K and, by default, applies the method's own strength rule."""
        warnings.warn("ModuleScores.top_k is deprecated and will be removed in the next release; use "
                      "select(k) (the method's own strengths) or select(k, strengths='score'|'uniform')",
                      DeprecationWarning, stacklevel=2)
        return self.select(k, strengths="uniform" if uniform else "score")

    # --- storage -----------------------------------------------------------
    def save(self, directory, *, extra_json: dict[str, Any] | None = None) -> Path:
        """Publish the scores at ``directory`` as one verified artifact (safetensors + JSON + manifest).

        ``extra_json``: more JSON files (name -> object) committed with them, e.g. a run's cache key."""
        directory = Path(directory)
        tensors = {"scores": self.scores, **{f"diag.{k}": v for k, v in self.diagnostics.items()}}
        with artifact_writer(directory, kind=SCORES_KIND, replaces={SCORES_FILE, SCORES_META_FILE, *SCORES_EXTRAS}) as staging:
            write_tensors(staging / SCORES_FILE, tensors)
            write_json(staging / SCORES_META_FILE, {"method": self.method, "config": self.config, "meta": self.meta})
            for name, obj in (extra_json or {}).items():
                write_json(staging / name, obj)
        return directory

    @classmethod
    def load(cls, directory, *, allow_unverified: bool = False) -> "ModuleScores":
        """The scores saved at ``directory``, after checking their manifest (ScoringError if anything is off).

        Scores written before manifests existed are read with a notice only when ``allow_unverified``
        (the CLI's ``--allow-unverified``); refused by default, since a deleted manifest would otherwise hide
        any damage."""
        return load_verified(directory, SCORES_ARTIFACT, read=cls._read, allow_unverified=allow_unverified)

    @classmethod
    def _read(cls, directory: Path) -> "ModuleScores":
        try:
            tensors = read_tensors(directory / SCORES_FILE)
            stored = read_json(directory / SCORES_META_FILE)
            diagnostics = {k[len("diag."):]: v for k, v in tensors.items() if k.startswith("diag.")}
            return cls(tensors["scores"], stored["method"], stored["config"], diagnostics, stored["meta"])
        except ScoringError:
            raise
        except Exception as exc:  # corrupt file: say which, never a raw traceback
            raise ScoringError(f"module scores {directory} are unreadable ({exc}); score again") from exc
