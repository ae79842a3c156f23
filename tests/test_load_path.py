"""The load path's shortcuts leave no trace: the cycle collector is restored as found."""

from __future__ import annotations

import gc
import threading

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
