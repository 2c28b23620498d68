"""Does `real-release` agree with the REAL authors' own code? Their OneForAll ``train_single_adaptor``, run
unchanged, against real-lens's `real-release` and `real`, on the same head activations.

Issue 20 §2. The release (liam0949/REAL_ICLR, fetched by the user: ``--release PATH``) is never copied
into real-lens: a separate Python process imports its ``validation/OneForAll.py`` as it is, with
stand-ins for the three repo-local modules it imports at the top (``utils``, ``hl_config``,
``hl_paths``; scoring never calls them), and calls ``train_single_adaptor(layer, head, acts, labels,
cfg=...)`` with the configuration its ``get_top_heads_vq`` builds from its CLI defaults (30 VQ
epochs, 6 GRU epochs, codebook 32, 8 units, per_ratio 0.0, their seeds 42-45). It sees exactly the
activations real-lens scores: the embedded model's fold-0 train+val TruthfulQA bank (first
``n_examples`` examples, whole questions), ``n_heads`` heads spread evenly over the model.

Reported, over every pair of seeds: Spearman of their seeds with each other (their own noise), of
ours (`real-release` at real-lens seeds 0-3) with theirs, of ours with each other, and `real` with
theirs; per ranking the share of heads at AUC exactly 0.5, mean, median and max AUC, and per
statistic the two sides' seed values against each other (ours within theirs' range; Welch t-test).
Target: mean ours-vs-theirs rho >= their mean seed-to-seed rho - 0.05.

    python -m analyses.release_fidelity --release /path/to/REAL_ICLR     # -> results/release_fidelity/
    python -m analyses.release_fidelity --release PATH --heads 40 --n-examples 3000 --out DIR  # the whole fold

`real-release` is whatever real-lens has installed (the table names the commit), so rerunning after
it changes is the same command. Their runs are cached per (head, seed, bank) under
runs/analyses/release_fidelity/, so a rerun only rescores our side.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import itertools
import json
import math
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from analyses.common import ROOT, RESULTS, run_main, save
from real_lens.errors import RealLensError

NAME = "release_fidelity"
NOISE_RHO = 0.2  # the release's seed-to-seed rho below which "within their seed noise" is no test at all
ONEFORALL = Path("validation") / "OneForAll.py"
# The three repo-local modules OneForAll.py imports at the top; train_single_adaptor uses none of them.
STUBS = {
    "utils": "def get_separated_activations(*args, **kwargs):\n    raise RuntimeError('stand-in: not used by scoring')\n",
    "hl_config": "def resolve_model_path(*a, **k):\n    raise RuntimeError('stand-in')\n\n"
                 "def resolve_cache_dir(*a, **k):\n    raise RuntimeError('stand-in')\n",
    "hl_paths": "def resolve_dir(*a, **k):\n    raise RuntimeError('stand-in')\n",
}


# The files `real-release` is made of: the table's label names their commit (and says if they were edited).
REAL_FILES = ("real_lens/scoring/real.py", "real_lens/scoring/real_config.py", "real_lens/scoring/vqae.py",
              "real_lens/scoring/prior.py")


@dataclass(frozen=True)
class Config:
    release: str = ""  # the fetched REAL_ICLR checkout (--release); required
    model: str = "smollm2-135m-instruct"
    fold: int = 0
    # Of the fold's train+val (2,951), whole questions; their VQ-AE trains on all of them. At 600 their own code
    # scores 70 % of heads exactly 0.5 (570 codebook updates, too few for its EMA start), so its seeds agree at rho 0.
    n_examples: int = 1500
    n_heads: int = 40  # heads scored by their code, evenly spaced over all (layer, head)
    # Their per-head seeds come from mix_seed(seed, layer, head); four of theirs and four of ours, so each
    # side's AUC statistics have a seed spread to compare (two bound it poorly).
    seeds: tuple[int, ...] = (42, 43, 44, 45)
    our_seeds: tuple[int, ...] = (0, 1, 2, 3)  # real-lens's seeds for `real-release` (`real`: the first)
    data_dir: str | None = None


# ----------------------------------------------------------------------------- the bank
def fold_bank(cfg: Config, work: Path):
    """The fold's train+val bank of the embedded model (first n_examples examples, whole questions)."""
    from real_lens.activations import collect_activations
    from real_lens.bank import ActivationBank
    from real_lens.models import load_model
    from real_lens.tasks import load_task

    path = work / f"bank-fold{cfg.fold}-{cfg.n_examples}"
    if path.exists():
        try:
            return ActivationBank.load(path)
        except RealLensError:
            pass
    task = load_task("truthfulqa", data_dir=cfg.data_dir)
    fold = task.folds[cfg.fold]
    task = task.restrict(fold.train | fold.val).limit(cfg.n_examples)
    bank = collect_activations(load_model(cfg.model), task, progress=False)
    bank.save(path)
    return bank


