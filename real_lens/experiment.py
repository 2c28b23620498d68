"""The main job: folds × scorers × K × α on a task → results table, summary and figures.

For each fold: collect the head bank on the fold's train+val questions, score every module
with every method, pick each method's K (top-K heads) and α on the fold's **val** questions
(by the task's selection metric: MC2 for TruthfulQA, see :mod:`real_lens.evaluation.suite`),
then evaluate the task's metrics, CE and KL on the fold's **test** questions. Test questions
never enter selection. Results are means over folds, with bootstrap CIs over test items.

Everything is cached in the run directory (scores per fold × method, one JSON per evaluated
cell), so an interrupted run resumes where it stopped and a rerun reuses what is done.
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
    k_grid: tuple[int, ...] = (8, 24)
    alpha_grid: tuple[float, ...] = (5.0, 15.0)
    select_metric: str | None = None  # None = the task's own (MC2 for TruthfulQA); see evaluation.suite
    mc_prompt: str = DEFAULT_MC_PROMPT  # TruthfulQA MC scoring prompt (METHOD.md §6a); banks stay "Q: {q} A: {a}"
    site: str = "head_z"
    readout: str = "last"
    # Defaults sized for the 2-core CPU (≤45 min): the full protocol is the "full" preset.
    questions_per_part: int | None = 120  # at most N questions per fold part (train/val/test); None = all
    n_val_questions: int | None = 25  # per fold; None = all val questions (a seeded sample otherwise)
    n_test_questions: int | None = 40  # per fold; None = all test questions (a seeded sample otherwise)
    patching_pairs: int = 16  # contrast pairs per fold for activation patching (one forward per pair and head chunk)
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
        if not 0 <= self.seed < 2**32:
            raise RealLensError(f"expected an integer seed from 0 to {2**32 - 1}; got {self.seed!r}")
        if self.folds is not None and (not self.folds or min(self.folds) < 0):
            raise RealLensError(f"folds must be fold indices (0, 1, ...); got {self.folds}")
        if self.mc_prompt not in MC_PROMPT_STYLES:
            raise RealLensError(f"unknown MC prompt {self.mc_prompt!r}; expected one of {list(MC_PROMPT_STYLES)}")
        # Counts the command line passes straight through (real_lens.configs derives one option per field).
        for name in ("questions_per_part", "n_val_questions", "n_test_questions", "patching_pairs", "attribution_pairs",
                     "pair_demos", "real_epochs",
                     "real_prior_epochs", "side_effect_tokens", "n_boot", "batch_size", "side_effect_texts"):
            value, least = getattr(self, name), 0 if name == "side_effect_texts" else 1
            optional = name in ("questions_per_part", "n_val_questions", "n_test_questions")
            if not (value is None and optional) and (isinstance(value, bool) or not isinstance(value, int) or value < least):
                raise RealLensError(f"{name} must be an integer >= {least}{' or None (all)' if optional else ''}; "
                                    f"got {value!r}")


PRESETS: dict[str, dict[str, Any]] = {
    # CI / tests: a handful of questions, one small grid point, short training.
    "quick": dict(questions_per_part=4, n_val_questions=None, n_test_questions=None, k_grid=(2,),
                  alpha_grid=(5.0,), patching_pairs=2, attribution_pairs=4, real_epochs=2,
                  pair_min_gap=0.0,  # keeps every pair: the tiny random model's gaps are ~0.05 nats
                  real_prior_epochs=2, side_effect_texts=4, side_effect_tokens=32, n_boot=100,
                  methods=METHODS),
    # The paper's protocol at full size (for a GPU): K 48 among the grid, α 15, every test question.
    "full": dict(k_grid=(16, 32, 48, 64), alpha_grid=(5.0, 10.0, 15.0, 20.0), patching_pairs=128, attribution_pairs=256,
                 questions_per_part=None, n_val_questions=None, n_test_questions=None, side_effect_texts=100),
}


def config_for(preset: str | None = None, **overrides) -> ExperimentConfig:
    if preset is not None and preset not in PRESETS:
        raise RealLensError(f"unknown preset {preset!r}; expected one of {sorted(PRESETS)}")
    values = {**(PRESETS[preset] if preset else {}), **{k: v for k, v in overrides.items() if v is not None}}
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
    texts: list[str]
    mc_prompt: str = DEFAULT_MC_PROMPT


def prepare(cfg: ExperimentConfig, *, task_name: str | None = None, model=None) -> Setup:
    """The task (``cfg.task`` unless named), checked against ``cfg`` before the model (unless given) is loaded."""
    task, evaluation, metric, folds = prepare_task(cfg, task_name=task_name)
    texts = (load_wikitext_sample(cfg.data_dir, n=cfg.side_effect_texts, max_tokens=cfg.side_effect_tokens, seed=cfg.seed)
             if cfg.side_effect_texts else [])
    model = model if model is not None else load_model(cfg.model, device=cfg.device)
    return Setup(model, task, evaluation, metric, folds, texts, cfg.mc_prompt)


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


def _run_experiment(cfg: ExperimentConfig, out_dir, *, progress: bool = True) -> Path:
    out = start_run_dir(out_dir, cfg)
    timer, started = _Timer(), time.perf_counter()

    t = time.perf_counter()
    setup = prepare(cfg)
    model, task, evaluation = setup.model, setup.task, setup.evaluation
    timer.add("load model + data", t)
    logger.info("run %s: %s on %s (%d layers x %d heads), %d questions, folds %s, methods %s, K %s, alpha %s",
                out, task.name, cfg.model, model.cfg.n_layers, model.cfg.n_heads, len(task.groups), list(setup.folds),
                ",".join(cfg.methods), list(cfg.k_grid), list(cfg.alpha_grid))

    rows: list[dict] = []
    pooled: dict[str, dict[str, list]] = {}
    all_scores: dict[int, list[ModuleScores]] = {}
    bank_sizes: dict[int, int] = {}
    t = time.perf_counter()
    # One bank for the whole task (each fold's train+val is a part of it), collected or loaded once.
    full_bank = collect_activations(model, task, site=cfg.site, readout=cfg.readout,
                                    batch_size=cfg.batch_size, progress=progress)
    timer.add("collect activations", t)
    logger.info("activations %s at %s (%.0f s)", list(full_bank.acts.shape), full_bank.meta["hook"],
                time.perf_counter() - t)
    for fold_index in setup.folds:
        fold = task.folds[fold_index]
        bank = full_bank.select(fold.train | fold.val)
        bank_sizes[fold_index] = len(bank.examples)

        val_items = eval_items(evaluation, task, fold.val, cfg.n_val_questions, cfg.seed)
        test_items = eval_items(evaluation, task, fold.test, cfg.n_test_questions, cfg.seed)
        cell = lambda **key: cached_cell(out, cfg, fold_index, key)  # noqa: E731
        logger.info("fold %d: %d train+val examples score the modules; %d val and %d test questions evaluate",
                    fold_index, len(bank.examples), len({evaluation.group_of(i) for i in val_items}),
                    len({evaluation.group_of(i) for i in test_items}))

        t = time.perf_counter()
        base_test = cell(method="unsteered", split="test", k=0, alpha=0.0)(
            lambda: evaluate_cell(setup, test_items, None, cfg, side_effects=True, progress=progress))
        base_val = cell(method="unsteered", split="val", k=0, alpha=0.0)(
            lambda: evaluate_cell(setup, val_items, None, cfg, progress=progress))
        timer.add("evaluate (unsteered)", t)
        rows += [result_row(evaluation, fold_index, "unsteered", "val", 0, 0.0, base_val),
                 result_row(evaluation, fold_index, "unsteered", "test", 0, 0.0, base_test)]
        pool(pooled, "unsteered", base_test)
        if evaluation.kind == "mc":  # the content-blind reference on the same test questions
            reference = length_only_cell(setup, val_items, test_items)
            rows.append(result_row(evaluation, fold_index, LENGTH_ONLY, "test", 0, 0.0, reference))
            pool(pooled, LENGTH_ONLY, reference)

        all_scores[fold_index] = []
        for method in cfg.methods:
            t = time.perf_counter()
            logger.info("fold %d %s: scoring %d modules", fold_index, method, bank.flat().shape[1])
            scores = cached_scores(out, cfg, fold_index, method, bank, model, progress=progress)
            timer.add(f"score: {method}", t)
            all_scores[fold_index].append(scores)
            t = time.perf_counter()
            grid, steerings = {}, {}
            for k in cfg.k_grid:
                steerings[k] = steering = build_steering(bank, select_top(scores, k), alpha=1.0)
                for alpha in cfg.alpha_grid:
                    result = cell(method=method, split="val", k=k, alpha=alpha)(
                        lambda: evaluate_cell(setup, val_items, steering.with_alpha(alpha), cfg, progress=progress))
                    grid[(k, alpha)] = result
                    logger.info("fold %d %s: val K %d alpha %g -> %s %.4f", fold_index, method, k, alpha,
                                setup.select_metric, result[setup.select_metric])
                    rows.append(result_row(evaluation, fold_index, method, "val", k, alpha, result))
            timer.add("evaluate (val grid)", t)
            # Ties go to the smaller K, then the smaller α: the least intervention that does as well.
            best_k, best_alpha = max(grid, key=lambda ka: (grid[ka][setup.select_metric], -ka[0], -ka[1]))
            t = time.perf_counter()
            steering = steerings[best_k].with_alpha(best_alpha)
            result = cell(method=method, split="test", k=best_k, alpha=best_alpha)(
                lambda: evaluate_cell(setup, test_items, steering, cfg, side_effects=True, progress=progress))
            timer.add("evaluate (test)", t)
            logger.info("fold %d %s: chose K %d alpha %g on val; test %s", fold_index, method, best_k, best_alpha,
                        ", ".join(f"{m} {result[m]:.4f}" for m in (*evaluation.metrics, "ce", "kl") if m in result))
            rows.append(result_row(evaluation, fold_index, method, "test", best_k, best_alpha, result))
            pool(pooled, method, result)

    timer.seconds["total"] = time.perf_counter() - started
    _write_outputs(out, cfg, setup, rows, pooled, all_scores, timer, bank_sizes)
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
    """``cell(key)(compute)`` → the cached result for this cell, computing it once."""
    relevant = {k: v for k, v in _jsonable(cfg).items() if k not in ("methods", "k_grid", "alpha_grid", "folds", "n_boot")}
    digest = hashlib.sha256(json.dumps([relevant, fold, key], sort_keys=True).encode()).hexdigest()[:16]
    name = "-".join(f"{v}".replace(":", "_") for k, v in key.items() if k not in ("method", "split", "k", "alpha"))
    path = out / "cells" / (f"fold{fold}-{key['method']}-{key['split']}-k{key['k']}-a{key['alpha']:g}"
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
    """The fold's scores by ``method``, computed once; cached scores that fail verification are recomputed."""
    folder = out / "scores" / f"fold{fold}" / method
    key = {"bank": bank.meta.get("cache_key"), "n": len(bank.examples), "seed": cfg.seed,
           "options": _jsonable(_scorer_options(cfg, method))}
    if folder.exists():
        try:
            scores = ModuleScores.load(folder, allow_unverified=False)
            if read_json(folder / "key.json") == key:  # verified with the scores (it is in their manifest)
                return scores
        except (ScoringError, OSError, ValueError) as exc:
            notice(f"recomputing the cached {method} scores of fold {fold}: {exc}")
    scores = score_modules(bank, method, model=model, seed=cfg.seed, device=cfg.device, progress=progress,
                           **_scorer_options(cfg, method))
    scores = with_source(scores, bank)
    scores.save(folder, extra_json={"key.json": key})
    return scores


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


