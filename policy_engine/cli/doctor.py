"""``policy-engine doctor``: the isolation this host offers, before any deployment."""

from __future__ import annotations

import argparse
from typing import Any

from ..enforcement.host.doctor import preflight
from .conventions import exit_codes_epilog
from .options import EXIT_OK, add_engine_options, build_engine, print_json
from .tables import Table, render_text

__all__ = ["cmd_doctor"]


def cmd_doctor(args: argparse.Namespace) -> int:
    """Print each probe, the host's level and each plugin's level."""
    engine = build_engine(args) if args.plugins else None
    report = preflight(engine)
    if args.json:
        print_json(report.to_json())
        return EXIT_OK
    checks = Table(f"isolation level: {report.level}", ("LAYER", "OK", "DETAIL"),
                   tuple((c.name, "yes" if c.ok else "no", c.detail) for c in report.checks))
    plugins = Table("plugins", ("PLUGIN", "LEVEL", "REFUSED"),
                    tuple((p.plugin, p.level, p.refusal or "-") for p in report.plugins))
    print(render_text([checks, plugins]), end="")
    return EXIT_OK


def register(commands: Any) -> None:
    parser = commands.add_parser(
        "doctor", help="which isolation layers this host offers",
        description="Report, before any deployment, which isolation layers this host offers "
                    "(bubblewrap, user namespaces, cgroups, Landlock, seccomp) and the level "
                    "each plugin would get.",
        epilog=exit_codes_epilog(((0, "reported"), (2, "usage or input error"))))
    add_engine_options(parser)
    parser.add_argument("--json", action="store_true", help="print JSON")
    parser.set_defaults(handler=cmd_doctor)

