"""Module scorers under one interface.

Every scorer returns a :class:`ModuleScores`: one score per module (``[n_layers, n_heads]``
for head sites, ``[n_layers]`` for layer sites), higher = more relevant to the behaviour.
Scorers register themselves by name in :data:`SCORERS`; look them up with :func:`get_scorer`.
"""

from __future__ import annotations

import dataclasses
import inspect
import operator
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol, runtime_checkable

import torch
from torch import Tensor

from ..errors import ArtifactError, ArtifactMissingError, ScoringError, unknown_name_error
from ..hooks import module_label
from ..artifacts import artifact_writer, load_artifact
from ..io import read_json, read_tensors, write_json, write_tensors

SCORES_FILE, SCORES_META_FILE = "scores.safetensors", "scores.json"
STRENGTHS = ("method", "score", "uniform")


def strength_rule(method: str) -> str:
    """How a method's kept modules are weighted when steering (METHOD.md §4).

    ``"score"`` (score / max kept score) for REAL and every variant of it (methods named
    ``real*``, e.g. ``real-release``); ``"uniform"`` (1 for every module) for every other method,
    as ITI does.
    """
    return "score" if method.startswith("real") else "uniform"
SCORES_KIND = "scores"
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

    def ranking(self) -> list[tuple[int, int | None]]:
        """All modules, best first (ties broken by module index, so it is deterministic)."""
        order = torch.argsort(-self.scores.flatten().double(), stable=True)
        return [self._module(int(i)) for i in order]

    def select(self, k: int, *, strengths: str = "method") -> Selection:
        """The ``k`` best modules with their steering strengths (METHOD.md §4).

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
        order = torch.argsort(-flat, stable=True)[:k]
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
        """The ``k`` best modules with score/max strengths, or 1 if ``uniform``, whatever the method.

        Prefer :meth:`select`, which applies the method's own strength rule.
        """
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
    def load(cls, directory, *, allow_unverified: bool = True) -> "ModuleScores":
        """The scores saved at ``directory``, after checking their manifest (ScoringError if anything is off).

        Scores written before manifests existed are read with a notice when ``allow_unverified``."""
        directory = Path(directory)
        try:
            return load_artifact(directory, kind=SCORES_KIND, read=cls._read, legacy_files=(SCORES_FILE, SCORES_META_FILE),
                                 allow_unverified=allow_unverified, what="the scores")
        except ArtifactMissingError as exc:
            raise ScoringError(
                f"{directory} holds no module scores{f' ({exc})' if str(exc) else ''}: expected {SCORES_FILE} and {SCORES_META_FILE}; "
                "create them with `real-lens score --out DIR`"
            ) from None
        except ArtifactError as exc:
            raise ScoringError(f"module scores {directory} are unreadable: {exc}; score again") from exc

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


@runtime_checkable
class Scorer(Protocol):
    """``scorer(bank, *, model=None, seed=0, device=None[, cfg=...][, progress=...]) -> ModuleScores``.

    Model-free scorers ignore ``model``; patching-style scorers require it. A scorer with
    options takes them as one frozen dataclass ``cfg`` (its annotation names the class, which
    :func:`scorer_config_class` reads); a scorer with long loops takes ``progress``.
    Call any of them through :func:`score_modules`.
    """

    def __call__(self, bank, *, model=None, seed: int = 0, device=None) -> ModuleScores: ...


SCORERS: dict[str, Scorer] = {}


def register_scorer(name: str) -> Callable[[Scorer], Scorer]:
    def register(fn: Scorer) -> Scorer:
        SCORERS[name] = fn
        return fn

    return register


def get_scorer(name: str) -> Scorer:
    _import_builtin_scorers()
    if name not in SCORERS:
        raise unknown_name_error("scoring method", name, SCORERS)
    return SCORERS[name]


def _import_builtin_scorers() -> None:
    """Import the built-in scorer modules so they register (lazy: keeps imports light)."""
    import importlib

    for module in ("real", "probe", "patching", "attribution", "random"):
        try:
            importlib.import_module(f"{__name__}.{module}")
        except ModuleNotFoundError as exc:
            if exc.name != f"{__name__}.{module}":
                raise


def scorer_config_class(name: str) -> type | None:
    """The frozen dataclass of a scorer's options (from its ``cfg`` annotation), or None if it has none."""
    scorer = get_scorer(name)
    parameter = inspect.signature(scorer).parameters.get("cfg")
    if parameter is None:
        return None
    hint = typing.get_type_hints(scorer).get("cfg")
    candidates = typing.get_args(hint) or (hint,)  # `X | None` -> (X, NoneType)
    classes = [c for c in candidates if dataclasses.is_dataclass(c)]
    if len(classes) != 1:  # a programming error in a scorer, not a user mistake
        raise TypeError(f"scorer {name!r}: annotate cfg with one config dataclass (optionally | None); found {hint!r}")
    return classes[0]


def score_modules(
    bank, method: str, *, model=None, seed: int = 0, device=None, progress: bool = True, **options
) -> ModuleScores:
    """Score every module of ``bank`` with ``method`` — the one calling convention for every scorer.

    ``options`` are either ``cfg=<the method's config>`` or that config's fields by name, e.g.
    ``score_modules(bank, "real", vq_epochs=5, n_codes=16)`` or
    ``score_modules(bank, "patching", model=model, n_pairs=16)``; a method without options
    (``random``) takes none. ``model`` is needed by the patching-style methods and ignored by
    the others. ``progress`` shows a progress bar where the scorer has long loops.
    """
    scorer = get_scorer(method)
    config_class = scorer_config_class(method)
    kwargs: dict[str, Any] = {}
    if options.get("cfg", ...) is None:  # cfg=None: the method's defaults
        del options["cfg"]
    if options:
        if config_class is None:
            raise ScoringError(f"scoring method {method!r} takes no options; got {sorted(options)}")
        if "cfg" in options:
            cfg = options.pop("cfg")
            if options:
                raise ScoringError(f"give either cfg= or {config_class.__name__} fields, not both; got cfg and {sorted(options)}")
            if not isinstance(cfg, config_class):
                raise ScoringError(f"{method} expects cfg to be a {config_class.__name__}; found {type(cfg).__name__}")
        else:
            known = {f.name for f in dataclasses.fields(config_class)}
            unknown = sorted(set(options) - known)
            if unknown:
                raise ScoringError(
                    f"{method}: unknown option(s) {unknown}; {config_class.__name__} has: {', '.join(sorted(known))}"
                )
            cfg = config_class(**options)
        kwargs["cfg"] = cfg
    if "progress" in inspect.signature(scorer).parameters:
        kwargs["progress"] = progress
    return scorer(bank, model=model, seed=seed, device=device, **kwargs)
