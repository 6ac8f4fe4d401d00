"""Plotly charts and reports as notebook outputs, with no network in any frontend.

* JupyterLab / Notebook 7 (and scripts): a figure is plotly's own mime type,
  which the plotly extension those frontends load from the installed plotly
  package draws; nothing to send.
* Colab and VS Code: a figure is HTML (`nbtune.viz.plotly_html.figure_html`)
  drawn by `window.Plotly`. plotly.js itself, from the installed plotly
  package, is sent as one output the first time a chart is shown: once per
  kernel in VS Code (all outputs share one page), once per cell in Colab
  (each cell's outputs are a page of their own). Updates of a chart never
  carry it again.

plotly's own renderers are not used: in Colab they fetch plotly.js from a CDN,
and from a callback or a thread their once-per-kernel script lands in whatever
cell runs at the time.

Reports: `nbtune.viz` builds them and imports no IPython, so the notebook
display of a `Report` is registered here with IPython's display formatter
(`show_reports_in_notebook`, called when a Session opens in a kernel).
"""

from __future__ import annotations

import json
from typing import Any

from nbtune.ui.frontend import HTML_FRONTENDS, frontend, in_jupyter_kernel
from nbtune.viz.html import STYLE
from nbtune.viz.plotly_html import figure_html, plotlyjs_html

PLOTLY_MIME = "application/vnd.plotly.v1+json"

_plotlyjs_sent_to: set[Any] = set()  # output scopes (the kernel, or Colab cells) that have plotly.js


def html_charts() -> bool:
    """True where charts are HTML drawn by nbtune's plotly.js (Colab, VS Code)."""
    return frontend() in HTML_FRONTENDS


def _output_scope() -> Any:
    """Where a sent plotly.js stays usable: the kernel's page, or in Colab the running cell's own page."""
    if frontend() != "colab":
        return "kernel"
    from IPython import get_ipython

    shell = get_ipython()
    return ("cell", shell.execution_count if shell is not None else None)


def plotlyjs_bundle() -> dict[str, Any]:
    """The display_data output that carries plotly.js (about 4.8 MB, from the installed plotly package)."""
    return html_bundle(plotlyjs_html(), "")


def send_plotlyjs(*, again: bool = False) -> bool:
    """Show plotly.js as an output, unless this kernel (this cell, in Colab) has it already; True when sent.

    `again=True` sends it even so (after "Clear all outputs" in VS Code took
    the one output that held it).
    """
    scope = _output_scope()
    if scope in _plotlyjs_sent_to and not again:
        return False
    from IPython.display import display

    display(plotlyjs_bundle()["data"], raw=True)
    _plotlyjs_sent_to.add(scope)
    return True


def figure_bundle(figure: Any, *, key: str | None = None) -> dict[str, Any]:
    """A display_data output for a plotly figure in this frontend, built without plotly's renderers.

    JupyterLab renders the plotly mime type itself; Colab and VS Code get HTML
    drawn by the plotly.js that `send_plotlyjs` put in the page. `key` names a
    chart that is redrawn in place (its previous drawing is purged).
    """
    title = figure.layout.title.text or "chart"
    data: dict[str, Any] = {"text/plain": f"<plotly figure: {title}>"}
    if html_charts():
        data["text/html"] = figure_html(figure, key=key)
    else:
        data[PLOTLY_MIME] = {**json.loads(figure.to_json()), "config": {}}
    return {"output_type": "display_data", "data": data, "metadata": {}}


def html_bundle(html: str, text: str = "") -> dict[str, Any]:
    return {"output_type": "display_data", "data": {"text/html": html, "text/plain": text}, "metadata": {}}


def report_bundles(report: Any) -> tuple[dict[str, Any], ...]:
    """A report as outputs: its HTML part, then one output per chart."""
    html = STYLE + report._html_without_figures()
    return (html_bundle(html, repr(report)), *(figure_bundle(fig) for fig in report.figures()))


def show_report(report: Any) -> None:
    """Display a report in the running cell: plotly.js first where needed, the HTML part, then each chart."""
    from IPython.display import display

    bundles = report_bundles(report)
    if html_charts() and len(bundles) > 1:
        send_plotlyjs()
    for bundle in bundles:
        display(bundle["data"], raw=True)


def show_reports_in_notebook() -> None:
    """Make IPython display every `Report` with `show_report` (nothing happens outside a kernel)."""
    if not in_jupyter_kernel():
        return
    from IPython import get_ipython

    from nbtune.viz.report import Report

    get_ipython().display_formatter.ipython_display_formatter.for_type(Report, show_report)
