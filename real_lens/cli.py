"""``real-lens``: a thin command line over the library.

Every expected failure — a user mistake (unknown model, task, site; bad flags; missing or
malformed data), an operating-system error (disk full, permission, a path that is a file), a
missing device, a refused pickle checkpoint — prints one line on stderr naming what was
expected, what was found and the fix, and exits with code 2, without a traceback. Options are
checked before any model is loaded. An unexpected error is a bug: its traceback is shown, with
a line asking to report it (exit code 1). Progress bars and INFO logs go to stderr; ``--quiet``
(before or after the command) turns both off.
"""

from __future__ import annotations

import argparse
import contextlib
import inspect
import errno
import json
import logging
import math
import os
import pickle
import sys
import traceback

from . import hooks
from .configs import add_config_options, read_overrides
from .errors import RealLensError

EXIT_USAGE = 2
logger = logging.getLogger(__name__)

# Help for `run` options whose ExperimentConfig field has no comment of its own (real_lens.configs
# derives one option per field; a field's trailing comment is its help unless named here).
RUN_HELP = {
    "model": "embedded name, local dir/.gguf, or Hub name",
    "task": "a task from `real-lens tasks`",
    "methods": "comma-separated subset of real,real-release,iti,patching,attribution,random (random = the null)",
    "k_grid": "numbers of modules (heads) to keep, comma-separated; several = K chosen on val",
    "kl_grid": "target KL(unsteered||steered) per token, comma-separated: every method steered at each; "
               "'none' = the alpha grid (the paper's protocol)",
    "alpha_grid": "fixed steering strengths alpha, comma-separated (used when --kl-grid none)",
    "site": f"where modules are read and steered: {', '.join(hooks.SITES)}",
    "readout": "which token's activation is read: last or mean_answer",
    "patching_pairs": "contrast pairs per fold for activation patching",
    "real_epochs": "REAL VQ-AE epochs",
    "real_prior_epochs": "REAL GRU prior epochs",
    "side_effect_tokens": "tokens per WikiText-2 paragraph for CE/KL",
    "n_boot": "bootstrap resamples for the CIs",
    "batch_size": "examples per forward pass when collecting",
    "device": "torch device (default: the bridge's choice)",
    "data_dir": "data folder (default $REAL_LENS_DATA or ../shared/data)",
}

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
    from .experiment import ExperimentConfig
    from .inspection import DEFAULT_HOOKS_PROMPT
    from .models import DEFAULT_MODEL, DEVICE_MAP_STRATEGIES, DTYPES
    from .scoring import STRENGTHS

    parser = _Parser(prog="real-lens", description="Find and steer the attention heads that govern a behaviour.")
    parser.add_argument("--quiet", action="store_true", help="no progress bars and no INFO logs (errors still print)")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    # --quiet is also accepted after the command; SUPPRESS keeps a sub-command from resetting one given before it.
    quiet = argparse.ArgumentParser(add_help=False)
    quiet.add_argument("--quiet", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)

    def command(name: str, help: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help, parents=[quiet])

    def model_arg(p, default_help=f"default {DEFAULT_MODEL}"):
        p.add_argument("--model", default=None, help=f"embedded name, local dir/.gguf, or Hub name ({default_help})")
        p.add_argument("--device", default=None,
                       help="torch device (default: the bridge's choice; under torchrun 'cuda' means cuda:LOCAL_RANK)")
        p.add_argument("--dtype", default="float32", choices=tuple(DTYPES),
                       help="weights' dtype (the embedded GGUF is dequantised to float32 once and cast on load)")
        p.add_argument("--device-map", default=None,
                       help=f"spread the model over devices: {', '.join(DEVICE_MAP_STRATEGIES)}, or a JSON map "
                            "such as '{\"model.layers.0\": 0, \"lm_head\": 1}' (exclusive with --device)")
        p.add_argument("--n-devices", type=_positive_int, default=None,
                       help="spread the model evenly over this many CUDA devices (a 'balanced' device map)")

    def bank_arg(p):
        p.add_argument("--bank-dtype", default="float32", choices=tuple(DTYPES), help="how the bank stores activations")
        p.add_argument("--chunk-size", type=_positive_int, default=64,
                       help="examples per cached chunk; under torchrun each rank collects whole chunks")

    p = command("hooks", help="every hook point with its shape on a short prompt, grouped by layer")
    model_arg(p)
    p.add_argument("--prompt", default=DEFAULT_HOOKS_PROMPT)
    p.add_argument("--filter", default=None, help="only hook names containing this text")
    p.add_argument("--estimate-only", action="store_true",
                   help="print the memory estimate (from the config, no weights read) and stop")
    p.set_defaults(run=_cmd_hooks)

    p = command("collect", help="collect an activation bank for a task")
    model_arg(p)
    p.add_argument("--task", required=True, help="truthfulqa, or file:<path>")
    p.add_argument("--site", default="head_z", choices=hooks.SITES)
    p.add_argument("--readout", default="last", choices=READOUTS)
    p.add_argument("--limit", type=_positive_int, default=None, help="at most N examples, whole questions only")
    p.add_argument("--batch-size", type=_positive_int, default=16)
    bank_arg(p)
    p.add_argument("--data-dir", default=None, help="data folder (default $REAL_LENS_DATA or ../shared/data)")
    p.add_argument("--out", required=True, help="directory to write the bank to")
    p.set_defaults(run=_cmd_collect)

    p = command("generate", help="greedy generation (chat template when the model has one)")
    model_arg(p)
    p.add_argument("--prompt", required=True)
    p.add_argument("--max-new-tokens", type=_token_count, default=64)
    p.add_argument("--no-chat", action="store_true", help="do not apply the chat template")
    p.set_defaults(run=_cmd_generate)

    p = command("score", help="score every module of a bank with one method (scores + heatmap PNG)")
    model_arg(p)
    p.add_argument("--bank", default=None, help="an activation bank made by `real-lens collect`")
    p.add_argument("--task", default=None, help="collect first: truthfulqa, or file:<path>")
    p.add_argument("--limit", type=_positive_int, default=None)
    bank_arg(p)
    p.add_argument("--data-dir", default=None)
    p.add_argument("--method", default="real", help="real, real-release, iti, patching, attribution or random")
    p.add_argument("--seed", type=_seed, default=0)
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

    def steering_args(p, *, saved: bool):
        source = p.add_mutually_exclusive_group(required=True)
        source.add_argument("--scores", help="a scores directory made by `real-lens score`")
        if saved:
            source.add_argument("--steering", help="a steering saved with Steering.save (instead of --scores)")
        p.add_argument("--bank", default=None, help="bank for the directions (default: the one the scores came from)")
        p.add_argument("--top-k", type=_positive_int, default=16, help="number of modules (heads) to steer (default 16)")
        p.add_argument("--alpha", type=_finite_float, default=None,
                       help="steering strength (default 15" + ("; with --steering, the saved one)" if saved else ")"))
        p.add_argument("--strengths", choices=STRENGTHS, default="method",
                       help="per-module strengths: 'method' (default) = the method's own rule (REAL: score/max, "
                            "ITI/patching/attribution/random: 1); 'score' = score/max; 'uniform' = 1"
                            + ("; --top-k and --strengths apply to --scores only" if saved else ""))

    p = command("steer", help="unsteered and steered answers side by side")
    model_arg(p, "default: the model the scores came from")
    steering_args(p, saved=False)
    p.add_argument("--prompt", required=True)
    p.add_argument("--max-new-tokens", type=_token_count, default=48)
    p.set_defaults(run=_cmd_steer)

    p = command("inspect", help="what a steering does at the hook level: hooks, norms, steered vs unsteered logits")
    model_arg(p, "default: the model the scores or steering came from")
    steering_args(p, saved=True)
    p.add_argument("--prompt", required=True)
    p.add_argument("--n-tokens", type=_positive_int, default=10, help="next-token candidates to show (default 10)")
    p.add_argument("--positions", choices=("all", "prompt", "generated"), default="all")
    p.add_argument("--prompt-length", type=_positive_int, default=None, help="for --positions prompt/generated")
    p.add_argument("--warn-ratio", type=float, default=1.0,
                   help="flag modules whose added vector is longer than this times their mean activation norm")
    p.set_defaults(run=_cmd_inspect)

    p = command("export", help="write a steering for another tool (lm-evaluation-harness, per-layer vectors)")
    model_arg(p, "default: the model the scores or steering came from")
    steering_args(p, saved=True)
    p.add_argument("--format", choices=("lm-eval", "vectors", "steering"), required=True,
                   help="lm-eval: a .pt file for `lm_eval --model steered ... steer_path=FILE`; vectors: per-layer "
                        "attn_out vectors (safetensors + JSON); steering: real-lens's own Steering.save directory")
    p.add_argument("--out", required=True)
    p.set_defaults(run=_cmd_export)

    p = command("run", help="the main job: folds x scorers x K x dose on a task (default TruthfulQA)")
    p.add_argument("--config", default=None,
                   help="rerun a saved configuration: a run's config.json or its directory; options given too override it")
    preset = p.add_mutually_exclusive_group()
    preset.add_argument("--quick", action="store_true", help="a few questions and grid points (tests, CI)")
    preset.add_argument("--larger", action="store_true",
                        help="the default fitting, every test question (160 per fold) and a 5-draw null (~100 min on 2 CPU cores)")
    preset.add_argument("--full", action="store_true", help="the paper's protocol at full size (for a GPU)")
    # One option per ExperimentConfig field (real_lens.configs): --k-grid 8,24, --questions-per-part none, ...
    add_config_options(p, ExperimentConfig, aliases={"n_val_questions": ["--val-questions"],
                                                     "n_test_questions": ["--test-questions"]}, help=RUN_HELP)
    p.add_argument("--out", default=None, help="run directory, reused to resume (default runs/<task>, runs/<task>-<preset> with a preset)")
    p.set_defaults(run=_cmd_run)

    p = command("transfer", help="evaluate a finished run's selected heads on another task, without re-selection")
    p.add_argument("--source-run", required=True, help="a finished `real-lens run` directory (e.g. runs/truthfulqa)")
    p.add_argument("--task", required=True, help="the target task (see `real-lens tasks`)")
    p.add_argument("--methods", default=None, help="comma-separated subset of the source run's methods")
    p.add_argument("--test-questions", type=_positive_int, default=None, help="per fold (default: as the source run)")
    p.add_argument("--out", default=None, help="output directory (default runs/transfer-<source>-to-<task>)")
    p.set_defaults(run=_cmd_transfer)

    p = command("tasks", help="list the tasks and where their data comes from")
    p.add_argument("--data-dir", default=None)
    p.set_defaults(run=_cmd_tasks)
    return parser


