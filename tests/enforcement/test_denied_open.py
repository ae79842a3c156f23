"""A denied audited ``open()``: the error the hook raises from a remembered answer is the
error the denial's decision builds, a new one each time (``worker/checker.py``,
``worker/audit.py``).

"Fast path on" is the hook consulting the table checker's remembered answers itself
(``checker.denials()``) and raising a copy of the error built once per answer; "off" is a
checker the hook can only call (a plain function), and the reference is the error built
with ``__init__`` from the same decision, as the hook raised it before.
"""

from __future__ import annotations

import gc
import os
import pickle
import weakref
from pathlib import Path
from typing import Any

import pytest

from policy_engine.enforcement.wire import WireEntry, WireRule, WireTable
from policy_engine.enforcement.worker.audit import AuditGuard
from policy_engine.enforcement.worker.checker import (
    DeniedDecision,
    denial,
    fresh_copy,
    make_checker,
)
from policy_engine.errors import KernelDeniedError, PermissionDeniedError
from policy_engine.implicit import ImplicitReads

REASON = "the plugin's decision table does not allow it"


def describe(error: BaseException) -> dict[str, Any]:
    """Everything a plugin can read of an error, except its traceback."""
    assert isinstance(error, PermissionDeniedError)
    return {"type": type(error), "errno": error.errno, "strerror": error.strerror,
            "filename": error.filename, "filename2": error.filename2, "args": error.args,
            "str": str(error), "repr": repr(error), "decision": error.decision,
            "explain": error.decision.explain(), "plugin": error.plugin,
            "dict": dict(vars(error)), "cause": error.__cause__, "context": error.__context__,
            "suppress_context": error.__suppress_context__,
            "notes": getattr(error, "__notes__", None)}


def checker_data(tmp_path: Path, *, audit: bool = False) -> dict[str, Any]:
    entries = (WireEntry("file:read", True, None, (WireRule("p:1:1", (f"{tmp_path}/granted/**",)),),
                         (WireRule("p:2:1", (f"{tmp_path}/granted/secret/**",)),)),)
    table = WireTable("demo", str(tmp_path / "plugin"), True, True, entries)
    return {"table": table.encode(), "audit": audit}


def guard(tmp_path: Path, checker: Any) -> AuditGuard:
    for name in ("scratch", "plugin", "granted/secret", "runtime"):
        (tmp_path / name).mkdir(parents=True, exist_ok=True)
    return AuditGuard(checker, plugin="demo", scratch_dir=str(tmp_path / "scratch"),
                      implicit=ImplicitReads((str(tmp_path / "runtime"),), str(tmp_path / "plugin")),
                      allow_subprocess=False, allow_network=False, changeable=())


def denied_open(hook: AuditGuard, path: str) -> PermissionDeniedError:
    try:
        hook._hook("open", (path, "r", os.O_RDONLY | os.O_CLOEXEC))
    except PermissionDeniedError as error:
        return error
    raise AssertionError(f"`{path}` was allowed")


@pytest.mark.parametrize("decision", [
    DeniedDecision("demo", "file:read", "/srv/secret/k", REASON),
    DeniedDecision("demo", "subprocess:execute", None, "no"),
    DeniedDecision("d\u00e9mo", "file:read", "/a `b`\n\u2028c", "r", explanation="richer words"),
])
@pytest.mark.parametrize("kind", [PermissionDeniedError, KernelDeniedError])
def test_a_copy_is_the_error_its_decision_builds(decision: DeniedDecision,
                                                 kind: type[PermissionDeniedError]) -> None:
    built = kind(decision)  # type: ignore[arg-type]
    copy = fresh_copy(built)
    assert copy is not built and describe(copy) == describe(kind(decision))  # type: ignore[arg-type]
    assert describe(pickle.loads(pickle.dumps(copy))) == describe(built)


def test_the_hook_raises_the_same_error_with_the_fast_path_on_and_off(tmp_path: Path) -> None:
    checker = make_checker(checker_data(tmp_path))
    fast = guard(tmp_path, checker)
    slow = guard(tmp_path, lambda action, resource: checker(action, resource))
    for target in ("granted/secret/k", "elsewhere.txt", "plugin/data.txt"):
        path = str(tmp_path / target)
        reference = describe(PermissionDeniedError(
            DeniedDecision("demo", "file:read", path, REASON)))  # type: ignore[arg-type]
        raised = [denied_open(fast, path) for _ in range(3)] + [denied_open(slow, path)]
        assert fast._denials is not None  # taken after the first answer: the fast path ran
        for error in raised:
            assert describe(error) == reference
            # The traceback starts at the call that opened (here denied_open).
            assert error.__traceback__ is not None
            assert error.__traceback__.tb_frame.f_code is denied_open.__code__
        assert len({id(error) for error in raised}) == len(raised)  # a new error each time


