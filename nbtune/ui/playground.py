"""The Playground tab: type a message, see this model, its base and other sessions answer side by side.

It is `s.chat()` in widgets. Send queues one chat turn on the app's `Jobs`
(so it waits for, and never overlaps, other actions); the answers stream into
one column per model as tokens arrive: the worker thread only sets widget
values (never prints), throttled so the frontend is not flooded. Stop ends the
answers before their next token. The conversation is kept until Clear: each
chat model sees its own earlier answers, through its own chat template.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import ipywidgets as widgets

from nbtune.store import open_sessions
from nbtune.ui.panels import Panel, button, note
from nbtune.ui.parts import ReportView
from nbtune.viz.html import STYLE, esc

UPDATE_EVERY = 0.1  # seconds between two updates of one column while it streams


class AnswerColumn:
    """One model's column: its name and its answer, updated from the worker thread."""

    def __init__(self) -> None:
        self.header = widgets.HTML("")
        self.body = widgets.HTML("")
        self.body.add_class("nbtune-chat-answer")
        self.widget = widgets.VBox([self.header, self.body], layout=widgets.Layout(flex="1 1 0", min_width="0",
                                                                                  display="none"))
        self.widget.add_class("nbtune-chat-column")
        self.label: str | None = None
        self._shown = 0.0

    def start(self, label: str) -> None:
        self.label = label
        self.header.value = f'<div style="font-family:system-ui;font-weight:600">{esc(label)}</div>'
        self.widget.layout.display = "flex"
        self.show("", done=False)

    def show(self, text: str, *, done: bool, note_text: str = "") -> None:
        """The answer so far (escaped); at most every UPDATE_EVERY seconds unless it is done."""
        now = time.monotonic()
        if not done and now - self._shown < UPDATE_EVERY:
            return
        self._shown = now
        tail = "" if done else "▌"
        extra = f' <span class="muted">[{esc(note_text)}]</span>' if note_text else ""
        self.body.value = (f'{STYLE}<div class="nbt"><div class="cell" style="max-width:none;border:1px solid #d0d7de;'
                           f'border-radius:6px;padding:6px 8px;min-height:2.5em">{esc(text)}{tail}{extra}</div></div>')

    def hide(self) -> None:
        self.label = None
        self.widget.layout.display = "none"
        self.body.value = self.header.value = ""


