"""policy-lint: find mistakes in policies, manifests and plugin code before they ship.

The linter is a library that returns findings (:class:`~policy_engine.diagnostics.Diagnostic`
objects carrying a rule code and severity) and never prints; ``policy-lint``
(:mod:`policy_engine.cli.lint`) is a thin command line over it::

    from policy_engine.lint import lint_paths

    result = lint_paths(["policies", "plugins"], variables={"data_dir": "/var/lib/app"})
    for finding in result.findings:
        print(finding.render())

Every rule has a stable code, a name, a severity and a three-part doc (:data:`RULES`,
:func:`explain`); :func:`render_rule_table` renders the README's rule table from them.
"""

from __future__ import annotations

from .formatters import FORMATS, format_json, format_sarif, format_text
from .rules import RULES, Rule, doc_anchor, explain, get_rule, render_rule_table
from .runner import DEFAULT_PATHS, LintResult, lint_paths

__all__ = [
    "DEFAULT_PATHS",
    "FORMATS",
    "RULES",
    "LintResult",
    "Rule",
    "doc_anchor",
    "explain",
    "format_json",
    "format_sarif",
    "format_text",
    "get_rule",
    "lint_paths",
    "render_rule_table",
]
