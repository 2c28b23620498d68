"""Where task data comes from: ``--data-dir``, ``$REAL_LENS_DATA``, or ``../shared/data``.

When none of these exists, loaders fall back to the Hugging Face Hub via ``datasets``.
"""

from __future__ import annotations

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
    if not path.is_file():
        raise DataError(
            f"{what} not found at {path}; pass --data-dir (or set ${ENV_VAR}) to the folder that holds it"
        )
    return path


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
