"""Per-head diagnostics of a run: does a method lose by its ranking or by the curvature of its dose? (issue #20 §4)

For each method's top-K heads in a fold, from the scores the run saved, one row:

- ``score``: the method's own score of the head;
- ``first_order``: d gap / dα at α = 0 of the head's own steering offset α·σ·u (u and σ exactly as the
  run steers: the fold's fitting bank, and the tuning bank's σ under ``--sigma-bank tuning``), on the
  fold's contrast pairs (the run's ``attribution_pairs`` and ``pair_demos``, log-prob gap on the corrupted
  context): :func:`real_lens.scoring.direction_attribution.direction_effects`, one backward per batch for
  every head at once; ``first_order_se`` its standard error over pairs and ``first_order_rank`` its rank
  among all heads (1 = the largest);
- the head **alone** (strength 1) at a matched small dose: α calibrated as the job calibrates
  (:func:`~real_lens.evaluation.dose.calibrate_alpha`, the job's held-apart calibration paragraphs and
  settings) to ``dose_kl`` nats per token, then evaluated on the fold's test questions: ``delta_<metric>``
  against unsteered for every task metric, ``linear_gap`` = α · first_order (what the first-order effect
  predicts for the pairs' gap at that α) and, for answer-scored tasks (TruthfulQA), the split of the
  per-answer log-prob change into ``beta_truth`` (nats added to true answers beyond their length) and
  ``beta_len`` (nats per answer token) with ``p_truth`` (:mod:`real_lens.evaluation.decomposition`).

How to read it: a method whose heads have small or negative first-order effects (low ``first_order_rank``)
loses by its **ranking**; one whose heads move the metric to first order but whose set gains little at the
run's doses loses by **curvature** — the set's dose–response (the run's ``results.csv`` over a KL grid,
printed at the end when the run has one) shows where the gain bends.

Every computed piece is a sealed JSON cell under ``RUN/diagnose/cells`` keyed like the run's own cells
(:func:`~real_lens.experiment.store.cell_path`), one per head and dose, so an interrupted diagnose resumes
and a head two methods share is evaluated once. ``RUN/diagnose/heads.csv`` (sealed) and ``heads.md`` are
written atomically at the end.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from ..activations import collect_activations
from ..errors import RealLensError
from ..evaluation.decomposition import answer_deltas, decompose
from ..evaluation.dose import CALIBRATION, calibrate_alpha
from ..evaluation.suite import eval_items
from ..hooks import module_label
from ..io import atomic_write, notice
from ..locks import output_lock
from ..scoring import Selection
from ..scoring.direction_attribution import METHOD as FIRST_ORDER, direction_effects, unit_directions
from ..scoring.pairs import build_contrast_pairs
from ..steering import build_steering
from ..tasks.truthfulqa import tuning_examples
from .config import ExperimentConfig, fit_groups, load_config
from .setup import evaluate_cell, prepare, prepare_task
from .store import cached_cell, read_cached_scores, read_rows, write_rows

logger = logging.getLogger(__name__)

DIAGNOSE_DIR = "diagnose"
TABLE, REPORT = "heads.csv", "heads.md"
SINGLE_HEAD = "single-head"
DEFAULT_DOSE_KL = 0.02


@dataclass(frozen=True)
class DiagnoseConfig:
    """What to diagnose in the run at ``run_dir``: ``folds`` (None: every fold it ran), ``methods`` (None: every
    method it saved scores of), the top ``k`` heads of each (None: the largest K of its grid), and the
    single-head dose ``dose_kl`` (nats per token of KL(unsteered ‖ steered) on the calibration paragraphs)."""

    run_dir: str
    folds: tuple[int, ...] | None = None
    methods: tuple[str, ...] | None = None
    k: int | None = None
    dose_kl: float = DEFAULT_DOSE_KL

    def __post_init__(self):
        if self.k is not None and (isinstance(self.k, bool) or not isinstance(self.k, int) or self.k < 1):
            raise RealLensError(f"k (heads per method) must be a positive integer; got {self.k!r}")
        if not (isinstance(self.dose_kl, (int, float)) and 0 < self.dose_kl < math.inf):
            raise RealLensError(f"dose_kl must be a KL > 0 in nats per token (e.g. 0.02); got {self.dose_kl!r}")
        if self.folds is not None and (not self.folds or min(self.folds) < 0):
            raise RealLensError(f"folds must be fold indices (0, 1, ...); got {self.folds}")


@dataclass(frozen=True)
class Plan:
    """What a diagnose computes, checked against the run before any model is loaded."""

    run: Path
    cfg: ExperimentConfig
    folds: tuple[int, ...]
    methods: tuple[str, ...]
    k: int
    metric: str  # the run's selection metric: the one the report tabulates


def plan_diagnose(dcfg: DiagnoseConfig) -> Plan:
    """The run's configuration and what to diagnose in it; one-line errors for anything the run does not hold."""
    run = Path(dcfg.run_dir)
    if not run.is_dir():
        raise RealLensError(f"{run} is not a directory; pass a `real-lens run` output directory (e.g. runs/truthfulqa)")
    cfg = load_config(run)
    _, _, metric, run_folds = prepare_task(cfg)
    folds = dcfg.folds if dcfg.folds is not None else run_folds
    outside = [f for f in folds if f not in run_folds]
    if outside:
        raise RealLensError(f"fold(s) {outside} are not in the run {run} (it ran folds {list(run_folds)}); "
                            f"pick --fold from those")
    scored = {m for m in cfg.methods if all((run / "scores" / f"fold{f}" / m).is_dir() for f in folds)}
    if dcfg.methods is not None:
        unknown = [m for m in dcfg.methods if m not in cfg.methods]
        if unknown:
            raise RealLensError(f"method(s) {unknown} are not in the run {run}; it ran {list(cfg.methods)}")
        missing = [m for m in dcfg.methods if m not in scored]
        if missing:
            raise RealLensError(f"the run {run} saved no scores of {missing} for fold(s) {list(folds)} (a method that "
                                "cannot score the task has none, and an unfinished run lacks some); finish the run "
                                f"with `real-lens run --config {run} --out {run}`, or leave them out")
        methods = tuple(dcfg.methods)
    else:
        methods = tuple(m for m in cfg.methods if m in scored)
        if not methods:
            raise RealLensError(f"the run {run} saved no scores for fold(s) {list(folds)} (no scores/fold*/<method>); "
                                f"finish it with `real-lens run --config {run} --out {run}`")
        left = [m for m in cfg.methods if m not in scored]
        if left:
            notice(f"diagnose: no saved scores of {left} in {run}; diagnosing {list(methods)}")
    return Plan(run, cfg, tuple(folds), methods, dcfg.k or max(cfg.k_grid), metric)


