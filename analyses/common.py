"""What every analysis script shares: its command line, where results go, and the figure style.

Each analysis is a script with a frozen ``Config`` (``CONFIG``: the run behind the README
figure; ``QUICK``: a few questions on the tiny random model, for tests), a ``main(argv)`` that
computes and saves ``data.json`` (plus a markdown table) in its results folder, and a
``plot(data, path)`` that draws its figure from that JSON alone, which is what
``make_figures.py`` calls. Run them from the repository root::

    python -m analyses.overlap            # the README configuration
    python -m analyses.overlap --quick    # seconds, on the tiny model

Every analysis runs the main job's protocol (docs/analyses.md): KL-target doses, the standard MC
prompt, the job's contrast pairs, the random null and paired tests. They run it through the main
job itself (:func:`~real_lens.experiment.run_experiment`, :func:`~real_lens.experiment.run_transfer`)
and read what it saved (``summary.json``, its cached cells: :func:`run_cell`), and record the
protocol in every ``data.json`` (:func:`protocol`).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from real_lens.errors import RealLensError
from real_lens.evaluation.paired import compare_paired, min_detectable_difference
from real_lens.experiment import (
    Dose,
    ExperimentConfig,
    cached_cell,
    config_for,
    fit_parts,
    run_experiment,
)
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
    parser.add_argument("--run", default=None, help="the finished main-job run to analyse, for the analyses that read "
                        "one (overlap, score_vs_effect; default: the config's)")
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
    if args.run is not None:
        if "run" not in {f.name for f in dataclasses.fields(cfg)}:
            raise RealLensError(f"--run: the {name} analysis runs its own experiments; it reads no finished run")
        cfg = dataclasses.replace(cfg, run=args.run)
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


# --------------------------------------------------------------------------- the main job's protocol
QUICK_KL = (0.004,)  # KL targets the tiny random model reaches (it hardly moves: 2 heads at α 100 give ~0.02)


def quick_config(**overrides) -> ExperimentConfig:
    """The main job's ``quick`` preset on the tiny random model (KL-target doses, the standard MC prompt,
    the preset's contrast pairs, a 2-draw random null), with ``overrides``: what QUICK configs run."""
    return config_for("quick", **{"model": "tiny-llama", "kl_grid": QUICK_KL, **overrides})


def quick_run(out: Path) -> Path:
    """The quick experiment on the tiny random model (cached in ``out/run``), for QUICK configs."""
    return run_experiment(quick_config(), out / "run", progress=False)


def run_dir(path: str, out: Path) -> Path:
    """A finished run named by a config (``""`` = make the quick one); a clear error if it is missing."""
    if not path:
        return quick_run(out)
    run = Path(path) if Path(path).is_absolute() else ROOT / path
    if not (run / "results.csv").is_file():
        raise RealLensError(f"{run} is not a finished real-lens run (no results.csv); run `make run` first")
    return run


def check_protocol(cfg: ExperimentConfig, where) -> None:
    """Refuse a run of the old protocol (a fixed α grid): the analyses compare methods at KL-target doses."""
    if not cfg.kl_grid:
        raise RealLensError(f"{where} was run with a fixed α grid (kl_grid none); the analyses use the main job's "
                            "protocol: run it again with KL targets (the default, e.g. `real-lens run`)")


def protocol(cfg: ExperimentConfig) -> dict:
    """What makes a run's numbers comparable with the main job's, recorded in every analysis' data.json."""
    return {"model": cfg.model, "kl_grid": list(cfg.kl_grid or ()), "mc_prompt": cfg.mc_prompt,
            "null_draws": cfg.null_draws, "calibration_texts": cfg.calibration_texts,
            "patching_pairs": cfg.patching_pairs, "attribution_pairs": cfg.attribution_pairs,
            "pair_demos": cfg.pair_demos, "pair_min_gap": cfg.pair_min_gap, "fitted_on": "+".join(fit_parts(cfg)),
            "seed": cfg.seed}


def run_cell(run: Path, cfg: ExperimentConfig, fold: int, **key) -> dict:
    """One evaluated cell a finished run cached (``key`` as the main job names it: method, split, k, and
    ``dose`` or ``alpha``, a null ``draw``); a clear error where the run has no such cell."""
    def missing():
        raise RealLensError(f"{run} has no cell {key} for fold {fold}; run it to the end with this configuration")

    return cached_cell(run, cfg, fold, key)(missing)


def null_cells(run: Path, cfg: ExperimentConfig, fold: int, k: int, dose: Dose) -> list[dict]:
    """The random null's test cells of a finished run at ``(k, dose)`` in ``fold``, one per draw."""
    return [run_cell(run, cfg, fold, method="random", split="test", k=k, dose=dose.label, draw=draw)
            for draw in range(cfg.null_draws)]


def per_item(cells: list[dict], metric: str) -> tuple[list, np.ndarray]:
    """``(groups, values)`` of cells evaluated on the same items (values averaged over the cells)."""
    groups = cells[0]["per_item"]["group"]
    if any(c["per_item"]["group"] != groups for c in cells):
        raise RealLensError("cells compared item by item were evaluated on different items; rerun them with one "
                            "configuration (the same test sample)")
    return groups, np.mean([c["per_item"][metric] for c in cells], axis=0)


def paired_table(arrays: dict[str, np.ndarray], pairs: list[tuple[str, str]], *, n_boot: int, seed: int) -> list[dict]:
    """Each ``(a, b)`` of ``pairs`` compared item by item (:func:`~real_lens.evaluation.paired.compare_paired`:
    difference, paired bootstrap CI, sign-flip p, Holm across ``pairs``) with the difference the design
    detects (80 % power, two-sided 0.05)."""
    if not pairs:
        return []
    out = []
    for row in compare_paired(arrays, pairs, n_boot=n_boot, seed=seed):
        c = row.comparison
        mdd = min_detectable_difference(c.sd_diff, c.n) if c.sd_diff > 0 else float("nan")
        out.append({"a": row.a, "b": row.b, "n": c.n, "difference": c.difference, "ci": [c.ci_low, c.ci_high],
                    "p": c.p_value, "p_holm": row.p_holm, "min_detectable": mdd})
    return out


def fmt(x, spec: str = ".3f") -> str:
    """A number for a table; "n/a" for None and NaN."""
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)
