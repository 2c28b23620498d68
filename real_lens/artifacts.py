"""Artifact directories as single commits: banks, scores, steering, cached models.

:func:`artifact_writer` stages every file in a sibling directory, records each file's size and
SHA-256 in ``manifest.json``, flushes everything and publishes the directory in one step;
:func:`load_artifact` verifies the manifest before the files are trusted.

Publishing a directory over an existing one is not atomic with a plain ``rename(2)`` (it refuses
a non-empty target). On Linux, ``renameat2(RENAME_EXCHANGE)`` swaps the staged directory and the
old one in one step, so a reader sees the old artifact or the new one, never neither and never a
mix; the old one is deleted afterwards. Where the kernel or file system lacks it, the old
directory is renamed aside (``.NAME.old-*``) and the new one renamed in; a crash between the two
renames leaves the old artifact, whole, under the aside name: readers then read it there and the
next writer renames it back before it starts. Writers hold :func:`real_lens.locks.output_lock`.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import re
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path
from dataclasses import dataclass
from typing import Callable, Collection, Iterator, TypeVar

from .errors import ArtifactError, ArtifactMissingError, RealLensError
from .io import current_umask, describe_error, fsync_dir, notice, read_json, sha256_file, write_json
from .locks import output_lock

MANIFEST = "manifest.json"
STAGING_MARKER = ".real-lens-staging"  # inside each staging directory; see _make_staging
ARTIFACT_FORMAT = "real-lens-artifact/1"
T = TypeVar("T")
_KIND_NAMES = {"bank": "an activation bank", "scores": "module scores", "steering": "a steering",
               "model-cache": "a cached model", "tokenizer-cache": "a cached tokenizer",
               "vectors": "per-layer steering vectors"}


def _named(kind) -> str:
    return _KIND_NAMES.get(kind, f"a {kind}")


@contextlib.contextmanager
def artifact_writer(directory, *, kind: str, replaces: Collection[str] | None = ()) -> Iterator[Path]:
    """Stage an artifact: write its files into the yielded directory; on exit it is published whole.

    ``kind`` names what it is (``"bank"``, ``"scores"``, ...); loading checks it. ``replaces``: the
    file names an existing ``directory`` may hold besides those its manifest lists (a directory
    holding anything else is refused, never deleted); ``None`` for a cache real-lens owns outright.
    On an exception nothing is published and the previous artifact stays as it was."""
    directory = Path(os.path.realpath(os.fspath(directory)))  # publish where a symlink points, not over it
    with output_lock(directory, wait=True):
        _tidy(directory)
        if replaces is not None:
            check_replaceable(directory, kind=kind, replaces=replaces)
        staging = _make_staging(directory)
        try:
            os.chmod(staging, 0o777 & ~current_umask())
            yield staging
            _write_manifest(staging, kind)
            _publish(staging, directory)
            with contextlib.suppress(FileNotFoundError):  # the published artifact holds its own files only
                os.unlink(directory / STAGING_MARKER)
        except OSError as exc:  # name the artifact, not its hidden staging copy
            if exc.filename and Path(exc.filename).is_relative_to(staging) and exc.errno is not None:
                raise OSError(exc.errno, exc.strerror, str(directory / Path(exc.filename).relative_to(staging))) from exc
            raise
        finally:
            if os.path.lexists(staging) and not os.path.islink(staging):
                shutil.rmtree(staging, ignore_errors=True)


def _make_staging(directory: Path) -> Path:
    """A new staging directory beside ``directory``, named ``.NAME.staging-<pid>-<random token>``
    (``mkdtemp``: created new, never an existing path or a symlink), holding a marker file that names
    it: :func:`_tidy` removes only directories that carry their own marker, never one by its prefix."""
    staging = Path(tempfile.mkdtemp(dir=directory.parent, prefix=f".{directory.name}.staging-{os.getpid()}-"))
    fd = os.open(staging / STAGING_MARKER, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o666)
    try:
        os.write(fd, staging.name.encode())
    finally:
        os.close(fd)
    return staging


def _is_our_staging(path: Path) -> bool:
    """Whether ``path`` is a staging directory real-lens made: a real directory (no symlink) whose
    marker file is a plain file naming it."""
    marker = path / STAGING_MARKER
    try:
        if path.is_symlink() or not path.is_dir() or marker.is_symlink() or not marker.is_file():
            return False
        return marker.read_text(errors="replace") == path.name
    except OSError:
        return False


def check_replaceable(directory, *, kind: str, replaces: Collection[str] = ()) -> None:
    """Refuse (ArtifactError) a ``directory`` that is a file or holds something other than a ``kind`` artifact."""
    directory = Path(directory)
    if not directory.exists():
        return
    if not directory.is_dir():
        raise ArtifactError(f"{directory} is a file; expected a directory for {_named(kind)} (pass a new or empty directory)")
    names = {p.name for p in directory.iterdir()}
    if not names:
        return
    listed: set[str] = set()
    if MANIFEST in names:
        try:
            manifest = read_json(directory / MANIFEST)
            found_kind, listed = manifest["kind"], {f.split("/")[0] for f in manifest["files"]}
        except Exception:  # a damaged manifest of ours: the other names decide
            found_kind = kind
        if found_kind != kind:
            raise ArtifactError(
                f"{directory} holds {_named(found_kind)}, not {_named(kind)}; it is not overwritten — "
                "choose another directory"
            )
    others = sorted(names - listed - set(replaces) - {MANIFEST, STAGING_MARKER})
    if others:
        raise ArtifactError(
            f"{directory} already holds files that are not part of {_named(kind)} (e.g. {others[0]!r}); "
            "it is not overwritten — choose a new or empty directory"
        )


def check_output_path(out, *, kind: str | None, replaces: Collection[str] = ()) -> Path:
    """An output directory checked before any work: not empty, not a file, not under a file, writable;
    for an artifact ``kind``, new, empty or a previous ``kind`` artifact (see :func:`check_replaceable`)."""
    if out is None or not str(out).strip():
        raise RealLensError("--out is empty; pass the directory to write to (e.g. --out banks/tqa)")
    path = Path(out).expanduser()
    if path.is_symlink():
        raise RealLensError(f"--out {path} is a symbolic link (to {os.readlink(path)!r}); expected a real directory "
                            "or a new path — pass the link's target itself, or another --out")
    if path.exists() and not path.is_dir():
        raise RealLensError(f"--out {path} is a file; expected a directory (a new path, or an earlier output to replace)")
    _check_writable_beside(path)
    if path.exists() and not os.access(path, os.W_OK | os.X_OK):
        raise RealLensError(f"--out {path} is not writable by this user; choose a location you can write to")
    if kind is not None:
        check_replaceable(path, kind=kind, replaces=replaces)
    return path


def _check_writable_beside(path: Path) -> None:
    """``path``'s nearest existing ancestor is a directory, and where ``path`` is created (its lock
    file, its staging copy beside it) is writable by this user."""
    ancestor = path
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise RealLensError(f"--out {path} lies under {ancestor}, which is a file; pass a path inside a directory")
    for where in {ancestor, Path(os.path.abspath(path)).parent if path.exists() else ancestor}:
        if not os.access(where, os.W_OK | os.X_OK):
            raise RealLensError(f"--out {path}: {where} is not writable by this user; choose a location you can write to")


def check_output_file(out, *, suffixes: Collection[str], what: str) -> Path:
    """An output *file* (``export --format lm-eval``) checked before any work: not empty, one of
    ``suffixes``, not a directory, not a symlink, inside a writable directory. An existing plain
    file there is replaced (atomically, under the lock beside it)."""
    if out is None or not str(out).strip():
        raise RealLensError(f"--out is empty; pass the file to write {what} to (e.g. --out steering{sorted(suffixes)[0]})")
    path = Path(out).expanduser()
    if path.suffix not in suffixes:
        raise RealLensError(f"--out {path} ends in {path.suffix or 'no suffix'!r}; expected {' or '.join(sorted(suffixes))} "
                            f"for {what}; rename it")
    if path.is_symlink():
        raise RealLensError(f"--out {path} is a symbolic link (to {os.readlink(path)!r}); expected a plain file or a new "
                            "path — pass the link's target itself, or another --out")
    if path.is_dir():
        raise RealLensError(f"--out {path} is a directory; expected a file path for {what}")
    if path.exists() and not path.is_file():
        raise RealLensError(f"--out {path} is not a plain file (a device, FIFO or socket); pass another --out")
    _check_writable_beside(path)
    return path


def _write_manifest(staging: Path, kind: str) -> dict:
    from ._version import __version__

    files = {}
    for path in sorted(p for p in staging.rglob("*") if p.is_file() and p != staging / STAGING_MARKER):
        with open(path, "rb+") as f:
            os.fsync(f.fileno())
        files[path.relative_to(staging).as_posix()] = {"size": path.stat().st_size, "sha256": sha256_file(path)}
    for sub in [staging, *(p for p in staging.rglob("*") if p.is_dir())]:
        os.chmod(sub, 0o777 & ~current_umask())
        fsync_dir(sub)
    manifest = {"format": ARTIFACT_FORMAT, "kind": kind, "id": uuid.uuid4().hex, "files": files,
                "written": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "real_lens_version": __version__}
    write_json(staging / MANIFEST, manifest)
    return manifest


def _publish(staging: Path, directory: Path) -> None:
    """Make ``staging`` appear at ``directory`` in one step (see the module docstring)."""
    if not os.path.lexists(directory):
        try:
            os.rename(staging, directory)
            fsync_dir(directory.parent)
            return
        except OSError as exc:  # someone created it meanwhile: replace it below
            if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                raise
    if _exchange(staging, directory):
        old = staging  # now holds the previous version
    else:
        old = directory.parent / f".{directory.name}.old-{uuid.uuid4().hex[:8]}"
        os.rename(directory, old)
        os.rename(staging, directory)
    fsync_dir(directory.parent)
    shutil.rmtree(old, ignore_errors=True)


_RENAME_EXCHANGE, _AT_FDCWD = 2, -100


def _exchange(a: Path, b: Path) -> bool:
    """Swap two directories atomically (Linux ``renameat2``); False where that is not supported."""
    renameat2 = _renameat2()
    if renameat2 is None:
        return False
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP):
        return False
    raise OSError(err, os.strerror(err), str(b))


def _renameat2():
    # Python has no binding for renameat2 (glibc >= 2.28 exports it); ctypes reaches it directly.
    if not sys.platform.startswith("linux"):
        return None
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return fn


def _siblings(directory: Path, tag: str) -> list[Path]:
    """Sibling directories this module made: ``old`` copies named ``.NAME.old-<8 hex>`` holding a
    manifest, ``staging`` copies carrying their own marker. A user's ``.NAME.staging-mine`` is neither."""
    prefix = f".{directory.name}.{tag}-"
    try:
        candidates = [p for p in directory.parent.iterdir() if p.name.startswith(prefix)]
    except FileNotFoundError:
        return []
    if tag == "staging":
        return [p for p in candidates if _is_our_staging(p)]
    return [p for p in candidates if re.fullmatch(r"[0-9a-f]{8}", p.name[len(prefix):]) and not p.is_symlink()
            and p.is_dir() and (p / MANIFEST).is_file()]


