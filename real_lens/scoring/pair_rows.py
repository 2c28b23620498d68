"""Contrast pairs as token rows: the right-padded batches patching and attribution run, and what they capture.

Each pair gives two continuation rows (its aligned and its violating answer after the shared
context); :class:`Rows` says where each row's module activations are patched and where its
answer tokens are scored. :func:`run_and_capture` runs rows and keeps the named hook points
(and, for attribution, their gradients).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from .pairs import ContrastPair, Positions

@dataclass(frozen=True)
class Rows:
    """A right-padded batch of continuation rows (two per pair: aligned, violating) and where to read them.

    ``patch_index[r, j]`` is the position in ``tokens`` of patched position ``j`` of row ``r``
    (``patch_mask`` marks the real ones); ``score_index[r, k]`` is the position whose logits
    predict ``targets[r, k]``, the row's k-th answer token. ``sign`` is +1 for aligned rows and
    -1 for violating ones; ``pair`` is each row's pair within the batch.
    """

    tokens: Int[Tensor, "row pos"]
    patch_index: Int[Tensor, "row patch"]
    patch_mask: Bool[Tensor, "row patch"]
    score_index: Int[Tensor, "row answer"]
    targets: Int[Tensor, "row answer"]
    target_mask: Bool[Tensor, "row answer"]
    sign: Float[Tensor, " row"]
    pair: Int[Tensor, " row"]
    n_pairs: int

    @property
    def logits_to_keep(self) -> int:
        """How many final positions of ``tokens`` hold every scored position (pass to the forward)."""
        return self.tokens.shape[1] - int(self.score_index[:, 0].min())

    def logprobs(self, logits: Float[Tensor, "row kept vocab"]) -> Float[Tensor, " row"]:
        """Sum over each row's answer tokens of log p(token), read at ``score_index``.

        ``logits`` may hold only the last ``k`` positions (``logits_to_keep``); they are
        matched to ``tokens`` from the end."""
        offset = self.tokens.shape[1] - logits.shape[1]
        rows = torch.arange(logits.shape[0], device=logits.device)[:, None]
        index = (self.score_index - offset).clamp(min=0)  # padding slots (masked below) may fall before the kept logits
        scored = logits[rows, index.to(logits.device)]
        scored = scored.float() if scored.dtype in (torch.float16, torch.bfloat16) else scored
        values = scored.log_softmax(-1).gather(-1, self.targets.to(logits.device)[..., None])[..., 0].double()
        return torch.where(self.target_mask.to(logits.device), values, torch.zeros((), dtype=values.dtype, device=logits.device)).sum(-1)

    def metric(self, logits: Float[Tensor, "row kept vocab"]) -> Float[Tensor, " pair"]:
        """Per pair: log p(aligned answer) - log p(violating answer), summed in float64."""
        signed = self.logprobs(logits) * self.sign.to(logits.device, torch.float64)
        return torch.zeros(self.n_pairs, dtype=torch.float64, device=logits.device).index_add(0, self.pair.to(logits.device), signed)

    def gather(self, act: Float[Tensor, "row pos *rest"]) -> Float[Tensor, "row patch *rest"]:
        """The activation at each row's patched positions (padding slots read position 0)."""
        rows = torch.arange(act.shape[0], device=act.device)[:, None]
        return act[rows, self.patch_index.to(act.device)]

    def to(self, device) -> "Rows":
        moved = {k: v.to(device) if isinstance(v, Tensor) else v for k, v in self.__dict__.items()}
        return Rows(**moved)


def full_rows(pairs: Sequence[ContrastPair], context: str, *, positions: Positions, pad: int) -> Rows:
    """``context + prompt + answer[:-1]`` per pair and answer (the last answer token predicts nothing scored)."""
    seqs, patch, scores, targets = [], [], [], []
    for pair in pairs:
        ctx = pair.context(context)
        start = len(ctx) + pair.patch_start(positions)
        for answer in pair.answers:
            seqs.append(torch.cat([ctx, pair.prompt, answer[:-1]]))
            patch.append(torch.arange(start, len(seqs[-1])))
            first = len(ctx) + len(pair.prompt) - 1  # predicts the first answer token
            scores.append(torch.arange(first, first + len(answer)))
            targets.append(answer)
    return _rows(seqs, patch, scores, targets, len(pairs), pad)


