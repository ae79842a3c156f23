"""One registry of permission families: each family described once, with every facet.

A family (``file``, ``network``, ``subprocess``, ``hook``, ``config``, ``database``) says
its permissions, the resource kind its patterns match, the audit events that map to it,
what it contributes to the kernel plan, the static-scan signatures that suggest it (the
modules whose import does and the calls that do), what
``policy-lint`` calls over-broad for it, and its row of the README's table. A facet that
does not apply says so with a reason (:class:`NotApplicable`), never by being empty.

Consumers read it, nothing restates it: ``permissions.FAMILY_KINDS`` (resource kinds and
pattern types), the worker's audit hook (its event table), the host's kernel plan
(``spec.kernel_grants``), the scanner's module and call signatures, ``policy-lint``'s over-broad rule
(PL304) and the README's family table. This module is pure data with no imports of the
package, so the locked-down worker may import it. Adding a family is one entry here plus
its tests.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

__all__ = ["FAMILIES", "AuditEvent", "CallSignature", "Family", "KernelPlan", "NotApplicable",
           "Opener", "OverBroad", "ResourceKind", "ScanCalls", "audit_events", "family",
           "kernel_actions", "over_broad_checks", "readme_table", "scan_modules",
           "scan_openers", "scan_signature"]


class ResourceKind(str, enum.Enum):
    """How the resources of a permission family are written and matched."""

    PATH = "path"  # absolute file paths, `*` within a segment, `**` across segments
    HOST = "host"  # host[:port], `*.example.com` for subdomains
    NAME = "name"  # dotted names, `*` matches any run of characters


@dataclass(frozen=True, slots=True)
class NotApplicable:
    """A facet that does not apply to a family, and why."""

    reason: str


@dataclass(frozen=True, slots=True)
class AuditEvent:
    """A PEP 578 audit event and the worker handler that checks it (by role name)."""

    event: str
    handler: str


@dataclass(frozen=True, slots=True)
class KernelPlan:
    """What a family's grants contribute to the kernel plan.

    Each field lists permission spellings: grants of ``read_paths`` become Landlock read
    trees, of ``write_paths`` read-write trees, of ``connect_ports`` TCP connect ports (and
    the inet-socket switch of seccomp), of ``exec`` the execve/fork switch of seccomp.
    """

    text: str
    read_paths: tuple[str, ...] = ()
    write_paths: tuple[str, ...] = ()
    connect_ports: tuple[str, ...] = ()
    exec: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class CallSignature:
    """Calls that suggest one permission to the static scan. Names are fully qualified
    after alias resolution: ``functions`` match exactly, ``prefixes`` by how the name
    starts, ``path_methods`` as methods of a pathlib object."""

    permission: str
    functions: tuple[str, ...] = ()
    prefixes: tuple[str, ...] = ()
    path_methods: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Opener:
    """A function that opens files; its mode argument (position ``mode_index``,
    ``default_mode`` when left out) tells a read from a write."""

    function: str
    mode_index: int
    default_mode: str


@dataclass(frozen=True, slots=True)
class ScanCalls:
    """The calls the static scan takes as a family's use, by permission, and the openers
    whose mode decides between the family's permissions."""

    text: str
    calls: tuple[CallSignature, ...]
    openers: tuple[Opener, ...] = ()


@dataclass(frozen=True, slots=True)
class OverBroad:
    """What ``policy-lint`` (PL304) calls over-broad: a grant of one of ``permissions`` on
    every resource (``everything`` names it in the message) or on a pattern of the
    family's kind that matches everything."""

    text: str
    permissions: tuple[str, ...]
    everything: str


@dataclass(frozen=True, slots=True)
class Family:
    """One permission family and every facet of it."""

    name: str
    permissions: tuple[str, ...]
    kind: ResourceKind
    pattern: str
    audit_events: tuple[AuditEvent, ...] | NotApplicable
    kernel: KernelPlan | NotApplicable
    scan_modules: tuple[str, ...] | NotApplicable
    scan_calls: ScanCalls | NotApplicable
    over_broad: OverBroad | NotApplicable
    readme: str

    def facets(self) -> dict[str, object]:
        """Every facet by name (for the completeness test)."""
        return {"permissions": self.permissions, "kind": self.kind, "pattern": self.pattern,
                "audit_events": self.audit_events, "kernel": self.kernel,
                "scan_modules": self.scan_modules, "scan_calls": self.scan_calls,
                "over_broad": self.over_broad,
                "readme": self.readme}


def _events(**by_handler: str | tuple[str, ...]) -> tuple[AuditEvent, ...]:
    return tuple(AuditEvent(event, handler) for handler, events in by_handler.items()
                 for event in ((events,) if isinstance(events, str) else events))


_HOST_SIDE = "the host checks each call of the capability object; no code of the plugin's own can reach it"

