"""Static scan of a plugin's Python source: what its code can do, found without running it.

The scan parses every ``.py`` file of a plugin directory with :mod:`ast` and walks the
tree; it never imports, compiles to bytecode or executes plugin code, and it never matches
patterns in the raw text. Import aliases are resolved (``import os as o``,
``from os import system as s``, ``from subprocess import *``, ``run = subprocess.run``), and
string constants are folded so ``getattr(__import__('o' + 's'), 'sys' + 'tem')`` is seen as
``os.system`` as well as being flagged for hiding its names.

The scan is advisory: it tells an administrator (and the linter) what a plugin appears to
do, so the manifest can be compared with the code. It is not the enforcement boundary, which
stays the sandbox; code can always hide from a static scan, which is why hiding itself
(computed imports, computed attribute names, ``eval``) is reported.

Finding codes
=============

=====  ======================  ============================================================
code   name                    meaning
=====  ======================  ============================================================
SC000  syntax-error            the file does not parse as Python; nothing in it was checked
SC001  unreadable-file         the file could not be read, is binary or is not valid text
SC002  scan-incomplete         the code is nested too deeply for the scan to finish
SC003  external-symlink        a symlink points outside the plugin directory; not followed
SC101  file-write              creates, writes, moves, copies or changes files (file:write)
SC102  file-delete             deletes files or directories (file:delete)
SC103  file-read               reads files or lists directories (file:read)
SC201  network-import          imports a networking module (network:request)
SC202  network-call            calls into a networking module (network:request)
SC301  subprocess-import       imports a module or function that starts processes
                               (subprocess:execute)
SC302  subprocess-call         runs another program or forks (subprocess:execute)
SC401  ctypes                  imports ctypes or cffi: native code beyond any Python check
SC402  native-extension        ships a compiled extension module (.so, .pyd, ...)
SC403  compiled-bytecode       ships a .pyc outside __pycache__, importable without source
SC501  obfuscated-import       imports a module whose name is computed at run time, or
                               loads a module from a file path
SC502  dynamic-code            runs code built at run time (eval, exec, compile, ...)
SC503  computed-attribute      gets or sets an attribute whose name is computed at run time
SC601  database-access         uses sqlite3 directly instead of the host's database
                               capability (database:write, since a raw connection can
                               change anything it can open)
=====  ======================  ============================================================

The same table is :data:`FINDING_KINDS`, with each code's permission and severity.
"""

from __future__ import annotations

import ast
import builtins
import importlib.util
import os
import re
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from ...diagnostics import Diagnostic, Severity, Span, source_line
from ...errors import UsageError
from ...families import scan_modules, scan_openers, scan_signature
from ...permissions import Permission

__all__ = [
    "FINDING_KINDS",
    "CodeFinding",
    "FindingKind",
    "implied_permissions",
    "scan_plugin",
    "scan_source",
]


@dataclass(frozen=True, slots=True)
class FindingKind:
    """One row of the finding-code table: what a code means and what it implies."""

    code: str
    name: str
    summary: str
    permission: Permission | None
    severity: Severity


_KINDS: tuple[FindingKind, ...] = (
    FindingKind("SC000", "syntax-error", "the file does not parse as python", None, Severity.ERROR),
    FindingKind("SC001", "unreadable-file", "the file could not be read as python source", None,
                Severity.ERROR),
    FindingKind("SC002", "scan-incomplete", "the code is nested too deeply to finish the scan",
                None, Severity.ERROR),
    FindingKind("SC003", "external-symlink", "a symlink points outside the plugin directory",
                None, Severity.ERROR),
    FindingKind("SC101", "file-write", "creates, writes, moves or changes files",
                Permission.FILE_WRITE, Severity.INFO),
    FindingKind("SC102", "file-delete", "deletes files or directories", Permission.FILE_DELETE,
                Severity.INFO),
    FindingKind("SC103", "file-read", "reads files or lists directories", Permission.FILE_READ,
                Severity.INFO),
    FindingKind("SC201", "network-import", "imports a networking module",
                Permission.NETWORK_REQUEST, Severity.INFO),
    FindingKind("SC202", "network-call", "calls into a networking module",
                Permission.NETWORK_REQUEST, Severity.INFO),
    FindingKind("SC301", "subprocess-import", "imports something that starts processes",
                Permission.SUBPROCESS_EXECUTE, Severity.INFO),
    FindingKind("SC302", "subprocess-call", "runs another program or forks",
                Permission.SUBPROCESS_EXECUTE, Severity.INFO),
    FindingKind("SC401", "ctypes", "imports ctypes or cffi to call native code", None,
                Severity.ERROR),
    FindingKind("SC402", "native-extension", "ships a compiled extension module", None,
                Severity.ERROR),
    FindingKind("SC403", "compiled-bytecode", "ships bytecode importable without its source",
                None, Severity.ERROR),
    FindingKind("SC501", "obfuscated-import", "imports a module whose name is computed",
                None, Severity.WARNING),
    FindingKind("SC502", "dynamic-code", "runs code built at run time", None, Severity.WARNING),
    FindingKind("SC503", "computed-attribute", "accesses an attribute whose name is computed",
                None, Severity.WARNING),
    FindingKind("SC601", "database-access", "uses sqlite3 directly",
                Permission.DATABASE_WRITE, Severity.WARNING),
)

