"""What every analysis script shares: its command line, where results go, and the figure style.

Each analysis is a script with a frozen ``Config`` (``CONFIG``: the run behind the README
figure; ``QUICK``: a few questions on the tiny random model, for tests), a ``main(argv)`` that
computes and saves ``data.json`` (plus a markdown table) in its results folder, and a
``plot(data, path)`` that draws its figure from that JSON alone, which is what
``make_figures.py`` calls. Run them from the repository root::

    python -m analyses.overlap            # the README configuration
    python -m analyses.overlap --quick    # seconds, on the tiny model
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from real_lens.errors import RealLensError
from real_lens.io import atomic_write, read_json, write_json

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "results"  # small, committed: data.json + table.md per analysis
FIGURES = ROOT / "figures"
FONT_SIZE = 11


def parse_args(argv, description: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true", help="the QUICK configuration (tiny model, seconds)")
    parser.add_argument("--out", default=None, help="results folder (default results/<analysis>, or a temp-like "
                        "runs/analyses/<analysis>-quick with --quick)")
    parser.add_argument("--figure", default=None, help="where to write the PNG (default figures/<analysis>.png)")
    return parser.parse_args(argv)


def folders(name: str, args) -> tuple[Path, Path]:
    """(results folder, figure path) for an analysis run."""
    if args.quick:
        out = Path(args.out or ROOT / "runs" / "analyses" / f"{name}-quick")
        return out, Path(args.figure or out / f"{name}.png")
    return Path(args.out or RESULTS / name), Path(args.figure or FIGURES / f"{name}.png")


def save(out: Path, config, data: dict, table: list[str]) -> None:
    """``data.json`` (the config it came from + the numbers) and ``table.md``, both atomically."""
    write_json(out / "data.json", {"config": dataclasses.asdict(config), **data})
    atomic_write(out / "table.md", lambda tmp: Path(tmp).write_text("\n".join(table) + "\n"))


def load(out: Path) -> dict:
    path = Path(out) / "data.json"
    if not path.is_file():
        raise RealLensError(f"{path} does not exist; run the analysis first (python -m analyses.<name>)")
    return read_json(path)


def new_figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def style(ax, *, title: str, xlabel: str, ylabel: str) -> None:
    ax.set_title(title, fontsize=FONT_SIZE + 1)
    ax.set_xlabel(xlabel, fontsize=FONT_SIZE)
    ax.set_ylabel(ylabel, fontsize=FONT_SIZE)
    ax.tick_params(labelsize=FONT_SIZE - 1)
    ax.grid(alpha=0.3)


def run_analysis(name: str, argv, *, doc: str, config, quick, compute, table, plot) -> dict:
    """The shared ``main()``: pick CONFIG or QUICK, compute, save data + table, draw from the saved JSON.

    ``compute(cfg, out=..., work=..., progress=...)`` returns the data; ``work`` is where its caches go
    (runs/analyses/<name>, not committed, so an interrupted analysis resumes; ``out`` itself with --quick).
    """
    args = parse_args(argv, doc.splitlines()[0])
    cfg = quick if args.quick else config
    out, figure = folders(name, args)
    work = out if args.quick else ROOT / "runs" / "analyses" / name
    data = compute(cfg, out=out, work=work, progress=not args.quick)
    save(out, cfg, data, table(data))
    plot(load(out), figure)
    print("\n".join(table(data)))
    return data


def run_main(main) -> None:
    """``main()`` as a script: a user mistake is one line on stderr and exit code 2."""
    try:
        main(sys.argv[1:])
    except RealLensError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)


def quick_run(out: Path) -> Path:
    """The quick experiment on the tiny random model (cached in ``out/run``), for QUICK configs."""
    from real_lens.experiment import config_for, run_experiment

    # The tiny random model's clean-corrupted logit gaps are ~1e-4: patching needs a smaller min_gap.
    # The analyses read α-grid runs (kl_grid=None): one K/α cell per method and fold.
    cfg = config_for("quick", model="tiny-llama", k_grid=(1, 3), kl_grid=None, pair_min_gap=0.0)
    return run_experiment(cfg, out / "run", progress=False)


def run_dir(path: str, out: Path) -> Path:
    """A finished run named by a config (``""`` = make the quick one); a clear error if it is missing."""
    if not path:
        return quick_run(out)
    run = Path(path) if Path(path).is_absolute() else ROOT / path
    if not (run / "results.csv").is_file():
        raise RealLensError(f"{run} is not a finished real-lens run (no results.csv); run `make run` first")
    return run
