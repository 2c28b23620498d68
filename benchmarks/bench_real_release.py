"""The camera-ready `real-release` (OneForAll.py) vs the older utils.py path (`real-release-utils`), timed.

    real-lens collect --model smollm2-135m-instruct --limit 120 --out /tmp/bank
    python benchmarks/bench_real_release.py --bank /tmp/bank --fold 0 --heads 12

Scores the first ``--heads`` heads (layer-major) of the bank's fold part (train+val of ``--fold``;
``--fold none``: the whole bank) with both scorers at their own defaults (30/6 epochs vs 20/10),
``--repeats`` times alternately, and prints each time, the AUCs and codebook perplexities, and the
ratio of the best times (new / old).
"""

from __future__ import annotations

import argparse
import time

import torch

from real_lens.bank import ActivationBank
from real_lens.scoring.real import score_real_release, score_real_release_utils

SCORERS = {"new (real-release)": score_real_release, "old (real-release-utils)": score_real_release_utils}


def fold_part(bank: ActivationBank, fold: str | None, data_dir=None) -> ActivationBank:
    """The bank's examples of ``fold``'s train+val questions (all of them for None)."""
    if fold is None:
        return bank
    from real_lens.tasks.truthfulqa import load_truthfulqa

    part = load_truthfulqa(data_dir).folds[int(fold)]
    return bank.select(set(part.train) | set(part.val))


def main(argv=None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bank", required=True, help="a bank directory (real-lens collect --out)")
    parser.add_argument("--fold", default="0", help="fold whose train+val part is scored; 'none' = the whole bank")
    parser.add_argument("--heads", type=int, default=12)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--data-dir", default=None)
    args = parser.parse_args(argv)
    bank = fold_part(ActivationBank.load(args.bank), None if args.fold == "none" else args.fold, args.data_dir)
    heads = list(range(min(args.heads, bank.flat().shape[1])))
    print(f"bank {tuple(bank.acts.shape)} of {bank.meta.get('model', {}).get('name')}; heads {len(heads)}; "
          f"torch threads {torch.get_num_threads()}")
    best = {}
    for _ in range(args.repeats):
        for name, score in SCORERS.items():
            start = time.perf_counter()
            scores = score(bank, modules=heads, progress=False)
            seconds = time.perf_counter() - start
            best[name] = min(best.get(name, seconds), seconds)
            auc = scores.scores.flatten()[heads]
            perplexity = scores.diagnostics["perplexity"].flatten()[heads]
            print(f"{name}: {scores.config['vq_epochs']}/{scores.config['prior_epochs']} epochs, {seconds:.2f} s; "
                  f"AUC {[round(v, 3) for v in auc.tolist()]}; perplexity {[round(v, 2) for v in perplexity.tolist()]}")
    new, old = best["new (real-release)"], best["old (real-release-utils)"]
    print(f"ratio new/old (best of {args.repeats}): {new / old:.2f} ({new:.2f} s / {old:.2f} s)")
    return best


if __name__ == "__main__":
    main()
