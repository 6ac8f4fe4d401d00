"""`import nbtune` must take at most 1.0 s: measured in fresh interpreters.

Also checks that the heavy libraries (torch, transformers, datasets, plotly,
ipywidgets, peft) are not imported by `import nbtune`.
Run: python benchmarks/bench_import.py   (writes benchmarks/results/import.md)
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys

from _machine import machine_lines, write_result

LIMIT_S = 1.0
RUNS = 7
HEAVY = ["torch", "transformers", "datasets", "plotly", "ipywidgets", "peft", "pandas", "bitsandbytes"]
PROBE = (
    "import sys, time, json; t = time.perf_counter(); import nbtune; d = time.perf_counter() - t; "
    f"print(json.dumps({{'s': d, 'heavy': [m for m in {HEAVY!r} if m in sys.modules]}}))"
)


def one_run() -> dict:
    out = subprocess.run([sys.executable, "-c", PROBE], check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> int:
    runs = [one_run() for _ in range(RUNS)]
    times = [r["s"] for r in runs]
    heavy = sorted({m for r in runs for m in r["heavy"]})
    median, worst = statistics.median(times), max(times)
    ok = worst <= LIMIT_S and not heavy
    lines = ["# import nbtune", "", *machine_lines(), "",
             "| runs | median | worst | limit | heavy modules imported | result |",
             "| --- | --- | --- | --- | --- | --- |",
             f"| {RUNS} | {median * 1000:.0f} ms | {worst * 1000:.0f} ms | {LIMIT_S * 1000:.0f} ms | "
             f"{', '.join(heavy) or 'none'} | {'PASS' if ok else 'FAIL'} |", ""]
    write_result("import.md", lines)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
