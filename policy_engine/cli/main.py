"""``policy-engine``: ask a policy set questions and run plugins under it.

A thin layer over the library: every subcommand parses its arguments, calls the library,
and hands the result to a formatter (:mod:`policy_engine.cli.tables` or JSON).
``main(argv) -> int`` never raises for a user mistake: errors are one line on stderr and
exit code 2.

Subcommands: ``decide`` (one request, explained), ``matrix`` (every plugin's effective
grants), ``diff`` (the impact of a policy edit), ``fmt`` (canonical layout of ``.policy``
files) and ``digest`` (the content pin of a plugin directory).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ..diagnostics import Diagnostic
from ..digest import ALGORITHM, DIGEST_PREFIX, plugin_digest
from ..engine import read_policy_sources
from ..errors import ManifestError, PolicyEngineError, UsageError
from ..formatter import format_policy, quote
from ..grants import grant_matrix
from ..impact import policy_impact, read_replay_log
from ..manifest import load_manifest
from . import bundle, doctor, learn, policytest, run, sandbox
from .conventions import add_version_option, run_console
from .options import (
    DEFAULT_POLICY,
    EXIT_DENIED,
    EXIT_ERROR,
    EXIT_OK,
    OneLineParser,
    add_command,
    add_engine_options,
    add_plugin_options,
    build_engine,
    load_engine,
    parse_pairs,
    print_json,
)
from .tables import grant_tables, impact_summary, impact_tables, render_markdown, render_text

# decide -------------------------------------------------------------------------------------


def cmd_decide(args: argparse.Namespace) -> int:
    """``decide PLUGIN ACTION [RESOURCE]``: print the decision and its explanation."""
    engine = build_engine(args)
    context = parse_pairs(args.context, "context")
    decision = engine.decide(args.plugin, args.action, args.resource, context or None)
    if args.json:
        print_json(decision.to_dict())
    else:
        print(decision.explain())
    return EXIT_OK if decision.allowed else EXIT_DENIED


def _register_decide(commands: Any) -> None:
    decide = add_command(
        commands, "decide", "decide one request and explain why",
        "Decide whether PLUGIN may use ACTION on RESOURCE under the policy set, and explain "
        "the decision: the rules that determined it and what would change it.",
        [(EXIT_OK, "allowed"), (EXIT_DENIED, "denied")])
    decide.add_argument("plugin")
    decide.add_argument("action", help="a permission such as file:read")
    decide.add_argument("resource", nargs="?", help="a path, host[:port] or name")
    decide.add_argument("--context", action="append", metavar="KEY=VALUE",
                        help="a context value for conditions (repeatable)")
    decide.add_argument("--json", action="store_true", help="print the decision as JSON")
    add_engine_options(decide)
    decide.set_defaults(handler=cmd_decide)


# matrix -------------------------------------------------------------------------------------


def cmd_matrix(args: argparse.Namespace) -> int:
    """``matrix``: every plugin's effective grants, what it will not get, its settings."""
    matrix = grant_matrix(build_engine(args))
    if args.json:
        print_json({"plugins": [plugin.to_dict() for plugin in matrix]})
    elif args.markdown:
        print(render_markdown(grant_tables(matrix)), end="")
    else:
        print(render_text(grant_tables(matrix)), end="")
    return EXIT_OK


def _register_matrix(commands: Any) -> None:
    matrix = add_command(
        commands, "matrix", "every plugin's effective grants, withheld permissions and limits",
        "Print, per plugin, the resources each declared permission effectively gets (declared "
        "scope intersected with the allow rules), what it declared but will not get and why, "
        "and its timeouts and limits.",
        [(EXIT_OK, "printed")])
    output = matrix.add_mutually_exclusive_group()
    output.add_argument("--json", action="store_true", help="print JSON")
    output.add_argument("--markdown", action="store_true", help="print Markdown tables")
    add_engine_options(matrix)
    matrix.set_defaults(handler=cmd_matrix)


# diff ---------------------------------------------------------------------------------------


def cmd_diff(args: argparse.Namespace) -> int:
    """``diff OLD NEW``: what a policy edit changes; exit 1 when anything does."""
    old = load_engine(args, [args.old])
    new = load_engine(args, [args.new])
    if not old.plugins and not new.plugins:
        raise UsageError("no plugins to compare: pass `--plugins DIR` (diff compares what plugins get)")
    log = read_replay_log(args.replay) if args.replay else None
    impact = policy_impact(old, new, log)
    if args.json:
        print_json(impact.to_dict())
    else:
        print(impact_summary(impact))
        tables = impact_tables(impact)
        if tables:
            print()
            print(render_text(tables), end="")
    return EXIT_DENIED if impact.changed else EXIT_OK


def _register_diff(commands: Any) -> None:
    diff = add_command(
        commands, "diff", "the change impact of a policy edit (exit 1 when something changes)",
        "Compile OLD and NEW against the same plugins and compare each plugin's effective "
        "grants, deny scopes and settings exactly; with --replay, re-decide a decision log's "
        "requests under NEW.",
        [(EXIT_OK, "no change"), (EXIT_DENIED, "something changes")])
    diff.add_argument("old", metavar="OLD", help="the policy in force: a .policy file or directory")
    diff.add_argument("new", metavar="NEW", help="the edited policy: a .policy file or directory")
    diff.add_argument("--replay", metavar="DECISION_LOG",
                      help="decide the requests of a decision log, with their recorded context, "
                           "under OLD and NEW and list those that flip (and, apart, those "
                           "logged without the context a rule reads)")
    diff.add_argument("--json", action="store_true", help="print JSON")
    add_plugin_options(diff)
    diff.set_defaults(handler=cmd_diff)