#: Every finding code the scan emits, by code.
FINDING_KINDS: dict[str, FindingKind] = {kind.code: kind for kind in _KINDS}


@dataclass(frozen=True, slots=True)
class CodeFinding:
    """One thing the scan found in one place of a plugin's code.

    ``file`` is relative to the plugin directory (``/``-separated); lines and columns count
    from 1, columns in characters. ``permission`` is what the finding implies the plugin
    needs, or None for findings that are dangerous or suspicious in themselves.
    """

    file: str
    line: int
    column: int
    end_line: int
    end_column: int
    code: str
    name: str
    message: str
    permission: Permission | None
    severity: Severity

    @property
    def span(self) -> Span:
        """The region of the file the finding points at."""
        return Span(self.file, self.line, self.column, self.end_line, self.end_column)

    def to_diagnostic(self, source: str | None = None) -> Diagnostic:
        """This finding as a :class:`Diagnostic`; pass the file's text to get a caret."""
        hint = None
        if self.permission is not None:
            hint = f"the plugin needs `{self.permission.value}` for this"
        return Diagnostic(
            message=self.message,
            span=self.span,
            hint=hint,
            code=self.code,
            severity=self.severity,
            source_line=source_line(source, self.line, "python") if source is not None else None,
        )

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.column}: {self.code} {self.message}"


def implied_permissions(findings: Iterable[CodeFinding]) -> frozenset[Permission]:
    """Every permission the findings imply the scanned code uses."""
    return frozenset(f.permission for f in findings if f.permission is not None)


# --------------------------------------------------------------------------------------
# What is sensitive. Names are fully qualified after alias resolution; ``()`` marks the
# result of a call, so ``requests.Session().get`` is a method of a Session object.

# Module and call signatures come from the registry of families (``families.scan_modules``
# and ``families.scan_signature``, ``families.scan_openers``).
_NETWORK_MODULES = scan_modules("network")
# Parts of ``urllib`` that only manipulate strings; importing them is not networking.
_NOT_NETWORK = ("urllib.parse", "urllib.error", "urllib.response")
_NETWORK_FUNCTIONS = frozenset(scan_signature("network:request").functions)

_SUBPROCESS_MODULES = scan_modules("subprocess")
_SUBPROCESS_FUNCTIONS = frozenset(scan_signature("subprocess:execute").functions)
_SUBPROCESS_PREFIXES = scan_signature("subprocess:execute").prefixes

_NATIVE_MODULES = frozenset({"ctypes", "_ctypes", "cffi"})
_DATABASE_MODULES = scan_modules("database")

_DELETE, _WRITE, _READ = (scan_signature(p) for p in ("file:delete", "file:write", "file:read"))
_FILE_DELETE = frozenset(_DELETE.functions)
_FILE_WRITE = frozenset(_WRITE.functions)
_FILE_WRITE_PREFIXES = _WRITE.prefixes
_FILE_READ = frozenset(_READ.functions)

# Openers whose mode decides between reading and writing: position of the mode argument
# and the mode used when it is left out.
_OPENERS: dict[str, tuple[int, str]] = scan_openers()
_WRITE_MODE_CHARACTERS = frozenset("wax+")
_READ_ONLY_OS_FLAGS = frozenset({
    "os.O_RDONLY", "os.O_CLOEXEC", "os.O_NOFOLLOW", "os.O_NONBLOCK", "os.O_DIRECTORY",
    "os.O_NOCTTY", "os.O_BINARY", "os.O_NOINHERIT", "os.O_NOATIME",
})

_PATH_WRITE_METHODS = frozenset(_WRITE.path_methods)
_PATH_DELETE_METHODS = frozenset(_DELETE.path_methods)
_PATH_READ_METHODS = frozenset(_READ.path_methods)
# Method names so particular to pathlib that a call on an object the scan cannot identify
# (``self.root.write_text(...)``) is still taken as file access. ``rename``, ``replace``
# or ``open`` are not here: strings and data frames have them too.
_PATH_HEURISTIC_METHODS = frozenset({
    "write_text", "write_bytes", "touch", "mkdir", "symlink_to", "hardlink_to", "unlink",
    "rmdir", "read_text", "read_bytes",
})
# A pathlib object: a Path, the result of calling Path, or what Path methods return.
_PATH_OBJECT = re.compile(
    r"pathlib\.(?:Posix|Windows)?Path(?:\(\)|\.(?:home|cwd)\(\))?"
    r"(?:\.(?:parent|absolute\(\)|resolve\(\)|expanduser\(\)|with_name\(\)|with_suffix\(\)"
    r"|with_stem\(\)|joinpath\(\)|relative_to\(\)))*"
)

