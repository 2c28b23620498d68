"""Does model size change the verdict? The main job's paired tests on two models, side by side.

For each method and KL dose, on each model: the paired MC2 difference against the method's matched
random null and against ITI (the same test questions, the run's own bootstrap CI, sign-flip p and
Holm adjustment across that run's whole paired table, and the smallest difference its design
detects), and the verdict each supports: ``above`` / ``below`` where the Holm-adjusted p is under
0.05, ``n.s.`` otherwise; the same for β_truth (the nats steering adds to true answers beyond
their length) against the null. Two ``n.s.`` are "not distinguished", never "the same"; and verdicts
that differ ("above" on one model, "n.s." on the other) are not a difference either. Whether an
effect changes with the model is tested directly: the first model's difference against its null
minus the second's, as two independent samples (the models answer different test questions), a
normal z-test on the runs' standard errors, Holm across each table. Beside it, REAL's AUC
distribution per model (max, median, share at exactly 0.5 per fold, and the folds' Spearman), the
statistics docs/real-release.md gives for the authors' published rankings.

No model is run: both runs must be finished (``results.csv`` and ``summary.json``); their numbers
are read, not recomputed.

    python -m analyses.two_model_verdict                   # results/truthfulqa vs results/truthfulqa-qwen1.5b
    python -m analyses.two_model_verdict --runs A=runs/x,B=runs/y
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
from pathlib import Path

from analyses.common import RESULTS, ROOT, run_main, save
from scipy.stats import norm

from real_lens.errors import RealLensError
from real_lens.evaluation.paired import holm
from real_lens.io import read_json
from real_lens.scoring import ModuleScores

NAME = "two_model_verdict"
ALPHA = 0.05  # family-wise, after each run's Holm adjustment
REAL_METHODS = ("real", "real-release")
NORMAL_95 = float(norm.ppf(0.975))
TITLE = "Does model size change the verdict?"


@dataclass(frozen=True)
class Config:
    runs: tuple[tuple[str, str], ...] = (
        ("SmolLM2-135M-Instruct", "results/truthfulqa"),
        ("Qwen2.5-Coder-1.5B-Instruct (code-tuned)", "results/truthfulqa-qwen1.5b"),
    )


def verdict(row: dict | None) -> str:
    if row is None:
        return "-"
    if row["p_holm"] >= ALPHA:
        return "n.s."
    return "above" if row["difference"] > 0 else "below"


def _run(path: str) -> Path:
    run = Path(path) if Path(path).is_absolute() else ROOT / path
    if not (run / "summary.json").is_file() or not (run / "results.csv").is_file():
        raise RealLensError(f"{run} is not a finished real-lens run (no summary.json/results.csv); finish it first")
    return run


def auc_distribution(run: Path, method: str) -> dict | None:
    """Per fold: max, median and share at exactly 0.5 of ``method``'s module scores (AUCs)."""
    folds = sorted(d.name for d in (run / "scores").glob("fold*") if (d / method).is_dir())
    out = {}
    for fold in folds:
        values = ModuleScores.load(run / "scores" / fold / method).scores.flatten().double()
        out[fold] = {"max": float(values.max()), "median": float(values.median()),
                     "share_at_0.5": float((values == 0.5).double().mean()), "n_modules": int(values.numel())}
    return out or None


def analyse(cfg: Config) -> dict:
    models = {}
    for label, path in cfg.runs:
        run = _run(path)
        summary = read_json(run / "summary.json")
        config = read_json(run / "config.json")["config"]
        rows = {(r["a"], r["b"], r["dose"]): r for r in summary["paired"]}
        unsteered = summary["methods"].get("unsteered", {})
        models[label] = {
            "run": path, "model": config["model"], "n_items": summary["paired"][0]["n"] if summary["paired"] else 0,
            "unsteered_mc2": unsteered.get("mc2"),
            "doses": summary["doses"], "methods": [m for m in config["methods"] if m != "random"],
            "vs_null": {f"{a} @ {d}": r for (a, b, d), r in rows.items() if b == "random null"},
            "vs_iti": {f"{a} @ {d}": r for (a, b, d), r in rows.items() if b == "iti"},
            # β_truth (nats steering adds to true answers beyond their length) of the method minus its null
            "truth_vs_null": {f"{r['method']} @ {r['dose']}": r for r in summary.get("truth_length", [])
                              if r["vs"] == "random null"},
            "fold_stability": {m: summary.get("fold_stability", {}).get(m) for m in REAL_METHODS},
            "auc": {m: auc_distribution(run, m) for m in REAL_METHODS},
        }
    return {"models": models, "alpha": ALPHA, "between": between_models(models)}