def chosen_heads(module_shape, n: int) -> list[tuple[int, int]]:
    n_layers, n_heads = module_shape
    flat = np.unique(np.linspace(0, n_layers * n_heads - 1, min(n, n_layers * n_heads)).round().astype(int))
    return [(int(i) // n_heads, int(i) % n_heads) for i in flat]


# ----------------------------------------------------------------------------- their code, in its own process
def their_scores(cfg: Config, bank, heads, work: Path) -> dict[int, dict[tuple[int, int], float]]:
    """AUC per head and seed from the release's own train_single_adaptor, one process per seed, run side by side
    (cached per bank digest and seed, so a rerun only computes what is missing)."""
    results, running = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for seed in cfg.seeds:
            cache = work / f"theirs-{bank.digest[:16]}-seed{seed}.json"
            done = {tuple(map(int, k.split(","))): v for k, v in json.loads(cache.read_text()).items()} \
                if cache.exists() else {}
            results[seed] = done
            todo = [h for h in heads if h not in done]
            if not todo:
                continue
            job = Path(tmp) / f"seed{seed}"
            job.mkdir()
            acts = bank.acts.float().numpy()
            np.savez(job / "job.npz", acts=np.stack([acts[:, layer, head, :] for layer, head in todo], axis=1),
                     labels=bank.labels.numpy(), heads=np.array(todo))
            spec = {"release": str(Path(cfg.release).resolve()), "job": str(job / "job.npz"), "seed": seed,
                    "head_dim": int(bank.d), "out": str(job / "out.json"), "stubs": str(job / "stubs")}
            (job / "spec.json").write_text(json.dumps(spec))
            log = open(job / "stderr.txt", "w")
            proc = subprocess.Popen([sys.executable, "-m", "analyses.release_fidelity", "--worker", str(job / "spec.json")],
                                    cwd=ROOT, stdout=log, stderr=log)
            running[seed] = (proc, job, cache, len(todo), time.perf_counter(), log)
        for seed, (proc, job, cache, n, t, log) in running.items():
            code = proc.wait()
            log.close()
            if code:
                raise RuntimeError(f"the release's train_single_adaptor failed (seed {seed}, exit {code}):\n"
                                   f"{(job / 'stderr.txt').read_text()[-4000:]}")
            print(f"their code, seed {seed}: {n} heads in {time.perf_counter() - t:.0f} s", flush=True)
            results[seed].update({tuple(map(int, k.split(","))): v for k, v in json.loads((job / "out.json").read_text()).items()})
            cache.parent.mkdir(parents=True, exist_ok=True)
            cache.write_text(json.dumps({f"{l},{h}": v for (l, h), v in sorted(results[seed].items())}))
    return {seed: {h: done[h] for h in heads} for seed, done in results.items()}


def worker(spec_path: str) -> None:
    """In a fresh process: import the release's OneForAll.py unchanged and call its train_single_adaptor."""
    spec = json.loads(Path(spec_path).read_text())
    stubs = Path(spec["stubs"])
    stubs.mkdir(parents=True, exist_ok=True)
    for name, text in STUBS.items():
        (stubs / f"{name}.py").write_text(text)
    sys.path.insert(0, str(stubs))
    for name in STUBS:  # imported now, so OneForAll's own sys.path entry (the release root) cannot shadow them
        importlib.import_module(name)
    source = Path(spec["release"]) / ONEFORALL
    module_spec = importlib.util.spec_from_file_location("release_oneforall", source)
    release = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(release)
    # The configuration get_top_heads_vq builds from OneForAll's CLI defaults.
    cfg = release.MultiGpuClassifierTrainingConfig(
        classifiers_per_gpu=1, fp16=True, gpu_ids=None, epochs=30, lr_vq=1e-3, batch_size_vq=32, num_embeddings=32,
        n_features=8, c_loss_scale=1e-3, lr_gru=1e-3, batch_size_gru=32, num_epochs_gru=6, grad_clip_gru=1.0,
        eval_batch_size=512, length_normalize=True, score_in_log_space=True, head_dim=spec["head_dim"],
        min_pplx_ratio=0.0, patience=30, data_p=1.0, seed=spec["seed"], strict_determinism=True,
    )
    job = np.load(spec["job"])
    out = {}
    for i, (layer, head) in enumerate(job["heads"].tolist()):
        (l_, h_), auc = release.train_single_adaptor(layer, head, np.ascontiguousarray(job["acts"][:, i, :]),
                                                     job["labels"], gpu_id=None, cfg=cfg)
        out[f"{l_},{h_}"] = float(auc)
        print(f"L{layer}H{head}: AUC {auc:.4f}", file=sys.stderr, flush=True)
    Path(spec["out"]).write_text(json.dumps(out))


# ----------------------------------------------------------------------------- ours, and the comparison
def our_scores(bank, method: str, seed: int, heads) -> list[float]:
    """``method``'s scores of ``heads`` with its defaults, as ``score_modules(bank, method, seed=seed)`` gives them.

    A shardable scorer (the REAL variants) trains only these heads (its ``modules=``, the torchrun
    share); a module's score does not depend on which others train, so this equals scoring the whole bank."""
    from real_lens.scoring import score_modules, scorer_spec

    spec = scorer_spec(method)
    n_heads = bank.module_shape[1]
    if spec.shardable:
        scores = spec.score(bank, seed=seed, progress=False, modules=[layer * n_heads + head for layer, head in heads])
    else:
        scores = score_modules(bank, method, seed=seed, progress=False)
    return [float(scores.scores[layer, head]) for layer, head in heads]


def summary(values) -> dict:
    v = np.asarray(values, dtype=float)
    return {"share_at_0.5": float((v == 0.5).mean()), "mean_auc": float(v.mean()), "max_auc": float(v.max()),
            "median_auc": float(np.median(v))}


def spearman(a, b) -> float:
    from scipy.stats import spearmanr

    a, b = np.asarray(a, float), np.asarray(b, float)
    if (a == a[0]).all() or (b == b[0]).all():
        return float("nan")
    return float(spearmanr(a, b).statistic)


def git_commit() -> str:
    """The last commit that changed `real-release`'s files (+ a note when they are edited and uncommitted)."""
    try:
        head = subprocess.run(["git", "log", "-1", "--format=%h", "--", *REAL_FILES], cwd=ROOT, capture_output=True,
                              text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", *REAL_FILES], cwd=ROOT, capture_output=True,
                               text=True).stdout.strip()
        return head + ("+uncommitted changes" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def compute(cfg: Config, work: Path) -> dict:
    release = Path(cfg.release)
    if not (release / ONEFORALL).is_file():
        raise RealLensError(f"--release {release} has no {ONEFORALL}; pass a checkout of liam0949/REAL_ICLR "
                            "(e.g. the directory `git clone https://github.com/liam0949/REAL_ICLR` made)")
    release_commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=release, capture_output=True,
                                    text=True).stdout.strip() or "unknown (not a git checkout)"
    work.mkdir(parents=True, exist_ok=True)
    bank = fold_bank(cfg, work)
    heads = chosen_heads(bank.module_shape, cfg.n_heads)
    print(f"bank: {len(bank.examples)} examples ({int(bank.labels.sum())} aligned), {len(set(bank.groups))} questions, "
          f"heads {len(heads)} of {bank.module_shape}", flush=True)
    rankings = {}
    for seed, theirs in their_scores(cfg, bank, heads, work).items():
        rankings[f"theirs-{seed}"] = [theirs[h] for h in heads]
    timings = {}
    for name, method, seed in ([(f"ours-{s}", "real-release", s) for s in cfg.our_seeds]
                               + [("real", "real", cfg.our_seeds[0])]):
        t = time.perf_counter()
        rankings[name] = our_scores(bank, method, seed, heads)
        timings[name] = time.perf_counter() - t
        print(f"ours, {name}: {len(heads)} heads in {timings[name]:.0f} s", flush=True)
    theirs = [f"theirs-{s}" for s in cfg.seeds]
    ours = [f"ours-{s}" for s in cfg.our_seeds]
    pairs = {"theirs vs theirs": list(itertools.combinations(theirs, 2)),
             "ours vs theirs": list(itertools.product(ours, theirs)),
             "ours vs ours": list(itertools.combinations(ours, 2)),
             "real vs theirs": [("real", t) for t in theirs]}
    rho = {f"{a} vs {b}": spearman(rankings[a], rankings[b]) for group in pairs.values() for a, b in group}
    groups = {name: [rho[f"{a} vs {b}"] for a, b in group] for name, group in pairs.items()}
    ours_vs_theirs = float(np.nanmean(groups["ours vs theirs"]))
    target = float(np.nanmean(groups["theirs vs theirs"])) - 0.05
    summaries = {name: summary(v) for name, v in rankings.items()}
    return {
        "real_lens_commit": git_commit(), "release_commit": release_commit,
        "bank": {"examples": len(bank.examples), "questions": len(set(bank.groups)),
                 "aligned": int(bank.labels.sum()), "digest": bank.digest, "module_shape": list(bank.module_shape)},
        "heads": [list(h) for h in heads], "rankings": rankings, "summary": summaries,
        "spearman": rho, "spearman_groups": {name: spread(v) for name, v in groups.items()},
        "ours_vs_theirs_mean": ours_vs_theirs, "target": target, "target_met": bool(ours_vs_theirs >= target),
        "seed_spread": seed_spread([summaries[t] for t in theirs], [summaries[o] for o in ours]),
        "our_seconds": timings,
    }


STATS = ("share_at_0.5", "mean_auc", "median_auc", "max_auc")


def spread(values) -> dict:
    v = np.asarray(values, dtype=float)
    return {"mean": float(np.nanmean(v)), "min": float(np.nanmin(v)), "max": float(np.nanmax(v)), "n": int(v.size)}


def seed_spread(theirs: list[dict], ours: list[dict]) -> dict:
    """Per AUC statistic: each side's values over its seeds, whether every one of ours lies within theirs' range,
    and a Welch t-test of the two sides' seed values (each seed one observation; NaN with fewer than 2 a side)."""
    from scipy.stats import ttest_ind

    out = {}
    for stat in STATS:
        a, b = [s[stat] for s in theirs], [s[stat] for s in ours]
        with warnings.catch_warnings():  # one side's seeds may agree exactly (e.g. no head at 0.5): a zero variance
            warnings.simplefilter("ignore", RuntimeWarning)
            p = float(ttest_ind(b, a, equal_var=False).pvalue) if min(len(a), len(b)) >= 2 and np.ptp(a + b) > 0 \
                else math.nan
        out[stat] = {"theirs": a, "ours": b, "within": bool(min(a) <= min(b) and max(b) <= max(a)),
                     "difference": float(np.mean(b) - np.mean(a)), "welch_p": p}
    return out


def table(data: dict, command: str) -> list[str]:
    lines = [f"# real-release as of {data['real_lens_commit']} vs the REAL release's own code "
             f"(liam0949/REAL_ICLR @ {data['release_commit']}, OneForAll.py train_single_adaptor)", "",
             f"Bank: {data['bank']['examples']} fold-0 train+val TruthfulQA examples ({data['bank']['questions']} questions, "
             f"{data['bank']['aligned']} aligned) of the embedded model, {len(data['heads'])} of its "
             f"{data['bank']['module_shape'][0]} x {data['bank']['module_shape'][1]} heads.", "",
             "| ranking | heads at AUC exactly 0.5 | mean AUC | median AUC | max AUC |", "|---|---|---|---|---|"]
    for name, s in data["summary"].items():
        lines.append(f"| {name} | {s['share_at_0.5']:.0%} | {s['mean_auc']:.3f} | {s['median_auc']:.3f} | {s['max_auc']:.3f} |")
    groups = data.get("spearman_groups", {})
    lines += ["", "| Spearman over the heads | mean rho | range | pairs |", "|---|---|---|---|"]
    lines += [f"| {name} | {g['mean']:.3f} | {g['min']:.3f} to {g['max']:.3f} | {g['n']} |" for name, g in groups.items()]
    verdict = "met" if data["target_met"] else "NOT met"
    lines += ["", f"Target (ours vs theirs >= their seed-to-seed rho - 0.05 = {data['target']:.3f}): mean ours-vs-theirs "
              f"rho {data['ours_vs_theirs_mean']:.3f}, {verdict}."]
    if data.get("seed_spread"):
        lines += ["", "AUC statistics over seeds (each seed one value): ours within theirs' range, and a Welch t-test of "
                  "ours vs theirs.", "",
                  "| statistic | theirs (seeds) | ours (seeds) | ours − theirs | Welch p | every one of ours within theirs' range |",
                  "|---|---|---|---|---|---|"]
        for stat, v in data["seed_spread"].items():
            lines.append(f"| {stat} | {', '.join(f'{x:.3f}' for x in v['theirs'])} | {', '.join(f'{x:.3f}' for x in v['ours'])} "
                         f"| {v['difference']:+.3f} | {v['welch_p']:.2g} | {'yes' if v['within'] else 'no'} |")
    seed_rho = data["target"] + 0.05
    if not seed_rho >= NOISE_RHO:
        lines += ["", f"The target says little here: the release's own seeds agree at mean rho {seed_rho:.2f} "
                  f"(below {NOISE_RHO}), so at this bank size its ranking of these heads is mostly seed noise."]
    n = data["bank"]["examples"]
    lines += ["", f"Their VQ-AE makes {math.ceil(n / 32) * 30} codebook updates per head (30 epochs of batches of 32 "
              f"over {n} examples); with the release's EMA start an entry unused at the first update needs ~1,146 to "
              "be chosen again (docs/real-release.md), so below that most heads keep one code and score exactly 0.5.",
              "", f"Command: `{command}`"]
    return lines


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--release", help="a checkout of liam0949/REAL_ICLR")
    parser.add_argument("--heads", type=int, default=Config.n_heads)
    parser.add_argument("--n-examples", type=int, default=Config.n_examples)
    parser.add_argument("--seeds", default=",".join(map(str, Config.seeds)), help="their seeds, comma-separated (two or more)")
    parser.add_argument("--our-seeds", default=",".join(map(str, Config.our_seeds)),
                        help="real-lens's seeds for real-release, comma-separated (one or more; real uses the first)")
    parser.add_argument("--out", default=None, help=f"results folder (default results/{NAME})")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)  # the separate process running their code
    args = parser.parse_args(argv)
    if args.worker:
        worker(args.worker)
        return {}
    if not args.release:
        raise RealLensError("give --release PATH, a checkout of liam0949/REAL_ICLR (its validation/OneForAll.py is run)")
    try:
        seeds = tuple(int(s) for s in args.seeds.split(","))
        our_seeds = tuple(int(s) for s in args.our_seeds.split(","))
    except ValueError:
        raise RealLensError(f"--seeds and --our-seeds take comma-separated integers (e.g. 42,43); got "
                            f"{args.seeds!r} and {args.our_seeds!r}") from None
    if len(seeds) < 2 or len(set(seeds)) < len(seeds) or len(set(our_seeds)) < len(our_seeds):
        raise RealLensError(f"--seeds takes two or more distinct seeds of the release (e.g. 42,43,44,45) and "
                            f"--our-seeds distinct ones; got {args.seeds!r} and {args.our_seeds!r}")
    cfg = Config(release=str(Path(args.release).resolve()), n_examples=args.n_examples, n_heads=args.heads, seeds=seeds,
                 our_seeds=our_seeds, data_dir=args.data_dir)
    out = Path(args.out) if args.out else RESULTS / NAME
    data = compute(cfg, ROOT / "runs" / "analyses" / NAME)
    command = "python -m analyses.release_fidelity --release PATH" + "".join(
        f" {flag} {value}" for flag, value, default in (("--heads", args.heads, Config.n_heads),
                                                        ("--n-examples", args.n_examples, Config.n_examples))
        if value != default)
    save(out, dataclasses.replace(cfg, release="PATH"), data, table(data, command))
    print("\n".join(table(data, command)))
    return data


if __name__ == "__main__":
    run_main(main)
