"""One host of the fleet test: an Engine watching a bundle URL, reporting to a file.

Usage: python fleet_host.py URL PUBLIC_KEY PLUGINS CACHE_DIR REPORT INTERVAL
Every 20 ms it writes one JSON line to REPORT (replacing the file): the decision for
summarizer reading words.txt and the engine's status.
"""

from __future__ import annotations

import json
import os
import sys
import time

from policy_engine import Engine


def main() -> None:
    url, key, plugins, cache, report, interval = sys.argv[1:7]
    engine = Engine.load(url, plugins=plugins, public_key=key, cache_dir=cache)
    engine.watch(interval=float(interval), max_backoff=float(interval) * 4)
    while True:
        status = engine.status().to_dict()
        status["allowed"] = engine.decide("summarizer", "file:read", "words.txt").allowed
        tmp = report + ".tmp"
        with open(tmp, "w", encoding="utf-8") as handle:
            json.dump(status, handle)
        os.replace(tmp, report)
        time.sleep(0.02)


if __name__ == "__main__":
    main()
