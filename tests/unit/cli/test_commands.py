"""The CLI side of the API: steer/inspect/export take the model from the scores, refuse a mismatched
model in one line before generating, --quiet, and `run` options derived from ExperimentConfig."""

import argparse
import dataclasses
import json
import logging
import re

import pytest
import torch

from real_lens.cli import commands as cli_commands
from real_lens import cli, experiment
from real_lens.configs import add_config_options, build_config, read_overrides
from real_lens.errors import RealLensError
from real_lens.experiment import ExperimentConfig, config_for, load_config, start_run_dir
from real_lens.steering import Steering

from tests.helpers import needs_data

from ..test_api import _other_tiny_bridge, write_even_task


@pytest.fixture(scope="module")
def scored(tmp_path_factory, tiny_model):
    """A bank collected on tiny-llama from a file: task, and its ITI and REAL scores (CLI-made)."""
    root = tmp_path_factory.mktemp("cli")
    csv = write_even_task(root / "even.csv")
    assert cli.main(["--quiet", "collect", "--model", "tiny-llama", "--task", f"file:{csv}", "--out", str(root / "bank")]) == 0
    for method in ("iti", "real"):
        assert cli.main(["--quiet", "score", "--bank", str(root / "bank"), "--method", method,
                         "--out", str(root / method)]) == 0
    return root


def _one_line_error(capsys, argv) -> str:
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "error:" in err and "Traceback" not in err, err
    return err


def test_steer_takes_the_model_from_the_scores_and_the_method_s_strengths(scored, capsys):
    # No --model: the scores came from tiny-llama, so the embedded default must not be loaded.
    assert cli.main(["steer", "--scores", str(scored / "iti"), "--top-k", "3", "--prompt", "Q: Is 4 even? A:",
                     "--max-new-tokens", "4"]) == 0
    captured = capsys.readouterr()
    assert "[steered: iti, top 3, alpha 15, strengths method (1.00, 1.00, 1.00)]" in captured.out
    assert "model tiny-llama (recorded in the scores" in captured.err
    assert cli.main(["--quiet", "steer", "--scores", str(scored / "real"), "--top-k", "3", "--strengths", "uniform",
                     "--prompt", "Q: Is 4 even? A:", "--max-new-tokens", "4"]) == 0
    assert "strengths uniform (1.00, 1.00, 1.00)" in capsys.readouterr().out


def test_steer_with_another_model_is_one_line_before_any_generation(scored, capsys, monkeypatch):
    import real_lens.generation

    other = _other_tiny_bridge(n_heads=2, n_kv_heads=1, d_head=32)
    monkeypatch.setattr(cli_commands, "load_model_for", lambda args: other)
    monkeypatch.setattr(real_lens.generation, "generate_text", lambda *a, **k: pytest.fail("generated before the check"))
    err = _one_line_error(capsys, ["steer", "--scores", str(scored / "real"), "--prompt", "Q: Is 4 even? A:"])
    assert "does not fit the model" in err and "d_head is 32" in err


def test_inspect_shows_hooks_norms_logits_and_fired_hooks(scored, capsys):
    assert cli.main(["--quiet", "inspect", "--scores", str(scored / "real"), "--top-k", "3", "--alpha", "40",
                     "--prompt", "Q: Is 4 even? A:", "--n-tokens", "4", "--warn-ratio", "0.01"]) == 0
    out = capsys.readouterr().out
    for expected in ("steering: real at head_z, 3 modules, alpha 40", "mean ‖act‖", "<- large", "warning:",
                     "next token after", "KL(unsteered ‖ steered) per position", "hooks fired"):
        assert expected in out, expected
    fired = out.split("hooks fired")[1]
    assert re.search(r"blocks\.\d\.attn\.hook_z +1\n", fired)  # each steered layer's hook ran once


