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

import contextlib
import dataclasses
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..activations import collect_activations
from ..errors import ScoringError
from ..evaluation.dose import CALIBRATION
from ..evaluation.suite import eval_items
from ..io import notice
from ..locks import output_lock
from ..scoring import ModuleScores
from ..steering import build_steering
from ..tasks.truthfulqa import tuning_examples
from ..threads import state_threads
from .config import (
    Dose,
    ExperimentConfig,
    dose_groups,
    fit_groups,
    fit_parts,
    val_selects,
)
from .outputs import write_outputs
from .shard import (
    compute_cells,
    CALIBRATE,
    CALIBRATION_EVALUATIONS,
    Deferred,
    Plan,
    deferrable,
    items_cost,
    plan_cell,
    texts_cost,
)
from .setup import (
    LENGTH_ONLY,
    Setup,
    cell_is_current,
    evaluate_cell,
    length_only_cell,
    prepare,
    result_row,
)
from .stats import (
    Arm,
    Outcome,
)
from .store import (
    Timer,
    cached_scores,
    record_timing,
    start_run_dir,
)

logger = logging.getLogger(__name__)


def run_experiment(cfg: ExperimentConfig, out_dir, *, progress: bool = True, device: str | None = None) -> Path:
    """Run (or resume) the experiment; returns ``out_dir`` holding results.csv, summary.md, figures.

    The run directory is locked for the whole run: a second run into it fails at once with one line.
    Under ``torchrun`` (an initialised process group) the ranks split the cells (:mod:`.shard`), each
    on its own ``device`` (default ``cfg.device``), and rank 0 writes the outputs; the lock is rank 0's."""
    from ..distributed import current_ranks

    ranks = current_ranks()
    with output_lock(out_dir, wait=False) if ranks.is_main else contextlib.nullcontext():
        return _run(cfg, out_dir, progress=progress, device=device, ranks=ranks)


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
    tuning_bank: Any = None  # cfg.sigma_bank "tuning": the whole task's tuning bank (σ of every steering)
    sigma_banks: dict[int, Any] = field(default_factory=dict)  # fold -> its part of the tuning bank
    plan: Plan | None = None  # planning mode under torchrun (.shard): missing cells are recorded, not computed
    undecided: set = field(default_factory=set)  # planning: folds where some method's choice waits for val cells
    ties: list[dict] = field(default_factory=list)  # every top K that equal scores decided (ModuleScores.ties_at)
    heldout: dict[str, dict[str, dict]] = field(default_factory=dict)  # method -> fold -> what its AUC rests on

    def cell(self, fold: int, *, step: str, cost: float, ready: bool = True, **key):
        return plan_cell(self.plan, self.out, self.cfg, fold, key, step=step, cost=cost, ready=ready)

    def evaluation_cost(self, items, side_effects: bool) -> float:
        """A cell's expected cost (:mod:`.shard`): its items, and its CE/KL paragraphs on test."""
        texts = texts_cost(self.setup.texts, self.cfg.side_effect_tokens) if side_effects else 0.0
        return items_cost(items) + texts

    def fold_bank(self, fold_index: int, full_bank):
        """The part of the task's bank that fits this fold's scores and directions."""
        fitted_on = fit_groups(self.cfg, self.setup.task.folds[fold_index])
        if self.tuning_bank is not None:  # σ from the fold's part of the tuning bank (cfg.sigma_bank "tuning")
            self.sigma_banks[fold_index] = self.tuning_bank.select(fitted_on)
        return full_bank.select(fitted_on)

    def current(self, result: dict) -> bool:
        """Whether a cached evaluation cell holds what this version records (else it is recomputed)."""
        return cell_is_current(self.setup.evaluation, result)

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
        chain = (fold, method, k, draw)  # a missing calibration in it: the next one's start is not known yet
        ready = self.plan is None or chain not in self.plan.blocked
        # Start from the α this steering needed for another target, scaled by KL ∝ α² (saves bracket steps).
        known = self.alphas.get((fold, method, k, draw))
        start = None if known is None else min(max(known[1] * math.sqrt(dose.value / known[0]),
                                                    CALIBRATION["alpha_min"]), CALIBRATION["alpha_max"])
        t = time.perf_counter()
        cost = CALIBRATION_EVALUATIONS * texts_cost(self.setup.calibration, self.cfg.side_effect_tokens)
        try:
            calibration = self.cell(fold, step=CALIBRATE, cost=cost, ready=ready, **key)(
                lambda: dataclasses.asdict(calibrate_alpha(
                    self.setup.model, unit, self.setup.calibration, dose.value, reference=self.setup.kl_reference(),
                    max_tokens=self.cfg.side_effect_tokens, alpha_start=start, **CALIBRATION)))
        except Deferred:
            self.plan.blocked.add(chain)  # the chain's next target starts from this α
            raise
        self.timer.add(CALIBRATE, t)
        if calibration["reached"]:
            self.alphas[(fold, method, k, draw)] = (dose.value, calibration["alpha"])
            if self.plan is not None:  # the chain's next start is known again
                self.plan.blocked.discard(chain)
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

        t, step = time.perf_counter(), f"evaluate ({split}{', null' if draw is not None else ''})"
        result = self.cell(fold, step=step, cost=self.evaluation_cost(items, split == "test"), **key)(compute, current=self.current)
        self.timer.add(step, t)
        extra = {"dose": dose.label, "draw": "" if draw is None else draw,
                 "target_kl": dose.value if dose.kind == "kl" else "",
                 "calibration_kl": "" if result["calibration_kl"] is None else result["calibration_kl"]}
        self.row(fold, method, split, k, alpha, result, **extra)
        return result

    # ------------------------------------------------------------------ one fold
    def run_fold(self, fold_index: int, full_bank) -> None:
        cfg, setup, evaluation = self.cfg, self.setup, self.setup.evaluation
        fold = setup.task.folds[fold_index]
        bank = self.fold_bank(fold_index, full_bank)
        self.bank_sizes[fold_index] = len(bank.examples)
        selects = val_selects(cfg)
        val_items = eval_items(evaluation, setup.task, fold.val, cfg.n_val_questions, cfg.seed)
        test_items = eval_items(evaluation, setup.task, fold.test, cfg.n_test_questions, cfg.seed)
        logger.info("fold %d: %d %s examples fit the scores and directions; %d val and %d test questions evaluate",
                    fold_index, len(bank.examples), "+".join(fit_parts(cfg)),
                    len({evaluation.group_of(i) for i in val_items}), len({evaluation.group_of(i) for i in test_items}))

        t, step = time.perf_counter(), "evaluate (unsteered)"
        with deferrable(self.plan):
            base_test = self.cell(fold_index, step=step, cost=self.evaluation_cost(test_items, True), method="unsteered",
                                  split="test", k=0, alpha=0.0)(
                lambda: evaluate_cell(setup, test_items, None, cfg, side_effects=True, progress=self.progress),
                current=self.current)
            self.row(fold_index, "unsteered", "test", 0, 0.0, base_test)
        if selects:
            with deferrable(self.plan):
                base_val = self.cell(fold_index, step=step, cost=self.evaluation_cost(val_items, False),
                                     method="unsteered", split="val", k=0, alpha=0.0)(
                    lambda: evaluate_cell(setup, val_items, None, cfg, progress=self.progress), current=self.current)
                self.row(fold_index, "unsteered", "val", 0, 0.0, base_val)
        self.timer.add(step, t)
        if self.plan is None:
            self.arm("unsteered").add(fold_index, base_test)
        if evaluation.kind == "mc" and self.plan is None:  # the content-blind reference on the same test questions
            reference = length_only_cell(setup, val_items, test_items)
            self.row(fold_index, LENGTH_ONLY, "test", 0, 0.0, reference)
            self.arm(LENGTH_ONLY).add(fold_index, reference)

        self.scores[fold_index] = []
        for method in cfg.methods:
            if method == "random":  # the random null, below; its draw 0 is saved with the scores
                self.scores[fold_index].append(cached_scores(self.out, cfg, fold_index, method, bank, setup.model))
                continue
            if method in self.outcome.unscorable:
                continue
            t = time.perf_counter()
            logger.info("fold %d %s: scoring %d modules", fold_index, method, bank.flat().shape[1])
            try:
                scores = cached_scores(self.out, cfg, fold_index, method, bank, setup.model, progress=self.progress)
            except ScoringError as exc:  # e.g. contrast pairs whose gaps restore nothing: this task cannot score it
                self.outcome.drop(method, f"fold {fold_index}: {exc}")
                notice(f"{method} cannot score this task (fold {fold_index}: {exc}); it is left out of every table, "
                       "and summary.md says why")
                continue
            finally:
                self.timer.add(f"score: {method}", t)
            self.scores[fold_index].append(scores)
            self.note_small_sample(fold_index, method, scores)
            units = {k: build_steering(bank, scores.select(min(k, scores.n_modules)), alpha=1.0,
                                       sigma_bank=self.sigma_banks.get(fold_index)) for k in cfg.k_grid}
            for group, doses in dose_groups(cfg):
                try:
                    best = self.choose(fold_index, method, group, doses, units, val_items)
                except Deferred:  # planning: val cells missing, so neither the test cell nor the null is known yet
                    self.undecided.add(fold_index)
                    continue
                k, dose = best
                self.outcome.chosen[(fold_index, method, group)] = best
                with deferrable(self.plan):
                    result = self.steered(fold_index, method, "test", k, dose, units[k], test_items)
                    logger.info("fold %d %s%s: %s K %d at α %.3g; test %s", fold_index, method,
                                f" ({group})" if group else "", "chose" if selects else "fixed", k, result["alpha"],
                                ", ".join(f"{m} {result[m]:.4f}" for m in (*evaluation.metrics, "ce", "kl") if m in result))
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
            with deferrable(self.plan):
                val[(k, dose)] = self.steered(fold, method, "val", k, dose, units[k], val_items)[metric]
                logger.info("fold %d %s: val K %d %s -> %s %.4f", fold, method, k, dose.label, metric, val[(k, dose)])
        if len(val) < len(candidates):
            raise Deferred(f"fold {fold} {method}: val cells")
        # Ties go to the smaller K, then the smaller dose: the least intervention that does as well.
        return max(candidates, key=lambda c: (val[c], -c[0], -c[1].value))

    def run_null(self, fold: int, bank, test_items) -> None:
        """``null_draws`` random head sets, each steered at every (K, dose) a method chose in this fold
        (every candidate when no other method ran), on the test questions."""
        from ..null import random_null_scores

        if fold in self.undecided:  # planning: some method has not chosen its (K, dose) yet
            return
        points = {(k, dose) for (f, _, _), (k, dose) in self.outcome.chosen.items() if f == fold}
        if not points:
            points = {(k, dose) for k in self.cfg.k_grid for _, doses in dose_groups(self.cfg) for dose in doses}
        draws = random_null_scores(bank.module_shape, n_draws=self.cfg.null_draws, fold=fold, seed=self.cfg.seed)
        logger.info("fold %d: the random null, %d draws at %d (K, dose) point(s)", fold, len(draws), len(points))
        for k, dose in sorted(points, key=lambda p: (p[0], p[1].kind, p[1].value)):
            results = []
            for draw, scores in enumerate(draws):
                unit = build_steering(bank, scores.select(min(k, scores.n_modules)), alpha=1.0,
                                      sigma_bank=self.sigma_banks.get(fold))
                with deferrable(self.plan):
                    results.append(self.steered(fold, "random", "test", k, dose, unit, test_items, draw=draw))
            self.outcome.null[(fold, k, dose.label)] = results


