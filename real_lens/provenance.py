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
