"""Does REAL's ranking change once its held-out questions are no longer ITI's validation questions?

Issue 20 §4. Before ``RealConfig.heldout_stream`` existed, REAL's by-question held-out split and ITI's
validation split drew from ``default_rng(seed)`` with the run's one seed and took the same first 20 % of
one permutation: REAL judged every head on exactly ITI's 32 validation questions. REAL now draws them from
its own stream. This rescores `real` (the described method, the run's settings: 20 VQ-AE and 10 prior
epochs) on the committed main job's fold banks with the new split and compares with the committed scores:

- Spearman ρ old vs new, top-K overlap old vs new, and each one's top-K overlap and ρ with ITI;
- AUC mean / median / max, and the spread of the top K (best minus K-th AUC);
- split noise as a yardstick: with ``cross_fit`` disjoint held-out parts (one VQ-AE, priors per part), ρ and
  top-K overlap between the parts' AUCs, and the cross-fitted mean's agreement with ITI;
- a reproduction check: `real` rescored with ``heldout_stream="shared"`` must equal the committed scores;
- how many of REAL's held-out questions are ITI's, and for `real-release` (per-answer, per-head splits) the
  share of its held-out answers whose question ITI validates on (chance: 20 %).

    python -m analyses.real_split_independence            # -> results/real_split_independence/
    python -m analyses.real_split_independence --quick    # seconds: fold 0, 2 epochs, 12 heads

The fold's bank is the main job's cached one (its key is in the committed scores' key.json; the real-lens
cache, ``~/.cache/real-lens/banks``); nothing is collected. Scores are cached under
runs/analyses/real_split_independence/, so a rerun only computes what is missing.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from analyses.common import RESULTS, ROOT, run_main
from real_lens.bank import ActivationBank
from real_lens.compare import compare_scores
from real_lens.errors import RealLensError
from real_lens.experiment import fit_parts, load_config
from real_lens.experiment.setup import prepare_task
from real_lens.io import atomic_write, read_json, write_json
from real_lens.models.embedded import cache_root
from real_lens.provenance import check_scores_bank
from real_lens.scoring import ModuleScores
from real_lens.scoring.iti import split_groups
from real_lens.scoring.real import score_real
from real_lens.scoring.real_config import RealConfig
from real_lens.scoring.real_splits import (
    release_seeds,
    split_heldout,
    split_release_per_answer,
)

NAME = "real_split_independence"


@dataclass(frozen=True)
class Config:
    run: str = "results/truthfulqa"  # the committed main job: its config.json, its real and iti scores
    folds: tuple[int, ...] = (0, 1)
    cross_fit: int = 3  # disjoint held-out parts for the split-noise yardstick and the cross-fitted score
    cross_fit_folds: tuple[int, ...] = (0,)
    reproduce_folds: tuple[int, ...] = (0,)  # rescored with heldout_stream="shared": must equal the committed scores
    k: int = 16  # the run's K
    release_heads: int = 30  # real-release heads whose per-answer held-out split is checked against ITI's
    bank_dir: str | None = None  # the banks' folder; None: the real-lens cache
    vq_epochs: int | None = None  # None: the run's real_epochs
    prior_epochs: int | None = None  # None: the run's real_prior_epochs
    n_heads: int | None = None  # score only the first n heads (QUICK); None: all


CONFIG = Config()
QUICK = Config(folds=(0,), cross_fit=2, reproduce_folds=(), k=4, vq_epochs=2, prior_epochs=2, n_heads=12,
               release_heads=3)


# ----------------------------------------------------------------------------- inputs
def fold_bank(cfg: Config, run: Path, experiment, fold: int) -> ActivationBank:
    """The fold's train+val bank the run scored: the cached task bank, cut to the fold's fitting questions."""
    key = read_json(run / "scores" / f"fold{fold}" / "real" / "key.json")
    folder = Path(cfg.bank_dir) if cfg.bank_dir else cache_root() / "banks"
    if not (folder / key["bank"]).is_dir():
        raise RealLensError(f"the run's bank {key['bank']} is not in {folder}; run the main job (make run) to cache "
                            "it, or pass a Config(bank_dir=...) that holds it")
    task = prepare_task(experiment)[0]
    parts = task.folds[fold]
    bank = ActivationBank.load(folder / key["bank"]).select(set().union(*(getattr(parts, p) for p in fit_parts(experiment))))
    if len(bank.examples) != key["n"]:
        raise RealLensError(f"fold {fold}'s bank has {len(bank.examples)} examples; the run scored {key['n']}")
    return bank


def committed(run: Path, fold: int, method: str, bank: ActivationBank) -> ModuleScores:
    folder = run / "scores" / f"fold{fold}" / method
    scores = ModuleScores.load(folder)
    check_scores_bank(scores, bank, scores_dir=folder, bank_dir=bank.meta.get("cache_key"))
    return scores


def real_config(cfg: Config, experiment, **changes) -> RealConfig:
    return RealConfig(vq_epochs=cfg.vq_epochs or experiment.real_epochs,
                      prior_epochs=cfg.prior_epochs or experiment.real_prior_epochs, **changes)


def rescored(cfg: Config, experiment, bank: ActivationBank, fold: int, label: str, work: Path, **changes) -> dict:
    """`real` on ``bank`` with ``changes`` to its config (cached in ``work``): ``{"scores", "seconds"}``."""
    folder = work / f"fold{fold}-{label}"
    real_cfg = real_config(cfg, experiment, **changes)
    if (folder / "scores.json").is_file():
        scores = ModuleScores.load(folder)
        if scores.config == dataclasses.asdict(real_cfg) and scores.meta.get("bank_digest") == bank.digest:
            return {"scores": scores, "seconds": scores.meta.get("seconds")}
    modules = None if cfg.n_heads is None else range(cfg.n_heads)
    t = time.perf_counter()
    scores = score_real(bank, cfg=real_cfg, seed=experiment.seed, modules=modules, progress=False)
    seconds = time.perf_counter() - t
    scores = dataclasses.replace(scores, meta={**scores.meta, "bank_digest": bank.digest, "seconds": seconds})
    scores.save(folder)
    print(f"fold {fold} {label}: {seconds:.0f} s", flush=True)
    return {"scores": scores, "seconds": seconds}


def restricted(scores: ModuleScores, n: int | None) -> ModuleScores:
    """The first ``n`` heads as a one-layer score table (QUICK scores only some heads); all with None."""
    if n is None:
        return scores
    def first(t):
        return t.flatten()[:n].reshape(1, n)

    return ModuleScores(first(scores.scores), scores.method, scores.config,
                        {k: first(v) for k, v in scores.diagnostics.items()}, scores.meta)


# ----------------------------------------------------------------------------- measures
def auc_summary(scores: ModuleScores, k: int) -> dict:
    flat = scores.scores.flatten().double()
    top = flat.sort(descending=True).values
    return {"mean": float(flat.mean()), "median": float(flat.median()), "max": float(top[0]),
            "kth": float(top[k - 1]), "top_k_spread": float(top[0] - top[k - 1])}


def agreement(a: ModuleScores, b: ModuleScores, k: int) -> dict:
    result = compare_scores(a, b, k=k)
    return {"spearman": result["spearman"], "overlap_top_k": result["overlap_top_k"]}


def split_scores(scores: ModuleScores, i: int) -> ModuleScores:
    return dataclasses.replace(scores, scores=scores.diagnostics[f"auc_split{i}"], diagnostics={})


def heldout_overlap(bank: ActivationBank, seed: int) -> dict:
    """REAL's held-out questions (old shared split, new own split) against ITI's validation questions."""
    groups, labels = bank.groups, bank.labels
    _, val = split_groups(groups, val_fraction=0.2, seed=seed)
    n = len(set(groups))
    out = {"n_questions": n, "n_iti_val": len(val), "chance": len(val) ** 2 / n}
    for stream in ("shared", "real"):
        _, held = split_heldout(labels, groups, how="group", fraction=0.2, seed=seed, stream=stream)
        out[stream] = len({groups[i] for i in held.tolist()} & val)
    return out


def release_overlap(bank: ActivationBank, heads: int, seed: int = 42) -> dict:
    """real-release's per-head, per-answer held-out answers: the share whose question is one of ITI's
    validation questions (seed 0, the run's), over ``heads`` heads spread over the model."""
    _, val = split_groups(bank.groups, val_fraction=0.2, seed=0)
    in_val = torch.tensor([g in val for g in bank.groups])
    n_layers, n_heads = bank.module_shape
    flat = np.unique(np.linspace(0, n_layers * n_heads - 1, heads).round().astype(int))
    shares = []
    for i in flat:
        generator = torch.Generator().manual_seed(release_seeds(seed, int(i) // n_heads, int(i) % n_heads)["split"])
        held = split_release_per_answer(bank.labels, generator, fraction=0.2)[-1]
        shares.append(float(in_val[held].float().mean()))
    return {"heads": len(shares), "mean_share": float(np.mean(shares)), "min_share": min(shares),
            "max_share": max(shares), "chance": float(in_val.float().mean())}


def compute(cfg: Config, work: Path) -> dict:
    run = ROOT / cfg.run
    experiment = load_config(run)
    seed = experiment.seed
    folds = {}
    for fold in cfg.folds:
        bank = fold_bank(cfg, run, experiment, fold)
        old = restricted(committed(run, fold, "real", bank), cfg.n_heads)
        iti = restricted(committed(run, fold, "iti", bank), cfg.n_heads)
        new_run = rescored(cfg, experiment, bank, fold, "real", work)
        new = restricted(new_run["scores"], cfg.n_heads)
        k = min(cfg.k, old.n_modules)
        entry = {
            "n_examples": len(bank.examples), "k": k, "seconds": {"real": new_run["seconds"]},
            "heldout": heldout_overlap(bank, seed),
            "release_heldout": release_overlap(bank, min(cfg.release_heads, old.n_modules)),
            "old_vs_new": agreement(old, new, k),
            "iti": {"old": agreement(old, iti, k), "new": agreement(new, iti, k)},
            "auc": {"old": auc_summary(old, k), "new": auc_summary(new, k)},
        }
        if fold in cfg.reproduce_folds:
            shared = rescored(cfg, experiment, bank, fold, "real-shared", work, heldout_stream="shared")
            entry["seconds"]["real-shared"] = shared["seconds"]
            diff = (restricted(shared["scores"], cfg.n_heads).scores - old.scores).abs().max()
            entry["reproduced"] = {"max_abs_diff": float(diff),
                                   "identical": bool(torch.equal(restricted(shared["scores"], cfg.n_heads).scores,
                                                                 old.scores))}
        if fold in cfg.cross_fit_folds:
            fitted_run = rescored(cfg, experiment, bank, fold, f"real-cross-fit{cfg.cross_fit}", work, cross_fit=cfg.cross_fit)
            fitted = restricted(fitted_run["scores"], cfg.n_heads)
            parts = [split_scores(fitted, i) for i in range(cfg.cross_fit)]
            entry["seconds"][f"cross_fit={cfg.cross_fit}"] = fitted_run["seconds"]
            entry["cross_fit"] = {
                "n": cfg.cross_fit,
                "split0_is_new": bool(torch.equal(parts[0].scores, new.scores)),
                "between_splits": [agreement(parts[i], parts[j], k) for i in range(cfg.cross_fit)
                                   for j in range(i + 1, cfg.cross_fit)],
                "splits_vs_iti": [agreement(p, iti, k) for p in parts],
                "splits_auc": [auc_summary(p, k) for p in parts],
                "vs_old": agreement(fitted, old, k), "vs_new": agreement(fitted, new, k),
                "iti": agreement(fitted, iti, k), "auc": auc_summary(fitted, k),
            }
        folds[str(fold)] = entry
    return {"folds": folds, "run": cfg.run, "seed": seed}


# ----------------------------------------------------------------------------- report
def summary(data: dict, command: str) -> list[str]:
    def rho(value: float) -> str:
        return "nan" if value is None or math.isnan(value) else f"{value:.3f}"

    lines = ["# REAL's held-out split apart from ITI's validation split (issue 20 §4)", "",
             f"`{command}`; run {data['run']} (seed {data['seed']}), `real` at its settings, all on one CPU thread.",
             "", "| | " + " | ".join(f"fold {f}" for f in data["folds"]) + " |",
             "|---|" + "---|" * len(data["folds"])]
    folds = list(data["folds"].values())

    def row(label, cell):
        lines.append(f"| {label} | " + " | ".join(cell(e) for e in folds) + " |")

    k = folds[0]["k"]
    row("REAL held-out questions that are ITI validation questions: old / new (chance)",
        lambda e: f"{e['heldout']['shared']} / {e['heldout']['real']} of {e['heldout']['n_iti_val']} "
                  f"({e['heldout']['chance']:.1f})")
    row("Spearman ρ old vs new", lambda e: rho(e["old_vs_new"]["spearman"]))
    row(f"top-{k} overlap old vs new", lambda e: f"{e['old_vs_new']['overlap_top_k']}/{k}")
    row(f"top-{k} overlap with ITI: old / new",
        lambda e: f"{e['iti']['old']['overlap_top_k']} / {e['iti']['new']['overlap_top_k']}")
    row("Spearman ρ with ITI: old / new", lambda e: f"{rho(e['iti']['old']['spearman'])} / {rho(e['iti']['new']['spearman'])}")
    for name in ("old", "new"):
        row(f"AUC {name}: mean / median / max", lambda e, n=name: "{mean:.3f} / {median:.3f} / {max:.3f}".format(**e["auc"][n]))
        row(f"AUC {name}: best minus {k}-th", lambda e, n=name: f"{e['auc'][n]['top_k_spread']:.3f}")
    row("`real` rescored with the old (shared) split equals the committed scores",
        lambda e: ("yes" if e["reproduced"]["identical"] else f"no (max |Δ| {e['reproduced']['max_abs_diff']:.2g})")
        if "reproduced" in e else "-")
    row("real-release: share of held-out answers from ITI validation questions, mean [min, max] (chance)",
        lambda e: "{mean_share:.3f} [{min_share:.3f}, {max_share:.3f}] ({chance:.3f})".format(**e["release_heldout"]))
    fitted = [(f, e["cross_fit"]) for f, e in data["folds"].items() if "cross_fit" in e]
    for fold, c in fitted:
        n = c["n"]
        lines += ["", f"## cross_fit={n}, fold {fold}: {n} disjoint held-out parts of 20 % (one VQ-AE, priors per part)",
                  "", "| | value |", "|---|---|",
                  "| split noise: Spearman ρ between parts' AUCs | "
                  + ", ".join(rho(a["spearman"]) for a in c["between_splits"]) + " |",
                  f"| split noise: top-{k} overlap between parts | "
                  + ", ".join(f"{a['overlap_top_k']}/{k}" for a in c["between_splits"]) + " |",
                  f"| each part vs ITI: top-{k} overlap (ρ) | "
                  + ", ".join(f"{a['overlap_top_k']} ({rho(a['spearman'])})" for a in c["splits_vs_iti"]) + " |",
                  "| each part's AUC: mean / max | "
                  + ", ".join("{mean:.3f} / {max:.3f}".format(**a) for a in c["splits_auc"]) + " |",
                  f"| mean of parts vs old: ρ, top-{k} overlap | {rho(c['vs_old']['spearman'])}, {c['vs_old']['overlap_top_k']}/{k} |",
                  f"| mean of parts vs new: ρ, top-{k} overlap | {rho(c['vs_new']['spearman'])}, {c['vs_new']['overlap_top_k']}/{k} |",
                  f"| mean of parts vs ITI: ρ, top-{k} overlap | {rho(c['iti']['spearman'])}, {c['iti']['overlap_top_k']}/{k} |",
                  "| AUC (mean of parts): mean / median / max | {mean:.3f} / {median:.3f} / {max:.3f} |".format(**c["auc"]),
                  f"| AUC (mean of parts): best minus {k}-th | {c['auc']['top_k_spread']:.3f} |",
                  f"| part 0 equals the new single split | {'yes' if c['split0_is_new'] else 'no'} |"]
    lines += ["", "Seconds (one thread, beside two other jobs on 2 cores): "
              + "; ".join(f"fold {f}: " + ", ".join(f"{m} {s:.0f}" for m, s in e["seconds"].items() if s is not None)
                          for f, e in data["folds"].items()) + "."]
    return lines


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fold 0, 2 epochs, 12 heads (seconds)")
    parser.add_argument("--out", default=None, help=f"results folder (default results/{NAME})")
    args = parser.parse_args(argv)
    cfg = QUICK if args.quick else CONFIG
    out = Path(args.out or (ROOT / "runs" / "analyses" / f"{NAME}-quick" if args.quick else RESULTS / NAME))
    work = out / "scores" if args.quick else ROOT / "runs" / "analyses" / NAME
    torch.set_num_threads(1)
    data = compute(cfg, work)
    command = "python -m analyses.real_split_independence" + (" --quick" if args.quick else "")
    write_json(out / "data.json", {"config": dataclasses.asdict(cfg), **data})
    lines = summary(data, command)
    atomic_write(out / "summary.md", lambda tmp: Path(tmp).write_text("\n".join(lines) + "\n"))
    print("\n".join(lines))
    return data


if __name__ == "__main__":
    run_main(main)
