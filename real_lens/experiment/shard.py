"""Under ``torchrun``, the ranks split a run's cells, balanced by each cell's expected cost.

A run's cells (each α calibration, each evaluated cell; :mod:`.store`) are independent given the
scores and the bank, and each is a sealed file in the run directory. The design:

- **Waves.** Every rank replays the run's loop in *planning* mode (a :class:`Plan`): a cell whose
  sealed file is in the run directory is read, a missing one is recorded as :class:`Work` (its
  file, the function that computes it, its expected cost) and the branch that needs its value
  stops there (:class:`Deferred`). A calibration that starts from the α of the previous KL target
  of the same steering waits for that one (its chain is *blocked*), so it starts where one
  process would. Every rank plans the same work from the same files (checked: the ranks compare
  a digest of their plans).
- **Assignment.** :func:`assign` gives the wave's calibrations first, then its evaluations, each
  to the rank with the least expected cost so far, largest first (LPT), ties to the lower rank:
  deterministic, and balanced by cost, not by count. Each rank computes its cells in that order.
- **Waiting.** A rank that has written its cells waits at a barrier (``dist.barrier``); then the
  next wave is planned from the files. A wave with nothing missing ends the loop, and rank 0
  replays the whole loop as one process would, every cell now read from its file, and writes
  ``results.csv``, ``summary.*`` and the figures. ``--out`` must therefore be one directory every
  rank sees (a shared filesystem across nodes).
- **A rank that dies** leaves its finished cells (each written atomically); ``torchrun`` stops the
  others, and rerunning the same command plans only what is still missing.

Cost proxy (characters the model reads, known before anything runs): an evaluated cell costs
Σ over its items of (answers × prompt length + answers' lengths) — :func:`items_cost` — plus its
CE/KL paragraphs; a calibration costs :data:`CALIBRATION_EVALUATIONS` passes over its paragraphs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ..distributed import Ranks, all_ranks_agree, broadcast_tensor
from ..errors import RealLensError
from ..io import write_sealed_json
from .config import ExperimentConfig
from .stats import Outcome
from .store import Timer, cached_cell, cached_scores, cell_path, read_cached_scores, read_cell

logger = logging.getLogger(__name__)

CALIBRATE = "calibrate α"  # the Timer's step name for calibrations (the loop's too)
# A calibration's expected number of KL evaluations (median 3 on SmolLM2, up to ~6; evaluation.dose).
CALIBRATION_EVALUATIONS = 4
CHARS_PER_TOKEN = 4  # to cut paragraphs at max_tokens in the cost proxy


class Deferred(Exception):
    """Planning mode: a cell this branch needs is not computed yet (not an error; the plan catches it)."""


@dataclass
class Work:
    """One missing cell: its sealed file, what computes it, its expected cost and its timing step."""

    path: Path
    compute: Callable[[], dict]
    cost: float
    step: str

    @property
    def is_calibration(self) -> bool:
        return self.step == CALIBRATE


@dataclass
class Plan:
    """The missing cells one replay of a run's loop found, in the order one process would compute them."""

    work: dict[Path, Work] = field(default_factory=dict)
    blocked: set = field(default_factory=set)  # calibration chains waiting for an earlier calibration

    def cell(self, path: Path, compute: Callable[[], dict], *, cost: float, step: str, ready: bool = True,
             current: Callable[[dict], bool] | None = None) -> dict:
        """The cached result at ``path``; if missing (or written by an older version: ``current`` False), record
        it (unless it is not ``ready``: it needs a value this wave computes) and raise :class:`Deferred`."""
        result = read_cell(path)
        if result is not None and (current is None or current(result)):
            return result
        if ready:
            self.work.setdefault(path, Work(path, compute, float(cost), step))
        raise Deferred(path.name)

    def describe(self) -> str:
        return "\n".join(f"{w.path.name} {w.cost:.6g} {w.step}" for w in self.work.values())


def plan_cell(plan: Plan | None, out: Path, cfg, fold: int, key: dict, *, step: str, cost: float, ready: bool = True):
    """:func:`~.store.cached_cell` in one process; in planning mode, the same cell through ``plan``."""
    if plan is None:
        return cached_cell(out, cfg, fold, key)
    path = cell_path(out, cfg, fold, key)
    return lambda compute, current=None: plan.cell(path, compute, cost=cost, step=step, ready=ready, current=current)


@contextlib.contextmanager
def deferrable(plan: Plan | None):
    """Skip the rest of the block when planning finds a cell missing (one process: nothing to skip)."""
    try:
        yield
    except Deferred:
        if plan is None:
            raise


