"""Decision events: OPA-style shape, masks, escaping, the bounded logging queue, and both log
formats read back for ``diff --replay``."""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import os
import threading
from pathlib import Path

import pytest

from policy_engine import Engine
from policy_engine.bounded import DEFAULT_LIMITS
from policy_engine.decision_log import (
    DecisionLog,
    DecisionLogger,
    decision_event,
    read_decision_log,
)
from policy_engine.errors import DecisionLogError, InputLimitError
from policy_engine.impact import read_replay_log

POLICY = 'allow plugin * to network:request on "*.example.com"\n'
MANIFEST = {"name": "p", "version": "1.0.0", "type": "agent", "entry_point": "p:P",
            "permissions": ["network:request *.example.com"]}


def engine(**options: object) -> Engine:
    return Engine.from_source(POLICY, [MANIFEST], **options)  # type: ignore[arg-type]


class Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


def test_event_shape_follows_opa() -> None:
    decision = engine().decide("p", "network:request", "api.example.com:443")
    event = decision_event(decision, labels={"id": "host-1", "version": "0.1.0"},
                           bundles={"policy": {"revision": "r7", "serial": 7}}, context={"env": "prod"},
                           decision_id="id-1", timestamp=0.0)
    assert event == {
        "decision_id": "id-1",
        "timestamp": "1970-01-01T00:00:00.000000Z",
        "labels": {"id": "host-1", "version": "0.1.0"},
        "bundles": {"policy": {"revision": "r7", "serial": 7}},
        "input": {"plugin": "p", "action": "network:request", "resource": "api.example.com:443",
                  "context": {"env": "prod"}},
        "result": {"allowed": True, "reason": "allowed", "rules": ["<policy>:1:1"]},
    }
    assert not hasattr(decision, "decision_id")  # the id lives in the event, not the Decision


def test_masks_erase_fields_by_json_pointer() -> None:
    decision = engine().decide("p", "network:request", "api.example.com:443")
    event = decision_event(decision, labels={}, bundles={}, context={"token": "s3cret", "env": "x"},
                           masks=["/input/resource", "/input/context/token", "/input/nothing"])
    assert "resource" not in event["input"] and event["input"]["context"] == {"env": "x"}
    assert event["erased"] == ["/input/resource", "/input/context/token"]


def test_logger_escapes_control_characters_and_logs_through_handlers() -> None:
    collect = Collect()
    log = DecisionLogger([collect], labels={"id": "h"}, include_context=True, masks=["/input/context/token"])
    e = engine(decision_log=log)
    e.decide("p", "network:request", "x\x1b[31m\u202e\n\x85.evil", {"token": "t", "env": "prod"})
    e.decide("p", "network:request", "api.example.com:443")
    log.close()
    assert len(collect.lines) == 2
    first = collect.lines[0]
    assert all(32 <= ord(c) < 127 for c in first), first
    event = json.loads(first)
    assert event["input"]["resource"].startswith("x\x1b[31m\u202e")
    assert event["input"]["context"] == {"env": "prod"} and event["labels"]["id"] == "h"
    assert json.loads(collect.lines[1])["result"]["allowed"] is True
    assert logging.getLogger("policy_engine.decisions").propagate is False


def test_a_full_queue_drops_and_counts_and_decide_does_not_wait() -> None:
    release = threading.Event()

    class Stuck(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            release.wait(30)

    log = DecisionLogger([Stuck()], queue_size=2)
    e = engine(decision_log=log, cache_size=0)
    for _ in range(50):  # would hang here if decide waited on the stuck handler
        e.decide("p", "network:request", "api.example.com:443")
    assert log.dropped >= 40, (log.dropped, log.logger.propagate, log.logger.handlers, log.logger.disabled)
    release.set()
    log.close()


def test_both_log_formats_are_read_back_for_replay(tmp_path: Path) -> None:
    old = io.StringIO()
    engine(decision_log=DecisionLog(old, include_context=True)).decide(
        "p", "network:request", "api.example.com:443", {"env": "prod"})
    path = tmp_path / "events.jsonl"
    handler = logging.FileHandler(path, encoding="utf-8")
    log = DecisionLogger([handler], include_context=True)
    engine(decision_log=log).decide("p", "network:request", "a.evil.test:443", {"env": "dev"})
    log.close()
    handler.close()
    path.write_text(old.getvalue() + path.read_text())
    entries = read_replay_log(path)
    assert [(e.resource, e.allowed, e.context) for e in entries] == [
        ("api.example.com:443", True, {"env": "prod"}), ("a.evil.test:443", False, {"env": "dev"})]
    assert "decision_id" in read_decision_log(path)[1]


# Reading back is bounded ------------------------------------------------------------------------

LINE = json.dumps({"plugin": "p", "action": "network:request", "resource": "a:1", "allowed": True})


def test_a_log_over_its_caps_is_refused_naming_the_line(tmp_path: Path) -> None:
    path = tmp_path / "log.jsonl"
    limits = dataclasses.replace(DEFAULT_LIMITS, log_entries=2, log_line_chars=200, log_bytes=10_000)
    path.write_text(f"{LINE}\n\n{LINE}\n{LINE}\n")
    with pytest.raises(InputLimitError, match="log_entries") as info:
        read_decision_log(path, limits=limits)
    assert info.value.diagnostics[0].span is not None and info.value.diagnostics[0].span.line == 4
    path.write_text(f"{LINE}\n" + "x" * 300 + "\n")
    with pytest.raises(InputLimitError, match="line 2 is longer.*log_line_chars"):
        read_decision_log(path, limits=limits)
    path.write_text(f"{LINE}\n" * 200)
    with pytest.raises(InputLimitError, match="log_bytes"):
        read_decision_log(path, limits=limits)
    assert len(read_decision_log(path)) == 200


def test_a_bad_line_is_named_with_line_and_column(tmp_path: Path) -> None:
    path = tmp_path / "log.jsonl"
    path.write_text(f"{LINE}\n{{\"plugin\": oops}}\n")
    with pytest.raises(DecisionLogError, match="line is not JSON: expecting value") as info:
        read_replay_log(path)
    span = info.value.diagnostics[0].span
    assert span is not None and (span.line, span.column) == (2, 12)
    path.write_bytes(LINE.encode() + b"\n\n{\xff\n")
    with pytest.raises(DecisionLogError, match="line is not UTF-8") as info:
        read_replay_log(path)
    span = info.value.diagnostics[0].span
    assert span is not None and (span.line, span.column) == (3, 2)
    path.write_text("[" * 60_000 + "\n")
    with pytest.raises(DecisionLogError, match="nested too deeply"):
        read_replay_log(path)
    with pytest.raises(DecisionLogError, match="cannot read"):
        read_replay_log(tmp_path / "missing.jsonl")
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(DecisionLogError, match="not a regular file"):
        read_replay_log(fifo)
