"""``file:<path>``: a user's own behaviour as a CSV or JSONL file.

Two layouts are accepted (column names are case-sensitive):

- paired:   ``prompt, aligned, violating[, group]``  → two examples per row;
            without ``group`` each row is its own group.
- labelled: ``prompt, answer, label, group``          → one example per row (label 1/0).

The model reads ``prompt + answer``; a space is inserted between them when neither side
has one. Folds: a seeded group-wise 2-fold split, train/val 80/20, so a file needs at least
four groups (every fold then has a train, a val and a test part).

Files must be UTF-8 text (a BOM is fine). In JSONL, text columns must be JSON strings (a list
or a number is refused, not turned into Python text); ``label`` may be 1/0, true/false or a
string, ``group`` a string or an integer. No field may exceed 131,072 characters (``csv``'s own
limit; no model context holds that much).
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from ..errors import DataError
from .base import Example, Task, make_folds

PAIRED = ("prompt", "aligned", "violating")
LABELLED = ("prompt", "answer", "label", "group")
_LABELS = {"1": 1, "0": 0, "true": 1, "false": 0, "aligned": 1, "violating": 0}
MAX_FIELD_CHARS = 131_072  # csv's default field limit; far beyond any model's context
MIN_GROUPS = 4  # the 2-fold split gives each fold a train, a val and a test part


def load_file_task(path: str | Path, *, seed: int = 0) -> Task:
    path = Path(path).expanduser()
    if path.is_dir():
        raise DataError(f"task file {path} is a directory; use file:<path to a .csv or .jsonl file>")
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
    task = Task(
        name=f"file:{path}",
        examples=tuple(examples),
        folds=make_folds(groups, seed=seed),
        prompt_format=f"file:{layout}",
        source=str(path),
    )
    if len(groups) < MIN_GROUPS:
        raise DataError(
            f"{path}: found {len(groups)} group(s) (questions); a task needs at least {MIN_GROUPS}, so that both folds "
            "get train, val and test questions — add rows for more questions (without a group column every row is its own)"
        )
    return task


def read_rows(path: Path) -> list[tuple[int, dict]]:
    """``(line number, row)`` pairs; line numbers are what a user sees in an editor."""
    suffix = path.suffix.lower()
    if suffix not in (".jsonl", ".csv"):
        raise DataError(f"{path}: unsupported file type {path.suffix!r}; use .csv or .jsonl")
    text = read_text(path)
    if suffix == ".jsonl":
        rows = []
        for line_no, line in enumerate(text.split("\n"), start=1):
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
    reader = csv.DictReader(io.StringIO(text, newline=""))
    try:
        return [(reader.line_num, row) for row in reader]
    except csv.Error as exc:
        if "field larger than field limit" in str(exc):
            raise DataError(f"{path}, line {reader.line_num}: a field is longer than {MAX_FIELD_CHARS:,} characters, "
                            "more than any model's context; shorten it") from None
        raise DataError(f"{path}, line {reader.line_num}: not valid CSV ({exc}); fix or remove the line") from None


def read_text(path: Path) -> str:
    """The file's text, decoded as UTF-8 (BOM allowed); DataError naming the line of a bad byte."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DataError(f"cannot read {path} ({exc.strerror}); check the path and its permissions") from None
    if data[:2] in (b"\xff\xfe", b"\xfe\xff"):
        raise DataError(f"{path} is UTF-16 text; save it as UTF-8")
    if b"\x00" in data:
        line = data.count(b"\n", 0, data.index(b"\x00")) + 1
        raise DataError(f"{path}, line {line}: holds a NUL byte, so it is a binary file, not UTF-8 text; export it as CSV or JSONL")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise DataError(f"{path}, line {line}: byte 0x{data[exc.start]:02x} is not UTF-8; save the file as UTF-8") from None


def _field(path: Path, line_no: int, row: dict, name: str, *, allow=(str,)) -> str:
    value = row.get(name)
    if value is not None and (isinstance(value, bool) and bool not in allow or not isinstance(value, allow)):
        kind = {dict: "an object", list: "a list", bool: "true/false"}.get(type(value), "a number")
        raise DataError(f"{path}, line {line_no}: column {name!r} is {kind} ({json.dumps(value)[:40]}); "
                        "expected text — write it as a JSON string")
    if value is None or str(value).strip() == "":
        raise DataError(f"{path}, line {line_no}: column {name!r} is empty; fill it in or remove the row")
    text = str(value)
    if len(text) > MAX_FIELD_CHARS:
        raise DataError(f"{path}, line {line_no}: column {name!r} has {len(text):,} characters, more than "
                        f"{MAX_FIELD_CHARS:,} (no model context holds it); shorten it")
    return text


def _group(path: Path, line_no: int, row: dict) -> str:
    if row.get("group") is None or str(row.get("group")).strip() == "":
        return f"row{line_no}"
    return _field(path, line_no, row, "group", allow=(str, int)).strip()


def _join(prompt: str, answer: str) -> str:
    return answer if prompt[-1:].isspace() or answer[:1].isspace() else " " + answer


def _paired(path: Path, rows) -> list[Example]:
    examples = []
    for line_no, row in rows:
        prompt = _field(path, line_no, row, "prompt")
        group = _group(path, line_no, row)
        for label, column in ((1, "aligned"), (0, "violating")):
            examples.append(Example(prompt, _join(prompt, _field(path, line_no, row, column)), label, group))
    return examples


def _labelled(path: Path, rows) -> list[Example]:
    examples = []
    for line_no, row in rows:
        prompt = _field(path, line_no, row, "prompt")
        raw = _field(path, line_no, row, "label", allow=(str, int, bool)).strip().lower()
        if raw not in _LABELS:
            raise DataError(f"{path}, line {line_no}: label {raw!r} is not 1/0 (or true/false); use 1 for aligned, 0 for violating")
        examples.append(
            Example(prompt, _join(prompt, _field(path, line_no, row, "answer")), _LABELS[raw],
                    _field(path, line_no, row, "group", allow=(str, int)).strip())
        )
    return examples
