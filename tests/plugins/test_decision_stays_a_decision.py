"""A decision stays a decision: both isolation modes answer as ``engine.decide``.

Each denial reaches the host as what the plugin asked, and the host's own decision (reason,
rules) is what the error carries; a granted subprocess runs in both modes. The property
tests draw requests from each family's pattern space (``..``, ``.``, doubled and trailing
``/``, case, Unicode, symlinks inside the grants that point in and out of them, ports) and
run them through one warm plugin per mode: allowed, reason and rules equal what
``engine.decide`` says for the path the kernel would open (its realpath). Network draws are
kept to denied requests (there is no network here).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st

from policy_engine import Engine, PermissionDeniedError
from policy_engine.enforcement.host.loader import PluginLoader
from policy_engine.enforcement.host.sandbox import PluginSandbox

pytestmark = pytest.mark.integration

MANIFEST = """\
name: spawner
version: 0.1.0
type: workflow
entry_point: spawner:Spawner
permissions:
  - file:read /srv/**
  - file:read {plugin_dir}/**
  - subprocess:execute true
  - subprocess:execute false
  - network:request *.example.com:443
  - file:read {tree}/**
"""
CODE = """\
import socket
import subprocess
from pathlib import Path

from policy_engine import BaseWorkflowPlugin, PermissionDeniedError


class Spawner(BaseWorkflowPlugin):
    def execute(self):
        return subprocess.run(["true"]).returncode

    def run_program(self, name):
        return subprocess.run([name]).returncode

    def read(self, path):
        return Path(path).read_text()

    def try_read(self, path):
        try:
            return "read:" + Path(path).read_text()
        except PermissionDeniedError:
            raise
        except (OSError, UnicodeError) as error:
            return type(error).__name__

    def try_run(self, name):
        try:
            return subprocess.run([name], capture_output=True).returncode
        except PermissionDeniedError:
            raise
        except (OSError, ValueError) as error:
            return type(error).__name__

    def connect(self, host, port):
        socket.create_connection((host, port), timeout=0.5).close()
        return "connected"
"""
POLICY = """\
defaults { isolation process allow degraded }
allow plugin * to subprocess:execute on "true"
deny plugin * to subprocess:execute on "false"
allow plugin * to file:read on "/srv/**"
deny plugin * to file:read on "/srv/secret/**"
allow plugin * to file:read on "{plugin_dir}/**"
deny plugin * to file:read on "{plugin_dir}/secret.txt"
allow plugin * to network:request on "*.example.com:443"
deny plugin * to network:request on "bad.example.com"
allow plugin * to file:read on "{tree}/**"
deny plugin * to file:read on "{tree}/secret/**"
deny plugin * to file:read on "{tree}/*.key"
deny plugin * to file:read on "{tree}/Data/private.txt"
"""


def make_tree(tmp_path: Path) -> None:
    """The granted tree the file draws walk: case, Unicode (composed and not), a denied
    tree, a denied glob, a denied file, and symlinks that stay inside or lead out."""
    tree, outside = tmp_path / "tree", tmp_path / "outside"
    for directory in (tree / "Data", tree / "secret", tree / "dir", outside):
        directory.mkdir(parents=True, exist_ok=True)
    files = {tree / "a.txt": "a", tree / "Data" / "b.txt": "b", tree / "Data" / "private.txt": "p",
             tree / "dir" / "\u00fc.txt": "composed", tree / "secret" / "k": "k",
             tree / "x.key": "key", outside / "o.txt": "outside"}
    for path, text in files.items():
        path.write_text(text)
    (tree / "link_in").symlink_to(tree / "dir")
    (tree / "link_secret").symlink_to(tree / "secret" / "k")
    (tree / "link_out").symlink_to(outside)
    (tree / "dir" / "up").symlink_to("..")


def make_loader(tmp_path: Path, isolation: str) -> PluginLoader:
    plugins = tmp_path / "plugins" / "spawner"
    if not plugins.exists():
        plugins.mkdir(parents=True)
        (plugins / "plugin.yaml").write_text(MANIFEST.replace("{tree}", str(tmp_path / "tree")))
        (plugins / "spawner.py").write_text(CODE)
        (plugins / "secret.txt").write_text("the plugin's own secret")
    make_tree(tmp_path)
    data = tmp_path / "data"
    data.mkdir(exist_ok=True)
    # In-process needs a pin or the accepted risk; the test accepts it (it is not the subject).
    # /srv/secret does not exist here, so its deny is held by the table alone: accepted
    # too (the refusal is tested in test_sandbox_integration).
    accept = " accept unpinned-inprocess" if isolation == "inprocess" else " accept inexact-deny"
    extra = f'plugin "spawner" {{ isolation {isolation}{accept} }}\n'
    (tmp_path / "site.policy").write_text(POLICY.replace("{tree}", str(tmp_path / "tree")) + extra)
    engine = Engine.load(tmp_path / "site.policy", plugins=tmp_path / "plugins",
                         variables={"data_dir": str(data)})
    return PluginLoader(engine, PluginSandbox(engine, data_dir=data, scratch_root=tmp_path))


@pytest.fixture(scope="module", params=["process", "inprocess"])
def loaded(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[tuple[PluginLoader, object]]:
    tmp_path = tmp_path_factory.mktemp(request.param)
    with make_loader(tmp_path, request.param) as loader:
        yield loader, loader.load(tmp_path / "plugins" / "spawner")
    shutil.rmtree(tmp_path, ignore_errors=True)


def test_a_granted_subprocess_runs_in_both_modes(loaded: tuple[PluginLoader, object]) -> None:
    _loader, plugin = loaded
    assert plugin.execute() == 0  # type: ignore[attr-defined]


SEGMENTS = ["a.txt", "A.TXT", "Data", "data", "b.txt", "private.txt", "dir", "\u00fc.txt",
            "u\u0308.txt", "secret", "Secret", "k", "x.key", "y.key", "link_in", "link_secret",
            "link_out", "o.txt", "up", "..", ".", "", "missing"]
#: Paths that reach a deny by a detour: through `..`, `.`, doubled slashes and links.
DETOURS = ["secret/k", "x.key", "Data/private.txt", "link_secret", "link_out/o.txt",
           "link_in/up/secret/k", "dir/../secret/k", "secret/../a.txt", "./secret//k",
           "Secret/k", "dir/up/x.key", "link_in/../Data/private.txt", "data/private.txt"]
#: Paths under the granted tree, built from its names and the path syntax's hard cases.
PATHS = st.tuples(
    st.one_of(st.lists(st.sampled_from(SEGMENTS), min_size=1, max_size=4),
              st.sampled_from(DETOURS).map(lambda p: p.split("/"))),
    st.booleans())
PROGRAMS = st.sampled_from(["true", "false", "True", "TRUE", "rm", "tru", "truee", "true ",
                            "tr\u00fce", "/bin/true", "/usr/bin/false", "*", "t*e"])
HOSTS = st.sampled_from(["bad.example.com", "BAD.Example.COM", "bad.example.com.", "example.org",
                         "example.com", "api.example.com", "x.bad.example.com", "127.0.0.1",
                         "[::1]", "b\u00fccher.example.com", "evil.com"])
PORTS = st.sampled_from([443, 80, 8443, 1])
#: Workers are warm: one plugin per mode serves every example of a test.
DRAWS = settings(max_examples=25, deadline=None,
                 suppress_health_check=[HealthCheck.function_scoped_fixture])


def assert_same_decision(loader: PluginLoader, call: object, action: str, resource: str) -> object:
    """Run ``call`` in the plugin; it is denied exactly when ``decide`` denies ``resource``,
    and a denial carries the host's decision (reason, rules) for what was asked."""
    expected = loader.engine.decide("spawner", action, resource)
    event(f"{action} {expected.reason.value}")
    if expected.allowed:
        return call()  # type: ignore[operator]
    with pytest.raises(PermissionDeniedError) as caught:
        call()  # type: ignore[operator]
    decision = caught.value.decision
    assert (decision.action, decision.resource) == (action, expected.resource)
    assert decision.reason == expected.reason
    assert decision.rules == expected.rules
    return None


@settings(DRAWS, max_examples=50)
@given(drawn=PATHS)
def test_file_reads_in_both_modes_answer_as_decide(loaded: tuple[PluginLoader, object],
                                                   drawn: tuple[list[str], bool]) -> None:
    loader, plugin = loaded
    segments, trailing = drawn
    tree = Path(loader.get("spawner").metadata.plugin_path).parent.parent / "tree"
    path = str(tree) + "/" + "/".join(segments) + ("/" if trailing else "")
    # The kernel opens the realpath; the worker and the in-process guard resolve it so.
    outcome = assert_same_decision(loader, lambda: plugin.try_read(path),  # type: ignore[attr-defined]
                                   "file:read", os.path.realpath(path))
    if outcome is not None and str(outcome).startswith("read:"):
        assert outcome == "read:" + Path(path).read_text()


@DRAWS
@given(name=PROGRAMS)
def test_programs_in_both_modes_answer_as_decide(loaded: tuple[PluginLoader, object],
                                                 name: str) -> None:
    loader, plugin = loaded
    # A program is decided by its name, as the audit hook asks for it.
    outcome = assert_same_decision(loader, lambda: plugin.try_run(name),  # type: ignore[attr-defined]
                                   "subprocess:execute", os.path.basename(name))
    if os.path.basename(name) == "true":
        assert outcome == 0


@DRAWS
@given(host=HOSTS, port=PORTS)
def test_denied_connections_in_both_modes_answer_as_decide(
        loaded: tuple[PluginLoader, object], host: str, port: int) -> None:
    loader, plugin = loaded
    bare = host.strip("[]")
    resource = f"{host}:{port}"
    assume(not loader.engine.decide("spawner", "network:request", resource).allowed)
    assert_same_decision(loader, lambda: plugin.connect(bare, port),  # type: ignore[attr-defined]
                         "network:request", resource)


def test_a_deny_in_the_plugins_own_directory_is_enforced(
        loaded: tuple[PluginLoader, object]) -> None:
    loader, plugin = loaded
    secret = str(Path(loader.get("spawner").metadata.plugin_path) / "secret.txt")
    expected = loader.engine.decide("spawner", "file:read", secret)
    assert expected.reason.value == "denied_by_rule"
    with pytest.raises(PermissionDeniedError) as caught:
        plugin.read(secret)  # type: ignore[attr-defined]
    assert caught.value.decision.rules == expected.rules


def test_code_files_are_implicit_reads(loaded: tuple[PluginLoader, object]) -> None:
    loader, plugin = loaded
    code = str(Path(loader.get("spawner").metadata.plugin_path) / "spawner.py")
    assert "class Spawner" in plugin.read(code)  # type: ignore[attr-defined]
    decision = loader.engine.decide("spawner", "file:read", code)
    assert decision.allowed and decision.reason.value == "implicit"
