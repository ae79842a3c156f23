"""A fleet on one machine: a loopback HTTP server serves a signed bundle, three host
processes each embed an Engine watching it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from policy_engine import bundle as B

from .test_lifecycle import PLUGINS, V1, V2, Server, keys, publish  # noqa: F401

pytestmark = pytest.mark.integration

ROOT = Path(__file__).parent.parent
INTERVAL = 0.2
WAIT = 30.0  # generous: the machine is shared; the README reports the measured time


class Fleet:
    def __init__(self, server: Server, keys: Path, tmp: Path) -> None:  # noqa: F811
        self.server, self.keys, self.tmp = server, keys, tmp
        self.hosts: dict[int, subprocess.Popen[bytes]] = {}

    def report(self, index: int) -> Path:
        return self.tmp / f"host{index}.json"

    def start(self, index: int) -> None:
        self.report(index).unlink(missing_ok=True)
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        self.hosts[index] = subprocess.Popen(
            [sys.executable, str(ROOT / "tests" / "fleet_host.py"), self.server.url + "/b.tar.gz",
             str(self.keys / "site.pub"), str(PLUGINS), str(self.tmp / f"cache{index}"),
             str(self.report(index)), str(INTERVAL)], env=env, stderr=subprocess.DEVNULL)

    def stop(self, index: int) -> None:
        process = self.hosts.pop(index)
        process.terminate()
        process.wait(10)

    def read(self, index: int) -> dict[str, Any] | None:
        try:
            data: dict[str, Any] = json.loads(self.report(index).read_text())
        except (OSError, ValueError):
            return None
        return data

    def wait_all(self, predicate: Callable[[dict[str, Any]], bool]) -> float:
        start = time.monotonic()
        while time.monotonic() - start < WAIT:
            reports = [self.read(i) for i in sorted(self.hosts)]
            if all(r is not None and predicate(r) for r in reports):
                return time.monotonic() - start
            for process in self.hosts.values():
                assert process.poll() is None, "a host process died"
            time.sleep(0.02)
        pytest.fail(f"hosts did not agree within {WAIT}s: {[self.read(i) for i in sorted(self.hosts)]}")


@pytest.fixture
def fleet(tmp_path: Path, keys: Path) -> Iterator[Fleet]:  # noqa: F811
    server = Server()
    running = Fleet(server, keys, tmp_path)
    yield running
    for index in list(running.hosts):
        running.stop(index)
    try:
        server.stop()
    except OSError:
        pass


def test_fleet_follows_a_signed_bundle(fleet: Fleet) -> None:
    publish(fleet.server, fleet.keys, V1, 1)
    for index in range(3):
        fleet.start(index)
    fleet.wait_all(lambda r: r["serial"] == 1 and r["allowed"])

    publish(fleet.server, fleet.keys, V2, 2)  # a new revision: all follow
    fleet.wait_all(lambda r: r["serial"] == 2 and not r["allowed"])

    members = B._members(fleet.server.files["/b.tar.gz"], B.MAX_BUNDLE_BYTES, B.MAX_UNPACKED_BYTES)
    members["site.policy"] = V1.encode()  # tampered: signed digests no longer match
    fleet.server.files["/b.tar.gz"] = B._tar(members)
    fleet.wait_all(lambda r: "digest mismatch" in (r["last_error"] or "") and r["consecutive_failures"] >= 1)
    assert all(not r["allowed"] and r["serial"] == 2 for r in map(fleet.read, range(3)) if r is not None)

    fleet.server.stop()  # the server goes away: everyone keeps the last good revision
    fleet.wait_all(lambda r: "cannot fetch" in (r["last_error"] or "") and not r["allowed"])
    fleet.stop(0)
    fleet.start(0)  # a host restarted meanwhile starts from its cached bundle
    fleet.wait_all(lambda r: r["serial"] == 2 and not r["allowed"])
