"""What a run needs before scoring, and one evaluated cell.

:func:`prepare` loads the (sampled) task, its evaluation and the WikiText-2 paragraphs (those that
report CE/KL and, held apart, those that calibrate α), checking everything before the model is
loaded. :func:`evaluate_cell` evaluates one steering (or none) on a fold part's items;
:func:`length_only_cell` is the content-blind reference on the same test questions.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import RealLensError
from ..evaluation import evaluate_side_effects
from ..evaluation.dose import held_apart_texts
from ..evaluation.suite import TaskEvaluation, evaluation_for
from ..models import load_model, parse_device_map
from ..tasks import Task, load_task
from ..tasks.truthfulqa import DEFAULT_MC_PROMPT
from .config import ExperimentConfig


@dataclass
class Setup:
    """What a run needs before scoring: the model, the (sampled) task, its evaluation, side-effect texts."""

    model: Any
    task: Task
    evaluation: TaskEvaluation
    select_metric: str
    folds: tuple[int, ...]
    texts: list[str]  # WikiText-2 paragraphs that report CE and KL
    mc_prompt: str = DEFAULT_MC_PROMPT
    calibration: list[str] = field(default_factory=list)  # other paragraphs, that calibrate α to a KL target
    side_effect_tokens: int = 128
    _kl_reference: Any = None

    def kl_reference(self):
        """The unsteered log-probs on the calibration paragraphs, computed once and shared by every calibration."""
        if self._kl_reference is None:
            from ..evaluation.dose import prepare_kl_reference

            self._kl_reference = prepare_kl_reference(self.model, self.calibration, max_tokens=self.side_effect_tokens)
        return self._kl_reference


def prepare(cfg: ExperimentConfig, *, task_name: str | None = None, model=None, device: str | None = None) -> Setup:
    """The task (``cfg.task`` unless named), checked against ``cfg`` before the model (unless given) is loaded
    on ``device`` (default ``cfg.device``; under torchrun, the rank's own)."""
    task, evaluation, metric, folds = prepare_task(cfg, task_name=task_name)
    texts, calibration = side_effect_texts(cfg)
    model = model if model is not None else load_model(cfg.model, device=cfg.device if device is None else device,
                                                       dtype=cfg.dtype, device_map=parse_device_map(cfg.device_map))
    return Setup(model, task, evaluation, metric, folds, texts, cfg.mc_prompt, calibration, cfg.side_effect_tokens)


def side_effect_texts(cfg: ExperimentConfig) -> tuple[list[str], list[str]]:
    """``(report, calibration)`` WikiText-2 paragraphs (:func:`~real_lens.evaluation.dose.held_apart_texts`):
    ``side_effect_texts`` that report CE/KL and, when doses are KL targets, ``calibration_texts`` others
    that choose α."""
    return held_apart_texts(cfg.data_dir, n_report=cfg.side_effect_texts,
                            n_calibration=cfg.calibration_texts if cfg.kl_grid else 0,
                            max_tokens=cfg.side_effect_tokens, seed=cfg.seed)


def prepare_task(cfg: ExperimentConfig, *, task_name: str | None = None):
    """``(task, evaluation, select metric, folds)`` checked against ``cfg``; loads no model."""
    task = load_task(task_name or cfg.task, data_dir=cfg.data_dir)
    if cfg.questions_per_part:
        task = task.sample_per_part(cfg.questions_per_part)
    evaluation = evaluation_for(task, mc_prompt=cfg.mc_prompt)
    metric = cfg.select_metric or evaluation.select_metric
    if metric not in evaluation.metrics:
        raise RealLensError(
            f"task {task.name!r} reports {list(evaluation.metrics)}; --select-metric {metric!r} is not one of them"
        )
    folds = tuple(range(len(task.folds))) if cfg.folds is None else cfg.folds
    if max(folds) >= len(task.folds):
        raise RealLensError(
            f"task {task.name!r} has {len(task.folds)} fold(s) (0..{len(task.folds) - 1}); folds {list(folds)} asked for"
        )
    for i in folds:
        empty = [part for part in ("train", "val", "test") if not getattr(task.folds[i], part)]
        if empty:
            raise RealLensError(
                f"task {task.name!r}: fold {i} has no {empty[0]} questions ({len(task.groups)} questions in all); "
                "a run needs train, val and test questions in every fold — add questions to the task"
            )
    return task, evaluation, metric, folds


def evaluate_cell(setup: Setup, items, steering, cfg: ExperimentConfig, *, side_effects: bool = False,
                  progress: bool = False) -> dict:
    """The task's metrics (means and per item), for answer-scored evaluations every answer's log-prob
    (``per_answer``), and, for test cells, CE and KL on WikiText-2."""
    evaluation = setup.evaluation
    values, per_answer = evaluation.evaluate_answers(setup.model, items, steering, progress=progress)
    out = {m: float(np.mean(v)) for m, v in values.items()}
    out.update(n_questions=len({evaluation.group_of(i) for i in items}), n_items=len(items),
               per_item={"group": [evaluation.group_of(i) for i in items],
                         **{m: [float(x) for x in v] for m, v in values.items()}})
    if per_answer is not None:  # every answer's log-prob: the truth-vs-length decomposition reads them
        out["per_answer"] = per_answer
    if side_effects and setup.texts:
        side = evaluate_side_effects(setup.model, setup.texts, steering=steering, max_tokens=cfg.side_effect_tokens)
        out.update(ce=float(side.ce), kl=float(side.kl))
    return out


def cell_is_current(evaluation: TaskEvaluation, result: dict) -> bool:
    """Whether a cached evaluation cell holds everything this version records (every metric, and the
    per-answer log-probs of an answer-scored evaluation); an older one is recomputed."""
    per_item = result.get("per_item", {})
    return all(m in per_item for m in evaluation.metrics) and (evaluation.kind != "mc" or "per_answer" in result)


LENGTH_ONLY = "length-only"


def length_only_cell(setup: Setup, val_items, test_items) -> dict:
    """MC1/MC2 of the content-blind scorer log p(answer) = −c·(answer tokens) on the test questions,
    c chosen on the val questions (:mod:`real_lens.evaluation.reference`): a gain that only reaches
    it could come from steering that makes the model prefer short answers, not true ones."""
    from ..evaluation.reference import (
        choose_length_c,
        count_answer_tokens,
        score_length_only,
    )

    prompt = setup.task.eval_data["mc_prompts"][setup.mc_prompt]
    c = choose_length_c(val_items, count_answer_tokens(setup.model, val_items, mc_prompt=prompt))
    result = score_length_only(test_items, count_answer_tokens(setup.model, test_items, mc_prompt=prompt), c=c)
    return {"mc2": result.mc2_mean, "mc1": result.mc1_mean, "mc2_norm": float(result.mc2_norm.mean()), "c": c,
            "n_questions": len(test_items),
            "per_item": {"group": list(result.questions), "mc2": result.mc2.tolist(), "mc1": result.mc1.tolist(),
                         "mc2_norm": result.mc2_norm.tolist()}}


def result_row(evaluation: TaskEvaluation, fold, method, split, k, alpha, result, **extra) -> dict:
    return {"fold": fold, "method": method, "split": split, "k": k, "alpha": alpha, **extra,
            "n_questions": result["n_questions"], "n_items": result.get("n_items", result["n_questions"]),
            **{m: result[m] for m in evaluation.metrics}, "ce": result.get("ce", ""), "kl": result.get("kl", "")}
