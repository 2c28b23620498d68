"""Methods × K × α on a task, over several scorer seeds: the metric with bootstrap CIs, and a figure
of metric vs K per method with CI bands.

One fold's train+val activations are scored by every method once per seed (REAL: initialisation
and minibatch order; ITI: its probe split; patching/attribution: which contrast pairs; random: the
permutation), and every (method, K, α) steering is evaluated on the same fixed sample of the
fold's test questions. This is a sweep that *reports* every grid cell; nothing is selected on
these test numbers (the main job selects K and α on val). Per cell: the mean over seeds, the
spread between seeds (min–max), and a 95% bootstrap CI over test items of the seed-averaged
per-item values.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from analyses.common import new_figure, run_analysis, run_main, style
from real_lens.activations import collect_activations
from real_lens.evaluation import bootstrap_ci
from real_lens.evaluation.suite import eval_items
from real_lens.experiment import ExperimentConfig, cached_cell, cached_scores, prepare
from real_lens.experiment.setup import evaluate_cell
from real_lens.plotting import metric_label, save_figure
from real_lens.steering import build_steering


@dataclass(frozen=True)
class Config:
    model: str = "smollm2-135m-instruct"
    task: str = "truthfulqa"
    methods: tuple[str, ...] = ("real", "iti", "attribution", "random")
    k_grid: tuple[int, ...] = (4, 16, 48)
    alpha_grid: tuple[float, ...] = (10.0,)
    seeds: tuple[int, ...] = (0, 1)
    fold: int = 0
    questions_per_part: int = 40  # the transfer analysis' TruthfulQA sample: its bank is cached
    n_test_questions: int = 25
    patching_pairs: int = 4
    pair_min_gap: float = 0.5
    real_epochs: int = 20
    real_prior_epochs: int = 10
    n_boot: int = 1000


CONFIG = Config()
QUICK = Config(model="tiny-llama", methods=("real", "iti", "random"), k_grid=(1, 3), alpha_grid=(8.0,), seeds=(0, 1),
               questions_per_part=4, n_test_questions=4, real_epochs=2, real_prior_epochs=2, n_boot=100,
               pair_min_gap=0.0)


def experiment_config(cfg: Config, seed: int) -> ExperimentConfig:
    return ExperimentConfig(model=cfg.model, task=cfg.task, methods=cfg.methods, folds=(cfg.fold,),
                            k_grid=cfg.k_grid, kl_grid=None, alpha_grid=cfg.alpha_grid,
                            questions_per_part=cfg.questions_per_part, n_test_questions=cfg.n_test_questions,
                            patching_pairs=cfg.patching_pairs,
                            pair_min_gap=cfg.pair_min_gap, real_epochs=cfg.real_epochs,
                            real_prior_epochs=cfg.real_prior_epochs, side_effect_texts=0, seed=seed)


def analyse(cfg: Config, out: Path, progress: bool = True) -> dict:
    base_cfg = experiment_config(cfg, cfg.seeds[0])
    setup = prepare(base_cfg)
    fold = setup.task.folds[cfg.fold]
    bank = collect_activations(setup.model, setup.task, site=base_cfg.site, readout=base_cfg.readout,
                               batch_size=base_cfg.batch_size, progress=progress).select(fold.train | fold.val)
    # The same test sample for every seed: it is drawn with the first seed.
    items = eval_items(setup.evaluation, setup.task, fold.test, cfg.n_test_questions, cfg.seeds[0])
    metric = setup.select_metric
    base = cached_cell(out, base_cfg, cfg.fold, {"method": "unsteered", "split": "test", "k": 0, "alpha": 0.0})(
        lambda: evaluate_cell(setup, items, None, base_cfg))
    per_item: dict[tuple, list[list[float]]] = {}
    for seed in cfg.seeds:
        ecfg = dataclasses.replace(base_cfg, seed=seed)
        for method in cfg.methods:
            scores = cached_scores(out / f"seed{seed}", ecfg, cfg.fold, method, bank, setup.model)
            for k in cfg.k_grid:
                steering = build_steering(bank, scores.select(min(k, scores.n_modules)), alpha=1.0)
                for alpha in cfg.alpha_grid:
                    key = {"method": method, "split": "test", "k": k, "alpha": alpha, "seed": seed}
                    result = cached_cell(out, ecfg, cfg.fold, key)(
                        lambda: evaluate_cell(setup, items, steering.with_alpha(alpha), ecfg))
                    per_item.setdefault((method, k, alpha), []).append(result["per_item"][metric])
                    if progress:
                        print(f"seed {seed} {method} K={k} α={alpha:g}: {metric} {result[metric]:.4f}", flush=True)
    cells = []
    for (method, k, alpha), runs in per_item.items():
        runs = np.array(runs)  # [seed, item]
        seed_means = runs.mean(axis=1)
        low, high = bootstrap_ci(runs.mean(axis=0), n_boot=cfg.n_boot, seed=0)
        cells.append({"method": method, "k": k, "alpha": alpha, "mean": float(seed_means.mean()),
                      "ci": [low, high], "seed_min": float(seed_means.min()), "seed_max": float(seed_means.max()),
                      "per_seed": seed_means.tolist()})
    unsteered = np.array(base["per_item"][metric])
    return {"task": setup.task.name, "metric": metric, "fold": cfg.fold, "n_items": len(items),
            "unsteered": {"mean": float(unsteered.mean()), "ci": list(bootstrap_ci(unsteered, n_boot=cfg.n_boot, seed=0))},
            "cells": cells}


def table(data: dict) -> list[str]:
    u = data["unsteered"]
    lines = [f"# {data['task']}: {data['metric']} on {data['n_items']} test items of fold {data['fold']}, "
             f"every method × K × α (mean over seeds)", "",
             f"Unsteered: {u['mean']:.4f} [{u['ci'][0]:.4f}, {u['ci'][1]:.4f}]", "",
             f"| method | K | α | {data['metric']} (mean over seeds) | 95% CI (items) | seed min–max |", "|---|---|---|---|---|---|"]
    for c in sorted(data["cells"], key=lambda c: (c["method"], c["k"], c["alpha"])):
        lines.append(f"| {c['method']} | {c['k']} | {c['alpha']:g} | {c['mean']:.4f} | [{c['ci'][0]:.4f}, {c['ci'][1]:.4f}] | "
                     f"{c['seed_min']:.4f}–{c['seed_max']:.4f} |")
    return lines


def plot(data: dict, path) -> Path:
    alphas = sorted({c["alpha"] for c in data["cells"]})
    methods = list(dict.fromkeys(c["method"] for c in data["cells"]))
    fig = new_figure(max(7.5, 5.4 * len(alphas)), 4.8)
    u = data["unsteered"]
    for i, alpha in enumerate(alphas):
        ax = fig.add_subplot(1, len(alphas), i + 1)
        for method in methods:
            cs = sorted((c for c in data["cells"] if c["method"] == method and c["alpha"] == alpha), key=lambda c: c["k"])
            ks = [c["k"] for c in cs]
            line = ax.plot(ks, [c["mean"] for c in cs], marker="o", label=method)[0]
            ax.fill_between(ks, [c["ci"][0] for c in cs], [c["ci"][1] for c in cs], color=line.get_color(), alpha=0.15)
        ax.axhline(u["mean"], color="black", linestyle="--", linewidth=1, label="unsteered")
        ax.set_xscale("log", base=2)
        ks = sorted({c["k"] for c in data["cells"]})
        ax.set_xticks(ks, [str(k) for k in ks])
        style(ax, title=f"α = {alpha:g}", xlabel="steered heads K (log scale)",
              ylabel=f"test {metric_label(data['metric'])} (mean over seeds)")
        if i == 0:
            ax.legend(fontsize=9)
    fig.suptitle(f"{data['task']}, fold {data['fold']}: {metric_label(data['metric'])} vs K\n"
                 f"(bands: 95% bootstrap CI over {data['n_items']} test items)", fontsize=12)
    return save_figure(fig, path)


def main(argv=None) -> dict:
    return run_analysis("compare_selection", argv, doc=__doc__, config=CONFIG, quick=QUICK, table=table, plot=plot,
                        compute=lambda cfg, out, work, progress: analyse(cfg, work, progress=progress))


if __name__ == "__main__":
    run_main(main)
