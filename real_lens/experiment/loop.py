"""The main job's fold loop: folds × scorers × K × dose on a task → cells, then the outputs.

For each fold: collect the head bank, score every module with every method on the fold's
**train** questions (train+val when val has nothing to choose), and steer the top-K modules at
each dose (:mod:`.config`). K (and α) are chosen per method, fold and dose on the fold's **val**
questions by the task's selection metric; the task's metrics, CE and KL come from the fold's
**test** questions, which never enter fitting or selection. ``random`` is a null, not one draw:
``null_draws`` seeded random head sets per fold, each steered at the K and dose a method chose.
Every cell is cached in the run directory (:mod:`.store`); the statistics (:mod:`.stats`) and
summary.md (:mod:`.report`) are computed from the pooled cells at the end.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..activations import collect_activations
from ..evaluation.dose import CALIBRATION
from ..evaluation.suite import eval_items
from ..io import atomic_write, notice, read_json, write_json
from ..locks import output_lock
from ..scoring import ModuleScores
from ..steering import build_steering
from ..threads import state_threads
from .config import (
    Dose,
    ExperimentConfig,
    arm_name,
    dose_groups,
    fit_parts,
    val_selects,
)
from .report import ENOUGH_TEST_QUESTIONS, draw_frontier, render_summary
from .setup import (
    LENGTH_ONLY,
    Setup,
    evaluate_cell,
    length_only_cell,
    prepare,
    result_row,
)
from .stats import (
    Arm,
    Outcome,
    calibration_summary,
    fold_stability,
    frontier_data,
    mean_arm,
    null_bands,
    null_comparisons,
    null_references,
    paired_tests,
    summarise,
)
from .store import (
    Timer,
    cached_cell,
    cached_scores,
    read_rows,
    record_timing,
    start_run_dir,
    write_rows,
)

logger = logging.getLogger(__name__)


def run_experiment(cfg: ExperimentConfig, out_dir, *, progress: bool = True) -> Path:
    """Run (or resume) the experiment; returns ``out_dir`` holding results.csv, summary.md, figures.

    The run directory is locked for the whole run: a second run into it fails at once with one line."""
    with output_lock(out_dir, wait=False):
        return _run(cfg, out_dir, progress=progress)


@dataclass
class FoldLoop:
    """The state of one run: its settings, cached cells, and everything the summary is written from."""

    cfg: ExperimentConfig
    setup: Setup
    out: Path
    timer: Timer
    progress: bool
    outcome: Outcome  # the pooled arms, what val chose, the null draws: what the statistics read
    rows: list[dict] = field(default_factory=list)
    scores: dict[int, list[ModuleScores]] = field(default_factory=dict)
    bank_sizes: dict[int, int] = field(default_factory=dict)
    calibrations: dict[tuple, dict] = field(default_factory=dict)  # every α calibration this run used
    alphas: dict[tuple, tuple[float, float]] = field(default_factory=dict)  # (fold, method, K, draw) -> (KL, α)
    ties: list[dict] = field(default_factory=list)  # every top K that equal scores decided (ModuleScores.ties_at)
    heldout: dict[str, dict[str, dict]] = field(default_factory=dict)  # method -> fold -> what its AUC rests on

    def cell(self, fold: int, **key):
        return cached_cell(self.out, self.cfg, fold, key)

    def arm(self, method: str, group: str = "") -> Arm:
        return self.outcome.arm(method, group)

    def row(self, fold, method, split, k, alpha, result, **extra) -> None:
        extra = {"dose": "", "draw": "", "target_kl": "", "calibration_kl": "", **extra}
        self.rows.append(result_row(self.setup.evaluation, fold, method, split, k, alpha, result, **extra))

    # ------------------------------------------------------------------ steered cells
    def alpha_for(self, fold: int, method: str, k: int, dose: Dose, unit, draw=None) -> tuple[float, dict | None]:
        """The α of ``dose`` for the unit steering ``unit``: the dose's own, or calibrated once and cached."""
        if dose.kind == "alpha":
            return dose.value, None
        from ..evaluation.dose import calibrate_alpha

        key = dict(method=method, split="calibration", k=k, dose=dose.label, **({} if draw is None else {"draw": draw}))
        # Start from the α this steering needed for another target, scaled by KL ∝ α² (saves bracket steps).
        known = self.alphas.get((fold, method, k, draw))
        start = None if known is None else min(max(known[1] * math.sqrt(dose.value / known[0]),
                                                    CALIBRATION["alpha_min"]), CALIBRATION["alpha_max"])
        t = time.perf_counter()
        calibration = self.cell(fold, **key)(lambda: dataclasses.asdict(calibrate_alpha(
            self.setup.model, unit, self.setup.calibration, dose.value, reference=self.setup.kl_reference(),
            max_tokens=self.cfg.side_effect_tokens, alpha_start=start, **CALIBRATION)))
        self.timer.add("calibrate α", t)
        if calibration["reached"]:
            self.alphas[(fold, method, k, draw)] = (dose.value, calibration["alpha"])
        self.calibrations[(fold, method, k, dose.label, draw)] = calibration  # val and test share it
        if not calibration["reached"]:
            logger.info("fold %d %s K %d%s: KL target %g not reached (%s); steered at the closest point, α %.3g "
                        "(calibration KL %.3g)", fold, method, k, "" if draw is None else f" draw {draw}", dose.value,
                        calibration["reason"], calibration["alpha"], calibration["kl"])
        return calibration["alpha"], calibration

    def steered(self, fold: int, method: str, split: str, k: int, dose: Dose, unit, items, draw=None) -> dict:
        """The task's metrics (and, on test, held-out CE/KL) of ``unit`` steered at ``dose``; records α."""
        alpha, calibration = self.alpha_for(fold, method, k, dose, unit, draw)
        key = dict(method=method, split=split, k=k, dose=dose.label, **({} if draw is None else {"draw": draw}))

        def compute():
            result = evaluate_cell(self.setup, items, unit.with_alpha(alpha), self.cfg, side_effects=split == "test",
                                   progress=self.progress)
            return {**result, "alpha": alpha, "calibration_kl": None if calibration is None else calibration["kl"]}

        t = time.perf_counter()
        result = self.cell(fold, **key)(compute)
        self.timer.add(f"evaluate ({split}{', null' if draw is not None else ''})", t)
        extra = {"dose": dose.label, "draw": "" if draw is None else draw,
                 "target_kl": dose.value if dose.kind == "kl" else "",
                 "calibration_kl": "" if result["calibration_kl"] is None else result["calibration_kl"]}
        self.row(fold, method, split, k, alpha, result, **extra)
        return result

    # ------------------------------------------------------------------ one fold
    def run_fold(self, fold_index: int, full_bank) -> None:
        cfg, setup, evaluation = self.cfg, self.setup, self.setup.evaluation
        fold = setup.task.folds[fold_index]
        fitted_on = set().union(*(getattr(fold, part) for part in fit_parts(cfg)))
        bank = full_bank.select(fitted_on)
        self.bank_sizes[fold_index] = len(bank.examples)
        selects = val_selects(cfg)
        val_items = eval_items(evaluation, setup.task, fold.val, cfg.n_val_questions, cfg.seed)
        test_items = eval_items(evaluation, setup.task, fold.test, cfg.n_test_questions, cfg.seed)
        logger.info("fold %d: %d %s examples fit the scores and directions; %d val and %d test questions evaluate",
                    fold_index, len(bank.examples), "+".join(fit_parts(cfg)),
                    len({evaluation.group_of(i) for i in val_items}), len({evaluation.group_of(i) for i in test_items}))

        t = time.perf_counter()
        base_test = self.cell(fold_index, method="unsteered", split="test", k=0, alpha=0.0)(
            lambda: evaluate_cell(setup, test_items, None, cfg, side_effects=True, progress=self.progress))
        self.row(fold_index, "unsteered", "test", 0, 0.0, base_test)
        if selects:
            base_val = self.cell(fold_index, method="unsteered", split="val", k=0, alpha=0.0)(
                lambda: evaluate_cell(setup, val_items, None, cfg, progress=self.progress))
            self.row(fold_index, "unsteered", "val", 0, 0.0, base_val)
        self.timer.add("evaluate (unsteered)", t)
        self.arm("unsteered").add(fold_index, base_test)
        if evaluation.kind == "mc":  # the content-blind reference on the same test questions
            reference = length_only_cell(setup, val_items, test_items)
            self.row(fold_index, LENGTH_ONLY, "test", 0, 0.0, reference)
            self.arm(LENGTH_ONLY).add(fold_index, reference)

        self.scores[fold_index] = []
        for method in cfg.methods:
            if method == "random":  # the random null, below; its draw 0 is saved with the scores
                self.scores[fold_index].append(cached_scores(self.out, cfg, fold_index, method, bank, setup.model))
                continue
            t = time.perf_counter()
            logger.info("fold %d %s: scoring %d modules", fold_index, method, bank.flat().shape[1])
            scores = cached_scores(self.out, cfg, fold_index, method, bank, setup.model, progress=self.progress)
            self.timer.add(f"score: {method}", t)
            self.scores[fold_index].append(scores)
            self.note_small_sample(fold_index, method, scores)
            units = {k: build_steering(bank, scores.select(min(k, scores.n_modules)), alpha=1.0) for k in cfg.k_grid}
            for group, doses in dose_groups(cfg):
                best = self.choose(fold_index, method, group, doses, units, val_items)
                k, dose = best
                result = self.steered(fold_index, method, "test", k, dose, units[k], test_items)
                logger.info("fold %d %s%s: %s K %d at α %.3g; test %s", fold_index, method,
                            f" ({group})" if group else "", "chose" if selects else "fixed", k, result["alpha"],
                            ", ".join(f"{m} {result[m]:.4f}" for m in (*evaluation.metrics, "ce", "kl") if m in result))
                self.outcome.chosen[(fold_index, method, group)] = best
                self.arm(method, group).add(fold_index, result, k=k, alpha=result["alpha"])
        if "random" in cfg.methods:
            self.run_null(fold_index, bank, test_items)

    def note_small_sample(self, fold: int, method: str, scores: ModuleScores) -> None:
        """Record (and warn of) every top K that ties decided, and what a held-out AUC rests on."""
        for k in self.cfg.k_grid:
            ties = scores.ties_at(min(k, scores.n_modules))
            if ties["decided_by_ties"]:
                self.ties.append({"fold": fold, "method": method, **ties})
                logger.warning("fold %d %s: its top %d is decided by ties: %d modules share the score %.4g and only %d "
                               "fit, chosen by %s; a larger task separates them", fold, method, ties["k"],
                               ties["n_tied"], ties["score"], ties["n_inside"], ties["broken_by"])
        if isinstance(scores.meta.get("heldout"), dict):
            self.heldout.setdefault(method, {})[str(fold)] = scores.meta["heldout"]

    def choose(self, fold: int, method: str, group: str, doses, units, val_items) -> tuple[int, Dose]:
        """The (K, dose) of ``group`` with the best val metric; with one candidate, no val cell is evaluated."""
        candidates = [(k, dose) for k in self.cfg.k_grid for dose in doses]
        if len(candidates) == 1:
            return candidates[0]
        metric = self.setup.select_metric
        val = {}
        for k, dose in candidates:
            val[(k, dose)] = self.steered(fold, method, "val", k, dose, units[k], val_items)[metric]
            logger.info("fold %d %s: val K %d %s -> %s %.4f", fold, method, k, dose.label, metric, val[(k, dose)])
        # Ties go to the smaller K, then the smaller dose: the least intervention that does as well.
        return max(candidates, key=lambda c: (val[c], -c[0], -c[1].value))

    def run_null(self, fold: int, bank, test_items) -> None:
        """``null_draws`` random head sets, each steered at every (K, dose) a method chose in this fold
        (every candidate when no other method ran), on the test questions."""
        from ..null import random_null_scores

        points = {(k, dose) for (f, _, _), (k, dose) in self.outcome.chosen.items() if f == fold}
        if not points:
            points = {(k, dose) for k in self.cfg.k_grid for _, doses in dose_groups(self.cfg) for dose in doses}
        draws = random_null_scores(bank.module_shape, n_draws=self.cfg.null_draws, fold=fold, seed=self.cfg.seed)
        logger.info("fold %d: the random null, %d draws at %d (K, dose) point(s)", fold, len(draws), len(points))
        for k, dose in sorted(points, key=lambda p: (p[0], p[1].kind, p[1].value)):
            results = []
            for draw, scores in enumerate(draws):
                unit = build_steering(bank, scores.select(min(k, scores.n_modules)), alpha=1.0)
                results.append(self.steered(fold, "random", "test", k, dose, unit, test_items, draw=draw))
            self.outcome.null[(fold, k, dose.label)] = results


