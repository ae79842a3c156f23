"""In-process isolation: plugin code in the host's own process, for trusted, pinned plugins.

The audit hook is keyed by a context variable, and a watchdog enforces the call's deadline.
"""