def _tidy(directory: Path) -> None:
    """Under the lock: undo a publish that died between its two renames, drop dead staging copies
    (only those :func:`_siblings` recognises as this module's own)."""
    olds = sorted(_siblings(directory, "old"), key=lambda p: p.stat().st_mtime)
    if olds and not os.path.lexists(directory):
        os.rename(olds.pop(), directory)
        notice(f"restored {directory} from an interrupted write")
    leftovers = [*olds, *_siblings(directory, "staging")]
    marker = directory / STAGING_MARKER  # a publish died after the exchange: its staging name now holds the old copy
    if marker.is_file() and not marker.is_symlink():
        name = marker.read_text(errors="replace")
        swapped = directory.parent / name
        if name.startswith(f".{directory.name}.staging-") and "/" not in name and swapped.is_dir() \
                and not swapped.is_symlink():
            leftovers.append(swapped)
        marker.unlink()
    for leftover in leftovers:
        shutil.rmtree(leftover, ignore_errors=True)


def committed_path(directory) -> Path:
    """Where the last published version of ``directory`` is: itself, or, while a non-atomic publish
    is half done (or died half done), the old version renamed aside."""
    directory = Path(os.path.realpath(os.fspath(directory)))
    if os.path.lexists(directory):
        return directory
    olds = sorted(_siblings(directory, "old"), key=lambda p: p.stat().st_mtime)
    return olds[-1] if olds else directory


