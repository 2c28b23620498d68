"""The run directory: its configuration, the cached cells and scores, the results table, the timing.

Everything a run computes is cached here as verified files (one sealed JSON per evaluated cell and
per α calibration, one scores artifact per fold and method), keyed by a digest of every setting
that changes the value, so an interrupted run resumes where it stopped and a rerun reuses what is
done. A directory holding results of another configuration is refused (another grid of KL targets
is not another configuration: :func:`same_config`).
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
from ..io import atomic_write, notice, read_json, read_sealed_json, sha256_file, write_sealed_json
from ..locks import output_lock
from ..provenance import environment, with_source
from ..scoring import SCORERS, ModuleScores, method_names, score_modules
from .config import LATER_FIELDS, ExperimentConfig, jsonable
from .setup import prepare_task


@dataclass
class Timer:
    seconds: dict[str, float] = field(default_factory=dict)
    session: int | None = None  # this session's place in timing.json, once recorded (record_timing)

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
        if stored is not None and not same_config(stored, jsonable(cfg)) and _has_results(out):
            raise RealLensError(
                f"{out} holds a run with another configuration (see its config.json); "
                "use a new --out directory or delete that one"
            )
        out.mkdir(parents=True, exist_ok=True)
        # What computed it sits beside the configuration, not in it (the "config" key alone says "same run").
        write_sealed_json(previous, {"config": jsonable(cfg), "real_lens_version": __version__,
                                     "environment": environment()})
    return out


def same_config(stored: dict, current: dict) -> bool:
    """Whether a run directory's stored configuration is ``current``'s.

    A field added after the directory was written counts as the same when it cannot have changed
    what is stored there: a scorer's own setting (its scores and cells carry it in their keys) or
    a field at its digest-neutral default (:data:`~real_lens.experiment.config.LATER_FIELDS`).

    Another list of KL targets is the same run too (one KL grid for another, never KL for the α
    grid): every cell and calibration is keyed by its own target and no digest holds the grid, each
    target is a dose group of its own (so val chooses, and fitting uses, the same parts whatever the
    grid), and the calibration paragraphs do not depend on it. A resumed run then reuses every
    target it had and computes the new ones: a dose–response over a wider grid.

    So are more methods (every stored one kept): each method's scores and cells are keyed by the
    method, and the random null by its draw at a K and dose, so another method adds its own and
    changes none (the summary's tables and Holm families grow)."""
    if not isinstance(stored, dict):
        return False
    later = {k: v for k, v in current.items() if k not in stored and (
        k in scorer_settings() or (k in LATER_FIELDS and v == LATER_FIELDS[k]))}
    regrid = {"kl_grid": current["kl_grid"]} if stored.get("kl_grid") and current.get("kl_grid") else {}
    stored_methods, methods = stored.get("methods"), current.get("methods")
    more = {"methods": methods} if isinstance(stored_methods, list) and isinstance(methods, list) and set(
        stored_methods) <= set(methods) else {}
    return {**stored, **later, **regrid, **more} == current


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


def cell_path(out: Path, cfg, fold: int, key: dict) -> Path:
    """The sealed file of one cell: ``key`` names it (method, split, K, and its ``alpha`` or ``dose``, a null
    ``draw``, ...); the file name also carries a digest of every setting that changes a cell's value. A
    scorer's own settings (pairs, demonstrations, epochs) enter only its own cells' digests, so changing one
    scorer recomputes that method's cells and keeps everyone else's."""
    ignored = ("methods", "k_grid", "alpha_grid", "kl_grid", "null_draws", "folds", "n_boot", *scorer_settings())
    relevant = {k: v for k, v in jsonable(cfg).items()
                if k not in ignored and not (k in LATER_FIELDS and v == LATER_FIELDS[k])}
    relevant["dose_protocol"] = "kl" if getattr(cfg, "kl_grid", None) else "alpha"  # it changes the CE/KL texts
    scorer = jsonable(scorer_options(cfg, key["method"], fold))
    digest = hashlib.sha256(json.dumps([relevant, fold, key, scorer], sort_keys=True).encode()).hexdigest()[:16]
    named = ("method", "split", "k", "alpha", "dose")
    name = "-".join(f"{v}".replace(":", "_") for k, v in key.items() if k not in named)
    dose = key["dose"] if "dose" in key else f"a{key['alpha']:g}"
    return out / "cells" / (f"fold{fold}-{key['method']}-{key['split']}-k{key['k']}-{dose}"
                            + (f"-{name}" if name else "") + f"-{digest}.json")


def read_cell(path: Path) -> dict | None:
    """A cached cell's result, or None when it is not computed yet (or fails its check, said once)."""
    if path.is_file():
        try:
            return read_sealed_json(path)
        except ArtifactError as exc:
            notice(f"recomputing cached cells that fail their check (e.g. {exc})", once=f"cells:{path.parent}")
    return None


def cached_cell(out: Path, cfg, fold: int, key: dict):
    """``cell(key)(compute)`` → the cached result for this cell (:func:`cell_path`), computing it once."""
    path = cell_path(out, cfg, fold, key)

    def get(compute, *, current=None):
        """The cached cell, or ``compute()``; ``current(result)`` False marks a cell an older version wrote."""
        result = read_cell(path)
        if result is not None and current is not None and not current(result):
            notice("recomputing cached cells written before this version's records (e.g. per-answer log-probs)",
                   once=f"cells-old:{path.parent}")
            result = None
        if result is None:
            result = compute()
            write_sealed_json(path, result)
        return result

    return get


def cached_scores(out: Path, cfg: ExperimentConfig, fold: int, method: str, bank, model, *,
                  progress: bool = False, device=None, score=None, save: bool = True) -> ModuleScores:
    """The fold's scores by ``method``, computed once; cached scores that fail verification are recomputed.

    ``random`` is the random null's draw 0 of this fold (:func:`real_lens.null.random_null_scores`), saved
    like any method's scores so heatmaps, transfer and the analyses can read one random ranking per fold.
    ``device``: where the scorer computes (default ``cfg.device``); ``score``: what computes them (default
    :func:`~real_lens.scoring.score_modules`; under torchrun the sharded scorer); ``save=False``: a rank
    that computes its share but leaves the writing to rank 0."""
    scores = read_cached_scores(out, cfg, fold, method, bank)
    if scores is not None:
        return scores
    if method == "random":
        from ..null import random_null_scores

        scores = random_null_scores(bank.module_shape, n_draws=1, fold=fold, seed=cfg.seed)[0]
    else:
        scores = (score or score_modules)(bank, method, model=model, seed=cfg.seed,
                                          device=cfg.device if device is None else device, progress=progress,
                                          **scorer_options(cfg, method, fold))
    scores = with_source(scores, bank)
    if save:
        scores.save(_scores_folder(out, fold, method), extra_json={"key.json": _scores_key(cfg, fold, method, bank)})
    return scores


def _scores_folder(out: Path, fold: int, method: str) -> Path:
    return out / "scores" / f"fold{fold}" / method


def _scores_key(cfg: ExperimentConfig, fold: int, method: str, bank) -> dict:
    return {"bank": bank.meta.get("cache_key"), "n": len(bank.examples), "seed": cfg.seed,
            "options": jsonable(scorer_options(cfg, method, fold)), **({"null_draw": 0} if method == "random" else {})}


def read_cached_scores(out: Path, cfg: ExperimentConfig, fold: int, method: str, bank) -> ModuleScores | None:
    """The fold's cached scores by ``method`` if they verify and were computed from ``bank`` with these
    settings; None otherwise (damaged ones said so)."""
    folder = _scores_folder(out, fold, method)
    if folder.exists():
        try:
            scores = ModuleScores.load(folder, allow_unverified=False)
            if read_json(folder / "key.json") == _scores_key(cfg, fold, method, bank):  # verified with the scores
                return scores
        except (ScoringError, OSError, ValueError) as exc:
            notice(f"recomputing the cached {method} scores of fold {fold}: {exc}")
    return None


def scorer_settings() -> tuple[str, ...]:
    """The ExperimentConfig fields that only a scorer reads (each registered scorer's ``experiment_settings``)."""
    method_names()  # every scorer registered
    return tuple(dict.fromkeys(f for spec in SCORERS.values() for f in spec.experiment_settings))


def scorer_options(cfg: ExperimentConfig, method: str, fold: int = 0) -> dict:
    """The options ``method``'s scorer gets in ``fold`` of a run of ``cfg`` ({} for unsteered, length-only and the null)."""
    return SCORERS[method].options_for(cfg, fold) if method in method_names() else {}


def write_rows(path: Path, rows: list[dict]) -> None:
    """``rows`` as a CSV, written atomically; the columns are the first row's keys. The table's SHA-256
    is sealed beside it (``NAME.seal``), so a command that reads it later (``transfer``) refuses an
    edited or damaged table instead of trusting it; the CSV's own bytes stay plain."""
    def write(tmp):
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)

    atomic_write(path, write)
    write_sealed_json(seal_path(path), {"file": path.name, "file_sha256": sha256_file(path)})


