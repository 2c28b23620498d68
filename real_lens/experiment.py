"""The main job: folds × scorers × K × dose on a task → results table, paired tests, null band, figures.

For each fold: collect the head bank, score every module with every method on the fold's
**train** questions (train+val when val has nothing to choose), and steer the top-K modules at
each *dose*. A dose is either a target KL(unsteered ‖ steered) per token (``kl_grid``, the
default: α is calibrated per method, fold and K on WikiText-2 paragraphs held apart from the ones
that report CE/KL, so every method is compared at the same side effect) or a fixed α
(``kl_grid=None``: the paper's α grid, α chosen on val). K (and α) are chosen per method, fold and
dose on the fold's **val** questions by the task's selection metric (MC2 for TruthfulQA, see
:mod:`real_lens.evaluation.suite`); the task's metrics, CE and KL come from the fold's **test**
questions, which never enter fitting or selection.

``random`` is a null, not one draw: ``null_draws`` seeded random head sets per fold (seeds differ
across folds and draws, :mod:`real_lens.null`), each steered at the K and dose a method chose.
The summary gives every method against unsteered, the content-blind length-only reference, its
matched random null and REAL, per test item: paired bootstrap CIs, sign-flip p-values (Holm
across the table) and the smallest difference the design detects; the null's 5–95 % band and each
method's percentile in it; and the frontier figure (metric against held-out KL).

Everything is cached in the run directory (scores per fold × method, one JSON per evaluated
cell and per calibration), so an interrupted run resumes where it stopped and a rerun reuses what is done.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from . import __version__
from .activations import collect_activations
from .errors import ArtifactError, RealLensError, ScoringError
from .evaluation import bootstrap_ci, evaluate_side_effects, load_wikitext_sample
from .evaluation.suite import TaskEvaluation, evaluation_for
from .io import atomic_write, notice, read_json, read_sealed_json, write_json, write_sealed_json
from .locks import output_lock
from .models import DEFAULT_MODEL, load_model
from .provenance import with_source
from .scoring import ModuleScores, score_modules
from .steering import build_steering
from .tasks import Task, load_task
from .tasks.truthfulqa import DEFAULT_MC_PROMPT, MC_PROMPT_STYLES

METHODS = ("real", "real-release", "iti", "patching", "attribution", "random")
logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ExperimentConfig:
    model: str = DEFAULT_MODEL
    task: str = "truthfulqa"
    methods: tuple[str, ...] = METHODS
    folds: tuple[int, ...] | None = None  # None = every fold of the task (2 for TruthfulQA, 1 for CAA)
    k_grid: tuple[int, ...] = (16,)  # top-K heads; more than one = K chosen on val (fitting then uses train only)
    # Doses: KL(unsteered||steered) targets in nats per token, every method at the same side effect
    # (README: why 0.1 and 0.3); none = the alpha grid instead (the paper's protocol).
    kl_grid: tuple[float, ...] | None = (0.1, 0.3)  # KL targets, nats per token; none = use the alpha grid
    alpha_grid: tuple[float, ...] = (5.0, 15.0)  # fixed alphas chosen on val; only when kl_grid is none
    null_draws: int = 3  # random head sets per fold (the random null), each at the K and dose a method chose
    calibration_texts: int = 8  # WikiText-2 paragraphs that calibrate alpha (disjoint from the CE/KL ones)
    select_metric: str | None = None  # None = the task's own (MC2 for TruthfulQA); see evaluation.suite
    mc_prompt: str = DEFAULT_MC_PROMPT  # TruthfulQA MC scoring prompt (METHOD.md §6a); banks stay "Q: {q} A: {a}"
    site: str = "head_z"
    readout: str = "last"
    # Defaults sized for the 2-core CPU (≤45 min; README: where the time goes): "larger" and "full" are bigger.
    questions_per_part: int | None = 80  # at most N questions per fold part (train/val/test); None = all
    n_val_questions: int | None = 25  # per fold; None = all val questions (a seeded sample otherwise)
    n_test_questions: int | None = 40  # per fold; None = all test questions (a seeded sample otherwise)
    patching_pairs: int = 8  # contrast pairs per fold for activation patching (one forward per pair and head chunk)
    attribution_pairs: int = 64  # contrast pairs per fold for attribution patching (2 forwards + 1 backward per batch)
    pair_demos: int = 3  # demonstrations per contrast pair (scoring.pairs)
    pair_min_gap: float = 0.5  # nats: pairs whose clean-corrupted gap is smaller are dropped (and counted)
    real_epochs: int = 20
    real_prior_epochs: int = 10
    side_effect_texts: int = 20  # 0 = no CE/KL
    side_effect_tokens: int = 128
    n_boot: int = 1000
    batch_size: int = 16
    seed: int = 0
    device: str | None = None
    data_dir: str | None = None

    def __post_init__(self):
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown:
            raise RealLensError(f"unknown method(s) {unknown}; expected some of {list(METHODS)}")
        if not self.k_grid or min(self.k_grid) < 1:
            raise RealLensError(f"k_grid must hold positive integers; got {self.k_grid}")
        if not self.alpha_grid:
            raise RealLensError("alpha_grid must not be empty")
        if not all(math.isfinite(a) for a in self.alpha_grid):
            raise RealLensError(f"alpha_grid must hold finite numbers; got {self.alpha_grid}")
        if self.kl_grid is not None and (not self.kl_grid or not all(0 < t < math.inf for t in self.kl_grid)):
            raise RealLensError(f"kl_grid must hold KL targets > 0 in nats per token (e.g. 0.1,0.3) or be none; "
                                f"got {self.kl_grid}")
        if not 0 <= self.seed < 2**32:
            raise RealLensError(f"expected an integer seed from 0 to {2**32 - 1}; got {self.seed!r}")
        if self.folds is not None and (not self.folds or min(self.folds) < 0):
            raise RealLensError(f"folds must be fold indices (0, 1, ...); got {self.folds}")
        if self.mc_prompt not in MC_PROMPT_STYLES:
            raise RealLensError(f"unknown MC prompt {self.mc_prompt!r}; expected one of {list(MC_PROMPT_STYLES)}")
        # Counts the command line passes straight through (real_lens.configs derives one option per field).
        for name in ("questions_per_part", "n_val_questions", "n_test_questions", "patching_pairs", "attribution_pairs",
                     "pair_demos", "real_epochs",
                     "real_prior_epochs", "side_effect_tokens", "n_boot", "batch_size", "side_effect_texts",
                     "null_draws", "calibration_texts"):
            value, least = getattr(self, name), 0 if name == "side_effect_texts" else 1
            optional = name in ("questions_per_part", "n_val_questions", "n_test_questions")
            if not (value is None and optional) and (isinstance(value, bool) or not isinstance(value, int) or value < least):
                raise RealLensError(f"{name} must be an integer >= {least}{' or None (all)' if optional else ''}; "
                                    f"got {value!r}")


PRESETS: dict[str, dict[str, Any]] = {
    # CI / tests / a smoke run (≤ 3 min per task on the embedded model): a handful of questions (2 test
    # questions per fold: NQ-Swap's long prompts make every generated cell cost ~0.5 s per item on 2 cores),
    # one K and one KL target, two null draws, short training, one pair and one demonstration per pair scorer.
    "quick": dict(questions_per_part=5, n_val_questions=None, n_test_questions=2, k_grid=(2,),
                  kl_grid=(0.3,), alpha_grid=(5.0,), null_draws=2, calibration_texts=4, patching_pairs=1,
                  attribution_pairs=1, pair_demos=1, real_epochs=2, real_prior_epochs=2,
                  pair_min_gap=0.0,  # keeps every pair: the tiny random model's gaps are ~0.05 nats
                  side_effect_texts=4, side_effect_tokens=32, n_boot=100, methods=METHODS),
    # The paper's protocol at full size (for a GPU): K 48 among the grid, α 15, every test question.
    # The default fitting and scoring (its scores are reused when copied into the run), every test question
    # of the default sample (160 per fold) and a 5-draw null: ~100 min on the 2-core CPU.
    "larger": dict(n_test_questions=None, null_draws=5),
    "full": dict(k_grid=(16, 32, 48, 64), kl_grid=(0.03, 0.1, 0.3), alpha_grid=(5.0, 10.0, 15.0, 20.0),
                 null_draws=20, patching_pairs=128, attribution_pairs=256, calibration_texts=32,
                 questions_per_part=None, n_val_questions=None, n_test_questions=None, side_effect_texts=100),
}


def config_for(preset: str | None = None, **overrides) -> ExperimentConfig:
    """A preset's configuration with ``overrides`` (an explicit None sets an optional field to None)."""
    if preset is not None and preset not in PRESETS:
        raise RealLensError(f"unknown preset {preset!r}; expected one of {sorted(PRESETS)}")
    values = {**(PRESETS[preset] if preset else {}), **overrides}
    return ExperimentConfig(**values)


