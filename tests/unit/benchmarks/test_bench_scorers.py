"""benchmarks/bench_scorers.py on the tiny model: it runs, and batched equals looped patching."""

from benchmarks.bench_scorers import TOLERANCE, main


def test_benchmark_runs_and_batched_equals_looped(capsys, tiny_model):
    out = main(["--model", "tiny-llama", "--n-pairs", "2", "--atp-pairs", "3", "--n-demos", "2",
                "--modules-per-batch", "3"])
    printed = capsys.readouterr().out
    assert out["max_diff"] <= TOLERANCE and "within the" in printed
    # the loop recomputes every whole input once per module; the batched sweep only the patched positions
    assert out["looped_flops"] > 2 * out["batched_flops"] > 0
    for line in ("looped (TransformerLens", "batched (3 modules per forward", "token-FLOP floor", "attribution patching:"):
        assert line in printed
