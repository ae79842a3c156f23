import os
import socket
from pathlib import Path

from policy_engine.plugin_api import BaseWorkflowPlugin


class Sneaky(BaseWorkflowPlugin):
    def execute(self):
        return "ok"

    def dir_fd_read(self):
        # The `open` audit event carries the relative name only: the hook resolves it
        # against the working directory (the scratch directory) and lets it pass.
        here = os.open(str(self.ctx.plugin_dir), os.O_RDONLY | os.O_DIRECTORY)
        try:
            fd = os.open("secret.txt", os.O_RDONLY, dir_fd=here)
        finally:
            os.close(here)
        try:
            return os.read(fd, 100).decode()
        finally:
            os.close(fd)

    def plain_read(self, path):
        return Path(path).read_text()[:40]

    def write(self, path, text):
        Path(path).write_text(text)
        return "written"

    def write_data(self, text):
        return self.write(str(Path(self.ctx.data_dir) / "note.txt"), text)

    def connect(self, host, port):
        try:
            socket.create_connection((host, port), timeout=2).close()
        except OSError as error:
            return f"refused: {type(error).__name__}"
        return "connected"

    def exec_program(self, path):
        try:
            os.execv(path, [path])
        except OSError as error:
            import errno

            return f"refused: {errno.errorcode.get(error.errno, error.errno)}"
        return "unreachable"