@dataclass
class _Timer:
    seconds: dict[str, float] = field(default_factory=dict)

    def add(self, what: str, start: float) -> None:
        self.seconds[what] = self.seconds.get(what, 0.0) + time.perf_counter() - start


@dataclass
class Setup:
    """What a run needs before scoring: the model, the (sampled) task, its evaluation, side-effect texts."""

    model: Any
    task: Task
    evaluation: TaskEvaluation
    select_metric: str
    folds: tuple[int, ...]
    texts: list[str]  # WikiText-2 paragraphs that report CE and KL
    mc_prompt: str = DEFAULT_MC_PROMPT
    calibration: list[str] = field(default_factory=list)  # other paragraphs, that calibrate α to a KL target
    side_effect_tokens: int = 128
    _kl_reference: Any = None

    def kl_reference(self):
        """The unsteered log-probs on the calibration paragraphs, computed once and shared by every calibration."""
        if self._kl_reference is None:
            from .evaluation.dose import prepare_kl_reference

            self._kl_reference = prepare_kl_reference(self.model, self.calibration, max_tokens=self.side_effect_tokens)
        return self._kl_reference


def prepare(cfg: ExperimentConfig, *, task_name: str | None = None, model=None) -> Setup:
    """The task (``cfg.task`` unless named), checked against ``cfg`` before the model (unless given) is loaded."""
    task, evaluation, metric, folds = prepare_task(cfg, task_name=task_name)
    texts, calibration = side_effect_texts(cfg)
    model = model if model is not None else load_model(cfg.model, device=cfg.device)
    return Setup(model, task, evaluation, metric, folds, texts, cfg.mc_prompt, calibration, cfg.side_effect_tokens)


def side_effect_texts(cfg: ExperimentConfig) -> tuple[list[str], list[str]]:
    """``(report, calibration)`` WikiText-2 paragraphs: ``side_effect_texts`` that report CE/KL and, when
    doses are KL targets, ``calibration_texts`` others that choose α — drawn together and split by
    :func:`~real_lens.evaluation.dose.split_texts`, so no paragraph is on both sides and the reported KL
    is held out from the one α was calibrated on."""
    n_calibration = cfg.calibration_texts if cfg.kl_grid else 0
    n = cfg.side_effect_texts + n_calibration
    if not n:
        return [], []
    texts = load_wikitext_sample(cfg.data_dir, n=n, max_tokens=cfg.side_effect_tokens, seed=cfg.seed)
    if not n_calibration:
        return texts, []
    if not cfg.side_effect_texts:
        return [], texts
    from .evaluation.dose import split_texts

    calibration, report = split_texts(texts, n_calibration, seed=cfg.seed)
    return report, calibration


