"""Threads: the physical cores by default (hyper-threads count once), divided among torchrun's processes on a
node, OMP_NUM_THREADS respected, and one line suggesting 1 thread when the load average exceeds the cores."""

import logging

import pytest
import torch

from real_lens import threads
from real_lens.errors import RealLensError


def _topology(root, cores_of_cpu: dict[int, tuple[int, int]]):
    for cpu, (package, core) in cores_of_cpu.items():
        where = root / f"cpu{cpu}" / "topology"
        where.mkdir(parents=True)
        (where / "physical_package_id").write_text(f"{package}\n")
        (where / "core_id").write_text(f"{core}\n")
    return root


def test_hyper_threads_of_one_core_count_once(tmp_path):
    # 8 logical CPUs: 2 packages x 2 cores x 2 hyper-threads -> 4 physical cores.
    topology = _topology(tmp_path, {cpu: (cpu // 4, (cpu // 2) % 2) for cpu in range(8)})
    assert threads.physical_cores(list(range(8)), topology=topology) == 4
    # Only the CPUs this process may use count: two hyper-threads of one core are one core.
    assert threads.physical_cores([0, 1], topology=topology) == 1
    assert threads.physical_cores([0, 2, 4], topology=topology) == 3


def test_without_topology_every_allowed_cpu_is_a_core(tmp_path):
    assert threads.physical_cores([0, 1, 5], topology=tmp_path / "missing") == 3


@pytest.mark.parametrize("cores, local_world, expected", [(8, None, 8), (8, "4", 2), (8, "3", 2), (2, "4", 1)])
def test_default_is_the_cores_divided_among_the_node_s_processes(monkeypatch, cores, local_world, expected):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.setattr(threads, "physical_cores", lambda: cores)
    if local_world is None:
        monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    else:
        monkeypatch.setenv("LOCAL_WORLD_SIZE", local_world)
    n, why = threads.default_threads()
    assert n == expected and f"{cores} physical core" in why


def test_omp_num_threads_is_the_default_when_set(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    monkeypatch.setattr(threads, "physical_cores", lambda: 16)
    assert threads.default_threads() == (3, "OMP_NUM_THREADS")


@pytest.fixture
def keep_torch_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("load, n, suggests", [(10.0, 2, True), (1.5, 2, False), (2.0, 2, False), (10.0, 1, False),
                                               (None, 2, False)])
def test_a_load_above_the_cores_suggests_one_thread(monkeypatch, caplog, keep_torch_threads, load, n, suggests):
    monkeypatch.setattr(threads, "physical_cores", lambda: 2)
    monkeypatch.setattr(threads, "load_average", lambda: load)
    with caplog.at_level(logging.INFO, logger="real_lens"):
        assert threads.set_threads(n) == n
    assert torch.get_num_threads() == n
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0] == f"computing with {n} CPU thread{'s' * (n != 1)} (asked for)"
    assert len(lines) == 1 + suggests
    if suggests:
        assert "load average is 10.0, above the 2 physical cores" in lines[1] and "--threads 1" in lines[1]


def test_state_false_defers_the_log_line_to_state_threads(monkeypatch, caplog, keep_torch_threads):
    monkeypatch.setattr(threads, "load_average", lambda: 0.0)
    with caplog.at_level(logging.INFO, logger="real_lens"):
        threads.set_threads(1, state=False)
        assert not caplog.records
        threads.state_threads()
        threads.state_threads()  # once
    assert [r.getMessage() for r in caplog.records] == ["computing with 1 CPU thread (asked for)"]


@pytest.mark.parametrize("n", [0, -1, True])  # floats and text: refused by the annotation under pytest, by the check without
def test_bad_thread_counts_are_refused(n):
    with pytest.raises(RealLensError, match="positive integer"):
        threads.set_threads(n)


def test_set_threads_is_public():
    import real_lens as rl

    assert rl.set_threads is threads.set_threads
