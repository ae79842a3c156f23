"""The worker's audit hook (``worker/audit.py``), as a unit.

The guard is never installed here (an audit hook cannot be removed from the test process):
each test calls the hook with the arguments CPython gives it for an event and checks what
the guard asked its checker. The checker is a recorder that denies what a test says.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from policy_engine.enforcement.worker.audit import AuditGuard, _first_word, _resolve
from policy_engine.enforcement.worker.checker import DeniedDecision, denial
from policy_engine.errors import PermissionDeniedError
from policy_engine.families import audit_events
from policy_engine.implicit import ImplicitReads


class Recorder:
    """A checker that records each question and denies those ``deny`` says yes to."""

    def __init__(self, deny: Callable[[str, str | None], bool] = lambda a, r: False) -> None:
        self.asked: list[tuple[str, str | None]] = []
        self._deny = deny

    def __call__(self, action: str, resource: str | None) -> None:
        self.asked.append((action, resource))
        if self._deny(action, resource):
            raise denial(DeniedDecision("demo", action, resource, "denied by the test"))


def make_guard(tmp_path: Path, recorder: Recorder, *, allow_subprocess: bool = False,
               implicit: tuple[str, ...] = ()) -> AuditGuard:
    scratch = tmp_path / "scratch"
    scratch.mkdir(exist_ok=True)
    plugin = tmp_path / "plugin"
    plugin.mkdir(exist_ok=True)
    return AuditGuard(recorder, plugin="demo", scratch_dir=str(scratch),
                      implicit=ImplicitReads(implicit, str(plugin)),
                      allow_subprocess=allow_subprocess, allow_network=False)


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
def guard(tmp_path: Path, recorder: Recorder) -> AuditGuard:
    return make_guard(tmp_path, recorder, implicit=(str(tmp_path / "runtime"),))


def test_every_registry_event_has_a_handler(guard: AuditGuard) -> None:
    # A role the registry names and the guard lacks would be a KeyError in the constructor.
    assert {e.event for e in audit_events()} == set(guard._handlers)


def test_open_for_reading_asks_file_read_on_the_resolved_path(
        tmp_path: Path, guard: AuditGuard, recorder: Recorder) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    guard._hook("open", (str(tmp_path / "link" / ".." / "link" / "f.txt"), "r", os.O_RDONLY))
    assert recorder.asked == [("file:read", str(tmp_path / "real" / "f.txt"))]


@pytest.mark.parametrize(("mode", "flags", "expected"), [
    ("w", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, ["file:write"]),
    ("a", os.O_WRONLY | os.O_APPEND, ["file:write"]),
    ("r+", os.O_RDWR, ["file:read", "file:write"]),
    (None, os.O_RDWR, ["file:read", "file:write"]),
    (None, os.O_RDONLY, ["file:read"]),
    ("rb", 0, ["file:read"]),
])
def test_open_modes_and_flags(tmp_path: Path, guard: AuditGuard, recorder: Recorder,
                              mode: str | None, flags: int, expected: list[str]) -> None:
    guard._hook("open", (str(tmp_path / "f"), mode, flags))
    assert [a for a, _ in recorder.asked] == expected
    assert (str(tmp_path / "f") in guard.written) == ("file:write" in expected)


def test_open_of_a_descriptor_asks_nothing(guard: AuditGuard, recorder: Recorder) -> None:
    guard._hook("open", (3, "r", os.O_RDONLY))
    guard._hook("open", (None, "r", os.O_RDONLY))
    guard._hook("open", (object(), "r", os.O_RDONLY))  # not a path at all
    assert recorder.asked == []


def test_implicit_reads_and_scratch_need_no_grant(tmp_path: Path, guard: AuditGuard,
                                                  recorder: Recorder) -> None:
    guard._hook("open", (str(tmp_path / "runtime" / "lib.py"), "r", 0))
    guard._hook("open", (str(tmp_path / "plugin" / "mod.py"), "r", 0))  # a code file
    guard._hook("open", (str(tmp_path / "scratch" / "x"), "w", os.O_WRONLY))
    guard._hook("open", (os.devnull, "w", os.O_WRONLY))
    guard._hook("os.remove", (str(tmp_path / "scratch" / "x"), None))
    assert recorder.asked == []  # writing to /dev/null needs no grant either
    guard._hook("open", (str(tmp_path / "plugin" / "data.txt"), "r", 0))
    assert recorder.asked[-1] == ("file:read", str(tmp_path / "plugin" / "data.txt"))
    # Deleting the scratch directory itself is a question like any other.
    guard._hook("os.rmdir", (str(tmp_path / "scratch"), None))
    assert recorder.asked[-1] == ("file:delete", str(tmp_path / "scratch"))


def test_a_denied_open_raises_the_checkers_denial(tmp_path: Path) -> None:
    guard = make_guard(tmp_path, Recorder(deny=lambda a, r: a == "file:write"))
    guard._hook("open", (str(tmp_path / "f"), "r", 0))
    with pytest.raises(PermissionDeniedError) as caught:
        guard._hook("open", (str(tmp_path / "f"), "w", os.O_WRONLY))
    assert caught.value.decision.action == "file:write"
    assert str(tmp_path / "f") not in guard.written  # only writes that were allowed


def test_the_write_ring_keeps_the_newest(tmp_path: Path, guard: AuditGuard) -> None:
    for i in range(1030):
        guard._hook("open", (str(tmp_path / f"f{i}"), "w", os.O_WRONLY))
    guard._hook("open", (str(tmp_path / "f1029"), "w", os.O_WRONLY))  # written again
    assert len(guard.written) == 1024
    assert str(tmp_path / "f5") not in guard.written
    assert list(guard.written)[-1] == str(tmp_path / "f1029")


def test_directory_listing_asks_file_read(tmp_path: Path, guard: AuditGuard,
                                          recorder: Recorder, monkeypatch: pytest.MonkeyPatch) -> None:
    guard._hook("os.listdir", (str(tmp_path / "d"),))
    monkeypatch.chdir(tmp_path)
    guard._hook("os.scandir", (None,))  # the current directory
    guard._hook("os.scandir", (3,))  # a descriptor: nothing to resolve
    assert recorder.asked == [("file:read", str(tmp_path / "d")), ("file:read", str(tmp_path))]


def test_delete_rename_link_symlink_and_modify(tmp_path: Path, guard: AuditGuard,
                                               recorder: Recorder) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "lnk").symlink_to(tmp_path / "real")
    # A deletion acts on the link itself: only its parent is resolved.
    guard._hook("os.remove", (str(tmp_path / "lnk"), None))
    guard._hook("shutil.rmtree", (str(tmp_path / "lnk" / "sub"),))
    guard._hook("os.rename", (str(tmp_path / "a"), str(tmp_path / "b"), None, None))
    guard._hook("os.link", (str(tmp_path / "lnk"), str(tmp_path / "hard"), None, None))
    guard._hook("os.symlink", ("/etc/passwd", str(tmp_path / "s"), None))
    guard._hook("os.chmod", (str(tmp_path / "lnk"), 0o600, None))
    guard._hook("os.rename", (3, 4, None, None))  # descriptors: nothing to ask
    guard._hook("os.link", (3, 4, None, None))
    guard._hook("os.symlink", ("x", 4, None))
    guard._hook("os.chmod", (3, 0o600, None))
    guard._hook("os.remove", (3, None))
    real, here = str(tmp_path / "real"), str(tmp_path)
    assert recorder.asked == [
        ("file:delete", here + "/lnk"),
        ("file:delete", real + "/sub"),
        ("file:delete", here + "/a"), ("file:write", here + "/b"),
        ("file:read", real), ("file:write", here + "/hard"),
        ("file:write", here + "/s"),
        ("file:write", real),
    ]


def test_relative_paths_resolve_against_the_directory_descriptor(tmp_path: Path) -> None:
    fd = os.open(tmp_path, os.O_RDONLY)
    try:
        assert _resolve("x", dir_fd=fd, follow=False) == str(tmp_path / "x")
    finally:
        os.close(fd)
    assert _resolve(b"/a/b/../c") == "/a/c"
    assert _resolve(str(tmp_path) + "/..", follow=False) == str(tmp_path.parent)
    assert _resolve("/", follow=False) == "/"


def test_trusted_code_is_not_checked(tmp_path: Path, guard: AuditGuard, recorder: Recorder) -> None:
    with guard.trusted():
        guard._hook("open", (str(tmp_path / "f"), "w", os.O_WRONLY))
        guard._hook("ctypes.dlopen", ("libc.so.6",))
        guard._hook("gc.get_objects", ())
    assert recorder.asked == []
    guard._hook("unrelated.event", ())
    assert recorder.asked == []


def test_ctypes_and_introspection_are_refused(tmp_path: Path, guard: AuditGuard) -> None:
    with pytest.raises(PermissionDeniedError) as caught:
        guard._hook("ctypes.dlopen", ("libc.so.6",))
    assert caught.value.decision.action == "subprocess:execute"
    assert "native code" in str(caught.value)
    with pytest.raises(PermissionDeniedError, match="object graph"):
        guard._hook("gc.get_referrers", ())
    may_spawn = make_guard(tmp_path, Recorder(), allow_subprocess=True)
    may_spawn._hook("ctypes.dlopen", ("libc.so.6",))  # native code is what a spawn grant gives


class FakeSocket:
    def __init__(self, family: int) -> None:
        self.family = family


def test_network_events_ask_network_request(guard: AuditGuard, recorder: Recorder) -> None:
    guard._hook("socket.getaddrinfo", ("api.example.com", 443, 0, 0, 0))
    guard._hook("socket.getaddrinfo", (b"api.example.com", "https", 0, 0, 0))
    guard._hook("socket.getaddrinfo", (None, 80, 0, 0, 0))  # a local lookup: nothing
    guard._hook("socket.gethostbyname", ("db.example.com",))
    guard._hook("socket.connect", (FakeSocket(socket.AF_INET), ("10.0.0.1", 5432)))
    guard._hook("socket.sendto", (FakeSocket(socket.AF_INET6), ("::1", 53, 0, 0)))
    guard._hook("socket.connect", (FakeSocket(socket.AF_INET), "not a tuple"))
    guard._hook("socket.connect", (FakeSocket(socket.AF_NETLINK), (0, 0)))
    assert recorder.asked == [
        ("network:request", "api.example.com:443"),
        ("network:request", "api.example.com:https"),
        ("network:request", "db.example.com"),
        ("network:request", "10.0.0.1:5432"),
        ("network:request", "[::1]:53"),  # bracketed: `::1:53` is another address
    ]


def test_a_connect_counts_as_a_name_that_resolved_to_the_address(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    recorder = Recorder(deny=lambda a, r: r != "api.example.com:443")
    guard = make_guard(tmp_path, recorder)
    fake = [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("192.0.2.7", 443))]
    monkeypatch.setattr(socket, "getaddrinfo", lambda *a, **k: fake)
    guard._wrap_getaddrinfo()  # what install() does before adding the hook
    assert socket.getaddrinfo("api.example.com", 443) == fake
    assert socket.getaddrinfo(b"api.example.com", 443) == fake
    assert socket.getaddrinfo(None, 443) == fake  # not a name: nothing remembered
    guard._hook("socket.connect", (FakeSocket(socket.AF_INET), ("192.0.2.7", 443)))
    assert recorder.asked == [("network:request", "192.0.2.7:443"),
                              ("network:request", "api.example.com:443")]
    with pytest.raises(PermissionDeniedError) as caught:
        guard._hook("socket.connect", (FakeSocket(socket.AF_INET), ("192.0.2.8", 443)))
    # The first refusal (the bare address) is the one raised.
    assert caught.value.decision.resource == "192.0.2.8:443"


def test_unix_sockets_and_listening_are_refused(guard: AuditGuard, recorder: Recorder) -> None:
    with pytest.raises(PermissionDeniedError, match="unix sockets"):
        guard._hook("socket.connect", (FakeSocket(socket.AF_UNIX), "/run/docker.sock"))
    with pytest.raises(PermissionDeniedError, match="may not listen"):
        guard._hook("socket.bind", (FakeSocket(socket.AF_INET), ("0.0.0.0", 8080)))
    guard._hook("socket.bind", (FakeSocket(socket.AF_UNIX), "/tmp/x"))  # left to the kernel
    assert recorder.asked == []


def test_process_events_ask_for_the_program_name(guard: AuditGuard, recorder: Recorder) -> None:
    guard._hook("subprocess.Popen", ("/usr/bin/git", ["git", "status"], None, None))
    guard._hook("subprocess.Popen", (None, ["/bin/ls", "-l"], None, None))
    guard._hook("subprocess.Popen", (None, "grep -r 'a b' .", None, None))
    guard._hook("subprocess.Popen", (None, b"cat x", None, None))
    guard._hook("os.system", (b"rm -rf /",))
    guard._hook("os.exec", (b"/usr/bin/env", ["env"], None))
    guard._hook("os.posix_spawn", ("/bin/true", ["true"], None))
    guard._hook("os.spawn", (0, "/bin/sh", ["sh"], None))
    guard._hook("pty.spawn", (["/bin/bash", "-i"],))
    guard._hook("pty.spawn", ("zsh -l",))
    guard._hook("os.fork", ())
    guard._hook("os.system", ("echo 'unclosed",))  # shlex fails: split on spaces
    guard._hook("os.system", ("",))
    assert recorder.asked == [("subprocess:execute", name) for name in (
        "git", "ls", "grep", "cat", "rm", "env", "true", "sh", "bash", "zsh", None, "echo", "")]


def test_signals_to_itself_pass_and_others_need_the_grant(tmp_path: Path, guard: AuditGuard) -> None:
    guard._hook("os.kill", (os.getpid(), 15))
    guard._hook("os.kill", (0, 15))
    guard._hook("os.killpg", (-os.getpgrp(), 15))
    with pytest.raises(PermissionDeniedError, match="may signal processes"):
        guard._hook("os.kill", (1, 9))
    make_guard(tmp_path, Recorder(), allow_subprocess=True)._hook("os.kill", (1, 0))


def test_first_word() -> None:
    assert _first_word("  ls -l ") == "ls"
    assert _first_word("'my prog' x") == "my prog"
    assert _first_word("") == ""


def test_install_adds_the_hook_once_for_good(monkeypatch: pytest.MonkeyPatch, guard: AuditGuard) -> None:
    added: list[Any] = []
    monkeypatch.setattr("sys.addaudithook", added.append)
    monkeypatch.setattr(socket, "getaddrinfo", socket.getaddrinfo)  # restored after the test
    guard.install()
    assert added == [guard._hook]
    assert socket.getaddrinfo.__name__ == "getaddrinfo" and socket.getaddrinfo is not added
