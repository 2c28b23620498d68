"""``real-lens``: a thin command line over the library.

Every expected failure — a user mistake (unknown model, task, site; bad flags; missing or
malformed data), an operating-system error (disk full, permission, a path that is a file), a
missing device, a refused pickle checkpoint — prints one line on stderr naming what was
expected, what was found and the fix, and exits with code 2, without a traceback
(:func:`real_lens.errors.describe_expected_failure` is that boundary). Options are checked
before any model is loaded. An unexpected error is a bug: its traceback is shown, with a line
asking to report it (exit code 1). Progress bars and INFO logs go to stderr; ``--quiet``
(before or after the command) turns both off; ``--log-file PATH`` appends the INFO log to a file
too; ``--threads N`` sets torch's CPU threads (default: the physical cores, :mod:`real_lens.threads`).

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

__all__ = ["EXIT_BUG", "EXIT_USAGE", "build_parser", "entry", "main"]


# Commands that split their work over the processes torchrun starts (real_lens/distributed.py).
DISTRIBUTED_COMMANDS = ("collect", "score", "run", "transfer")


# Commands that compute nothing with torch (--threads does not apply; torch is not even imported).
TORCH_FREE_COMMANDS = ("tasks",)


def _world_size() -> int:
    """``WORLD_SIZE`` as :func:`real_lens.distributed.env_world_size` reads it, without importing torch
    (``--help``, ``--version`` and ``tasks`` stay fast)."""
    return int(os.environ.get("WORLD_SIZE", "1") or 1)


def entry() -> None:
    """The ``real-lens`` script and ``python -m real_lens``: :func:`main`, then exit with its code.

    Under torchrun (``WORLD_SIZE`` > 1) a rank leaves with ``os._exit`` once its output is flushed. A
    rank that had finished its command (outputs written, its process group destroyed after a barrier)
    sometimes aborted afterwards, in the interpreter's teardown: "terminate called without an active
    exception", SIGABRT, and no Python frame on the stack (``PYTHONFAULTHANDLER``), i.e. a C++ thread
    destroyed while still joinable. We measured it in 2 of 46 two-rank launches of the tests' quick run
    on this 2-core CPU kept busy (0 of 40 with this exit), and torchrun then reported the whole job as
    failed. ``os._exit`` skips those C++ destructors; it also skips ``atexit`` handlers, and real-lens
    registers none (its temporary folders are context managers, closed by now).
    """
    code = main()
    if _world_size() > 1:
        sys.stdout.flush()
        sys.stderr.flush()
        logging.shutdown()
        os._exit(code)
    sys.exit(code)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)  # before torch is imported: --help and --version stay fast
    world_size = _world_size()
    where = f" (rank {os.environ.get('RANK', '?')} of {world_size})" if world_size > 1 else ""
    # The library logs under "real_lens"; the CLI shows INFO on stderr for the command's duration
    # (WARNING with --quiet) and, with --log-file, INFO in that file too.
    package_logger = logging.getLogger("real_lens")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("real-lens: %(message)s"))
    handler.setLevel(logging.WARNING if args.quiet else logging.INFO)
    handlers = [handler]
    previous_level = package_logger.level
    package_logger.setLevel(logging.INFO)
    try:
        if args.log_file is not None:
            file_handler = logging.FileHandler(args.log_file, encoding="utf-8")
            file_handler.setFormatter(logging.Formatter(f"%(asctime)s {args.command}{where}: %(message)s"))
            handlers.append(file_handler)
    except OSError as exc:
        print(f"real-lens {args.command}: error: --log-file {args.log_file} cannot be opened for writing "
              f"({exc.strerror or exc}); pass a writable file path", file=sys.stderr)
        package_logger.setLevel(previous_level)
        return EXIT_USAGE
    for h in handlers:
        package_logger.addHandler(h)
    try:
        return _run_command(args, package_logger, handler, where)
    finally:
        for h in handlers:
            package_logger.removeHandler(h)
            if h is not handler:
                h.close()
        package_logger.setLevel(previous_level)


def _run_command(args, package_logger, stderr_handler, where: str) -> int:
    from tqdm.contrib.logging import logging_redirect_tqdm

    from ..distributed import distributed_session, env_world_size

    try:
        if args.command not in TORCH_FREE_COMMANDS:
            from ..threads import set_threads

            set_threads(args.threads, state=False)  # stated where a long command starts (threads.state_threads)
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
            for h in package_logger.handlers:  # tqdm's stand-in for the stderr handler keeps its level (--quiet)
                if h is not stderr_handler and not isinstance(h, logging.FileHandler):
                    h.setLevel(stderr_handler.level)
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