def _run(cfg: ExperimentConfig, out_dir, *, progress: bool = True, device: str | None = None, ranks=None) -> Path:
    from ..distributed import Ranks

    ranks = ranks or Ranks()
    out = start_run_dir(out_dir, cfg) if ranks.is_main else Path(out_dir)
    if ranks.is_distributed:
        import torch.distributed as dist

        dist.barrier()  # config.json is written (or the run refused) before any rank computes
    progress = progress and ranks.is_main
    timer, started = Timer(), time.perf_counter()
    try:
        run, shares = _compute(cfg, out, timer, progress=progress, started=started, device=device, ranks=ranks)
    except BaseException:  # an error or an interrupt: this session's time still counts when the run resumes
        timer.seconds["total"] = time.perf_counter() - started
        record_timing(out, timer)
        raise
    if run is None:  # a rank other than 0 under torchrun: its cells are written, rank 0 writes the outputs
        return out
    timer.seconds["total"] = time.perf_counter() - started
    missed = [c for c in run.calibrations.values() if not c["reached"]]
    if missed:
        notice(f"{len(missed)} of {len(run.calibrations)} α calibrations did not reach their KL target (the largest "
               f"miss: KL {max(missed, key=lambda c: abs(c['kl'] / c['target_kl'] - 1))['kl']:.3g}); those cells are "
               "steered at the closest point and counted in summary.md")
    write_outputs(run, ranks=shares)
    logger.info("wrote %s (%.0f s in all)", out, timer.seconds["total"])
    return out


