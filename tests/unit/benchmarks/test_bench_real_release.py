"""The real-release timing benchmark scores what it says and prints the ratio of its best times."""

import torch

from benchmarks.bench_real_release import main
from real_lens.bank import ActivationBank
from real_lens.scoring.real import score_real_release
from real_lens.tasks import Example


def test_benchmark_times_both_paths_on_the_first_heads(tmp_path, capsys, monkeypatch):
    g = torch.Generator().manual_seed(0)
    examples = tuple(Example("Q: q A:", f" a{i}", i % 2, f"q{i // 4}") for i in range(48))
    bank = ActivationBank(torch.randn(48, 2, 3, 16, generator=g), examples, {"site": "head_z", "task": "synthetic"})
    bank.save(tmp_path / "bank")
    seen = []
    import benchmarks.bench_real_release as bench

    def spy(bank, **kwargs):
        seen.append(kwargs["modules"])
        return score_real_release(bank, **kwargs)

    monkeypatch.setitem(bench.SCORERS, "new (real-release)", spy)
    best = main(["--bank", str(tmp_path / "bank"), "--fold", "none", "--heads", "4", "--repeats", "1"])
    out = capsys.readouterr().out
    assert seen == [[0, 1, 2, 3]]
    assert "30/6 epochs" in out and "20/10 epochs" in out
    ratio = best["new (real-release)"] / best["old (real-release-utils)"]
    assert f"ratio new/old (best of 1): {ratio:.2f}" in out
