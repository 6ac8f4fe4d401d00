"""One panel per pipeline stage: the tabs of the app.

Each panel builds its widgets once, wires buttons and forms to public Session
methods through the app's `Jobs`, and re-reads the Session in `refresh()`.
CSS classes named `nbtune-...` mark what tests (and users' own styling) hook on.
"""

from __future__ import annotations

import datetime as _dt
import threading
from pathlib import Path
from typing import Any

import ipywidgets as widgets

from nbtune.config import (
    CleanConfig,
    LabConfig,
    PretrainedModelConfig,
    ScratchModelConfig,
    SplitConfig,
    TokenizerConfig,
    TrainConfig,
)
from nbtune.data import clean
from nbtune.data.load import safe_file_name
from nbtune.events import CheckpointEvent, ErrorEvent, RunEndEvent, RunStartEvent, StepEvent
from nbtune.ui.forms import ConfigForm, with_tooltip
from nbtune.ui.parts import Debouncer, ReportView
from nbtune.viz.html import STYLE, esc

UPLOAD_TYPES = ".txt,.md,.csv,.tsv,.jsonl,.json,.parquet"


def button(label: str, css_class: str, tooltip: str, style: str = "") -> Any:
    widget = widgets.Button(description=label, button_style=style,
                            layout=widgets.Layout(width="auto", align_self="flex-start"))  # never stretched
    widget.add_class(css_class)
    return with_tooltip(widget, tooltip)


def heading(text: str) -> Any:
    return widgets.HTML(f'<div style="font-family:system-ui;font-weight:600;margin-top:8px">{esc(text)}</div>')


def note(text: str) -> Any:
    return widgets.HTML(f'{STYLE}<div class="nbt muted">{esc(text)}</div>')


def uploaded_files(value: Any) -> list[tuple[str, bytes]]:
    """(name, bytes) pairs from a FileUpload value: a tuple of dicts (ipywidgets 8) or a dict (7)."""
    if isinstance(value, dict):  # ipywidgets 7: {name: {"metadata": ..., "content": bytes}}
        return [(name, bytes(item["content"])) for name, item in value.items()]
    return [(item["name"], bytes(item["content"])) for item in value]


class Panel:
    title = ""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.session = app.session
        self.jobs = app.jobs

    def refresh(self) -> None:
        """Show what the Session holds now."""

    def _report(self, key: str) -> Any:
        return self.session.reports.get(key)