def prepare_task(cfg: ExperimentConfig, *, task_name: str | None = None):
    """``(task, evaluation, select metric, folds)`` checked against ``cfg``; loads no model."""
    task = load_task(task_name or cfg.task, data_dir=cfg.data_dir)
    if cfg.questions_per_part:
        task = task.sample_per_part(cfg.questions_per_part)
    evaluation = evaluation_for(task, mc_prompt=cfg.mc_prompt)
    metric = cfg.select_metric or evaluation.select_metric
    if metric not in evaluation.metrics:
        raise RealLensError(
            f"task {task.name!r} reports {list(evaluation.metrics)}; --select-metric {metric!r} is not one of them"
        )
    folds = tuple(range(len(task.folds))) if cfg.folds is None else cfg.folds
    if max(folds) >= len(task.folds):
        raise RealLensError(
            f"task {task.name!r} has {len(task.folds)} fold(s) (0..{len(task.folds) - 1}); folds {list(folds)} asked for"
        )
    for i in folds:
        empty = [part for part in ("train", "val", "test") if not getattr(task.folds[i], part)]
        if empty:
            raise RealLensError(
                f"task {task.name!r}: fold {i} has no {empty[0]} questions ({len(task.groups)} questions in all); "
                "a run needs train, val and test questions in every fold — add questions to the task"
            )
    return task, evaluation, metric, folds


def start_run_dir(out_dir, cfg) -> Path:
    """Create (or reopen) a run directory for ``cfg``.

    An ExperimentConfig is checked first (task, folds, select metric; no model), so a rejected
    configuration never leaves a config.json behind. A directory holding results of another
    configuration is refused; a damaged config.json is rewritten (and said so)."""
    out = Path(out_dir)
    if isinstance(cfg, ExperimentConfig):
        prepare_task(cfg)
    with output_lock(out, wait=False):
        previous = out / "config.json"
        stored = _stored_config(previous)
        if stored is not None and stored != _jsonable(cfg) and _has_results(out):
            raise RealLensError(
                f"{out} holds a run with another configuration (see its config.json); "
                "use a new --out directory or delete that one"
            )
        out.mkdir(parents=True, exist_ok=True)
        write_sealed_json(previous, {"config": _jsonable(cfg), "real_lens_version": __version__})
    return out


def _stored_config(path: Path):
    """The configuration a run directory records; None if it has none or it is damaged (said so)."""
    if not path.exists():
        return None
    try:
        return read_sealed_json(path, allow_unsealed=True)["config"]
    except (ArtifactError, KeyError, TypeError) as exc:
        notice(f"{path} is damaged ({exc}); it is written again")
        return None


def _has_results(out: Path) -> bool:
    """Whether a run directory holds any computed result (a cell, scores or a results table)."""
    return (out / "results.csv").exists() or any(
        p.is_file() for sub in ("cells", "scores") if (out / sub).is_dir() for p in (out / sub).rglob("*"))


def run_experiment(cfg: ExperimentConfig, out_dir, *, progress: bool = True) -> Path:
    """Run (or resume) the experiment; returns ``out_dir`` holding results.csv, summary.md, figures.

    The run directory is locked for the whole run: a second run into it fails at once with one line."""
    with output_lock(out_dir, wait=False):
        return _run_experiment(cfg, out_dir, progress=progress)


@dataclass(frozen=True)
class Dose:
    """How hard a selection is steered: a fixed ``alpha``, or the α at which the held-apart calibration
    paragraphs reach a target ``kl`` (nats per token; :func:`~real_lens.evaluation.dose.calibrate_alpha`)."""

    kind: str  # "alpha" or "kl"
    value: float

    @property
    def label(self) -> str:  # in file names and tables
        return f"{'a' if self.kind == 'alpha' else 'kl'}{self.value:g}"


# Calibration settings (evaluation.dose): the KL within 5 % of its target, α searched on (0.01, 100].
CALIBRATION = dict(tol=0.05, alpha_min=0.01, alpha_max=100.0)


def dose_groups(cfg: ExperimentConfig) -> list[tuple[str, tuple[Dose, ...]]]:
    """``(report label, doses val chooses among)``: one group per KL target (each reported; val chooses K),
    or, with ``kl_grid=None``, one group of every α (val chooses K and α, the paper's protocol)."""
    if cfg.kl_grid:
        return [(f"KL {t:g}", (Dose("kl", t),)) for t in cfg.kl_grid]
    return [("", tuple(Dose("alpha", a) for a in cfg.alpha_grid))]


def val_selects(cfg: ExperimentConfig) -> bool:
    """Whether val has anything to choose (more than one K, or more than one α in a group)."""
    return any(len(cfg.k_grid) * len(doses) > 1 for _, doses in dose_groups(cfg))


def fit_parts(cfg: ExperimentConfig) -> tuple[str, ...]:
    """The fold parts that fit scores, directions and σ: train only when val chooses anything, so val
    never enters fitting; train+val when it chooses nothing (the paper's fixed-K/α protocol)."""
    return ("train",) if val_selects(cfg) else ("train", "val")


def arm_name(method: str, group: str) -> str:
    return f"{method} @ {group}" if group else method


@dataclass
class _Arm:
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

    def add(self, fold: int, result: dict, *, k: int = 0, alpha: float = 0.0) -> None:
        for metric, values in result["per_item"].items():
            if metric != "group":
                self.values.setdefault(metric, []).extend(values)
                self.fold_values.setdefault(metric, []).append(float(np.mean(values)))
        self.folds.append(fold)
        self.k.append(k)
        self.alpha.append(alpha)
        self.ce.append(result.get("ce", float("nan")))
        self.kl.append(result.get("kl", float("nan")))


