"""Greedy generation through the bridge (so steering hooks apply), chat template when present."""

from __future__ import annotations

import torch


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
    tokens = model.to_tokens(text, prepend_bos=not text.startswith(model.tokenizer.bos_token or "\0"))
    with torch.inference_mode():
        out = model.generate(
            tokens, max_new_tokens=max_new_tokens, do_sample=False, use_past_kv_cache=True, verbose=False
        )
    return model.tokenizer.decode(out[0, tokens.shape[1]:], skip_special_tokens=True).strip()
