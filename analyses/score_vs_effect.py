"""Does a module's score predict its causal effect? Steer single heads at one matched dose and compare.

For one fold of a finished main-job run (KL-target protocol; an α-grid run is refused): take each
method's top-``n_top`` heads plus the top head of each of ``n_random`` seeded random rankings (the
random null's draws, :func:`real_lens.null.random_null_scores`), and steer each head *alone*
(strength 1, the run's recipe: mean-difference direction and σ from the activations the run fitted
on) at **one matched small dose**: α calibrated per head so that KL(unsteered ‖ steered) on the run's
held-apart WikiText-2 paragraphs is ``kl`` nats per token (:func:`real_lens.evaluation.dose.calibrate_alpha`,
the job's settings), so head effects are comparable. Each head is evaluated once, on the fold's
test questions (the run's own sample, which fitted and selected nothing), with the run's standard MC
prompt, through :class:`real_lens.experiment.HeadEffects`: the cells `real-lens diagnose` writes
under ``RUN/diagnose/cells``, so a head diagnose has evaluated is reused, not evaluated again. It gets:

- its effect on the task's selection metric (MC2 for TruthfulQA), paired per question against
  unsteered (:func:`real_lens.evaluation.paired.compare_paired`: CI, sign-flip p, Holm across heads);
- for MC tasks, β_truth and β_len of the per-answer decomposition against unsteered
  (:func:`real_lens.evaluation.decomposition.decompose`): the nats the head adds to true answers beyond
  what their length predicts.

Every method's scores are then compared with the same effects: Spearman ρ(score, effect) over the
evaluated heads whose calibration reached the dose, with a percentile bootstrap CI over heads.
Caveat: the heads are the methods' top heads plus a few random ones, not a uniform sample, so ρ is
over a selected set.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.stats import rankdata, spearmanr

import real_lens as rl
from analyses.common import (
    check_protocol,
    fmt,
    new_figure,
    paired_table,
    protocol,
    run_analysis,
    run_dir,
    run_main,
    style,
)
from real_lens.evaluation.decomposition import answer_deltas, decompose
from real_lens.experiment import METHODS, HeadEffects, load_config
from real_lens.null import random_null_scores
from real_lens.plotting import SCORE_UNITS, metric_label, save_figure

NULL_SEED_OFFSET = 2_000_003  # this analysis' random heads: other seeds than the run's steered null


@dataclass(frozen=True)
class Config:
    run: str = "runs/truthfulqa"  # a finished `real-lens run`; "" = the quick run on the tiny model
    fold: int = 0
    n_top: int = 6  # per method
    n_random: int = 8  # random rankings whose top head is evaluated
    kl: float = 0.02  # the matched per-head dose, nats per token on the held-apart paragraphs
    n_boot: int = 1000
    seed: int = 0


CONFIG = Config()
QUICK = Config(run="", n_top=2, n_random=2, kl=0.001, n_boot=200)  # tiny model: a tiny dose


def spearman_ci(x, y, *, n_boot: int, seed: int, level: float = 0.95) -> dict:
    """Spearman ρ of ``x`` and ``y`` with a percentile bootstrap CI over their pairs (resamples whose
    ranks are constant, where ρ is undefined, are left out and counted)."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    nan = {"rho": math.nan, "p": math.nan, "ci": [math.nan, math.nan], "n": int(x.size), "n_boot_valid": 0}
    if x.size < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return nan
    full = spearmanr(x, y)
    idx = np.random.default_rng(seed).integers(0, x.size, size=(n_boot, x.size))
    rx, ry = rankdata(x[idx], axis=1), rankdata(y[idx], axis=1)  # ρ = Pearson r of the ranks, per resample
    rx -= rx.mean(1, keepdims=True)
    ry -= ry.mean(1, keepdims=True)
    denominator = np.sqrt((rx**2).sum(1) * (ry**2).sum(1))
    valid = denominator > 0
    rho = (rx * ry).sum(1)[valid] / denominator[valid]
    tail = (1 - level) / 2
    ci = np.quantile(rho, [tail, 1 - tail]).tolist() if rho.size else [math.nan, math.nan]
    return {"rho": float(full.statistic), "p": float(full.pvalue), "ci": ci, "n": int(x.size),
            "n_boot_valid": int(valid.sum())}


