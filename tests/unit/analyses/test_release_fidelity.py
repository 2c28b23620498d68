"""analyses/release_fidelity.py without the release: a stand-in release with the same entry points.

The stand-in's OneForAll.py imports the three repo-local modules at the top, as the release's does, and
its repository root holds a ``utils.py`` that fails on import, so the test fails unless the analysis's
stubs stand in for them. Its ``train_single_adaptor`` returns a known function of the head's data, and
records the process it ran in.
"""

import json
import os
import textwrap

import numpy as np
import pytest
import torch

from analyses import release_fidelity as rf
from real_lens.bank import ActivationBank
from real_lens.errors import RealLensError
from real_lens.tasks.base import Example

FAKE_ONEFORALL = textwrap.dedent('''
    import os, sys
    from dataclasses import dataclass
    from pathlib import Path
    import numpy as np
    REPO_ROOT = Path(__file__).resolve().parents[1]
    sys.path.insert(0, str(REPO_ROOT))
    from utils import get_separated_activations
    from hl_config import resolve_model_path, resolve_cache_dir
    from hl_paths import resolve_dir

    @dataclass
    class MultiGpuClassifierTrainingConfig:
        seed: int = 42
        epochs: int = 30
        head_dim: int = 128
        def __init__(self, **kwargs):
            for k, v in kwargs.items():
                setattr(self, k, v)

    def train_single_adaptor(layer, head, head_activations, labels, gpu_id=None, cfg=None, job_seed=None):
        with open(os.environ["FAKE_RELEASE_LOG"], "a") as f:
            f.write(f"{os.getpid()} {cfg.seed} {cfg.epochs} {cfg.head_dim}\\n")
        pos = head_activations[labels == 1, 0].mean()
        return (layer, head), float(pos) + cfg.seed
''')


@pytest.fixture
def fake_release(tmp_path, monkeypatch):
    root = tmp_path / "REAL_ICLR"
    (root / "validation").mkdir(parents=True)
    (root / "validation" / "OneForAll.py").write_text(FAKE_ONEFORALL)
    (root / "utils.py").write_text("raise ImportError('the real utils.py needs the whole release')\n")
    monkeypatch.setenv("FAKE_RELEASE_LOG", str(tmp_path / "calls.log"))
    return root


def toy_bank():
    examples = tuple(Example(f"Q: q{i // 4} A:", f" a{i}", int(i % 2 == 0), f"q{i // 4}") for i in range(16))
    return ActivationBank(torch.randn(16, 3, 4, 8, generator=torch.Generator().manual_seed(0)), examples,
                          {"site": "head_z"})


def test_their_code_runs_unchanged_in_another_process_and_is_cached(tmp_path, fake_release):
    bank = toy_bank()
    heads = rf.chosen_heads(bank.module_shape, 5)
    cfg = rf.Config(release=str(fake_release), seeds=(42, 43))
    theirs = rf.their_scores(cfg, bank, heads, tmp_path / "work")
    labels = bank.labels.numpy() == 1
    for seed in (42, 43):
        for layer, head in heads:
            expected = bank.acts[:, layer, head, 0].numpy()[labels].mean() + seed
            assert theirs[seed][(layer, head)] == pytest.approx(float(expected), rel=1e-6)
    calls = [line.split() for line in (tmp_path / "calls.log").read_text().splitlines()]
    assert len(calls) == 2 * len(heads)
    assert {int(pid) for pid, *_ in calls}.isdisjoint({os.getpid()})  # never in this process
    assert {(seed, epochs, d) for _, seed, epochs, d in calls} == {("42", "30", "8"), ("43", "30", "8")}
    again = rf.their_scores(cfg, bank, heads, tmp_path / "work")  # from the cache: the release is not run again
    assert again == theirs and len((tmp_path / "calls.log").read_text().splitlines()) == 2 * len(heads)


def test_chosen_heads_spread_over_the_model():
    heads = rf.chosen_heads((30, 9), 40)
    assert len(heads) == 40 == len(set(heads))
    assert heads[0] == (0, 0) and heads[-1] == (29, 8)
    assert rf.chosen_heads((2, 2), 40) == [(0, 0), (0, 1), (1, 0), (1, 1)]


def test_summary_and_spearman():
    s = rf.summary([0.5, 0.5, 0.7, 0.9])
    assert s["share_at_0.5"] == 0.5 and s["max_auc"] == 0.9 and s["mean_auc"] == pytest.approx(0.65)
    assert rf.spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert np.isnan(rf.spearman([0.5, 0.5, 0.5], [1, 2, 3]))


def test_a_path_without_the_release_is_one_line(tmp_path):
    with pytest.raises(RealLensError, match="has no validation/OneForAll.py"):
        rf.compute(rf.Config(release=str(tmp_path)), tmp_path / "work")
    with pytest.raises(RealLensError, match="give --release PATH"):
        rf.main([])


def test_the_table_says_which_real_release_it_measured():
    data = {"real_lens_commit": "abc1234", "release_commit": "c93c04f",
            "bank": {"examples": 16, "questions": 4, "aligned": 8, "module_shape": [3, 4]}, "heads": [[0, 0]],
            "summary": {"theirs-42": rf.summary([0.5, 0.6])}, "spearman": {"theirs-42 vs theirs-43": 0.3},
            "target": 0.25, "ours_vs_theirs_mean": 0.2, "target_met": False}
    lines = rf.table(data, "python -m analyses.release_fidelity --release PATH")
    assert lines[0].startswith("# real-release as of abc1234") and "NOT met" in "\n".join(lines)
    json.dumps(data)  # data.json is plain JSON


def test_seed_spread_compares_the_sides_seed_values():
    theirs = [rf.summary(v) for v in ([0.5, 0.6, 0.7], [0.5, 0.62, 0.72], [0.52, 0.6, 0.68])]
    inside = [rf.summary(v) for v in ([0.5, 0.61, 0.7], [0.51, 0.6, 0.7])]
    below = [rf.summary(v) for v in ([0.5, 0.5, 0.55], [0.5, 0.5, 0.56])]
    near, far = rf.seed_spread(theirs, inside), rf.seed_spread(theirs, below)
    assert near["max_auc"]["within"] and near["max_auc"]["welch_p"] > 0.05
    assert not far["max_auc"]["within"] and far["max_auc"]["welch_p"] < 0.05 and far["max_auc"]["difference"] < 0
    assert far["share_at_0.5"]["ours"] == [2 / 3, 2 / 3]
    data = {"real_lens_commit": "abc1234", "release_commit": "c93c04f",
            "bank": {"examples": 16, "questions": 4, "aligned": 8, "module_shape": [3, 4]}, "heads": [[0, 0]],
            "summary": {}, "spearman_groups": {"theirs vs theirs": rf.spread([0.2, 0.3])}, "target": 0.2,
            "ours_vs_theirs_mean": 0.3, "target_met": True, "seed_spread": far}
    text = "\n".join(rf.table(data, "cmd"))
    assert "| theirs vs theirs | 0.250 | 0.200 to 0.300 | 2 |" in text and "| max_auc |" in text and " met." in text


def test_bad_seed_lists_are_one_line(tmp_path, fake_release):
    with pytest.raises(RealLensError, match="two or more distinct seeds"):
        rf.main(["--release", str(fake_release), "--seeds", "42"])
    with pytest.raises(RealLensError, match="comma-separated integers"):
        rf.main(["--release", str(fake_release), "--our-seeds", "a,b"])
