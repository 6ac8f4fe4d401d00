"""Live training charts in a notebook, as listeners on the run's event bus.

Which one works where (see README, "Live charts"):

* JupyterLab / Notebook 7: a plotly `FigureWidget` (needs `anywidget`), updated in
  place from the training thread — `nbtune.ui.live.WidgetLiveChart`. Plain
  display handles do not redraw plotly output there.
* Colab and VS Code: the run is in the foreground and an HTML rendering of the
  figure is replaced through a display handle (`HtmlLiveChart`, this module);
  FigureWidget is reported broken in both.

Both are throttled. The HTML version's last drawing stays in the cell and is
saved with the notebook; the widget is not (JupyterLab saves no widget state by
default), so the notebooks show `run.report()` after a run: a plain plotly
figure that a reopened notebook still shows.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from nbtune.events import Event
from nbtune.viz import charts
from nbtune.viz.html import esc


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
        record = {"step": event.step, **event.data}
        if event.kind == "run_start":
            self.total_steps = event.data["plan"]["total_steps"]
            self.status = "running"
            return True
        if event.kind == "step":
            self.steps = [r for r in self.steps if r["step"] < event.step] + [record]
            return False
        if event.kind == "eval":
            self.evals = [r for r in self.evals if r["step"] < event.step] + [record]
            return True
        if event.kind == "run_end":
            self.status = event.data["status"]
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
    """Replace an HTML output through a display handle (Colab, VS Code, anything without widgets)."""

    def __init__(self, min_interval: float = 2.0, plotlyjs: str = "cdn") -> None:
        super().__init__(min_interval)
        self.plotlyjs = plotlyjs
        self._handle: Any = None

    def _html(self) -> Any:
        from IPython.display import HTML

        bar = f'<div class="nbt" style="font-family:system-ui;font-size:13px">{esc(self.progress_text())}</div>'
        return HTML(bar + self.figure().to_html(full_html=False, include_plotlyjs=self.plotlyjs))

    def draw(self) -> None:
        from IPython.display import display

        if self._handle is None:
            self._handle = display(self._html(), display_id=True)
        else:
            self._handle.update(self._html())

    def finish(self, event: Event) -> None:
        self.draw()  # the last drawing holds the whole run; it stays in the notebook file


def notebook_listener() -> Any | None:
    """The live chart that works in the current frontend, or None outside a notebook."""
    from nbtune.train.run import frontend

    where = frontend()
    if where == "script":
        return None
    if where == "jupyter":
        try:
            import anywidget  # noqa: F401  (plotly's FigureWidget is built on it)
        except ImportError:
            return HtmlLiveChart()
        from nbtune.ui.live import WidgetLiveChart

        return WidgetLiveChart()
    return HtmlLiveChart()
