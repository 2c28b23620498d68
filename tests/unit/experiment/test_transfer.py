"""Transfer: a finished run's selections evaluated on another task without re-selection."""
import json

import pytest

from real_lens import experiment
from real_lens.errors import RealLensError
from real_lens.tasks.data import resolve_data_dir

from .test_loop import dose_groups, quick_run, result_rows  # noqa: F401, F811  (quick_run: the source run, a fixture)

pytestmark = pytest.mark.skipif(resolve_data_dir() is None, reason="../shared/data is not present")


def test_transfer_reuses_the_source_selection(quick_run, tmp_path, monkeypatch):
    from real_lens.experiment import TransferConfig, run_transfer

    cfg, source = quick_run
    monkeypatch.setattr(experiment.store, "score_modules", lambda *a, **k: pytest.fail("transfer must not re-score"))
    out = run_transfer(TransferConfig(str(source), "caa:refusal", methods=("real", "iti", "random")), tmp_path,
                       progress=False)
    rows = result_rows(out)
    chosen = {(r["fold"], r["method"], f"KL {float(r['target_kl']):g}"): (r["k"], r["alpha"]) for r in result_rows(source)
              if r["split"] == "test" and r["target_kl"] and r["draw"] in ("", "0")}
    transferred = [r for r in rows if r["method"] != "unsteered"]
    assert {(r["method"], r["dose"]) for r in transferred} == {(m, g) for m in ("real", "iti", "random")
                                                               for g in dose_groups(cfg)}
    for r in transferred:
        assert r["fold"] == "0" and r["source_fold"] == "0"  # CAA's single fold takes TruthfulQA fold 0
        assert (r["k"], r["alpha"]) == chosen[("0", r["method"], r["dose"])]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["source"] == "truthfulqa" and summary["target"] == "caa:refusal"
    # Every arm's per-item values, in the target's item order, so arms can be paired item by item.
    by_arm = {(r["method"], r["dose"]): r for r in rows}
    for name, values in summary["per_item"].items():
        method, _, dose = name.partition(" @ ")
        assert values["group"] == summary["per_item"]["unsteered"]["group"] and values["fold"] == [0] * len(values["group"])
        assert sum(values["p_aligned"]) / len(values["p_aligned"]) == pytest.approx(float(by_arm[(method, dose)]["p_aligned"]))
    assert "nothing was re-selected" in (out / "summary.md").read_text()


def test_transfer_from_a_directory_that_is_not_a_run(tmp_path):
    from real_lens.experiment import TransferConfig, run_transfer

    with pytest.raises(RealLensError, match="not a finished real-lens run"):
        run_transfer(TransferConfig(str(tmp_path), "truthfulqa"), tmp_path / "out")


@pytest.mark.parametrize("name,value", [("questions_per_part", 0), ("n_test_questions", -1)])
def test_transfer_question_counts_must_be_positive_integers(name, value):
    from real_lens.experiment import TransferConfig

    with pytest.raises(RealLensError, match=f"{name} must be a positive integer or None"):
        TransferConfig("runs/truthfulqa", "caa:refusal", **{name: value})
