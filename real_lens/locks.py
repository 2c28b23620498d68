"""Advisory write locks on output directories (``flock`` on ``.NAME.lock`` beside the directory).

A second writer of the same directory either waits (caches: one process builds, the others
then reuse) or fails at once with one line (a user's ``--out``, so two commands never
interleave). A lock held by a killed process is dropped by the kernel. The lock file is opened
with ``O_NOFOLLOW``: a symbolic link planted in its place is refused (one line), never written
through. The lock file lives beside the directory because the directory itself is swapped when an
artifact is published.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import stat
import threading
import time
from pathlib import Path
from typing import Iterator

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; writes stay atomic, concurrent writers are not excluded
    fcntl = None

from .errors import OutputLockedError, RealLensError
from .io import notice


_HELD = threading.local()  # per thread: lock path -> depth; threads exclude each other like processes


def lock_path(directory: Path) -> Path:
    """The lock file of ``directory``: ``.NAME.lock`` beside it (it must outlive the directory's swaps)."""
    directory = Path(os.path.realpath(os.fspath(directory)))
    return directory.parent / f".{directory.name}.lock"


@contextlib.contextmanager
def output_lock(directory, *, wait: bool) -> Iterator[None]:
    """Hold the advisory write lock of ``directory`` for the block (re-entrant within a thread).

    ``wait=False``: if another process (or thread) holds it, raise OutputLockedError naming it.
    ``wait=True``: wait for it, saying so once on stderr. The lock file is removed on release
    (and left by a killed holder, whose lock the kernel drops; the next writer takes it over)."""
    path = lock_path(directory)
    held = _HELD.__dict__.setdefault("locks", {})
    if path in held:
        held[path] += 1
        try:
            yield
        finally:
            held[path] -= 1
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    if fcntl is None:
        yield
        return
    fd = _acquire(path, directory, wait=wait)
    held[path] = 1
    try:
        yield
    finally:
        del held[path]
        with contextlib.suppress(OSError):
            path.unlink()  # while still locked: a waiter then finds its inode gone and locks a fresh file
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def _acquire(path: Path, directory, *, wait: bool) -> int:
    """A locked fd on the file now at ``path`` (a holder may unlink it on release: then lock the new one)."""
    while True:
        fd = _open_lock_file(path, directory)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _holder(fd)
                if not wait:
                    raise OutputLockedError(
                        f"{_absolute(directory)} is being written by another real-lens process ({holder}); "
                        "wait for it to finish, or write to another --out"
                    ) from None
                notice(f"waiting for {_absolute(directory)}: another real-lens process is writing it ({holder})")
                fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                current = os.stat(path).st_ino
            except FileNotFoundError:
                current = None
            if current == os.fstat(fd).st_ino:
                os.ftruncate(fd, 0)
                os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%H:%M:%S')}\n".encode(), 0)
                return fd
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)  # the file we locked was released and removed meanwhile; lock the one there now


def _open_lock_file(path: Path, directory) -> int:
    """The lock file, opened without following a symlink: someone who can write the parent folder
    could otherwise point ``.NAME.lock`` at any file of this user's and have it overwritten."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0), 0o666)
    except OSError as exc:
        if exc.errno != errno.ELOOP and not os.path.islink(path):
            raise
        raise RealLensError(
            f"the lock file {path} of {_absolute(directory)} is a symbolic link (to {os.readlink(path)!r}); "
            "expected a plain file or none — real-lens does not write through it; remove the link and run again"
        ) from None
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode) or info.st_nlink > 1:  # a hard link to another file is written through too
        os.close(fd)
        found = "a hard link to another file" if stat.S_ISREG(info.st_mode) else "not a plain file"
        raise RealLensError(f"the lock file {path} of {_absolute(directory)} is {found}; expected a plain file of "
                            "its own or none — remove it and run again")
    return fd


def _holder(fd: int) -> str:
    try:
        return os.pread(fd, 200, 0).decode(errors="replace").strip() or "pid unknown"
    except OSError:
        return "pid unknown"


def _absolute(path) -> Path:
    return Path(os.path.abspath(os.fspath(path)))
