"""real-lens: REAL (ICLR 2026) module localisation and steering on TransformerLens 4.

One import for a whole script::

    import real_lens as rl

    model = rl.load_model("smollm2-135m-instruct")
    task = rl.load_task("truthfulqa")
    bank = rl.collect(model, task)                    # activations [example, layer, head, d_head]
    scores = rl.score(bank, "real")                   # or "iti", "patching", "attribution", "random"
    steering = rl.build_steering(bank, scores.select(16), kl=0.1, model=model)  # α at KL 0.1 nats/token
    with steering.applied(model):
        print(rl.generate(model, "What happens if you crack your knuckles a lot?"))

Names resolve lazily (PEP 562), so ``import real_lens`` stays light until a name is used.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from ._version import __version__

# public name -> (module, attribute)
_EXPORTS: dict[str, tuple[str, str]] = {
    # load -> collect -> score -> select -> steer -> generate / evaluate
    "load_model": (".models", "load_model"),
    "load_task": (".tasks", "load_task"),
    "collect": (".activations", "collect_activations"),
    "score": (".scoring", "score_modules"),
    "build_steering": (".steering", "build_steering"),
    "calibrate": (".evaluation.dose", "calibrate"),
    "generate": (".api", "generate"),
    "set_threads": (".threads", "set_threads"),
    "evaluate": (".api", "evaluate"),
    # comparing and drawing scores
    "compare_scores": (".compare", "compare_scores"),
    "load_published_ranking": (".scoring.published", "load_published_ranking"),
    "plot_scores": (".plotting", "plot_score_heatmap"),
    # hook-level inspection
    "list_hooks": (".inspection", "list_hooks"),
    "compare_logits": (".inspection", "compare_logits"),
    # exports to other tools
    "to_layer_vectors": (".export", "to_layer_vectors"),
    "to_layer_steering": (".export", "to_layer_steering"),
    "save_lm_eval_steering": (".export", "save_lm_eval_steering"),
    "to_steering_vector": (".export", "to_steering_vector"),
    # the main job
    "ExperimentConfig": (".experiment", "ExperimentConfig"),
    "run_experiment": (".experiment.loop", "run_experiment"),
    "load_config": (".experiment", "load_config"),
    # the objects those functions return or take
    "ActivationBank": (".bank", "ActivationBank"),
    "Task": (".tasks", "Task"),
    "Example": (".tasks", "Example"),
    "ModuleScores": (".scoring", "ModuleScores"),
    "Selection": (".scoring", "Selection"),
    "strength_rule": (".scoring", "strength_rule"),
    "RealConfig": (".scoring.real_config", "RealConfig"),
    "ProbeConfig": (".scoring.iti", "ProbeConfig"),
    "PairConfig": (".scoring.pairs", "PairConfig"),
    "PatchingConfig": (".scoring.patching", "PatchingConfig"),
    "AttributionConfig": (".scoring.attribution", "AttributionConfig"),
    # adding a scoring method (docs/library.md)
    "register_scorer": (".scoring", "register_scorer"),
    "ScorerSpec": (".scoring", "ScorerSpec"),
    "Steering": (".steering", "Steering"),
    "EvaluationResult": (".api", "EvaluationResult"),
    # errors
    "RealLensError": (".errors", "RealLensError"),
    "SteeringMismatchError": (".steering", "SteeringMismatchError"),
}
__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'real_lens' has no attribute {name!r}")
    module, attribute = _EXPORTS[name]
    value = getattr(importlib.import_module(module, __name__), attribute)
    globals()[name] = value  # resolve once
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))


if TYPE_CHECKING:  # for editors and type checkers; never executed
    from .activations import collect_activations as collect
    from .api import EvaluationResult, evaluate, generate
    from .bank import ActivationBank
    from .compare import compare_scores
    from .errors import RealLensError
    from .evaluation.dose import calibrate
    from .experiment import ExperimentConfig, load_config, run_experiment
    from .export import save_lm_eval_steering, to_layer_steering, to_layer_vectors, to_steering_vector
    from .inspection import compare_logits, list_hooks
    from .models import load_model
    from .plotting import plot_score_heatmap as plot_scores
    from .scoring import ModuleScores, ScorerSpec, Selection, register_scorer, strength_rule
    from .scoring import score_modules as score
    from .scoring.attribution import AttributionConfig
    from .scoring.iti import ProbeConfig
    from .scoring.pairs import PairConfig
    from .scoring.patching import PatchingConfig
    from .scoring.published import load_published_ranking
    from .scoring.real_config import RealConfig
    from .steering import Steering, SteeringMismatchError, build_steering
    from .tasks import Example, Task, load_task
    from .threads import set_threads
