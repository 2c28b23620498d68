"""Faults only another process can inject: kill -9 mid-write, a full disk, a concurrent writer, no permission."""

import os
import resource
import shutil
import signal
import subprocess
import sys
import time

import pytest

from real_lens.bank import ActivationBank

from .conftest import REPO, assert_one_line, cli, run_python, synthetic_bank, write_task

# A child that starts replacing the bank at argv[1] with synthetic bank 1 and SIGKILLs itself at argv[2].
KILL_CHILD = r"""
import os, signal, sys
from real_lens import artifacts, io
from tests.reliability.conftest import synthetic_bank

target, point = sys.argv[1], sys.argv[2]
die = lambda: os.kill(os.getpid(), signal.SIGKILL)
if point == "writing-a-file":  # half of acts.safetensors is on disk
    real_save = io.save_file
    def save_file(tensors, path, metadata=None):
        real_save(tensors, path, metadata=metadata)
        os.truncate(path, os.path.getsize(path) // 2)
        die()
    io.save_file = save_file
elif point == "before-publish":  # staged and manifested, not yet published
    artifacts._publish = lambda staging, directory: die()
elif point == "after-exchange":  # published, the old copy not yet deleted
    real_exchange = artifacts._exchange
    artifacts._exchange = lambda a, b: real_exchange(a, b) and die()
elif point == "between-renames":  # no renameat2: the old one is aside, the new one not yet in
    artifacts._exchange = lambda a, b: False
    real_rename, calls = os.rename, []
    def rename(src, dst):
        calls.append(dst)
        if len(calls) == 2:
            die()
        real_rename(src, dst)
    artifacts.os.rename = rename
synthetic_bank(1).save(target)
"""


@pytest.mark.parametrize("point, survivor", [
    ("writing-a-file", 0), ("before-publish", 0), ("after-exchange", 1), ("between-renames", 0),
])
def test_kill_9_mid_write_leaves_the_old_or_the_new_bank_whole(tmp_path, point, survivor):
    target = tmp_path / "bank"
    synthetic_bank(0).save(target)
    child = run_python(KILL_CHILD, target, point)
    assert child.returncode == -signal.SIGKILL, child.stderr
    assert ActivationBank.load(target).digest == synthetic_bank(survivor).digest
    # The dead writer's lock died with it; the next writer tidies its leftovers and publishes.
    synthetic_bank(2).save(target)
    assert ActivationBank.load(target).digest == synthetic_bank(2).digest
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bank"]


@pytest.fixture(scope="module")
def task_file(tmp_path_factory):
    return write_task(tmp_path_factory.mktemp("task") / "beh.csv")


def _collect_argv(task_file, out, readout="last"):
    return ["collect", "--model", "tiny-llama", "--task", f"file:{task_file}", "--readout", readout, "--out", str(out)]


def _cli_process(argv, **kwargs):
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "real_lens.cli", *argv], cwd=REPO, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kwargs)


def test_a_full_disk_is_one_line_and_keeps_the_old_bank(tmp_path, task_file, tiny_model, capsys):
    out = tmp_path / "bank"
    assert cli(capsys, *_collect_argv(task_file, out, "mean_answer"))[0] == 0  # the old bank
    assert cli(capsys, *_collect_argv(task_file, tmp_path / "warm", "last"))[0] == 0  # the new one, cached
    old = ActivationBank.load(out).digest

    def small_files():  # RLIMIT_FSIZE: writing more than 4 KiB fails with EFBIG, as a full disk fails with ENOSPC
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))

    child = _cli_process(_collect_argv(task_file, out, "last"), preexec_fn=small_files)
    _, err = child.communicate(timeout=300)
    assert_one_line(child.returncode, err, contains="file too large")
    assert "ulimit -f" in err and str(out) in err
    assert ActivationBank.load(out).digest == old
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bank", "warm"]


def test_two_collections_into_one_out_never_interleave(tmp_path, task_file, tiny_model):
    """Started together with different readouts: the second fails at once with one line (or, if the
    first finished before it started, replaces it whole); the bank left is one of the two, whole."""
    out = tmp_path / "bank"
    children = {r: _cli_process(_collect_argv(task_file, out, r)) for r in ("last", "mean_answer")}
    results = {r: (c.communicate(timeout=300), c.returncode) for r, c in children.items()}
    codes = sorted(code for _, code in results.values())
    assert codes in ([0, 0], [0, 2]), results
    for (_, err), code in results.values():
        if code == 2:
            assert_one_line(code, err, contains="is being written by another real-lens process")
    bank = ActivationBank.load(out)
    winners = [r for r, (_, code) in results.items() if code == 0]
    assert bank.meta["readout"] in winners
    assert bank.digest == ActivationBank.load(out).digest  # loads whole, twice the same


HOLD_LOCK = r"""
import sys, time
from real_lens.locks import output_lock
with output_lock(sys.argv[1], wait=False):
    print("locked", flush=True)
    time.sleep(60)
"""


def test_a_command_writing_a_locked_out_fails_before_loading_anything(tmp_path, task_file, capsys):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(tmp_path / "bank")], cwd=REPO, env=env,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        started = time.perf_counter()
        code, _, err = cli(capsys, *_collect_argv(task_file, tmp_path / "bank"))
        assert_one_line(code, err, contains=f"pid {holder.pid}")
        assert time.perf_counter() - started < 30  # refused up front, not after a collection
        code, _, err = cli(capsys, "run", "--quick", "--model", "tiny-llama", "--task", f"file:{task_file}",
                           "--out", tmp_path / "bank")
        assert_one_line(code, err, contains="is being written by another real-lens process")
    finally:
        holder.kill()
        holder.wait()
    assert not (tmp_path / "bank").exists()


def _without_root_privileges() -> list[str]:
    """Root ignores file permissions; `setpriv` runs the child as root without that privilege
    (non-root runs need nothing)."""
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    assert setpriv, "running as root, this test needs setpriv (util-linux) to drop CAP_DAC_OVERRIDE"
    return [setpriv, "--bounding-set", "-dac_override,-dac_read_search", "--"]


def test_permission_denied_is_one_line(tmp_path, task_file):
    from .test_artifacts import _scores

    (tmp_path / "locked").mkdir(mode=0o555)
    _scores().save(tmp_path / "private")
    for p in (tmp_path / "private").iterdir():
        os.chmod(p, 0o000)
    cases = [
        # refused by the checks before any work
        (["collect", "--model", "tiny-llama", "--task", f"file:{task_file}", "--out", tmp_path / "locked" / "b"],
         "not writable"),
        # an OSError from deep inside (reading the scores) reaches the CLI's boundary
        (["steer", "--scores", tmp_path / "private", "--prompt", "x"], "permission denied"),
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    for argv, expected in cases:
        child = subprocess.run([*_without_root_privileges(), sys.executable, "-m", "real_lens.cli", *map(str, argv)],
                               cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
        assert_one_line(child.returncode, child.stderr, contains=expected)
