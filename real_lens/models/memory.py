"""What a model costs, from its config alone (on the ``meta`` device, no weights read)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import ModelLoadError
from .embedded import EMBEDDED, SPLIT, embedded_gguf_path, gguf_cache_dir, is_cached, split_cache_dir, split_gguf_chunks
from .hf import DEFAULT_MODEL
from .loading import check_hub_name, check_model_directory
from .placement import DTYPES, dtype_name, resolve_dtype
from .tiny import TINY_MODELS, build_tiny_hf_model

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
        from ..hooks import is_head_site

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
    the tiny test models.
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

    if name in TINY_MODELS:
        return build_tiny_hf_model(name)[0].config
    if name in SPLIT:
        target, key = split_cache_dir(SPLIT[name])
        if not is_cached(target, key):
            split_gguf_chunks(SPLIT[name])  # a missing part: the install command
            raise ModelLoadError(f"{name}'s config is read from its dequantised cache, which does not exist yet; "
                                 f"load the model once (make test-qwen does) and estimate again")
        return AutoConfig.from_pretrained(str(target))
    if name in EMBEDDED:
        return _gguf_config(embedded_gguf_path(EMBEDDED[name]))
    path = Path(name).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ModelLoadError(f"GGUF file {path} does not exist; pass the path of an existing .gguf file")
        return _gguf_config(path)
    if path.is_dir():
        check_model_directory(path)
        source, what = str(path), f"local model directory {path}"
    else:
        check_hub_name(name)
        source, what = name, f"Hugging Face Hub model {name!r}"
    try:
        return AutoConfig.from_pretrained(source)
    except (OSError, ValueError) as exc:
        cause = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelLoadError(f"could not read the config of {what}: {cause}") from exc


def _gguf_config(path: Path):
    from transformers import AutoConfig

    target, key = gguf_cache_dir(path)
    if is_cached(target, key):
        return AutoConfig.from_pretrained(str(target))
    return AutoConfig.from_pretrained(str(path.parent), gguf_file=path.name)


def _format_bytes(n: int) -> str:
    for unit, size in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:,.1f} {unit}"
    return f"{n} B"
