"""The main job: folds × scorers × K × α on TruthfulQA → results table, summary and figures.

For each fold: collect the head bank on the fold's train+val questions, score every module
with every method, pick each method's K (top-K heads) and α on the fold's **val** questions
(by MC2), then evaluate MC1, MC2, CE and KL on the fold's **test** questions. Test questions
never enter selection. Results are means over folds, with bootstrap CIs over test questions.

Everything is cached in the run directory (scores per fold × method, one JSON per evaluated
cell), so an interrupted run resumes where it stopped and a rerun reuses what is done.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import __version__
from .activations import collect_activations
from .errors import RealLensError
from .evaluation import (
    bootstrap_ci, evaluate_side_effects, evaluate_truthfulqa, load_wikitext_sample, select_mc_questions,
)
from .io import read_json, write_json
from .models import DEFAULT_MODEL, load_model
from .scoring import ModuleScores, get_scorer
from .steering import build_steering
from .tasks import load_task

METHODS = ("real", "iti", "patching", "attribution", "random")


@dataclass(frozen=True)
class ExperimentConfig:
    model: str = DEFAULT_MODEL
    task: str = "truthfulqa"
    methods: tuple[str, ...] = METHODS
    folds: tuple[int, ...] = (0, 1)
    k_grid: tuple[int, ...] = (8, 24)
    alpha_grid: tuple[float, ...] = (5.0, 15.0)
    site: str = "head_z"
    readout: str = "last"
    # Defaults sized for the 2-core CPU (≤45 min): the full protocol is the "full" preset.
    questions_per_part: int | None = 120  # at most N questions per fold part (train/val/test); None = all
    n_val_questions: int | None = 25  # per fold; None = all val questions (a seeded sample otherwise)
    n_test_questions: int | None = 40  # per fold; None = all test questions (a seeded sample otherwise)
    patching_pairs: int = 4
    real_epochs: int = 20
    real_prior_epochs: int = 10
    side_effect_texts: int = 20
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
        if any(f not in (0, 1) for f in self.folds):
            raise RealLensError(f"folds must be 0 and/or 1; got {self.folds}")


PRESETS: dict[str, dict[str, Any]] = {
    # CI / tests: a handful of questions, one small grid point, short training.
    "quick": dict(questions_per_part=4, n_val_questions=None, n_test_questions=None, k_grid=(2,),
                  alpha_grid=(5.0,), patching_pairs=2, real_epochs=2,
                  real_prior_epochs=2, side_effect_texts=4, side_effect_tokens=32, n_boot=100,
                  methods=METHODS),
    # The paper's protocol at full size (for a GPU): K 48 among the grid, α 15, every test question.
    "full": dict(k_grid=(16, 32, 48, 64), alpha_grid=(5.0, 10.0, 15.0, 20.0), patching_pairs=128,
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


def run_experiment(cfg: ExperimentConfig, out_dir, *, progress: bool = True) -> Path:
    """Run (or resume) the experiment; returns ``out_dir`` holding results.csv, summary.md, figures."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    previous = out / "config.json"
    if previous.is_file() and read_json(previous)["config"] != _jsonable(cfg):
        raise RealLensError(
            f"{out} holds a run with another configuration (see its config.json); "
            "use a new --out directory or delete that one"
        )
    write_json(previous, {"config": _jsonable(cfg), "real_lens_version": __version__})
    timer, started = _Timer(), time.perf_counter()

    t = time.perf_counter()
    model = load_model(cfg.model, device=cfg.device)
    task = load_task(cfg.task, data_dir=cfg.data_dir)
    if cfg.questions_per_part:
        task = task.sample_per_part(cfg.questions_per_part)
    texts = load_wikitext_sample(cfg.data_dir, n=cfg.side_effect_texts, max_tokens=cfg.side_effect_tokens, seed=cfg.seed)
    timer.add("load model + data", t)

    rows: list[dict] = []
    per_question: dict[str, dict[str, list]] = {}
    all_scores: dict[int, list[ModuleScores]] = {}
    bank_sizes: dict[int, int] = {}
    t = time.perf_counter()
    # One bank for the whole task (each fold's train+val is a part of it), collected or loaded once.
    full_bank = collect_activations(model, task, site=cfg.site, readout=cfg.readout,
                                    batch_size=cfg.batch_size, progress=progress)
    timer.add("collect activations", t)
    for fold_index in cfg.folds:
        fold = task.folds[fold_index]
        bank = full_bank.select(fold.train | fold.val)
        bank_sizes[fold_index] = len(bank.examples)

        val_q = _questions(task, fold.val, cfg.n_val_questions, cfg.seed)
        test_q = _questions(task, fold.test, cfg.n_test_questions, cfg.seed)
        cell = lambda **key: _cached_cell(out, cfg, fold_index, key)  # noqa: E731

        t = time.perf_counter()
        base_test = cell(method="unsteered", split="test", k=0, alpha=0.0)(
            lambda: _evaluate(model, test_q, texts, None, cfg))
        base_val = cell(method="unsteered", split="val", k=0, alpha=0.0)(
            lambda: _evaluate(model, val_q, [], None, cfg))
        timer.add("evaluate (unsteered)", t)
        rows += [_row(fold_index, "unsteered", "val", 0, 0.0, base_val), _row(fold_index, "unsteered", "test", 0, 0.0, base_test)]
        _collect(per_question, "unsteered", base_test)

        all_scores[fold_index] = []
        for method in cfg.methods:
            t = time.perf_counter()
            scores = _cached_scores(out, cfg, fold_index, method, bank, model)
            timer.add(f"score: {method}", t)
            all_scores[fold_index].append(scores)
            t = time.perf_counter()
            grid = {}
            for k in cfg.k_grid:
                selection = scores.top_k(min(k, scores.n_modules), uniform=method != "real")
                steering = build_steering(bank, selection, alpha=1.0)
                for alpha in cfg.alpha_grid:
                    result = cell(method=method, split="val", k=k, alpha=alpha)(
                        lambda: _evaluate(model, val_q, [], steering.with_alpha(alpha), cfg))
                    grid[(k, alpha)] = result
                    rows.append(_row(fold_index, method, "val", k, alpha, result))
            timer.add("evaluate (val grid)", t)
            best_k, best_alpha = max(grid, key=lambda ka: (grid[ka]["mc2"], -ka[0], -ka[1]))
            t = time.perf_counter()
            steering = build_steering(bank, scores.top_k(min(best_k, scores.n_modules), uniform=method != "real"), alpha=best_alpha)
            result = cell(method=method, split="test", k=best_k, alpha=best_alpha)(
                lambda: _evaluate(model, test_q, texts, steering, cfg))
            timer.add("evaluate (test)", t)
            rows.append(_row(fold_index, method, "test", best_k, best_alpha, result))
            _collect(per_question, method, result)

    timer.seconds["total"] = time.perf_counter() - started
    _write_outputs(out, cfg, rows, per_question, all_scores, timer, bank_sizes)
    return out


