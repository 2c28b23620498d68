"""The main job's fold loop on the tiny random model: outputs, cells, the null, paired tests, K choice, caching."""
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


# The tiny random model's KL per token stays ~0.02 even at α 100 with 3 heads: targets it can reach.
TINY_KL = (0.001, 0.004)


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory, tiny_model):
    cfg = config_for("quick", model="tiny-llama", k_grid=(1, 3), kl_grid=TINY_KL)
    out = tmp_path_factory.mktemp("run")
    run_experiment(cfg, out, progress=False)
    return cfg, out


@pytest.fixture(scope="module")
def alpha_run(tmp_path_factory, tiny_model):
    """The paper's protocol: a fixed α grid, K and α chosen together on val."""
    cfg = config_for("quick", model="tiny-llama", k_grid=(1, 3), kl_grid=None, alpha_grid=(2.0, 8.0),
                     methods=("real", "iti", "random"))
    out = tmp_path_factory.mktemp("alpha-run")
    run_experiment(cfg, out, progress=False)
    return cfg, out


def result_rows(out):
    with open(out / "results.csv", newline="") as f:
        return list(csv.DictReader(f))


def dose_groups(cfg):
    return [f"KL {t:g}" for t in cfg.kl_grid]


def _steered(cfg):
    return [m for m in cfg.methods if m != "random"]


