"""The public deadline helper of in-process isolation, and execute_with_timeout on top of it."""

from __future__ import annotations

import time

import pytest

from policy_engine.enforcement.inprocess.runner import DeadlineExceeded, call_with_deadline
from policy_engine.errors import PluginTimeoutError


def spin() -> None:
    while True:
        time.sleep(0.001)


def test_a_function_past_its_deadline_is_stopped() -> None:
    with pytest.raises(DeadlineExceeded):
        call_with_deadline(spin, 0.05)


def test_results_and_errors_pass_through() -> None:
    assert call_with_deadline(lambda a, b=0: a + b, 5, 1, b=2) == 3
    with pytest.raises(ValueError, match="own"):
        call_with_deadline(lambda: (_ for _ in ()).throw(ValueError("own")), 5)


class _Overrun(Exception):
    """A plugin's own exception that happens to share the watchdog's private name."""


def test_execute_with_timeout_does_not_match_exceptions_by_name() -> None:
    from policy_engine import Engine
    from policy_engine.enforcement.host.sandbox import PluginSandbox

    box = PluginSandbox(Engine.from_source("", []), data_dir="/nonexistent-data")

    def raises() -> None:
        raise _Overrun("not a timeout")

    with pytest.raises(_Overrun):
        box.execute_with_timeout(raises, 5)
    with pytest.raises(PluginTimeoutError):
        box.execute_with_timeout(spin, 0.05)


def test_sandbox_constructors_leave_global_logging_alone() -> None:
    import logging

    from policy_engine import Engine
    from policy_engine.enforcement.host.sandbox import PluginSandbox

    loggers = ["policy_engine", "policy_engine.plugins", "policy_engine.plugins.audit"]
    before = [(logging.getLogger(n).level, list(logging.getLogger(n).handlers),
               logging.getLogger(n).propagate) for n in loggers]
    for mode in ("enforce", "audit"):
        PluginSandbox(Engine.from_source("", []), mode=mode,  # type: ignore[arg-type]
                      data_dir="/nonexistent-data", unsandboxed_audit=True).close()
    after = [(logging.getLogger(n).level, list(logging.getLogger(n).handlers),
              logging.getLogger(n).propagate) for n in loggers]
    assert after == before


def test_the_watchdog_forgets_the_deadline_of_a_thread_that_is_gone(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import threading

    from policy_engine.enforcement.inprocess import runner

    fired: list[int] = []
    monkeypatch.setattr(runner, "_set_async_exc", lambda thread_id, exc: fired.append(thread_id))
    watchdog = runner._Watchdog()
    gone = threading.Thread(target=lambda: None)
    gone.start()
    gone.join()
    assert gone.ident is not None
    # As if the call's unwatch never ran: its thread ended with the deadline registered.
    watchdog._deadlines[gone.ident] = runner._Deadline(0.0, thread=gone)
    live = runner._Deadline(0.0, thread=threading.current_thread())
    watchdog._deadlines[threading.get_ident()] = live
    watchdog._fire(time.monotonic())
    # A later thread with the same identifier gets nothing; a live overrun still fires.
    # (`fired` may also hold what the process-wide watchdog fired meanwhile for another
    # test's thread, since the patch is module-wide: only these two identifiers count.)
    assert gone.ident not in watchdog._deadlines and gone.ident not in fired
    assert fired.count(threading.get_ident()) == 1
    assert live.fired


def test_an_overrun_that_lands_in_unwatch_does_not_leave_the_deadline(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from policy_engine.enforcement.inprocess import runner

    real = runner._watchdog.unwatch
    calls: list[int] = []

    def interrupted(thread_id: int, deadline: object) -> None:
        calls.append(thread_id)
        if len(calls) == 1:
            raise runner._Overrun()  # the refire landed before the lock was taken
        real(thread_id, deadline)  # type: ignore[arg-type]

    monkeypatch.setattr(runner._watchdog, "unwatch", interrupted)
    assert call_with_deadline(lambda: 42, 5) == 42
    assert len(calls) == 2 and calls[0] not in runner._watchdog._deadlines
