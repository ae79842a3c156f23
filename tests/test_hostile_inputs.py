"""A generated hostile corpus: every reader answers any input in bounded time and memory.

Each input is built here (alias bombs, deep nesting, huge scalars and numbers, many keys,
a megabyte line, random bytes, other encodings) as a manifest or a policy, and given to
``policy-engine decide`` and ``policy-lint`` run as the installed entry points run them,
in a subprocess under a memory rlimit (about 100 MB above the interpreter's own need) and
a CPU rlimit (1 s above the interpreter's start-up). Each must exit 1 or 2 with a
diagnostic naming the file and no traceback; a killed process fails the test.
"""

from __future__ import annotations

import os
import random
import resource
import subprocess
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MB = 1024 * 1024
MANIFEST_HEAD = "name: hostile\nversion: 1.0.0\ntype: agent\nentry_point: hostile:Plugin\n"
VALID_POLICY = 'allow plugin * to file:read on "/srv/**"\n'

# How the console scripts start: import the entry point and call it.
ENTRIES = {
    "policy-engine": "from policy_engine.cli.main import entry; entry()",
    "policy-lint": "from policy_engine.cli.lint import entry; entry()",
}


def _alias_bomb() -> bytes:
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for i in range(1, 10):
        prev, name = "abcdefghij"[i - 1], "abcdefghij"[i]
        lines.append(f"{name}: &{name} [" + ",".join([f"*{prev}"] * 9) + "]")
    return (MANIFEST_HEAD + "\n".join(lines) + "\n").encode()


def _random_bytes() -> bytes:
    return random.Random(7).randbytes(MB)