def test_quick_run_writes_every_output(quick_run):
    cfg, out = quick_run
    for name in ("results.csv", "summary.md", "summary.json", "config.json", "mc2_vs_k.png", "mc2_vs_kl.png",
                 "heatmaps_fold0.png", "heatmaps_fold1.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    summary = json.loads((out / "summary.json").read_text())
    assert summary["metrics"] == ["mc2", "mc1", "mc2_norm"] and summary["select_metric"] == "mc2"
    assert summary["doses"] == dose_groups(cfg) and summary["fitted_on"] == "train"
    assert set(summary["methods"]) == {"unsteered", "length-only",
                                       *(f"{m} @ {g}" for m in cfg.methods for g in dose_groups(cfg))}
    for entry in summary["methods"].values():
        low, high = entry["mc2_ci"]
        assert 0.0 <= low <= high <= 1.0 and entry["folds"] == 2
    text = (out / "summary.md").read_text()
    assert "| real | KL 0.001 |" in text and "α calibrations:" in text and "held out" in text


def test_every_test_cell_records_its_alpha_and_held_out_kl(quick_run):
    """A KL dose's α is calibrated per method, fold and K on paragraphs other than the ones that report
    KL; every test cell records the α it used and the held-out KL it reached."""
    cfg, out = quick_run
    for row in result_rows(out):
        if row["split"] == "test" and row["method"] not in ("unsteered", "length-only"):
            assert float(row["alpha"]) > 0 and float(row["target_kl"]) in cfg.kl_grid
            assert float(row["kl"]) > 0 and float(row["calibration_kl"]) > 0
    calibration = json.loads((out / "summary.json").read_text())["calibration"]
    assert calibration["reached"] == calibration["n"]  # tiny-model targets are reachable
    # one calibration per fold, method (or null draw), K and target, shared by its val and test cells
    assert calibration["n"] == len(list((out / "cells").glob("*-calibration-*.json"))) > 0
    setup = experiment.prepare(cfg, model=object())
    assert setup.calibration and setup.texts and not set(setup.calibration) & set(setup.texts)


def test_summary_has_paired_tests_against_unsteered_length_only_null_real_and_iti(quick_run):
    """Per dose, each method vs unsteered, the length-only reference and its matched random null, real
    vs every other method and every other method vs ITI, on the same pooled test items; the rows agree with evaluation.paired."""
    from real_lens.evaluation.paired import paired_difference

    cfg, out = quick_run
    summary = json.loads((out / "summary.json").read_text())
    pairs = {(r["a"], r["b"], r["dose"]): r for r in summary["paired"]}
    steered = _steered(cfg)
    expected = {(m, ref, g) for g in dose_groups(cfg) for m in steered for ref in ("unsteered", "length-only", "random null")}
    expected |= {("real", m, g) for g in dose_groups(cfg) for m in steered if m != "real"}
    expected |= {(m, "iti", g) for g in dose_groups(cfg) for m in steered if m not in ("real", "iti")}
    assert ("patching", "iti", "KL 0.001") in expected  # the quick run has every method: the ITI rows exist
    assert set(pairs) == expected
    rows = result_rows(out)
    per_item = {}
    for cell in (out / "cells").glob("fold*-test-*.json"):
        fold, method, dose = re.match(r"fold(\d+)-(.+?)-test-k\d+-(kl[\d.e-]+|a[\d.]+)", cell.name).groups()
        per_item.setdefault((method, dose), {})[fold] = json.loads(cell.read_text())["per_item"]["mc2"]
    chosen = {(r["fold"], r["method"]): r for r in rows if r["split"] == "test" and r["dose"] == "kl0.001"}
    a = [x for f in "01" for x in json.loads(next((out / "cells").glob(
        f"fold{f}-iti-test-k{chosen[(f, 'iti')]['k']}-kl0.001-*.json")).read_text())["per_item"]["mc2"]]
    b = per_item[("unsteered", "a0")]["0"] + per_item[("unsteered", "a0")]["1"]
    reference = paired_difference(a, b, n_boot=cfg.n_boot, seed=cfg.seed)
    row = pairs[("iti", "unsteered", "KL 0.001")]
    assert row["difference"] == pytest.approx(reference.difference) and row["p"] == pytest.approx(reference.p_value)
    assert all(r["p"] <= r["p_holm"] <= 1 for r in summary["paired"])
    length_rows = [r for r in rows if r["method"] == "length-only"]
    assert len(length_rows) == 2 and all(r["split"] == "test" for r in length_rows)
    text = (out / "summary.md").read_text()
    assert "## Paired tests (mc2" in text and "| iti | unsteered | KL 0.001 |" in text


def test_the_random_null_is_many_draws_at_each_methods_k_and_dose(quick_run):
    """null_draws random head sets per fold, at every (K, dose) a method chose; the summary gives each
    method's matched null band and percentile, computed from those draws."""
    from real_lens.null import null_band, percentile_in_null

    cfg, out = quick_run
    rows = result_rows(out)
    draws = [r for r in rows if r["method"] == "random"]
    assert draws and {r["split"] for r in draws} == {"test"}
    for fold in "01":
        chosen = {(r["k"], r["dose"]) for r in rows
                  if r["fold"] == fold and r["split"] == "test" and r["method"] in _steered(cfg)}
        for k, dose in chosen:
            here = [r for r in draws if r["fold"] == fold and (r["k"], r["dose"]) == (k, dose)]
            assert sorted(int(r["draw"]) for r in here) == list(range(cfg.null_draws))
    bands = json.loads((out / "summary.json").read_text())["null"]
    assert {(b["method"], b["dose"]) for b in bands} == {(m, g) for m in _steered(cfg) for g in dose_groups(cfg)}
    for b in bands:
        assert len(b["draws"]) == cfg.null_draws
        band = null_band(b["draws"])
        assert (b["null_mean"], b["null_low"], b["null_high"]) == pytest.approx((band.mean, band.low, band.high))
        assert b["percentile"] == pytest.approx(percentile_in_null(b["value"], b["draws"]))
    assert "## Against the random null (2 random head sets per fold)" in (out / "summary.md").read_text()


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


def test_k_is_chosen_on_val_per_method_fold_and_kl_target(quick_run):
    cfg, out = quick_run
    rows = result_rows(out)
    for fold in "01":
        for method in _steered(cfg):
            for target in cfg.kl_grid:
                mine = [r for r in rows if r["fold"] == fold and r["method"] == method and r["target_kl"]
                        and float(r["target_kl"]) == target]
                val = [r for r in mine if r["split"] == "val"]
                (test,) = [r for r in mine if r["split"] == "test"]
                assert sorted(int(r["k"]) for r in val) == sorted(cfg.k_grid)
                best = max(val, key=lambda r: (float(r["mc2"]), -int(r["k"])))
                assert test["k"] == best["k"]
                # val and test steer the same heads at the same calibrated α
                assert test["alpha"] == next(r["alpha"] for r in val if r["k"] == test["k"])


def test_every_grid_cell_is_in_the_results(alpha_run):
    cfg, out = alpha_run
    rows = result_rows(out)
    for fold in (0, 1):
        for method in _steered(cfg):
            val = [(int(r["k"]), float(r["alpha"])) for r in rows
                   if r["fold"] == str(fold) and r["method"] == method and r["split"] == "val"]
            assert sorted(val) == sorted((k, a) for k in cfg.k_grid for a in cfg.alpha_grid)


def test_k_and_alpha_are_chosen_on_val_only(alpha_run):
    cfg, out = alpha_run
    rows = result_rows(out)
    for fold in (0, 1):
        for method in _steered(cfg):
            mine = [r for r in rows if r["fold"] == str(fold) and r["method"] == method]
            val = [r for r in mine if r["split"] == "val"]
            (test,) = [r for r in mine if r["split"] == "test"]
            best = max(val, key=lambda r: (float(r["mc2"]), -int(r["k"]), -float(r["alpha"])))
            assert (test["k"], test["alpha"]) == (best["k"], best["alpha"])
        null = [r for r in rows if r["fold"] == str(fold) and r["method"] == "random"]
        assert len(null) == cfg.null_draws * len({(r["k"], r["alpha"]) for r in rows if r["fold"] == str(fold)
                                                   and r["split"] == "test" and r["method"] in _steered(cfg)})
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["methods"]) == {"unsteered", "length-only", *cfg.methods}
    assert not (out / "mc2_vs_kl.png").exists() and (out / "mc2_vs_k.png").is_file()