@dataclass
class _Run:
    """The state of one run: its settings, cached cells, and everything the summary is written from."""

    cfg: ExperimentConfig
    setup: Setup
    out: Path
    timer: _Timer
    progress: bool
    rows: list[dict] = field(default_factory=list)
    arms: dict[tuple[str, str], _Arm] = field(default_factory=dict)
    scores: dict[int, list[ModuleScores]] = field(default_factory=dict)
    bank_sizes: dict[int, int] = field(default_factory=dict)
    chosen: dict[tuple[int, str, str], tuple[int, Dose]] = field(default_factory=dict)  # (fold, method, group)
    null: dict[tuple[int, int, str], list[dict]] = field(default_factory=dict)  # (fold, K, dose label) -> per draw
    calibrations: dict[tuple, dict] = field(default_factory=dict)  # every α calibration this run used
    alphas: dict[tuple, tuple[float, float]] = field(default_factory=dict)  # (fold, method, K, draw) -> (KL, α)

    def cell(self, fold: int, **key):
        return cached_cell(self.out, self.cfg, fold, key)

    def arm(self, method: str, group: str = "") -> _Arm:
        return self.arms.setdefault((method, group), _Arm(method, group))

    def row(self, fold, method, split, k, alpha, result, **extra) -> None:
        extra = {"dose": "", "draw": "", "target_kl": "", "calibration_kl": "", **extra}
        self.rows.append(result_row(self.setup.evaluation, fold, method, split, k, alpha, result, **extra))

    # ------------------------------------------------------------------ steered cells
    def alpha_for(self, fold: int, method: str, k: int, dose: Dose, unit, draw=None) -> tuple[float, dict | None]:
        """The α of ``dose`` for the unit steering ``unit``: the dose's own, or calibrated once and cached."""
        if dose.kind == "alpha":
            return dose.value, None
        from .evaluation.dose import calibrate_alpha

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
            units = {k: build_steering(bank, select_top(scores, k), alpha=1.0) for k in cfg.k_grid}
            for group, doses in dose_groups(cfg):
                best = self.choose(fold_index, method, group, doses, units, val_items)
                k, dose = best
                result = self.steered(fold_index, method, "test", k, dose, units[k], test_items)
                logger.info("fold %d %s%s: %s K %d at α %.3g; test %s", fold_index, method,
                            f" ({group})" if group else "", "chose" if selects else "fixed", k, result["alpha"],
                            ", ".join(f"{m} {result[m]:.4f}" for m in (*evaluation.metrics, "ce", "kl") if m in result))
                self.chosen[(fold_index, method, group)] = best
                self.arm(method, group).add(fold_index, result, k=k, alpha=result["alpha"])
        if "random" in cfg.methods:
            self.run_null(fold_index, bank, test_items)

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
        from .null import random_null_scores

        points = {(k, dose) for (f, _, _), (k, dose) in self.chosen.items() if f == fold}
        if not points:
            points = {(k, dose) for k in self.cfg.k_grid for _, doses in dose_groups(self.cfg) for dose in doses}
        draws = random_null_scores(bank.module_shape, n_draws=self.cfg.null_draws, fold=fold, seed=self.cfg.seed)
        logger.info("fold %d: the random null, %d draws at %d (K, dose) point(s)", fold, len(draws), len(points))
        for k, dose in sorted(points, key=lambda p: (p[0], p[1].kind, p[1].value)):
            results = []
            for draw, scores in enumerate(draws):
                unit = build_steering(bank, select_top(scores, k), alpha=1.0)
                results.append(self.steered(fold, "random", "test", k, dose, unit, test_items, draw=draw))
            self.null[(fold, k, dose.label)] = results


def _run_experiment(cfg: ExperimentConfig, out_dir, *, progress: bool = True) -> Path:
    out = start_run_dir(out_dir, cfg)
    timer, started = _Timer(), time.perf_counter()

    t = time.perf_counter()
    setup = prepare(cfg)
    timer.add("load model + data", t)
    model, task = setup.model, setup.task
    doses = ", ".join(f"KL {t:g}" for t in cfg.kl_grid) if cfg.kl_grid else f"α {list(cfg.alpha_grid)}"
    logger.info("run %s: %s on %s (%d layers x %d heads), %d questions, folds %s, methods %s, K %s, doses %s",
                out, task.name, cfg.model, model.cfg.n_layers, model.cfg.n_heads, len(task.groups), list(setup.folds),
                ",".join(cfg.methods), list(cfg.k_grid), doses)
    run = _Run(cfg, setup, out, timer, progress)
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
    missed = [c for c in run.calibrations.values() if not c["reached"]]
    if missed:
        notice(f"{len(missed)} of {len(run.calibrations)} α calibrations did not reach their KL target (the largest "
               f"miss: KL {max(missed, key=lambda c: abs(c['kl'] / c['target_kl'] - 1))['kl']:.3g}); those cells are "
               "steered at the closest point and counted in summary.md")
    _write_outputs(run)
    logger.info("wrote %s (%.0f s in all)", out, timer.seconds["total"])
    return out


def task_slug(task: str) -> str:
    """A task name as a folder name (``caa:refusal`` -> ``caa-refusal``)."""
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in task)


def select_top(scores: ModuleScores, k: int):
    """The top-K modules with the method's own strengths (:meth:`ModuleScores.select`): REAL and its
    variants keep their relative strengths (score / max), every other method steers uniformly."""
    return scores.select(min(k, scores.n_modules))


# --------------------------------------------------------------------------- evaluation cells
def eval_items(evaluation: TaskEvaluation, task: Task, groups, limit: int | None, seed: int) -> list:
    """The items of a fold part's groups (task order); a seeded sample of ``limit`` groups."""
    groups = [g for g in task.groups if g in frozenset(groups)]
    if limit is not None and limit < len(groups):
        keep = np.random.default_rng(seed).choice(len(groups), size=limit, replace=False)
        groups = [groups[i] for i in sorted(keep)]
    return evaluation.select(task, groups)


