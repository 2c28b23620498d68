"""``file:<path>``: a user's own behaviour as a CSV or JSONL file.

Two layouts are accepted (column names are case-sensitive):

- paired:   ``prompt, aligned, violating[, group]``  → two examples per row;
            without ``group`` each row is its own group.
- labelled: ``prompt, answer, label, group``          → one example per row (label 1/0).

The model reads ``prompt + answer``; a space is inserted between them when neither side
has one. Folds: a seeded group-wise 2-fold split, train/val 80/20.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

from ..errors import DataError
from .base import Example, Task, make_folds

PAIRED = ("prompt", "aligned", "violating")
LABELLED = ("prompt", "answer", "label", "group")
_LABELS = {"1": 1, "0": 0, "true": 1, "false": 0, "aligned": 1, "violating": 0}


def load_file_task(path: str | Path, *, seed: int = 0) -> Task:
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataError(f"task file {path} does not exist; use file:<path to a .csv or .jsonl file>")
    rows = read_rows(path)
    if not rows:
        raise DataError(f"{path}: the file holds no rows; add rows with columns {PAIRED} or {LABELLED}")
    columns = set(rows[0][1])
    if set(PAIRED) <= columns:
        examples = _paired(path, rows)
        layout = "paired"
    elif set(LABELLED) <= columns:
        examples = _labelled(path, rows)
        layout = "labelled"
    else:
        raise DataError(
            f"{path}: found columns {sorted(columns)}; expected either {', '.join(PAIRED)}[, group] "
            f"or {', '.join(LABELLED)}"
        )
    groups = list(dict.fromkeys(e.group for e in examples))
    return Task(
        name=f"file:{path}",
        examples=tuple(examples),
        folds=make_folds(groups, seed=seed),
        prompt_format=f"file:{layout}",
        source=str(path),
    )


def read_rows(path: Path) -> list[tuple[int, dict]]:
    """``(line number, row)`` pairs; line numbers are what a user sees in an editor."""
    if path.suffix.lower() == ".jsonl":
        rows = []
        with open(path) as f:
            for line_no, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise DataError(f"{path}, line {line_no}: not valid JSON ({exc.msg}); fix or remove the line") from None
                if not isinstance(row, dict):
                    raise DataError(f"{path}, line {line_no}: expected a JSON object per line, found {type(row).__name__}")
                rows.append((line_no, row))
        return rows
    if path.suffix.lower() == ".csv":
        with open(path, newline="") as f:
            return [(i, row) for i, row in enumerate(csv.DictReader(f), start=2)]
    raise DataError(f"{path}: unsupported file type {path.suffix!r}; use .csv or .jsonl")


def _field(path: Path, line_no: int, row: dict, name: str) -> str:
    value = row.get(name)
    if value is None or str(value).strip() == "":
        raise DataError(f"{path}, line {line_no}: column {name!r} is empty; fill it in or remove the row")
    return str(value)


def _join(prompt: str, answer: str) -> str:
    return answer if prompt[-1:].isspace() or answer[:1].isspace() else " " + answer


def _paired(path: Path, rows) -> list[Example]:
    examples = []
    for line_no, row in rows:
        prompt = _field(path, line_no, row, "prompt")
        group = str(row.get("group") or "").strip() or f"row{line_no}"
        for label, column in ((1, "aligned"), (0, "violating")):
            examples.append(Example(prompt, _join(prompt, _field(path, line_no, row, column)), label, group))
    return examples


def _labelled(path: Path, rows) -> list[Example]:
    examples = []
    for line_no, row in rows:
        prompt = _field(path, line_no, row, "prompt")
        raw = _field(path, line_no, row, "label").strip().lower()
        if raw not in _LABELS:
            raise DataError(f"{path}, line {line_no}: label {raw!r} is not 1/0 (or true/false); use 1 for aligned, 0 for violating")
        examples.append(
            Example(prompt, _join(prompt, _field(path, line_no, row, "answer")), _LABELS[raw], _field(path, line_no, row, "group"))
        )
    return examples
