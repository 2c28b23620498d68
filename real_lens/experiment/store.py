"""The run directory: its configuration, the cached cells and scores, the results table, the timing.

Everything a run computes is cached here as verified files (one sealed JSON per evaluated cell and
per α calibration, one scores artifact per fold and method), keyed by a digest of every setting
that changes the value, so an interrupted run resumes where it stopped and a rerun reuses what is
done. A directory holding results of another configuration is refused.
"""

from __future__ import annotations

import csv
import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from .._version import __version__
from ..errors import ArtifactError, RealLensError, ScoringError
from ..io import atomic_write, notice, read_json, read_sealed_json, write_sealed_json
from ..locks import output_lock
from ..provenance import with_source
from ..scoring import SCORERS, ModuleScores, method_names, score_modules
from .config import ExperimentConfig, jsonable
from .setup import prepare_task


@dataclass
class Timer:
    seconds: dict[str, float] = field(default_factory=dict)

    def add(self, what: str, start: float) -> None:
        self.seconds[what] = self.seconds.get(what, 0.0) + time.perf_counter() - start


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
        if stored is not None and stored != jsonable(cfg) and _has_results(out):
            raise RealLensError(
                f"{out} holds a run with another configuration (see its config.json); "
                "use a new --out directory or delete that one"
            )
        out.mkdir(parents=True, exist_ok=True)
        write_sealed_json(previous, {"config": jsonable(cfg), "real_lens_version": __version__})
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


def cached_cell(out: Path, cfg, fold: int, key: dict):
    """``cell(key)(compute)`` → the cached result for this cell, computing it once.

    ``key`` names the cell (method, split, K, and its ``alpha`` or ``dose``, a null ``draw``, ...);
    the file name also carries a digest of every setting that changes a cell's value. A scorer's own
    settings (pairs, demonstrations, epochs) enter only its own cells' digests, so changing one scorer
    recomputes that method's cells and keeps everyone else's."""
    ignored = ("methods", "k_grid", "alpha_grid", "kl_grid", "null_draws", "folds", "n_boot", *scorer_settings())
    relevant = {k: v for k, v in jsonable(cfg).items() if k not in ignored}
    relevant["dose_protocol"] = "kl" if getattr(cfg, "kl_grid", None) else "alpha"  # it changes the CE/KL texts
    scorer = jsonable(scorer_options(cfg, key["method"], fold))
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
           "options": jsonable(scorer_options(cfg, method, fold)), **({"null_draw": 0} if method == "random" else {})}
    if folder.exists():
        try:
            scores = ModuleScores.load(folder, allow_unverified=False)
            if read_json(folder / "key.json") == key:  # verified with the scores (it is in their manifest)
                return scores
        except (ScoringError, OSError, ValueError) as exc:
            notice(f"recomputing the cached {method} scores of fold {fold}: {exc}")
    if method == "random":
        from ..null import random_null_scores

        scores = random_null_scores(bank.module_shape, n_draws=1, fold=fold, seed=cfg.seed)[0]
    else:
        scores = score_modules(bank, method, model=model, seed=cfg.seed, device=cfg.device, progress=progress,
                               **scorer_options(cfg, method, fold))
    scores = with_source(scores, bank)
    scores.save(folder, extra_json={"key.json": key})
    return scores


def scorer_settings() -> tuple[str, ...]:
    """The ExperimentConfig fields that only a scorer reads (each registered scorer's ``experiment_settings``)."""
    method_names()  # every scorer registered
    return tuple(dict.fromkeys(f for spec in SCORERS.values() for f in spec.experiment_settings))


def scorer_options(cfg: ExperimentConfig, method: str, fold: int) -> dict:
    """The options ``method``'s scorer gets in ``fold`` of a run of ``cfg`` ({} for unsteered, length-only and the null)."""
    return SCORERS[method].options_for(cfg, fold) if method in method_names() else {}


def write_rows(path: Path, rows: list[dict]) -> None:
    """``rows`` as a CSV, written atomically; the columns are the first row's keys."""
    def write(tmp):
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)

    atomic_write(path, write)


def read_rows(path: Path) -> list[dict]:
    """The rows of a results table :func:`write_rows` wrote (values as text, as the CSV holds them)."""
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def record_timing(out: Path, timer: Timer) -> list[dict[str, float]]:
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
