"""Where task data comes from: ``--data-dir``, ``$REAL_LENS_DATA``, or ``../shared/data``.

When none of these exists, loaders fall back to the Hugging Face Hub via ``datasets``.
"""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path

from ..errors import DataError

ENV_VAR = "REAL_LENS_DATA"


def resolve_data_dir(data_dir: str | os.PathLike | None = None) -> Path | None:
    """The data directory to read from, or ``None`` (= use the Hub)."""
    if data_dir is not None:
        path = Path(data_dir).expanduser()
        if not path.is_dir():
            raise DataError(f"--data-dir {path} is not a directory; pass the folder that holds truthfulqa/, caa/, ...")
        return path
    if os.environ.get(ENV_VAR):
        path = Path(os.environ[ENV_VAR]).expanduser()
        if not path.is_dir():
            raise DataError(f"${ENV_VAR}={path} is not a directory; point it at the data folder or unset it")
        return path
    repo_root = Path(__file__).resolve().parents[2]
    for candidate in (Path.cwd() / ".." / "shared" / "data", repo_root / ".." / "shared" / "data"):
        if candidate.is_dir():
            return candidate.resolve()
    return None


def require_file(path: Path, *, what: str) -> Path:
    """``path``, checked to be a readable, whole data file before anything else runs.

    Missing, unreadable, non-UTF-8 or binary files, and ``.json`` / ``.jsonl`` / ``.csv`` files that do
    not parse to the end (a truncated download) raise DataError naming the file and the fix. A file is
    checked once per process (until its size or modification time changes)."""
    if not path.is_file():
        raise DataError(
            f"{what} not found at {path}; pass --data-dir (or set ${ENV_VAR}) to the folder that holds it"
        )
    stat = path.stat()
    stamp = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if stamp not in _CHECKED:
        _check_data_file(path, what)
        _CHECKED.add(stamp)
    return path


_CHECKED: set[tuple] = set()


def _check_data_file(path: Path, what: str) -> None:
    from .files import read_text

    fix = "restore it from its source (re-download or re-copy the data folder)"
    try:
        text = read_text(path)
    except DataError as exc:
        raise DataError(f"{what}: {exc}; {fix}") from None
    suffix = path.suffix.lower()
    try:
        if suffix == ".json":
            json.loads(text)
        elif suffix == ".jsonl":
            for line_no, line in enumerate(text.split("\n"), start=1):
                if line.strip():
                    json.loads(line)
        elif suffix == ".csv":
            reader = csv.reader(io.StringIO(text, newline=""))
            header = next(reader, None)
            for row in reader:
                if header is not None and row and len(row) != len(header):
                    raise ValueError(f"line {reader.line_num} has {len(row)} fields, the header {len(header)}")
    except (ValueError, csv.Error) as exc:  # json.JSONDecodeError is a ValueError
        where = f", line {line_no}" if suffix == ".jsonl" else ""
        raise DataError(f"{what} {path}{where} is malformed or truncated ({exc}); {fix}") from None


def load_hub_dataset(*args, what: str, **kwargs):
    """``datasets.load_dataset`` with a one-line error when the Hub cannot be reached."""
    try:
        import datasets

        return datasets.load_dataset(*args, **kwargs)
    except Exception as exc:  # datasets raises many types for "offline"
        raise DataError(
            f"no local data for {what} and the Hugging Face Hub failed ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''}); pass --data-dir or set ${ENV_VAR}"
        ) from exc
