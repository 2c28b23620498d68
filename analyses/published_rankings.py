"""What the REAL release's bundled head rankings hold: per model and fold, heads, max / median / mean AUC, the
share at exactly 0.5, and fold-to-fold Spearman and top-K Jaccard (docs/real-release.md's table).

Every file is read with :func:`real_lens.scoring.published.load_published_ranking` (no pickle is executed), so
this also checks the loader on all of them. The release is not part of real-lens: pass a checkout.

    python -m analyses.published_rankings --release /path/to/REAL_ICLR    # -> results/published_rankings/
"""

from __future__ import annotations

import argparse
import re
from dataclasses import dataclass
from pathlib import Path

from analyses.common import RESULTS, run_main, save
from real_lens.compare import compare_scores
from real_lens.errors import RealLensError
from real_lens.scoring.published import load_published_ranking

NAME = "published_rankings"
HEAD_SORTED = Path("validation") / "results_dump" / "head_sorted"
FILE_NAME = re.compile(r"Model_(?P<model>.+)_fold_(?P<fold>\d+)_seed_(?P<seed>\d+)_top_heads.*\.npy$")


@dataclass(frozen=True)
class Config:
    release: str = ""  # a checkout of liam0949/REAL_ICLR (--release)
    k: int = 48  # top-K set compared between folds (the release's K)


def analyse(cfg: Config) -> dict:
    folder = Path(cfg.release) / HEAD_SORTED
    files = sorted(folder.glob("*.npy")) if folder.is_dir() else []
    if not files:
        raise RealLensError(f"--release {cfg.release} has no {HEAD_SORTED}/*.npy; pass a checkout of liam0949/REAL_ICLR")
    models: dict[str, dict] = {}
    for path in files:
        match = FILE_NAME.match(path.name)
        if not match:
            continue
        scores = load_published_ranking(path)
        values = scores.scores.flatten().double()
        models.setdefault(match["model"], {"folds": {}})["folds"][match["fold"]] = {
            "file": path.name, "shape": list(scores.scores.shape), "n_heads": scores.n_modules,
            "max_auc": float(values.max()), "median_auc": float(values.median()), "mean_auc": float(values.mean()),
            "share_at_0.5": float((values == 0.5).double().mean()), "n_zero": int((values == 0).sum()),
            "_scores": scores,
        }
    for model in models.values():
        folds = model["folds"]
        if {"0", "1"} <= set(folds):
            c = compare_scores(folds["0"]["_scores"], folds["1"]["_scores"], k=cfg.k)
            model["fold0_vs_fold1"] = {"spearman": c["spearman"], "jaccard_top_k": c["jaccard_top_k"],
                                       "overlap_top_k": c["overlap_top_k"]}
        for fold in folds.values():
            del fold["_scores"]
    return {"models": models}


def table(data: dict, k: int) -> list[str]:
    lines = ["# The REAL release's bundled head rankings (validation/results_dump/head_sorted)", "",
             f"| model | heads | fold | max AUC | median AUC | mean AUC | at exactly 0.5 | fold 0 vs 1 Spearman | "
             f"top-{k} Jaccard |", "|---|---|---|---|---|---|---|---|---|"]
    for name, model in data["models"].items():
        folds = [model["folds"][f] for f in sorted(model["folds"])]
        both = " / ".join

        def cell(key, fmt):
            return both(format(f[key], fmt) for f in folds)

        agreement = model.get("fold0_vs_fold1", {})
        lines.append(f"| {name} | {folds[0]['n_heads']} ({folds[0]['shape'][0]} x {folds[0]['shape'][1]}) | "
                     f"{both(sorted(model['folds']))} | {cell('max_auc', '.3f')} | {cell('median_auc', '.3f')} | "
                     f"{cell('mean_auc', '.3f')} | {cell('share_at_0.5', '.1%')} | "
                     f"{agreement.get('spearman', float('nan')):.3f} | {agreement.get('jaccard_top_k', float('nan')):.3f} |")
    return lines + ["", "Command: `python -m analyses.published_rankings --release PATH`"]


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--release", required=True, help="a checkout of liam0949/REAL_ICLR")
    parser.add_argument("--k", type=int, default=Config.k)
    parser.add_argument("--out", default=None, help=f"results folder (default results/{NAME})")
    args = parser.parse_args(argv)
    cfg = Config(release=str(Path(args.release).resolve()), k=args.k)
    data = analyse(cfg)
    lines = table(data, cfg.k)
    save(Path(args.out) if args.out else RESULTS / NAME, Config(release="PATH", k=cfg.k), data, lines)
    print("\n".join(lines))
    return data


if __name__ == "__main__":
    run_main(main)
