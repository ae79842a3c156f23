"""The lint rules: one stable code, a kebab-case name, a severity and a three-part doc each.

The codes are grouped by what they read:

- ``PL0xx`` the policy text does not parse;
- ``PL1xx`` the policy parses but does not compile (the compiler's own diagnostics);
- ``PL2xx`` plugin manifests, alone and against the policy;
- ``PL3xx`` analysis of a compiled policy set (rules that never apply, conditions that
  cannot be what the author meant, limits above their ceilings);
- ``PL4xx`` plugin code against its manifest (from the static code scan);
- ``PL9xx`` the linter's own bookkeeping (suppressions that suppress nothing).

The same docs feed ``policy-lint --explain CODE``, the SARIF rule descriptors and the
README's rule table (:func:`render_rule_table`), so they cannot drift apart.
"""

from __future__ import annotations

import textwrap
from collections.abc import Iterable
from dataclasses import dataclass

from .. import codes
from ..diagnostics import Severity

__all__ = [
    "DOCS_PAGE",
    "DOCS_URL",
    "RULES",
    "Rule",
    "doc_anchor",
    "explain",
    "get_rule",
    "render_rule_table",
    "rules_matching",
]

#: Where the rule table lives; ``README.md#pl101`` is the anchor of ``PL101``.
DOCS_PAGE = "README.md"

#: The published documentation (``project.urls.Documentation`` in ``pyproject.toml``, which a
#: test keeps equal): the absolute base of SARIF ``helpUri``.
DOCS_URL = "https://github.com/policy-engine/policy_engine/blob/main/README.md"


@dataclass(frozen=True, slots=True)
class Rule:
    """One lint rule.

    ``summary`` is one line (the table and SARIF's short description); ``what``, ``why`` and
    ``example`` are the three parts of the doc: what the rule checks, why it matters, and an
    example that triggers it with its fix.
    """

    code: str
    name: str
    severity: Severity
    summary: str
    what: str
    why: str
    example: str

    @property
    def anchor(self) -> str:
        """The doc anchor, such as ``README.md#pl101``."""
        return doc_anchor(self.code)

    @property
    def doc(self) -> str:
        """The full doc as plain text (what it does, why it matters, example)."""
        return "\n\n".join((self.what, self.why, self.example))


def _rule(code: str, name: str, severity: Severity, summary: str, what: str, why: str,
          example: str) -> Rule:
    return Rule(code, name, severity, summary, _clean(what), _clean(why), _clean(example))


def _clean(text: str) -> str:
    return textwrap.dedent(text).strip("\n")


E, W, INFO = Severity.ERROR, Severity.WARNING, Severity.INFO