def _load(args):
    from .models import DEFAULT_MODEL, load_model

    return load_model(args.model or DEFAULT_MODEL, **_model_options(args))


def _model_options(args) -> dict:
    """load_model's placement options from the flags, checked (so mistakes surface before any work)."""
    from .models import parse_device_map, resolve_placement

    options = dict(device=args.device, dtype=args.dtype, device_map=parse_device_map(args.device_map),
                   n_devices=args.n_devices)
    resolve_placement(device=options["device"], device_map=options["device_map"], n_devices=options["n_devices"])
    return options


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
    from .inspection import list_hooks
    from .models import DEFAULT_MODEL, estimate_memory, load_model

    _check_device(args)
    options = _model_options(args)
    print(estimate_memory(args.model or DEFAULT_MODEL).describe(load_dtype=args.dtype), flush=True)
    if args.estimate_only:
        return
    print()
    model = load_model(args.model or DEFAULT_MODEL, **options)
    _check_fits_context(model, args.prompt, 0, chat=False)
    print(list_hooks(model, prompt=args.prompt, contains=args.filter))


def _cmd_collect(args) -> None:
    from .activations import collect_activations
    from .locks import output_lock
    from .tasks import load_task

    _check_device(args)
    out = _check_out(args.out, kind="bank") if args.ranks.is_main else None
    # A second command writing the same --out fails now, not after its work (rank 0 writes under torchrun).
    with output_lock(out, wait=False) if out is not None else contextlib.nullcontext():
        task = _limited(load_task(args.task, data_dir=args.data_dir), args.limit)
        model = _load(args)
        bank = collect_activations(
            model, task, site=args.site, readout=args.readout, batch_size=args.batch_size,
            chunk_size=args.chunk_size, dtype=args.bank_dtype, shard=True, progress=args.ranks.is_main and not args.quiet,
        )
        if args.ranks.is_main:
            bank.save(out)
    if args.ranks.is_main:
        print(f"wrote {args.out}: {len(bank.examples)} examples, {len(set(bank.groups))} questions, "
              f"acts {list(bank.acts.shape)} {args.bank_dtype} at {bank.meta['hook']} (readout {args.readout})"
              + _ranks_note(args.ranks))


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
    return collect_activations(
        model or _load(args), task, chunk_size=args.chunk_size, dtype=args.bank_dtype, shard=True,
        progress=args.ranks.is_main and not args.quiet,
    )


