"""REAL's vector-quantised autoencoder, one per module, all trained as ONE tensor program.

Every weight carries a leading module axis ``M`` (``[M, d_in, d_out]``) and is applied
with ``torch.baddbmm``, so the modules of a chunk train together yet stay independent:
each has its own encoder, codebook, EMA statistics, decoder, minibatch order (from its
own ``torch.Generator``) and Adam state (Adam is elementwise, so one Adam over the
stacked weights equals one Adam per module). The per-module losses are summed, so each
module's gradient is exactly its own loss's gradient.

Architecture (METHOD.md §3): encoder ``d -> d -> b`` (LeakyReLU), the code ``z`` split
into ``U`` groups of ``b/U`` dims, each group snapped to its nearest entry of one codebook
of ``K`` entries (shared by the module's groups, updated by EMA as in Sonnet 2),
straight-through gradient, decoder ``b -> d -> d``.

The authors' camera-ready code (OneForAll.py, METHOD.md §3a) differs in two places, each a
switch here: an EMA whose running sums start as a copy of the codebook without debiasing
(``debias_ema=False``), and a SupCon whose denominator holds the anchor
(:func:`supcon_loss_release`). Their older utils.py path also has bias-free linear layers
(``mlp_bias=False``) and a SupCon whose positive set holds the anchor
(:func:`supcon_loss_anchor_positive`). ``orders`` replaces the per-epoch minibatch orders
(the release variant draws them as the release's DataLoader does).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float, Int
from torch import Tensor, nn


# --- batched building blocks ---------------------------------------------------------
def module_linear(
    x: Float[Tensor, "module n d_in"],
    weight: Float[Tensor, "module d_in d_out"],
    bias: Float[Tensor, "module d_out"] | None,
) -> Float[Tensor, "module n d_out"]:
    """``x @ weight + bias`` (``x @ weight`` when ``bias`` is None) for every module at once."""
    if bias is None:
        return torch.bmm(x, weight)
    return torch.baddbmm(bias.unsqueeze(1), x, weight)


def init_uniform(generators: Sequence[torch.Generator], shape: tuple[int, ...], bound: float) -> nn.Parameter:
    """``U(-bound, bound)`` drawn per module from that module's generator, stacked on axis 0.

    Drawing from each module's own generator makes its weights independent of which
    other modules share its chunk.
    """
    return nn.Parameter(torch.stack([torch.empty(shape).uniform_(-bound, bound, generator=g) for g in generators]))


def init_linear(
    generators: Sequence[torch.Generator], d_in: int, d_out: int, *, bias: bool = True
) -> tuple[nn.Parameter, nn.Parameter | None]:
    """``nn.Linear``'s default initialisation (``U(±1/sqrt(d_in))`` for weight and bias), per module.

    ``bias=False`` returns ``(weight, None)``, like ``nn.Linear(..., bias=False)``.
    """
    bound = 1 / math.sqrt(d_in)
    weight = init_uniform(generators, (d_in, d_out), bound)
    return weight, (init_uniform(generators, (d_out,), bound) if bias else None)


def fused_optimizer(device: torch.device) -> bool | None:
    """Use the single-kernel Adam/AdamW where torch has one (same elementwise update, faster)."""
    return True if device.type in ("cpu", "cuda") else None


def per_module_permutations(generators: Sequence[torch.Generator], n: int, device) -> Int[Tensor, "module n"]:
    """One fresh ordering of ``n`` examples per module (each from its own generator)."""
    return torch.stack([torch.randperm(n, generator=g) for g in generators]).to(device)


# --- codebook --------------------------------------------------------------------------
def quantize(
    z: Float[Tensor, "module n c"], codebook: Float[Tensor, "module k c"]
) -> tuple[Float[Tensor, "module n c"], Int[Tensor, "module n"]]:
    """Snap each vector to its nearest codebook entry (squared Euclidean; ties -> lowest index)."""
    # ||z - e||^2 = ||z||^2 - 2 z.e + ||e||^2; ||z||^2 does not change the argmin.
    distance = torch.baddbmm(codebook.pow(2).sum(-1).unsqueeze(1), z, codebook.transpose(1, 2), alpha=-2)
    codes = distance.argmin(-1)
    return torch.gather(codebook, 1, codes.unsqueeze(-1).expand(-1, -1, codebook.shape[-1])), codes


def straight_through(z: Float[Tensor, "*batch c"], q: Float[Tensor, "*batch c"]) -> Float[Tensor, "*batch c"]:
    """The value of ``q`` with the gradient of ``z`` (the straight-through estimator)."""
    return z + (q - z).detach()


def ema_update(
    cluster_hidden: Float[Tensor, "module k"],
    dw_hidden: Float[Tensor, "module k c"],
    step: int,
    z: Float[Tensor, "module n c"],
    codes: Int[Tensor, "module n"],
    *,
    decay: float,
    eps: float,
    debias: bool = True,
) -> tuple[Float[Tensor, "module k c"], Float[Tensor, "module k"], Float[Tensor, "module k c"]]:
    """One EMA codebook update (Sonnet 2 ``VectorQuantizerEMA``); returns (codebook, cluster_hidden, dw_hidden).

    ``step`` counts updates from 1. Zero-debiased moving averages of the counts and sums:
    ``h <- decay·h + (1-decay)·value``, ``avg = h / (1 - decay^step)`` (``h`` starts at 0), for
    ``N_k`` (how many vectors chose entry k) and ``m_k`` (their sum). Counts are
    Laplace-smoothed, ``Ñ_k = (N_k + eps) / (n + K·eps) · n`` with ``n = Σ_k N_k``, and
    ``e_k = m_k / Ñ_k``. An entry never chosen so far sits at the origin.

    ``debias=False`` is the release's (VQ-VAE-2, rosinality) update: ``avg = h``, with the
    caller starting ``dw_hidden`` as a copy of the random codebook. Every entry unused by
    the first batch is then ``decay·e_k / ~eps``, flung ~1e5x away and never chosen again;
    on activations near the origin that left one code per module — why the described
    variant debiases.
    """
    n_codes = cluster_hidden.shape[-1]
    counts = code_counts(codes, n_codes)
    sums = torch.zeros_like(dw_hidden).scatter_add_(1, codes.unsqueeze(-1).expand_as(z), z)
    cluster_hidden = decay * cluster_hidden + (1 - decay) * counts
    dw_hidden = decay * dw_hidden + (1 - decay) * sums
    if debias:
        correction = 1 - decay**step
        cluster_size, dw = cluster_hidden / correction, dw_hidden / correction
    else:
        cluster_size, dw = cluster_hidden, dw_hidden
    n = cluster_size.sum(-1, keepdim=True)
    smoothed = (cluster_size + eps) / (n + n_codes * eps) * n
    return dw / smoothed.unsqueeze(-1), cluster_hidden, dw_hidden


def code_counts(codes: Int[Tensor, "module *n"], n_codes: int) -> Float[Tensor, "module k"]:
    """How often each codebook entry is used, per module."""
    flat = codes.reshape(codes.shape[0], -1)
    counts = torch.zeros(flat.shape[0], n_codes, device=codes.device)
    return counts.scatter_add_(1, flat, torch.ones_like(flat, dtype=counts.dtype))


def perplexity(counts: Float[Tensor, "module k"]) -> Float[Tensor, "module"]:
    """``exp(entropy)`` of the code-usage distribution: 1 = one code used, K = all equally."""
    p = counts / counts.sum(-1, keepdim=True).clamp(min=1)
    return torch.exp(-torch.special.xlogy(p, p).sum(-1))


# --- supervised contrastive loss ------------------------------------------------------
def supcon_loss(
    features: Float[Tensor, "module batch f"], labels: Int[Tensor, "module batch"], *, temperature: float
) -> Float[Tensor, "module"]:
    """Khosla et al. (2020) supervised contrastive loss on cosine similarity, per module.

    For anchor ``i`` with positives ``P(i)`` (same label, not ``i``):
    ``-1/|P(i)| Σ_p log(exp(s_ip/T) / Σ_{a≠i} exp(s_ia/T))``, averaged over anchors that
    have a positive (0 for a batch without any).
    """
    f = F.normalize(features, dim=-1)
    batch = f.shape[1]
    self_pair = torch.eye(batch, dtype=torch.bool, device=f.device)
    logits = (torch.bmm(f, f.transpose(1, 2)) / temperature).masked_fill(self_pair, float("-inf"))
    log_prob = logits - torch.logsumexp(logits, dim=-1, keepdim=True)
    positive = (labels.unsqueeze(2) == labels.unsqueeze(1)) & ~self_pair
    n_positive = positive.sum(-1)
    anchor_loss = -log_prob.masked_fill(~positive, 0.0).sum(-1) / n_positive.clamp(min=1)
    has_positive = (n_positive > 0).to(f.dtype)
    return (anchor_loss * has_positive).sum(-1) / has_positive.sum(-1).clamp(min=1)


def supcon_loss_anchor_positive(
    features: Float[Tensor, "module batch f"], labels: Int[Tensor, "module batch"], *, temperature: float
) -> Float[Tensor, "module"]:
    """The release's SupCon: the anchor is one of its own positives, not of its denominator.

    For anchor ``i`` with ``P⁺(i)`` = every example with its label, ``i`` included, and
    ``l_ia = s_ia/T - max_a s_ia/T`` (the row maximum, over the anchor too, detached):
    ``-1/(|P⁺(i)| + 1e-6) Σ_{p∈P⁺(i)} [l_ip - log(Σ_{a≠i} exp(l_ia) + 1e-6)]``, averaged over
    every anchor. The shift and both 1e-6 are the release's; with them the value is the
    release's to float rounding. The anchor's own term ``1/T - log Σ_{a≠i} exp(s_ia/T)`` pushes
    every other example away from it, positives included, and can make the loss negative.
    """
    f = F.normalize(features, dim=-1)
    batch = f.shape[1]
    self_pair = torch.eye(batch, dtype=torch.bool, device=f.device)
    logits = torch.bmm(f, f.transpose(1, 2)) / temperature
    logits = logits - logits.amax(-1, keepdim=True).detach()
    others = logits.exp().masked_fill(self_pair, 0.0).sum(-1, keepdim=True)
    log_prob = logits - torch.log(others + 1e-6)
    positive = (labels.unsqueeze(2) == labels.unsqueeze(1)).to(f.dtype)
    anchor_loss = -(positive * log_prob).sum(-1) / (positive.sum(-1) + 1e-6)
    return anchor_loss.mean(-1)


def supcon_loss_release(
    features: Float[Tensor, "module batch f"], labels: Int[Tensor, "module batch"], *, temperature: float
) -> Float[Tensor, "module"]:
    """OneForAll.py's SupCon: positives leave the anchor out, the denominator keeps it.

    For anchor ``i`` with positives ``P(i)`` (same label, not ``i``):
    ``-1/max(|P(i)|, 1) Σ_p [s_ip/T - log Σ_a exp(s_ia/T)]`` with ``a`` over the whole batch, the
    anchor included, averaged over EVERY anchor (one without a positive counts 0).
    """
    f = F.normalize(features, dim=-1)
    batch = f.shape[1]
    self_pair = torch.eye(batch, dtype=torch.bool, device=f.device)
    logits = torch.bmm(f, f.transpose(1, 2)) / temperature
    log_prob = logits - torch.logsumexp(logits, dim=-1, keepdim=True)
    positive = (labels.unsqueeze(2) == labels.unsqueeze(1)) & ~self_pair
    anchor_loss = -log_prob.masked_fill(~positive, 0.0).sum(-1) / positive.sum(-1).clamp(min=1)
    return anchor_loss.mean(-1)


SupConLoss = Callable[..., Tensor]  # (features, labels, *, temperature) -> [module]


# --- the model -------------------------------------------------------------------------
class ModuleVQAE(nn.Module):
    """``M`` independent VQ-AEs (one per module) with stacked weights."""

    def __init__(
        self,
        generators: Sequence[torch.Generator],
        *,
        d: int,
        code_dim: int,
        n_groups: int,
        n_codes: int,
        leaky_slope: float,
        ema_decay: float,
        ema_eps: float,
        mlp_bias: bool = True,
        debias_ema: bool = True,
    ):
        """``mlp_bias=False``: bias-free linear layers; ``debias_ema=False``: the release's EMA
        (running sums start as a copy of the codebook, no debiasing). Both False = the release."""
        super().__init__()
        self.n_groups, self.n_codes, self.code_dim = n_groups, n_codes, code_dim
        self.leaky_slope, self.ema_decay, self.ema_eps, self.debias_ema = leaky_slope, ema_decay, ema_eps, debias_ema
        # Draw order per module is fixed (enc1, enc2, dec1, dec2, codebook) -> reproducible.
        self.enc1_w, self.enc1_b = init_linear(generators, d, d, bias=mlp_bias)
        self.enc2_w, self.enc2_b = init_linear(generators, d, code_dim, bias=mlp_bias)
        self.dec1_w, self.dec1_b = init_linear(generators, code_dim, d, bias=mlp_bias)
        self.dec2_w, self.dec2_b = init_linear(generators, d, d, bias=mlp_bias)
        group_dim = code_dim // n_groups
        codebook = torch.stack([torch.randn(n_codes, group_dim, generator=g) for g in generators])
        self.register_buffer("codebook", codebook)
        self.register_buffer("cluster_hidden", torch.zeros(len(generators), n_codes))
        self.register_buffer("dw_hidden", torch.zeros_like(codebook) if debias_ema else codebook.clone())
        self.ema_steps = 0

    def encode(self, x: Float[Tensor, "module n d"]) -> Float[Tensor, "module n b"]:
        h = F.leaky_relu(module_linear(x, self.enc1_w, self.enc1_b), self.leaky_slope)
        return module_linear(h, self.enc2_w, self.enc2_b)

    def decode(self, q: Float[Tensor, "module n b"]) -> Float[Tensor, "module n d"]:
        h = F.leaky_relu(module_linear(q, self.dec1_w, self.dec1_b), self.leaky_slope)
        return module_linear(h, self.dec2_w, self.dec2_b)

    def groups(self, z: Float[Tensor, "module n b"]) -> Float[Tensor, "module nu c"]:
        """``[M, n, b] -> [M, n·U, b/U]``: every group of every example as one code vector."""
        return z.reshape(z.shape[0], -1, self.code_dim // self.n_groups)

    def quantize(self, z: Float[Tensor, "module n b"]) -> tuple[Float[Tensor, "module n b"], Int[Tensor, "module n u"]]:
        q, codes = quantize(self.groups(z), self.codebook)
        return q.reshape(z.shape), codes.reshape(z.shape[0], z.shape[1], self.n_groups)

    @torch.no_grad()
    def update_codebook(self, z: Float[Tensor, "module n b"], codes: Int[Tensor, "module n u"]) -> None:
        self.ema_steps += 1
        self.codebook, self.cluster_hidden, self.dw_hidden = ema_update(
            self.cluster_hidden, self.dw_hidden, self.ema_steps, self.groups(z), codes.reshape(z.shape[0], -1),
            decay=self.ema_decay, eps=self.ema_eps, debias=self.debias_ema,
        )


# --- training --------------------------------------------------------------------------
@dataclass(frozen=True)
class VQAEResult:
    """Per module: the discrete code of every example, and how the VQ-AE ended up."""

    codes: Int[Tensor, "module example group"]
    recon_loss: Float[Tensor, "module"]  # MSE(x̂, x) over all examples, after training
    perplexity: Float[Tensor, "module"]  # codebook perplexity over all examples, after training
    collapsed: Bool[Tensor, "module"]  # perplexity/K stayed below the threshold too long


def train_vqae(
    x: Float[Tensor, "module example d"],
    labels: Int[Tensor, "example"],
    generators: Sequence[torch.Generator],
    *,
    code_dim: int,
    n_groups: int,
    n_codes: int,
    beta: float,
    supcon_weight: float,
    temperature: float,
    lr: float,
    batch_size: int,
    epochs: int,
    leaky_slope: float,
    ema_decay: float,
    ema_eps: float,
    collapse_threshold: float,
    collapse_patience: int,
    eval_batch: int,
    mlp_bias: bool = True,
    debias_ema: bool = True,
    supcon: SupConLoss = supcon_loss,
    orders: Iterable[Int[Tensor, "module example"]] | None = None,
) -> VQAEResult:
    """Train one VQ-AE per module (``generators[m]`` seeds module ``m``) and encode every example.

    Loss per module = MSE(x̂, x) + beta·MSE(z, sg(q)) + supcon_weight·supcon(q, labels),
    Adam, ``epochs`` passes in minibatches of ``batch_size`` (last one partial).
    Collapse: perplexity/K of an epoch's codes below ``collapse_threshold`` for more than
    ``collapse_patience`` consecutive epochs. The release's VQ-AE: ``debias_ema=False,
    supcon=supcon_loss_release``; utils.py's: ``mlp_bias=False, debias_ema=False,
    supcon=supcon_loss_anchor_positive``. ``orders``: one ``[module, example]`` permutation per
    epoch (at least ``epochs`` of them); None = a fresh one per epoch from ``generators``.
    """
    n_modules, n_examples, d = x.shape
    device = x.device
    model = ModuleVQAE(
        generators, d=d, code_dim=code_dim, n_groups=n_groups, n_codes=n_codes,
        leaky_slope=leaky_slope, ema_decay=ema_decay, ema_eps=ema_eps, mlp_bias=mlp_bias, debias_ema=debias_ema,
    ).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr, fused=fused_optimizer(device))
    labels = labels.to(device)
    module = torch.arange(n_modules, device=device).unsqueeze(1)
    epochs_below = torch.zeros(n_modules, dtype=torch.long, device=device)
    collapsed = torch.zeros(n_modules, dtype=torch.bool, device=device)

    epoch_orders = iter(orders) if orders is not None else None
    for _ in range(epochs):
        if epoch_orders is None:
            order = per_module_permutations(generators, n_examples, device)
        else:
            order = next(epoch_orders).to(device)
        counts = torch.zeros(n_modules, n_codes, device=device)
        for start in range(0, n_examples, batch_size):
            batch = order[:, start : start + batch_size]
            xb = x[module, batch]
            z = model.encode(xb)
            q, codes = model.quantize(z)
            model.update_codebook(z.detach(), codes)  # after q is taken, as in VQ-VAE-2
            q_st = straight_through(z, q)
            loss = (
                (model.decode(q_st) - xb).pow(2).mean((1, 2))
                + beta * (z - q.detach()).pow(2).mean((1, 2))
                + supcon_weight * supcon(q_st, labels[batch], temperature=temperature)
            )
            optimizer.zero_grad(set_to_none=True)
            loss.sum().backward()  # sum over modules: each module gets its own loss's gradient
            optimizer.step()
            counts += code_counts(codes, n_codes)
        below = perplexity(counts) / n_codes < collapse_threshold
        epochs_below = torch.where(below, epochs_below + 1, torch.zeros_like(epochs_below))
        collapsed |= epochs_below > collapse_patience

    codes, recon = encode_all(model, x, eval_batch=eval_batch)
    return VQAEResult(codes, recon, perplexity(code_counts(codes, n_codes)), collapsed)


@torch.no_grad()
def encode_all(
    model: ModuleVQAE, x: Float[Tensor, "module example d"], *, eval_batch: int
) -> tuple[Int[Tensor, "module example group"], Float[Tensor, "module"]]:
    """Codes of every example (no codebook update) and the mean reconstruction MSE, per module."""
    codes, squared_error = [], torch.zeros(x.shape[0], device=x.device)
    for start in range(0, x.shape[1], eval_batch):
        xb = x[:, start : start + eval_batch]
        q, c = model.quantize(model.encode(xb))
        squared_error += (model.decode(q) - xb).pow(2).sum((1, 2))
        codes.append(c)
    return torch.cat(codes, 1), squared_error / (x.shape[1] * x.shape[2])
