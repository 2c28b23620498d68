"""The GPU check runs on the CPU in its CI-sized form, so it is known to work before a GPU appears."""

import os
import subprocess
import sys
from pathlib import Path

from tests.helpers import needs_data

ROOT = Path(__file__).resolve().parents[3]


def _gpu_check(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "benchmarks.gpu_check", "--device", "cpu", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


@needs_data
def test_every_section_runs_on_the_cpu_and_the_two_rank_score_equals_one():
    # A budget far above the sections' need: this test checks what they print, not how fast a shared CPU is
    # (the 8-minute budget is for the GPU; the limit itself is tested below).
    done = _gpu_check("--dry-small", "--budget", "3000", timeout=3300)
    out = done.stdout
    assert done.returncode == 0, out[-4000:] + done.stderr[-2000:]
    summary = out[out.index("=== summary ==="):]
    for section in ("environment", "real", "collect", "mc", "nccl-score"):
        assert f"{section}: ok" in summary, summary
    assert "scores identical to batched: True" in out  # bench_real's looped modules equal the batched ones
    assert "ratio collect / plain HF (tokens/s)" in out
    assert "answers/s" in summary
    assert "2-rank gloo (CPU) iti score equals 1 rank: True" in summary


def test_a_section_past_its_limit_is_stopped_and_the_check_fails():
    done = _gpu_check("--dry-small", "--sections", "real", "--budget", "1", timeout=60)
    assert done.returncode == 1
    assert "real: stopped at its 1 s limit" in done.stdout
