"""What identifies a loaded model: its name(s) and a fingerprint of its weights.

Two questions, two functions: :func:`names_match` says whether a recorded identity *names* a
model (any of its names; the same weights under another transformers version get another cache
fingerprint but are the same model), and :func:`real_lens.provenance.check_same_model` refuses a
model whose *weights fingerprint* differs from a recorded one.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

FINGERPRINTS: dict[str, str] = {}


def model_identity(model) -> dict:
    """What identifies a loaded model's weights (for activation cache keys)."""
    identity = getattr(model, "real_lens_identity", None)
    if identity is None:
        cfg = model.cfg
        identity = {"name": getattr(cfg, "model_name", "unknown"), "fingerprint": weights_fingerprint(model)}
    return identity


def model_names(model) -> set[str]:
    """Every name ``model`` answers to: the name it was loaded by, its Hub name, TransformerLens's ``model_name``."""
    identity = model_identity(model)
    return {identity.get("name"), identity.get("hf_name"), getattr(model.cfg, "model_name", None)} - {None}


def names_match(recorded, model) -> bool:
    """Whether a recorded identity (a bank's or steering's ``meta["model"]``, a dict or a name)
    names ``model``: any of its ``name``/``hf_name`` is one of :func:`model_names`. Nothing recorded
    matches any model."""
    names = model_names(model)
    if isinstance(recorded, dict):
        candidates = {recorded.get("name"), recorded.get("hf_name")} - {None}
        return not candidates or bool(candidates & names)
    return str(recorded) in names


def dir_fingerprint(path: Path) -> str:
    """Names, sizes and mtimes of the weight files (hashing GBs of weights on every load is too slow)."""
    entries = sorted(
        (p.name, p.stat().st_size, int(p.stat().st_mtime)) for p in path.iterdir() if p.is_file()
    )
    return hashlib.sha256(repr(entries).encode()).hexdigest()[:16]


def weights_fingerprint(model) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().float().cpu().flatten()[:64].numpy().tobytes())
    return digest.hexdigest()[:16]
