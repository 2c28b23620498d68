"""Every analysis script in its QUICK configuration on the tiny model (the main job's protocol: KL-target
doses, the random null, paired tests), then make_figures from its results."""

import csv
import json
import math

import numpy as np
import pytest

from analyses import (
    common,
    compare_selection,
    make_figures,
    overlap,
    score_vs_effect,
    transfer,
)
from real_lens.errors import RealLensError
from real_lens.experiment import ExperimentConfig

from ...helpers import needs_data

NAMES = ["overlap", "score_vs_effect", "compare_selection", "transfer"]
MODULES = {"overlap": overlap, "score_vs_effect": score_vs_effect, "compare_selection": compare_selection,
           "transfer": transfer}


@pytest.fixture(scope="module")
def results(tmp_path_factory, tiny_model):
    root = tmp_path_factory.mktemp("results")
    runs = {}
    for name in NAMES:
        # overlap makes (and caches) the quick run in <out>/run; score_vs_effect reads it (--run).
        reuse = ["--run", str(root / "overlap" / "run")] if name == "score_vs_effect" else []
        runs[name] = MODULES[name].main(["--quick", "--out", str(root / name), "--figure", str(root / f"{name}.png"),
                                         *reuse])
    return root, runs


def check_paired(row: dict) -> None:
    """A paired row: a p, its Holm adjustment, a CI around the difference and the detectable difference."""
    assert 0 <= row["p"] <= row["p_holm"] <= 1
    assert row["ci"][0] <= row["difference"] <= row["ci"][1]
    assert row["n"] >= 2 and (math.isnan(row["min_detectable"]) or row["min_detectable"] >= 0)


@needs_data
@pytest.mark.parametrize("name", NAMES)
def test_analysis_writes_data_table_and_figure(results, name):
    root, _ = results
    data = json.loads((root / name / "data.json").read_text())
    assert data["config"]  # the frozen config travels with the numbers
    assert (root / name / "table.md").read_text().startswith("# ")
    assert (root / f"{name}.png").stat().st_size > 10_000


@needs_data
def test_every_analysis_records_the_main_jobs_protocol(results):
    _, runs = results
    protocols = [runs["overlap"]["protocol"], runs["score_vs_effect"]["protocol"], runs["compare_selection"]["protocol"],
                 *runs["transfer"]["protocol"].values()]
    for p in protocols:
        assert p["kl_grid"] == list(common.QUICK_KL)  # KL-target doses, not an α grid
        assert p["mc_prompt"] == ExperimentConfig().mc_prompt  # the standard MC prompt
        assert p["null_draws"] >= 2


def test_an_alpha_grid_run_is_refused():
    with pytest.raises(RealLensError, match="fixed α grid"):
        common.check_protocol(ExperimentConfig(kl_grid=None), "runs/old")
    common.check_protocol(ExperimentConfig(), "runs/new")  # the default: KL targets


def test_paired_table_pairs_item_by_item_with_holm():
    rng = np.random.default_rng(0)
    base = rng.normal(size=40)
    arrays = {"base": base, "shifted": base + 0.5 + rng.normal(scale=0.01, size=40), "same": base.copy()}
    rows = common.paired_table(arrays, [("shifted", "base"), ("same", "base")], n_boot=200, seed=0)
    assert rows[0]["difference"] == pytest.approx(arrays["shifted"].mean() - base.mean())
    assert rows[0]["p"] < 0.01 and rows[0]["min_detectable"] < 0.05  # item spread cancels: a tiny SD of d
    assert rows[1]["difference"] == 0 and rows[1]["p"] == 1 and rows[1]["p_holm"] == 1
    assert rows[0]["p_holm"] == pytest.approx(min(1, 2 * rows[0]["p"]))  # the smallest of 2 p's: doubled


@needs_data
def test_overlap_is_symmetric_and_placed_in_a_random_null(results):
    _, runs = results
    data = runs["overlap"]
    assert "random" not in data["methods"]  # random is the null, not a method
    for f, mats in data["between_methods"].items():
        n = len(mats["jaccard"])
        for i in range(n):
            assert mats["jaccard"][i][i] == 1.0
            for j in range(n):
                assert mats["jaccard"][i][j] == mats["jaccard"][j][i]
        for m in data["methods"]:
            band = data["vs_null"][f][m]["jaccard"]
            assert band["n_draws"] == overlap.QUICK.n_null and band["low"] <= band["mean"] <= band["high"]
    for v in data["between_folds"].values():
        assert 0 <= v["jaccard_percentile"] <= 100


