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
        p.add_argument("--model", default=DEFAULT_MODEL, help=f"embedded name, local dir/.gguf, or Hub name (default {DEFAULT_MODEL})")
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

    p = sub.add_parser("tasks", help="list the tasks and where their data comes from")
    p.add_argument("--data-dir", default=None)
    p.set_defaults(run=_cmd_tasks)
    return parser


def _load(args):
    from .models import load_model

    return load_model(args.model, device=args.device)


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
    print(f"{args.model}: {model.cfg.n_layers} layers, {model.cfg.n_heads} heads, d_head {model.cfg.d_head}, "
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


def _cmd_tasks(args) -> None:
    from .tasks import TASK_DESCRIPTIONS
    from .tasks.data import resolve_data_dir

    root = resolve_data_dir(args.data_dir)
    where = str(root) if root else "the Hugging Face Hub (no local data folder found)"
    for name, description in TASK_DESCRIPTIONS.items():
        print(f"{name:16s} {description}")
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