def fed_rows(pair: ContrastPair, *, positions: Positions, pad: int) -> Rows:
    """Only the patched positions, ``prompt[start:] + answer[:-1]``, to run after :func:`prefix_tokens`'s cache."""
    start = pair.patch_start(positions)
    seqs, patch, scores, targets = [], [], [], []
    for answer in pair.answers:
        seqs.append(torch.cat([pair.prompt[start:], answer[:-1]]))
        patch.append(torch.arange(len(seqs[-1])))
        first = len(pair.prompt) - 1 - start
        scores.append(torch.arange(first, first + len(answer)))
        targets.append(answer)
    return _rows(seqs, patch, scores, targets, 1, pad)


def prefix_tokens(pair: ContrastPair, *, positions: Positions) -> Int[Tensor, " pos"]:
    """The corrupted run up to the first patched position: identical in every patched run."""
    return torch.cat([pair.corrupted_context, pair.prompt[: pair.patch_start(positions)]])


@dataclass
class Capture:
    """What :func:`run_and_capture` read: per hook, the activation (and gradient) at the patched positions."""

    metric: Float[Tensor, " pair"]
    activations: dict[str, Tensor]
    gradients: dict[str, Tensor]


def run_and_capture(model, rows: Rows, names: Sequence[str], *, gradient: bool = False, upstream: str | None = None) -> Capture:
    """One forward of ``rows``, keeping only what patching needs at the hooks ``names``.

    The same passes as TransformerLens's ``cache_activation_and_gradient`` (forward hooks read the
    activations, backward hooks the gradients of the summed metric, the backward driven by
    ``torch.autograd.grad`` so no parameter ``.grad`` is touched), but every activation and
    gradient is cut to the patched positions as it is read, and logits are computed only where
    the metric reads them (``logits_to_keep``). On a whole input of demonstrations that is a few
    percent of the positions: TransformerLens's version holds every position of every hook and a
    vocabulary-sized logit row per token (over 7 GB RSS for 8 TruthfulQA pairs on SmolLM2).
    ``upstream``: an extra hook to differentiate through (see the hook_z note in
    :mod:`real_lens.scoring.attribution`).
    """
    activations: dict[str, Tensor] = {}
    gradients: dict[str, Tensor] = {}
    live: dict[str, Tensor] = {}

    def read(name):
        def hook(act: Tensor, hook) -> None:
            live[name] = act
            activations[name] = rows.gather(act.detach())

        return hook

    def read_grad(name):
        def hook(grad: Tensor, hook) -> None:
            gradients[name] = rows.gather(grad.detach())

        return hook

    watched = [*names, *([upstream] if upstream else [])]
    fwd = [(name, read(name)) for name in watched]
    bwd = [(name, read_grad(name)) for name in names] if gradient else []
    with model.hooks(fwd_hooks=fwd, bwd_hooks=bwd):
        logits = model(rows.tokens, logits_to_keep=rows.logits_to_keep)
        metric = rows.metric(logits)
        if gradient:
            inputs = [live[name] for name in watched if name in live]
            torch.autograd.grad(metric.sum(), inputs=inputs, allow_unused=True)
    return Capture(metric.detach(), {n: activations[n] for n in names}, gradients)


def _pad(seqs: Sequence[Tensor], value: int) -> Tensor:
    return torch.nn.utils.rnn.pad_sequence(list(seqs), batch_first=True, padding_value=value)


def _rows(seqs, patch, scores, targets, n_pairs: int, pad: int) -> Rows:
    n_rows = len(seqs)
    return Rows(
        tokens=_pad(seqs, pad),
        patch_index=_pad(patch, 0),
        patch_mask=_pad([torch.ones(len(p), dtype=torch.bool) for p in patch], False),
        score_index=_pad(scores, 0),
        targets=_pad(targets, 0),
        target_mask=_pad([torch.ones(len(t), dtype=torch.bool) for t in targets], False),
        sign=torch.tensor([1.0, -1.0] * (n_rows // 2)),
        pair=torch.arange(n_rows) // 2,
        n_pairs=n_pairs,
    )


