"""The report of one training run: what ran, how fast, where the loss went, where the checkpoint is."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from nbtune.viz import charts
from nbtune.viz.html import table
from nbtune.viz.report import Report


def _fmt_bytes(n: float | None) -> str:
    if not n:
        return "–"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:,.1f} {unit}"
        n /= 1024
    return f"{n:,.1f} GiB"


@dataclass(repr=False)
class RunReport(Report):
    """Built from a run's events; safe to render again at any time."""

    run_id: str
    method: str
    status: str
    steps: list[dict] = field(default_factory=list)
    evals: list[dict] = field(default_factory=list)
    samples: list[dict] = field(default_factory=list)
    errors: list[dict] = field(default_factory=list)
    checkpoint: str | None = None
    total_steps: int | None = None
    setup: dict = field(default_factory=dict)  # how a step is computed: attention kernel, loss, compile, memory

    @property
    def title(self) -> str:  # type: ignore[override]
        return f"Training run {self.run_id}"

    def summary(self) -> list[tuple[str, Any]]:
        last = self.steps[-1] if self.steps else {}
        speeds = sorted(r["tokens_per_s"] for r in self.steps[1:]) or [last.get("tokens_per_s", 0)]
        pairs = [
            ("status", f"{self.status} at step {last.get('step', 0)} of {self.total_steps or '?'}"),
            ("method", self.method),
            *[(label, str(self.setup[key])) for key, label in (("attention", "attention kernel"), ("loss", "loss"),
                                                              ("compile", "torch.compile"),
                                                              ("memory", "memory savers"))
              if key in self.setup],
            ("tokens seen", f"{last.get('tokens_seen', 0):,}"),
            ("train loss", f"{self.steps[0]['loss']:.4f} → {last['loss']:.4f}" if self.steps else "–"),
            ("validation loss", f"{self.evals[0]['eval_loss']:.4f} → {self.evals[-1]['eval_loss']:.4f}"
             if self.evals else "no evaluation yet"),
            ("speed", f"{speeds[len(speeds) // 2]:,.0f} tokens/s (median)"),
            ("time", f"{last.get('elapsed', 0.0):.1f} s of training"),
            ("peak memory", _fmt_bytes(max((r.get("memory") or 0) for r in self.steps) if self.steps else None)),
        ]
        mfu = [r["mfu"] for r in self.steps[1:] if r.get("mfu")]
        if mfu:
            pairs.append(("MFU", f"{100 * sorted(mfu)[len(mfu) // 2]:.1f}% (median)"))
        pairs.append(("checkpoint", self.checkpoint or "none yet"))
        return pairs

    def body_html(self) -> str:
        parts = []
        if self.errors:
            parts.append("<h4>Problems during the run</h4>")
            parts.append(table(["step", "recovered", "what happened"],
                               [(e["step"], "yes" if e.get("recovered") else "no", e.get("message", ""))
                                for e in self.errors], numeric=[0]))
        if self.samples:
            parts.append("<h4>Samples during training</h4>")
            parts.append(table(["step", "prompt", "model's continuation"],
                               [(s["step"], s.get("prompt", ""), s.get("text", "")) for s in self.samples[-5:]],
                               numeric=[0]))
        return "".join(parts)

    def figures(self) -> list[Any]:
        if not self.steps:
            return []
        return [charts.training_curves(self.steps, self.evals), charts.throughput_curve(self.steps)]
