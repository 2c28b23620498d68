"""`torchrun -m real_lens run` (and `transfer`): the ranks split the cells, and the outputs equal one process's.

The oracle for the launches is the same command line in one process (a subprocess with one thread, like
each rank): results.csv must be equal byte for byte and every cell file too (no tolerance): each cell is
computed by the same code from the same inputs, whichever rank computes it. The kill test stops rank 1
after it has written a cell and shows that rerunning the command reuses that cell and finishes the rest.
"""

import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from real_lens.activations import collect_activations
from real_lens.experiment import config_for, prepare, run_experiment
from real_lens.experiment.loop import FoldLoop
from real_lens.experiment.shard import Deferred, Plan, Work, assign, balance, deferrable, item_cost
from real_lens.experiment.stats import Outcome
from real_lens.io import write_sealed_json
from real_lens.experiment.store import Timer
from tests.helpers import needs_data

ROOT = Path(__file__).resolve().parents[3]
QUICK = ["run", "--quick", "--model", "tiny-llama"]
# Two K and two KL targets: val chooses K, and each steering's second calibration starts from its first's α.
CHOOSING = [*QUICK, "--k-grid", "1,3", "--kl-grid", "0.001,0.004", "--methods", "iti,random"]


# --------------------------------------------------------------------------- the assignment
@pytest.mark.parametrize("seed", range(5))
def test_balance_is_longest_first_onto_the_least_loaded_rank(seed):
    rng = random.Random(seed)
    costs = [rng.choice([1.0, 2.0, 5.0, 40.0]) * rng.random() for _ in range(40)]
    world = rng.randint(2, 5)
    owner = balance(costs, world)
    assert owner == balance(costs, world)  # deterministic: every rank computes the same assignment
    loads = [sum(c for c, r in zip(costs, owner) if r == rank) for rank in range(world)]
    # LPT: whatever a rank was given last, it was the least loaded rank then, so no rank exceeds the
    # lightest by more than one item, and never by more than the largest cost.
    for rank in range(world):
        smallest_own = min((c for c, r in zip(costs, owner) if r == rank), default=0.0)
        assert loads[rank] - smallest_own <= min(loads) + 1e-9
    assert max(loads) - min(loads) <= max(costs) + 1e-9


def test_balance_follows_cost_not_count():
    owner = balance([100.0, 1.0, 1.0, 1.0, 1.0], 2)
    assert owner == [0, 1, 1, 1, 1]  # one expensive cell against four cheap ones


def test_assign_gives_calibrations_out_first():
    work = [Work(Path(f"c{i}"), dict, cost, step) for i, (cost, step) in
            enumerate([(5.0, "evaluate (test)"), (1.0, "calibrate α"), (2.0, "calibrate α"), (9.0, "evaluate (test)")])]
    # The calibrations (costs 2, 1) go first, to ranks 0 and 1; then the evaluations onto the lighter rank.
    assert assign(work, 2) == [0, 1, 0, 1]


def test_item_cost_is_answers_times_prompt_plus_answers():
    item = {"question": "Q" * 100, "answers": ["a" * 3, "b" * 5], "labels": [1, 0]}
    assert item_cost(item) == 2 * 100 + 3 + 5
    assert item_cost("x" * 7) == 7


def test_deferrable_swallows_only_while_planning():
    with deferrable(Plan()):
        raise Deferred("missing")
    with pytest.raises(Deferred), deferrable(None):
        raise Deferred("a bug in one process")


