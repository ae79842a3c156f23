"""What both command-line tools do the same way: ``--version``, exit-code epilogs, and a
quiet exit when the reader of their output goes away (``policy-engine ... | head``)."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from typing import NoReturn

from .._version import __version__

__all__ = ["EXIT_BROKEN_PIPE", "add_version_option", "exit_codes_epilog", "run_console"]

#: The exit code after the reader closed the pipe: 128 + SIGPIPE, what a shell reports for a
#: program that SIGPIPE stopped.
EXIT_BROKEN_PIPE = 141


def add_version_option(parser: argparse.ArgumentParser) -> None:
    """``--version``: print ``PROG VERSION`` and exit 0."""
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}",
                        help="print the version and exit")


def exit_codes_epilog(codes: Sequence[tuple[int, str]]) -> str:
    """The ``--help`` epilog listing a command's exit codes."""
    return "exit codes: " + ", ".join(f"{code} {meaning}" for code, meaning in codes)


def run_console(main: Callable[[], int]) -> NoReturn:
    """Run a console script's ``main`` and exit with its code.

    When the reader of standard output has gone (``| head``), the rest of the output is
    dropped and the tool exits with :data:`EXIT_BROKEN_PIPE`, without a traceback.
    """
    reconfigure = getattr(sys.stdout, "reconfigure", None)
    if reconfigure is not None:  # `∩` and non-ASCII paths must not crash a non-UTF-8 terminal
        reconfigure(errors="backslashreplace")
    try:
        code = main()
        sys.stdout.flush()
    except BrokenPipeError:
        _drop_stdout()
        code = EXIT_BROKEN_PIPE
    sys.exit(code)


def _drop_stdout() -> None:
    # What is still buffered would raise again at shutdown; point the descriptor at /dev/null.
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass
