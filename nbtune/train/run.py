"""The run handle: what `Session.train()` returns.

`run.wait()`, `run.stop()`, `run.pause()`, `run.resume()`, `run.extend(steps)`, `run.metrics`.
A run executes in a worker thread inside JupyterLab (so the notebook stays
usable and widgets keep updating) and in the foreground elsewhere: in scripts,
and in Colab and VS Code, where output from a thread does not reach the
notebook. In the foreground, Ctrl-C / the interrupt button is a graceful stop.

A run that fails never fails quietly: in the foreground `start()` raises the
error (after the last finished step was saved), in the background `wait()`
does (or `raise_for_status()` at any time). While the engine runs, the run
folder's `.run.lock` is held, so no other Session or process can train the
same run at the same time.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from nbtune.errors import StageOrderError
from nbtune.events import EventBus, StopToken
from nbtune.store import FileLock, describe_holder
from nbtune.train.listeners import MetricsRecorder

RUN_LOCK = ".run.lock"


def run_lock_holder(run_dir: Path) -> dict[str, Any] | None:
    """Who is training the run in `run_dir` right now (pid, host, since), or None when nobody is."""
    path = Path(run_dir) / RUN_LOCK
    if not path.is_file():
        return None
    lock = FileLock(path)
    try:
        holder = lock.acquire()
    except OSError:  # a folder we may not write to: nobody here can be training in it
        return None
    lock.release()
    return holder


class Run:
    """A training run: its folder, its events, and controls that act at the next step boundary."""

    def __init__(self, run_id: str, run_dir: Path, engine_factory: Any, bus: EventBus, token: StopToken,
                 recorder: MetricsRecorder, background: bool) -> None:
        self.id = run_id
        self.dir = Path(run_dir)
        self.bus = bus
        self.background = background
        self._make_engine = engine_factory
        self._token = token
        self._recorder = recorder
        self._thread: threading.Thread | None = None
        self._lock: FileLock | None = None
        self._reported: BaseException | None = None
        self.engine: Any = None
        self.extender: Any = None  # set by the Session: trains the run further (`extend`)

    # ------------------------------------------------------------ control
    def start(self, resume_from: Path | None = None) -> Run:
        """Start (or continue from a checkpoint) in a thread or in the foreground.

        In the foreground a failed run raises its error here (its last finished step is saved).
        """
        if self.running:
            raise StageOrderError(f"{self.id} is already running; stop() or wait() first")
        self._take_run_lock()
        try:
            self._token.reset()
            self.engine = self._make_engine()
            if resume_from is not None:
                self.engine.restore(resume_from)
            self.engine.status = "running"
        except BaseException:
            self._release_run_lock()
            raise
        if self.background:
            self._thread = threading.Thread(target=self._run_engine, name=f"nbtune-{self.id}", daemon=True)
            self._thread.start()
        else:
            self._run_engine()
            self.raise_for_status()
        return self

    def _take_run_lock(self) -> None:
        lock = FileLock(self.dir / RUN_LOCK)
        holder = lock.acquire()
        if holder is not None:
            raise StageOrderError(f"{self.id} is being trained right now by {describe_holder(holder)}; one run is "
                                  "trained by one process at a time. Wait for it, or stop it there")
        self._lock = lock

    def _release_run_lock(self) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def _run_engine(self) -> None:
        try:
            self.engine.run()
        finally:
            self._release_run_lock()

    @property
    def status(self) -> str:
        """created, running, paused, finished, stopped or failed."""
        return self.engine.status if self.engine is not None else "created"

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def wait(self, timeout: float | None = None) -> Run:
        """Block until the run ends (or `timeout` seconds pass); a run that failed raises its error here."""
        if self._thread is not None:
            self._thread.join(timeout)
        if not self.running:
            self.raise_for_status()
        return self

    def raise_for_status(self) -> Run:
        """Raise the run's error if it failed (the last finished step was saved first); else return the run."""
        error = self.error
        if self.status != "failed" or error is None:
            return self
        if self._reported is not error:
            self._reported = error
            saved = self.last_checkpoint
            error.add_note(f"nbtune: {self.id} failed at step {self.engine.step + 1}; "
                           + (f"step {self.engine.step} is saved in {saved}: s.resume({self.id!r}) continues from it"
                              if saved else "no step had finished, so there is no checkpoint"))
        raise error

    def stop(self) -> Run:
        """Stop after the current optimizer step; a checkpoint is written first."""
        self._token.request_stop()
        return self

    def pause(self) -> Run:
        """Pause after the current step (a checkpoint is written); `resume()` continues."""
        self._token.request_pause()
        return self

    def resume(self) -> Run:
        """Continue: un-pause a paused run, or restart a stopped/failed run from its last checkpoint."""
        if self.running:
            self._token.request_resume()
            return self
        if self.status == "finished":
            raise StageOrderError(f"{self.id} already finished; train it further with run.extend(steps=100), or "
                                  "start a new run with s.train(...)")
        checkpoint = self.last_checkpoint
        if checkpoint is None:
            raise StageOrderError(f"{self.id} has no checkpoint to resume from")
        return self.start(resume_from=checkpoint)

    def extend(self, steps: int, **options: Any) -> Run:
        """Train `steps` more steps after the last checkpoint with a re-planned schedule (a finished run too).

        The same as `s.resume(run.id, steps=steps)`; returns the new handle. `learning_rate=` and
        `warmup_steps=` set the new segment's schedule.
        """
        if self.extender is None:
            raise StageOrderError(f"{self.id} was not started by a Session; use s.resume({self.id!r}, steps=...)")
        return self.extender(steps, **options)

    # ------------------------------------------------------------ results
    @property
    def last_checkpoint(self) -> Path | None:
        from nbtune.train.checkpoint import list_checkpoints

        if self.engine is not None and self.engine.last_checkpoint is not None:
            return self.engine.last_checkpoint
        found = list_checkpoints(self.dir)
        return found[-1] if found else None

    @property
    def metrics(self) -> list[dict[str, Any]]:
        """Step records (loss, lr, grad_norm, tokens_seen, tokens_per_s, mfu, memory, ...)."""
        return self._recorder.of_kind("step")

    @property
    def evals(self) -> list[dict[str, Any]]:
        return self._recorder.of_kind("eval")

    @property
    def losses(self) -> list[float]:
        return [r["loss"] for r in self.metrics]

    @property
    def error(self) -> Exception | None:
        return self.engine.error if self.engine is not None else None

    def report(self) -> Any:
        """A `RunReport` of what happened so far (curves, speed, samples, problems)."""
        from nbtune.viz.run_report import RunReport

        records = self._recorder.records
        pick = lambda kind: [r for r in records if r["kind"] == kind]  # noqa: E731
        return RunReport(run_id=self.id, method=self.engine.lm.method if self.engine else "?", status=self.status,
                         steps=pick("step"), evals=pick("eval"), samples=pick("sample"), errors=pick("error"),
                         checkpoint=str(self.last_checkpoint) if self.last_checkpoint else None,
                         total_steps=self.engine.plan.total_steps if self.engine else None,
                         setup=self.engine.setup_report if self.engine else {})

    def _ipython_display_(self) -> None:
        from IPython.display import display

        display(self.report())

    def __repr__(self) -> str:
        step = self.engine.step if self.engine is not None else 0
        total = self.engine.plan.total_steps if self.engine is not None else "?"
        last = self.metrics[-1]["loss"] if self.metrics else None
        loss = f", loss {last:.4f}" if last is not None else ""
        return f"Run({self.id!r}, {self.status}, step {step}/{total}{loss})"