def pool(pooled: dict, method: str, result: dict) -> None:
    """Append a test cell's per-item values (and its CE/KL) to the method's pooled lists."""
    store = pooled.setdefault(method, {"ce": [], "kl": []})
    for metric, values in result["per_item"].items():
        if metric != "group":
            store.setdefault(metric, []).extend(values)
    store["ce"].append(result.get("ce", float("nan")))
    store["kl"].append(result.get("kl", float("nan")))


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


def _write_outputs(out, cfg, setup: Setup, rows, pooled, all_scores, timer, bank_sizes) -> None:
    from .plotting import plot_metric_vs_k, plot_score_heatmaps

    write_rows(out / "results.csv", rows)
    for fold, scores in all_scores.items():
        plot_score_heatmaps(scores, out / f"heatmaps_fold{fold}.png")
    plot_metric_vs_k(rows, out / f"{setup.select_metric}_vs_k.png", metric=setup.select_metric, split="val",
                     task=setup.task.name)

    summary = summarise(rows, pooled, setup.evaluation.metrics, n_boot=cfg.n_boot, seed=cfg.seed)
    stability = fold_stability(all_scores, k=max(cfg.k_grid))
    paired = paired_tests(pooled, setup.select_metric, cfg.methods, n_boot=cfg.n_boot, seed=cfg.seed)
    write_json(out / "summary.json", {"task": setup.task.name, "select_metric": setup.select_metric,
                                      "metrics": list(setup.evaluation.metrics), "methods": summary,
                                      "fold_stability": stability, "paired": paired})
    text = render_summary(cfg, setup, summary, rows, timer, bank_sizes, stability, paired)
    atomic_write(out / "summary.md", lambda tmp: Path(tmp).write_text(text))


