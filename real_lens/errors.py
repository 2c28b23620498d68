"""Expected failures. The CLI prints any `RealLensError` as one line and exits with code 2.

Every message says what was expected, what was found, and how to fix it.
:func:`describe_expected_failure` is the one boundary that turns any expected failure (these
classes, OS errors, undecodable or malformed files, refused pickles, out-of-memory) into that line.
"""

import errno
import json
import os
import pickle


class RealLensError(Exception):
    """A user-facing error: bad input, missing data, unknown names."""


class ModelLoadError(RealLensError):
    """A model name or path could not be resolved or loaded."""


class DataError(RealLensError):
    """A dataset file is missing or malformed."""


class BankError(RealLensError):
    """An activation bank is malformed, corrupt or does not fit the request."""


class ScoringError(RealLensError):
    """A scorer cannot run on the given input."""


class ArtifactError(RealLensError):
    """A saved artifact (bank, scores, steering, cache, run file) is missing, damaged or not what was asked for."""


class ArtifactMissingError(ArtifactError):
    """A directory holds no artifact of the asked kind at all."""


class OutputLockedError(RealLensError):
    """Another process is writing the same output directory."""


class ProvenanceError(RealLensError):
    """An artifact was made from another model or another bank than the one it is used with."""


def unknown_name_error(kind: str, name: str, valid) -> RealLensError:
    """The error for an unknown name, listing the valid ones."""
    return RealLensError(f"unknown {kind} {name!r}; expected one of: {', '.join(sorted(valid))}")


# --------------------------------------------------------------------------- the CLI's error boundary
_OS_FIXES = {
    errno.ENOSPC: "free some disk space (or write elsewhere) and run again; finished work is kept",
    errno.EDQUOT: "free some of your disk quota (or write elsewhere) and run again; finished work is kept",
    errno.EFBIG: "the file-size limit (ulimit -f) is too small for it; raise the limit or write elsewhere",
    errno.EACCES: "choose a location you can write to (and read from), or fix its permissions",
    errno.EPERM: "choose a location you can write to (and read from), or fix its permissions",
    errno.EROFS: "the file system is read-only; write elsewhere",
    errno.EISDIR: "a directory is where a file was expected; pass a file path",
    errno.ENOTDIR: "part of the path is a file where a directory was expected; pass another path",
    errno.ENOENT: "check that the path exists",
    errno.EEXIST: "something is already there; remove it or choose another path",
    errno.ENOTEMPTY: "the directory is not empty; remove it or choose another path",
    errno.EMFILE: "too many open files; raise the limit (ulimit -n) and run again",
    errno.ENAMETOOLONG: "use a shorter path",
    errno.EIO: "the storage device reported an I/O error; check it, then run again",
}


def describe_expected_failure(exc: BaseException) -> str | None:
    """The one-line message for an expected failure (what was expected, what was found, the fix); None for a bug."""
    if isinstance(exc, RealLensError):
        return str(exc)
    if isinstance(exc, OSError):
        if exc.errno is None:
            return f"{exc}; check the path and the disk, then run again"
        where = " -> ".join(str(f) for f in (exc.filename, exc.filename2) if f is not None)
        fix = _OS_FIXES.get(exc.errno, "check the path and the disk, then run again")
        return f"could not use {where or 'a file'}: {exc.strerror or os.strerror(exc.errno)}; {fix}"
    if isinstance(exc, UnicodeDecodeError):
        return (f"expected UTF-8 text, found byte 0x{exc.object[exc.start]:02x} at offset {exc.start} that is not "
                "UTF-8 in a file being read; save the file as UTF-8")
    if isinstance(exc, json.JSONDecodeError):
        return f"expected a JSON file, found malformed JSON ({exc.msg} at line {exc.lineno}); restore or fix the file"
    if isinstance(exc, pickle.UnpicklingError):
        first = str(exc).splitlines()[0] if str(exc) else ""
        return (f"refused to load a pickle file, which could run code ({first}); real-lens reads safetensors and JSON "
                "only — convert the file to safetensors with a tool you trust")
    if isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError":
        return "ran out of memory; lower --batch-size, use a smaller task (--limit), or a machine with more memory"
    return None