FAMILIES: tuple[Family, ...] = (
    Family(
        name="file",
        permissions=("file:read", "file:write", "file:delete"),
        kind=ResourceKind.PATH,
        pattern="absolute path glob: `*` within a segment, `**` across segments",
        audit_events=_events(open="open", read_dir=("os.listdir", "os.scandir"),
                             delete=("os.remove", "os.rmdir", "shutil.rmtree"),
                             rename="os.rename", link="os.link", symlink="os.symlink",
                             modify=("os.chmod", "os.chown", "os.mkdir", "os.truncate",
                                     "os.utime", "os.setxattr", "os.removexattr")),
        kernel=KernelPlan("Landlock path rules: read on granted trees, read-write on write/delete trees",
                          read_paths=("file:read",), write_paths=("file:write", "file:delete")),
        scan_modules=NotApplicable("the scanner finds file access by call (`open`, `os.remove`, "
                                   "pathlib methods), not by import: every program imports `os`"),
        scan_calls=ScanCalls(
            "deleting, writing and reading calls of `os`, `shutil`, `tempfile`, `glob` and "
            "pathlib; openers by their mode",
            calls=(
                CallSignature("file:delete",
                              functions=("os.remove", "os.unlink", "os.rmdir", "os.removedirs",
                                         "shutil.rmtree"),
                              path_methods=("unlink", "rmdir")),
                CallSignature("file:write",
                              functions=("os.rename", "os.renames", "os.replace", "os.chmod",
                                         "os.lchmod", "os.chown", "os.lchown", "os.makedirs",
                                         "os.mkdir", "os.symlink", "os.link", "os.truncate",
                                         "os.mkfifo", "os.mknod", "os.utime", "shutil.move",
                                         "shutil.chown", "shutil.make_archive",
                                         "shutil.unpack_archive", "tempfile.mkstemp",
                                         "tempfile.mkdtemp", "tempfile.NamedTemporaryFile",
                                         "tempfile.TemporaryFile",
                                         "tempfile.SpooledTemporaryFile",
                                         "tempfile.TemporaryDirectory"),
                              prefixes=("shutil.copy",),
                              path_methods=("write_text", "write_bytes", "touch", "mkdir",
                                            "chmod", "lchmod", "rename", "replace",
                                            "symlink_to", "hardlink_to")),
                CallSignature("file:read",
                              functions=("os.listdir", "os.scandir", "os.walk", "glob.glob",
                                         "glob.iglob"),
                              path_methods=("read_text", "read_bytes", "iterdir", "glob",
                                            "rglob")),
            ),
            openers=(Opener("builtins.open", 1, "r"), Opener("io.open", 1, "r"),
                     Opener("io.FileIO", 1, "r"), Opener("codecs.open", 1, "r"),
                     Opener("gzip.open", 1, "rb"), Opener("bz2.open", 1, "rb"),
                     Opener("lzma.open", 1, "rb"), Opener("tarfile.open", 1, "r")),
        ),
        over_broad=OverBroad("a write or delete on every path or on a pattern that covers `/` or a top-level directory",
                             ("file:write", "file:delete"), "every path"),
        readme="files, by absolute path; reads of the implicit-read list need no grant",
    ),
    Family(
        name="network",
        permissions=("network:request",),
        kind=ResourceKind.HOST,
        pattern="`host[:port]`: `*.example.com` for subdomains, no port for any port",
        audit_events=_events(connect=("socket.connect", "socket.sendto"), bind="socket.bind",
                             getaddrinfo="socket.getaddrinfo",
                             resolve=("socket.gethostbyname", "socket.gethostbyname_ex",
                                      "socket.gethostbyaddr")),
        kernel=KernelPlan("Landlock TCP connect on granted ports; seccomp refuses inet sockets without a grant",
                          connect_ports=("network:request",)),
        scan_modules=("socket", "urllib", "urllib.request", "urllib3", "http.client",
                      "requests", "httpx", "aiohttp", "ftplib", "smtplib", "poplib",
                      "imaplib", "nntplib", "telnetlib", "xmlrpc.client", "websocket",
                      "websockets", "socketserver"),
        scan_calls=ScanCalls("the connecting and serving calls of `asyncio`", calls=(
            CallSignature("network:request",
                          functions=("asyncio.open_connection", "asyncio.open_unix_connection",
                                     "asyncio.start_server", "asyncio.start_unix_server")),)),
        over_broad=OverBroad("any host (`*`) or no resource at all", ("network:request",), "any host"),
        readme="outgoing connections, by host name and port",
    ),
    Family(
        name="subprocess",
        permissions=("subprocess:execute",),
        kind=ResourceKind.NAME,
        pattern="program name: `*` matches any run of characters",
        audit_events=_events(popen="subprocess.Popen", system="os.system",
                             exec=("os.exec", "os.posix_spawn"), spawn="os.spawn",
                             fork=("os.fork", "os.forkpty"), pty_spawn="pty.spawn",
                             kill=("os.kill", "os.killpg")),
        kernel=KernelPlan("seccomp allows execve/fork only with a grant; Landlock adds the program directories",
                          exec=("subprocess:execute",)),
        scan_modules=("subprocess", "pty"),
        scan_calls=ScanCalls("the process calls of `os` and `asyncio`", calls=(
            CallSignature("subprocess:execute",
                          functions=("os.system", "os.popen", "os.fork", "os.forkpty",
                                     "os.posix_spawn", "os.posix_spawnp", "os.startfile",
                                     "asyncio.create_subprocess_exec",
                                     "asyncio.create_subprocess_shell"),
                          prefixes=("os.exec", "os.spawn")),)),
        over_broad=NotApplicable("a grant names programs; `policy-lint` has no subprocess-specific breadth rule"),
        readme="running programs, by program name (a fork without exec has no name: it needs a grant on every program)",
    ),
    Family(
        name="hook",
        permissions=("hook:register",),
        kind=ResourceKind.NAME,
        pattern="hook name: `*` matches any run of characters",
        audit_events=NotApplicable(_HOST_SIDE),
        kernel=NotApplicable("hooks are host objects; the kernel sees only the channel"),
        scan_modules=NotApplicable("hooks are registered through `ctx.hooks`, not an import"),
        scan_calls=NotApplicable("the only way to register a hook is the host's `ctx.hooks`"),
        over_broad=NotApplicable("registering a hook grants no access of its own"),
        readme="registering functions on the host's hooks, by hook name",
    ),
    Family(
        name="config",
        permissions=("config:read", "config:write"),
        kind=ResourceKind.NAME,
        pattern="dotted key: `*` matches any run of characters, dots included",
        audit_events=NotApplicable(_HOST_SIDE),
        kernel=NotApplicable("configuration is a host object; the kernel sees only the channel"),
        scan_modules=NotApplicable("configuration is reached through `ctx.config`, not an import"),
        scan_calls=NotApplicable("the only way to the configuration is the host's `ctx.config`"),
        over_broad=NotApplicable("no breadth rule yet; keys are the host's to name"),
        readme="the host's configuration, key by key",
    ),
    Family(
        name="database",
        permissions=("database:read", "database:write"),
        kind=ResourceKind.NAME,
        pattern="SQLite table name: `*` matches any run of characters",
        audit_events=NotApplicable(_HOST_SIDE),
        kernel=NotApplicable("the database is opened by the host; the kernel sees only the channel"),
        scan_modules=("sqlite3", "_sqlite3"),
        scan_calls=NotApplicable("any call into the `sqlite3` modules counts (their "
                                 "`scan_modules`); there is no database call outside them"),
        over_broad=NotApplicable("no breadth rule yet; tables are the host's to name"),
        readme="the host's SQLite database, table by table (checked by sqlite3's authorizer)",
    ),
)

