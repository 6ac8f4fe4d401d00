"""Listeners that come with the engine: a metrics file, an in-memory record, a console progress bar.

The notebook's live chart and the widget app are listeners too; they live in
`nbtune.viz.live` and `nbtune.ui` and subscribe to the same bus.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

from nbtune.events import Event


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

        data = event.data
        if event.kind == "run_start":
            total = data["plan"]["total_steps"]
            self._bar = tqdm(total=total, initial=event.step, desc=f"{event.run_id}", unit="step", dynamic_ncols=True)
        elif event.kind == "step" and self._bar is not None:
            self._bar.update(event.step - self._bar.n)
            self._bar.set_postfix(loss=f"{data['loss']:.4f}", lr=f"{data['lr']:.2e}",
                                  tok_s=f"{data['tokens_per_s']:,.0f}", refresh=False)
        elif event.kind == "eval" and self._bar is not None:
            self._bar.write(f"step {event.step}: eval loss {data['eval_loss']:.4f} (ppl {data['eval_ppl']:.2f})")
        elif event.kind == "sample" and self._bar is not None:
            self._bar.write(f"step {event.step} sample: {data['text']!r}")
        elif event.kind == "checkpoint" and self._bar is not None:
            self._bar.write(f"step {event.step}: checkpoint ({data['reason']}) -> {data['path']}")
        elif event.kind == "error" and self._bar is not None:
            self._bar.write(f"step {event.step}: {'recovered: ' if data.get('recovered') else 'ERROR: '}"
                            f"{data['message']}")
        elif event.kind == "run_end" and self._bar is not None:
            self._bar.close()
            self._bar = None
            print(f"{event.run_id}: {data['status']} at step {event.step}"
                  + (f"; checkpoint {data['checkpoint']}" if data.get("checkpoint") else ""))
