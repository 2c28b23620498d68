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

Parsing is strict (the ``csv`` module with ``strict=True``, ``json`` refusing duplicate keys): a row
with more or fewer fields than the header (an unquoted comma), an unbalanced quote, a duplicate or
empty header name, a NUL byte, an empty required field, a missing column or JSONL key, a value of
the wrong JSON type or a lone surrogate (``"\\ud800"``) is refused with one line naming the file and
the physical line (a quoted field spanning lines counts each of them) — never loaded.
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
    searched = f" (looked in {Path.cwd()}, the current directory)" if not path.is_absolute() else ""
    if path.is_dir():
        raise DataError(f"task file {path} is a directory; use file:<path to a .csv or .jsonl file>")
    if not path.is_file():
        raise DataError(f"task file {path} does not exist{searched}; use file:<path to a .csv or .jsonl file>")
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
        wanted = LABELLED if columns & {"answer", "label"} else PAIRED
        missing = [c for c in wanted if c not in columns]
        raise DataError(
            f"{path}: missing column(s) {', '.join(map(repr, missing))} (found {sorted(columns)}); expected either "
            f"{', '.join(PAIRED)}[, group] or {', '.join(LABELLED)} — add the missing column(s) to the header"
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
    """``(line number, row)`` pairs; line numbers are the physical lines a user sees in an editor (a
    row's first line; a quoted field spanning several lines counts each of them).

    Strict: a CSV row with more or fewer fields than the header, an unbalanced quote, a duplicate or
    empty header name, a JSONL object with a duplicate key or a lone surrogate is refused (DataError),
    never loaded."""
    suffix = path.suffix.lower()
    if suffix not in (".jsonl", ".csv"):
        raise DataError(f"{path}: unsupported file type {path.suffix!r}; use .csv or .jsonl")
    text = read_text(path)
    return _jsonl_rows(path, text) if suffix == ".jsonl" else _csv_rows(path, text)


def _csv_rows(path: Path, text: str) -> list[tuple[int, dict]]:
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    rows, header, line_no = [], None, 1
    try:
        for record in reader:
            if record:  # a blank line is no row
                if header is None:
                    header = _check_header(path, line_no, record)
                elif len(record) != len(header):
                    raise DataError(
                        f"{path}, line {line_no}: found {len(record)} fields, expected {len(header)} as in the header "
                        f"({','.join(header)}); quote any field holding a comma or a quote character "
                        '(e.g. "Q: Is 1,000 more than 999? A:") and give every row one value per column'
                    )
                else:
                    rows.append((line_no, dict(zip(header, record))))
            line_no = reader.line_num + 1
    except csv.Error as exc:
        if "field larger than field limit" in str(exc):
            raise DataError(f"{path}, line {reader.line_num}: a field is longer than {MAX_FIELD_CHARS:,} characters, "
                            "more than any model's context; shorten it") from None
        if "unexpected end of data" in str(exc):
            raise DataError(f"{path}, line {line_no}: a quoted field opened on this line is never closed (unbalanced "
                            '"); close the quote, or write a quote inside a field as ""') from None
        raise DataError(f"{path}, line {reader.line_num}: not valid CSV ({exc}); quote the whole field and write a "
                        'quote inside it as ""') from None
    return rows


def _check_header(path: Path, line_no: int, header: list[str]) -> list[str]:
    names = [name.strip() for name in header]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise DataError(f"{path}, line {line_no}: the header names column(s) {', '.join(map(repr, duplicates))} more "
                        "than once; expected each column once — rename or remove the duplicate")
    if "" in names:
        raise DataError(f"{path}, line {line_no}: the header has an empty column name (column {names.index('') + 1}); "
                        "expected a name for every column — name it or remove the column")
    return names


def _jsonl_rows(path: Path, text: str) -> list[tuple[int, dict]]:
    rows = []
    for line_no, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line, object_pairs_hook=_unique_keys)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}, line {line_no}: not valid JSON ({exc.msg}); fix or remove the line") from None
        except ValueError as exc:  # a duplicate key
            raise DataError(f"{path}, line {line_no}: {exc}; expected each key once — remove the duplicate") from None
        if not isinstance(row, dict):
            raise DataError(f"{path}, line {line_no}: expected a JSON object per line, found {type(row).__name__}")
        rows.append((line_no, row))
    return rows


def _unique_keys(pairs):
    keys = [k for k, _ in pairs]
    duplicates = sorted({k for k in keys if keys.count(k) > 1})
    if duplicates:
        raise ValueError(f"key(s) {', '.join(map(repr, duplicates))} appear more than once in one object")
    return dict(pairs)


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
    if name not in row:
        raise DataError(f"{path}, line {line_no}: missing key {name!r}; expected it in every row, as in the first "
                        "— add it or remove the row")
    if value is None or str(value).strip() == "":
        raise DataError(f"{path}, line {line_no}: column {name!r} is empty; fill it in or remove the row")
    text = str(value)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise DataError(f"{path}, line {line_no}: column {name!r} holds a lone surrogate (\\u{ord(text[exc.start]):04x}), which is "
                        "not text; expected valid Unicode — remove the escape or write the whole surrogate pair") from None
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
