"""Cross-domain transfer matrix: heads (and directions, K, α) selected on a source task, steering a
target task zero-shot, for REAL and ITI (random heads as the reference).

For every task: a `real-lens run` with this config (selects on its own val questions; the
diagonal). For every ordered pair source ≠ target: `real-lens transfer` from the source run to
the target (nothing re-selected; off-diagonal). Every cell is the change of the target's
selection metric on the target's test questions versus the unsteered model (mean over the
target's folds); the target's own test sample is identical in its run and in every transfer
into it, so a column compares like with like. Tasks listed in ``task_folds`` are run and
evaluated on those folds only. Columns have different metrics (MC2, "contains
the aligned answer", p(aligned letter)); compare within a column.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from analyses.common import new_figure, run_analysis, run_main
from real_lens.experiment import ExperimentConfig, TransferConfig, run_experiment, run_transfer, task_slug
from real_lens.io import read_json
from real_lens.plotting import metric_label, save_figure


@dataclass(frozen=True)
class Config:
    model: str = "smollm2-135m-instruct"
    tasks: tuple[str, ...] = ("truthfulqa", "nq-swap", "caa:hallucination")
    methods: tuple[str, ...] = ("real", "iti", "random")
    k_grid: tuple[int, ...] = (8, 24)
    alpha_grid: tuple[float, ...] = (5.0, 15.0)
    questions_per_part: int = 40
    n_val_questions: int | None = 15
    n_test_questions: int = 25
    real_epochs: int = 20
    real_prior_epochs: int = 10
    side_effect_texts: int = 10
    pair_min_gap: float = 0.5
    # Folds per task where not all are run: NQ-Swap's greedy generation costs ~2 s per item on a
    # quiet 2-core CPU (~6 s while the other analyses ran), so only its fold 0 is run and evaluated.
    task_folds: tuple[tuple[str, tuple[int, ...]], ...] = (("nq-swap", (0,)),)


CONFIG = Config()
# K is chosen on val, so the scorers fit on train alone: REAL's held-out split needs >= 5 questions there.
QUICK = Config(model="tiny-llama", tasks=("truthfulqa", "caa:refusal"), k_grid=(1, 3), alpha_grid=(8.0,),
               questions_per_part=5, n_val_questions=None, n_test_questions=4, real_epochs=2, real_prior_epochs=2,
               side_effect_texts=2, pair_min_gap=0.0)


SHORT = {"mc2": "MC2", "contains_aligned": "contains", "p_aligned": "p(aligned)"}  # tick labels


def _folds(cfg: Config, task: str) -> tuple[int, ...] | None:
    return dict(cfg.task_folds).get(task)


def experiment_config(cfg: Config, task: str) -> ExperimentConfig:
    return ExperimentConfig(model=cfg.model, task=task, methods=cfg.methods, folds=_folds(cfg, task), k_grid=cfg.k_grid,
                            kl_grid=None, alpha_grid=cfg.alpha_grid, questions_per_part=cfg.questions_per_part,
                            n_val_questions=cfg.n_val_questions, n_test_questions=cfg.n_test_questions,
                            real_epochs=cfg.real_epochs, real_prior_epochs=cfg.real_prior_epochs,
                            side_effect_texts=cfg.side_effect_texts, pair_min_gap=cfg.pair_min_gap)


def analyse(cfg: Config, work: Path, progress: bool = True) -> dict:
    runs = {t: run_experiment(experiment_config(cfg, t), work / "runs" / task_slug(t), progress=progress) for t in cfg.tasks}
    summaries = {(t, t): read_json(runs[t] / "summary.json") for t in cfg.tasks}
    for source in cfg.tasks:
        for target in cfg.tasks:
            if source != target:
                out = run_transfer(TransferConfig(str(runs[source]), target, methods=cfg.methods,
                                                  folds=_folds(cfg, target)),
                                   work / "transfer" / f"{task_slug(source)}-to-{task_slug(target)}", progress=progress)
                summaries[(source, target)] = read_json(out / "summary.json")
    metrics = {t: summaries[(t, t)]["select_metric"] for t in cfg.tasks}
    cells = []
    for (source, target), s in summaries.items():
        metric = metrics[target]
        base = s["methods"]["unsteered"][metric]
        for method in cfg.methods:
            e = s["methods"][method]
            cells.append({"source": source, "target": target, "method": method, "metric": metric,
                          "value": e[metric], "ci": e[f"{metric}_ci"], "unsteered": base, "delta": e[metric] - base,
                          "k": e["k"], "alpha": e["alpha"], "kl": e["kl"]})
    return {"tasks": list(cfg.tasks), "methods": list(cfg.methods), "metrics": metrics, "cells": cells}


def _cell(data, source, target, method):
    return next(c for c in data["cells"] if (c["source"], c["target"], c["method"]) == (source, target, method))


def table(data: dict) -> list[str]:
    tasks = data["tasks"]
    lines = ["# Cross-domain transfer (rows: selected on; columns: evaluated on)", "",
             "Cell: Δ of the target's test metric vs unsteered (steered value in brackets); the diagonal "
             "selects on the target itself, off-diagonal cells reuse the source's heads, directions, K and α.", ""]
    for method in data["methods"]:
        lines += [f"## {method}", "", "| selected on \\ evaluated on | "
                  + " | ".join(f"{t} ({data['metrics'][t]})" for t in tasks) + " |", "|---" * (len(tasks) + 1) + "|"]
        for s in tasks:
            row = [f"{_cell(data, s, t, method)['delta']:+.3f} ({_cell(data, s, t, method)['value']:.3f})" for t in tasks]
            lines.append(f"| {s} | " + " | ".join(row) + " |")
        lines.append("")
    lines.append("Unsteered: " + ", ".join(f"{t} {_cell(data, t, t, data['methods'][0])['unsteered']:.3f}" for t in tasks))
    return lines


def plot(data: dict, path) -> Path:
    tasks, methods = data["tasks"], data["methods"]
    deltas = {m: np.array([[_cell(data, s, t, m)["delta"] for t in tasks] for s in tasks]) for m in methods}
    bound = max(1e-6, max(float(np.abs(d).max()) for d in deltas.values()))
    fig = new_figure(4.3 * len(methods) + 1.2, 4.2)
    for i, m in enumerate(methods):
        ax = fig.add_subplot(1, len(methods), i + 1)
        image = ax.imshow(deltas[m], cmap="RdBu", vmin=-bound, vmax=bound)
        for (r, c), v in np.ndenumerate(deltas[m]):
            ax.text(c, r, f"{v:+.3f}", ha="center", va="center", fontsize=10,
                    fontweight="bold" if r == c else "normal")
        ax.set_xticks(range(len(tasks)), [f"{t}\n({SHORT.get(data['metrics'][t], metric_label(data['metrics'][t]))})"
                                          for t in tasks], fontsize=8, rotation=20, ha="right")
        ax.set_yticks(range(len(tasks)), tasks, fontsize=9)
        ax.set_xlabel("evaluated on (test metric)", fontsize=11)
        ax.set_ylabel("heads selected on", fontsize=11)
        ax.set_title(f"{m}", fontsize=12)
    bar = fig.colorbar(image, ax=fig.axes)
    bar.set_label("Δ metric vs unsteered (absolute)", fontsize=11)
    fig.suptitle("Cross-domain transfer: change of the target's test metric (diagonal: selected in-domain)", fontsize=12)
    return save_figure(fig, path)


def main(argv=None) -> dict:
    return run_analysis("transfer", argv, doc=__doc__, config=CONFIG, quick=QUICK, table=table, plot=plot,
                        compute=lambda cfg, out, work, progress: analyse(cfg, work, progress=progress))


if __name__ == "__main__":
    run_main(main)
