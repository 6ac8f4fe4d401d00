"""The Session: one object that holds everything a user did, stage by stage.

    s = Session("my-run")          # a workdir; everything is saved there
    s.load("notes/*.md")           # -> LoadReport
    s.preview_clean(mask_pii=True) # -> CleanReport on a sample, nothing changes
    s.clean(mask_pii=True)         # -> CleanReport, applied to all rows
    s.tokenize(vocab_size=8000)    # -> TokenReport
    s2 = Session("my-run")         # after a kernel restart: the same state (opening is the default)

Rules every stage method follows:

* it runs under the Session's stage lock, so the app's worker thread and a
  code cell never interleave two stages, and `state()` / `save()` never see a
  half-changed Session; while a run trains or is paused, stages that would
  change what it trains on are refused (`StageOrderError` names the run);

* it computes into local variables and changes the Session only at the very
  end, so an error leaves the Session exactly as it was before the call;
* it never modifies the user's files; results go to the workdir and the state
  is saved after each stage as one transaction (`nbtune.store`);
* it returns a report object (plain-text `repr`, HTML in notebooks).

A new load resets what depended on the old data (cleaned rows, tokens) but
keeps the cleaning recipe and tokenizer settings, so they can be replayed on
new data with `clean()` / `tokenize()` and no arguments.
"""

from __future__ import annotations

import contextlib
import functools
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from nbtune import runs
from nbtune.config import CleanConfig, SplitConfig, TokenizerConfig
from nbtune.data import reports as data_reports
from nbtune.data.mapped import pages_released
from nbtune.data.split import split_rows
from nbtune.errors import ConfigError, DataError, StageOrderError
from nbtune.storage import now
from nbtune.store import (
    STATE_FILE,
    ProjectLockedError,
    StaleSessionError,
    Store,
    hold,
    let_go,
    live_sessions,
    read_dataset,
)
from nbtune.trust import TRUST_FLAGS, check_trust
from nbtune.ui.outputs import show_reports_in_notebook
from nbtune.viz.data_reports import (
    CleanReport,
    LoadReport,
    MessageReport,
    ProblemInfo,
    SplitReport,
    TokenReport,
)

STATE_VERSION = 2
ACTIVE = runs.ACTIVE
__all__ = ["Session", "ProjectLockedError", "StaleSessionError", "STATE_FILE", "check_trust"]


def _resolve(workdir: str | Path) -> Path:
    return Path(workdir).expanduser().resolve()


def _config(cls: type, config: Any, overrides: dict[str, Any], stored: dict | None = None) -> Any:
    """Merge a config object or stored dict with keyword overrides, then validate."""
    if config is not None and not isinstance(config, cls):
        raise ConfigError(f"expected a {cls.__name__}, got {type(config).__name__}",
                          fix=f"pass nbtune.{cls.__name__}(...) or keyword arguments")
    base = config or (cls.from_dict(stored) if stored else cls())
    merged = base.replace(**overrides)
    merged.validate()
    return merged


class StageLock:
    """A re-entrant lock around each stage, which knows what holds it and how many threads wait.

    The app's status line uses `holder` ("waiting for tokenize from a code
    cell"), and tests wait on `waiting` instead of sleeping.
    """

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._changed = threading.Condition()
        self.waiting = 0
        self.holder: str | None = None

    @contextlib.contextmanager
    def held(self, stage: str) -> Iterator[None]:
        if not self._lock.acquire(blocking=False):
            with self._changed:
                self.waiting += 1
                self._changed.notify_all()
            self._lock.acquire()
            with self._changed:
                self.waiting -= 1
        outer, self.holder = self.holder, self.holder or stage
        try:
            yield
        finally:
            self.holder = outer
            self._lock.release()

    def wait_for_waiters(self, count: int, timeout: float) -> bool:
        """Block until `count` threads wait for the lock (or `timeout` seconds pass); True if they do."""
        with self._changed:
            return self._changed.wait_for(lambda: self.waiting >= count, timeout)


def _stage(*, changes: bool = True, while_training: str = "refuse") -> Callable:
    """Run a Session method as one stage: under the stage lock, on an open Session.

    `changes`: the stage changes the project (refused on read-only and closed
    Sessions). `while_training`: "refuse" (while a run trains or is paused),
    "running" (refused only while it trains; safe on a paused model) or "allow".
    """

    def wrap(method: Callable) -> Callable:
        name = method.__name__

        @functools.wraps(method)
        def stage(self: Session, *args: Any, **kwargs: Any) -> Any:
            with self._stage_lock.held(name), pages_released():  # mapped Arrow pages do not pile up in RSS
                self._check_usable(name, changes=changes)
                if while_training != "allow":
                    self._refuse_while_training(name, paused_ok=while_training == "running")
                return method(self, *args, **kwargs)

        return stage

    return wrap