def test_fitting_never_sees_val_or_test_questions(tmp_path, tiny_model, monkeypatch):
    """When val chooses anything, scores, directions and σ come from the fold's train questions only
    (asserted on the question sets every scorer and every steering is fitted on)."""
    seen = []
    real_score, real_build = experiment.store.score_modules, experiment.loop.build_steering
    monkeypatch.setattr(experiment.store, "score_modules",
                        lambda bank, *a, **k: seen.append({e.group for e in bank.examples}) or real_score(bank, *a, **k))
    monkeypatch.setattr(experiment.loop, "build_steering",
                        lambda bank, *a, **k: seen.append({e.group for e in bank.examples}) or real_build(bank, *a, **k))
    cfg = config_for("quick", model="tiny-llama", methods=("iti", "random"), k_grid=(1, 3), kl_grid=(0.002,))
    run_experiment(cfg, tmp_path, progress=False)
    task = load_task("truthfulqa").sample_per_part(cfg.questions_per_part)
    assert len(seen) >= 4
    fold_of = {frozenset(f.train): f for f in task.folds}
    for groups in seen:
        assert frozenset(groups) in fold_of  # exactly one fold's train questions
        fold = fold_of[frozenset(groups)]
        assert not groups & fold.val and not groups & fold.test


def test_an_unreachable_kl_target_is_reported_not_hidden(tmp_path, tiny_model, capsys):
    """KL 5 nats per token is beyond the tiny model's reach at α ≤ 100: the cells are still evaluated
    (at the closest α), and the run says so on stderr and in summary.md / summary.json."""
    cfg = config_for("quick", model="tiny-llama", methods=("iti",), folds=(0,), k_grid=(1,), kl_grid=(5.0,))
    run_experiment(cfg, tmp_path, progress=False)
    assert "1 of 1 α calibrations did not reach their KL target" in capsys.readouterr().err
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["calibration"]["reached"] == 0 and summary["calibration"]["reasons"] == {"above_alpha_max": 1}
    assert "not reached: 1 above_alpha_max" in (tmp_path / "summary.md").read_text()
    (row,) = [r for r in result_rows(tmp_path) if r["method"] == "iti"]
    assert float(row["alpha"]) == 100.0 and float(row["kl"]) < 5.0
    assert not [r for r in result_rows(tmp_path) if r["split"] == "val"]  # one K, one dose: val chooses nothing


def test_no_test_question_in_the_fold_training_data(quick_run):
    cfg, out = quick_run
    task = load_task("truthfulqa").sample_per_part(cfg.questions_per_part)
    for fold_index in (0, 1):
        fold = task.folds[fold_index]
        assert not fold.test & (fold.train | fold.val)
        assert not fold.val & fold.train
        cells = [json.loads(p.read_text()) for p in (out / "cells").glob(f"fold{fold_index}-*-test-*.json")]
        tested = {q for c in cells for q in c["per_item"]["group"]}
        assert tested and tested <= fold.test
        val_cells = [json.loads(p.read_text()) for p in (out / "cells").glob(f"fold{fold_index}-*-val-*.json")]
        assert {q for c in val_cells for q in c["per_item"]["group"]} <= fold.val


def test_rerun_reuses_every_cell(quick_run, monkeypatch):
    cfg, out = quick_run
    before = result_rows(out)
    monkeypatch.setattr(experiment.loop, "evaluate_cell", lambda *a, **k: pytest.fail("a cached cell was recomputed"))
    monkeypatch.setattr(experiment.store, "score_modules", lambda *a, **k: pytest.fail("cached scores were recomputed"))
    run_experiment(cfg, out, progress=False)
    assert result_rows(out) == before


