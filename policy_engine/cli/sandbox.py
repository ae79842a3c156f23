"""``policy-engine sandbox-plan PLUGIN``: the filesystem view a plugin's sandbox would get."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ..enforcement.host.plan import plugin_view
from .conventions import exit_codes_epilog
from .options import EXIT_OK, add_engine_options, build_engine, print_json

__all__ = ["cmd_sandbox_plan"]


def cmd_sandbox_plan(args: argparse.Namespace) -> int:
    """Print the view: one mount a line, in the order bubblewrap builds it."""
    engine = build_engine(args)
    plan = plugin_view(engine, args.plugin, data_root=Path(args.data_dir))
    if args.json:
        print_json(plan.to_json())
    else:
        print(plan.render(), end="")
    return EXIT_OK


def register(commands: Any) -> None:
    parser = commands.add_parser(
        "sandbox-plan", help="the filesystem view of a plugin's sandbox, as computed",
        description="Print the filesystem view a plugin's bubblewrap sandbox gets: every mount, "
                    "its source and why it is there. Nothing else exists inside.",
        epilog=exit_codes_epilog(((0, "printed"), (2, "usage or input error"))))
    parser.add_argument("plugin", metavar="PLUGIN", help="the plugin's name")
    add_engine_options(parser)
    parser.add_argument("--data-dir", default="data", metavar="DIR",
                        help="the root of the plugins' data directories (default: data)")
    parser.add_argument("--json", action="store_true", help="print JSON")
    parser.set_defaults(handler=cmd_sandbox_plan)

