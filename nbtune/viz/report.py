"""Report objects and the self-contained HTML report file.

Every Session stage returns a `Report`: `repr()` gives a short plain-text
summary for scripts and logs, `_repr_html_()` gives the full HTML (used by the
HTML report file), and `_html_without_figures()` + `figures()` are the two
parts a notebook shows (`nbtune.ui.outputs` displays them for the frontend it
is in; this package imports neither IPython nor anything above it).

The HTML file carries plotly.js once, in its head, and works with no network.
"""

from __future__ import annotations

import datetime as _dt
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from nbtune.storage import atomic_write_text
from nbtune.viz.html import STYLE, esc, key_values
from nbtune.viz.plotly_html import figure_html, plotlyjs_html


class Report:
    """Base class: subclasses fill `title`, `summary()`, `body_html()` and `figures()`."""

    title = "Report"

    def summary(self) -> list[tuple[str, Any]]:
        """Label/value pairs: the short version, shown first everywhere."""
        return []

    def body_html(self) -> str:
        """Safe HTML for everything but the charts (tables, examples, problems)."""
        return ""

    def figures(self) -> list[Any]:
        """Plotly figures, in display order."""
        return []

    def __repr__(self) -> str:
        lines = [f"{self.title}:"]
        lines += [f"  {label}: {value}" for label, value in self.summary()]
        return "\n".join(lines)

    def _html_without_figures(self) -> str:
        return f'<div class="nbt"><h3>{esc(self.title)}</h3>{key_values(self.summary())}{self.body_html()}</div>'

    def _repr_html_(self) -> str:
        charts = "".join(figure_html(fig) for fig in self.figures())
        return STYLE + self._html_without_figures() + charts

    #: True for a report that says cleaning masks personal data (then the HTML file masks loaded rows too).
    masks_personal_data = False

    def redacted(self, redact: Callable[[str], str]) -> Report:
        """This report with every row of user text it shows as loaded passed through `redact` (most show none)."""
        return self


def _masked(reports: list[tuple[str, Report]], redact: Callable[[str], str] | None) -> list[tuple[str, Report]]:
    """With mask_pii in the cleaning recipe, the rows as loaded are masked in the file too.

    The HTML file is what gets shared; the rows as loaded must not bring back
    what cleaning masked. `redact` hides in a row what mask_pii would mask (the
    Session passes `nbtune.data.clean.redact_raw`: values hidden, markup kept);
    without it those rows are left out altogether.
    """
    if not any(r.masks_personal_data for _, r in reports):
        return reports
    hide = redact or (lambda text: "(hidden: cleaning masks personal data in this project)")
    return [(heading, report.redacted(hide)) for heading, report in reports]


GENERATOR_TAG = "<meta name='generator' content='nbtune'>"


def written_by_nbtune(path: Path) -> bool:
    """True if the HTML file at `path` is a report nbtune wrote (its head carries nbtune's generator tag)."""
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            return GENERATOR_TAG in handle.read(4096)
    except OSError:
        return False


def write_html_report(path: str | os.PathLike, title: str, reports: Iterable[tuple[str, Report]], *,
                      redact: Callable[[str], str] | None = None) -> Path:
    """Write one self-contained HTML file (plotly.js embedded once, works offline); return its path.

    `reports` are (section heading, report) pairs; `redact` masks loaded rows
    when the cleaning recipe masks personal data (see `_masked`). The file is written to a
    temporary name and renamed, so a crash never leaves half a report behind.
    """
    target = Path(path).expanduser().resolve()
    target.parent.mkdir(parents=True, exist_ok=True)
    stamp = _dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'>{GENERATOR_TAG}",
        f"<title>{esc(title)}</title>",
        plotlyjs_html(),
        STYLE,
        "<style>body{margin:24px auto;max-width:1150px} h2{font-family:system-ui;border-bottom:1px solid #d0d7de;"
        "padding-bottom:4px;margin-top:32px}</style></head><body>",
        f"<h1 style='font-family:system-ui'>{esc(title)}</h1>",
        f"<p class='nbt muted'>Written by nbtune on {esc(stamp)}.</p>",
    ]
    for heading, report in _masked(list(reports), redact):
        parts.append(f"<h2>{esc(heading)}</h2>")
        parts.append(report._html_without_figures())
        parts.extend(figure_html(fig) for fig in report.figures())
    parts.append("</body></html>")
    atomic_write_text(target, "\n".join(parts))
    return target
