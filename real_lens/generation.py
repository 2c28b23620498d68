"""Greedy generation through the bridge (so steering hooks apply), chat template when present.

:func:`generate_greedy` is the one decoding loop: several prompts at once (left-padded, with an
attention mask and per-row position ids), the prompt run once and every later step one token
per row on the Hugging Face KV cache, logits only at the last position, and a row stops at an
end-of-sequence token or when a caller's ``stop`` rule says its text is complete; the call ends
when every row has stopped. Each step is one call of the bridge's forward, so the hooks on the
model (a ``Steering.applied(model)`` block) fire on the prompt and on every generated token.

Why our own loop instead of ``TransformerBridge.generate``: that loop computes the logits of
every prompt position over the whole vocabulary (on SmolLM2 a 109-token prompt spends ~20 % of
its forward there; Hugging Face's ``generate`` keeps only the last position), and it cannot stop
a row on a text rule such as "the first line is complete". The bridge's forward takes and
returns the HF cache (``return_type="logits_and_cache"``), so the loop stays short.

What greedy decoding costs (measured by ``benchmarks/bench_generate.py``): the prompt is one
compute-bound forward; every new token is a forward of one token per row, which reads all the
weights once (540 MB for SmolLM2 in float32) whatever the number of rows. Batching rows is what
brings the per-item cost of an evaluation down towards its prompt forward.

Batched rows give the tokens one row alone gives (padding is masked and positions are counted
per row), up to float rounding: a matrix product over a different number of rows may round
differently, which can flip an exact tie between two logits; tests compare token for token.
A hook that depends on the position index (``Steering.applied(positions="prompt")``) sees the
padded positions of a batch; pass ``batch_size=1`` for those.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from jaxtyping import Int
from torch import Tensor
from tqdm.auto import tqdm

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
    batch_size: int = 16,
    stop: StopRule | None = None,
    progress: bool = False,
) -> list[Int[Tensor, " _new"]]:
    """The greedy continuation of each prompt (token ids, prompt excluded), in the order given.

    A continuation ends after ``max_new_tokens`` tokens, after an end-of-sequence token
    (kept, as ``generate`` keeps it), or at the first token after which ``stop`` (called on
    the continuation decoded without special tokens) returns True. Prompts are run
    ``batch_size`` at a time, longest first, so rows of similar length share a batch.
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
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
    out: list[Tensor | None] = [None] * len(prompts)
    with tqdm(total=len(prompts), desc="generate", unit="prompt", disable=not progress) as bar:
        for start in range(0, len(order), batch_size):
            chunk = order[start:start + batch_size]
            for i, new in zip(chunk, _generate_batch(model, [prompts[i] for i in chunk], max_new_tokens, stop)):
                out[i] = new
            bar.update(len(chunk))
    return out


def _generate_batch(model, prompts: list[Tensor], max_new_tokens: int, stop: StopRule | None) -> list[Tensor]:
    device = model.cfg.device
    n_rows, width = len(prompts), max(len(p) for p in prompts)
    pad = _pad_id(model)
    tokens = torch.full((n_rows, width), pad, dtype=torch.long)
    mask = torch.zeros((n_rows, width), dtype=torch.long)
    for row, p in enumerate(prompts):  # left padding: every row's last prompt token is in the last column
        tokens[row, width - len(p):] = p
        mask[row, width - len(p):] = 1
    tokens, mask = tokens.to(device), mask.to(device)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)  # each row counts from its own first token
    eos = torch.tensor(_eos_ids(model), dtype=torch.long, device=device)

    logits, cache = model(tokens, return_type="logits_and_cache", attention_mask=mask,
                          position_ids=positions, use_cache=True, logits_to_keep=1)
    steps: list[Tensor] = []
    lengths = torch.full((n_rows,), max_new_tokens, dtype=torch.long)
    finished = torch.zeros(n_rows, dtype=torch.bool, device=device)
    for step in range(max_new_tokens):
        next_token = logits[:, -1].argmax(-1).masked_fill(finished, pad)
        steps.append(next_token)
        just_done = torch.isin(next_token, eos) & ~finished
        if stop is not None:
            new = torch.stack(steps, dim=1).cpu()
            for row in (~finished & ~just_done).nonzero().flatten().tolist():
                if stop(model.tokenizer.decode(new[row], skip_special_tokens=True)):
                    just_done[row] = True
        lengths[just_done.cpu()] = step + 1
        finished |= just_done
        if bool(finished.all()) or step == max_new_tokens - 1:
            break
        mask = torch.cat([mask, torch.ones((n_rows, 1), dtype=mask.dtype, device=device)], dim=1)
        positions = positions[:, -1:] + 1
        logits, cache = model(next_token[:, None], return_type="logits_and_cache", past_key_values=cache,
                              attention_mask=mask, position_ids=positions, logits_to_keep=1)
    new = torch.stack(steps, dim=1).cpu()
    return [new[row, :lengths[row]] for row in range(n_rows)]


def _eos_ids(model) -> list[int]:
    """The tokens that end a continuation: the adapter's ``cfg.eos_token_id`` (one or several), else the tokenizer's."""
    eos = getattr(model.cfg, "eos_token_id", None)
    if eos is None:
        eos = getattr(model.tokenizer, "eos_token_id", None)
    if eos is None:
        return []
    return [int(eos)] if isinstance(eos, int) else [int(e) for e in eos]


def _pad_id(model) -> int:
    pad = getattr(model.tokenizer, "pad_token_id", None)
    return int(pad) if pad is not None else (_eos_ids(model) or [0])[0]
