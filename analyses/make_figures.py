"""Regenerate every PNG in figures/ from saved results only (no model is loaded, nothing is recomputed).

Sources, all small and committed under results/:
- ``results/truthfulqa/`` and ``results/truthfulqa-larger/``: the main job's results.csv, summary.json and
  scores (copied from ``runs/truthfulqa`` by ``--from-run runs/truthfulqa``, and from a ``--larger`` run by
  ``--from-larger-run``) → ``<name>_heatmaps_fold*.png``, ``<name>_mc2_vs_k.png`` (when val chose K) and
  ``<name>_mc2_vs_kl.png`` (the frontier, when the run compared methods at KL targets);
- ``results/<analysis>/data.json`` of each analysis → ``figures/<analysis>.png``.
A missing source, or an analysis' data.json from before the analyses ran the main job's protocol, is
reported and the script exits with code 1 (the other figures are still made);
a ``--from-run`` folder that is not a finished run is one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import csv
import shutil
import sys
from pathlib import Path

from analyses import compare_selection, overlap, score_vs_effect, transfer
from analyses.common import FIGURES, RESULTS, load, run_main
from real_lens.errors import RealLensError
from real_lens.experiment.report import draw_frontier
from real_lens.io import read_json
from real_lens.plotting import plot_metric_vs_k, plot_score_heatmaps
from real_lens.scoring import ModuleScores

ANALYSES = {"compare_selection": compare_selection, "score_vs_effect": score_vs_effect,
            "overlap": overlap, "transfer": transfer}
RUN_FILES = ("results.csv", "summary.json", "summary.md", "config.json", "timing.json")


def publish_run(run: Path, dest: Path) -> None:
    """Copy a finished run's small outputs (tables and scores; no caches, no cells) into ``dest``."""
    if not (run / "results.csv").is_file():
        raise RealLensError(f"{run} is not a finished real-lens run (no results.csv); pass the folder `make run` wrote")
    dest.mkdir(parents=True, exist_ok=True)
    for name in RUN_FILES:
        if (run / name).is_file():  # timing.json: runs from before it existed have none
            shutil.copy2(run / name, dest / name)
    if (dest / "scores").exists():
        shutil.rmtree(dest / "scores")
    shutil.copytree(run / "scores", dest / "scores")


def main_job_figures(src: Path, figures: Path, name: str) -> list[Path]:
    with open(src / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    summary = read_json(src / "summary.json")
    metric = summary.get("select_metric", "mc2")
    methods = read_json(src / "config.json")["config"]["methods"]
    made = []
    for fold_dir in sorted((src / "scores").glob("fold*")):
        scores = [ModuleScores.load(fold_dir / m) for m in methods if (fold_dir / m).is_dir()]  # random: a null
        made.append(plot_score_heatmaps(scores, figures / f"{name}_heatmaps_{fold_dir.name}.png"))
    if any(r["split"] == "val" and r["method"] != "unsteered" for r in rows):
        made.append(plot_metric_vs_k(rows, figures / f"{name}_{metric}_vs_k.png", metric=metric, split="val",
                                     task=name))
    if summary.get("frontier"):
        made.append(draw_frontier(summary["frontier"], figures / f"{name}_{metric}_vs_kl.png"))
    return made


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--from-run", default=None, help="first copy this finished main-job run into results/truthfulqa")
    parser.add_argument("--from-larger-run", default=None,
                        help="first copy this finished `real-lens run --larger` into results/truthfulqa-larger")
    parser.add_argument("--publish", action="append", default=[], metavar="RUN=NAME",
                        help="first copy this finished run into results/NAME (repeatable), e.g. "
                             "runs/nq-swap=nq-swap or runs/truthfulqa-qwen1.5b=truthfulqa-qwen1.5b")
    parser.add_argument("--results", default=str(RESULTS))
    parser.add_argument("--figures", default=str(FIGURES))
    args = parser.parse_args(argv)
    results, figures = Path(args.results), Path(args.figures)
    published = [(args.from_run, "truthfulqa"), (args.from_larger_run, "truthfulqa-larger")]
    for spec in args.publish:
        run, sep, name = spec.rpartition("=")
        if not sep or not run or not name or "/" in name or name in (".", ".."):
            raise RealLensError(f"--publish takes RUN=NAME (a run folder and a results/ folder name, e.g. "
                                f"runs/nq-swap=nq-swap); got {spec!r}")
        published.append((run, name))
    for run, name in published:
        if run:
            publish_run(Path(run), results / name)
    made, missing, stale = [], [], []
    if not (results / "truthfulqa" / "results.csv").is_file():
        missing.append(str(results / "truthfulqa"))
    for run in sorted(d for d in results.iterdir() if (d / "results.csv").is_file()) if results.is_dir() else []:
        made += main_job_figures(run, figures, run.name.replace("-", "_"))
    for name, module in ANALYSES.items():
        if not (results / name / "data.json").is_file():
            missing.append(str(results / name / "data.json"))
            continue
        data = load(results / name)
        if "protocol" not in data:  # written before the analyses ran the main job's protocol: not drawn again
            stale.append(f"{results / name / 'data.json'} predates the main job's protocol (no 'protocol' key); "
                         f"rerun it: python -m analyses.{name}")
            continue
        made.append(module.plot(data, figures / f"{name}.png"))
    for path in made:
        print(f"wrote {path}")
    for path in missing:
        print(f"missing (run its analysis first): {path}", file=sys.stderr)
    for line in stale:
        print(f"stale: {line}", file=sys.stderr)
    return 1 if missing or stale else 0


if __name__ == "__main__":
    run_main(lambda argv: sys.exit(main(argv)))  # exit 1 if a source is missing, 2 on a bad --from-run
