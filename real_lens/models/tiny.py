"""Seeded random 2-layer models with a byte tokenizer, built locally for tests (no download).

- ``tiny-llama``: SmolLM2's architecture (grouped KV, RoPE, RMSNorm, no biases);
- ``tiny-qwen2``: Qwen2.5's architecture: the same plus random q/k/v biases, and a d_head (16)
  that is not d_model / n_heads (48 / 4), which Qwen2's config allows through ``head_dim``.
"""

from __future__ import annotations

from pathlib import Path

import torch

from .embedded import cache_root, cached_artifact
from .identity import FINGERPRINTS

TINY_MODEL = "tiny-llama"
TINY_QWEN2 = "tiny-qwen2"
TINY_MODELS = (TINY_MODEL, TINY_QWEN2)


def build_tiny_hf_model(
    name: str = TINY_MODEL, *, n_layers: int = 2, n_heads: int = 4, n_kv_heads: int = 2, d_head: int = 16,
    seed: int = 0,
):
    """A random ``tiny-llama`` or ``tiny-qwen2`` (see the module docstring) with a byte tokenizer."""
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    if name not in TINY_MODELS:
        raise ValueError(f"unknown tiny model {name!r}; expected one of {list(TINY_MODELS)}")
    qwen2 = name == TINY_QWEN2
    config_class, model_class = (Qwen2Config, Qwen2ForCausalLM) if qwen2 else (LlamaConfig, LlamaForCausalLM)
    d_model = 3 * d_head if qwen2 else n_heads * d_head
    tokenizer = byte_tokenizer()
    config = config_class(
        vocab_size=len(tokenizer),
        hidden_size=d_model,
        intermediate_size=4 * d_model,
        num_hidden_layers=n_layers,
        num_attention_heads=n_heads,
        num_key_value_heads=n_kv_heads,
        head_dim=d_head,
        max_position_embeddings=4096,  # long enough for CAA and NQ-Swap prompts (rotary: no weights)
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        architectures=[model_class.__name__],
        attn_implementation="eager",
        tie_word_embeddings=False,  # Llama's default; Qwen2.5-1.5B's GGUF has its own output layer too
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = model_class(config)
        if qwen2:  # Hugging Face initialises biases to zero, which would hide a bias the hook code drops
            with torch.no_grad():
                for layer in model.model.layers:
                    for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                        proj.bias.normal_(std=0.5)
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


def tiny_directory(name: str, model, tokenizer) -> Path:
    """The tiny model saved once under the cache (keyed by its weights), for loading with a device map."""
    key = FINGERPRINTS[name].rsplit("-", 1)[-1]
    target = cache_root() / "models" / f"{name}-{key}"

    def build(staging: Path) -> None:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)

    return cached_artifact(target, kind="model-cache", key=key, build=build, what="the cached tiny model")