# --------------------------------------------------------------------------- evaluation cells
def _questions(task, groups, limit, seed):
    """The fold part's MC questions in task order; a seeded sample of ``limit`` of them."""
    if "mc" not in task.eval_data:
        raise RealLensError(f"task {task.name!r} has no multiple-choice evaluation data; `real-lens run` needs truthfulqa")
    questions = select_mc_questions(task, groups)
    if limit is not None and limit < len(questions):
        keep = np.random.default_rng(seed).choice(len(questions), size=limit, replace=False)
        questions = [questions[i] for i in sorted(keep)]
    return questions


def _evaluate(model, questions, texts, steering, cfg) -> dict:
    mc = evaluate_truthfulqa(model, questions, steering=steering, progress=False)
    out = {"mc1": float(np.mean(mc.mc1)), "mc2": float(np.mean(mc.mc2)), "n_questions": len(questions),
           "per_question": {"question": [q.question for q in questions],
                            "mc1": [float(x) for x in mc.mc1], "mc2": [float(x) for x in mc.mc2]}}
    if texts:
        side = evaluate_side_effects(model, texts, steering=steering, max_tokens=cfg.side_effect_tokens)
        out.update(ce=float(side.ce), kl=float(side.kl))
    return out


def _cached_cell(out: Path, cfg: ExperimentConfig, fold: int, key: dict):
    """``cell(key)(compute)`` → the cached result for this cell, computing it once."""
    relevant = {k: v for k, v in _jsonable(cfg).items() if k not in ("methods", "k_grid", "alpha_grid", "folds", "n_boot")}
    digest = hashlib.sha256(json.dumps([relevant, fold, key], sort_keys=True).encode()).hexdigest()[:16]
    path = out / "cells" / f"fold{fold}-{key['method']}-{key['split']}-k{key['k']}-a{key['alpha']:g}-{digest}.json"

    def get(compute):
        if path.is_file():
            return read_json(path)
        result = compute()
        write_json(path, result)
        return result

    return get


