"""One evaluation per kind of task, behind one interface, so `real-lens run` works for every task.

A :class:`TaskEvaluation` knows which items a task evaluates for a set of groups (a fold's val or
test questions), how to score them (steered or not) and which per-item metrics come out; the
first metric is the one K and α are chosen by, unless the run names another.

- ``mc`` (TruthfulQA): MC2, MC1 (METHOD.md §6) and MC2 on length-normalised log-probs (``mc2_norm``),
  under one of the MC prompt styles of METHOD.md §6a (``evaluation_for(task, mc_prompt=...)``; default
  ``instruction-qa``, the REAL release's); it also returns every answer's log-prob and token count,
  which the truth-vs-length decomposition reads (:mod:`real_lens.evaluation.decomposition`).
- ``qa`` (NQ-Swap): exact match of the greedy answer with the aligned answer, plus the looser
  "contains" rule and both sides' EM (see :mod:`real_lens.evaluation.nq_swap`). K and α are chosen
  by ``contains_aligned``: a 135M model answers in sentences, so its EM is 0 on nearly every item
  and a choice made on EM would be a choice among ties.
- ``ab`` (CAA behaviours): the two-way probability of the aligned letter, and the raw one.
- ``pairs`` (any task, e.g. ``file:``): per group, the share of probability on its aligned
  answers, Σ p(aligned) / Σ p(all answers) with p = exp(sum of answer-token log-probs) — MC2's
  rule applied to the task's own examples — and whether the likeliest answer is an aligned one.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import partial
from typing import Any, Callable, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from ..errors import RealLensError
from ..tasks.base import ALIGNED, Task
from ..tasks.truthfulqa import DEFAULT_MC_PROMPT, check_mc_prompt_style
from .caa import evaluate_caa, select_ab_questions
from .forward import SteeringLike, steering_context
from ..tokens import tokenize
from .nq_swap import evaluate_nq_swap, select_conflict_questions
from .truthfulqa import evaluate_truthfulqa, score_answer_tokens, score_mc2, select_mc_questions


PER_ANSWER = "per_answer"  # the key of the per-answer records an evaluation may return beside its metrics


@dataclass(frozen=True)
class GroupAnswers:
    """One group of a generic task: its prompt and every answer with its label."""

    group: str
    prompt: str
    answers: tuple[str, ...]
    labels: tuple[int, ...]


@dataclass(frozen=True)
class TaskEvaluation:
    kind: str
    metrics: tuple[str, ...]  # per-item metrics; metrics[0] is the default selection metric
    select: Callable[[Task, Any], list]  # (task, groups) -> items, in task order
    score: Callable[..., dict[str, np.ndarray]]  # (model, items, steering, *, progress) -> {metric: per-item values}
    group_of: Callable[[Any], str]  # item -> its group (question)
    default_select_metric: str | None = None

    @property
    def select_metric(self) -> str:
        return self.default_select_metric or self.metrics[0]

    def evaluate(self, model, items: Sequence, steering: SteeringLike | None = None, *,
                 progress: bool = False) -> dict[str, np.ndarray]:
        values = self.score(model, list(items), steering, progress=progress)
        missing = [m for m in self.metrics if m not in values]
        if missing:  # a programming error in an evaluation, not a user mistake
            raise AssertionError(f"{self.kind} evaluation returned no {missing}")
        return {m: np.asarray(values[m], dtype=float) for m in self.metrics}

    def evaluate_answers(self, model, items: Sequence, steering: SteeringLike | None = None, *,
                         progress: bool = False) -> tuple[dict[str, np.ndarray], dict[str, list] | None]:
        """``(metrics, per_answer)``: :meth:`evaluate`'s metrics and, for evaluations that score answers by
        their log-probs (``mc``), every answer's group, text, truth, token count and log-prob (None otherwise)."""
        values = self.score(model, list(items), steering, progress=progress)
        missing = [m for m in self.metrics if m not in values]
        if missing:  # a programming error in an evaluation, not a user mistake
            raise AssertionError(f"{self.kind} evaluation returned no {missing}")
        return {m: np.asarray(values[m], dtype=float) for m in self.metrics}, values.get(PER_ANSWER)


def _score_mc(model, items, steering, mc_prompt=DEFAULT_MC_PROMPT, *, progress=False):
    result = evaluate_truthfulqa(model, items, steering=steering, mc_prompt=mc_prompt, progress=progress)
    return {"mc2": result.mc2, "mc1": result.mc1, "mc2_norm": result.mc2_norm, PER_ANSWER: result.per_answer()}


