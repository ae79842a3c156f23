"""An honest plugin: it uses what plugins use, within the grants an administrator gives."""

import asyncio
import ctypes
import datetime
import decimal
import json
import logging
import os
import pathlib
import sqlite3
import subprocess
import sys
import tempfile
import threading
import zoneinfo
from concurrent.futures import ThreadPoolExecutor

from policy_engine import BaseAgentPlugin, PermissionDeniedError
from policy_engine.plugin_api import PluginContext


class Honest(BaseAgentPlugin):
    def initialize(self, ctx):
        self.ctx = ctx
        self.data = pathlib.Path(ctx.data_dir)
        return {"started": datetime.date(2024, 1, 1)}

    def run(self, text):
        return f"honest: {text}"

    def uses_json(self, value):
        return json.loads(json.dumps(value, sort_keys=True))

    def uses_pathlib(self, text):
        path = self.data / "notes" / "note.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        return path.read_text(), sorted(p.name for p in self.data.iterdir())

    def uses_tempfile(self):
        with tempfile.NamedTemporaryFile("w+", suffix=".txt") as handle:
            handle.write("scratch")
            handle.flush()
            handle.seek(0)
            text = handle.read()
        with tempfile.TemporaryDirectory() as directory:
            pathlib.Path(directory, "x").write_text("y")
            return text, os.listdir(directory)

    def uses_logging(self, message):
        self.ctx.logger.info("through the context: %s", message)
        logging.getLogger("policy_engine.plugins.honest.part").warning("a child logger: %s",
                                                                       message)
        return True

    def uses_threads(self, count):
        with ThreadPoolExecutor(max_workers=4) as pool:
            squares = list(pool.map(lambda n: n * n, range(count)))
        seen = []
        thread = threading.Thread(target=lambda: seen.append(threading.get_ident()))
        thread.start()
        thread.join()
        return sum(squares), len(seen)

    async def uses_asyncio(self, count):
        async def one(n):
            await asyncio.sleep(0.01)
            return n

        queue = asyncio.Queue()
        for n in range(count):
            queue.put_nowait(n)
        results = await asyncio.gather(*(one(queue.get_nowait()) for _ in range(count)))
        return sum(results)

    def uses_sqlite(self, rows):
        with sqlite3.connect(self.data / "store.db") as db:
            db.execute("create table if not exists items (name text, qty integer)")
            db.executemany("insert into items values (?, ?)", rows)
        with sqlite3.connect(self.data / "store.db") as db:
            return db.execute("select sum(qty), count(*) from items").fetchone()

    def uses_zoneinfo(self):
        paris = zoneinfo.ZoneInfo("Europe/Paris")
        summer = datetime.datetime(2024, 7, 1, 12, tzinfo=paris)
        return summer.utcoffset().total_seconds(), summer

    def uses_numpy(self):
        import numpy

        matrix = numpy.arange(40_000, dtype=numpy.float64).reshape(200, 200) / 40_000
        product = matrix @ matrix.T  # BLAS, with its threads
        return {"sum": numpy.arange(10).sum(), "trace": float(numpy.trace(product)),
                "mean": numpy.float64(2.5), "version": numpy.__version__,
                "blas_threads": os.environ.get("OPENBLAS_NUM_THREADS"),
                "tasks": len(os.listdir("/proc/self/task"))}

    def uses_pandas(self):
        import pandas

        frame = pandas.DataFrame({"team": ["a", "b", "a", "c"], "points": [1, 2, 3, 4]})
        totals = frame.groupby("team")["points"].sum()
        path = self.data / "totals.csv"
        totals.to_csv(path)
        back = pandas.read_csv(path)
        return {"totals": totals.to_dict(), "rows": len(back),
                "when": pandas.Timestamp("2024-03-01 10:00", tz="UTC")}

    def uses_subprocess(self):
        done = subprocess.run(["echo", "from a child"], capture_output=True, text=True,
                              check=True)
        return done.stdout.strip()

    def uses_policy_engine(self):
        return [BaseAgentPlugin.__name__, PermissionDeniedError.__name__,
                PluginContext.__name__, type(self.ctx).__name__ != ""]

    def uses_saved_context(self, key):
        return self.ctx.config.get(key)

    def returns(self, kind):
        values = {
            "bytes": b"\x00\x01 raw",
            "datetime": datetime.datetime(2024, 5, 6, 7, 8, 9, tzinfo=datetime.timezone.utc),
            "set": {1, 2, 3},
            "tuple": (1, ("two", 3.0)),
            "decimal": decimal.Decimal("19.99"),
            "nested": {"when": [datetime.date(2024, 1, 2), datetime.time(3, 4)],
                       "tags": frozenset({"x"}), 7: b"seven"},
        }
        return values[kind]

    def returns_unencodable(self):
        import numpy

        return {"a": [1, 2, numpy.zeros(3)]}

    def returns_object(self):
        return [object()]

    def echo(self, *args, **kwargs):
        return {"args": args, "kwargs": kwargs}

    def prints(self):
        print("a line from print()")
        print("to stderr from print()", file=sys.stderr)
        os.write(1, b"a line from os.write(1)\n")
        libc = ctypes.CDLL(None)
        libc.dprintf(2, b"a line from C: %d\n", 42)
        subprocess.run(["echo", "a line from a child"], check=True)
        print("\x1b[31mred\x1b[0m and a very long line " + "x" * 5000)
        return True

    def floods(self, megabytes):
        chunk = ("y" * 1023 + "\n").encode()
        for _ in range(megabytes * 1024):
            os.write(1, chunk)
        return True

    def logs_a_lot(self, count):
        for number in range(count):
            self.ctx.logger.warning("record %d", number)
        self.ctx.logger.debug("not sent unless the host listens at DEBUG")
        return count

    def dies(self):
        sys.stderr.write("about to give up: disk on fire\n")
        os._exit(3)
