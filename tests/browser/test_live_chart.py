"""In a real JupyterLab: the live chart gains points while training runs in a thread, the notebook stays
usable, and the final chart is left in the cell when the run ends."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from .harness import browser_available, browser_page, jupyterlab, open_notebook

pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.timeout(600)]

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"

POINTS_JS = """() => { const el = document.querySelector('.nbtune-live-chart .js-plotly-plot');
  return el && el.data && el.data[0] ? el.data[0].x.length : -1; }"""
PROGRESS_JS = """() => { const el = document.querySelector('.nbtune-live-progress');
  return el ? el.innerText : ''; }"""
FINAL_JS = """() => Array.from(document.querySelectorAll('.js-plotly-plot'))
  .filter(el => !el.closest('.nbtune-live-chart')).map(el => el.data ? el.data[0].x.length : 0)"""


def _notebook(path: Path) -> None:
    import nbformat

    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [
        nbformat.v4.new_code_cell("import nbtune\ns = nbtune.Session('ws')\ns.load_example('kjv')\n"
                                  "s.tokenize(vocab_size=512, context_length=64)\ns.new_model(preset='tiny')"),
        nbformat.v4.new_code_cell("run = s.train(steps=120, batch_size=8, eval_every=30, eval_batches=4)"),
        nbformat.v4.new_code_cell("print('this cell ran while training went on:', run.status)"),
        nbformat.v4.new_code_cell("run.wait()\nrun.report()"),
    ]
    nbformat.write(nb, path)


def test_live_chart_updates_in_jupyterlab(tmp_path):
    reason = browser_available()
    if reason:
        pytest.skip(reason)
    _notebook(tmp_path / "live.ipynb")
    ARTIFACTS.mkdir(exist_ok=True)
    with jupyterlab(tmp_path) as url, browser_page(tmp_path) as page:
        open_notebook(page, url, "live.ipynb")
        page.evaluate("() => { window.jupyterapp.commands.execute('notebook:run-all-cells'); return true; }")
        counts, deadline = [], time.time() + 400
        while time.time() < deadline:
            counts.append(page.evaluate(POINTS_JS))
            if "finished" in page.evaluate(PROGRESS_JS):
                break
            time.sleep(1.0)
        page.screenshot(path=str(ARTIFACTS / "live_chart.png"))
        assert "finished" in page.evaluate(PROGRESS_JS), counts
        assert len({c for c in counts if c > 0}) >= 3, counts  # the chart gained points while training
        assert max(counts) <= 120
        assert "this cell ran while training went on: running" in page.inner_text(".jp-Notebook")
        try:
            page.wait_for_function(f"() => ({FINAL_JS})().length > 0", timeout=60_000)
        finally:
            page.screenshot(path=str(ARTIFACTS / "live_chart_final.png"))
        assert page.evaluate(FINAL_JS)[0] == 120  # run.report(): a plain chart that the notebook file keeps
        page.screenshot(path=str(ARTIFACTS / "live_chart_final.png"))
