"""The REAL benchmark's matrix-product floor must count exactly what REAL multiplies."""

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from benchmarks.bench_real import main, make_bank, matmul_flops, prior_split_sizes
from real_lens.scoring.real import score_real_tensors
from real_lens.scoring.real_config import RealConfig


@pytest.mark.parametrize(
    "n_examples, cfg",
    [
        (320, RealConfig(vq_epochs=2, prior_epochs=2)),
        # partial minibatches everywhere, the per-answer split, held-out scored in slices
        (333, RealConfig(vq_epochs=1, prior_epochs=3, batch_size=10, prior_batch_size=7,
                         heldout_split="answer", eval_batch=50, n_groups=4)),
    ],
)
def test_matmul_flops_equals_torch_flop_counter(n_examples, cfg):
    acts, labels, groups, _ = make_bank(n_examples, 1, 3, 16, seed=0)
    with FlopCounterMode(display=False) as counter:
        score_real_tensors(acts, labels, groups, cfg=cfg)
    per_module = matmul_flops(cfg, 16, n_examples, *prior_split_sizes(labels, groups, cfg, seed=0))
    assert 3 * sum(per_module.values()) == counter.get_total_flops()


def test_benchmark_runs_and_batched_equals_looped(capsys):
    torch.manual_seed(0)
    main(["--shape", "tiny", "--examples", "120", "--loop-modules", "1"])
    out = capsys.readouterr().out
    assert "scores identical to batched: True" in out
    assert "matrix-product floor of the batched program" in out
