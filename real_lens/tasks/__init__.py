"""Behaviour datasets → labelled, grouped examples.

``load_task(name)`` with ``name`` one of :data:`TASKS` or ``file:<path>``.
"""

from __future__ import annotations

from functools import partial
from typing import Callable

from ..errors import unknown_name_error
from .base import ALIGNED, VIOLATING, Example, Fold, Task, make_folds
from .caa import BEHAVIOURS as CAA_BEHAVIOURS
from .caa import load_caa
from .files import load_file_task
from .nq_swap import load_nq_swap
from .truthfulqa import load_truthfulqa

TASKS: dict[str, Callable[..., Task]] = {
    "truthfulqa": load_truthfulqa,
    "nq-swap": load_nq_swap,
    "nq-swap-memory": partial(load_nq_swap, direction="memory"),
    **{f"caa:{b}": partial(load_caa, b) for b in CAA_BEHAVIOURS},
}
TASK_DESCRIPTIONS = {
    "truthfulqa": "TruthfulQA MC (817 questions), the paper's 2-fold splits",
    "nq-swap": "NQ-Swap knowledge conflicts (1,667 questions): steer towards the substituted context",
    "nq-swap-memory": "NQ-Swap, steering towards parametric memory (original answer aligned)",
    **{f"caa:{b}": f"CAA {b} A/B (generate set -> train/val, 50-item A/B test set)" for b in CAA_BEHAVIOURS},
    "file:<path>": "your own CSV/JSONL: prompt,aligned,violating[,group] or prompt,answer,label,group",
}


def load_task(name: str, *, data_dir=None) -> Task:
    if name.startswith("file:"):
        return load_file_task(name[len("file:"):])
    if name not in TASKS:
        raise unknown_name_error("task", name, [*TASKS, "file:<path>"])
    return TASKS[name](data_dir=data_dir)


__all__ = [
    "ALIGNED", "VIOLATING", "Example", "Fold", "Task", "TASKS", "TASK_DESCRIPTIONS",
    "load_task", "make_folds",
]
