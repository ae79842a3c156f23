"""The worker's checker, as a unit: answers from the table as data, fails closed."""

from __future__ import annotations

import pytest

from policy_engine.enforcement.wire import WireEntry, WireRule, WireTable
from policy_engine.enforcement.worker.checker import make_checker
from policy_engine.errors import PermissionDeniedError


def table(**overrides: object) -> dict[str, object]:
    entries = (WireEntry("file:read", True, None, (WireRule("p:1:1", ("/srv/**",)),),
                         (WireRule("p:2:1", ("/srv/secret/**",)),)),
               WireEntry("subprocess:execute", True, None, (WireRule("p:3:1", None),), ()))
    data = WireTable("demo", "/plugins/demo", True, True, entries).encode()
    return {"table": {**data, **overrides}, "audit": False}


def test_allows_what_the_table_allows_and_denies_the_rest() -> None:
    check = make_checker(table())
    check("file:read", "/srv/a")
    check("subprocess:execute", None)  # a grant on every program covers a bare fork
    for action, resource in [("file:read", "/srv/secret/k"), ("file:read", "/etc/passwd"),
                             ("file:write", "/srv/a"), ("network:request", "x:1"),
                             ("nonsense", None)]:
        with pytest.raises(PermissionDeniedError) as caught:
            check(action, resource)
        # The worker's denial names what was asked and nothing it could make up.
        assert (caught.value.decision.action, caught.value.decision.resource) == (action, resource)


def test_a_table_that_does_not_decode_denies_everything() -> None:
    check = make_checker(table(extra=1))
    with pytest.raises(PermissionDeniedError, match="could not be loaded"):
        check("file:read", "/srv/a")


@pytest.mark.parametrize("field", ["enabled", "trusted"])
def test_disabled_or_untrusted_denies_everything(field: str) -> None:
    with pytest.raises(PermissionDeniedError):
        make_checker(table(**{field: False}))("file:read", "/srv/a")


def test_implicit_reads_need_no_grant() -> None:
    make_checker(table())("file:read", "/plugins/demo/module.py")
    with pytest.raises(PermissionDeniedError):
        make_checker(table())("file:read", "/plugins/demo/data.txt")


def test_audit_mode_reports_and_denies_nothing() -> None:
    seen: list[tuple[str, str | None, bool]] = []
    check = make_checker({**table(), "audit": True},
                         on_audit=lambda a, r, allowed: seen.append((a, r, allowed)))
    check("file:read", "/etc/passwd")
    check("file:read", "/srv/a")
    assert seen == [("file:read", "/etc/passwd", False), ("file:read", "/srv/a", True)]
    broken = make_checker({**table(extra=1), "audit": True}, on_audit=None)
    broken("file:read", "/etc/passwd")  # audit mode never denies, even without a table
