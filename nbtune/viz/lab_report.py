"""The lab's report: curves, a table per data fraction, the ratios, warnings and a plain-language summary."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from nbtune.viz.charts import BLUE, ORANGE
from nbtune.viz.html import bullet_list, table
from nbtune.viz.report import Report

DASHES = ["dot", "dash", "solid", "dashdot", "longdash"]


def _flops(x: float | None) -> str:
    if x is None:
        return "–"
    for unit, scale in (("PFLOP", 1e15), ("TFLOP", 1e12), ("GFLOP", 1e9), ("MFLOP", 1e6)):
        if x >= scale:
            return f"{x / scale:,.2f} {unit}"
    return f"{x:,.0f} FLOP"


def _mib(x: float) -> str:
    return f"{x / 2**20:,.0f} MiB" if x else "–"


def lab_curves(arms: list[Any], *, x_key: str, x_title: str, log_x: bool = False, target: float | None = None) -> Any:
    """Held-out bits/byte of every arm against tokens or FLOPs (pure: arms in, figure out)."""
    import plotly.graph_objects as go

    fractions = sorted({a.fraction for a in arms})
    fig = go.Figure()
    for arm in arms:
        color = BLUE if arm.arm == "fine-tune" else ORANGE
        dash = DASHES[fractions.index(arm.fraction) % len(DASHES)]
        fig.add_trace(go.Scatter(
            x=[p[x_key] for p in arm.curve], y=[p["bpb"] for p in arm.curve], mode="lines+markers",
            name=f"{arm.arm}, {arm.fraction:.0%} of data", line=dict(color=color, dash=dash),
            hovertemplate=f"{arm.arm}, {arm.fraction:.0%} of data<br>{x_title} %{{x:,.3s}}"
                          "<br>%{y:.3f} bits/byte<extra></extra>"))
    if target is not None:
        fig.add_hline(y=target, line_dash="dot", line_color="#57606a",
                      annotation_text=f"target {target:.3f} bits/byte", annotation_position="top right")
    fig.update_layout(title=f"Held-out bits per byte vs {x_title}", xaxis_title=x_title,
                      yaxis_title="bits per byte (lower is better)", template="plotly_white", height=380,
                      margin=dict(l=60, r=20, t=50, b=50), legend=dict(font=dict(size=11)))
    if log_x:
        fig.update_xaxes(type="log")
    return fig


def compute_ratio_text(tuned: Any, scratch: Any, target: float) -> str:
    """'scratch needed 12.3x the compute' or 'scratch did not reach it (best 2.41 after 1.0x)'."""
    reach_t, reach_s = tuned.to_reach(target), scratch.to_reach(target)
    used_t, used_s = tuned.curve[-1]["flops"], scratch.curve[-1]["flops"]
    if reach_s is None:
        return (f"not reached: the best from scratch was {min(p['bpb'] for p in scratch.curve):.3f} bits/byte "
                f"after {used_s / used_t:.1f}x the fine-tune arm's compute")
    if reach_t is None or reach_t["flops"] == 0:
        return f"scratch reached it with {_flops(reach_s['flops'])}; fine-tuning was there at {_flops(reach_t and reach_t['flops'])}"
    return f"scratch needed {reach_s['flops'] / reach_t['flops']:.1f}x the compute of fine-tuning"


@dataclass(repr=False)
class LabReport(Report):
    result: Any
    title = "Lab: fine-tuning vs training from scratch"

    def _pairs(self) -> list[tuple[Any, Any]]:
        return self.result.pairs()

    def summary(self) -> list[tuple[str, Any]]:
        r = self.result
        return [("held-out rows", f"{r.held_out_rows:,} (the same rows score every arm)"),
                ("fine-tune arm", f"{r.config.base} with {r.config.method}, {r.config.finetune_steps} steps"),
                ("scratch arm", f"preset {r.config.scratch_preset}, tokenizer: {r.config.scratch_tokenizer}, "
                                f"{r.config.compute_ratio:g}x the fine-tune arm's FLOPs (at most "
                                f"{r.config.max_scratch_steps} steps)"),
                ("target", f"{r.target_bpb:.3f} bits/byte (fine-tuning on all the data)"),
                *([("compute sweep", r.sweep_verdict())] if r.sweep() else []),
                ("warnings", f"{len(r.warnings())}: see below" if r.warnings() else "none: every arm ended at its "
                             "best held-out bits/byte"),
                ("time", f"{r.seconds:.1f} s")]

    def body_html(self) -> str:
        target = self.result.target_bpb
        rows = [_arm_row(arm, target) for tuned, scratch in self._pairs() for arm in (tuned, scratch)]
        ratios = [(f"{tuned.fraction:.0%}", compute_ratio_text(tuned, scratch, target))
                  for tuned, scratch in self._pairs()]
        html = ("<h4>Per data fraction</h4>" + table(
                    ["data", "arm", "rows", "steps", "bits/byte before", "bits/byte after", "best bits/byte",
                     "best at step", "best at FLOPs", "FLOPs used", "wall time", "FLOPs to target", "time to target",
                     "peak memory"], rows, numeric=[2, 3, 4, 5, 6, 7])
                + "<h4>Compute needed to reach the target</h4>" + table(["data", "scratch vs fine-tune"], ratios))
        warnings = self.result.warnings()
        if warnings:
            html += "<h4>Warnings: what the last point hides</h4>" + bullet_list(warnings)
        sweep = self.result.sweep()
        if sweep:
            html += ("<h4>Compute sweep: scratch on all the data</h4>" + table(
                ["compute (x fine-tune)", "steps", "FLOPs used", "best bits/byte", "best at step", "final bits/byte",
                 "matches the fine-tune"],
                [(f"{a.compute:g}x" + (" (capped)" if a.capped else ""), a.steps, _flops(a.curve[-1]["flops"]),
                  f"{a.best_bpb:.3f}", a.best["step"], f"{a.final_bpb:.3f}",
                  "yes" if a.best_bpb <= target else "no") for a in sweep], numeric=[1, 3, 4, 5])
                     + bullet_list([self.result.sweep_verdict()]))
        return html + "<h4>What this measured</h4>" + bullet_list(self.differences())

    def differences(self) -> list[str]:
        """The four differences a workshop teaches, filled in with this lab's numbers."""
        pairs = self._pairs()
        target = self.result.target_bpb
        tuned_all, scratch_all = pairs[-1]
        first_tuned = next((t for t, _ in pairs if t.to_reach(target * 1.02)), None)
        first_scratch = next((s for _, s in pairs if s.to_reach(target)), None)
        data = (f"Data: fine-tuning came within 2% of its best ({target:.3f} bits/byte) with "
                f"{first_tuned.fraction:.0%} of the rows ({first_tuned.train_rows:,}); "
                if first_tuned else "Data: ")
        data += (f"from scratch, {first_scratch.fraction:.0%} of the rows were needed to reach it."
                 if first_scratch else "from scratch it was not reached even with all the rows "
                 f"(best {scratch_all.final_bpb:.3f} bits/byte).")
        compute = (f"Compute: {compute_ratio_text(tuned_all, scratch_all, target)} "
                   f"(fine-tuning used {_flops(tuned_all.curve[-1]['flops'])}, {tuned_all.seconds:.0f} s here)."
                   + (f" {self.result.sweep_verdict()}" if self.result.sweep() else ""))
        start = (f"Starting point: before any training the pretrained model already scored "
                 f"{tuned_all.start_bpb:.3f} bits/byte on your held-out text; the new model started at "
                 f"{scratch_all.start_bpb:.3f} (random weights know nothing about language).")
        purpose = (f"Purpose: the fine-tuned model keeps what its {tuned_all.parameters:,} parameters learned from a "
                   f"large general corpus and adapts {tuned_all.trainable:,} of them to your data; the scratch "
                   f"model ({scratch_all.parameters:,} parameters) knows only your {scratch_all.train_rows:,} rows — "
                   "the right choice for a new language or domain no base model covers, or to learn how models "
                   "are built.")
        return [data, compute, start, purpose]

    def figures(self) -> list[Any]:
        arms, target = [a for pair in self._pairs() for a in pair], self.result.target_bpb
        figures = [lab_curves(arms, x_key="tokens_seen", x_title="training tokens", target=target),
                   lab_curves(arms, x_key="flops", x_title="training FLOPs", log_x=True, target=target)]
        if self.result.sweep():
            figures.append(sweep_curves(self.result.sweep(), self._pairs()[-1][0], target))
        return figures


