"""Charts without a network: what plotly.js costs once, and what each live-chart update costs after it.

The Colab / VS Code path (HTML through a display handle) sends plotly.js from
the installed plotly package once per kernel (per cell in Colab), then each
update carries the figure only. Measured in a real IPython shell whose
displays are captured: a 1,000-step run redrawn every 20 steps (50 updates), the
bytes and build time of each update, how many copies of plotly.js went out;
and an HTML report file of 10 reports with 2 charts each (plotly.js copies in
the file, its size).
Run: python benchmarks/bench_offline_charts.py   (writes benchmarks/results/offline-charts.md)
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

from _machine import machine_lines, write_result

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

STEPS, EVERY, REPORTS = 1000, 20, 10


def _steps(n: int) -> list[dict]:
    return [{"step": i, "loss": 5.0 / (1 + i / 100), "tokens_per_s": 12_000.0 + i, "lr": 1e-3, "tokens_seen": 512 * i}
            for i in range(1, n + 1)]


def live_run() -> dict:
    """Draw a 1,000-step run 50 times through one display handle; sizes of what was displayed."""
    from IPython.core.displaypub import CapturingDisplayPublisher
    from IPython.core.interactiveshell import InteractiveShell

    from nbtune.ui.live import HtmlLiveChart
    from nbtune.viz.plotly_html import plotlyjs_signature

    shell = InteractiveShell.instance()
    shell.display_pub = CapturingDisplayPublisher()
    chart, build_ms = HtmlLiveChart(), []
    records = _steps(STEPS)
    evals = [{"step": s, "eval_loss": 5.0 / (1 + s / 120)} for s in range(100, STEPS + 1, 100)]
    for done in range(EVERY, STEPS + 1, EVERY):
        started = time.perf_counter()
        chart.reset(steps=records[:done], evals=[e for e in evals if e["step"] <= done], total_steps=STEPS,
                    status="running")
        build_ms.append((time.perf_counter() - started) * 1000)
    sent = shell.display_pub.outputs
    sizes = [len(o["data"]["text/html"].encode()) for o in sent]
    signature = plotlyjs_signature()
    carrying = [s for o, s in zip(sent, sizes, strict=True) if signature in o["data"]["text/html"]]
    updates = [s for o, s in zip(sent, sizes, strict=True) if signature not in o["data"]["text/html"]]
    InteractiveShell.clear_instance()
    return {"plotlyjs_copies": len(carrying), "plotlyjs_bytes": carrying[0], "drawings": len(updates),
            "median_update": statistics.median(updates), "largest_update": max(updates), "total": sum(sizes),
            "median_ms": statistics.median(build_ms), "worst_ms": max(build_ms)}


def report_file() -> dict:
    import plotly.graph_objects as go

    from nbtune.viz.plotly_html import plotlyjs_signature
    from nbtune.viz.report import Report, write_html_report

    class TwoCharts(Report):
        title = "two charts"

        def figures(self) -> list:
            return [go.Figure(go.Scatter(y=list(range(500)))), go.Figure(go.Histogram(x=list(range(2000))))]

    with tempfile.TemporaryDirectory() as folder:
        path = write_html_report(Path(folder) / "r.html", "bench", [(f"s{i}", TwoCharts()) for i in range(REPORTS)])
        text = path.read_text(encoding="utf-8")
    return {"charts": text.count('class="nbtune-chart"'), "copies": text.count(plotlyjs_signature()),
            "bytes": len(text.encode())}


def main() -> int:
    run, file = live_run(), report_file()
    mb = 1024 * 1024
    inlined_each_time = run["drawings"] * (run["median_update"] + run["plotlyjs_bytes"])
    ok = run["plotlyjs_copies"] == 1 and file["copies"] == 1 and run["largest_update"] < 200_000
    lines = [
        "# Charts offline: plotly.js once, updates carry the figure only", "", *machine_lines(), "",
        f"Live chart, HTML path (Colab / VS Code): a {STEPS:,}-step run drawn every {EVERY} steps "
        f"({run['drawings']} drawings through one display handle).", "",
        "| plotly.js copies sent | plotly.js output | median update | largest update | all outputs | "
        "the same with plotly.js in every update | build time per update (median / worst) | result |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
        f"| {run['plotlyjs_copies']} | {run['plotlyjs_bytes'] / mb:.2f} MiB | {run['median_update'] / 1024:.1f} KiB | "
        f"{run['largest_update'] / 1024:.1f} KiB | {run['total'] / mb:.2f} MiB | {inlined_each_time / mb:.0f} MiB | "
        f"{run['median_ms']:.0f} ms / {run['worst_ms']:.0f} ms | {'PASS' if ok else 'FAIL'} |", "",
        f"HTML report file: {REPORTS} reports, {file['charts']} charts; plotly.js copies in the file: "
        f"{file['copies']}; file size {file['bytes'] / mb:.2f} MiB (works with no network).", "",
        "PASS: plotly.js sent once, every update under 200 KB, plotly.js once in the file.",
    ]
    write_result("offline-charts.md", lines)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
