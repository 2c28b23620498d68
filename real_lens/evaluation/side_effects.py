"""Side effects of steering on ordinary text (METHOD.md §6): cross-entropy and KL.

- CE: mean next-token cross-entropy of the steered model over every real (non-padding)
  predicted token of the texts (a token-weighted mean, not a mean of per-text means).
- KL(unsteered ‖ steered) of the next-token distributions, averaged over the same tokens.

Each batch runs twice: once with no hooks (unsteered) and once inside
``steering.applied(model)``; both numbers come from those two passes. Without a steering
the one unsteered pass serves as both, so KL is exactly 0 and CE is the model's own.

Text: a fixed, seeded sample of WikiText-2 test paragraphs (ITI/REAL use OpenWebText-10k,
which is not available offline; see ``../shared/data/README.md`` §5).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from ..errors import DataError
from ..tasks.data import load_hub_dataset, require_file, resolve_data_dir
from .forward import SteeringLike, masked_sum, steering_context, target_logprobs
from ..tokens import right_pad, tokenize

WIKITEXT_FILE = "wikitext2/wikitext2_raw_test.jsonl"


@dataclass(frozen=True)
class SideEffects:
    ce: float  # nats per token, steered model
    kl: float  # nats per token, KL(unsteered || steered)


def load_wikitext_sample(data_dir=None, *, n: int = 100, max_tokens: int | None = 128, seed: int = 0) -> list[str]:
    """``n`` WikiText-2 test paragraphs (headings excluded), drawn with ``default_rng(seed)``, in file order.

    ``max_tokens`` cuts each paragraph to its first ``max_tokens`` whitespace-separated words
    (``None``: whole paragraphs). Every word is at least one model token, so this only keeps the
    strings short: ``evaluate_side_effects(..., max_tokens=...)`` still sees at least
    ``max_tokens`` tokens of any paragraph that long.
    """
    if n < 1:
        raise ValueError(f"n must be at least 1; got {n}")
    if max_tokens is not None and max_tokens < 1:
        raise ValueError(f"max_tokens must be at least 1 or None; got {max_tokens}")
    paragraphs = _wikitext_paragraphs(data_dir)
    if n > len(paragraphs):
        raise ValueError(f"asked for {n} WikiText-2 paragraphs but the test split has only {len(paragraphs)}")
    chosen = np.sort(np.random.default_rng(seed).choice(len(paragraphs), size=n, replace=False))
    texts = [paragraphs[i] for i in chosen]
    if max_tokens is not None:
        texts = [" ".join(t.split()[:max_tokens]) for t in texts]
    return texts


def _wikitext_paragraphs(data_dir) -> list[str]:
    """Non-heading, non-empty lines of the test split, stripped, in order (offline file or the Hub)."""
    root = resolve_data_dir(data_dir)
    if root is None:
        ds = load_hub_dataset("Salesforce/wikitext", "wikitext-2-raw-v1", split="test", what="WikiText-2")
        lines = [(row["text"], _is_heading(row["text"])) for row in ds]
    else:
        path = require_file(root / WIKITEXT_FILE, what="WikiText-2 test file")
        lines = []
        with open(path) as f:
            for i, line in enumerate(f, 1):
                try:
                    row = json.loads(line)
                    lines.append((row["text"], bool(row["is_heading"])))
                except (json.JSONDecodeError, KeyError, TypeError) as exc:
                    raise DataError(
                        f"{path}:{i}: expected a JSON object with 'text' and 'is_heading' ({exc}); "
                        "the file may be truncated or from another release"
                    ) from None
    return [text.strip() for text, heading in lines if not heading and text.strip()]


def _is_heading(text: str) -> bool:
    """WikiText headings read `` = Title = `` (``= =`` for sections); matches the offline file's is_heading."""
    s = text.strip()
    return len(s) > 1 and s.startswith("=") and s.endswith("=")


def evaluate_side_effects(
    model,
    texts: Sequence[str],
    *,
    steering: SteeringLike | None = None,
    max_tokens: int = 128,
    batch_size: int = 8,
) -> SideEffects:
    """CE of the (steered) model and KL(unsteered ‖ steered) on ``texts``, each cut to ``max_tokens`` tokens (BOS included)."""
    if isinstance(texts, str):
        raise TypeError("texts must be a sequence of strings, found a single string; wrap it in a list")
    if max_tokens < 2 or batch_size < 1:
        raise ValueError(f"max_tokens must be >= 2 and batch_size >= 1; got {max_tokens} and {batch_size}")
    seqs = [tokenize(model, t)[:max_tokens] for t in texts]
    seqs = sorted((s for s in seqs if len(s) >= 2), key=len)  # by length: little padding
    if not seqs:
        raise ValueError("no text has a token to predict (each needs at least 2 tokens with BOS); pass non-empty texts")
    ce_sum = kl_sum = 0.0
    n_tokens = 0
    for start in range(0, len(seqs), batch_size):
        batch = seqs[start:start + batch_size]
        tokens = right_pad(model, batch).to(model.cfg.device)
        lengths = torch.tensor([len(s) for s in batch])
        mask = torch.arange(1, tokens.shape[1])[None, :] < lengths[:, None]  # real predicted tokens
        with torch.inference_mode():
            unsteered = model(tokens, use_cache=False)[:, :-1]
            if steering is None:
                steered = unsteered
            else:
                with steering_context(model, steering):
                    steered = model(tokens, use_cache=False)[:, :-1]
            ce_sum += float(-masked_sum(target_logprobs(steered, tokens[:, 1:]), mask).sum())
            kl_sum += float(masked_sum(_kl(unsteered, steered), mask).sum())
        n_tokens += int(mask.sum())
    return SideEffects(ce=ce_sum / n_tokens, kl=kl_sum / n_tokens)


def _kl(p_logits, q_logits):
    """KL(p ‖ q) per position, from logits; exactly 0 where they are equal."""
    log_p = p_logits.float().log_softmax(-1)
    log_q = q_logits.float().log_softmax(-1)
    return (log_p.exp() * (log_p - log_q)).sum(-1)