def _ranks_note(ranks) -> str:
    return f" ({ranks.world_size} processes)" if ranks.is_distributed else ""


def _cmd_score(args) -> None:
    from pathlib import Path

    from .distributed import is_sharded, score_distributed
    from .locks import output_lock
    from .plotting import plot_score_heatmap
    from .provenance import check_same_model, with_source
    from .scoring import get_scorer

    is_sharded(args.method, args.ranks)  # unknown or unshardable methods fail before any loading
    _check_device(args)
    out = _check_out(args.out, kind="scores") if args.ranks.is_main else None
    needs_model = args.method in ("patching", "attribution")
    with output_lock(out, wait=False) if out is not None else contextlib.nullcontext():
        if args.bank:
            bank = _bank_for(args)
            if args.model is None:  # the bank's metadata names the model it came from
                args.model = _recorded_model_name(bank.meta)
            model = _load(args) if needs_model else None
            if model is not None:
                check_same_model(bank.meta.get("model"), model, what=f"the bank {args.bank}",
                                 fix="score it with that model (omit --model), or collect a bank with this one")
        else:
            model = _load(args)
            bank = _bank_for(args, model)
        extra = {"progress": args.ranks.is_main and not args.quiet} \
            if "progress" in inspect.signature(get_scorer(args.method)).parameters else {}
        scores = score_distributed(args.method, bank, model=model, seed=args.seed, device=args.device,
                                   ranks=args.ranks, **extra, **_pair_options(args))
        if not args.ranks.is_main:
            return
        scores = with_source(scores, bank)
        if args.bank:
            scores.meta["bank"] = str(Path(args.bank).resolve())
        scores.save(out)
        png = plot_score_heatmap(scores, out / "heatmap.png")
    flat, n_heads = scores.scores.flatten(), scores.scores.shape[1] if scores.scores.ndim == 2 else 1
    top = scores.ranking()[:10]
    print(f"wrote {args.out} and {png}{_ranks_note(args.ranks)}; top modules by {args.method}: "
          + ", ".join(f"{hooks.module_label(layer, head)} ({float(flat[layer * n_heads + (head or 0)]):.3f})"
                      for layer, head in top))
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