# --------------------------------------------------------------------------- planning on a finished run
@needs_data
def test_planning_finds_exactly_the_missing_cells(tmp_path, tiny_model):
    """Deleting cells of a finished run: a planning replay records those that can be computed now — never
    one whose calibration, or whose calibration's starting α, is missing — and computing them in waves
    restores every file byte for byte."""
    cfg = config_for("quick", model="tiny-llama", k_grid=(1, 3), kl_grid=(0.001, 0.004), methods=("iti", "random"))
    out = run_experiment(cfg, tmp_path, progress=False)
    cells = {p.name: p.read_bytes() for p in (out / "cells").iterdir()}
    first_target = sorted(n for n in cells if "-iti-calibration-k3-kl0.001-" in n)
    second_target = sorted(n for n in cells if "-iti-calibration-k3-kl0.004-" in n)  # starts from the first's α
    deleted = [*first_target, *second_target, *sorted(n for n in cells if "-iti-val-k1-" in n)[:2],
               *sorted(n for n in cells if "-random-test-" in n)[:1]]
    for name in deleted:
        (out / "cells" / name).unlink()
    setup = prepare(cfg, model=tiny_model)
    bank = collect_activations(tiny_model, setup.task, site=cfg.site, readout=cfg.readout, batch_size=cfg.batch_size,
                               progress=False)
    waves = []
    while True:
        plan = Plan()
        loop = FoldLoop(cfg, setup, out, Timer(), False, Outcome(cfg, setup.task.name, setup.folds), plan=plan)
        for fold in setup.folds:
            loop.run_fold(fold, bank)
        if not plan.work:
            break
        waves.append(sorted(p.name for p in plan.work))
        for work in plan.work.values():
            write_sealed_json(work.path, work.compute())
    assert set(waves[0]) <= set(deleted)
    assert set(first_target) <= set(waves[0])  # calibrations whose chain starts with them are ready now
    assert not set(second_target) & set(waves[0])  # these wait for the α they start from
    assert set(second_target) <= set(waves[1])
    assert sorted(n for w in waves for n in w) == sorted(deleted)  # nothing else recomputed, each once
    assert {p.name: p.read_bytes() for p in (out / "cells").iterdir()} == cells


# --------------------------------------------------------------------------- torchrun launches
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(cache: Path) -> dict:
    return {**os.environ, "REAL_LENS_CACHE": str(cache), "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1",
            "MKL_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo", "MASTER_ADDR": "127.0.0.1"}


def _torchrun(argv: list[str], cache: Path) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
            "--master-port", str(_free_port()), "-m", "real_lens", "--quiet", *argv]


def _launch(argv: list[str], cache: Path, *, ranks: int) -> subprocess.CompletedProcess:
    command = _torchrun(argv, cache) if ranks > 1 else [sys.executable, "-m", "real_lens", "--quiet", *argv]
    done = subprocess.run(command, cwd=ROOT, env=_env(cache), capture_output=True, text=True, timeout=600)
    # Every rank's one-line error first (a rank that fails first may be far from the end of stderr), then the tails.
    errors = [line for line in done.stderr.splitlines() if line.startswith("real-lens ") and ": error:" in line]
    assert done.returncode == 0, "\n".join(errors) + "\n" + done.stdout[-3000:] + done.stderr[-3000:]
    return done


def _cells(out: Path) -> dict[str, bytes]:
    """The run's cells (a rank killed mid-write leaves its hidden temporary file, which is never read as a cell)."""
    return {p.name: p.read_bytes() for p in (out / "cells").iterdir() if not p.name.startswith(".")}


@pytest.fixture(scope="module")
def quick_single(tmp_path_factory):
    out = tmp_path_factory.mktemp("single")
    _launch([*QUICK, "--out", str(out / "run")], out / "cache", ranks=1)
    return out / "run"


