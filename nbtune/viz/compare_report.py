"""Reports of the compare and export stages, and the pure chart builder behind the comparison.

`overlay_figure` takes plain numbers (one series per run) and returns a plotly
Figure; `CompareReport` and `ExportReport` hold only plain data, so they can be
rendered again at any time, in a notebook, the widget app or the HTML report.
All user text (run ids, config values, file names, generated text) is escaped
in HTML, and made inert in plotly labels.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from nbtune.viz.html import bullet_list, esc, human_bytes, plot_label, shorten, table
from nbtune.viz.report import Report

PALETTE = ("#3a6fd8", "#e8833a", "#2da44e", "#cf222e", "#8250df", "#bf8700", "#1b7c83", "#8c959f")

# x axes of the comparison: (title with unit, hover number format, tick format)
AXIS_TITLES: dict[str, tuple[str, str, str]] = {
    "steps": ("optimizer step", ",d", ""),
    "tokens": ("tokens seen (tokens)", ",.0f", "~s"),
    "flops": ("training compute (FLOPs, estimated)", ".3s", "~s"),
    "time": ("training time (seconds)", ",.1f", ""),
}

# metrics: (chart title, y-axis title with unit, hover format, scale applied to the values)
METRIC_INFO: dict[str, tuple[str, str, str, float]] = {
    "loss": ("Training loss", "train loss (nats per token)", ".4f", 1.0),
    "eval_loss": ("Validation loss", "validation loss (nats per token)", ".4f", 1.0),
    "eval_ppl": ("Validation perplexity", "validation perplexity", ",.2f", 1.0),
    "eval_bpb": ("Validation bits per byte", "validation loss (bits per byte)", ".4f", 1.0),
    "tokens_per_s": ("Throughput", "throughput (tokens per second)", ",.0f", 1.0),
    "memory": ("Memory", "peak memory (GiB)", ",.3f", 1 / 2**30),
    "lr": ("Learning rate", "learning rate", ".2e", 1.0),
    "grad_norm": ("Gradient norm", "gradient norm (before clipping)", ".3f", 1.0),
    "mfu": ("Model FLOPs utilisation", "MFU (%)", ".1f", 100.0),
}


def _go() -> Any:
    import plotly.graph_objects as go

    return go


def overlay_figure(series: Sequence[Mapping[str, Any]], *, metric: str, axis: str) -> Any:
    """One metric of several runs on one chart: one line per run.

    `series` items: ``name`` (legend name), ``x`` and ``y`` (numbers, same
    length), optional ``step`` (optimizer step of each point, shown on hover)
    and ``markers`` (draw points, for sparse series such as evaluations).
    """
    go = _go()
    chart_title, y_title, y_format, scale = METRIC_INFO.get(metric, (metric, metric, ".4g", 1.0))
    x_title, x_format, x_ticks = AXIS_TITLES.get(axis, (axis, ".4g", ""))
    fig = go.Figure()
    for i, item in enumerate(series):
        ys = [None if v is None else v * scale for v in item["y"]]
        steps = list(item.get("step") or [None] * len(ys))
        name = plot_label(item["name"])
        if not ys:
            name += " (no data)"
        fig.add_trace(go.Scatter(
            x=list(item["x"]), y=ys, customdata=steps, name=name,
            mode="lines+markers" if item.get("markers") else "lines",
            line=dict(color=PALETTE[i % len(PALETTE)], width=2 if item.get("markers") else 1.5),
            marker=dict(size=6),
            hovertemplate=(f"%{{fullData.name}}<br>{x_title}: %{{x:{x_format}}}<br>{y_title}: %{{y:{y_format}}}"
                           + ("<br>step %{customdata}" if axis != "steps" else "") + "<extra></extra>"),
        ))
    fig.update_layout(
        title=f"{chart_title} by {x_title.split(' (')[0]}", xaxis_title=x_title, yaxis_title=y_title,
        template="plotly_white", height=340, margin=dict(l=60, r=20, t=50, b=50), hovermode="closest",
        legend=dict(orientation="h", yanchor="bottom", y=1.0, xanchor="right", x=1.0),
    )
    if x_ticks:
        fig.update_xaxes(tickformat=x_ticks)
    return fig


def _num(value: Any, fmt: str = ".4f") -> str:
    return "–" if value is None else format(value, fmt)


def describe_value(value: Any) -> str:
    """A config value as one short line of text."""
    if value is None:
        return "–"
    if isinstance(value, (dict, list)):
        return json.dumps(value, ensure_ascii=False, default=str)
    return str(value)


def describe_best(best: Mapping[str, Any]) -> str:
    """One line about the best checkpoint of a run (see `nbtune.eval.compare.best_checkpoint`)."""
    if best.get("step") is None:
        return best.get("note") or "no evaluation"
    text = f"step {best['step']} (validation loss {best['eval_loss']:.4f})"
    if best.get("checkpoint"):
        text += f": {best['checkpoint']}"
    if best.get("note"):
        text += f" ({best['note']})"
    return text


@dataclass(repr=False)
class CompareReport(Report):
    """Several runs side by side: a summary per run, the settings that differ, and overlaid curves."""

    axis: str
    runs: list[dict] = field(default_factory=list)
    diff: list[tuple[str, list]] = field(default_factory=list)
    series: dict[str, list[dict]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    title = "Run comparison"

    def summary(self) -> list[tuple[str, Any]]:
        pairs: list[tuple[str, Any]] = [
            ("runs", f"{len(self.runs)}: {', '.join(r['name'] for r in self.runs)}"),
            ("x axis", AXIS_TITLES.get(self.axis, (self.axis,))[0]),
            ("settings that differ", ", ".join(key for key, _ in self.diff) or "none"),
        ]
        scored = [r for r in self.runs if r["best"].get("eval_loss") is not None]
        if scored:
            top = min(scored, key=lambda r: r["best"]["eval_loss"])
            pairs.append(("lowest validation loss",
                          f"{top['name']}: {top['best']['eval_loss']:.4f} at step {top['best']['step']}"))
        return pairs

    def run_rows(self) -> list[list[Any]]:
        """The per-run table as text cells."""
        return [[
            r["name"], r["method"], r["model"], r["status"], f"{r['steps']:,}",
            _num(r["train_loss"]), _num(r["eval_loss"]), _num(r["eval_bpb"]),
            _num(r["tokens_per_s"], ",.0f"), human_bytes(r["memory"]) if r["memory"] else "–",
            describe_best(r["best"]),
        ] for r in self.runs]

    RUN_HEADERS = ("run", "method", "model", "status", "steps", "final train loss", "final validation loss",
                   "bits/byte", "median tokens/s", "peak memory", "best checkpoint")

    def body_html(self) -> str:
        parts = ["<h4>Runs</h4>", table(self.RUN_HEADERS, self.run_rows(), numeric=[4, 5, 6, 7, 8, 9])]
        parts.append("<h4>Settings that differ</h4>")
        if self.diff:
            parts.append(table(["setting", *(r["name"] for r in self.runs)],
                               [[key, *(describe_value(v) for v in values)] for key, values in self.diff]))
        else:
            parts.append('<p class="muted">All recorded settings are the same.</p>')
        if self.notes:
            parts.append(bullet_list(self.notes, "muted"))
        return "".join(parts)

    def figures(self) -> list[Any]:
        return [overlay_figure(series, metric=metric, axis=self.axis) for metric, series in self.series.items()]

    def __repr__(self) -> str:
        lines = [super().__repr__()]
        for row in self.run_rows():
            lines.append("  " + "; ".join(f"{h}: {v}" for h, v in zip(self.RUN_HEADERS, row, strict=True)))
        for key, values in self.diff:
            lines.append(f"  {key}: " + " | ".join(describe_value(v) for v in values))
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


KIND_TEXT = {
    "adapter": "LoRA adapter only (small; load it on top of its base model)",
    "merged": "merged full model (the adapter folded into full-precision base weights)",
    "full": "full model",
}


@dataclass
class GGUFCheck:
    """One metadata key of the GGUF file, read back: what it should say and what it says."""

    key: str
    expected: str
    found: str
    ok: bool


@dataclass
class GGUFParityRow:
    """One prompt, greedy-decoded by the safetensors export (transformers) and by one reader of the GGUF file."""

    prompt: str
    reader: str
    reference: list[int]
    gguf: list[int]
    reference_text: str = ""
    gguf_text: str = ""
    prompt_tokens_match: bool | None = None  # the reader tokenized the prompt text itself (None: not checked)
    margin: float | None = None  # the reference's top-1 minus top-2 logit where the two first differ

    @property
    def same_prefix(self) -> int:
        """Tokens the reader reproduced before its first divergence from the reference."""
        n = 0
        for a, b in zip(self.reference, self.gguf, strict=False):
            if a != b:
                break
            n += 1
        return n

    @property
    def identical(self) -> bool:
        return self.reference == self.gguf

    def divergence(self) -> str:
        if self.identical:
            return "identical"
        where = f"differs at token {self.same_prefix + 1}"
        return where + (f" (reference margin {self.margin:.3g} logits)" if self.margin is not None else "")


@dataclass
class GGUFExport:
    """The GGUF part of an export: the file, its metadata read back, the Ollama Modelfile and the parity check."""

    file: str
    size: int
    quantization: str
    quantization_text: str
    converter: str
    checks: list[GGUFCheck] = field(default_factory=list)
    modelfile: str = "Modelfile"
    modelfile_text: str = ""
    stop_tokens: list[str] = field(default_factory=list)
    stop_ids: list[int] = field(default_factory=list)
    parity: list[GGUFParityRow] = field(default_factory=list)
    parity_rule: str = ""
    # None: token-identical decodes required; a number: a decode may part from the reference only at a near tie,
    # where the reference's top two logits are less than this apart (rounding the weights can flip those)
    parity_tolerance: float | None = None
    parity_error: str | None = None
    parity_skipped: str | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def metadata_ok(self) -> bool:
        return all(c.ok for c in self.checks)

    @property
    def agreement(self) -> float:
        """Share of the reference's tokens reproduced before the first divergence, over every row."""
        total = sum(len(r.reference) for r in self.parity)
        return sum(r.same_prefix for r in self.parity) / total if total else 1.0

    @property
    def parity_ok(self) -> bool | None:
        """True/False for a parity check that ran, None when it was skipped or failed to run."""
        if self.parity_error or not any(r.reference for r in self.parity):
            return None
        tokens_ok = all(r.prompt_tokens_match is not False for r in self.parity)
        if self.parity_tolerance is None:
            return tokens_ok and all(r.identical for r in self.parity)
        return tokens_ok and all(r.identical or self.near_tie(r) for r in self.parity)

    def near_tie(self, row: GGUFParityRow) -> bool:
        return self.parity_tolerance is not None and row.margin is not None and row.margin < self.parity_tolerance

    def parity_line(self) -> str:
        if self.parity_error:
            return f"FAILED to run: {self.parity_error}"
        if not self.parity:
            return f"skipped ({self.parity_skipped})" if self.parity_skipped else "skipped"
        if not any(r.reference for r in self.parity):
            return "inconclusive: the safetensors model stopped at once on every prompt (pass parity_prompts= " \
                   "that it continues)"
        readers = ", ".join(dict.fromkeys(r.reader for r in self.parity))
        same = sum(r.identical for r in self.parity)
        verdict = "passes" if self.parity_ok else "FAILS"
        return (f"{verdict}: {same}/{len(self.parity)} greedy decodes identical, {self.agreement:.0%} of the reference "
                f"tokens reproduced ({readers}); rule: {self.parity_rule}")

    def summary_pairs(self) -> list[tuple[str, Any]]:
        bad = [c.key for c in self.checks if not c.ok]
        return [
            ("GGUF file", f"{self.file}, {human_bytes(self.size)}, {self.quantization} ({self.quantization_text})"),
            ("GGUF metadata", f"{len(self.checks) - len(bad)}/{len(self.checks)} checks pass"
             + (f"; WRONG: {', '.join(bad)}" if bad else "")),
            ("Ollama", f"{self.modelfile} (ollama create my-model -f {self.modelfile}); stops: "
             + (", ".join(self.stop_tokens) or "none")),
            ("GGUF parity", self.parity_line()),
        ]

    def body_html(self) -> str:
        parts = ["<h4>GGUF metadata, read back from the file</h4>",
                 table(["key", "expected", "found", "ok"],
                       [(c.key, shorten(c.expected, 200), shorten(c.found, 200), "yes" if c.ok else "NO")
                        for c in self.checks])]
        parts.append(f"<h4>Parity: greedy decoding, safetensors export vs GGUF ({esc(self.quantization)})</h4>")
        parts.append(f'<p class="muted">{esc(self.parity_line())}</p>')
        if self.parity:
            parts.append(table(
                ["prompt", "reader", "prompt tokens", "result", "same tokens", "safetensors (transformers)", "GGUF"],
                [(r.prompt, r.reader,
                  {None: "not checked", True: "identical", False: "DIFFERENT"}[r.prompt_tokens_match],
                  r.divergence(), f"{r.same_prefix}/{len(r.reference)}", r.reference_text, r.gguf_text)
                 for r in self.parity], numeric=[4]))
        parts.append(f"<h4>Ollama: {esc(self.modelfile)}</h4>")
        parts.append(f'<pre class="cell">{esc(self.modelfile_text)}</pre>')
        if self.notes:
            parts.append(bullet_list(self.notes, "muted"))
        return "".join(parts)


