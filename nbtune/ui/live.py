"""Live training charts as widgets, and the output bundles the app shows reports with.

`WidgetLiveChart` (JupyterLab, Notebook 7): a plotly FigureWidget and a progress
line, updated in place from the training thread. ipywidgets sends the changes
over the kernel's comm channel, which works from any thread; plain display
updates do not (after the cell has finished, JupyterLab drops display updates
sent from a thread).

`OutputLiveChart` (everywhere else, e.g. Colab with ipywidgets 7, where
FigureWidget is reported broken): an Output widget whose content is replaced
by a fresh plotly rendering at each redraw.

Widget state is not saved with the notebook by default, so to keep the final
charts in the saved file, show `run.report()` in a cell (the notebooks do), or
turn on JupyterLab's "Save Widget State Automatically".
"""

from __future__ import annotations

import json
from typing import Any

import ipywidgets as widgets

from nbtune.events import Event
from nbtune.viz.html import STYLE, esc
from nbtune.viz.live import LiveChart


def figure_bundle(figure: Any) -> dict[str, Any]:
    """A display_data output for a plotly figure, built without plotly's renderer machinery.

    plotly's notebook renderer injects plotly.js into whichever cell is running
    the first time it is used, which from a callback or a thread is the wrong
    cell. JupyterLab renders the plotly mime type itself; other frontends get
    HTML that loads plotly.js from its CDN.
    """
    from nbtune.train.run import frontend

    title = figure.layout.title.text or "chart"
    data: dict[str, Any] = {"text/plain": f"<plotly figure: {title}>"}
    if frontend() in ("jupyter", "script"):
        data["application/vnd.plotly.v1+json"] = {**json.loads(figure.to_json()), "config": {}}
    else:
        data["text/html"] = figure.to_html(full_html=False, include_plotlyjs="cdn")
    return {"output_type": "display_data", "data": data, "metadata": {}}


def html_bundle(html: str, text: str = "") -> dict[str, Any]:
    return {"output_type": "display_data", "data": {"text/html": html, "text/plain": text}, "metadata": {}}


def report_bundles(report: Any) -> tuple[dict[str, Any], ...]:
    """A report as Output-widget outputs: its HTML part, then one output per chart."""
    html = STYLE + report._html_without_figures()
    return (html_bundle(html, repr(report)), *(figure_bundle(fig) for fig in report.figures()))


class _WidgetChart(LiveChart):
    """A progress line over a chart widget, in one box the app embeds (`.widget`) or a cell shows (`show()`)."""

    def __init__(self, min_interval: float, chart: Any) -> None:
        super().__init__(min_interval)
        self._label = widgets.HTML(value="")
        self._label.add_class("nbtune-live-progress")
        self.widget = widgets.VBox([self._label, chart])
        self.widget.add_class("nbtune-live-chart")

    def _draw_chart(self) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    def draw(self) -> None:
        self._draw_chart()
        self._label.value = f'<span style="font-family:system-ui;font-size:13px">{esc(self.progress_text())}</span>'

    def show(self) -> None:
        from IPython.display import display

        display(self.widget)
        self.draw()

    def finish(self, event: Event) -> None:
        self.draw()


class WidgetLiveChart(_WidgetChart):
    """The FigureWidget chart (JupyterLab, Notebook 7): traces updated in place."""

    def __init__(self, min_interval: float = 0.5) -> None:
        import plotly.graph_objects as go

        from nbtune.viz.charts import live_training_figure

        self._figure = go.FigureWidget(live_training_figure([], []))  # empty traces, filled in place
        super().__init__(min_interval, self._figure)

    def _draw_chart(self) -> None:
        fresh = self.figure()
        with self._figure.batch_update():
            for target, source in zip(self._figure.data, fresh.data, strict=False):
                target.x, target.y = source.x, source.y
                target.customdata = source.customdata
            for source in fresh.data[len(self._figure.data):]:
                self._figure.add_trace(source)

    def finish(self, event: Event) -> None:
        super().finish(event)
        self._label.value += " — show run.report() in a cell to keep the charts in the saved notebook"


class OutputLiveChart(_WidgetChart):
    """The portable chart: an Output widget whose single output is replaced at each redraw."""

    def __init__(self, min_interval: float = 2.0) -> None:
        self._output = widgets.Output()
        super().__init__(min_interval, self._output)

    def _draw_chart(self) -> None:
        self._output.outputs = (figure_bundle(self.figure()),)


def embedded_live_chart() -> LiveChart:
    """The live chart the app embeds: FigureWidget in JupyterLab (with anywidget), Output elsewhere."""
    from nbtune.train.run import frontend

    if frontend() == "jupyter":
        try:
            import anywidget  # noqa: F401  (plotly's FigureWidget is built on it)
        except ImportError:
            return OutputLiveChart()
        return WidgetLiveChart()
    return OutputLiveChart()
