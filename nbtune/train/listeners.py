"""Listeners that come with the engine: a metrics file, an in-memory record, a console progress bar.

The notebook's live chart and the widget app are listeners too; they live in
`nbtune.ui` and subscribe to the same bus. Listeners read the typed fields of
`nbtune.events` (`event.loss`), never a dict, so a misspelt field fails at once.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

from nbtune.events import (
    CheckpointEvent,
    ErrorEvent,
    EvalEvent,
    Event,
    RunEndEvent,
    RunStartEvent,
    SampleEvent,
    StepEvent,
)


class MetricsFile:
    """Append every event as one JSON line to `runs/<id>/metrics.jsonl` (flushed each time)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()

    def __call__(self, event: Event) -> None:
        line = json.dumps(event.to_dict(), default=str)
        with self._lock, self.path.open("a", encoding="utf-8") as handle:
            handle.write(line + "\n")


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """Read a metrics file; for step and eval records a later line for the same step wins.

    After a resume from step k, records of steps > k written before the
    interruption (and never checkpointed) are replaced by the new ones.
    """
    path = Path(path)
    if not path.exists():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a line cut by a crash mid-write
    latest: dict[tuple[str, int], int] = {}
    for i, rec in enumerate(records):
        if rec.get("kind") in ("step", "eval"):
            latest[(rec["kind"], rec["step"])] = i
    keep = []
    for i, rec in enumerate(records):
        if rec.get("kind") in ("step", "eval") and latest[(rec["kind"], rec["step"])] != i:
            continue
        keep.append(rec)
    return keep


class MetricsRecorder:
    """Keep step and eval records in memory (what `Run.metrics` returns)."""

    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []
        self._last: dict[str, int] = {}
        self._lock = threading.Lock()

    def __call__(self, event: Event) -> None:
        with self._lock:
            if event.kind in ("step", "eval"):
                last = self._last.get(event.kind, -1)
                if event.step <= last:  # a resume from an earlier checkpoint: forget what came after it
                    self.records = [r for r in self.records if not (r["kind"] == event.kind and r["step"] >= event.step)]
                self._last[event.kind] = event.step
            self.records.append(event.to_dict())

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        with self._lock:
            return [r for r in self.records if r["kind"] == kind]


class ConsoleProgress:
    """A text progress bar for scripts and terminals (never the notebook widget variant)."""

    def __init__(self) -> None:
        self._bar: Any = None

    def __call__(self, event: Event) -> None:
        from tqdm.std import tqdm

        if isinstance(event, RunStartEvent):
            self._bar = tqdm(total=event.plan["total_steps"], initial=event.step, desc=f"{event.run_id}", unit="step",
                             dynamic_ncols=True)
        elif self._bar is None:
            return
        elif isinstance(event, StepEvent):
            self._bar.update(event.step - self._bar.n)
            self._bar.set_postfix(loss=f"{event.loss:.4f}", lr=f"{event.lr:.2e}", tok_s=f"{event.tokens_per_s:,.0f}",
                                  refresh=False)
        elif isinstance(event, EvalEvent):
            self._bar.write(f"step {event.step}: eval loss {event.eval_loss:.4f} (ppl {event.eval_ppl:.2f})")
        elif isinstance(event, SampleEvent):
            self._bar.write(f"step {event.step} sample: {event.text!r}")
        elif isinstance(event, CheckpointEvent):
            self._bar.write(f"step {event.step}: checkpoint ({event.reason}) -> {event.path}")
        elif isinstance(event, ErrorEvent):
            self._bar.write(f"step {event.step}: {'recovered: ' if event.recovered else 'ERROR: '}{event.message}"
                            f" — {event.advice}")
        elif isinstance(event, RunEndEvent):
            self._bar.close()
            self._bar = None
            print(f"{event.run_id}: {event.status} at step {event.step}"
                  + (f"; checkpoint {event.checkpoint}" if event.checkpoint else ""))
