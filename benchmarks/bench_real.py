"""Batched REAL scoring vs the same implementation one module at a time.

    python benchmarks/bench_real.py --shape smollm2 --loop-modules 3
    python benchmarks/bench_real.py --device cuda --shape llama2-7b --loop-modules 4

Builds a synthetic bank (Gaussian noise; a few modules carry the label through an XOR-like
cluster structure), scores ALL modules batched, then scores the first ``--loop-modules``
modules one at a time (``module_chunk=1``: same code, same seeds, so the same scores) and
scales that time linearly to all modules. Prints both times, the ratio, and whether the
looped modules' scores equal the batched ones.

It also prints the batched program's matrix-product floor: the multiply-adds REAL has to
do (counted from the config and the bank shape) at the ``bmm`` throughput measured in the
same run on the program's own product shapes. Batched time / floor says how far the
batched program is from doing nothing but its products; loop time / floor bounds the
speed-up any batching could reach with this machine's ``bmm``.
"""

from __future__ import annotations

import argparse
import math
import os
import time
from dataclasses import replace

import torch

from real_lens.scoring.real import score_real_tensors, split_heldout
from real_lens.scoring.real_config import RealConfig

SHAPES = {  # examples, layers, heads, d_head
    "smollm2": (3000, 30, 9, 64),
    "llama2-7b": (5900, 32, 32, 128),
    "tiny": (400, 4, 4, 16),
}


def make_bank(n_examples: int, n_layers: int, n_heads: int, d_head: int, *, seed: int):
    """Noise everywhere; every 10th module gets label-dependent clusters (means equal across labels)."""
    g = torch.Generator().manual_seed(seed)
    n_modules = n_layers * n_heads
    acts = torch.randn(n_examples, n_modules, d_head, generator=g) * 0.5
    labels = torch.arange(n_examples) % 2
    groups = [f"q{i // 6}" for i in range(n_examples)]
    side = torch.where(torch.rand(n_examples, generator=g) < 0.5, -1.0, 1.0).unsqueeze(1)
    planted = list(range(0, n_modules, 10))
    for m in planted:
        axis = torch.zeros(n_examples, d_head)
        axis[:, 0], axis[:, 1] = labels * 3.0, (1 - labels) * 3.0
        acts[:, m] += side * axis
    return acts, labels, groups, planted


def matmul_flops(cfg: RealConfig, d: int, n_examples: int, prior_train: tuple[int, int], n_heldout: int) -> dict[str, int]:
    """Floating-point operations of REAL's matrix products for ONE module (multiply-add = 2).

    ``prior_train``: examples the aligned and the violating prior train on; ``n_heldout``:
    examples both priors score. Training counts forward + backward (the backward of a
    product is two products of the same size, one when its input is data); encoding and
    held-out scoring count forward only. Elementwise work, the optimisers and indexing are
    left out: this is a floor, not an estimate. A test checks it against torch's
    ``FlopCounterMode`` on a real run.
    """
    b, k, u = cfg.code_dim_for(d), cfg.n_codes, cfg.n_groups
    e, h = cfg.prior_embed, cfg.prior_hidden
    mlp = d * d + d * b + b * d + d * d  # encoder d->d->b, decoder b->d->d
    batches = [min(cfg.batch_size, n_examples - i) for i in range(0, n_examples, cfg.batch_size)]
    supcon = sum(size * size * b for size in batches)  # cosine similarities of one minibatch
    train_epoch = n_examples * (3 * mlp - d * d + k * b) + 3 * supcon  # no input gradient; codebook distances
    vq = 2 * (cfg.vq_epochs * train_epoch + n_examples * (mlp + k * b))
    per_sequence = (u - 1) * h * 3 * h + u * h * k  # recurrent products (none at t=0), output layer
    table = (k + 1) * e * 3 * h  # the input projection of every code, once per step
    steps = sum(math.ceil(n / cfg.prior_batch_size) for n in prior_train)
    prior = 2 * (3 * cfg.prior_epochs * (sum(prior_train) * per_sequence + steps * table))
    prior += 2 * 2 * (n_heldout * per_sequence + math.ceil(n_heldout / cfg.eval_batch) * table)
    return {"vqae": vq, "prior": prior}


def prior_split_sizes(labels, groups, cfg: RealConfig, seed: int) -> tuple[tuple[int, int], int]:
    """``((aligned, violating) examples the priors train on, held-out examples)``, as REAL splits them."""
    train, heldout = split_heldout(labels, groups, how=cfg.heldout_split, fraction=cfg.heldout_fraction, seed=seed,
                                   stream=cfg.heldout_stream)
    return (int((labels[train] == 1).sum()), int((labels[train] == 0).sum())), len(heldout)