def evaluate_cell(setup: Setup, items, steering, cfg: ExperimentConfig, *, side_effects: bool = False,
                  progress: bool = False) -> dict:
    """The task's metrics (means and per item) and, for test cells, CE and KL on WikiText-2."""
    evaluation = setup.evaluation
    values = evaluation.evaluate(setup.model, items, steering, progress=progress)
    out = {m: float(np.mean(v)) for m, v in values.items()}
    out.update(n_questions=len({evaluation.group_of(i) for i in items}), n_items=len(items),
               per_item={"group": [evaluation.group_of(i) for i in items],
                         **{m: [float(x) for x in v] for m, v in values.items()}})
    if side_effects and setup.texts:
        side = evaluate_side_effects(setup.model, setup.texts, steering=steering, max_tokens=cfg.side_effect_tokens)
        out.update(ce=float(side.ce), kl=float(side.kl))
    return out


LENGTH_ONLY = "length-only"


def length_only_cell(setup: Setup, val_items, test_items) -> dict:
    """MC1/MC2 of the content-blind scorer log p(answer) = −c·(answer tokens) on the test questions,
    c chosen on the val questions (:mod:`real_lens.evaluation.reference`): a gain that only reaches
    it could come from steering that makes the model prefer short answers, not true ones."""
    from .evaluation.reference import choose_length_c, count_answer_tokens, score_length_only

    prompt = setup.task.eval_data["mc_prompts"][setup.mc_prompt]
    c = choose_length_c(val_items, count_answer_tokens(setup.model, val_items, mc_prompt=prompt))
    result = score_length_only(test_items, count_answer_tokens(setup.model, test_items, mc_prompt=prompt), c=c)
    return {"mc2": result.mc2_mean, "mc1": result.mc1_mean, "c": c, "n_questions": len(test_items),
            "per_item": {"group": list(result.questions), "mc2": result.mc2.tolist(), "mc1": result.mc1.tolist()}}


def cached_cell(out: Path, cfg, fold: int, key: dict):
    """``cell(key)(compute)`` → the cached result for this cell, computing it once.

    ``key`` names the cell (method, split, K, and its ``alpha`` or ``dose``, a null ``draw``, ...);
    the file name also carries a digest of every setting that changes a cell's value. A scorer's own
    settings (pairs, demonstrations, epochs) enter only its own cells' digests, so changing one scorer
    recomputes that method's cells and keeps everyone else's."""
    ignored = ("methods", "k_grid", "alpha_grid", "kl_grid", "null_draws", "folds", "n_boot", *SCORER_SETTINGS)
    relevant = {k: v for k, v in _jsonable(cfg).items() if k not in ignored}
    relevant["dose_protocol"] = "kl" if getattr(cfg, "kl_grid", None) else "alpha"  # it changes the CE/KL texts
    scorer = _jsonable(_scorer_options(cfg, key["method"]))
    digest = hashlib.sha256(json.dumps([relevant, fold, key, scorer], sort_keys=True).encode()).hexdigest()[:16]
    named = ("method", "split", "k", "alpha", "dose")
    name = "-".join(f"{v}".replace(":", "_") for k, v in key.items() if k not in named)
    dose = key["dose"] if "dose" in key else f"a{key['alpha']:g}"
    path = out / "cells" / (f"fold{fold}-{key['method']}-{key['split']}-k{key['k']}-{dose}"
                            + (f"-{name}" if name else "") + f"-{digest}.json")

    def get(compute):
        if path.is_file():
            try:
                return read_sealed_json(path)
            except ArtifactError as exc:
                notice(f"recomputing cached cells that fail their check (e.g. {exc})", once=f"cells:{path.parent}")
        result = compute()
        write_sealed_json(path, result)
        return result

    return get


def cached_scores(out: Path, cfg: ExperimentConfig, fold: int, method: str, bank, model, *,
                  progress: bool = False) -> ModuleScores:
    """The fold's scores by ``method``, computed once; cached scores that fail verification are recomputed.

    ``random`` is the random null's draw 0 of this fold (:func:`real_lens.null.random_null_scores`), saved
    like any method's scores so heatmaps, transfer and the analyses can read one random ranking per fold."""
    folder = out / "scores" / f"fold{fold}" / method
    key = {"bank": bank.meta.get("cache_key"), "n": len(bank.examples), "seed": cfg.seed,
           "options": _jsonable(_scorer_options(cfg, method)), **({"null_draw": 0} if method == "random" else {})}
    if folder.exists():
        try:
            scores = ModuleScores.load(folder, allow_unverified=False)
            if read_json(folder / "key.json") == key:  # verified with the scores (it is in their manifest)
                return scores
        except (ScoringError, OSError, ValueError) as exc:
            notice(f"recomputing the cached {method} scores of fold {fold}: {exc}")
    if method == "random":
        from .null import random_null_scores

        scores = random_null_scores(bank.module_shape, n_draws=1, fold=fold, seed=cfg.seed)[0]
    else:
        scores = score_modules(bank, method, model=model, seed=cfg.seed, device=cfg.device, progress=progress,
                               **_scorer_options(cfg, method))
    scores = with_source(scores, bank)
    scores.save(folder, extra_json={"key.json": key})
    return scores


# The ExperimentConfig fields that only a scorer reads (each scorer's share: _scorer_options).
SCORER_SETTINGS = ("patching_pairs", "attribution_pairs", "pair_demos", "pair_min_gap", "real_epochs",
                   "real_prior_epochs")


def _scorer_options(cfg: ExperimentConfig, method: str) -> dict:
    if method in ("real", "real-release"):
        from .scoring.real import RealConfig

        variant = "release" if method == "real-release" else "described"
        return {"cfg": RealConfig(variant=variant, vq_epochs=cfg.real_epochs, prior_epochs=cfg.real_prior_epochs)}
    if method in ("patching", "attribution"):
        from .scoring.pairs import PairConfig

        n_pairs = cfg.patching_pairs if method == "patching" else cfg.attribution_pairs
        return {"cfg": PairConfig(n_pairs=n_pairs, n_demos=cfg.pair_demos, min_gap=cfg.pair_min_gap)}
    return {}


