"""The JupyterLab live chart: a plotly FigureWidget and a progress line, updated in place.

Updated from the training thread: ipywidgets sends the changes over the
kernel's comm channel, which works from any thread. Plain display updates do
not: after the cell has finished, JupyterLab drops display updates sent from a
thread. Widget state is not saved with the notebook by default, so to keep the
final charts in the saved file, show `run.report()` in a cell (the notebooks
do), or turn on JupyterLab's "Save Widget State Automatically".
"""

from __future__ import annotations

from typing import Any

from nbtune.events import Event
from nbtune.viz.live import LiveChart


class WidgetLiveChart(LiveChart):
    def __init__(self, min_interval: float = 0.5) -> None:
        super().__init__(min_interval)
        self._figure: Any = None
        self._label: Any = None
        self._box: Any = None

    def _build(self) -> None:
        import ipywidgets as widgets
        import plotly.graph_objects as go
        from IPython.display import display

        self._figure = go.FigureWidget(self.figure())
        self._label = widgets.HTML(value="")
        self._label.add_class("nbtune-live-progress")
        self._box = widgets.VBox([self._label, self._figure])
        self._box.add_class("nbtune-live-chart")
        display(self._box)

    def draw(self) -> None:
        from nbtune.viz.html import esc

        if self._figure is None:
            self._build()
        fresh = self.figure()
        with self._figure.batch_update():
            for target, source in zip(self._figure.data, fresh.data, strict=False):
                target.x, target.y = source.x, source.y
                target.customdata = source.customdata
            for source in fresh.data[len(self._figure.data):]:
                self._figure.add_trace(source)
        self._label.value = f'<span style="font-family:system-ui;font-size:13px">{esc(self.progress_text())}</span>'

    def show(self) -> None:
        self._build()
        self.draw()

    def finish(self, event: Event) -> None:
        self.draw()
        self._label.value += " — show run.report() in a cell to keep the charts in the saved notebook"
