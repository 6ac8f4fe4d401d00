"""The reports of the data stages: load, split, clean (preview or applied), tokens.

They hold plain numbers and strings (no datasets, no tokenizer), so they are
cheap to keep, to render again and to show in the widget app.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from nbtune.viz import charts
from nbtune.viz.html import diff_html, esc, shorten, table
from nbtune.viz.report import Report


def _pct(part: float, whole: float) -> str:
    return f"{100.0 * part / whole:.1f}%" if whole else "–"


def _stats(values: list[int]) -> str:
    if not values:
        return "–"
    arr = np.asarray(values)
    return f"mean {arr.mean():,.0f} · median {np.median(arr):,.0f} · max {arr.max():,}"


@dataclass
class ProblemInfo:
    kind: str
    count: int
    examples: list[int]
    message: str


@dataclass(repr=False)
class LoadReport(Report):
    """What was loaded: source, detected format, sizes, a sample, lengths and problems."""

    source: str
    format: str
    format_reason: str
    mapping: dict[str, str]
    columns: list[str]
    rows: int
    train_rows: int
    validation_rows: int
    sample: list[tuple[int, str]]
    char_lengths: list[int]
    word_lengths: list[int]
    problems: list[ProblemInfo] = field(default_factory=list)
    seconds: float = 0.0
    #: What supervised fine-tuning trains on (e.g. "the assistant's turns", or the preference choice).
    training: str = ""
    title = "Loaded data"

    @property
    def used_columns(self) -> list[str]:
        """The source columns the format reads (from the mapping), in the order of the source."""
        used = set(self.mapping.values())
        return [c for c in self.columns if c in used] + [c for c in self.mapping.values() if c not in self.columns]

    @property
    def unused_columns(self) -> list[str]:
        """Every source column the format does not read: not loaded, and said so."""
        used = set(self.mapping.values())
        return [c for c in self.columns if c not in used]

    def summary(self) -> list[tuple[str, Any]]:
        unused = self.unused_columns
        lines = [
            ("source", self.source),
            ("rows", f"{self.rows:,}"),
            ("format", f"{self.format} ({self.format_reason})"),
            ("columns used", ", ".join(f"{c} (as {r})" if r != c else c for r, c in self.mapping.items()) or "–"),
            ("columns not used", (", ".join(unused) + " (not loaded: pass mapping= or format= to use them)")
                                 if unused else "none"),
        ]
        if self.training:
            lines.append(("supervised fine-tuning on", self.training))
        return lines + [
            ("split", f"{self.train_rows:,} train / {self.validation_rows:,} validation"),
            ("characters per row", _stats(self.char_lengths)),
            ("words per row", _stats(self.word_lengths)),
            ("problems", "; ".join(f"{p.kind}: {p.count:,}" for p in self.problems) or "none found"),
            ("time", f"{self.seconds:.2f} s"),
        ]

    def body_html(self) -> str:
        parts = ["<h4>Sample rows</h4>", table(["row", "text"], [(i, shorten(t)) for i, t in self.sample], numeric=[0])]
        if self.problems:
            parts.append("<h4>Problems found</h4>")
            parts.append(table(["problem", "rows", "example rows", "what it means"],
                               [(p.kind, f"{p.count:,}", ", ".join(map(str, p.examples)), p.message)
                                for p in self.problems], numeric=[1]))
        return "".join(parts)

    def redacted(self, redact: Callable[[str], str]) -> LoadReport:
        """The sample rows (shown as loaded, before cleaning) through `redact`."""
        return dataclasses.replace(self, sample=[(row, redact(text)) for row, text in self.sample])

    def figures(self) -> list[Any]:
        return [charts.length_histogram(self.char_lengths, unit="chars", title="Row length (characters)"),
                charts.length_histogram(self.word_lengths, unit="words", title="Row length (words)")]


@dataclass(repr=False)
class SplitReport(Report):
    """Train/validation sizes after a (re)split."""

    validation_fraction: float
    seed: int
    train_rows: int
    validation_rows: int
    title = "Train / validation split"

    def summary(self) -> list[tuple[str, Any]]:
        return [("validation fraction", self.validation_fraction), ("seed", self.seed),
                ("train rows", f"{self.train_rows:,}"), ("validation rows", f"{self.validation_rows:,}")]


@dataclass
class StepRow:
    name: str
    kind: str
    changed: int
    removed: int
    changed_examples: list[tuple[int, str, str]]
    removed_examples: list[tuple[int, str, str]]


@dataclass(repr=False)
class CleanReport(Report):
    """What the cleaning recipe does (preview, on a sample) or did (applied, on all rows)."""

    applied: bool
    rows_before: int
    rows_after: int
    steps: list[StepRow]
    lengths_before: list[int]
    lengths_after: list[int]
    seconds: float
    train_rows: int | None = None
    validation_rows: int | None = None
    sampled: bool = False

    @property
    def title(self) -> str:  # type: ignore[override]
        if self.applied:
            return "Cleaning applied"
        scope = "on a sample" if self.sampled else "on all rows"
        return f"Cleaning preview ({scope}; nothing changed yet)"

    def summary(self) -> list[tuple[str, Any]]:
        removed = self.rows_before - self.rows_after
        pairs = [
            ("rows", f"{self.rows_before:,} → {self.rows_after:,} ({removed:,} removed, {_pct(removed, self.rows_before)})"),
            ("steps", " → ".join(s.name for s in self.steps) or "none"),
            ("characters", f"{sum(self.lengths_before):,} → {sum(self.lengths_after):,}"),
            ("time", f"{self.seconds:.2f} s"),
        ]
        if self.train_rows is not None:
            pairs.append(("split", f"{self.train_rows:,} train / {self.validation_rows:,} validation"))
        return pairs

    def body_html(self) -> str:
        parts = ["<h4>Per step</h4>", table(
            ["step", "kind", "rows changed", "rows removed"],
            [(s.name, s.kind, f"{s.changed:,}", f"{s.removed:,}") for s in self.steps], numeric=[2, 3])]
        removed = [(rid, step.name, reason, shorten(text)) for step in self.steps
                   for rid, text, reason in step.removed_examples]
        if removed:
            parts += ["<h4>Examples of removed rows</h4>", table(["row", "step", "reason", "text"], removed, numeric=[0])]
        changed = [(rid, step.name, before, after) for step in self.steps
                   for rid, before, after in step.changed_examples]
        if changed:
            parts.append("<h4>Examples of changed rows (<del>removed</del> / <ins>added</ins>)</h4><table>"
                         "<thead><tr><th>row</th><th>step</th><th>change</th></tr></thead><tbody>")
            for rid, name, before, after in changed:
                parts.append(f'<tr><td class="num">{esc(rid)}</td><td>{esc(name)}</td>'
                             f'<td class="cell">{diff_html(shorten(before, 600), shorten(after, 600))}</td></tr>')
            parts.append("</tbody></table>")
        return "".join(parts)

    @property
    def masks_personal_data(self) -> bool:  # type: ignore[override]
        return any(step.name == "mask_pii" for step in self.steps)

    def figures(self) -> list[Any]:
        return [charts.before_after_histogram(self.lengths_before, self.lengths_after)]


@dataclass(repr=False)
class TokenReport(Report):
    """How the text turns into tokens, and how well it will fill training sequences."""

    tokenizer: str
    vocab_size: int
    context_length: int
    format: str
    rows: int
    train_tokens: int
    validation_tokens: int
    token_lengths: list[int]
    over_context: int
    over_context_action: str
    packing: dict[str, float]
    chars_per_token: float
    trained_token_share: float
    response_only: bool
    template_note: str
    example: list[tuple[str, bool]]
    seconds: float
    title = "Tokens"

    def summary(self) -> list[tuple[str, Any]]:
        return [
            ("tokenizer", self.tokenizer),
            ("vocabulary", f"{self.vocab_size:,}"),
            ("tokens", f"{self.train_tokens:,} train / {self.validation_tokens:,} validation"),
            ("tokens per row", _stats(self.token_lengths)),
            ("characters per token", f"{self.chars_per_token:.2f}"),
            ("context length", f"{self.context_length:,}"),
            ("rows over the context", f"{self.over_context:,} ({_pct(self.over_context, self.rows)}): "
                                      f"{self.over_context_action}"),
            ("packing efficiency", f"{100 * self.packing['packed']:.1f}% packed vs "
                                   f"{100 * self.packing['padded_to_context']:.1f}% one row per padded sequence"),
            ("loss on", "all tokens (plain text)" if self.format == "text" else
                        f"{'responses only' if self.response_only else 'all tokens'}: "
                        f"{100 * self.trained_token_share:.1f}% of tokens trained"),
            ("template", self.template_note),
            ("time", f"{self.seconds:.2f} s"),
        ]

    def body_html(self) -> str:
        if not self.example:
            return ""
        spans = "".join(f'<span class="{"tok-train" if trained else "tok-mask"}" title="{"trained" if trained else "masked (no loss)"}">'
                        f"{esc(piece)}</span>" for piece, trained in self.example)
        legend = ('<span class="tok-train">trained</span> <span class="tok-mask">masked (prompt, no loss)</span>')
        return (f"<h4>First training row as the model sees it</h4><p>{legend}</p>"
                f'<div class="cell" style="white-space:pre-wrap;font-family:monospace;border:1px solid #d0d7de;'
                f'padding:6px;max-width:1000px">{spans}</div>')

    def figures(self) -> list[Any]:
        return [charts.token_length_histogram(self.token_lengths, self.context_length)]


class MessageReport(Report):
    """A short outcome (e.g. 'cleaning undone'), still a Report so every stage returns one."""

    def __init__(self, title: str, lines: list[tuple[str, Any]]) -> None:
        self.title = title
        self.lines = lines

    def summary(self) -> list[tuple[str, Any]]:
        return self.lines