def balance(costs: list[float], world_size: int, *, first: list[bool] | None = None) -> list[int]:
    """The rank of each item: the items marked ``first``, then the others; within each, the largest cost
    first (ties keep the given order) to the rank with the least cost so far (ties: the lower rank)."""
    first = first or [False] * len(costs)
    loads, owner = [0.0] * world_size, [0] * len(costs)
    for i in sorted(range(len(costs)), key=lambda i: (not first[i], -costs[i], i)):
        rank = min(range(world_size), key=lambda r: (loads[r], r))
        owner[i] = rank
        loads[rank] += costs[i]
    return owner


def assign(work: list[Work], world_size: int) -> list[int]:
    """The rank of each work item (:func:`balance`): calibrations first, then evaluations."""
    return balance([w.cost for w in work], world_size, first=[w.is_calibration for w in work])


@dataclass
class RankShare:
    """What one rank computed this session: busy seconds per step, cells, and their expected cost."""

    rank: int
    seconds: dict[str, float] = field(default_factory=dict)
    cells: int = 0
    cost: float = 0.0

    @property
    def busy(self) -> float:
        return sum(self.seconds.values())

    def add(self, step: str, start: float) -> None:
        self.seconds[step] = self.seconds.get(step, 0.0) + time.perf_counter() - start


def run_cells(plan_once: Callable[[Plan], Any], ranks: Ranks, share: RankShare, *, worklog: Path) -> int:
    """Plan, split and compute waves of cells until none is missing; returns the number of waves.

    ``plan_once(plan)`` replays the run's loop in planning mode. Every rank calls this with the same
    arguments; each computes its assigned cells (appending one line per cell to ``worklog``)."""
    import torch.distributed as dist

    previous, waves = None, 0
    while True:
        plan = Plan()
        plan_once(plan)
        described = plan.describe()
        if not all_ranks_agree(described):
            raise RealLensError(
                f"the ranks found different cells missing in {next(iter(plan.work.values())).path.parent if plan.work else 'the run directory'}; "
                "--out must be one directory every rank sees (a shared filesystem across nodes), written by no other run"
            )
        if not plan.work:
            return waves
        if described == previous:  # every cell of the last wave was written, so this cannot repeat
            raise RuntimeError(f"a wave of {len(plan.work)} cells was planned twice; the cells were not written")
        previous, waves = described, waves + 1
        work = list(plan.work.values())
        owner = assign(work, ranks.world_size)
        mine = [w for w, r in zip(work, owner) if r == ranks.rank]
        mine.sort(key=lambda w: not w.is_calibration)  # calibrations first, then evaluations (stable: plan order)
        if ranks.is_main:
            loads = [sum(w.cost for w, r in zip(work, owner) if r == rank) for rank in range(ranks.world_size)]
            logger.info("wave %d: %d cells (%d α calibrations) over %d ranks; expected cost per rank %s", waves,
                        len(work), sum(w.is_calibration for w in work), ranks.world_size,
                        ", ".join(f"{x / max(sum(loads), 1):.0%}" for x in loads))
        for w in mine:
            start = time.perf_counter()
            result = w.compute()
            write_sealed_json(w.path, result)
            share.add(w.step, start)
            share.cells += 1
            share.cost += w.cost
            with open(worklog, "a") as f:  # one short line per finished cell: which rank computed what
                f.write(json.dumps({"cell": w.path.name, "step": w.step, "seconds": time.perf_counter() - start}) + "\n")
        dist.barrier()


def gather_shares(share: RankShare, ranks: Ranks) -> list[dict]:
    """Every rank's :class:`RankShare` as a dict, on every rank (each rank's JSON, broadcast in turn)."""
    import torch

    mine = torch.tensor(list(json.dumps(dataclasses.asdict(share)).encode()), dtype=torch.uint8)
    return [json.loads(bytes(broadcast_tensor(mine if src == ranks.rank else None, src=src).tolist()))
            for src in range(ranks.world_size)]


# --------------------------------------------------------------------------- the cost proxy
def _strings(obj) -> list[str]:
    if isinstance(obj, str):
        return [obj]
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        obj = [getattr(obj, f.name) for f in dataclasses.fields(obj)]
    elif isinstance(obj, dict):
        obj = list(obj.values())
    if isinstance(obj, (list, tuple)):
        return [s for v in obj for s in _strings(v)]
    return []


def item_cost(item) -> float:
    """An evaluation item's expected cost in characters: its longest text is the prompt, read once with
    every other text (the answers), i.e. answers × prompt length + the answers' lengths."""
    texts = _strings(item)
    if not texts:
        return 1.0
    prompt = max(texts, key=len)
    answers = [t for t in texts if t is not prompt]
    return float(max(len(answers), 1) * len(prompt) + sum(map(len, answers)))


