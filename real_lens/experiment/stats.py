"""The statistics of a run, computed from its pooled arms: summaries, the random null, paired tests.

Each method is compared per test item against unsteered, the content-blind length-only reference,
its matched random null (per item, the mean over the null draws at the method's own K and dose),
REAL and ITI: paired bootstrap CIs, sign-flip p-values (Holm across the table) and the smallest
difference the design detects; the null's 5–95 % band and each method's percentile in it.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from ..evaluation import bootstrap_ci
from ..evaluation.decomposition import answer_deltas, decompose, question_design
from ..evaluation.paired import holm
from ..scoring import ModuleScores
from .config import Dose, ExperimentConfig, arm_name, dose_groups
from .setup import LENGTH_ONLY

ITI = "iti"  # the paired tests' second anchor: every selection method against the probe


@dataclass
class Arm:
    """One condition's test results pooled over folds: per-item values, and per fold its K, α, CE and KL."""

    method: str
    group: str = ""
    values: dict[str, list[float]] = field(default_factory=dict)
    folds: list[int] = field(default_factory=list)
    k: list[int] = field(default_factory=list)
    alpha: list[float] = field(default_factory=list)
    ce: list[float] = field(default_factory=list)
    kl: list[float] = field(default_factory=list)
    fold_values: dict[str, list[float]] = field(default_factory=dict)  # the per-fold means of each metric
    answers: dict[str, list] = field(default_factory=dict)  # per answer: group, answer, true, tokens, logprob

    def add(self, fold: int, result: dict, *, k: int = 0, alpha: float = 0.0) -> None:
        for metric, values in result["per_item"].items():
            if metric != "group":
                self.values.setdefault(metric, []).extend(values)
                self.fold_values.setdefault(metric, []).append(float(np.mean(values)))
        for key, values in result.get("per_answer", {}).items():
            self.answers.setdefault(key, []).extend(values)
        self.folds.append(fold)
        self.k.append(k)
        self.alpha.append(alpha)
        self.ce.append(result.get("ce", float("nan")))
        self.kl.append(result.get("kl", float("nan")))


@dataclass
class Outcome:
    """What a run's cells add up to, filled by the fold loop and read by every statistic below.

    ``arms``: per (method, dose group) its pooled test results; ``chosen``: per (fold, method, dose
    group) the (K, dose) val chose (or the only candidate); ``null``: per (fold, K, dose label) the
    random null's test results, one per draw."""

    cfg: ExperimentConfig
    task: str
    folds: tuple[int, ...]
    arms: dict[tuple[str, str], Arm] = field(default_factory=dict)
    chosen: dict[tuple[int, str, str], tuple[int, Dose]] = field(default_factory=dict)
    null: dict[tuple[int, int, str], list[dict]] = field(default_factory=dict)

    unscorable: dict[str, str] = field(default_factory=dict)  # method -> why it could not score the task

    def arm(self, method: str, group: str = "") -> Arm:
        return self.arms.setdefault((method, group), Arm(method, group))

    def drop(self, method: str, reason: str) -> None:
        """Leave ``method`` out of every table (its scorer failed on this task in some fold), saying why."""
        self.unscorable[method] = reason
        for key in [key for key in self.arms if key[0] == method]:
            del self.arms[key]
        for key in [key for key in self.chosen if key[1] == method]:
            del self.chosen[key]


def calibration_summary(calibrations: list[dict]) -> dict:
    """How the α calibrations went: counts, evaluations per calibration, and the misses' reasons."""
    if not calibrations:
        return {}
    errors = [abs(c["kl"] / c["target_kl"] - 1) for c in calibrations]
    return {"n": len(calibrations), "reached": sum(c["reached"] for c in calibrations),
            "reasons": {r: sum(c["reason"] == r for c in calibrations) for r in {c["reason"] for c in calibrations}},
            "median_evaluations": float(np.median([c["n_evaluations"] for c in calibrations])),
            "max_relative_error": float(max(errors)), "alpha_range": [min(c["alpha"] for c in calibrations),
                                                                       max(c["alpha"] for c in calibrations)]}


