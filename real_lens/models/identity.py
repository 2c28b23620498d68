"""What identifies a loaded model: its name(s) and a fingerprint of its weights.

Two questions, two functions: :func:`names_match` says whether a recorded identity *names* a
model (any of its names; the same weights under another transformers version get another cache
fingerprint but are the same model), and :func:`real_lens.provenance.check_same_model` refuses a
model whose *weights fingerprint* differs from a recorded one.
"""

from __future__ import annotations

import contextlib
import hashlib
from pathlib import Path

from ..io import read_json, sha256_file, write_json

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


def dir_fingerprint(path: Path, *, cache_file: Path | None = None) -> str:
    """A digest of the SHA-256 of every file in a local model directory (weights, config, tokenizer).

    Hashing GBs of weights on every load is slow, so each file's SHA-256 is remembered in
    ``cache_file`` under its (device, inode, mtime and ctime in ns, size): changed weights written
    back with the old size and the old mtime (``touch -d``) still get a new ctime, which no user can
    set, so they are hashed again, never trusted."""
    known = _read_hash_cache(cache_file)
    entries, changed = [], False
    for file in sorted(p for p in Path(path).iterdir() if p.is_file()):
        st = file.stat()
        key = f"{st.st_dev}:{st.st_ino}:{st.st_mtime_ns}:{st.st_ctime_ns}:{st.st_size}"
        digest = known.get(key)
        if digest is None:
            digest = known[key] = sha256_file(file)
            changed = True
        entries.append((file.name, digest))
    if changed and cache_file is not None:
        with contextlib.suppress(OSError):  # a cache that cannot be written only costs time
            write_json(cache_file, known)
    return hashlib.sha256(repr(entries).encode()).hexdigest()[:16]


def _read_hash_cache(cache_file: Path | None) -> dict[str, str]:
    if cache_file is None:
        return {}
    try:
        cached = read_json(cache_file)
    except (OSError, ValueError):  # absent or damaged: hash again
        return {}
    return {k: v for k, v in cached.items() if isinstance(v, str)} if isinstance(cached, dict) else {}


def weights_fingerprint(model) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().float().cpu().flatten()[:64].numpy().tobytes())
    return digest.hexdigest()[:16]
