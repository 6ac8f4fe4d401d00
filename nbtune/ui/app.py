"""The notebook app: `s.ui()` (or `nbtune.App(s)`), a thin widget view over a Session.

Every action calls a public Session method, and every tab re-reads the Session
when it is shown, so code cells and the app can be mixed freely and `s.ui()`
can be opened again at any time to show the current state. The app keeps only
view state (which run its chart follows, which tab is open).

Actions run through `Jobs`: in a worker thread in JupyterLab / Notebook 7 (the
notebook stays usable and widgets keep updating), in the foreground where
output from threads does not reach the notebook (Colab, VS Code), and the app
says so. An action that fails shows what was wrong and what to do, with the
full traceback one click away; nothing is swallowed.
"""

from __future__ import annotations

import threading
import time
import traceback
from collections.abc import Callable
from typing import Any

import ipywidgets as widgets

from nbtune.errors import ConfigError, NbtuneError
from nbtune.ui.frontend import default_background, frontend
from nbtune.ui.outputs import html_charts, send_plotlyjs
from nbtune.viz.html import STYLE, esc, key_values


class ErrorPanel:
    """Where failed actions land: what was wrong, what to do, and the traceback behind one click."""

    def __init__(self) -> None:
        self.widget = widgets.HTML("")
        self.widget.add_class("nbtune-error")
        self.last: BaseException | None = None
        self.action: str | None = None  # the action that failed
        self.form: Any = None  # the form it read its settings from

    def show(self, action: str, error: BaseException, form: Any = None) -> None:
        self.last, self.action, self.form = error, action, form
        if isinstance(error, NbtuneError):
            what, where, fix = error.what or str(error), error.where(), error.fix
        else:
            what, where = f"{type(error).__name__}: {error}", ""
            fix = "the traceback below says where it happened; if it looks like a bug in nbtune, report it with it"
        trace = "".join(traceback.format_exception(type(error), error, error.__traceback__))
        self.widget.value = (
            '<div style="border:1px solid #f1aeb5;background:#fff5f5;padding:8px 10px;border-radius:6px;'
            'font-family:system-ui;font-size:13px">'
            f'<b>⚠ {esc(action)} failed:</b> {esc(what)}'
            + (f'<br><span style="color:#555">where: {esc(where)}</span>' if where else "")
            + (f"<br><b>What to do:</b> {esc(fix)}" if fix else "")
            + '<details style="margin-top:6px"><summary style="cursor:pointer">Full traceback</summary>'
            f'<pre style="white-space:pre-wrap;font-size:12px">{esc(trace)}</pre></details></div>')

    def clear(self) -> None:
        self.last = self.action = self.form = None
        self.widget.value = ""


