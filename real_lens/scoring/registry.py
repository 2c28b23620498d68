"""The one table of scorers: what each method is, read by the API, the CLI, the main job and torchrun.

A scorer is a function ``score(bank, *, model=None, seed=0, device=None[, cfg=...][, modules=...]
[, progress=...]) -> ModuleScores`` plus one :class:`ScorerSpec` that says everything the rest of
real-lens needs to know about it, so nothing is guessed from signatures::

    @register_scorer("my-method", config=MyConfig, needs_model=False, shardable=True)
    def score_my_method(bank, *, model=None, seed=0, device=None, cfg=None, modules=None): ...

Adding a scorer = one new file in this package holding the function and its ``register_scorer``
line, plus its module name in :data:`BUILTIN_MODULES` (or, outside real-lens, an entry point in
the ``real_lens.scorers`` group). ``docs/library.md`` shows a complete example.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any, Callable

from ..errors import unknown_name_error

STRENGTH_RULES = ("score", "uniform")
# The scorer modules shipped with real-lens, imported (so they register) on the first look-up.
BUILTIN_MODULES = ("real", "iti", "patching", "attribution", "direction_attribution", "random", "published")
ENTRY_POINT_GROUP = "real_lens.scorers"


@dataclass(frozen=True)
class ScorerSpec:
    """Everything real-lens knows about one scoring method.

    - ``score``: the function (see the module docstring for its signature).
    - ``config``: the frozen dataclass of its options (``cfg=``), or None when it takes none;
      ``accepts``: the config family ``cfg=`` may be an instance of (default: ``config``).
    - ``needs_model``: runs the model (patching-style), so a bank alone cannot score it.
    - ``shardable``: takes ``modules=`` (flat module indices) and so splits over torchrun ranks;
      ``every_rank``: so cheap that every rank computes it whole instead.
    - ``progress``: takes ``progress=`` (it has loops long enough for a bar).
    - ``strength``: how its kept modules are weighted when steering (METHOD.md §4): ``"score"``
      (score / max kept score, REAL) or ``"uniform"`` (1 each, as ITI does).
    - ``experiment_settings``: the :class:`~real_lens.experiment.ExperimentConfig` fields only this
      scorer reads; they enter the cache digests of this method's cells only.
      ``experiment_options``: builds its ``score_modules`` options from an ExperimentConfig.
    - ``from_file``: its scores are read from a file its config names (``real-published``: a ranking
      the REAL authors published), not computed from the activations; the bank only checks the shape.
      Such a method fits nothing and needs no seed, but is called like every scorer. Its files differ
      per fold, so its ``experiment_options`` is called as ``experiment_options(experiment, fold)``.
    """

    name: str
    score: Callable[..., Any]
    config: type | None = None
    accepts: type | None = None
    needs_model: bool = False
    shardable: bool = False
    every_rank: bool = False
    progress: bool = False
    strength: str = "uniform"
    experiment_settings: tuple[str, ...] = ()
    experiment_options: Callable[[Any], dict] | None = None
    from_file: bool = False

    def __post_init__(self):
        if self.strength not in STRENGTH_RULES:
            raise ValueError(f"scorer {self.name!r}: strength must be one of {STRENGTH_RULES}; got {self.strength!r}")
        if self.accepts is None and self.config is not None:
            object.__setattr__(self, "accepts", self.config)

    def options_for(self, experiment, fold: int = 0) -> dict:
        """The ``score_modules`` options the main job passes for ``experiment`` (an ExperimentConfig) in ``fold``."""
        if not self.experiment_options:
            return {}
        return self.experiment_options(experiment, fold) if self.from_file else self.experiment_options(experiment)


SCORERS: dict[str, ScorerSpec] = {}


def register_scorer(name: str, **spec) -> Callable:
    """Decorator: register the decorated function as scoring method ``name`` (``spec``: :class:`ScorerSpec` fields)."""

    def register(fn):
        SCORERS[name] = ScorerSpec(name, fn, **spec)
        return fn

    return register


def scorer_spec(name: str) -> ScorerSpec:
    """The registered :class:`ScorerSpec` of ``name``; a one-line error listing the known methods otherwise."""
    _import_scorers()
    if name not in SCORERS:
        raise unknown_name_error("scoring method", name, SCORERS)
    return SCORERS[name]


def get_scorer(name: str) -> Callable[..., Any]:
    """The scoring function of ``name`` (call it through :func:`~real_lens.scoring.score_modules`)."""
    return scorer_spec(name).score


def method_names() -> tuple[str, ...]:
    """Every registered method, built-ins first in :data:`BUILTIN_MODULES` order."""
    _import_scorers()
    return tuple(SCORERS)


def strength_rule(method: str) -> str:
    """How ``method``'s kept modules are weighted when steering: its spec's ``strength``.

    A method no scorer here registers (scores saved by another tool or version) follows the naming
    convention the built-ins keep: ``"score"`` for ``real*`` methods, ``"uniform"`` otherwise."""
    _import_scorers()
    if method in SCORERS:
        return SCORERS[method].strength
    return "score" if method.startswith("real") else "uniform"


_imported = False


def _import_scorers() -> None:
    """Import the built-in scorer modules (and installed plug-ins) once, so they register."""
    global _imported
    if _imported:
        return
    _imported = True
    for module in BUILTIN_MODULES:
        importlib.import_module(f"{__package__}.{module}")
    for entry in entry_points(group=ENTRY_POINT_GROUP):
        entry.load()
