"""A decision stays a decision: both isolation modes answer as ``engine.decide``.

Each denial reaches the host as what the plugin asked, and the host's own decision (reason,
rules) is what the error carries; a granted subprocess runs in both modes.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
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
"""
CODE = """\
import socket
import subprocess
from pathlib import Path

from policy_engine import BaseWorkflowPlugin


class Spawner(BaseWorkflowPlugin):
    def execute(self):
        return subprocess.run(["true"]).returncode

    def run_program(self, name):
        return subprocess.run([name]).returncode

    def read(self, path):
        return Path(path).read_text()

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
"""


def make_loader(tmp_path: Path, isolation: str) -> PluginLoader:
    plugins = tmp_path / "plugins" / "spawner"
    if not plugins.exists():
        plugins.mkdir(parents=True)
        (plugins / "plugin.yaml").write_text(MANIFEST)
        (plugins / "spawner.py").write_text(CODE)
        (plugins / "secret.txt").write_text("the plugin's own secret")
    data = tmp_path / "data"
    data.mkdir(exist_ok=True)
    # In-process needs a pin or the accepted risk; the test accepts it (it is not the subject).
    # /srv/secret does not exist here, so its deny is held by the table alone: accepted
    # too (the refusal is tested in test_sandbox_integration).
    accept = " accept unpinned-inprocess" if isolation == "inprocess" else " accept inexact-deny"
    extra = f'plugin "spawner" {{ isolation {isolation}{accept} }}\n'
    (tmp_path / "site.policy").write_text(POLICY + extra)
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


REQUESTS = [
    ("run_program", "subprocess:execute", "false"),
    ("run_program", "subprocess:execute", "rm"),
    ("read", "file:read", "/srv/secret/key"),
    ("read", "file:read", "/etc/hostname"),
    ("connect", "network:request", "bad.example.com:443"),
    ("connect", "network:request", "example.org:443"),
]


@settings(max_examples=len(REQUESTS), deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(request=st.sampled_from(REQUESTS))
def test_denials_carry_the_hosts_own_decision(loaded: tuple[PluginLoader, object],
                                              request: tuple[str, str, str]) -> None:
    loader, plugin = loaded
    method, action, resource = request
    argument = resource.rsplit(":", 1) if action == "network:request" else [resource]
    args = [argument[0], int(argument[1])] if action == "network:request" else argument
    expected = loader.engine.decide("spawner", action, resource)
    assert not expected.allowed
    with pytest.raises(PermissionDeniedError) as caught:
        getattr(plugin, method)(*args)
    decision = caught.value.decision
    assert (decision.action, decision.resource) == (action, expected.resource)
    assert decision.reason == expected.reason
    assert decision.rules == expected.rules


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
