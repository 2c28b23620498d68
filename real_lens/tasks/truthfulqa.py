"""TruthfulQA (multiple choice), the ITI/REAL protocol.

- One example per ``mc2_targets`` choice: prompt ``"Q: {question} A:"``, answer ``" {choice}"``,
  label 1 for true answers, 0 for false; group = the question.
- Folds: the paper's 2-fold split (``truthfulqa/splits/fold_{i}_{train,val,test}_seed_42.csv``).
  Fold i tests on its test CSV and trains/validates on the other half, split 80/20.
- ``eval_data["mc"]``: per question its MC1 and MC2 targets, for evaluation.

Offline data: ``truthfulqa/v0/mc_task.json`` (= Hugging Face ``truthful_qa``/multiple_choice,
in the order the splits use). Online fallback: the Hub dataset, with folds rebuilt exactly as
REAL's ``validate_2fold.py`` does (halves of the HF order; other half permuted with
``np.random.default_rng(42)`` and split 80/20).
"""

from __future__ import annotations

import csv
import json
import unicodedata
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import DataError
from .base import Example, Fold, Task
from .data import load_hub_dataset, require_file, resolve_data_dir

PROMPT_FORMAT = "Q: {question} A:"
ANSWER_FORMAT = " {answer}"


@dataclass(frozen=True)
class MCQuestion:
    """One question's multiple-choice targets (answers and 0/1 labels)."""

    question: str
    prompt: str
    mc1_answers: tuple[str, ...]
    mc1_labels: tuple[int, ...]
    mc2_answers: tuple[str, ...]
    mc2_labels: tuple[int, ...]


def normalize_question(text: str) -> str:
    """As REAL matches questions: NFKC, NBSP → space, whitespace collapsed."""
    return " ".join(unicodedata.normalize("NFKC", text).replace("\u00a0", " ").split())


def load_truthfulqa(data_dir=None) -> Task:
    root = resolve_data_dir(data_dir)
    if root is None:
        records, folds, source = _from_hub()
    else:
        records, folds, source = _from_files(root / "truthfulqa")
    examples, mc = [], {}
    for record in records:
        question = record["question"]
        prompt = PROMPT_FORMAT.format(question=question)
        for answer, label in record["mc2_targets"].items():
            examples.append(Example(prompt, ANSWER_FORMAT.format(answer=answer), int(label), question))
        mc[question] = MCQuestion(
            question, prompt,
            tuple(record["mc1_targets"]), tuple(int(v) for v in record["mc1_targets"].values()),
            tuple(record["mc2_targets"]), tuple(int(v) for v in record["mc2_targets"].values()),
        )
    return Task(
        name="truthfulqa",
        examples=tuple(examples),
        folds=folds,
        prompt_format=PROMPT_FORMAT + ANSWER_FORMAT,
        source=source,
        eval_data={"mc": mc},
    )


def _from_files(folder: Path):
    mc_path = require_file(folder / "v0" / "mc_task.json", what="TruthfulQA multiple-choice file")
    with open(mc_path) as f:
        records = json.load(f)
    by_norm = {normalize_question(r["question"]): r["question"] for r in records}
    folds = []
    for i in range(2):
        parts = {}
        for part in ("train", "val", "test"):
            path = require_file(folder / "splits" / f"fold_{i}_{part}_seed_42.csv", what=f"TruthfulQA fold {i} {part} split")
            with open(path, newline="") as f:
                rows = list(csv.DictReader(f))
            missing = [r["Question"] for r in rows if normalize_question(r["Question"]) not in by_norm]
            if missing:
                raise DataError(
                    f"{path}: {len(missing)} question(s) are not in {mc_path}, e.g. {missing[0]!r}; "
                    "the split and MC files must come from the same TruthfulQA release"
                )
            parts[part] = frozenset(by_norm[normalize_question(r["Question"])] for r in rows)
        folds.append(Fold(parts["train"], parts["val"], parts["test"]))
    return records, tuple(folds), str(folder)


def _from_hub():
    ds = load_hub_dataset("truthfulqa/truthful_qa", "multiple_choice", split="validation", what="TruthfulQA")
    records = [
        {
            "question": row["question"],
            "mc1_targets": dict(zip(row["mc1_targets"]["choices"], row["mc1_targets"]["labels"])),
            "mc2_targets": dict(zip(row["mc2_targets"]["choices"], row["mc2_targets"]["labels"])),
        }
        for row in ds
    ]
    return records, rebuild_folds([r["question"] for r in records]), "hub:truthfulqa/truthful_qa"


def rebuild_folds(questions: list[str], *, seed: int = 42, train_fraction: float = 0.8) -> tuple[Fold, ...]:
    """REAL's ``validate_2fold.py``: fold i tests on half i of the HF order; the other half is
    permuted with ``default_rng(seed)`` and split ``train_fraction`` / rest."""
    half = (len(questions) + 1) // 2
    halves = [questions[:half], questions[half:]]
    folds = []
    for i in range(2):
        other = halves[1 - i]
        order = np.random.default_rng(seed).permutation(len(other))
        n_train = int(len(other) * train_fraction)
        folds.append(Fold(
            frozenset(other[j] for j in order[:n_train]),
            frozenset(other[j] for j in order[n_train:]),
            frozenset(halves[i]),
        ))
    return tuple(folds)
