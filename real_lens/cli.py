"""``real-lens``: a thin command line over the library.

Every user mistake (unknown model, task, site; missing data; bad flags) prints one line on
stderr and exits with code 2, without a traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict

from . import hooks
from .errors import RealLensError

EXIT_USAGE = 2


class _Parser(argparse.ArgumentParser):
    """argparse, but its errors are one line like every other user mistake."""

    def error(self, message: str):
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    from .activations import READOUTS
    from .models import DEFAULT_MODEL

    parser = _Parser(prog="real-lens", description="Find and steer the attention heads that govern a behaviour.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    def model_arg(p):
        p.add_argument("--model", default=None, help=f"embedded name, local dir/.gguf, or Hub name (default {DEFAULT_MODEL})")
        p.add_argument("--device", default=None, help="torch device (default: the bridge's choice)")

    p = sub.add_parser("hooks", help="every hook point with its shape on a short prompt, grouped by layer")
    model_arg(p)
    p.add_argument("--prompt", default="Q: What is the capital of France? A:")
    p.add_argument("--filter", default=None, help="only hook names containing this text")
    p.set_defaults(run=_cmd_hooks)

    p = sub.add_parser("collect", help="collect an activation bank for a task")
    model_arg(p)
    p.add_argument("--task", required=True, help="truthfulqa, or file:<path>")
    p.add_argument("--site", default="head_z", choices=hooks.SITES)
    p.add_argument("--readout", default="last", choices=READOUTS)
    p.add_argument("--limit", type=_positive_int, default=None, help="at most N examples, whole questions only")
    p.add_argument("--batch-size", type=_positive_int, default=16)
    p.add_argument("--data-dir", default=None, help="data folder (default $REAL_LENS_DATA or ../shared/data)")
    p.add_argument("--out", required=True, help="directory to write the bank to")
    p.set_defaults(run=_cmd_collect)

    p = sub.add_parser("generate", help="greedy generation (chat template when the model has one)")
    model_arg(p)
    p.add_argument("--prompt", required=True)
    p.add_argument("--max-new-tokens", type=_positive_int, default=64)
    p.add_argument("--no-chat", action="store_true", help="do not apply the chat template")
    p.set_defaults(run=_cmd_generate)

    p = sub.add_parser("score", help="score every module of a bank with one method (scores + heatmap PNG)")
    model_arg(p)
    p.add_argument("--bank", default=None, help="an activation bank made by `real-lens collect`")
    p.add_argument("--task", default=None, help="collect first: truthfulqa, or file:<path>")
    p.add_argument("--limit", type=_positive_int, default=None)
    p.add_argument("--data-dir", default=None)
    p.add_argument("--method", default="real", help="real, iti, patching, attribution or random")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True)
    pairs = p.add_argument_group("contrast pairs (patching, attribution; see real_lens/scoring/pairs.py)")
    pairs.add_argument("--n-pairs", type=_positive_int, default=None,
                       help="questions to pair (default: patching 8, attribution 64)")
    pairs.add_argument("--n-demos", type=_positive_int, default=None,
                       help="demonstrations before each question (default 3)")
    pairs.add_argument("--min-gap", type=float, default=None,
                       help="drop pairs whose |clean - corrupted| gap is below this many nats (default 0.5)")
    pairs.add_argument("--positions", default=None, choices=("answer", "question"),
                       help="patch at the answer's positions (default) or the whole question as well")
    p.set_defaults(run=_cmd_score)

    p = sub.add_parser("steer", help="unsteered and steered answers side by side")
    model_arg(p)
    p.add_argument("--scores", required=True, help="a scores directory made by `real-lens score`")
    p.add_argument("--bank", default=None, help="bank for the directions (default: the one the scores came from)")
    p.add_argument("--top-k", type=_positive_int, default=16)
    p.add_argument("--alpha", type=float, default=15.0)
    p.add_argument("--uniform", action="store_true", help="strength 1 for every head (ITI) instead of score/max")
    p.add_argument("--prompt", required=True)
    p.add_argument("--max-new-tokens", type=_positive_int, default=48)
    p.set_defaults(run=_cmd_steer)

    p = sub.add_parser("run", help="the main job: folds x scorers x K x alpha on a task (default TruthfulQA)")
    p.add_argument("--model", default=None)
    p.add_argument("--task", default=None, help="a task from `real-lens tasks` (default truthfulqa)")
    p.add_argument("--select-metric", default=None, help="the val metric K and alpha are chosen by (default: the task's)")
    p.add_argument("--folds", default=None, help="comma-separated fold indices (default: every fold of the task)")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--device", default=None)
    preset = p.add_mutually_exclusive_group()
    preset.add_argument("--quick", action="store_true", help="a few questions and grid points (tests, CI)")
    preset.add_argument("--full", action="store_true", help="the paper's protocol at full size (for a GPU)")
    p.add_argument("--methods", default=None, help="comma-separated subset of real,iti,patching,attribution,random")
    p.add_argument("--k-grid", default=None, help="comma-separated K values, e.g. 8,24")
    p.add_argument("--alpha-grid", default=None, help="comma-separated alpha values, e.g. 5,15")
    p.add_argument("--val-questions", type=_positive_int, default=None, help="per fold (default 25; --full: all)")
    p.add_argument("--test-questions", type=_positive_int, default=None, help="per fold (default 40; --full: all)")
    p.add_argument("--questions-per-part", type=_positive_int, default=None,
                   help="use at most N questions from each fold's train, val and test parts (smaller runs)")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--out", default=None, help="run directory, reused to resume (default runs/<task>)")
    p.set_defaults(run=_cmd_run)

    p = sub.add_parser("transfer", help="evaluate a finished run's selected heads on another task, without re-selection")
    p.add_argument("--source-run", required=True, help="a finished `real-lens run` directory (e.g. runs/truthfulqa)")
    p.add_argument("--task", required=True, help="the target task (see `real-lens tasks`)")
    p.add_argument("--methods", default=None, help="comma-separated subset of the source run's methods")
    p.add_argument("--test-questions", type=_positive_int, default=None, help="per fold (default: as the source run)")
    p.add_argument("--out", default=None, help="output directory (default runs/transfer-<source>-to-<task>)")
    p.set_defaults(run=_cmd_transfer)

    p = sub.add_parser("tasks", help="list the tasks and where their data comes from")
    p.add_argument("--data-dir", default=None)
    p.set_defaults(run=_cmd_tasks)
    return parser


def _load(args):
    from .models import DEFAULT_MODEL, load_model

    return load_model(args.model or DEFAULT_MODEL, device=args.device)


def _cmd_hooks(args) -> None:
    model = _load(args)
    _, cache = model.run_with_cache(args.prompt)
    by_layer: dict[str, list[tuple[str, tuple]]] = defaultdict(list)
    for name, act in cache.items():
        if args.filter and args.filter not in name:
            continue
        group = ".".join(name.split(".")[:2]) if name.startswith("blocks.") else "model"
        by_layer[group].append((name, tuple(act.shape)))
    n_tokens = model.to_tokens(args.prompt).shape[1]
    print(f"{model.real_lens_identity['name']}: {model.cfg.n_layers} layers, {model.cfg.n_heads} heads, d_head {model.cfg.d_head}, "
          f"d_model {model.cfg.d_model}; prompt of {n_tokens} tokens; shapes are [batch, pos, ...]")
    order = sorted(by_layer, key=lambda g: (g != "model", int(g.split(".")[1]) if g.startswith("blocks.") else -1))
    for group in order:
        print(f"\n{group}")
        for name, shape in by_layer[group]:
            print(f"  {name:45s} {list(shape)}")


def _cmd_collect(args) -> None:
    from .activations import collect_activations
    from .tasks import load_task

    task = load_task(args.task, data_dir=args.data_dir)
    if args.limit:
        task = task.limit(args.limit)
    model = _load(args)
    bank = collect_activations(model, task, site=args.site, readout=args.readout, batch_size=args.batch_size)
    bank.save(args.out)
    print(f"wrote {args.out}: {len(bank.examples)} examples, {len(set(bank.groups))} questions, "
          f"acts {list(bank.acts.shape)} at {bank.meta['hook']} (readout {args.readout})")


def _cmd_generate(args) -> None:
    from .generation import generate_text

    model = _load(args)
    print(generate_text(model, args.prompt, max_new_tokens=args.max_new_tokens, chat=False if args.no_chat else None))


def _bank_for(args, model=None):
    from .activations import collect_activations
    from .bank import ActivationBank
    from .tasks import load_task

    if args.bank:
        return ActivationBank.load(args.bank)
    if not getattr(args, "task", None):
        raise RealLensError("give --bank DIR (from `real-lens collect`) or --task T to collect first")
    task = load_task(args.task, data_dir=args.data_dir)
    if args.limit:
        task = task.limit(args.limit)
    return collect_activations(model or _load(args), task)


def _cmd_score(args) -> None:
    from pathlib import Path

    from .plotting import plot_score_heatmap
    from .scoring import get_scorer

    scorer = get_scorer(args.method)  # unknown names fail before any loading
    needs_model = args.method in ("patching", "attribution")
    if args.bank:
        bank = _bank_for(args)
        if args.model is None:  # the bank's metadata names the model it came from
            args.model = bank.meta.get("model", {}).get("name", args.model)
        model = _load(args) if needs_model else None
    else:
        model = _load(args)
        bank = _bank_for(args, model)
    scores = scorer(bank, model=model, seed=args.seed, device=args.device, **_pair_options(args))
    if args.bank:
        scores.meta["bank"] = str(Path(args.bank).resolve())
    scores.save(args.out)
    png = plot_score_heatmap(scores, Path(args.out) / "heatmap.png")
    top = scores.top_k(min(10, scores.n_modules))
    print(f"wrote {args.out} and {png}; top modules by {args.method}: "
          + ", ".join(f"{label} ({float(scores.scores.flatten()[i]):.3f})" for label, i in zip(top.labels, _flat_indices(scores, top))))
    if "pairs" in scores.meta:
        info = scores.meta["pairs"]
        print(f"contrast pairs: {info['n_built']} built, {info['n_kept']} kept (|gap| >= {info['min_gap_nats']:g} nats), "
              f"mean gap {info['mean_gap_nats']:.3f} nats; skipped: {info['skipped'] or 'none'}")


def _pair_options(args) -> dict:
    """``{"cfg": ...}`` for the patching-style scorers from the pair flags; {} when none is given."""
    given = {k: getattr(args, k) for k in ("n_pairs", "n_demos", "min_gap", "positions") if getattr(args, k) is not None}
    if not given:
        return {}
    if args.method not in ("patching", "attribution"):
        flags = ", ".join("--" + k.replace("_", "-") for k in given)
        raise RealLensError(f"{flags} apply to --method patching or attribution, not {args.method!r}; drop them")
    from .scoring.attribution import AttributionConfig
    from .scoring.patching import PatchingConfig

    return {"cfg": (PatchingConfig if args.method == "patching" else AttributionConfig)(**given)}


def _flat_indices(scores, selection):
    n_heads = scores.scores.shape[1] if scores.scores.ndim == 2 else 1
    return [layer * n_heads + (head or 0) for layer, head in selection.modules]


def _cmd_steer(args) -> None:
    from .bank import ActivationBank
    from .generation import generate_text
    from .scoring import ModuleScores
    from .steering import build_steering

    scores = ModuleScores.load(args.scores)
    bank_dir = args.bank or scores.meta.get("bank")
    if not bank_dir:
        raise RealLensError(f"{args.scores} does not record its bank; pass --bank DIR (the bank it was scored on)")
    bank = ActivationBank.load(bank_dir)
    steering = build_steering(bank, scores.top_k(args.top_k, uniform=args.uniform), alpha=args.alpha)
    model = _load(args)
    unsteered = generate_text(model, args.prompt, max_new_tokens=args.max_new_tokens)
    with steering.applied(model):
        steered = generate_text(model, args.prompt, max_new_tokens=args.max_new_tokens)
    print(f"prompt: {args.prompt}\n\n[unsteered]\n{unsteered}\n\n[steered: {scores.method}, top {args.top_k}, "
          f"alpha {args.alpha:g}]\n{steered}")


def _grid(text, cast):
    if text is None:
        return None
    try:
        return tuple(cast(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise RealLensError(f"could not read the grid {text!r}; expected comma-separated numbers like 8,24") from None


def _cmd_run(args) -> None:
    from .experiment import config_for, run_experiment, task_slug

    cfg = config_for(
        "quick" if args.quick else "full" if args.full else None,
        model=args.model, device=args.device, data_dir=args.data_dir,
        methods=_grid(args.methods, str), k_grid=_grid(args.k_grid, int), alpha_grid=_grid(args.alpha_grid, float),
        n_val_questions=args.val_questions, n_test_questions=args.test_questions,
        questions_per_part=args.questions_per_part, task=args.task, select_metric=args.select_metric,
        folds=_grid(args.folds, int), seed=args.seed,
    )
    out = run_experiment(cfg, args.out or f"runs/{task_slug(cfg.task)}")
    print((out / "summary.md").read_text())
    print(f"outputs in {out}")


def _cmd_transfer(args) -> None:
    from .experiment import task_slug
    from .transfer import TransferConfig, load_source_run, run_transfer

    source_cfg, _ = load_source_run(args.source_run)
    tcfg = TransferConfig(args.source_run, args.task, methods=_grid(args.methods, str),
                          n_test_questions=args.test_questions)
    out = run_transfer(tcfg, args.out or f"runs/transfer-{task_slug(source_cfg.task)}-to-{task_slug(args.task)}")
    print((out / "summary.md").read_text())
    print(f"outputs in {out}")


def _cmd_tasks(args) -> None:
    from .tasks import TASK_DESCRIPTIONS
    from .tasks.data import resolve_data_dir

    root = resolve_data_dir(args.data_dir)
    where = str(root) if root else "the Hugging Face Hub (no local data folder found)"
    width = max(map(len, TASK_DESCRIPTIONS))
    for name, description in TASK_DESCRIPTIONS.items():
        print(f"{name:{width}s}  {description}")
    print(f"\ndata from: {where}")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.run(args)
    except RealLensError as exc:
        print(f"real-lens {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("real-lens: interrupted; finished chunks are cached and a rerun resumes", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