class Jobs:
    """Runs the app's actions in order, on one worker thread (or in the foreground); clicks are never lost.

    A click while another action runs is queued behind it and the status line
    says so. Actions queued with `replace=True` (previews, estimates) keep only
    their latest request, so typing fast does not pile up stale previews, and
    their success does not hide the error of another action.
    """

    def __init__(self, errors: ErrorPanel, background: bool, on_done: Callable[[], None],
                 held_elsewhere: Callable[[], str | None] = lambda: None) -> None:
        self.errors = errors
        self.background = background
        self.on_done = on_done
        self.held_elsewhere = held_elsewhere  # the stage a code cell is running on the Session, if any
        self.status = widgets.HTML("")
        self.status.add_class("nbtune-status")
        self.busy: str | None = None
        self._queue: list[tuple[str, Callable[[], Any], Callable[[Any], None] | None, Any, bool]] = []
        self._lock = threading.Lock()
        self._worker: threading.Thread | None = None

    def run(self, label: str, action: Callable[[], Any], *, then: Callable[[Any], None] | None = None,
            form: Any = None, replace: bool = False) -> None:
        """Run `action` (after any running one); `then(result)` shows its outcome."""
        if not self.background:
            self._work(label, action, then, form, replace)
            return
        with self._lock:
            if replace:
                self._queue = [job for job in self._queue if job[0] != label]
            self._queue.append((label, action, then, form, replace))
            ahead = self.busy or (self._queue[0][0] if len(self._queue) > 1 else None)
            if ahead is not None:
                waiting = [job[0] for job in (self._queue if self.busy else self._queue[1:])]
                self._say(f"⏳ {ahead}… (then {', '.join(waiting)})")
            if self._worker is None or not self._worker.is_alive():
                self._worker = threading.Thread(target=self._drain, daemon=True, name="nbtune-app")
                self._worker.start()

    def _drain(self) -> None:
        while True:
            with self._lock:
                if not self._queue:
                    self._worker = None
                    return
                job = self._queue.pop(0)
            self._work(*job)

    def _work(self, label: str, action: Callable[[], Any], then: Callable[[Any], None] | None, form: Any,
              background_refresh: bool = False) -> None:
        self.busy = label
        elsewhere = self.held_elsewhere() if self.background else None
        self._say(f"⏳ {label}… (waiting for {elsewhere}() that a code cell is running)" if elsewhere
                  else f"⏳ {label}…")
        started = time.perf_counter()
        try:
            result = action()
            if then is not None:
                then(result)
        except Exception as exc:  # shown in the app, with its traceback; never swallowed
            if isinstance(exc, ConfigError) and form is not None:
                form.show_error(exc)
            self.errors.show(label, exc, form)
            self._say(f"✗ {label} failed")
        else:
            if not background_refresh or self.errors.action == label or (form is not None and self.errors.form is form):
                self.errors.clear()  # a preview that succeeds also clears what its own form got wrong
            self._say(f"✓ {label} ({time.perf_counter() - started:.1f} s)")
        finally:
            self.busy = None
            self.on_done()

    def wait(self, timeout: float | None = None) -> None:
        """Block until every queued action has ended (tests, and scripts driving the app)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            worker = self._worker
            if worker is None:
                return
            worker.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
            if deadline is not None and time.monotonic() >= deadline:
                return

    def _say(self, text: str) -> None:
        self.status.value = f'<span style="font-family:system-ui;font-size:13px">{esc(text)}</span>'


def _stage_in_a_cell(session: Any) -> str | None:
    """The stage another thread (a code cell) is running on the Session, if any (not the run's own bookkeeping)."""
    holder = session._stage_lock.holder
    return holder if holder not in (None, "bookkeeping", "state", "save") else None


def _frontend_notice(background: bool) -> str:
    if background:
        return ""
    where = {"colab": "Colab", "vscode": "VS Code"}.get(frontend(), "this frontend")
    return (f'{STYLE}<div class="nbt muted">In {esc(where)} each action runs in the foreground: the notebook is busy '
            "until it ends. To stop training early, use the notebook's interrupt button (a checkpoint is written "
            "first).</div>")


class App:
    """Tabs over a Session: Data, Clean, Tokens, Model, Train, Evaluate, Compare, Lab, Playground."""

    def __init__(self, session: Any, *, background: bool | None = None, debounce: float = 0.4) -> None:
        from nbtune.ui import panels, playground

        self.session = session
        self.background = default_background() if background is None else background
        self.errors = ErrorPanel()
        self.jobs = Jobs(self.errors, self.background, on_done=self.refresh_header,
                         held_elsewhere=lambda: _stage_in_a_cell(session))
        self.debounce = debounce
        self.header = widgets.HTML("")
        self.header.add_class("nbtune-header")
        self.panels = [panel(self) for panel in (*panels.PANELS, playground.PlaygroundPanel)]
        self.tabs = widgets.Tab(children=[p.widget for p in self.panels])
        for index, panel in enumerate(self.panels):
            self.tabs.set_title(index, panel.title)
        self.tabs.observe(self._tab_changed, names="selected_index")
        notice = widgets.HTML(_frontend_notice(self.background))
        self.widget = widgets.VBox([self.header, notice, self.errors.widget, self.jobs.status, self.tabs])
        self.widget.add_class("nbtune-app")
        self.refresh()

    # ------------------------------------------------------------ helpers
    def panel(self, title: str) -> Any:
        """The panel of a tab, by title ('Data', 'Clean', ...)."""
        return next(p for p in self.panels if p.title == title)

    def show_tab(self, title: str) -> None:
        self.tabs.selected_index = [p.title for p in self.panels].index(title)

    def _tab_changed(self, change: dict) -> None:
        if change["new"] is not None:
            self._safely(self.panels[change["new"]].refresh)

    def _safely(self, action: Callable[[], Any]) -> None:
        try:
            action()
        except Exception as exc:  # a refresh that fails is shown, never swallowed
            self.errors.show("showing the current state", exc)

    def refresh(self) -> None:
        """Re-read the Session into every tab (what `s.ui()` shows when opened again)."""
        self.refresh_header()
        for panel in self.panels:
            self._safely(panel.refresh)

    def refresh_header(self) -> None:
        s = self.session
        lines = list(s.stages())
        model = s.model_settings
        if model:
            described = model["config"].get("model") or f"preset {model['config'].get('preset')}"
            lines.append(("model", f"{model['kind']}: {described}" + (
                f" ({model['config'].get('method')})" if model["kind"] == "pretrained" else "")))
        if s.runs:
            last = s.runs[-1]
            lines.append(("runs", f"{len(s.runs)}; latest {last['id']}: {last.get('status', '?')}"))
        self.header.value = (f'{STYLE}<div class="nbt"><b>nbtune</b> · {esc(s.workdir)}'
                             f"{key_values(lines)}</div>")

    def wait(self, timeout: float | None = None) -> App:
        """Block until the running action ends (and a training run, if one is running)."""
        self.jobs.wait(timeout)
        return self

    def _ipython_display_(self) -> None:
        from IPython.display import display

        if html_charts():
            send_plotlyjs()  # the charts the tabs show are HTML drawn by it (Colab, VS Code)
        display(self.widget)

    def __repr__(self) -> str:
        return f"nbtune.App({self.session.workdir})  (display it in a notebook cell)"
