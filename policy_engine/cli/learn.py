"""``policy-engine learn PLUGIN_DIR``: run a plugin once in audit mode and print the least
privilege it needed, with a diff against what its manifest declares."""

from __future__ import annotations

import argparse
import json
import logging
from dataclasses import asdict
from typing import Any

from ..enforcement.host.learn import LearnResult, learn
from ..errors import UsageError
from .options import (
    DEFAULT_POLICY,
    EXIT_OK,
    add_command,
    add_variable_option,
    parse_pairs,
)

__all__ = ["cmd_learn", "render_learn"]


def render_learn(result: LearnResult) -> str:
    """The result as text: manifest diff, rules it would need, what deny rules block."""
    lines = [f"plugin `{result.plugin}` in audit mode, calls: {', '.join(result.calls) or '(none)'}", "",
             "manifest permissions it needed (+ not declared; who saw it: kernel, host, worker):"]
    width = max((len(entry) for entry in result.needed), default=0)
    lines += [f"  {'+' if entry in result.missing else ' '} {entry:<{width}}  "
              f"({', '.join(result.sources.get(entry, ())) or '?'})"
              for entry in result.needed] or ["  (none)"]
    lines += ["", "declared but never used (- remove for least privilege):"]
    lines += [f"  - {entry}" for entry in result.unused] or ["  (none)"]
    lines += ["", "policy rules it would need:"]
    lines += [f"  {rule}" for rule in result.rules] or ["  (none)"]
    lines += ["", "blocked by deny rules (no allow can grant these):"]
    lines += [f"  {entry}" for entry in result.blocked] or ["  (none)"]
    lines += ["", f"note: {result.caveat}"]
    return "\n".join(lines) + "\n"


def cmd_learn(args: argparse.Namespace) -> int:
    """Run one plugin in audit mode and report what it needed."""
    logging.basicConfig(level=logging.ERROR, format="policy-engine: %(levelname)s: %(message)s")
    variables = parse_pairs(args.var, "variable", typed=False)
    calls: list[tuple[str, list[Any]]] | None = None
    if args.call:
        try:
            parsed = [json.loads(a) for a in args.args] if args.args else []
        except ValueError as exc:
            raise UsageError(f"--args takes JSON values: {exc}") from None
        calls = [(method, parsed) for method in args.call]
    result = learn(args.plugin_dir, args.policy or [DEFAULT_POLICY], variables, calls,
                   unsandboxed=args.unsandboxed)
    if args.json:
        print(json.dumps(asdict(result), indent=2, sort_keys=True))
    else:
        print(render_learn(result), end="")
    return EXIT_OK


def register_learn(commands: Any) -> None:
    parser = add_command(
        commands, "learn", "run a plugin in audit mode and print the least privilege it needs",
        "Run one plugin in audit mode, in the kernel sandbox, and print the least-privilege "
        "manifest entries it needed (and who saw each: the kernel, the host, or the plugin's "
        "own worker), a diff with what it declares, the rules it would need and what deny "
        "rules block.",
        [(EXIT_OK, "learned")])
    parser.add_argument("plugin_dir", metavar="PLUGIN_DIR")
    parser.add_argument("--policy", action="append", metavar="PATH",
                        help=f"a .policy file or directory (repeatable; default: {DEFAULT_POLICY}/)")
    add_variable_option(parser)
    parser.add_argument("--call", action="append", metavar="METHOD",
                        help="a method to call (repeatable; default: the entry point and no-argument methods)")
    parser.add_argument("--args", nargs="*", metavar="JSON", help="JSON arguments for each --call")
    parser.add_argument("--unsandboxed", action="store_true",
                        help="the old audit mode, which is NOT a sandbox: the plugin runs with the "
                             "host's filesystem open, read-write (by default learn runs it in the "
                             "kernel sandbox, writes thrown away); only for code you would run "
                             "unsandboxed anyway")
    parser.add_argument("--json", action="store_true", help="print JSON")
    parser.set_defaults(handler=cmd_learn)

