"""NQ-Swap (Longpre et al. 2021): knowledge conflicts in open-domain QA, SpARE's prompt format.

Each row has an NQ question, its Wikipedia passage with the answer entity swapped for another
(``sub_context``), the substituted entity (``sub_answer``) and the original answer(s)
(``org_answer``). The model sees the *substituted* passage:

- prompt ``"context: {context}\\nquestion: {question}?\\nanswer:"`` (SpARE's zero-shot format);
- two examples per row: answer ``" {sub_answer}"`` and answer ``" {org_answer[0]}"``.
  ``direction="context"`` (steer towards the passage): the substituted answer is aligned (1),
  the original answer violating (0). ``direction="memory"`` (steer towards parametric memory,
  SpARE's "use parameter"): the labels swap. When a row lists several original answers, the
  first is the violating/aligned *example*; evaluation accepts any of them.
- group = the question (a question has 1–5 rows, one per substituted entity and passage);
  folds: a seeded group-wise 2-fold split, train/val 80/20 (:func:`~real_lens.tasks.base.make_folds`).

What is done to the passage, exactly:

1. NQ's HTML-ish markup is removed: every tag of the form ``<Name attr="...">`` / ``</Name>``
   whose name starts with an upper-case letter (``<P>``, ``<Table>``, ``<Tr>``, ``<Td colspan="2">``,
   ``<Li>``, ``<Ul>``, ...) and a tag cut off at the end of a truncated passage (``... <Th``).
   A lone ``<`` in text (``< 0.1 %``) stays. Whitespace is collapsed to single spaces. NQ's
   word tokenisation (``Goofy 's``, ````` Max ''``) is kept as it is. Table cells lose their
   structure (cells become a run of words).
2. ``max_context_words`` (default 150; ``None`` = whole passages): the passage is cut to its
   first ``max_context_words`` words. A row whose substituted answer does not appear, as a
   whole run of words, inside the kept words is dropped (counted in
   ``eval_data["n_dropped_long"]``); the answer is never cut out of a prompt. With 150 words,
   212 of the 4,746 rows are dropped (72% of passages fit whole).

Other rows that are dropped, and counted in ``eval_data``:

- ``n_dropped_same_answer``: the substituted answer equals an original answer after
  :func:`normalize_answer` (no conflict; 0 rows in the shipped file);
- ``n_dropped_duplicates``: a repeat of an earlier row's question, passage and answers
  (16 rows in the shipped file).

``eval_data["qa"]``: ``{group: (ConflictQuestion, ...)}``: per question one item per kept row,
with its prompt, the context answer(s) and the memory answer(s), for generation-based
evaluation (:func:`real_lens.evaluation.nq_swap.evaluate_nq_swap`).

Offline data: ``nq_swap/nq_swap_dev.jsonl``. Online fallback: Hugging Face ``pminervini/NQ-Swap``,
split ``dev`` (the same rows).
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass

import numpy as np

from ..errors import DataError
from .base import ALIGNED, VIOLATING, Example, Task, make_folds
from .data import load_hub_dataset, require_file, resolve_data_dir
from .files import read_rows

PROMPT_FORMAT = "context: {context}\nquestion: {question}?\nanswer:"
ANSWER_FORMAT = " {answer}"
DIRECTIONS = ("context", "memory")
FIELDS = ("question", "sub_context", "sub_answer", "org_answer")

_TAG = re.compile(r"</?[A-Z][A-Za-z0-9]*(?:\s[^<>]*)?>")
_CUT_TAG = re.compile(r"</?[A-Z][A-Za-z0-9]*(?:\s[^<>]*)?$")
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = frozenset(string.punctuation)


@dataclass(frozen=True)
class ConflictQuestion:
    """One NQ-Swap row as evaluation needs it: the conflict prompt and both answer sets."""

    group: str
    prompt: str
    context_answers: tuple[str, ...]
    memory_answers: tuple[str, ...]
    direction: str  # which side is behaviour-aligned: "context" or "memory"

    @property
    def aligned_answers(self) -> tuple[str, ...]:
        return self.context_answers if self.direction == "context" else self.memory_answers


def normalize_answer(text: str) -> str:
    """SQuAD's normalisation: lower-case, drop punctuation, drop a/an/the, collapse whitespace."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def clean_context(text: str) -> str:
    """The passage without NQ's markup tags, whitespace collapsed (see the module docstring)."""
    text = _CUT_TAG.sub(" ", _TAG.sub(" ", text))
    return " ".join(text.split())