def test_spearman_ci_is_exact_for_monotone_and_undefined_for_constant_data():
    x = np.arange(10.0)
    up = score_vs_effect.spearman_ci(x, x**3, n_boot=200, seed=0)
    assert up["rho"] == pytest.approx(1) and up["ci"] == pytest.approx([1, 1])
    down = score_vs_effect.spearman_ci(x, -x, n_boot=200, seed=0)
    assert down["rho"] == pytest.approx(-1) and down["ci"] == pytest.approx([-1, -1])
    noisy = score_vs_effect.spearman_ci(x, x + np.random.default_rng(0).normal(scale=3, size=10), n_boot=500, seed=0)
    assert noisy["ci"][0] < noisy["rho"] < noisy["ci"][1] and noisy["n_boot_valid"] == 500
    assert math.isnan(score_vs_effect.spearman_ci(x, np.ones(10), n_boot=200, seed=0)["rho"])


@needs_data
def test_score_vs_effect_steers_each_head_once_at_the_matched_dose(results):
    _, runs = results
    data, cfg = runs["score_vs_effect"], score_vs_effect.QUICK
    heads = [tuple(h["head"]) for h in data["heads"]]
    assert len(heads) == len(set(heads)) and data["kl"] == cfg.kl
    assert len(data["random_heads"]) >= 1 and {tuple(h) for h in data["random_heads"]} <= set(heads)
    for h in data["heads"]:
        assert h["reached"] == (abs(h["calibration_kl"] / cfg.kl - 1) <= 0.05)  # the job's 5 % tolerance
        assert 0 <= h["p"] <= h["p_holm"] <= 1 and h["effect_ci"][0] <= h["effect"] <= h["effect_ci"][1]
        assert math.isfinite(h["beta_truth"])  # TruthfulQA is answer-scored: β_truth for every head
    assert data["n_matched"] == sum(h["reached"] for h in data["heads"]) >= 3
    for m, v in data["methods"].items():
        assert {tuple(h) for h in data["top_heads"][m]} <= set(heads) and len(v["scores"]) == len(heads)
        for key in ("spearman_effect", "spearman_beta_truth"):
            rho = v[key]
            assert rho["n"] <= data["n_matched"]
            if not math.isnan(rho["rho"]):
                assert -1 <= rho["ci"][0] <= rho["ci"][1] <= 1


@needs_data
def test_score_vs_effect_and_diagnose_share_each_heads_cell(results, monkeypatch):
    from real_lens.experiment import DiagnoseConfig, HeadEffects, run_diagnose

    root, runs = results
    data, cfg = runs["score_vs_effect"], score_vs_effect.QUICK
    run = root / "overlap" / "run"

    def recompute(*args, **kwargs):
        raise AssertionError("a head score_vs_effect evaluated was evaluated again")

    monkeypatch.setattr(HeadEffects, "_single_head", recompute)
    out = run_diagnose(DiagnoseConfig(str(run), folds=(cfg.fold,), k=cfg.n_top, dose_kl=cfg.kl), progress=False)
    with (out / "heads.csv").open() as f:
        rows = {r["head"]: r for r in csv.DictReader(f)}
    assert rows
    by_head = {f"L{h['head'][0]}H{h['head'][1]}": h for h in data["heads"]}
    for label, row in rows.items():  # the same cell: the same α and the same effect
        assert float(row["alpha"]) == pytest.approx(by_head[label]["alpha"])
        assert float(row[f"delta_{data['metric']}"]) == pytest.approx(by_head[label]["effect"], abs=1e-9)


@needs_data
def test_compare_selection_covers_every_cell_with_its_null_and_paired_tests(results):
    _, runs = results
    data, cfg = runs["compare_selection"], compare_selection.QUICK
    cells = {(c["method"], c["k"], c["kl_target"]) for c in data["cells"]}
    assert cells == {(m, k, kl) for m in cfg.methods for k in cfg.k_grid for kl in cfg.kl_grid}
    for c in data["cells"]:
        assert len(c["per_seed"]) == len(c["alpha"]) == len(c["calibration_kl"]) == len(cfg.seeds)
        assert c["seed_min"] <= c["mean"] <= c["seed_max"] and c["ci"][0] <= c["ci"][1]
        assert len(c["null_per_draw"]) == len(cfg.seeds) * cfg.null_draws  # every seed's draws
        assert c["vs_null"]["difference"] == pytest.approx(c["mean"] - c["null"])
        assert c["vs_unsteered"]["difference"] == pytest.approx(c["mean"] - data["unsteered"]["mean"])
        check_paired(c["vs_null"])
        check_paired(c["vs_unsteered"])


