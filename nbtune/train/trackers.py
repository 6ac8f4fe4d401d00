"""Experiment trackers as listeners: TensorBoard and Trackio, fed from the run's event bus.

`s.train(..., log_to="tensorboard")` (or "trackio", or both) subscribes one more
listener per tracker to the same bus that feeds metrics.jsonl and the live chart,
so a tracker sees exactly the numbers nbtune records: per step the loss, learning
rate, gradient norm, tokens seen and tokens/s; per evaluation the held-out loss,
perplexity and bits per byte; the samples as text. The engine knows nothing about
trackers, and a tracker that fails is reported like any listener and never stops
training.

Each tracker's package is imported when its listener first receives an event (so
`import nbtune` stays light); a missing package is reported before the run starts,
with the pip command that installs it.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

from nbtune.config import tracker_names
from nbtune.errors import ConfigError
from nbtune.events import EvalEvent, Event, Listener, SampleEvent, StepEvent

PACKAGES = {"tensorboard": "tensorboard", "trackio": "trackio"}

# event field -> tracker metric name
STEP_METRICS = {"loss": "train/loss", "lr": "train/lr", "grad_norm": "train/grad_norm",
                "tokens_seen": "train/tokens_seen", "tokens_per_s": "train/tokens_per_s", "mfu": "train/mfu",
                "memory": "train/memory_bytes"}
EVAL_METRICS = {"eval_loss": "eval/loss", "eval_ppl": "eval/ppl", "eval_bpb": "eval/bits_per_byte"}


def scalars(event: Event) -> dict[str, float]:
    """The numbers of a step or eval event under the trackers' metric names (None values left out)."""
    names = STEP_METRICS if isinstance(event, StepEvent) else EVAL_METRICS if isinstance(event, EvalEvent) else {}
    values = {metric: getattr(event, field) for field, metric in names.items()}
    return {metric: float(value) for metric, value in values.items()
            if isinstance(value, (int, float)) and not isinstance(value, bool)}


def require(name: str) -> None:
    """Raise an actionable ConfigError when the tracker's package is not installed."""
    package = PACKAGES[name]
    if importlib.util.find_spec(package) is None:
        raise ConfigError(f"log_to={name!r} needs the {package} package, which is not installed", column="log_to",
                          fix=f"pip install {package} (or pip install 'nbtune[trackers]' for every tracker), "
                              f"or leave {name!r} out of log_to")


def listeners_for(settings: Any, run_dir: Path, record: dict[str, Any]) -> list[Listener]:
    """One listener per tracker named in `settings.log_to` for the run in `run_dir` (a session's runs/<id>)."""
    names = tracker_names(settings.log_to)
    for name in names:
        require(name)
    run_dir = Path(run_dir)
    session = run_dir.parent.parent.name  # <session>/runs/<run id>
    run_id = record.get("id") or run_dir.name
    made: list[Listener] = []
    for name in names:
        if name == "tensorboard":
            folder = Path(settings.log_dir).expanduser() / session / run_id if settings.log_dir else \
                run_dir / "tensorboard"
            made.append(TensorBoardLogger(folder, config=record.get("config")))
        elif name == "trackio":
            made.append(TrackioLogger(settings.log_project or session, f"{session}/{run_id}",
                                      config=record.get("config")))
    return made


class TensorBoardLogger:
    """Scalars and samples into TensorBoard event files in `folder` (`tensorboard --logdir` its parent)."""

    def __init__(self, folder: Path, *, config: dict[str, Any] | None = None) -> None:
        self.folder = Path(folder)
        self.config = config
        self._writer: Any = None

    def _open(self, step: int = 0) -> Any:
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter  # needs the tensorboard package

            self.folder.mkdir(parents=True, exist_ok=True)
            # purge_step: a run resumed from its checkpoint at step k hides what an interrupted process logged after k
            self._writer = SummaryWriter(log_dir=str(self.folder), purge_step=step + 1 if step else None)
            if self.config and not step:
                self._writer.add_text("config", "```\n" + json.dumps(self.config, indent=2, default=str) + "\n```", 0)
        return self._writer

    def __call__(self, event: Event) -> None:
        if event.kind == "run_start":
            self._open(event.step)
        elif event.kind in ("step", "eval"):
            writer = self._open()
            for name, value in scalars(event).items():
                writer.add_scalar(name, value, event.step, walltime=event.time)
            if event.kind == "eval":
                writer.flush()  # evaluations are rare: flush so `tensorboard` shows them while the run goes on
        elif isinstance(event, SampleEvent):
            self._open().add_text("sample", event.text, event.step, walltime=event.time)
        elif event.kind == "run_end" and self._writer is not None:
            self._writer.close()
            self._writer = None


class TrackioLogger:
    """Scalars into a local Trackio project (a SQLite file under TRACKIO_DIR; `trackio show` draws it)."""

    def __init__(self, project: str, name: str, *, config: dict[str, Any] | None = None) -> None:
        self.project, self.name, self.config = project, name, config
        self._run: Any = None
        self._failed: BaseException | None = None

    def _open(self) -> Any:
        if self._failed is not None:  # init failed once (e.g. TRACKIO_SPACE_ID set and no login): do not retry per step
            raise self._failed
        if self._run is None:
            import trackio

            try:
                self._run = self._init(trackio)
            except Exception as exc:
                self._failed = exc
                raise
        return self._run

    def _init(self, trackio: Any) -> Any:
        return trackio.init(project=self.project, name=self.name, config=self.config, resume="allow",
                            embed=False, auto_log_gpu=False, auto_log_cpu=False)

    def __call__(self, event: Event) -> None:
        if event.kind in ("step", "eval"):
            values = scalars(event)
            if values:
                self._open().log(values, step=event.step)
        elif event.kind == "run_end" and self._run is not None:
            self._run.finish()
            self._run = None
