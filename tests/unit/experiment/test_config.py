"""The main job's configuration: validation, and what val chooses and what fits."""

import pytest

from real_lens import experiment
from real_lens.errors import RealLensError
from real_lens.experiment import config_for
from real_lens.tasks.data import resolve_data_dir

pytestmark = pytest.mark.skipif(resolve_data_dir() is None, reason="../shared/data is not present")


def test_with_nothing_to_choose_val_is_not_evaluated_and_fitting_uses_train_and_val():
    """One K and one dose per report: the paper's fixed-K protocol keeps train+val for fitting."""
    assert experiment.fit_parts(config_for("quick", k_grid=(4,), kl_grid=(0.1, 0.3))) == ("train", "val")
    assert experiment.fit_parts(config_for("quick", k_grid=(4,), kl_grid=None, alpha_grid=(5.0,))) == ("train", "val")
    assert experiment.fit_parts(config_for("quick", k_grid=(4,), kl_grid=None, alpha_grid=(5.0, 15.0))) == ("train",)
    assert experiment.fit_parts(config_for("quick", k_grid=(4, 8))) == ("train",)


def test_config_validation():
    with pytest.raises(RealLensError, match="unknown method"):
        config_for(methods=("real", "magic"))
    with pytest.raises(RealLensError, match="real-published reads its scores from the REAL release's ranking files; "
                                            "give --published-ranking"):
        config_for(methods=("real", "real-published"))
    with pytest.raises(RealLensError, match="read by the real-published method only"):
        config_for(methods=("real",), published_ranking=("f.npy",))
    with pytest.raises(RealLensError, match="unknown preset"):
        config_for("huge")
    with pytest.raises(RealLensError, match="k_grid"):
        config_for(k_grid=(0,))
    with pytest.raises(RealLensError, match="kl_grid must hold KL targets > 0"):
        config_for(kl_grid=(0.1, -1.0))
    with pytest.raises(RealLensError, match="null_draws must be an integer >= 1"):
        config_for(null_draws=0)


def test_sigma_bank_default_keeps_every_cell_digest_and_tuning_changes_them(tmp_path):
    # Digests computed before sigma_bank and real_release_* existed (commit d5cca57): adding the fields
    # with their defaults must not recompute any cached cell. Except `real`'s: its held-out split became
    # independent of ITI's validation split (issue 20 §4, RealConfig.heldout_stream), which changes its scores;
    # before, they were ef72a61a241e9b96 and e79791b00669a786.
    from pathlib import Path

    from real_lens.experiment.store import cached_cell

    def name(cfg, method):
        out = Path(tmp_path / f"run{len(list(tmp_path.iterdir()))}")
        cached_cell(out, cfg, 0, {"method": method, "split": "test", "k": 16, "dose": "kl0.1"})(lambda: {"mc2": 0.5})
        (cell,) = (out / "cells").iterdir()
        return cell.name

    assert name(experiment.ExperimentConfig(), "real") == "fold0-real-test-k16-kl0.1-f51a2dc4ed45677b.json"
    assert name(experiment.ExperimentConfig(), "iti") == "fold0-iti-test-k16-kl0.1-4d4d73f2fb440f2e.json"
    assert name(config_for("quick"), "iti") == "fold0-iti-test-k16-kl0.1-2811702d82944c8d.json"
    assert name(config_for("quick"), "real") == "fold0-real-test-k16-kl0.1-aaa7b50039fb7ada.json"
    tuned = experiment.ExperimentConfig(sigma_bank="tuning")
    assert name(tuned, "iti") != name(experiment.ExperimentConfig(), "iti")
    with pytest.raises(RealLensError, match=r"unknown sigma bank 'other'; expected one of \['scoring', 'tuning'\]"):
        experiment.ExperimentConfig(sigma_bank="other")
    with pytest.raises(RealLensError, match=r"sigma_bank 'tuning' is the REAL release's TruthfulQA tuning bank"):
        experiment.ExperimentConfig(sigma_bank="tuning", task="nq-swap")


def test_a_run_directory_from_before_the_new_fields_is_the_same_configuration():
    from real_lens.experiment.config import jsonable
    from real_lens.experiment.store import same_config

    current = jsonable(config_for("quick"))
    old = {k: v for k, v in current.items()
           if k not in ("sigma_bank", "real_release_epochs", "real_release_prior_epochs", "real_cross_fit")}
    assert same_config(old, current)
    assert not same_config(old, jsonable(config_for("quick", sigma_bank="tuning")))  # σ changes every steered cell
    assert not same_config({**old, "seed": 1}, current)
    assert not same_config({**current, "real_release_epochs": 5}, current)  # stored, so it must match
