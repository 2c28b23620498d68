"""CAA A/B behaviours: the probability of the behaviour-aligned letter (METHOD.md §6).

The model reads ``"{prompt} ("`` (the task's prompt ``"{question}\\n\\nAnswer:"`` plus the start of
its answer ``" (A)"``) and its next-token distribution is read at the last position:

- ``p_aligned_raw``   = p(aligned letter token), over the whole vocabulary;
- ``p_violating_raw`` = p(violating letter token);
- ``p_aligned``       = p_aligned_raw / (p_aligned_raw + p_violating_raw), the two-way share
  (CAA's behaviour probability, with the sides oriented so that higher = more aligned).

Why the letter after ``" ("``: SmolLM2's tokenizer splits ``"Answer: (A)"`` into
``'Answer' ':' ' (' 'A' ')'``: ``" ("`` is one token and every letter ``A``–``H`` is its own
token, so ``prompt + " ("`` tokenises to a prefix of ``prompt + " (A)"`` and the letter is the
single next token (as in CAA, which reads the letter after ``"("``). Llama/Qwen-style BPE and
the byte tokenizer of the tiny test model behave the same way. This is checked for every item
and letter; a tokenizer that merges the letter with ``"("`` or ``")"`` raises ``ValueError``.

Plain text, no chat template: the same text the task's activations (and so the steering
directions) were computed on. Items run as right-padded batches (under causal attention a
real token never sees the padding after it), each read at its own last real position.
All forward passes run inside ``steering.applied(model)`` when a steering is given.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np
import torch
from jaxtyping import Float
from tqdm.auto import tqdm

from ..tasks.base import Task
from ..tasks.caa import ANSWER_FORMAT, ABQuestion
from .forward import SteeringLike, steering_context
from ..tokens import right_pad, tokenize

LETTER_PREFIX = ANSWER_FORMAT.split("{letter}")[0]  # " (": the answer up to its letter


@dataclass(frozen=True)
class CAAResult:
    """Per-item probabilities of the aligned letter, in ``groups`` order."""

    groups: tuple[str, ...]
    p_aligned: Float[np.ndarray, " item"]  # two-way: p(aligned) / (p(aligned) + p(violating))
    p_aligned_raw: Float[np.ndarray, " item"]  # p(aligned letter) over the full vocabulary
    p_violating_raw: Float[np.ndarray, " item"]

    def __post_init__(self):
        n = len(self.groups)
        if not n == len(self.p_aligned) == len(self.p_aligned_raw) == len(self.p_violating_raw):
            raise ValueError(
                f"CAAResult needs one value per item ({n}) in every array; found {len(self.p_aligned)}, "
                f"{len(self.p_aligned_raw)} and {len(self.p_violating_raw)}"
            )

    @property
    def p_aligned_mean(self) -> float:
        return float(np.mean(self.p_aligned))

    @property
    def p_aligned_raw_mean(self) -> float:
        return float(np.mean(self.p_aligned_raw))


def select_ab_questions(task: Task, groups) -> list[ABQuestion]:
    """The A/B items of ``groups`` (e.g. ``task.folds[0].test``), in the task's order."""
    ab = task.eval_data.get("ab")
    if ab is None:
        raise ValueError(f"task {task.name!r} has no A/B test items (eval_data['ab']); load it with load_caa")
    keep = frozenset(groups)
    missing = keep - set(ab)
    if missing:
        raise ValueError(
            f"{len(missing)} group(s) have no A/B item in task {task.name!r}, e.g. {sorted(missing)[0]!r}; "
            "pass groups of the task (e.g. task.folds[0].test)"
        )
    return [ab[g] for g in task.groups if g in keep]


def evaluate_caa(
    model,
    items: Sequence[ABQuestion],
    *,
    steering: SteeringLike | None = None,
    batch_size: int = 8,
    progress: bool = False,
) -> CAAResult:
    """p(aligned letter) for every item, raw and normalised against the violating letter."""
    if isinstance(items, Mapping):
        raise TypeError(
            "items must be a sequence of ABQuestion, found a mapping; pass "
            "select_ab_questions(task, task.folds[0].test) or list(task.eval_data['ab'].values())"
        )
    items = list(items)
    if not items:
        raise ValueError("evaluate_caa needs at least one item; found none")
    bad = next((q for q in items if not isinstance(q, ABQuestion)), None)
    if bad is not None:
        raise TypeError(f"items must be ABQuestion objects (task.eval_data['ab'] values); found {type(bad).__name__}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1; got {batch_size}")

    prepared = [_prepare(model, q) for q in items]
    raw = np.zeros((len(items), 2))
    with steering_context(model, steering), torch.inference_mode():
        for start in tqdm(range(0, len(items), batch_size), desc="caa a/b", disable=not progress):
            batch = prepared[start:start + batch_size]
            tokens = right_pad(model, [p[0] for p in batch]).to(model.cfg.device)
            logits = model(tokens, use_cache=False)
            last = torch.tensor([len(p[0]) - 1 for p in batch], device=logits.device)
            probs = logits[torch.arange(len(batch), device=logits.device), last].float().softmax(-1)
            letters = torch.tensor([p[1] for p in batch], device=probs.device)  # [batch, 2]
            raw[start:start + len(batch)] = probs.gather(-1, letters).double().cpu().numpy()
    return CAAResult(
        tuple(q.group for q in items),
        raw[:, 0] / (raw[:, 0] + raw[:, 1]),
        raw[:, 0].copy(),
        raw[:, 1].copy(),
    )


def letter_token(model, prompt: str, letter: str) -> int:
    """The token id of ``letter`` read right after ``prompt + " ("``; ``ValueError`` if it is not one token there."""
    prefix = tokenize(model, prompt + LETTER_PREFIX)
    full = tokenize(model, prompt + ANSWER_FORMAT.format(letter=letter))
    n = len(prefix)
    ok = len(full) > n and torch.equal(full[:n], prefix)
    if ok:
        token = int(full[n])
        ok = model.tokenizer.decode([token]).strip() == letter
    if not ok:
        pieces = [model.tokenizer.decode([int(t)]) for t in full[-4:]]
        raise ValueError(
            f"the tokenizer does not read {ANSWER_FORMAT.format(letter=letter)!r} as {LETTER_PREFIX!r} followed by "
            f"the single token {letter!r} (the answer's last tokens are {pieces}); evaluate_caa reads the letter "
            "as the next token after the prompt and ' (' and needs a tokenizer that keeps letters separate"
        )
    return token


def _prepare(model, item: ABQuestion) -> tuple[torch.Tensor, list[int]]:
    tokens = tokenize(model, item.prompt + LETTER_PREFIX)
    return tokens, [letter_token(model, item.prompt, item.aligned), letter_token(model, item.prompt, item.violating)]