def _cached_scores(out: Path, cfg: ExperimentConfig, fold: int, method: str, bank, model) -> ModuleScores:
    folder = out / "scores" / f"fold{fold}" / method
    key = {"bank": bank.meta.get("cache_key"), "n": len(bank.examples), "seed": cfg.seed,
           "options": _jsonable(_scorer_options(cfg, method))}
    if (folder / "key.json").is_file() and read_json(folder / "key.json") == key:
        return ModuleScores.load(folder)
    scores = get_scorer(method)(bank, model=model, seed=cfg.seed, device=cfg.device, **_scorer_options(cfg, method))
    scores.save(folder)
    write_json(folder / "key.json", key)
    return scores


def _scorer_options(cfg: ExperimentConfig, method: str) -> dict:
    if method == "real":
        from .scoring.real import RealConfig

        return {"cfg": RealConfig(vq_epochs=cfg.real_epochs, prior_epochs=cfg.real_prior_epochs)}
    if method == "patching":
        from .scoring.patching import PatchingConfig

        return {"cfg": PatchingConfig(n_pairs=cfg.patching_pairs)}
    if method == "attribution":
        from .scoring.attribution import AttributionConfig

        return {"cfg": AttributionConfig(n_pairs=cfg.patching_pairs)}
    return {}


def _row(fold, method, split, k, alpha, result) -> dict:
    return {"fold": fold, "method": method, "split": split, "k": k, "alpha": alpha,
            "n_questions": result["n_questions"], "mc1": result["mc1"], "mc2": result["mc2"],
            "ce": result.get("ce", ""), "kl": result.get("kl", "")}


def _collect(per_question, method, result) -> None:
    store = per_question.setdefault(method, {"mc1": [], "mc2": [], "ce": [], "kl": []})
    store["mc1"] += result["per_question"]["mc1"]
    store["mc2"] += result["per_question"]["mc2"]
    store["ce"].append(result["ce"])
    store["kl"].append(result["kl"])


def _jsonable(obj):
    if dataclasses.is_dataclass(obj):
        return _jsonable(dataclasses.asdict(obj))
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    return obj