# ---------------------------------------------------------------------- data
class DataPanel(Panel):
    title = "Data"

    def __init__(self, app: Any) -> None:
        super().__init__(app)
        self.example = widgets.Dropdown(options=[("KJV Bible (plain text, for from-scratch)", "kjv"),
                                                 ("Chat dialogs (for fine-tuning)", "dialogs")],
                                        layout=widgets.Layout(width="340px"))
        self.example.add_class("nbtune-example")
        self.load_example = button("Load example", "nbtune-load-example", "Load embedded data that works offline")
        self.path = widgets.Text(placeholder="a file, folder, glob (data/*.jsonl) or hub id",
                                 layout=widgets.Layout(width="420px"))
        self.path.add_class("nbtune-load-path")
        self.text_column = widgets.Text(placeholder="text column (optional)", layout=widgets.Layout(width="200px"))
        self.load_path = button("Load", "nbtune-load-button", "Load the path (its format is detected)", "primary")
        self.upload = widgets.FileUpload(accept=UPLOAD_TYPES, multiple=True, description="Upload")
        self.upload.add_class("nbtune-upload")
        self.split = ConfigForm(SplitConfig)
        self.apply_split = button("Apply split", "nbtune-split-button", "Re-split into training and validation rows")
        self.view = ReportView("nbtune-data-report", "Nothing loaded yet: load an example, a path or an upload.")
        self.load_example.on_click(lambda _: self.do_load_example())
        self.load_path.on_click(lambda _: self.do_load_path())
        self.upload.observe(lambda _: self.do_upload(), names="value")
        self.apply_split.on_click(lambda _: self.do_split())
        self.widget = widgets.VBox([
            widgets.HBox([self.example, self.load_example]),
            widgets.HBox([self.path, self.text_column, self.load_path]),
            widgets.HBox([self.upload, note(f"files: {UPLOAD_TYPES}; they are saved in the session folder")]),
            widgets.HTML("<b>Train / validation split</b>"), self.split.widget, self.apply_split, self.view.widget])

    def do_load_example(self) -> None:
        name = self.example.value
        self.jobs.run(f"loading example {name}", lambda: self.session.load_example(name), then=self._loaded)

    def do_load_path(self) -> None:
        path, column = self.path.value.strip(), self.text_column.value.strip() or None
        if not path:
            self.app.errors.show("loading", ValueError("no path given: type a file, folder or glob first"))
            return
        self.jobs.run(f"loading {path}", lambda: self.session.load(path, text_column=column), then=self._loaded)

    def do_upload(self) -> None:
        files = uploaded_files(self.upload.value)
        if not files:
            return
        column = self.text_column.value.strip() or None
        self.jobs.run(f"loading {len(files)} uploaded file(s)",
                      lambda: self.session.load(str(self._save_uploads(files)), text_column=column),
                      then=self._loaded)

    def _save_uploads(self, files: list[tuple[str, bytes]]) -> Path:
        """Write uploads into a fresh folder of the session (never over the user's files); return it.

        Names are checked first (`safe_file_name`: no ``..``, NUL, bidi
        controls, over-long names; repeats numbered), so a bad name writes
        nothing. The upload widget is emptied afterwards either way, so the
        bytes are not kept in the kernel and in the notebook's widget state.
        """
        try:
            taken: set[str] = set()
            names = [safe_file_name(name, taken) for name, _ in files]
            folder = self.session.workdir / "uploads" / _dt.datetime.now().strftime("%Y%m%d-%H%M%S-%f")
            folder.mkdir(parents=True, exist_ok=True)
            for name, (_, content) in zip(names, files, strict=True):
                with open(folder / name, "xb") as fh:  # "x": never over an existing file
                    fh.write(content)
        finally:
            self.clear_upload()
        return folder if len(files) > 1 else folder / names[0]

    def clear_upload(self) -> None:
        """Empty the upload widget (its value holds every uploaded byte)."""
        if isinstance(self.upload.value, dict):  # ipywidgets 7: value is read-only, computed from data + metadata
            self.upload.data, self.upload.metadata = [], []
            self.upload.set_trait("value", {})
        else:
            self.upload.value = ()

    def do_split(self) -> None:
        self.jobs.run("splitting", lambda: self.session.split(**self.split.config().to_dict()),
                      then=lambda _: self.refresh(), form=self.split)

    def _loaded(self, report: Any) -> None:
        self.view.show(report)
        self.split.set(self.session.split_config)

    def refresh(self) -> None:
        self.split.set(self.session.split_config)
        self.view.show(self._report("load"))


# --------------------------------------------------------------------- clean
CLEAN_MAIN = ("strip_html", "collapse_whitespace", "mask_pii", "min_words", "max_words", "repetition_filter",
              "exact_dedup", "near_dedup")