def seal_path(path: Path) -> Path:
    """Where :func:`write_rows` seals the table at ``path``."""
    return path.with_name(path.name + ".seal")


def read_rows(path: Path, *, verified: bool = False) -> list[dict]:
    """The rows of a results table :func:`write_rows` wrote (values as text, as the CSV holds them).

    ``verified``: first check the table against its seal (ArtifactError if it was edited, damaged, or
    has no seal)."""
    if verified:
        seal = seal_path(path)
        if not seal.is_file():
            raise ArtifactError(f"{path} has no seal ({seal.name}; written by an older real-lens, or removed), so it "
                                "cannot be verified")
        if read_sealed_json(seal).get("file_sha256") != sha256_file(path):
            raise ArtifactError(f"{path} does not match its seal {seal.name} (edited or damaged after the run wrote it)")
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def record_timing(out: Path, timer: Timer, *, ranks: list[dict] | None = None) -> list[dict[str, float]]:
    """Record this session's step times in the run's ``timing.json`` and return every session's, so a
    resumed run reports what the whole computation cost (a resumed session reuses cached steps in ~0 s).

    Called as a session goes (after each fold, and when it stops on an error or an interrupt) as well
    as at its end: the first call appends the session, later ones update it, so a session that never
    finished still counts. ``ranks``: under torchrun, each rank's busy time this session
    (:class:`~.shard.RankShare` as a dict), kept in ``timing.json``'s ``"ranks"`` (one entry per session,
    None for a one-process session)."""
    path = out / "timing.json"
    sessions, shares = [], []
    if path.is_file():
        try:
            stored = read_sealed_json(path, allow_unsealed=True)
            sessions = list(stored["sessions"])
            shares = list(stored.get("ranks") or [None] * len(sessions))
        except (ArtifactError, KeyError, TypeError) as exc:
            notice(f"{path} is damaged ({exc}); the time of earlier sessions is not counted")
            sessions, shares = [], []
    if timer.session is None or timer.session >= len(sessions):
        timer.session = len(sessions)
        sessions.append({})
        shares.append(None)
    sessions[timer.session] = dict(timer.seconds)
    shares[timer.session] = ranks if ranks is not None else shares[timer.session]
    write_sealed_json(path, {"sessions": sessions, **({"ranks": shares} if any(shares) else {})})
    return sessions