RULES: tuple[Rule, ...] = (
    # PL0xx: syntax ----------------------------------------------------------------------
    _rule(codes.SYNTAX_ERROR, "syntax-error", E, "the policy text does not parse", """
        Reports every syntax error of a `.policy` file, with the expected tokens in words.
        The parser resumes at the next statement, so one mistake does not hide the next.
        """, """
        A policy with a syntax error does not load at all: the engine refuses the whole
        set, and every plugin keeps running under the policy that was there before.
        """, """
            allow plugin * to file:read on /srv/**      # pattern not quoted
        fix:
            allow plugin * to file:read on "/srv/**"
        """),
    _rule(codes.UNREADABLE_POLICY_FILE, "unreadable-policy-file", E, "a policy file cannot be read as part of its set", """
        Reports every entry of a policy set the engine would refuse: a dangling or looping
        symlink, a directory, FIFO, socket or device named `*.policy`, a file that cannot be
        read, a file that is not UTF-8 text (with the byte offset), a file or set over its
        size cap, and a directory with no `.policy` files. One finding per entry; the run
        goes on with the other files.
        """, """
        A policy set is all or nothing: the engine refuses to load a set with a bad entry.
        Skipping it instead would be worse, since the lost file may hold the deny rule that
        keeps a plugin out.
        """, """
            policies/deny.policy -> /etc/policies/deny.policy   # the target moved
        fix:
            restore the target, or remove the link
        """),
    _rule(codes.WRITABLE_POLICY_FILE, "writable-policy-file", E, "others than the engine's user or root can change a policy file", """
        Reports a policy file, its symlink target, or the directory of either that is
        writable by group or others, or owned by another user than the one running the check
        (root is fine), as sshd's `StrictModes` does for its key files.
        """, """
        Whoever can write a policy file (or add one to its directory) decides what every
        plugin may do; a group-writable policy makes every member of the group an admin.
        """, """
            -rw-rw-r--  policies/site.policy
        fix:
            chmod go-w policies/site.policy policies
        """),
    # PL1xx: compile errors --------------------------------------------------------------
    _rule(codes.UNKNOWN_PERMISSION, "unknown-permission", E, "a rule names a permission that does not exist", """
        Reports an action that is not a known permission, a `family:*` or `*`, with the
        closest spelling as a hint.
        """, """
        A misspelled permission compiles to nothing: the grant or the deny it was meant to
        express silently does not exist, so the engine refuses to load the policy.
        """, """
            allow plugin "analytics" to file:raed on "/srv/data/**"
        fix:
            allow plugin "analytics" to file:read on "/srv/data/**"
        """),
    _rule(codes.UNKNOWN_VARIABLE, "unknown-variable", E, "a pattern uses a template variable nobody defines", """
        Reports a `{name}` in a pattern that is neither `{plugin}`, `{plugin_dir}` nor a
        variable the host passes (built in: `{home}`, `{tmp}`, `{data_dir}`; more with
        `--variables KEY=VALUE`).
        """, """
        An unknown variable cannot be filled in, so the pattern would match a literal
        `{name}` directory that does not exist: the engine refuses it instead.
        """, """
            allow plugin * to file:write on "{data_dri}/{plugin}/**"
        fix:
            allow plugin * to file:write on "{data_dir}/{plugin}/**"
        """),
    _rule(codes.INVALID_PATTERN, "invalid-pattern", E, "a resource pattern is malformed", """
        Reports a pattern that is not valid for the permissions of its rule: a relative
        path, `**` inside a segment, a bad port or host, a URL where a host is expected.
        """, """
        A malformed pattern cannot match what its author meant; the engine refuses it
        rather than guess.
        """, """
            allow plugin * to network:request on "https://api.example.com/v1"
        fix:
            allow plugin * to network:request on "api.example.com:443"
        """),
    _rule(codes.UNKNOWN_PLUGIN_ATTRIBUTE, "unknown-plugin-attribute", E, "a condition reads a plugin attribute that does not exist", """
        Reports `plugin.<attr>` where `<attr>` is not one of `name`, `version`, `type`,
        `trusted`, `enabled`, `description`, `entry_point`, `author` or `tags`.
        """, """
        A missing attribute makes the condition fail at every request: an allow never
        applies and a deny always does.
        """, """
            allow plugin * to config:read on "agents.*" when plugin.kind == "agent"
        fix:
            allow plugin * to config:read on "agents.*" when plugin.type == "agent"
        """),
    _rule(codes.CONFLICTING_SETTINGS, "conflicting-settings", E, "two blocks set the same setting to different values", """
        Reports a setting of a `defaults` block, or of the `plugin` blocks of one plugin,
        that another block (often in another file) sets to a different value.
        """, """
        Files and blocks carry no order, so there is no "last one wins": the engine
        refuses the policy instead of picking one value at random.
        """, """
            # a.policy                      # b.policy
            defaults { timeout hook 5s }    defaults { timeout hook 10s }
        fix: set `timeout hook` in one place only.
        """),
    _rule(codes.INVALID_QUANTITY, "invalid-quantity", E, "a duration, size or percentage is malformed", """
        Reports a quantity with an unknown unit, a number where a percentage is expected,
        or a value that is zero or negative.
        """, """
        Limits and timeouts are what stop a runaway plugin; one that cannot be read would
        leave the plugin without the limit its author wrote.
        """, """
            defaults { limit memory 500MiBs }
        fix:
            defaults { limit memory 500MiB }
        """),
    _rule(codes.UNKNOWN_SETTING, "unknown-setting", E, "a block names a setting or a choice that does not exist", """
        Reports an unknown timeout phase, limit, violation action or isolation mode, and
        `warn` on a limit other than memory.
        """, """
        An unknown setting configures nothing, so the plugin would run with a default its
        author did not intend.
        """, """
            defaults { timeout exec 60s }
        fix:
            defaults { timeout execute 60s }
        """),
    _rule(codes.MALFORMED_PIN, "malformed-pin", E, "a trust pin is not a valid sha256-v2 digest, or pins a plugin twice", """
        Reports a `trust` statement with an algorithm other than `sha256-v2` (or the old
        `sha256`, which PL109 reports), a digest that is not 64 hexadecimal characters, or
        a plugin pinned to two different digests.
        """, """
        A pin decides whether `plugin.trusted` is true; a pin that cannot match makes the
        plugin untrusted and it is denied everything.
        """, """
            trust plugin "analytics" sha256-v2 "9f86d0"
        fix: paste the full digest that `policy-engine digest DIR` prints.
        """),
    _rule(codes.OUTDATED_PIN, "outdated-pin", E, "a trust pin uses digest version 1 (`sha256`)", """
        Reports a `trust` statement written with the algorithm `sha256`, the first
        version of the plugin digest. Version 2 (`sha256-v2`) covers every file of the
        plugin directory, bytecode included, and refuses links and special files.
        """, """
        A version 1 digest did not cover everything Python can run from a plugin's
        directory, so it no longer pins anything: the policy does not compile until the
        pin is renewed, after reviewing the plugin's files again.
        """, """
            trust plugin "analytics" sha256 "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
        fix: paste the line `policy-engine digest DIR` prints:
            trust plugin "analytics" sha256-v2 "<64 hex digits>"
        """),
    # PL2xx: manifests -------------------------------------------------------------------
    _rule(codes.MANIFEST_UNKNOWN_VARIABLE, "manifest-unknown-variable", E, "a manifest scope uses an unknown template variable", """
        Reports a `{name}` in a manifest permission scope that neither the engine nor the
        host defines.
        """, """
        The engine drops the scope, so the plugin declares less than it meant to and its
        requests there are denied as not declared.
        """, """
            permissions:
              - file:read {plugin_dri}/**
        fix:
              - file:read {plugin_dir}/**
        """),
    _rule(codes.MANIFEST_INVALID_SCOPE, "manifest-invalid-scope", E, "a manifest scope is not a valid pattern for its permission", """
        Reports a manifest scope that does not compile as a pattern of its permission's
        kind (a path for `file`, a host for `network`, a name for the others).
        """, """
        The engine drops the scope, so the plugin declares less than it meant to.
        """, """
            permissions:
              - file:read data/**
        fix:
              - file:read {plugin_dir}/data/**
        """),
    _rule(codes.DUPLICATE_PLUGIN, "duplicate-plugin", E, "two manifests declare the same plugin name", """
        Reports a manifest whose `name` another manifest already uses.
        """, """
        The engine keeps the first manifest it reads and ignores the second: which plugin
        runs depends on directory order.
        """, """
            plugins/a/plugin.yaml: name: reports
            plugins/b/plugin.yaml: name: reports
        fix: give each plugin its own name.
        """),
    _rule(codes.MANIFEST_UNREADABLE, "manifest-unreadable", E, "a manifest cannot be read", """
        Reports a `plugin.yaml` that cannot be opened or listed.
        """, """
        A plugin without a readable manifest is left out when the engine loads.
        """, """
            plugins/reports/plugin.yaml: permission denied
        fix: make the file readable by the user that runs the host.
        """),
    _rule(codes.MANIFEST_YAML_ERROR, "manifest-yaml-error", E, "a manifest is not valid YAML or not UTF-8", """
        Reports YAML syntax errors (with line and column), duplicate keys (YAML keeps the
        last one silently), control characters and text that is not UTF-8.
        """, """
        A manifest that does not read as YAML is rejected and the plugin does not load; a
        duplicate key would hide the first value, such as a permission list.
        """, """
            permissions:
              - file:read {plugin_dir}/**
            permissions: []
        fix: keep one `permissions` key.
        """),
    _rule(codes.MANIFEST_SCHEMA_ERROR, "manifest-schema-error", E, "a manifest field does not match the schema", """
        Reports a missing required field, an unknown field, a value of the wrong type or
        shape, with the JSON pointer of the field.
        """, """
        The engine rejects a manifest that does not match `schemas/plugin.schema.json`,
        and the plugin does not load.
        """, """
            name: My Plugin
        fix:
            name: my-plugin
        """),
    _rule(codes.MANIFEST_UNKNOWN_PERMISSION, "manifest-unknown-permission", E, "a manifest asks for a permission that does not exist", """
        Reports a permission entry whose action is not a known permission, `family:*` or
        `*`, with the closest spelling as a hint.
        """, """
        The manifest is rejected and the plugin does not load.
        """, """
            permissions:
              - file:raed {plugin_dir}/**
        fix:
              - file:read {plugin_dir}/**
        """),
    _rule(codes.MANIFEST_INVALID_PERMISSION, "manifest-invalid-permission", E, "a manifest permission entry is malformed", """
        Reports a permission entry that does not parse: stray characters, scopes after
        `*`, or a `#` that would start a comment inside the entry.
        """, """
        The manifest is rejected and the plugin does not load.
        """, """
            permissions:
              - "* /srv/**"
        fix:
              - file:* /srv/**
        """),
    _rule(codes.MISSING_ENTRY_POINT, "missing-entry-point", E, "the entry point's module or class is not in the plugin directory", """
        Looks for the module of `entry_point` (`package.module:Class`) as a `.py` file or
        package below the plugin directory and for the class at its top level. The module
        is parsed with `ast`, never imported.
        """, """
        A plugin whose entry point cannot be found fails when it is loaded, after it was
        deployed.
        """, """
            entry_point: reports.plugin:ReportPlugin    # the class is `ReportsPlugin`
        fix:
            entry_point: reports.plugin:ReportsPlugin
        """),
    _rule(codes.REQUEST_ABOVE_CEILING, "request-above-ceiling", W, "a manifest asks for a timeout or limit above the policy's ceiling", """
        Reports a manifest `timeouts` or `limits` value that the policy cuts down to its
        ceiling (the setting's value, or its `max`).
        """, """
        The plugin gets less than it asks for, and may time out or be stopped where its
        author expects it to work.
        """, """
            # policy: defaults { timeout execute 300s }
            timeouts: {execute: 600s}
        fix: ask for at most 300s, or raise the ceiling with `timeout execute 300s max 600s`.
        """),
    _rule(codes.PERMISSION_NEVER_GRANTED, "permission-never-granted", W, "a manifest declares a permission no policy rule grants", """
        Reports a declared permission for which no `allow` rule of the policy can apply
        to the plugin (conditions on `plugin.*` are taken into account).
        """, """
        Every use of the permission will be denied: either the policy lacks a grant or the
        manifest asks for more than the plugin will ever get.
        """, """
            permissions:
              - subprocess:execute
        fix: remove the entry, or add `allow plugin "<name>" to subprocess:execute ...`.
        """),
    # PL3xx: policy analysis --------------------------------------------------------------
    _rule(codes.ALLOW_ALWAYS_DENIED, "allow-always-denied", W, "an allow rule that a deny rule always overrides", """
        Reports an `allow` for which, for every plugin and permission it names, an
        unconditional `deny` covers the same plugins and every resource it allows.
        """, """
        Deny beats allow whatever the order, so the allow never takes effect: it reads as
        a grant that does not exist.
        """, """
            deny plugin * to file:* on "/etc/**"
            allow plugin "backup" to file:read on "/etc/hosts"
        fix: remove the allow, or narrow the deny.
        """),
    _rule(codes.REDUNDANT_RULE, "redundant-rule", W, "a rule duplicates or is subsumed by another rule", """
        Reports a rule when another rule with the same effect names at least the same
        plugins and permissions, covers every resource it covers, and applies at least as
        often (no condition, or the same condition).
        """, """
        A redundant rule changes nothing today, but whoever edits one of the two later
        will expect it to matter.
        """, """
            allow plugin * to file:read on "/srv/data/**"
            allow plugin "reports" to file:read on "/srv/data/reports/*.csv"
        fix: remove the second rule.
        """),
    _rule(codes.UNKNOWN_PLUGIN, "unknown-plugin", W, "a rule or block names a plugin no manifest declares", """
        Reports plugin names in rules, `plugin` blocks and `trust` pins that no linted
        manifest declares. Runs only when manifests were linted too.
        """, """
        Usually a typo: the rule grants or denies nothing, and the plugin that was meant
        keeps the defaults.
        """, """
            allow plugin "analytcs" to database:read on "metrics.*"
        fix:
            allow plugin "analytics" to database:read on "metrics.*"
        """),
    _rule(codes.OVERBROAD_GRANT, "overbroad-grant", W, "an allow rule grants far more than a plugin needs", """
        Reports `allow` rules that grant every permission without a scope, `file:write`
        or `file:delete` on every path (no scope, `/**`, `/*`), or `network:request` to
        any host.
        """, """
        A plugin with such a grant can overwrite the system or send data anywhere; the
        policy no longer draws a box around it.
        """, """
            allow plugin * to file:write on "/**"
        fix:
            allow plugin * to file:write on "{data_dir}/{plugin}/**"
        """),
    _rule(codes.LIMIT_ABOVE_CEILING, "limit-above-ceiling", W, "a timeout or limit is above its ceiling", """
        Reports a setting whose value is above its own `max`, and a `plugin` block value
        above the `max` that the `defaults` block sets for it.
        """, """
        The value wins and the ceiling is silently raised to it, which is rarely what the
        author of the `max` meant.
        """, """
            defaults { limit memory 500MB max 2GB }
            plugin "analytics" { limit memory 8GB }
        fix: stay at or below 2GB, or raise the `max` in `defaults`.
        """),
    _rule(codes.WARN_THRESHOLD_TOO_HIGH, "warn-threshold-too-high", W, "a memory warning threshold of 100 % or more", """
        Reports `limit memory ... warn N%` with N at or above 100.
        """, """
        The limit is enforced at 100 %, so the warning can never come before it: nobody
        is warned before the plugin is stopped.
        """, """
            limit memory 1GB warn 100%
        fix:
            limit memory 1GB warn 80%
        """),
    _rule(codes.CONSTANT_CONDITION, "constant-condition", W, "a condition that is always true or always false", """
        Reports comparisons of two literals, an attribute compared with itself
        (`plugin.type == plugin.type`), `x in []`, and literal operands of `in`,
        `matches` or a bare condition.
        """, """
        A constant condition is a mistake or dead code: the rule either always applies or
        never does, whatever the plugin or the request.
        """, """
            allow plugin * to hook:register when plugin.type in []
        fix: list the types, or remove the rule.
        """),
    _rule(codes.FALLIBLE_CONDITION, "fallible-condition", W, "a condition that can fail to evaluate at run time", """
        Reports conditions that raise an evaluation error for some or all requests: a bare
        `context.x` (it must be a boolean), ordering booleans, `plugin.version` against a
        number or a string that is not a version, comparing values of different types,
        and `context.x` compared with literals of different types in different places.
        """, """
        A condition that fails makes an allow not apply and a deny apply (errors fail
        closed). That is safe, but the administrator should know that requests are being
        denied by an error rather than by the rule's meaning.
        """, """
            allow plugin * to network:request on "*.svc:443" when context.prod
        fix:
            allow plugin * to network:request on "*.svc:443" when context.prod == true
        """),
    _rule(codes.CONFLICTING_POLICY_SETS, "conflicting-policy-sets", W, "policies under one directory conflict when loaded as one set", """
        The linter compiles the files of each policy (files naming the same
        `policy "<name>"`, or no name) as one set. When a directory holds several
        policies, it also compiles everything below it together, as `Engine.load(dir)`
        does, and reports when that fails.
        """, """
        Each policy is fine alone, but pointing the engine at the directory would refuse
        them all.
        """, """
            policies/site.policy:   defaults { timeout hook 5s }
            policies/strict.policy: defaults { timeout hook 1s }
        fix: load one policy file, or keep one policy per directory.
        """),
    _rule(codes.UNPINNED_INPROCESS, "unpinned-inprocess", E, "a plugin runs in-process without a trust pin", """
        Reports `isolation inprocess` in a `plugin "<name>"` block when the policy has no
        `trust` pin for that plugin, and in `defaults` (where it applies to every plugin
        without a pin), unless the same block or `defaults` says `accept unpinned-inprocess`.
        """, """
        In-process plugins run inside the host with the host's privileges; only the pin
        shows that the code is the code that was reviewed. The loader refuses such a
        plugin, so the policy would not do what it says.
        """, """
            plugin "report-builder" { isolation inprocess }
        fix: pin it (`policy-engine digest DIR` prints the `trust` line), or accept the risk:
            plugin "report-builder" { isolation inprocess
                                      accept unpinned-inprocess }
        """),
    _rule(codes.ACCEPTED_RISK, "accepted-risk", INFO, "the policy accepts a risk the engine would otherwise refuse", """
        Notes every name of every `accept` setting: what the engine no longer refuses, for
        which plugins, and what that gives up.
        """, """
        An opt-out is a decision a reviewer should see, not a setting that hides in a
        block; this keeps each one in every lint report.
        """, """
            plugin "legacy" { accept unpinned-inprocess }
        fix: none needed if the risk is understood; remove the `accept` otherwise.
        """),
    _rule(codes.GLOB_MEANING_CHANGED, "glob-meaning-changed", W, "a `matches` glob means something else than it did", """
        Reports `matches "<glob>"` conditions that the language's glob semantics read
        differently from the `fnmatch` semantics of earlier versions: a `[...]` that was a
        character class is now literal, and `*` or `?` no longer match `/` when the
        attribute can hold one (every attribute except `plugin.name`, `plugin.type`,
        `plugin.version` and `plugin.entry_point`).
        """, """
        The rule now applies to other requests than when it was written; the author
        should check that it still means what they want.
        """, """
            allow plugin * to config:read when context.path matches "/srv/*"
        fix: write `"/srv/**"` to keep matching below `/srv`, or add `# noqa: PL312` once
        the new meaning has been checked.
        """),
    _rule(codes.INEXACT_DENY, "inexact-deny", E, "a file deny the kernel sandbox cannot hold exactly", """
        Reports a `file:read` deny that reaches into a tree the same plugins are granted
        (a `file:write` or `file:delete` deny: into a write grant) and that the sandbox
        cannot mask with an empty mount: a glob (`/srv/data/**/*.key`), a deny with a
        condition, a path that does not exist yet where the linter runs, a deny wider than
        the granted tree, or a write deny without a `file:read` deny of the same path.
        Unless `defaults` or every named plugin's block says `accept inexact-deny`.
        """, """
        Such a deny is held by the decision table and the worker's audit hook alone, and a
        route the hook does not see (a C library opening a file) reads through it. The
        loader refuses the plugin, so the policy would not do what it says.
        """, """
            allow plugin * to file:read on "/srv/data/**"
            deny plugin * to file:read on "/srv/data/**/*.key"
        fix: keep the keys in a directory of their own and deny it whole, or accept it:
            deny plugin * to file:read on "/srv/data/keys/**"
        """),
    _rule(codes.INEXACT_GRANT, "inexact-grant", E, "a glob file grant too wide to reach the kernel path by path", """
        Reports a `file:read`, `file:write` or `file:delete` allow whose glob matches more
        than 512 existing paths where the linter runs (or whose walk looks at more than
        65,536 entries); the loader counts a plugin's glob grants together. Unless `defaults` or every named plugin's block says
        `accept inexact-grant`. Patterns with plugin variables are not walked.
        """, """
        The kernel is given each match of a glob grant on its own; past the bound it could
        only be given the grant's literal directory, whose other files the decision table
        and the audit hook alone would keep out. The loader refuses the plugin.
        """, """
            allow plugin * to file:read on "/srv/archive/*.log"
        fix: keep the files in a directory of their own and grant it whole:
            allow plugin * to file:read on "/srv/archive/logs/**"
        """),
    _rule(codes.GLOB_WRITE_GRANT, "glob-write-grant", INFO, "a glob write grant cannot create new matching names", """
        Notes each `file:write` or `file:delete` allow whose pattern has glob parts below
        its literal directory (`/srv/out/*.csv`, not `/srv/out/**`).
        """, """
        The kernel is given the paths such a grant matches when the plugin's worker starts:
        the plugin can write the existing matches but cannot create a new matching name, and
        a file created by others later is not visible until a restart or a reload.
        """, """
            allow plugin * to file:write on "/srv/out/*.csv"
        fix: grant the directory whole if the plugin must create files there:
            allow plugin * to file:write on "/srv/out/**"
        """),
    # PL4xx: code against manifest --------------------------------------------------------
    _rule(codes.UNDECLARED_CAPABILITY, "undeclared-capability", E, "plugin code uses a capability its manifest does not declare", """
        Compares what the static code scan finds (file reads and writes, deletions,
        network, subprocesses, direct database access) with the manifest's permissions.
        """, """
        The engine denies every use of an undeclared permission, so the plugin fails at
        run time; or the manifest hides what the code does from the administrator.
        """, """
            import subprocess            # manifest declares no `subprocess:execute`
        fix: declare `subprocess:execute` (scoped to the programs) or remove the call.
        """),
    _rule(codes.DYNAMIC_CODE, "dynamic-code", W, "plugin code runs code built at run time", """
        Reports `eval`, `exec`, `compile`, `runpy` and friends in plugin code.
        """, """
        Code built at run time cannot be reviewed or scanned: the manifest check above
        can no longer see what the plugin does.
        """, """
            exec(source_from_somewhere)
        fix: call the code directly.
        """),
    _rule(codes.OBFUSCATED_IMPORT, "obfuscated-import", W, "plugin code imports a module whose name is computed", """
        Reports `__import__`, `importlib.import_module` with a computed name, and loading
        modules from file paths.
        """, """
        Hidden imports are how code slips past a review and the code scan.
        """, """
            mod = __import__("sub" + "process")
        fix:
            import subprocess
        """),
    _rule(codes.NATIVE_CODE, "native-code", E, "plugin code calls native code or ships compiled modules", """
        Reports imports of `ctypes` or `cffi`, compiled extension modules and loose
        bytecode files shipped in the plugin directory.
        """, """
        Native code runs beneath every Python-level permission check; bytecode without
        source cannot be reviewed.
        """, """
            import ctypes
        fix: remove it, or run the plugin only with kernel-level isolation.
        """),
    _rule(codes.UNUSED_PERMISSION, "unused-permission", W, "a manifest declares a permission the code never uses", """
        Reports declared `file`, `network` and `subprocess` permissions that the code scan
        finds no use of (other permissions are used through host capabilities the scan
        cannot see). Skipped when the code hides what it does (dynamic code, computed
        imports) or could not be scanned.
        """, """
        Least privilege: a permission nobody uses is only a door left open.
        """, """
            permissions:
              - network:request api.example.com:443   # nothing in the code talks to the network
        fix: remove the entry.
        """),
    _rule(codes.UNSCANNABLE_CODE, "unscannable-code", E, "plugin code cannot be scanned", """
        Reports plugin files that do not parse as Python, cannot be read, nest too deeply
        for the scan, or are symlinks to outside the plugin directory.
        """, """
        Code that cannot be scanned cannot be checked against the manifest; code that does
        not parse will not load.
        """, """
            def run(self:          # syntax error
        fix: fix the file so that it parses.
        """),
    _rule(codes.COMPUTED_ATTRIBUTE, "computed-attribute", W, "plugin code reads or sets an attribute whose name is computed", """
        Reports `getattr`, `setattr`, `delattr` and `__dict__` lookups with names built at
        run time.
        """, """
        A computed attribute name hides which function is called (`getattr(os, "sys" +
        "tem")`), from reviewers and from the code scan.
        """, """
            getattr(os, name)("ls")
        fix: call the function by its name.
        """),
    # PL9xx: the linter itself ------------------------------------------------------------
    _rule(codes.UNUSED_NOQA, "unused-noqa", W, "a noqa comment suppresses nothing", """
        Reports `# noqa`, `# noqa: CODE` and `# policy-lint: noqa` comments (in policies
        and manifests; in Python files only for `PL` codes) that suppress no finding.
        """, """
        A stale suppression hides the next real finding on that line.
        """, """
            allow plugin * to file:read on "/srv/**"   # noqa: PL304
        fix: remove the comment.
        """),
)

