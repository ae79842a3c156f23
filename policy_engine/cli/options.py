"""The options and helpers that ``policy-engine``'s subcommands (and ``policy-lint``, for
the options both tools take) share: exit codes, ``--var``, ``--policy``/``--plugins``, the
engine those build, and JSON output.

Subcommand modules import this, never :mod:`policy_engine.cli.main`; ``main`` imports the
subcommand modules for its one command table, so the imports go one way.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from typing import Any, NoReturn

from ..engine import Engine
from ..errors import UsageError
from .conventions import exit_codes_epilog

__all__ = ["DEFAULT_POLICY", "ERROR_CODE", "EXIT_DENIED", "EXIT_ERROR", "EXIT_OK", "OneLineParser",
           "add_command", "add_engine_options", "add_plugin_options", "add_variable_option",
           "build_engine", "engine_variables", "load_engine", "parse_pairs", "print_json"]

EXIT_OK = 0
EXIT_DENIED = 1  # also: `diff` found changes, `fmt --check` found files to reformat
EXIT_ERROR = 2

DEFAULT_POLICY = "policies"

#: The exit codes every subcommand shares, for the ``--help`` epilogs.
ERROR_CODE = (EXIT_ERROR, "usage or input error (one line on stderr)")


class OneLineParser(argparse.ArgumentParser):
    """An argument parser whose usage errors are one line (and exit 2)."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_ERROR, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def parse_pairs(pairs: Sequence[str] | None, what: str, *, typed: bool = True) -> dict[str, Any]:
    """``KEY=VALUE`` arguments to a dict; with ``typed``, a value that reads as JSON (``3``,
    ``true``) is typed, otherwise every value stays a string."""
    result: dict[str, Any] = {}
    for pair in pairs or ():
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise UsageError(f"{what} `{pair}` is not KEY=VALUE")
        result[key] = value
        if typed:
            try:
                result[key] = json.loads(value)
            except ValueError:
                pass
    return result


def add_plugin_options(parser: argparse.ArgumentParser) -> None:
    """``--plugins`` and ``--var``: what every engine is built against."""
    parser.add_argument("--plugins", action="append", metavar="DIR",
                        help="a plugins directory or one plugin's directory (repeatable)")
    add_variable_option(parser)


def add_variable_option(parser: argparse.ArgumentParser, *, defaults: str = "") -> None:
    """``--var KEY=VALUE`` (alias ``--variables``): the same option in both tools, read with
    :func:`engine_variables`. ``defaults`` says which variables exist without it."""
    more = f"; defaults: {defaults}" if defaults else ""
    parser.add_argument("--var", "--variables", dest="var", action="append", metavar="KEY=VALUE",
                        help="a template variable for patterns, such as data_dir=/var/lib/app "
                             f"(repeatable; alias --variables{more})")


def add_command(commands: Any, name: str, summary: str, description: str,
                codes: Sequence[tuple[int, str]]) -> argparse.ArgumentParser:
    """A subcommand with a one-line ``summary`` (in the command list), a ``description`` and
    its exit codes (in its ``--help``)."""
    parser: argparse.ArgumentParser = commands.add_parser(
        name, help=summary, description=description,
        epilog=exit_codes_epilog([*codes, ERROR_CODE]))
    return parser


def add_engine_options(parser: argparse.ArgumentParser) -> None:
    """The options every subcommand that builds an engine takes."""
    parser.add_argument("--policy", action="append", metavar="PATH",
                        help=f"a .policy file or directory (repeatable; default: {DEFAULT_POLICY}/), "
                             "or one bundle file")
    parser.add_argument("--public-key", metavar="KEY",
                        help="verify the bundle with this NAME.pub (or a directory of them)")
    parser.add_argument("--insecure", action="store_true",
                        help="accept an http(s):// policy source without a public key")
    add_plugin_options(parser)


def engine_variables(args: argparse.Namespace) -> dict[str, str]:
    """The ``--var`` values (strings, whatever they look like)."""
    return parse_pairs(args.var, "variable", typed=False)


def load_engine(args: argparse.Namespace, policy: Sequence[str]) -> Engine:
    """An engine for ``policy`` with the common ``--plugins`` and ``--var`` options."""
    return Engine.load(list(policy), plugins=args.plugins or None, variables=engine_variables(args),
                       public_key=getattr(args, "public_key", None),
                       insecure=getattr(args, "insecure", False))


def build_engine(args: argparse.Namespace) -> Engine:
    """An engine from the common options."""
    return load_engine(args, args.policy or [DEFAULT_POLICY])


def print_json(data: Any) -> None:
    """Print ``data`` as indented, key-sorted JSON."""
    print(json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False))
