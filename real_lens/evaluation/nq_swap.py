"""NQ-Swap: exact match of the greedy answer with the context / memory answers (METHOD.md §6).

For each item the model greedily continues the task's plain-text prompt (``...\\nanswer:``, no
chat template, the text the steering directions were computed on; BOS prepended as the model
does) for at most ``max_new_tokens`` tokens, inside ``steering.applied(model)`` when a steering
is given. Items are decoded ``batch_size`` at a time by :func:`real_lens.generation.generate_greedy`
(left-padded, KV-cached) and a row stops once its first line is complete (a line break after
text): only the first line is scored, so the tokens after it cannot change a prediction.

Match rule (:func:`exact_match`): the prediction is the generated text's first non-empty line.
After :func:`~real_lens.tasks.nq_swap.normalize_answer` (lower-case, no punctuation, no a/an/the,
single spaces), it matches a gold answer when it *equals* it or *starts with it followed by a
space* (so ``"775 episodes"`` matches ``"775"``, but ``"7750"`` does not). A gold answer that
normalises to nothing never matches. An item's EM against a side is 1 if any of that side's
answers matches (NQ rows can list several original answers).

Per item: ``em_context`` (against the substituted answer in the passage), ``em_memory``
(against the original answer(s)), and ``em_aligned`` = the one of the two that the task's
direction calls aligned.

A looser secondary score, for models that answer in sentences (zero-shot SmolLM2-135M writes
``"The song ... was written by Benny"``, EM 0): ``contains_*`` is 1 if a normalised gold answer
occurs as a run of whole words anywhere in the normalised first line (:func:`contains_answer`).
A line can contain both answers; EM cannot match both unless one answer is a prefix of the other.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np
import torch
from jaxtyping import Float

from ..generation import first_line_complete, generate_greedy
from ..tasks.base import Task
from ..tasks.nq_swap import ConflictQuestion, normalize_answer
from .forward import SteeringLike, steering_context
from ..tokens import tokenize


@dataclass(frozen=True)
class NQSwapResult:
    """Per-item predictions and exact matches (1.0 / 0.0), in item order."""

    groups: tuple[str, ...]
    predictions: tuple[str, ...]
    em_context: Float[np.ndarray, " item"]
    em_memory: Float[np.ndarray, " item"]
    em_aligned: Float[np.ndarray, " item"]
    contains_context: Float[np.ndarray, " item"]
    contains_memory: Float[np.ndarray, " item"]
    contains_aligned: Float[np.ndarray, " item"]

    def __post_init__(self):
        n = len(self.groups)
        lengths = [len(getattr(self, name)) for name in (
            "predictions", "em_context", "em_memory", "em_aligned", "contains_context", "contains_memory", "contains_aligned",
        )]
        if any(length != n for length in lengths):
            raise ValueError(f"NQSwapResult needs one prediction and score per item ({n}) in every field; found {lengths}")

    @property
    def em_context_mean(self) -> float:
        return float(np.mean(self.em_context))

    @property
    def em_memory_mean(self) -> float:
        return float(np.mean(self.em_memory))

    @property
    def em_aligned_mean(self) -> float:
        return float(np.mean(self.em_aligned))

    @property
    def contains_aligned_mean(self) -> float:
        return float(np.mean(self.contains_aligned))


def first_line(text: str) -> str:
    """The first non-empty line of ``text``, stripped."""
    return next((line.strip() for line in text.splitlines() if line.strip()), "")


def exact_match(prediction: str, answers: Sequence[str]) -> bool:
    """The module's match rule: normalised first line equals, or starts with ``gold + " "``, a gold answer."""
    if isinstance(answers, str):
        raise TypeError("answers must be a sequence of strings, found a single string; wrap it in a list")
    pred = normalize_answer(first_line(prediction))
    for gold in answers:
        gold = normalize_answer(gold)
        if gold and (pred == gold or pred.startswith(gold + " ")):
            return True
    return False


def contains_answer(prediction: str, answers: Sequence[str]) -> bool:
    """The looser rule: a normalised gold answer occurs as whole words in the normalised first line."""
    if isinstance(answers, str):
        raise TypeError("answers must be a sequence of strings, found a single string; wrap it in a list")
    pred = f" {normalize_answer(first_line(prediction))} "
    return any(gold and f" {gold} " in pred for gold in map(normalize_answer, answers))


def select_conflict_questions(task: Task, groups) -> list[ConflictQuestion]:
    """Every item (one per kept NQ-Swap row) of ``groups`` (e.g. ``fold.test``), in the task's order."""
    qa = task.eval_data.get("qa")
    if qa is None:
        raise ValueError(f"task {task.name!r} has no NQ-Swap items (eval_data['qa']); load it with load_nq_swap")
    keep = frozenset(groups)
    missing = keep - set(qa)
    if missing:
        raise ValueError(f"{len(missing)} group(s) have no NQ-Swap items in task {task.name!r}, e.g. {sorted(missing)[0]!r}")
    return [item for g in task.groups if g in keep for item in qa[g]]


def evaluate_nq_swap(
    model,
    items: Sequence[ConflictQuestion],
    *,
    steering: SteeringLike | None = None,
    max_new_tokens: int = 12,
    batch_size: int = 32,
    progress: bool = False,
) -> NQSwapResult:
    """Greedy answers (``batch_size`` items per decoding call) and their exact match with the context and the memory answers."""
    if isinstance(items, Mapping):
        raise TypeError(
            "items must be a sequence of ConflictQuestion, found a mapping; pass "
            "select_conflict_questions(task, fold.test)"
        )
    items = list(items)
    if not items:
        raise ValueError("evaluate_nq_swap needs at least one item; found none")
    bad = next((q for q in items if not isinstance(q, ConflictQuestion)), None)
    if bad is not None:
        raise TypeError(f"items must be ConflictQuestion objects (task.eval_data['qa'] values); found {type(bad).__name__}")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be at least 1; got {max_new_tokens}")

    prompts = [tokenize(model, item.prompt) for item in items]
    with steering_context(model, steering), torch.inference_mode():
        continuations = generate_greedy(model, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size,
                                        stop=first_line_complete, progress=progress)
    predictions = [first_line(model.tokenizer.decode(new, skip_special_tokens=True)) for new in continuations]
    is_context = np.array([q.direction == "context" for q in items])
    scores = []
    for rule in (exact_match, contains_answer):
        context = np.array([float(rule(p, q.context_answers)) for p, q in zip(predictions, items)])
        memory = np.array([float(rule(p, q.memory_answers)) for p, q in zip(predictions, items)])
        scores += [context, memory, np.where(is_context, context, memory)]
    return NQSwapResult(tuple(q.group for q in items), tuple(predictions), *scores)


def generate_answer(model, prompt: str, *, max_new_tokens: int) -> str:
    """One item's prediction: the greedy continuation's first line (no chat template); the caller sets steering and inference mode."""
    (new,) = generate_greedy(model, [tokenize(model, prompt)], max_new_tokens=max_new_tokens, stop=first_line_complete)
    return first_line(model.tokenizer.decode(new, skip_special_tokens=True))
