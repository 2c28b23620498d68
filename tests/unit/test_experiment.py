import csv
import json
import re

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
    assert summary["metrics"] == ["mc2", "mc1"] and summary["select_metric"] == "mc2"
    assert set(summary["methods"]) == {"unsteered", "length-only", *cfg.methods}
    for entry in summary["methods"].values():
        low, high = entry["mc2_ci"]
        assert 0.0 <= low <= high <= 1.0 and entry["folds"] == 2
    assert "| real |" in (out / "summary.md").read_text()


def test_summary_has_paired_tests_against_unsteered_length_only_and_real(quick_run):
    """Each method vs unsteered and vs the length-only reference, and real vs every other method, on the
    same pooled test items; the paired rows agree with evaluation.paired on the per-item values."""
    from real_lens.evaluation.paired import paired_difference

    cfg, out = quick_run
    summary = json.loads((out / "summary.json").read_text())
    pairs = {(r["a"], r["b"]): r for r in summary["paired"]}
    expected = {(m, ref) for ref in ("unsteered", "length-only") for m in cfg.methods}
    expected |= {("real", m) for m in cfg.methods if m != "real"}
    assert set(pairs) == expected
    rows = _rows(out)
    per_item = {}
    for cell in (out / "cells").glob("fold*-test-*.json"):
        fold, method = re.match(r"fold(\d+)-(.+?)-test-k", cell.name).groups()
        per_item.setdefault(f"fold{fold}", {})[method] = json.loads(cell.read_text())["per_item"]["mc2"]
    row = pairs[("iti", "unsteered")]
    a = per_item["fold0"]["iti"] + per_item["fold1"]["iti"]
    b = per_item["fold0"]["unsteered"] + per_item["fold1"]["unsteered"]
    reference = paired_difference(a, b, n_boot=cfg.n_boot, seed=cfg.seed)
    assert row["difference"] == pytest.approx(reference.difference) and row["p"] == pytest.approx(reference.p_value)
    assert all(r["p"] <= r["p_holm"] <= 1 for r in summary["paired"])
    length_rows = [r for r in rows if r["method"] == "length-only"]
    assert len(length_rows) == 2 and all(r["split"] == "test" for r in length_rows)
    text = (out / "summary.md").read_text()
    assert "## Paired tests (mc2" in text and "| iti | unsteered |" in text


def test_summary_reports_fold_to_fold_rank_stability(quick_run):
    """Every non-random method's two fold rankings are compared (Spearman, top-K Jaccard) and printed."""
    from real_lens.compare import compare_scores
    from real_lens.scoring import ModuleScores

    cfg, out = quick_run
    stability = json.loads((out / "summary.json").read_text())["fold_stability"]
    assert set(stability) == set(cfg.methods) - {"random"}
    for method, entry in stability.items():
        expected = compare_scores(ModuleScores.load(out / "scores" / "fold0" / method),
                                  ModuleScores.load(out / "scores" / "fold1" / method), k=max(cfg.k_grid))
        assert entry["spearman"] == pytest.approx(expected["spearman"], nan_ok=True)
        assert entry["jaccard_top_k"] == expected["jaccard_top_k"]
    assert "## Rank stability across folds" in (out / "summary.md").read_text()


def test_every_grid_cell_is_in_the_results(quick_run):
    cfg, out = quick_run
    rows = _rows(out)
    for fold in (0, 1):
        for method in cfg.methods:
            val = [(int(r["k"]), float(r["alpha"])) for r in rows
                   if r["fold"] == str(fold) and r["method"] == method and r["split"] == "val"]
            assert sorted(val) == sorted((k, a) for k in cfg.k_grid for a in cfg.alpha_grid)


def test_k_and_alpha_are_chosen_on_val_only(quick_run):
    cfg, out = quick_run
    rows = _rows(out)
    for fold in (0, 1):
        for method in cfg.methods:
            mine = [r for r in rows if r["fold"] == str(fold) and r["method"] == method]
            val = [r for r in mine if r["split"] == "val"]
            (test,) = [r for r in mine if r["split"] == "test"]
            best = max(val, key=lambda r: (float(r["mc2"]), -int(r["k"]), -float(r["alpha"])))
            assert (test["k"], test["alpha"]) == (best["k"], best["alpha"])


def test_no_test_question_in_the_fold_training_data(quick_run):
    cfg, out = quick_run
    task = load_task("truthfulqa").sample_per_part(cfg.questions_per_part)
    for fold_index in (0, 1):
        fold = task.folds[fold_index]
        assert not fold.test & (fold.train | fold.val)
        cells = [json.loads(p.read_text()) for p in (out / "cells").glob(f"fold{fold_index}-*-test-*.json")]
        tested = {q for c in cells for q in c["per_item"]["group"]}
        assert tested and tested <= fold.test
        val_cells = [json.loads(p.read_text()) for p in (out / "cells").glob(f"fold{fold_index}-*-val-*.json")]
        assert {q for c in val_cells for q in c["per_item"]["group"]} <= fold.val


def test_rerun_reuses_every_cell(quick_run, monkeypatch):
    cfg, out = quick_run
    before = _rows(out)
    monkeypatch.setattr(experiment, "evaluate_cell", lambda *a, **k: pytest.fail("a cached cell was recomputed"))
    monkeypatch.setattr(experiment, "score_modules", lambda *a, **k: pytest.fail("cached scores were recomputed"))
    run_experiment(cfg, out, progress=False)
    assert _rows(out) == before