def _run(cfg: ExperimentConfig, out_dir, *, progress: bool = True) -> Path:
    out = start_run_dir(out_dir, cfg)
    timer, started = Timer(), time.perf_counter()
    try:
        run = _compute(cfg, out, timer, progress=progress, started=started)
    except BaseException:  # an error or an interrupt: this session's time still counts when the run resumes
        timer.seconds["total"] = time.perf_counter() - started
        record_timing(out, timer)
        raise
    timer.seconds["total"] = time.perf_counter() - started
    missed = [c for c in run.calibrations.values() if not c["reached"]]
    if missed:
        notice(f"{len(missed)} of {len(run.calibrations)} α calibrations did not reach their KL target (the largest "
               f"miss: KL {max(missed, key=lambda c: abs(c['kl'] / c['target_kl'] - 1))['kl']:.3g}); those cells are "
               "steered at the closest point and counted in summary.md")
    write_outputs(run)
    logger.info("wrote %s (%.0f s in all)", out, timer.seconds["total"])
    return out


def _compute(cfg: ExperimentConfig, out: Path, timer: Timer, *, progress: bool, started: float) -> "FoldLoop":
    """Every fold's cells; the session's timing is recorded after each fold (a later stop still counts it)."""
    t = time.perf_counter()
    setup = prepare(cfg)
    timer.add("load model + data", t)
    state_threads()  # what set_threads chose (rl.set_threads / --threads), once the model and data loaded
    model, task = setup.model, setup.task
    doses = ", ".join(f"KL {t:g}" for t in cfg.kl_grid) if cfg.kl_grid else f"α {list(cfg.alpha_grid)}"
    logger.info("run %s: %s on %s (%d layers x %d heads), %d questions, folds %s, methods %s, K %s, doses %s",
                out, task.name, cfg.model, model.cfg.n_layers, model.cfg.n_heads, len(task.groups), list(setup.folds),
                ",".join(cfg.methods), list(cfg.k_grid), doses)
    run = FoldLoop(cfg, setup, out, timer, progress, Outcome(cfg, setup.task.name, setup.folds))
    t = time.perf_counter()
    # One bank for the whole task (each fold's fitting part is a part of it), collected or loaded once.
    full_bank = collect_activations(model, task, site=cfg.site, readout=cfg.readout,
                                    batch_size=cfg.batch_size, progress=progress)
    timer.add("collect activations", t)
    logger.info("activations %s at %s (%.0f s)", list(full_bank.acts.shape), full_bank.meta["hook"],
                time.perf_counter() - t)
    for fold_index in setup.folds:
        run.run_fold(fold_index, full_bank)
        timer.seconds["total"] = time.perf_counter() - started
        record_timing(out, timer)
    return run