def summarise(arms: dict[str, Arm], metrics: Sequence[str], *, n_boot: int, seed: int) -> dict:
    """Per condition: means over folds of its test cells, bootstrap CIs over the pooled test items,
    its CE and held-out KL (means over folds), and the K and α of each fold."""
    out = {}
    for name, arm in arms.items():
        entry = {"method": arm.method, "dose": arm.group, "folds": len(arm.folds), "n_items": len(arm.values[metrics[0]]),
                 "k": list(arm.k), "alpha": list(arm.alpha)}
        for metric in metrics:
            entry[metric] = float(np.mean(arm.fold_values[metric]))
            entry[f"{metric}_ci"] = list(bootstrap_ci(np.array(arm.values[metric]), n_boot=n_boot, seed=seed))
        for side in ("ce", "kl"):
            values = np.asarray(getattr(arm, side), dtype=float)
            entry[side] = float(np.nanmean(values)) if np.isfinite(values).any() else float("nan")
        out[name] = entry
    return out


def null_draw_arms(outcome: Outcome, points: dict[int, tuple[int, Dose]], group: str) -> list[Arm]:
    """The null draws steered at ``points[fold]`` = (K, dose) in each fold, one pooled arm per draw."""
    draws: list[Arm] = []
    for fold, (k, dose) in points.items():
        results = outcome.null[(fold, k, dose.label)]
        draws = draws or [Arm("random", group) for _ in results]
        for arm, result in zip(draws, results):
            arm.add(fold, result, k=k, alpha=result["alpha"])
    return draws


def mean_arm(draws: list[Arm], method: str, group: str) -> Arm:
    """Per item, the mean over the null draws (their expected value on that item); CE/KL averaged too."""
    arm = Arm(method, group, folds=list(draws[0].folds), k=list(draws[0].k),
               alpha=[float(np.mean(a)) for a in zip(*(d.alpha for d in draws))])
    for metric in draws[0].values:
        arm.values[metric] = np.mean([d.values[metric] for d in draws], axis=0).tolist()
        arm.fold_values[metric] = np.mean([d.fold_values[metric] for d in draws], axis=0).tolist()
    for side in ("ce", "kl"):
        setattr(arm, side, np.nanmean([getattr(d, side) for d in draws], axis=0).tolist()
                if np.isfinite([getattr(d, side) for d in draws]).any() else [float("nan")] * len(arm.folds))
    if draws[0].answers:  # the same answers in every draw: average their log-probs
        arm.answers = {**draws[0].answers, "logprob": np.mean([d.answers["logprob"] for d in draws], axis=0).tolist()}
    return arm


def null_comparisons(outcome: Outcome) -> dict[tuple[str, str], list[Arm]]:
    """Per (method, dose group): the null draws at the K and dose that method chose in every fold."""
    if not outcome.null:
        return {}
    out = {}
    for (method, group) in outcome.arms:
        points = {f: outcome.chosen[(f, method, group)] for f in outcome.folds if (f, method, group) in outcome.chosen}
        if points and len(points) == len(outcome.folds):
            out[(method, group)] = null_draw_arms(outcome, points, group)
    return out


def null_references(outcome: Outcome) -> dict[str, list[Arm]]:
    """Per dose group, the null at the (K, dose) the methods chose most often in each fold (ties: the
    smaller K, then the smaller dose): the ``random`` row of the main table and the frontier's band."""
    from collections import Counter

    if not outcome.null:
        return {}
    out = {}
    for group, doses in dose_groups(outcome.cfg):
        points = {}
        for fold in outcome.folds:
            chosen = Counter(p for (f, _, g), p in outcome.chosen.items() if f == fold and g == group)
            candidates = chosen or Counter((k, d) for k in outcome.cfg.k_grid for d in doses)
            points[fold] = max(candidates, key=lambda p: (candidates[p], -p[0], -p[1].value))
        out[group] = null_draw_arms(outcome, points, group)
    return out