def truncate_context(context: str, answer: str, max_words: int | None) -> str | None:
    """The first ``max_words`` words of ``context``, or ``None`` if ``answer`` is not inside them.

    "Inside" = the answer's words appear as a contiguous run of the kept words (NQ passages
    and answers share one word tokenisation; this holds for every row of the shipped file).
    """
    words = context.split()
    kept = words if max_words is None else words[:max_words]
    target = answer.split()
    n = len(target)
    if n and any(kept[i:i + n] == target for i in range(len(kept) - n + 1)):
        return " ".join(kept)
    return None


def load_nq_swap(
    data_dir=None,
    *,
    direction: str = "context",
    n_questions: int | None = None,
    max_context_words: int | None = 150,
    seed: int = 0,
) -> Task:
    """NQ-Swap as a contrastive task (see the module docstring for every choice made)."""
    if direction not in DIRECTIONS:
        raise DataError(
            f"unknown NQ-Swap direction {direction!r}; expected one of {', '.join(DIRECTIONS)} "
            "('context': the substituted passage's answer is aligned; 'memory': the original answer is)"
        )
    if max_context_words is not None and max_context_words < 1:
        raise DataError(f"max_context_words must be at least 1 (or None for whole passages), got {max_context_words}")
    if n_questions is not None and n_questions < 2:
        raise DataError(f"n_questions must be at least 2 (one per fold), got {n_questions}")

    root = resolve_data_dir(data_dir)
    if root is None:
        rows = [dict(r) for r in load_hub_dataset("pminervini/NQ-Swap", split="dev", what="NQ-Swap")]
        source = "hub:pminervini/NQ-Swap"
    else:
        path = require_file(root / "nq_swap" / "nq_swap_dev.jsonl", what="NQ-Swap file nq_swap_dev.jsonl")
        rows = [row for _, row in read_rows(path)]
        source = str(path)

    aligned_is_context = direction == "context"
    items: dict[str, list[ConflictQuestion]] = {}
    seen: set[tuple] = set()
    counts = {"n_dropped_same_answer": 0, "n_dropped_long": 0, "n_dropped_duplicates": 0}
    for i, row in enumerate(rows):
        question, sub_answers, org_answers = _check_row(source, i, row)
        sub_answer = sub_answers[0]
        if normalize_answer(sub_answer) in {normalize_answer(a) for a in org_answers}:
            counts["n_dropped_same_answer"] += 1
            continue
        context = truncate_context(clean_context(row["sub_context"]), sub_answer, max_context_words)
        if context is None:
            counts["n_dropped_long"] += 1
            continue
        key = (question, context, sub_answers, org_answers)
        if key in seen:
            counts["n_dropped_duplicates"] += 1
            continue
        seen.add(key)
        prompt = PROMPT_FORMAT.format(context=context, question=question)
        items.setdefault(question, []).append(
            ConflictQuestion(question, prompt, sub_answers, org_answers, direction)
        )

    groups = list(items)
    if n_questions is not None and n_questions < len(groups):
        keep = np.sort(np.random.default_rng(seed).permutation(len(groups))[:n_questions])
        groups = [groups[j] for j in keep]
    examples = []
    for group in groups:
        for item in items[group]:
            context_label, memory_label = (ALIGNED, VIOLATING) if aligned_is_context else (VIOLATING, ALIGNED)
            examples.append(Example(item.prompt, ANSWER_FORMAT.format(answer=item.context_answers[0]), context_label, group))
            examples.append(Example(item.prompt, ANSWER_FORMAT.format(answer=item.memory_answers[0]), memory_label, group))
    return Task(
        name="nq-swap" if aligned_is_context else "nq-swap-memory",
        examples=tuple(examples),
        folds=make_folds(groups, seed=seed),
        prompt_format=PROMPT_FORMAT + ANSWER_FORMAT,
        source=source,
        eval_data={
            "qa": {g: tuple(items[g]) for g in groups},
            "direction": direction,
            "max_context_words": max_context_words,
            "n_rows": len(rows),
            **counts,
        },
    )


def _check_row(source: str, i: int, row) -> tuple[str, tuple[str, ...], tuple[str, ...]]:
    """``(question, sub_answers, org_answers)``, or a DataError naming the bad row."""
    if not isinstance(row, dict) or any(k not in row for k in FIELDS):
        found = sorted(row) if isinstance(row, dict) else type(row).__name__
        raise DataError(f"{source}, row {i}: expected fields {', '.join(FIELDS)}; found {found}")
    answers = []
    for name in ("sub_answer", "org_answer"):
        value = row[name]
        value = [value] if isinstance(value, str) else list(value or [])
        value = tuple(str(a).strip() for a in value if str(a).strip())
        if not value:
            raise DataError(f"{source}, row {i}: {name} is empty; expected a list with at least one answer string")
        answers.append(value)
    question = " ".join(str(row["question"]).split()).rstrip("?")
    if not question:
        raise DataError(f"{source}, row {i}: the question is empty")
    return question, answers[0], answers[1]
