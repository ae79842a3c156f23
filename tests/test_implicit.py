"""The implicit-read list: one list, and `decide` reports its reads with reason implicit."""

from __future__ import annotations

import sys
from pathlib import Path

from policy_engine import Engine, Reason
from policy_engine.implicit import implicit_reads

MANIFEST = {"name": "demo", "version": "1.0.0", "type": "agent", "entry_point": "demo:Plugin",
            "permissions": ["file:read /srv/**"]}



def test_runtime_reads_are_implicit_even_under_a_deny(tmp_path: Path) -> None:
    engine = Engine.from_source('deny plugin * to file:read on "/**"', [MANIFEST])
    decision = engine.decide("demo", "file:read", f"{sys.base_prefix}/lib/os.py")
    assert decision.allowed and decision.reason is Reason.IMPLICIT
    assert "every plugin may read it" in decision.explain()
    assert engine.decide("demo", "file:read", "/etc/shadow").reason is Reason.DENIED_BY_RULE


def test_system_data_and_devices_are_implicit() -> None:
    engine = Engine.from_source('allow plugin * to file:read on "/srv/**"', [MANIFEST])
    for path in ("/usr/share/zoneinfo/UTC", "/etc/ssl/certs/ca.pem", "/dev/urandom",
                 "/etc/localtime"):
        assert engine.decide("demo", "file:read", path).reason is Reason.IMPLICIT, path
    assert not engine.decide("demo", "file:read", "/etc/passwd").allowed


def test_code_files_are_implicit_other_files_are_not(tmp_path: Path) -> None:
    reads = implicit_reads(str(tmp_path), scratch_dir="/tmp/scratch-x")
    (tmp_path / "pkg").mkdir()
    assert reads.covers(f"{tmp_path}/demo.py")
    assert reads.covers(f"{tmp_path}/pkg/mod.cpython-311.pyc")
    assert reads.covers(f"{tmp_path}/pkg")  # a directory on the way to code
    assert not reads.covers(f"{tmp_path}/notes.txt")
    assert not reads.covers(f"{tmp_path}x/demo.txt")
    assert reads.covers("/tmp/scratch-x/f") and not reads.covers("/tmp/scratch-xy")