def _compute(cfg: ExperimentConfig, out: Path, timer: Timer, *, progress: bool, started: float, device, ranks):
    """``(run, shares)``: every fold's cells (under torchrun, split over the ranks first: ``shares`` is each
    rank's busy time; ``run`` is None on ranks other than 0); the session's timing is recorded after each
    fold, so a later stop still counts it."""
    t = time.perf_counter()
    setup = prepare(cfg, device=device)
    timer.add("load model + data", t)
    state_threads()  # what set_threads chose (rl.set_threads / --threads), once the model and data loaded
    model, task = setup.model, setup.task
    doses = ", ".join(f"KL {t:g}" for t in cfg.kl_grid) if cfg.kl_grid else f"α {list(cfg.alpha_grid)}"
    (logger.info if ranks.is_main else logger.debug)(
        "run %s: %s on %s (%d layers x %d heads), %d questions, folds %s, methods %s, K %s, doses %s%s", out, task.name, cfg.model, model.cfg.n_layers, model.cfg.n_heads, len(task.groups), list(setup.folds),
                ",".join(cfg.methods), list(cfg.k_grid), doses,
                f"; {ranks.world_size} ranks split the cells" if ranks.is_distributed else "")
    run = FoldLoop(cfg, setup, out, timer, progress, Outcome(cfg, setup.task.name, setup.folds))
    t = time.perf_counter()
    # One bank for the whole task (each fold's fitting part is a part of it), collected or loaded once.
    full_bank = collect_activations(model, task, site=cfg.site, readout=cfg.readout,
                                    batch_size=cfg.batch_size, progress=progress, shard=ranks.is_distributed)
    timer.add("collect activations", t)
    (logger.info if ranks.is_main else logger.debug)("activations %s at %s (%.0f s)", list(full_bank.acts.shape),
                                                     full_bank.meta["hook"], time.perf_counter() - t)
    if cfg.sigma_bank == "tuning":  # the release's σ: an unlabelled `Q: {q} A: {a} Q: {other q}` bank
        t = time.perf_counter()
        run.tuning_bank = collect_activations(model, tuning_examples(task.examples), site=cfg.site, readout=cfg.readout,
                                              batch_size=cfg.batch_size, progress=progress, shard=ranks.is_distributed)
        timer.add("collect activations (tuning bank)", t)
    shares = None
    if ranks.is_distributed:
        shares = compute_cells(run, full_bank, ranks, device=device)
        if not ranks.is_main:
            return None, shares
    for fold_index in setup.folds:  # under torchrun: every cell is read from its file
        run.run_fold(fold_index, full_bank)
        timer.seconds["total"] = time.perf_counter() - started
        record_timing(out, timer)
    return run, shares