def run_diagnose(dcfg: DiagnoseConfig, *, progress: bool = True, device: str | None = None) -> Path:
    """Diagnose the run (module docstring); returns ``RUN/diagnose`` holding heads.csv and heads.md."""
    plan = plan_diagnose(dcfg)
    out = plan.run / DIAGNOSE_DIR
    out.mkdir(exist_ok=True)
    with output_lock(out, wait=False):
        rows = _compute(plan, dcfg.dose_kl, out, progress=progress, device=device)
        write_rows(out / TABLE, rows)
        text = render(plan, rows, dcfg.dose_kl)
        atomic_write(out / REPORT, lambda tmp: Path(tmp).write_text(text))
    return out


class HeadEffects:
    """Heads of a finished run steered **alone** at one matched small dose, each cached as a cell.

    The run's model, task and calibration paragraphs (those a KL-dosed run of its configuration draws, also
    for an α-grid run); per fold, the head's steering (strength 1) built from the fold's fitting bank (σ
    from the tuning bank under ``--sigma-bank tuning``) exactly as the run steers, α calibrated as the job
    calibrates to ``dose_kl`` nats per token, evaluated on the fold's test questions (the run's own sample).
    Cells live under ``RUN/diagnose/cells``, so `real-lens diagnose` and ``analyses.score_vs_effect`` share
    them: a head either has evaluated is not evaluated again.
    """

    def __init__(self, run: Path, cfg: ExperimentConfig, *, dose_kl: float = DEFAULT_DOSE_KL,
                 progress: bool = True, device: str | None = None):
        self.run, self.cfg, self.dose_kl, self.progress = Path(run), cfg, dose_kl, progress
        self.out = self.run / DIAGNOSE_DIR
        self.out.mkdir(exist_ok=True)
        self.setup = prepare(dataclasses.replace(cfg, kl_grid=cfg.kl_grid or (dose_kl,)), device=device)
        self.bank = collect_activations(self.setup.model, self.setup.task, site=cfg.site, readout=cfg.readout,
                                        batch_size=cfg.batch_size, progress=progress)
        self.tuning = None
        if cfg.sigma_bank == "tuning":
            self.tuning = collect_activations(self.setup.model, tuning_examples(self.setup.task.examples),
                                              site=cfg.site, readout=cfg.readout, batch_size=cfg.batch_size,
                                              progress=progress)
        self._banks = {}  # fold -> (fitting bank, σ bank): selected once, not once per head

    def banks(self, fold: int):
        """The fold's fitting bank and its σ bank (None: σ from the fitting bank)."""
        if fold not in self._banks:
            groups = fit_groups(self.cfg, self.setup.task.folds[fold])
            self._banks[fold] = (self.bank.select(groups), None if self.tuning is None else self.tuning.select(groups))
        return self._banks[fold]

    def test_items(self, fold: int):
        return eval_items(self.setup.evaluation, self.setup.task, self.setup.task.folds[fold].test,
                          self.cfg.n_test_questions, self.cfg.seed)

    def unsteered(self, fold: int) -> dict:
        """The unsteered model's evaluation cell on the fold's test questions."""
        return cached_cell(self.out, self.cfg, fold, dict(method="unsteered", split="test", k=0, alpha=0.0))(
            lambda: evaluate_cell(self.setup, self.test_items(fold), None, self.cfg, progress=self.progress))

    def single_head(self, fold: int, module: tuple[int, int | None]) -> dict:
        """``{"calibration": ..., "result": evaluation cell}`` of ``module`` steered alone in ``fold``."""
        layer, head = module
        key = dict(method=SINGLE_HEAD, split="test", k=1, dose=f"kl{self.dose_kl:g}", head=module_label(layer, head))
        return cached_cell(self.out, self.cfg, fold, key)(lambda: self._single_head(fold, module))

    def _single_head(self, fold: int, module) -> dict:
        bank, sigma_bank = self.banks(fold)
        unit = build_steering(bank, Selection((module,), (1.0,), SINGLE_HEAD), alpha=1.0, sigma_bank=sigma_bank)
        calibration = calibrate_alpha(self.setup.model, unit, self.setup.calibration, self.dose_kl,
                                      reference=self.setup.kl_reference(), max_tokens=self.cfg.side_effect_tokens,
                                      **CALIBRATION)
        result = evaluate_cell(self.setup, self.test_items(fold), unit.with_alpha(calibration.alpha), self.cfg,
                               progress=self.progress)
        return {"calibration": {k: v for k, v in dataclasses.asdict(calibration).items() if k != "trace"},
                "result": result}


