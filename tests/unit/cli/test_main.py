import pytest

from real_lens.cli import main


def _exit_code(argv) -> int:
    """argparse mistakes exit via SystemExit(2); library errors return 2 from main."""
    try:
        return main(argv)
    except SystemExit as exc:
        return exc.code


@pytest.mark.parametrize("argv", [
    ["collect", "--task", "nope", "--out", "x"],
    ["collect", "--task", "truthfulqa"],  # --out missing
    ["run", "--k-grid", "8,x"],
    ["score", "--method", "magic", "--bank", "x", "--out", "y"],
    ["collect", "--model", "nope", "--task", "file:/no/such.csv", "--out", "x"],
    ["transfer", "--source-run", "/no/such/run", "--task", "nq-swap"],
    ["run", "--task", "caa:refusal", "--model", "tiny-llama", "--folds", "3", "--out", "{tmp}/r"],
    ["run", "--task", "truthfulqa", "--model", "tiny-llama", "--select-metric", "accuracy", "--out", "{tmp}/r"],
])
def test_user_mistakes_are_one_line_and_exit_2(capsys, argv, tmp_path, tiny_model):
    assert _exit_code([a.replace("{tmp}", str(tmp_path)) for a in argv]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "error:" in err and "Traceback" not in err


def test_score_takes_the_model_from_the_bank(tmp_path, tiny_model, capsys):
    csv = tmp_path / "beh.csv"
    csv.write_text("prompt,aligned,violating,group\n" + "".join(
        f"Q: claim {i}? A:,yes,no,q{i}\n" for i in range(12)))
    assert main(["collect", "--model", "tiny-llama", "--task", f"file:{csv}", "--out", str(tmp_path / "bank")]) == 0
    # No --model: patching must use the bank's model (tiny-llama), not the embedded default.
    # --min-gap 0: the tiny random model's demonstrations move its answers by ~0.01-0.1 nats only
    assert main(["score", "--bank", str(tmp_path / "bank"), "--method", "attribution", "--min-gap", "0",
                 "--out", str(tmp_path / "s")]) == 0
    assert (tmp_path / "s" / "heatmap.png").is_file()
    assert "top modules by attribution" in capsys.readouterr().out


def test_score_accepts_a_bank_whose_model_is_a_plain_name(tmp_path, capsys):
    import torch

    from real_lens.bank import ActivationBank
    from real_lens.tasks import Example

    examples = tuple(Example(f"Q{g}", a, label, f"g{g}") for g in range(6) for a, label in ((" yes", 1), (" no", 0)))
    ActivationBank(torch.randn(12, 2, 3, 8), examples, {"site": "head_z", "model": "hand-made"}).save(tmp_path / "bank")
    assert main(["score", "--bank", str(tmp_path / "bank"), "--method", "random", "--out", str(tmp_path / "s")]) == 0
    assert "top modules by random" in capsys.readouterr().out


@pytest.mark.parametrize("argv", [["--help"], ["run", "--help"], ["steer", "--help"], ["--version"]])
def test_help_and_version_import_no_torch(argv):
    """--help answers at once: building and using the parser imports neither torch nor any model code."""
    import subprocess
    import sys

    code = ("import sys\nfrom real_lens.cli import main\ntry:\n    main(sys.argv[1:])\nexcept SystemExit:\n    pass\n"
            "heavy = [m for m in ('torch', 'transformers', 'transformer_lens', 'sklearn') if m in sys.modules]\n"
            "print('heavy:', heavy, file=sys.stderr)")
    done = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, timeout=120)
    assert "heavy: []" in done.stderr, done.stderr[-2000:]
    assert done.stdout.strip()


# --------------------------------------------------------------------------- published rankings (real-published)
def _ranking_file(path, n_layers, n_heads, *, reverse=False):
    """A ranking in the REAL release's format: np.save of an object array of ((layer, head), relevance) rows."""
    import numpy as np

    rows = np.empty((n_layers * n_heads, 2), dtype=object)
    for i in range(n_layers * n_heads):
        rows[i, 0], rows[i, 1] = divmod(i, n_heads), 0.5 + (-1 if reverse else 1) * 0.3 * i / (n_layers * n_heads)
    np.save(path, rows)
    return path


