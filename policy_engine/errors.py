"""The one exception tree of policy_engine.

::

    PolicyEngineError
    ├── PolicyError                 a policy set cannot be built (carries diagnostics)
    │   ├── PolicySyntaxError       the text does not parse
    │   ├── PolicyCompileError      it parses but does not make sense
    │   └── PolicySetError          a policy set cannot be read from its source (also a UsageError)
    ├── InputLimitError             an input exceeds one of the caps of policy_engine.bounded
    ├── ManifestError               a plugin.yaml is unreadable or invalid
    ├── PluginTreeError             (also an OSError) a plugin directory cannot be digested
    ├── PolicyTestError             a *.test.yaml file is unreadable or invalid
    ├── BundleError                 a bundle is refused (signature, digests, layout, serial)
    ├── UsageError                  the library or the CLI was called wrongly
    └── EnforcementError            raised while plugin code runs under the sandbox
        ├── PermissionDeniedError   (also a PermissionError) carries the Decision
        ├── PluginTimeoutError      (also a TimeoutError) plugin, phase, limit
        ├── ResourceLimitError      memory or CPU over the limit
        │   └── FileSizeError       a write past the file-size limit
        ├── PluginValidationError   a plugin failed validation and was not loaded
        ├── PluginCrashedError      the worker died (signal, OOM kill, os._exit)
        ├── ChannelValueError       (also a TypeError) a value that cannot cross to or from a worker
        └── PluginRaisedError       plugin code raised; carries the remote type as a string

User mistakes never escape as anything but these; the CLI prints ``str(error)`` and exits 2.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from .diagnostics import Diagnostic, render_all

if TYPE_CHECKING:
    from .decision import Decision


class PolicyEngineError(Exception):
    """Base class of every error this package raises on purpose."""


class PolicyError(PolicyEngineError):
    """A policy set could not be built; ``diagnostics`` lists every problem found."""

    def __init__(self, diagnostics: Iterable[Diagnostic]) -> None:
        self.diagnostics: tuple[Diagnostic, ...] = tuple(diagnostics)
        super().__init__(render_all(self.diagnostics))


class PolicySyntaxError(PolicyError):
    """The policy text does not parse."""


class PolicyCompileError(PolicyError):
    """The policy parses but refers to unknown names, units, variables or plugins."""


class UsageError(PolicyEngineError):
    """The library or the command line was called with arguments that cannot work."""


class DecisionLogError(UsageError):
    """A decision log cannot be read back; ``diagnostics`` says where (``file:line:col``)."""

    def __init__(self, diagnostics: Iterable[Diagnostic]) -> None:
        self.diagnostics: tuple[Diagnostic, ...] = tuple(diagnostics)
        super().__init__(render_all(self.diagnostics))


class PolicySetError(PolicyError, UsageError):
    """A policy set cannot be read: a bad entry, an empty directory, bad encoding, a cap.

    ``diagnostics`` holds one problem per bad entry, each naming its path. It is also a
    :class:`UsageError`, which is what a missing policy path raised before.
    """


class InputLimitError(PolicyEngineError):
    """An input exceeds a cap of :data:`policy_engine.bounded.DEFAULT_LIMITS`.

    ``diagnostics`` says where, which cap and its value.
    """

    def __init__(self, diagnostics: Iterable[Diagnostic]) -> None:
        self.diagnostics: tuple[Diagnostic, ...] = tuple(diagnostics)
        super().__init__(render_all(self.diagnostics))


class ManifestError(PolicyEngineError):
    """A plugin manifest is unreadable or does not match the schema."""

    def __init__(self, diagnostics: Iterable[Diagnostic]) -> None:
        self.diagnostics = tuple(diagnostics)
        super().__init__(render_all(self.diagnostics))


class PluginTreeError(PolicyEngineError, OSError):
    """A plugin directory cannot be digested: it holds a symbolic link, FIFO, socket or
    device, goes over a cap of :data:`policy_engine.bounded.DEFAULT_LIMITS`, or a file changed
    while it was read. ``path`` is the offending entry."""

    def __init__(self, message: str, path: str = "") -> None:
        super().__init__(message)
        self.path = path

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class PolicyTestError(PolicyEngineError):
    """A policy test file (``*.test.yaml``) is unreadable or does not match its schema."""

    def __init__(self, diagnostics: Iterable[Diagnostic]) -> None:
        self.diagnostics = tuple(diagnostics)
        super().__init__(render_all(self.diagnostics))


class BundleError(PolicyEngineError):
    """A bundle was refused: a bad or missing signature, a digest mismatch, a member outside
    its root, a size cap, a rollback. ``message`` says which, ``hint`` what to do."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        self.message = message
        self.hint = hint
        super().__init__(message if hint is None else f"{message} ({hint})")


