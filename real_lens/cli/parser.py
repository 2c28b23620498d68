"""The ``real-lens`` argument parser: every command, its options and their checks (no work is done here).

Options are checked by argparse types before any model is loaded; ``run`` derives one option per
:class:`~real_lens.experiment.ExperimentConfig` field (:mod:`real_lens.configs`).
"""

from __future__ import annotations

import argparse
import math

from .. import hooks
from .._version import __version__
from ..configs import add_config_options
from ..experiment.config import METHODS
from ..tasks import TASK_DESCRIPTIONS
from . import commands, steering

EXIT_USAGE = 2

# Every task `load_task` knows, for --help (`real-lens tasks` says where each one's data comes from).
TASK_NAMES = tuple(TASK_DESCRIPTIONS)
TASK_HELP = f"one of {', '.join(TASK_NAMES)}"

# Help for `run` options whose ExperimentConfig field has no comment of its own (real_lens.configs
# derives one option per field; a field's trailing comment is its help unless named here).
RUN_HELP = {
    "model": "embedded name, local dir/.gguf, or Hub name",
    "task": TASK_HELP,
    "methods": f"comma-separated, of {','.join(METHODS)} (random = the null) or a registered scorer (e.g. direction-attribution, real-release-utils; real-published needs --published-ranking)",
    "k_grid": "numbers of modules (heads) to keep, comma-separated; several = K chosen on val",
    "kl_grid": "target KL(unsteered||steered) per token, comma-separated: every method steered at each; "
               "'none' = the alpha grid (the paper's protocol)",
    "alpha_grid": "fixed steering strengths alpha, comma-separated (used when --kl-grid none)",
    "site": "where modules are read and steered",
    "readout": "which token's activation is read",
    "device_map": "spread the model over devices: auto, balanced, balanced_low_0, sequential, or a JSON map "
                  "(exclusive with --device)",
    "patching_pairs": "contrast pairs per fold for activation patching",
    "real_epochs": "REAL VQ-AE epochs",
    "real_prior_epochs": "REAL GRU prior epochs",
    "sigma_bank": "where each steering's sigma comes from: scoring (the fold's fit examples, METHOD.md §4) or "
                  "tuning (the REAL release's unlabelled 'Q: {q} A: {a} Q: {other q}' bank; TruthfulQA only)",
    "side_effect_tokens": "tokens per WikiText-2 paragraph for CE/KL",
    "n_boot": "bootstrap resamples for the CIs",
    "batch_size": "examples per forward pass when collecting",
    "device": "torch device (default: the bridge's choice)",
    "data_dir": "data folder (default $REAL_LENS_DATA or ../shared/data)",
}

DIAGNOSE_DESCRIPTION = """\
Does a method lose by its ranking or by curvature? For each method's top-K heads in a fold (from the
run's saved scores) one row: the method's score; the first-order effect of the head's own steering
offset alpha*sigma*u on the fold's contrast pairs' log-prob gap, per unit alpha (one backward pass over
the fold's fitting questions: the direction-attribution scorer's quantity) and its rank among all
heads; the head alone at a small matched dose (--dose-kl, alpha calibrated as the run calibrates),
with the change of the task's metrics on the fold's test questions and, for TruthfulQA, that change's
split into beta_truth (nats to true answers beyond their length) and beta_len (nats per answer token).
Writes RUN_DIR/diagnose/heads.csv and heads.md (printed); every head is a cached cell there, so an
interrupted diagnose resumes and a rerun is instant.

The set's dose-response: resume the run itself over a wider grid of KL targets, e.g.
  real-lens run --config RUN_DIR --kl-grid 0.03,0.06,0.1,0.2,0.3,0.5 --out RUN_DIR
(cells are keyed per target, so the targets it had are reused and only the new ones are computed);
heads.md ends with the set's test metric per method and target from the run's results.csv.
"""

MAX_SEED = 2**32 - 1  # numpy's and torch's seeding both accept [0, 2**32)
MAX_NEW_TOKENS = 1_000_000  # before the model is loaded; then prompt + new tokens must fit its context