# --------------------------------------------------------------------------- outputs
def _write_outputs(out, cfg, rows, per_question, all_scores, timer, bank_sizes) -> None:
    from .plotting import plot_metric_vs_k, plot_score_heatmaps

    with open(out / "results.csv.tmp", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    (out / "results.csv.tmp").replace(out / "results.csv")
    for fold, scores in all_scores.items():
        plot_score_heatmaps(scores, out / f"heatmaps_fold{fold}.png")
    plot_metric_vs_k(rows, out / "mc2_vs_k.png", metric="mc2", split="val")

    summary = summarise(rows, per_question, n_boot=cfg.n_boot, seed=cfg.seed)
    write_json(out / "summary.json", summary)
    (out / "summary.md.tmp").write_text(render_summary(cfg, summary, rows, timer, bank_sizes))
    (out / "summary.md.tmp").replace(out / "summary.md")


def summarise(rows, per_question, *, n_boot: int, seed: int) -> dict:
    """Per method: means over folds of the test cells, bootstrap CIs over test questions."""
    out = {}
    for method, store in per_question.items():
        tests = [r for r in rows if r["method"] == method and r["split"] == "test"]
        entry = {"folds": len(tests), "n_questions": len(store["mc2"]),
                 "k": [r["k"] for r in tests], "alpha": [r["alpha"] for r in tests]}
        for metric in ("mc1", "mc2"):
            entry[metric] = float(np.mean([r[metric] for r in tests]))
            entry[f"{metric}_ci"] = list(bootstrap_ci(np.array(store[metric]), n_boot=n_boot, seed=seed))
        entry["ce"] = float(np.mean(store["ce"]))
        entry["kl"] = float(np.mean(store["kl"]))
        out[method] = entry
    return out


def render_summary(cfg: ExperimentConfig, summary: dict, rows, timer: _Timer, bank_sizes: dict[int, int]) -> str:
    lines = [
        f"# real-lens run: {cfg.task} on {cfg.model}",
        "",
        f"Test metrics are means over folds {list(cfg.folds)}; 95% CIs bootstrap the pooled test questions "
        f"({cfg.n_boot} resamples). K and α were chosen per method and fold on the fold's val questions by MC2.",
        "",
        "| method | MC1 | MC1 95% CI | MC2 | MC2 95% CI | CE | KL | chosen K per fold | chosen α per fold |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for method, e in summary.items():
        lines.append(
            f"| {method} | {e['mc1']:.3f} | [{e['mc1_ci'][0]:.3f}, {e['mc1_ci'][1]:.3f}] | {e['mc2']:.3f} | "
            f"[{e['mc2_ci'][0]:.3f}, {e['mc2_ci'][1]:.3f}] | {e['ce']:.3f} | {e['kl']:.4f} | "
            f"{', '.join(map(str, e['k'])) or '-'} | {', '.join(f'{a:g}' for a in e['alpha']) or '-'} |"
        )
    n_test = sorted({r["n_questions"] for r in rows if r["split"] == "test"})
    n_val = sorted({r["n_questions"] for r in rows if r["split"] == "val"})
    lines += [
        "",
        "## Sizes",
        "",
        f"- model `{cfg.model}`, site `{cfg.site}`, readout `{cfg.readout}`, seed {cfg.seed}",
        f"- K grid {list(cfg.k_grid)}, α grid {list(cfg.alpha_grid)}",
        "- questions per fold part (train / val / test): "
        + ("all" if cfg.questions_per_part is None else f"at most {cfg.questions_per_part} (the first in task order)")
        + "; examples scored and used for steering directions (train+val) per fold: "
        + ", ".join(f"fold {f}: {n}" for f, n in bank_sizes.items()),
        f"- val questions per fold {n_val}" + (" (all)" if cfg.n_val_questions is None else " (a seeded sample)")
        + f"; test questions per fold {n_test}" + (" (all)" if cfg.n_test_questions is None else " (a seeded sample)"),
        f"- activation/attribution patching on {cfg.patching_pairs} contrast pairs per fold",
        f"- REAL: {cfg.real_epochs} VQ-AE epochs, {cfg.real_prior_epochs} prior epochs (other settings: the paper's release)",
        f"- side effects: {cfg.side_effect_texts} WikiText-2 paragraphs, ≤{cfg.side_effect_tokens} tokens each",
        "",
        "## Where the time went",
        "",
        "| step | seconds |",
        "|---|---|",
    ]
    for step, seconds in sorted(timer.seconds.items(), key=lambda kv: -kv[1]):
        lines.append(f"| {step} | {seconds:.0f} |")
    lines += ["", "(steps that were reused from the cache take ~0 s on a resumed run)", ""]
    return "\n".join(lines)