class PlaygroundPanel(Panel):
    title = "Playground"

    def __init__(self, app: Any) -> None:
        super().__init__(app)
        self.prompt = widgets.Textarea(placeholder="Type a message, then Send", layout=widgets.Layout(
            width="620px", height="70px"))
        self.prompt.add_class("nbtune-chat-prompt")
        self.send = button("Send", "nbtune-chat-send", "Ask every chosen model; the answers stream in", "primary")
        self.stop = button("Stop", "nbtune-chat-stop", "Stop the answers before their next token", "danger")
        self.clear = button("Clear", "nbtune-chat-clear", "Start a new conversation")
        self.base = widgets.Checkbox(value=True, description="its base (LoRA: adapters off)", indent=False)
        self.base.add_class("nbtune-chat-base")
        self.others = widgets.SelectMultiple(options=[], description="others", rows=3)
        self.others.add_class("nbtune-chat-others")
        self.max_new_tokens = widgets.BoundedIntText(value=128, min=1, max=4096, description="max tokens",
                                                     layout=widgets.Layout(width="190px"))
        self.temperature = widgets.BoundedFloatText(value=0.0, min=0.0, max=5.0, step=0.1, description="temperature",
                                                    layout=widgets.Layout(width="190px"))
        self.max_new_tokens.add_class("nbtune-chat-max-tokens")
        self.temperature.add_class("nbtune-chat-temperature")
        self.state = widgets.HTML("")
        self.state.add_class("nbtune-chat-state")
        self.columns: list[AnswerColumn] = []
        self.row = widgets.HBox([], layout=widgets.Layout(width="100%"))
        self.row.add_class("nbtune-chat-columns")
        self.conversation = ReportView("nbtune-chat-history", "No messages yet.")
        self.report: Any = None  # the conversation so far (a ChatReport), None after Clear
        self._stop = threading.Event()
        self._conversation = 0  # bumped by Clear: a turn still running for an older conversation is dropped
        self.send.on_click(lambda _: self.do_send())
        self.stop.on_click(lambda _: self.do_stop())
        self.clear.on_click(lambda _: self.do_clear())
        self.widget = widgets.VBox([
            note("Greedy answers unless temperature > 0. Each model gets its own chat template; other sessions "
                 "open in this kernel can answer too (choose them under 'others')."),
            widgets.HBox([self.prompt, widgets.VBox([self.send, self.stop, self.clear])]),
            widgets.HBox([self.base, self.others, widgets.VBox([self.max_new_tokens, self.temperature])]),
            self.state, self.row, self.conversation.widget])
        self.widget.add_class("nbtune-playground")
        self._set_busy(False)

    # ---------------------------------------------------------- actions
    def do_send(self) -> None:
        prompt = self.prompt.value.strip()
        if not prompt:
            self.app.errors.show("chatting", ValueError("the message is empty: type something first"))
            return
        others = self._chosen_others()
        self._stop = stop = threading.Event()
        conversation = self._conversation
        self._prepare_columns(2 + len(others))
        self._set_busy(True)
        self._say("waiting for the models…")
        self.jobs.run("chatting", lambda: self._chat(prompt, others, stop, conversation),
                      then=lambda report: self._answered(report, conversation))

    def _chat(self, prompt: str, others: list[Any], stop: threading.Event, conversation: int) -> Any:
        labels: dict[str, AnswerColumn] = {}

        def on_delta(delta: Any) -> None:
            if conversation != self._conversation:
                return
            column = labels.get(delta.label)
            if column is None:
                column = labels[delta.label] = self.columns[len(labels)]
                column.start(delta.label)
                self._say("answering… (Stop ends the answers before their next token)")
            column.show(delta.text, done=delta.done)

        try:
            return self.session.chat(prompt, others=others, base=None if self.base.value else False,
                                     history=self.report, max_new_tokens=int(self.max_new_tokens.value),
                                     temperature=float(self.temperature.value) or None, stream=on_delta, stop=stop)
        finally:
            self._set_busy(False)
            self._say("")  # what happened comes next: the answers' numbers, or the error panel

    def _answered(self, report: Any, conversation: int) -> None:
        if conversation != self._conversation:  # cleared while it ran
            return
        self.report = report
        self.prompt.value = ""
        for column, answer in zip(self.columns, report.answers, strict=False):
            column.show(answer.text, done=True, note_text="" if answer.finished else answer.ending)
        rates = ", ".join(f"{a.label}: {a.tokens} tokens, {a.tokens_per_s or 0:.1f}/s" for a in report.answers)
        self._say(("stopped. " if report.turns[-1].stopped else "") + rates)
        self.conversation.show(report)

    def do_stop(self) -> None:
        self._stop.set()
        self._say("stopping…")

    def do_clear(self) -> None:
        """A new conversation: the answers on screen and the history go (a running turn stops)."""
        self._stop.set()
        self._conversation += 1
        self.report = None
        for column in self.columns:
            column.hide()
        self.conversation.clear()
        self._say("")

    # ---------------------------------------------------------- helpers
    def _prepare_columns(self, count: int) -> None:
        """Enough hidden columns for this turn, made here on the kernel's thread (the worker only fills them)."""
        while len(self.columns) < count:
            self.columns.append(AnswerColumn())
        for column in self.columns:
            column.hide()
        self.row.children = [c.widget for c in self.columns]

    def _chosen_others(self) -> list[Any]:
        chosen = set(self.others.value)
        return [s for s in self._other_sessions() if str(s.workdir) in chosen]

    def _other_sessions(self) -> list[Any]:
        """Open Sessions of this kernel, other than the app's, that have a model."""
        return sorted((s for s in open_sessions() if s is not self.session and s.model_settings),
                      key=lambda s: str(s.workdir))

    def _set_busy(self, busy: bool) -> None:
        self.send.disabled = busy
        self.stop.disabled = not busy

    def _say(self, text: str) -> None:
        self.state.value = f'<span style="font-family:system-ui;font-size:13px">{esc(text)}</span>'

    def refresh(self) -> None:
        chosen = set(self.others.value)
        options = [(s.workdir.name, str(s.workdir)) for s in self._other_sessions()]
        self.others.options = options
        self.others.value = tuple(v for _, v in options if v in chosen)
        self.conversation.show(self.report)
