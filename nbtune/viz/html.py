"""Tiny HTML helpers shared by every report.

Everything that ends up in HTML goes through `esc` unless it is markup we
built ourselves. User text (rows, column names, file names, error messages)
is never trusted: a dataset row that says `<script>` must show as text.
"""

from __future__ import annotations

import difflib
import html
import re
from collections.abc import Iterable, Sequence
from typing import Any

STYLE = """
<style>
div.nbt{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;font-size:13px;line-height:1.45;color:#1f2328;max-width:1100px}
div.nbt h3{font-size:15px;margin:6px 0 6px}
div.nbt h4{font-size:13px;margin:10px 0 4px;color:#444}
div.nbt table{border-collapse:collapse;margin:4px 0 8px}
div.nbt th,div.nbt td{border:1px solid #d0d7de;padding:3px 7px;text-align:left!important;vertical-align:top}
div.nbt th{background:#f6f8fa}
div.nbt td.num{text-align:right!important;font-variant-numeric:tabular-nums}
div.nbt .cell{max-width:560px;white-space:pre-wrap;word-break:break-word}
div.nbt .muted{color:#6e7781}
div.nbt .warn{color:#9a6700}
div.nbt .bad{color:#cf222e}
div.nbt .ok{color:#1a7f37}
div.nbt del{background:#ffebe9;color:#82071e;text-decoration:line-through}
div.nbt ins{background:#dafbe1;color:#116329;text-decoration:none}
div.nbt .tok-train{background:#dafbe1}
div.nbt .tok-mask{background:#eaeef2;color:#57606a}
div.nbt .kv td:first-child{color:#57606a}
</style>
"""


def esc(value: Any) -> str:
    """Escape any value for HTML text or attribute context."""
    return html.escape(str(value), quote=True)


def plot_label(text: Any) -> str:
    """User text made inert for plotly labels: legend names, hover text, titles.

    plotly.js renders a few HTML tags (<b>, <br>, <a href>...) and decodes
    entities in these strings, so a run or series named ``<a href=...>`` would
    be a link; escaped, it shows as typed.
    """
    return str(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def shorten(text: str, limit: int = 300) -> str:
    """Cut long text for a table cell, saying how much was cut."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}… (+{len(text) - limit} chars)"


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]], numeric: Sequence[int] = ()) -> str:
    """An HTML table; every cell is escaped. `numeric` lists right-aligned columns."""
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    body = []
    for row in rows:
        cells = []
        for i, value in enumerate(row):
            cls = "num" if i in numeric else "cell"
            cells.append(f'<td class="{cls}">{esc(value)}</td>')
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def key_values(pairs: Iterable[tuple[str, Any]]) -> str:
    """A two-column table of labels and values (both escaped)."""
    rows = "".join(f"<tr><td>{esc(k)}</td><td>{esc(v)}</td></tr>" for k, v in pairs)
    return f'<table class="kv"><tbody>{rows}</tbody></table>'


def section(title: str, body: str) -> str:
    """A titled block; `body` must already be safe HTML."""
    return f'<div class="nbt"><h3>{esc(title)}</h3>{body}</div>'


def bullet_list(items: Iterable[str], cls: str = "") -> str:
    """A list of plain-text items (escaped)."""
    lis = "".join(f"<li>{esc(item)}</li>" for item in items)
    return f'<ul class="{esc(cls)}">{lis}</ul>' if lis else ""


_DIFF_TOKENS = re.compile(r"\s+|[^\s]+")
_VISIBLE_SPACE = str.maketrans({" ": "·", "\t": "→", "\n": "↵\n"})


def _diff_piece(tag: str, text: str) -> str:
    """A changed piece; whitespace-only changes are drawn with visible marks (· → ↵)."""
    shown = text.translate(_VISIBLE_SPACE) if text.isspace() else text
    return f"<{tag}>{esc(shown)}</{tag}>"


def diff_html(before: str, after: str) -> str:
    """Word-level before/after diff: removed text in <del>, added in <ins>, all escaped.

    Whitespace is diffed too (collapsing "a  b" to "a b" shows a struck-out "·").
    """
    a, b = _DIFF_TOKENS.findall(before), _DIFF_TOKENS.findall(after)
    out = []
    for op, i1, i2, j1, j2 in difflib.SequenceMatcher(a=a, b=b, autojunk=False).get_opcodes():
        if op == "equal":
            out.append(esc("".join(a[i1:i2])))
            continue
        if i2 > i1:
            out.append(_diff_piece("del", "".join(a[i1:i2])))
        if j2 > j1:
            out.append(_diff_piece("ins", "".join(b[j1:j2])))
    return "".join(out)


def human_bytes(n: float | None) -> str:
    """1536 -> '1.5 KiB' (binary units, as memory is sold and reported by drivers)."""
    if n is None:
        return "unknown"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"  # pragma: no cover
