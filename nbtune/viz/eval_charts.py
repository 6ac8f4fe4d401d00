"""Charts of the evaluation stage: plain numbers in, a plotly Figure out (pure functions, like `charts`)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from nbtune.viz.charts import BLUE, GREY, ORANGE
from nbtune.viz.html import plot_label

COLORS = (BLUE, ORANGE, "#2da44e", "#8250df", GREY, "#cf222e")


def _go() -> Any:
    import plotly.graph_objects as go

    return go


def _edges(values: np.ndarray, bins: int) -> np.ndarray:
    """Shared bin edges, the top clipped at the 99.5th percentile so one terrible row does not flatten the rest."""
    if values.size == 0:
        return np.linspace(0.0, 1.0, bins + 1)
    low, top = float(values.min()), float(np.percentile(values, 99.5))
    if top - low < 1e-9:
        low, top = low - 0.5, top + 0.5
    return np.linspace(low, top, bins + 1)


def example_histogram(series: Sequence[tuple[str, Sequence[float]]], *, x_title: str,
                      title: str = "Per-row score", overall: Sequence[float | None] = (), bins: int = 40) -> Any:
    """Overlaid distributions of a per-row number (one bar trace per model, shared bins).

    `series` is (model name, values) pairs; non-finite values (rows with nothing
    scored) are left out. `overall` gives each model's value over all rows,
    drawn as a dashed line in the model's colour.
    """
    go = _go()
    clean = [(name, np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=float))
             for name, values in series]
    edges = _edges(np.concatenate([v for _, v in clean]) if clean else np.array([]), bins)
    centers = (edges[:-1] + edges[1:]) / 2
    labels = [f"{lo:.3f}–{hi:.3f}" for lo, hi in zip(edges[:-1], edges[1:], strict=True)]
    fig = go.Figure()
    for i, (name, values) in enumerate(clean):
        counts, _ = np.histogram(np.clip(values, edges[0], edges[-1]), bins=edges)
        name = plot_label(name)  # model and session names come from the user
        fig.add_trace(go.Bar(x=centers, y=counts, width=np.diff(edges), name=name, marker_color=COLORS[i % len(COLORS)],
                             opacity=0.75 if len(clean) > 1 else 0.9, customdata=labels,
                             hovertemplate="%{customdata}<br>%{y:,} rows<extra>" + name +
                                           "</extra>"))
    for i, value in enumerate(overall):
        if value is not None and math.isfinite(value):
            fig.add_vline(x=value, line_dash="dash", line_color=COLORS[i % len(COLORS)], line_width=1.5)
    fig.update_layout(title=plot_label(title), xaxis_title=f"{x_title} (last bar includes higher values)", yaxis_title="rows",
                      barmode="overlay", bargap=0.02, template="plotly_white", height=320,
                      margin=dict(l=60, r=20, t=50, b=50), showlegend=len(clean) > 1,
                      legend=dict(orientation="h", yanchor="bottom", y=1.0, xanchor="right", x=1.0))
    return fig
