"""Figures from module scores (saved or in memory); never runs a model.

Heads are drawn as a layer x head heatmap (layers on y, layer 0 at the top; heads on x),
layer sites as a line over layers. Signed scores (patching can restore a negative fraction)
get a diverging colour map centred on 0; non-negative ones a sequential map. Figures are
drawn on matplotlib's Agg canvas directly (no pyplot, no global backend switch) and written
atomically: to a temporary file in the target folder, then renamed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from .io import atomic_write
from .scoring import ModuleScores

# Units for scores saved without a "score_unit" in their metadata.
SCORE_UNITS = {
    "real": "REAL relevance (ROC-AUC)",
    "real-release": "REAL relevance as released (ROC-AUC)",
    "iti": "probe validation accuracy",
    "patching": "fraction of logit-diff gap restored",
    "attribution": "estimated fraction of logit-diff gap restored (AtP)",
    "random": "random rank / n_modules",
}
FONT_SIZE = 11
# Axis labels for task metrics (all are fractions in [0, 1], means over items).
METRIC_LABELS = {
    "mc1": "MC1", "mc2": "MC2", "mc2_norm": "MC2 (length-normalised)", "em_aligned": "EM with aligned answer", "contains_aligned": "contains aligned answer",
    "em_context": "EM with context answer", "em_memory": "EM with memory answer",
    "p_aligned": "p(aligned)", "p_aligned_raw": "p(aligned letter)", "top_aligned": "top answer aligned",
}


def metric_label(metric: str) -> str:
    return METRIC_LABELS.get(metric, metric)


def score_unit(scores: ModuleScores) -> str:
    return scores.meta.get("score_unit") or SCORE_UNITS.get(scores.method, "score")


def plot_score_heatmap(scores: ModuleScores, path, *, title: str | None = None) -> Path:
    """One method's scores: layer x head heatmap (heads) or line over layers (layer sites)."""
    return plot_score_heatmaps([scores], path, titles=None if title is None else [title])


def plot_score_heatmaps(
    scores: Sequence[ModuleScores], path, *, titles: Sequence[str] | None = None
) -> Path:
    """Several methods side by side, each with its own colour scale and colourbar."""
    if not scores:
        raise ValueError("plot_score_heatmaps needs at least one ModuleScores; got none")
    if titles is not None and len(titles) != len(scores):
        raise ValueError(f"got {len(titles)} titles for {len(scores)} score sets; give one title per score set")
    titles = list(titles) if titles is not None else [_default_title(s) for s in scores]
    n = len(scores)
    fig = Figure(figsize=(5.2 * n, _height(scores[0])), layout="constrained")
    FigureCanvasAgg(fig)
    for i, (s, title) in enumerate(zip(scores, titles)):
        ax = fig.add_subplot(1, n, i + 1)
        if s.scores.ndim == 2:
            _draw_heatmap(fig, ax, s)
        else:
            _draw_line(ax, s)
        ax.set_title(title, fontsize=FONT_SIZE + 1)
    return save_figure(fig, path)


def _default_title(scores: ModuleScores) -> str:
    site = scores.meta.get("site")
    return f"{scores.method}" + (f" ({site})" if site else "")


def _height(scores: ModuleScores) -> float:
    if scores.scores.ndim == 1:
        return 3.6
    return min(12.0, max(3.6, 0.28 * scores.scores.shape[0] + 1.6))


def _draw_heatmap(fig, ax, scores: ModuleScores) -> None:
    values = scores.scores.detach().float().cpu().numpy()
    n_layers, n_heads = values.shape
    lo, hi = float(values.min()), float(values.max())
    if lo < 0:
        bound = max(abs(lo), abs(hi)) or 1.0
        image = ax.imshow(values, cmap="RdBu_r", vmin=-bound, vmax=bound, aspect="auto", interpolation="nearest")
    else:
        image = ax.imshow(values, cmap="viridis", vmin=lo, vmax=hi if hi > lo else lo + 1e-9,
                          aspect="auto", interpolation="nearest")
    ax.set_xlabel("head", fontsize=FONT_SIZE)
    ax.set_ylabel("layer", fontsize=FONT_SIZE)
    ax.set_xticks(range(0, n_heads, _step(n_heads)))
    ax.set_yticks(range(0, n_layers, _step(n_layers)))
    ax.tick_params(labelsize=FONT_SIZE - 1)
    bar = fig.colorbar(image, ax=ax)
    bar.set_label(score_unit(scores), fontsize=FONT_SIZE)
    bar.ax.tick_params(labelsize=FONT_SIZE - 1)


def _draw_line(ax, scores: ModuleScores) -> None:
    values = scores.scores.detach().float().cpu().numpy()
    ax.plot(range(len(values)), values, marker="o")
    if values.min() < 0:
        ax.axhline(0.0, color="grey", linewidth=0.8)
    ax.set_xlabel("layer", fontsize=FONT_SIZE)
    ax.set_ylabel(score_unit(scores), fontsize=FONT_SIZE)
    ax.set_xticks(range(0, len(values), _step(len(values))))
    ax.tick_params(labelsize=FONT_SIZE - 1)
    ax.grid(alpha=0.3)


def _step(n: int) -> int:
    """Tick spacing that keeps at most ~16 labels on an axis."""
    return max(1, -(-n // 16))


def plot_metric_vs_k(rows: Sequence[dict], path, *, metric: str = "mc2", split: str = "val", task: str | None = None) -> Path:
    """A results table's ``metric`` against K, one line per method (mean over folds, best dose per K),
    with the unsteered model as a dashed line. ``rows`` are ``results.csv`` rows; a dose is the row's
    ``dose`` label (a KL target's α differs per fold) or, in tables without one, its α."""
    from collections import defaultdict

    cells: dict[tuple[str, int, str], list[float]] = defaultdict(list)
    for r in rows:
        if r["split"] == split:
            cells[(r["method"], int(r["k"]), str(r.get("dose") or r["alpha"]))].append(float(r[metric]))
    if not cells:
        raise ValueError(f"no {split!r} rows to plot; expected results.csv rows with split={split!r}")
    fig = Figure(figsize=(6.4, 4.4), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    methods = sorted({m for m, _, _ in cells} - {"unsteered"})
    for method in methods:
        ks = sorted({k for m, k, _ in cells if m == method})
        best = [max(sum(v) / len(v) for (m, k, _), v in cells.items() if m == method and k == kk) for kk in ks]
        ax.plot(ks, best, marker="o", label=method)
    base = [sum(v) / len(v) for (m, _, _), v in cells.items() if m == "unsteered"]
    if base:
        ax.axhline(base[0], color="black", linestyle="--", linewidth=1, label="unsteered")
    ax.set_xlabel("steered heads K", fontsize=FONT_SIZE)
    ax.set_ylabel(f"{split} {metric_label(metric)} (mean over folds, best dose)", fontsize=FONT_SIZE)
    ax.set_title((f"{task}: " if task else "") + f"{metric_label(metric)} vs K on {split} questions", fontsize=FONT_SIZE + 1)
    ax.tick_params(labelsize=FONT_SIZE - 1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=FONT_SIZE - 1)
    return save_figure(fig, path)


def save_figure(fig: Figure, path) -> Path:
    """Write ``fig`` as a PNG atomically (temporary file in the folder, then renamed)."""
    path = Path(path)
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120))
    return path
