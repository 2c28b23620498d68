"""``tiny-llama``: a seeded random 2-layer Llama with a byte tokenizer, built locally for tests (no download)."""

from __future__ import annotations

from pathlib import Path

import torch

from .embedded import cache_root, cached_artifact
from .identity import FINGERPRINTS

TINY_MODEL = "tiny-llama"

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


def tiny_directory(model, tokenizer) -> Path:
    """The tiny model saved once under the cache (keyed by its weights), for loading with a device map."""
    key = FINGERPRINTS[TINY_MODEL].rsplit("-", 1)[-1]
    target = cache_root() / "models" / f"{TINY_MODEL}-{key}"

    def build(staging: Path) -> None:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)

    return cached_artifact(target, kind="model-cache", key=key, build=build, what="the cached tiny model")