def _compute(plan: Plan, dose_kl: float, out: Path, *, progress: bool, device) -> list[dict]:
    cfg = plan.cfg
    heads_alone = HeadEffects(plan.run, cfg, dose_kl=dose_kl, progress=progress, device=device)
    model, evaluation = heads_alone.setup.model, heads_alone.setup.evaluation
    rows = []
    for fold in plan.folds:
        fold_bank, sigma_bank = heads_alone.banks(fold)
        selections = {}
        for method in plan.methods:
            scores = read_cached_scores(plan.run, cfg, fold, method, fold_bank)
            if scores is None:
                raise RealLensError(f"the {method} scores of fold {fold} in {plan.run} do not verify against this run's "
                                    f"bank and settings; run `real-lens run --config {plan.run} --out {plan.run}` to "
                                    "recompute them")
            selections[method] = (scores, scores.select(min(plan.k, scores.n_modules)))

        first = cached_cell(out, cfg, fold, dict(method=FIRST_ORDER, split="fit", k=0, alpha=0.0))(
            lambda: _first_order(model, fold_bank, sigma_bank, cfg, progress=progress))
        effects = np.asarray(first["first_order"], dtype=float)
        order = np.argsort(-effects.reshape(-1), kind="stable")
        ranks = np.empty(order.size, dtype=int)
        ranks[order] = np.arange(1, order.size + 1)
        ranks = ranks.reshape(effects.shape)
        unsteered = heads_alone.unsteered(fold)

        heads = list(dict.fromkeys(m for _, sel in selections.values() for m in sel.modules))
        logger.info("fold %d: %d heads (top %d of %s), each alone at KL %g", fold, len(heads), plan.k,
                    ",".join(plan.methods), dose_kl)
        singles = {module: heads_alone.single_head(fold, module)
                   for module in tqdm(heads, desc=f"fold {fold} heads", unit="head", disable=not progress)}
        for method, (scores, selection) in selections.items():
            for rank, (layer, head) in enumerate(selection.modules, start=1):
                index = (layer,) if head is None else (layer, head)
                rows.append(_row(fold, method, rank, (layer, head), float(scores.scores[index]), first, effects[index],
                                 int(ranks[index]), singles[(layer, head)], unsteered, evaluation, cfg))
    return rows