_DYNAMIC_CODE = frozenset({"builtins.eval", "builtins.exec", "builtins.compile"})
# Flagged only when called: ``isinstance(f, types.FunctionType)`` is ordinary code.
_DYNAMIC_CODE_CALLS = frozenset({
    "runpy.run_path", "runpy.run_module", "marshal.loads", "types.FunctionType",
    "types.CodeType",
})
_IMPORT_FUNCTIONS = frozenset({"builtins.__import__", "importlib.import_module",
                               "importlib.__import__"})
_FILE_LOADERS = frozenset({
    "importlib.util.spec_from_file_location", "importlib.machinery.SourceFileLoader",
    "importlib.machinery.SourcelessFileLoader", "importlib.machinery.ExtensionFileLoader",
})
_ATTRIBUTE_FUNCTIONS = frozenset({"builtins.getattr", "builtins.setattr", "builtins.delattr"})

_BUILTIN_NAMES = frozenset(dir(builtins))
_SOURCE_SUFFIXES = frozenset({".py", ".pyw"})
_NATIVE_SUFFIXES = frozenset({".so", ".pyd", ".dll", ".dylib"})
_BYTECODE_SUFFIXES = frozenset({".pyc", ".pyo"})
_MAX_FILE_BYTES = 10 * 1024 * 1024
# Bounds that keep hostile input (huge constant chains, self-referencing aliases) cheap.
_MAX_DEPTH = 100
_MAX_FOLDED = 1000
_MAX_ALIAS_PASSES = 5
_MAX_ALIASES_PER_NAME = 16


def _under(name: str, modules: Iterable[str]) -> bool:
    return any(name == m or name.startswith(m + ".") for m in modules)


def _is_network(name: str) -> bool:
    return not _under(name, _NOT_NETWORK) and _under(name, _NETWORK_MODULES)


def _is_subprocess_function(name: str) -> bool:
    return name in _SUBPROCESS_FUNCTIONS or name.startswith(_SUBPROCESS_PREFIXES)


def _normalize(name: str) -> str:
    # ``posix`` and ``nt`` are what ``os`` re-exports; ``posix.system`` is ``os.system``.
    for platform_module in ("posix.", "nt."):
        if name.startswith(platform_module):
            return "os." + name[len(platform_module):]
    return name


def _display(name: str) -> str:
    if name.startswith("builtins."):
        return name[len("builtins."):]
    head, _, method = name.rpartition(".")
    if _PATH_OBJECT.fullmatch(head):
        return f"Path.{method}"
    return name


def _path_method(name: str) -> str | None:
    """The pathlib method ``name`` calls on a path object, or None."""
    head, _, method = name.rpartition(".")
    return method if head and _PATH_OBJECT.fullmatch(head) else None


def _fold(node: ast.AST, depth: int = 0) -> str | None:
    """The string an expression made only of string constants evaluates to, or None."""
    if depth > _MAX_DEPTH:
        return None
    result: str | None = None
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        result = node.value
    elif isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        left, right = _fold(node.left, depth + 1), _fold(node.right, depth + 1)
        if left is not None and right is not None:
            result = left + right
    elif isinstance(node, ast.JoinedStr):
        parts = [_fold(v, depth + 1) for v in node.values]
        if all(p is not None for p in parts):
            result = "".join(p for p in parts if p is not None)
    elif isinstance(node, ast.FormattedValue) and node.format_spec is None:
        result = _fold(node.value, depth + 1)
    elif isinstance(node, ast.Call) and not node.keywords and len(node.args) == 1:
        result = _fold_call(node, depth)
    elif isinstance(node, ast.Subscript) and isinstance(node.slice, ast.Slice):
        # ``'metsys'[::-1]``
        inner = _fold(node.value, depth + 1)
        step = node.slice.step
        if (inner is not None and node.slice.lower is None and node.slice.upper is None
                and isinstance(step, ast.UnaryOp) and isinstance(step.op, ast.USub)
                and isinstance(step.operand, ast.Constant) and step.operand.value == 1):
            result = inner[::-1]
    if result is not None and len(result) > _MAX_FOLDED:
        return None
    return result


def _fold_call(node: ast.Call, depth: int) -> str | None:
    func, arg = node.func, node.args[0]
    if isinstance(func, ast.Name) and func.id == "chr":
        if isinstance(arg, ast.Constant) and isinstance(arg.value, int):
            if 0 <= arg.value <= 0x10FFFF:
                return chr(arg.value)
        return None
    if isinstance(func, ast.Attribute) and func.attr == "join" and isinstance(arg, (ast.List,
                                                                                   ast.Tuple)):
        separator = _fold(func.value, depth + 1)
        parts = [_fold(e, depth + 1) for e in arg.elts]
        if separator is not None and all(p is not None for p in parts):
            return separator.join(p for p in parts if p is not None)
    return None


