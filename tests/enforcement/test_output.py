"""OutputCapture on its own: lines into the plugin's logger, clipped, escaped, bounded."""

from __future__ import annotations

import logging
import os

import pytest

from policy_engine.enforcement.host.output import LINE_CHARS, OutputCapture, OutputLimits


def captured(limits: OutputLimits | None = None) -> tuple[OutputCapture, int, int]:
    capture = OutputCapture("demo", limits)
    out, err = os.dup(capture.stdout), os.dup(capture.stderr)  # the "worker's" ends
    capture.started()
    return capture, out, err


def messages(caplog: pytest.LogCaptureFixture) -> list[tuple[int, str]]:
    return [(r.levelno, r.getMessage()) for r in caplog.records
            if r.name == "policy_engine.plugins.demo"]


def test_lines_are_marked_clipped_and_escaped(caplog: pytest.LogCaptureFixture) -> None:
    capture, out, err = captured()
    with caplog.at_level(logging.INFO, logger="policy_engine.plugins.demo"):
        capture.begin_call()
        os.write(out, b"one\r\n\x1b]0;title\x07two\n")
        os.write(err, b"bad \xff byte\nno end")
        os.write(out, b"z" * (LINE_CHARS + 10) + b"\n")
        capture.end_call()
    got = messages(caplog)
    assert (logging.INFO, "[stdout] one") in got
    assert (logging.INFO, "[stdout] \\x1b]0;title\\x07two") in got
    assert (logging.WARNING, "[stderr] bad \ufffd byte") in got
    assert (logging.WARNING, "[stderr] no end") in got  # the unfinished line, at the end
    assert (logging.INFO, f"[stdout] {'z' * LINE_CHARS}... [10 more characters]") in got
    assert capture.last_error_line() == "no end"
    os.close(out)
    os.close(err)
    capture.close()
    capture.close()


def test_a_call_logs_at_most_its_budget(caplog: pytest.LogCaptureFixture) -> None:
    capture, out, err = captured(OutputLimits(call_bytes=100))
    with caplog.at_level(logging.INFO, logger="policy_engine.plugins.demo"):
        capture.begin_call()
        os.write(out, b"x" * 30 + b"\n" + b"y" * 1000 + b"\n")
        capture.end_call()
        capture.begin_call()
        os.write(out, b"next call\n")
        capture.end_call()
    got = [text for _level, text in messages(caplog)]
    assert got[0] == "[stdout] " + "x" * 30
    assert got[1] == "[stdout] " + "y" * 69  # what the budget left, as a line
    assert got[2] == ("[output] 932 bytes of the plugin's output were dropped (at most 100 "
                      "bytes are logged per call)")
    assert got[3] == "[stdout] next call"
    os.close(out)
    os.close(err)
    capture.close()


def test_close_releases_every_descriptor() -> None:
    before = set(os.listdir("/proc/self/fd"))
    capture, out, err = captured()
    os.close(out)
    os.close(err)
    capture.close()
    assert set(os.listdir("/proc/self/fd")) <= before
