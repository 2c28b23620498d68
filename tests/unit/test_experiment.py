import csv
import json

import pytest

from real_lens import experiment
from real_lens.errors import RealLensError
from real_lens.experiment import config_for, run_experiment
from real_lens.tasks import load_task
from real_lens.tasks.data import resolve_data_dir

pytestmark = pytest.mark.skipif(resolve_data_dir() is None, reason="../shared/data is not present")


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory, tiny_model):
    cfg = config_for("quick", model="tiny-llama", k_grid=(1, 3), alpha_grid=(2.0, 8.0))
    out = tmp_path_factory.mktemp("run")
    run_experiment(cfg, out, progress=False)
    return cfg, out


def _rows(out):
    with open(out / "results.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_quick_run_writes_every_output(quick_run):
    cfg, out = quick_run
    for name in ("results.csv", "summary.md", "summary.json", "config.json", "mc2_vs_k.png",
                 "heatmaps_fold0.png", "heatmaps_fold1.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary) == {"unsteered", *cfg.methods}
    for entry in summary.values():
        low, high = entry["mc2_ci"]
        assert 0.0 <= low <= high <= 1.0 and entry["folds"] == len(cfg.folds)
    assert "| real |" in (out / "summary.md").read_text()


def test_every_grid_cell_is_in_the_results(quick_run):
    cfg, out = quick_run
    rows = _rows(out)
    for fold in cfg.folds:
        for method in cfg.methods:
            val = [(int(r["k"]), float(r["alpha"])) for r in rows
                   if r["fold"] == str(fold) and r["method"] == method and r["split"] == "val"]
            assert sorted(val) == sorted((k, a) for k in cfg.k_grid for a in cfg.alpha_grid)


def test_k_and_alpha_are_chosen_on_val_only(quick_run):
    cfg, out = quick_run
    rows = _rows(out)
    for fold in cfg.folds:
        for method in cfg.methods:
            mine = [r for r in rows if r["fold"] == str(fold) and r["method"] == method]
            val = [r for r in mine if r["split"] == "val"]
            (test,) = [r for r in mine if r["split"] == "test"]
            best = max(val, key=lambda r: (float(r["mc2"]), -int(r["k"]), -float(r["alpha"])))
            assert (test["k"], test["alpha"]) == (best["k"], best["alpha"])


def test_no_test_question_in_the_fold_training_data(quick_run):
    cfg, out = quick_run
    task = load_task("truthfulqa").sample_per_part(cfg.questions_per_part)
    for fold_index in cfg.folds:
        fold = task.folds[fold_index]
        assert not fold.test & (fold.train | fold.val)
        cells = [json.loads(p.read_text()) for p in (out / "cells").glob(f"fold{fold_index}-*-test-*.json")]
        tested = {q for c in cells for q in c["per_question"]["question"]}
        assert tested and tested <= fold.test
        val_cells = [json.loads(p.read_text()) for p in (out / "cells").glob(f"fold{fold_index}-*-val-*.json")]
        assert {q for c in val_cells for q in c["per_question"]["question"]} <= fold.val


def test_rerun_reuses_every_cell(quick_run, monkeypatch):
    cfg, out = quick_run
    before = _rows(out)
    monkeypatch.setattr(experiment, "_evaluate", lambda *a, **k: pytest.fail("a cached cell was recomputed"))
    monkeypatch.setattr(experiment, "get_scorer", lambda *a, **k: pytest.fail("cached scores were recomputed"))
    run_experiment(cfg, out, progress=False)
    assert _rows(out) == before


def test_another_config_in_the_same_directory_is_refused(quick_run):
    cfg, out = quick_run
    with pytest.raises(RealLensError, match="another configuration"):
        run_experiment(config_for("quick", model="tiny-llama", k_grid=(2,)), out)


def test_config_validation():
    with pytest.raises(RealLensError, match="unknown method"):
        config_for(methods=("real", "magic"))
    with pytest.raises(RealLensError, match="unknown preset"):
        config_for("huge")
    with pytest.raises(RealLensError, match="k_grid"):
        config_for(k_grid=(0,))