@dataclass(repr=False)
class ExportReport(Report):
    """What `export_model` wrote, and what the written model generated when loaded back."""

    folder: str
    kind: str  # "adapter" | "merged" | "full"
    method: str
    base: str | None = None
    files: list[tuple[str, int]] = field(default_factory=list)
    chat_template: bool = False
    smoke_prompt: str | None = None
    smoke_input: str | None = None
    smoke_text: str | None = None
    smoke_error: str | None = None
    seconds: float = 0.0
    smoke_seconds: float = 0.0
    notes: list[str] = field(default_factory=list)
    gguf: GGUFExport | None = None
    title = "Model export"

    @property
    def total_bytes(self) -> int:
        return sum(size for _, size in self.files)

    @property
    def smoke_ok(self) -> bool:
        return self.smoke_error is None and self.smoke_text is not None

    def _smoke_line(self) -> str:
        if self.smoke_error:
            return f"FAILED: {self.smoke_error}"
        if self.smoke_prompt is None:
            return "skipped"
        return f"{self.smoke_prompt!r} -> {self.smoke_text!r}"

    def summary(self) -> list[tuple[str, Any]]:
        pairs: list[tuple[str, Any]] = [
            ("folder", self.folder),
            ("what", f"{KIND_TEXT.get(self.kind, self.kind)}; trained with {self.method}"),
            ("files", f"{len(self.files)} files, {human_bytes(self.total_bytes)} (safetensors"
             + (" + GGUF" if self.gguf else "") + ", no pickle)"),
            ("chat template", "written with the tokenizer" if self.chat_template else "none (plain-text model)"),
            ("smoke test", self._smoke_line()),
            ("time", f"{self.seconds:.1f} s to write, {self.smoke_seconds:.1f} s to load back and generate"),
        ]
        if self.base:
            pairs.insert(2, ("base model", self.base))
        if self.gguf:
            pairs[-1:-1] = self.gguf.summary_pairs()
        return pairs

    def load_code(self) -> str:
        if self.kind == "adapter":
            return ("from peft import PeftModel\nfrom transformers import AutoModelForCausalLM, AutoTokenizer\n"
                    f"base = AutoModelForCausalLM.from_pretrained({self.base!r})\n"
                    f"model = PeftModel.from_pretrained(base, {self.folder!r})\n"
                    f"tokenizer = AutoTokenizer.from_pretrained({self.folder!r})")
        return ("from transformers import AutoModelForCausalLM, AutoTokenizer\n"
                f"model = AutoModelForCausalLM.from_pretrained({self.folder!r})\n"
                f"tokenizer = AutoTokenizer.from_pretrained({self.folder!r})"
                + (f"\n# llama.cpp: llama-cli -m {self.folder}/{self.gguf.file}\n"
                   f"# Ollama:    cd {self.folder} && ollama create my-model -f {self.gguf.modelfile}"
                   if self.gguf else ""))

    def body_html(self) -> str:
        parts = ["<h4>Files written</h4>",
                 table(["file", "size"], [(name, human_bytes(size)) for name, size in self.files], numeric=[1])]
        parts.append("<h4>Smoke test: the written model, loaded back</h4>")
        if self.smoke_prompt is None and not self.smoke_error:
            parts.append('<p class="muted">skipped (smoke_prompt=None)</p>')
        else:
            rows = [("prompt", self.smoke_prompt or ""), ("model input", self.smoke_input or "")]
            rows.append(("error", self.smoke_error) if self.smoke_error else ("generated", self.smoke_text or ""))
            parts.append(table(["", "text"], rows))
        if self.gguf:
            parts.append(self.gguf.body_html())
        parts.append("<h4>How to load it</h4>")
        parts.append(f'<pre class="cell">{esc(self.load_code())}</pre>')
        if self.notes:
            parts.append(bullet_list(self.notes, "muted"))
        return "".join(parts)
