"""Every analysis script in its QUICK configuration on the tiny model, then make_figures from its results."""

import json

import pytest

from analyses import compare_selection, make_figures, overlap, score_vs_effect, transfer
from real_lens.tasks.data import resolve_data_dir

pytestmark = pytest.mark.skipif(resolve_data_dir() is None, reason="../shared/data is not present")


@pytest.fixture(scope="module")
def results(tmp_path_factory, tiny_model):
    root = tmp_path_factory.mktemp("results")
    runs = {}
    for module, name in ((overlap, "overlap"), (score_vs_effect, "score_vs_effect"),
                         (compare_selection, "compare_selection"), (transfer, "transfer")):
        out = root / name
        # overlap and score_vs_effect each make (and cache) the quick run in <out>/run.
        runs[name] = module.main(["--quick", "--out", str(out), "--figure", str(root / f"{name}.png")])
    return root, runs


@pytest.mark.parametrize("name", ["overlap", "score_vs_effect", "compare_selection", "transfer"])
def test_analysis_writes_data_table_and_figure(results, name):
    root, _ = results
    data = json.loads((root / name / "data.json").read_text())
    assert data["config"]  # the frozen config travels with the numbers
    assert (root / name / "table.md").read_text().startswith("# ")
    assert (root / f"{name}.png").stat().st_size > 10_000


def test_overlap_is_symmetric_with_a_unit_diagonal(results):
    _, runs = results
    for mats in runs["overlap"]["between_methods"].values():
        n = len(mats["jaccard"])
        for i in range(n):
            assert mats["jaccard"][i][i] == 1.0
            for j in range(n):
                assert mats["jaccard"][i][j] == mats["jaccard"][j][i]


def test_score_vs_effect_evaluates_each_head_once(results):
    _, runs = results
    data = runs["score_vs_effect"]
    heads = [tuple(h) for h in data["heads"]]
    assert len(heads) == len(set(heads)) == len(data["effects"])
    for m, v in data["methods"].items():
        assert len(v["scores"]) == len(heads)
        assert {tuple(h) for h in data["top_heads"][m]} <= set(heads)


def test_compare_selection_covers_every_cell_and_seed(results):
    _, runs = results
    data, cfg = runs["compare_selection"], compare_selection.QUICK
    cells = {(c["method"], c["k"], c["alpha"]) for c in data["cells"]}
    assert cells == {(m, k, a) for m in cfg.methods for k in cfg.k_grid for a in cfg.alpha_grid}
    for c in data["cells"]:
        assert len(c["per_seed"]) == len(cfg.seeds) and c["seed_min"] <= c["mean"] <= c["seed_max"]
        assert c["ci"][0] <= c["ci"][1]


def test_transfer_matrix_is_complete(results):
    _, runs = results
    data, cfg = runs["transfer"], transfer.QUICK
    pairs = {(c["source"], c["target"], c["method"]) for c in data["cells"]}
    assert pairs == {(s, t, m) for s in cfg.tasks for t in cfg.tasks for m in cfg.methods}
    for c in data["cells"]:
        assert c["delta"] == pytest.approx(c["value"] - c["unsteered"])


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
                              "--figures", str(figures)])
    assert code == 0
    names = {p.name for p in figures.glob("*.png")}
    assert {"overlap.png", "score_vs_effect.png", "compare_selection.png", "transfer.png",
            "truthfulqa_heatmaps_fold0.png", "truthfulqa_mc2_vs_k.png"} <= names
    assert make_figures.main(["--results", str(tmp_path / "empty"), "--figures", str(figures)]) == 1
