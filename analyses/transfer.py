"""Cross-domain transfer matrix: heads, directions and doses selected on a source task, steering a
target task zero-shot, each cell tested against the target's own random null.

For every task: a `real-lens run` under the main job's protocol (α calibrated per method, fold and
K to each KL target on the held-apart WikiText-2 paragraphs; the standard MC prompt; the job's
contrast pairs; ``null_draws`` random head sets at the same K and dose) — the diagonal. For every
ordered pair source ≠ target: `real-lens transfer` from the source run (nothing re-selected; the
source's K and its calibrated α per KL target, so the dose, which is measured on the same
task-independent paragraphs, stays matched) — off the diagonal. The target's own test sample is
identical in its run and in every transfer into it, so every cell is compared **item by item**
with the target run's random null at the same K and KL target (per item, the mean over the draws)
and with the target's unsteered model: paired bootstrap CI, sign-flip p, Holm across the matrix
(one family per reference), and the difference the design detects (80 % power). Tasks listed in
``task_folds`` are run and evaluated on those folds only. Columns have different metrics (MC2,
"contains the aligned answer", p(aligned letter)); compare within a column.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from analyses.common import (
    QUICK_KL,
    ROOT,
    fmt,
    new_figure,
    null_cells,
    paired_table,
    per_item,
    protocol,
    run_analysis,
    run_cell,
    run_main,
)
from real_lens.errors import RealLensError
from real_lens.experiment import (
    Dose,
    TransferConfig,
    config_for,
    load_config,
    run_experiment,
    run_transfer,
    task_slug,
)
from real_lens.io import read_json
from real_lens.plotting import metric_label, save_figure


@dataclass(frozen=True)
class Config:
    model: str = "smollm2-135m-instruct"
    tasks: tuple[str, ...] = ("truthfulqa", "nq-swap", "caa:hallucination")
    methods: tuple[str, ...] = ("real", "iti", "attribution")  # steered methods; the random null is always run
    k: int = 16  # one K (the main job's), so the target's null exists at every transferred cell's K
    kl_grid: tuple[float, ...] = (0.1, 0.3)  # the main job's KL targets
    null_draws: int = 3
    questions_per_part: int = 40
    n_test_questions: int = 25
    preset: str | None = None  # None: the main job's defaults for everything not set here (pairs, epochs, texts)
    # Folds per task where not all are run: NQ-Swap's greedy generation is most of the time, so fold 0 only.
    task_folds: tuple[tuple[str, tuple[int, ...]], ...] = (("nq-swap", (0,)),)
    # Finished main-job runs to use as a task's own run (its diagonal, its null and its test sample) instead of
    # running one here: (task, run directory). Each must hold this K, these KL targets, these methods and the null;
    # its own question counts then set the test sample every transfer into it evaluates.
    runs: tuple[tuple[str, str], ...] = ()
    n_boot: int = 1000


# The main jobs' own runs (`make run`, and `real-lens run --task nq-swap` / `--task caa:hallucination` with the
# README's options): their diagonals, nulls and test samples, so only the six transfers are computed here.
CONFIG = Config(task_folds=(), runs=(("truthfulqa", "runs/truthfulqa"), ("nq-swap", "runs/nq-swap"),
                                     ("caa:hallucination", "runs/caa-hallucination")))
# K is fixed (nothing chosen on val), so the scorers fit on train+val.
QUICK = Config(model="tiny-llama", tasks=("truthfulqa", "caa:refusal"), methods=("real", "iti"), k=2, kl_grid=QUICK_KL,
               null_draws=2, questions_per_part=5, n_test_questions=4, preset="quick", n_boot=200)

SHORT = {"mc2": "MC2", "contains_aligned": "contains", "p_aligned": "p(aligned)"}  # tick labels


def _folds(cfg: Config, task: str) -> tuple[int, ...] | None:
    return dict(cfg.task_folds).get(task)


def experiment_config(cfg: Config, task: str):
    return config_for(cfg.preset, model=cfg.model, task=task, methods=(*cfg.methods, "random"), folds=_folds(cfg, task),
                      k_grid=(cfg.k,), kl_grid=cfg.kl_grid, null_draws=cfg.null_draws,
                      questions_per_part=cfg.questions_per_part, n_test_questions=cfg.n_test_questions)


def target_arms(run: Path, rcfg, summary: dict, k: int) -> dict:
    """The target run's own per-item arms, pooled over its folds: unsteered, each method at each KL target,
    and the random null at (k, each KL target) (per item, the mean over the draws)."""
    metric = summary["select_metric"]
    folds = summary["run"]["folds"]
    cells = {"unsteered": [run_cell(run, rcfg, f, method="unsteered", split="test", k=0, alpha=0.0) for f in folds]}
    for t in rcfg.kl_grid:
        dose = Dose("kl", t)
        for m in rcfg.methods:
            if m != "random" and m not in summary["unscorable"]:
                cells[(m, dose.label)] = [run_cell(run, rcfg, f, method=m, split="test", k=k, dose=dose.label)
                                          for f in folds]
    out = {}
    for key, per_fold in cells.items():
        out[key] = (sum((c["per_item"]["group"] for c in per_fold), []),
                    np.concatenate([per_item([c], metric)[1] for c in per_fold]))
    for t in rcfg.kl_grid:
        dose = Dose("kl", t)
        draws = [null_cells(run, rcfg, f, k, dose) for f in folds]
        out[("null", dose.label)] = (sum((per_item(d, metric)[0] for d in draws), []),
                                     np.concatenate([per_item(d, metric)[1] for d in draws]))
        out[("null kl", dose.label)] = float(np.mean([c.get("kl", np.nan) for d in draws for c in d]))
    return out


def finished_run(cfg: Config, task: str, path: str):
    """A task's finished main-job run named in ``cfg.runs`` and its configuration, checked to hold what the
    matrix reads (this K, these KL targets, these methods, the random null); one-line errors otherwise."""
    run = Path(path) if Path(path).is_absolute() else ROOT / path
    if not (run / "summary.json").is_file():
        raise RealLensError(f"{run} is not a finished real-lens run (no summary.json); run `real-lens run --task "
                            f"{task} --out {path}` first, or leave {task} out of the transfer's runs")
    rcfg = load_config(run)
    problems = [what for what, bad in (
        (f"task {rcfg.task!r}, not {task!r}", rcfg.task != task),
        (f"model {rcfg.model!r}, not {cfg.model!r}", rcfg.model != cfg.model),
        (f"K {list(rcfg.k_grid)}, not [{cfg.k}]", tuple(rcfg.k_grid) != (cfg.k,)),
        (f"KL targets {list(rcfg.kl_grid or ())} without {list(cfg.kl_grid)}", not set(cfg.kl_grid) <= set(rcfg.kl_grid or ())),
        (f"methods {list(rcfg.methods)} without {[*cfg.methods, 'random']}", not {*cfg.methods, "random"} <= set(rcfg.methods)),
    ) if bad]
    if problems:
        raise RealLensError(f"{run} cannot be {task}'s run in the transfer matrix: it has {'; '.join(problems)}")
    return run, dataclasses.replace(rcfg, kl_grid=tuple(t for t in rcfg.kl_grid if t in cfg.kl_grid))


def analyse(cfg: Config, work: Path, progress: bool = True) -> dict:
    given = dict(cfg.runs)
    runs, configs = {}, {}
    for t in cfg.tasks:
        if t in given:
            runs[t], configs[t] = finished_run(cfg, t, given[t])
        else:
            configs[t] = experiment_config(cfg, t)
            runs[t] = run_experiment(configs[t], work / "runs" / task_slug(t), progress=progress)
    summaries = {t: read_json(runs[t] / "summary.json") for t in cfg.tasks}
    metrics = {t: summaries[t]["select_metric"] for t in cfg.tasks}
    own = {t: target_arms(runs[t], configs[t], summaries[t], cfg.k) for t in cfg.tasks}
    arrays, entries = {}, []
    for source in cfg.tasks:
        methods = tuple(m for m in cfg.methods if m not in summaries[source]["unscorable"])
        for target in cfg.tasks:
            if source == target:
                values = {(m, Dose("kl", t).label): own[target][(m, Dose("kl", t).label)] for m in methods
                          for t in cfg.kl_grid}
                described = summaries[target]["methods"]
            else:
                target_cfg = configs[target]  # its own test sample: its question counts and folds
                out = run_transfer(TransferConfig(str(runs[source]), target, methods=methods, folds=target_cfg.folds,
                                                  n_test_questions=target_cfg.n_test_questions,
                                                  questions_per_part=target_cfg.questions_per_part),
                                   work / "transfer" / f"{task_slug(source)}-to-{task_slug(target)}", progress=progress)
                transferred = read_json(out / "summary.json")
                values = {(m, Dose("kl", t).label): (transferred["per_item"][f"{m} @ KL {t:g}"]["group"],
                                                     np.asarray(transferred["per_item"][f"{m} @ KL {t:g}"][metrics[target]]))
                          for m in methods for t in cfg.kl_grid}
                described = transferred["methods"]
            for m in methods:
                for t in cfg.kl_grid:
                    label = Dose("kl", t).label
                    groups, value = values[(m, label)]
                    for reference in ("unsteered", ("null", label)):
                        if own[target][reference][0] != groups:
                            raise RealLensError(f"the {source} → {target} cell of {m} was evaluated on other items than "
                                                f"{target}'s own run; rerun both with this configuration")
                    name = f"{source} → {target} | {m} | {label}"
                    arrays[name] = value
                    e = described[f"{m} @ KL {t:g}"]
                    entries.append({"name": name, "source": source, "target": target, "method": m, "kl_target": t,
                                    "metric": metrics[target], "value": float(value.mean()), "k": e["k"],
                                    "alpha": e["alpha"], "kl": e["kl"]})
    for t in cfg.tasks:
        arrays[f"{t} | unsteered"] = own[t]["unsteered"][1]
        for kl in cfg.kl_grid:
            arrays[f"{t} | null | {Dose('kl', kl).label}"] = own[t][("null", Dose("kl", kl).label)][1]
    vs_null = paired_table(arrays, [(e["name"], f"{e['target']} | null | {Dose('kl', e['kl_target']).label}")
                                    for e in entries], n_boot=cfg.n_boot, seed=0)
    vs_unsteered = paired_table(arrays, [(e["name"], f"{e['target']} | unsteered") for e in entries],
                                n_boot=cfg.n_boot, seed=0)
    cells = []
    for e, rn, ru in zip(entries, vs_null, vs_unsteered):
        label = Dose("kl", e["kl_target"]).label
        cells.append({**{k: v for k, v in e.items() if k != "name"},
                      "unsteered": float(own[e["target"]]["unsteered"][1].mean()),
                      "null": float(own[e["target"]][("null", label)][1].mean()),
                      "null_kl": own[e["target"]][("null kl", label)],
                      "vs_null": {k: v for k, v in rn.items() if k not in ("a", "b")},
                      "vs_unsteered": {k: v for k, v in ru.items() if k not in ("a", "b")}})
    return {"tasks": list(cfg.tasks), "methods": list(cfg.methods), "kl_grid": list(cfg.kl_grid), "metrics": metrics,
            "protocol": {t: protocol(configs[t]) for t in cfg.tasks},
            "unscorable": {t: summaries[t]["unscorable"] for t in cfg.tasks}, "cells": cells}


def _cell(data, source, target, method, kl):
    return next((c for c in data["cells"] if (c["source"], c["target"], c["method"], c["kl_target"])
                 == (source, target, method, kl)), None)


def _entry(c) -> str:
    if c is None:
        return "—"
    v = c["vs_null"]
    mark = "**" if v["p_holm"] < 0.05 else ""
    return (f"{mark}{v['difference']:+.3f}{mark} [{v['ci'][0]:+.3f}, {v['ci'][1]:+.3f}] p {v['p_holm']:.2f}, "
            f"det. {fmt(v['min_detectable'])}")


def table(data: dict) -> list[str]:
    tasks = data["tasks"]
    lines = ["# Cross-domain transfer (rows: selected on; columns: evaluated on)", "",
             "Cell: the target's test metric minus the target's own random null at the same K and KL target (per item, "
             "the mean over its draws), paired over the target's test items: difference [95% CI], Holm p across the "
             "matrix, and the difference the design detects (80% power). **Bold**: Holm p < 0.05. The diagonal selects "
             "on the target itself; off-diagonal cells reuse the source's heads, directions, K and calibrated α. —: the method "
             "could not score the source task (" + (", ".join(f"{m} on {t}" for t, ms in data["unscorable"].items()
                                                         for m in ms) or "none") + ").", ""]
    for kl in data["kl_grid"]:
        for method in data["methods"]:
            lines += [f"## {method} at KL {kl:g}", "", "| selected on \\ evaluated on | "
                      + " | ".join(f"{t} ({data['metrics'][t]})" for t in tasks) + " |", "|---" * (len(tasks) + 1) + "|"]
            for s in tasks:
                lines.append(f"| {s} | " + " | ".join(_entry(_cell(data, s, t, method, kl)) for t in tasks) + " |")
            lines.append("")
    lines += ["## Against unsteered (same cells; Holm across the matrix)", "",
              "| selected on | evaluated on | method | KL target | value | Δ vs unsteered [95% CI] | Holm p | detectable | "
              "held-out KL |", "|---|---|---|---|---|---|---|---|---|"]
    for c in data["cells"]:
        v = c["vs_unsteered"]
        lines.append(f"| {c['source']} | {c['target']} | {c['method']} | {c['kl_target']:g} | {c['value']:.3f} | "
                     f"{v['difference']:+.3f} [{v['ci'][0]:+.3f}, {v['ci'][1]:+.3f}] | {v['p_holm']:.2f} | "
                     f"{fmt(v['min_detectable'])} | {fmt(c['kl'])} |")
    lines += ["", "Unsteered / null mean: " + ", ".join(
        f"{t} {_any(data, t)['unsteered']:.3f} / " + " · ".join(
            f"{_cell_at(data, t, kl)['null']:.3f} (KL {kl:g})" for kl in data["kl_grid"]) for t in tasks)]
    return lines


def _any(data, target):
    return next(c for c in data["cells"] if c["target"] == target)


def _cell_at(data, target, kl):
    return next(c for c in data["cells"] if c["target"] == target and c["kl_target"] == kl)


def plot(data: dict, path) -> Path:
    tasks, methods, doses = data["tasks"], data["methods"], data["kl_grid"]
    grids = {(m, kl): np.array([[np.nan if _cell(data, s, t, m, kl) is None else _cell(data, s, t, m, kl)["vs_null"]
                                 ["difference"] for t in tasks] for s in tasks]) for m in methods for kl in doses}
    bound = max(1e-6, max(float(np.nanmax(np.abs(g))) if np.isfinite(g).any() else 0.0 for g in grids.values()))
    fig = new_figure(4.3 * len(methods) + 1.2, 4.0 * len(doses))
    image = None
    for r, kl in enumerate(doses):
        for i, m in enumerate(methods):
            ax = fig.add_subplot(len(doses), len(methods), r * len(methods) + i + 1)
            image = ax.imshow(grids[(m, kl)], cmap="RdBu", vmin=-bound, vmax=bound)
            for (row, col), v in np.ndenumerate(grids[(m, kl)]):
                c = _cell(data, tasks[row], tasks[col], m, kl)
                if c is None:  # the method could not score the source task (data["unscorable"])
                    ax.text(col, row, "unscorable\non source", ha="center", va="center", fontsize=8, color="grey")
                    continue
                significant = c["vs_null"]["p_holm"] < 0.05
                ax.text(col, row, f"{v:+.3f}{'*' if significant else ''}", ha="center", va="center", fontsize=10,
                        fontweight="bold" if row == col else "normal")
            ax.set_xticks(range(len(tasks)), [f"{t}\n({SHORT.get(data['metrics'][t], metric_label(data['metrics'][t]))})"
                                              for t in tasks], fontsize=8, rotation=20, ha="right")
            ax.set_yticks(range(len(tasks)), tasks, fontsize=9)
            ax.set_xlabel("evaluated on (test metric)", fontsize=10)
            ax.set_ylabel("heads selected on", fontsize=10)
            ax.set_title(f"{m} at KL {kl:g}", fontsize=12)
    bar = fig.colorbar(image, ax=fig.axes)
    bar.set_label("Δ vs the target's random null (* Holm p < 0.05)", fontsize=10)
    fig.suptitle("Cross-domain transfer against the target's own random null (diagonal: selected in-domain)", fontsize=12)
    return save_figure(fig, path)


def main(argv=None) -> dict:
    return run_analysis("transfer", argv, doc=__doc__, config=CONFIG, quick=QUICK, table=table, plot=plot,
                        compute=lambda cfg, out, work, progress: analyse(cfg, work, progress=progress))


if __name__ == "__main__":
    run_main(main)
