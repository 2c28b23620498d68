"""Cross-domain transfer: heads *and* directions selected on a source run, evaluated on another task.

Nothing is re-selected on the target: each method's modules come from the source run's saved
scores, its steering directions (and σ) from the source task's activations of the questions the
source fitted on, and its K and α are the ones the source run chose (for a KL target: the α its
calibration found; each KL target is transferred as its own condition). ``random`` transfers the
source's null draw 0 (the random ranking saved with its scores). The target task contributes
only its test questions (the same seeded sample its own `real-lens run` evaluates, so the
numbers sit next to "selected on the target itself"), and CE/KL are measured as in every run.

Folds: target fold ``t`` is steered with the selection of source fold ``min(t, n − 1)`` of the
``n`` folds the source run used (TruthfulQA → CAA: CAA's single fold uses TruthfulQA fold 0;
CAA → TruthfulQA: both folds use CAA's fold). Source and target are different datasets, so no
target test question was seen during selection.

summary.json keeps every arm's per-item values (``per_item``: fold, group and each metric, in the
order the target run evaluates them), so a transferred arm can be paired item by item with the
target run's own arms and random null (``analyses/transfer.py`` does).
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from ..activations import collect_activations
from ..errors import ArtifactError, RealLensError
from ..evaluation.suite import eval_items
from ..io import atomic_write, read_sealed_json, write_json
from ..locks import output_lock
from ..provenance import check_same_model
from ..scoring import ModuleScores, method_names
from ..steering import build_steering
from .config import METHODS, ExperimentConfig, arm_name, fit_parts
from .report import summary_table, timing_lines
from .setup import cell_is_current, evaluate_cell, prepare, result_row
from .stats import Arm, summarise
from .shard import Plan, RankShare, deferrable, gather_shares, items_cost, plan_cell, run_cells, texts_cost
from .store import Timer, read_rows, start_run_dir, write_rows


@dataclass(frozen=True)
class TransferConfig:
    source_run: str  # a finished `real-lens run` directory
    target: str  # a task name (see `real-lens tasks`)
    methods: tuple[str, ...] | None = None  # None = every method of the source run
    n_test_questions: int | None = None  # None = the source run's setting (its test sample size)
    # None = the source run's; give the target run's own (with its n_test_questions) to evaluate exactly its test sample
    questions_per_part: int | None = None
    folds: tuple[int, ...] | None = None  # target folds to evaluate; None = all of the target's folds

    def __post_init__(self):
        known = method_names()
        unknown = [m for m in self.methods or () if m not in known]
        if unknown:
            raise RealLensError(f"unknown method(s) {unknown}; expected some of {list(known)}")
        for name in ("n_test_questions", "questions_per_part"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise RealLensError(f"{name} must be a positive integer or None (the source run's); got {value!r}")


def load_source_run(source_dir) -> tuple[ExperimentConfig, list[dict]]:
    """A finished run's configuration and its results rows; clear errors for anything else."""
    source = Path(source_dir)
    for name in ("config.json", "results.csv"):
        if not (source / name).is_file():
            raise RealLensError(
                f"{source} is not a finished real-lens run (no {name}); run `real-lens run --task <source> --out {source}` first"
            )
    try:
        stored = read_sealed_json(source / "config.json", allow_unsealed=True)["config"]
    except (ArtifactError, KeyError, TypeError) as exc:
        raise RealLensError(f"{source}/config.json is unreadable ({exc}); run the source again") from exc
    fields = {f.name for f in dataclasses.fields(ExperimentConfig)}
    unknown = sorted(set(stored) - fields)
    if unknown:
        raise RealLensError(f"{source}/config.json has settings this real-lens does not know: {unknown}")
    cfg = ExperimentConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in stored.items()})
    try:  # the chosen K and α are read from this table: an edited one must not steer the target
        rows = read_rows(source / "results.csv", verified=True)
    except ArtifactError as exc:
        raise RealLensError(f"{exc}; run `real-lens run --config {source} --out {source}` again (it reuses the cached, "
                            "verified cells and writes the table anew)") from None
    return cfg, rows


