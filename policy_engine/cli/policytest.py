"""``policy-engine test [PATH...]``: run the ``*.test.yaml`` cases of policy sets.

Exit codes: 0 every case passed, 1 a case failed, 2 a test file (or the policy or plugins it
names) could not be read.
"""

from __future__ import annotations

import argparse
import json
import re
import xml.etree.ElementTree as ET
from typing import Any

from ..policytest import CaseResult, PolicyTestReport, run_tests
from .conventions import exit_codes_epilog
from .options import DEFAULT_POLICY, EXIT_DENIED, EXIT_OK

__all__ = ["render_json", "render_junit", "render_text"]


def _where(result: CaseResult) -> str:
    span = result.case.span
    return f"{result.file}:{span.line}:{span.column}"


def render_text(report: PolicyTestReport, *, coverage: bool = False) -> str:
    """One block per failing case, the coverage list when asked, and ``N passed, M failed``."""
    lines: list[str] = []
    for result in report.results:
        if result.passed:
            continue
        lines.append(f"FAIL {_where(result)}: {result.case.name}")
        lines.append(f"  expected {result.expected}")
        lines.append(f"  decided  {result.decided}")
        lines.extend(f"    {line}" for line in result.decision.explain().splitlines())
    if coverage:
        total = len(report.uncovered) + _covered(report)
        if report.uncovered:
            lines.append("rules no case exercised:")
            lines.extend(f"  {r.file}:{r.line}:{r.column}: {r.text}" for r in report.uncovered)
        lines.append(f"coverage: {_covered(report)} of {total} rules exercised")
    lines.append(f"{report.passed} passed, {report.failed} failed")
    return "\n".join(lines) + "\n"


def _covered(report: PolicyTestReport) -> int:
    return report.rule_count - len(report.uncovered)


def render_json(report: PolicyTestReport) -> str:
    """The report as indented, key-sorted JSON."""
    data: dict[str, Any] = {
        "passed": report.passed,
        "failed": report.failed,
        "files": list(report.files),
        "cases": [
            {
                "file": r.file,
                "line": r.case.span.line,
                "column": r.case.span.column,
                "name": r.case.name,
                "passed": r.passed,
                "expected": r.expected,
                "decided": r.decided,
                "problems": list(r.problems),
                "decision": r.decision.to_dict(),
            }
            for r in report.results
        ],
        "coverage": {
            "rules": report.rule_count,
            "exercised": _covered(report),
            "uncovered": [{"file": u.file, "line": u.line, "column": u.column, "text": u.text}
                          for u in report.uncovered],
        },
    }
    return json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


# XML 1.0 cannot carry most control characters, not even as character references.
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")


def _xml_text(text: str) -> str:
    return _NOT_XML.sub(lambda m: f"\\x{ord(m.group(0)):02x}", text)


def render_junit(report: PolicyTestReport, *, coverage: bool = False) -> str:
    """JUnit XML as Maven Surefire writes it: one ``testsuite`` of ``testcase`` elements,
    a ``failure`` in each failing one; the classname is the test file."""
    suite = ET.Element("testsuite", {
        "name": "policy-engine test",
        "tests": str(len(report.results)),
        "failures": str(report.failed),
        "errors": "0",
        "skipped": "0",
    })
    for result in report.results:
        case = ET.SubElement(suite, "testcase", {
            "classname": _xml_text(result.file),
            "name": _xml_text(f"{result.case.name} (line {result.case.span.line})"),
        })
        if not result.passed:
            failure = ET.SubElement(case, "failure", {
                "type": "PolicyTestFailure",
                "message": _xml_text(f"expected {result.expected}, decided {result.decided}"),
            })
            failure.text = _xml_text(f"{_where(result)}: {result.case.name}\n"
                                     + result.decision.explain())
    if coverage and report.uncovered:
        out = ET.SubElement(suite, "system-out")
        out.text = _xml_text("rules no case exercised:\n" + "\n".join(
            f"{r.file}:{r.line}:{r.column}: {r.text}" for r in report.uncovered))
    ET.indent(suite)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(suite, encoding="unicode") + "\n"


def cmd_test(args: argparse.Namespace) -> int:
    """``test [PATH...]``: run the cases; exit 0 all pass, 1 a case failed."""
    report = run_tests(args.paths or [DEFAULT_POLICY])
    if args.format == "json":
        print(render_json(report), end="")
    elif args.format == "junit":
        print(render_junit(report, coverage=args.coverage), end="")
    else:
        print(render_text(report, coverage=args.coverage), end="")
    return EXIT_OK if report.ok else EXIT_DENIED


def register_test(commands: Any) -> None:
    test = commands.add_parser(
        "test", help="run the *.test.yaml cases of policy sets",
        description="Run the cases of *.test.yaml files: requests and the decisions they must get.",
        epilog=exit_codes_epilog(((0, "every case passed"), (1, "a case failed"),
                                  (2, "usage or input error (a bad test file, a policy that does not compile)"))))
    test.add_argument("paths", nargs="*", metavar="PATH",
                      help=f"test files or directories searched for *.test.yaml (default: {DEFAULT_POLICY}/)")
    test.add_argument("--format", choices=("text", "json", "junit"), default="text",
                      help="output format (default: text)")
    test.add_argument("--coverage", action="store_true",
                      help="list the rules that no case exercised")
    test.set_defaults(handler=cmd_test)

