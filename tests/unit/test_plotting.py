"""Score heatmaps, drawn from saved scores only."""


import pytest
import torch

from real_lens.plotting import plot_score_heatmap, plot_score_heatmaps
from real_lens.scoring import ModuleScores


def _scores(values, method="m", **meta):
    return ModuleScores(torch.as_tensor(values, dtype=torch.float32), method, meta=meta)


def _assert_png(path):
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1000
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]


def test_heatmaps_are_written(tmp_path):
    heads = _scores(torch.randn(6, 4), "patching", site="head_z")
    probe = _scores(torch.rand(6, 4), "iti", site="head_z", score_unit="probe validation accuracy")
    _assert_png(plot_score_heatmap(heads, tmp_path / "one.png", title="patching"))
    _assert_png(plot_score_heatmaps([heads, probe, _scores(torch.ones(6, 4), "random")], tmp_path / "side.png"))
    _assert_png(plot_score_heatmap(_scores(torch.randn(6), "attribution"), tmp_path / "sub" / "layers.png"))
    with pytest.raises(ValueError, match="one title per score set"):
        plot_score_heatmaps([heads, probe], tmp_path / "x.png", titles=["only one"])