class CleanPanel(Panel):
    title = "Clean"

    def __init__(self, app: Any) -> None:
        super().__init__(app)
        self.preview_later = Debouncer(self.do_preview, app.debounce, app.background)
        self.form = ConfigForm(CleanConfig, main=CLEAN_MAIN, on_change=self.preview_later)
        self.preview = button("Preview", "nbtune-clean-preview", "Show what the recipe does to a sample")
        self.apply = button("Apply to all rows", "nbtune-clean-apply", "Clean every row (the loaded rows are kept)",
                            "primary")
        self.undo = button("Undo", "nbtune-clean-undo", "Go back to the rows as loaded")
        self.cancel = button("Cancel preview", "nbtune-clean-cancel", "Stop the preview that is running")
        self.view = ReportView("nbtune-clean-report", "Change a setting to preview what cleaning would do.")
        self._stop = threading.Event()  # set to stop the preview that holds it (see clean.cancellable)
        self.preview.on_click(lambda _: self.do_preview())
        self.cancel.on_click(lambda _: self.cancel_preview())
        self.apply.on_click(lambda _: self.do_apply())
        self.undo.on_click(lambda _: self.jobs.run("undoing cleaning", self.session.undo_clean, then=self.view.show))
        self.widget = widgets.VBox([note("The preview refreshes when a setting changes; nothing changes until "
                                         "'Apply to all rows'."), self.form.widget,
                                    widgets.HBox([self.preview, self.apply, self.undo, self.cancel]),
                                    self.view.widget])

    def do_preview(self) -> None:
        """Preview the form's recipe; a preview still running for older settings stops at its next row."""
        if self.session.raw_dataset is not None:
            self._stop.set()
            stop = self._stop = threading.Event()
            self.jobs.run("previewing cleaning", lambda: self._preview(stop), then=self._show_preview, form=self.form,
                          replace=True)

    def _preview(self, stop: threading.Event) -> Any:
        """The preview report, or None when it was cancelled (a newer preview or Cancel: not an error)."""
        if stop.is_set():
            return None
        try:
            with clean.cancellable(stop):
                return self.session.preview_clean(self.form.config())
        except clean.CleanCancelled:
            return None

    def _show_preview(self, report: Any) -> None:
        if report is not None:  # a cancelled preview leaves the last report on screen
            self.view.show(report)

    def cancel_preview(self) -> None:
        """Stop the running preview (the Cancel button)."""
        self._stop.set()

    def do_apply(self) -> None:
        self.jobs.run("cleaning all rows", lambda: self.session.clean(self.form.config()), then=self.view.show,
                      form=self.form)

    def refresh(self) -> None:
        self.form.set(self.session.clean_config or CleanConfig())
        self.view.show(self._report("clean") if self.session.clean_applied else self._report("clean_preview"))


# -------------------------------------------------------------------- tokens
class TokensPanel(Panel):
    title = "Tokens"

    def __init__(self, app: Any) -> None:
        super().__init__(app)
        self.form = ConfigForm(TokenizerConfig)
        self.go = button("Tokenize", "nbtune-tokenize", "Turn the current rows into training tokens", "primary")
        self.view = ReportView("nbtune-tokens-report", "Not tokenized yet.")
        self.go.on_click(lambda _: self.jobs.run("tokenizing", lambda: self.session.tokenize(self.form.config()),
                                                 then=self.view.show, form=self.form))
        self.widget = widgets.VBox([note("'bpe' trains a new tokenizer on your training rows; a hub id or folder "
                                         "uses a pretrained one. Loading a pretrained model re-tokenizes with its "
                                         "own tokenizer."), self.form.widget, self.go, self.view.widget])

    def refresh(self) -> None:
        self.form.set(self.session.tokenizer_config or TokenizerConfig())
        self.view.show(self._report("tokens"))


# --------------------------------------------------------------------- model
SCRATCH, PRETRAINED = "from scratch", "fine-tune a pretrained model"


class ModelPanel(Panel):
    title = "Model"

    def __init__(self, app: Any) -> None:
        super().__init__(app)
        self.path = widgets.ToggleButtons(options=[SCRATCH, PRETRAINED], style={"button_width": "auto"})
        self.path.add_class("nbtune-model-path")
        self.estimate_later = Debouncer(self.do_estimate, app.debounce, app.background)
        self.scratch = ConfigForm(ScratchModelConfig, main=("preset", "layers", "hidden_size", "heads",
                                                            "context_length"), on_change=self.estimate_later)
        self.pretrained = ConfigForm(PretrainedModelConfig, main=("model", "method", "lora_rank", "lora_alpha"))
        self.create = button("Create model", "nbtune-model-create", "Initialise the model at random", "primary")
        self.load = button("Load model", "nbtune-model-load", "Load the pretrained model for fine-tuning", "primary")
        self.estimate = ReportView("nbtune-model-estimate", "The estimate needs a tokenizer: tokenize first.")
        self.view = ReportView("nbtune-model-report", "No model yet.")
        self.create.on_click(lambda _: self.jobs.run(
            "creating the model", lambda: self.session.new_model(self.scratch.config()), then=self.view.show,
            form=self.scratch))
        self.load.on_click(lambda _: self.jobs.run(
            "loading the model", lambda: self.session.use_model(config=self.pretrained.config()),
            then=self.view.show, form=self.pretrained))
        self.scratch_box = widgets.VBox([note("Parameters, memory and FLOPs update as you change the sizes."),
                                         self.scratch.widget, self.create,
                                         heading("Estimate for these settings (nothing allocated yet)"),
                                         self.estimate.widget])
        self.pretrained_box = widgets.VBox([note("The card below says whether the model fits the attached device."),
                                            self.pretrained.widget, self.load])
        self.stack = widgets.VBox([self.scratch_box])
        self.path.observe(lambda _: self._show_path(), names="value")
        self.widget = widgets.VBox([self.path, self.stack, heading("The session's model"), self.view.widget])

    def _show_path(self) -> None:
        self.stack.children = [self.scratch_box if self.path.value == SCRATCH else self.pretrained_box]
        if self.path.value == SCRATCH:
            self.estimate_later()

    def do_estimate(self) -> None:
        if self.session.tokenizer is None:
            self.estimate.clear()
            return
        self.jobs.run("estimating the model", lambda: self.session.model_card(self.scratch.config()),
                      then=self.estimate.show, form=self.scratch, replace=True)

    def refresh(self) -> None:
        settings = self.session.model_settings
        if settings.get("kind") == "scratch":
            self.scratch.set(ScratchModelConfig.from_dict(settings["config"]))
            self.path.value = SCRATCH
        elif settings.get("kind") == "pretrained":
            self.pretrained.set(PretrainedModelConfig.from_dict(settings["config"]))
            self.path.value = PRETRAINED
        self.view.show(self._report("model"))