class EnforcementError(PolicyEngineError):
    """Raised while plugin code runs under the sandbox."""

    def __init__(self, message: str, *, plugin: str | None = None) -> None:
        self.plugin = plugin
        super().__init__(message)


class PermissionDeniedError(EnforcementError, PermissionError):
    """A plugin tried something its manifest or the policy does not allow."""

    def __init__(self, decision: Decision) -> None:
        self.decision = decision
        super().__init__(decision.explain(), plugin=decision.plugin)

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.decision,))


class KernelDeniedError(PermissionDeniedError):
    """A denial the kernel enforced past the worker's hook: the host's seccomp listener
    refused the system call and already recorded it (source ``kernel``)."""


class PluginTimeoutError(EnforcementError, TimeoutError):
    """A plugin call ran past its time limit and was stopped."""

    def __init__(self, plugin: str, phase: str, limit: float, detail: str = "") -> None:
        self.phase = phase
        self.limit = limit
        message = (
            f"plugin `{plugin}` exceeded its {phase} timeout of {limit:g}s and was stopped"
            + (f" ({detail})" if detail else "")
            + f"; raise `timeout {phase}` in the policy's `plugin \"{plugin}\"` block if the work is legitimate"
        )
        super().__init__(message, plugin=plugin)


class ResourceLimitError(EnforcementError):
    """A plugin went over a memory or CPU limit."""

    def __init__(self, message: str, *, plugin: str | None = None, resource: str = "",
                 limit: float = 0.0, used: float = 0.0) -> None:
        self.resource = resource
        self.limit = limit
        self.used = used
        super().__init__(message, plugin=plugin)


class FileSizeError(ResourceLimitError):
    """A plugin tried to write a file larger than its file-size limit."""


class PluginValidationError(EnforcementError):
    """A plugin failed validation and was not loaded; ``errors`` says why."""

    def __init__(self, plugin: str, errors: Iterable[str]) -> None:
        self.errors = tuple(errors)
        super().__init__(
            f"plugin `{plugin}` failed validation: " + "; ".join(self.errors), plugin=plugin
        )


class PluginCrashedError(EnforcementError):
    """The worker process of a plugin died while running plugin code."""


class ChannelValueError(EnforcementError, TypeError):
    """A value that cannot cross the channel between the host and a worker.

    Raised for a call's arguments (in the host, before anything is sent) and for a value a
    plugin returned (in the worker, instead of the result). ``where`` says where in the
    value it was (``result["a"][2]``), ``value_type`` what it was (``module.qualname``).
    """

    def __init__(self, message: str, *, where: str = "", value_type: str = "",
                 plugin: str | None = None) -> None:
        self.where = where
        self.value_type = value_type
        super().__init__(message, plugin=plugin)


class PluginRaisedError(EnforcementError):
    """Plugin code (or a host capability) raised an exception on the other side of a boundary.

    ``remote_type`` is the ``module.qualname`` of the exception that was raised there (just
    the name for built-in exceptions), clipped to a bounded length. It is a string and is
    never imported or resolved on the host: a plugin chooses it. ``remote_message`` and
    ``remote_traceback`` are the text of the original, clipped the same way.
    """

    def __init__(self, remote_type: str, message: str, remote_traceback: str = "", *,
                 plugin: str | None = None) -> None:
        self.remote_type = remote_type
        self.remote_message = message
        self.remote_traceback = remote_traceback
        who = f"plugin `{plugin}`" if plugin else "the other side"
        super().__init__(f"{who} raised {remote_type}: {message}", plugin=plugin)

    @property
    def type_name(self) -> str:
        """The remote type (older name of :attr:`remote_type`)."""
        return self.remote_type
