"""The one event vocabulary of the training engine, and the tiny bus that carries it.

The training loop knows nothing about progress bars, charts, log files or
widgets: it emits events, and each of those is a listener. A listener that
raises never stops training; its error is kept on the bus and logged once.

Events (`Event.kind`):

=============  ==============================================================
run_start      a run begins or resumes (data: plan, device, method, resumed_from, setup: attention kernel, loss,
               compile, memory savers)
step           an optimizer step finished (loss, lr, grad_norm, tokens, ...)
eval           a validation pass finished (eval_loss, eval_ppl, ...)
checkpoint     a checkpoint was written (path, reason)
sample         text generated from the model during training
run_end        the run ended (status: finished | stopped | paused | failed)
error          something went wrong (recovered: bool, message, advice)
=============  ==============================================================
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

EVENT_KINDS = ("run_start", "step", "eval", "checkpoint", "sample", "run_end", "error")

log = logging.getLogger("nbtune")

Listener = Callable[["Event"], None]


@dataclass
class Event:
    """One thing that happened in a run."""

    kind: str
    run_id: str
    step: int
    data: dict[str, Any] = field(default_factory=dict)
    time: float = field(default_factory=time.time)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "run_id": self.run_id, "step": self.step, "time": self.time, **self.data}


class EventBus:
    """Deliver events to listeners, in subscription order, on the emitting thread."""

    def __init__(self) -> None:
        self._listeners: list[tuple[Listener, frozenset[str] | None]] = []
        self._lock = threading.Lock()
        self.listener_errors: list[tuple[Listener, BaseException]] = []

    def subscribe(self, listener: Listener, kinds: Iterable[str] | None = None) -> Callable[[], None]:
        """Add a listener (for all kinds, or only `kinds`); returns a function that removes it."""
        wanted = frozenset(kinds) if kinds is not None else None
        unknown = (wanted or frozenset()) - set(EVENT_KINDS)
        if unknown:
            raise ValueError(f"unknown event kind(s) {sorted(unknown)}; known: {', '.join(EVENT_KINDS)}")
        entry = (listener, wanted)
        with self._lock:
            self._listeners.append(entry)

        def unsubscribe() -> None:
            with self._lock:
                if entry in self._listeners:
                    self._listeners.remove(entry)

        return unsubscribe

    def emit(self, event: Event) -> None:
        if event.kind not in EVENT_KINDS:
            raise ValueError(f"unknown event kind {event.kind!r}")
        with self._lock:
            listeners = list(self._listeners)
        for listener, kinds in listeners:
            if kinds is not None and event.kind not in kinds:
                continue
            try:
                listener(event)
            except Exception as exc:  # a broken chart or a full disk must never kill a training run
                first = not any(existing is listener for existing, _ in self.listener_errors)
                self.listener_errors.append((listener, exc))
                if first:
                    log.warning("nbtune: listener %r failed on %s: %r (training goes on)", listener, event.kind, exc)
                    self._announce_failure(listener, event, exc)

    def _announce_failure(self, listener: Listener, event: Event, exc: Exception) -> None:
        """Tell the other listeners (run report, app, live chart) that one of them failed, once per listener."""
        name = getattr(listener, "__qualname__", None) or type(listener).__name__
        notice = Event("error", event.run_id, event.step, {
            "recovered": True, "kind_of_error": "listener", "listener": name,
            "message": f"{name} failed on a {event.kind} event: {type(exc).__name__}: {exc}. Training goes on, "
                       "but what this listener does (e.g. writing metrics.jsonl, a chart) is missing from now on",
            "advice": "free disk space or fix the listener; checkpoints still hold every finished step"})
        with self._lock:
            others = [(other, kinds) for other, kinds in self._listeners if other is not listener]
        for other, kinds in others:
            if kinds is None or "error" in kinds:
                try:
                    other(notice)
                except Exception:  # noqa: S112 - its own failure is reported when it fails on a real event
                    continue


class StopToken:
    """Requests from outside the loop (stop, pause), honoured at the next step boundary."""

    def __init__(self) -> None:
        self._stop = threading.Event()
        self._pause = threading.Event()
        self._resume = threading.Event()

    def request_stop(self) -> None:
        self._stop.set()
        self._resume.set()

    def request_pause(self) -> None:
        self._resume.clear()
        self._pause.set()

    def request_resume(self) -> None:
        self._pause.clear()
        self._resume.set()

    @property
    def stop_requested(self) -> bool:
        return self._stop.is_set()

    @property
    def pause_requested(self) -> bool:
        return self._pause.is_set()

    def wait_for_resume(self, timeout: float | None = None) -> bool:
        """Block while paused; True once resumed or stopped."""
        return self._resume.wait(timeout)

    def reset(self) -> None:
        self._stop.clear()
        self._pause.clear()
        self._resume.clear()
