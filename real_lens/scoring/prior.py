"""REAL's prior: GRU language models over each module's code sequences, and their AUC.

Per module, one GRU LM is trained on the aligned examples' codes and one on the violating
examples' codes; a held-out example scores
``s(x) = mean-per-position log p_aligned(codes) - mean-per-position log p_violating(codes)``
and the module's relevance is the ROC-AUC of ``s`` against the labels (METHOD.md §3).

The release's prior (METHOD.md §3a, ``copy_input=True``) reads code ``t`` itself at step
``t`` (no start token, no shift) and is scored on code ``t``: it can learn to copy its
input. Its score is the sequence probability ``exp(Σ_t log p(code_t))``
(:meth:`ModuleGRULM.sequence_probability`).

``nn.GRU`` cannot hold independent weights per module, so the GRU is written out here
with a leading module axis (gates via ``torch.bmm``), like the VQ-AE. Its recurrence has
a hand-written backward (:class:`GRURecurrence`); tests check values and gradients
against ``nn.GRU``.
"""

from __future__ import annotations

import math
from typing import Iterable, Sequence

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor, nn

from .vqae import fused_optimizer, init_uniform, module_linear, per_module_permutations


class GRURecurrence(torch.autograd.Function):
    """The GRU recurrence of all modules, with a hand-written backward.

    Inputs are the h-independent parts of the gate pre-activations, time-major:
    ``x_rz`` ``[T, M, n, 2H]`` (``x W_i{r,z} + b_i{r,z} + b_h{r,z}``) and ``x_n`` ``[T, M, n, H]``
    (``x W_in + b_in``); ``w_hh`` ``[M, H, 3H]`` and ``b_hn`` ``[M, H]``. With h_0 = 0 (nn.GRU):

        r, z = σ(x_rz + h W_h{r,z});  g = h W_hn + b_hn;  n = tanh(x_n + r·g);  h' = n + z·(h - n)

    Returns every h', ``[M, n, T, H]``. Autograd would do the same arithmetic; the explicit
    backward is faster on CPU: it forms the weight gradient of all steps in one ``bmm``
    instead of one small product per step, and keeps every operand contiguous.
    """

    @staticmethod
    def forward(ctx, x_rz, x_n, w_hh, b_hn):
        length, n_modules, n, d = x_n.shape
        h = x_n.new_zeros(n_modules, n, d)
        g = b_hn.unsqueeze(1).expand(n_modules, n, d)  # h_0 W_hn + b_hn with h_0 = 0
        hidden, gates, news, gs = [h], [], [], []
        for t in range(length):
            if t:
                h_proj = torch.bmm(h, w_hh)
                rz = torch.sigmoid(x_rz[t] + h_proj[..., : 2 * d])
                g = h_proj[..., 2 * d :] + b_hn.unsqueeze(1)
            else:
                rz = torch.sigmoid(x_rz[t])
            new = torch.tanh(torch.addcmul(x_n[t], rz[..., :d], g))
            h = torch.lerp(new, h, rz[..., d:])
            hidden.append(h), gates.append(rz), news.append(new), gs.append(g)
        ctx.w_hh, ctx.hidden, ctx.gates, ctx.news, ctx.gs = w_hh, hidden, gates, news, gs
        return torch.stack(hidden[1:], dim=2)

    @staticmethod
    def backward(ctx, d_hidden):
        hidden, gates, news, gs = ctx.hidden, ctx.gates, ctx.news, ctx.gs
        d = hidden[0].shape[-1]
        w_t = ctx.w_hh.transpose(1, 2)
        w_t_rz, w_t_n = w_t[:, : 2 * d].contiguous(), w_t[:, 2 * d :].contiguous()  # [M, 2H, H], [M, H, H]
        d_rz, d_x_n, d_g = [None] * len(news), [None] * len(news), [None] * len(news)
        dh = torch.zeros_like(hidden[0])
        for t in reversed(range(len(news))):
            dh = dh + d_hidden[:, :, t]
            rz, new = gates[t], news[t]
            r, z = rz[..., :d], rz[..., d:]
            d_x_n[t] = d_a = dh * (1 - z) * (1 - new * new)  # through h' = n + z(h - n), then tanh
            d_g[t] = d_a * r
            d_rz_out = torch.cat([d_a * gs[t], dh * (hidden[t] - new)], dim=-1)
            d_rz[t] = d_rz_out * rz * (1 - rz)  # through the sigmoid
            dh = dh * z
            if t:
                dh = torch.baddbmm(torch.baddbmm(dh, d_rz[t], w_t_rz), d_g[t], w_t_n)
        # dW_hh = Σ_{t>=1} h_{t-1}^T d(pre-activation)_t: all steps in one product each.
        if len(news) > 1:
            h_prev = torch.cat(hidden[1:-1], dim=1).transpose(1, 2)  # [M, H, (T-1)·n]
            d_w_rz = torch.bmm(h_prev, torch.cat(d_rz[1:], dim=1))
            d_w = torch.cat([d_w_rz, torch.bmm(h_prev, torch.cat(d_g[1:], dim=1))], dim=-1)
        else:  # a single position never multiplies h (h_0 = 0)
            d_w = torch.zeros_like(ctx.w_hh)
        d_b_hn = torch.cat(d_g, dim=1).sum(1)
        return torch.stack(d_rz), torch.stack(d_x_n), d_w, d_b_hn


