"""Module scorers under one interface.

Every scorer returns a :class:`ModuleScores` (:mod:`.scores`): one score per module, higher =
more relevant to the behaviour. What each method is — its function, options, whether it needs
the model or splits over torchrun ranks, its steering-strength rule — is one
:class:`~.registry.ScorerSpec` in :data:`SCORERS` (:mod:`.registry`). Call any of them through
:func:`score_modules`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from ..errors import ScoringError
from .registry import SCORERS, ScorerSpec, get_scorer, method_names, register_scorer, scorer_spec, strength_rule
from .scores import SCORES_EXTRAS, SCORES_FILE, SCORES_KIND, SCORES_META_FILE, STRENGTHS, ModuleScores, Selection

__all__ = ["SCORERS", "SCORES_EXTRAS", "SCORES_FILE", "SCORES_KIND", "SCORES_META_FILE", "STRENGTHS", "ModuleScores",
           "ScorerSpec", "Selection", "get_scorer", "method_names", "register_scorer", "score_modules", "scorer_spec",
           "strength_rule"]


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
    spec = scorer_spec(method)
    kwargs: dict[str, Any] = {}
    if spec.progress:
        kwargs["progress"] = progress
    cfg = scorer_config(spec, options)
    if cfg is not None:
        kwargs["cfg"] = cfg
    scores = spec.score(bank, model=model, seed=seed, device=device, **kwargs)
    # Every method records how many modules share its top score (a small task ties easily; ModuleScores.ties_at).
    return dataclasses.replace(scores, meta={**scores.meta, "n_tied_at_top": scores.n_tied_at_top})


def scorer_config(spec: ScorerSpec, options: dict[str, Any]):
    """The config object ``options`` ask ``spec``'s method for (None: the method's defaults)."""
    options = dict(options)
    if options.get("cfg", ...) is None:  # cfg=None: the method's defaults
        del options["cfg"]
    if not options:
        return None
    if spec.config is None:
        raise ScoringError(f"scoring method {spec.name!r} takes no options; got {sorted(options)}")
    if "cfg" in options:
        cfg = options.pop("cfg")
        if options:
            raise ScoringError(f"give either cfg= or {spec.config.__name__} fields, not both; got cfg and {sorted(options)}")
        if not isinstance(cfg, spec.accepts):
            raise ScoringError(f"{spec.name} expects cfg to be a {spec.accepts.__name__}; found {type(cfg).__name__}")
        return cfg
    known = {f.name for f in dataclasses.fields(spec.config)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise ScoringError(f"{spec.name}: unknown option(s) {unknown}; {spec.config.__name__} has: {', '.join(sorted(known))}")
    return spec.config(**options)
