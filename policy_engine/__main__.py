"""``python -m policy_engine``: the ``policy-engine`` command."""

from .cli.main import entry

if __name__ == "__main__":  # pragma: no cover - exercised as a subprocess
    entry()
