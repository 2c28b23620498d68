"""Hugging Face loading shared by every model source (local directories, the Hub, dequantised GGUF caches)."""

from __future__ import annotations

import pickle

import torch

from ..errors import ModelLoadError

from ..names import DEFAULT_MODEL  # noqa: F401 (re-exported)

def from_pretrained(source: str, *, dtype: torch.dtype, what: str, device_map=None, max_memory=None):
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
    ensure_architectures(model)
    return model.eval(), tokenizer


def ensure_architectures(model) -> None:
    """GGUF-derived configs lack ``architectures``; TransformerLens picks its adapter from it."""
    if not getattr(model.config, "architectures", None):
        model.config.architectures = [type(model).__name__]