# --------------------------------------------------------------------- train
TRAIN_MAIN = ("steps", "epochs", "learning_rate", "batch_size", "grad_accum", "eval_every", "checkpoint_every",
              "sample_prompt", "log_to")


def model_method(model_settings: dict[str, Any]) -> str | None:
    """The session's model's training method ('scratch', 'full', 'lora', ...), None before a model is chosen."""
    if model_settings.get("kind") == "scratch":
        return "scratch"
    return (model_settings.get("config") or {}).get("method") if model_settings.get("kind") == "pretrained" else None


class TrainPanel(Panel):
    title = "Train"

    def __init__(self, app: Any) -> None:
        from nbtune.ui.live import embedded_live_chart

        super().__init__(app)
        self.form = ConfigForm(TrainConfig, main=TRAIN_MAIN)
        self.defaults = widgets.HTML("")  # the learning rate and batch a run of the current model really uses
        self.defaults.add_class("nbtune-train-defaults")
        self.start = button("Start", "nbtune-train-start", "Start a new run with these settings", "success")
        self.pause = button("Pause", "nbtune-train-pause", "Pause after this step (a checkpoint is written)")
        self.resume = button("Resume", "nbtune-train-resume", "Continue a paused or stopped run from its checkpoint")
        self.stop = button("Stop", "nbtune-train-stop", "Stop after this step (a checkpoint is written)", "danger")
        self.bar = widgets.IntProgress(value=0, min=0, max=1, layout=widgets.Layout(width="420px"))
        self.bar.add_class("nbtune-train-progress")
        self.state = widgets.HTML("")
        self.state.add_class("nbtune-train-state")
        self.problems = widgets.HTML("")  # what went wrong during the run and stays on screen (a failed listener)
        self.problems.add_class("nbtune-train-problems")
        self.chart = embedded_live_chart()
        self.followed: str | None = None  # the run id the chart and bar follow (view state only)
        self.start.on_click(lambda _: self.do_start())
        self.pause.on_click(lambda _: self._control("pausing", lambda run: run.pause()))
        self.stop.on_click(lambda _: self._control("stopping", lambda run: run.stop()))
        self.resume.on_click(lambda _: self.do_resume())
        self.widget = widgets.VBox([self.form.widget, self.defaults,
                                    widgets.HBox([self.start, self.pause, self.resume, self.stop]),
                                    widgets.HBox([self.bar, self.state]), self.problems, self.chart.widget])
        self._set_buttons("created")

    # ---------------------------------------------------------- actions
    def do_start(self) -> None:
        def start() -> Any:
            config = self.form.config()
            if config.background is None:  # the app decides: a worker thread in JupyterLab, else the foreground
                config = config.replace(background=self.app.background)
            self.followed = None
            return self.session.train(config, listeners=(self._on_event,), live=False, progress=False)

        self.jobs.run("starting training", start, form=self.form)

    def do_resume(self) -> None:
        run = self.session.run
        if run is not None:
            self._follow(run)
        def resume() -> Any:
            resumed = self.session.resume(listeners=(self._on_event,), live=False, progress=False)
            if resumed.status == "running":  # un-paused in place: no run_start event comes
                self._set_buttons("running")
            return resumed

        self.jobs.run("resuming", resume)

    def _control(self, label: str, act: Any) -> None:
        run = self.session.run
        if run is None:
            self.app.errors.show(label, RuntimeError("no run in this kernel yet: press Start first"))
            return
        act(run)
        self._say(f"{label} after the current step…")

    # ----------------------------------------------------------- events
    def _on_event(self, event: Any) -> None:
        """Listener on the run's event bus: chart, progress bar, status line, buttons."""
        if event.kind == "run_start" and self.followed != event.run_id:
            self.followed = event.run_id
            self.chart.reset()
            self.problems.value = ""
        self.chart(event)
        if isinstance(event, RunStartEvent):
            self.bar.max = max(1, event.plan["total_steps"])
            self._set_buttons("running")
            self.app.refresh_header()
        elif isinstance(event, StepEvent):
            self.bar.value = min(event.step, self.bar.max)
        elif isinstance(event, CheckpointEvent):
            if event.reason == "pause":  # the engine now waits for resume()
                self._set_buttons("paused")
                self._say(f"paused at step {event.step}; checkpoint: {event.path}")
            else:
                self._say(f"checkpoint written at step {event.step}: {event.path}")
        elif isinstance(event, RunEndEvent):
            self._set_buttons(event.status)
            self._say(f"{event.run_id} {event.status} at step {event.step}" + self._checkpoint_text())
            self.app.refresh_header()
        elif isinstance(event, ErrorEvent):
            self._say(f"{event.message} — {event.advice}")
            if event.kind_of_error == "listener" or not event.recovered:
                self.problems.value += (f'<div style="font-family:system-ui;font-size:13px;color:#b45309">⚠ step '
                                        f'{event.step}: {esc(event.message)} — {esc(event.advice)}</div>')

    def _checkpoint_text(self) -> str:
        run = self.session.run
        checkpoint = run.last_checkpoint if run is not None else None
        return f"; checkpoint: {checkpoint}" if checkpoint else ""

    def _follow(self, run: Any) -> None:
        """Make the chart show `run` (an app opened after the run started, or a run started from code)."""
        if self.followed == run.id:
            return
        self.followed = run.id
        total = run.engine.plan.total_steps if run.engine is not None else None
        self.chart.reset(run.metrics, run.evals, total, run.status)
        run.bus.subscribe(self._on_event)
        self.bar.max = max(1, total or 1)
        self.bar.value = run.metrics[-1]["step"] if run.metrics else 0
        self._set_buttons(run.status)

    def _set_buttons(self, status: str) -> None:
        running = status == "running"
        self.start.disabled = running or status == "paused"
        self.pause.disabled = not running
        self.stop.disabled = status not in ("running", "paused")
        self.resume.disabled = status not in ("paused", "stopped", "failed", "interrupted")

    def _say(self, text: str) -> None:
        self.state.value = f'<span style="font-family:system-ui;font-size:13px">{esc(text)}</span>'

    def show_method_defaults(self) -> None:
        """Fill empty learning rate / batch fields with what the current model's method uses, and say so."""
        from nbtune.config import METHOD_DEFAULTS

        method = model_method(self.session.model_settings)
        if method is None:
            self.defaults.value = ""
            return
        used = METHOD_DEFAULTS[method]
        self.form.show_defaults(used, f"{method} default")
        self.defaults.value = (
            f'<span style="font-family:system-ui;font-size:13px">Empty fields use the defaults for {esc(method)}: '
            f'learning rate {used["learning_rate"]:g}, batch {used["batch_size"]} x {used["grad_accum"]} '
            "gradient accumulation (a value you type wins).</span>")

    def refresh(self) -> None:
        self.show_method_defaults()
        run = self.session.run
        if run is not None:
            self._follow(run)
            return
        if self.session.runs:  # reopened session: the last run can be resumed from its checkpoint
            last = self.session.runs[-1]
            self.form.set(TrainConfig.from_dict(last["config"]))
            self._set_buttons(last.get("status") if last.get("checkpoint") else "created")
            self._say(f"last run {last['id']}: {last.get('status')}" + (
                f"; checkpoint: {last['checkpoint']}" if last.get("checkpoint") else ""))


