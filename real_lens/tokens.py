"""Tokenisation and padding, shared by collection, evaluation, contrast pairs and generation.

One pad-token rule for the whole package (:func:`pad_id`): the tokenizer's pad token, else its
EOS token, else id 0. Every batch real-lens builds is right-padded and every read stops at the
last real token of its row, so with a causal model the pad id never changes a result; the rule
exists only so that every caller pads the same way.
"""

from __future__ import annotations

from typing import Sequence

import torch
from jaxtyping import Int
from torch import Tensor

from .errors import DataError


def tokenize(model, text: str) -> Int[Tensor, " pos"]:
    """Token ids of ``text`` as the model reads it (BOS prepended as the model does), on CPU.

    Never truncated: a text longer than the model's context raises ``DataError`` (to_tokens would
    otherwise cut it silently and every later position would read the wrong tokens)."""
    tokens = model.to_tokens(text, padding_side="right", truncate=False)[0].cpu()
    if len(tokens) > model.cfg.n_ctx:
        raise DataError(
            f"a text of {len(tokens)} tokens exceeds the model's context of {model.cfg.n_ctx} tokens "
            f"(it starts {text[:60]!r}); shorten the task's prompts or use a model with a longer context"
        )
    return tokens


def pad_id(model) -> int:
    """The id right-padded rows are filled with: pad token, else EOS, else 0 (see the module docstring)."""
    tokenizer = model.tokenizer
    for pad in (getattr(tokenizer, "pad_token_id", None), getattr(tokenizer, "eos_token_id", None)):
        if pad is not None:
            return int(pad)
    return 0


def right_pad(model, seqs: Sequence[Tensor]) -> Int[Tensor, "batch pos"]:
    """``seqs`` as one right-padded batch (:func:`pad_id`)."""
    return torch.nn.utils.rnn.pad_sequence(list(seqs), batch_first=True, padding_value=pad_id(model))
