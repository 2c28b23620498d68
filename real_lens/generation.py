"""Greedy generation through the bridge (so steering hooks apply), chat template when present.

:func:`generate_greedy` is the one decoding loop. Each prompt runs alone through the bridge's
forward (logits of its last position only) and returns its Hugging Face KV cache; the caches
of up to ``batch_size`` prompts are left-padded into one batch, and every later step is one
forward of one token per row with an attention mask over the padding and per-row position ids.
A row stops at an end-of-sequence token or when a caller's ``stop`` rule says its text is
complete; the call ends when every row has stopped. Every forward is the bridge's, so the hooks
on the model (a ``Steering.applied(model)`` block) fire on the prompt and on every new token.

Where the time goes (``benchmarks/bench_generate.py``, SmolLM2-135M on CPU): a prompt's forward
is compute-bound (~6x a one-token forward for 109 tokens); a one-token forward reads every
weight once (540 MB in float32), memory-bound, and costs about as much for 16 rows as for one.
So the floor of one continuation is its prompt forward plus one such step per new token, and
an evaluation of many items approaches the sum of its prompt forwards when rows share the steps.

Why not ``TransformerBridge.generate``: it computes the logits of every prompt position over the
whole vocabulary (~20 % of a 109-token forward on SmolLM2; HF's ``generate`` keeps the last one),
and a batch there is one left-padded prompt forward, which spends compute on the padding
(NQ-Swap prompts run from ~40 to ~330 tokens). The bridge's forward takes and returns the HF
cache (``return_type="logits_and_cache"``), which keeps this loop short.

A row's tokens equal those of the row alone: its prompt forward is the same call, padded cache
slots are masked out and positions are counted per row. Only float rounding can differ (a
one-token step over several rows is a different matrix product), which could flip an exact tie
between two logits; the tests compare token for token. A hook that depends on the position
index (``Steering.applied(positions="generated")``) counts the steps of a batch from the last
prompt's length; pass ``batch_size=1`` for it.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from jaxtyping import Int
from torch import Tensor
from tqdm.auto import tqdm

from .tokens import pad_id

StopRule = Callable[[str], bool]


def format_prompt(model, prompt: str, *, chat: bool | None = None) -> str:
    """The text the model reads: wrapped in the tokenizer's chat template when it has one."""
    tokenizer = model.tokenizer
    use_chat = bool(getattr(tokenizer, "chat_template", None)) if chat is None else chat
    if not use_chat:
        return prompt
    return tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
    )


def generate_text(model, prompt: str, *, max_new_tokens: int = 64, chat: bool | None = None) -> str:
    """Greedy continuation of ``prompt`` (KV-cached), without the prompt and special tokens."""
    text = format_prompt(model, prompt, chat=chat)
    # The chat template already starts with the model's BOS/turn token.
    tokens = model.to_tokens(text, prepend_bos=not text.startswith(model.tokenizer.bos_token or "\0"))[0]
    with torch.inference_mode():
        (new,) = generate_greedy(model, [tokens], max_new_tokens=max_new_tokens)
    return model.tokenizer.decode(new, skip_special_tokens=True).strip()


def first_line_complete(text: str) -> bool:
    """A stop rule: ``text`` holds a non-empty line followed by a line break (its first line is final)."""
    return "\n" in text.lstrip()


def generate_greedy(
    model,
    prompts: Sequence[Int[Tensor, " _pos"]],  # "_": each prompt its own length
    *,
    max_new_tokens: int,
    batch_size: int = 32,
    stop: StopRule | None = None,
    progress: bool = False,
) -> list[Int[Tensor, " _new"]]:
    """The greedy continuation of each prompt (token ids, prompt excluded), in the order given.

    A continuation ends after ``max_new_tokens`` tokens, after an end-of-sequence token
    (kept, as ``generate`` keeps it), or at the first token after which ``stop`` (called on
    the continuation decoded without special tokens) returns True. Each prompt's forward
    runs alone; the decoding steps run ``batch_size`` rows at a time.
    The caller chooses the mode (``torch.inference_mode()``) and the hooks.
    """
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be at least 1; got {max_new_tokens}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1; got {batch_size}")
    prompts = [torch.as_tensor(p) for p in prompts]
    bad = next((p for p in prompts if p.ndim != 1 or p.numel() == 0 or p.is_floating_point()), None)
    if bad is not None:
        raise ValueError(
            f"each prompt must be a non-empty 1-D tensor of token ids; found shape {tuple(bad.shape)}, "
            f"dtype {bad.dtype} (tokenize with real_lens.evaluation.forward.tokenize)"
        )
    out: list[Tensor] = []
    with tqdm(total=len(prompts), desc="generate", unit="prompt", disable=not progress) as bar:
        for start in range(0, len(prompts), batch_size):
            chunk = prompts[start:start + batch_size]
            out += _generate_batch(model, chunk, max_new_tokens, stop)
            bar.update(len(chunk))
    return out