class _Parser(argparse.ArgumentParser):
    """argparse, but its errors are one line like every other user mistake."""

    def error(self, message: str):
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _int_in(text: str, expected: str, *, least: int, most: int | None = None) -> int:
    """``text`` as an integer in ``[least, most]``; otherwise argparse's one-line "expected ..., got ..."."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
    if value < least or (most is not None and value > most):
        raise argparse.ArgumentTypeError(f"expected {expected}, got {value}")
    return value


def _positive_int(text: str) -> int:
    return _int_in(text, "a positive integer", least=1)


def _token_count(text: str) -> int:
    value = _positive_int(text)
    if value > MAX_NEW_TOKENS:
        raise argparse.ArgumentTypeError(f"expected at most {MAX_NEW_TOKENS:,} tokens, got {value:,}")
    return value


def _seed(text: str) -> int:
    return _int_in(text, f"an integer seed from 0 to {MAX_SEED}", least=0, most=MAX_SEED)


def _fold(text: str) -> int:
    return _int_in(text, "a fold index (0, 1, ...)", least=0)


def _finite_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def _non_negative_float(text: str) -> float:
    value = _finite_float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a finite number >= 0, got {text!r}")
    return value


def _positive_float(text: str) -> float:
    value = _finite_float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a finite number > 0, got {text!r}")
    return value


UNVERIFIED_HELP = ("read a bank, scores or steering that has no manifest.json (written by an older real-lens, or "
                   "its manifest deleted): nothing then detects damage; refused without this flag")


def build_parser() -> argparse.ArgumentParser:
    # Torch-free names only (real_lens.names, the configuration): --help and --version answer at once.
    from ..experiment.config import ExperimentConfig
    from ..names import DEFAULT_HOOKS_PROMPT, DEFAULT_MODEL, DEVICE_MAP_STRATEGIES, DTYPE_NAMES, READOUTS, STRENGTHS
    from ..tasks.truthfulqa import MC_PROMPT_STYLES

    parser = _Parser(prog="real-lens", description="Find and steer the attention heads that govern a behaviour.",
                     epilog=f"tasks: {', '.join(TASK_NAMES)} (see `real-lens tasks`)")
    parser.add_argument("--version", action="version", version=f"real-lens {__version__}")
    # Global options, accepted before or after the command; after it, SUPPRESS keeps a sub-command
    # from resetting one given before it.
    common = argparse.ArgumentParser(add_help=False)
    for p, default in ((parser, None), (common, argparse.SUPPRESS)):
        p.add_argument("--quiet", action="store_true", default=default or False,
                       help="no progress bars and no INFO logs (errors still print)")
        p.add_argument("--threads", type=_positive_int, default=default, metavar="N",
                       help="CPU threads torch computes with (default: the physical cores, divided among torchrun's "
                            "processes on a node, or $OMP_NUM_THREADS; on a busy shared machine try 1)")
        p.add_argument("--log-file", default=default, metavar="PATH",
                       help="also append the INFO log to this file (even with --quiet)")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    def command(name: str, help: str, **options) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help, parents=[common], **options)

    def model_arg(p, default_help=f"default {DEFAULT_MODEL}"):
        p.add_argument("--model", default=None, help=f"embedded name, local dir/.gguf, or Hub name ({default_help})")
        p.add_argument("--device", default=None,
                       help="torch device (default: the bridge's choice; under torchrun 'cuda' means cuda:LOCAL_RANK)")
        p.add_argument("--dtype", default="float32", choices=DTYPE_NAMES,
                       help="weights' dtype (the embedded GGUF is dequantised to float32 once and cast on load)")
        p.add_argument("--device-map", default=None,
                       help=f"spread the model over devices: {', '.join(DEVICE_MAP_STRATEGIES)}, or a JSON map "
                            "such as '{\"model.layers.0\": 0, \"lm_head\": 1}' (exclusive with --device)")
        p.add_argument("--n-devices", type=_positive_int, default=None,
                       help="spread the model evenly over this many CUDA devices (a 'balanced' device map)")

    def raw_prompt_arg(p):
        p.add_argument("--raw-prompt", "--no-chat", dest="raw_prompt", action="store_true",
                       help="give the model the prompt as typed; by default a model with a chat template (the "
                            "embedded SmolLM2) reads it wrapped in that template as a user turn (banks are "
                            "collected on raw text)")

    def bank_arg(p):
        p.add_argument("--bank-dtype", default="float32", choices=DTYPE_NAMES, help="how the bank stores activations")
        p.add_argument("--chunk-size", type=_positive_int, default=64,
                       help="examples per cached chunk; under torchrun each rank collects whole chunks")

    p = command("hooks", help="every hook point with its shape on a short prompt, grouped by layer")
    model_arg(p)
    p.add_argument("--prompt", default=DEFAULT_HOOKS_PROMPT)
    p.add_argument("--filter", default=None, help="only hook names containing this text")
    p.add_argument("--estimate-only", action="store_true",
                   help="print the memory estimate (from the config, no weights read) and stop")
    p.set_defaults(run=commands.cmd_hooks)

    p = command("collect", help="collect an activation bank for a task")
    model_arg(p)
    p.add_argument("--task", required=True, help=TASK_HELP)
    p.add_argument("--site", default="head_z", choices=hooks.SITES)
    p.add_argument("--readout", default="last", choices=READOUTS)
    p.add_argument("--limit", type=_positive_int, default=None, help="at most N examples, whole questions only")
    p.add_argument("--batch-size", type=_positive_int, default=16)
    bank_arg(p)
    p.add_argument("--data-dir", default=None, help="data folder (default $REAL_LENS_DATA or ../shared/data)")
    p.add_argument("--out", required=True, help="directory to write the bank to")
    p.set_defaults(run=commands.cmd_collect)

    p = command("generate", help="greedy generation (chat template when the model has one; --raw-prompt: none)")
    model_arg(p)
    p.add_argument("--prompt", required=True)
    p.add_argument("--max-new-tokens", type=_token_count, default=64)
    raw_prompt_arg(p)
    p.set_defaults(run=commands.cmd_generate)

    p = command("score", help="score every module of a bank with one method (scores + heatmap PNG)")
    model_arg(p)
    source = p.add_mutually_exclusive_group()
    source.add_argument("--bank", default=None, help="an activation bank made by `real-lens collect`")
    source.add_argument("--task", default=None, help=f"collect first (instead of --bank): {TASK_HELP}")
    p.add_argument("--allow-unverified", action="store_true", help=UNVERIFIED_HELP)
    p.add_argument("--limit", type=_positive_int, default=None)
    bank_arg(p)
    p.add_argument("--data-dir", default=None)
    p.add_argument("--method", default="real",
                   help="real, real-release, iti, patching, attribution, direction-attribution or random")
    p.add_argument("--from-published", default=None, metavar="FILE",
                   help="instead of scoring: read one of the REAL release's ranking files "
                        "(validation/results_dump/head_sorted/*.npy) as method real-published, without executing "
                        "its pickle; --bank or --model checks it is for that model's layers x heads")
    p.add_argument("--seed", type=_seed, default=0)
    p.add_argument("--out", required=True)
    pairs = p.add_argument_group("contrast pairs (patching, attribution, direction-attribution; see real_lens/scoring/pairs.py)")
    pairs.add_argument("--n-pairs", type=_positive_int, default=None,
                       help="questions to pair (default: patching 8, attribution and direction-attribution 64)")
    pairs.add_argument("--n-demos", type=_positive_int, default=None,
                       help="demonstrations before each question (default 3)")
    pairs.add_argument("--min-gap", type=_non_negative_float, default=None,
                       help="drop pairs whose |clean - corrupted| gap is below this many nats (default 0.5)")
    pairs.add_argument("--positions", default=None, choices=("answer", "question"),
                       help="patch at the answer's positions (default) or the whole question as well")
    p.set_defaults(run=commands.cmd_score)

    def steering_args(p, *, saved: bool):
        source = p.add_mutually_exclusive_group(required=True)
        source.add_argument("--scores", help="a scores directory made by `real-lens score`")
        if saved:
            source.add_argument("--steering", help="a steering saved with Steering.save (instead of --scores)")
        p.add_argument("--bank", default=None, help="bank for the directions (default: the one the scores came from)")
        p.add_argument("--allow-unverified", action="store_true", help=UNVERIFIED_HELP)
        p.add_argument("--top-k", type=_positive_int, default=16, help="number of modules (heads) to steer (default 16)")
        dose = p.add_mutually_exclusive_group()
        dose.add_argument("--alpha", type=_finite_float, default=None,
                          help="steering strength (default 15" + ("; with --steering, the saved one)" if saved else ")"))
        dose.add_argument("--kl-target", type=_positive_float, default=None, metavar="KL",
                          help="steer at the α where KL(unsteered || steered) reaches KL nats per token on the main "
                               "job's held-apart WikiText-2 paragraphs (as `real-lens run` calibrates; e.g. 0.1)")
        p.add_argument("--data-dir", default=None, help="data folder for --kl-target's paragraphs "
                                                        "(default $REAL_LENS_DATA or ../shared/data)")
        p.add_argument("--strengths", choices=STRENGTHS, default="method",
                       help="per-module strengths: 'method' (default) = the method's own rule (REAL: score/max, "
                            "ITI/patching/attribution/random: 1); 'score' = score/max; 'uniform' = 1"
                            + ("; --top-k and --strengths apply to --scores only" if saved else ""))

    p = command("steer", help="unsteered and steered answers side by side")
    model_arg(p, "default: the model the scores came from")
    steering_args(p, saved=False)
    p.add_argument("--prompt", required=True)
    p.add_argument("--max-new-tokens", type=_token_count, default=48)
    raw_prompt_arg(p)
    p.set_defaults(run=steering.cmd_steer)

    p = command("inspect", help="what a steering does at the hook level: hooks, norms, steered vs unsteered logits")
    model_arg(p, "default: the model the scores or steering came from")
    steering_args(p, saved=True)
    p.add_argument("--prompt", required=True)
    p.add_argument("--n-tokens", type=_positive_int, default=10, help="next-token candidates to show (default 10)")
    p.add_argument("--positions", choices=("all", "prompt", "generated"), default="all")
    p.add_argument("--prompt-length", type=_positive_int, default=None, help="for --positions prompt/generated")
    p.add_argument("--warn-ratio", type=_positive_float, default=1.0,
                   help="flag modules whose added vector is longer than this times their mean activation norm")
    p.set_defaults(run=steering.cmd_inspect)

    p = command("export", help="write a steering for another tool (lm-evaluation-harness, per-layer vectors)")
    model_arg(p, "default: the model the scores or steering came from")
    steering_args(p, saved=True)
    p.add_argument("--format", choices=("lm-eval", "vectors", "steering"), required=True,
                   help="lm-eval: a .pt file for `lm_eval --model steered ... steer_path=FILE`; vectors: per-layer "
                        "attn_out vectors (safetensors + JSON); steering: real-lens's own Steering.save directory")
    p.add_argument("--out", required=True)
    p.set_defaults(run=steering.cmd_export)

    p = command("compare", help="how much two score sets agree: Spearman over all modules and top-K Jaccard")
    p.add_argument("--scores", action="append", required=True, metavar="DIR_OR_FILE",
                   help="a scores directory (`real-lens score`) or a REAL release ranking file (.npy); give it twice")
    p.add_argument("--k", type=_positive_int, default=48, help="size of the top-K sets compared (default 48, the release's K)")
    p.set_defaults(run=commands.cmd_compare)

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
                                                     "n_test_questions": ["--test-questions"]}, help=RUN_HELP,
                       choices={"site": hooks.SITES, "readout": READOUTS, "mc_prompt": tuple(MC_PROMPT_STYLES),
                                "dtype": DTYPE_NAMES})
    p.add_argument("--out", default=None, help="run directory, reused to resume (default runs/<task>, runs/<task>-<preset> with a preset)")
    p.set_defaults(run=commands.cmd_run)

    p = command("transfer", help="evaluate a finished run's selected heads on another task, without re-selection")
    p.add_argument("--source-run", required=True, help="a finished `real-lens run` directory (e.g. runs/truthfulqa)")
    p.add_argument("--task", required=True, help="the target task (see `real-lens tasks`)")
    p.add_argument("--methods", default=None, help="comma-separated subset of the source run's methods")
    p.add_argument("--test-questions", type=_positive_int, default=None, help="per fold (default: as the source run)")
    p.add_argument("--questions-per-part", type=_positive_int, default=None,
                   help="the target's questions per fold part (default: as the source run); with --test-questions, "
                        "a target run's own values evaluate exactly its test sample")
    p.add_argument("--out", default=None, help="output directory (default runs/transfer-<source>-to-<task>)")
    p.set_defaults(run=commands.cmd_transfer)

    p = command("diagnose", help="per head of each method's top K: its score, first-order steering effect and effect "
                                 "alone at a small dose; the set's dose-response",
                description=DIAGNOSE_DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", metavar="RUN_DIR", help="a `real-lens run` output directory (its config.json and scores/)")
    p.add_argument("--fold", type=_fold, default=None, help="one fold of the run (default: every fold it ran)")
    p.add_argument("--methods", default=None,
                   help="comma-separated methods of the run (default: every method it saved scores of, random included)")
    p.add_argument("--k", type=_positive_int, default=None, help="heads per method (default: the run's largest K)")
    p.add_argument("--dose-kl", type=_positive_float, default=0.02, metavar="KL",
                   help="each head alone is steered at the α where KL(unsteered || steered) reaches KL nats per token on "
                        "the job's calibration paragraphs (default 0.02)")
    p.add_argument("--device", default=None, help="torch device (default: the run's)")
    p.set_defaults(run=commands.cmd_diagnose)

    p = command("tasks", help="list the tasks and where their data comes from")
    p.add_argument("--data-dir", default=None)
    p.set_defaults(run=commands.cmd_tasks)
    return parser


