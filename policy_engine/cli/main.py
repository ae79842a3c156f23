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
import importlib
import importlib.util
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

from ..diagnostics import Diagnostic
from ..digest import plugin_digest
from ..engine import Engine, read_policy_sources
from ..errors import ManifestError, PolicyEngineError, UsageError
from ..formatter import format_policy, quote
from ..grants import grant_matrix
from ..impact import policy_impact, read_replay_log
from ..manifest import load_manifest
from .conventions import add_version_option, exit_codes_epilog, run_console
from .tables import grant_tables, impact_summary, impact_tables, render_markdown, render_text

EXIT_OK = 0
EXIT_DENIED = 1  # also: `diff` found changes, `fmt --check` found files to reformat
EXIT_ERROR = 2

DEFAULT_POLICY = "policies"

#: The exit codes every subcommand shares, for the ``--help`` epilogs.
ERROR_CODE = (EXIT_ERROR, "usage or input error (one line on stderr)")


class _Parser(argparse.ArgumentParser):
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


def add_variable_option(parser: argparse.ArgumentParser) -> None:
    """``--var KEY=VALUE`` (alias ``--variables``, the spelling both tools accept)."""
    parser.add_argument("--var", "--variables", dest="var", action="append", metavar="KEY=VALUE",
                        help="a template variable for patterns, such as data_dir=/var/lib/app "
                             "(repeatable; alias --variables)")


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
    """``digest PLUGIN_DIR``: the sha256 a ``trust`` line pins, and the line itself."""
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
    trust = f"trust plugin {quote(name)} sha256 {quote(digest)}"
    if args.json:
        print_json({"plugin": name, "path": str(directory), "algorithm": "sha256",
                    "digest": digest, "trust": trust})
    else:
        print(f"{digest}  {directory}")
        print(trust)
    return EXIT_OK


def _register_digest(commands: Any) -> None:
    digest = add_command(
        commands, "digest", "the sha256 content digest that pins a plugin",
        "Print the sha256 content digest of a plugin directory and the `trust` line that pins "
        "it.",
        [(EXIT_OK, "printed")])
    digest.add_argument("plugin_dir", metavar="PLUGIN_DIR")
    digest.add_argument("--json", action="store_true", help="print JSON")
    digest.set_defaults(handler=cmd_digest)


# The parser ---------------------------------------------------------------------------------

#: Further subcommands register themselves here: ``register(subparsers)``.
EXTRA_COMMANDS: list[Callable[[Any], None]] = []

#: Modules that, when present, add subcommands to :data:`EXTRA_COMMANDS` as they are imported.
OPTIONAL_COMMAND_MODULES = ("policy_engine.cli.run", "policy_engine.cli.learn", "policy_engine.cli.policytest",
                            "policy_engine.cli.bundle", "policy_engine.cli.sandbox", "policy_engine.cli.doctor")


def _import_optional_commands() -> None:
    for name in OPTIONAL_COMMAND_MODULES:
        if importlib.util.find_spec(name) is not None:
            importlib.import_module(name)


def make_parser() -> argparse.ArgumentParser:
    """The argument parser of ``policy-engine``."""
    parser = _Parser(
        prog="policy-engine",
        description="Ask a policy set questions and run plugins under it.",
        epilog="Run `policy-engine COMMAND --help` for a command's options and exit codes.",
    )
    add_version_option(parser)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for register in (_register_decide, _register_matrix, _register_diff, _register_fmt, _register_digest):
        register(commands)
    _import_optional_commands()
    for extra in EXTRA_COMMANDS:
        extra(commands)
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