def _recorded_model_name(meta: dict) -> str | None:
    """The name of the model a bank/scores/steering came from, from its metadata (None if unrecorded)."""
    recorded = meta.get("model")
    return recorded.get("name") if isinstance(recorded, dict) else recorded


def _steering_for(args):
    """``(steering, model)`` from --scores (+ bank) or --steering; the model is checked before any forward pass.

    The model is --model, else the one the scores/steering came from (so a steering never meets
    a model it was not built for by accident)."""
    from .bank import ActivationBank
    from .provenance import check_scores_bank
    from .scoring import ModuleScores
    from .steering import Steering, build_steering

    _check_device(args)
    if getattr(args, "steering", None):
        steering = Steering.load(args.steering)
        if args.alpha is not None:
            steering = steering.with_alpha(args.alpha)
        recorded = _recorded_model_name(steering.meta)
    else:
        scores = ModuleScores.load(args.scores)
        bank_dir = args.bank or scores.meta.get("bank")
        if not bank_dir:
            raise RealLensError(f"{args.scores} does not record its bank; pass --bank DIR (the bank it was scored on)")
        bank = ActivationBank.load(bank_dir)
        check_scores_bank(scores, bank, scores_dir=args.scores, bank_dir=bank_dir)
        steering = build_steering(bank, scores.select(min(args.top_k, scores.n_modules), strengths=args.strengths),
                                  alpha=15.0 if args.alpha is None else args.alpha)
        recorded = _recorded_model_name(scores.meta) or _recorded_model_name(bank.meta)
    from_metadata = args.model is None and recorded
    if from_metadata:
        args.model = recorded
    model = _load(args)
    steering.check_model(model)
    if from_metadata:
        logger.info("model %s (recorded in the %s; --model overrides)", recorded,
                    "steering" if getattr(args, "steering", None) else "scores")
    return steering, model