def _se(row: dict, kind: str) -> float:
    """The standard error of a run's difference: sd of the paired differences / √n (MC2), or the β_truth
    question-cluster bootstrap CI's half-width / 1.96."""
    if kind == "mc2":
        return row["sd_diff"] / math.sqrt(row["n"])
    return (row["ci_truth"][1] - row["ci_truth"][0]) / (2 * NORMAL_95)


def between_models(models: dict) -> dict:
    """With two models: per method and dose, the first model's effect against its null minus the second's (MC2
    and β_truth), tested as two independent samples (the models answer different test questions): a normal
    (Welch-type) z-test on the runs' standard errors, Holm across each table. This, not two verdicts side by
    side, says whether the effect changes with the model: 'above' in one and 'n.s.' in the other is not a
    difference."""
    if len(models) != 2:
        return {}
    (la, a), (lb, b) = models.items()
    out = {}
    for kind, field, value in (("mc2", "vs_null", "difference"), ("truth", "truth_vs_null", "beta_truth")):
        keys = [k for k in a[field] if k in b[field]]
        rows = []
        for key in keys:
            ra, rb = a[field][key], b[field][key]
            diff = ra[value] - rb[value]
            se = math.hypot(_se(ra, kind), _se(rb, kind))
            p = float(2 * norm.sf(abs(diff) / se)) if se > 0 else math.nan
            rows.append({"key": key, "difference": diff, "se": se, "ci": [diff - NORMAL_95 * se, diff + NORMAL_95 * se],
                         "p": p})
        adjusted = holm([r["p"] for r in rows]) if rows else []
        out[kind] = {r["key"]: {**r, "p_holm": float(h)} for r, h in zip(rows, adjusted)}
    return out


def _cell(row: dict | None) -> str:
    if row is None:
        return "-"
    return (f"{row['difference']:+.3f} [{row['ci'][0]:+.3f}, {row['ci'][1]:+.3f}] p={row['p_holm']:.2g} "
            f"({verdict(row)}; detects {row['min_detectable']:.3f})")


def _between(row: dict | None, spec: str) -> str:
    if row is None:
        return "-"
    return (f"{row['difference']:+{spec}} [{row['ci'][0]:+{spec}}, {row['ci'][1]:+{spec}}] p={row['p_holm']:.2g}"
            + (" (**differs**)" if row["p_holm"] < ALPHA else ""))


def truth_verdict(row: dict | None) -> str:
    """:func:`verdict` of a β_truth row (its Holm p and β_truth difference)."""
    return "-" if row is None else verdict({"p_holm": row["p_truth_holm"], "difference": row["beta_truth"]})


def _truth_cell(row: dict | None) -> str:
    if row is None:
        return "-"
    return (f"{row['beta_truth']:+.2f} [{row['ci_truth'][0]:+.2f}, {row['ci_truth'][1]:+.2f}] p={row['p_truth_holm']:.2g} "
            f"({truth_verdict(row)}; detects {row['min_detectable_truth']:.2f})")