_BY_CODE: dict[str, Rule] = {rule.code: rule for rule in RULES}


def get_rule(code: str) -> Rule | None:
    """The rule with ``code`` (case-insensitive), or None."""
    return _BY_CODE.get(code.upper())


def rules_matching(prefixes: Iterable[str]) -> tuple[Rule, ...]:
    """The rules whose codes start with any of ``prefixes`` (case-insensitive)."""
    wanted = tuple(p.upper() for p in prefixes)
    return tuple(rule for rule in RULES if rule.code.startswith(wanted))


def doc_anchor(code: str) -> str:
    """The documentation anchor of a code: ``README.md#pl101``."""
    return f"{DOCS_PAGE}#{code.lower()}"


def explain(code: str) -> str | None:
    """The full doc of ``code`` as ``--explain`` prints it, or None for an unknown code."""
    rule = get_rule(code)
    if rule is None:
        return None
    lines = [f"{rule.code} {rule.name} ({rule.severity.value})", "", rule.summary, ""]
    for title, body in (("What it does", rule.what), ("Why it matters", rule.why),
                        ("Example", rule.example)):
        lines.append(f"{title}:")
        lines.extend(f"    {line}".rstrip() for line in body.splitlines())
        lines.append("")
    return "\n".join(lines)


def render_rule_table() -> str:
    """The README's rule table (markdown), generated from the same docs as ``--explain``."""
    lines = [
        "| code | name | severity | what it reports |",
        "|---|---|---|---|",
    ]
    for rule in RULES:
        lines.append(
            f'| <a id="{rule.code.lower()}"></a>`{rule.code}` | `{rule.name}` '
            f"| {rule.severity.value} | {rule.summary} |"
        )
    return "\n".join(lines) + "\n"
