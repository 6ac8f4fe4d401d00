"""Charts without a network, Python side: what nbtune sends to a notebook and writes into the HTML file.

The browser test (tests/browser/test_offline_charts.py) checks that these
outputs draw in a real page with every outside request blocked; here a real
IPython shell captures what is displayed, with the frontend set per test.
"""

from __future__ import annotations

import re

import plotly.graph_objects as go
import pytest
from IPython.core.displaypub import CapturingDisplayPublisher
from IPython.core.interactiveshell import InteractiveShell

from nbtune.ui import live, outputs
from nbtune.viz.plotly_html import figure_html, plotlyjs_html, plotlyjs_signature, plotlyjs_source
from nbtune.viz.report import Report, write_html_report

SIGNATURE = plotlyjs_signature()


class TwoCharts(Report):
    title = "Two charts"

    def figures(self):
        return [go.Figure(go.Scatter(x=[1, 2, 3], y=[3, 1, 2], name="</script><b>a</b>")),
                go.Figure(go.Bar(x=["a", "b"], y=[1, 2]))]


@pytest.fixture
def shell(monkeypatch):
    """A real IPython shell whose displays are captured; no plotly.js sent yet in this 'kernel'."""
    ip = InteractiveShell.instance()
    monkeypatch.setattr(ip, "display_pub", CapturingDisplayPublisher())
    monkeypatch.setattr(outputs, "_plotlyjs_sent_to", set())
    yield ip
    InteractiveShell.clear_instance()


def in_frontend(monkeypatch, name: str) -> None:
    monkeypatch.setattr(outputs, "frontend", lambda: name)
    monkeypatch.setattr(live, "frontend", lambda: name)


def shown(ip) -> list[dict]:
    return ip.display_pub.outputs


def html_of(output: dict) -> str:
    return output["data"].get("text/html", "")


def steps(n: int) -> list[dict]:
    return [{"step": i, "loss": 5.0 - i / 10, "tokens_per_s": 1000.0, "lr": 1e-3, "tokens_seen": 64 * i}
            for i in range(1, n + 1)]


def test_plotlyjs_comes_from_the_installed_package_and_a_chart_never_fetches_it():
    import plotly

    assert SIGNATURE.startswith("* plotly.js v") and plotlyjs_source().count(SIGNATURE) == 1
    assert len(plotlyjs_source()) > 1_000_000 and plotly.__version__  # the whole library, from the wheel
    html = figure_html(TwoCharts().figures()[0])
    assert SIGNATURE not in html and not re.search(r"https?://", html) and "src=" not in html
    assert "</script><b>" not in html and "\\u003cb\\u003ea" in html  # a trace name cannot end the script
    assert "waiting for plotly.js" in html  # what a page without plotly.js (e.g. GitHub's preview) shows
    assert "nbtune-plotly-ready" in plotlyjs_html() and SIGNATURE in plotlyjs_html()


def test_the_html_file_carries_plotlyjs_once_however_many_charts(tmp_path):
    page = write_html_report(tmp_path / "r.html", "t", [("one", TwoCharts()), ("two", TwoCharts())]).read_text()
    assert page.count(SIGNATURE) == 1 and page.count('class="nbtune-chart"') == 4
    assert not re.search(r"<script[^>]+src=", page)
    assert not re.search(r"https?://", page.replace(plotlyjs_source(), ""))  # no address outside plotly.js itself


def test_vscode_live_chart_sends_plotlyjs_once_and_each_update_only_the_figure(shell, monkeypatch):
    in_frontend(monkeypatch, "vscode")
    chart = live.notebook_listener()
    assert isinstance(chart, live.HtmlLiveChart)
    for n in (0, 5, 10, 20):
        chart.reset(steps=steps(n), total_steps=20, status="running")
    chart2 = live.HtmlLiveChart()  # a second run in the same kernel
    chart2.reset(steps=steps(3), total_steps=3, status="finished")
    carrying = [o for o in shown(shell) if SIGNATURE in html_of(o)]
    charts = [o for o in shown(shell) if 'class="nbtune-chart"' in html_of(o)]
    assert len(carrying) == 1 and shown(shell)[0] is carrying[0]  # first, once for the kernel
    assert [o["update"] for o in charts] == [False, True, True, True, False]  # four drawings of run 1, then run 2
    assert all(len(html_of(o)) < 100_000 for o in charts)  # the figure, not the 4.8 MB library
    assert "step 20/20" in html_of(charts[3])


def test_colab_sends_plotlyjs_once_per_cell(shell, monkeypatch):
    in_frontend(monkeypatch, "colab")
    for cell in (1, 2):
        shell.execution_count = cell
        outputs.show_report(TwoCharts())
        outputs.show_report(TwoCharts())  # a second report in the same cell: the cell's page has it already
    per_cell = [o for o in shown(shell) if SIGNATURE in html_of(o)]
    assert len(per_cell) == 2
    assert sum('class="nbtune-chart"' in html_of(o) for o in shown(shell)) == 8


def test_jupyterlab_reports_are_plotly_mime_bundles_and_send_no_plotlyjs(shell, monkeypatch):
    in_frontend(monkeypatch, "jupyter")
    outputs.show_report(TwoCharts())
    kinds = [sorted(o["data"]) for o in shown(shell)]
    assert kinds == [["text/html", "text/plain"], *[["application/vnd.plotly.v1+json", "text/plain"]] * 2]
    assert not any(SIGNATURE in html_of(o) for o in shown(shell))


def test_a_report_without_charts_sends_no_plotlyjs(shell, monkeypatch):
    in_frontend(monkeypatch, "vscode")
    outputs.show_report(Report())
    assert not any(SIGNATURE in html_of(o) for o in shown(shell)) and len(shown(shell)) == 1
