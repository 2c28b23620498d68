"""``real-lens``: a thin command line over the library.

Every expected failure — a user mistake (unknown model, task, site; bad flags; missing or
malformed data), an operating-system error (disk full, permission, a path that is a file), a
missing device, a refused pickle checkpoint — prints one line on stderr naming what was
expected, what was found and the fix, and exits with code 2, without a traceback
(:func:`real_lens.errors.describe_expected_failure` is that boundary). Options are checked
before any model is loaded. An unexpected error is a bug: its traceback is shown, with a line
asking to report it (exit code 1). Progress bars and INFO logs go to stderr; ``--quiet``
(before or after the command) turns both off.

:mod:`.parser` builds the parser, :mod:`.commands` holds what each command does.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import traceback

from ..errors import RealLensError, describe_expected_failure
from .parser import EXIT_USAGE, build_parser

EXIT_BUG = 1

__all__ = ["EXIT_BUG", "EXIT_USAGE", "build_parser", "main"]


# Commands that split their work over the processes torchrun starts (real_lens/distributed.py).
DISTRIBUTED_COMMANDS = ("collect", "score", "run", "transfer")


def main(argv: list[str] | None = None) -> int:
    from tqdm.contrib.logging import logging_redirect_tqdm

    from ..distributed import distributed_session, env_world_size

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
                f"only {', '.join(DISTRIBUTED_COMMANDS[:-1])} and {DISTRIBUTED_COMMANDS[-1]} run under torchrun; "
                f"run `real-lens {args.command}` "
                "as one process"
            )
        model_parallel = getattr(args, "device_map", None) is not None or (getattr(args, "n_devices", None) or 1) > 1
        library_bars_off = args.quiet and args.command != "tasks"  # (tasks loads no model: no transformers import)
        with distributed_session(getattr(args, "device", None), model_parallel=model_parallel) as (ranks, device), \
                logging_redirect_tqdm(loggers=[package_logger]), \
                (_library_bars_off() if library_bars_off else contextlib.nullcontext()):  # log lines do not tear bars
            if hasattr(args, "device"):
                args.given_device, args.device = args.device, device  # as typed, and this rank's
            args.rank_device = device
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



@contextlib.contextmanager
def _library_bars_off():
    """``--quiet`` for the bars other libraries draw: transformers' own (checkpoint shards) and its GGUF
    dequantisation loop, which calls tqdm with no way to turn it off (so its ``tqdm`` is swapped for the
    command's duration)."""
    import functools

    from tqdm.auto import tqdm
    from transformers.utils import logging as hf_logging

    try:
        import transformers.modeling_gguf_pytorch_utils as gguf_utils
    except ImportError:  # no GGUF support in this transformers
        gguf_utils = None
    was_enabled = hf_logging.is_progress_bar_enabled()
    previous = getattr(gguf_utils, "tqdm", None)
    hf_logging.disable_progress_bar()
    if previous is not None:
        gguf_utils.tqdm = functools.partial(tqdm, disable=True)
    try:
        yield
    finally:
        if previous is not None:
            gguf_utils.tqdm = previous
        if was_enabled:
            hf_logging.enable_progress_bar()


if __name__ == "__main__":
    sys.exit(main())
