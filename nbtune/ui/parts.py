"""Pieces the app and its tabs share: a report view and a debouncer.

They live below both `app.py` (the App, which lists the tabs) and
`panels.py` (the tabs), so neither imports the other back.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import ipywidgets as widgets

from nbtune.ui.outputs import html_bundle, report_bundles
from nbtune.viz.html import STYLE, esc


class ReportView:
    """An Output widget that shows one report (HTML, then its charts); safe to update from threads."""

    def __init__(self, css_class: str, empty: str = "") -> None:
        self.widget = widgets.Output()
        self.widget.add_class(css_class)
        self.report: Any = None
        self.empty = empty
        self.clear()

    def show(self, report: Any) -> None:
        """Show `report`, or the empty message for None; the report already on screen is not rendered again."""
        if report is None:
            self.clear()
        elif report is not self.report:
            self.report = report
            self.widget.outputs = report_bundles(report)

    def clear(self) -> None:
        self.report = None
        message = f'{STYLE}<div class="nbt muted">{esc(self.empty)}</div>' if self.empty else ""
        self.widget.outputs = (html_bundle(message, self.empty),) if message else ()


class Debouncer:
    """Call `action` once changes stop for `delay` seconds (at once when not in the background)."""

    def __init__(self, action: Callable[[], None], delay: float, background: bool) -> None:
        self.action, self.delay, self.background = action, delay, background
        self._timer: threading.Timer | None = None

    def __call__(self) -> None:
        if not self.background or self.delay <= 0:
            self.action()
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer = threading.Timer(self.delay, self.action)
        self._timer.daemon = True
        self._timer.start()