# ------------------------------------------------------------------ evaluate
class EvaluatePanel(Panel):
    title = "Evaluate"

    def __init__(self, app: Any) -> None:
        super().__init__(app)
        self.split = widgets.Dropdown(options=["validation", "train"], description="split")
        self.max_rows = widgets.Text(placeholder="all rows", description="max rows", continuous_update=False)
        self.go = button("Evaluate", "nbtune-evaluate", "Loss, perplexity and bits per byte on held-out rows",
                         "primary")
        self.prompts = widgets.Textarea(placeholder="one prompt per line (empty: starts of held-out rows)",
                                        layout=widgets.Layout(width="520px", height="70px"))
        self.generate = button("Generate", "nbtune-generate", "Greedy and sampled answers side by side")
        self.view = ReportView("nbtune-eval-report", "Not evaluated yet.")
        self.samples = ReportView("nbtune-generate-report")
        self.go.on_click(lambda _: self.do_evaluate())
        self.generate.on_click(lambda _: self.do_generate())
        self.widget = widgets.VBox([widgets.HBox([self.split, self.max_rows, self.go]), self.view.widget,
                                    widgets.HBox([self.prompts, self.generate]), self.samples.widget])

    def do_evaluate(self) -> None:
        def evaluate() -> Any:
            text = self.max_rows.value.strip()
            if text and not text.isdigit():
                raise ValueError(f"max rows must be a whole number, got {text!r}")
            return self.session.evaluate(self.split.value, max_rows=int(text) if text else None)

        self.jobs.run("evaluating", evaluate, then=self.view.show)

    def do_generate(self) -> None:
        prompts = [line for line in self.prompts.value.splitlines() if line.strip()] or None
        self.jobs.run("generating", lambda: self.session.generate(prompts), then=self.samples.show)

    def refresh(self) -> None:
        self.view.show(self._report("eval"))
        self.samples.show(self._report("generate"))


