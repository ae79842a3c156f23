"""The worker side of enforcement: what runs inside a plugin's locked-down process.

The worker's main loop, the lockdown layers (rlimits, Landlock, seccomp), the audit hook
and its checker. Modules here import only the standard library, :mod:`policy_engine.errors`,
:mod:`policy_engine.plugin_api` and :mod:`policy_engine.enforcement.wire`.
"""
