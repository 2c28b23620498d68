"""Atomic files: safetensors for tensors, JSON beside them; never pickle.

- :func:`atomic_write` writes a temporary file beside the target, flushes it to disk and
  renames it into place, with the permissions the umask gives (``mkstemp`` alone gives 0600);
  a failed write (disk full, ...) leaves the target as it was and raises OSError naming it;
- sealed files (run cells, a run's ``config.json``, collection chunks) store the SHA-256 of
  their own content, so a truncated or bit-flipped file is noticed when read
  (:func:`read_sealed_json`, :func:`read_sealed_tensors`).

Directories of files published in one step are in :mod:`real_lens.artifacts`.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors.torch import load_file, save_file

from .errors import ArtifactError

CHECKSUM_KEY = "sha256"  # the key sealed JSON files keep their own digest under


# --------------------------------------------------------------------------- messages
_NOTICED: set[str] = set()


def notice(message: str, *, once: str | None = None) -> None:
    """One line on stderr for something real-lens did on its own (a cache rebuilt, a wait).

    ``once``: a key; the same key is reported only once per process."""
    if once is not None:
        if once in _NOTICED:
            return
        _NOTICED.add(once)
    print(f"real-lens: {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- files
def current_umask() -> int:
    """The process umask, read without changing it where Linux allows (``os.umask`` must set one)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some file systems cannot fsync a directory; the rename is still atomic
        pass
    finally:
        os.close(fd)


def atomic_write(path: Path, write: Callable[[str], Any]) -> None:
    """``write(tmp)`` fills a temporary file beside ``path``; it is flushed to disk and renamed onto ``path``.

    The file gets the permissions the umask gives any new file (``mkstemp`` alone would give 0600).
    A failed write (disk full, ...) leaves ``path`` as it was and raises OSError naming ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        try:
            write(tmp)
        except Exception as exc:
            converted = _as_os_error(exc, path)
            if converted is exc:
                raise
            raise converted from exc
        os.chmod(tmp, 0o666 & ~current_umask())
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def _as_os_error(exc: Exception, path: Path) -> Exception:
    """Write errors as OSError naming the file: Python's own lack the name, safetensors' are not OSErrors."""
    if isinstance(exc, OSError) and exc.filename is None and exc.errno is not None:
        return OSError(exc.errno, exc.strerror, str(path))
    match = re.search(r"os error (\d+)", str(exc)) if type(exc).__name__ == "SafetensorError" else None
    if match:
        code = int(match.group(1))
        return OSError(code, os.strerror(code), str(path))
    return exc


def write_json(path: Path, obj: Any) -> None:
    def write(tmp):
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(obj, f, indent=2, sort_keys=True)
            f.write("\n")

    atomic_write(path, write)


def read_json(path: Path) -> Any:
    """The JSON in ``path``; a document nested too deeply for the parser (a crafted file ``[[[[…``)
    is a ``json.JSONDecodeError`` like any malformed file, not a RecursionError."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    try:
        return json.loads(text)
    except RecursionError:
        raise json.JSONDecodeError("nested too deeply to read", text, 0) from None


def write_tensors(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    contiguous = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    atomic_write(path, lambda tmp: save_file(contiguous, tmp))


def read_tensors(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path))


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()


# --------------------------------------------------------------------------- sealed files
def _canonical(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def write_sealed_json(path: Path, obj: dict) -> None:
    """``obj`` as JSON plus ``"sha256"``: the digest of its canonical form (so readers detect damage)."""
    if CHECKSUM_KEY in obj:
        raise ValueError(f"a sealed JSON object cannot use the key {CHECKSUM_KEY!r} itself")
    write_json(path, {**obj, CHECKSUM_KEY: hashlib.sha256(_canonical(obj)).hexdigest()})


def read_sealed_json(path: Path, *, allow_unsealed: bool = False) -> dict:
    """The object :func:`write_sealed_json` stored; ArtifactError if the file is unreadable or damaged,
    or has no checksum (unless ``allow_unsealed``: a file an older real-lens wrote is then taken as is)."""
    try:
        stored = read_json(path)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ArtifactError(f"{path} is unreadable ({describe_error(exc)})") from exc
    if not isinstance(stored, dict):
        raise ArtifactError(f"{path} is damaged (expected a JSON object, found {type(stored).__name__})")
    if CHECKSUM_KEY not in stored:
        if allow_unsealed:
            return stored
        raise ArtifactError(f"{path} has no checksum (written by an older real-lens, or not by real-lens)")
    obj = {k: v for k, v in stored.items() if k != CHECKSUM_KEY}
    if hashlib.sha256(_canonical(obj)).hexdigest() != stored[CHECKSUM_KEY]:
        raise ArtifactError(f"{path} is damaged (its content does not match its checksum)")
    return obj


def write_sealed_tensors(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    """One safetensors file whose metadata holds the SHA-256 of its tensors (names, dtypes, shapes, bytes)."""
    contiguous = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    metadata = {CHECKSUM_KEY: _tensors_digest(contiguous)}
    atomic_write(path, lambda tmp: save_file(contiguous, tmp, metadata=metadata))


def read_sealed_tensors(path: Path) -> dict[str, torch.Tensor]:
    """The tensors :func:`write_sealed_tensors` stored; ArtifactError if unreadable or damaged."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            expected = (f.metadata() or {}).get(CHECKSUM_KEY)
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:  # safetensors raises its own error types for a malformed header
        raise ArtifactError(f"{path} is unreadable ({describe_error(exc)})") from exc
    if expected is None or _tensors_digest(tensors) != expected:
        raise ArtifactError(f"{path} is damaged (its tensors do not match their checksum)")
    return tensors


def _tensors_digest(tensors: dict[str, torch.Tensor]) -> str:
    digest = hashlib.sha256()
    for name in sorted(tensors):
        tensor = tensors[name].contiguous()
        digest.update(_canonical([name, str(tensor.dtype), list(tensor.shape)]))
        digest.update(tensor.view(torch.uint8).numpy().data if tensor.numel() else b"")
    return digest.hexdigest()


def describe_error(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
