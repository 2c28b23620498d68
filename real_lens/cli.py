"""``real-lens``: a thin command line over the library.

Every expected failure — a user mistake (unknown model, task, site; bad flags; missing or
malformed data), an operating-system error (disk full, permission, a path that is a file), a
missing device, a refused pickle checkpoint — prints one line on stderr naming what was
expected, what was found and the fix, and exits with code 2, without a traceback. Options are
checked before any model is loaded. An unexpected error is a bug: its traceback is shown, with
a line asking to report it (exit code 1).
"""

from __future__ import annotations

import argparse
import errno
import json
import math
import os
import pickle
import sys
import traceback
from collections import defaultdict

from . import hooks
from .errors import RealLensError

EXIT_USAGE = 2
EXIT_BUG = 1
MAX_SEED = 2**32 - 1  # numpy's and torch's seeding both accept [0, 2**32)
MAX_NEW_TOKENS = 1_000_000  # before the model is loaded; then prompt + new tokens must fit its context


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


def _token_count(text: str) -> int:
    value = _positive_int(text)
    if value > MAX_NEW_TOKENS:
        raise argparse.ArgumentTypeError(f"expected at most {MAX_NEW_TOKENS:,} tokens, got {value:,}")
    return value


def _seed(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer seed from 0 to {MAX_SEED}, got {text!r}") from None
    if not 0 <= value <= MAX_SEED:
        raise argparse.ArgumentTypeError(f"expected an integer seed from 0 to {MAX_SEED}, got {value}")
    return value


def _finite_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
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
    p.add_argument("--max-new-tokens", type=_token_count, default=64)
    p.add_argument("--no-chat", action="store_true", help="do not apply the chat template")
    p.set_defaults(run=_cmd_generate)

    p = sub.add_parser("score", help="score every module of a bank with one method (scores + heatmap PNG)")
    model_arg(p)
    p.add_argument("--bank", default=None, help="an activation bank made by `real-lens collect`")
    p.add_argument("--task", default=None, help="collect first: truthfulqa, or file:<path>")
    p.add_argument("--limit", type=_positive_int, default=None)
    p.add_argument("--data-dir", default=None)
    p.add_argument("--method", default="real", help="real, iti, patching, attribution or random")
    p.add_argument("--seed", type=_seed, default=0)
    p.add_argument("--out", required=True)
    p.set_defaults(run=_cmd_score)

    p = sub.add_parser("steer", help="unsteered and steered answers side by side")
    model_arg(p)
    p.add_argument("--scores", required=True, help="a scores directory made by `real-lens score`")
    p.add_argument("--bank", default=None, help="bank for the directions (default: the one the scores came from)")
    p.add_argument("--top-k", type=_positive_int, default=16)
    p.add_argument("--alpha", type=_finite_float, default=15.0)
    p.add_argument("--uniform", action="store_true", help="strength 1 for every head (ITI) instead of score/max")
    p.add_argument("--prompt", required=True)
    p.add_argument("--max-new-tokens", type=_token_count, default=48)
    p.set_defaults(run=_cmd_steer)

    p = sub.add_parser("run", help="the main job: folds x scorers x K x alpha on a task (default TruthfulQA)")
    p.add_argument("--model", default=None)
    p.add_argument("--task", default=None, help="a task from `real-lens tasks` (default truthfulqa)")
    p.add_argument("--select-metric", default=None, help="the val metric K and alpha are chosen by (default: the task's)")
    p.add_argument("--folds", default=None, help="comma-separated fold indices (default: every fold of the task)")
    p.add_argument("--seed", type=_seed, default=None)
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


def _check_device(args) -> None:
    from .models import check_device

    check_device(getattr(args, "device", None))


def _check_out(out, *, kind: str | None):
    """``--out`` checked before any work: not empty, not a file, writable, and (for an artifact)
    either new, empty or a previous artifact of the same kind, which is then replaced whole."""
    from .bank import META_FILE, TENSORS_FILE
    from .artifacts import check_output_path
    from .scoring import SCORES_EXTRAS, SCORES_FILE, SCORES_META_FILE

    files = {"bank": (TENSORS_FILE, META_FILE), "scores": (SCORES_FILE, SCORES_META_FILE, *SCORES_EXTRAS)}
    return check_output_path(out, kind=kind, replaces=files.get(kind, ()))


def _check_fits_context(model, prompt: str, max_new_tokens: int, *, chat: bool | None = None) -> None:
    """The prompt (as the model reads it) plus the new tokens must fit the model's context, as in collect."""
    from .generation import format_prompt

    n_prompt = model.to_tokens(format_prompt(model, prompt, chat=chat), truncate=False).shape[1]
    if n_prompt + max_new_tokens > model.cfg.n_ctx:
        raise RealLensError(
            f"the prompt ({n_prompt} tokens) plus --max-new-tokens {max_new_tokens} exceeds the model's context of "
            f"{model.cfg.n_ctx} tokens; shorten the prompt or lower --max-new-tokens to {max(model.cfg.n_ctx - n_prompt, 0)}"
        )


def _limited(task, limit):
    """``task.limit(limit)``, refusing a limit below the first question's size (whole questions only)."""
    if not limit:
        return task
    limited = task.limit(limit)
    if len(limited.examples) > limit:
        raise RealLensError(
            f"--limit {limit} keeps no whole question: the first question has {len(limited.examples)} answers "
            f"(examples), and --limit keeps whole questions only; use --limit {len(limited.examples)} or more"
        )
    return limited


def _cmd_hooks(args) -> None:
    _check_device(args)
    model = _load(args)
    _check_fits_context(model, args.prompt, 0, chat=False)
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
    from .locks import output_lock
    from .tasks import load_task

    _check_device(args)
    out = _check_out(args.out, kind="bank")
    with output_lock(out, wait=False):  # a second command writing the same --out fails now, not after its work
        task = _limited(load_task(args.task, data_dir=args.data_dir), args.limit)
        model = _load(args)
        bank = collect_activations(model, task, site=args.site, readout=args.readout, batch_size=args.batch_size)
        bank.save(out)
    print(f"wrote {args.out}: {len(bank.examples)} examples, {len(set(bank.groups))} questions, "
          f"acts {list(bank.acts.shape)} at {bank.meta['hook']} (readout {args.readout})")


def _cmd_generate(args) -> None:
    from .generation import generate_text

    _check_device(args)
    model = _load(args)
    chat = False if args.no_chat else None
    _check_fits_context(model, args.prompt, args.max_new_tokens, chat=chat)
    print(generate_text(model, args.prompt, max_new_tokens=args.max_new_tokens, chat=chat))


def _bank_for(args, model=None):
    from .activations import collect_activations
    from .bank import ActivationBank
    from .tasks import load_task

    if args.bank:
        return ActivationBank.load(args.bank)
    if not getattr(args, "task", None):
        raise RealLensError("give --bank DIR (from `real-lens collect`) or --task T to collect first")
    task = _limited(load_task(args.task, data_dir=args.data_dir), args.limit)
    return collect_activations(model or _load(args), task)


def _recorded_model_name(recorded) -> str | None:
    return recorded.get("name") if isinstance(recorded, dict) else None


def _cmd_score(args) -> None:
    from pathlib import Path

    from .locks import output_lock
    from .plotting import plot_score_heatmap
    from .provenance import check_same_model, with_source
    from .scoring import get_scorer

    scorer = get_scorer(args.method)  # unknown names fail before any loading
    _check_device(args)
    out = _check_out(args.out, kind="scores")
    needs_model = args.method in ("patching", "attribution")
    with output_lock(out, wait=False):
        if args.bank:
            bank = _bank_for(args)
            if args.model is None:  # the bank's metadata names the model it came from
                args.model = _recorded_model_name(bank.meta.get("model"))
            model = _load(args) if needs_model else None
            if model is not None:
                check_same_model(bank.meta.get("model"), model, what=f"the bank {args.bank}",
                                 fix="score it with that model (omit --model), or collect a bank with this one")
        else:
            model = _load(args)
            bank = _bank_for(args, model)
        scores = with_source(scorer(bank, model=model, seed=args.seed, device=args.device), bank)
        if args.bank:
            scores.meta["bank"] = str(Path(args.bank).resolve())
        scores.save(out)
        png = plot_score_heatmap(scores, out / "heatmap.png")
    top = scores.top_k(min(10, scores.n_modules))
    print(f"wrote {args.out} and {png}; top modules by {args.method}: "
          + ", ".join(f"{label} ({float(scores.scores.flatten()[i]):.3f})" for label, i in zip(top.labels, _flat_indices(scores, top))))


def _flat_indices(scores, selection):
    n_heads = scores.scores.shape[1] if scores.scores.ndim == 2 else 1
    return [layer * n_heads + (head or 0) for layer, head in selection.modules]


def _cmd_steer(args) -> None:
    from .bank import ActivationBank
    from .generation import generate_text
    from .provenance import check_same_model, check_scores_bank
    from .scoring import ModuleScores
    from .steering import build_steering

    _check_device(args)
    scores = ModuleScores.load(args.scores)
    bank_dir = args.bank or scores.meta.get("bank")
    if not bank_dir:
        raise RealLensError(f"{args.scores} does not record its bank; pass --bank DIR (the bank it was scored on)")
    bank = ActivationBank.load(bank_dir)
    check_scores_bank(scores, bank, scores_dir=args.scores, bank_dir=bank_dir)
    steering = build_steering(bank, scores.top_k(args.top_k, uniform=args.uniform), alpha=args.alpha)
    if args.model is None:  # steer the model the scores (and their bank) came from
        args.model = _recorded_model_name(scores.meta.get("model")) or _recorded_model_name(bank.meta.get("model"))
    model = _load(args)
    fix = "steer with the model they came from (omit --model), or collect and score again with this one"
    check_same_model(scores.meta.get("model"), model, what=f"the scores in {args.scores}", fix=fix)
    check_same_model(bank.meta.get("model"), model, what=f"the bank {bank_dir}", fix=fix)
    _check_fits_context(model, args.prompt, args.max_new_tokens)
    unsteered = generate_text(model, args.prompt, max_new_tokens=args.max_new_tokens)
    with steering.applied(model):
        steered = generate_text(model, args.prompt, max_new_tokens=args.max_new_tokens)
    print(f"prompt: {args.prompt}\n\n[unsteered]\n{unsteered}\n\n[steered: {scores.method}, top {args.top_k}, "
          f"alpha {args.alpha:g}]\n{steered}")


def _grid(text, cast):
    if text is None:
        return None
    try:
        values = tuple(cast(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise RealLensError(f"could not read the grid {text!r}; expected comma-separated numbers like 8,24") from None
    if cast is float and not all(math.isfinite(v) for v in values):
        raise RealLensError(f"the grid {text!r} holds a value that is not a finite number; expected e.g. 5,15")
    return values


def _check_run_out(out):
    """A run directory: new, empty, or an earlier run's (it holds config.json) — never a folder of other files."""
    path = _check_out(out, kind=None)
    if path.is_dir() and any(path.iterdir()) and not (path / "config.json").exists():
        raise RealLensError(
            f"--out {path} already holds files and no real-lens config.json, so it is not a run directory; "
            "pass a new or empty directory (or an earlier run's, to resume it)"
        )
    return path


def _cmd_run(args) -> None:
    from .experiment import config_for, run_experiment, task_slug

    _check_device(args)
    cfg = config_for(
        "quick" if args.quick else "full" if args.full else None,
        model=args.model, device=args.device, data_dir=args.data_dir,
        methods=_grid(args.methods, str), k_grid=_grid(args.k_grid, int), alpha_grid=_grid(args.alpha_grid, float),
        n_val_questions=args.val_questions, n_test_questions=args.test_questions,
        questions_per_part=args.questions_per_part, task=args.task, select_metric=args.select_metric,
        folds=_grid(args.folds, int), seed=args.seed,
    )
    out = run_experiment(cfg, _check_run_out(args.out if args.out is not None else f"runs/{task_slug(cfg.task)}"))
    print((out / "summary.md").read_text())
    print(f"outputs in {out}")


def _cmd_transfer(args) -> None:
    from .experiment import task_slug
    from .transfer import TransferConfig, load_source_run, run_transfer

    source_cfg, _ = load_source_run(args.source_run)
    tcfg = TransferConfig(args.source_run, args.task, methods=_grid(args.methods, str),
                          n_test_questions=args.test_questions)
    out = args.out if args.out is not None else f"runs/transfer-{task_slug(source_cfg.task)}-to-{task_slug(args.task)}"
    out = run_transfer(tcfg, _check_run_out(out))
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
    except KeyboardInterrupt:
        print("real-lens: interrupted; finished chunks are cached and a rerun resumes", file=sys.stderr)
        return 130
    except Exception as exc:  # the one error boundary: expected failures are one line, bugs a traceback
        message = describe_expected_failure(exc)
        if message is None:
            traceback.print_exc()
            print(f"real-lens {args.command}: this is a bug in real-lens ({type(exc).__name__}), not a mistake of yours; "
                  "please report it with the command you ran and the traceback above", file=sys.stderr)
            return EXIT_BUG
        print(f"real-lens {args.command}: error: {' '.join(message.split())}", file=sys.stderr)  # one line, always
        return EXIT_USAGE
    return 0


_OS_FIXES = {
    errno.ENOSPC: "free some disk space (or write elsewhere) and run again; finished work is kept",
    errno.EDQUOT: "free some of your disk quota (or write elsewhere) and run again; finished work is kept",
    errno.EFBIG: "the file-size limit (ulimit -f) is too small for it; raise the limit or write elsewhere",
    errno.EACCES: "choose a location you can write to (and read from), or fix its permissions",
    errno.EPERM: "choose a location you can write to (and read from), or fix its permissions",
    errno.EROFS: "the file system is read-only; write elsewhere",
    errno.EISDIR: "a directory is where a file was expected; pass a file path",
    errno.ENOTDIR: "part of the path is a file where a directory was expected; pass another path",
    errno.ENOENT: "check that the path exists",
    errno.EEXIST: "something is already there; remove it or choose another path",
    errno.ENOTEMPTY: "the directory is not empty; remove it or choose another path",
    errno.EMFILE: "too many open files; raise the limit (ulimit -n) and run again",
    errno.ENAMETOOLONG: "use a shorter path",
    errno.EIO: "the storage device reported an I/O error; check it, then run again",
}


def describe_expected_failure(exc: BaseException) -> str | None:
    """The one-line message for an expected failure (what was expected, what was found, the fix); None for a bug."""
    if isinstance(exc, RealLensError):
        return str(exc)
    if isinstance(exc, OSError):
        if exc.errno is None:
            return f"{exc}; check the path and the disk, then run again"
        where = " -> ".join(str(f) for f in (exc.filename, exc.filename2) if f is not None)
        fix = _OS_FIXES.get(exc.errno, "check the path and the disk, then run again")
        return f"could not use {where or 'a file'}: {exc.strerror or os.strerror(exc.errno)}; {fix}"
    if isinstance(exc, UnicodeDecodeError):
        return (f"expected UTF-8 text, found byte 0x{exc.object[exc.start]:02x} at offset {exc.start} that is not "
                "UTF-8 in a file being read; save the file as UTF-8")
    if isinstance(exc, json.JSONDecodeError):
        return f"expected a JSON file, found malformed JSON ({exc.msg} at line {exc.lineno}); restore or fix the file"
    if isinstance(exc, pickle.UnpicklingError):
        first = str(exc).splitlines()[0] if str(exc) else ""
        return (f"refused to load a pickle file, which could run code ({first}); real-lens reads safetensors and JSON "
                "only — convert the file to safetensors with a tool you trust")
    if isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError":
        return "ran out of memory; lower --batch-size, use a smaller task (--limit), or a machine with more memory"
    return None


if __name__ == "__main__":
    sys.exit(main())
