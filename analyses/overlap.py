"""How stable is each method's selection? Top-K overlap and rank correlation between methods
(same fold) and between the two folds (same method), from a finished run's saved scores.

No model is run: the scores are the ones `real-lens run` saved (``<run>/scores/fold*/<method>``).
The random scorer uses the run's seed in every fold, so its between-fold agreement is 1 by
construction (the same permutation), not a sign of stability; it is kept as the reference for
between-method agreement (≈ K²/n_modules expected overlap by chance).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from analyses.common import new_figure, run_analysis, run_dir, run_main, style
from real_lens.compare import compare_scores
from real_lens.io import read_json
from real_lens.plotting import save_figure
from real_lens.scoring import ModuleScores


@dataclass(frozen=True)
class Config:
    run: str = "runs/truthfulqa"  # a finished `real-lens run` (the main job); "" = the quick run
    k: int = 24  # top-K set size compared (the larger K of the main job's grid)


CONFIG = Config()
QUICK = Config(run="", k=3)


def analyse(run: Path, k: int) -> dict:
    methods = read_json(run / "config.json")["config"]["methods"]
    folds = sorted(int(p.name[4:]) for p in (run / "scores").glob("fold*"))
    scores = {f: {m: ModuleScores.load(run / "scores" / f"fold{f}" / m) for m in methods} for f in folds}
    between_methods = {}
    for f in folds:
        jac = np.full((len(methods), len(methods)), np.nan)
        rho = np.full_like(jac, np.nan)
        for i, a in enumerate(methods):
            for j, b in enumerate(methods):
                c = compare_scores(scores[f][a], scores[f][b], k=k)
                jac[i, j], rho[i, j] = c["jaccard_top_k"], c["spearman"]
        between_methods[str(f)] = {"jaccard": jac.tolist(), "spearman": rho.tolist()}
    between_folds = {}
    if len(folds) > 1:
        for m in methods:
            c = compare_scores(scores[folds[0]][m], scores[folds[1]][m], k=k)
            between_folds[m] = {"jaccard": c["jaccard_top_k"], "spearman": c["spearman"]}
    n_modules = next(iter(scores[folds[0]].values())).n_modules
    return {"run": str(run), "methods": methods, "folds": folds, "k": k, "n_modules": n_modules,
            "chance_jaccard": _chance_jaccard(k, n_modules),
            "between_methods": between_methods, "between_folds": between_folds}


def _chance_jaccard(k: int, n: int) -> float:
    """Expected Jaccard of two independent uniformly random K-subsets of n modules (approximately)."""
    overlap = k * k / n
    return overlap / (2 * k - overlap)


def table(data: dict) -> list[str]:
    methods, k = data["methods"], data["k"]
    lines = [f"# Selection overlap (top-{k} of {data['n_modules']} modules; chance Jaccard ≈ {data['chance_jaccard']:.3f})", ""]
    for f, mats in data["between_methods"].items():
        lines += [f"## Between methods, fold {f}: top-{k} Jaccard (upper) / Spearman ρ (lower)", "",
                  "| | " + " | ".join(methods) + " |", "|---" * (len(methods) + 1) + "|"]
        for i, a in enumerate(methods):
            cells = [("—" if i == j else f"{mats['jaccard'][i][j]:.2f}" if j > i else _fmt(mats["spearman"][i][j]))
                     for j in range(len(methods))]
            lines.append(f"| {a} | " + " | ".join(cells) + " |")
        lines.append("")
    if data["between_folds"]:
        lines += ["## Between folds (fold 0 vs fold 1), same method", "", f"| method | top-{k} Jaccard | Spearman ρ |", "|---|---|---|"]
        for m in [m for m in methods if m in data["between_folds"]]:
            v = data["between_folds"][m]
            note = " (same seed in both folds: identical by construction)" if m == "random" else ""
            lines.append(f"| {m}{note} | {v['jaccard']:.2f} | {_fmt(v['spearman'])} |")
    return lines


def _fmt(x) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.2f}"


def plot(data: dict, path) -> Path:
    methods, k = data["methods"], data["k"]
    fold = next(iter(data["between_methods"]))
    mats = data["between_methods"][fold]
    fig = new_figure(15.5, 4.6)
    for i, (key, title, vmin) in enumerate((("jaccard", f"top-{k} Jaccard between methods (fold {fold})", 0.0),
                                            ("spearman", f"Spearman ρ between methods (fold {fold})", -1.0))):
        ax = fig.add_subplot(1, 3, i + 1)
        values = np.array(mats[key], dtype=float)
        image = ax.imshow(values, vmin=vmin, vmax=1.0, cmap="viridis" if vmin == 0 else "RdBu_r")
        for (r, c), v in np.ndenumerate(values):
            ax.text(c, r, _fmt(v), ha="center", va="center", fontsize=9,
                    color="white" if (key == "jaccard" and v < 0.6) or (key == "spearman" and abs(v) > 0.7) else "black")
        ax.set_xticks(range(len(methods)), methods, rotation=30)
        ax.set_yticks(range(len(methods)), methods)
        ax.set_title(title, fontsize=12)
        bar = fig.colorbar(image, ax=ax)
        bar.set_label("Jaccard index" if key == "jaccard" else "rank correlation", fontsize=11)
    ax = fig.add_subplot(1, 3, 3)
    if data["between_folds"]:
        names = [m for m in methods if m in data["between_folds"]]
        x = np.arange(len(names))
        ax.bar(x - 0.2, [data["between_folds"][m]["jaccard"] for m in names], 0.4, label=f"top-{k} Jaccard")
        ax.bar(x + 0.2, [np.nan_to_num(data["between_folds"][m]["spearman"] or np.nan) for m in names], 0.4,
               label="Spearman ρ")
        ax.axhline(data["chance_jaccard"], color="black", linestyle="--", linewidth=1, label="chance Jaccard")
        ax.set_xticks(x, [f"{m}*" if m == "random" else m for m in names], rotation=30)
        ax.legend(fontsize=9)

    style(ax, title="stability across folds (fold 0 vs 1)", ylabel="agreement (Jaccard 0–1, ρ −1–1)",
          xlabel="method (*random: same seed in both folds, equal by construction)")
    return save_figure(fig, path)


def main(argv=None) -> dict:
    return run_analysis("overlap", argv, doc=__doc__, config=CONFIG, quick=QUICK, table=table, plot=plot,
                        compute=lambda cfg, out, work, progress: analyse(run_dir(cfg.run, out), cfg.k))


if __name__ == "__main__":
    run_main(main)
