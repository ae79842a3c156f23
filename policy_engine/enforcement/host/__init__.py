"""The host side of enforcement: what runs in the process that loads plugins.

Supervisor, loader, sandbox, runners, resource monitoring, kernel feature detection, the
host's capability objects, ``run``, ``learn`` and the static scan. Nothing here is imported
by a worker.
"""