def bmm_rate(n_modules: int, rows: int, d_in: int, d_out: int, device: str, *, seconds: float = 1.0) -> float:
    """Measured FLOP/s of ``torch.bmm`` on ``[n_modules, rows, d_in] @ [n_modules, d_in, d_out]``."""
    x, w = torch.randn(n_modules, rows, d_in, device=device), torch.randn(n_modules, d_in, d_out, device=device)
    torch.bmm(x, w)  # warm-up
    if device == "cuda":
        torch.cuda.synchronize()
    reps, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        for _ in range(10):
            torch.bmm(x, w)
        reps += 10
        if device == "cuda":
            torch.cuda.synchronize()
    return 2 * n_modules * rows * d_in * d_out * reps / (time.perf_counter() - start)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--shape", choices=tuple(SHAPES), default="smollm2")
    parser.add_argument("--loop-modules", type=int, default=3, help="modules to time one at a time")
    parser.add_argument("--examples", type=int, default=None, help="override the number of examples")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--module-chunk", type=int, default=None, help="modules per chunk (default: RealConfig's)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's default)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    n_examples, n_layers, n_heads, d_head = SHAPES[args.shape]
    n_examples = args.examples or n_examples
    acts, labels, groups, planted = make_bank(n_examples, n_layers, n_heads, d_head, seed=args.seed)
    n_modules = acts.shape[1]
    cfg = RealConfig(module_chunk=args.module_chunk)  # the paper's defaults
    print(
        f"bank {args.shape}: {n_examples} examples x {n_layers} layers x {n_heads} heads x {d_head} "
        f"({n_modules} modules), device {args.device}, torch threads {torch.get_num_threads()}, "
        f"default RealConfig (K={cfg.n_codes}, U={cfg.n_groups}, {cfg.vq_epochs} VQ epochs, "
        f"{cfg.prior_epochs} prior epochs), module_chunk {cfg.module_chunk_for(torch.device(args.device))}"
    )
    print(f"load average before the run (other processes share these cores): {os.getloadavg()[0]:.2f}")

    def timed(acts_part, config):
        if args.device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        auc, diagnostics = score_real_tensors(acts_part, labels, groups, cfg=config, seed=args.seed, device=args.device)
        if args.device == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start, auc

    batched_s, auc = timed(acts, cfg)
    print(f"batched, all {n_modules} modules: {batched_s:.1f} s")
    ranked = torch.argsort(-auc, stable=True).tolist()
    top = ranked[: len(planted)]
    print(f"planted modules {planted}: AUC {[round(float(auc[m]), 3) for m in planted]}; "
          f"{len(set(top) & set(planted))}/{len(planted)} of them in the top {len(planted)}")

    n_loop = min(args.loop_modules, n_modules)
    loop_s, loop_auc = timed(acts[:, :n_loop], replace(cfg, module_chunk=1))
    estimate = loop_s / n_loop * n_modules
    same = torch.equal(loop_auc, auc[:n_loop])
    print(f"one module at a time, first {n_loop} modules: {loop_s:.1f} s "
          f"({loop_s / n_loop:.2f} s per module; scores identical to batched: {same})")
    print(f"one module at a time, all {n_modules} modules: {estimate:.0f} s "
          f"(ESTIMATE: linear scaling of the {n_loop}-module time x {n_modules}/{n_loop})")
    print(f"speed-up of batched over one-at-a-time: {estimate / batched_s:.1f}x")

    chunk = min(cfg.module_chunk_for(torch.device(args.device)), n_modules)
    split = prior_split_sizes(labels, groups, cfg, args.seed)
    flops = {s: f * n_modules for s, f in matmul_flops(cfg, d_head, n_examples, *split).items()}
    rates = {  # the products that dominate each stage: an encoder layer, a GRU step
        "vqae": bmm_rate(chunk, cfg.batch_size, d_head, d_head, args.device),
        "prior": bmm_rate(chunk, cfg.prior_batch_size, cfg.prior_hidden, 3 * cfg.prior_hidden, args.device),
    }
    floor = sum(flops[s] / rates[s] for s in flops)
    print(
        "matrix-product floor of the batched program: "
        + " + ".join(f"{s} {flops[s] / 1e9:,.1f} GFLOP at {rates[s] / 1e9:.0f} GFLOP/s" for s in flops)
        + f" (bmm measured now, {chunk} modules per product) = {floor:.1f} s; "
        f"the batched run took {batched_s / floor:.1f}x that"
    )
    print(f"speed-up if everything but the matrix products were free: {estimate / floor:.0f}x (a ceiling, not a target)")


if __name__ == "__main__":
    main()
