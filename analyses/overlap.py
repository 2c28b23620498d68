"""How stable is each method's selection? Top-K overlap and rank correlation between methods
(same fold) and between the two folds (same method), from a finished main-job run's saved scores,
each placed in a random null.

No model is run: the scores are the ones `real-lens run` saved (``<run>/scores/fold*/<method>``),
fitted under the main job's protocol (its contrast pairs, its fitting parts); a run of the old
α-grid protocol is refused. The random null is ``n_null`` seeded random rankings per fold
(:func:`real_lens.null.random_null_scores`, the main job's null draws): between methods, each
method's agreement with the null draws of the same fold gives the agreement expected by chance
(mean and 5–95 % band); between folds, the agreement of independent draws of the two folds does,
and each method's between-fold agreement gets its percentile in that band.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

import real_lens as rl
from analyses.common import (
    check_protocol,
    fmt,
    new_figure,
    protocol,
    run_analysis,
    run_dir,
    run_main,
    style,
)
from real_lens.experiment import load_config
from real_lens.null import null_band, percentile_in_null, random_null_scores
from real_lens.plotting import save_figure

NULL_SEED_OFFSET = 1_000_003  # the overlap's own null draws: other seeds than the run's steered null


@dataclass(frozen=True)
class Config:
    run: str = "runs/truthfulqa"  # a finished `real-lens run` (the main job); "" = the quick run
    k: int = 16  # top-K set size compared (the main job's K)
    n_null: int = 200  # random rankings per fold (no model: cheap)


CONFIG = Config()
QUICK = Config(run="", k=3, n_null=20)


def agreement(a: rl.ModuleScores, b: rl.ModuleScores, k: int) -> tuple[float, float]:
    """(top-k Jaccard, Spearman ρ) of two rankings of the same modules."""
    c = rl.compare_scores(a, b, k=k)
    return c["jaccard_top_k"], c["spearman"]


def band(values) -> dict:
    """Mean and 5–95 % band of a null's values (NaN values, e.g. ρ of a constant ranking, left out)."""
    finite = [v for v in values if np.isfinite(v)]
    if not finite:
        return {"mean": float("nan"), "low": float("nan"), "high": float("nan"), "n_draws": 0}
    b = null_band(finite)
    return {"mean": b.mean, "low": b.low, "high": b.high, "n_draws": b.n_draws}


def analyse(run: Path, k: int, n_null: int) -> dict:
    cfg = load_config(run)
    check_protocol(cfg, run)
    folds = sorted(int(p.name[4:]) for p in (run / "scores").glob("fold*"))
    # The scored methods (random is the null below; a method that could not score the task has no folder).
    methods = [m for m in cfg.methods if m != "random" and all((run / "scores" / f"fold{f}" / m).is_dir() for f in folds)]
    scores = {f: {m: rl.ModuleScores.load(run / "scores" / f"fold{f}" / m) for m in methods} for f in folds}
    shape = tuple(next(iter(scores[folds[0]].values())).scores.shape)
    null = {f: random_null_scores(shape, n_draws=n_null, fold=f, seed=cfg.seed + NULL_SEED_OFFSET) for f in folds}
    between_methods, vs_null = {}, {}
    for f in folds:
        jac = np.full((len(methods), len(methods)), np.nan)
        rho = np.full_like(jac, np.nan)
        for i, a in enumerate(methods):
            for j, b in enumerate(methods):
                jac[i, j], rho[i, j] = agreement(scores[f][a], scores[f][b], k)
        between_methods[str(f)] = {"jaccard": jac.tolist(), "spearman": rho.tolist()}
        vs_null[str(f)] = {}
        for m in methods:
            pairs = [agreement(scores[f][m], draw, k) for draw in null[f]]
            vs_null[str(f)][m] = {"jaccard": band([p[0] for p in pairs]), "spearman": band([p[1] for p in pairs])}
    between_folds, folds_null = {}, {}
    if len(folds) > 1:
        pairs = [agreement(a, b, k) for a, b in zip(null[folds[0]], null[folds[1]])]
        null_values = {"jaccard": [p[0] for p in pairs], "spearman": [p[1] for p in pairs]}
        folds_null = {key: band(v) for key, v in null_values.items()}
        for m in methods:
            jaccard, spearman = agreement(scores[folds[0]][m], scores[folds[1]][m], k)
            between_folds[m] = {"jaccard": jaccard, "spearman": spearman,
                                "jaccard_percentile": percentile_in_null(jaccard, null_values["jaccard"]),
                                "spearman_percentile": (percentile_in_null(spearman, null_values["spearman"])
                                                        if np.isfinite(spearman) else float("nan"))}
    n_modules = int(np.prod(shape))
    return {"run": str(run), "protocol": protocol(cfg), "methods": methods, "folds": folds, "k": k,
            "n_modules": n_modules, "n_null": n_null, "between_methods": between_methods, "vs_null": vs_null,
            "between_folds": between_folds, "between_folds_null": folds_null}


