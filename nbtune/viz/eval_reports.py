"""The reports of the evaluation stage: scores on held-out rows, and generated text side by side.

They hold plain numbers and strings (results and texts, no model, no
tokenizer), so they are cheap to keep and to render again. Every piece of
user or model text is escaped.

What they read is spelled out as two Protocols, `ScoredRows` and `Generated`
(`nbtune.eval.metrics.EvalResult` and `nbtune.eval.generate.Generation` have
those fields), so this package never imports the evaluation code it draws.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from nbtune.viz import eval_charts
from nbtune.viz.html import esc, shorten, table
from nbtune.viz.report import Report

BPB_WHY = ("bits per UTF-8 byte of the scored text: it does not depend on the tokenizer, so it compares models "
           "with different tokenizers on the same rows (loss and perplexity are per token, and tokens differ)")


class RowScore(Protocol):
    """One row's score, as `EvalReport` reads it."""

    loss: float
    bits_per_byte: float | None


class ScoredRows(Protocol):
    """Scores over a set of rows, as `EvalReport` reads them (`nbtune.eval.metrics.EvalResult`)."""

    loss: float
    perplexity: float
    bits_per_byte: float | None
    tokens: int
    bytes: int
    rows: int
    seconds: float
    examples: Sequence[RowScore]


class Generated(Protocol):
    """One generated text, as `GenerationReport` reads it (`nbtune.eval.generate.Generation`)."""

    model: str
    prompt: str
    mode: str
    text: str
    new_tokens: int
    finished: bool


def _num(value: float | None, digits: int = 4) -> str:
    if value is None:
        return "–"
    if math.isnan(value):
        return "n/a"
    if math.isinf(value):
        return "∞"
    return f"{value:,.{digits}f}"


def _change(value: float | None, reference: float | None) -> str:
    if value is None or reference is None or not (math.isfinite(value) and math.isfinite(reference)) or not reference:
        return "–"
    return f"{100 * (value - reference) / reference:+.1f}%"


@dataclass(repr=False)
class EvalReport(Report):
    """Loss, perplexity and bits per byte of one model on a split (optionally next to other models)."""

    split: str
    result: ScoredRows
    model: str = "model"
    worst: list[tuple[int, float, str]] = field(default_factory=list)  # (row_id, score, text)
    others: list[tuple[str, ScoredRows]] = field(default_factory=list)  # e.g. [("base", base_result)]
    seq_len: int | None = None  # rows longer than this were scored in windows

    @property
    def title(self) -> str:  # type: ignore[override]
        return f"Evaluation on the {self.split} split"

    @property
    def _uses_bpb(self) -> bool:
        return all(r.bits_per_byte is not None for _, r in self._all())

    def _all(self) -> list[tuple[str, ScoredRows]]:
        return [(self.model, self.result), *self.others]

    def summary(self) -> list[tuple[str, Any]]:
        r = self.result
        pairs: list[tuple[str, Any]] = [
            ("model", self.model),
            ("split", self.split),
            ("rows", f"{r.rows:,}"),
            ("scored tokens", f"{r.tokens:,}" + (f" ({r.bytes:,} bytes of text)" if r.bytes else "")),
            ("loss", f"{_num(r.loss)} nats per token"),
            ("perplexity", _num(r.perplexity, 2)),
            ("bits per byte", f"{_num(r.bits_per_byte)}: {BPB_WHY}" if r.bits_per_byte is not None else
             "unknown (these rows carry no byte counts; tokenize again to get them)"),
        ]
        if self.seq_len:
            pairs.append(("long rows", f"rows over {self.seq_len:,} tokens scored in consecutive windows of "
                                       f"{self.seq_len:,}"))
        for name, other in self.others:
            key, ours, theirs = (("bits per byte", r.bits_per_byte, other.bits_per_byte) if self._uses_bpb else
                                 ("loss", r.loss, other.loss))
            pairs.append((f"vs {name}", f"{key} {_num(theirs)} → {_num(ours)} ({_change(ours, theirs)})"))
        pairs.append(("time", f"{r.seconds:.1f} s"))
        return pairs

    def body_html(self) -> str:
        parts = []
        if self.others:
            everything = self._all()
            ref_name, ref = self.others[0]  # the reference, e.g. the base model
            key = "bits_per_byte" if self._uses_bpb else "loss"
            rows = [(name, _num(r.loss), _num(r.perplexity, 2), _num(r.bits_per_byte),
                     _change(getattr(r, key), getattr(ref, key)) if name != ref_name else "",
                     f"{r.tokens:,}", f"{r.bytes:,}", f"{r.rows:,}") for name, r in everything]
            parts += ["<h4>Comparison</h4>",
                      table(["model", "loss (nats/token)", "perplexity", "bits per byte",
                             f"{key.replace('_', ' ')} vs {ref_name}", "scored tokens", "bytes", "rows"],
                            rows, numeric=[1, 2, 3, 4, 5, 6, 7])]
            notes = []
            if len({r.tokens for _, r in everything}) > 1:
                notes.append("The models score different numbers of tokens (different tokenizers or rows): compare "
                             "bits per byte, not loss or perplexity.")
            if len({(r.rows, r.bytes) for _, r in everything}) > 1:
                notes.append("The models were scored on different rows or bytes, so even bits per byte compares "
                             "only roughly.")
            parts += [f'<p class="warn">{esc(n)}</p>' for n in notes]
        if self.worst:
            label = "bits per byte" if self.result.bits_per_byte is not None else "loss (nats/token)"
            parts += [f"<h4>Hardest rows for {esc(self.model)} (highest {esc(label)})</h4>",
                      table(["row", label, "text"], [(rid, _num(score), shorten(text, 400))
                                                     for rid, score, text in self.worst], numeric=[0, 1])]
        return "".join(parts)

    def figures(self) -> list[Any]:
        everything = self._all()
        if self._uses_bpb:
            series = [(name, [e.bits_per_byte for e in r.examples]) for name, r in everything]
            overall = [r.bits_per_byte for _, r in everything]
            x_title, title = "bits per byte of the row", "Bits per byte per row"
        else:
            series = [(name, [e.loss for e in r.examples]) for name, r in everything]
            overall = [r.loss for _, r in everything]
            x_title, title = "loss of the row (nats per token)", "Loss per row"
        if not any(v is not None and math.isfinite(v) for _, values in series for v in values):
            return []
        return [eval_charts.example_histogram(series, x_title=x_title, title=title, overall=overall)]