@needs_data
def test_transfer_matrix_is_complete_and_paired_with_the_targets_null(results):
    _, runs = results
    data, cfg = runs["transfer"], transfer.QUICK
    pairs = {(c["source"], c["target"], c["method"], c["kl_target"]) for c in data["cells"]}
    assert pairs == {(s, t, m, kl) for s in cfg.tasks for t in cfg.tasks for m in cfg.methods for kl in cfg.kl_grid}
    for c in data["cells"]:
        assert c["metric"] == data["metrics"][c["target"]]
        assert c["vs_null"]["difference"] == pytest.approx(c["value"] - c["null"])
        assert c["vs_unsteered"]["difference"] == pytest.approx(c["value"] - c["unsteered"])
        check_paired(c["vs_null"])
        check_paired(c["vs_unsteered"])
    # One null per target and dose: every cell into a target is compared with the same one.
    for t in cfg.tasks:
        assert len({c["null"] for c in data["cells"] if c["target"] == t}) == len(cfg.kl_grid)


@needs_data
def test_transfer_reads_finished_task_runs_and_refuses_one_that_lacks_what_it_needs(results, monkeypatch):
    import dataclasses

    from real_lens.experiment import task_slug

    root, runs = results
    work = root / "transfer"
    given = tuple((t, str(work / "runs" / task_slug(t))) for t in transfer.QUICK.tasks)
    cfg = dataclasses.replace(transfer.QUICK, runs=given)
    monkeypatch.setattr(transfer, "run_experiment", lambda *a, **k: pytest.fail("a given run must not be run again"))
    again = transfer.analyse(cfg, work, progress=False)
    assert [c["value"] for c in again["cells"]] == [c["value"] for c in runs["transfer"]["cells"]]
    with pytest.raises(RealLensError, match=r"cannot be truthfulqa's run .* K \[2\], not \[5\]"):
        transfer.analyse(dataclasses.replace(cfg, k=5), work, progress=False)
    with pytest.raises(RealLensError, match="not a finished real-lens run"):
        transfer.analyse(dataclasses.replace(cfg, runs=(("truthfulqa", str(root / "nowhere")),)), work, progress=False)


@needs_data
def test_make_figures_regenerates_from_saved_results_only(results, tmp_path, monkeypatch):
    root, _ = results
    from real_lens import models
    from real_lens.experiment import setup

    # Both names: the main job's setup holds its own reference to load_model.
    for module in (models, setup):
        monkeypatch.setattr(module, "load_model", lambda *a, **k: pytest.fail("make_figures must not load a model"))
    figures = tmp_path / "figures"
    # The quick run stands in for the main job: publish it, then draw everything.
    code = make_figures.main(["--from-run", str(root / "overlap" / "run"), "--results", str(root),
                              "--figures", str(figures), "--publish", f"{root / 'overlap' / 'run'}=other-model"])
    assert code == 0
    names = {p.name for p in figures.glob("*.png")}
    assert {"overlap.png", "score_vs_effect.png", "compare_selection.png", "transfer.png",
            "truthfulqa_heatmaps_fold0.png", "truthfulqa_mc2_vs_kl.png", "other_model_mc2_vs_kl.png"} <= names
    assert (root / "other-model" / "summary.md").read_text() == (root / "truthfulqa" / "summary.md").read_text()
    with pytest.raises(RealLensError, match="--publish takes RUN=NAME"):
        make_figures.main(["--results", str(root), "--figures", str(figures), "--publish", "runs/x"])
    assert make_figures.main(["--results", str(tmp_path / "empty"), "--figures", str(figures)]) == 1


def test_make_figures_reports_an_analysis_from_before_the_protocol_and_draws_the_rest(tmp_path, capsys):
    """An old data.json (no 'protocol' key) is named with the command that remakes it, not drawn (and not a
    traceback); exit 1."""
    from real_lens.io import write_json

    write_json(tmp_path / "results" / "overlap" / "data.json", {"config": {}, "between_methods": []})
    assert make_figures.main(["--results", str(tmp_path / "results"), "--figures", str(tmp_path / "f")]) == 1
    err = capsys.readouterr().err
    assert "predates the main job's protocol" in err and "python -m analyses.overlap" in err
    assert not (tmp_path / "f" / "overlap.png").exists()


def test_run_is_refused_by_an_analysis_that_runs_its_own_experiments(tmp_path):
    with pytest.raises(RealLensError, match="runs its own experiments"):
        transfer.main(["--quick", "--run", "runs/truthfulqa", "--out", str(tmp_path)])


