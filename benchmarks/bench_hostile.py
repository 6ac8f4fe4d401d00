"""Benchmark: hostile rows through the default cleaning recipe (issue 11: nothing hangs).

Before the delimiter scans in nbtune.data.clean, the three rows below took 260 s
together on 2 cores: the lazy ``.*?`` patterns for ``` fences, ``<!-- -->``
comments and ``<script>`` blocks re-scanned the rest of the row from every
opening that is never closed. Now every default step is linear in the row.

Measured, each on its own: `clean.apply` with the default `CleanConfig` (and with
mask_pii on) on each hostile row, on all three together, on a "zalgo" row of
combining marks, on 1 MB and 10 MB rows of mixed unclosed markup (the ratio
shows the time is linear; limit 1 s per MB); and, for comparison, the
100k ordinary documents of bench_clean. Requirement: each hostile row in
seconds (limit below), 100k ordinary rows within bench_clean's 10 s. Run:

    python benchmarks/bench_hostile.py [--rows 100000] [--out benchmarks/results/hostile.md]
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

HOSTILE_LIMIT_S = 5.0  # per hostile row, on a loaded 2-core machine
ORDINARY_LIMIT_S = 10.0  # 100k ordinary rows (bench_clean's requirement)

HOSTILE = {
    '"```x\\n" * 20000 (fences never closed)': "```x\n" * 20000,
    '"<!--" * 50000 (comments never closed)': "<!--" * 50000,
    '"<script>" * 20000 (script never closed)': "<script>" * 20000,
}
_MIXED = '<div "<!--<style>```\n&amp; 555-123-4567 a@b.co\n'
EXTRA = {
    '"a" + "\\u0316\\u0301" * 200000 (combining marks)': "a" + "\u0316\u0301" * 200000,
    "1 MB of mixed unclosed markup, entities, a phone and an e-mail per line": (_MIXED * 25000)[:1_000_000],
    "10 MB of the same (linear: about 10x the 1 MB row)": (_MIXED * 250000)[:10_000_000],
}
PER_MB_LIMIT_S = 1.0  # the mixed rows: at most 1 s per million characters


def _dataset(texts: list[str]):
    import datasets

    return datasets.Dataset.from_dict({"row_id": list(range(len(texts))), "text": texts})


def _time_apply(texts: list[str], config) -> tuple[float, int]:
    from nbtune.data import clean

    ds = _dataset(texts)
    t0 = time.perf_counter()
    try:
        res = clean.apply(ds, config)
        kept = res.rows_after
    except Exception as exc:  # an all-removed DataError is a result too (a row of only markup cleans to nothing)
        kept = 0 if type(exc).__name__ == "DataError" else -1
        if kept < 0:
            raise
    return time.perf_counter() - t0, kept


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "hostile.md"))
    args = parser.parse_args()

    import datasets

    datasets.disable_progress_bars()
    from _machine import machine_lines
    from bench_clean import make_documents

    from nbtune.config import CleanConfig

    default, masked = CleanConfig(), CleanConfig(mask_pii=True)
    load0 = os.getloadavg()[0]
    rows = []
    for label, text in HOSTILE.items():
        for name, cfg in (("default", default), ("mask_pii=True", masked)):
            seconds, _ = _time_apply([text], cfg)
            rows.append((label, f"{len(text):,}", name, seconds, HOSTILE_LIMIT_S))
    seconds, _ = _time_apply(list(HOSTILE.values()), default)
    rows.append(("the three rows above together", "", "default", seconds, HOSTILE_LIMIT_S * 3))
    for label, text in EXTRA.items():
        seconds, _ = _time_apply([text], masked)
        limit = max(HOSTILE_LIMIT_S, PER_MB_LIMIT_S * len(text) / 1e6) if "MB" in label else HOSTILE_LIMIT_S
        rows.append((label, f"{len(text):,}", "mask_pii=True", seconds, limit))
    docs = make_documents(args.rows)[0]
    seconds, kept = _time_apply(docs, default)
    rows.append((f"{args.rows:,} ordinary documents (bench_clean's data)", f"{sum(map(len, docs)) / len(docs):.0f} avg",
                 "default", seconds, ORDINARY_LIMIT_S))
    load1 = os.getloadavg()[0]

    lines = ["# Hostile rows through clean() (benchmarks/bench_hostile.py)", "", *machine_lines(),
             f"- time: {dt.datetime.now().strftime('%H:%M')}",
             f"- load average (1 min) before / after: {load0:.2f} / {load1:.2f} (2 cores shared with other work)",
             f"- command: `python benchmarks/bench_hostile.py --rows {args.rows}`",
             "- before this change (issue 11): the three hostile rows took 260 s together with the default recipe",
             "", "| row | characters | recipe | clean.apply wall time | limit | result |", "|---|---|---|---|---|---|"]
    failed = False
    for label, chars, name, seconds, limit in rows:
        ok = seconds <= limit
        failed |= not ok
        lines.append(f"| {label} | {chars} | {name} | {seconds:.2f} s | {limit:g} s | {'PASS' if ok else 'FAIL'} |")
    lines += ["", "Times include building the one-row `datasets.Dataset` and the `Dataset.map` call (about 0.05 s).", ""]
    from _machine import write_result

    write_result(Path(args.out).name, lines)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
