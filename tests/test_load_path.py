"""The load path's shortcuts leave no trace: the cycle collector is restored as found, and a
reload reuses the compiled rules of unchanged files only."""

from __future__ import annotations

import gc
import threading
from pathlib import Path

import pytest

from policy_engine import Engine
from policy_engine.errors import PolicyCompileError

_POLICY = 'allow plugin "a" to file:read on "/srv/**"\n'
_MANIFEST = {"name": "a", "version": "1.0.0", "type": "agent", "entry_point": "p:P",
             "permissions": ["file:read /srv/**"]}


def test_a_build_restores_the_collector_as_it_found_it() -> None:
    assert gc.isenabled()
    Engine.from_source(_POLICY, [_MANIFEST])
    assert gc.isenabled()
    gc.disable()
    try:
        Engine.from_source(_POLICY, [_MANIFEST])
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_a_failed_build_restores_the_collector() -> None:
    with pytest.raises(PolicyCompileError):
        Engine.from_source('allow plugin "a" to file:reed\n', [_MANIFEST])
    assert gc.isenabled()


def test_concurrent_builds_leave_the_collector_on() -> None:
    errors: list[BaseException] = []

    def build() -> None:
        try:
            for _ in range(5):
                Engine.from_source(_POLICY, [_MANIFEST]).reload()
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=build) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert gc.isenabled()


def test_a_reload_compiles_only_the_files_that_changed(tmp_path: Path) -> None:
    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "a.policy").write_text('allow plugin "a" to file:read on "/srv/a/**"\n')
    (policies / "b.policy").write_text('allow plugin * to hook:register on "core.*"\n')
    engine = Engine.load(policies)
    before = {rule.ref.file: rule for rule in engine._state.policy.rules}
    (policies / "b.policy").write_text('deny plugin * to hook:register on "core.x"\n')
    engine.reload()
    after = {rule.ref.file: rule for rule in engine._state.policy.rules}
    a, b = str(policies / "a.policy"), str(policies / "b.policy")
    assert after[a] is before[a]  # unchanged file: its compiled rule reused
    assert after[b] != before[b]
    assert engine._state.policy.rules == Engine.load(policies)._state.policy.rules


def test_equal_sets_of_a_compile_are_one_object() -> None:
    from policy_engine.compiler import compile_policy
    from policy_engine.parser import parse_policy

    text = ('allow plugin "a" to file:read on "/srv/a/**"\nallow plugin "a" to file:read on "/srv/b/**"\n'
            'allow plugin "b" to file:read on "/srv/c/**"\n')
    first, second, third = compile_policy([parse_policy(text, "p.policy")]).rules
    assert first.plugins is second.plugins and first.plugins == frozenset({"a"})
    assert first.permissions is second.permissions is third.permissions
    assert first.patterns is not None and third.patterns is not None
    assert first.patterns[0].kinds is third.patterns[0].kinds


def test_a_literal_address_makes_its_network_when_asked() -> None:
    import ipaddress

    from policy_engine.patterns import HostPattern, compile_pattern
    from policy_engine.permissions import ResourceKind

    for text, network in (("[2001:db8::1]:443", "2001:db8::1/128"), ("10.0.0.1", "10.0.0.1/32"),
                          ("[::ffff:10.0.0.2]", "10.0.0.2/32"), ("example.com", None), ("10.0.0.0/8", "10.0.0.0/8")):
        pattern = compile_pattern(ResourceKind.HOST, text)
        assert isinstance(pattern, HostPattern)
        assert pattern.network == (None if network is None else ipaddress.ip_network(network)), text
        assert pattern.network is pattern.network
    assert compile_pattern(ResourceKind.HOST, "10.0.0.0/8").subsumes(compile_pattern(ResourceKind.HOST, "10.1.2.3:80"))
