"""Methods × K × KL target on a task, over several scorer seeds, each cell against the random null.

Every (seed, K) is one `real-lens run` of the main job on one fold with that single K (so nothing is
chosen on val and the scorers fit on train+val; the seed's scores are computed once and reused by
its other K runs): α calibrated per method and KL target on the held-apart WikiText-2 paragraphs,
the standard MC prompt, the job's contrast pairs, and ``null_draws`` random head sets at the same K
and dose. Every cell is evaluated on all the fold's test questions of the sample (the same items in
every run), and this is a sweep that *reports* every cell: nothing is selected on these numbers.
Per (method, K, KL target): the per-item mean over seeds, the spread of the seeds' means, and
paired tests of the seed-averaged per-item values against the random null (per item, the mean over
every seed's draws) and against unsteered: paired bootstrap CI, sign-flip p, Holm across the table
(one family per reference) and the difference the design detects (80 % power). The seed changes
the scorers (REAL: initialisation and minibatch order; ITI: its probe split; attribution: which
contrast pairs), the null draws and the held-apart paragraphs.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from analyses.common import (
    QUICK_KL,
    fmt,
    new_figure,
    null_cells,
    paired_table,
    per_item,
    protocol,
    run_analysis,
    run_cell,
    run_main,
    style,
)
from real_lens.errors import RealLensError
from real_lens.evaluation import bootstrap_ci
from real_lens.experiment import Dose, config_for, run_experiment
from real_lens.io import read_json
from real_lens.plotting import metric_label, save_figure


@dataclass(frozen=True)
class Config:
    model: str = "smollm2-135m-instruct"
    task: str = "truthfulqa"
    methods: tuple[str, ...] = ("real", "iti", "attribution")  # steered methods; the random null is always run
    k_grid: tuple[int, ...] = (4, 16, 48)
    kl_grid: tuple[float, ...] = (0.1, 0.3)  # the main job's KL targets
    seeds: tuple[int, ...] = (0, 1)
    fold: int = 0
    null_draws: int = 2  # per seed, so each item's null is the mean over len(seeds) × null_draws draws
    # Every test question of this sample is evaluated: 40 on fold 0. At 40 per part (80 questions, three
    # null draws) one (seed, K) run would take ≈ 45 min on one core of this CPU and the sweep ≈ 4.5 h; at this
    # size a seed's three runs took ≈ 1 h (docs/analyses.md), and the table states what it can still detect.
    questions_per_part: int = 20
    preset: str | None = None  # None: the main job's defaults for everything not set here (pairs, epochs, texts)
    n_boot: int = 1000


CONFIG = Config()
QUICK = Config(model="tiny-llama", methods=("real", "iti"), k_grid=(1, 3), kl_grid=QUICK_KL, seeds=(0, 1),
               null_draws=2, questions_per_part=5, preset="quick", n_boot=200)


def experiment_config(cfg: Config, seed: int, k: int):
    return config_for(cfg.preset, model=cfg.model, task=cfg.task, methods=(*cfg.methods, "random"), folds=(cfg.fold,),
                      k_grid=(k,), kl_grid=cfg.kl_grid, null_draws=cfg.null_draws,
                      questions_per_part=cfg.questions_per_part, n_test_questions=None, seed=seed)


def run_all(cfg: Config, work: Path, progress: bool) -> dict[tuple[int, int], Path]:
    """One main-job run per (seed, K); a seed's later K runs start from its first run's scores."""
    runs = {}
    for seed in cfg.seeds:
        first = None
        for k in cfg.k_grid:
            out = work / f"seed{seed}" / f"k{k}"
            if first is not None and not (out / "scores").exists():
                out.mkdir(parents=True, exist_ok=True)
                shutil.copytree(first / "scores", out / "scores")  # verified and keyed: reused as they are
            runs[(seed, k)] = run_experiment(experiment_config(cfg, seed, k), out, progress=progress)
            first = first or runs[(seed, k)]
    return runs


def analyse(cfg: Config, work: Path, progress: bool = True) -> dict:
    runs = run_all(cfg, work, progress)
    first = runs[(cfg.seeds[0], cfg.k_grid[0])]
    summary = read_json(first / "summary.json")
    metric = summary["select_metric"]
    base_cfg = experiment_config(cfg, cfg.seeds[0], cfg.k_grid[0])
    groups, unsteered = per_item([run_cell(first, base_cfg, cfg.fold, method="unsteered", split="test", k=0, alpha=0.0)],
                                 metric)
    unscorable = sorted({m for run in runs.values() for m in read_json(run / "summary.json")["unscorable"]})
    methods = [m for m in cfg.methods if m not in unscorable]
    arrays = {"unsteered": unsteered}
    entries = []
    for kl in cfg.kl_grid:
        dose = Dose("kl", kl)
        for k in cfg.k_grid:
            null = [c for seed in cfg.seeds
                    for c in null_cells(runs[(seed, k)], experiment_config(cfg, seed, k), cfg.fold, k, dose)]
            null_groups, arrays[f"null | K {k} | {dose.label}"] = per_item(null, metric)
            for m in methods:
                cells = [run_cell(runs[(seed, k)], experiment_config(cfg, seed, k), cfg.fold, method=m, split="test",
                                  k=k, dose=dose.label) for seed in cfg.seeds]
                cell_groups, values = per_item(cells, metric)
                if cell_groups != groups or null_groups != groups:
                    raise RealLensError("the runs of this sweep were evaluated on different test items; delete "
                                        f"{work} and run the analysis again")
                name = f"{m} | K {k} | {dose.label}"
                arrays[name] = values
                entries.append({"name": name, "method": m, "k": k, "kl_target": kl,
                                "per_seed": [float(np.mean(c["per_item"][metric])) for c in cells],
                                "alpha": [c["alpha"] for c in cells], "kl": [c.get("kl", float("nan")) for c in cells],
                                "calibration_kl": [c["calibration_kl"] for c in cells],
                                "null": float(np.mean(arrays[f"null | K {k} | {dose.label}"])),
                                "null_per_draw": [float(np.mean(c["per_item"][metric])) for c in null],
                                "null_kl": float(np.mean([c.get("kl", float("nan")) for c in null]))})
    vs_null = paired_table(arrays, [(e["name"], f"null | K {e['k']} | {Dose('kl', e['kl_target']).label}")
                                    for e in entries], n_boot=cfg.n_boot, seed=0)
    vs_unsteered = paired_table(arrays, [(e["name"], "unsteered") for e in entries], n_boot=cfg.n_boot, seed=0)
    cells = []
    for e, rn, ru in zip(entries, vs_null, vs_unsteered):
        values = arrays[e["name"]]
        cells.append({**{k: v for k, v in e.items() if k != "name"}, "mean": float(values.mean()),
                      "ci": list(bootstrap_ci(values, n_boot=cfg.n_boot, seed=0)),
                      "seed_min": min(e["per_seed"]), "seed_max": max(e["per_seed"]),
                      "vs_null": {k: v for k, v in rn.items() if k not in ("a", "b")},
                      "vs_unsteered": {k: v for k, v in ru.items() if k not in ("a", "b")}})
    return {"task": summary["task"], "metric": metric, "fold": cfg.fold, "n_items": len(groups),
            "n_questions": len(set(groups)), "seeds": list(cfg.seeds), "protocol": protocol(base_cfg),
            "unscorable": unscorable,
            "unsteered": {"mean": float(unsteered.mean()), "ci": list(bootstrap_ci(unsteered, n_boot=cfg.n_boot, seed=0))},
            "cells": cells}


def table(data: dict) -> list[str]:
    u, metric = data["unsteered"], data["metric"]
    lines = [f"# {data['task']}: {metric} on {data['n_questions']} test questions of fold {data['fold']}, every method × "
             f"K × KL target (per-item mean over seeds {data['seeds']})", "",
             f"Unsteered: {u['mean']:.4f} [{u['ci'][0]:.4f}, {u['ci'][1]:.4f}]. Each cell is paired over the test items "
             "with the random null at its K and KL target (per item, the mean over every seed's draws) and with "
             "unsteered; Holm across the table, one family per reference; detectable: the difference found with 80% "
             "power.", "",
             f"| method | K | KL target | {metric} | seeds min–max | α (per seed) | held-out KL | Δ vs null [95% CI] | Holm p "
             "| detectable | Δ vs unsteered | Holm p |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for c in sorted(data["cells"], key=lambda c: (c["kl_target"], c["method"], c["k"])):
        n, s = c["vs_null"], c["vs_unsteered"]
        lines.append(f"| {c['method']} | {c['k']} | {c['kl_target']:g} | {c['mean']:.4f} | {c['seed_min']:.4f}–"
                     f"{c['seed_max']:.4f} | {', '.join(f'{a:.3g}' for a in c['alpha'])} | "
                     f"{fmt(float(np.nanmean(c['kl'])) if np.isfinite(c['kl']).any() else float('nan'))} | "
                     f"{n['difference']:+.4f} [{n['ci'][0]:+.4f}, {n['ci'][1]:+.4f}] | {n['p_holm']:.3f} | "
                     f"{fmt(n['min_detectable'], '.4f')} | {s['difference']:+.4f} | {s['p_holm']:.3f} |")
    return lines


def plot(data: dict, path) -> Path:
    doses = sorted({c["kl_target"] for c in data["cells"]})
    methods = list(dict.fromkeys(c["method"] for c in data["cells"]))
    fig = new_figure(max(7.5, 5.4 * len(doses)), 4.8)
    u = data["unsteered"]
    ks = sorted({c["k"] for c in data["cells"]})
    for i, kl in enumerate(doses):
        ax = fig.add_subplot(1, len(doses), i + 1)
        for method in methods:
            cs = sorted((c for c in data["cells"] if c["method"] == method and c["kl_target"] == kl), key=lambda c: c["k"])
            line = ax.plot([c["k"] for c in cs], [c["mean"] for c in cs], marker="o", label=method)[0]
            ax.fill_between([c["k"] for c in cs], [c["ci"][0] for c in cs], [c["ci"][1] for c in cs],
                            color=line.get_color(), alpha=0.12)
            for c in cs:
                if c["vs_null"]["p_holm"] < 0.05:
                    ax.annotate("*", (c["k"], c["mean"]), color=line.get_color(), fontsize=14, ha="center")
        null = sorted({(c["k"], c["null"], min(c["null_per_draw"]), max(c["null_per_draw"]))
                       for c in data["cells"] if c["kl_target"] == kl})
        ax.plot([n[0] for n in null], [n[1] for n in null], color="grey", linestyle=":", marker="s", label="random null")
        ax.fill_between([n[0] for n in null], [n[2] for n in null], [n[3] for n in null], color="grey", alpha=0.2)
        ax.axhline(u["mean"], color="black", linestyle="--", linewidth=1, label="unsteered")
        ax.set_xscale("log", base=2)
        ax.set_xticks(ks, [str(k) for k in ks])
        style(ax, title=f"KL target {kl:g} nats/token", xlabel="steered heads K (log scale)",
              ylabel=f"test {metric_label(data['metric'])} (mean over seeds)")
        if i == 0:
            ax.legend(fontsize=9)
    fig.suptitle(f"{data['task']}, fold {data['fold']}: {metric_label(data['metric'])} vs K at matched KL\n"
                 f"(bands: 95% bootstrap CI over {data['n_questions']} test questions; grey: null draws' range; "
                 "*: Holm p < 0.05 vs the null)", fontsize=11)
    return save_figure(fig, path)


def main(argv=None) -> dict:
    return run_analysis("compare_selection", argv, doc=__doc__, config=CONFIG, quick=QUICK, table=table, plot=plot,
                        compute=lambda cfg, out, work, progress: analyse(cfg, work, progress=progress))


if __name__ == "__main__":
    run_main(main)