def _first_order(model, bank, sigma_bank, cfg: ExperimentConfig, *, progress: bool) -> dict:
    """Every head's first-order effect per unit α on the fold's contrast pairs (the run's attribution pairs)."""
    pairs = build_contrast_pairs(bank.examples, model, n_pairs=cfg.attribution_pairs, n_demos=cfg.pair_demos,
                                 seed=cfg.seed)
    directions, sigmas = unit_directions(bank, sigma_bank=sigma_bank)
    effects, metric = direction_effects(model, pairs, directions, sigmas, site=bank.site,
                                       batch_tokens=cfg.attribution_batch_tokens, progress=progress)
    n = effects.shape[0]
    stderr = (effects.std(0) / n**0.5).tolist() if n > 1 else np.full(tuple(effects.shape[1:]), np.nan).tolist()
    return {"first_order": effects.mean(0).tolist(), "stderr": stderr, "sigma": sigmas.double().tolist(),
            "n_pairs": n, "mean_metric": float(metric.mean()), "context": "corrupted"}


def _row(fold, method, rank, module, score, first, effect, first_rank, single, unsteered, evaluation,
         cfg: ExperimentConfig) -> dict:
    layer, head = module
    index = (layer,) if head is None else (layer, head)
    calibration, result = single["calibration"], single["result"]
    row = {"fold": fold, "method": method, "rank": rank, "head": module_label(layer, head), "score": score,
           "first_order": float(effect), "first_order_se": float(np.asarray(first["stderr"], dtype=float)[index]),
           "first_order_rank": first_rank, "sigma": float(np.asarray(first["sigma"], dtype=float)[index]),
           "alpha": calibration["alpha"], "calibration_kl": calibration["kl"], "reached": calibration["reached"],
           "linear_gap": calibration["alpha"] * float(effect)}
    for metric in evaluation.metrics:
        row[f"delta_{metric}"] = result[metric] - unsteered[metric]
    row.update(beta_truth="", beta_len="", p_truth="", n_test_questions=result["n_questions"], note="")
    if "per_answer" in result and "per_answer" in unsteered:
        per = result["per_answer"]
        try:
            fit = decompose(per["group"], per["true"], per["tokens"], answer_deltas(per, unsteered["per_answer"]),
                            n_boot=cfg.n_boot, seed=cfg.seed)
            row.update(beta_truth=fit.beta_truth, beta_len=fit.beta_len, p_truth=fit.p_truth)
        except ValueError as exc:  # too few questions, or truth and length collinear within them
            row["note"] = f"no truth/length split: {exc}"
    return row