@needs_data
def test_two_model_verdict_reads_both_runs_side_by_side(results, tmp_path):
    """Every method and dose gets each run's vs-null and vs-ITI row from that run's own paired table, with
    the verdict its Holm p supports; a run that is not finished is refused in one line."""
    from analyses import two_model_verdict

    def same(a, b):  # NaN-safe (an undefined detectable difference is NaN)
        return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)

    root, _ = results
    run = root / "overlap" / "run"
    data = two_model_verdict.main(["--runs", f"A={run},B={run}", "--out", str(tmp_path / "v")])
    summary = json.loads((run / "summary.json").read_text())
    paired = {(r["a"], r["b"], r["dose"]): r for r in summary["paired"]}
    for label in ("A", "B"):
        model = data["models"][label]
        for key, row in model["vs_iti"].items():
            method, dose = key.split(" @ ")
            assert same(row, paired[(method, "iti", dose)]) and method != "iti"
        assert model["vs_null"] and all(same(paired[(k.split(" @ ")[0], "random null", k.split(" @ ")[1])], r)
                                        for k, r in model["vs_null"].items())
        truth = {(r["method"], r["dose"]): r for r in summary["truth_length"] if r["vs"] == "random null"}
        assert truth and {tuple(k.split(" @ ")): r for k, r in model["truth_vs_null"].items()} == truth
    text = (tmp_path / "v" / "table.md").read_text()
    assert "| patching | KL" in text and "| A: vs null | A: vs ITI |" in text and "| A: β_truth vs null |" in text
    assert two_model_verdict.verdict({"p_holm": 0.01, "difference": -0.1}) == "below"
    assert two_model_verdict.verdict({"p_holm": 0.01, "difference": 0.1}) == "above"
    assert two_model_verdict.verdict({"p_holm": 0.2, "difference": 0.1}) == "n.s."
    two_model_verdict.main(["--runs", f"A={run},B={run}", "--out", str(tmp_path / "t"), "--title", "σ banks"])
    assert (tmp_path / "t" / "table.md").read_text().startswith("# σ banks (TruthfulQA MC2")
    with pytest.raises(RealLensError, match="not a finished"):
        two_model_verdict.main(["--runs", f"A={tmp_path},B={run}", "--out", str(tmp_path / "w")])


def test_two_model_verdict_tests_the_difference_between_models_not_the_verdicts():
    """'above' on one model and 'n.s.' on the other is no difference; the between-model z-test says whether
    the effect itself differs (independent samples: SEs add in quadrature), with Holm across the table."""
    from scipy.stats import norm

    from analyses import two_model_verdict

    def mc2(difference, p_holm):
        return {"difference": difference, "sd_diff": 0.2, "n": 100, "p_holm": p_holm}

    def truth(beta, p_holm):
        return {"beta_truth": beta, "ci_truth": [beta - 0.392, beta + 0.392], "p_truth_holm": p_holm}

    models = {"A": {"vs_null": {"x @ KL 0.1": mc2(0.05, 0.01), "y @ KL 0.1": mc2(0.10, 0.001)},
                    "truth_vs_null": {"x @ KL 0.1": truth(0.5, 0.01)}},
              "B": {"vs_null": {"x @ KL 0.1": mc2(0.03, 0.2), "y @ KL 0.1": mc2(-0.10, 0.001)},
                    "truth_vs_null": {"x @ KL 0.1": truth(-0.5, 0.2)}}}
    between = two_model_verdict.between_models(models)
    x, y = between["mc2"]["x @ KL 0.1"], between["mc2"]["y @ KL 0.1"]
    se = (0.02**2 + 0.02**2) ** 0.5
    assert x["difference"] == pytest.approx(0.02) and x["se"] == pytest.approx(se)
    assert x["p"] == pytest.approx(2 * norm.sf(0.02 / se)) and x["p_holm"] >= x["p"]
    assert x["p_holm"] > 0.05  # A "above", B "n.s.": the verdicts differ, the effects are not distinguished
    assert y["difference"] == pytest.approx(0.20) and y["p_holm"] < 0.05
    t = between["truth"]["x @ KL 0.1"]  # SE from the CI: 0.392 / 1.96 = 0.2 per model
    assert t["difference"] == pytest.approx(1.0) and t["se"] == pytest.approx(0.2 * 2**0.5, rel=1e-3)
    assert two_model_verdict.between_models({"A": models["A"]}) == {}