def result_row(evaluation: TaskEvaluation, fold, method, split, k, alpha, result, **extra) -> dict:
    return {"fold": fold, "method": method, "split": split, "k": k, "alpha": alpha, **extra,
            "n_questions": result["n_questions"], "n_items": result.get("n_items", result["n_questions"]),
            **{m: result[m] for m in evaluation.metrics}, "ce": result.get("ce", ""), "kl": result.get("kl", "")}


def _jsonable(obj):
    if dataclasses.is_dataclass(obj):
        return _jsonable(dataclasses.asdict(obj))
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    return obj


# --------------------------------------------------------------------------- outputs
def write_rows(path: Path, rows: list[dict]) -> None:
    """``rows`` as a CSV, written atomically; the columns are the first row's keys."""
    def write(tmp):
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)

    atomic_write(path, write)


def _write_outputs(run: _Run) -> None:
    from .plotting import plot_metric_vs_k, plot_score_heatmaps

    cfg, setup, out = run.cfg, run.setup, run.out
    metric = setup.select_metric
    write_rows(out / "results.csv", run.rows)
    for fold, scores in run.scores.items():
        if scores:
            plot_score_heatmaps(scores, out / f"heatmaps_fold{fold}.png")
    if any(r["split"] == "val" and r["method"] != "unsteered" for r in run.rows):
        plot_metric_vs_k(run.rows, out / f"{metric}_vs_k.png", metric=metric, split="val", task=setup.task.name)

    arms = {arm_name(m, g): arm for (m, g), arm in run.arms.items()}
    nulls = null_comparisons(run)
    for group, reference in null_references(run).items():
        arms[arm_name("random", group)] = mean_arm(reference, "random", group)
    summary = summarise(arms, setup.evaluation.metrics, n_boot=cfg.n_boot, seed=cfg.seed)
    stability = fold_stability(run.scores, k=max(cfg.k_grid))
    paired = paired_tests(run, nulls, metric, n_boot=cfg.n_boot, seed=cfg.seed)
    bands = null_bands(run, nulls, metric)
    frontier = frontier_data(run, summary, metric) if cfg.kl_grid and setup.texts else None
    if frontier and (frontier["points"] or frontier["null"]):
        draw_frontier(frontier, out / f"{metric}_vs_kl.png")
    calibration = calibration_summary(list(run.calibrations.values()))
    write_json(out / "summary.json", {"task": setup.task.name, "select_metric": metric, "calibration": calibration,
                                      "metrics": list(setup.evaluation.metrics), "fitted_on": "+".join(fit_parts(cfg)),
                                      "doses": [g for g, _ in dose_groups(cfg)], "methods": summary,
                                      "fold_stability": stability, "paired": paired, "null": bands,
                                      "frontier": frontier})
    sessions = record_timing(out, run.timer)
    text = render_summary(cfg, setup, summary, run.rows, run.timer, run.bank_sizes, stability, paired, bands,
                          calibration, sessions)
    atomic_write(out / "summary.md", lambda tmp: Path(tmp).write_text(text))


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


def summarise(arms: dict[str, _Arm], metrics: Sequence[str], *, n_boot: int, seed: int) -> dict:
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


# --------------------------------------------------------------------------- the random null
def null_draw_arms(run: _Run, points: dict[int, tuple[int, Dose]], group: str) -> list[_Arm]:
    """The null draws steered at ``points[fold]`` = (K, dose) in each fold, one pooled arm per draw."""
    draws: list[_Arm] = []
    for fold, (k, dose) in points.items():
        results = run.null[(fold, k, dose.label)]
        draws = draws or [_Arm("random", group) for _ in results]
        for arm, result in zip(draws, results):
            arm.add(fold, result, k=k, alpha=result["alpha"])
    return draws


def mean_arm(draws: list[_Arm], method: str, group: str) -> _Arm:
    """Per item, the mean over the null draws (their expected value on that item); CE/KL averaged too."""
    arm = _Arm(method, group, folds=list(draws[0].folds), k=list(draws[0].k),
               alpha=[float(np.mean(a)) for a in zip(*(d.alpha for d in draws))])
    for metric in draws[0].values:
        arm.values[metric] = np.mean([d.values[metric] for d in draws], axis=0).tolist()
        arm.fold_values[metric] = np.mean([d.fold_values[metric] for d in draws], axis=0).tolist()
    for side in ("ce", "kl"):
        setattr(arm, side, np.nanmean([getattr(d, side) for d in draws], axis=0).tolist()
                if np.isfinite([getattr(d, side) for d in draws]).any() else [float("nan")] * len(arm.folds))
    return arm


def null_comparisons(run: _Run) -> dict[tuple[str, str], list[_Arm]]:
    """Per (method, dose group): the null draws at the K and dose that method chose in every fold."""
    if not run.null:
        return {}
    out = {}
    for (method, group) in run.arms:
        points = {f: run.chosen[(f, method, group)] for f in run.setup.folds if (f, method, group) in run.chosen}
        if points and len(points) == len(run.setup.folds):
            out[(method, group)] = null_draw_arms(run, points, group)
    return out


def null_references(run: _Run) -> dict[str, list[_Arm]]:
    """Per dose group, the null at the (K, dose) the methods chose most often in each fold (ties: the
    smaller K, then the smaller dose): the ``random`` row of the main table and the frontier's band."""
    from collections import Counter

    if not run.null:
        return {}
    out = {}
    for group, doses in dose_groups(run.cfg):
        points = {}
        for fold in run.setup.folds:
            chosen = Counter(p for (f, _, g), p in run.chosen.items() if f == fold and g == group)
            candidates = chosen or Counter((k, d) for k in run.cfg.k_grid for d in doses)
            points[fold] = max(candidates, key=lambda p: (candidates[p], -p[0], -p[1].value))
        out[group] = null_draw_arms(run, points, group)
    return out


