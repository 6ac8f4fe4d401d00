"""Plotly figures as HTML that needs no network: plotly.js from the installed package, sent once.

plotly's own `to_html(include_plotlyjs="cdn")` makes every chart fetch
plotly.js from a CDN, and `include_plotlyjs=True` puts the 4.8 MB library into
every chart. Here the two are apart:

* `plotlyjs_html()`: one `<script>` with the plotly.min.js that ships inside the
  installed plotly package, then a `nbtune-plotly-ready` event. The HTML report
  file carries it once in its head; a notebook gets it once per kernel (once per
  cell in Colab, whose cells are separate documents): see `nbtune.ui.outputs`.
* `figure_html(fig)`: a `<div>` and a small script that draws the figure with
  the page's `window.Plotly`, at once if it is there, else when the ready event
  fires (a notebook reopened, outputs rendered out of order). Until then the
  div says what it waits for.

Charts redrawn in place (the live chart, through a display handle) pass the
same `key` each time: the drawing it replaces is purged, so hours of updates do
not pile up resize listeners in the page.
"""

from __future__ import annotations

import json
import uuid
from functools import lru_cache
from typing import Any

PLOTLY_READY_EVENT = "nbtune-plotly-ready"
DEFAULT_HEIGHT = 450
WAITING_NOTE = ("chart: waiting for plotly.js, which nbtune sends once per kernel. If this stays, run the cell "
                "again; if it still stays (the output that held plotly.js was cleared), run "
                "`from nbtune.ui.outputs import send_plotlyjs; send_plotlyjs(again=True)` first")

_DRAW_JS = """(function () {
  var id = %(id)s, key = %(key)s;
  function draw() {
    var el = document.getElementById(id);
    if (!el) { return; }
    var shown = window.nbtuneCharts = window.nbtuneCharts || {};
    if (shown[key] && shown[key] !== el) { window.Plotly.purge(shown[key]); }
    shown[key] = el;
    el.textContent = "";
    window.Plotly.newPlot(el, %(data)s, %(layout)s, %(config)s);
  }
  if (window.Plotly) { draw(); } else { window.addEventListener(%(event)s, draw, {once: true}); }
})();"""


@lru_cache(maxsize=1)
def plotlyjs_source() -> str:
    """plotly.min.js as shipped inside the installed plotly package (read once per process)."""
    from plotly.offline import get_plotlyjs

    return get_plotlyjs()


def plotlyjs_signature() -> str:
    """A line that occurs once in plotly.min.js (its banner), to count how often it was sent."""
    return next(line.strip() for line in plotlyjs_source().splitlines()[:6] if "plotly.js v" in line)


def plotlyjs_html() -> str:
    """The whole of plotly.js as `<script>` tags, then the event that draws any chart still waiting."""
    return ("<script>window.PlotlyConfig = {MathJaxConfig: 'local'};</script>\n"
            f"<script type=\"text/javascript\">{plotlyjs_source()}</script>\n"
            f"<script>window.dispatchEvent(new Event({json.dumps(PLOTLY_READY_EVENT)}));</script>")


def figure_html(fig: Any, *, key: str | None = None) -> str:
    """A plotly figure as a `<div>` drawn by the page's plotly.js (never fetched: see the module docstring).

    JSON goes through plotly's encoder, which writes `<` as `\\u003c`, so no
    text in a figure can close the script.
    """
    from plotly.io.json import to_json_plotly

    figure = fig.to_dict()
    div_id = f"nbtune-chart-{uuid.uuid4().hex}"
    height = figure.get("layout", {}).get("height") or DEFAULT_HEIGHT
    script = _DRAW_JS % {
        "id": json.dumps(div_id), "key": json.dumps(key or div_id), "event": json.dumps(PLOTLY_READY_EVENT),
        "data": to_json_plotly(figure.get("data", [])), "layout": to_json_plotly(figure.get("layout", {})),
        "config": json.dumps({"responsive": True, "displaylogo": False}),
    }
    note = f'<span style="font-family:system-ui;font-size:12px;color:#6e7781">{WAITING_NOTE}</span>'
    return (f'<div class="nbtune-chart"><div id="{div_id}" class="plotly-graph-div" '
            f'style="height:{int(height)}px;width:100%">{note}</div><script>{script}</script></div>')