def _cmd_steer(args) -> None:
    from .generation import generate_text

    steering, model = _steering_for(args)
    _check_fits_context(model, args.prompt, args.max_new_tokens)
    unsteered = generate_text(model, args.prompt, max_new_tokens=args.max_new_tokens)
    with steering.applied(model):
        steered = generate_text(model, args.prompt, max_new_tokens=args.max_new_tokens)
    strengths = ", ".join(f"{s:.2f}" for s in steering.strengths.tolist()[:8])
    print(f"prompt: {args.prompt}\n\n[unsteered]\n{unsteered}\n\n[steered: {steering.method}, top {len(steering.modules)}, "
          f"alpha {steering.alpha:g}, strengths {args.strengths} ({strengths}{' ...' if len(steering.modules) > 8 else ''})]"
          f"\n{steered}")


def _cmd_inspect(args) -> None:
    import warnings

    from .inspection import LargeSteeringWarning, compare_logits

    steering, model = _steering_for(args)
    with warnings.catch_warnings():  # the description prints its own warning line
        warnings.simplefilter("ignore", LargeSteeringWarning)
        print(steering.describe(model, warn_ratio=args.warn_ratio))
    print()
    print(compare_logits(model, args.prompt, steering, top_k=args.n_tokens, positions=args.positions,
                         prompt_length=args.prompt_length))


def _cmd_export(args) -> None:
    from pathlib import Path

    from .export import save_lm_eval_steering, to_layer_vectors
    from .io import write_json, write_tensors

    steering, model = _steering_for(args)
    out = Path(args.out)
    if args.format == "lm-eval":
        save_lm_eval_steering(steering, model, out)
        print(f"wrote {out}; evaluate any lm-evaluation-harness task under this steering with\n"
              f"  lm_eval --model steered --model_args pretrained=<the Hugging Face model>,steer_path={out} --tasks <task>")
    elif args.format == "vectors":
        vectors = to_layer_vectors(steering, model)
        write_tensors(out / "vectors.safetensors", {f"layer.{layer}": v for layer, v in vectors.vectors.items()})
        write_json(out / "vectors.json", {"site": vectors.site, "hook": hooks.hook_template(vectors.site),
                                          "layers": sorted(vectors.vectors), "alpha": steering.alpha,
                                          "method": steering.method, "meta": steering.meta})
        print(f"wrote {out}: {len(vectors.vectors)} per-layer vectors at {hooks.hook_template(vectors.site)}")
    else:
        steering.save(out)
        print(f"wrote {out}: {len(steering.modules)} modules at {steering.site}, alpha {steering.alpha:g}")


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
    from .configs import load_config
    from .experiment import PRESETS, ExperimentConfig, run_experiment, task_slug

    _check_device(args)
    preset = "quick" if args.quick else "larger" if args.larger else "full" if args.full else None
    if args.config and preset:
        raise RealLensError(f"--config and --{preset} both set the whole configuration; give one (options may "
                            "follow --config to change single fields)")
    base = _field_values(load_config(args.config)) if args.config else dict(PRESETS.get(preset, {}))
    cfg = ExperimentConfig(**{**base, **read_overrides(args, ExperimentConfig)})
    default_out = f"runs/{task_slug(cfg.task)}" + (f"-{preset}" if preset else "")  # a preset never meets the default run
    out = run_experiment(cfg, _check_run_out(args.out if args.out is not None else default_out), progress=not args.quiet)
    print((out / "summary.md").read_text())
    print(f"outputs in {out}")