@needs_data
@pytest.mark.parametrize("argv", [QUICK, CHOOSING], ids=["quick", "choosing-K-two-targets"])
def test_torchrun_run_equals_one_process(tmp_path, argv, quick_single):
    if argv is QUICK:
        single = quick_single
    else:
        single = tmp_path / "single"
        _launch([*argv, "--out", str(single)], tmp_path / "cache-single", ranks=1)
    sharded = tmp_path / "sharded"
    done = _launch([*argv, "--out", str(sharded)], tmp_path / "cache-sharded", ranks=2)
    assert (sharded / "results.csv").read_bytes() == (single / "results.csv").read_bytes()
    assert _cells(sharded) == _cells(single)
    assert json.loads((sharded / "summary.json").read_text()) == json.loads((single / "summary.json").read_text())
    # Both ranks computed cells, and summary.md shows each one's busy time.
    logs = [(sharded / "ranks" / f"rank{r}.jsonl").read_text().splitlines() for r in (0, 1)]
    assert all(logs) and sum(map(len, logs)) == len(_cells(single))
    assert "| rank | busy seconds | cells |" in (sharded / "summary.md").read_text()
    assert done.stdout.count("outputs in") == 1  # rank 0 prints, once


@needs_data
def test_torchrun_transfer_equals_one_process(tmp_path, quick_single):
    outs = {}
    for ranks in (1, 2):
        outs[ranks] = tmp_path / f"transfer-{ranks}"
        _launch(["transfer", "--source-run", str(quick_single), "--task", "caa:refusal", "--methods", "real,iti,random",
                 "--out", str(outs[ranks])], tmp_path / f"cache-{ranks}", ranks=ranks)
    assert (outs[2] / "results.csv").read_bytes() == (outs[1] / "results.csv").read_bytes()
    assert _cells(outs[2]) == _cells(outs[1])
    assert all((outs[2] / "ranks" / f"rank{r}.jsonl").read_text() for r in (0, 1))


def _rank_pid(parent: int, rank: int) -> int | None:
    """The pid of the torchrun worker with RANK=rank among the processes below ``parent``."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes().split(b"\0")
            if f"RANK={rank}".encode() in environ and b"TORCHELASTIC_RUN_ID" in b"".join(environ) \
                    and _descends(int(entry.name), parent):
                return int(entry.name)
        except (OSError, ValueError):
            continue
    return None


def _descends(pid: int, ancestor: int) -> bool:
    while pid > 1:
        if pid == ancestor:
            return True
        pid = int((Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[1])
    return False


@needs_data
@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="finds the rank's process through /proc")
def test_a_killed_rank_leaves_its_cells_and_a_rerun_finishes(tmp_path, quick_single):
    out = tmp_path / "run"
    argv = [*QUICK, "--out", str(out)]
    launch = subprocess.Popen(_torchrun(argv, tmp_path / "cache"), cwd=ROOT, env=_env(tmp_path / "cache"),
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    worklog = out / "ranks" / "rank1.jsonl"
    deadline = time.monotonic() + 300
    while not (worklog.exists() and worklog.read_text().count("\n") >= 1):  # rank 1 has finished a cell
        assert launch.poll() is None and time.monotonic() < deadline, "the launch ended before rank 1 wrote a cell"
        time.sleep(0.02)
    pid = _rank_pid(launch.pid, 1)
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    assert launch.wait(timeout=120) != 0
    assert not (out / "results.csv").exists()

    finished = [json.loads(line)["cell"] for line in worklog.read_text().splitlines()]
    before = {name: (out / "cells" / name).stat() for name in finished}
    n_before = len(_cells(out))
    assert 0 < n_before < len(_cells(quick_single))  # a part was done, not all of it

    _launch(argv, tmp_path / "cache", ranks=2)
    assert (out / "results.csv").read_bytes() == (quick_single / "results.csv").read_bytes()
    assert _cells(out) == _cells(quick_single)
    for name, stat in before.items():  # the dead rank's cells were read, not written again
        now = (out / "cells" / name).stat()
        assert (now.st_ino, now.st_mtime_ns) == (stat.st_ino, stat.st_mtime_ns), name
    logged = [json.loads(line)["cell"] for r in (0, 1)  # both sessions' cells, each rank's in order
              for line in (out / "ranks" / f"rank{r}.jsonl").read_text().splitlines()]
    assert len(logged) == len(set(logged))  # no cell was computed twice over the two sessions
    assert set(finished) <= set(logged) <= set(_cells(quick_single))