def write_outputs(run: FoldLoop) -> None:
    """results.csv, the heatmaps, summary.json (every statistic), timing.json, and summary.md rendered from them."""
    from ..plotting import plot_metric_vs_k, plot_score_heatmaps

    cfg, setup, out, outcome = run.cfg, run.setup, run.out, run.outcome
    metric = setup.select_metric
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
    frontier = frontier_data(outcome, summary, metric) if cfg.kl_grid and setup.texts else None
    if frontier and (frontier["points"] or frontier["null"]):
        draw_frontier(frontier, out / f"{metric}_vs_kl.png")
    calibration = calibration_summary(list(run.calibrations.values()))
    saved = {"task": setup.task.name, "select_metric": metric, "calibration": calibration,
             "metrics": list(setup.evaluation.metrics), "fitted_on": "+".join(fit_parts(cfg)),
             "doses": [g for g, _ in dose_groups(cfg)], "methods": summary,
             "fold_stability": stability, "paired": paired, "null": bands, "frontier": frontier,
             "run": {"folds": list(setup.folds), "evaluation_kind": setup.evaluation.kind, "order": list(summary),
                     "n_report_texts": len(setup.texts), "n_calibration_texts": len(setup.calibration),
                     "bank_sizes": {str(f): n for f, n in run.bank_sizes.items()}}}
    n_test = [r["n_questions"] for r in run.rows if r["split"] == "test" and r["method"] == "unsteered"]
    saved["small_sample"] = {"ties": run.ties, "heldout": run.heldout,
                             "min_test_questions": min(n_test) if n_test else None,
                             "enough_test_questions": ENOUGH_TEST_QUESTIONS}
    write_json(out / "summary.json", saved)
    sessions = record_timing(out, run.timer)
    text = render_summary(cfg, read_json(out / "summary.json"), read_rows(out / "results.csv"), sessions)
    atomic_write(out / "summary.md", lambda tmp: Path(tmp).write_text(text))
