"""The run directory: options added later leave existing runs' cells and configuration alone at their
defaults, config.json records what computed a run beside its configuration, and timing counts every session."""

import hashlib
import json

import pytest

from real_lens import experiment
from real_lens.errors import RealLensError
from real_lens.experiment import ExperimentConfig, config_for, start_run_dir
from real_lens.experiment.config import LATER_FIELDS, jsonable
from real_lens.experiment.store import Timer, cached_cell, record_timing, scorer_options, scorer_settings
from real_lens.io import read_sealed_json, write_sealed_json
from tests.helpers import needs_data


def _cell_file(out, cfg, key) -> str:
    cached_cell(out, cfg, 0, key)(lambda: {"value": 1})
    (path,) = (out / "cells").iterdir()
    path.unlink()
    return path.name


def _digest_before_issue_25(cfg, key) -> str:
    """The cells' digest as it was computed before dtype and device_map existed (commit d5cca57)."""
    ignored = ("methods", "k_grid", "alpha_grid", "kl_grid", "null_draws", "folds", "n_boot", *scorer_settings())
    relevant = {k: v for k, v in jsonable(cfg).items() if k not in ignored and k not in LATER_FIELDS}
    relevant["dose_protocol"] = "kl" if cfg.kl_grid else "alpha"
    scorer = jsonable(scorer_options(cfg, key["method"]))
    return hashlib.sha256(json.dumps([relevant, 0, key, scorer], sort_keys=True).encode()).hexdigest()[:16]


@pytest.mark.parametrize("method", ["iti", "unsteered"])
def test_dtype_and_device_map_change_no_digest_at_their_defaults(tmp_path, method):
    cfg = config_for("quick", model="tiny-llama")
    key = {"method": method, "split": "test", "k": 2, "dose": "kl0.3"}
    assert _cell_file(tmp_path, cfg, key).endswith(f"-{_digest_before_issue_25(cfg, key)}.json")
    other = {_cell_file(tmp_path, ExperimentConfig(**{**jsonable(cfg), "k_grid": (2,), "kl_grid": (0.3,),
                                                      "alpha_grid": (5.0,), "methods": cfg.methods, **change}), key)
             for change in ({"dtype": "bfloat16"}, {"dtype": "float16"}, {"device_map": "auto"})}
    assert len(other) == 3 and _cell_file(tmp_path, cfg, key) not in other


@pytest.mark.parametrize("values, message", [({"dtype": "float64"}, "unknown dtype"),
                                             ({"device_map": "everywhere"}, "unknown --device-map"),
                                             ({"device_map": "auto", "device": "cpu"}, "give one")])
def test_dtype_and_device_map_are_checked(values, message):
    with pytest.raises(RealLensError, match=message):
        ExperimentConfig(**values)


def test_an_older_config_json_without_the_new_fields_is_the_same_run(tmp_path):
    cfg = config_for("quick", model="tiny-llama")
    stored = {k: v for k, v in jsonable(cfg).items() if k not in LATER_FIELDS}
    write_sealed_json(tmp_path / "config.json", {"config": stored, "real_lens_version": "0.1.0"})
    (tmp_path / "results.csv").write_text("fold\n0\n")  # a run with results: another configuration is refused
    start_run_dir(tmp_path, cfg)
    with pytest.raises(RealLensError, match="another configuration"):
        start_run_dir(tmp_path, config_for("quick", model="tiny-llama", dtype="bfloat16"))


def test_config_json_records_versions_and_commit_beside_the_config(tmp_path):
    import torch
    import transformers

    cfg = config_for("quick", model="tiny-llama")
    start_run_dir(tmp_path, cfg)
    stored = read_sealed_json(tmp_path / "config.json")
    assert stored["config"] == jsonable(cfg)  # the key start_run_dir compares holds the configuration only
    env = stored["environment"]
    assert env["torch"] == torch.__version__.split("+")[0] or env["torch"] == torch.__version__
    assert env["transformers"] == transformers.__version__ and env["transformer_lens"].startswith("4.")
    assert env["git_commit"] is None or len(env["git_commit"]) == 40
    start_run_dir(tmp_path, cfg)  # reopening the run (the environment may differ) is the same configuration