def test_a_published_ranking_scores_steers_exports_and_compares(tmp_path, tiny_model, capsys):
    csv = tmp_path / "beh.csv"
    csv.write_text("prompt,aligned,violating,group\n" + "".join(f"Q: claim {i}? A:,yes,no,q{i}\n" for i in range(6)))
    assert main(["collect", "--model", "tiny-llama", "--task", f"file:{csv}", "--out", str(tmp_path / "bank")]) == 0
    n_layers, n_heads = tiny_model.cfg.n_layers, tiny_model.cfg.n_heads
    ranking = _ranking_file(tmp_path / "Model_tiny_fold_0.npy", n_layers, n_heads)
    assert main(["score", "--from-published", str(ranking), "--bank", str(tmp_path / "bank"),
                 "--out", str(tmp_path / "pub")]) == 0
    best = f"L{n_layers - 1}H{n_heads - 1}"  # the last row has the highest relevance
    assert f"as real-published; top heads: {best}" in capsys.readouterr().out
    assert main(["inspect", "--scores", str(tmp_path / "pub"), "--top-k", "2", "--prompt", "Q: claim 1? A:"]) == 0
    assert best in capsys.readouterr().out
    assert main(["export", "--scores", str(tmp_path / "pub"), "--top-k", "2", "--format", "steering",
                 "--out", str(tmp_path / "steering")]) == 0
    from real_lens.steering import Steering

    steering = Steering.load(tmp_path / "steering")
    assert steering.method == "real-published" and steering.strengths[0] == 1.0 and steering.strengths[1] < 1.0
    capsys.readouterr()
    assert main(["compare", "--scores", str(tmp_path / "pub"), "--scores", str(ranking), "--k", "3"]) == 0
    assert "Spearman 1.000; top-3 overlap 3 (Jaccard 1.000)" in capsys.readouterr().out
    reverse = _ranking_file(tmp_path / "rev.npy", n_layers, n_heads, reverse=True)
    assert main(["compare", "--scores", str(ranking), "--scores", str(reverse), "--k", "3"]) == 0
    assert "Spearman -1.000; top-3 overlap 0 (Jaccard 0.000)" in capsys.readouterr().out


@pytest.mark.parametrize("case", ["other model", "malicious", "one score set", "with --task"])
def test_published_ranking_mistakes_are_one_line(tmp_path, capsys, case):
    import os

    import numpy as np
    import torch

    from real_lens.bank import ActivationBank
    from real_lens.tasks import Example

    examples = tuple(Example(f"Q{g}", a, label, f"g{g}") for g in range(3) for a, label in ((" yes", 1), (" no", 0)))
    ActivationBank(torch.randn(6, 2, 3, 8), examples, {"site": "head_z", "model": "hand-made"}).save(tmp_path / "bank")
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    evil = np.empty((1, 2), dtype=object)
    evil[0, 0], evil[0, 1] = (0, 0), Exploit()
    np.save(tmp_path / "evil.npy", evil)
    other = str(_ranking_file(tmp_path / "other.npy", 4, 4))
    argv, expected = {
        "other model": (["score", "--from-published", other, "--bank", str(tmp_path / "bank"), "--out", str(tmp_path / "s")],
                        "4 layers x 4 heads (16), but the bank has 2 x 3 (6)"),
        "malicious": (["compare", "--scores", str(tmp_path / "evil.npy"), "--scores", other], "refused to read"),
        "one score set": (["compare", "--scores", other], "compare takes --scores twice"),
        "with --task": (["score", "--from-published", other, "--task", "truthfulqa", "--out", str(tmp_path / "s")],
                        "drop --task"),
    }[case]
    assert _exit_code(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and expected in err and "Traceback" not in err
    assert not marker.exists()
