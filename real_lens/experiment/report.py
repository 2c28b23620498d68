"""summary.md, rendered from what a run saved (summary.json, results.csv, timing.json) — never from a model.

The headline table, the protocol paragraph, the paired tests, the random null, rank stability,
the sizes and where the time went; :func:`draw_frontier` redraws the frontier figure from the
data summary.json keeps.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

from ..evaluation.dose import CALIBRATION
from .config import ExperimentConfig, fit_parts, val_selects
from .setup import LENGTH_ONLY


# Fewer test questions per fold than this and summary.md says the run cannot tell methods apart well.
ENOUGH_TEST_QUESTIONS = 20


def small_sample_lines(small: dict | None) -> list[str]:
    """What this run's size cannot support: few test questions, top K decided by ties, AUCs on few questions."""
    if not small:
        return []
    lines = []
    n_test, enough = small.get("min_test_questions"), small.get("enough_test_questions", ENOUGH_TEST_QUESTIONS)
    if n_test is not None and n_test < enough:
        lines.append(f"- **Few test questions:** {n_test} per fold, fewer than ~{enough}: the CIs are wide and most "
                     "differences between methods are within noise; use more test questions (`--larger`, "
                     "`--test-questions`) or a larger task before reading the ranking.")
    for t in small.get("ties") or []:
        lines.append(f"- **Top {t['k']} decided by ties:** fold {t['fold']} {t['method']}: {t['n_tied']} modules share "
                     f"the score {t['score']:.4g} and only {t['n_inside']} fit; the tie-break ({t['broken_by']}) "
                     "chose them, not the score.")
    for method, folds in sorted((small.get("heldout") or {}).items()):
        sizes = ", ".join(f"fold {f}: {h['n_questions']} questions ({h['n_examples']} examples)"
                          for f, h in sorted(folds.items()))
        few = min(h["n_questions"] for h in folds.values()) < enough
        lines.append(f"- {method}'s AUC per module rests on its held-out examples: {sizes}"
                     + (" — few, so AUCs are coarse and tie easily." if few else "."))
    return ["", "## What this run's size can support", "", *lines] if lines else []