def items_cost(items) -> float:
    return sum(item_cost(item) for item in items)


def texts_cost(texts, max_tokens: int) -> float:
    """Characters of ``texts`` each cut to ``max_tokens`` tokens (≈ CHARS_PER_TOKEN characters each)."""
    return float(sum(min(len(t), CHARS_PER_TOKEN * max_tokens) for t in texts))


def compute_cells(run, full_bank, ranks, *, device=None) -> list[dict]:
    """Under torchrun: every fold's scores (sharded where the scorer allows), then waves of cells split over
    the ranks (:mod:`.shard`); returns every rank's busy time. Rank 0's step times gain the ranks' cell times."""
    import torch.distributed as dist

    from ..scoring import SCORERS

    cfg, out = run.cfg, run.out
    share = RankShare(ranks.rank)
    # Scores first: a sharded scorer runs on every rank together; one that runs whole goes to one rank.
    whole = []
    for fold in run.setup.folds:
        bank = run.fold_bank(fold, full_bank)
        for method in cfg.methods:
            if read_cached_scores(out, cfg, fold, method, bank) is not None:
                continue
            spec = SCORERS[method]
            if spec.shardable and not spec.every_rank and method != "random":  # random: the null's draw 0
                t = time.perf_counter()
                cached_scores(out, cfg, fold, method, bank, run.setup.model, device=device, score=_score_sharded,
                              save=ranks.is_main, progress=run.progress)
                share.add(f"score: {method}", t)
            else:
                whole.append((fold, method, bank))
    owners = balance([_scoring_cost(cfg, method, bank) for _, method, bank in whole], ranks.world_size)
    for (fold, method, bank), owner in zip(whole, owners):
        if owner == ranks.rank:
            t = time.perf_counter()
            cached_scores(out, cfg, fold, method, bank, run.setup.model, device=device)
            share.add(f"score: {method}", t)
    dist.barrier()

    def plan_once(plan: Plan) -> None:
        loop = type(run)(cfg, run.setup, out, Timer(), False, Outcome(cfg, run.setup.task.name, run.setup.folds),
                         plan=plan)  # a planning twin of the run (its class: the fold loop, .loop)
        with _quiet(logging.getLogger(type(run).__module__)):  # a replay: its log lines would repeat every wave
            for fold in run.setup.folds:
                loop.run_fold(fold, full_bank)

    worklog = out / "ranks" / f"rank{ranks.rank}.jsonl"
    worklog.parent.mkdir(parents=True, exist_ok=True)
    waves = run_cells(plan_once, ranks, share, worklog=worklog)
    shares = gather_shares(share, ranks)
    if ranks.is_main:
        logger.info("%d wave(s) of cells; busy seconds per rank: %s", waves,
                    ", ".join(f"{sum(s['seconds'].values()):.0f}" for s in shares))
    for other in shares:  # the session's steps: summed over the ranks
        for step, seconds in other["seconds"].items():
            run.timer.seconds[step] = run.timer.seconds.get(step, 0.0) + seconds
    return shares


def _scoring_cost(cfg: ExperimentConfig, method: str, bank) -> float:
    """A whole-run scorer's expected cost in forward passes (a proxy, to balance them over the ranks): activation
    patching runs one per pair and module, attribution patching three per pair, ``random`` none."""
    n_modules = bank.flat().shape[1]
    if method == "random":
        return 0.0
    if method == "patching":
        return cfg.patching_pairs * (cfg.pair_demos + 1) * n_modules
    if method == "attribution":
        return cfg.attribution_pairs * (cfg.pair_demos + 1) * 3
    return float(len(bank.examples) * n_modules)


def _score_sharded(bank, method, *, model=None, seed=0, device=None, progress=False, **options):
    """:func:`~real_lens.scoring.score_modules` with the module axis split over the ranks."""
    from ..distributed import score_distributed
    from ..scoring import scorer_config, scorer_spec

    spec = scorer_spec(method)
    cfg = scorer_config(spec, options)
    kwargs = {**({"progress": progress} if spec.progress else {}), **({"cfg": cfg} if cfg is not None else {})}
    return score_distributed(method, bank, model=model, seed=seed, device=device, **kwargs)


@contextlib.contextmanager
def _quiet(log: logging.Logger):
    level = log.level
    log.setLevel(logging.WARNING)
    try:
        yield
    finally:
        log.setLevel(level)
