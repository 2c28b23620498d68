"""torchrun-sharded collection and scoring equal one process, bit for bit (CPU, gloo).

The oracle is the single-process result of the same command line; every comparison is
``torch.equal`` (no tolerance): each chunk of examples and each module is computed by the same
code on the same data with the same seeds, whichever process computes it.
"""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from real_lens.bank import ActivationBank
from real_lens.cli import main
from real_lens.distributed import Ranks, is_sharded, rank_device, score_distributed, shard_bounds
from real_lens.errors import ScoringError
from real_lens.scoring import ModuleScores
from real_lens.scoring.iti import score_probe
from real_lens.scoring.real import score_real
from real_lens.scoring.real_config import RealConfig
from real_lens.tasks import Example

from . import torchrun_worker

ROOT = Path(__file__).resolve().parents[2]
FAST_REAL = RealConfig(vq_epochs=3, prior_epochs=2)


def _write_task(path: Path, n_groups: int = 20) -> Path:
    rows = ["prompt,aligned,violating,group"] + [
        f"Q: is claim {i} true{'?' * (i % 3)} A:,yes{' indeed' * (i % 4)},no{' way' * (i % 2)},q{i}" for i in range(n_groups)
    ]
    path.write_text("\n".join(rows) + "\n")
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def torchrun_outputs(tmp_path_factory):
    """One ``torchrun --nproc-per-node 2`` launch running every command of the worker."""
    out = tmp_path_factory.mktemp("torchrun")
    task = _write_task(out / "task.csv")
    env = {
        **os.environ,
        "REAL_LENS_CACHE": str(out / "cache"),  # not the reference's cache: both must compute
        "PYTHONPATH": str(ROOT),
        "OMP_NUM_THREADS": "1",
        "GLOO_SOCKET_IFNAME": "lo",
        "MASTER_ADDR": "127.0.0.1",
    }
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
        "--master-addr", "127.0.0.1", "--master-port", str(_free_port()),
        "-m", "tests.unit.torchrun_worker", str(out), str(task),
    ]
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return out, task, json.loads((out / "codes.json").read_text()), done.stdout + done.stderr


@pytest.fixture(scope="module")
def single_outputs(torchrun_outputs, tmp_path_factory):
    """The same command lines in this process (world size 1), one thread like a torchrun rank."""
    _, task, _, _ = torchrun_outputs
    out = tmp_path_factory.mktemp("single")
    threads = torch.get_num_threads()
    mp = pytest.MonkeyPatch()
    mp.setenv("REAL_LENS_CACHE", str(out / "cache"))
    torch.set_num_threads(1)
    try:
        commands = torchrun_worker.commands(out, task)
        # Score the bank the torchrun launch wrote, so "bank" in the scores' metadata is the same path.
        dist_bank = str(torchrun_outputs[0] / "bank")
        for name in ("real", "iti", "random", "patching"):
            commands[name] = [dist_bank if a == commands[name][2] else a for a in commands[name]]
        codes = {name: main(argv) for name, argv in commands.items() if name != "patching"}
    finally:
        torch.set_num_threads(threads)
        mp.undo()
    return out, codes


def _assert_same_scores(a: ModuleScores, b: ModuleScores):
    assert torch.equal(a.scores, b.scores)
    assert a.diagnostics.keys() == b.diagnostics.keys()
    for name, value in a.diagnostics.items():
        assert torch.equal(value, b.diagnostics[name]), name
    assert (a.method, a.config, a.meta) == (b.method, b.config, b.meta)


def test_torchrun_collection_equals_one_process(torchrun_outputs, single_outputs):
    dist_out, _, codes, _ = torchrun_outputs
    single_out, single_codes = single_outputs
    assert codes["collect"] == 0 and codes["collect-bf16"] == 0 and single_codes["collect"] == 0
    for name, dtype in (("bank", torch.float32), ("bank-bf16", torch.bfloat16)):
        sharded, single = ActivationBank.load(dist_out / name), ActivationBank.load(single_out / name)
        assert sharded.acts.dtype == dtype and sharded.meta["dtype"] == str(dtype).removeprefix("torch.")
        assert len(sharded.examples) == 40  # 6 chunks of 7: ranks computed 3 each
        assert torch.equal(sharded.acts, single.acts), name
        assert sharded.examples == single.examples and sharded.meta == single.meta


