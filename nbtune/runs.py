"""A project's run records: their folders, their run.json, and what the folders say after a restart.

A Session keeps one record per run in session.json (`Session.runs`); each run
also has a folder `runs/run-NNN-<method>/` whose run.json and metrics.jsonl
tell the run's story without the Session. These functions keep the two
consistent: new folders never reuse a number, a resume that adds steps records
its new learning-rate schedule segment, and a project opened after a crash
lists its runs as their folders tell it.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from nbtune.errors import ConfigError, DataError, StageOrderError
from nbtune.storage import atomic_write_json, now

ACTIVE = ("running", "paused")


def run_dir(workdir: Path, record: dict[str, Any]) -> Path:
    return workdir / record["dir"]


def new_numbered_folder(parent: Path, prefix: str, suffix: str = "", *, taken: list[str] = ()) -> Path:
    """Create parent/<prefix>-NNN[-suffix]/ with a number above every one in use (on disk or in `taken`).

    The folder is made exclusively, so two calls can never share one: a re-run
    never writes into what an earlier run wrote.
    """
    pattern = re.compile(rf"^{re.escape(prefix)}-(\d+)(?:-|$)")
    names = [*taken, *(p.name for p in parent.iterdir())] if parent.is_dir() else list(taken)
    number = max((int(m.group(1)) for name in names if (m := pattern.match(name))), default=0) + 1
    parent.mkdir(parents=True, exist_ok=True)
    while True:
        folder = parent / (f"{prefix}-{number:03d}" + (f"-{suffix}" if suffix else ""))
        try:
            folder.mkdir()
            return folder
        except FileExistsError:
            number += 1


def new_record(workdir: Path, records: list[dict[str, Any]], method: str, model_settings: dict[str, Any],
               settings: Any) -> dict[str, Any]:
    """Create runs/run-NNN-<method>/ with a number no run of this project has used; return its record.

    Numbers come from the session's records and from the folders on disk, and
    the folder is created exclusively, so a new run never writes into an old one.
    """
    taken = [run_dir(workdir, r).name for r in records] + [r["id"] for r in records]
    run_id = new_numbered_folder(workdir / "runs", "run", method, taken=taken).name
    return {"id": run_id, "dir": f"runs/{run_id}", "method": method, "model": model_settings,
            "config": settings.to_dict(), "status": "created", "created": now(), "checkpoint": None}


def write_run_file(session: Any, record: dict[str, Any]) -> None:
    """`runs/<id>/run.json`: everything needed to understand or compare the run without the session."""
    lm, tokens = session.model, session.tokens
    atomic_write_json(session.workdir / record["dir"] / "run.json", {
        **record,
        "model_source": lm.source,
        "parameters": {"total": lm.card.params_total, "trainable": lm.card.params_trainable},
        "flops_per_token": lm.card.flops_per_token,
        "device": lm.device.describe(),
        "data": {"sources": session.sources, "format": session.format,
                 "clean": session.clean_config.to_dict() if session.clean_applied and session.clean_config else None,
                 "rows": {"train": len(tokens["train"]), "validation": len(tokens["validation"])}},
        "tokenizer": session.tokenizer_config.to_dict() if session.tokenizer_config else None,
    })


def find_record(records: list[dict[str, Any]], run_id: str | None) -> dict[str, Any]:
    """The record of `run_id` (the latest run when None); a StageOrderError naming the runs there are."""
    if not records:
        raise StageOrderError("this session has no runs yet: call s.train(...)")
    if run_id is None:
        return records[-1]
    for record in records:
        if record["id"] == run_id:
            return record
    raise StageOrderError(f"no run {run_id!r} in this session; runs: {', '.join(r['id'] for r in records)}")


def last_checkpoint(workdir: Path, record: dict[str, Any]) -> Path:
    from nbtune.train.checkpoint import list_checkpoints

    found = list_checkpoints(run_dir(workdir, record))
    if not found:
        raise StageOrderError(f"{record['id']} has no checkpoint to resume from; start a new run with s.train()")
    return found[-1]


def extend_record(workdir: Path, record: dict[str, Any], settings: Any, checkpoint: Path, *, steps: int,
                  learning_rate: float | None, warmup_steps: int | None) -> Any:
    """Re-plan a run for `steps` more steps after `checkpoint`; record the new schedule segment.

    Returns the run's new settings (warmup to the peak rate, then its decay, over the added steps).
    """
    from nbtune.train.checkpoint import read_state

    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise ConfigError(f"steps must be a whole number of at least 1, got {steps!r}", column="steps",
                          fix="pass how many more optimizer steps to train, e.g. steps=100")
    start = int(read_state(checkpoint)["step"])
    peak = learning_rate if learning_rate is not None else settings.learning_rate
    warmup = warmup_steps if warmup_steps is not None else max(1, round(0.05 * steps))
    extended = settings.replace(steps=start + steps, learning_rate=peak, warmup_steps=warmup)
    extended.validate()
    segments = record.get("segments") or [{"start": 0, "end": start, "learning_rate": settings.learning_rate,
                                           "warmup_steps": settings.warmup_steps}]
    record["segments"] = [*segments, {"start": start, "end": start + steps, "learning_rate": peak,
                                      "warmup_steps": warmup, "added": now()}]
    record["config"] = extended.to_dict()
    if not record.get("attached"):
        _update_run_file(run_dir(workdir, record) / "run.json", record)
    return extended


def _update_run_file(path: Path, record: dict[str, Any]) -> None:
    """Write the record's settings and schedule segments into run.json, keeping what it already says."""
    saved = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    atomic_write_json(path, {**saved, "config": record["config"], "segments": record.get("segments")})


def reconcile(workdir: Path, records: list[dict[str, Any]]) -> None:
    """Runs as their folders tell it (updates `records` in place): a run left 'running' by a dead kernel is
    'interrupted' (resumable); a run folder that session.json does not list (an older nbtune started over it)
    is listed again."""
    from nbtune.eval.compare import load_run
    from nbtune.train.run import run_lock_holder

    for record in records:
        folder = run_dir(workdir, record)
        if record.get("status") not in ("created", *ACTIVE) or run_lock_holder(folder) is not None:
            continue
        try:
            found = load_run(folder)
        except DataError:
            record["status"] = "interrupted"
            continue
        record["status"] = "interrupted" if found.status in ("created", *ACTIVE) else found.status
        record["checkpoint"] = str(found.checkpoints[-1]) if found.checkpoints else record.get("checkpoint")
        record["step"] = found.steps[-1]["step"] if found.steps else record.get("step", 0)
    listed = {run_dir(workdir, r).resolve() for r in records}
    runs_folder = workdir / "runs"
    for folder in sorted(runs_folder.iterdir() if runs_folder.is_dir() else [], key=_run_order):
        if folder.resolve() in listed or not (folder / "run.json").is_file():
            continue
        try:
            found = load_run(folder)
        except DataError:
            continue
        records.append({**{k: found.config.get(k) for k in ("id", "method", "model", "config", "created")},
                        "id": folder.name, "dir": f"runs/{folder.name}", "status": found.status,
                        "checkpoint": str(found.checkpoints[-1]) if found.checkpoints else None,
                        "step": found.steps[-1]["step"] if found.steps else 0, "recovered": now()})


def _run_order(folder: Path) -> tuple[int, str]:
    """run-002-lora before run-010-lora; other names after, by name."""
    match = re.match(r"^run-(\d+)-", folder.name)
    return (int(match.group(1)) if match else 1 << 30, folder.name)