def read_manifest(directory: Path) -> dict | None:
    """The manifest of ``directory``; None if it has none; ArtifactError if it is damaged."""
    path = Path(directory) / MANIFEST
    if not path.is_file():
        return None
    try:
        manifest = read_json(path)
        if manifest.get("format") != ARTIFACT_FORMAT or not isinstance(manifest.get("files"), dict):
            raise ValueError(f"format {manifest.get('format')!r}")
        return manifest
    except (OSError, UnicodeDecodeError, ValueError, AttributeError) as exc:
        raise ArtifactError(f"{directory}: its {MANIFEST} is unreadable ({describe_error(exc)})") from exc


def verify_artifact(directory, *, kind: str) -> dict | None:
    """The manifest of a whole, undamaged ``kind`` artifact, after checking every file's size and SHA-256.

    None if the directory has no manifest (absent, or written by an older real-lens); ArtifactError
    naming the first damaged, missing or foreign file otherwise."""
    directory = Path(directory)
    manifest = read_manifest(directory)
    if manifest is None:
        return None
    if manifest.get("kind") != kind:
        raise ArtifactMissingError(f"it holds {_named(manifest.get('kind'))}")
    for name, entry in sorted(manifest["files"].items()):
        path = directory / name
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            raise ArtifactError(f"{directory}: {name} is missing (its manifest lists it)") from None
        if size != entry.get("size"):
            raise ArtifactError(
                f"{directory}: {name} has {size:,} bytes, its manifest says {entry.get('size'):,} (truncated or overwritten)"
            )
        if sha256_file(path) != entry.get("sha256"):
            raise ArtifactError(f"{directory}: {name} does not match its SHA-256 in the manifest (damaged or modified)")
    return manifest