class Session:
    """The state of one notebook project: data, cleaning, tokens, the model and its runs.

    `Session(folder)` opens the project saved in `folder` (what `Session.open`
    does) or starts a new one there; it never starts empty over saved state.
    `fresh=True` starts over, moving the saved state into `backups/<date>/`.
    `read_only=True` looks at a project another process has open for writing.
    """

    def __new__(cls, workdir: str | Path = "nbtune_workdir", **options: Any) -> Session:
        """A re-run `Session(folder)` cell, while a run of this kernel trains, gives back the Session that runs it."""
        if not options.get("fresh") and not options.get("read_only"):
            for live in live_sessions(_resolve(workdir)):
                if live._active_run() is not None:
                    live._opened_note = (f"already open in this kernel, with {live._run.id} {live._run.status}: "
                                         "this is the same Session object")
                    return live
        return super().__new__(cls)

    def __init__(self, workdir: str | Path = "nbtune_workdir", *, autosave: bool = True, fresh: bool = False,
                 read_only: bool = False, trust_remote_code: bool = False, allow_pickle: bool = False) -> None:
        if getattr(self, "_initialised", False):  # the live Session handed back by __new__
            self._grant(trust_remote_code=trust_remote_code, allow_pickle=allow_pickle)
            return
        self._blank(_resolve(workdir), autosave=autosave and not read_only, read_only=read_only)
        show_reports_in_notebook()  # in a kernel: reports show offline in every frontend (nbtune.ui.outputs)
        self._grant(trust_remote_code=trust_remote_code, allow_pickle=allow_pickle)
        if not read_only:
            self._holding = hold(self.workdir, self)
        try:
            if fresh:
                self._start_over()
            elif self._store.exists():
                self._restore_current()
                self._opened_note = f"opened: saved {self._saved_at or 'earlier'}" + (
                    f"; {self._recovered}" if self._recovered else "")
            elif read_only:
                raise DataError("no saved nbtune session here to open read-only", path=self.workdir,
                                fix="check the folder name")
        except BaseException:
            self.close()
            raise
        self._initialised = True

    def _blank(self, workdir: Path, *, autosave: bool, read_only: bool) -> None:
        """Every attribute of an empty Session (nothing loaded, no lock held yet)."""
        self.workdir = workdir
        self.autosave = autosave
        self.read_only = read_only
        self.created = now()
        self.sources: list[dict[str, Any]] = []
        self.format: str | None = None
        self.format_reason = ""
        self.mapping: dict[str, str] = {}
        self.columns: list[str] = []
        self.split_config = SplitConfig()
        self.clean_config: CleanConfig | None = None
        self.clean_applied = False
        self.tokenizer_config: TokenizerConfig | None = None
        self.runs: list[dict[str, Any]] = []
        self.model_settings: dict[str, Any] = {}
        self.reports: dict[str, Any] = {}
        self._model: Any = None
        self._run: Any = None
        self._granted: dict[str, bool] = dict.fromkeys(TRUST_FLAGS, False)  # what the caller allowed, never a file
        self._model_settings_from: Path = workdir / STATE_FILE  # the file model_settings came from (errors name it)
        self._stage_lock = StageLock()
        self._store = Store(workdir)
        self._holding: Any = None
        self._closed = False
        self._opened_note = "new: nothing saved here yet"
        self._saved_at: str | None = None
        self._recovered = ""
        self._loaded: Any = None  # datasets.Dataset, canonical schema
        self._cleaned: Any = None
        self._tokenizer: Any = None
        self._tokens: Any = None  # datasets.DatasetDict(train, validation)
        self._problems: list[ProblemInfo] = []

    @classmethod
    def in_memory(cls, workdir: str | Path, *, trust_remote_code: bool = False, allow_pickle: bool = False) -> Session:
        """A Session that reads nothing from `workdir` and saves nothing there (no lock): a recipe's replay.

        Its runs still go to `workdir/runs/`; every process of a torchrun job builds one.
        """
        session = super().__new__(cls)
        session._blank(_resolve(workdir), autosave=False, read_only=False)
        session._grant(trust_remote_code=trust_remote_code, allow_pickle=allow_pickle)
        session._opened_note = "in memory: nothing is read or saved"
        session._initialised = True
        return session

    def _grant(self, **flags: bool) -> None:
        """Remember what the caller allowed in a call (trust_remote_code, allow_pickle) for this Session's life."""
        for name, value in flags.items():
            self._granted[name] = self._granted[name] or bool(value)

    def _trusted(self, settings: dict[str, Any], what: str, where: Path | str, **granted_now: bool) -> dict[str, Any]:
        """`settings` read from a file, if every trust flag it asks for was granted by the caller; else a ConfigError.

        trust_remote_code runs the model repository's Python code and allow_pickle unpickles weights (which can run
        code too): a folder someone shares must never turn them on by itself.
        """
        check_trust(settings, {k: v or granted_now.get(k, False) for k, v in self._granted.items()}, what=what,
                    where=where, how=lambda flags: f"nbtune.Session({str(self.workdir)!r}, "
                    + ", ".join(f"{f}=True" for f in flags) + ")")
        return settings

    def _start_over(self) -> None:
        """`fresh=True`: move the saved state into backups/<date>/ (deleting nothing) and start empty."""
        for other in live_sessions(self.workdir):
            if other is not self and other._active_run() is not None:
                raise StageOrderError(f"{other._run.id} is {other._run.status} in this kernel on {self.workdir}: "
                                      "stop it (run.stop()) before starting the project over")
        moved = self._store.move_to_backup()
        self._opened_note = (f"started over: the previous state was moved to {moved.relative_to(self.workdir)}"
                             if moved else "new: nothing saved here yet")

    def close(self) -> None:
        """Let go of the project folder (another process may then open it for writing). Idempotent."""
        if self._active_run() is not None:
            raise StageOrderError(f"{self._run.id} is {self._run.status}: stop it (run.stop()) or wait for it "
                                  "(run.wait()) before closing the Session")
        self._closed = True
        if self._holding is not None:
            self._holding = None
            let_go(self.workdir, self)

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _check_usable(self, stage: str, *, changes: bool) -> None:
        if self._closed:
            raise StageOrderError(f"{stage}(): this Session was closed; open the folder again: "
                                  f"s = nbtune.Session({str(self.workdir)!r})")
        if changes and self.read_only:
            raise StageOrderError(f"{stage}() would change the project, and this Session is read-only "
                                  f"({self.workdir} is open for writing elsewhere); open it for writing once that "
                                  "Session is closed")

    def _active_run(self) -> Any:
        """The run of this Session that is training or paused right now, or None."""
        run = getattr(self, "_run", None)
        return run if run is not None and run.status in ACTIVE else None

    def _refuse_while_training(self, stage: str, *, paused_ok: bool = False) -> None:
        run = self._active_run()
        if run is None or (paused_ok and run.status == "paused"):
            return
        safe = " (export works on a paused run: run.pause(), then export)" if stage == "export" else ""
        raise StageOrderError(f"{stage}() is not possible while {run.id} is {run.status}: it would change what the "
                              f"run trains on. Wait for it (run.wait()), or stop it (run.stop()) first{safe}")

    # ------------------------------------------------------------------ state
    @property
    def raw_dataset(self) -> Any:
        """The data as loaded (never changed by cleaning)."""
        return self._loaded

    @property
    def dataset(self) -> Any:
        """The current data: cleaned if cleaning was applied, else as loaded."""
        return self._cleaned if self._cleaned is not None else self._loaded

    @property
    def tokenizer(self) -> Any:
        return self._tokenizer

    @property
    def tokens(self) -> Any:
        """A DatasetDict (train, validation) of input_ids and loss_mask, after `tokenize()`."""
        return self._tokens

    def _require_data(self, stage: str) -> Any:
        if self._loaded is None:
            raise StageOrderError(f"{stage}() needs data: call s.load(path_or_data) or s.load_example('kjv') first")
        return self.dataset

    def _split(self, dataset: Any, n_loaded: int, config: SplitConfig) -> tuple[Any, Any]:
        return split_rows(dataset, n_loaded, config)

    @property
    def train_split(self) -> Any:
        """The current rows of the training split."""
        return self._split(self._require_data("train_split"), len(self._loaded), self.split_config)[0]

    @property
    def validation_split(self) -> Any:
        """The current rows of the validation split."""
        return self._split(self._require_data("validation_split"), len(self._loaded), self.split_config)[1]

    # ------------------------------------------------------------------- load
    @_stage()
    def load(self, source: Any, *, text_column: str | None = None, format: str | None = None,
             mapping: dict[str, str] | None = None, split: str | None = None, file_type: str | None = None,
             append: bool = False, validation_fraction: float | None = None, seed: int | None = None,
             follow_symlinks: bool = False, sft: str | None = None) -> LoadReport:
        """Load text from a path, glob, folder, DataFrame, list, `datasets` object or hub id.

        The format (plain text, chat, instruction, prompt/completion, preference, unpaired
        preference, stepwise) is detected and reported; `text_column=`, `format=` and
        `mapping=` override it. Preference data needs `sft=` ('chosen', 'desirable' or
        'correct') before supervised fine-tuning (README, Loading and formats).
        `append=True` adds the rows to the data already loaded (same format).
        A folder or glob does not follow links that lead out of it unless `follow_symlinks=True`.
        """
        from nbtune.data.load import load_source

        started = time.perf_counter()
        loaded = load_source(source, text_column=text_column, format=format, mapping=mapping,
                             split=split, file_type=file_type, follow_symlinks=follow_symlinks, sft=sft)
        return self._accept_load(loaded, loaded.origin, append, validation_fraction, seed, started)

    @_stage()
    def load_example(self, name: str = "kjv", **kwargs: Any) -> LoadReport:
        """Load embedded example data that works offline: 'kjv' (plain text) or 'dialogs' (chat)."""
        from nbtune.data.examples import example_source
        from nbtune.data.load import load_source

        started = time.perf_counter()
        source, load_kwargs = example_source(name)
        append = kwargs.pop("append", False)
        fraction, seed = kwargs.pop("validation_fraction", None), kwargs.pop("seed", None)
        loaded = load_source(source, **{**load_kwargs, **kwargs})
        return self._accept_load(loaded, {"kind": "example", "name": name}, append, fraction, seed, started)

    def _accept_load(self, loaded: Any, origin: dict, append: bool, fraction: float | None,
                     seed: int | None, started: float) -> LoadReport:
        from datasets import concatenate_datasets

        overrides = {k: v for k, v in (("validation_fraction", fraction), ("seed", seed)) if v is not None}
        split_config = _config(SplitConfig, self.split_config, overrides)
        dataset = loaded.dataset
        if append and self._loaded is not None:
            if loaded.format != self.format and {loaded.format, self.format} & {"text"}:
                raise DataError(f"cannot append {loaded.format} data to {self.format} data",
                                fix="load it into a new Session, or convert it to the same format first")
            offset = len(self._loaded)
            dataset = dataset.map(lambda b: {"row_id": [r + offset for r in b["row_id"]]}, batched=True)
            dataset = concatenate_datasets([self._loaded, dataset.cast(self._loaded.features)])
        sources = ([*self.sources] if append and self._loaded is not None else []) + [
            {"origin": origin, "format": loaded.format, "mapping": loaded.mapping, "rows": len(loaded.dataset),
             "files": loaded.files[:50], "loaded_at": now()}]
        problems = [ProblemInfo(p.kind, p.count, list(p.examples), p.message) for p in self._find_problems(loaded)]
        report = data_reports.load_report(dataset, loaded, origin, problems, split_config, time.perf_counter() - started)
        # commit: nothing above touched self
        self._loaded, self._cleaned, self._tokens = dataset, None, None
        self.clean_applied = False
        self.sources, self.split_config = sources, split_config
        self.format, self.format_reason, self.mapping = loaded.format, loaded.format_reason, loaded.mapping
        self.columns, self._problems = loaded.columns, problems
        self.reports = {"load": report}
        self._autosave(data=("loaded",))
        return report

    @staticmethod
    def _find_problems(loaded: Any) -> list[Any]:
        from nbtune.data.load import find_problems

        return find_problems(loaded)

    @_stage()
    def split(self, validation_fraction: float | None = None, seed: int | None = None) -> SplitReport:
        """Change the train/validation split (seeded, stable under cleaning); tokens must be redone."""
        self._require_data("split")
        overrides = {k: v for k, v in (("validation_fraction", validation_fraction), ("seed", seed)) if v is not None}
        config = _config(SplitConfig, self.split_config, overrides)
        train, val = self._split(self.dataset, len(self._loaded), config)
        changed = config != self.split_config
        self.split_config = config
        if changed:
            self._tokens = None
        report = SplitReport(config.validation_fraction, config.seed, len(train), len(val))
        self.reports["split"] = report
        self._autosave()
        return report

    # ------------------------------------------------------------------ clean
    @_stage(changes=False, while_training="allow")
    def preview_clean(self, config: CleanConfig | None = None, *, sample_size: int = 2000,
                      **overrides: Any) -> CleanReport:
        """Show what cleaning would do, on a seeded sample; changes nothing."""
        from nbtune.data import clean

        recipe = _config(CleanConfig, config, overrides, self._stored_clean())
        result = clean.preview(self._loaded_or_raise("preview_clean"), recipe, sample_size=sample_size,
                               seed=self.split_config.seed)
        report = data_reports.clean_report(result, applied=False)
        self.reports["clean_preview"] = report
        return report

    @_stage()
    def clean(self, config: CleanConfig | None = None, **overrides: Any) -> CleanReport:
        """Apply the cleaning recipe to all loaded rows (the loaded data stays untouched).

        With no arguments it replays the stored recipe (or the defaults). Cleaning
        always starts from the loaded data, so calling it twice does not clean twice.
        """
        from nbtune.data import clean

        recipe = _config(CleanConfig, config, overrides, self._stored_clean())
        result = clean.apply(self._loaded_or_raise("clean"), recipe)
        train, val = self._split(result.dataset, len(self._loaded), self.split_config)
        report = data_reports.clean_report(result, applied=True, train_rows=len(train), validation_rows=len(val))
        self._cleaned, self._tokens = result.dataset, None
        self.clean_config, self.clean_applied = recipe, True
        self.reports["clean"] = report
        self._autosave(data=("cleaned",))
        return report

    @_stage()
    def undo_clean(self) -> MessageReport:
        """Go back to the loaded rows; the recipe is kept so `clean()` can replay it."""
        self._loaded_or_raise("undo_clean")
        self._cleaned, self._tokens, self.clean_applied = None, None, False
        self.reports.pop("clean", None)
        self._autosave()
        return MessageReport("Cleaning undone", [("rows", f"{len(self._loaded):,} (as loaded)"),
                                                  ("recipe kept", "call s.clean() to apply it again")])

    def _stored_clean(self) -> dict | None:
        return self.clean_config.to_dict() if self.clean_config else None

    def _loaded_or_raise(self, stage: str) -> Any:
        self._require_data(stage)
        return self._loaded

    # ----------------------------------------------------------------- tokens
    @_stage()
    def tokenize(self, config: TokenizerConfig | None = None, **overrides: Any) -> TokenReport:
        """Turn the current rows into token ids and loss masks, with a new or a pretrained tokenizer."""
        stored = self.tokenizer_config.to_dict() if self.tokenizer_config else None
        if config is None and stored and "trust_remote_code" not in overrides:
            self._trusted(stored, "the saved tokenizer settings", self.workdir / STATE_FILE)
        settings = _config(TokenizerConfig, config, overrides, stored)
        self._grant(trust_remote_code=settings.trust_remote_code)
        train, _ = self._split(self._require_data("tokenize"), len(self._loaded), self.split_config)
        if len(train) == 0:
            raise DataError("the training split is empty", fix="load more rows or lower validation_fraction")
        tokenizer, name = self._make_tokenizer(settings, train)
        return self._tokenize_with(tokenizer, name, settings)

    @_stage()
    def tokenize_with(self, tokenizer: Any, config: TokenizerConfig | None = None, *, name: str | None = None,
                      **overrides: Any) -> TokenReport:
        """Tokenize the current rows with a tokenizer object you already have (e.g. a recipe's saved one).

        `config` / `overrides` give the other token settings (context length, packing, response-only loss).
        """
        settings = _config(TokenizerConfig, config, overrides)
        return self._tokenize_with(tokenizer, name or f"given: {type(tokenizer).__name__}", settings)

    def _tokenize_with(self, tokenizer: Any, name: str, settings: TokenizerConfig) -> TokenReport:
        from datasets import DatasetDict

        from nbtune.data import tokens as tk

        started = time.perf_counter()
        train, val = self._split(self._require_data("tokenize"), len(self._loaded), self.split_config)
        template_added = tk.ensure_chat_template(tokenizer) if self.format != "text" else False
        tokenized_train = tk.tokenize_rows(train, tokenizer, settings, desc="tokenizing train")
        tokenized_val = tk.tokenize_rows(val, tokenizer, settings, desc="tokenizing validation",
                                         schema_from=tokenized_train)
        content = [c for c in ("text", "messages") if c in tokenized_train.column_names]
        tokenized = DatasetDict({"train": tokenized_train.remove_columns(content),  # the rows keep the text
                                 "validation": tokenized_val.remove_columns(content)})
        report = data_reports.token_report(tokenized, tokenizer, name, settings, self.format or "text", template_added,
                               time.perf_counter() - started, train)
        self._tokenizer, self._tokens, self.tokenizer_config = tokenizer, tokenized, settings
        self.reports["tokens"] = report
        self._autosave(data=("tokenizer", "tokens"))
        return report

    def _make_tokenizer(self, settings: TokenizerConfig, train: Any) -> tuple[Any, str]:
        from nbtune.data import tokens as tk

        if settings.tokenizer == "bpe":
            texts = tk.training_texts(train)
            tokenizer = tk.train_bpe_tokenizer(texts, settings.vocab_size)
            return tokenizer, f"new byte-level BPE, trained on {len(train):,} training rows"
        tokenizer = tk.load_pretrained_tokenizer(settings.tokenizer, trust_remote_code=settings.trust_remote_code)
        return tokenizer, f"pretrained: {settings.tokenizer}"

    # ------------------------------------------------------------------ model
    @property
    def model(self) -> Any:
        """The current `LoadedModel` (after `new_model` / `use_model`), or None."""
        return self._model

    def _scratch_settings(self, config: Any, overrides: dict[str, Any]) -> Any:
        from nbtune.config import ScratchModelConfig

        stored = self.model_settings["config"] if self.model_settings.get("kind") == "scratch" else None
        return _config(ScratchModelConfig, config, overrides, stored)

    @_stage(changes=False, while_training="allow")
    def model_card(self, config: Any = None, *, batch_size: int = 8, **overrides: Any) -> Any:
        """The card of a from-scratch model (size, memory, FLOPs, fits?) without allocating anything."""
        from nbtune.device import pick_device
        from nbtune.models.scratch import plan_scratch

        settings = self._scratch_settings(config, overrides)
        tokenizer, context = self._require_tokenizer("model_card")
        return plan_scratch(settings, tokenizer=tokenizer, context_length=settings.context_length or context,
                            batch_size=batch_size, seq_len=settings.context_length or context,
                            device=pick_device(settings.device, settings.precision))

    @_stage()
    def new_model(self, config: Any = None, *, batch_size: int = 8, **overrides: Any) -> Any:
        """Initialise a Llama-style model from scratch with the session tokenizer's vocabulary."""
        from nbtune.device import pick_device
        from nbtune.models.scratch import new_model

        settings = self._scratch_settings(config, overrides)
        tokenizer, context = self._require_tokenizer("new_model")
        context = settings.context_length or context
        loaded = new_model(settings, tokenizer=tokenizer, context_length=context,
                           device=pick_device(settings.device, settings.precision), batch_size=batch_size,
                           seq_len=context)
        self._replace_model(loaded, {"kind": "scratch", "config": settings.to_dict(), "context_length": context})
        return loaded.card

    @_stage()
    def use_model(self, model: str | None = None, method: str | None = None, config: Any = None, *,
                  batch_size: int = 8, **overrides: Any) -> Any:
        """Load a pretrained model for fine-tuning (full, lora, qlora, lora-8bit).

        The data is re-tokenized with the model's own tokenizer (and chat template)
        when it was tokenized with another one.
        """
        from nbtune.config import PretrainedModelConfig
        from nbtune.device import pick_device
        from nbtune.models.pretrained import use_model

        overrides.update({k: v for k, v in (("model", model), ("method", method)) if v is not None})
        settings = _config(PretrainedModelConfig, config, overrides)
        self._grant(trust_remote_code=settings.trust_remote_code, allow_pickle=settings.allow_pickle)
        seq_len = self.tokenizer_config.context_length if self.tokenizer_config else 512
        loaded = use_model(settings, device=pick_device(settings.device, settings.precision), batch_size=batch_size,
                           seq_len=seq_len)
        self._replace_model(loaded, {"kind": "pretrained", "config": settings.to_dict(), "context_length": seq_len})
        if self._loaded is not None:
            source = loaded.settings.get("resolved_source", loaded.source)
            self._tokenize_with(loaded.tokenizer, f"the model's own: {loaded.source}",
                                (self.tokenizer_config or TokenizerConfig()).replace(tokenizer=str(source)))
        return loaded.card

    def _replace_model(self, loaded: Any, settings: dict[str, Any]) -> None:
        if self._model is not None and self._model is not loaded:
            self._model.release()
        self._model, self.model_settings = loaded, settings
        self.reports["model"] = loaded.card
        self._autosave()

    def _require_tokenizer(self, stage: str) -> tuple[Any, int]:
        if self._tokenizer is None or self.tokenizer_config is None:
            raise StageOrderError(f"{stage}() needs a tokenizer: call s.tokenize(...) first (it trains one on your "
                                  "data by default)")
        return self._tokenizer, self.tokenizer_config.context_length

    def _require_model(self, stage: str) -> Any:
        if self._model is None:
            if self.model_settings:
                self._rebuild_model()
            else:
                raise StageOrderError(f"{stage}() needs a model: call s.new_model() (from scratch) or "
                                      "s.use_model('default', method='lora') (fine-tune) first")
        return self._model

    def _rebuild_model(self) -> None:
        """Recreate the model described by `model_settings` (after Session.open)."""
        kind, config = self.model_settings["kind"], self.model_settings["config"]
        if kind == "scratch":
            self.new_model(**config)
        else:
            from nbtune.config import PretrainedModelConfig
            from nbtune.device import pick_device
            from nbtune.models.pretrained import use_model

            self._trusted(config, "the saved model settings", self._model_settings_from)
            settings = PretrainedModelConfig.from_dict(config, path=self._model_settings_from)
            loaded = use_model(settings, device=pick_device(settings.device, settings.precision),
                               seq_len=self.model_settings.get("context_length", 512))
            self._replace_model(loaded, self.model_settings)

    # ------------------------------------------------------------------ train
    @property
    def run(self) -> Any:
        """The latest run handle of this kernel (None before the first `train()`)."""
        return self._run

    @_stage()
    def train(self, config: Any = None, *, listeners: tuple = (), progress: bool | None = None,
              live: bool | None = None, **overrides: Any) -> Any:
        """Train the current model on the tokenized training split; returns a `Run` handle.

        In JupyterLab the run goes to a worker thread (`run.wait()` blocks until it
        ends, and raises the run's error if it failed); in scripts, Colab and VS Code
        it runs in the foreground, where Ctrl-C / the interrupt button stops it
        gracefully after writing a checkpoint, and an error is raised here after the
        last finished step was saved. Every run gets a new folder under runs/.
        """
        from nbtune.config import TrainConfig

        settings = _config(TrainConfig, config, overrides)
        lm = self._require_model("train")
        if self._tokens is None:
            raise StageOrderError("train() needs tokens: call s.tokenize() first")
        record = runs.new_record(self.workdir, self.runs, lm.method, self.model_settings, settings)
        run = self._make_run(record, settings, listeners, progress, live)
        self.runs.append(record)
        runs.write_run_file(self, record)
        self._autosave()
        return run.start()

    @_stage(while_training="allow")
    def resume(self, run_id: str | None = None, *, steps: int | None = None, learning_rate: float | None = None,
               warmup_steps: int | None = None, listeners: tuple = (), progress: bool | None = None,
               live: bool | None = None) -> Any:
        """Continue a run from its last checkpoint: a paused one in place, a stopped, failed or interrupted
        one exactly where it stopped (also after a kernel restart).

        `steps=N` trains N more optimizer steps after the checkpoint, with a learning-rate
        schedule re-planned for them (warmup to `learning_rate`, default the run's, then its
        decay): this continues a finished run too. The segments are recorded in run.json.
        """
        from nbtune.config import TrainConfig

        active = self._active_run()
        if active is not None:
            if run_id not in (None, active.id) or steps is not None:
                raise StageOrderError(f"{active.id} is {active.status}: one run at a time per model. Wait for it "
                                      "(run.wait()) or stop it (run.stop()) first")
            return active.resume()
        if steps is None and self._run is not None and (run_id is None or self._run.id == run_id) \
                and self._run.status in ("stopped", "failed"):
            return self._run.resume()
        record = runs.find_record(self.runs, run_id)
        if record.get("status") == "finished" and steps is None:
            raise StageOrderError(f"{record['id']} finished all its steps; to train it further pass steps=, e.g. "
                                  f"s.resume({record['id']!r}, steps=100), or start a new run with s.train()")
        self._require_model("resume")
        settings = TrainConfig.from_dict(record["config"], path=self.workdir / STATE_FILE)
        checkpoint = runs.last_checkpoint(self.workdir, record)
        if steps is not None:
            settings = runs.extend_record(self.workdir, record, settings, checkpoint, steps=steps,
                                          learning_rate=learning_rate, warmup_steps=warmup_steps)
        run = self._make_run(record, settings, listeners, progress, live)
        self._autosave()
        return run.start(resume_from=checkpoint)

    def _live_chart(self, record: dict[str, Any]) -> Any:
        """The notebook's live chart for this run (None outside notebooks), already on screen."""
        from nbtune.ui.live import notebook_listener

        live = notebook_listener()
        if live is None:
            return None
        live.show()
        return live

    def _make_run(self, record: dict[str, Any], settings: Any, listeners: tuple, progress: bool | None,
                  live: bool | None = None) -> Any:
        """A run handle for `record`: its bus (metrics, session bookkeeping, a live chart or a progress bar,
        the caller's listeners, trackers) and an engine built when it starts."""
        from nbtune.events import StopToken
        from nbtune.train import trackers
        from nbtune.train.factory import make_bus, session_engine
        from nbtune.train.listeners import ConsoleProgress
        from nbtune.train.run import Run
        from nbtune.ui.frontend import default_background

        background = settings.background if settings.background is not None else default_background()
        run_dir = self.workdir / record["dir"]
        settings = settings.for_method(record["method"])  # learning rate / batch left at None: the method's defaults
        record["config"] = settings.to_dict()
        tracked = trackers.listeners_for(settings, run_dir, record)  # log_to=...; a missing package raises here
        shown = self._live_chart(record) if live is not False else None
        if shown is None and (progress if progress is not None else not background):
            shown = ConsoleProgress()
        bus, recorder = make_bus(run_dir, [self._run_bookkeeper(record), *([shown] if shown else []), *listeners,
                                           *tracked])
        token = StopToken()
        run = Run(record["id"], run_dir, lambda: session_engine(self, record, settings, bus, token), bus, token,
                  recorder, background)
        run.extender = lambda steps, **options: self.resume(record["id"], steps=steps, **options)
        self._run = run
        return run

    def _run_bookkeeper(self, record: dict[str, Any]) -> Any:
        """Keep the run's record in session.json current (status, last checkpoint)."""

        def update(event: Any) -> None:
            if event.kind not in ("checkpoint", "run_end", "run_start"):
                return
            with self._stage_lock.held("bookkeeping"):
                if event.kind == "checkpoint":
                    record["checkpoint"] = event.path
                elif event.kind == "run_end":
                    record["status"] = event.status
                elif event.kind == "run_start":
                    record["status"] = "running"
                record["step"] = event.step
                self._autosave()

        return update

    # --------------------------------------------------------------- evaluate
    def _idle_model(self, stage: str) -> Any:
        lm = self._require_model(stage)
        if self._run is not None and self._run.status in ("running", "paused"):
            raise StageOrderError(f"{stage}() would switch the model out of training mode while {self._run.id} is "
                                  f"{self._run.status}: wait for it (run.wait()) or stop it (run.stop()) first")
        if self._tokens is None:
            raise StageOrderError(f"{stage}() needs tokens: call s.tokenize() first")
        return lm

    @_stage(changes=False, while_training="allow")
    def evaluate(self, split: str = "validation", *, max_rows: int | None = None, batch_size: int = 8,
                 compare_base: bool | None = None) -> Any:
        """Loss, perplexity and bits per byte on held-out rows, the per-row distribution and the worst rows.

        `compare_base` (default: yes for LoRA models) also scores the base model
        with the adapters switched off, so you see what fine-tuning changed.
        """
        from nbtune.eval.reports import evaluation_report

        lm = self._idle_model("evaluate")
        report = evaluation_report(lm, lm.tokenizer or self._tokenizer, self._tokens[split], split, self.dataset,
                                   seq_len=self.tokenizer_config.context_length, batch_size=batch_size,
                                   max_rows=max_rows, compare_base=compare_base if compare_base is not None
                                   else lm.is_lora)
        self.reports["eval"] = report
        return report

    @_stage(changes=False, while_training="allow")
    def generate(self, prompts: list[str] | None = None, *, max_new_tokens: int = 48, seed: int = 0,
                 others: dict[str, Session] | None = None, compare_base: bool | None = None) -> Any:
        """Greedy and sampled generations, side by side: this model, its base (LoRA), and `others` sessions.

        Prompts default to the start of held-out rows (the first user message for chat data).
        Each model uses its own tokenizer and chat template, as in training.
        """
        from nbtune.eval.generate import default_prompts
        from nbtune.eval.reports import generation_report

        lm = self._idle_model("generate")
        chat = self.format != "text"
        models = [(f"this session ({lm.method})", lm, lm.tokenizer or self._tokenizer,
                   compare_base if compare_base is not None else lm.is_lora)]
        for name, other in (others or {}).items():
            olm = other._idle_model("generate")
            models.append((f"{name} ({olm.method})", olm, olm.tokenizer or other.tokenizer, False))
        report = generation_report(models, prompts or default_prompts(self.validation_split, chat=chat), chat=chat,
                                   max_new_tokens=max_new_tokens, seed=seed)
        self.reports["generate"] = report
        return report

    @_stage(changes=False, while_training="allow")
    def chat(self, prompt: str, *, others: Any = (), base: bool | None = None, history: Any = None,
             max_new_tokens: int = 128, temperature: float | None = None, top_p: float = 0.95, seed: int = 0,
             stream: Any = True, stop: Any = None) -> Any:
        """Answers to `prompt` streaming in side by side: this model, its base (LoRA; `base=`), and `others`
        (other Sessions: a list, or {name: session}), each through its own chat template and stop tokens.

        `history=` the report of an earlier chat continues that conversation. Greedy unless `temperature` > 0.
        `stream`: True shows the text as it is written, False nothing, a function gets each `ChatDelta`.
        `stop` (a threading.Event) ends the answers between two tokens. Refused while a run trains.
        """
        from nbtune.eval.chat import Sampling, named_sessions, run_chat, session_models
        from nbtune.ui.chat_stream import shown

        lm = self._idle_model("chat")
        models = session_models(lm, lm.tokenizer or self._tokenizer, "this session", chat=self.format != "text",
                                base=base)
        for name, other in named_sessions(others):
            olm = other._idle_model("chat")
            models += session_models(olm, olm.tokenizer or other.tokenizer, name, chat=other.format != "text",
                                     base=False)
        sampling = Sampling(max_new_tokens, temperature, top_p, seed)
        with shown(stream, [m.label for m in models]) as (on_delta, interleave):
            return run_chat(models, prompt, history=history, sampling=sampling, on_delta=on_delta, stop=stop,
                            interleave=interleave)

    # ---------------------------------------------------------- compare, export
    @_stage(changes=False, while_training="allow")
    def compare(self, run_ids: list[str] | None = None, *, axis: str = "steps",
                metrics: tuple = ("loss", "eval_loss", "eval_bpb", "tokens_per_s", "memory")) -> Any:
        """Overlay runs on one axis (steps, tokens, flops, time), with the settings that differ and best checkpoints."""
        from nbtune.eval.compare import compare_runs

        if not self.runs:
            raise StageOrderError("compare() needs runs: train at least one with s.train(...)")
        records = self.runs if run_ids is None else [runs.find_record(self.runs, run_id) for run_id in run_ids]
        report = compare_runs([self.workdir / r["dir"] for r in records], axis=axis, metrics=metrics)
        self.reports["compare"] = report
        return report

    @_stage(changes=False, while_training="running")
    def export(self, directory: str | Path, *, merge: bool | None = None, chat_template: str | None = None,
               smoke_prompt: str | None = "Hello!", max_new_tokens: int = 20, format: str = "safetensors",
               quantization: str | None = None) -> Any:
        """Write the model (or LoRA adapter; `merge=True` for a merged model) with its tokenizer, then reload
        what was written and generate from it as a smoke test. `format='gguf'` adds a llama.cpp / Ollama file
        (`quantization`: f16, bf16, f32 or q8_0) with a Modelfile and a parity check."""
        from nbtune.eval.export import export_model

        lm = self._require_model("export")
        if self._run is not None and self._run.status == "running":
            raise StageOrderError("a run is training this model right now: pause or stop it (run.pause()) first")
        target = Path(directory).expanduser()
        target = target if target.is_absolute() else self.workdir / target
        report = export_model(lm, target, merge=merge, chat_template=chat_template,
                              tokenizer=None if lm.tokenizer is not None else self._tokenizer,
                              smoke_prompt=smoke_prompt, max_new_tokens=max_new_tokens,
                              use_chat_template=self.format != "text", format=format, quantization=quantization)
        self.reports["export"] = report
        return report

    # ------------------------------------------------- scaling out: recipes and runs from elsewhere
    @_stage(changes=False, while_training="allow")
    def export_recipe(self, directory: str | Path, *, data: str = "auto", strategy: str = "ddp",
                      **train_overrides: Any) -> MessageReport:
        """Write this session as a recipe folder that trains on more GPUs or machines (torchrun, accelerate launch).

        The folder holds recipe.json (data sources, cleaning recipe, split, tokenizer, model and training
        settings, seeds), the tokenizer of a from-scratch model (so no process trains its own), a copy of the
        loaded rows when a source cannot be read again (`data='auto'`; 'copy' always copies, 'refer' never) and
        train.py. Training settings are the latest run's, changed by `train_overrides` (e.g. steps=5000);
        `strategy='fsdp'` shards the model. `attach_run()` brings the run back.
        """
        from nbtune.recipe_files import export_recipe, recipe_report

        target = Path(directory).expanduser()
        target = target if target.is_absolute() else self.workdir / target
        recipe = export_recipe(self, target, data=data, strategy=strategy, train_overrides=train_overrides)
        report = recipe_report(target, recipe, loaded_rows=len(self._loaded))
        self.reports["recipe"] = report
        return report

    @_stage()
    def attach_run(self, directory: str | Path, *, checkpoint: str | int | None = None,
                   trust_remote_code: bool = False, allow_pickle: bool = False) -> MessageReport:
        """Bring a run trained elsewhere (an exported recipe under torchrun or accelerate) into this session.

        It appears in `compare()`, and `s.resume(run_id)` continues it here in one process (new steps and
        checkpoints go to its own folder). `checkpoint='latest'`, `'best'` or a step number also loads that
        checkpoint's weights into the session's model (rebuilt from the run's settings when they differ), so
        `evaluate()`, `generate()` and `export()` use them. `directory` is a run folder, or a recipe's output
        folder that holds one run; a relative path is inside the workdir, as for `export_recipe()`.
        A run.json whose model needs `trust_remote_code` or `allow_pickle` is loaded only when you pass them here.
        """
        from nbtune.eval.compare import load_run
        from nbtune.recipe_files import attach_checks, attach_record, find_run_dir

        self._grant(trust_remote_code=trust_remote_code, allow_pickle=allow_pickle)
        folder = Path(directory).expanduser()
        run = load_run(find_run_dir(folder if folder.is_absolute() else self.workdir / folder))
        if self._run is not None and self._run.status in ("running", "paused"):
            raise StageOrderError(f"{self._run.id} is {self._run.status}: stop it (run.stop()) or wait for it first")
        loaded = self._load_run_checkpoint(run, checkpoint) if checkpoint is not None else None
        record = attach_record(self.workdir, self.runs, run)
        report = MessageReport(f"Run attached: {record['id']}", [
            ("folder", str(run.dir)), ("status", f"{run.status}, {record['step']} steps"),
            ("checkpoints", ", ".join(p.name for p in run.checkpoints) or "none"),
            *attach_checks(run, self.model_settings, self._tokenizer, self._tokens),
            ("weights loaded", f"{loaded.name} (evaluate, generate and export use them)" if loaded else
             "none (pass checkpoint='latest' or 'best' to evaluate or export this run)"),
            ("next", f"s.compare() · s.resume({record['id']!r})")])
        self.reports["attach"] = report
        self._autosave()
        return report

    def _load_run_checkpoint(self, run: Any, which: str | int) -> Path:
        """Put a run's checkpoint weights into the session's model, rebuilding the model from the run's settings."""
        from nbtune.recipe_files import pick_checkpoint, tokenizer_fingerprint

        path = pick_checkpoint(run, which)
        wanted = run.config.get("model") or {}
        recorded = run.config.get("tokenizer_fingerprint")
        if recorded and self._tokenizer is not None and tokenizer_fingerprint(self._tokenizer) != recorded:
            raise ConfigError("the run was trained with another tokenizer than this session's", column="tokenizer",
                              fix="attach it in the session that exported its recipe (Session.open(workdir))")
        if not wanted:
            raise DataError("run.json does not say which model was trained", path=run.dir,
                            fix="attach a run written by nbtune (a notebook run or an exported recipe)")
        if wanted != self.model_settings or self._model is None:
            self._trusted(wanted.get("config") or {}, "the run's model settings", run.dir / "run.json")
            before = (self.model_settings, self._model_settings_from)
            self.model_settings, self._model_settings_from = wanted, run.dir / "run.json"
            try:
                self._rebuild_model()
            except BaseException:
                self.model_settings, self._model_settings_from = before
                raise
        self._model.load_trainable_state(path / "model")
        return path

    # -------------------------------------------------------------------- lab
    @_stage()
    def lab(self, config: Any = None, **overrides: Any) -> Any:
        """Fine-tuning vs training from scratch on this session's data, measured (see `nbtune.eval.lab`)."""
        from nbtune.config import LabConfig
        from nbtune.eval.lab import run_lab, save_result
        from nbtune.viz.lab_report import LabReport

        settings = _config(LabConfig, config, overrides)
        train, val = self._split(self._require_data("lab"), len(self._loaded), self.split_config)
        if len(val) == 0:
            raise DataError("the lab needs held-out rows, and the validation split is empty",
                            fix="s.split(validation_fraction=0.1) (or load more rows)")
        folder = runs.new_numbered_folder(self.workdir / "lab", "lab")
        result = run_lab(train, val, settings, workdir=folder, chat=self.format != "text")
        save_result(folder, result)
        report = LabReport(result)
        self.reports["lab"] = report
        return report

    # ------------------------------------------------------------ persistence
    def state(self) -> dict[str, Any]:
        """Everything needed to restore this Session (JSON-serialisable)."""
        with self._stage_lock.held("state"):
            return {
                "version": STATE_VERSION,
                "created": self.created,
                "saved": now(),
                "sources": self.sources,
                "format": self.format,
                "format_reason": self.format_reason,
                "mapping": self.mapping,
                "columns": self.columns,
                "problems": [p.__dict__ for p in self._problems],
                "split": self.split_config.to_dict(),
                "clean": {"recipe": self._stored_clean(), "applied": self.clean_applied},
                "tokens": {"config": self.tokenizer_config.to_dict() if self.tokenizer_config else None,
                           "done": self._tokens is not None},
                "model": self.model_settings,
                "runs": self.runs,
            }

    def save(self, *, data: tuple[str, ...] = ("loaded", "cleaned", "tokenizer", "tokens")) -> Path:
        """Save the state and the named data as one transaction (see `nbtune.store`); returns the state file.

        Data items that are no longer in memory (e.g. tokens after a new load)
        are dropped from the saved state in the same transaction.
        """
        with self._stage_lock.held("save"):
            self._check_usable("save", changes=True)
            if self._holding is None:
                raise StageOrderError("this Session saves nothing (Session.in_memory); open the folder with "
                                      "nbtune.Session(folder) to save there")
            with self._holding.save_lock:
                path = self._store.commit(self.state(), self._writes(data))
            if data:
                self._map_saved_data()
            if self._opened_note.startswith("new"):
                self._opened_note = "new project, saved in this folder"
            return path

    def _writes(self, data: tuple[str, ...]) -> dict[str, Any]:
        """name -> a folder builder for each named item in memory, None for each saved item no longer in memory."""
        values = {"loaded": self._loaded, "cleaned": self._cleaned, "tokenizer": self._tokenizer,
                  "tokens": self._tokens}
        writes: dict[str, Any] = {}
        for name, value in values.items():
            if value is None:
                if self._store.path(name) is not None:
                    writes[name] = None
            elif name in data or self._store.path(name) is None:
                writes[name] = _quietly(_writer(name, value))
        return writes

    def _map_saved_data(self) -> None:
        """Read the datasets back from the folders just committed: memory-mapped, nothing resident yet.

        The objects a stage computed live in temporary files whose pages stay counted in the kernel's memory once
        read (a 1 GB file read by load, clean and tokenize would hold all three); mapped afresh from the project
        folder, a later stage reads only what it needs, and the Session holds exactly what was saved.
        """
        for name, attr in (("loaded", "_loaded"), ("cleaned", "_cleaned"), ("tokens", "_tokens")):
            folder = self._store.path(name)
            if folder is not None and getattr(self, attr) is not None:
                setattr(self, attr, _quietly_read(read_dataset, folder))

    def _autosave(self, data: tuple[str, ...] = ()) -> None:
        if self.autosave and self._holding is not None:
            self.save(data=data)

    @classmethod
    def open(cls, workdir: str | Path, *, autosave: bool = True, read_only: bool = False) -> Session:
        """Reopen a saved Session (e.g. after a kernel restart) with all its data and settings.

        The same as `Session(workdir)`, except that a folder with no saved session is an error here.
        """
        path = _resolve(workdir) / STATE_FILE
        if not path.exists():
            raise DataError("no saved nbtune session here", path=path.parent,
                            fix="check the folder name, or create one with nbtune.Session(workdir)")
        return cls(path.parent, autosave=autosave, read_only=read_only)

    def _restore_current(self) -> None:
        """Restore what session.json says now; a read-only view retries once if the writer committed meanwhile
        (and so removed the folders of the generation it had started to read)."""
        for attempt in (1, 2):
            try:
                self._restore(self._store.read_state())
                return
            except FileNotFoundError:
                if not self.read_only or attempt == 2:
                    raise

    def _restore(self, state: dict[str, Any]) -> None:
        """Take over a saved state: settings, runs, and the data folders of its generation."""
        self._store.adopt(state)
        if not self.read_only:
            removed = self._store.recover()
            if removed:
                self._recovered = f"removed {len(removed)} folder(s) an interrupted save left behind"
        self.created = state.get("created", self.created)
        self._saved_at = state.get("saved")
        self.sources = state.get("sources", [])
        self.format, self.format_reason = state.get("format"), state.get("format_reason", "")
        self.mapping, self.columns = state.get("mapping", {}), state.get("columns", [])
        self._problems = [ProblemInfo(**p) for p in state.get("problems", [])]
        where = self.workdir / STATE_FILE
        self.split_config = SplitConfig.from_dict(state.get("split", {}), path=where)
        recipe = state.get("clean", {}).get("recipe")
        self.clean_config = CleanConfig.from_dict(recipe, path=where) if recipe else None
        token_config = state.get("tokens", {}).get("config")
        self.tokenizer_config = TokenizerConfig.from_dict(token_config, path=where) if token_config else None
        self.runs = state.get("runs", [])
        self.model_settings = state.get("model", {})
        for name, attr in (("loaded", "_loaded"), ("cleaned", "_cleaned"), ("tokens", "_tokens")):
            folder = self._store.path(name)
            if folder is not None:
                setattr(self, attr, _quietly_read(read_dataset, folder))
        self.clean_applied = self._cleaned is not None
        if self._store.path("tokenizer") is not None:
            from transformers import AutoTokenizer

            self._tokenizer = AutoTokenizer.from_pretrained(str(self._store.path("tokenizer")))
        runs.reconcile(self.workdir, self.runs)

    # ---------------------------------------------------------------- display
    def stages(self) -> list[tuple[str, str]]:
        """(stage, status) pairs: where this Session stands."""
        rows = len(self._loaded) if self._loaded is not None else 0
        current = len(self.dataset) if self._loaded is not None else 0
        return [
            ("data", f"{rows:,} rows, {self.format}, from {', '.join(data_reports.describe_origin(s['origin']) for s in self.sources)}"
             if self._loaded is not None else "nothing loaded"),
            ("clean", f"applied: {current:,} rows left" if self.clean_applied else
             ("recipe set, not applied" if self.clean_config else "not cleaned")),
            ("tokens", f"{sum(len(p) for p in self._tokens.values()):,} rows tokenized"
             if self._tokens is not None else "not tokenized"),
        ]

    def ui(self, **options: Any) -> Any:
        """The notebook app over this Session (tabs Data … Lab); open it again any time to see the current state."""
        from nbtune.ui.app import App

        return App(self, **options)

    def _status_rows(self) -> list[tuple[str, str]]:
        """What `repr` shows: how the project was opened, each stage, and the runs."""
        mode = " (read-only)" if self.read_only else " (closed)" if self._closed else ""
        rows = [("project", self._opened_note + mode), *self.stages()]
        if self.runs:
            shown = ", ".join(f"{r['id']} {r.get('status')}" for r in self.runs[-3:])
            rows.append(("runs", (f"{len(self.runs)}: … " if len(self.runs) > 3 else "") + shown))
        return rows

    def __repr__(self) -> str:
        lines = [f"Session({str(self.workdir)!r})"] + [f"  {k}: {v}" for k, v in self._status_rows()]
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        from nbtune.viz.html import STYLE, esc, key_values

        return (f'{STYLE}<div class="nbt"><h3>nbtune Session · {esc(self.workdir)}</h3>'
                f'{key_values(self._status_rows())}</div>')

    @_stage(changes=False, while_training="allow")
    def report(self, path: str | Path | None = None, *, title: str | None = None) -> Path:
        """Write every stage's latest report into one self-contained HTML file; return its path."""
        from nbtune.data.clean import redact_raw
        from nbtune.viz.report import write_html_report, written_by_nbtune

        target = Path(path).expanduser() if path is not None else self.workdir / "report.html"
        target = target if target.is_absolute() else Path.cwd() / target
        if target.exists() and (not target.is_file() or not written_by_nbtune(target)) \
                and target != self.workdir / "report.html":
            raise ConfigError("this file exists and was not written by nbtune; nothing was written", path=target,
                              column="path", fix="pass a new file name (nbtune replaces only reports it wrote)")
        order = [("load", "1. Data"), ("split", "Split"), ("clean_preview", "2. Cleaning preview"),
                 ("clean", "2. Cleaning"), ("tokens", "3. Tokens"), ("model", "4. Model"), ("train", "5. Training"),
                 ("eval", "5. Evaluation"), ("generate", "5. Generations"),
                 ("compare", "6. Comparing runs"), ("lab", "7. Lab: fine-tune vs scratch"), ("export", "8. Export")]
        reports = dict(self.reports)
        if self._run is not None:
            reports["train"] = self._run.report()
        sections = [(heading, reports[key]) for key, heading in order if key in reports]
        if not sections:
            raise StageOrderError("nothing to report yet: load some data first (s.load(...) or s.load_example())")
        return write_html_report(target, title or f"nbtune report · {self.workdir.name}", sections, redact=redact_raw)


def _writer(name: str, value: Any) -> Callable[[Path], None]:
    """How one data item writes itself into a folder (datasets, or a tokenizer's save_pretrained)."""
    if name == "tokenizer":
        return lambda folder: value.save_pretrained(str(folder))
    return lambda folder: value.save_to_disk(str(folder))


@contextlib.contextmanager
def _no_progress_bars() -> Iterator[None]:
    """datasets reads and writes without their progress bars (the stage report already says what happened)."""
    import datasets

    was_enabled = not datasets.are_progress_bars_disabled()
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        if was_enabled:
            datasets.enable_progress_bars()


def _quietly_read(read: Any, folder: Path) -> Any:
    with _no_progress_bars():
        return read(folder)


def _quietly(write: Any) -> Any:
    """A datasets write, without its progress bar."""

    def run(tmp: Path) -> None:
        with _no_progress_bars():
            write(tmp)

    return run


