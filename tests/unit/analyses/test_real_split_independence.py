"""analyses/real_split_independence.py on a synthetic fold: the committed scores are stand-ins computed with the
old (shared) split, so the analysis must find them reproduced, its new split apart from ITI's, and its cross-fit
part 0 equal to the new single split."""

import pytest
import torch

from analyses import real_split_independence as rsi
from real_lens.bank import ActivationBank
from real_lens.experiment import config_for
from real_lens.scoring import score_modules
from real_lens.scoring.real import score_real
from real_lens.tasks.base import Example


@pytest.fixture
def fake_run(monkeypatch):
    n_groups, per_group = 30, 4
    examples = tuple(Example(f"Q{g}", f" A{i}", i % 2, f"q{g}") for g in range(n_groups) for i in range(per_group))
    acts = torch.randn(len(examples), 2, 3, 16, generator=torch.Generator().manual_seed(0))
    bank = ActivationBank(acts, examples, {"site": "head_z", "model": "synthetic", "task": "planted"})
    experiment = config_for("quick")
    cfg = rsi.Config(folds=(0,), cross_fit=2, cross_fit_folds=(0,), reproduce_folds=(0,), k=2, release_heads=3)
    old_cfg = rsi.real_config(cfg, experiment, heldout_stream="shared")
    committed = {"real": score_real(bank, cfg=old_cfg, seed=experiment.seed, progress=False),
                 "iti": score_modules(bank, "iti", seed=experiment.seed)}
    monkeypatch.setattr(rsi, "load_config", lambda run: experiment)
    monkeypatch.setattr(rsi, "fold_bank", lambda cfg, run, experiment, fold: bank)
    monkeypatch.setattr(rsi, "committed", lambda run, fold, method, bank: committed[method])
    return cfg


def test_the_analysis_reproduces_the_old_split_and_measures_the_new_one(fake_run, tmp_path):
    data = rsi.compute(fake_run, tmp_path / "work")
    fold = data["folds"]["0"]
    assert fold["reproduced"] == {"max_abs_diff": 0.0, "identical": True}
    assert fold["heldout"]["shared"] == fold["heldout"]["n_iti_val"] == 6  # the old split: ITI's 6 of 30 questions
    assert fold["heldout"]["real"] < 6
    assert fold["cross_fit"]["split0_is_new"] and len(fold["cross_fit"]["between_splits"]) == 1
    assert 0.05 < fold["release_heldout"]["mean_share"] < 0.4
    lines = rsi.summary(data, "python -m analyses.real_split_independence")
    assert any(line.startswith("| Spearman ρ old vs new |") for line in lines)
    assert any("equals the committed scores | yes |" in line for line in lines)
    again = rsi.compute(fake_run, tmp_path / "work")  # cached: nothing is scored again
    assert again["folds"]["0"]["seconds"] == fold["seconds"]