def _is_literal_string(node: ast.AST | None) -> bool:
    return isinstance(node, ast.Constant) and isinstance(node.value, str)


def _argument(call: ast.Call, index: int, keyword: str) -> ast.AST | None:
    """The argument at ``index`` or named ``keyword``, or None when not given plainly."""
    for kw in call.keywords:
        if kw.arg == keyword:
            return kw.value
    positional = call.args[:index + 1]
    if any(isinstance(a, ast.Starred) for a in positional):
        return None
    return call.args[index] if len(call.args) > index else None


def _has_unpacking(call: ast.Call, index: int) -> bool:
    return (any(isinstance(a, ast.Starred) for a in call.args[:index + 1])
            or any(kw.arg is None for kw in call.keywords))


class _Resolver:
    """Maps expressions to the qualified names they stand for, across import aliases.

    The analysis is flow-insensitive on purpose: a name bound to ``os.system`` anywhere in
    the file is treated as ``os.system`` everywhere, which errs towards reporting.
    """

    def __init__(self, tree: ast.Module) -> None:
        self.aliases: dict[str, set[str]] = {}
        self.star_modules: list[str] = []
        self.bound: set[str] = set()
        self.shadowed: set[str] = set()
        assignments = self._collect(tree)
        for _ in range(_MAX_ALIAS_PASSES):
            if not self._propagate(assignments):
                break

    def _bind(self, name: str, qualified: str) -> None:
        self.bound.add(name)
        targets = self.aliases.setdefault(name, set())
        if len(targets) < _MAX_ALIASES_PER_NAME:
            targets.add(qualified)

    def _collect(self, tree: ast.Module) -> list[tuple[str, ast.expr]]:
        assignments: list[tuple[str, ast.expr]] = []
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.asname:
                        self._bind(alias.asname, alias.name)
                    else:
                        top = alias.name.split(".")[0]
                        self._bind(top, top)
            elif isinstance(node, ast.ImportFrom):
                for alias in node.names:
                    if node.level or not node.module:
                        # A relative import names the plugin's own modules.
                        if alias.name != "*":
                            self.bound.add(alias.asname or alias.name)
                    elif alias.name == "*":
                        self.star_modules.append(node.module)
                    else:
                        self._bind(alias.asname or alias.name, f"{node.module}.{alias.name}")
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                self.bound.add(node.name)
            elif isinstance(node, ast.Name) and not isinstance(node.ctx, ast.Load):
                self.bound.add(node.id)
            elif isinstance(node, ast.arg):
                self.bound.add(node.arg)
            elif isinstance(node, ast.ExceptHandler) and node.name:
                self.bound.add(node.name)
            elif isinstance(node, (ast.MatchAs, ast.MatchStar)) and node.name:
                self.bound.add(node.name)
            elif isinstance(node, ast.MatchMapping) and node.rest:
                self.bound.add(node.rest)
            assignments.extend(_assignments(node))
        # Only a module-level definition replaces a builtin everywhere in the file; a
        # method or local of the same name does not, so the builtin is still assumed.
        for statement in tree.body:
            if isinstance(statement, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                if statement.name in _BUILTIN_NAMES:
                    self.shadowed.add(statement.name)
        return assignments

    def _propagate(self, assignments: list[tuple[str, ast.expr]]) -> bool:
        changed = False
        for name, value in assignments:
            for qualified in self.resolve(value):
                known = self.aliases.setdefault(name, set())
                if qualified not in known and len(known) < _MAX_ALIASES_PER_NAME:
                    known.add(qualified)
                    changed = True
        return changed

    def resolve(self, node: ast.AST, depth: int = 0) -> frozenset[str]:
        """The qualified names ``node`` may evaluate to; empty when unknown."""
        if depth > _MAX_DEPTH:
            return frozenset()
        if isinstance(node, ast.Name):
            return self._resolve_name(node.id)
        if isinstance(node, ast.Attribute):
            return frozenset(f"{q}.{node.attr}" for q in self.resolve(node.value, depth + 1))
        if isinstance(node, ast.Call):
            return self._resolve_call(node, depth)
        if isinstance(node, ast.Subscript):
            key = _fold(node.slice)
            if key is None:
                return frozenset()
            found: set[str] = set()
            for q in self.resolve(node.value, depth + 1):
                if q == "builtins":
                    found.add(f"builtins.{key}")  # __builtins__['eval'] as a dict
                elif q.endswith(".__dict__"):
                    found.add(f"{q[:-len('.__dict__')]}.{key}")
            return frozenset(found)
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div):
            # ``Path(x) / "name"`` is still a path.
            return frozenset(q for q in self.resolve(node.left, depth + 1)
                             if _PATH_OBJECT.fullmatch(q))
        if isinstance(node, ast.Await):
            return self.resolve(node.value, depth + 1)
        return frozenset()

    def _resolve_name(self, name: str) -> frozenset[str]:
        found = set(self.aliases.get(name, ()))
        if name == "__builtins__":
            found.add("builtins")
        elif name in _BUILTIN_NAMES:
            if name not in self.shadowed:
                found.add(f"builtins.{name}")
        elif name not in self.bound:
            found.update(f"{module}.{name}" for module in self.star_modules)
        return frozenset(found)

    def _resolve_call(self, node: ast.Call, depth: int) -> frozenset[str]:
        functions = self.resolve(node.func, depth + 1)
        found = {f"{q}()" for q in functions}
        if functions & _IMPORT_FUNCTIONS:
            module = self.imported_module(node, functions)
            if module is not None:
                found.add(module)
        if "builtins.getattr" in functions and len(node.args) >= 2:
            attribute = _fold(node.args[1])
            if attribute is not None:
                found.update(f"{q}.{attribute}" for q in self.resolve(node.args[0], depth + 1))
        if "builtins.vars" in functions and len(node.args) == 1:
            found.update(f"{q}.__dict__" for q in self.resolve(node.args[0], depth + 1))
        return frozenset(found)

    @staticmethod
    def imported_module(node: ast.Call, functions: frozenset[str]) -> str | None:
        """The module a call to ``__import__`` or ``import_module`` returns, if foldable."""
        name = _argument(node, 0, "name")
        folded = _fold(name) if name is not None else None
        if folded is None or not folded:
            return None
        if "importlib.import_module" in functions:
            return folded
        fromlist = _argument(node, 3, "fromlist")
        has_fromlist = fromlist is not None and not (
            isinstance(fromlist, ast.Constant) and not fromlist.value)
        # ``__import__('os.path')`` returns ``os`` unless a fromlist is given.
        return folded if has_fromlist else folded.split(".")[0]