_BY_NAME = {f.name: f for f in FAMILIES}


def family(name: str) -> Family:
    """The family called ``name`` (``KeyError`` when there is none)."""
    return _BY_NAME[name]


def audit_events() -> tuple[AuditEvent, ...]:
    """Every audit event of every family, for the worker's audit hook."""
    return tuple(e for f in FAMILIES if not isinstance(f.audit_events, NotApplicable)
                 for e in f.audit_events)


def scan_modules(name: str) -> frozenset[str]:
    """The modules whose import suggests family ``name`` (empty where not applicable)."""
    modules = family(name).scan_modules
    return frozenset() if isinstance(modules, NotApplicable) else frozenset(modules)


def scan_signature(permission: str) -> CallSignature:
    """The calls that suggest ``permission`` to the static scan (an empty signature where
    its family's ``scan_calls`` does not apply)."""
    for f in FAMILIES:
        if permission in f.permissions and isinstance(f.scan_calls, ScanCalls):
            for signature in f.scan_calls.calls:
                if signature.permission == permission:
                    return signature
    if not any(permission in f.permissions for f in FAMILIES):
        raise KeyError(permission)
    return CallSignature(permission)


def scan_openers() -> dict[str, tuple[int, str]]:
    """Every opener the static scan knows: function -> (mode position, default mode)."""
    return {o.function: (o.mode_index, o.default_mode) for f in FAMILIES
            if isinstance(f.scan_calls, ScanCalls) for o in f.scan_calls.openers}


def over_broad_checks() -> dict[str, OverBroad]:
    """What ``policy-lint`` calls over-broad, by permission spelling (PL304)."""
    return {action: f.over_broad for f in FAMILIES if isinstance(f.over_broad, OverBroad)
            for action in f.over_broad.permissions}


def kernel_actions(part: str) -> tuple[str, ...]:
    """The permission spellings whose grants feed one part of the kernel plan:
    ``read_paths``, ``write_paths``, ``connect_ports`` or ``exec``."""
    if part not in ("read_paths", "write_paths", "connect_ports", "exec"):
        raise KeyError(part)
    actions: list[str] = []
    for f in FAMILIES:
        if isinstance(f.kernel, KernelPlan):
            actions.extend(getattr(f.kernel, part))
    return tuple(actions)


def _cell(facet: object) -> str:
    if isinstance(facet, KernelPlan | OverBroad | ScanCalls):
        return facet.text
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
        lines.append(f"| `{f.name}` | {_cell(f.permissions)} | "
                     f"{f.readme} | {f.pattern} | {_cell(f.kernel)} |")
    return "\n".join(lines) + "\n"
