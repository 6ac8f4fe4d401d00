"""Charts with the network cut off: every request that leaves this machine is aborted and recorded.

One JupyterLab, three notebooks that each load rows (a report with charts),
train a tiny model (the live chart), show `run.report()` and write the HTML
report file:

* as JupyterLab itself: the live chart is a FigureWidget, reports are plotly's
  mime type, drawn by the plotly extension JupyterLab loads from the server;
* with the kernel told it is VS Code (`VSCODE_PID`, which VS Code's kernel
  launcher sets) and Colab (a `google.colab` module, which Colab's kernel has
  imported): the HTML path, plotly.js sent by nbtune from the installed plotly
  package, once per kernel (VS Code) or once per cell (Colab, whose cells are
  separate pages), never with a live chart's update;
* the report file opened from disk.

Each checks that no request for plotly.js, a CDN or MathJax was even attempted,
that every chart output is drawn (`.js-plotly-plot` with data), and writes a
screenshot to test-artifacts/.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from nbtune.viz.plotly_html import plotlyjs_signature

from .harness import block_network, browser_available, browser_page, jupyterlab, notebook_outputs, open_notebook

pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.timeout(1500)]

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
SIGNATURE = plotlyjs_signature()  # the banner line of plotly.min.js: one per copy sent
STEPS = 40

TELL_THE_KERNEL = {
    "lab": "",
    "vscode": "import os\nos.environ['VSCODE_PID'] = '4242'  # what VS Code's kernel launcher sets\n",
    "colab": ("import importlib.machinery, sys, types\ncolab = types.ModuleType('google.colab')\n"
              "colab.__spec__ = importlib.machinery.ModuleSpec('google.colab', None)\n"
              "sys.modules['google.colab'] = colab  # Colab's kernel has it imported\n"),
}
EXPECTED_FRONTEND = {"lab": "jupyter", "vscode": "vscode", "colab": "colab"}

WATCH_IOPUB_JS = """(sig) => {
  const kernel = window.jupyterapp.shell.currentWidget.sessionContext.session.kernel;
  const seen = window.__nbtuneSeen = {displays: 0, displaysWithPlotly: 0, updates: 0, updatesWithPlotly: 0,
                                      largestUpdate: 0};
  kernel.iopubMessage.connect((_, msg) => {
    const type = msg.header.msg_type;
    if (type !== 'display_data' && type !== 'update_display_data') { return; }
    const html = (msg.content.data || {})['text/html'] || '';
    const carries = html.includes(sig) ? 1 : 0;
    if (type === 'update_display_data') {
      seen.updates += 1; seen.updatesWithPlotly += carries;
      seen.largestUpdate = Math.max(seen.largestUpdate, JSON.stringify(msg.content).length);
    } else { seen.displays += 1; seen.displaysWithPlotly += carries; }
  });
  return true;
}"""

DRAWN_JS = """(scope) => Array.from(document.querySelectorAll(scope + ' .js-plotly-plot')).map(el => {
  const first = el._fullData && el._fullData[0];  // what plotly.js drew (arrays decoded from plotly's binary form)
  return {live: !!el.closest('.nbtune-live-chart'), traces: el._fullData ? el._fullData.length : 0,
          points: first ? (typeof first._length === 'number' ? first._length : (first.x || []).length) : 0};
})"""


def _notebook(path: Path, where: str) -> None:
    import nbformat

    rows = "[f'row {i}: the quick brown fox jumps over the lazy dog, again and again' for i in range(400)]"
    sources = [
        TELL_THE_KERNEL[where] + f"import nbtune\nfrom nbtune.ui.frontend import frontend\n"
                                 f"s = nbtune.Session('ws-{where}')\nprint('frontend:', frontend())",
        f"s.load({rows})",
        "s.tokenize(vocab_size=512, context_length=64)\ns.new_model(preset='tiny')",
        f"run = s.train(steps={STEPS}, batch_size=4, eval_every=10, eval_batches=2)",
        "run.wait()\nrun.report()",
        f"print(s.report('report-{where}.html'))",
    ]
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [nbformat.v4.new_code_cell(source) for source in sources]
    nbformat.write(nb, path)


@pytest.fixture(scope="module")
def offline_lab(tmp_path_factory):
    reason = browser_available()
    if reason:
        pytest.skip(reason)
    root = tmp_path_factory.mktemp("offline")
    ARTIFACTS.mkdir(exist_ok=True)
    with jupyterlab(root) as url, browser_page(root, height=3200) as page:
        blocked = block_network(page)
        yield {"page": page, "url": url, "root": root, "blocked": blocked, "ran": {}}


def run_notebook(lab: dict, where: str) -> dict:
    """Run the notebook for `where` (once per module) with the network blocked; its outputs and what the kernel sent."""
    if where in lab["ran"]:
        return lab["ran"][where]
    page, name = lab["page"], f"offline-{where}.ipynb"
    _notebook(lab["root"] / name, where)
    open_notebook(page, lab["url"], name)
    page.evaluate(WATCH_IOPUB_JS, SIGNATURE)
    page.evaluate("() => window.jupyterapp.commands.execute('notebook:run-all-cells')")
    outputs = notebook_outputs(page)
    errors = [f"cell {i + 1}: {o['ename']}: {o['evalue']}\n" + "\n".join(o.get("traceback", []))
              for i, cell in enumerate(outputs) for o in cell if o["output_type"] == "error"]
    assert not errors, "\n".join(errors)
    printed = "".join(o.get("text", "") for o in outputs[0] if o["output_type"] == "stream")
    assert f"frontend: {EXPECTED_FRONTEND[where]}" in printed, printed
    lab["ran"][where] = {"outputs": outputs, "seen": page.evaluate("() => window.__nbtuneSeen")}
    return lab["ran"][where]


def _html(output: dict) -> str:
    return output.get("data", {}).get("text/html", "")


def _chart_outputs(outputs: list[list[dict]]) -> int:
    """Chart outputs in the notebook model: plotly mime bundles and nbtune HTML charts (widget views not counted:
    progress bars are widgets too)."""
    return sum(("application/vnd.plotly.v1+json" in o.get("data", {})) + _html(o).count('class="nbtune-chart"')
               for cell in outputs for o in cell)


def _wait_until_drawn(page, expected: int, *, shot: str, scope: str = ".jp-Notebook") -> list[dict]:
    """Wait until `expected` charts are drawn with data (screenshot either way); the charts found."""
    try:
        page.wait_for_function(
            f"() => ({DRAWN_JS})({json.dumps(scope)}).filter(c => c.traces > 0 && c.points > 0).length >= {expected}",
            timeout=120_000)
    except Exception as exc:
        raise AssertionError(f"{expected} charts expected, drawn: {page.evaluate(DRAWN_JS, scope)}") from exc
    finally:
        page.screenshot(path=str(ARTIFACTS / shot))
    return page.evaluate(DRAWN_JS, scope)


def _assert_nothing_fetched_from_outside(blocked: list[str]) -> None:
    wanted = [u for u in blocked if re.search(r"plotly|cdn|mathjax|jsdelivr|unpkg|cloudflare", u, re.I)]
    assert not wanted, f"charts tried the network: {wanted}"


def _live_chart_points(drawn: list[dict]) -> list[int]:
    return [c["points"] for c in drawn if c["live"]]


def test_jupyterlab_charts_render_offline(offline_lab):
    ran = run_notebook(offline_lab, "lab")
    page, outputs = offline_lab["page"], ran["outputs"]
    expected = _chart_outputs(outputs) + 1  # the live chart is a FigureWidget (a widget view, not a chart output)
    drawn = _wait_until_drawn(page, expected, shot="offline_jupyterlab.png")
    _assert_nothing_fetched_from_outside(offline_lab["blocked"])
    assert expected >= 4  # the load report's two histograms, the live chart, run.report()'s chart(s)
    assert len(drawn) == expected and all(c["traces"] > 0 and c["points"] > 0 for c in drawn), drawn
    assert _live_chart_points(drawn) == [STEPS]  # the FigureWidget got every step
    assert not any(SIGNATURE in _html(o) for cell in outputs for o in cell)  # JupyterLab brings its own plotly.js


@pytest.mark.parametrize("where", ["vscode", "colab"])
def test_html_charts_render_offline_and_plotlyjs_is_sent_once(offline_lab, where):
    ran = run_notebook(offline_lab, where)
    page, outputs, seen = offline_lab["page"], ran["outputs"], ran["seen"]
    expected = _chart_outputs(outputs)
    drawn = _wait_until_drawn(page, expected, shot=f"offline_{where}.png")
    _assert_nothing_fetched_from_outside(offline_lab["blocked"])
    assert not any("application/vnd.plotly.v1+json" in o.get("data", {}) for cell in outputs for o in cell)
    assert len(drawn) == expected and all(c["traces"] > 0 and c["points"] > 0 for c in drawn), drawn
    assert _live_chart_points(drawn) == [STEPS]  # the display handle's last drawing holds the whole run

    copies = [sum(SIGNATURE in _html(o) for o in cell) for cell in outputs]
    cells_with_charts = [i for i, cell in enumerate(outputs) if any('class="nbtune-chart"' in _html(o) for o in cell)]
    assert len(cells_with_charts) >= 3, cells_with_charts  # load, train (live), run.report()
    if where == "vscode":  # one page for all outputs: once per kernel, in the first cell that shows a chart
        assert copies[cells_with_charts[0]] == 1 and sum(copies) == 1, copies
    else:  # Colab: each cell is its own page, so each cell with charts has its own copy
        assert [copies[i] for i in cells_with_charts] == [1] * len(cells_with_charts) and sum(copies) == len(
            cells_with_charts), copies
    for i in cells_with_charts if where == "colab" else cells_with_charts[:1]:  # plotly.js comes first
        first = next(o for o in outputs[i] if SIGNATURE in _html(o) or 'class="nbtune-chart"' in _html(o))
        assert SIGNATURE in _html(first), f"cell {i + 1}: a chart came before plotly.js"

    # what went over the wire: plotly.js as often as above, and never inside a live chart's update
    assert seen["displaysWithPlotly"] == sum(copies), seen
    assert seen["updates"] >= 5 and seen["updatesWithPlotly"] == 0, seen  # start, 4 evals, end: drawn at once
    assert seen["largestUpdate"] < 200_000, seen  # an update is the figure (KBs), not plotly.js (~4.8 MB)


def test_the_report_file_renders_offline(offline_lab):
    run_notebook(offline_lab, "lab")
    page, blocked = offline_lab["page"], offline_lab["blocked"]
    path = offline_lab["root"] / "report-lab.html"
    text = path.read_text(encoding="utf-8")
    assert text.count(SIGNATURE) == 1  # plotly.js inlined once for the whole file
    assert not re.search(r"<script[^>]+src=", text)  # no script from anywhere else
    expected = text.count('class="nbtune-chart"')
    before = len(blocked)
    page.goto(path.as_uri())
    drawn = _wait_until_drawn(page, expected, scope="body", shot="offline_report_file.png")
    assert expected >= 4 and len(drawn) == expected, drawn
    assert all(c["traces"] > 0 and c["points"] > 0 for c in drawn), drawn
    assert blocked[before:] == []  # the file asked for nothing at all outside the machine
