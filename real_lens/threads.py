"""How many CPU threads torch computes with: :func:`set_threads` (``rl.set_threads``, ``real-lens --threads N``).

Torch starts one thread per *logical* CPU. On a shared machine that oversubscribes the cores: a
newcomer trial measured a matmul at 7.5 GFLOP/s with 2 threads and 21.6 with 1 at a load
average of ~10 on 2 cores. So the default here is the **physical cores this process may use**,
divided among the processes ``torchrun`` starts on the node, and a 1-minute load average above
the cores is said in one log line that suggests ``--threads 1``.

How cores are counted (:func:`physical_cores`), with no extra dependency: the CPUs this process
may run on (``os.sched_getaffinity``, else ``os.cpu_count()``), counted once per physical core
by their ``(physical_package_id, core_id)`` in ``/sys/devices/system/cpu/cpuN/topology`` (Linux);
where the topology cannot be read, every allowed CPU counts as a core. ``OMP_NUM_THREADS``, when
set, is the default instead (torch reads it too), so an environment that already chose keeps
its choice.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from .errors import RealLensError

logger = logging.getLogger(__name__)

TOPOLOGY = Path("/sys/devices/system/cpu")


def allowed_cpus() -> list[int]:
    """The logical CPUs this process may run on."""
    if hasattr(os, "sched_getaffinity"):
        return sorted(os.sched_getaffinity(0))
    return list(range(os.cpu_count() or 1))


def physical_cores(cpus: list[int] | None = None, *, topology: Path = TOPOLOGY) -> int:
    """The physical cores behind ``cpus`` (default: :func:`allowed_cpus`): hyper-threads of one core count once."""
    cpus = allowed_cpus() if cpus is None else cpus
    cores = set()
    for cpu in cpus:
        try:
            where = topology / f"cpu{cpu}" / "topology"
            cores.add(((where / "physical_package_id").read_text().strip(), (where / "core_id").read_text().strip()))
        except OSError:
            cores.add(("cpu", str(cpu)))  # no topology: the CPU counts as its own core
    return max(len(cores), 1)


def load_average() -> float | None:
    """The 1-minute load average (None where the system does not report one)."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def local_processes() -> int:
    """The processes ``torchrun`` started on this node (1 without torchrun)."""
    for name in ("LOCAL_WORLD_SIZE", "WORLD_SIZE"):
        value = os.environ.get(name, "")
        if value.isdigit() and int(value) >= 1:
            return int(value)
    return 1


def default_threads() -> tuple[int, str]:
    """``(threads, why)``: ``OMP_NUM_THREADS`` when set, else the physical cores / the node's torchrun processes."""
    omp = os.environ.get("OMP_NUM_THREADS", "").strip()
    if omp.isdigit() and int(omp) >= 1:
        return int(omp), "OMP_NUM_THREADS"
    cores, processes = physical_cores(), local_processes()
    why = f"{cores} physical core{'s' * (cores != 1)}"
    if processes > 1:
        why += f" / {processes} torchrun processes on this node"
    return max(cores // processes, 1), why


_STATED: list[str] = []  # what the last set_threads chose, for state_threads


def set_threads(n: int | None = None, *, state: bool = True) -> int:
    """Make torch compute with ``n`` CPU threads (default :func:`default_threads`); returns the number set.

    With ``state`` (the default) :func:`state_threads` logs the choice now; the CLI sets the threads
    first and states them where a long command starts its work, so a mistake caught before that
    is still one line.
    """
    import torch

    if n is None:
        n, why = default_threads()
    else:
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise RealLensError(f"threads must be a positive integer; got {n!r} (e.g. --threads 1 on a busy machine)")
        why = "asked for"
    torch.set_num_threads(n)
    _STATED[:] = threads_lines(n, why, cores=physical_cores(), load=load_average())
    if state:
        state_threads()
    return n


def threads_lines(n: int, why: str, *, cores: int, load: float | None) -> list[str]:
    """What to log about ``n`` threads: how many and why, and, when the 1-minute ``load`` exceeds the
    physical ``cores`` (other jobs share them) while more than one thread computes, a suggestion of 1."""
    lines = [f"computing with {n} CPU thread{'s' * (n != 1)} ({why})"]
    if load is not None and load > cores and n > 1:
        lines.append(f"the 1-minute load average is {load:.1f}, above the {cores} physical core{'s' * (cores != 1)}: "
                     "other jobs share them, and --threads 1 (rl.set_threads(1)) may well run faster")
    return lines


def state_threads() -> None:
    """Log (INFO, once) what the last :func:`set_threads` chose."""
    for line in _STATED:
        logger.info("%s", line)
    _STATED.clear()