def null_bands(run: _Run, nulls: dict[tuple[str, str], list[_Arm]], metric: str) -> list[dict]:
    """Per method and dose group: the method's ``metric`` over its pooled test items, its matched null's
    mean and 5–95 % band over draws (each draw's mean over the same items), and the method's percentile
    among the draws."""
    from .null import null_band, percentile_in_null

    out = []
    for (method, group), draws in nulls.items():
        if method in ("unsteered", LENGTH_ONLY):
            continue
        values = [float(np.mean(d.values[metric])) for d in draws]
        value = float(np.mean(run.arms[(method, group)].values[metric]))
        band = null_band(values)
        out.append({"method": method, "dose": group, "metric": metric, "n_draws": band.n_draws,
                    "k": list(draws[0].k), "value": value, "null_mean": band.mean, "null_low": band.low,
                    "null_high": band.high, "percentile": percentile_in_null(value, values), "draws": values})
    return out


def paired_tests(run: _Run, nulls: dict, metric: str, *, n_boot: int, seed: int) -> list[dict]:
    """Per dose group, every method against unsteered, the length-only reference (where there is one)
    and its matched random null (per item, the mean over the draws at the method's K and dose), and
    ``real`` against every other method, on the same pooled test items: mean difference, paired
    bootstrap CI, sign-flip p, Holm-adjusted across the whole table, and the difference this design
    detects (80 % power, two-sided 0.05) given the observed SD of the paired differences."""
    from .evaluation.paired import compare_paired, min_detectable_difference

    arrays: dict[str, np.ndarray] = {}
    labelled: list[tuple[str, str, str, str, str]] = []  # (arm a, arm b, method a, method b, group)

    def add(name: str, values) -> str:
        arrays[name] = np.asarray(values, dtype=float)
        return name

    references = [r for r in ("unsteered", LENGTH_ONLY) if (r, "") in run.arms and metric in run.arms[(r, "")].values]
    for ref in references:
        add(ref, run.arms[(ref, "")].values[metric])
    for group, _ in dose_groups(run.cfg):
        methods = [m for m in run.cfg.methods if (m, group) in run.arms]
        for m in methods:
            a = add(arm_name(m, group), run.arms[(m, group)].values[metric])
            labelled += [(a, ref, m, ref, group) for ref in references]
            if (m, group) in nulls:
                b = add(f"random null for {a}", mean_arm(nulls[(m, group)], "random", group).values[metric])
                labelled.append((a, b, m, "random null", group))
        if "real" in methods:
            labelled += [(arm_name("real", group), arm_name(m, group), "real", m, group) for m in methods if m != "real"]
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


def fold_stability(all_scores: dict[int, list[ModuleScores]], *, k: int) -> dict[str, dict]:
    """Per method, how alike its rankings are in the first two folds (fitted on disjoint questions):
    Spearman over all modules and the Jaccard overlap of the top-``k`` sets. Empty with one fold."""
    from .compare import compare_scores

    folds = sorted(all_scores)
    if len(folds) < 2:
        return {}
    first, second = (all_scores[f] for f in folds[:2])
    out = {}
    for a, b in zip(first, second):
        if a.method == "random":  # the same seed gives the same ranking in every fold: 1.0 says nothing
            continue
        agreement = compare_scores(a, b, k=min(k, a.n_modules))
        out[a.method] = {"spearman": agreement["spearman"], "jaccard_top_k": agreement["jaccard_top_k"],
                         "k": agreement["k"], "n_modules": agreement["n_modules"], "folds": folds[:2]}
    return out


def frontier_data(run: _Run, summary: dict, metric: str) -> dict:
    """What the frontier figure draws (kept in summary.json, so figures are redrawn without a model):
    per method and KL target its held-out KL and ``metric`` with its CI, and per null draw of the
    ``random`` reference its held-out KL and ``metric``."""
    targets = dict(zip((g for g, _ in dose_groups(run.cfg)), run.cfg.kl_grid))
    points = [{"method": e["method"], "kl": e["kl"], "value": e[metric], "ci": e[f"{metric}_ci"],
               "kl_target": targets[e["dose"]]}
              for e in summary.values() if e["dose"] in targets and e["method"] != "random" and math.isfinite(e["kl"])]
    null = [{"kl": float(np.nanmean(d.kl)), "value": float(np.mean(d.values[metric])), "kl_target": targets[g]}
            for g, draws in null_references(run).items() for d in draws if np.isfinite(d.kl).any()]
    return {"metric": metric, "points": points, "null": null, "unsteered": summary["unsteered"][metric],
            "length_only": summary.get(LENGTH_ONLY, {}).get(metric), "task": run.setup.task.name}


def draw_frontier(data: dict, path) -> Path:
    """The frontier figure from :func:`frontier_data` (:func:`~real_lens.plotting_frontier.plot_frontier`)."""
    from .plotting import metric_label
    from .plotting_frontier import FrontierPoint, plot_frontier

    points = [FrontierPoint(p["method"], p["kl"], p["value"], *p["ci"], kl_target=p["kl_target"]) for p in data["points"]]
    null = [FrontierPoint("random", p["kl"], p["value"], kl_target=p["kl_target"]) for p in data["null"]]
    return plot_frontier(points, null, path, metric=data["metric"], unsteered=data["unsteered"],
                         length_only=data["length_only"],
                         title=f"{data['task']}: {metric_label(data['metric'])} against held-out KL")


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


def protocol_lines(cfg: ExperimentConfig, setup: Setup) -> list[str]:
    """What the doses are, what fitted and what selected: the paragraph above the table."""
    parts = "+".join(fit_parts(cfg))
    if cfg.kl_grid:
        dose = (f"Every method is steered at the same side effect: for each KL target "
                f"({', '.join(f'{t:g}' for t in cfg.kl_grid)} nats per token), α is calibrated per method, fold and K "
                f"so that KL(unsteered ‖ steered) on {len(setup.calibration)} WikiText-2 paragraphs is within "
                f"{CALIBRATION['tol']:.0%} of the target (α ≤ {CALIBRATION['alpha_max']:g}); the KL in the table is "
                f"measured on {len(setup.texts)} other paragraphs (held out). ")
        choice = "K was chosen per method, fold and KL target" if len(cfg.k_grid) > 1 else f"K is fixed at {cfg.k_grid[0]}"
    else:
        dose = f"Doses are the fixed α grid {list(cfg.alpha_grid)} (the paper's protocol). "
        choice = "K and α were chosen per method and fold"
    on_val = f" on the fold's val questions by {setup.select_metric}" if val_selects(cfg) else ""
    return [dose + f"{choice}{on_val}. Scores, steering directions and σ were fitted on each fold's {parts} "
            "questions" + (" only: val questions never enter fitting." if parts == "train" else
                           " (val chooses nothing here).")]


