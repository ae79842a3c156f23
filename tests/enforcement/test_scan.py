"""Tests of the static scan of plugin code."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import pytest

from policy_engine.diagnostics import Severity
from policy_engine.enforcement.host.scan import (
    FINDING_KINDS,
    CodeFinding,
    implied_permissions,
    scan_plugin,
    scan_source,
)
from policy_engine.errors import UsageError
from policy_engine.permissions import Permission


def scan(code: str) -> tuple[CodeFinding, ...]:
    return scan_source(textwrap.dedent(code), "plugin.py")


def codes(code: str) -> list[str]:
    return [f.code for f in scan(code)]


def only(code: str, finding_code: str) -> CodeFinding:
    found = [f for f in scan(code) if f.code == finding_code]
    assert len(found) == 1, scan(code)
    return found[0]


# -- the table -------------------------------------------------------------------------------


def test_every_code_is_documented_in_the_module_table() -> None:
    import policy_engine.enforcement.host.scan as module

    assert module.__doc__ is not None
    for kind in FINDING_KINDS.values():
        assert kind.code in module.__doc__
        assert kind.name in module.__doc__
        assert kind.name == kind.name.lower() and " " not in kind.name


# -- one snippet per finding kind ------------------------------------------------------------


@pytest.mark.parametrize(
    ("snippet", "expected"),
    [
        ("import os\nos.remove('x')\n", "SC102"),
        ("import os\nos.unlink('x')\n", "SC102"),
        ("import os\nos.rmdir('x')\n", "SC102"),
        ("import shutil\nshutil.rmtree('x')\n", "SC102"),
        ("from pathlib import Path\nPath('x').unlink()\n", "SC102"),
        ("import os\nos.rename('a', 'b')\n", "SC101"),
        ("import os\nos.replace('a', 'b')\n", "SC101"),
        ("import os\nos.chmod('a', 0o777)\n", "SC101"),
        ("import os\nos.makedirs('a')\n", "SC101"),
        ("import os\nos.mkdir('a')\n", "SC101"),
        ("import shutil\nshutil.move('a', 'b')\n", "SC101"),
        ("import shutil\nshutil.copy2('a', 'b')\n", "SC101"),
        ("import shutil\nshutil.copytree('a', 'b')\n", "SC101"),
        ("open('x', 'w')\n", "SC101"),
        ("open('x', mode='a')\n", "SC101"),
        ("open('x', 'x')\n", "SC101"),
        ("open('x', 'r+')\n", "SC101"),
        ("from pathlib import Path\nPath('x').write_text('y')\n", "SC101"),
        ("import pathlib\npathlib.Path('x').write_bytes(b'y')\n", "SC101"),
        ("open('x')\n", "SC103"),
        ("open('x', 'rb')\n", "SC103"),
        ("from pathlib import Path\nPath('x').read_text()\n", "SC103"),
        ("import socket\n", "SC201"),
        ("import urllib\n", "SC201"),
        ("import urllib.request\n", "SC201"),
        ("import http.client\n", "SC201"),
        ("import requests\n", "SC201"),
        ("import httpx\n", "SC201"),
        ("import aiohttp\n", "SC201"),
        ("from urllib import request\n", "SC201"),
        ("import subprocess\n", "SC301"),
        ("import pty\n", "SC301"),
        ("import ctypes\n", "SC401"),
        ("import cffi\n", "SC401"),
        ("from ctypes import CDLL\n", "SC401"),
        ("import importlib\nimportlib.import_module(name)\n", "SC501"),
        ("__import__(name)\n", "SC501"),
        ("eval('1')\n", "SC502"),
        ("exec('x = 1')\n", "SC502"),
        ("compile('1', 'f', 'eval')\n", "SC502"),
        ("getattr(obj, name)\n", "SC503"),
        ("import sqlite3\n", "SC601"),
    ],
)
def test_each_kind_of_finding(snippet: str, expected: str) -> None:
    assert expected in codes(snippet)


@pytest.mark.parametrize(
    ("snippet", "expected"),
    [
        ("import socket\nsocket.create_connection(('h', 1))\n", "SC202"),
        ("import urllib.request\nurllib.request.urlopen('http://x')\n", "SC202"),
        ("import http.client\nhttp.client.HTTPSConnection('x')\n", "SC202"),
        ("import requests\nrequests.get('http://x')\n", "SC202"),
        ("import httpx\nhttpx.post('http://x')\n", "SC202"),
        ("import aiohttp\naiohttp.ClientSession()\n", "SC202"),
        ("import subprocess\nsubprocess.run(['ls'])\n", "SC302"),
        ("import subprocess\nsubprocess.Popen(['ls'])\n", "SC302"),
        ("import os\nos.system('ls')\n", "SC302"),
        ("import os\nos.popen('ls')\n", "SC302"),
        ("import os\nos.execv('/bin/ls', ['ls'])\n", "SC302"),
        ("import os\nos.execlp('ls', 'ls')\n", "SC302"),
        ("import os\nos.spawnlp(os.P_WAIT, 'ls', 'ls')\n", "SC302"),
        ("import os\nos.fork()\n", "SC302"),
        ("import pty\npty.spawn('sh')\n", "SC302"),
    ],
)
def test_calls_are_reported_on_their_own_line(snippet: str, expected: str) -> None:
    found = [f for f in scan(snippet) if f.code == expected]
    assert [f.line for f in found] == [2]


def test_direct_sqlite_use() -> None:
    found = scan("import sqlite3\nsqlite3.connect('x.db')\n")
    assert [(f.line, f.code) for f in found] == [(1, "SC601"), (2, "SC601")]
    assert implied_permissions(found) == {Permission.DATABASE_WRITE}


def test_finding_fields() -> None:
    finding = only("import os\n\nos.system('rm -rf /')\n", "SC302")
    assert finding.file == "plugin.py"
    assert (finding.line, finding.column, finding.end_line, finding.end_column) == (3, 1, 3, 10)
    assert finding.name == "subprocess-call"
    assert finding.permission is Permission.SUBPROCESS_EXECUTE
    assert finding.severity is Severity.INFO
    assert finding.message == "`os.system` runs other programs"
    assert str(finding) == "plugin.py:3:1: SC302 `os.system` runs other programs"


def test_messages_are_lowercase_and_quote_user_names() -> None:
    for finding in scan(
        "import requests, subprocess, ctypes\nimport MyNet as n\neval(x)\n"
        "getattr(o, 'a' + b)\nopen(p, m)\n"
    ):
        assert finding.message[0].islower() or finding.message[0] == "`", finding
        assert "`" in finding.message


def test_columns_count_characters_not_bytes() -> None:
    finding = only("s = 'ééé'; import os; os.system('x')\n", "SC302")
    assert finding.column == len("s = 'ééé'; import os; ") + 1


def test_to_diagnostic_renders_a_caret() -> None:
    source = "import os\nos.remove(path)\n"
    finding = only(source, "SC102")
    rendered = finding.to_diagnostic(source).render()
    assert rendered.splitlines()[0] == "plugin.py:2:1: SC102 `os.remove` deletes files"
    assert "    os.remove(path)" in rendered
    assert "\n    ^^^^^^^^^\n" in rendered  # under `os.remove`
    assert "file:delete" in rendered


# -- open() modes ----------------------------------------------------------------------------


def test_open_for_reading_is_not_counted_as_a_write() -> None:
    found = scan("def load(p):\n    with open(p) as f:\n        return f.read()\n")
    assert [f.code for f in found] == ["SC103"]
    assert implied_permissions(found) == {Permission.FILE_READ}


def test_open_with_a_mode_chosen_at_run_time_is_assumed_to_write() -> None:
    finding = only("def save(p, mode):\n    open(p, mode)\n", "SC101")
    assert "writes assumed" in finding.message
    assert only("open(p, **options)\n", "SC101")


def test_open_mode_built_from_constants_is_folded() -> None:
    assert codes("open(p, 'r' + 'b')\n") == ["SC103"]
    assert codes("open(p, 'w' + 'b')\n") == ["SC101"]


def test_path_open_and_io_open_modes() -> None:
    assert codes("from pathlib import Path\nPath('x').open('w')\n") == ["SC101"]
    assert codes("from pathlib import Path\nPath('x').open()\n") == ["SC103"]
    assert codes("import io\nio.open('x', 'wb')\n") == ["SC101"]


def test_os_open_flags() -> None:
    assert codes("import os\nos.open('x', os.O_RDONLY)\n") == ["SC103"]
    assert codes("import os\nos.open('x', os.O_WRONLY | os.O_CREAT)\n") == ["SC101"]


def test_open_passed_as_a_value_is_assumed_to_write() -> None:
    assert "SC101" in codes("handles = list(map(open, paths))\n")


def test_pathlib_objects_are_followed_through_variables_and_division() -> None:
    snippet = """
        from pathlib import Path
        base = Path(__file__).parent
        target = base / "out.txt"
        target.write_text("x")
        base.joinpath("old").unlink()
    """
    assert [(f.line, f.code) for f in scan(snippet)] == [(5, "SC101"), (6, "SC102")]


def test_pathlib_method_names_on_unknown_objects_are_still_reported() -> None:
    finding = only("self.root.write_text('x')\n", "SC101")
    assert "pathlib" in finding.message


def test_string_methods_that_share_pathlib_names_are_not_file_access() -> None:
    assert codes("text = 'a'.replace('a', 'b')\nname.rename(columns={})\n") == []
    assert codes("from pathlib import Path\nPath('x').read_text().replace('a', 'b')\n") == [
        "SC103"
    ]


# -- alias resolution ------------------------------------------------------------------------


def test_import_as_alias() -> None:
    assert only("import os as o\no.system('ls')\n", "SC302").message == (
        "`os.system` runs other programs"
    )


def test_from_import_as_alias() -> None:
    found = scan("from os import system as s\ns('ls')\n")
    assert [(f.line, f.code) for f in found] == [(1, "SC301"), (2, "SC302")]


def test_star_import() -> None:
    found = scan("from subprocess import *\nrun(['ls'])\n")
    assert [(f.line, f.code) for f in found] == [(1, "SC301"), (2, "SC302")]


def test_star_import_does_not_capture_locally_defined_names() -> None:
    assert codes("from subprocess import *\ndef run(x):\n    pass\nrun(1)\n") == ["SC301"]


def test_assignment_alias() -> None:
    found = scan("import subprocess\nlaunch = subprocess.run\nlaunch(['ls'])\n")
    assert [(f.line, f.code) for f in found] == [(1, "SC301"), (3, "SC302")]


def test_submodule_import_and_from_import_of_submodule() -> None:
    assert "SC202" in codes("import urllib.request as ur\nur.urlopen('x')\n")
    assert "SC202" in codes("from urllib import request\nrequest.urlopen('x')\n")


def test_objects_returned_by_network_modules() -> None:
    found = scan("import requests\ns = requests.Session()\ns.get('http://x')\n")
    assert [(f.line, f.code) for f in found] == [(1, "SC201"), (2, "SC202"), (3, "SC202")]


def test_with_statement_binds_the_context_value() -> None:
    snippet = "import socket\nwith socket.socket() as s:\n    s.connect(('h', 1))\n"
    assert [(f.line, f.code) for f in scan(snippet)] == [
        (1, "SC201"), (2, "SC202"), (3, "SC202")
    ]


def test_reference_without_call_to_a_dangerous_function() -> None:
    assert "SC302" in codes("import os\nrunner = Runner(os.system)\n")


def test_same_named_attributes_of_other_modules_are_not_flagged() -> None:
    assert codes("import re\nre.compile('x')\nimport mylib\nmylib.system('x')\n") == []


def test_module_level_definition_shadows_a_builtin() -> None:
    assert codes("def eval(x):\n    return x\neval(1)\n") == []


def test_urllib_parse_is_not_networking() -> None:
    assert codes("import urllib.parse\nurllib.parse.quote('x')\n") == []
    assert codes("from urllib.parse import urlencode\nurlencode({})\n") == []


def test_exception_classes_of_network_modules_are_not_calls() -> None:
    snippet = "import requests\ntry:\n    pass\nexcept requests.RequestException:\n    pass\n"
    assert codes(snippet) == ["SC201"]


# -- obfuscation -----------------------------------------------------------------------------


def test_obfuscated_import_and_computed_getattr() -> None:
    found = scan("getattr(__import__('o' + 's'), 'sys' + 'tem')('id')\n")
    by_code = {f.code: f for f in found}
    assert {"SC501", "SC503"} <= set(by_code)
    assert by_code["SC501"].message == (
        "`__import__` with a module name computed at run time (folds to `os`)"
    )
    assert by_code["SC503"].message == (
        "`getattr` with an attribute name computed at run time (folds to `system`)"
    )
    # Folding the constants also shows what the code really calls.
    assert by_code["SC302"].message == "`os.system` runs other programs"


def test_literal_dynamic_imports_count_as_imports() -> None:
    assert codes("__import__('socket')\n") == ["SC201"]
    assert codes("import importlib\nimportlib.import_module('subprocess').run(['x'])\n") == [
        "SC301", "SC302"
    ]


def test_getattr_with_a_literal_name_resolves_the_attribute() -> None:
    found = scan("import os\ngetattr(os, 'system')('ls')\n")
    assert [f.code for f in found] == ["SC302"]


def test_builtins_reached_through_dictionaries() -> None:
    assert "SC502" in codes("__builtins__['ev' + 'al']('1')\n")
    assert "SC503" in codes("__builtins__[name]('1')\n")
    assert "SC502" in codes("import builtins\nvars(builtins)['exec']('x = 1')\n")


def test_reversed_and_joined_strings_are_folded() -> None:
    assert "SC302" in codes("import os\ngetattr(os, 'metsys'[::-1])('id')\n")
    assert "SC302" in codes("import os\ngetattr(os, ''.join(['sys', 'tem']))('id')\n")


def test_computed_import_that_cannot_be_folded() -> None:
    finding = only("import importlib\nimportlib.import_module(os.environ['M'])\n", "SC501")
    assert "folds" not in finding.message


def test_loading_a_module_from_a_file_path() -> None:
    snippet = "import importlib.util\nimportlib.util.spec_from_file_location('m', 'vendor/m.py')\n"
    assert "SC501" in codes(snippet)


def test_ctypes_and_cffi_imply_no_permission_and_are_errors() -> None:
    finding = only("import ctypes\n", "SC401")
    assert finding.name == "ctypes"
    assert finding.permission is None
    assert finding.severity is Severity.ERROR


# -- broken input ----------------------------------------------------------------------------


def test_syntax_error_is_a_finding_not_a_crash() -> None:
    (finding,) = scan_source("def f(:\n    pass\n", "broken.py")
    assert finding.code == "SC000"
    assert finding.name == "syntax-error"
    assert finding.file == "broken.py"
    assert (finding.line, finding.column) == (1, 7)
    assert finding.message.startswith("syntax error: ")


def test_null_bytes_are_a_syntax_error_finding() -> None:
    (finding,) = scan_source("x = 1\0\n", "nul.py")
    assert finding.code == "SC000"


def test_deeply_nested_code_does_not_crash_the_scan() -> None:
    found = scan_source("x = " + " + ".join(["'a'"] * 5000) + "\n", "deep.py")
    assert all(f.code in {"SC000", "SC002"} for f in found)


def test_warnings_in_plugin_source_do_not_escape() -> None:
    # An invalid escape makes the compiler warn; pytest turns warnings into errors.
    assert codes("pattern = '\\d+'\n") == []


def test_clean_code_has_no_findings() -> None:
    snippet = """
        import json
        import os.path

        def handle(event):
            return json.dumps({"name": os.path.basename(event["path"])})
    """
    assert scan(snippet) == ()


def test_implied_permissions() -> None:
    found = scan("import requests, subprocess, ctypes\nopen('x', 'w')\nopen('y')\n")
    assert implied_permissions(found) == {
        Permission.NETWORK_REQUEST, Permission.SUBPROCESS_EXECUTE, Permission.FILE_WRITE,
        Permission.FILE_READ,
    }


# -- plugin directories ----------------------------------------------------------------------


def write(path: Path, text: str | bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")


def test_scan_plugin_walks_the_directory(tmp_path: Path) -> None:
    write(tmp_path / "plugin.py", "import requests\n")
    write(tmp_path / "pkg" / "util.py", "import os\nos.system('x')\n")
    write(tmp_path / "pkg" / "broken.py", "def (\n")
    write(tmp_path / "README.md", "import subprocess\n")
    found = scan_plugin(tmp_path)
    assert [(f.file, f.code) for f in found] == [
        ("pkg/broken.py", "SC000"),
        ("pkg/util.py", "SC302"),
        ("plugin.py", "SC201"),
    ]


def test_pycache_and_hidden_directories_are_skipped(tmp_path: Path) -> None:
    write(tmp_path / "__pycache__" / "x.py", "import socket\n")
    write(tmp_path / ".git" / "hook.py", "import socket\n")
    write(tmp_path / "ok.py", "x = 1\n")
    assert scan_plugin(tmp_path) == ()


def test_binary_and_undecodable_files(tmp_path: Path) -> None:
    write(tmp_path / "bin.py", b"\x7fELF\x00\x00\x01")
    write(tmp_path / "latin.py", b"# no coding line\nx = '\xe9'\n")
    write(tmp_path / "declared.py", b"# -*- coding: latin-1 -*-\nx = '\xe9'\n")
    found = {f.file: f for f in scan_plugin(tmp_path)}
    assert set(found) == {"bin.py", "latin.py"}
    assert found["bin.py"].code == "SC001" and "binary" in found["bin.py"].message
    assert found["latin.py"].code == "SC001"


@pytest.mark.skipif(not hasattr(os, "getuid") or os.getuid() == 0, reason="root reads anything")
def test_unreadable_file(tmp_path: Path) -> None:
    target = tmp_path / "secret.py"
    write(target, "x = 1\n")
    target.chmod(0)
    try:
        (finding,) = scan_plugin(tmp_path)
    finally:
        target.chmod(0o600)
    assert finding.code == "SC001"
    assert finding.name == "unreadable-file"


def test_dangling_symlink_is_an_unreadable_file(tmp_path: Path) -> None:
    (tmp_path / "gone.py").symlink_to(tmp_path / "missing.py")
    (finding,) = scan_plugin(tmp_path)
    assert (finding.file, finding.code) == ("gone.py", "SC001")


def test_symlinks_out_of_the_directory_are_not_followed(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    write(outside / "evil.py", "import socket\n")
    plugin = tmp_path / "plugin"
    write(plugin / "main.py", "x = 1\n")
    (plugin / "linked.py").symlink_to(outside / "evil.py")
    (plugin / "linkdir").symlink_to(outside, target_is_directory=True)
    found = scan_plugin(plugin)
    assert sorted((f.file, f.code) for f in found) == [
        ("linkdir", "SC003"),
        ("linked.py", "SC003"),
    ]


def test_symlinks_inside_the_directory_are_scanned(tmp_path: Path) -> None:
    write(tmp_path / ".hidden" / "real.py", "import socket\n")
    (tmp_path / "alias.py").symlink_to(tmp_path / ".hidden" / "real.py")
    assert [(f.file, f.code) for f in scan_plugin(tmp_path)] == [("alias.py", "SC201")]


def test_symlinked_directories_inside_are_walked_under_their_visible_name(
    tmp_path: Path,
) -> None:
    write(tmp_path / ".vendor" / "net.py", "import socket\n")
    (tmp_path / "lib").symlink_to(tmp_path / ".vendor", target_is_directory=True)
    (tmp_path / "lib" / "loop").symlink_to(tmp_path, target_is_directory=True)
    assert [(f.file, f.code) for f in scan_plugin(tmp_path)] == [("lib/net.py", "SC201")]


def test_native_extensions_and_loose_bytecode(tmp_path: Path) -> None:
    write(tmp_path / "fast.cpython-311-x86_64-linux-gnu.so", b"\x7fELF")
    write(tmp_path / "hidden.pyc", b"\x00\x00")
    write(tmp_path / "__pycache__" / "main.cpython-311.pyc", b"\x00\x00")
    assert sorted(f.code for f in scan_plugin(tmp_path)) == ["SC402", "SC403"]


def test_scan_plugin_needs_a_directory(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="does not exist"):
        scan_plugin(tmp_path / "missing")