def test_a_raise_leaves_earlier_errors_and_their_tracebacks_alone(tmp_path: Path) -> None:
    hook = guard(tmp_path, make_checker(checker_data(tmp_path)))
    path = str(tmp_path / "granted" / "secret" / "k")
    first = denied_open(hook, path)
    second = denied_open(hook, path)
    depth = _depth(second)
    kept = first.__traceback__
    for _ in range(5):
        denied_open(hook, path)
    assert first.__traceback__ is kept and _depth(denied_open(hook, path)) == depth
    try:
        raise KeyError("the plugin's own")
    except KeyError as handled:
        in_handler = denied_open(hook, path)
        assert in_handler.__context__ is handled
    assert denied_open(hook, path).__context__ is None


def _depth(error: BaseException) -> int:
    tb, depth = error.__traceback__, 0
    while tb is not None:
        tb, depth = tb.tb_next, depth + 1
    return depth


def test_a_denial_makes_no_reference_cycle(tmp_path: Path) -> None:
    """An error named by a local of the frame that raised it would be tied to its traceback
    in a cycle: garbage for the collector on every denial."""
    hook = guard(tmp_path, make_checker(checker_data(tmp_path)))
    path = str(tmp_path / "granted" / "secret" / "k")
    denied_open(hook, path)  # the answer remembered
    enabled = gc.isenabled()
    gc.disable()
    try:
        # Each error is gone as soon as its `except` ends: freed by its count of references,
        # with the collector off, so nothing ties it to a frame in a cycle. (A count of what
        # `gc.collect()` finds would also count other threads' garbage.)
        for _ in range(20):
            for call in (lambda: hook._hook("open", (path, "r", os.O_RDONLY)),
                         lambda: hook._checker("file:read", path)):
                try:
                    call()
                except PermissionDeniedError as exc:
                    raised = weakref.ref(exc)
                else:
                    raise AssertionError("not denied")
                assert raised() is None
    finally:
        if enabled:
            gc.enable()


def test_audit_mode_keeps_reporting_every_decision(tmp_path: Path) -> None:
    seen: list[tuple[str, str | None, bool]] = []
    checker = make_checker(checker_data(tmp_path, audit=True),
                           on_audit=lambda a, r, allowed: seen.append((a, r, allowed)))
    hook = guard(tmp_path, checker)
    path = str(tmp_path / "granted" / "secret" / "k")
    for _ in range(3):
        hook._hook("open", (path, "r", os.O_RDONLY))  # audit mode denies nothing
    assert seen == [("file:read", path, False)] * 3
    assert checker.denials() is None and hook._denials is None


def test_the_plugin_directory_is_asked_about_each_time(tmp_path: Path) -> None:
    """Whether a name in the plugin's directory is a directory (an implicit read) can change,
    so that answer is never remembered; any other path's is its text alone."""
    asked: list[str | None] = []

    def checker(action: str, resource: str | None) -> None:
        asked.append(resource)
        raise denial(DeniedDecision("demo", action, resource, REASON))

    hook = guard(tmp_path, checker)
    later = str(tmp_path / "plugin" / "later")
    denied_open(hook, later)
    os.mkdir(later)
    hook._hook("open", (later, "r", os.O_RDONLY))  # a directory now: it may lead to code
    assert later not in hook._free_reads
    runtime = str(tmp_path / "runtime" / "lib.py")
    for _ in range(2):
        hook._hook("open", (runtime, "r", os.O_RDONLY))
        denied_open(hook, str(tmp_path / "elsewhere.txt"))
    assert hook._free_reads == {runtime: True, str(tmp_path / "elsewhere.txt"): False}
    assert asked == [later, str(tmp_path / "elsewhere.txt"), str(tmp_path / "elsewhere.txt")]


def test_the_remembered_read_answers_are_bounded(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from policy_engine.enforcement.worker import audit

    monkeypatch.setattr(audit, "_MAX_FREE_READS", 8)
    hook = guard(tmp_path, lambda action, resource: None)
    for index in range(20):
        hook._hook("open", (f"{tmp_path}/runtime/m{index}.py", "r", os.O_RDONLY))
    assert 0 < len(hook._free_reads) <= 8
    long = f"{tmp_path}/runtime/" + "x" * 600
    hook._hook("open", (long, "r", os.O_RDONLY))
    assert long not in hook._free_reads



def test_trust_is_per_thread_and_off_in_a_thread_that_never_asked(tmp_path: Path) -> None:
    import threading

    hook = guard(tmp_path, make_checker(checker_data(tmp_path)))
    path = str(tmp_path / "granted" / "secret" / "k")
    outcomes: list[str] = []

    def in_thread() -> None:
        try:
            hook._hook("open", (path, "r", os.O_RDONLY))
            outcomes.append("allowed")
        except PermissionDeniedError:
            outcomes.append("denied")

    with hook.trusted():
        hook._hook("open", (path, "r", os.O_RDONLY))  # the worker's own code: unchecked
        thread = threading.Thread(target=in_thread)
        thread.start()
        thread.join()
    denied_open(hook, path)
    assert outcomes == ["denied"]