# --------------------------------------------------------------------------- the report
def render(plan: Plan, rows: list[dict], dose_kl: float) -> str:
    """heads.md: per fold and method the heads' table, a summary per method, and the set's dose–response."""
    cfg, metric = plan.cfg, plan.metric
    has_split = any(r["beta_truth"] != "" for r in rows)
    lines = [
        f"# real-lens diagnose: {plan.run}",
        "",
        f"{cfg.task} on {cfg.model}; the top {plan.k} heads of {', '.join(plan.methods)} in fold(s) "
        f"{', '.join(map(str, plan.folds))}, from the run's saved scores.",
        "",
        "- **first order**: d(log-prob gap)/dα at α = 0 of the head's own steering offset α·σ·u, on the fold's "
        "contrast pairs (corrupted context), nats per unit α ± its standard error over pairs; **FO rank**: its rank "
        "among all heads (1 = the largest);",
        f"- the head **alone** at KL {dose_kl:g} (α calibrated on the job's calibration paragraphs): "
        f"**Δ{metric}** on the fold's test questions against unsteered"
        + (", and the split of the answers' log-prob change into **β_truth** (nats to true answers beyond their "
           "length) and **β_len** (nats per answer token)" if has_split else "")
        + "; **α·FO**: the gap change the first-order effect predicts at that α.",
        "",
        "A method whose heads have small or negative first-order effects loses by its ranking; one whose heads have "
        "large ones but whose set gains little at the run's doses loses by curvature (the dose–response below).",
    ]
    for fold in plan.folds:
        for method in plan.methods:
            mine = [r for r in rows if r["fold"] == fold and r["method"] == method]
            lines += ["", f"## Fold {fold}: {method}", "",
                      "| rank | head | score | first order | FO rank | α | KL | α·FO | Δ" + metric
                      + (" | β_truth | β_len |" if has_split else " |"),
                      "|---:|---|---:|---:|---:|---:|---:|---:|---:|" + ("---:|---:|" if has_split else "")]
            for r in mine:
                kl = f"{r['calibration_kl']:.3g}" + ("" if r["reached"] else " (missed)")
                lines.append(f"| {r['rank']} | {r['head']} | {r['score']:.4g} | {_pm(r['first_order'], r['first_order_se'])} "
                             f"| {r['first_order_rank']} | {r['alpha']:.3g} | {kl} | {r['linear_gap']:+.3g} "
                             f"| {r[f'delta_{metric}']:+.4g} |"
                             + (f" {_num(r['beta_truth'])} | {_num(r['beta_len'])} |" if has_split else ""))
    lines += ["", "## Per method", "",
              f"| fold | method | mean first order | heads with FO > 0 | median FO rank | mean Δ{metric} | heads with "
              f"Δ{metric} > 0 |" + (" mean β_truth | mean β_len |" if has_split else ""),
              "|---:|---|---:|---:|---:|---:|---:|" + ("---:|---:|" if has_split else "")]
    for fold in plan.folds:
        for method in plan.methods:
            mine = [r for r in rows if r["fold"] == fold and r["method"] == method]
            fo = np.array([r["first_order"] for r in mine])
            delta = np.array([r[f"delta_{metric}"] for r in mine])
            line = (f"| {fold} | {method} | {fo.mean():+.4g} | {int((fo > 0).sum())}/{len(mine)} | "
                    f"{float(np.median([r['first_order_rank'] for r in mine])):g} | {delta.mean():+.4g} | "
                    f"{int((delta > 0).sum())}/{len(mine)} |")
            if has_split:
                truth = [r["beta_truth"] for r in mine if r["beta_truth"] != ""]
                length = [r["beta_len"] for r in mine if r["beta_len"] != ""]
                line += f" {_num(np.mean(truth)) if truth else ''} | {_num(np.mean(length)) if length else ''} |"
            lines.append(line)
    lines += ["", *dose_response_lines(plan.run, metric)]
    return "\n".join(lines) + "\n"


def dose_response_lines(run: Path, metric: str) -> list[str]:
    """The set's test ``metric`` per method and KL target (each fold, and their mean) from the run's results.csv."""
    path = Path(run) / "results.csv"
    head = ["## The set's dose–response (the run's results.csv)", ""]
    if not path.is_file():
        return [*head, "The run has no results.csv yet."]
    rows = [r for r in read_rows(path) if r["split"] == "test" and r.get("target_kl", "") != "" and metric in r]
    if not rows:
        return [*head, "The run steered at fixed α, not at KL targets: no dose–response by KL to show."]
    targets = sorted({float(r["target_kl"]) for r in rows})
    folds = sorted({int(r["fold"]) for r in rows})
    values: dict[tuple[str, float, int], list[float]] = {}
    for r in rows:  # the random null: the mean over its draws
        values.setdefault((r["method"], float(r["target_kl"]), int(r["fold"])), []).append(float(r[metric]))
    methods = list(dict.fromkeys(r["method"] for r in rows))
    base = {int(r["fold"]): float(r[metric]) for r in read_rows(path) if r["split"] == "test" and r["method"] == "unsteered"}
    lines = [*head, f"Test {metric} of each method's chosen set at each KL target (fold "
             + " / ".join(map(str, folds)) + "; mean); unsteered: "
             + " / ".join(f"{base[f]:.4f}" for f in folds if f in base) + ". "
             + ("" if len(targets) >= 6 else "Rerun the run with `--kl-grid 0.03,0.06,0.1,0.2,0.3,0.5` in the same "
                "directory for a dose–response of 6 points (its cells are reused)."),
             "", "| method | " + " | ".join(f"KL {t:g}" for t in targets) + " |",
             "|---|" + "---:|" * len(targets)]
    for method in methods:
        cells = []
        for t in targets:
            per_fold = [float(np.mean(values[(method, t, f)])) for f in folds if (method, t, f) in values]
            cells.append(" / ".join(f"{v:.4f}" for v in per_fold) + (f" ({np.mean(per_fold):.4f})" if len(per_fold) > 1
                                                                       else "") if per_fold else "")
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return lines


def _pm(value: float, se: float) -> str:
    return f"{value:+.4g}" + ("" if not math.isfinite(se) else f" ± {se:.2g}")


def _num(value) -> str:
    return "" if value == "" else f"{float(value):+.4g}"
