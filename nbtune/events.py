"""The one event vocabulary of the training engine, and the tiny bus that carries it.

The training loop knows nothing about progress bars, charts, log files or
widgets: it emits events, and each of those is a listener. A listener that
raises never stops training; its error is kept on the bus and logged once.

Each kind of event is a frozen dataclass with typed fields, so a listener that
reads a field the kind does not have fails at once (an AttributeError, and a
type checker sees it before), instead of quietly showing nothing:

=============  ===================  ====================================================================
kind           class                fields (besides run_id, step, time)
=============  ===================  ====================================================================
run_start      `RunStartEvent`      plan, device, method, resumed_from, setup (attention kernel, loss,
                                    compile, memory savers)
step           `StepEvent`          an optimizer step finished: loss, lr, grad_norm, tokens, ...
eval           `EvalEvent`          a validation pass finished: eval_loss, eval_ppl, eval_bpb, ...
checkpoint     `CheckpointEvent`    a checkpoint was written: path, reason
sample         `SampleEvent`        text generated during training: prompt, text
run_end        `RunEndEvent`        status (finished | stopped | paused | failed), checkpoint, ...
error          `ErrorEvent`         recovered, kind_of_error, message, advice (what to do about it)
=============  ===================  ====================================================================

`event.to_dict()` is one line of `metrics.jsonl`: kind, run_id, step, time,
then the kind's fields in the order above (a field marked "when set" only when
it is not None).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

log = logging.getLogger("nbtune")

Listener = Callable[["Event"], None]


def _when_set() -> Any:
    """A field that is written to `metrics.jsonl` only when it is not None."""
    return field(default=None, metadata={"when_set": True})


@dataclass(frozen=True, kw_only=True)
class Event:
    """What every event has: the run, the number of optimizer steps finished, the wall-clock time."""

    kind: ClassVar[str] = ""
    run_id: str
    step: int
    time: float = field(default_factory=time.time)

    def payload(self) -> dict[str, Any]:
        """The fields of this kind of event, in order (those marked "when set" only when not None)."""
        common = {"run_id", "step", "time"}
        return {f.name: getattr(self, f.name) for f in fields(self)
                if f.name not in common and not (f.metadata.get("when_set") and getattr(self, f.name) is None)}

    def to_dict(self) -> dict[str, Any]:
        """The event as one `metrics.jsonl` record."""
        return {"kind": self.kind, "run_id": self.run_id, "step": self.step, "time": self.time, **self.payload()}


@dataclass(frozen=True, kw_only=True)
class RunStartEvent(Event):
    """A run begins or resumes."""

    kind: ClassVar[str] = "run_start"
    plan: dict[str, Any]  # the Plan's fields: total_steps, micro_batch, grad_accum, ...
    device: str
    method: str
    resumed_from: str | None  # the checkpoint it continues from
    setup: dict[str, Any]  # how a step is computed: attention kernel, loss, compile, memory savers


@dataclass(frozen=True, kw_only=True)
class StepEvent(Event):
    """An optimizer step finished."""

    kind: ClassVar[str] = "step"
    loss: float  # mean over the step's trained tokens
    lr: float
    grad_norm: float
    tokens: int  # in this step, padding included
    trained_tokens: int
    tokens_seen: int
    tokens_per_s: float
    mfu: float | None  # None without a known peak FLOP rate (CPUs)
    memory: int | None  # peak bytes on the device in this step, where measurable
    elapsed: float  # seconds of training so far
    epoch: float
    total_steps: int
    micro_batch: int
    grad_accum: int
    flops: float  # so far


@dataclass(frozen=True, kw_only=True)
class EvalEvent(Event):
    """A validation pass finished."""

    kind: ClassVar[str] = "eval"
    eval_loss: float
    eval_ppl: float
    eval_tokens: int
    eval_bpb: float | None  # bits per byte, when the bytes of the text are known
    tokens_seen: int
    elapsed: float
    flops: float


@dataclass(frozen=True, kw_only=True)
class CheckpointEvent(Event):
    """A checkpoint was written."""

    kind: ClassVar[str] = "checkpoint"
    path: str
    reason: str  # interval | end | stop | pause | error


@dataclass(frozen=True, kw_only=True)
class SampleEvent(Event):
    """Text the model generated for the run's sample prompt."""

    kind: ClassVar[str] = "sample"
    prompt: str
    text: str


@dataclass(frozen=True, kw_only=True)
class RunEndEvent(Event):
    """The run ended."""

    kind: ClassVar[str] = "run_end"
    status: str  # finished | stopped | paused | failed
    checkpoint: str | None  # the last one written
    elapsed: float
    tokens_seen: int
    error: str | None = _when_set()  # "Type: message" of a failed run


@dataclass(frozen=True, kw_only=True)
class ErrorEvent(Event):
    """Something went wrong; `advice` says what to do about it."""

    kind: ClassVar[str] = "error"
    recovered: bool  # True: training goes on
    kind_of_error: str  # out_of_memory | compile | listener | the exception's type name
    message: str
    advice: str
    checkpoint: str | None = _when_set()  # a failed run: where its last finished step was saved
    listener: str | None = _when_set()  # a failed listener's name
    micro_batch: int | None = _when_set()  # out-of-memory recovery: the new batch layout
    grad_accum: int | None = _when_set()


EVENT_TYPES: dict[str, type[Event]] = {cls.kind: cls for cls in (
    RunStartEvent, StepEvent, EvalEvent, CheckpointEvent, SampleEvent, RunEndEvent, ErrorEvent)}
EVENT_KINDS = tuple(EVENT_TYPES)


def _kind_name(kind: str | type[Event]) -> str:
    return kind.kind if isinstance(kind, type) and issubclass(kind, Event) else kind


class EventBus:
    """Deliver events to listeners, in subscription order, on the emitting thread."""

    def __init__(self) -> None:
        self._listeners: list[tuple[Listener, frozenset[str] | None]] = []
        self._lock = threading.Lock()
        self.listener_errors: list[tuple[Listener, BaseException]] = []

    def subscribe(self, listener: Listener, kinds: Iterable[str | type[Event]] | None = None) -> Callable[[], None]:
        """Add a listener (for all kinds, or only `kinds`: names or event classes); returns a function that
        removes it."""
        wanted = frozenset(_kind_name(kind) for kind in kinds) if kinds is not None else None
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
        if EVENT_TYPES.get(event.kind) is not type(event):
            raise TypeError(f"{event!r} is not one of the event types ({', '.join(EVENT_KINDS)})")
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
        notice = ErrorEvent(
            run_id=event.run_id, step=event.step, recovered=True, kind_of_error="listener", listener=name,
            message=f"{name} failed on a {event.kind} event: {type(exc).__name__}: {exc}. Training goes on, "
                    "but what this listener does (e.g. writing metrics.jsonl, a chart) is missing from now on",
            advice="free disk space or fix the listener; checkpoints still hold every finished step")
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
