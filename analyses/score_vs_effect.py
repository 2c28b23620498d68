"""Does a module's score predict its causal effect? Steer single heads and compare.

For one fold of a finished run: take each method's top-``n_top`` heads plus ``n_random`` heads
drawn uniformly (seeded), steer each head *alone* (strength 1, the run's steering recipe: mean
difference direction from the fold's train+val activations, α·σ) and measure the change of the
task's selection metric on the fold's **val** questions (never test). A single head's effect does
not depend on which method picked it, so each head is evaluated once; every method's scores are
then compared with the same effects: Spearman ρ between a method's score and the effect over
all evaluated heads, and the mean effect of its top heads vs the random heads.

Caveat, stated with the numbers: the evaluated heads are the methods' top heads plus a few random
ones, not a uniform sample, so ρ is over a selected set (it rewards a method whose top heads move
the metric more than the other methods' top heads do).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr

from analyses.common import new_figure, run_analysis, run_dir, run_main, style
from real_lens.activations import collect_activations
from real_lens.evaluation.suite import eval_items
from real_lens.experiment import METHODS, load_source_run, prepare
from real_lens.experiment.setup import evaluate_cell
from real_lens.plotting import SCORE_UNITS, metric_label, save_figure
from real_lens.scoring import ModuleScores, Selection
from real_lens.steering import build_steering


@dataclass(frozen=True)
class Config:
    run: str = "runs/truthfulqa"  # a finished `real-lens run`; "" = the quick run on the tiny model
    fold: int = 0
    n_top: int = 6  # per method
    n_random: int = 8
    alpha: float = 15.0  # the larger α of the main job's grid: single heads need a strong push
    n_questions: int = 20  # val questions of the fold
    seed: int = 0


CONFIG = Config()
QUICK = Config(run="", n_top=2, n_random=2, alpha=8.0, n_questions=4)


def analyse(cfg: Config, run: Path, progress: bool = True) -> dict:
    run_cfg, _ = load_source_run(run)
    setup = prepare(run_cfg)
    task, metric = setup.task, setup.select_metric
    fold = task.folds[cfg.fold]
    bank = collect_activations(setup.model, task, site=run_cfg.site, readout=run_cfg.readout,
                               batch_size=run_cfg.batch_size, progress=progress).select(fold.train | fold.val)
    items = eval_items(setup.evaluation, task, fold.val, cfg.n_questions, cfg.seed)
    methods = run_cfg.methods
    scores = {m: ModuleScores.load(run / "scores" / f"fold{cfg.fold}" / m) for m in methods}
    any_scores = next(iter(scores.values()))
    heads = {m: [tuple(h) for h in s.ranking()[:cfg.n_top]] for m, s in scores.items()}
    rng = np.random.default_rng(cfg.seed)
    everything = any_scores.ranking()
    random_heads = [tuple(everything[i]) for i in rng.choice(len(everything), size=cfg.n_random, replace=False)]
    evaluated = list(dict.fromkeys([h for m in methods for h in heads[m]] + random_heads))

    base = evaluate_cell(setup, items, None, run_cfg)[metric]
    effects = {}
    for i, head in enumerate(evaluated):
        steering = build_steering(bank, Selection((head,), (1.0,), "single"), alpha=cfg.alpha)
        effects[head] = evaluate_cell(setup, items, steering, run_cfg)[metric] - base
        if progress:
            print(f"head L{head[0]}H{head[1]}: Δ{metric} {effects[head]:+.4f} ({i + 1}/{len(evaluated)})", flush=True)

    per_method = {}
    for m in methods:
        x = [float(scores[m].scores[h]) for h in evaluated]
        y = [effects[h] for h in evaluated]
        constant = len(set(x)) < 2 or len(set(y)) < 2
        per_method[m] = {
            "spearman": math.nan if constant else float(spearmanr(x, y).statistic),
            "mean_effect_top": float(np.mean([effects[h] for h in heads[m]])),
            "scores": x,
        }
    return {"run": str(run), "task": task.name, "metric": metric, "fold": cfg.fold, "alpha": cfg.alpha,
            "n_items": len(items), "baseline": base, "heads": [list(h) for h in evaluated],
            "effects": [effects[h] for h in evaluated], "random_heads": [list(h) for h in random_heads],
            "top_heads": {m: [list(h) for h in heads[m]] for m in methods},
            "mean_effect_random": float(np.mean([effects[h] for h in random_heads])), "methods": per_method}


def table(data: dict) -> list[str]:
    lines = [f"# Score vs single-head effect: {data['task']}, fold {data['fold']}, α {data['alpha']:g}",
             "", f"Effect = change of val {data['metric']} ({data['n_items']} items; unsteered {data['baseline']:.4f}) "
             f"when one head is steered alone; {len(data['heads'])} heads evaluated.", "",
             "| method | Spearman ρ (score, effect) | mean effect of its top heads | mean effect of random heads |",
             "|---|---|---|---|"]
    for m, v in data["methods"].items():
        rho = "n/a" if math.isnan(v["spearman"]) else f"{v['spearman']:+.2f}"
        lines.append(f"| {m} | {rho} | {v['mean_effect_top']:+.4f} | {data['mean_effect_random']:+.4f} |")
    return lines


def plot(data: dict, path) -> Path:
    # JSON objects come back with sorted keys: draw the methods in the run's usual order.
    methods = sorted(data["methods"], key=lambda m: (METHODS.index(m) if m in METHODS else len(METHODS), m))
    cols = min(3, len(methods))
    rows = -(-len(methods) // cols)
    fig = new_figure(4.6 * cols, 3.8 * rows)
    random_heads = {tuple(h) for h in data["random_heads"]}
    for i, m in enumerate(methods):
        ax = fig.add_subplot(rows, cols, i + 1)
        v = data["methods"][m]
        top = {tuple(h) for h in data["top_heads"][m]}
        kinds = [("its top heads", "tab:red", lambda h: h in top),
                 ("random heads", "tab:grey", lambda h: h in random_heads and h not in top),
                 ("other methods' top heads", "tab:blue", lambda h: h not in top and h not in random_heads)]
        for label, colour, keep in kinds:
            pts = [(s, e) for h, s, e in zip(map(tuple, data["heads"]), v["scores"], data["effects"]) if keep(h)]
            if pts:
                ax.scatter(*zip(*pts), s=22, color=colour, label=label)
        ax.axhline(0.0, color="black", linewidth=0.8)
        rho = "n/a" if math.isnan(v["spearman"]) else f"{v['spearman']:+.2f}"
        style(ax, title=f"{m} (Spearman ρ {rho})", xlabel=SCORE_UNITS.get(m, f"{m} score"),
              ylabel=f"Δ val {metric_label(data['metric'])} (one head)")
        if i == 0:
            ax.legend(fontsize=8)
    fig.suptitle(f"{data['task']}: does the score predict a head's steering effect? (α {data['alpha']:g})", fontsize=12)
    return save_figure(fig, path)


def main(argv=None) -> dict:
    return run_analysis("score_vs_effect", argv, doc=__doc__, config=CONFIG, quick=QUICK, table=table, plot=plot,
                        compute=lambda cfg, out, work, progress: analyse(cfg, run_dir(cfg.run, out), progress=progress))


if __name__ == "__main__":
    run_main(main)
