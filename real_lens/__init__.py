"""real-lens: REAL (ICLR 2026) module localisation and steering on TransformerLens 4.

One import for a whole script::

    import real_lens as rl

    model = rl.load_model("smollm2-135m-instruct")
    task = rl.load_task("truthfulqa")
    bank = rl.collect(model, task)                    # activations [example, layer, head, d_head]
    scores = rl.score(bank, "real")                   # or "iti", "patching", "attribution", "random"
    steering = rl.build_steering(bank, scores.select(16), alpha=15)
    with steering.applied(model):
        print(rl.generate(model, "What happens if you crack your knuckles a lot?"))

Names resolve lazily (PEP 562), so ``import real_lens`` stays light until a name is used.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

# public name -> (module, attribute)
_EXPORTS: dict[str, tuple[str, str]] = {
    # load -> collect -> score -> select -> steer -> generate / evaluate
    "load_model": (".models", "load_model"),
    "load_task": (".tasks", "load_task"),
    "collect": (".activations", "collect_activations"),
    "score": (".scoring", "score_modules"),
    "build_steering": (".steering", "build_steering"),
    "generate": (".api", "generate"),
    "evaluate": (".api", "evaluate"),
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
    "run_experiment": (".experiment", "run_experiment"),
    "load_config": (".configs", "load_config"),
    # the objects those functions return or take
    "ActivationBank": (".bank", "ActivationBank"),
    "Task": (".tasks", "Task"),
    "Example": (".tasks", "Example"),
    "ModuleScores": (".scoring", "ModuleScores"),
    "Selection": (".scoring", "Selection"),
    "strength_rule": (".scoring", "strength_rule"),
    "RealConfig": (".scoring.real", "RealConfig"),
    "ProbeConfig": (".scoring.probe", "ProbeConfig"),
    "PairConfig": (".scoring.pairs", "PairConfig"),
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
    from .configs import load_config
    from .errors import RealLensError
    from .experiment import ExperimentConfig, run_experiment
    from .export import save_lm_eval_steering, to_layer_steering, to_layer_vectors, to_steering_vector
    from .inspection import compare_logits, list_hooks
    from .models import load_model
    from .scoring import ModuleScores, Selection, strength_rule
    from .scoring import score_modules as score
    from .scoring.pairs import PairConfig
    from .scoring.probe import ProbeConfig
    from .scoring.real import RealConfig
    from .steering import Steering, SteeringMismatchError, build_steering
    from .tasks import Example, Task, load_task
