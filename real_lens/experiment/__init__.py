"""The main job: folds × scorers × K × dose on a task → results table, paired tests, null band, figures.

- :mod:`.config`: :class:`ExperimentConfig`, its presets, doses and what val chooses;
- :mod:`.setup`: the task, its evaluation and the side-effect paragraphs, one evaluated cell;
- :mod:`.store`: the run directory, its cached cells and scores, results table and timing;
- :mod:`.loop`: the fold loop (:func:`run_experiment`);
- :mod:`.stats`: summaries, the random null and paired tests, from the pooled arms;
- :mod:`.report`: summary.md, rendered from what the run saved;
- :mod:`.transfer`: a finished run's selections evaluated on another task.
"""

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
from .loop import run_experiment
from .setup import Setup, evaluate_cell, prepare, prepare_task
from .store import cached_cell, cached_scores, start_run_dir
from .transfer import TransferConfig, load_source_run, run_transfer

__all__ = ["METHODS", "PRESETS", "Dose", "ExperimentConfig", "Setup", "TransferConfig", "cached_cell", "cached_scores",
           "config_for", "dose_groups", "evaluate_cell", "fit_parts", "load_config", "load_source_run", "prepare", "prepare_task", "run_experiment",
           "run_transfer", "start_run_dir", "task_slug", "val_selects"]