def _assignments(node: ast.AST) -> Iterator[tuple[str, ast.expr]]:
    """``(name, value)`` for every plain binding of a name to an expression in ``node``."""
    if isinstance(node, ast.Assign):
        for target in node.targets:
            yield from _pairs(target, node.value)
    elif isinstance(node, ast.AnnAssign) and node.value is not None:
        yield from _pairs(node.target, node.value)
    elif isinstance(node, ast.NamedExpr):
        yield from _pairs(node.target, node.value)
    elif isinstance(node, ast.withitem) and node.optional_vars is not None:
        yield from _pairs(node.optional_vars, node.context_expr)


def _pairs(target: ast.AST, value: ast.expr) -> Iterator[tuple[str, ast.expr]]:
    if isinstance(target, ast.Name):
        yield target.id, value
    elif (isinstance(target, (ast.Tuple, ast.List)) and isinstance(value, (ast.Tuple, ast.List))
          and len(target.elts) == len(value.elts)):
        for sub_target, sub_value in zip(target.elts, value.elts, strict=True):
            yield from _pairs(sub_target, sub_value)


class _Positions:
    """Converts the UTF-8 byte offsets of :mod:`ast` into 1-based character columns."""

    def __init__(self, text: str) -> None:
        self._lines = text.split("\n")

    def column(self, line: int, byte_offset: int) -> int:
        if not 1 <= line <= len(self._lines):
            return byte_offset + 1
        encoded = self._lines[line - 1].encode("utf-8", errors="surrogatepass")
        return len(encoded[:byte_offset].decode("utf-8", errors="ignore")) + 1