def summarise(rows, pooled, metrics: Sequence[str], *, n_boot: int, seed: int) -> dict:
    """Per method: means over folds of the test cells, bootstrap CIs over the pooled test items."""
    out = {}
    for method, store in pooled.items():
        tests = [r for r in rows if r["method"] == method and r["split"] == "test"]
        entry = {"folds": len(tests), "n_items": len(store[metrics[0]]),
                 "k": [r["k"] for r in tests], "alpha": [r["alpha"] for r in tests]}
        for metric in metrics:
            entry[metric] = float(np.mean([r[metric] for r in tests]))
            entry[f"{metric}_ci"] = list(bootstrap_ci(np.array(store[metric]), n_boot=n_boot, seed=seed))
        entry["ce"] = float(np.nanmean(store["ce"])) if np.isfinite(store["ce"]).any() else float("nan")
        entry["kl"] = float(np.nanmean(store["kl"])) if np.isfinite(store["kl"]).any() else float("nan")
        out[method] = entry
    return out


def paired_tests(pooled: dict, metric: str, methods: Sequence[str], *, n_boot: int, seed: int) -> list[dict]:
    """Every method against unsteered (and the length-only reference, where there is one), and
    ``real`` against every other method, on the same pooled test items: mean difference, paired
    bootstrap CI, sign-flip p, Holm-adjusted across the table, and the difference this design detects
    (80 % power, two-sided 0.05) given the observed SD of the paired differences."""
    from .evaluation.paired import compare_paired, min_detectable_difference

    arms = {name: np.asarray(store[metric], dtype=float) for name, store in pooled.items() if metric in store}
    references = ["unsteered"] + ([LENGTH_ONLY] if LENGTH_ONLY in arms else [])
    pairs = [(m, ref) for ref in references for m in methods if m in arms]
    if "real" in arms:
        pairs += [("real", m) for m in methods if m != "real" and m in arms]
    if not pairs:
        return []
    out = []
    for row in compare_paired(arms, pairs, n_boot=n_boot, seed=seed):
        c = row.comparison
        mdd = min_detectable_difference(c.sd_diff, c.n) if c.n > 1 else float("nan")
        out.append({"a": row.a, "b": row.b, "metric": metric, "n": c.n, "difference": c.difference,
                    "ci": [c.ci_low, c.ci_high], "p": c.p_value, "p_holm": row.p_holm, "sd_diff": c.sd_diff,
                    "min_detectable": mdd})
    return out


