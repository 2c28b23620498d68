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