class _ModuleScan:
    """Walks one parsed module and collects its findings."""

    def __init__(self, tree: ast.Module, text: str, filename: str) -> None:
        self._tree = tree
        self._file = filename
        self._positions = _Positions(text)
        self._resolver = _Resolver(tree)
        self._parents: dict[ast.AST, ast.AST] = {}
        for parent in ast.walk(tree):
            for child in ast.iter_child_nodes(parent):
                self._parents[child] = parent
        self.findings: list[CodeFinding] = []

    def run(self) -> list[CodeFinding]:
        for node in ast.walk(self._tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    self._check_import(alias, alias.name)
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                for alias in node.names:
                    name = node.module if alias.name == "*" else f"{node.module}.{alias.name}"
                    self._check_import(alias, name)
            if isinstance(node, ast.Call):
                self._check_call(node)
            if isinstance(node, ast.Subscript):
                self._check_subscript(node)
            if isinstance(node, (ast.Name, ast.Attribute, ast.Call, ast.Subscript)):
                self._check_reference(node)
        return self.findings

    # -- reporting ------------------------------------------------------------------------

    def _emit(self, node: ast.AST, code: str, message: str) -> None:
        kind = FINDING_KINDS[code]
        line = getattr(node, "lineno", 1) or 1
        end_line = getattr(node, "end_lineno", None) or line
        column = self._positions.column(line, getattr(node, "col_offset", 0) or 0)
        end_offset = getattr(node, "end_col_offset", None)
        end_column = (self._positions.column(end_line, end_offset) if end_offset is not None
                      else column)
        self.findings.append(CodeFinding(
            file=self._file, line=line, column=column, end_line=end_line,
            end_column=end_column, code=code, name=kind.name, message=message,
            permission=kind.permission, severity=kind.severity,
        ))

    # -- imports --------------------------------------------------------------------------

    def _check_import(self, node: ast.AST, name: str) -> None:
        """Findings for importing ``name`` (a module, or ``module.member``)."""
        if _is_network(name):
            self._emit(node, "SC201", f"import of `{name}` allows network requests")
        if _under(name, _SUBPROCESS_MODULES) or _is_subprocess_function(_normalize(name)):
            self._emit(node, "SC301", f"import of `{name}` allows running other programs")
        if _under(name, _NATIVE_MODULES):
            self._emit(node, "SC401", f"import of `{name}` lets the plugin call native code "
                                      "that no python-level check sees")
        if _under(name, _DATABASE_MODULES):
            self._emit(node, "SC601", f"import of `{name}` opens databases directly, around "
                                      "the host's database capability")

    # -- calls ----------------------------------------------------------------------------

    def _check_call(self, node: ast.Call) -> None:
        functions = self._resolver.resolve(node.func)
        if functions & _IMPORT_FUNCTIONS:
            self._check_dynamic_import(node, functions)
        attribute_functions = sorted(functions & _ATTRIBUTE_FUNCTIONS)
        if attribute_functions and len(node.args) >= 2 and not _is_literal_string(node.args[1]):
            folded = _fold(node.args[1])
            suffix = f" (folds to `{folded}`)" if folded is not None else ""
            self._emit(node, "SC503", f"`{_display(attribute_functions[0])}` with an attribute "
                                      f"name computed at run time{suffix}")
        for function in sorted(functions):
            self._check_opener(node, function)
        self._check_path_heuristic(node)

    def _check_dynamic_import(self, node: ast.Call, functions: frozenset[str]) -> None:
        shown = _display(sorted(functions & _IMPORT_FUNCTIONS)[0])
        argument = _argument(node, 0, "name")
        if not _is_literal_string(argument):
            folded = _fold(argument) if argument is not None else None
            suffix = f" (folds to `{folded}`)" if folded is not None else ""
            self._emit(node, "SC501", f"`{shown}` with a module name computed at run "
                                      f"time{suffix}")
        if argument is not None:
            full = _fold(argument)
            if full:
                self._check_import(node, full)

    def _check_opener(self, node: ast.Call, function: str) -> None:
        if _normalize(function) == "os.open":
            self._check_os_open(node)
            return
        if _path_method(function) == "open":
            index, default = 0, "r"
        elif function in _OPENERS:
            index, default = _OPENERS[function]
        else:
            return
        shown = _display(function)
        mode_node = _argument(node, index, "mode")
        if mode_node is None and _has_unpacking(node, index):
            self._emit(node, "SC101", f"`{shown}` with a mode chosen at run time; writes assumed")
            return
        mode = default if mode_node is None else _fold(mode_node)
        if mode is None:
            self._emit(node, "SC101", f"`{shown}` with a mode chosen at run time; writes assumed")
        elif _WRITE_MODE_CHARACTERS & set(mode):
            self._emit(node, "SC101", f"`{shown}` with mode `{mode}` writes files")
        else:
            self._emit(node, "SC103", f"`{shown}` reads files")

    def _check_os_open(self, node: ast.Call) -> None:
        flags = _argument(node, 1, "flags")
        if flags is not None and self._read_only_flags(flags):
            self._emit(node, "SC103", "`os.open` reads files")
        else:
            self._emit(node, "SC101", "`os.open` with flags that may write files")

    def _read_only_flags(self, node: ast.AST) -> bool:
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr):
            return self._read_only_flags(node.left) and self._read_only_flags(node.right)
        if isinstance(node, ast.Constant):
            return node.value == 0
        names = {_normalize(q) for q in self._resolver.resolve(node)}
        return bool(names) and names <= _READ_ONLY_OS_FLAGS

    def _check_path_heuristic(self, node: ast.Call) -> None:
        func = node.func
        if not isinstance(func, ast.Attribute) or func.attr not in _PATH_HEURISTIC_METHODS:
            return
        for receiver in self._resolver.resolve(func.value):
            qualified = _normalize(f"{receiver}.{func.attr}")
            if _PATH_OBJECT.fullmatch(receiver) or self._file_codes(qualified):
                return  # the reference check reports it under its real name
        code = ("SC102" if func.attr in _PATH_DELETE_METHODS
                else "SC103" if func.attr in _PATH_READ_METHODS else "SC101")
        verb = {"SC101": "writes", "SC102": "deletes", "SC103": "reads"}[code]
        self._emit(node, code, f"`.{func.attr}()` looks like a pathlib call that {verb} files")

    def _check_subscript(self, node: ast.Subscript) -> None:
        if isinstance(node.slice, ast.Slice) or _is_literal_string(node.slice):
            return
        for q in self._resolver.resolve(node.value):
            if q == "builtins" or q.endswith(".__dict__"):
                folded = _fold(node.slice)
                suffix = f" (folds to `{folded}`)" if folded is not None else ""
                self._emit(node, "SC503", f"`{_display(q)}` indexed with a name computed at "
                                          f"run time{suffix}")
                return

    # -- references to sensitive functions ------------------------------------------------

    def _check_reference(self, node: ast.AST) -> None:
        parent = self._parents.get(node)
        if isinstance(parent, ast.Attribute) and parent.value is node:
            return  # only the whole dotted name counts: `os.path.join`, not `os.path`
        if isinstance(node, (ast.Name, ast.Attribute, ast.Subscript)) and not isinstance(
                node.ctx, ast.Load):
            return
        called = isinstance(parent, ast.Call) and parent.func is node
        # `run = subprocess.run` is followed through the alias to where it is called.
        aliased = (isinstance(parent, (ast.Assign, ast.AnnAssign, ast.NamedExpr))
                   and parent.value is node and _all_names(parent))
        if aliased:
            return
        for qualified in sorted(self._resolver.resolve(node)):
            for code, message in self._classify(_normalize(qualified), called):
                self._emit(node, code, message)

    def _classify(self, name: str, called: bool) -> list[tuple[str, str]]:
        shown = _display(name)
        found: list[tuple[str, str]] = []
        if name in _DYNAMIC_CODE or (called and name in _DYNAMIC_CODE_CALLS):
            found.append(("SC502", f"`{shown}` runs code built at run time"))
        if called and name in _FILE_LOADERS:
            found.append(("SC501", f"`{shown}` loads a module from a file path"))
        if _is_subprocess_function(name) or (called and _under(name, _SUBPROCESS_MODULES)):
            found.append(("SC302", f"`{shown}` runs other programs"))
        if name in _NETWORK_FUNCTIONS or (called and _is_network(name)):
            found.append(("SC202", f"`{shown}` makes network requests"))
        if called and _under(name, _DATABASE_MODULES):
            found.append(("SC601", f"`{shown}` opens a database directly, around the host's "
                                   "database capability"))
        found.extend(self._file_codes(name))
        if not called and name in _OPENERS:
            found.append(("SC101", f"`{shown}` passed around as a value; writes assumed"))
        return found

    @staticmethod
    def _file_codes(name: str) -> list[tuple[str, str]]:
        shown = _display(name)
        method = _path_method(name)
        if name in _FILE_DELETE or method in _PATH_DELETE_METHODS:
            return [("SC102", f"`{shown}` deletes files")]
        if name in _FILE_WRITE or name.startswith(_FILE_WRITE_PREFIXES) or (
                method in _PATH_WRITE_METHODS):
            return [("SC101", f"`{shown}` writes or changes files")]
        if name in _FILE_READ or method in _PATH_READ_METHODS:
            return [("SC103", f"`{shown}` reads files")]
        return []