def run_transfer(tcfg: TransferConfig, out_dir, *, progress: bool = True, device: str | None = None) -> Path:
    """Evaluate the source run's selections on ``tcfg.target``'s test questions; returns ``out_dir``.

    The output directory is locked for the whole transfer: a second one into it fails at once. Under
    ``torchrun`` the ranks split the cells (:mod:`.shard`), each on its own ``device``; rank 0 writes."""
    from ..distributed import current_ranks

    ranks = current_ranks()
    with output_lock(out_dir, wait=False) if ranks.is_main else contextlib.nullcontext():
        return _run_transfer(tcfg, out_dir, progress=progress and ranks.is_main, device=device, ranks=ranks)


def _run_transfer(tcfg: TransferConfig, out_dir, *, progress: bool = True, device=None, ranks=None) -> Path:
    source_dir = Path(tcfg.source_run)
    src_cfg, src_rows = load_source_run(source_dir)
    chosen = {}  # (source fold, method, dose group) -> (K, α)
    for r in src_rows:
        if r["split"] == "test" and r["method"] not in ("unsteered", "length-only") and r.get("draw", "") in ("", "0"):
            group = f"KL {float(r['target_kl']):g}" if r.get("target_kl") else ""
            chosen[(int(r["fold"]), r["method"], group)] = (int(r["k"]), float(r["alpha"]))
    src_folds = sorted({f for f, _, _ in chosen})
    groups = sorted({g for _, _, g in chosen})
    ran = {mm for _, mm, _ in chosen}
    methods = tcfg.methods or tuple(m for m in dict.fromkeys((*METHODS, *method_names())) if m in ran)
    missing = [m for m in methods if (src_folds[0], m, groups[0]) not in chosen]
    if missing:
        raise RealLensError(f"the source run {source_dir} has no chosen K/α for {missing}; "
                            f"it ran {sorted({m for _, m, _ in chosen})}")

    out = start_run_dir(out_dir, tcfg) if ranks.is_main else Path(out_dir)
    if ranks.is_distributed:
        import torch.distributed as dist

        dist.barrier()  # config.json is written before any rank computes
    timer, started = Timer(), time.perf_counter()
    t = time.perf_counter()
    tgt_cfg = dataclasses.replace(src_cfg, task=tcfg.target, folds=tcfg.folds, select_metric=None,
                                  n_test_questions=tcfg.n_test_questions or src_cfg.n_test_questions,
                                  questions_per_part=tcfg.questions_per_part or src_cfg.questions_per_part)
    target = prepare(tgt_cfg, device=device)
    source = prepare(dataclasses.replace(src_cfg, side_effect_texts=0), model=target.model)  # CE/KL texts: target's
    timer.add("load model + data", t)
    t = time.perf_counter()
    src_bank = collect_activations(target.model, source.task, site=src_cfg.site, readout=src_cfg.readout,
                                   batch_size=src_cfg.batch_size, progress=progress, shard=ranks.is_distributed)
    timer.add("collect source activations", t)
    evaluation = target.evaluation
    side_cost = texts_cost(target.texts, tgt_cfg.side_effect_tokens)

    current = partial(cell_is_current, evaluation)

    def evaluate_all(timer: Timer, plan: Plan | None) -> tuple[list[dict], dict, dict]:
        """Every target fold's cells (in planning mode: those missing are recorded, :mod:`.shard`), and each
        arm's per-item values (so a reader can pair any two arms, e.g. with the target's own null)."""
        rows, arms, per_item = [], {}, {}

        def record(name: str, fold: int, result: dict) -> None:
            values = per_item.setdefault(name, {})
            values.setdefault("fold", []).extend([fold] * len(result["per_item"]["group"]))
            for key, v in result["per_item"].items():
                values.setdefault(key, []).extend(v)
        for t_fold in target.folds:
            s_fold = src_folds[min(t_fold, len(src_folds) - 1)]
            fold = target.task.folds[t_fold]
            items = eval_items(evaluation, target.task, fold.test, tgt_cfg.n_test_questions, tgt_cfg.seed)
            cost = items_cost(items) + side_cost

            def cell(step, t_fold=t_fold, cost=cost, **key):
                return plan_cell(plan, out, tgt_cfg, t_fold, key, step=step, cost=cost)

            t, step = time.perf_counter(), "evaluate (unsteered)"
            with deferrable(plan):
                base = cell(step, method="unsteered", split="test", k=0, alpha=0.0)(
                    lambda items=items: evaluate_cell(target, items, None, tgt_cfg, side_effects=True), current=current)
                rows.append(result_row(evaluation, t_fold, "unsteered", "test", 0, 0.0, base, dose="", source_fold=""))
                arms.setdefault("unsteered", Arm("unsteered")).add(t_fold, base)
                record("unsteered", t_fold, base)
            timer.add(step, t)
            src_fold = source.task.folds[s_fold]
            bank = src_bank.select(set().union(*(getattr(src_fold, part) for part in fit_parts(src_cfg))))
            for method in methods:
                scores = ModuleScores.load(source_dir / "scores" / f"fold{s_fold}" / method)
                check_same_model(scores.meta.get("model"), target.model, what=f"the {method} scores of {source_dir}",
                                 fix="transfer with the model the source run used (its config.json), or run the source again")
                for group in groups:
                    k, alpha = chosen[(s_fold, method, group)]
                    t, step = time.perf_counter(), "evaluate (transferred)"
                    steering = build_steering(bank, scores.select(min(k, scores.n_modules)), alpha=alpha)
                    with deferrable(plan):
                        result = cell(step, method=method, split="test", k=k, alpha=alpha, source=src_cfg.task,
                                      source_fold=s_fold)(
                            lambda items=items, steering=steering: evaluate_cell(target, items, steering, tgt_cfg,
                                                                                 side_effects=True), current=current)
                        rows.append(result_row(evaluation, t_fold, method, "test", k, alpha, result, dose=group,
                                               source_fold=s_fold))
                        arms.setdefault(arm_name(method, group), Arm(method, group)).add(t_fold, result, k=k, alpha=alpha)
                        record(arm_name(method, group), t_fold, result)
                    timer.add(step, t)
        return rows, arms, per_item

    shares = None
    if ranks.is_distributed:  # the ranks compute the missing cells; then rank 0 reads them all below
        share = RankShare(ranks.rank)
        worklog = out / "ranks" / f"rank{ranks.rank}.jsonl"
        worklog.parent.mkdir(parents=True, exist_ok=True)
        run_cells(lambda plan: evaluate_all(Timer(), plan), ranks, share, worklog=worklog)
        shares = gather_shares(share, ranks)
        for other in shares:
            for step, seconds in other["seconds"].items():
                timer.seconds[step] = timer.seconds.get(step, 0.0) + seconds
        if not ranks.is_main:
            return out
    rows, arms, per_item = evaluate_all(timer, None)

    timer.seconds["total"] = time.perf_counter() - started
    write_rows(out / "results.csv", rows)
    summary = summarise(arms, evaluation.metrics, n_boot=tgt_cfg.n_boot, seed=tgt_cfg.seed)
    write_json(out / "summary.json", {"source": src_cfg.task, "source_run": str(source_dir), "target": target.task.name,
                                      "metrics": list(evaluation.metrics), "select_metric": target.select_metric,
                                      "methods": summary, "per_item": per_item})
    text = "\n".join([
        f"# real-lens transfer: {src_cfg.task} → {target.task.name} on {src_cfg.model}",
        "",
        f"Modules, directions, K and α all come from the source run `{source_dir}` (chosen there on "
        f"{src_cfg.task} val questions); nothing was re-selected on {target.task.name}. Test metrics are "
        f"means over target folds {list(target.folds)} (source fold per target fold: "
        + ", ".join(f"{t}←{src_folds[min(t, len(src_folds) - 1)]}" for t in target.folds)
        + f"); 95% CIs bootstrap the pooled test items ({tgt_cfg.n_boot} resamples).",
        "",
        *summary_table(summary, evaluation.metrics),
        *timing_lines([timer.seconds], ranks=shares),
    ])
    atomic_write(out / "summary.md", lambda tmp: Path(tmp).write_text(text))
    return out

