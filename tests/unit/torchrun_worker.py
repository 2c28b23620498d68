"""Run by ``tests/unit/test_distributed.py`` under ``torchrun --nproc-per-node 2``.

Joins torchrun's gloo process group once, then runs the command lines of :func:`commands`
through ``real_lens.cli.main`` in that group (so one launch covers collection, scoring, the
cached-bank broadcast and the refusal), and rank 0 writes every exit code to ``codes.json``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

CHUNK_SIZE = "7"


def commands(out: Path, task: Path) -> dict[str, list[str]]:
    """The same command lines the test runs in one process for the reference."""
    model = ["--model", "tiny-llama", "--chunk-size", CHUNK_SIZE]
    bank = str(out / "bank")
    return {
        "collect": ["collect", *model, "--task", f"file:{task}", "--out", bank],
        "real": ["score", "--bank", bank, "--method", "real", "--out", str(out / "real")],
        "iti": ["score", "--bank", bank, "--method", "iti", "--out", str(out / "iti")],
        "random": ["score", "--bank", bank, "--method", "random", "--out", str(out / "random")],
        # The bank is in rank 0's cache by now: rank 0 sends it, rank 1 scores its slice of it.
        "iti-from-task": ["score", *model, "--task", f"file:{task}", "--method", "iti", "--out", str(out / "iti-from-task")],
        "collect-bf16": ["collect", *model, "--task", f"file:{task}", "--bank-dtype", "bfloat16", "--out", str(out / "bank-bf16")],
        "patching": ["score", "--bank", bank, "--method", "patching", "--out", str(out / "patching")],
    }


def main(out: Path, task: Path) -> None:
    import torch.distributed as dist

    from real_lens.cli import main as cli
    from real_lens.distributed import init_distributed

    ranks, _ = init_distributed("cpu")
    codes = {name: cli(argv) for name, argv in commands(out, task).items()}
    if ranks.is_main:
        (out / "codes.json").write_text(json.dumps(codes))
    dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
