"""Live training charts in a notebook: listeners on the run's event bus, one per kind of frontend.

* JupyterLab / Notebook 7: `WidgetLiveChart`, a plotly FigureWidget (needs
  `anywidget`) and a progress line, updated in place from the training thread.
  ipywidgets sends the changes over the kernel's comm channel, which works from
  any thread; plain display updates do not (after the cell has finished,
  JupyterLab drops display updates sent from a thread, and a plotly figure
  shown with a display_id does not redraw there).
* Colab and VS Code: the run is in the foreground and `HtmlLiveChart` replaces
  an HTML output through a display handle; FigureWidget is reported broken in
  both. plotly.js is sent once (`nbtune.ui.outputs.send_plotlyjs`), each
  update carries only the figure.
* The app elsewhere (e.g. JupyterLab without anywidget): `OutputLiveChart`, an
  Output widget whose content is replaced by a fresh rendering at each redraw.

All are throttled. The HTML version's last drawing stays in the cell and is
saved with the notebook; widget state is not saved by default, so the
notebooks show `run.report()` after a run (or turn on JupyterLab's "Save
Widget State Automatically").

ipywidgets is imported only when a widget chart is built, so a script, Colab
or VS Code never loads it for a chart.
"""

from __future__ import annotations

import threading
import time
import uuid
from typing import Any

from nbtune.events import Event
from nbtune.ui.frontend import frontend
from nbtune.ui.outputs import figure_bundle, send_plotlyjs
from nbtune.viz import charts
from nbtune.viz.html import esc
from nbtune.viz.plotly_html import figure_html


def _eta(done: int, total: int, elapsed: float) -> str:
    if done <= 0 or total <= done:
        return "–"
    seconds = elapsed / done * (total - done)
    return f"{int(seconds // 60)}m{int(seconds % 60):02d}s" if seconds >= 60 else f"{seconds:.0f}s"


class LiveChart:
    """Collects step and eval records and says when it is time to redraw."""

    def __init__(self, min_interval: float = 0.5) -> None:
        self.steps: list[dict] = []
        self.evals: list[dict] = []
        self.total_steps: int | None = None
        self.status = "starting"
        self.min_interval = min_interval
        self._last_draw = 0.0
        self._lock = threading.Lock()

    def reset(self, steps: list[dict] | None = None, evals: list[dict] | None = None,
              total_steps: int | None = None, status: str = "starting") -> None:
        """Start over for another run, optionally from records it already has (an app reopened mid-run)."""
        with self._lock:
            self.steps, self.evals = list(steps or []), list(evals or [])
            self.total_steps, self.status = total_steps, status
        self.draw()

    def __call__(self, event: Event) -> None:
        with self._lock:
            force = self._record(event)
            now = time.monotonic()
            if not force and now - self._last_draw < self.min_interval:
                return
            self._last_draw = now
        if event.kind == "run_end":
            self.finish(event)
        else:
            self.draw()

    def _record(self, event: Event) -> bool:
        """Store the event; True when it must be drawn at once (start, eval, end, error)."""
        record = event.to_dict()  # step, then the kind's fields (what metrics.jsonl holds)
        if event.kind == "run_start":
            self.total_steps = record["plan"]["total_steps"]
            self.status = "running"
            return True
        if event.kind == "step":
            self.steps = [r for r in self.steps if r["step"] < event.step] + [record]
            return False
        if event.kind == "eval":
            self.evals = [r for r in self.evals if r["step"] < event.step] + [record]
            return True
        if event.kind == "run_end":
            self.status = record["status"]
            return True
        return event.kind == "error"

    def progress_text(self) -> str:
        last = self.steps[-1] if self.steps else {}
        done, total = last.get("step", 0), self.total_steps or 0
        parts = [f"{self.status}", f"step {done:,}/{total:,}"]
        if last:
            parts += [f"loss {last['loss']:.4f}", f"{last['tokens_per_s']:,.0f} tokens/s"]
            if self.status == "running":
                parts.append(f"ETA {_eta(done, total, last.get('elapsed', 0.0))}")
        if self.evals:
            parts.append(f"validation loss {self.evals[-1]['eval_loss']:.4f}")
        return " · ".join(parts)

    def figure(self) -> Any:
        return charts.live_training_figure(self.steps, self.evals)

    def show(self) -> None:
        """Put the (empty) chart in the notebook; called in the cell that starts the run (main thread)."""
        self.draw()

    def draw(self) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    def finish(self, event: Event) -> None:  # pragma: no cover - overridden
        raise NotImplementedError


class HtmlLiveChart(LiveChart):
    """Replace an HTML output through a display handle (Colab, VS Code, anything without widgets).

    The first drawing sends plotly.js (unless the kernel, or in Colab the cell,
    has it); every update is the progress line and the figure only.
    """

    def __init__(self, min_interval: float = 2.0) -> None:
        super().__init__(min_interval)
        self._handle: Any = None
        self._key = f"nbtune-live-{uuid.uuid4().hex}"  # one chart, redrawn: each drawing purges the last

    def _html(self) -> dict[str, str]:
        bar = f'<div class="nbt nbtune-live-progress" style="font-family:system-ui;font-size:13px">' \
              f'{esc(self.progress_text())}</div>'
        html = f'<div class="nbtune-live-chart">{bar}{figure_html(self.figure(), key=self._key)}</div>'
        return {"text/html": html, "text/plain": self.progress_text()}

    def draw(self) -> None:
        from IPython.display import display

        if self._handle is None:
            send_plotlyjs()
            self._handle = display(self._html(), raw=True, display_id=True)
        else:
            self._handle.update(self._html(), raw=True)

    def finish(self, event: Event) -> None:
        self.draw()  # the last drawing holds the whole run; it stays in the notebook file


class _WidgetChart(LiveChart):
    """A progress line over a chart widget, in one box the app embeds (`.widget`) or a cell shows (`show()`)."""

    def __init__(self, min_interval: float, chart: Any) -> None:
        import ipywidgets as widgets

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

        self._figure = go.FigureWidget(charts.live_training_figure([], []))  # empty traces, filled in place
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
        import ipywidgets as widgets

        self._output = widgets.Output()
        self._key = f"nbtune-live-{uuid.uuid4().hex}"
        super().__init__(min_interval, self._output)

    def _draw_chart(self) -> None:
        self._output.outputs = (figure_bundle(self.figure(), key=self._key),)


def _has_anywidget() -> bool:
    try:
        import anywidget  # noqa: F401  (plotly's FigureWidget is built on it)
    except ImportError:
        return False
    return True


def embedded_live_chart() -> LiveChart:
    """The live chart the app embeds: FigureWidget in JupyterLab (with anywidget), Output elsewhere."""
    if frontend() == "jupyter" and _has_anywidget():
        return WidgetLiveChart()
    return OutputLiveChart()


def notebook_listener() -> LiveChart | None:
    """The live chart a cell shows in this frontend (`Session.train`), or None outside a notebook."""
    where = frontend()
    if where == "script":
        return None
    if where == "jupyter":
        return embedded_live_chart()
    return HtmlLiveChart()
