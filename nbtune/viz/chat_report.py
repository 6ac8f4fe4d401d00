"""What `s.chat()` returns and draws: a report of the conversation, and the side-by-side columns.

* `ChatReport`: every turn of the conversation, one column per model, and per
  model the tokens, tokens per second and how the answer ended. It holds plain
  strings and numbers only; every prompt and answer is escaped.
* `columns_html`: the answers so far, side by side, for a live display while
  they stream (`nbtune.ui.chat_stream` shows it; viz displays nothing).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from nbtune.viz.html import STYLE, esc, table
from nbtune.viz.report import Report

if TYPE_CHECKING:
    from nbtune.eval.chat import ChatAnswer, ChatTurn


def _rate(answer: ChatAnswer) -> str:
    rate = answer.tokens_per_s
    return f"{rate:,.1f}" if rate is not None else "–"


@dataclass(repr=False)
class ChatReport(Report):
    """A conversation with one or several models: each turn's prompt and every model's answer."""

    turns: list[ChatTurn] = field(default_factory=list)
    title = "Chat"

    @property
    def answers(self) -> list[ChatAnswer]:
        """The answers to the latest prompt, one per model."""
        return self.turns[-1].answers if self.turns else []

    @property
    def history(self) -> dict[str, list[dict[str, str]]]:
        """Each chat model's messages so far (what `s.chat(..., history=report)` continues from)."""
        return self.turns[-1].history if self.turns else {}

    def text(self, label: str | None = None) -> str:
        """The latest answer of the model named `label` (default: the first column)."""
        answers = {a.label: a for a in self.answers}
        if label is None:
            return self.answers[0].text if self.answers else ""
        if label not in answers:
            raise KeyError(f"no model named {label!r} in this chat; the models are {list(answers)}")
        return answers[label].text

    def _labels(self) -> list[str]:
        return list(dict.fromkeys(a.label for turn in self.turns for a in turn.answers))

    def summary(self) -> list[tuple[str, Any]]:
        if not self.turns:
            return [("turns", "0")]
        last = self.turns[-1]
        pairs: list[tuple[str, Any]] = [
            ("models", ", ".join(self._labels())),
            ("turns", f"{len(self.turns):,}"),
            ("prompting", "chat models through their own chat template, with their own earlier answers; raw-text "
                          "models continue the latest prompt"),
            ("sampling", last.sampling.describe()),
            ("max new tokens", f"{last.sampling.max_new_tokens:,}"),
        ]
        pairs += [(a.label, f"{a.tokens:,} tokens, {_rate(a)} tokens/s, {a.ending}") for a in last.answers]
        if last.stopped:
            pairs.append(("stopped", "Stop was pressed: the answers end where they were"))
        return pairs

    def body_html(self) -> str:
        if not self.turns:
            return '<p class="muted">No turns yet.</p>'
        labels = self._labels()
        rows = []
        for number, turn in enumerate(self.turns, 1):
            found = {a.label: a for a in turn.answers}
            cells = "".join(_answer_cell(found.get(label)) for label in labels)
            rows.append(f'<tr><td class="num">{number}</td><td class="cell">{esc(turn.prompt)}</td>{cells}</tr>')
        head = "".join(f"<th>{esc(h)}</th>" for h in ["turn", "prompt", *labels])
        stats = table(["model", "tokens", "seconds", "tokens/s", "ended"],
                      [(a.label, f"{a.tokens:,}", f"{a.seconds:.2f}", _rate(a), a.ending)
                       for a in self.turns[-1].answers], numeric=[1, 2, 3])
        return (f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"
                f"<h4>Latest turn (tokens/s: each model's own time; they take turns)</h4>{stats}")


def _answer_cell(answer: ChatAnswer | None) -> str:
    if answer is None:
        return '<td class="cell muted">–</td>'
    text = esc(answer.text) if answer.text else '<span class="muted">(nothing)</span>'
    mark = "" if answer.finished else f' <span class="muted">[{esc(answer.ending)}]</span>'
    return f'<td class="cell">{text}{mark}</td>'


def columns_html(labels: list[str], texts: dict[str, str], done: set[str]) -> str:
    """The answers so far as side-by-side columns (escaped); a column still being written ends with ▌."""
    cells = "".join(
        f'<td class="cell" style="width:{100 // max(1, len(labels))}%">{esc(texts.get(label, ""))}'
        f'{"" if label in done else "▌"}</td>' for label in labels)
    head = "".join(f"<th>{esc(label)}</th>" for label in labels)
    return (f'{STYLE}<div class="nbt"><table style="width:100%"><thead><tr>{head}</tr></thead>'
            f"<tbody><tr>{cells}</tr></tbody></table></div>")