def table(data: dict) -> list[str]:
    models = data["models"]
    labels = list(models)
    between = data.get("between") or {}
    lines = [f"# {data.get('title') or TITLE} (TruthfulQA MC2, paired per test question)", ""]
    lines += [f"- **{label}** (`{m['model']}`, run `{m['run']}`): {m['n_items']} pooled test questions, "
              f"unsteered MC2 {m['unsteered_mc2']:.3f}" for label, m in models.items()]
    lines += ["", "Each cell: the method's MC2 minus the comparison's, 95 % paired bootstrap CI, Holm-adjusted p "
              f"(across that run's paired table), the verdict at {data['alpha']} (above / below / n.s.) and the "
              "smallest difference that run detects (80 % power). `vs null`: the mean of random head sets at the "
              "method's own K and dose. `verdicts`: whether the two models' verdicts agree (two n.s. = not "
              "distinguished). " + (f"`{labels[0]} − {labels[1]}`: the first model's difference against its null minus "
              "the second's, 95 % CI and Holm p of a two-sample z-test (independent samples: right for two models, "
              "which answer different questions; conservative for two runs that share them); only this column "
              "says whether the effect changes between the runs." if between else ""), ""]
    extra = f" {labels[0]} − {labels[1]}, vs null |" if between else ""
    header = ("| method | dose | " + " | ".join(f"{label}: vs null | {label}: vs ITI" for label in labels)
              + " | verdicts |" + extra)
    lines += [header, "|" + "---|" * (3 + 2 * len(labels) + bool(between))]
    methods = models[labels[0]]["methods"]
    for dose in models[labels[0]]["doses"]:
        for method in methods:
            key = f"{method} @ {dose}"
            cells, verdicts = [], []
            for label in labels:
                m = models[label]
                null = m["vs_null"].get(key)
                iti = m["vs_iti"].get(key)  # real's row is "real vs iti" as well
                cells += [_cell(null), "(ITI itself)" if method == "iti" else _cell(iti)]
                verdicts.append((verdict(null), verdict(iti) if method != "iti" else "-"))
            same = ("not distinguished" if all(set(v) <= {"n.s.", "-"} for v in verdicts)
                    else "agree" if len(set(verdicts)) == 1 else "differ")
            lines.append(f"| {method} | {dose} | " + " | ".join(cells) + f" | {same} |"
                         + (f" {_between(between['mc2'].get(key), '.3f')} |" if between else ""))
    lines += ["", "## β_truth against the null (nats added to true answers beyond their length)", "",
              "Per model: the method's β_truth minus its matched null's (per question, the mean over the draws), a "
              "question-cluster bootstrap CI, the Holm-adjusted sign-flip p of that run's β_truth table and the "
              "smallest β_truth difference it detects.", "",
              "| method | dose | " + " | ".join(f"{label}: β_truth vs null" for label in labels) + " | verdicts |" + extra,
              "|" + "---|" * (3 + len(labels) + bool(between))]
    for dose in models[labels[0]]["doses"]:
        for method in methods:
            key = f"{method} @ {dose}"
            rows = [models[label]["truth_vs_null"].get(key) for label in labels]
            verdicts = [truth_verdict(r) for r in rows]
            same = ("not distinguished" if set(verdicts) <= {"n.s.", "-"} else "agree" if len(set(verdicts)) == 1
                    else "differ")
            lines.append(f"| {method} | {dose} | " + " | ".join(_truth_cell(r) for r in rows) + f" | {same} |"
                         + (f" {_between(between['truth'].get(key), '.2f')} |" if between else ""))
    lines += ["", "## REAL's AUC per head", "",
              "| model | method | fold | max | median | at exactly 0.5 | fold 0 vs 1 Spearman |", "|---|---|---|---|---|---|---|"]
    for label, m in models.items():
        for method in REAL_METHODS:
            folds = m["auc"].get(method) or {}
            rho = (m["fold_stability"].get(method) or {}).get("spearman", float("nan"))
            for fold, d in folds.items():
                lines.append(f"| {label} | {method} | {fold} | {d['max']:.3f} | {d['median']:.3f} | "
                             f"{d['share_at_0.5']:.1%} | {rho:.2f} |")
    return lines + ["", "Command: `python -m analyses.two_model_verdict` (reads both finished runs; no model is run)"]


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", default=None, help="LABEL=RUN_DIR,LABEL=RUN_DIR (default: the committed two runs)")
    parser.add_argument("--out", default=None, help=f"results folder (default results/{NAME})")
    parser.add_argument("--title", default=None, help=f"the table's title, for two runs that differ in something "
                        f"other than the model (default {TITLE!r}); the two-sample test then ignores that the runs "
                        "share questions, which makes it conservative")
    args = parser.parse_args(argv)
    cfg = Config()
    if args.runs:
        pairs = [item.split("=", 1) for item in args.runs.split(",")]
        if any(len(p) != 2 or not all(p) for p in pairs):
            raise RealLensError(f"--runs expects LABEL=RUN_DIR,LABEL=RUN_DIR; got {args.runs!r}")
        cfg = Config(runs=tuple((a, b) for a, b in pairs))
    data = {**analyse(cfg), "title": args.title}
    lines = table(data)
    save(Path(args.out or RESULTS / NAME), cfg, data, lines)
    print("\n".join(lines))
    return data


if __name__ == "__main__":
    run_main(main)
