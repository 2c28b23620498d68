"""What a finished run writes: results.csv, the heatmaps, summary.json (every statistic), timing.json, and
summary.md rendered from them (:mod:`.report`)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from ..io import atomic_write, read_json, write_json
from .config import arm_name, dose_groups, fit_parts
from .report import ENOUGH_TEST_QUESTIONS, draw_frontier, render_summary
from .stats import (
    calibration_summary, fold_stability, frontier_data, mean_arm, null_bands, null_comparisons, null_references,
    paired_tests, summarise, truth_length_tests,
)
from .store import read_rows, record_timing, write_rows

if TYPE_CHECKING:
    from .loop import FoldLoop

def write_outputs(run: "FoldLoop", *, ranks: list[dict] | None = None) -> None:
    """results.csv, the heatmaps, summary.json (every statistic), timing.json, and summary.md rendered from them;
    ``ranks``: under torchrun, each rank's busy time (into timing.json and summary.md)."""
    from ..plotting import plot_metric_vs_k, plot_score_heatmaps

    cfg, setup, out, outcome = run.cfg, run.setup, run.out, run.outcome
    metric = setup.select_metric
    run.rows = [r for r in run.rows if r["method"] not in outcome.unscorable]
    write_rows(out / "results.csv", run.rows)
    for fold, scores in run.scores.items():
        if scores:
            plot_score_heatmaps(scores, out / f"heatmaps_fold{fold}.png")
    if any(r["split"] == "val" and r["method"] != "unsteered" for r in run.rows):
        plot_metric_vs_k(run.rows, out / f"{metric}_vs_k.png", metric=metric, split="val", task=setup.task.name)

    arms = {arm_name(m, g): arm for (m, g), arm in outcome.arms.items()}
    nulls = null_comparisons(outcome)
    for group, reference in null_references(outcome).items():
        arms[arm_name("random", group)] = mean_arm(reference, "random", group)
    summary = summarise(arms, setup.evaluation.metrics, n_boot=cfg.n_boot, seed=cfg.seed)
    stability = fold_stability(run.scores, k=max(cfg.k_grid))
    paired = paired_tests(outcome, nulls, metric, n_boot=cfg.n_boot, seed=cfg.seed)
    bands = null_bands(outcome, nulls, metric)
    truth = truth_length_tests(outcome, nulls, n_boot=cfg.n_boot, seed=cfg.seed)
    frontier = frontier_data(outcome, summary, metric) if cfg.kl_grid and setup.texts else None
    if frontier and (frontier["points"] or frontier["null"]):
        draw_frontier(frontier, out / f"{metric}_vs_kl.png")
    calibration = calibration_summary(list(run.calibrations.values()))
    saved = {"task": setup.task.name, "select_metric": metric, "calibration": calibration,
             "metrics": list(setup.evaluation.metrics), "fitted_on": "+".join(fit_parts(cfg)),
             "doses": [g for g, _ in dose_groups(cfg)], "methods": summary,
             "fold_stability": stability, "paired": paired, "null": bands, "frontier": frontier,
             "truth_length": truth, "unscorable": outcome.unscorable,
             "run": {"folds": list(setup.folds), "evaluation_kind": setup.evaluation.kind, "order": list(summary),
                     "n_report_texts": len(setup.texts), "n_calibration_texts": len(setup.calibration),
                     "bank_sizes": {str(f): n for f, n in run.bank_sizes.items()}}}
    n_test = [r["n_questions"] for r in run.rows if r["split"] == "test" and r["method"] == "unsteered"]
    saved["small_sample"] = {"ties": run.ties, "heldout": run.heldout,
                             "min_test_questions": min(n_test) if n_test else None,
                             "enough_test_questions": ENOUGH_TEST_QUESTIONS}
    write_json(out / "summary.json", saved)
    sessions = record_timing(out, run.timer, ranks=ranks)
    text = render_summary(cfg, read_json(out / "summary.json"), read_rows(out / "results.csv"), sessions, ranks=ranks)
    atomic_write(out / "summary.md", lambda tmp: Path(tmp).write_text(text))