def null_bands(outcome: Outcome, nulls: dict[tuple[str, str], list[Arm]], metric: str) -> list[dict]:
    """Per method and dose group: the method's ``metric`` over its pooled test items, its matched null's
    mean and 5–95 % band over draws (each draw's mean over the same items), and the method's percentile
    among the draws."""
    from ..null import null_band, percentile_in_null

    out = []
    for (method, group), draws in nulls.items():
        if method in ("unsteered", LENGTH_ONLY):
            continue
        values = [float(np.mean(d.values[metric])) for d in draws]
        value = float(np.mean(outcome.arms[(method, group)].values[metric]))
        band = null_band(values)
        out.append({"method": method, "dose": group, "metric": metric, "n_draws": band.n_draws,
                    "k": list(draws[0].k), "value": value, "null_mean": band.mean, "null_low": band.low,
                    "null_high": band.high, "percentile": percentile_in_null(value, values), "draws": values})
    return out


def paired_tests(outcome: Outcome, nulls: dict, metric: str, *, n_boot: int, seed: int) -> list[dict]:
    """Per dose group, every method against unsteered, the length-only reference (where there is one)
    and its matched random null (per item, the mean over the draws at the method's K and dose),
    ``real`` against every other method and every other method against ``iti``, on the same pooled
    test items: mean difference, paired bootstrap CI, sign-flip p, Holm-adjusted across the whole
    table, and the difference this design detects (80 % power, two-sided 0.05) given the observed SD of the paired differences."""
    from ..evaluation.paired import compare_paired, min_detectable_difference

    arrays: dict[str, np.ndarray] = {}
    labelled: list[tuple[str, str, str, str, str]] = []  # (arm a, arm b, method a, method b, group)

    def add(name: str, values) -> str:
        arrays[name] = np.asarray(values, dtype=float)
        return name

    references = [r for r in ("unsteered", LENGTH_ONLY) if (r, "") in outcome.arms and metric in outcome.arms[(r, "")].values]
    for ref in references:
        add(ref, outcome.arms[(ref, "")].values[metric])
    for group, _ in dose_groups(outcome.cfg):
        methods = [m for m in outcome.cfg.methods if (m, group) in outcome.arms]
        for m in methods:
            a = add(arm_name(m, group), outcome.arms[(m, group)].values[metric])
            labelled += [(a, ref, m, ref, group) for ref in references]
            if (m, group) in nulls:
                b = add(f"random null for {a}", mean_arm(nulls[(m, group)], "random", group).values[metric])
                labelled.append((a, b, m, "random null", group))
        if "real" in methods:
            labelled += [(arm_name("real", group), arm_name(m, group), "real", m, group) for m in methods if m != "real"]
        if ITI in methods:  # the probe every selection method is measured against (real's row is above)
            labelled += [(arm_name(m, group), arm_name(ITI, group), m, ITI, group)
                         for m in methods if m not in ("real", ITI)]
    if not labelled:
        return []
    out = []
    rows = compare_paired(arrays, [(a, b) for a, b, *_ in labelled], n_boot=n_boot, seed=seed)
    for row, (_, _, method_a, method_b, group) in zip(rows, labelled):
        c = row.comparison
        mdd = min_detectable_difference(c.sd_diff, c.n) if c.n > 1 and c.sd_diff > 0 else float("nan")
        out.append({"a": method_a, "b": method_b, "dose": group, "metric": metric, "n": c.n,
                    "difference": c.difference, "ci": [c.ci_low, c.ci_high], "p": c.p_value, "p_holm": row.p_holm,
                    "sd_diff": c.sd_diff, "min_detectable": mdd})
    return out


def fold_stability(all_scores: dict[int, list[ModuleScores]], *, k: int) -> dict[str, dict]:
    """Per method, how alike its rankings are in the first two folds (fitted on disjoint questions):
    Spearman over all modules and the Jaccard overlap of the top-``k`` sets. Empty with one fold."""
    from ..compare import compare_scores

    folds = sorted(all_scores)
    if len(folds) < 2:
        return {}
    first, second = ({s.method: s for s in all_scores[f]} for f in folds[:2])
    out = {}
    for method, a in first.items():
        b = second.get(method)
        if b is None or method == "random":  # random: the same seed gives the same ranking in every fold
            continue
        agreement = compare_scores(a, b, k=min(k, a.n_modules))
        out[a.method] = {"spearman": agreement["spearman"], "jaccard_top_k": agreement["jaccard_top_k"],
                         "k": agreement["k"], "n_modules": agreement["n_modules"], "folds": folds[:2]}
    return out


