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
