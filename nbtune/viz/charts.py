"""Chart builders: plain numbers in, a plotly Figure out.

They are pure functions (no Session, no display) so that the notebook, the
widget app and the HTML report all draw the same picture. Data are binned here
with numpy so a figure of 100k rows stays a few kilobytes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from nbtune.viz.html import plot_label

BLUE = "#3a6fd8"
ORANGE = "#e8833a"
GREY = "#8c959f"
GREEN = "#2da44e"


def _go() -> Any:
    import plotly.graph_objects as go

    return go


def _bins(values: Sequence[float], *, bins: int = 40, upper: float | None = None) -> np.ndarray:
    """Shared bin edges; the top is clipped at the 99.5th percentile so one huge row does not flatten the rest."""
    arr = np.asarray(values, dtype=float)
    if arr.size == 0:
        return np.array([0.0, 1.0])
    top = upper if upper is not None else float(np.percentile(arr, 99.5))
    top = max(top, float(arr.min()) + 1.0)
    return np.linspace(float(arr.min()), top, bins + 1)


def _bar_trace(values: Sequence[float], edges: np.ndarray, name: str, color: str, unit: str) -> Any:
    arr = np.clip(np.asarray(values, dtype=float), edges[0], edges[-1])
    counts, _ = np.histogram(arr, bins=edges)
    centers = (edges[:-1] + edges[1:]) / 2
    labels = [f"{lo:,.0f}–{hi:,.0f} {plot_label(unit)}" for lo, hi in zip(edges[:-1], edges[1:], strict=True)]
    name = plot_label(name)
    return _go().Bar(
        x=centers, y=counts, width=np.diff(edges), name=name, marker_color=color, opacity=0.75,
        customdata=labels, hovertemplate="%{customdata}<br>%{y:,} rows<extra>" + name + "</extra>",
    )


def _layout(fig: Any, title: str, x_title: str, y_title: str = "rows") -> Any:
    fig.update_layout(
        title=plot_label(title), xaxis_title=plot_label(x_title), yaxis_title=plot_label(y_title), barmode="overlay", bargap=0.02,
        template="plotly_white", height=320, margin=dict(l=60, r=20, t=50, b=50),
        legend=dict(orientation="h", yanchor="bottom", y=1.0, xanchor="right", x=1.0),
    )
    return fig


def length_histogram(lengths: Sequence[float], *, unit: str = "chars", title: str | None = None) -> Any:
    """Distribution of row lengths (characters, words or tokens)."""
    edges = _bins(lengths)
    fig = _go().Figure([_bar_trace(lengths, edges, "rows", BLUE, unit)])
    return _layout(fig, title or f"Row length ({unit})", f"length ({unit}; last bar includes longer rows)")


def before_after_histogram(before: Sequence[float], after: Sequence[float], *, unit: str = "chars",
                           title: str = "Row length before vs after cleaning") -> Any:
    """Two overlaid length distributions on shared bins."""
    edges = _bins(list(before) + list(after))
    fig = _go().Figure([
        _bar_trace(before, edges, "before", GREY, unit),
        _bar_trace(after, edges, "after", BLUE, unit),
    ])
    return _layout(fig, title, f"length ({unit}; last bar includes longer rows)")


def token_length_histogram(lengths: Sequence[int], context_length: int) -> Any:
    """Tokens per row, with the context length marked: rows right of the line do not fit one sequence."""
    upper = max(float(np.percentile(lengths, 99.5)) if len(lengths) else 1.0, context_length * 1.1)
    edges = _bins(lengths, upper=upper)
    fig = _go().Figure([_bar_trace(lengths, edges, "rows", BLUE, "tokens")])
    fig.add_vline(x=context_length, line_dash="dash", line_color=ORANGE,
                  annotation_text=f"context length {context_length:,}", annotation_position="top left")
    return _layout(fig, "Tokens per row vs context length", "tokens per row (last bar includes longer rows)")


def training_curves(steps: Sequence[dict], evals: Sequence[dict], *, title: str = "Training loss") -> Any:
    """Train loss per step (and validation loss at each evaluation) against optimizer steps."""
    go = _go()
    fig = go.Figure()
    if steps:
        fig.add_trace(go.Scatter(
            x=[r["step"] for r in steps], y=[r["loss"] for r in steps], mode="lines", name="train loss",
            line=dict(color=BLUE, width=1.5),
            customdata=[[r.get("tokens_seen", 0), r.get("lr", 0.0)] for r in steps],
            hovertemplate="step %{x}<br>train loss %{y:.4f}<br>%{customdata[0]:,} tokens seen"
                          "<br>lr %{customdata[1]:.2e}<extra></extra>"))
    if evals:
        fig.add_trace(go.Scatter(
            x=[r["step"] for r in evals], y=[r["eval_loss"] for r in evals], mode="lines+markers",
            name="validation loss", line=dict(color=ORANGE, width=2), marker=dict(size=7),
            hovertemplate="step %{x}<br>validation loss %{y:.4f}<extra></extra>"))
    fig.update_layout(title=plot_label(title), xaxis_title="optimizer step", yaxis_title="loss (nats per token)",
                      template="plotly_white", height=340, margin=dict(l=60, r=20, t=50, b=50),
                      legend=dict(orientation="h", yanchor="bottom", y=1.0, xanchor="right", x=1.0))
    return fig


def live_training_figure(steps: Sequence[dict], evals: Sequence[dict], *, title: str = "Training (live)") -> Any:
    """Loss on top; tokens per second and the learning rate below. Always the same four traces, so a live
    chart can update them in place (empty until the first step)."""
    from plotly.subplots import make_subplots

    go = _go()
    x = [r["step"] for r in steps]
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, row_heights=[0.62, 0.38], vertical_spacing=0.08,
                        specs=[[{}], [{"secondary_y": True}]])
    fig.add_trace(go.Scatter(x=x, y=[r["loss"] for r in steps], mode="lines", name="train loss",
                             line=dict(color=BLUE, width=1.5),
                             customdata=[[r.get("tokens_seen", 0)] for r in steps],
                             hovertemplate="step %{x}<br>train loss %{y:.4f}<br>%{customdata[0]:,} tokens seen"
                                           "<extra></extra>"), row=1, col=1)
    fig.add_trace(go.Scatter(x=[r["step"] for r in evals], y=[r["eval_loss"] for r in evals], mode="lines+markers",
                             name="validation loss", line=dict(color=ORANGE, width=2), marker=dict(size=7),
                             hovertemplate="step %{x}<br>validation loss %{y:.4f}<extra></extra>"), row=1, col=1)
    fig.add_trace(go.Scatter(x=x, y=[r["tokens_per_s"] for r in steps], mode="lines", name="tokens/s",
                             line=dict(color=GREEN, width=1.2),
                             hovertemplate="step %{x}<br>%{y:,.0f} tokens/s<extra></extra>"), row=2, col=1)
    fig.add_trace(go.Scatter(x=x, y=[r["lr"] for r in steps], mode="lines", name="learning rate",
                             line=dict(color=GREY, dash="dot"), hovertemplate="step %{x}<br>lr %{y:.2e}<extra></extra>"),
                  row=2, col=1, secondary_y=True)
    fig.update_yaxes(title_text="loss (nats/token)", row=1, col=1)
    fig.update_yaxes(title_text="tokens/s", rangemode="tozero", row=2, col=1)
    fig.update_yaxes(title_text="lr", showgrid=False, exponentformat="e", row=2, col=1, secondary_y=True)
    fig.update_xaxes(title_text="optimizer step", row=2, col=1)
    fig.update_layout(title=plot_label(title), template="plotly_white", height=460, margin=dict(l=60, r=60, t=60, b=50),
                      legend=dict(orientation="h", yanchor="bottom", y=1.02, xanchor="right", x=1.0))
    return fig


def throughput_curve(steps: Sequence[dict]) -> Any:
    """Tokens per second per step, with the learning rate on a second axis."""
    go = _go()
    fig = go.Figure([
        go.Scatter(x=[r["step"] for r in steps], y=[r["tokens_per_s"] for r in steps], mode="lines",
                   name="tokens/s", line=dict(color=BLUE), hovertemplate="step %{x}<br>%{y:,.0f} tokens/s<extra></extra>"),
        go.Scatter(x=[r["step"] for r in steps], y=[r["lr"] for r in steps], mode="lines", name="learning rate",
                   yaxis="y2", line=dict(color=GREY, dash="dot"),
                   hovertemplate="step %{x}<br>lr %{y:.2e}<extra></extra>"),
    ])
    fig.update_layout(title="Throughput and learning rate", xaxis_title="optimizer step",
                      yaxis=dict(title="tokens per second"),
                      yaxis2=dict(title="learning rate", overlaying="y", side="right", showgrid=False),
                      template="plotly_white", height=300, margin=dict(l=60, r=60, t=50, b=50),
                      legend=dict(orientation="h", yanchor="bottom", y=1.0, xanchor="right", x=1.0))
    return fig