MANIFESTS: dict[str, Callable[[], bytes]] = {
    "alias-bomb": _alias_bomb,
    "deep-flow": lambda: (MANIFEST_HEAD + "x: " + "[" * (MB // 2) + "]" * (MB // 2) + "\n").encode(),
    "deep-block": lambda: (MANIFEST_HEAD + "x:\n" + "".join("  " * i + "- \n" for i in range(2000))).encode(),
    "scalar-1mb": lambda: (MANIFEST_HEAD + "description: " + "x" * MB + "\n").encode(),
    "number-1e6-digits": lambda: (MANIFEST_HEAD + "n: " + "9" * 10**6 + "\n").encode(),
    "100k-keys": lambda: (MANIFEST_HEAD + "".join(f"k{i}: {i}\n" for i in range(100_000))).encode(),
    "random-bytes": _random_bytes,
    "utf-16": lambda: MANIFEST_HEAD.encode("utf-16"),
}

POLICIES: dict[str, Callable[[], bytes]] = {
    "parens": lambda: ("allow plugin * to file:read when " + "(" * (MB // 2) + "true" + ")" * (MB // 2)).encode(),
    "parens-lines": lambda: ("allow plugin * to file:read when " + "(\n" * 50_000 + "true" + ")\n" * 50_000).encode(),
    "and-chain": lambda: ("allow plugin * to file:read when true" + " and\ntrue" * 60_000 + "\n").encode(),
    "not-chain": lambda: ("allow plugin * to file:read when " + "not\n" * 100_000 + "true\n").encode(),
    "line-1mb": lambda: ("# " + "x" * MB + "\n" + VALID_POLICY).encode(),
    "file-2mb": lambda: ("# padding\n" * (2 * MB // 10)).encode(),
    # Valid rules, 1 MB of them: refused by the per-file cap before the parser sees them.
    "rules-1mb": lambda: "".join(
        f'allow plugin "p{i}" to file:read on "/srv/{i}/**"\n' for i in range(MB // 40)).encode(),
    "random-bytes": _random_bytes,
    "utf-16": lambda: VALID_POLICY.encode("utf-16"),
    "undecodable": lambda: b"# \xff\n" + VALID_POLICY.encode(),
}


# Hostile in shape but valid: these must be answered (a deny for the unknown plugin, exit 1)
# within the same rlimits. (50,000 nested parentheses were one, until parsing them proved to
# cost more than the CPU allowance: they are refused by `condition_operators` now.)
VALID_SHAPES: set[str] = set()


def _baseline() -> tuple[int, float]:
    """Peak address space and CPU seconds of an interpreter that imports both CLIs."""
    code = ("import resource, policy_engine.cli.main, policy_engine.cli.lint, policy_engine.manifest;"
            "u = resource.getrusage(resource.RUSAGE_SELF);"
            "print([l for l in open('/proc/self/status') if l.startswith('VmPeak')][0].split()[1],"
            " u.ru_utime + u.ru_stime)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         check=True, timeout=60).stdout.split()
    return int(out[0]) * 1024, float(out[1])


@pytest.fixture(scope="module")
def limits() -> tuple[int, int]:
    peak, cpu = _baseline()
    return peak + 100 * MB, int(cpu + 1.0) + 1


def _run(entry: str, args: list[str], cwd: Path, limits: tuple[int, int]) -> subprocess.CompletedProcess[str]:
    memory, cpu = limits

    def confine() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
        resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu))

    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-c", ENTRIES[entry], *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=60, preexec_fn=confine)


def _check(name: str, result: subprocess.CompletedProcess[str], file: str) -> None:
    if not file:  # a valid input: decide denies the unknown plugin, lint finds nothing wrong
        assert result.returncode in (0, 1) and "Traceback" not in result.stderr, f"{name}: {result.stderr[-2000:]}"
        return
    assert result.returncode in (1, 2), f"{name}: exit {result.returncode} (killed by an rlimit?)\n{result.stderr[-2000:]}"
    output = result.stdout + result.stderr
    assert "Traceback" not in output, f"{name}: {output[-2000:]}"
    assert "internal error" not in output, f"{name}: {output[-2000:]}"
    assert file in output, f"{name}: the diagnostic does not name `{file}`:\n{output[-2000:]}"


def _manifest_case(tmp: Path, name: str, limits: tuple[int, int]) -> list[tuple[str, subprocess.CompletedProcess[str], str]]:
    case = tmp / f"m-{name}"
    plugin = case / "plugins" / "hostile"
    plugin.mkdir(parents=True)
    (plugin / "plugin.yaml").write_bytes(MANIFESTS[name]())
    (plugin / "hostile.py").write_text("class Plugin: ...\n")
    (case / "site.policy").write_text(VALID_POLICY)
    decide = _run("policy-engine", ["decide", "hostile", "file:read", "/srv/x", "--policy", "site.policy",
                                    "--plugins", "plugins"], case, limits)
    lint = _run("policy-lint", ["site.policy", "plugins"], case, limits)
    # `decide` leaves a broken plugin out (and warns naming it): the request is denied, exit 1.
    return [(f"decide/{name}", decide, "plugin.yaml"), (f"lint/{name}", lint, "plugin.yaml")]


def _policy_case(tmp: Path, name: str, limits: tuple[int, int]) -> list[tuple[str, subprocess.CompletedProcess[str], str]]:
    case = tmp / f"p-{name}"
    case.mkdir()
    (case / "hostile.policy").write_bytes(POLICIES[name]())
    decide = _run("policy-engine", ["decide", "any", "file:read", "/srv/x", "--policy", "hostile.policy"],
                  case, limits)
    lint = _run("policy-lint", ["hostile.policy"], case, limits)
    file = "" if name in VALID_SHAPES else "hostile.policy"
    return [(f"decide/{name}", decide, file), (f"lint/{name}", lint, file)]


def test_hostile_manifests_and_policies_are_answered_within_the_rlimits(
    tmp_path: Path, limits: tuple[int, int]
) -> None:
    jobs: list[Callable[[], list[tuple[str, subprocess.CompletedProcess[str], str]]]] = []
    for name in MANIFESTS:
        jobs.append(lambda name=name: _manifest_case(tmp_path, name, limits))  # type: ignore[misc]
    for name in POLICIES:
        jobs.append(lambda name=name: _policy_case(tmp_path, name, limits))  # type: ignore[misc]
    with ThreadPoolExecutor(max_workers=2) as pool:
        results = [r for batch in pool.map(lambda job: job(), jobs) for r in batch]
    for name, result, file in results:
        _check(name, result, file)


def test_the_module_entry_point_answers_too(tmp_path: Path, limits: tuple[int, int]) -> None:
    (tmp_path / "hostile.policy").write_bytes(POLICIES["and-chain"]())
    memory, cpu = limits

    def confine() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
        resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu))

    result = subprocess.run([sys.executable, "-m", "policy_engine.cli.lint", "hostile.policy"], cwd=tmp_path,
                            env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True,
                            timeout=60, preexec_fn=confine)
    _check("python -m policy_engine.cli.lint", result, "hostile.policy")
    assert "input limit exceeded" in result.stdout
