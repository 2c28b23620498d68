"""`real-lens diagnose` on a tiny-model `run --quick` directory: per-head rows, caching, bad input, the dose–response."""

import csv

import numpy as np
import pytest

from real_lens.activations import collect_activations
from real_lens.cli import main
from real_lens.experiment import diagnose, load_config, prepare
from real_lens.experiment.config import fit_groups
from real_lens.experiment.store import write_rows
from real_lens.evaluation.suite import eval_items
from real_lens.scoring import Selection
from real_lens.steering import build_steering
from tests.helpers import needs_data

pytestmark = needs_data

METHODS = ("direction-attribution", "iti", "random")
DOSE = 0.001  # the tiny random model reaches KL ~0.02 at α 100: a small dose it can meet


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, tiny_model):
    out = tmp_path_factory.mktemp("run")
    argv = ["--quiet", "run", "--quick", "--model", "tiny-llama", "--methods", ",".join(METHODS), "--folds", "0",
            "--out", str(out)]
    assert main(argv) == 0
    return out


@pytest.fixture(scope="module")
def diagnosed(run_dir):
    assert main(["--quiet", "diagnose", str(run_dir), "--k", "2", "--dose-kl", str(DOSE)]) == 0
    with open(run_dir / "diagnose" / "heads.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_one_row_per_method_and_head_with_every_column(run_dir, diagnosed, capsys):
    assert [(r["method"], r["rank"]) for r in diagnosed] == [(m, str(i)) for m in METHODS for i in (1, 2)]
    for r in diagnosed:
        assert r["fold"] == "0" and r["reached"] == "True"
        assert abs(float(r["calibration_kl"]) / DOSE - 1) <= 0.05  # the job's calibration tolerance
        assert np.isclose(float(r["linear_gap"]), float(r["alpha"]) * float(r["first_order"]))
        for column in ("delta_mc2", "delta_mc1", "delta_mc2_norm", "beta_truth", "beta_len", "p_truth"):
            assert np.isfinite(float(r[column])), column
    report = (run_dir / "diagnose" / "heads.md").read_text()
    assert "## Fold 0: iti" in report and "## Per method" in report and "dose–response" in report
    assert (run_dir / "diagnose" / "heads.csv.seal").is_file()


def test_direction_attribution_rows_are_its_own_scores(diagnosed):
    """The first-order column is the direction-attribution scorer's quantity: on its own top heads it equals
    the saved score (same pairs, u and σ) and ranks them first."""
    mine = [r for r in diagnosed if r["method"] == "direction-attribution"]
    for r in mine:
        assert np.isclose(float(r["score"]), float(r["first_order"]), rtol=1e-5)
        assert r["first_order_rank"] == r["rank"]
    ranked = {r["head"]: int(r["first_order_rank"]) for r in diagnosed}
    assert sorted(ranked.values())[0] == 1


def test_a_row_is_its_head_alone_at_its_alpha_on_the_folds_test_questions(run_dir, diagnosed, tiny_model):
    cfg = load_config(run_dir)
    setup = prepare(cfg, model=tiny_model)
    bank = collect_activations(tiny_model, setup.task, site=cfg.site, readout=cfg.readout, batch_size=cfg.batch_size,
                               progress=False).select(fit_groups(cfg, setup.task.folds[0]))
    items = eval_items(setup.evaluation, setup.task, setup.task.folds[0].test, cfg.n_test_questions, cfg.seed)
    row = next(r for r in diagnosed if r["method"] == "iti")
    layer, head = (int(x) for x in row["head"][1:].split("H"))
    steering = build_steering(bank, Selection(((layer, head),), (1.0,), "x"), alpha=float(row["alpha"]))
    steered = setup.evaluation.evaluate(tiny_model, items, steering)["mc2_norm"].mean()
    unsteered = setup.evaluation.evaluate(tiny_model, items, None)["mc2_norm"].mean()
    assert np.isclose(float(row["delta_mc2_norm"]), steered - unsteered, atol=1e-9)
    assert float(row["delta_mc2_norm"]) != 0


def test_a_rerun_computes_nothing_and_an_interrupted_one_resumes(run_dir, diagnosed, monkeypatch, capsys):
    calls = []
    real = diagnose.calibrate_alpha

    def counted(*args, **kwargs):
        calls.append(args[1].modules)
        return real(*args, **kwargs)

    monkeypatch.setattr(diagnose, "calibrate_alpha", counted)
    monkeypatch.setattr(diagnose, "direction_effects", lambda *a, **k: pytest.fail("first-order effects recomputed"))
    argv = ["--quiet", "diagnose", str(run_dir), "--k", "2", "--dose-kl", str(DOSE)]
    assert main(argv) == 0 and calls == []
    (cell,) = (run_dir / "diagnose" / "cells").glob(f"fold0-single-head-*-{diagnosed[0]['head']}-*.json")
    cell.unlink()  # as if interrupted before this head
    assert main(argv) == 0 and len(calls) == 1
    with open(run_dir / "diagnose" / "heads.csv", newline="") as f:
        assert list(csv.DictReader(f)) == diagnosed
    capsys.readouterr()


@pytest.mark.parametrize("argv, message", [
    (["--methods", "real"], "not in the run"),
    (["--fold", "1"], "not in the run"),
    (["--fold", "-1"], "fold index"),
    (["--k", "0"], "positive integer"),
    (["--dose-kl", "0"], "> 0"),
])
def test_bad_input_is_one_line_and_exit_2(run_dir, capsys, argv, message):
    try:
        code = main(["--quiet", "diagnose", str(run_dir), *argv])
    except SystemExit as exc:  # argparse's own checks
        code = exc.code
    assert code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err and "Traceback" not in err


def test_a_directory_that_is_not_a_run_is_one_line_and_exit_2(tmp_path, capsys):
    for path in (tmp_path, tmp_path / "missing"):
        assert main(["--quiet", "diagnose", str(path)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "Traceback" not in err and str(path) in err


def test_the_dose_response_is_read_from_results_csv(tmp_path):
    rows = [{"fold": f, "method": m, "split": "test", "draw": d, "target_kl": t, "mc2": v}
            for f in (0, 1) for t in (0.1, 0.3)
            for m, d, v in (("iti", "", 0.5 + t + f / 10), ("random", 0, 0.4), ("random", 1, 0.6))]
    rows += [{"fold": f, "method": "unsteered", "split": "test", "draw": "", "target_kl": "", "mc2": 0.45} for f in (0, 1)]
    write_rows(tmp_path / "results.csv", rows)
    lines = diagnose.dose_response_lines(tmp_path, "mc2")
    table = {line.split(" | ")[0]: line for line in lines if line.startswith("| ")}
    assert "| KL 0.1 | KL 0.3 |" in table["| method"]
    assert "0.6000 / 0.7000 (0.6500)" in table["| iti"] and "0.8000 / 0.9000 (0.8500)" in table["| iti"]
    assert "0.5000 / 0.5000 (0.5000)" in table["| random"]  # the null: the mean over its draws
    assert any("unsteered: 0.4500 / 0.4500" in line for line in lines)
    assert diagnose.dose_response_lines(tmp_path / "none", "mc2")[-1].startswith("The run has no results.csv")
