"""Compare training runs from their folders alone: curves side by side, what differs, the best checkpoint.

A run folder (``runs/<id>/``) holds ``run.json`` (settings, model, data,
tokenizer) and ``metrics.jsonl`` (one event per line), so runs of different
sessions, or of a session that is not open, can be compared too:

    report = compare_runs(["w/runs/run-001-lora", "w/runs/run-002-lora"], axis="tokens")

The x axis can be optimizer ``steps``, ``tokens`` seen, estimated training
``flops`` or training ``time`` (seconds, pauses excluded); runs with different
batch sizes or sequence lengths compare fairly only on tokens or FLOPs.
"""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nbtune.errors import ConfigError, DataError
from nbtune.train.checkpoint import list_checkpoints
from nbtune.train.listeners import read_metrics
from nbtune.viz.compare_report import CompareReport

RUN_FILE = "run.json"
METRICS_FILE = "metrics.jsonl"

# axis name -> field of step/eval records
AXES = {"steps": "step", "tokens": "tokens_seen", "flops": "flops", "time": "elapsed"}
# metric -> kind of record it lives in
METRICS = {"loss": "step", "lr": "step", "grad_norm": "step", "tokens_per_s": "step", "memory": "step", "mfu": "step",
           "eval_loss": "eval", "eval_ppl": "eval", "eval_bpb": "eval"}
DEFAULT_METRICS = ("loss", "eval_loss", "eval_bpb", "tokens_per_s", "memory")

# run.json keys that always differ between runs or say nothing about how they were trained
_SKIP_TOP = {"id", "dir", "status", "created", "checkpoint"}
_SKIP_ANYWHERE = {"loaded_at"}
# config_diff key prefixes: run.json's "config" is the training config
_RENAME = {"config": "train"}


@dataclass
class RunData:
    """One run as read from its folder."""

    id: str
    dir: Path
    config: dict
    steps: list[dict] = field(default_factory=list)
    evals: list[dict] = field(default_factory=list)
    status: str = "created"
    checkpoints: list[Path] = field(default_factory=list)

    @property
    def method(self) -> str:
        return str(self.config.get("method") or "?")

    @property
    def name(self) -> str:
        """Run id and method, as legends and tables show them."""
        return f"{self.id} · {self.method}"


def load_run(run_dir: str | Path) -> RunData:
    """Read a run folder (run.json and metrics.jsonl); a DataError says what is wrong if it is not a run."""
    folder = Path(run_dir).expanduser().resolve()
    hint = "pass a run folder such as <workdir>/runs/run-001-lora (it holds run.json and metrics.jsonl)"
    if not folder.is_dir():
        raise DataError("no run folder here", path=folder, fix=hint)
    path = folder / RUN_FILE
    if not path.is_file():
        raise DataError(f"this folder is not an nbtune run: it has no {RUN_FILE}", path=folder, fix=hint)
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DataError(f"{RUN_FILE} is not valid JSON: {exc.msg}", path=path, line=exc.lineno, column=exc.colno,
                        fix="nbtune writes it atomically, so it was probably edited by hand; restore it") from None
    if not isinstance(config, dict):
        raise DataError(f"{RUN_FILE} does not hold a JSON object", path=path, fix=hint)
    records = read_metrics(folder / METRICS_FILE)
    status = str(config.get("status") or "created")
    for rec in records:  # the metrics file knows more than run.json, which is written once at the start
        if rec.get("kind") == "run_start":
            status = "interrupted"  # until a run_end says otherwise (a crash leaves no run_end)
        elif rec.get("kind") == "run_end":
            status = str(rec.get("status", status))
    steps = sorted((r for r in records if r.get("kind") == "step"), key=lambda r: r["step"])
    evals = sorted((r for r in records if r.get("kind") == "eval"), key=lambda r: r["step"])
    return RunData(id=str(config.get("id") or folder.name), dir=folder, config=config, steps=steps, evals=evals,
                   status=status, checkpoints=list_checkpoints(folder))


def _flatten(value: Any, prefix: str, out: dict[str, Any]) -> None:
    if isinstance(value, dict):
        if not value and prefix:
            out[prefix] = value
        for key, item in value.items():
            if key in _SKIP_ANYWHERE or (not prefix and key in _SKIP_TOP):
                continue
            name = _RENAME.get(key, key) if not prefix else key
            _flatten(item, f"{prefix}.{name}" if prefix else name, out)
    elif isinstance(value, list) and any(isinstance(item, dict) for item in value):
        for i, item in enumerate(value):
            _flatten(item, f"{prefix}.{i}", out)
    else:
        out[prefix] = value


