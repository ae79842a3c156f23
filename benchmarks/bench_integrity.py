"""Benchmark of the integrity path: one digested read of a plugin directory, and importing its
modules from the digested bytes compared with the standard importer's warm bytecode cache.

Prints median and p99 of each and the ratio of the two imports (imports in CPU time of a
fresh interpreter, so a loaded machine does not skew the ratio). Plugin shapes: ``small``
(5 modules of 2 KiB) and ``large`` (200 modules of 8 KiB).

Run: ``python benchmarks/bench_integrity.py``.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from policy_engine.digest import is_python_source, read_plugin_tree

QUICK = "--quick" in sys.argv[1:]  # a smoke run (the tests run it): tiny counts, one round
ROUNDS = 3 if QUICK else 30


def make_plugin(root: Path, modules: int, size: int) -> Path:
    package = root / "benchpkg"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    body = "".join(f"def f{i}(x):\n    return x + {i}\n\n" for i in range(size // 28))
    for n in range(modules):
        (package / f"m{n}.py").write_text(body)
    (root / "plugin.yaml").write_text("name: bench\n")
    return root


def quantiles(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    return statistics.median(ordered), ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


IMPORT_DIGESTED = """
import sys, time
from policy_engine.digest import is_python_source, read_plugin_tree
from policy_engine.enforcement.worker.modules import DigestedSources, install
root = sys.argv[1]; n = int(sys.argv[2])
tree = read_plugin_tree(root, keep=is_python_source)
start = time.process_time()
install(DigestedSources(root, tree.digest, tree.files, tree.paths))
sys.path.insert(0, root)
for i in range(n):
    __import__(f"benchpkg.m{i}")
print(time.process_time() - start)
"""
IMPORT_STANDARD = """
import sys, time
root = sys.argv[1]; n = int(sys.argv[2])
start = time.process_time()
sys.path.insert(0, root)
for i in range(n):
    __import__(f"benchpkg.m{i}")
print(time.process_time() - start)
"""


def timed_import(program: str, root: Path, modules: int) -> float:
    out = subprocess.run([sys.executable, "-c", program, str(root), str(modules)],
                         capture_output=True, text=True, check=True).stdout
    return float(out)


def main() -> None:
    print(f"{'measure':<44} {'median':>10} {'p99':>10}")
    for shape, modules, size in (("small", 5, 2048), ("large", 200, 8192)):
        with tempfile.TemporaryDirectory() as tmp:
            root = make_plugin(Path(tmp) / "plugin", modules, size)
            reads = []
            for _ in range(ROUNDS):
                start = time.perf_counter()
                read_plugin_tree(root, keep=is_python_source)
                reads.append(time.perf_counter() - start)
            # Warm the standard importer's cache once (it writes __pycache__ here).
            timed_import(IMPORT_STANDARD, root, modules)
            standard = [timed_import(IMPORT_STANDARD, root, modules) for _ in range(ROUNDS // 3)]
            digested = [timed_import(IMPORT_DIGESTED, root, modules) for _ in range(ROUNDS // 3)]
            for label, samples in ((f"{shape}: read + digest the directory", reads),
                                   (f"{shape}: import from digested bytes", digested),
                                   (f"{shape}: import from warm __pycache__", standard)):
                median, p99 = quantiles(samples)
                print(f"{label:<44} {median * 1e3:>8.2f}ms {p99 * 1e3:>8.2f}ms")
            ratio = statistics.median(digested) / statistics.median(standard)
            print(f"{shape}: digested / warm-cache import ratio {ratio:.2f}")


if __name__ == "__main__":
    main()