def _generate_batch(model, prompts: list[Tensor], max_new_tokens: int, stop: StopRule | None) -> list[Tensor]:
    device = model.cfg.device
    n_rows, lengths = len(prompts), [len(p) for p in prompts]
    width = max(lengths)
    # The prompts run one at a time: a prompt's forward is compute-bound, so rows would gain
    # nothing from sharing it and padding would cost. Their caches are then left-padded into one
    # batch for the decoding steps, each of which reads every weight once whatever the rows.
    first_logits, caches = [], []
    for p in prompts:
        logits, cache = model(p[None].to(device), return_type="logits_and_cache", use_cache=True, logits_to_keep=1)
        first_logits.append(logits[:, -1])
        caches.append(cache)
    logits = torch.cat(first_logits)
    cache = caches[0] if n_rows == 1 else _left_pad_caches(caches, width, model)
    mask = torch.zeros((n_rows, width), dtype=torch.long, device=device)
    for row, length in enumerate(lengths):
        mask[row, width - length:] = 1
    positions = torch.tensor(lengths, device=device)[:, None]  # each row counts from its own first token
    eos = torch.tensor(_eos_ids(model), dtype=torch.long, device=device)
    pad = pad_id(model)  # fed to finished rows, whose tokens are dropped

    steps: list[Tensor] = []
    n_new = torch.full((n_rows,), max_new_tokens, dtype=torch.long)
    finished = torch.zeros(n_rows, dtype=torch.bool, device=device)
    for step in range(max_new_tokens):
        next_token = logits.argmax(-1).masked_fill(finished, pad)
        steps.append(next_token)
        just_done = torch.isin(next_token, eos) & ~finished
        if stop is not None:
            new = torch.stack(steps, dim=1).cpu()
            for row in (~finished & ~just_done).nonzero().flatten().tolist():
                if stop(model.tokenizer.decode(new[row], skip_special_tokens=True)):
                    just_done[row] = True
        n_new[just_done.cpu()] = step + 1
        finished |= just_done
        if bool(finished.all()) or step == max_new_tokens - 1:
            break
        mask = torch.cat([mask, torch.ones((n_rows, 1), dtype=mask.dtype, device=device)], dim=1)
        logits, cache = model(next_token[:, None], return_type="logits_and_cache", past_key_values=cache,
                              attention_mask=mask, position_ids=positions, logits_to_keep=1)
        logits = logits[:, -1]
        positions = positions + 1
    new = torch.stack(steps, dim=1).cpu()
    return [new[row, :n_new[row]] for row in range(n_rows)]


def _left_pad_caches(caches: list, width: int, model):
    """One batch cache from one-row caches: each layer's keys and values left-padded with zeros to ``width``.

    The padded slots are masked out by the attention mask, so their values never matter. (A
    sliding-window layer would count the padding inside its window; NQ-Swap's prompts are far
    shorter than any such window.)"""
    from transformers import DynamicCache

    bad = next((c for c in caches if not isinstance(c, DynamicCache)), None)
    if bad is not None:
        raise NotImplementedError(
            f"batched generation merges Hugging Face DynamicCache objects; this model returned a "
            f"{type(bad).__name__}. Generate with batch_size=1"
        )

    def pad(t: Tensor) -> Tensor:  # [1, kv_heads, pos, d_head] -> [1, kv_heads, width, d_head]
        return torch.nn.functional.pad(t, (0, 0, width - t.shape[-2], 0))

    layers = []
    for per_row in zip(*(c.layers for c in caches)):
        layers.append((torch.cat([pad(layer.keys) for layer in per_row]),
                       torch.cat([pad(layer.values) for layer in per_row])))
        for layer in per_row:  # at most one layer held twice: a 7B model's rows are ~0.2 GB each
            layer.keys = layer.values = None
    return DynamicCache(layers, config=getattr(getattr(model, "original_model", None), "config", None))


def _eos_ids(model) -> list[int]:
    """The tokens that end a continuation: the adapter's ``cfg.eos_token_id`` (one or several), else the tokenizer's."""
    eos = getattr(model.cfg, "eos_token_id", None)
    if eos is None:
        eos = getattr(model.tokenizer, "eos_token_id", None)
    if eos is None:
        return []
    return [int(eos)] if isinstance(eos, int) else [int(e) for e in eos]

