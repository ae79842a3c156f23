"""``policy-lint``: lint policies, plugin manifests and plugin code.

``main(argv) -> int`` parses the arguments, calls :func:`policy_engine.lint.lint_paths` and
prints what a formatter renders. Exit codes: 0 clean, 1 findings at the failing level
(errors; with ``--strict`` warnings too), 2 a usage, configuration or internal error, which
``--exit-zero`` never hides.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

from ..errors import PolicyEngineError
from ..lint import DEFAULT_PATHS, explain, format_json, format_sarif, format_text, lint_paths
from ..lint.formatters import check_doc_url
from ..lint.rules import DOCS_URL
from .conventions import add_version_option, exit_codes_epilog, run_console
from .options import EXIT_DENIED, EXIT_ERROR, EXIT_OK, add_variable_option, engine_variables

EXIT_CLEAN = EXIT_OK
EXIT_FINDINGS = EXIT_DENIED


def _codes(values: Sequence[str] | None) -> list[str]:
    return [code.strip() for value in values or () for code in value.split(",") if code.strip()]


def make_parser() -> argparse.ArgumentParser:
    """The argument parser of ``policy-lint``."""
    parser = argparse.ArgumentParser(
        prog="policy-lint",
        description="Lint .policy files, plugin.yaml manifests and plugin code, alone and "
                    "against each other.",
        epilog=exit_codes_epilog([
            (EXIT_CLEAN, "clean"),
            (EXIT_FINDINGS, "findings (errors; with --strict also warnings)"),
            (EXIT_ERROR, "usage, configuration or internal error (--exit-zero never hides it)"),
        ]),
    )
    add_version_option(parser)
    parser.add_argument("paths", nargs="*", metavar="PATH",
                        help=f"a .policy file, a plugin.yaml, a plugin directory or a directory "
                             f"of them (default: {', '.join(p + '/' for p in DEFAULT_PATHS)})")
    parser.add_argument("--format", choices=("text", "json", "sarif"), default="text",
                        help="output format (default: text)")
    parser.add_argument("--json", dest="format", action="store_const", const="json",
                        help="print JSON, as --format json (the spelling policy-engine uses)")
    parser.add_argument("--select", action="append", metavar="CODES",
                        help="report only codes starting with these prefixes (comma-separated)")
    parser.add_argument("--ignore", action="append", metavar="CODES",
                        help="do not report codes starting with these prefixes (comma-separated)")
    parser.add_argument("--strict", action="store_true", help="warnings fail too (exit 1)")
    parser.add_argument("--exit-zero", action="store_true",
                        help="exit 0 even with findings (errors running the linter still exit 2)")
    add_variable_option(parser, defaults="the engine's home, tmp and data_dir")
    parser.add_argument("--skip-code-outside-plugins", action="store_true",
                        help="skip a .py path that belongs to no plugin instead of failing "
                             "(the pre-commit hook passes every changed .py file)")
    parser.add_argument("--explain", metavar="CODE", help="print the documentation of a rule and exit")
    parser.add_argument("--doc-url", default=DOCS_URL, metavar="URL",
                        help=f"the absolute URL where the rule docs are published, for SARIF "
                             f"helpUri (default: {DOCS_URL})")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``policy-lint`` with ``argv``; return the exit code."""
    parser = make_parser()
    try:
        args = parser.parse_intermixed_args(argv)
    except SystemExit as exc:  # argparse exits 2 on usage errors, 0 on --help
        return int(exc.code or 0)
    if args.explain is not None:
        doc = explain(args.explain)
        if doc is None:
            print(f"policy-lint: error: unknown rule code `{args.explain}`", file=sys.stderr)
            return EXIT_ERROR
        print(doc, end="")
        return EXIT_CLEAN
    # The engine logs the manifest problems it skips; here they are findings instead.
    engine_log = logging.getLogger("policy_engine")
    if not any(isinstance(h, logging.NullHandler) for h in engine_log.handlers):
        engine_log.addHandler(logging.NullHandler())
    if args.format == "sarif":
        try:
            check_doc_url(args.doc_url)
        except PolicyEngineError as exc:
            print(f"policy-lint: error: {exc}", file=sys.stderr)
            return EXIT_ERROR
    try:
        result = lint_paths(
            args.paths or list(DEFAULT_PATHS),
            variables=engine_variables(args),
            select=_codes(args.select),
            ignore=_codes(args.ignore),
            skip_code_outside_plugins=args.skip_code_outside_plugins,
        )
    except PolicyEngineError as exc:
        print(f"policy-lint: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # a bug in the linter: say so in one line, exit 2
        print(f"policy-lint: internal error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_ERROR
    if args.format == "json":
        output = format_json(result)
    elif args.format == "sarif":
        output = format_sarif(result, doc_url=args.doc_url)
    else:
        colour = sys.stdout.isatty() and "NO_COLOR" not in os.environ
        output = format_text(result, colour=colour)
    sys.stdout.write(output)
    if result.has_failures(strict=args.strict) and not args.exit_zero:
        return EXIT_FINDINGS
    return EXIT_CLEAN


def entry() -> None:
    """Console-script entry point."""
    run_console(main)


if __name__ == "__main__":  # pragma: no cover - `python -m policy_engine.cli.lint`
    entry()
