"""Load models as TransformerLens 4 ``TransformerBridge`` objects (see the package docstring)."""

from __future__ import annotations

from pathlib import Path

import torch

from ..errors import ModelLoadError
from .embedded import EMBEDDED, SPLIT, cache_root, embedded_gguf_path, gguf_model_name, load_gguf, load_split_gguf
from .hf import DEFAULT_MODEL, from_pretrained
from .identity import FINGERPRINTS, dir_fingerprint, weights_fingerprint
from .placement import check_device, dtype_name, resolve_dtype, resolve_placement
from .tiny import TINY_MODELS, build_tiny_hf_model, tiny_directory

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
    hf_model, tokenizer, official_name = load_hf(name, dtype=dtype, device_map=device_map, max_memory=max_memory)
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
    identity = {"name": name, "hf_name": official_name, "fingerprint": FINGERPRINTS.get(name, name)}
    if dtype != torch.float32:
        identity["dtype"] = dtype_name(dtype)
    bridge.real_lens_identity = identity
    return bridge


def load_hf(name: str, *, dtype: torch.dtype, device_map=None, max_memory=None):
    """``(hf_model, tokenizer, official name)``; weights in ``dtype``, placed by ``device_map``."""
    load = dict(dtype=dtype, device_map=device_map, max_memory=max_memory)
    if name in TINY_MODELS:
        model, tokenizer = build_tiny_hf_model(name)
        FINGERPRINTS[name] = f"{name}-seed0-" + weights_fingerprint(model)
        if device_map is not None:  # placement needs from_pretrained: load the same weights from disk
            model, tokenizer = from_pretrained(str(tiny_directory(name, model, tokenizer)), what=name, **load)
        return model.to(dtype), tokenizer, name
    if name in EMBEDDED:
        spec = EMBEDDED[name]
        return *load_gguf(embedded_gguf_path(spec), key_name=name, **load), spec.hf_name
    if name in SPLIT:
        spec = SPLIT[name]
        return *load_split_gguf(spec, key_name=name, **load), spec.hf_name
    path = Path(name).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ModelLoadError(f"GGUF file {path} does not exist; pass the path of an existing .gguf file")
        return *load_gguf(path, key_name=name, **load), gguf_model_name(path)
    if path.is_dir():
        check_model_directory(path)
        FINGERPRINTS[name] = f"dir:{path.resolve()}:{dir_fingerprint(path, cache_file=cache_root() / 'file-hashes.json')}"
        return *from_pretrained(str(path), what=f"local model directory {path}", **load), str(path)
    check_hub_name(name)
    FINGERPRINTS[name] = f"hub:{name}"
    return *from_pretrained(name, what=f"Hugging Face Hub model {name!r}", **load), name


def check_model_directory(path: Path) -> None:
    if not (path / "config.json").is_file():
        raise ModelLoadError(
            f"{path} is not a Hugging Face model directory (no config.json); pass a directory made by "
            "save_pretrained, a .gguf file, or a Hub name"
        )


def check_hub_name(name: str) -> None:
    if "/" not in name:
        raise ModelLoadError(
            f"unknown model {name!r}; expected one of {sorted([*EMBEDDED, *SPLIT, *TINY_MODELS])}, a local model "
            "directory, a .gguf file, or a Hugging Face Hub name such as 'HuggingFaceTB/SmolLM2-135M-Instruct'"
        )