class ModuleGRULM(nn.Module):
    """``M`` independent GRU language models over sequences of codes ``0..K-1``.

    Token ``K`` is the start token, so position 0 is predicted too. Parameters are laid out
    like ``nn.GRU``'s (transposed, gate order r, z, n) and initialised like ``nn.Embedding``
    (N(0, 1)), ``nn.GRU`` (U(±1/sqrt(hidden))) and ``nn.Linear`` (U(±1/sqrt(hidden))).

    ``copy_input=True`` is the release's prior: no start token (``K`` embedding rows), and
    the input at position ``t`` is code ``t`` itself, the code that position is scored on.
    """

    def __init__(
        self,
        generators: Sequence[torch.Generator],
        *,
        n_codes: int,
        d_embed: int,
        d_hidden: int,
        copy_input: bool = False,
    ):
        super().__init__()
        self.n_codes, self.copy_input = n_codes, copy_input
        n_tokens = n_codes if copy_input else n_codes + 1
        self.embed = nn.Parameter(torch.stack([torch.randn(n_tokens, d_embed, generator=g) for g in generators]))
        bound = 1 / math.sqrt(d_hidden)
        self.w_ih = init_uniform(generators, (d_embed, 3 * d_hidden), bound)
        self.w_hh = init_uniform(generators, (d_hidden, 3 * d_hidden), bound)
        self.b_ih = init_uniform(generators, (3 * d_hidden,), bound)
        self.b_hh = init_uniform(generators, (3 * d_hidden,), bound)
        self.w_out = init_uniform(generators, (d_hidden, n_codes), bound)
        self.b_out = init_uniform(generators, (n_codes,), bound)

    def forward(self, codes: Int[Tensor, "module n position"]) -> Float[Tensor, "module n position k"]:
        """Logits for code ``t`` at position ``t``: seeing the start token and codes ``< t``
        (or, with ``copy_input``, codes ``<= t``)."""
        n_modules, n, length = codes.shape
        n_tokens, d_hidden = self.embed.shape[1], self.w_hh.shape[1]
        rz, new = slice(0, 2 * d_hidden), slice(2 * d_hidden, None)
        # embed[token] @ w_ih == (embed @ w_ih)[token]: project the embeddings once and
        # look rows up. The r/z half also takes b_hh, which does not depend on h.
        table_rz = module_linear(self.embed, self.w_ih[..., rz], self.b_ih[:, rz] + self.b_hh[:, rz])
        table_new = module_linear(self.embed, self.w_ih[..., new], self.b_ih[:, new])
        if self.copy_input:
            tokens = codes.permute(2, 0, 1)  # [position, M, n]
        else:
            start = torch.full((1, n_modules, n), self.n_codes, dtype=codes.dtype, device=codes.device)
            tokens = torch.cat([start, codes[..., :-1].permute(2, 0, 1)])  # [position, M, n]
        rows = tokens + n_tokens * torch.arange(n_modules, device=codes.device).view(1, -1, 1)
        x_rz = F.embedding(rows, table_rz.reshape(-1, 2 * d_hidden))
        x_new = F.embedding(rows, table_new.reshape(-1, d_hidden))
        hidden = GRURecurrence.apply(x_rz, x_new, self.w_hh, self.b_hh[:, new])  # [M, n, position, H]
        hidden = hidden.reshape(n_modules, n * length, d_hidden)
        return module_linear(hidden, self.w_out, self.b_out).reshape(n_modules, n, length, -1)

    def token_nll(self, codes: Int[Tensor, "module n position"]) -> Float[Tensor, "module n position"]:
        """``-log p(code_t | input)`` at every position."""
        logits = self(codes)
        nll = F.cross_entropy(logits.reshape(-1, self.n_codes), codes.reshape(-1), reduction="none")
        return nll.reshape(codes.shape)

    def log_likelihood(self, codes: Int[Tensor, "module n position"]) -> Float[Tensor, "module n"]:
        """Mean over positions of ``log p(code_t | codes < t)`` (``<= t`` with ``copy_input``), per example."""
        return -self.token_nll(codes).mean(-1)

    @torch.no_grad()
    def score(self, codes: Int[Tensor, "module n position"], *, eval_batch: int) -> Float[Tensor, "module n"]:
        """:meth:`log_likelihood` without gradients, in slices of ``eval_batch`` examples."""
        return torch.cat([self.log_likelihood(codes[:, i : i + eval_batch]) for i in range(0, codes.shape[1], eval_batch)], 1)

    @torch.no_grad()
    def sequence_probability(
        self, codes: Int[Tensor, "module n position"], *, eval_batch: int
    ) -> Float[Tensor, "module n"]:
        """The release's score: ``exp(Σ_t log p(code_t))`` in float32, in slices of ``eval_batch``.

        Kept in float32 on purpose, as the release computes it: below ``Σ log p ≈ -104`` the
        probability underflows to exactly 0 (and below ≈ -87.3 it is subnormal, with fewer
        digits, down to one representable value from ≈ -103.3), so such examples tie in a
        rank-based AUC where their log-probabilities would not.
        """
        slices = (codes[:, i : i + eval_batch] for i in range(0, codes.shape[1], eval_batch))
        return torch.cat([(-self.token_nll(part).float().sum(-1)).exp() for part in slices], 1)


