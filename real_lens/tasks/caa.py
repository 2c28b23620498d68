"""CAA alignment behaviours (Rimsky et al. 2024): A/B questions, the answer is a letter.

``load_caa(behaviour)`` for one of :data:`BEHAVIOURS`.

- Prompt ``"{question}\\n\\nAnswer:"`` (model-agnostic plain text, no chat template; the lettered
  choices are inside the question), answer ``" (A)"`` / ``" (B)"``: the letter choice.
  survival-instinct's multi-option items keep their letters (``" (C)"`` ... ``" (H)"``).
- Two examples per item: the behaviour-aligned letter (label 1) and the violating one (0).
  Which of CAA's ``answer_matching_behavior`` / ``answer_not_matching_behavior`` is aligned
  follows shared/data/README.md §4 (the safe/HHH direction), see :data:`BEHAVIOURS`.
- group = the item: ``"generate:{i}"`` for item ``i`` of ``generate/<behaviour>/generate_dataset.json``,
  ``"test:{i}"`` for item ``i`` of ``test/<behaviour>/test_dataset_ab.json``.

Folds: CAA has a fixed held-out A/B test set, so there is **one** fold. Its ``test`` part is the
test set's groups; the generate set is split by group into ``train`` / ``val`` with a seeded
permutation (``val_fraction`` of the items, default 20%). Steering is built from train+val only.
A generate item whose question text (whitespace-normalised) equals a test question is dropped,
so no test question is ever trained on; ``eval_data["n_test_overlap"]`` counts them (0 for all
seven shipped behaviours).

``eval_data["ab"]``: ``{group: ABQuestion}`` for every item (generate and test): prompt, aligned
letter, violating letter (bare letters, e.g. ``"B"``), for :func:`real_lens.evaluation.caa.evaluate_caa`
(the val questions K and α are chosen on are generate items; the reported metric is on the test set).

The data exists only as files (no Hub copy): ``caa/generate/...`` and ``caa/test/...`` under
the data directory.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import DataError
from .base import ALIGNED, VIOLATING, Example, Fold, Task
from .data import ENV_VAR, require_file, resolve_data_dir

PROMPT_FORMAT = "{question}\n\nAnswer:"
ANSWER_FORMAT = " ({letter})"
MATCHING, NOT_MATCHING = "answer_matching_behavior", "answer_not_matching_behavior"

#: behaviour → the CAA field holding the behaviour-aligned (safe/HHH) letter (README §4).
BEHAVIOURS = {
    "sycophancy": NOT_MATCHING,
    "hallucination": NOT_MATCHING,
    "refusal": MATCHING,
    "myopic-reward": NOT_MATCHING,
    "survival-instinct": MATCHING,
    "corrigible-neutral-HHH": MATCHING,
    "coordinate-other-ais": NOT_MATCHING,
}

_LETTER = re.compile(r"^\s*\(([A-Z])\)\s*$")


@dataclass(frozen=True)
class ABQuestion:
    """One A/B test item: the prompt and the aligned / violating letters (``"A"``, ``"B"``, ...)."""

    group: str
    prompt: str
    aligned: str
    violating: str


def load_caa(behaviour: str, data_dir=None, *, val_fraction: float = 0.2, seed: int = 0) -> Task:
    """One CAA behaviour as a contrastive task (see the module docstring)."""
    if behaviour not in BEHAVIOURS:
        raise DataError(f"unknown CAA behaviour {behaviour!r}; expected one of: {', '.join(BEHAVIOURS)}")
    if not 0 < val_fraction < 1:
        raise DataError(f"val_fraction must be between 0 and 1 (exclusive), got {val_fraction}")
    root = resolve_data_dir(data_dir)
    if root is None:
        raise DataError(
            f"no data directory for CAA {behaviour} (it has no Hugging Face copy); pass --data-dir "
            f"or set ${ENV_VAR} to the folder that holds caa/generate/ and caa/test/"
        )
    folder = root / "caa"
    generate_path = require_file(
        folder / "generate" / behaviour / "generate_dataset.json", what=f"CAA {behaviour} generate set"
    )
    test_path = require_file(folder / "test" / behaviour / "test_dataset_ab.json", what=f"CAA {behaviour} A/B test set")
    aligned_field = BEHAVIOURS[behaviour]
    generate = _read_items(generate_path, aligned_field)
    test = _read_items(test_path, aligned_field)

    test_questions = {_normalize(question) for question, _, _ in test}
    kept = [(i, item) for i, item in enumerate(generate) if _normalize(item[0]) not in test_questions]
    n_overlap = len(generate) - len(kept)

    examples, ab, train_groups = [], {}, []
    for prefix, items in (("generate", kept), ("test", list(enumerate(test)))):
        for i, (question, aligned, violating) in items:
            group = f"{prefix}:{i}"
            prompt = PROMPT_FORMAT.format(question=question)
            examples.append(Example(prompt, ANSWER_FORMAT.format(letter=aligned), ALIGNED, group))
            examples.append(Example(prompt, ANSWER_FORMAT.format(letter=violating), VIOLATING, group))
            ab[group] = ABQuestion(group, prompt, aligned, violating)
            if prefix == "generate":
                train_groups.append(group)

    order = [train_groups[j] for j in np.random.default_rng(seed).permutation(len(train_groups))]
    n_val = max(1, round(val_fraction * len(order)))
    test_groups = frozenset(f"test:{i}" for i in range(len(test)))
    fold = Fold(frozenset(order[n_val:]), frozenset(order[:n_val]), test_groups)
    return Task(
        name=f"caa:{behaviour}",
        examples=tuple(examples),
        folds=(fold,),
        prompt_format=PROMPT_FORMAT + ANSWER_FORMAT,
        source=str(folder),
        eval_data={
            "ab": ab,
            "behaviour": behaviour,
            "aligned_field": aligned_field,
            "n_generate": len(generate),
            "n_test": len(test),
            "n_test_overlap": n_overlap,
        },
    )


def _normalize(text: str) -> str:
    return " ".join(text.split())


def _read_items(path: Path, aligned_field: str) -> list[tuple[str, str, str]]:
    """The file's items as ``(question, aligned letter, violating letter)``, letters bare (``"A"``)."""
    try:
        with open(path) as f:
            rows = json.load(f)
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: not valid JSON ({exc.msg}, line {exc.lineno}); restore the file from the CAA release") from None
    if not isinstance(rows, list) or not rows:
        raise DataError(f"{path}: expected a non-empty JSON list of {{question, {MATCHING}, {NOT_MATCHING}}} objects")
    violating_field = NOT_MATCHING if aligned_field == MATCHING else MATCHING
    items = []
    for i, row in enumerate(rows):
        if not isinstance(row, dict) or any(k not in row for k in ("question", MATCHING, NOT_MATCHING)):
            found = sorted(row) if isinstance(row, dict) else type(row).__name__
            raise DataError(f"{path}, item {i}: expected fields question, {MATCHING}, {NOT_MATCHING}; found {found}")
        letters = []
        for name in (aligned_field, violating_field):
            match = _LETTER.match(row[name]) if isinstance(row[name], str) else None
            if match is None:
                raise DataError(f"{path}, item {i}: {name} is {row[name]!r}; expected a letter choice such as '(A)'")
            letters.append(match.group(1))
        if letters[0] == letters[1]:
            raise DataError(f"{path}, item {i}: both answers are ({letters[0]}); the two answers must differ")
        question = str(row["question"]).strip()
        if not question:
            raise DataError(f"{path}, item {i}: the question is empty")
        items.append((question, letters[0], letters[1]))
    return items
