"""Every console transcript in the README runs, and prints what the README says.

A console block is a fenced block written ```console whose lines starting with `$ ` are
commands and whose other lines are the output expected from the command before them. The
blocks are discovered, not listed: a new block is run as soon as it is written, and a block
with `$ ` prompts under another fence language fails. Each command runs with `sh` in a
scratch copy of `policies/` and `examples/`, with `policy-engine` and `policy-lint` being
this checkout's. Before comparing, the scratch directory reads `.`, 64-digit hex digests
`<digest>` and timings `<time>`; an output line `...` stands for any number of lines.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
README = ROOT / "README.md"
_FENCE = re.compile(r"^```(\S*)\s*$")
_DIGEST = re.compile(r"\b[0-9a-f]{64}\b")
_TIME = re.compile(r"\b\d+(\.\d+)?(s|ms|µs)\b")


@dataclass(frozen=True)
class Block:
    line: int  # of the opening fence, 1-based
    language: str
    lines: tuple[str, ...]


def blocks(text: str) -> list[Block]:
    found: list[Block] = []
    open_at: tuple[int, str] | None = None
    body: list[str] = []
    for number, line in enumerate(text.splitlines(), 1):
        fence = _FENCE.match(line)
        if open_at is None and fence:
            open_at, body = (number, fence.group(1)), []
        elif open_at is not None and line.rstrip() == "```":
            found.append(Block(open_at[0], open_at[1], tuple(body)))
            open_at = None
        elif open_at is not None:
            body.append(line)
    return found


def transcripts(block: Block) -> list[tuple[str, list[str]]]:
    """(command, expected output lines) pairs."""
    runs: list[tuple[str, list[str]]] = []
    for line in block.lines:
        if line.startswith("$ "):
            runs.append((line[2:], []))
        elif runs:
            runs[-1][1].append(line)
        elif line.strip():
            raise AssertionError(f"README.md:{block.line}: output before the first `$ ` command")
    return runs


CONSOLE = [b for b in blocks(README.read_text(encoding="utf-8")) if b.language == "console"]


def test_console_blocks_use_one_fence_language() -> None:
    for block in blocks(README.read_text(encoding="utf-8")):
        if block.language != "console":
            assert not any(line.startswith("$ ") for line in block.lines), (
                f"README.md:{block.line}: a block with `$ ` prompts is written ```console")
    assert CONSOLE, "the README has console transcripts"
    for block in CONSOLE:
        assert transcripts(block), f"README.md:{block.line}: a console block runs something"


def test_discovery() -> None:
    text = "a\n```console\n$ echo hi\nhi\n```\n```\n$ x\n```\n```python\nx = 1\n```\n"
    found = blocks(text)
    assert [(b.line, b.language) for b in found] == [(2, "console"), (6, ""), (9, "python")]
    assert transcripts(found[0]) == [("echo hi", ["hi"])]


def matches(expected: list[str], actual: str) -> bool:
    while expected and not expected[-1].strip():
        expected = expected[:-1]
    pattern = "".join(r"(?:[^\n]*\n)*?" if line == "..." else re.escape(line.rstrip()) + r"\n"
                      for line in expected)
    return re.fullmatch(pattern, actual) is not None


def normalise(output: str, scratch: Path) -> str:
    output = output.replace(str(scratch), ".")
    output = _DIGEST.sub("<digest>", output)
    output = _TIME.sub("<time>", output)
    return "".join(line.rstrip() + "\n" for line in output.splitlines())


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("readme")
    for part in ("policies", "examples"):
        shutil.copytree(ROOT / part, root / part, ignore=shutil.ignore_patterns("__pycache__"))
    bin_dir = root / ".bin"
    bin_dir.mkdir()
    for name, module in (("policy-engine", "policy_engine"), ("policy-lint", "policy_engine.cli.lint")):
        script = bin_dir / name
        script.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m {module} "$@"\n', encoding="utf-8")
        script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return root


@pytest.mark.parametrize("block", CONSOLE, ids=[f"README.md:{b.line}" for b in CONSOLE])
def test_console_block_runs_as_shown(block: Block, scratch: Path) -> None:
    env = {"PATH": f"{scratch / '.bin'}{os.pathsep}/usr/bin:/bin", "PYTHONPATH": str(ROOT),
           "HOME": str(scratch), "LC_ALL": "C.UTF-8", "NO_COLOR": "1"}
    for command, expected in transcripts(block):
        done = subprocess.run(["sh", "-c", command], cwd=scratch, env=env, capture_output=True,
                              text=True, timeout=300, check=False)
        actual = normalise(done.stdout + done.stderr, scratch)
        wanted = [_TIME.sub("<time>", _DIGEST.sub("<digest>", line)) for line in expected]
        assert matches(wanted, actual), (
            f"README.md:{block.line}: `{command}` printed:\n{actual}")