def clip_grad_norm_per_module(parameters: Iterable[nn.Parameter], max_norm: float) -> Float[Tensor, "module"]:
    """``clip_grad_norm_`` with one norm per module (axis 0 of every parameter)."""
    grads = [p.grad for p in parameters if p.grad is not None]
    norm = torch.stack([g.pow(2).flatten(1).sum(1) for g in grads]).sum(0).sqrt()
    scale = (max_norm / (norm + 1e-6)).clamp(max=1.0)
    for g in grads:
        g.mul_(scale.view(-1, *[1] * (g.ndim - 1)))
    return norm


def train_prior(
    codes: Int[Tensor, "module example position"],
    generators: Sequence[torch.Generator],
    *,
    n_codes: int,
    d_embed: int,
    d_hidden: int,
    lr: float,
    weight_decay: float,
    grad_clip: float | None,
    epochs: int,
    batch_size: int,
    copy_input: bool = False,
    orders: Sequence[Int[Tensor, "module example"]] | None = None,
) -> ModuleGRULM:
    """Fit one GRU LM per module on its code sequences (AdamW, cross-entropy, per-module clipping).

    ``grad_clip=None`` does not clip (utils.py); ``copy_input``: see :class:`ModuleGRULM`.
    ``orders``: one ``[module, example]`` permutation per epoch; None = a fresh one per epoch
    from ``generators`` (drawn after the initialisation).
    """
    n_modules, n_examples, _ = codes.shape
    device = codes.device
    model = ModuleGRULM(generators, n_codes=n_codes, d_embed=d_embed, d_hidden=d_hidden, copy_input=copy_input)
    model = model.to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay, fused=fused_optimizer(device))
    module = torch.arange(n_modules, device=device).unsqueeze(1)
    for epoch in range(epochs):
        if orders is None:
            order = per_module_permutations(generators, n_examples, device)
        else:
            order = orders[epoch].to(device)
        for start in range(0, n_examples, batch_size):
            batch = codes[module, order[:, start : start + batch_size]]
            loss = -model.log_likelihood(batch).mean(-1)  # per module: mean cross-entropy
            optimizer.zero_grad(set_to_none=True)
            loss.sum().backward()
            if grad_clip is not None:
                clip_grad_norm_per_module(model.parameters(), grad_clip)
            optimizer.step()
    return model


def roc_auc(scores: Float[Tensor, "module n"], labels: Int[Tensor, "n"]) -> Float[Tensor, "module"]:
    """ROC-AUC of every row of ``scores`` against binary ``labels`` (ties count 1/2).

    Mann-Whitney form: ``(sum of positive ranks - P(P+1)/2) / (P·N)`` with tied values
    given their average rank, computed with sorting for all modules at once; equal to
    ``sklearn.metrics.roc_auc_score``. 0.5 when ``labels`` lack a class (as the release returns).
    """
    scores = scores.double()
    ordered = scores.sort(dim=-1).values
    below = torch.searchsorted(ordered, scores, side="left")
    at_most = torch.searchsorted(ordered, scores, side="right")
    rank = (below + at_most + 1).double() / 2  # 1-based average rank
    positive = labels.to(scores.device) == 1
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if not n_pos or not n_neg:  # undefined; 0.5 like the release (and a constant score)
        return torch.full(scores.shape[:1], 0.5, device=scores.device)
    rank_sum = rank[:, positive].sum(-1)
    return ((rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)).float()