def analyse(cfg: Config, run: Path, progress: bool = True) -> dict:
    run_cfg = load_config(run)
    check_protocol(run_cfg, run)
    # The heads alone, through the library's own single-head cells (real_lens.experiment.HeadEffects):
    # `real-lens diagnose` evaluates the same heads the same way, and a head either has evaluated is reused.
    alone = HeadEffects(run, run_cfg, dose_kl=cfg.kl, progress=progress)
    task, metric = alone.setup.task, alone.setup.select_metric
    bank, _ = alone.banks(cfg.fold)
    methods = [m for m in run_cfg.methods if (run / "scores" / f"fold{cfg.fold}" / m).is_dir()]
    scores = {m: rl.ModuleScores.load(run / "scores" / f"fold{cfg.fold}" / m) for m in methods}
    top = {m: [tuple(h) for h in s.ranking()[:cfg.n_top]] for m, s in scores.items()}
    draws = random_null_scores(bank.module_shape, n_draws=cfg.n_random, fold=cfg.fold,
                               seed=run_cfg.seed + NULL_SEED_OFFSET)
    random_heads = list(dict.fromkeys(tuple(d.ranking()[0]) for d in draws))
    evaluated = list(dict.fromkeys([h for m in methods for h in top[m]] + random_heads))

    base = alone.unsteered(cfg.fold)
    results = []
    for i, head in enumerate(evaluated):
        cell = alone.single_head(cfg.fold, head)
        results.append({**cell["result"], "calibration": cell["calibration"]})
        if progress:
            c = results[-1]["calibration"]
            print(f"head L{head[0]}H{head[1]}: α {c['alpha']:.3g} (KL {c['kl']:.3g}), "
                  f"Δ{metric} {results[-1][metric] - base[metric]:+.4f} ({i + 1}/{len(evaluated)})", flush=True)

    arrays = {"unsteered": np.asarray(base["per_item"][metric])}
    arrays.update({f"L{h[0]}H{h[1]}": np.asarray(r["per_item"][metric]) for h, r in zip(evaluated, results)})
    paired = paired_table(arrays, [(name, "unsteered") for name in list(arrays)[1:]], n_boot=cfg.n_boot, seed=cfg.seed)
    heads = []
    for head, result, row in zip(evaluated, results, paired):
        entry = {"head": list(head), "alpha": result["calibration"]["alpha"], "calibration_kl": result["calibration"]["kl"],
                 "reached": result["calibration"]["reached"], "effect": row["difference"], "effect_ci": row["ci"],
                 "p": row["p"], "p_holm": row["p_holm"], "min_detectable": row["min_detectable"],
                 "beta_truth": math.nan, "beta_truth_ci": [math.nan, math.nan], "beta_len": math.nan}
        if "per_answer" in result:
            answers = result["per_answer"]
            fit = decompose(answers["group"], answers["true"], answers["tokens"],
                            answer_deltas(answers, base["per_answer"]), n_boot=cfg.n_boot, seed=cfg.seed)
            entry.update(beta_truth=fit.beta_truth, beta_truth_ci=list(fit.ci_truth), beta_len=fit.beta_len,
                         p_truth=fit.p_truth)
        heads.append(entry)

    matched = [i for i, h in enumerate(heads) if h["reached"]]
    per_method = {}
    for m in methods:
        x = [float(scores[m].scores[h]) for h in evaluated]
        per_method[m] = {"scores": x, "mean_effect_top": float(np.mean([heads[evaluated.index(h)]["effect"] for h in top[m]])),
                         "mean_beta_truth_top": float(np.mean([heads[evaluated.index(h)]["beta_truth"] for h in top[m]]))}
        for key, target in (("effect", "effect"), ("beta_truth", "beta_truth")):
            y = [heads[i][target] for i in matched]
            finite = [j for j, v in enumerate(y) if np.isfinite(v)]
            per_method[m][f"spearman_{key}"] = spearman_ci([x[matched[j]] for j in finite], [y[j] for j in finite],
                                                           n_boot=cfg.n_boot, seed=cfg.seed)
    random_index = [evaluated.index(h) for h in random_heads]
    return {"run": str(run), "protocol": protocol(run_cfg), "task": task.name, "metric": metric, "fold": cfg.fold,
            "split": "test", "kl": cfg.kl, "n_items": len(base["per_item"][metric]), "n_questions": base["n_questions"],
            "baseline": base[metric], "heads": heads, "n_matched": len(matched),
            "random_heads": [list(h) for h in random_heads], "top_heads": {m: [list(h) for h in top[m]] for m in methods},
            "mean_effect_random": float(np.mean([heads[i]["effect"] for i in random_index])),
            "mean_beta_truth_random": float(np.mean([heads[i]["beta_truth"] for i in random_index])),
            "methods": per_method}


def _rho(v: dict) -> str:
    return f"{fmt(v['rho'], '+.2f')} [{fmt(v['ci'][0], '+.2f')}, {fmt(v['ci'][1], '+.2f')}]"