def frontier_data(outcome: Outcome, summary: dict, metric: str) -> dict:
    """What the frontier figure draws (kept in summary.json, so figures are redrawn without a model):
    per method and KL target its held-out KL and ``metric`` with its CI, and per null draw of the
    ``random`` reference its held-out KL and ``metric``."""
    targets = dict(zip((g for g, _ in dose_groups(outcome.cfg)), outcome.cfg.kl_grid))
    points = [{"method": e["method"], "kl": e["kl"], "value": e[metric], "ci": e[f"{metric}_ci"],
               "kl_target": targets[e["dose"]]}
              for e in summary.values() if e["dose"] in targets and e["method"] != "random" and math.isfinite(e["kl"])]
    null = [{"kl": float(np.nanmean(d.kl)), "value": float(np.mean(d.values[metric])), "kl_target": targets[g]}
            for g, draws in null_references(outcome).items() for d in draws if np.isfinite(d.kl).any()]
    unsteered = outcome.arms.get(("unsteered", ""))
    if unsteered is not None and unsteered.answers:  # the β_truth panel: every point's truth effect
        arms = {arm_name(m, g): a for (m, g), a in outcome.arms.items()}
        for point, entry in zip(points, (e for e in summary.values() if e["dose"] in targets and e["method"] != "random"
                                         and math.isfinite(e["kl"]))):
            point["beta_truth"] = truth_length_fit(arms[arm_name(entry["method"], entry["dose"])], unsteered)[0]
        draws = [d for draws in null_references(outcome).values() for d in draws if np.isfinite(d.kl).any()]
        for point, draw in zip(null, draws):
            point["beta_truth"] = truth_length_fit(draw, unsteered)[0]
    return {"metric": metric, "points": points, "null": null, "unsteered": summary["unsteered"][metric],
            "length_only": summary.get(LENGTH_ONLY, {}).get(metric), "task": outcome.task}


# --------------------------------------------------------------------------- truth or length
def truth_length_fit(arm: Arm, unsteered: Arm) -> tuple[float, float]:
    """``(β_truth, β_len)`` of ``arm`` against unsteered (:mod:`real_lens.evaluation.decomposition`), no inference."""
    a, b = question_design(arm.answers["group"], arm.answers["true"], arm.answers["tokens"],
                           answer_deltas(arm.answers, unsteered.answers))
    beta = np.linalg.solve(a.sum(0), b.sum(0))
    return float(beta[0]), float(beta[1])


def truth_length_tests(outcome: Outcome, nulls: dict, *, n_boot: int, seed: int) -> list[dict]:
    """Per method and dose group: β_truth and β_len of its steering against unsteered, and the same for the
    method minus its matched random null (per answer, Δ minus the mean Δ of the null draws at the method's K
    and dose); question-cluster bootstrap CIs, sign-flip p (Holm across the table) and the detectable β_truth."""
    unsteered = outcome.arms.get(("unsteered", ""))
    if unsteered is None or not unsteered.answers:
        return []
    rows = []
    for group, _ in dose_groups(outcome.cfg):
        for method in outcome.cfg.methods:
            arm = outcome.arms.get((method, group))
            if arm is None or not arm.answers:
                continue
            delta = answer_deltas(arm.answers, unsteered.answers)
            fits = [("unsteered", delta)]
            if (method, group) in nulls:
                fits.append(("random null", delta - answer_deltas(mean_arm(nulls[(method, group)], "random",
                                                                           group).answers, unsteered.answers)))
            for reference, d in fits:
                fit = decompose(arm.answers["group"], arm.answers["true"], arm.answers["tokens"], d,
                                n_boot=n_boot, seed=seed)
                rows.append({"method": method, "dose": group, "vs": reference, **dataclasses.asdict(fit)})
    for row, p in zip(rows, holm([r["p_truth"] for r in rows])):
        row["p_truth_holm"] = float(p)
    return rows
