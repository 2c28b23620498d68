"""Fault injection: every failure is one line and exit code 2 (or heals itself), and every artifact
on disk afterwards is the old one or the new one, whole."""

import os
import subprocess
import sys
from pathlib import Path

import torch

from real_lens.bank import ActivationBank
from real_lens.cli import main
from real_lens.tasks import Example

REPO = Path(__file__).resolve().parents[2]


def cli(capsys, *argv) -> tuple[int, str, str]:
    """``real-lens ARGV`` in-process: (exit code, stdout, stderr)."""
    capsys.readouterr()
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exc:  # argparse mistakes
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line(code: int, err: str, *, contains: str = "") -> None:
    """Exit code 2, exactly one line on stderr, no traceback. (A failure during a command's work may follow
    the log line that states its CPU threads, written once its inputs are checked and its model loaded.)"""
    assert code == 2, err
    err = "".join(line for line in err.splitlines(keepends=True) if not line.startswith("real-lens: computing with "))
    assert err.count("\n") == 1 and err.endswith("\n"), err
    assert "Traceback" not in err and "error" in err, err
    assert contains.lower() in err.lower(), err


def write_task(path: Path, n_groups: int = 6) -> Path:
    rows = ["prompt,aligned,violating,group"] + [f"Q: is {i} even? A:,{'yes' if i % 2 == 0 else 'no'},"
                                                 f"{'no' if i % 2 == 0 else 'yes'},q{i}" for i in range(n_groups)]
    path.write_text("\n".join(rows) + "\n")
    return path


def synthetic_bank(seed: int, *, n_groups: int = 4, shape=(2, 4, 16), meta=None) -> ActivationBank:
    examples = tuple(Example(f"Q{g}:", f" {a}", label, f"g{g}") for g in range(n_groups)
                     for a, label in (("yes", 1), ("no", 0)))
    acts = torch.randn(len(examples), *shape, generator=torch.Generator().manual_seed(seed))
    return ActivationBank(acts, examples, {"site": "head_z", "task": f"synthetic-{seed}", **(meta or {})})


def run_python(code: str, *args, env=None, preexec_fn=None, timeout=120) -> subprocess.CompletedProcess:
    """``python -c code args`` from the repository root, with this session's cache."""
    full_env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run([sys.executable, "-c", code, *map(str, args)], cwd=REPO, env=full_env, capture_output=True,
                          text=True, timeout=timeout, preexec_fn=preexec_fn)
