"""Where scores and steering came from, and the checks that they are used with that model and bank.

Banks record the model they were collected from (``meta["model"]``: name and weights
fingerprint, :func:`real_lens.models.model_identity`). Scores record that model and the digest of
the bank they were computed on (:func:`with_source`); steering records them too. Consumers call
:func:`check_same_model` and :func:`check_scores_bank` before they spend any time, so scores from
one model never steer another and a bank overwritten after scoring is refused, not silently used.
"""

from __future__ import annotations

from dataclasses import replace

from .errors import ProvenanceError
from .models import model_identity


def source_of(bank) -> dict:
    """What a result computed on ``bank`` records about it: the model and the bank's digest and cache key."""
    return {"model": bank.meta.get("model"), "bank_digest": bank.digest, "bank_key": bank.meta.get("cache_key")}


def with_source(scores, bank):
    """``scores`` with :func:`source_of` ``bank`` added to their metadata."""
    return replace(scores, meta={**scores.meta, **source_of(bank)})


def check_same_model(recorded, model, *, what: str, fix: str) -> None:
    """ProvenanceError unless ``model`` has the weights fingerprint ``recorded`` (a model identity dict).

    Nothing to check when nothing was recorded (artifacts made from synthetic banks)."""
    if not isinstance(recorded, dict) or not recorded.get("fingerprint"):
        return
    current = model_identity(model)
    if current.get("fingerprint") != recorded["fingerprint"]:
        raise ProvenanceError(
            f"{what} came from model {recorded.get('name')!r} (weights {_short(recorded['fingerprint'])}), but the "
            f"model here is {current.get('name')!r} (weights {_short(current.get('fingerprint'))}); {fix}"
        )


def check_scores_bank(scores, bank, *, scores_dir, bank_dir) -> None:
    """ProvenanceError unless ``bank`` is the bank ``scores`` were computed on (same content digest)."""
    recorded = scores.meta.get("bank_digest")
    if recorded is None:
        return
    if recorded != bank.digest:
        raise ProvenanceError(
            f"the bank {bank_dir} is not the one the scores in {scores_dir} were computed on (its digest is "
            f"{bank.digest[:12]}, the scores record {recorded[:12]}): it was overwritten or another bank was given; "
            "pass the bank they came from (--bank), or score this bank again"
        )


def _short(fingerprint) -> str:
    text = str(fingerprint)
    return text if len(text) <= 40 else text[:37] + "..."


def environment() -> dict:
    """What computed a result: Python, torch, transformers and TransformerLens versions, and the git commit of
    the checkout real-lens runs from (None when it is installed from a wheel); ``git_dirty`` when that
    checkout has uncommitted changes to tracked files."""
    import importlib.metadata
    import platform
    import subprocess
    from pathlib import Path

    from ._version import __version__

    def version(package: str) -> str | None:
        try:
            return importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            return None

    found = {"real_lens": __version__, "python": platform.python_version(), "torch": version("torch"),
             "transformers": version("transformers"), "transformer_lens": version("transformer-lens"),
             "git_commit": None, "git_dirty": None}
    root = Path(__file__).resolve().parent.parent

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    if (root / ".git").exists():
        found["git_commit"] = git("rev-parse", "HEAD")
        status = git("status", "--porcelain", "--untracked-files=no")
        found["git_dirty"] = None if status is None else bool(status)
    return found