def _all_names(assignment: ast.Assign | ast.AnnAssign | ast.NamedExpr) -> bool:
    targets = assignment.targets if isinstance(assignment, ast.Assign) else [assignment.target]
    return all(isinstance(t, ast.Name) for t in targets)


def _dedupe(findings: Iterable[CodeFinding]) -> tuple[CodeFinding, ...]:
    """Sorted findings, one per code and line (``requests.Session().get`` is one finding)."""
    seen: set[tuple[str, int, str]] = set()
    kept: list[CodeFinding] = []
    for finding in sorted(findings, key=lambda f: (f.file, f.line, f.column, f.code)):
        key = (finding.file, finding.line, finding.code)
        if key not in seen:
            seen.add(key)
            kept.append(finding)
    return tuple(kept)


def _file_finding(filename: str, code: str, message: str, line: int = 1, column: int = 1,
                  end_line: int = 0, end_column: int = 0) -> CodeFinding:
    kind = FINDING_KINDS[code]
    return CodeFinding(
        file=filename, line=line, column=column, end_line=end_line or line,
        end_column=end_column or column, code=code, name=kind.name, message=message,
        permission=kind.permission, severity=kind.severity,
    )


def scan_source(text: str, filename: str) -> tuple[CodeFinding, ...]:
    """Scan the Python source ``text``; ``filename`` is what the findings name.

    A file that does not parse gives one ``SC000`` finding instead of an exception.
    """
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    try:
        with warnings.catch_warnings():
            # Plugin code may contain invalid escapes and the like; their warnings are the
            # plugin's business, not the host's (and tests turn warnings into errors).
            warnings.simplefilter("ignore")
            tree = ast.parse(text, filename=filename)
    except SyntaxError as exc:
        message = exc.msg or "invalid syntax"
        line = max(exc.lineno or 1, 1)
        column = max(exc.offset or 1, 1)
        end_line = max(exc.end_lineno or line, line)
        end_column = exc.end_offset if exc.end_offset and exc.end_offset > 0 else column
        return (_file_finding(
            filename, "SC000", f"syntax error: {message[:1].lower()}{message[1:]}", line,
            column, end_line, end_column,
        ),)
    except ValueError as exc:  # null bytes, on Python before 3.12
        return (_file_finding(filename, "SC000", f"syntax error: {exc}"),)
    except (RecursionError, MemoryError):
        return (_file_finding(filename, "SC000", "syntax error: the code is nested too deeply "
                                                 "to parse"),)
    try:
        return _dedupe(_ModuleScan(tree, text, filename).run())
    except RecursionError:
        return (_file_finding(filename, "SC002", "scan incomplete: the code is nested too "
                                                 "deeply to analyse"),)


