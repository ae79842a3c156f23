"""``policy-engine run PLUGINS_DIR``: the main job, and ``learn PLUGIN_DIR``.

``run`` loads every plugin under the sandbox, calls it, and prints a report. ``learn`` runs
one plugin in audit mode and prints the least-privilege permissions it needed, with a diff
against its manifest.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from ..enforcement.host.run import RunReport, report_to_dict, run_plugins
from ..units import human_size
from .options import (
    DEFAULT_POLICY,
    EXIT_OK,
    add_command,
    add_variable_option,
    parse_pairs,
)
from .tables import Table, render_text

__all__ = ["DEMO_CONFIG", "DEMO_SECRET", "cmd_run", "demo_secret", "render_report"]


#: The host configuration ``run`` gives plugins: what the example plugins read.
DEMO_CONFIG: dict[str, object] = {"plugins.summarizer.top": 3, "agents.model": "small"}
#: A pretend secret in the host's environment while ``run`` runs, so that the report shows a
#: plugin (the ``rogue`` example) cannot read it.
DEMO_SECRET = ("HOST_SECRET", "host-secret-value")


@contextmanager
def demo_secret() -> Iterator[None]:
    """:data:`DEMO_SECRET` in the environment, and the previous value back afterwards."""
    name, value = DEMO_SECRET
    previous = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = previous


def render_report(report: RunReport, *, verbose: bool = False) -> str:
    """The run report as aligned tables; with ``verbose`` no detail is shortened."""
    audit = report.mode == "audit"
    short = (lambda text: " ".join(text.split())) if verbose else _short
    title = f"ran {len(report.plugins)} plugins in {report.seconds:.1f}s"
    if audit:
        title += " in audit mode: every decision recorded, nothing denied"
    summary = Table(
        title,
        ("PLUGIN", "VALIDATION", "ISOLATION", "CALLS", "DENIED", "TIMEOUTS", "PEAK MEMORY", "CPU", "OUTCOME"),
        tuple(
            (p.name, p.validation, p.isolation, str(len(p.calls)), str(len(p.denials)), str(p.timeouts),
             human_size(p.peak_memory) if p.peak_memory else "-", f"{p.cpu_percent:.0f}%", p.outcome)
            for p in report.plugins
        ),
    )
    calls = Table(
        "calls",
        ("PLUGIN", "METHOD", "OUTCOME", "DETAIL"),
        tuple((p.name, c.method, c.outcome, short(c.detail)) for p in report.plugins for c in p.calls),
    )
    denials = Table(
        "denials (audit: recorded, would be denied when enforced)" if audit else "denials",
        ("PLUGIN", "ACTION", "RESOURCE", "REASON", "RULE", "SEEN BY"),
        tuple((p.name, d.action, d.resource or "-", d.reason, ", ".join(d.rules) or "-", d.source)
              for p in report.plugins for d in p.denials),
    )
    warnings = Table(
        "validation warnings",
        ("PLUGIN", "WARNING"),
        tuple((p.name, short(w)) for p in report.plugins for w in p.warnings),
    )
    limits = Table(
        "limits held by",
        ("PLUGIN", "MEMORY", "PIDS", "CPU", "FREEZE"),
        tuple((p.name, *(p.limits.get(k, "-") for k in ("memory", "pids", "cpu", "freeze")))
              for p in report.plugins if p.limits),
    )
    # Shown where a worker ran (an in-process plugin has no limits of its own).
    tables = [summary, limits] if limits.rows else [summary]
    return render_text([*tables, calls, denials, warnings])


def _short(text: str, limit: int = 110) -> str:
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 1] + "…"


def cmd_run(args: argparse.Namespace) -> int:
    """Load, exercise and report on every plugin under PLUGINS_DIR."""
    # What the loader logs is in the report; show the log itself only when asked.
    logging.basicConfig(level=logging.INFO if args.verbose else logging.ERROR,
                        format="policy-engine: %(levelname)s: %(message)s")
    variables = parse_pairs(args.var, "variable", typed=False)
    with demo_secret():
        report = run_plugins(args.policy or [DEFAULT_POLICY], args.plugins_dir, variables,
                             mode="audit" if args.audit else "enforce", config=DEMO_CONFIG,
                             unsandboxed=args.unsandboxed)
    if args.json:
        print(json.dumps(report_to_dict(report), indent=2, sort_keys=True))
    else:
        print(render_report(report, verbose=args.verbose), end="")
    return EXIT_OK


def register_run(commands: Any) -> None:
    run = add_command(
        commands, "run", "load plugins under the sandbox, call them, and report",
        "Load every plugin under PLUGINS_DIR under the sandbox and the policy, call its entry "
        "point and its other no-argument public methods, and report validation, calls, "
        "denials, timeouts, peak memory and CPU.",
        [(EXIT_OK, "the run completed (plugins that failed are in the report)")])
    run.add_argument("plugins_dir", metavar="PLUGINS_DIR", help="a directory of plugin directories")
    run.add_argument("--policy", action="append", metavar="PATH",
                     help=f"a .policy file or directory (repeatable; default: {DEFAULT_POLICY}/)")
    add_variable_option(run)
    run.add_argument("--audit", action="store_true",
                     help="audit mode: decide and record everything, the hook denies nothing; "
                     "runs in the kernel sandbox (read-only view, writes thrown away, network "
                     "only as the policy allows)")
    run.add_argument("--unsandboxed", action="store_true",
                     help="with --audit: the old audit mode, which is NOT a sandbox: plugins run with the "
                     "host's filesystem open, read-write (by default --audit runs them in the kernel "
                     "sandbox, writes thrown away); only for code you would run unsandboxed anyway")
    run.add_argument("--json", action="store_true", help="print the report as JSON")
    run.add_argument("-v", "--verbose", action="store_true", help="show the log as the run goes")
    run.set_defaults(handler=cmd_run)