def load_artifact(directory, *, kind: str, read: Callable[[Path], T], legacy_files: Collection[str],
                  allow_unverified: bool, what: str) -> T:
    """``read(dir)`` on the verified, consistent last version of a ``kind`` artifact.

    ArtifactMissingError if ``directory`` holds neither a manifest nor ``legacy_files`` (the files
    an older real-lens wrote without a manifest). Such an older artifact is read with a notice when
    ``allow_unverified``, refused otherwise. If the artifact is replaced while it is read (another
    process publishes a new version), it is read again."""
    for _ in range(5):
        where = committed_path(directory)
        before = _manifest_id(where)
        try:
            manifest = verify_artifact(where, kind=kind)
            if manifest is None:
                if not all((where / name).is_file() for name in legacy_files):
                    raise ArtifactMissingError("")
                if not allow_unverified:
                    raise ArtifactError(f"{where} has no {MANIFEST} (deleted, or written by an older real-lens), so it cannot "
                                        "be verified; pass --allow-unverified (allow_unverified=True) to read it anyway")
                notice(f"{where} has no {MANIFEST} (written by an older real-lens); {what} is read without verification",
                       once=f"unverified:{where}")
                return read(where)
            value = read(where)
        except ArtifactMissingError:
            raise
        except (ArtifactError, OSError):
            if _manifest_id(where) != before or not os.path.lexists(where):
                continue  # a writer published meanwhile; read the new version
            raise
        if _manifest_id(where) == manifest["id"]:
            return value
    raise ArtifactError(f"{directory} kept changing while it was read (another process is rewriting it); try again")


def _manifest_id(directory: Path) -> str | None:
    try:
        return read_json(Path(directory) / MANIFEST).get("id")
    except Exception:  # absent or damaged: no id
        return None


@dataclass(frozen=True)
class ArtifactType:
    """What :func:`load_verified` says about one kind of artifact: its ``kind`` (in the manifest), its
    data ``files``, what it is called (``what``, with its article), the exception it raises, how to
    make one (``create``) and what to do when one is damaged (``redo``)."""

    kind: str
    files: tuple[str, ...]
    what: str
    error: type[Exception]
    create: str
    redo: str


def load_verified(directory, artifact: ArtifactType, *, read: Callable[[Path], T], allow_unverified: bool) -> T:
    """:func:`load_artifact` for ``artifact``'s type, with the one-line errors every artifact type gives.

    An older artifact without a manifest (it holds ``artifact.files``) is read with a notice when
    ``allow_unverified``, refused otherwise."""
    directory = Path(directory)
    name = artifact.what.removeprefix("an ").removeprefix("a ")
    try:
        return load_artifact(directory, kind=artifact.kind, read=read, legacy_files=artifact.files,
                             allow_unverified=allow_unverified, what=artifact.what)
    except ArtifactMissingError as exc:
        raise artifact.error(f"{directory} holds no {name}{f' ({exc})' if str(exc) else ''}: expected "
                             f"{' and '.join(artifact.files)}; {artifact.create}") from None
    except ArtifactError as exc:
        raise artifact.error(f"{name} {directory} is unreadable: {exc}; {artifact.redo}") from exc
