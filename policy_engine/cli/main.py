"""``policy-engine``: ask a policy set questions and run plugins under it.

A thin layer over the library: every subcommand parses its arguments, calls the library,
and hands the result to a formatter. ``main(argv) -> int`` never raises for a user mistake:
errors are one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from typing import Any

from ..engine import Engine
from ..errors import PolicyEngineError

EXIT_OK = 0
EXIT_DENIED = 1
EXIT_ERROR = 2

DEFAULT_POLICY = "policies"


def parse_pairs(pairs: Sequence[str] | None, what: str) -> dict[str, Any]:
    """``KEY=VALUE`` arguments to a dict; a value that reads as JSON (``3``, ``true``) is typed."""
    result: dict[str, Any] = {}
    for pair in pairs or ():
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise PolicyEngineError(f"{what} `{pair}` is not KEY=VALUE")
        try:
            result[key] = json.loads(value)
        except ValueError:
            result[key] = value
    return result


def add_engine_options(parser: argparse.ArgumentParser) -> None:
    """The options every subcommand that builds an engine takes."""
    parser.add_argument("--policy", action="append", metavar="PATH",
                        help=f"a .policy file or directory (repeatable; default: {DEFAULT_POLICY}/)")
    parser.add_argument("--plugins", action="append", metavar="DIR",
                        help="a plugins directory or one plugin's directory (repeatable)")
    parser.add_argument("--var", action="append", metavar="KEY=VALUE",
                        help="a template variable for patterns, such as data_dir=/var/lib/app")


def build_engine(args: argparse.Namespace) -> Engine:
    """An engine from the common options."""
    variables = {k: str(v) for k, v in parse_pairs(args.var, "variable").items()}
    return Engine.load(args.policy or [DEFAULT_POLICY], plugins=args.plugins or None, variables=variables)


def cmd_decide(args: argparse.Namespace) -> int:
    """``decide PLUGIN ACTION [RESOURCE]``: print the decision and its explanation."""
    engine = build_engine(args)
    context = parse_pairs(args.context, "context")
    decision = engine.decide(args.plugin, args.action, args.resource, context or None)
    if args.json:
        print(json.dumps(decision.to_dict(), indent=2, sort_keys=True))
    else:
        print(decision.explain())
    return EXIT_OK if decision.allowed else EXIT_DENIED


def make_parser() -> argparse.ArgumentParser:
    """The argument parser of ``policy-engine``."""
    parser = argparse.ArgumentParser(
        prog="policy-engine",
        description="Ask a policy set questions and run plugins under it.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    decide = commands.add_parser("decide", help="decide one request and explain why")
    decide.add_argument("plugin")
    decide.add_argument("action", help="a permission such as file:read")
    decide.add_argument("resource", nargs="?", help="a path, host[:port] or name")
    decide.add_argument("--context", action="append", metavar="KEY=VALUE",
                        help="a context value for conditions (repeatable)")
    decide.add_argument("--json", action="store_true", help="print the decision as JSON")
    add_engine_options(decide)
    decide.set_defaults(handler=cmd_decide)
    for register in EXTRA_COMMANDS:
        register(commands)
    return parser


#: Further subcommands register themselves here: ``register(subparsers)``.
EXTRA_COMMANDS: list[Callable[[Any], None]] = []


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``policy-engine`` with ``argv``; return the exit code."""
    parser = make_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits 2 on usage errors, 0 on --help
        return int(exc.code or 0)
    handler: Callable[[argparse.Namespace], int] = args.handler
    try:
        return handler(args)
    except PolicyEngineError as exc:
        print(f"policy-engine: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return 130


def entry() -> None:
    """Console-script entry point."""
    sys.exit(main())