def table(data: dict) -> list[str]:
    metric = data["metric"]
    lines = [f"# Score vs single-head effect: {data['task']}, fold {data['fold']}, each head at KL {data['kl']:g}",
             "", f"Effect = change of {data['split']} {metric} ({data['n_questions']} questions; unsteered "
             f"{data['baseline']:.4f}) when one head is steered alone, α calibrated per head to KL {data['kl']:g} "
             f"nats/token on the held-apart paragraphs; {len(data['heads'])} heads evaluated, {data['n_matched']} reached "
             "the dose (ρ is over those). β_truth: nats added to true answers beyond their length (per-answer "
             "decomposition vs unsteered). CIs: bootstrap over heads.", "",
             f"| method | Spearman ρ (score, Δ{metric}) [95% CI] | Spearman ρ (score, β_truth) [95% CI] | "
             f"mean Δ{metric} of its top heads | mean β_truth of its top heads |", "|---|---|---|---|---|"]
    for m, v in data["methods"].items():
        lines.append(f"| {m} | {_rho(v['spearman_effect'])} | {_rho(v['spearman_beta_truth'])} | "
                     f"{fmt(v['mean_effect_top'], '+.4f')} | {fmt(v['mean_beta_truth_top'], '+.3f')} |")
    lines.append(f"| random heads (null draws' top heads) | | | {fmt(data['mean_effect_random'], '+.4f')} | "
                 f"{fmt(data['mean_beta_truth_random'], '+.3f')} |")
    lines += ["", f"## Every head (paired vs unsteered over the {data['split']} questions; Holm across heads)", "",
              f"| head | α | calibration KL | Δ{metric} [95% CI] | p (Holm) | detectable | β_truth [95% CI] | β_len |",
              "|---|---|---|---|---|---|---|---|"]
    for h in data["heads"]:
        lines.append(f"| L{h['head'][0]}H{h['head'][1]} | {h['alpha']:.3g} | {h['calibration_kl']:.3g}"
                     f"{'' if h['reached'] else ' (missed)'} | {h['effect']:+.4f} [{h['effect_ci'][0]:+.4f}, "
                     f"{h['effect_ci'][1]:+.4f}] | {h['p']:.3f} ({h['p_holm']:.3f}) | {fmt(h['min_detectable'], '.4f')} | "
                     f"{fmt(h['beta_truth'], '+.3f')} [{fmt(h['beta_truth_ci'][0], '+.3f')}, "
                     f"{fmt(h['beta_truth_ci'][1], '+.3f')}] | {fmt(h['beta_len'], '+.4f')} |")
    return lines


def plot(data: dict, path) -> Path:
    # JSON objects come back with sorted keys: draw the methods in the run's usual order.
    methods = sorted(data["methods"], key=lambda m: (METHODS.index(m) if m in METHODS else len(METHODS), m))
    rows = [("effect", f"Δ {metric_label(data['metric'])} (one head)", "spearman_effect")]
    if any(np.isfinite(h["beta_truth"]) for h in data["heads"]):
        rows.append(("beta_truth", "β_truth, nats (one head)", "spearman_beta_truth"))
    cols = min(3, len(methods))
    per_metric = -(-len(methods) // cols)  # subplot rows per metric
    fig = new_figure(4.6 * cols, 3.8 * per_metric * len(rows))
    random_heads = {tuple(h) for h in data["random_heads"]}
    heads = [tuple(h["head"]) for h in data["heads"]]
    for r, (key, ylabel, rho_key) in enumerate(rows):
        for i, m in enumerate(methods):
            ax = fig.add_subplot(per_metric * len(rows), cols, r * per_metric * cols + i + 1)
            v = data["methods"][m]
            top = {tuple(h) for h in data["top_heads"][m]}
            kinds = [("its top heads", "tab:red", lambda h: h in top),
                     ("random heads", "tab:grey", lambda h: h in random_heads and h not in top),
                     ("other methods' top heads", "tab:blue", lambda h: h not in top and h not in random_heads)]
            for label, colour, keep in kinds:
                pts = [(s, e[key]) for h, s, e in zip(heads, v["scores"], data["heads"]) if keep(h) and e["reached"]]
                if pts:
                    ax.scatter(*zip(*pts), s=22, color=colour, label=label)
            ax.axhline(0.0, color="black", linewidth=0.8)
            style(ax, title=f"{m}: ρ {_rho(v[rho_key])}", xlabel=SCORE_UNITS.get(m, f"{m} score"),
                  ylabel=ylabel if i % cols == 0 else "")
            if r == 0 and i == 0:
                ax.legend(fontsize=8)
    fig.suptitle(f"{data['task']}: does the score predict a head's steering effect? (each head at KL {data['kl']:g}; "
                 f"{data['n_matched']} of {len(data['heads'])} heads reached it)", fontsize=12)
    return save_figure(fig, path)


def main(argv=None) -> dict:
    return run_analysis("score_vs_effect", argv, doc=__doc__, config=CONFIG, quick=QUICK, table=table, plot=plot,
                        compute=lambda cfg, out, work, progress: analyse(cfg, run_dir(cfg.run, out), progress=progress))


if __name__ == "__main__":
    run_main(main)