def summary_table(summary: dict, metrics: Sequence[str]) -> list[str]:
    """The headline table (markdown lines): every metric with its CI, CE, KL and each fold's K and α."""
    with_dose = any(e.get("dose") for e in summary.values())
    header = ["method", *(["dose"] if with_dose else []), *[f"{m} [95% CI]" for m in metrics], "CE", "KL",
              "chosen K per fold", "α per fold"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, e in summary.items():
        cells = [e.get("method", name), *([e.get("dose") or "-"] if with_dose else []),
                 *[f"{e[m]:.3f} [{e[m + '_ci'][0]:.3f}, {e[m + '_ci'][1]:.3f}]" for m in metrics],
                 *(f"{e[side]:{spec}}" if math.isfinite(e[side]) else "-" for side, spec in (("ce", ".3f"), ("kl", ".4f"))),
                 ", ".join(map(str, e["k"])) if any(e["k"]) else "-",
                 ", ".join(f"{a:.3g}" for a in e["alpha"]) if any(e["alpha"]) else "-"]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def protocol_lines(cfg: ExperimentConfig, run: dict, select_metric: str) -> list[str]:
    """What the doses are, what fitted and what selected: the paragraph above the table."""
    parts = "+".join(fit_parts(cfg))
    if cfg.kl_grid:
        dose = (f"Every method is steered at the same side effect: for each KL target "
                f"({', '.join(f'{t:g}' for t in cfg.kl_grid)} nats per token), α is calibrated per method, fold and K "
                f"so that KL(unsteered ‖ steered) on {run['n_calibration_texts']} WikiText-2 paragraphs is within "
                f"{CALIBRATION['tol']:.0%} of the target (α ≤ {CALIBRATION['alpha_max']:g}); the KL in the table is "
                f"measured on {run['n_report_texts']} other paragraphs (held out). ")
        choice = "K was chosen per method, fold and KL target" if len(cfg.k_grid) > 1 else f"K is fixed at {cfg.k_grid[0]}"
    else:
        dose = f"Doses are the fixed α grid {list(cfg.alpha_grid)} (the paper's protocol). "
        choice = "K and α were chosen per method and fold"
    on_val = f" on the fold's val questions by {select_metric}" if val_selects(cfg) else ""
    return [dose + f"{choice}{on_val}. Scores, steering directions and σ were fitted on each fold's {parts} "
            "questions" + (" only: val questions never enter fitting." if parts == "train" else
                           " (val chooses nothing here).")]


def render_summary(cfg: ExperimentConfig, saved: dict, rows: list[dict], sessions: list[dict[str, float]], *,
                   ranks: list[dict] | None = None) -> str:
    """summary.md from what the run saved: its ``summary.json`` (``saved``), results rows and session timings
    (``ranks``: this session's busy time per rank, under torchrun)."""
    run, metrics = saved["run"], saved["metrics"]
    summary = {name: saved["methods"][name] for name in run["order"]}  # JSON files sort keys; the table keeps run order
    paired, bands, calibration = (saved.get(k) for k in ("paired", "null", "calibration"))
    stability = {m: saved["fold_stability"][m] for m in cfg.methods if m in (saved.get("fold_stability") or {})}
    lines = [
        f"# real-lens run: {cfg.task} on {cfg.model}",
        "",
        f"Test metrics are means over folds {list(run['folds'])}; 95% CIs bootstrap the pooled test items "
        f"({cfg.n_boot} resamples). " + protocol_lines(cfg, run, saved['select_metric'])[0],
        "",
        *summary_table(summary, metrics),
    ]
    for method, reason in (saved.get("unscorable") or {}).items():
        lines += ["", f"**{method} is left out of every table**: its scorer could not score this task ({reason})."]
    if "random" in cfg.methods:
        lines += ["", f"`random` is the mean of {cfg.null_draws} random head sets per fold (the null below), each at the "
                  "K and dose the methods chose most often in that fold."]
    if LENGTH_ONLY in summary:
        lines += ["", f"`{LENGTH_ONLY}` is no steering at all: a content-blind scorer, log p(answer) = −c·(answer "
                  "tokens) with c chosen on the val questions, on the same test questions. A steered method that only "
                  "reaches it may have bought its gain by making the model prefer short answers."]
    if calibration:
        misses = ", ".join(f"{n} {r}" for r, n in sorted(calibration["reasons"].items()) if r != "reached")
        lines += ["", f"α calibrations: {calibration['reached']} of {calibration['n']} reached their KL target within "
                  f"{CALIBRATION['tol']:.0%} (median {calibration['median_evaluations']:g} KL evaluations each; α from "
                  f"{calibration['alpha_range'][0]:.3g} to {calibration['alpha_range'][1]:.3g})"
                  + (f"; not reached: {misses} — those cells are steered at the closest point evaluated, and their "
                     "held-out KL in the table shows the dose they got." if misses else ".")]
    lines += small_sample_lines(saved.get("small_sample"))
    lines += truth_length_lines(saved.get("truth_length") or [])
    lines += paired_lines(paired or [])
    lines += null_lines(bands or [])
    if stability:
        k, n = (next(iter(stability.values()))[key] for key in ("k", "n_modules"))
        chance = (k * k / n) / (2 * k - k * k / n)  # expected |A∩B| = k²/n for two random k-sets of n
        lines += ["", "## Rank stability across folds", "",
                  f"Each fold scores the modules on its own {'+'.join(fit_parts(cfg))} questions (the two folds' test halves are "
                  f"disjoint). Spearman of the two folds' scores over all {n} modules, and the Jaccard overlap of "
                  f"their top-{k} sets (≈ {chance:.2f} for two random sets):", "",
                  "| method | Spearman fold 0 vs 1 | top-K Jaccard |", "|---|---|---|"]
        lines += [f"| {m} | {v['spearman']:.2f} | {v['jaccard_top_k']:.2f} |" for m, v in stability.items()]
    n_test = sorted({int(r["n_questions"]) for r in rows if r["split"] == "test"})
    n_val = sorted({int(r["n_questions"]) for r in rows if r["split"] == "val"})
    lines += [
        "",
        "## Sizes",
        "",
        f"- model `{cfg.model}`, site `{cfg.site}`, readout `{cfg.readout}`, seed {cfg.seed}",
        *([f"- TruthfulQA MC scored under the `{cfg.mc_prompt}` prompt (METHOD.md §6a"
           + ("; instruction + the six 'qa' demonstrations, run once and shared)" if cfg.mc_prompt == "instruction-qa"
              else "; the six 'qa' demonstrations, run once and shared)" if cfg.mc_prompt == "qa" else ")")
           + "; banks are collected on the bare `Q: {question} A: {answer}` examples"]
          if run["evaluation_kind"] == "mc" else []),
        f"- K grid {list(cfg.k_grid)}, "
        + (f"KL targets {list(cfg.kl_grid)} (α calibrated on {run['n_calibration_texts']} paragraphs)" if cfg.kl_grid
           else f"α grid {list(cfg.alpha_grid)}")
        + (f"; random null: {cfg.null_draws} draws per fold" if "random" in cfg.methods else ""),
        "- questions: " + ("all" if cfg.questions_per_part is None else
                           f"the first {cfg.questions_per_part} (task order) of every fold's train, val and test parts, "
                           f"and only those")
        + f"; examples scored and used for steering directions ({'+'.join(fit_parts(cfg))}) per fold: "
        + ", ".join(f"fold {f}: {n}" for f, n in run["bank_sizes"].items()),
        (f"- val questions per fold {n_val}" + (" (all)" if cfg.n_val_questions is None else " (a seeded sample)")
         if n_val else "- val questions: none evaluated (one K and one dose per report: nothing to choose)")
        + f"; test questions per fold {n_test}" + (" (all)" if cfg.n_test_questions is None else " (a seeded sample)"),
        f"- activation patching on {cfg.patching_pairs}, attribution patching on {cfg.attribution_pairs} contrast pairs "
        f"per fold ({cfg.pair_demos} aligned vs violating demonstrations, pairs with |gap| < {cfg.pair_min_gap:g} nats "
        "dropped; kept counts in each method's scores/fold*/*/scores.json)",
        f"- REAL: {cfg.real_epochs} VQ-AE epochs, {cfg.real_prior_epochs} prior epochs, the paper's other settings"
        + (f", AUC averaged over {cfg.real_cross_fit} disjoint held-out splits" if cfg.real_cross_fit > 1 else "")
        + " (held-out questions drawn apart from ITI's validation questions); "
        "`real` is the method as the paper describes it (METHOD.md §3), `real-release` as the authors' camera-ready "
        f"code (OneForAll.py) computes it (§3a; {cfg.real_release_epochs} VQ-AE and {cfg.real_release_prior_epochs} "
        "prior epochs; differences below)",
        "- steering σ from " + SIGMA_SOURCES[cfg.sigma_bank],
        f"- side effects: {run['n_report_texts']} WikiText-2 paragraphs, ≤{cfg.side_effect_tokens} tokens each"
        + (f" (the {run['n_calibration_texts']} that calibrate α are others)" if run["n_calibration_texts"] else ""),
        *timing_lines(sessions, ranks=ranks),
    ]
    if "real-release" in cfg.methods:
        lines += release_difference_lines()
    return "\n".join(lines)


def paired_lines(paired: list[dict]) -> list[str]:
    if not paired:
        return []
    metric, n = paired[0]["metric"], paired[0]["n"]
    with_dose = any(r["dose"] for r in paired)
    lines = ["", f"## Paired tests ({metric}, {n} pooled test items)", "",
             "Every condition is evaluated on the same test items, so each comparison is per item: mean difference "
             "a − b, a paired bootstrap 95% CI (one resample of items for both arms), a two-sided sign-flip "
             "permutation p, Holm-adjusted across this whole table, and the smallest difference this design detects "
             "with 80% power at two-sided 0.05 given the observed SD of the paired differences (noncentral t). "
             "`random null` is, per item, the mean over the null draws steered at a's own K and dose.", "",
             "| a | b |" + (" dose |" if with_dose else "") + " a − b | 95% CI | p | p (Holm) | SD of differences | detectable |",
             "|---|---|" + ("---|" if with_dose else "") + "---|---|---|---|---|---|"]
    for r in paired:
        lines.append(f"| {r['a']} | {r['b']} |" + (f" {r['dose']} |" if with_dose else "")
                     + f" {r['difference']:+.3f} | [{r['ci'][0]:+.3f}, {r['ci'][1]:+.3f}] | "
                     f"{r['p']:.3g} | {r['p_holm']:.3g} | {r['sd_diff']:.3f} | {r['min_detectable']:.3f} |")
    return lines


def null_lines(bands: list[dict]) -> list[str]:
    """The null table: each method's value, its matched null's mean and band, and its percentile."""
    if not bands:
        return []
    metric, n = bands[0]["metric"], bands[0]["n_draws"]
    lines = ["", f"## Against the random null ({n} random head sets per fold)", "",
             f"Each draw steers K random heads at the K and dose the method chose in that fold ({metric} pooled over "
             "folds). Percentile: the share of draws below the method (ties count half); with "
             f"{n} draws, 100 means above every draw.", "",
             f"| method | dose | {metric} | null mean | null 5–95 % | percentile |", "|---|---|---|---|---|---|"]
    for b in bands:
        lines.append(f"| {b['method']} | {b['dose'] or '-'} | {b['value']:.3f} | {b['null_mean']:.3f} | "
                     f"[{b['null_low']:.3f}, {b['null_high']:.3f}] | {b['percentile']:.0f} |")
    return lines


SIGMA_SOURCES = {"scoring": "the fold's fit examples (METHOD.md §4)",
                 "tuning": "the unlabelled tuning bank of the fold's fit questions (the REAL release's σ)"}


def release_difference_lines() -> list[str]:
    """``real`` vs ``real-release``: every known difference and the release settings neither follows, one line of why each."""
    from ..scoring.real_config import RELEASE_DIFFERENCES, RELEASE_SETTINGS_NOT_FOLLOWED

    lines = ["## REAL as described (`real`) vs as released (`real-release`)", ""]
    lines += [f"- {what} *Why it matters:* {why}" for what, why in RELEASE_DIFFERENCES]
    lines += ["", "Release settings `real-release` does not follow:", ""]
    lines += [f"- {what} *Why not:* {why}" for what, why in RELEASE_SETTINGS_NOT_FOLLOWED]
    return lines + [""]


def timing_lines(sessions: list[dict[str, float]], *, ranks: list[dict] | None = None) -> list[str]:
    """Seconds per step: summed over every session of the run (``sessions``), or this one's; under torchrun,
    then each rank's busy time this session (``ranks``: :class:`~.shard.RankShare` dicts), so the balance shows."""
    lines = _step_lines(sessions)
    if ranks:
        busy = [sum(r["seconds"].values()) for r in ranks]
        lines += [f"This session ran on {len(ranks)} ranks (torchrun); step times above are summed over them. "
                  "Each rank's busy time (scoring and the cells it computed; the rest it waited):", "",
                  "| rank | busy seconds | cells | expected cost (share) |", "|---|---|---|---|"]
        total_cost = sum(r["cost"] for r in ranks) or 1.0
        lines += [f"| {r['rank']} | {b:.1f} | {r['cells']} | {r['cost'] / total_cost:.0%} |" for r, b in zip(ranks, busy)]
        lines += ["", f"(busiest rank / mean: {max(busy) / max(sum(busy) / len(busy), 1e-9):.2f})", ""]
    return lines


def _step_lines(sessions: list[dict[str, float]]) -> list[str]:
    total: dict[str, float] = {}
    for session in sessions:
        for step, seconds in session.items():
            total[step] = total.get(step, 0.0) + seconds
    lines = ["", "## Where the time went", "", "| step | seconds |", "|---|---|"]
    for step, seconds in sorted(total.items(), key=lambda kv: -kv[1]):
        lines.append(f"| {step} | {seconds:.0f} |")
    if len(sessions) > 1:
        return lines + ["", f"(summed over the {len(sessions)} sessions of this run; this session took "
                        f"{sessions[-1].get('total', 0):.0f} s, steps reused from the cache take ~0 s)", ""]
    return lines + ["", "(steps that were reused from the cache take ~0 s on a resumed run)", ""]


def draw_frontier(data: dict, path) -> Path:
    """The frontier figure from :func:`frontier_data` (:func:`~real_lens.plotting_frontier.plot_frontier`)."""
    from ..plotting import metric_label
    from ..plotting_frontier import FrontierPoint, plot_frontier

    points = [FrontierPoint(p["method"], p["kl"], p["value"], *p["ci"], kl_target=p["kl_target"]) for p in data["points"]]
    null = [FrontierPoint("random", p["kl"], p["value"], kl_target=p["kl_target"]) for p in data["null"]]
    truth = [FrontierPoint(p["method"], p["kl"], p["beta_truth"], kl_target=p["kl_target"])
             for p in data["points"] if "beta_truth" in p]
    truth_null = [FrontierPoint("random", p["kl"], p["beta_truth"], kl_target=p["kl_target"])
                  for p in data["null"] if "beta_truth" in p]
    return plot_frontier(points, null, path, metric=data["metric"], unsteered=data["unsteered"],
                         length_only=data["length_only"],
                         title=f"{data['task']}: {metric_label(data['metric'])} against held-out KL",
                         truth_points=truth, truth_null=truth_null)


def truth_length_lines(rows: list[dict]) -> list[str]:
    """The truth-vs-length table: β_truth and β_len per method and dose, against unsteered and its null."""
    if not rows:
        return []
    lines = ["", "## Truth or length? (per-answer decomposition)", "",
             "Per answer, Δ = log p_steered(a | q) − log p_unsteered(a | q), fitted within question as "
             "Δ = β_truth·true(a) + β_len·tokens(a): β_truth is the nats steering adds to true answers beyond what "
             "their length predicts, β_len the nats per answer token whatever the answer says. This separates a "
             "steering that rewards truth from one that rewards short answers, which the MC2 comparison with the "
             "length-only reference cannot (it compares unlike arms). `vs random null`: the method's Δ minus the "
             "mean Δ of its matched null draws. CIs: question-cluster bootstrap; p: sign-flip over questions, Holm "
             "across this table; detectable: the |β_truth| this design finds with 80% power at two-sided 0.05.", "",
             "| method | dose | vs | β_truth [95% CI] | p | p (Holm) | detectable | β_len per token [95% CI] | questions |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['method']} | {r['dose'] or '-'} | {r['vs']} | {r['beta_truth']:+.3f} "
                     f"[{r['ci_truth'][0]:+.3f}, {r['ci_truth'][1]:+.3f}] | {r['p_truth']:.3g} | {r['p_truth_holm']:.3g} | "
                     f"{r['min_detectable_truth']:.3f} | {r['beta_len']:+.4f} [{r['ci_len'][0]:+.4f}, "
                     f"{r['ci_len'][1]:+.4f}] | {r['n_questions']} |")
    return lines
