"""One registry of permission families: each family described once, with every facet.

A family (``file``, ``network``, ``subprocess``, ``hook``, ``config``, ``database``) says
its permissions, the resource kind its patterns match, the audit events that map to it,
what it contributes to the kernel plan, the static-scan signatures that suggest it, what
``policy-lint`` calls over-broad for it, and its row of the README's table. A facet that
does not apply says so with a reason (:class:`NotApplicable`), never by being empty.

Consumers: ``permissions.FAMILY_KINDS`` and the README's family table are generated from
here (tests check both); the audit hook's event table and the scanner's module lists are
checked against the registry by tests, so a facet and its consumer cannot drift apart.
Adding a family is one entry here plus its tests.
"""

from __future__ import annotations

from dataclasses import dataclass

from .permissions import Permission, ResourceKind

__all__ = ["FAMILIES", "Family", "NotApplicable", "family", "readme_table"]


@dataclass(frozen=True, slots=True)
class NotApplicable:
    """A facet that does not apply to a family, and why."""

    reason: str


@dataclass(frozen=True, slots=True)
class Family:
    """One permission family and every facet of it."""

    name: str
    permissions: tuple[Permission, ...]
    kind: ResourceKind
    pattern: str
    audit_events: tuple[str, ...] | NotApplicable
    kernel: str | NotApplicable
    scan_modules: tuple[str, ...] | NotApplicable
    over_broad: str | NotApplicable
    readme: str

    def facets(self) -> dict[str, object]:
        """Every facet by name (for the completeness test)."""
        return {"permissions": self.permissions, "pattern": self.pattern,
                "audit_events": self.audit_events, "kernel": self.kernel,
                "scan_modules": self.scan_modules, "over_broad": self.over_broad,
                "readme": self.readme}


_HOST_SIDE = "the host checks each call of the capability object; no code of the plugin's own can reach it"

FAMILIES: tuple[Family, ...] = (
    Family(
        name="file",
        permissions=(Permission.FILE_READ, Permission.FILE_WRITE, Permission.FILE_DELETE),
        kind=ResourceKind.PATH,
        pattern="absolute path glob: `*` within a segment, `**` across segments",
        audit_events=("open", "os.listdir", "os.scandir", "os.remove", "os.rmdir",
                      "shutil.rmtree", "os.rename", "os.link", "os.symlink", "os.chmod",
                      "os.chown", "os.mkdir", "os.truncate", "os.utime", "os.setxattr",
                      "os.removexattr"),
        kernel="Landlock path rules: read on granted trees, read-write on write/delete trees",
        scan_modules=("os", "shutil", "pathlib", "glob", "io", "builtins.open"),
        over_broad="a write or delete on every path or on a pattern that covers `/` or a top-level directory",
        readme="files, by absolute path; reads of the implicit-read list need no grant",
    ),
    Family(
        name="network",
        permissions=(Permission.NETWORK_REQUEST,),
        kind=ResourceKind.HOST,
        pattern="`host[:port]`: `*.example.com` for subdomains, no port for any port",
        audit_events=("socket.connect", "socket.sendto", "socket.bind", "socket.getaddrinfo",
                      "socket.gethostbyname", "socket.gethostbyname_ex",
                      "socket.gethostbyaddr"),
        kernel="Landlock TCP connect on granted ports; seccomp refuses inet sockets without a grant",
        scan_modules=("socket", "urllib", "urllib.request", "urllib3", "http.client",
                      "requests", "httpx", "aiohttp", "ftplib", "smtplib", "poplib",
                      "imaplib", "nntplib", "telnetlib", "xmlrpc.client", "websocket",
                      "websockets", "socketserver"),
        over_broad="any host (`*`) or no resource at all",
        readme="outgoing connections, by host name and port",
    ),
    Family(
        name="subprocess",
        permissions=(Permission.SUBPROCESS_EXECUTE,),
        kind=ResourceKind.NAME,
        pattern="program name: `*` matches any run of characters",
        audit_events=("subprocess.Popen", "os.system", "os.exec", "os.posix_spawn",
                      "os.spawn", "os.fork", "os.forkpty", "pty.spawn", "os.kill",
                      "os.killpg"),
        kernel="seccomp allows execve/fork only with a grant; Landlock adds the program directories",
        scan_modules=("subprocess", "pty"),
        over_broad=NotApplicable("a grant names programs; `policy-lint` has no subprocess-specific breadth rule"),
        readme="running programs, by program name (a fork without exec has no name: it needs a grant on every program)",
    ),
    Family(
        name="hook",
        permissions=(Permission.HOOK_REGISTER,),
        kind=ResourceKind.NAME,
        pattern="hook name: `*` matches any run of characters",
        audit_events=NotApplicable(_HOST_SIDE),
        kernel=NotApplicable("hooks are host objects; the kernel sees only the channel"),
        scan_modules=NotApplicable("hooks are registered through `ctx.hooks`, not an import"),
        over_broad=NotApplicable("registering a hook grants no access of its own"),
        readme="registering functions on the host's hooks, by hook name",
    ),
    Family(
        name="config",
        permissions=(Permission.CONFIG_READ, Permission.CONFIG_WRITE),
        kind=ResourceKind.NAME,
        pattern="dotted key: `*` matches any run of characters, dots included",
        audit_events=NotApplicable(_HOST_SIDE),
        kernel=NotApplicable("configuration is a host object; the kernel sees only the channel"),
        scan_modules=NotApplicable("configuration is reached through `ctx.config`, not an import"),
        over_broad=NotApplicable("no breadth rule yet; keys are the host's to name"),
        readme="the host's configuration, key by key",
    ),
    Family(
        name="database",
        permissions=(Permission.DATABASE_READ, Permission.DATABASE_WRITE),
        kind=ResourceKind.NAME,
        pattern="SQLite table name: `*` matches any run of characters",
        audit_events=NotApplicable(_HOST_SIDE),
        kernel=NotApplicable("the database is opened by the host; the kernel sees only the channel"),
        scan_modules=("sqlite3", "_sqlite3"),
        over_broad=NotApplicable("no breadth rule yet; tables are the host's to name"),
        readme="the host's SQLite database, table by table (checked by sqlite3's authorizer)",
    ),
)

_BY_NAME = {f.name: f for f in FAMILIES}


def family(name: str) -> Family:
    """The family called ``name`` (``KeyError`` when there is none)."""
    return _BY_NAME[name]


def _cell(facet: object) -> str:
    if isinstance(facet, NotApplicable):
        return f"n/a: {facet.reason}"
    if isinstance(facet, tuple):
        return ", ".join(f"`{item}`" for item in facet)
    return str(facet)


def readme_table() -> str:
    """The README's family table, generated from the registry (a test keeps it current)."""
    lines = ["| family | permissions | what it governs | patterns | kernel |",
             "|---|---|---|---|---|"]
    for f in FAMILIES:
        lines.append(f"| `{f.name}` | {_cell(tuple(p.value for p in f.permissions))} | "
                     f"{f.readme} | {f.pattern} | {_cell(f.kernel)} |")
    return "\n".join(lines) + "\n"