@pytest.mark.parametrize("method", ["real", "iti", "random", "iti-from-task"])
def test_torchrun_scores_equal_one_process(torchrun_outputs, single_outputs, method):
    dist_out, _, codes, _ = torchrun_outputs
    single_out, single_codes = single_outputs
    assert codes[method] == 0 and single_codes[method] == 0
    sharded, single = ModuleScores.load(dist_out / method), ModuleScores.load(single_out / method)
    assert not sharded.scores.isnan().any()  # every module was scored by some rank
    _assert_same_scores(sharded, single)


def test_torchrun_refuses_patching_in_one_line(torchrun_outputs):
    _, _, codes, log = torchrun_outputs
    assert codes["patching"] == 2
    refusals = [line for line in log.splitlines() if "patching is not split across processes" in line]
    assert sorted(line.split("error:")[0] for line in refusals) == [
        "real-lens score (rank 0 of 2): ", "real-lens score (rank 1 of 2): ",
    ]


# --------------------------------------------------------------------------- in one process
@pytest.mark.parametrize("n", [0, 1, 5, 8, 270])
@pytest.mark.parametrize("world_size", [1, 2, 3, 8])
def test_shard_bounds_cover_in_order_and_balance(n, world_size):
    bounds = shard_bounds(n, world_size)
    assert [i for a, b in bounds for i in range(a, b)] == list(range(n))
    sizes = [b - a for a, b in bounds]
    assert max(sizes) - min(sizes) <= 1 and sizes == sorted(sizes, reverse=True)
    assert n == 0 or sizes[0] >= 1  # rank 0 always has work


def _bank(n_groups=10, n_layers=2, n_heads=3, d=16, seed=0):
    generator = torch.Generator().manual_seed(seed)
    examples = tuple(
        Example(f"Q{g}", answer, label, f"g{g}") for g in range(n_groups) for answer, label in ((" yes", 1), (" no", 0))
    )
    acts = torch.randn(len(examples), n_layers, n_heads, d, generator=generator)
    labels = torch.tensor([e.label for e in examples])
    acts[:, 1, 2, :4] += 1.5 * labels[:, None]  # one head carries the label
    return ActivationBank(acts, examples, {"site": "head_z", "model": "toy", "task": "toy"})


@pytest.mark.parametrize("slices", [[range(0, 2), range(2, 6)], [range(0, 1), range(1, 3), range(3, 6)], [[5], [0, 3]]])
def test_real_module_slices_are_slices_of_the_whole(slices):
    """What sharding relies on: a module's REAL result does not depend on which others train."""
    bank = _bank()
    whole = score_real(bank, cfg=FAST_REAL, seed=2)
    for modules in slices:
        part = score_real(bank, cfg=FAST_REAL, seed=2, modules=modules)
        scored = torch.zeros(6, dtype=torch.bool)
        scored[list(modules)] = True
        for name, value in {"": part.scores, **part.diagnostics}.items():
            full = whole.scores if name == "" else whole.diagnostics[name]
            assert torch.equal(value.flatten()[scored], full.flatten()[scored]), name
            assert value.flatten()[~scored].isnan().all(), name
        assert (part.meta, part.config) == (whole.meta, whole.config)


def test_probe_module_slices_are_slices_of_the_whole():
    bank = _bank()
    whole = score_probe(bank.acts, bank.labels, bank.groups, seed=1)
    part = score_probe(bank.acts, bank.labels, bank.groups, seed=1, modules=[1, 4])
    for name, value in {"": part.scores, **part.diagnostics}.items():
        full = whole.scores if name == "" else whole.diagnostics[name]
        assert torch.equal(value.flatten()[[1, 4]], full.flatten()[[1, 4]]), name
        assert value.flatten()[[0, 2, 3, 5]].isnan().all(), name
    assert part.meta == whole.meta