def test_export_formats_and_inspect_of_a_saved_steering(scored, tmp_path, capsys):
    common = ["--quiet", "export", "--scores", str(scored / "iti"), "--top-k", "2", "--alpha", "5"]
    assert cli.main([*common, "--format", "lm-eval", "--out", str(tmp_path / "steer.pt")]) == 0
    config = torch.load(tmp_path / "steer.pt", weights_only=True)
    assert {e["steering_coefficient"] for e in config.values()} == {5.0}
    assert cli.main([*common, "--format", "vectors", "--out", str(tmp_path / "vectors")]) == 0
    assert json.loads((tmp_path / "vectors" / "vectors.json").read_text())["site"] == "attn_out"
    assert cli.main([*common, "--format", "steering", "--out", str(tmp_path / "steering")]) == 0
    saved = Steering.load(tmp_path / "steering")
    assert saved.method == "iti" and saved.strengths.tolist() == [1.0, 1.0] and saved.meta["act_norms"]
    capsys.readouterr()
    assert cli.main(["--quiet", "inspect", "--steering", str(tmp_path / "steering"), "--prompt", "Q: Is 2 even? A:"]) == 0
    assert "steering: iti at head_z, 2 modules, alpha 5," in capsys.readouterr().out
    assert cli.main(["--quiet", "inspect", "--steering", str(tmp_path / "steering"), "--alpha", "2.5",
                     "--prompt", "Q: Is 2 even? A:"]) == 0
    assert "steering: iti at head_z, 2 modules, alpha 2.5," in capsys.readouterr().out


def test_hooks_command_prints_list_hooks(capsys, tiny_model):
    assert cli.main(["--quiet", "hooks", "--model", "tiny-llama", "--filter", "hook_z"]) == 0
    out = capsys.readouterr().out
    assert "blocks.1.attn.hook_z" in out and "[1, " in out and "hook_resid_post" not in out


def test_quiet_silences_progress_bars_and_logs(tmp_path, capsys, tiny_model):
    csv = write_even_task(tmp_path / "even.csv", n=8)
    assert cli.main(["collect", "--model", "tiny-llama", "--task", f"file:{csv}", "--out", str(tmp_path / "a")]) == 0
    assert "collect head_z" in capsys.readouterr().err
    # After the command too; a new file so the collection is not simply read from the cache.
    csv2 = write_even_task(tmp_path / "even2.csv", n=10)
    assert cli.main(["collect", "--quiet", "--model", "tiny-llama", "--task", f"file:{csv2}", "--out", str(tmp_path / "b")]) == 0
    assert capsys.readouterr().err == ""


# --------------------------------------------------------------------------- run options from ExperimentConfig
def _argv_for(cfg) -> list[str]:
    argv = []
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        text = "none" if value is None else ",".join(map(str, value)) if isinstance(value, tuple) else str(value)
        argv += [f"--{f.name.replace('_', '-')}", text]
    return argv


def test_every_experiment_config_field_is_a_run_option():
    cfg = config_for("quick", model="tiny-llama", k_grid=(1, 3), alpha_grid=(2.0, 8.5), folds=(1,),
                     questions_per_part=None, select_metric="mc1", seed=7, device="cpu", data_dir="/data")
    args = cli.build_parser().parse_args(["run", *_argv_for(cfg)])
    assert ExperimentConfig(**read_overrides(args, ExperimentConfig)) == cfg
    # Nothing given: nothing overridden (so presets and --config keep their values).
    assert read_overrides(cli.build_parser().parse_args(["run"]), ExperimentConfig) == {}


def test_derived_options_parse_types_and_none():
    @dataclasses.dataclass(frozen=True)
    class Toy:
        flag: bool = False
        grid: tuple[float, ...] = (1.0,)
        limit: int | None = 3  # at most this many; 100% of them
        name: str = "x"

    parser = argparse.ArgumentParser()
    add_config_options(parser, Toy)
    args = parser.parse_args(["--flag", "--grid", "0.5, 2", "--limit", "none"])
    assert Toy(**read_overrides(args, Toy)) == Toy(flag=True, grid=(0.5, 2.0), limit=None)
    assert "100% of them" in parser.format_help()  # the field's comment is its help
    with pytest.raises(SystemExit):
        parser.parse_args(["--limit", "many"])