def _field_values(cfg) -> dict:
    """A dataclass's field values, not recursed into (``dataclasses.asdict`` would turn nested configs into dicts)."""
    import dataclasses

    return {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)}


def _cmd_transfer(args) -> None:
    from .experiment import task_slug
    from .transfer import TransferConfig, load_source_run, run_transfer

    source_cfg, _ = load_source_run(args.source_run)
    tcfg = TransferConfig(args.source_run, args.task, methods=_grid(args.methods, str),
                          n_test_questions=args.test_questions)
    out = args.out if args.out is not None else f"runs/transfer-{task_slug(source_cfg.task)}-to-{task_slug(args.task)}"
    out = run_transfer(tcfg, _check_run_out(out), progress=not args.quiet)
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


# Commands that split their work over the processes torchrun starts (real_lens/distributed.py).
DISTRIBUTED_COMMANDS = ("collect", "score")


def main(argv: list[str] | None = None) -> int:
    from tqdm.contrib.logging import logging_redirect_tqdm

    from .distributed import distributed_session, env_world_size

    args = build_parser().parse_args(argv)
    where = f" (rank {os.environ.get('RANK', '?')} of {env_world_size()})" if env_world_size() > 1 else ""
    # The library logs under "real_lens"; the CLI shows INFO on stderr for the command's duration.
    package_logger = logging.getLogger("real_lens")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("real-lens: %(message)s"))
    previous_level = package_logger.level
    package_logger.addHandler(handler)
    package_logger.setLevel(logging.WARNING if args.quiet else logging.INFO)
    try:
        if env_world_size() > 1 and args.command not in DISTRIBUTED_COMMANDS:
            raise RealLensError(
                f"only {' and '.join(DISTRIBUTED_COMMANDS)} run under torchrun; run `real-lens {args.command}` "
                "as one process"
            )
        model_parallel = getattr(args, "device_map", None) is not None or (getattr(args, "n_devices", None) or 1) > 1
        with distributed_session(getattr(args, "device", None), model_parallel=model_parallel) as (ranks, device), \
                logging_redirect_tqdm(loggers=[package_logger]):  # log lines do not tear progress bars
            if hasattr(args, "device"):
                args.device = device
            args.ranks = ranks
            args.run(args)
    except KeyboardInterrupt:
        print("real-lens: interrupted; finished chunks are cached and a rerun resumes", file=sys.stderr)
        return 130
    except Exception as exc:  # the one error boundary: expected failures are one line, bugs a traceback
        message = describe_expected_failure(exc)
        if message is None:
            traceback.print_exc()
            print(f"real-lens {args.command}{where}: this is a bug in real-lens ({type(exc).__name__}), not a mistake "
                  "of yours; please report it with the command you ran and the traceback above", file=sys.stderr)
            return EXIT_BUG
        print(f"real-lens {args.command}{where}: error: {' '.join(message.split())}", file=sys.stderr)  # one line
        return EXIT_USAGE
    finally:
        package_logger.removeHandler(handler)
        package_logger.setLevel(previous_level)
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