def _arm_row(arm: Any, target: float) -> tuple:
    reach, best = arm.to_reach(target), arm.best
    return (f"{arm.fraction:.0%}", arm.arm, f"{arm.train_rows:,}", arm.steps, f"{arm.start_bpb:.3f}",
            f"{arm.final_bpb:.3f}" + (" ⚠" if arm.warnings() else ""), f"{best['bpb']:.3f}", best["step"],
            _flops(best["flops"]), _flops(arm.curve[-1]["flops"]), f"{arm.seconds:.1f} s",
            _flops(reach["flops"]) if reach else "not reached", f"{reach['elapsed']:.1f} s" if reach else "–",
            _mib(arm.peak_memory))


def sweep_curves(sweep: list[Any], tuned: Any, target: float) -> Any:
    """Held-out bits/byte against FLOPs of the fine-tune arm and of scratch at each compute multiple (pure)."""
    import plotly.graph_objects as go

    fig = go.Figure()
    fig.add_trace(go.Scatter(x=[p["flops"] for p in tuned.curve], y=[p["bpb"] for p in tuned.curve],
                             mode="lines+markers", name="fine-tune, all the data", line=dict(color=BLUE)))
    for i, arm in enumerate(sweep):
        fig.add_trace(go.Scatter(
            x=[p["flops"] for p in arm.curve], y=[p["bpb"] for p in arm.curve], mode="lines+markers",
            name=f"scratch, {arm.compute:g}x compute", line=dict(color=ORANGE, dash=DASHES[i % len(DASHES)]),
            hovertemplate=f"scratch, {arm.compute:g}x compute<br>FLOPs %{{x:,.3s}}<br>%{{y:.3f}} bits/byte"
                          "<extra></extra>"))
    fig.add_hline(y=target, line_dash="dot", line_color="#57606a",
                  annotation_text=f"fine-tune {target:.3f} bits/byte", annotation_position="top right")
    fig.update_layout(title="Compute sweep: scratch at several multiples of the fine-tune's FLOPs",
                      xaxis_title="training FLOPs", yaxis_title="bits per byte (lower is better)",
                      template="plotly_white", height=380, margin=dict(l=60, r=20, t=50, b=50))
    fig.update_xaxes(type="log")
    return fig