def test_the_main_job_logs_what_it_is_doing(quick_run, caplog):
    import logging

    cfg, out = quick_run
    with caplog.at_level(logging.INFO, logger="real_lens"):
        run_experiment(cfg, out, progress=False)  # every cell is cached: only the logging runs again
    text = caplog.text
    for fold in (0, 1):
        assert f"fold {fold}: " in text and f"fold {fold} real: scoring" in text
        for method in _steered(cfg):
            assert f"fold {fold} {method} (KL 0.001): chose K" in text
            assert sum(f"fold {fold} {method}: val K" in r.message for r in caplog.records) == 4  # 2 K x 2 targets
        assert f"fold {fold}: the random null, 2 draws" in text
    assert f"wrote {out}" in text


def test_another_config_in_the_same_directory_is_refused(quick_run):
    cfg, out = quick_run
    with pytest.raises(RealLensError, match="another configuration"):
        run_experiment(config_for("quick", model="tiny-llama", k_grid=(2,)), out)


def _quick(task, **kw):
    # The tiny random model's clean-corrupted logit gaps are ~1e-4; patching would skip every pair at 1e-3.
    return config_for("quick", model="tiny-llama", task=task, k_grid=(1, 3), kl_grid=(0.002,),
                      pair_min_gap=0.0, **kw)


@pytest.fixture(scope="module")
def caa_run(tmp_path_factory, tiny_model):
    out = tmp_path_factory.mktemp("caa")
    run_experiment(_quick("caa:refusal"), out, progress=False)
    return out


def test_caa_run_has_one_fold_and_its_own_metrics(caa_run):
    summary = json.loads((caa_run / "summary.json").read_text())
    assert summary["metrics"] == ["p_aligned", "p_aligned_raw"] and summary["select_metric"] == "p_aligned"
    rows = result_rows(caa_run)
    assert {r["fold"] for r in rows} == {"0"}
    tests = [r for r in rows if r["split"] == "test"]
    assert all(0.0 <= float(r["p_aligned"]) <= 1.0 for r in tests)
    # The test cells are the A/B test set; val cells are generate items (chosen on, never tested).
    for path in (caa_run / "cells").glob("*.json"):
        if "-calibration-" in path.name:  # an α calibration on WikiText-2, no task items
            continue
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
    assert set(summary["methods"]) == {"unsteered", "real @ KL 0.002", "random @ KL 0.002"}


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


def test_a_method_that_cannot_score_the_task_is_left_out_and_said_so(tmp_path, tiny_model, capsys):
    """Contrast pairs whose gaps are all below min_gap cannot be scored: the run goes on without the method,
    says so on stderr and in summary.md, and no table (results.csv included) carries it."""
    cfg = config_for("quick", model="tiny-llama", methods=("iti", "patching", "random"), pair_min_gap=1000.0)
    run_experiment(cfg, tmp_path, progress=False)
    assert "patching cannot score this task (fold 0" in capsys.readouterr().err
    assert {r["method"] for r in result_rows(tmp_path)} == {"unsteered", "length-only", "iti", "random"}
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert "min_gap" in summary["unscorable"]["patching"]
    assert not [r for r in summary["paired"] if "patching" in (r["a"], r["b"])]
    assert "**patching is left out of every table**" in (tmp_path / "summary.md").read_text()


def test_test_cells_keep_every_answer_and_the_summary_decomposes_truth_and_length(quick_run):
    cfg, out = quick_run
    cell = json.loads(next((out / "cells").glob("fold0-iti-test-*.json")).read_text())
    answers = cell["per_answer"]
    assert set(answers) == {"group", "answer", "true", "tokens", "logprob"}
    assert set(answers["group"]) == set(cell["per_item"]["group"]) and set(answers["true"]) == {0, 1}
    summary = json.loads((out / "summary.json").read_text())
    rows = {(r["method"], r["dose"], r["vs"]) for r in summary["truth_length"]}
    steered = [m for m in cfg.methods if m != "random"]
    assert rows == {(m, g, vs) for m in steered for g in dose_groups(cfg) for vs in ("unsteered", "random null")}
    assert all("beta_truth" in p for p in summary["frontier"]["points"] + summary["frontier"]["null"])
    assert "## Truth or length?" in (out / "summary.md").read_text()