def test_run_config_reruns_a_saved_configuration(tmp_path, monkeypatch, capsys):
    cfg = config_for("quick", model="tiny-llama", k_grid=(1, 3), task="caa:refusal")
    start_run_dir(tmp_path / "saved", cfg)  # writes config.json as a run does
    ran = []

    def fake_run(config, out, progress):
        ran.append((config, str(out), progress))
        (tmp_path / "out").mkdir(exist_ok=True)
        (tmp_path / "out" / "summary.md").write_text("# summary")
        return tmp_path / "out"

    monkeypatch.setattr(experiment, "run_experiment", fake_run)
    assert cli.main(["--quiet", "run", "--config", str(tmp_path / "saved" / "config.json"), "--out", str(tmp_path / "o")]) == 0
    assert ran[-1] == (cfg, str(tmp_path / "o"), False)
    assert cli.main(["run", "--config", str(tmp_path / "saved"), "--seed", "3", "--questions-per-part", "none"]) == 0
    assert ran[-1][0] == dataclasses.replace(cfg, seed=3, questions_per_part=None)
    assert ran[-1][1] == "runs/caa-refusal" and ran[-1][2] is True
    assert cli.main(["--quiet", "run", "--larger"]) == 0  # a preset's run has its own default directory
    assert ran[-1][0] == config_for("larger") and ran[-1][1] == "runs/truthfulqa-larger"
    capsys.readouterr()
    err = _one_line_error(capsys, ["run", "--config", str(tmp_path / "saved"), "--quick"])
    assert "--config and --quick" in err
    err = _one_line_error(capsys, ["run", "--config", str(tmp_path / "nowhere")])
    assert "no configuration at" in err
    err = _one_line_error(capsys, ["run", "--config", str(tmp_path / "saved"), "--val-questions", "0"])
    assert "n_val_questions must be an integer >= 1 or None" in err


def test_load_config_round_trips_and_explains_bad_files(tmp_path, caplog):
    cfg = config_for("full", model="tiny-llama", folds=(0,), alpha_grid=(5.0, 15.0))
    start_run_dir(tmp_path, cfg)
    assert load_config(tmp_path) == cfg and load_config(tmp_path / "config.json") == cfg
    stored = json.loads((tmp_path / "config.json").read_text())["config"]
    stored["alpha_grid"] = [5, 15]  # ints in JSON are still floats in the config
    assert build_config(ExperimentConfig, stored).alpha_grid == (5.0, 15.0)
    with pytest.raises(RealLensError, match=r"does not know: \['magic'\]"):
        build_config(ExperimentConfig, {**stored, "magic": 1})
    with caplog.at_level(logging.WARNING, logger="real_lens"):
        older = build_config(ExperimentConfig, {k: v for k, v in stored.items() if k != "n_boot"})
    assert older.n_boot == ExperimentConfig().n_boot and "does not set n_boot" in caplog.text
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(RealLensError, match="not valid JSON"):
        load_config(tmp_path / "bad.json")


# --------------------------------------------------------------------------- issue 25: doses, prompts, global options
@needs_data
@pytest.mark.parametrize("command", ["steer", "inspect", "export"])
def test_kl_target_calibrates_as_the_main_job_does(scored, tmp_path, capsys, command):
    from real_lens.bank import ActivationBank
    from real_lens.evaluation.dose import calibrate
    from real_lens.models import load_model
    from real_lens.scoring import ModuleScores
    from real_lens.steering import build_steering

    extra = {"steer": ["--prompt", "Q: Is 4 even? A:", "--max-new-tokens", "2"],
             "inspect": ["--prompt", "Q: Is 4 even? A:"],
             "export": ["--format", "steering", "--out", str(tmp_path / "steering")]}[command]
    assert cli.main(["--quiet", command, "--scores", str(scored / "iti"), "--top-k", "2", "--kl-target", "0.05",
                     *extra]) == 0
    out = capsys.readouterr().out
    # The oracle: the library's calibration of the same steering (the job's held-apart paragraphs and settings).
    scores = ModuleScores.load(scored / "iti")
    unit = build_steering(ActivationBank.load(scored / "bank"), scores.select(2), alpha=1.0)
    expected = calibrate(load_model("tiny-llama"), unit, kl=0.05).meta["calibration"]
    match = re.search(r"calibrated α (\S+) for the KL target 0.05 nats per token on 8 held-apart WikiText-2 "
                      r"paragraphs: KL (\S+), target (reached|NOT reached)", out)
    assert match, out
    assert float(match.group(1)) == pytest.approx(expected["alpha"], rel=1e-3)
    assert (match.group(3) == "reached") == expected["reached"]
    if command == "export":
        saved = Steering.load(tmp_path / "steering")
        assert saved.alpha == pytest.approx(expected["alpha"]) and saved.meta["calibration"]["target_kl"] == 0.05
    if command == "steer":
        assert f"alpha {float(match.group(1)):g}" in out or f"alpha {expected['alpha']:g}" in out