def render_summary(cfg: ExperimentConfig, setup: Setup, summary: dict, rows, timer: _Timer, bank_sizes: dict[int, int],
                   stability: dict[str, dict] | None = None, paired: list[dict] | None = None,
                   bands: list[dict] | None = None, calibration: dict | None = None,
                   sessions: list[dict[str, float]] | None = None) -> str:
    lines = [
        f"# real-lens run: {cfg.task} on {cfg.model}",
        "",
        f"Test metrics are means over folds {list(setup.folds)}; 95% CIs bootstrap the pooled test items "
        f"({cfg.n_boot} resamples). " + protocol_lines(cfg, setup)[0],
        "",
        *summary_table(summary, setup.evaluation.metrics),
    ]
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
    n_test = sorted({r["n_questions"] for r in rows if r["split"] == "test"})
    n_val = sorted({r["n_questions"] for r in rows if r["split"] == "val"})
    lines += [
        "",
        "## Sizes",
        "",
        f"- model `{cfg.model}`, site `{cfg.site}`, readout `{cfg.readout}`, seed {cfg.seed}",
        *([f"- TruthfulQA MC scored under the `{cfg.mc_prompt}` prompt (METHOD.md §6a"
           + ("; instruction + the six 'qa' demonstrations, run once and shared)" if cfg.mc_prompt == "instruction-qa"
              else "; the six 'qa' demonstrations, run once and shared)" if cfg.mc_prompt == "qa" else ")")
           + "; banks are collected on the bare `Q: {question} A: {answer}` examples"]
          if setup.evaluation.kind == "mc" else []),
        f"- K grid {list(cfg.k_grid)}, "
        + (f"KL targets {list(cfg.kl_grid)} (α calibrated on {len(setup.calibration)} paragraphs)" if cfg.kl_grid
           else f"α grid {list(cfg.alpha_grid)}")
        + (f"; random null: {cfg.null_draws} draws per fold" if "random" in cfg.methods else ""),
        "- questions: " + ("all" if cfg.questions_per_part is None else
                           f"the first {cfg.questions_per_part} (task order) of every fold's train, val and test parts, "
                           f"and only those")
        + f"; examples scored and used for steering directions ({'+'.join(fit_parts(cfg))}) per fold: "
        + ", ".join(f"fold {f}: {n}" for f, n in bank_sizes.items()),
        (f"- val questions per fold {n_val}" + (" (all)" if cfg.n_val_questions is None else " (a seeded sample)")
         if n_val else "- val questions: none evaluated (one K and one dose per report: nothing to choose)")
        + f"; test questions per fold {n_test}" + (" (all)" if cfg.n_test_questions is None else " (a seeded sample)"),
        f"- activation patching on {cfg.patching_pairs}, attribution patching on {cfg.attribution_pairs} contrast pairs "
        f"per fold ({cfg.pair_demos} aligned vs violating demonstrations, pairs with |gap| < {cfg.pair_min_gap:g} nats "
        "dropped; kept counts in each method's scores/fold*/*/scores.json)",
        f"- REAL: {cfg.real_epochs} VQ-AE epochs, {cfg.real_prior_epochs} prior epochs, the paper's other settings; "
        "`real` is the method as the paper describes it (METHOD.md §3), `real-release` as the authors' code computes it "
        "(§3a; differences below)",
        f"- side effects: {len(setup.texts)} WikiText-2 paragraphs, ≤{cfg.side_effect_tokens} tokens each"
        + (f" (the {len(setup.calibration)} that calibrate α are others)" if setup.calibration else ""),
        *timing_lines(timer, sessions),
    ]
    if "real-release" in cfg.methods:
        lines += release_difference_lines()
    return "\n".join(lines)


def release_difference_lines() -> list[str]:
    """``real`` vs ``real-release``: every known difference and the release settings neither follows, one line of why each."""
    from .scoring.real import RELEASE_DIFFERENCES, RELEASE_SETTINGS_NOT_FOLLOWED

    lines = ["## REAL as described (`real`) vs as released (`real-release`)", ""]
    lines += [f"- {what} *Why it matters:* {why}" for what, why in RELEASE_DIFFERENCES]
    lines += ["", "Release settings neither variant follows:", ""]
    lines += [f"- {what} *Why not:* {why}" for what, why in RELEASE_SETTINGS_NOT_FOLLOWED]
    return lines + [""]


def record_timing(out: Path, timer: _Timer) -> list[dict[str, float]]:
    """Append this session's step times to the run's ``timing.json`` and return every session's, so a
    resumed run still reports what the computation cost (a resumed session reuses cached steps in ~0 s)."""
    path = out / "timing.json"
    sessions = []
    if path.is_file():
        try:
            sessions = list(read_sealed_json(path, allow_unsealed=True)["sessions"])
        except (ArtifactError, KeyError, TypeError) as exc:
            notice(f"{path} is damaged ({exc}); the time of earlier sessions is not counted")
    sessions.append(dict(timer.seconds))
    write_sealed_json(path, {"sessions": sessions})
    return sessions


def timing_lines(timer: _Timer, sessions: list[dict[str, float]] | None = None) -> list[str]:
    """Seconds per step: summed over every session of the run (``sessions``), or this one's."""
    sessions = sessions or [timer.seconds]
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