def _score_qa(model, items, steering, *, progress=False):
    r = evaluate_nq_swap(model, items, steering=steering, progress=progress)
    return {"em_aligned": r.em_aligned, "contains_aligned": r.contains_aligned,
            "em_context": r.em_context, "em_memory": r.em_memory}


def _score_ab(model, items, steering, *, progress=False):
    r = evaluate_caa(model, items, steering=steering, progress=progress)
    return {"p_aligned": r.p_aligned, "p_aligned_raw": r.p_aligned_raw}


def select_group_answers(task: Task, groups) -> list[GroupAnswers]:
    """Every group in ``groups`` with its prompt and labelled answers, in task order."""
    keep = frozenset(groups)
    by_group: dict[str, list] = {}
    for e in task.examples:
        if e.group in keep:
            by_group.setdefault(e.group, []).append(e)
    missing = keep - set(by_group)
    if missing:
        raise RealLensError(f"{len(missing)} group(s) have no examples in task {task.name!r}, e.g. {sorted(missing)[0]!r}")
    items = []
    for group, examples in by_group.items():
        prompts = {e.prompt for e in examples}
        if len(prompts) > 1:
            raise RealLensError(
                f"task {task.name!r}: group {group!r} has {len(prompts)} different prompts; the generic evaluation "
                "compares a group's answers under one prompt, so give each prompt its own group"
            )
        items.append(GroupAnswers(group, examples[0].prompt, tuple(e.answer for e in examples),
                                  tuple(e.label for e in examples)))
    return items


def score_group_answers(model, items: Sequence[GroupAnswers], steering: SteeringLike | None = None,
                        groups_per_batch: int = 8, *, progress: bool = False) -> dict[str, np.ndarray]:
    """``p_aligned`` (probability share of the aligned answers) and ``top_aligned`` per group."""
    share, top = [], []
    with steering_context(model, steering), torch.inference_mode():
        for start in tqdm(range(0, len(items), groups_per_batch), desc="answers", unit="batch", disable=not progress):
            chunk = items[start:start + groups_per_batch]
            prompts = [tokenize(model, g.prompt) for g in chunk]
            fulls = [[tokenize(model, g.prompt + a) for a in g.answers] for g in chunk]
            for g, logprobs in zip(chunk, score_answer_tokens(model, prompts, fulls)):
                aligned = [lp for lp, y in zip(logprobs, g.labels) if y == ALIGNED]
                violating = [lp for lp, y in zip(logprobs, g.labels) if y != ALIGNED]
                share.append(score_mc2(aligned, violating))
                top.append(float(max(aligned) > max(violating)))
    return {"p_aligned": np.array(share), "top_aligned": np.array(top)}


EVALUATIONS: dict[str, TaskEvaluation] = {
    "mc": TaskEvaluation("mc", ("mc2", "mc1", "mc2_norm"), select_mc_questions, _score_mc, lambda q: q.question),
    "qa": TaskEvaluation("qa", ("em_aligned", "contains_aligned", "em_context", "em_memory"),
                         select_conflict_questions, _score_qa, lambda q: q.group,
                         default_select_metric="contains_aligned"),
    "ab": TaskEvaluation("ab", ("p_aligned", "p_aligned_raw"), select_ab_questions, _score_ab, lambda q: q.group),
    "pairs": TaskEvaluation("pairs", ("p_aligned", "top_aligned"), select_group_answers, score_group_answers,
                            lambda g: g.group),
}


def evaluation_for(task: Task, *, mc_prompt: str = DEFAULT_MC_PROMPT) -> TaskEvaluation:
    """The task's own evaluation (by what its ``eval_data`` holds), else the generic ``pairs`` one.

    ``mc_prompt`` is the MC prompt style TruthfulQA is scored under (its texts from the task's data);
    other tasks ignore it."""
    check_mc_prompt_style(mc_prompt)
    for kind in ("mc", "qa", "ab"):
        if kind in task.eval_data:
            evaluation = EVALUATIONS[kind]
            if kind == "mc" and "mc_prompts" in task.eval_data:
                prompt = task.eval_data["mc_prompts"][mc_prompt]
                evaluation = replace(evaluation, score=partial(_score_mc, mc_prompt=prompt))
            return evaluation
    return EVALUATIONS["pairs"]


def eval_items(evaluation: TaskEvaluation, task: Task, groups, limit: int | None, seed: int) -> list:
    """The items of a fold part's groups (task order); a seeded sample of ``limit`` groups."""
    groups = [g for g in task.groups if g in frozenset(groups)]
    if limit is not None and limit < len(groups):
        keep = np.random.default_rng(seed).choice(len(groups), size=limit, replace=False)
        groups = [groups[i] for i in sorted(keep)]
    return evaluation.select(task, groups)