# fmt ----------------------------------------------------------------------------------------


def cmd_fmt(args: argparse.Namespace) -> int:
    """``fmt [--check] PATH...``: rewrite ``.policy`` files in canonical layout."""
    sources = read_policy_sources(args.paths or [DEFAULT_POLICY])
    # Format everything before writing anything, so a syntax error leaves every file as it was.
    formatted = {path: format_policy(text, path) for path, text in sources.items()}
    changed = [path for path, text in sources.items() if formatted[path] != text]
    if not args.check:
        for path in changed:
            try:
                Path(path).write_text(formatted[path], encoding="utf-8")
            except OSError as exc:
                raise UsageError(f"cannot write `{path}`: {exc.strerror or exc}") from None
    if args.json:
        print_json({"check": args.check,
                    "files": [{"path": path, "changed": path in changed} for path in sources]})
    else:
        verb = "would reformat" if args.check else "reformatted"
        for path in changed:
            print(f"{verb} {path}")
        total = len(sources)
        print(f"{len(changed)} of {total} file{'s' if total != 1 else ''} "
              f"{'would be ' if args.check else ''}reformatted")
    return EXIT_DENIED if args.check and changed else EXIT_OK


def _register_fmt(commands: Any) -> None:
    fmt = add_command(
        commands, "fmt", "format .policy files canonically, keeping comments",
        "Rewrite .policy files in canonical layout, keeping comments; nothing is written when "
        "any file does not parse.",
        [(EXIT_OK, "formatted (or nothing to do)"),
         (EXIT_DENIED, "with --check: some files would be reformatted")])
    fmt.add_argument("paths", nargs="*", metavar="PATH",
                     help=f".policy files or directories (default: {DEFAULT_POLICY}/)")
    fmt.add_argument("--check", action="store_true",
                     help="change nothing; list the files that would change and exit 1 if any")
    fmt.add_argument("--json", action="store_true", help="print JSON")
    fmt.set_defaults(handler=cmd_fmt)


# digest -------------------------------------------------------------------------------------


def cmd_digest(args: argparse.Namespace) -> int:
    """``digest PLUGIN_DIR``: the ``sha256-v2`` digest a ``trust`` line pins, and the line."""
    directory = Path(args.plugin_dir)
    if not directory.is_dir():
        raise UsageError(f"plugin directory `{directory}` does not exist or is not a directory")
    try:
        name = load_manifest(directory).name
    except ManifestError:
        name = directory.resolve().name
        print(f"policy-engine: note: no valid manifest in `{directory}`; "
              f"the trust line names the directory `{name}`", file=sys.stderr)
    try:
        digest = plugin_digest(directory)
    except OSError as exc:
        raise UsageError(f"cannot digest `{directory}`: {exc}") from None
    trust = f"trust plugin {quote(name)} {ALGORITHM} {quote(digest.removeprefix(DIGEST_PREFIX))}"
    if args.json:
        print_json({"plugin": name, "path": str(directory), "algorithm": ALGORITHM,
                    "digest": digest, "trust": trust})
    else:
        print(f"{digest}  {directory}")
        print(trust)
    return EXIT_OK


def _register_digest(commands: Any) -> None:
    digest = add_command(
        commands, "digest", "the sha256-v2 content digest that pins a plugin",
        "Print the sha256-v2 content digest of a plugin directory (every file in it) and the "
        "`trust` line that pins it.",
        [(EXIT_OK, "printed")])
    digest.add_argument("plugin_dir", metavar="PLUGIN_DIR")
    digest.add_argument("--json", action="store_true", help="print JSON")
    digest.set_defaults(handler=cmd_digest)


# The parser ---------------------------------------------------------------------------------

#: A subcommand's registration: it adds its parser to ``policy-engine``'s subparsers.
Register = Callable[[Any], None]

#: The one command table of ``policy-engine``, in the order ``--help`` lists them.
COMMANDS: tuple[tuple[str, Register], ...] = (
    ("decide", _register_decide),
    ("matrix", _register_matrix),
    ("diff", _register_diff),
    ("fmt", _register_fmt),
    ("digest", _register_digest),
    ("run", run.register_run),
    ("learn", learn.register_learn),
    ("test", policytest.register_test),
    ("bundle", bundle.register_bundle),
    ("sandbox-plan", sandbox.register),
    ("doctor", doctor.register),
)


def make_parser() -> argparse.ArgumentParser:
    """The argument parser of ``policy-engine``."""
    parser = OneLineParser(
        prog="policy-engine",
        description="Ask a policy set questions and run plugins under it.",
        epilog="Run `policy-engine COMMAND --help` for a command's options and exit codes.",
    )
    add_version_option(parser)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for _name, register in COMMANDS:
        register(commands)
    return parser


def error_line(error: PolicyEngineError) -> str:
    """An error as one line: the first diagnostic (with its hint) and how many more there are."""
    diagnostics: tuple[Diagnostic, ...] = getattr(error, "diagnostics", ())
    if not diagnostics:
        return " ".join(str(error).split())
    first = diagnostics[0]
    line = first.render(caret=False).splitlines()[0]
    if first.hint:
        line += f" ({first.hint})"
    if len(diagnostics) > 1:
        more = len(diagnostics) - 1
        line += f"; {more} more problem{'s' if more != 1 else ''}"
    return line


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
        print(f"policy-engine: error: {error_line(exc)}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return 130


def entry() -> None:
    """Console-script entry point (also ``python -m policy_engine``)."""
    run_console(main)