def flat_settings(run: RunData) -> dict[str, Any]:
    """run.json as dotted keys (``train.learning_rate``, ``model.config.lora_rank``, ``data.rows.train`` ...)."""
    out: dict[str, Any] = {}
    _flatten(run.config, "", out)
    return out


def _same(values: list[Any]) -> bool:
    keys = [json.dumps(v, sort_keys=True, default=str) for v in values]
    return all(k == keys[0] for k in keys)


def config_diff(runs: list[RunData]) -> list[tuple[str, list]]:
    """The settings whose values differ between the runs: (dotted key, one value per run; None where missing)."""
    flats = [flat_settings(run) for run in runs]
    keys: dict[str, None] = {}
    for flat in flats:
        keys.update(dict.fromkeys(flat))
    diff = []
    for key in keys:
        values = [flat.get(key) for flat in flats]
        if not _same(values):
            diff.append((key, values))
    return diff


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _checkpoint_step(path: Path) -> int | None:
    try:
        return int(path.name.split("-", 1)[1])
    except (IndexError, ValueError):
        return None


def best_checkpoint(run: RunData) -> dict[str, Any]:
    """The step with the lowest validation loss and the checkpoint to use for it.

    Returns ``step``, ``eval_loss``, ``eval_bpb`` (None without evaluations),
    ``checkpoint`` (a folder, or None), ``checkpoint_step``, ``exact`` (the
    checkpoint is of that very step) and ``note`` (what to know, e.g. that the
    best step's checkpoint was deleted and which kept one is nearest).
    """
    kept = [(s, p) for p in run.checkpoints if (s := _checkpoint_step(p)) is not None and p.is_dir()]
    scored = [e for e in run.evals if _finite(e.get("eval_loss"))]
    result: dict[str, Any] = {"step": None, "eval_loss": None, "eval_bpb": None, "checkpoint": None,
                              "checkpoint_step": None, "exact": False, "note": ""}
    if not scored:
        result["note"] = "no evaluation recorded"
        if kept:
            step, path = kept[-1]
            result.update(checkpoint=str(path), checkpoint_step=step,
                          note=f"no evaluation recorded; the latest checkpoint is of step {step}")
        return result
    best = min(scored, key=lambda e: (e["eval_loss"], e["step"]))
    result.update(step=best["step"], eval_loss=best["eval_loss"], eval_bpb=best.get("eval_bpb"))
    if not kept:
        result["note"] = "no checkpoint is kept for this run"
        return result
    for step, path in kept:
        if step == best["step"]:
            result.update(checkpoint=str(path), checkpoint_step=step, exact=True)
            return result
    step, path = min(kept, key=lambda sp: (abs(sp[0] - best["step"]), sp[0]))
    loss_there = next((e["eval_loss"] for e in scored if e["step"] == step), None)
    there = f" (validation loss {loss_there:.4f} there)" if loss_there is not None else ""
    keep = run.config.get("config", {}).get("keep_checkpoints")
    why = f" (only the newest {keep} are kept: keep_checkpoints={keep})" if keep else ""
    result.update(checkpoint=str(path), checkpoint_step=step,
                  note=f"the checkpoint of step {best['step']} was deleted{why}; nearest kept: step {step}{there}")
    return result


def _x_value(record: dict[str, Any], axis: str, flops_per_token: float | None) -> Any:
    key = AXES[axis]
    value = record.get(key)
    if value is None and axis == "flops" and flops_per_token and record.get("tokens_seen") is not None:
        value = flops_per_token * record["tokens_seen"]  # records written before flops were logged
    return value


def run_series(run: RunData, metric: str, axis: str, *, name: str | None = None) -> dict[str, Any]:
    """One run's points of one metric against the axis (points without a value are left out)."""
    records = run.steps if METRICS[metric] == "step" else run.evals
    flops_per_token = run.config.get("flops_per_token")
    xs, ys, steps = [], [], []
    for rec in records:
        x, y = _x_value(rec, axis, flops_per_token), rec.get(metric)
        if _finite(x) and _finite(y):
            xs.append(x)
            ys.append(y)
            steps.append(rec["step"])
    return {"name": name or run.name, "x": xs, "y": ys, "step": steps, "markers": METRICS[metric] == "eval"}