def _read_source(path: Path, filename: str) -> str | CodeFinding:
    """The text of a source file, or the ``SC001`` finding saying why it has none."""
    try:
        size = path.stat().st_size
        if size > _MAX_FILE_BYTES:
            return _file_finding(filename, "SC001", f"file is too large to scan ({size} bytes)")
        data = path.read_bytes()
    except OSError as exc:
        return _file_finding(filename, "SC001", f"file cannot be read: {exc.strerror or exc}")
    if b"\0" in data:
        return _file_finding(filename, "SC001", "binary file where python source was expected")
    try:
        # Honours a PEP 263 coding line and a BOM the way the import system would.
        return importlib.util.decode_source(data)
    except (UnicodeDecodeError, SyntaxError, LookupError) as exc:
        return _file_finding(filename, "SC001", f"file is not valid text: {exc}")


def _inside(path: Path, root: Path) -> bool:
    try:
        path.resolve().relative_to(root)
    except (ValueError, OSError, RuntimeError):  # RuntimeError: a symlink loop
        return False
    return True


def scan_plugin(plugin_dir: Path) -> tuple[CodeFinding, ...]:
    """Scan every Python file of a plugin directory.

    ``__pycache__`` and hidden directories are skipped. Symlinks are followed only while
    they stay inside the directory (code reachable under a visible name is importable, so
    it is scanned under that name); one that points outside is an ``SC003`` finding and is
    not read. Compiled extension modules and loose ``.pyc`` files are findings too, since
    their code cannot be scanned. Raises :class:`UsageError` when ``plugin_dir`` is not a
    directory.
    """
    root = Path(plugin_dir)
    if not root.is_dir():
        raise UsageError(f"plugin directory `{root}` does not exist or is not a directory")
    real_root = root.resolve()
    findings: list[CodeFinding] = []
    visited: set[Path] = set()  # real directories already walked: no symlink loops
    pending = [root]
    while pending:
        directory = pending.pop()
        real = directory.resolve()
        if real in visited:
            continue
        visited.add(real)
        rel_dir = directory.relative_to(root).as_posix()
        try:
            names = sorted(entry.name for entry in os.scandir(directory))
        except OSError as exc:
            findings.append(_file_finding(rel_dir, "SC001", f"directory cannot be read: "
                                                            f"{exc.strerror or exc}"))
            continue
        subdirectories: list[Path] = []
        for name in names:
            path = directory / name
            if path.is_dir():
                if name == "__pycache__" or name.startswith("."):
                    continue
                if path.is_symlink() and not _inside(path, real_root):
                    rel = path.relative_to(root).as_posix()
                    findings.append(_file_finding(rel, "SC003", f"`{rel}` is a symlink to "
                                                  "outside the plugin directory; not scanned"))
                    continue
                subdirectories.append(path)
            else:
                findings.extend(_scan_file(path, root, real_root))
        pending.extend(reversed(subdirectories))
    return _dedupe(findings)


def _scan_file(path: Path, root: Path, real_root: Path) -> tuple[CodeFinding, ...]:
    rel = path.relative_to(root).as_posix()
    suffix = path.suffix.lower()
    if suffix not in _SOURCE_SUFFIXES | _NATIVE_SUFFIXES | _BYTECODE_SUFFIXES:
        return ()
    if path.is_symlink() and not _inside(path, real_root):
        return (_file_finding(rel, "SC003", f"`{rel}` is a symlink to outside the plugin "
                                            "directory; not scanned"),)
    if suffix in _NATIVE_SUFFIXES:
        return (_file_finding(rel, "SC402", f"`{rel}` is a compiled extension module; its "
                                            "code cannot be scanned"),)
    if suffix in _BYTECODE_SUFFIXES:
        return (_file_finding(rel, "SC403", f"`{rel}` is bytecode outside `__pycache__`; "
                                            "python can import it without any source"),)
    text = _read_source(path, rel)
    if isinstance(text, CodeFinding):
        return (text,)
    return scan_source(text, rel)
