"""`s.chat(stream=True)`: the answers shown while they are written, in a notebook or a terminal.

* In a notebook: one display handle whose side-by-side HTML columns
  (`nbtune.viz.chat_report.columns_html`, escaped) are replaced, throttled,
  as tokens arrive. No widgets, so it works wherever display handles do
  (JupyterLab, Notebook, Colab, VS Code); the last drawing stays in the cell.
* In a terminal: each model's answer printed as it is written, one model
  after another (the models answer in turn instead of token by token).
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any, TextIO

from nbtune.ui.frontend import in_jupyter_kernel
from nbtune.viz.chat_report import columns_html


class NotebookStream:
    """Side-by-side columns in one notebook display handle, replaced at most every `min_interval` seconds."""

    def __init__(self, labels: list[str], min_interval: float = 0.15) -> None:
        from IPython.display import HTML, display

        self.labels, self.min_interval = labels, min_interval
        self.texts: dict[str, str] = {}
        self.done: set[str] = set()
        self._html = HTML
        self._last = 0.0
        self.handle = display(HTML(columns_html(labels, {}, set())), display_id=True)

    def __call__(self, delta: Any) -> None:
        self.texts[delta.label] = delta.text
        if delta.done:
            self.done.add(delta.label)
        now = time.monotonic()
        if delta.done or now - self._last >= self.min_interval:
            self._last = now
            self.handle.update(self._html(columns_html(self.labels, self.texts, self.done)))

    def close(self) -> None:
        self.handle.update(self._html(columns_html(self.labels, self.texts, set(self.labels))))


class TerminalStream:
    """Plain text: a header per model, then its answer as it is written."""

    def __init__(self, out: TextIO | None = None) -> None:
        self.out = out or sys.stdout
        self.current: str | None = None

    def __call__(self, delta: Any) -> None:
        if delta.label != self.current:
            self.current = delta.label
            self.out.write(f"\n── {delta.label} ──\n")
        self.out.write(delta.delta)
        if delta.done:
            self.out.write("\n")
        self.out.flush()

    def close(self) -> None:
        self.out.flush()


@contextlib.contextmanager
def shown(stream: bool | Callable[[Any], None], labels: list[str]) -> Iterator[tuple[Any, bool]]:
    """(the callback for each delta, whether the models take turns token by token) for `stream`.

    True: a notebook display (interleaved) or terminal text (one model after
    another); False: nothing; a function: that function, interleaved.
    """
    if stream is not True:
        yield (stream if callable(stream) else None), True
        return
    display = NotebookStream(labels) if in_jupyter_kernel() else TerminalStream()
    try:
        yield display, isinstance(display, NotebookStream)
    finally:
        display.close()
