"""A workflow that writes the rows it is given as a CSV report into its data directory."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from policy_engine import BaseWorkflowPlugin


class ReportBuilder(BaseWorkflowPlugin):
    """Writes ``<data_dir>/report-builder/<name>.csv`` and returns its path and size."""

    def execute(self, rows: list[list[Any]] | None = None, name: str = "report", *args: Any,
                **kwargs: Any) -> dict[str, Any]:
        data_dir = self.ctx.data_dir
        if data_dir is None:
            raise RuntimeError("report-builder needs a data directory")
        out = Path(data_dir) / f"{name}.csv"
        out.parent.mkdir(parents=True, exist_ok=True)
        with out.open("w", newline="") as stream:
            csv.writer(stream).writerows(rows or [])
        return {"path": str(out), "bytes": out.stat().st_size}