@dataclass(repr=False)
class GenerationReport(Report):
    """Generated text: one row per prompt and mode, one column per model."""

    generations: list[Generated]
    chat: bool = False
    max_new_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    seed: int | None = None
    seconds: float = 0.0
    title = "Generations"

    def _order(self) -> tuple[list[str], list[str], list[str]]:
        models = list(dict.fromkeys(g.model for g in self.generations))
        prompts = list(dict.fromkeys(g.prompt for g in self.generations))
        modes = list(dict.fromkeys(g.mode for g in self.generations))
        return models, prompts, modes

    def summary(self) -> list[tuple[str, Any]]:
        models, prompts, modes = self._order()
        sampling = (f"temperature {self.temperature}, top-p {self.top_p}, seed {self.seed} (reproducible)"
                    if "sampled" in modes and self.temperature is not None else None)
        pairs: list[tuple[str, Any]] = [
            ("models", ", ".join(models) or "none"),
            ("prompts", f"{len(prompts):,}"),
            ("prompting", "each prompt as a user turn in the chat template; stops at the end of the turn" if self.chat
             else "the model continues the prompt text; stops at end of text"),
            ("modes", ", ".join(modes) or "none"),
        ]
        if sampling:
            pairs.append(("sampling", sampling))
        if self.max_new_tokens:
            pairs.append(("max new tokens", f"{self.max_new_tokens:,}"))
        if self.seconds:
            pairs.append(("time", f"{self.seconds:.1f} s"))
        return pairs

    def _cell(self, g: Generated | None) -> str:
        if g is None:
            return '<td class="cell muted">–</td>'
        text = esc(g.text) if g.text else '<span class="muted">(nothing)</span>'
        cut = (not g.finished and self.max_new_tokens is not None and g.new_tokens >= self.max_new_tokens)
        mark = f' <span class="muted">[cut at {self.max_new_tokens:,} tokens]</span>' if cut else ""
        return f'<td class="cell">{text}{mark}</td>'

    def body_html(self) -> str:
        models, prompts, modes = self._order()
        if not self.generations:
            return '<p class="muted">No generations.</p>'
        found = {(g.prompt, g.mode, g.model): g for g in self.generations}
        head = "".join(f"<th>{esc(h)}</th>" for h in ["prompt", "mode", *models])
        body = []
        for prompt in prompts:
            for i, mode in enumerate(modes):
                first = (f'<td class="cell" rowspan="{len(modes)}">{esc(prompt)}</td>' if i == 0 else "")
                cells = "".join(self._cell(found.get((prompt, mode, m))) for m in models)
                body.append(f"<tr>{first}<td>{esc(mode)}</td>{cells}</tr>")
        return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"