def paired_lines(paired: list[dict]) -> list[str]:
    if not paired:
        return []
    metric, n = paired[0]["metric"], paired[0]["n"]
    lines = ["", f"## Paired tests ({metric}, {n} pooled test items)", "",
             "Every condition is evaluated on the same test items, so each comparison is per item: mean difference "
             "a − b, a paired bootstrap 95% CI (one resample of items for both arms), a two-sided sign-flip "
             "permutation p, Holm-adjusted across this table, and the smallest difference this design detects with "
             "80% power at two-sided 0.05 given the observed SD of the paired differences (noncentral t).", "",
             "| a | b | a − b | 95% CI | p | p (Holm) | SD of differences | detectable |", "|---|---|---|---|---|---|---|---|"]
    for r in paired:
        lines.append(f"| {r['a']} | {r['b']} | {r['difference']:+.3f} | [{r['ci'][0]:+.3f}, {r['ci'][1]:+.3f}] | "
                     f"{r['p']:.3g} | {r['p_holm']:.3g} | {r['sd_diff']:.3f} | {r['min_detectable']:.3f} |")
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


def summary_table(summary: dict, metrics: Sequence[str]) -> list[str]:
    """The headline table (markdown lines): every metric with its CI, CE, KL and the chosen K/α."""
    header = ["method", *[f"{m} [95% CI]" for m in metrics], "CE", "KL", "chosen K per fold", "chosen α per fold"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for method, e in summary.items():
        cells = [method, *[f"{e[m]:.3f} [{e[m + '_ci'][0]:.3f}, {e[m + '_ci'][1]:.3f}]" for m in metrics],
                 f"{e['ce']:.3f}", f"{e['kl']:.4f}", ", ".join(map(str, e["k"])) or "-",
                 ", ".join(f"{a:g}" for a in e["alpha"]) or "-"]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def render_summary(cfg: ExperimentConfig, setup: Setup, summary: dict, rows, timer: _Timer, bank_sizes: dict[int, int],
                   stability: dict[str, dict] | None = None, paired: list[dict] | None = None) -> str:
    lines = [
        f"# real-lens run: {cfg.task} on {cfg.model}",
        "",
        f"Test metrics are means over folds {list(setup.folds)}; 95% CIs bootstrap the pooled test items "
        f"({cfg.n_boot} resamples). K and α were chosen per method and fold on the fold's val questions "
        f"by {setup.select_metric}.",
        "",
        *summary_table(summary, setup.evaluation.metrics),
    ]
    if LENGTH_ONLY in summary:
        lines += ["", f"`{LENGTH_ONLY}` is no steering at all: a content-blind scorer, log p(answer) = −c·(answer "
                  "tokens) with c chosen on the val questions, on the same test questions. A steered method that only "
                  "reaches it may have bought its gain by making the model prefer short answers."]
    lines += paired_lines(paired or [])
    if stability:
        k, n = (next(iter(stability.values()))[key] for key in ("k", "n_modules"))
        chance = (k * k / n) / (2 * k - k * k / n)  # expected |A∩B| = k²/n for two random k-sets of n
        lines += ["", "## Rank stability across folds", "",
                  "Each fold scores the modules on its own train+val questions (the two folds' test halves are "
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
        f"- K grid {list(cfg.k_grid)}, α grid {list(cfg.alpha_grid)}",
        "- questions: " + ("all" if cfg.questions_per_part is None else
                           f"the first {cfg.questions_per_part} (task order) of every fold's train, val and test parts, "
                           f"and only those")
        + "; examples scored and used for steering directions (train+val) per fold: "
        + ", ".join(f"fold {f}: {n}" for f, n in bank_sizes.items()),
        f"- val questions per fold {n_val}" + (" (all)" if cfg.n_val_questions is None else " (a seeded sample)")
        + f"; test questions per fold {n_test}" + (" (all)" if cfg.n_test_questions is None else " (a seeded sample)"),
        f"- activation patching on {cfg.patching_pairs}, attribution patching on {cfg.attribution_pairs} contrast pairs "
        f"per fold ({cfg.pair_demos} aligned vs violating demonstrations, pairs with |gap| < {cfg.pair_min_gap:g} nats "
        "dropped; kept counts in each method's scores/fold*/*/scores.json)",
        f"- REAL: {cfg.real_epochs} VQ-AE epochs, {cfg.real_prior_epochs} prior epochs, the paper's other settings; "
        "`real` is the method as the paper describes it (METHOD.md §3), `real-release` as the authors' code computes it "
        "(§3a; differences below)",
        f"- side effects: {cfg.side_effect_texts} WikiText-2 paragraphs, ≤{cfg.side_effect_tokens} tokens each",
        *timing_lines(timer),
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


def timing_lines(timer: _Timer) -> list[str]:
    lines = ["", "## Where the time went", "", "| step | seconds |", "|---|---|"]
    for step, seconds in sorted(timer.seconds.items(), key=lambda kv: -kv[1]):
        lines.append(f"| {step} | {seconds:.0f} |")
    return lines + ["", "(steps that were reused from the cache take ~0 s on a resumed run)", ""]