def _model_text(run: RunData) -> str:
    from nbtune.models.card import human_count

    source = run.config.get("model_source") or run.config.get("model", {}).get("kind") or "?"
    total = (run.config.get("parameters") or {}).get("total")
    return f"{source}, {human_count(total)} parameters" if total else str(source)


def _last(records: list[dict], key: str) -> Any:
    values = [r[key] for r in records if _finite(r.get(key))]
    return values[-1] if values else None


def run_summary(run: RunData, name: str) -> dict[str, Any]:
    """The numbers of one run that the comparison table shows."""
    speeds = [r["tokens_per_s"] for r in run.steps[1:] if _finite(r.get("tokens_per_s"))]
    speeds = speeds or [r["tokens_per_s"] for r in run.steps if _finite(r.get("tokens_per_s"))]
    memory = [r["memory"] for r in run.steps if _finite(r.get("memory"))]
    return {
        "id": run.id, "name": name, "dir": str(run.dir), "method": run.method, "model": _model_text(run),
        "status": run.status, "steps": run.steps[-1]["step"] if run.steps else 0,
        "tokens_seen": run.steps[-1].get("tokens_seen", 0) if run.steps else 0,
        "train_loss": _last(run.steps, "loss"), "eval_loss": _last(run.evals, "eval_loss"),
        "eval_bpb": _last(run.evals, "eval_bpb"),
        "tokens_per_s": statistics.median(speeds) if speeds else None,
        "memory": max(memory) if memory else None, "best": best_checkpoint(run),
    }


def _names(runs: list[RunData]) -> list[str]:
    """Legend names: run id and method, with the workdir's name in front where ids repeat."""
    ids = [run.id for run in runs]
    names = []
    for run in runs:
        prefix = f"{run.dir.parent.parent.name}/" if ids.count(run.id) > 1 else ""
        names.append(f"{prefix}{run.name}")
    for i, name in enumerate(names):  # still equal (same workdir name): number them
        if names.count(name) > 1:
            names[i] = f"{name} [{i + 1}]"
    return names


def check_axis(axis: str) -> str:
    if axis not in AXES:
        raise ConfigError(f"axis={axis!r} is not a valid choice", column="axis",
                          fix=f"use one of {', '.join(map(repr, AXES))}: optimizer steps, tokens seen, estimated "
                              "training FLOPs or training time in seconds")
    return axis


def compare_runs(run_dirs: list[Any], *, axis: str = "steps", metrics: tuple[str, ...] = DEFAULT_METRICS
                 ) -> CompareReport:
    """Compare runs (folders, or `RunData` from `load_run`): summary table, differing settings, overlaid curves."""
    check_axis(axis)
    if isinstance(metrics, str):
        metrics = (metrics,)
    unknown = [m for m in metrics if m not in METRICS]
    if unknown:
        raise ConfigError(f"unknown metric(s) {', '.join(map(repr, unknown))}", column="metrics",
                          fix=f"use some of {', '.join(map(repr, METRICS))}")
    if isinstance(run_dirs, (str, Path, RunData)):
        run_dirs = [run_dirs]
    if not run_dirs:
        raise ConfigError("there are no runs to compare", column="runs",
                          fix="pass run folders (e.g. <workdir>/runs/run-001-lora) or train a run first")
    runs = [item if isinstance(item, RunData) else load_run(item) for item in run_dirs]
    names = _names(runs)
    series: dict[str, list[dict]] = {}
    notes = []
    for metric in dict.fromkeys(metrics):
        per_run = [run_series(run, metric, axis, name=name) for run, name in zip(runs, names, strict=True)]
        if any(s["x"] for s in per_run):
            series[metric] = per_run
        else:
            notes.append(f"no run recorded {metric} against {axis}; its chart is left out")
    if len({json.dumps(r.config.get("tokenizer"), sort_keys=True, default=str) for r in runs}) > 1 and \
            any(m in series for m in ("loss", "eval_loss", "eval_ppl")):
        notes.append("the runs use different tokenizers: compare bits per byte (eval_bpb), not loss or perplexity")
    return CompareReport(axis=axis, runs=[run_summary(run, name) for run, name in zip(runs, names, strict=True)],
                         diff=config_diff(runs), series=series, notes=notes)