def test_the_main_job_logs_what_it_is_doing(quick_run, caplog):
    import logging

    cfg, out = quick_run
    with caplog.at_level(logging.INFO, logger="real_lens"):
        run_experiment(cfg, out, progress=False)  # every cell is cached: only the logging runs again
    text = caplog.text
    for fold in (0, 1):
        assert f"fold {fold}: " in text and f"fold {fold} real: scoring" in text
        for method in cfg.methods:
            assert f"fold {fold} {method}: chose K" in text
            assert sum(f"fold {fold} {method}: val K" in r.message for r in caplog.records) == 4  # 2 K x 2 alpha
    assert f"wrote {out}" in text


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


# --------------------------------------------------------------------------- other tasks, transfer
def _quick(task, **kw):
    # The tiny random model's clean-corrupted logit gaps are ~1e-4; patching would skip every pair at 1e-3.
    return config_for("quick", model="tiny-llama", task=task, k_grid=(1, 3), alpha_grid=(4.0,),
                      pair_min_gap=0.0, **kw)


@pytest.fixture(scope="module")
def caa_run(tmp_path_factory, tiny_model):
    out = tmp_path_factory.mktemp("caa")
    run_experiment(_quick("caa:refusal"), out, progress=False)
    return out


def test_caa_run_has_one_fold_and_its_own_metrics(caa_run):
    summary = json.loads((caa_run / "summary.json").read_text())
    assert summary["metrics"] == ["p_aligned", "p_aligned_raw"] and summary["select_metric"] == "p_aligned"
    rows = _rows(caa_run)
    assert {r["fold"] for r in rows} == {"0"}
    tests = [r for r in rows if r["split"] == "test"]
    assert all(0.0 <= float(r["p_aligned"]) <= 1.0 for r in tests)
    # The test cells are the A/B test set; val cells are generate items (chosen on, never tested).
    for path in (caa_run / "cells").glob("*.json"):
        groups = json.loads(path.read_text())["per_item"]["group"]
        prefix = "test:" if "-test-" in path.name else "generate:"
        assert groups and all(g.startswith(prefix) for g in groups)
    assert (caa_run / "p_aligned_vs_k.png").is_file() and (caa_run / "heatmaps_fold0.png").is_file()


def test_nq_swap_run_chooses_by_contains_and_reports_em(tmp_path, tiny_model):
    out = run_experiment(_quick("nq-swap", methods=("real", "random"), n_val_questions=2, n_test_questions=2),
                         tmp_path, progress=False)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["select_metric"] == "contains_aligned"
    assert summary["metrics"][:2] == ["em_aligned", "contains_aligned"]
    assert set(summary["methods"]) == {"unsteered", "real", "random"}


def test_generic_file_task_runs_with_the_pairs_evaluation(tmp_path, tiny_model):
    rows = ["prompt,aligned,violating"] + [f"Q: Is {i} even? A:,{'Yes' if i % 2 == 0 else 'No'},{'No' if i % 2 == 0 else 'Yes'}"
                                           for i in range(24)]
    (tmp_path / "even.csv").write_text("\n".join(rows) + "\n")
    out = run_experiment(_quick(f"file:{tmp_path / 'even.csv'}", methods=("iti", "random")), tmp_path / "run", progress=False)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["metrics"] == ["p_aligned", "top_aligned"]


def test_unknown_select_metric_and_fold_are_refused(tmp_path, tiny_model):
    with pytest.raises(RealLensError, match="select-metric 'mc3'"):
        run_experiment(_quick("truthfulqa", select_metric="mc3"), tmp_path / "a", progress=False)
    with pytest.raises(RealLensError, match="has 1 fold"):
        run_experiment(_quick("caa:refusal", folds=(1,)), tmp_path / "b", progress=False)


def test_transfer_reuses_the_source_selection(quick_run, tmp_path, monkeypatch):
    from real_lens.transfer import TransferConfig, run_transfer

    cfg, source = quick_run
    monkeypatch.setattr(experiment, "score_modules", lambda *a, **k: pytest.fail("transfer must not re-score"))
    out = run_transfer(TransferConfig(str(source), "caa:refusal", methods=("real", "iti", "random")), tmp_path,
                       progress=False)
    rows = _rows(out)
    chosen = {(r["fold"], r["method"]): (r["k"], r["alpha"]) for r in _rows(source) if r["split"] == "test"}
    transferred = [r for r in rows if r["method"] != "unsteered"]
    assert {r["method"] for r in transferred} == {"real", "iti", "random"}
    for r in transferred:
        assert r["fold"] == "0" and r["source_fold"] == "0"  # CAA's single fold takes TruthfulQA fold 0
        assert (r["k"], r["alpha"]) == chosen[("0", r["method"])]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["source"] == "truthfulqa" and summary["target"] == "caa:refusal"
    assert "nothing was re-selected" in (out / "summary.md").read_text()


def test_transfer_from_a_directory_that_is_not_a_run(tmp_path):
    from real_lens.transfer import TransferConfig, run_transfer

    with pytest.raises(RealLensError, match="not a finished real-lens run"):
        run_transfer(TransferConfig(str(tmp_path), "truthfulqa"), tmp_path / "out")