def test_module_indices_out_of_range_are_refused():
    with pytest.raises(ScoringError, match=r"modules must be indices in \[0, 6\)"):
        score_real(_bank(), cfg=FAST_REAL, modules=[6])
    bank = _bank()
    with pytest.raises(ScoringError, match=r"modules must be indices in \[0, 6\)"):
        score_probe(bank.acts, bank.labels, bank.groups, modules=[-1])


def test_one_process_score_distributed_is_the_scorer():
    bank = _bank()
    _assert_same_scores(score_distributed("real", bank, seed=4, cfg=FAST_REAL), score_real(bank, cfg=FAST_REAL, seed=4))


def test_which_scorers_shard():
    two = Ranks(rank=0, world_size=2)
    assert is_sharded("real", two) and is_sharded("iti", two)
    assert not is_sharded("random", two)  # cheap: every rank computes it whole
    assert not is_sharded("real", Ranks())
    for method in ("patching", "attribution"):
        with pytest.raises(ScoringError, match=f"{method} is not split across processes.*without torchrun"):
            is_sharded(method, two)


def test_rank_devices():
    assert rank_device("cuda", local_rank=3) == "cuda:3"
    assert rank_device("cuda:1", local_rank=3) == "cuda:1"  # an explicit index is kept
    assert rank_device("cpu", local_rank=3) == "cpu"
    assert rank_device("cuda", local_rank=3, model_parallel=True) is None
    assert rank_device(None, local_rank=2) == ("cuda:2" if torch.cuda.is_available() else None)


def test_commands_that_do_not_shard_are_refused_under_torchrun(monkeypatch, capsys):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    assert main(["hooks", "--model", "tiny-llama", "--estimate-only"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "real-lens hooks (rank 1 of 2): error: only collect, score, run and transfer run under torchrun" in err


@pytest.mark.parametrize("world_size", ["1", "2"])
def test_entry_exits_with_mains_code_through_os_exit_only_under_torchrun(monkeypatch, world_size):
    import real_lens.cli as cli

    class Stdout:  # records whether what main() printed was flushed before the process left
        flushed = False

        def write(self, text):
            self.flushed = False

        def flush(self):
            self.flushed = True

    class Left(BaseException):  # os._exit does not return
        pass

    def fake_exit(code):
        exits.append((code, stdout.flushed))
        raise Left

    stdout, exits = Stdout(), []
    monkeypatch.setenv("WORLD_SIZE", world_size)
    monkeypatch.setattr(cli, "main", lambda: print("outputs in x") or 3)
    monkeypatch.setattr(sys, "stdout", stdout)
    monkeypatch.setattr(os, "_exit", fake_exit)
    if world_size == "1":
        with pytest.raises(SystemExit) as done:
            cli.entry()
        assert done.value.code == 3 and exits == []
    else:
        with pytest.raises(Left):
            cli.entry()
        assert exits == [(3, True)]


def test_a_rank_exits_with_mains_code_and_its_error_line():
    """`python -m real_lens` under WORLD_SIZE > 1, end to end: main()'s exit code and its one-line error
    reach the caller through real_lens.cli.entry's exit."""
    env = {**os.environ, "WORLD_SIZE": "2", "RANK": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    done = subprocess.run([sys.executable, "-m", "real_lens", "hooks", "--model", "tiny-llama", "--estimate-only"],
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2
    assert done.stderr.endswith("error: only collect, score, run and transfer run under torchrun; run `real-lens "
                                "hooks` as one process\n")


def test_device_map_with_several_processes_per_node_is_refused(monkeypatch):
    from real_lens.distributed import init_distributed
    from real_lens.errors import RealLensError

    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    with pytest.raises(RealLensError, match=r"run one process per node \(--nproc-per-node 1\)"):
        init_distributed(None, model_parallel=True)
