import numpy as np
import pytest
from matplotlib import image

from real_lens.plotting_frontier import FrontierPoint, frontier_figure, plot_frontier

TARGETS = (0.1, 0.3, 1.0)


def _points():
    points = []
    for method, gain in (("real", 0.04), ("iti", 0.02)):
        for target in TARGETS:
            kl = target * (1.02 if method == "real" else 0.97)
            value = 0.42 + gain * np.log10(10 * target)
            points.append(FrontierPoint(method, kl, value, value - 0.03, value + 0.03, target))
    points.append(FrontierPoint("patching", 0.31, 0.43, kl_target=0.3))  # no CI: drawn without error bars
    return points


def _null(n_draws=10):
    rng = np.random.default_rng(0)
    return [FrontierPoint("random", t * rng.uniform(0.9, 1.1), 0.42 + rng.normal(0, 0.02), kl_target=t)
            for t in TARGETS for _ in range(n_draws)]


def _read_png(path):
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    return image.imread(path)


def test_plot_frontier_writes_a_png(tmp_path):
    path = plot_frontier(_points(), _null(), tmp_path / "figs" / "frontier.png", metric="mc2",
                         unsteered=0.416, length_only=0.47, title="TruthfulQA: MC2 against dose")
    assert path == tmp_path / "figs" / "frontier.png"
    pixels = _read_png(path)
    assert pixels.shape[0] > 300 and pixels.shape[1] > 400
    assert pixels[..., :3].std() > 0.05  # something was drawn
    assert not list(path.parent.glob(".*tmp"))  # written atomically: no temporary left behind


def test_plot_frontier_one_target_and_no_null(tmp_path):
    one_target = [p for p in _null() if p.kl_target == 0.3]
    plot_frontier(_points(), one_target, tmp_path / "one.png")
    plot_frontier(_points(), [], tmp_path / "methods_only.png")
    for name in ("one.png", "methods_only.png"):
        _read_png(tmp_path / name)
    (ax,) = frontier_figure(_points(), one_target).axes
    labels = ax.get_legend_handles_labels()[1]
    assert "random null (5–95 %, 10 draws per KL target)" in labels and {"real", "iti", "patching"} <= set(labels)


def test_plot_frontier_x_axis_is_log_unless_a_kl_is_zero():
    """KL spans decades (0.03–1 nats), so the x axis is logarithmic; a KL of 0 (an unsteered-like point)
    has no place on a log axis, so the axis stays linear and still shows it."""
    (log_ax,) = frontier_figure(_points(), _null()).axes
    assert log_ax.get_xscale() == "log"
    zero_kl = [FrontierPoint("unsteered-like", 0.0, 0.41), FrontierPoint("real", 0.2, 0.45)]
    (linear_ax,) = frontier_figure(zero_kl, []).axes
    assert linear_ax.get_xscale() == "linear"
    lo, hi = linear_ax.get_xlim()
    assert lo <= 0.0 < 0.2 <= hi  # both points are inside the drawn range


def test_plot_frontier_bad_input(tmp_path):
    with pytest.raises(ValueError, match="at least one"):
        plot_frontier([], [], tmp_path / "x.png")
    with pytest.raises(ValueError, match="kl_target"):
        plot_frontier(_points(), [FrontierPoint("random", 0.1, 0.4)], tmp_path / "x.png")
    with pytest.raises(ValueError, match="both ci_low and ci_high"):
        FrontierPoint("real", 0.1, 0.4, ci_low=0.3)
    with pytest.raises(ValueError, match="kl must be finite"):
        FrontierPoint("real", -0.1, 0.4)
    assert not (tmp_path / "x.png").exists()