# ------------------------------------------------------------------- compare
class ComparePanel(Panel):
    title = "Compare"

    def __init__(self, app: Any) -> None:
        super().__init__(app)
        self.runs = widgets.SelectMultiple(options=[], description="runs", rows=5)
        self.axis = widgets.Dropdown(options=["steps", "tokens", "flops", "time"], description="x axis")
        self.go = button("Compare", "nbtune-compare", "Overlay the runs (none selected: all runs)", "primary")
        self.view = ReportView("nbtune-compare-report", "Train at least one run to compare.")
        self.go.on_click(lambda _: self.jobs.run(
            "comparing runs", lambda: self.session.compare(list(self.runs.value) or None, axis=self.axis.value),
            then=self.view.show))
        self.widget = widgets.VBox([widgets.HBox([self.runs, widgets.VBox([self.axis, self.go])]), self.view.widget])

    def refresh(self) -> None:
        ids = [r["id"] for r in self.session.runs]
        chosen = tuple(i for i in self.runs.value if i in ids)
        self.runs.options = ids
        self.runs.value = chosen
        self.view.show(self._report("compare"))


# ----------------------------------------------------------------------- lab
class LabPanel(Panel):
    title = "Lab"

    def __init__(self, app: Any) -> None:
        super().__init__(app)
        self.form = ConfigForm(LabConfig, main=("base", "method", "fractions", "finetune_steps", "scratch_preset",
                                                "compute_ratio", "scratch_compute"))
        self.go = button("Run the lab", "nbtune-lab", "Fine-tune vs from scratch on this data, matched compute",
                         "primary")
        self.view = ReportView("nbtune-lab-report", "Not run yet.")
        self.go.on_click(lambda _: self.jobs.run("running the lab", lambda: self.session.lab(self.form.config()),
                                                 then=self.view.show, form=self.form))
        self.widget = widgets.VBox([note("Trains both paths on 10/30/100% of your rows under matched compute and "
                                         "measures the differences (about 3 minutes on 2 CPU cores with the "
                                         "defaults)."), self.form.widget, self.go, self.view.widget])

    def refresh(self) -> None:
        self.view.show(self._report("lab"))


PANELS = (DataPanel, CleanPanel, TokensPanel, ModelPanel, TrainPanel, EvaluatePanel, ComparePanel, LabPanel)