def table(data: dict) -> list[str]:
    methods, k = data["methods"], data["k"]
    p = data["protocol"]
    lines = [f"# Selection overlap (top-{k} of {data['n_modules']} modules; {data['n_null']} random rankings per fold)",
             "", f"Scores of the main job's run `{data['run']}` ({p['model']}, KL targets {p['kl_grid']}, "
             f"fitted on {p['fitted_on']}; patching {p['patching_pairs']} / attribution {p['attribution_pairs']} "
             f"contrast pairs).", ""]
    for f, mats in data["between_methods"].items():
        lines += [f"## Between methods, fold {f}: top-{k} Jaccard (upper) / Spearman ρ (lower)", "",
                  "| | " + " | ".join(methods) + " | Jaccard with the null: mean [5–95 %] |",
                  "|---" * (len(methods) + 2) + "|"]
        for i, a in enumerate(methods):
            cells = [("—" if i == j else fmt(mats["jaccard"][i][j], ".2f") if j > i else fmt(mats["spearman"][i][j], ".2f"))
                     for j in range(len(methods))]
            nb = data["vs_null"][f][a]["jaccard"]
            lines.append(f"| {a} | " + " | ".join(cells) + f" | {fmt(nb['mean'], '.2f')} [{fmt(nb['low'], '.2f')}, "
                         f"{fmt(nb['high'], '.2f')}] |")
        lines.append("")
    if data["between_folds"]:
        nj, nr = data["between_folds_null"]["jaccard"], data["between_folds_null"]["spearman"]
        lines += ["## Between folds (fold 0 vs fold 1), same method", "",
                  f"Null (independent random rankings of the two folds): top-{k} Jaccard {fmt(nj['mean'], '.2f')} "
                  f"[{fmt(nj['low'], '.2f')}, {fmt(nj['high'], '.2f')}], Spearman ρ {fmt(nr['mean'], '.2f')} "
                  f"[{fmt(nr['low'], '.2f')}, {fmt(nr['high'], '.2f')}] (mean [5–95 %]).", "",
                  f"| method | top-{k} Jaccard | percentile in the null | Spearman ρ | percentile in the null |",
                  "|---|---|---|---|---|"]
        for m in [m for m in methods if m in data["between_folds"]]:
            v = data["between_folds"][m]
            lines.append(f"| {m} | {fmt(v['jaccard'], '.2f')} | {fmt(v['jaccard_percentile'], '.0f')} | "
                         f"{fmt(v['spearman'], '.2f')} | {fmt(v['spearman_percentile'], '.0f')} |")
    return lines


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
            ax.text(c, r, fmt(float(v), ".2f"), ha="center", va="center", fontsize=9,
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
        ax.bar(x + 0.2, [np.nan_to_num(data["between_folds"][m]["spearman"]) for m in names], 0.4, label="Spearman ρ")
        for key, colour in (("jaccard", "tab:blue"), ("spearman", "tab:orange")):
            nb = data["between_folds_null"][key]
            ax.axhspan(nb["low"], nb["high"], color=colour, alpha=0.15, label=f"null 5–95 % ({key})")
        ax.set_xticks(x, names, rotation=30)
        ax.legend(fontsize=8)
    style(ax, title="stability across folds (fold 0 vs 1)", ylabel="agreement (Jaccard 0–1, ρ −1–1)",
          xlabel="method (bands: independent random rankings)")
    return save_figure(fig, path)


def main(argv=None) -> dict:
    return run_analysis("overlap", argv, doc=__doc__, config=CONFIG, quick=QUICK, table=table, plot=plot,
                        compute=lambda cfg, out, work, progress: analyse(run_dir(cfg.run, out), cfg.k, cfg.n_null))


if __name__ == "__main__":
    run_main(main)