@pytest.mark.parametrize("dose", [["--alpha", "3", "--kl-target", "0.1"], ["--kl-target", "0"], ["--kl-target", "nan"]])
def test_kl_target_is_exclusive_with_alpha_and_positive(scored, capsys, dose):
    with pytest.raises(SystemExit) as exit:
        cli.main(["steer", "--scores", str(scored / "iti"), *dose, "--prompt", "Q: A:"])
    assert exit.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and ("not allowed with" in err or "expected a number > 0" in err
                                     or "finite" in err), err


def test_raw_prompt_skips_the_chat_template(scored, capsys, monkeypatch):
    from real_lens import generation

    seen = []
    real = generation.generate_text

    def spy(model, prompt, *, chat=None, **kw):
        seen.append(chat)
        return real(model, prompt, chat=chat, **kw)

    monkeypatch.setattr(generation, "generate_text", spy)
    for raw in ([], ["--raw-prompt"]):
        seen.clear()
        assert cli.main(["--quiet", "steer", "--scores", str(scored / "iti"), "--top-k", "2", "--alpha", "1",
                         "--prompt", "Q: Is 4 even? A:", "--max-new-tokens", "2", *raw]) == 0
        assert seen == [False, False] if raw else seen == [None, None]
        seen.clear()
        assert cli.main(["--quiet", "generate", "--model", "tiny-llama", "--prompt", "Q: A:", "--max-new-tokens", "1",
                         *raw]) == 0
        assert seen == ([False] if raw else [None])
    capsys.readouterr()


def test_export_hint_names_the_model(scored, tmp_path, capsys):
    assert cli.main(["--quiet", "export", "--scores", str(scored / "iti"), "--top-k", "2", "--alpha", "1",
                     "--format", "lm-eval", "--out", str(tmp_path / "s.pt")]) == 0
    out = capsys.readouterr().out
    assert "pretrained=tiny-llama," in out and "<the Hugging Face model>" not in out


def test_version_and_every_task_in_help(capsys):
    from real_lens import __version__
    from real_lens.tasks import TASK_DESCRIPTIONS

    with pytest.raises(SystemExit) as exit:
        cli.main(["--version"])
    assert exit.value.code == 0 and capsys.readouterr().out.strip() == f"real-lens {__version__}"
    for command in ("collect", "score"):
        with pytest.raises(SystemExit):
            cli.main([command, "--help"])
        text = "".join(capsys.readouterr().out.split())  # argparse wraps lines inside hyphenated names
        assert all(name in text for name in TASK_DESCRIPTIONS), (command, text)


def test_log_file_gets_the_info_log_even_when_quiet(tmp_path, capsys, tiny_model):
    csv = write_even_task(tmp_path / "even.csv", n=8)
    log = tmp_path / "run.log"
    argv = ["collect", "--model", "tiny-llama", "--task", f"file:{csv}", "--out", str(tmp_path / "bank"),
            "--quiet", "--threads", "1", "--log-file", str(log)]
    assert cli.main(argv) == 0
    assert capsys.readouterr().err == ""
    text = log.read_text()
    assert "collect: computing with 1 CPU thread (asked for)" in text
    assert cli.main(["--log-file", str(tmp_path / "no" / "such" / "dir.log"), "tasks"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--log-file" in err and "writable" in err


def test_threads_option_before_or_after_the_command(monkeypatch, capsys):
    from real_lens import threads

    chosen = []
    monkeypatch.setattr(threads, "set_threads", lambda n=None, state=True: chosen.append(n) or 1)
    for argv in (["--threads", "3", "hooks", "--estimate-only", "--model", "tiny-llama"],
                 ["hooks", "--threads", "3", "--estimate-only", "--model", "tiny-llama"],
                 ["hooks", "--estimate-only", "--model", "tiny-llama"]):
        assert cli.main(["--quiet", *argv]) == 0
    assert chosen == [3, 3, None]
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit:
        cli.main(["--threads", "0", "tasks"])
    assert exit.value.code == 2 and "expected a positive integer" in capsys.readouterr().err
