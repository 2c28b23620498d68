"""The main job: folds × scorers × K × dose on a task → results table, paired tests, null band, figures.

- :mod:`.config`: :class:`ExperimentConfig`, its presets, doses and what val chooses;
- :mod:`.setup`: the task, its evaluation and the side-effect paragraphs, one evaluated cell;
- :mod:`.store`: the run directory, its cached cells and scores, results table and timing;
- :mod:`.loop`: the fold loop (:func:`run_experiment`);
- :mod:`.stats`: summaries, the random null and paired tests, from the pooled arms;
- :mod:`.report`: summary.md, rendered from what the run saved;
- :mod:`.transfer`: a finished run's selections evaluated on another task;
- :mod:`.diagnose`: per head of each method's top K, its first-order and single-head steering effects.
"""

import importlib

from .config import (
    METHODS,
    PRESETS,
    Dose,
    ExperimentConfig,
    config_for,
    dose_groups,
    fit_parts,
    load_config,
    task_slug,
    val_selects,
)

# The rest resolve on first use (PEP 562): the configuration above imports no torch, so the command
# line can build `run`'s options from ExperimentConfig and answer --help at once.
_LAZY = {
    "run_experiment": ".loop", "Setup": ".setup", "evaluate_cell": ".setup", "prepare": ".setup", "prepare_task": ".setup",
    "cached_cell": ".store", "cached_scores": ".store", "start_run_dir": ".store",
    "TransferConfig": ".transfer", "load_source_run": ".transfer", "run_transfer": ".transfer",
    "DiagnoseConfig": ".diagnose", "HeadEffects": ".diagnose", "run_diagnose": ".diagnose",
}
_SUBMODULES = ("config", "setup", "store", "loop", "stats", "report", "shard", "transfer", "diagnose")

__all__ = ["METHODS", "PRESETS", "DiagnoseConfig", "Dose", "ExperimentConfig", "HeadEffects", "Setup", "TransferConfig", "cached_cell", "cached_scores",
           "config_for", "dose_groups", "evaluate_cell", "fit_parts", "load_config", "load_source_run", "prepare", "prepare_task",
           "run_diagnose", "run_experiment", "run_transfer", "start_run_dir", "task_slug", "val_selects"]


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
    elif name in _SUBMODULES:
        value = importlib.import_module(f".{name}", __name__)
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY) | set(_SUBMODULES))
