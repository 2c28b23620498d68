"""The frontier figure: a task metric against held-out side-effect dose, for every method.

Each method is a line over its KL targets (x: the held-out KL(unsteered ‖ steered) per token
its steering reached, y: the metric on the test items, with the paired-bootstrap CI as error
bars when given). The random null is a band: for each KL target, the ``percentiles`` of the
null draws' metric (x: the draws' median held-out KL), with the draws as faint dots and their
mean as a dotted line. The unsteered model is a solid horizontal line and the content-blind
length-only reference a dashed one. Drawn from numbers only (never runs a model), on
matplotlib's Agg canvas, written atomically like every figure (``plotting.save_figure``).
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from .null import null_band
from .plotting import FONT_SIZE, metric_label, save_figure


@dataclass(frozen=True)
class FrontierPoint:
    """One steered condition: ``method`` at held-out ``kl`` (nats per token) scoring ``value`` on the metric.

    ``ci_low``/``ci_high``: an interval for ``value`` (both or neither). ``kl_target``: the
    calibration target it was steered to; required for null draws, which are grouped by it."""

    method: str
    kl: float
    value: float
    ci_low: float | None = None
    ci_high: float | None = None
    kl_target: float | None = None

    def __post_init__(self):
        if not (math.isfinite(self.kl) and self.kl >= 0 and math.isfinite(self.value)):
            raise ValueError(f"{self.method}: kl must be finite and >= 0 and value finite; got kl={self.kl}, value={self.value}")
        if (self.ci_low is None) != (self.ci_high is None):
            raise ValueError(f"{self.method}: give both ci_low and ci_high or neither; got ({self.ci_low}, {self.ci_high})")
        if self.ci_low is not None and not self.ci_low <= self.ci_high:
            raise ValueError(f"{self.method}: ci_low must not exceed ci_high; got ({self.ci_low}, {self.ci_high})")


def plot_frontier(
    points: Sequence[FrontierPoint],
    null_points: Sequence[FrontierPoint],
    path,
    *,
    metric: str = "mc2",
    unsteered: float | None = None,
    length_only: float | None = None,
    percentiles: tuple[float | int, float | int] = (5, 95),
    title: str | None = None,
    truth_points: Sequence[FrontierPoint] = (),
    truth_null: Sequence[FrontierPoint] = (),
) -> Path:
    """Write the frontier figure of ``points`` (the methods) and ``null_points`` (random draws, each
    with its ``kl_target``) to ``path`` as a PNG (:func:`frontier_figure` draws it)."""
    fig = frontier_figure(points, null_points, metric=metric, unsteered=unsteered, length_only=length_only,
                          percentiles=percentiles, title=title, truth_points=truth_points, truth_null=truth_null)
    return save_figure(fig, path)


def frontier_figure(
    points: Sequence[FrontierPoint],
    null_points: Sequence[FrontierPoint],
    *,
    metric: str = "mc2",
    unsteered: float | None = None,
    length_only: float | None = None,
    percentiles: tuple[float | int, float | int] = (5, 95),
    title: str | None = None,
    truth_points: Sequence[FrontierPoint] = (),
    truth_null: Sequence[FrontierPoint] = (),
) -> Figure:
    """The frontier figure: each method's metric against held-out KL, the null's band per KL target, the
    unsteered and length-only lines. The x axis is logarithmic when every KL is > 0, linear otherwise.

    With ``truth_points`` (each method's β_truth per dose, :mod:`real_lens.evaluation.decomposition`) and
    ``truth_null`` (each null draw's), a second panel draws β_truth against the same held-out KL."""
    points, null_points, truth_points, truth_null = list(points), list(null_points), list(truth_points), list(truth_null)
    if not points and not null_points:
        raise ValueError("plot_frontier needs at least one method point or null draw; got none")
    untargeted = [p for p in null_points if p.kl_target is None]
    if untargeted:
        raise ValueError(
            f"every null draw needs the kl_target it was calibrated to (the band is drawn per target); "
            f"{len(untargeted)} have none"
        )
    panels = 2 if truth_points or truth_null else 1
    fig = Figure(figsize=(6.8 * panels, 4.6), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, panels, 1)
    _draw_methods(ax, points, null_points, percentiles)
    if unsteered is not None:
        ax.axhline(unsteered, color="black", linewidth=1.2, label="unsteered", zorder=2)
    if length_only is not None:
        ax.axhline(length_only, color="dimgrey", linestyle="--", linewidth=1.2, label="length-only (content-blind)",
                   zorder=2)

    if all(p.kl > 0 for p in points + null_points):
        ax.set_xscale("log")
    ax.set_xlabel("held-out KL(unsteered ‖ steered), nats per token", fontsize=FONT_SIZE)
    ax.set_ylabel(f"test {metric_label(metric)}", fontsize=FONT_SIZE)
    ax.set_title(title or f"{metric_label(metric)} against side-effect dose", fontsize=FONT_SIZE + 1)
    ax.tick_params(labelsize=FONT_SIZE - 1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=FONT_SIZE - 2, loc="best")
    if panels == 2:
        truth = fig.add_subplot(1, 2, 2, sharex=ax)
        _draw_methods(truth, truth_points, truth_null, percentiles)
        truth.axhline(0.0, color="black", linewidth=1.2, zorder=2)
        truth.set_xlabel("held-out KL(unsteered ‖ steered), nats per token", fontsize=FONT_SIZE)
        truth.set_ylabel("β_truth: nats added to true answers beyond length", fontsize=FONT_SIZE)
        truth.set_title("truth, not length (per-answer decomposition)", fontsize=FONT_SIZE + 1)
        truth.tick_params(labelsize=FONT_SIZE - 1)
        truth.grid(alpha=0.3)
    return fig


def _draw_methods(ax, points: list[FrontierPoint], null_points: list[FrontierPoint],
                  percentiles: tuple[float | int, float | int]) -> None:
    """Each method's line (with its CIs where it has them) over the null's band."""
    if null_points:
        _draw_null(ax, null_points, percentiles)
    by_method: dict[str, list[FrontierPoint]] = defaultdict(list)
    for p in points:
        by_method[p.method].append(p)
    for method, group in by_method.items():
        group = sorted(group, key=lambda p: p.kl)
        xs, ys = [p.kl for p in group], [p.value for p in group]
        line = ax.plot(xs, ys, marker="o", label=method, zorder=3)[0]
        with_ci = [p for p in group if p.ci_low is not None]
        if with_ci:
            ax.errorbar([p.kl for p in with_ci], [p.value for p in with_ci],
                        yerr=[[p.value - p.ci_low for p in with_ci], [p.ci_high - p.value for p in with_ci]],
                        fmt="none", ecolor=line.get_color(), capsize=3, linewidth=1, zorder=3)


def _draw_null(ax, null_points: list[FrontierPoint], percentiles: tuple[float | int, float | int]) -> None:
    by_target: dict[float, list[FrontierPoint]] = defaultdict(list)
    for p in null_points:
        by_target[p.kl_target].append(p)
    xs, lows, highs, means = [], [], [], []
    for target in sorted(by_target):
        group = by_target[target]
        band = null_band([p.value for p in group], percentiles)
        xs.append(float(np.median([p.kl for p in group])))
        lows.append(band.low)
        highs.append(band.high)
        means.append(band.mean)
    color = "tab:grey"
    low_pct, high_pct = percentiles
    sizes = {len(group) for group in by_target.values()}
    draws = f"{sizes.pop()} draws per KL target" if len(sizes) == 1 else f"{len(null_points)} draws"
    label = f"random null ({low_pct:g}–{high_pct:g} %, {draws})"
    if len(xs) > 1:
        ax.fill_between(xs, lows, highs, color=color, alpha=0.25, linewidth=0, label=label, zorder=1)
    else:  # one target: the band is a vertical bar
        ax.errorbar(xs, means, yerr=[[means[0] - lows[0]], [highs[0] - means[0]]], fmt="none", ecolor=color,
                    elinewidth=8, alpha=0.4, label=label, zorder=1)
    ax.plot(xs, means, color=color, linestyle=":", linewidth=1, zorder=1)
    ax.scatter([p.kl for p in null_points], [p.value for p in null_points], s=8, color=color, alpha=0.5,
               linewidths=0, zorder=1)