def test_timing_counts_every_session_even_an_interrupted_one(tmp_path):
    first = Timer({"score: real": 5.0, "total": 6.0})
    record_timing(tmp_path, first)
    first.seconds.update({"score: real": 9.0, "total": 12.0})  # the same session, later
    assert record_timing(tmp_path, first) == [{"score: real": 9.0, "total": 12.0}]
    assert record_timing(tmp_path, Timer({"total": 1.0})) == [{"score: real": 9.0, "total": 12.0}, {"total": 1.0}]


@needs_data
def test_an_interrupted_run_records_its_session(tmp_path, monkeypatch, tiny_model):
    def interrupted(cfg, out, timer, **kw):
        timer.seconds["collect activations"] = 42.0
        raise KeyboardInterrupt

    monkeypatch.setattr(experiment.loop, "_compute", interrupted)
    with pytest.raises(KeyboardInterrupt):
        experiment.run_experiment(config_for("quick", model="tiny-llama"), tmp_path, progress=False)
    (session,) = read_sealed_json(tmp_path / "timing.json")["sessions"]
    assert session["collect activations"] == 42.0 and session["total"] >= 0


def test_another_kl_grid_is_the_same_run_but_not_the_alpha_grid():
    from real_lens.experiment.store import same_config

    stored = jsonable(config_for("quick", model="tiny-llama", kl_grid=(0.1, 0.3)))
    assert same_config(stored, {**stored, "kl_grid": [0.03, 0.06, 0.1, 0.2, 0.3, 0.5]})
    assert not same_config(stored, {**stored, "kl_grid": None})  # the α protocol: other calibration texts
    assert not same_config({**stored, "kl_grid": None}, stored)
    assert not same_config(stored, {**stored, "kl_grid": [0.03], "seed": 1})  # only the grid may change


def test_more_methods_are_the_same_run_but_not_fewer_or_others():
    from real_lens.experiment.store import same_config

    stored = jsonable(config_for("quick", model="tiny-llama", methods=("real", "iti", "random")))
    assert same_config(stored, {**stored, "methods": ["real", "iti", "random", "direction-attribution"]})
    assert not same_config(stored, {**stored, "methods": ["real", "random"]})  # a stored method dropped
    assert not same_config(stored, {**stored, "methods": ["patching", "iti", "random"]})
    assert not same_config(stored, {**stored, "methods": ["real", "iti", "random", "patching"], "seed": 1})


@needs_data
def test_a_wider_kl_grid_resumes_the_run_and_reuses_every_cell(tmp_path, tiny_model):
    import csv
    import dataclasses

    cfg = config_for("quick", model="tiny-llama", methods=("iti", "random"), folds=(0,), kl_grid=(0.001,))
    experiment.run_experiment(cfg, tmp_path, progress=False)
    before = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "cells").iterdir()}
    experiment.run_experiment(dataclasses.replace(cfg, kl_grid=(0.001, 0.004)), tmp_path, progress=False)
    after = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "cells").iterdir()}
    assert {name: after.get(name) for name in before} == before  # every earlier cell reused, none rewritten
    assert any("kl0.004" in name for name in set(after) - set(before))
    with open(tmp_path / "results.csv", newline="") as f:
        targets = {r["target_kl"] for r in csv.DictReader(f) if r["method"] == "iti" and r["split"] == "test"}
    assert targets == {"0.001", "0.004"}
    assert read_sealed_json(tmp_path / "config.json")["config"]["kl_grid"] == [0.001, 0.004]
    with pytest.raises(RealLensError, match="another configuration"):
        start_run_dir(tmp_path, dataclasses.replace(cfg, kl_grid=None))
    # another method joins the same run: every earlier cell again reused, its own added
    wider = dataclasses.replace(cfg, kl_grid=(0.001, 0.004), methods=("iti", "random", "direction-attribution"))
    experiment.run_experiment(wider, tmp_path, progress=False)
    joined = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "cells").iterdir()}
    assert {name: joined.get(name) for name in after} == after
    assert {n for n in set(joined) - set(after) if "-test-" in n} and all(
        "direction-attribution" in n for n in set(joined) - set(after) if "-test-" in n)
