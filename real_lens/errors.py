"""Expected failures. The CLI prints any `RealLensError` as one line and exits with code 2.

Every message says what was expected, what was found, and how to fix it.
"""


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
