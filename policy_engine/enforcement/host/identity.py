"""One unprivileged uid and gid per plugin, from a dedicated range, remembered across runs.

The range is the product's own (not one another component allocates: systemd's dynamic users
take 61184-65519, ``/etc/subuid`` ranges usually start at 100000). A new assignment skips any
id that an account, a group or a running process already uses, and the name-to-id map is kept
in a JSON file, written atomically, so a plugin keeps its uid (and so its data) across
restarts.
"""

from __future__ import annotations

import grp
import json
import os
import pwd
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

from ...errors import EnforcementError

__all__ = ["DEFAULT_FIRST_ID", "DEFAULT_ID_COUNT", "DEFAULT_MAP_PATH", "Identity",
           "IdentityMap"]

DEFAULT_FIRST_ID = 0x5F000000  # 1593835520: far above account and subordinate-id ranges
DEFAULT_ID_COUNT = 65536
DEFAULT_MAP_PATH = Path("/var/lib/policy-engine/identities.json")


@dataclass(frozen=True, slots=True)
class Identity:
    """The uid and gid one plugin runs as (the same number for both)."""

    uid: int
    gid: int


class IdentityMap:
    """A persistent plugin-name -> id map over ``[first, first + count)``."""

    def __init__(self, path: Path = DEFAULT_MAP_PATH, *, first: int = DEFAULT_FIRST_ID,
                 count: int = DEFAULT_ID_COUNT) -> None:
        """``path`` is the map file (created with its directory, mode 0700, when missing)."""
        if first <= 65535 or count <= 0 or first + count > 0xFFFFFFFE:
            raise EnforcementError(f"identity range `{first}+{count}` must lie above 65535 "
                                   "and below 4294967294")
        self.path = Path(path)
        self.first = first
        self.count = count
        self._lock = threading.Lock()

    def identity(self, plugin: str) -> Identity:
        """The identity of ``plugin``, assigned (and saved) on first use."""
        with self._lock:
            assigned = self._read()
            uid = assigned.get(plugin)
            if uid is None:
                uid = self._free(set(assigned.values()))
                assigned[plugin] = uid
                self._write(assigned)
            return Identity(uid, uid)

    def lookup(self, plugin: str) -> Identity | None:
        """The identity already assigned to ``plugin``, or None (nothing is assigned)."""
        with self._lock:
            uid = self._read().get(plugin)
        return None if uid is None else Identity(uid, uid)

    def _read(self) -> dict[str, int]:
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as error:
            raise EnforcementError(f"cannot read the plugin identity map `{self.path}`: "
                                   f"{error}") from error
        if not isinstance(data, dict):
            raise EnforcementError(f"the plugin identity map `{self.path}` is not an object")
        out: dict[str, int] = {}
        for name, uid in data.items():
            if not isinstance(uid, int) or not self.first <= uid < self.first + self.count:
                raise EnforcementError(f"the plugin identity map `{self.path}` gives `{name}` "
                                       f"the id `{uid}`, outside the range "
                                       f"{self.first}-{self.first + self.count - 1}")
            out[str(name)] = uid
        return out

    def _write(self, assigned: dict[str, int]) -> None:
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd, temporary = tempfile.mkstemp(dir=self.path.parent, prefix=".identities-")
        with os.fdopen(fd, "w") as handle:
            json.dump(assigned, handle, indent=2, sort_keys=True)
        os.replace(temporary, self.path)

    def _free(self, taken: set[int]) -> int:
        running = _process_ids()
        for uid in range(self.first, self.first + self.count):
            if uid not in taken and uid not in running and not _account_exists(uid):
                return uid
        raise EnforcementError(f"no free plugin identity left in {self.first}-"
                               f"{self.first + self.count - 1}")


def _account_exists(uid: int) -> bool:
    for lookup in (pwd.getpwuid, grp.getgrgid):
        try:
            lookup(uid)
            return True
        except KeyError:
            continue
    return False


def _process_ids() -> set[int]:
    """Every uid and gid a running process holds."""
    ids: set[int] = set()
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/status") as status:
                for line in status:
                    if line.startswith(("Uid:", "Gid:")):
                        ids.update(int(v) for v in line.split()[1:])
        except (OSError, ValueError):
            continue
    return ids
