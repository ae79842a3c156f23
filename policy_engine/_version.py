"""The package version, defined once: ``pyproject.toml`` reads it (setuptools dynamic version)
and ``--version`` prints it."""

__version__ = "0.1.0"
