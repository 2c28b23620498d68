"""Throughput of collect_activations vs a plain HF forward of the same model on the same batches.

    python benchmarks/bench_collect.py [--model M] [--questions N] [--batch-size B] [--site S]
                                       [--device cuda] [--dtype bfloat16]

Prints tokens/s for both and the ratio (target >= 0.85: hook + caching overhead <= 15%).
Both sides run the same padded batches, in alternating order, best of ``--repeats``.
"""

from __future__ import annotations

import argparse
import time

import torch

from real_lens.activations import _tokenize, collect_activations
from real_lens.models import DEFAULT_MODEL, load_model
from real_lens.models.loading import load_hf
from real_lens.tasks import load_task


def main(argv=None) -> float:
    """Prints the comparison; returns the ratio collect / plain HF (tokens/s)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--questions", type=int, default=40, help="TruthfulQA questions (all their answers)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--site", default="head_z")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default=None, help="torch device (default: TransformerLens's choice)")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    args = parser.parse_args(argv)
    dtype = getattr(torch, args.dtype)

    model = load_model(args.model, device=args.device, dtype=dtype)
    device = next(model.parameters()).device
    task = load_task("truthfulqa")
    task = task.limit(sum(1 for e in task.examples if e.group in set(task.groups[: args.questions])))
    tokenized = _tokenize(model, task.examples)
    n_tokens = sum(len(t) for t in tokenized.tokens)
    order = sorted(range(len(task.examples)), key=lambda i: len(tokenized.tokens[i]))
    pad = model.tokenizer.pad_token_id
    batches = [
        torch.nn.utils.rnn.pad_sequence([tokenized.tokens[i] for i in order[j:j + args.batch_size]], batch_first=True, padding_value=pad)
        for j in range(0, len(order), args.batch_size)
    ]
    # A separately loaded HF model: the bridge wraps its own HF modules in place, so
    # model.original_model would not be a plain forward.
    hf_model, _, _ = load_hf(args.model, dtype=dtype)
    hf_model = hf_model.to(device)

    def plain_hf() -> None:
        with torch.inference_mode():
            for tokens in batches:
                hf_model(tokens.to(device), use_cache=False)
        if device.type == "cuda":
            torch.cuda.synchronize()

    def collect() -> None:
        collect_activations(model, task, site=args.site, batch_size=args.batch_size, cache=False, progress=False)
        if device.type == "cuda":
            torch.cuda.synchronize()

    times = {"plain HF forward": [], "collect_activations": []}
    for _ in range(args.repeats):
        for name, fn in (("plain HF forward", plain_hf), ("collect_activations", collect)):
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    best = {k: min(v) for k, v in times.items()}
    print(f"model {args.model} ({args.dtype} on {device}), {len(task.examples)} examples, {n_tokens} tokens, "
          f"batch {args.batch_size}, site {args.site}, best of {args.repeats}, {torch.get_num_threads()} threads")
    for name, seconds in best.items():
        print(f"  {name:22s} {seconds:7.2f} s  {n_tokens / seconds:8.0f} tokens/s")
    ratio = best["plain HF forward"] / best["collect_activations"]
    print(f"ratio collect / plain HF (tokens/s): {ratio:.2f}  (target >= 0.85)")
    return ratio


if __name__ == "__main__":
    main()
