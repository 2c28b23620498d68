"""The steps of a script that have no single home elsewhere: steered generation and task evaluation.

Everything else the public API offers lives in its own module and is re-exported from
:mod:`real_lens` (see its ``__init__``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import RealLensError
from .evaluation.forward import SteeringLike, steering_context

SPLITS = ("train", "val", "test")


def generate(model, prompt: str, *, steering: SteeringLike | None = None, max_new_tokens: int = 64,
             chat: bool | None = None) -> str:
    """Greedy continuation of ``prompt`` (chat template when the model has one), steered if given."""
    from .generation import generate_text

    with steering_context(model, steering):
        return generate_text(model, prompt, max_new_tokens=max_new_tokens, chat=chat)


@dataclass(frozen=True)
class EvaluationResult:
    """A task's own metrics on the questions of one fold part: means and per-item values."""

    task: str
    fold: int
    split: str
    metrics: dict[str, float]  # mean per metric; the first is the task's selection metric
    per_item: dict[str, np.ndarray]
    groups: tuple[str, ...]  # the question of each item

    def __str__(self) -> str:
        values = ", ".join(f"{m} {v:.4f}" for m, v in self.metrics.items())
        return (f"{self.task} fold {self.fold} {self.split} ({len(set(self.groups))} questions, "
                f"{len(self.groups)} items): {values}")


def evaluate(model, task, steering: SteeringLike | None = None, *, fold: int = 0, split: str = "test",
             max_questions: int | None = None, seed: int = 0, progress: bool = True) -> EvaluationResult:
    """The task's own evaluation (TruthfulQA MC2/MC1, NQ-Swap EM, CAA p(aligned), or MC2's rule on a
    ``file:`` task) on fold ``fold``'s ``split`` questions; a seeded sample of ``max_questions``.

    The same items and metrics the main job reports for that fold part (``real-lens run``).
    """
    from .evaluation.suite import eval_items, evaluation_for

    if split not in SPLITS:
        raise RealLensError(f"split must be one of {SPLITS}; got {split!r}")
    if not 0 <= fold < len(task.folds):
        raise RealLensError(f"task {task.name!r} has {len(task.folds)} fold(s) (0..{len(task.folds) - 1}); got fold {fold}")
    evaluation = evaluation_for(task)
    items = eval_items(evaluation, task, getattr(task.folds[fold], split), max_questions, seed)
    if not items:
        raise RealLensError(f"fold {fold} of task {task.name!r} has no {split} questions to evaluate")
    values = evaluation.evaluate(model, items, steering, progress=progress)
    return EvaluationResult(
        task=task.name, fold=fold, split=split,
        metrics={m: float(np.mean(v)) for m, v in values.items()}, per_item=values,
        groups=tuple(evaluation.group_of(i) for i in items),
    )