def test_a_cell_written_without_per_answer_log_probs_is_recomputed(quick_run, monkeypatch):
    cfg, out = quick_run
    path = next((out / "cells").glob("fold0-unsteered-test-*.json"))
    from real_lens.io import read_sealed_json, write_sealed_json

    old = read_sealed_json(path)
    write_sealed_json(path, {k: v for k, v in old.items() if k != "per_answer"})  # as an older version wrote it
    calls = []
    real = experiment.loop.evaluate_cell
    monkeypatch.setattr(experiment.loop, "evaluate_cell", lambda *a, **k: calls.append(1) or real(*a, **k))
    run_experiment(cfg, out, progress=False)
    assert calls == [1] and read_sealed_json(path)["per_answer"] == old["per_answer"]


def test_sigma_bank_tuning_steers_with_sigma_from_the_folds_tuning_examples(tmp_path, tiny_model, monkeypatch):
    from real_lens.experiment import loop
    from real_lens.steering import build_steering

    seen = []

    def spy(bank, selection, **kwargs):
        seen.append((bank, kwargs.get("sigma_bank")))
        return build_steering(bank, selection, **kwargs)

    monkeypatch.setattr(loop, "build_steering", spy)
    cfg = config_for("quick", model="tiny-llama", methods=("iti",), folds=(0,), kl_grid=TINY_KL, sigma_bank="tuning")
    run_experiment(cfg, tmp_path, progress=False)
    assert seen
    for bank, sigma_bank in seen:
        assert sigma_bank is not None and sigma_bank.groups == bank.groups  # the fold's fit questions, in order
        assert all(e.text.count(" Q: ") == 1 and e.text.startswith("Q: ") for e in sigma_bank.examples)
        assert all(e.text.startswith(f"Q: {e.group} A: ") for e in sigma_bank.examples)
    assert "the unlabelled tuning bank" in (tmp_path / "summary.md").read_text()


def test_summary_says_what_the_quick_run_s_size_cannot_support(quick_run):
    cfg, out = quick_run
    saved = json.loads((out / "summary.json").read_text())["small_sample"]
    assert saved["min_test_questions"] == cfg.n_test_questions == 2
    assert set(saved["heldout"]) == {"real", "real-release"} and set(saved["heldout"]["real"]) == {"0", "1"}
    summary = (out / "summary.md").read_text()
    assert "## What this run's size can support" in summary and "2 per fold, fewer than ~20" in summary
    assert "real's AUC per module rests on its held-out examples: fold 0: " in summary
    for t in saved["ties"]:
        assert f"fold {t['fold']} {t['method']}: {t['n_tied']} modules share" in summary


def test_published_rankings_enter_the_run_one_file_per_fold(tmp_path, tiny_model):
    """real-published scores each fold from its own file (checked against the bank's shape) and is steered
    like any scorer: score / max strengths, its own K and dose."""
    import numpy as np
    import torch

    from real_lens.scoring import ModuleScores
    from real_lens.scoring.published import load_published_ranking

    n_layers, n_heads = tiny_model.cfg.n_layers, tiny_model.cfg.n_heads
    files = []
    for fold in (0, 1):
        rows = np.empty((n_layers * n_heads, 2), dtype=object)
        order = np.random.default_rng(fold).permutation(n_layers * n_heads)
        for i, flat in enumerate(order):
            rows[i, 0], rows[i, 1] = divmod(int(flat), n_heads), 0.5 + 0.4 * i / len(order)
        np.save(tmp_path / f"fold{fold}.npy", rows)
        files.append(str(tmp_path / f"fold{fold}.npy"))
    cfg = config_for("quick", model="tiny-llama", methods=("real-published",), k_grid=(2,), kl_grid=(0.002,),
                     published_ranking=tuple(files))
    run_experiment(cfg, tmp_path / "run", progress=False)
    for fold in (0, 1):
        saved = ModuleScores.load(tmp_path / "run" / "scores" / f"fold{fold}" / "real-published")
        assert torch.equal(saved.scores, load_published_ranking(files[fold]).scores)
    assert not torch.equal(*(ModuleScores.load(tmp_path / "run" / "scores" / f"fold{f}" / "real-published").scores
                             for f in (0, 1)))
    rows = [r for r in result_rows(tmp_path / "run") if r["method"] == "real-published" and r["split"] == "test"]
    assert {r["fold"] for r in rows} == {"0", "1"} and {r["k"] for r in rows} == {"2"}
    from dataclasses import replace

    from real_lens.errors import ScoringError
    from real_lens.scoring import scorer_spec

    spec = scorer_spec("real-published")
    with pytest.raises(ScoringError, match="names 2 file"):
        spec.options_for(cfg, 2)
    assert spec.options_for(replace(cfg, published_ranking=(files[1],)), 0)["cfg"].path == files[1]  # one for all
