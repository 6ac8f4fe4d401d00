"""Recipes: a session's pipeline as a folder that trains on more devices, and the way back to the notebook.

`Session.export_recipe(dir)` writes

    recipe.json      data sources, cleaning recipe, split, tokenizer, model and training settings, seeds
    tokenizer/       the session's tokenizer (from-scratch models): every process uses this very
                     vocabulary instead of training a BPE tokenizer again
    data/rows.jsonl  the loaded rows, only when a source cannot be read again (a list, a DataFrame,
                     a `datasets` object); file, folder, glob, hub and example sources are re-read
    train.py         the entry point: `python train.py`, `torchrun --nproc_per_node N train.py`,
                     `accelerate launch --multi_gpu --num_processes N train.py`

`train.py` calls `main()`. Every process rebuilds the same session (load, split,
clean, tokenize, model) with the notebook's own code; the pipeline is
deterministic, and a fingerprint of the tokens, compared across processes at
the start, proves it. The run then trains with the notebook's engine,
distributed by `nbtune.train.distributed`. Rank 0 writes
`<out>/runs/<run id>/` exactly like a notebook run (run.json, metrics.jsonl,
checkpoints/), so `Session.attach_run` brings it back for comparison,
evaluation, export or a single-process resume.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import hashlib
import json
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from nbtune import runs
from nbtune.errors import ConfigError, DataError, StageOrderError
from nbtune.storage import atomic_replace_dir, atomic_write_json, atomic_write_text

RECIPE_FILE = "recipe.json"
RECIPE_VERSION = 1
ROWS_FILE = "data/rows.jsonl"
TOKENIZER_DIR = "tokenizer"
REREADABLE = ("path", "folder", "glob", "hub", "example")

ENTRY_SCRIPT = '''"""Train this nbtune recipe (written by Session.export_recipe); its settings are in recipe.json.

    python train.py                                            # one process (one GPU, or the CPU)
    torchrun --nproc_per_node 4 train.py                       # 4 GPUs on this machine, DDP
    accelerate launch --multi_gpu --num_processes 4 train.py   # the same through accelerate
    torchrun --nproc_per_node 4 train.py --strategy fsdp       # shard a model that does not fit one GPU
    accelerate launch --use_fsdp --num_processes 4 train.py    # FSDP chosen through accelerate

The run goes to output/runs/<run id>/ (run.json, metrics.jsonl, checkpoints/), the layout of a notebook run:
bring it back with Session.attach_run(...). `python train.py --help` lists the options.
"""

import sys
from pathlib import Path

from nbtune.recipe import main

if __name__ == "__main__":
    sys.exit(main([str(Path(__file__).resolve().parent), *sys.argv[1:]]))
'''


def _now() -> str:
    return _dt.datetime.now().isoformat(timespec="seconds")


# ---------------------------------------------------------------------------- fingerprints


def tokens_fingerprint(tokens: Any) -> str:
    """SHA-256 of every split's token ids and loss masks: equal fingerprints mean equal training data."""
    import numpy as np

    digest = hashlib.sha256()
    for split in ("train", "validation"):
        table = tokens[split].with_format("arrow")[:]  # honours select() index mappings
        digest.update(f"{split}:{table.num_rows};".encode())
        for name in ("input_ids", "loss_mask"):
            values = table.column(name).combine_chunks()
            digest.update(np.asarray(values.value_lengths(), dtype=np.int64).tobytes())
            digest.update(np.asarray(values.flatten(), dtype=np.int64).tobytes())
    return digest.hexdigest()


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """SHA-256 of a tokenizer's vocabulary and chat template."""
    text = json.dumps([sorted(tokenizer.get_vocab().items()), getattr(tokenizer, "chat_template", None)])
    return hashlib.sha256(text.encode()).hexdigest()


# ---------------------------------------------------------------------------- export


def _source_entry(source: dict[str, Any]) -> dict[str, Any] | None:
    """How to read a loaded source again, or None when only a copy of its rows can bring it back."""
    origin = source["origin"]
    kind = origin.get("kind")
    entry: dict[str, Any] = {"kind": kind, "format": source["format"], "mapping": source["mapping"]}
    if kind == "path":
        return {**entry, "path": origin["paths"][0], "file_type": origin.get("file_type")}
    if kind == "folder":
        return {**entry, "path": str(Path(origin["path"]).expanduser().resolve())}
    if kind == "glob":
        pattern = Path(origin["pattern"]).expanduser()
        return {**entry, "path": str(pattern if pattern.is_absolute() else Path.cwd() / pattern)}
    if kind == "hub":
        return {**entry, "path": origin["id"], "split": origin.get("split")}
    if kind == "example":
        return {**entry, "name": origin["name"]}
    return None


def _data_section(session: Any, data: str) -> tuple[list[dict[str, Any]], bool]:
    """The recipe's sources, and whether the loaded rows must be copied into the recipe."""
    entries = [_source_entry(s) for s in session.sources]
    rereadable = all(e is not None for e in entries)
    if data not in ("auto", "copy", "refer"):
        raise ConfigError(f"data={data!r} is not a valid choice", column="data",
                          fix="use 'auto' (copy rows only when a source cannot be read again), 'copy' or 'refer'")
    if data == "refer" and not rereadable:
        kinds = sorted({s["origin"].get("kind") for s, e in zip(session.sources, entries, strict=True) if e is None})
        raise DataError(f"a {', '.join(kinds)} source cannot be read again by another process",
                        fix="use data='auto' or data='copy' to put the loaded rows into the recipe")
    copy = data == "copy" or not rereadable
    chat = session.format != "text"
    if copy:
        return [{"kind": "rows", "path": ROWS_FILE, "format": "chat" if chat else "text"}], True
    return entries, False  # type: ignore[return-value]


def _write_rows(dataset: Any, path: Path, clean: Any = None) -> None:
    """The loaded rows, in row-id order, one canonical JSON object a line (text or messages).

    With a cleaning recipe that masks PII, each row is written as the recipe's transforms leave it (masked),
    never the original: the transforms are idempotent, so the recipe's cleaning gives the same rows again.
    """
    from nbtune.data import column

    row_ids = column(dataset, "row_id")
    if row_ids != list(range(len(row_ids))):
        raise DataError("the loaded rows' ids are not 0..n-1, so a copy would not keep the train/validation split",
                        fix="load the data again (s.load(...)) and export the recipe right after")
    name = "text" if "text" in dataset.column_names else "messages"
    values = column(dataset, name)
    if clean is not None and clean.mask_pii:
        from nbtune.data.clean import transform_rows

        values = transform_rows(values, clean, name)
    lines = (json.dumps({name: value}, ensure_ascii=False) for value in values)
    atomic_write_text(path, "\n".join(lines) + "\n")


def _train_settings(session: Any, overrides: dict[str, Any]) -> dict[str, Any]:
    """The latest run's training settings (or the defaults), with `overrides`; always in the foreground."""
    from nbtune.config import TrainConfig

    base = TrainConfig.from_dict(session.runs[-1]["config"]) if session.runs else TrainConfig()
    merged = base.replace(**overrides)
    return merged.replace(background=False).to_dict()


def recipe_dict(session: Any, *, data: str, strategy: str, train: dict[str, Any]) -> tuple[dict, bool]:
    """The recipe.json of a session (and whether its rows must be copied)."""
    sources, copy = _data_section(session, data)
    scratch = session.model_settings.get("kind") == "scratch"
    recipe = {
        "nbtune_recipe": RECIPE_VERSION,
        "name": session.workdir.name,
        "created": _now(),
        "data": {"format": session.format, "sources": sources},
        "split": session.split_config.to_dict(),
        "clean": session.clean_config.to_dict() if session.clean_applied and session.clean_config else None,
        "tokenizer": {"config": session.tokenizer_config.to_dict(), "folder": TOKENIZER_DIR if scratch else None,
                      "fingerprint": tokenizer_fingerprint(session.tokenizer)},
        "model": session.model_settings,
        "train": train,
        "distributed": {"strategy": strategy},
        "expected": {"tokens_fingerprint": tokens_fingerprint(session.tokens),
                     "rows": {"train": len(session.tokens["train"]), "validation": len(session.tokens["validation"])}},
    }
    return recipe, copy


def _check_exportable(session: Any) -> None:
    from nbtune.data.formats import PREFERENCE_FORMATS

    columns = session.raw_dataset.column_names if session.raw_dataset is not None else []
    if session.format in PREFERENCE_FORMATS or "tools" in columns:
        what = f"{session.format} data" if session.format in PREFERENCE_FORMATS else "chat data with tools"
        raise StageOrderError(f"export_recipe() does not carry {what} yet: its recipe would lose the extra "
                              "columns (preference answers, the sft= choice, tool schemas), so nothing was written. "
                              "Train it in the notebook (s.train()), or load the rows as plain chat first")
    if session.tokens is None or session.tokenizer is None:
        raise StageOrderError("export_recipe() needs tokens: call s.load(...) and s.tokenize() first")
    if not session.model_settings:
        raise StageOrderError("export_recipe() needs a model: call s.new_model() (from scratch) or "
                              "s.use_model('default', method='lora') (fine-tune) first")


def _check_target(target: Path) -> None:
    """Never overwrite a folder that is not a recipe (it may hold the user's files)."""
    if target.exists() and (not target.is_dir() or (any(target.iterdir()) and not (target / RECIPE_FILE).exists())):
        raise ConfigError("this folder exists and is not an nbtune recipe; nothing was written", path=target,
                          column="directory", fix="pass a new or empty folder (an old recipe folder is replaced)")


def export_recipe(session: Any, target: Path, *, data: str = "auto", strategy: str = "ddp",
                  train_overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write (or rewrite) the recipe folder; returns recipe.json's content."""
    from nbtune.train.distributed import STRATEGIES

    _check_exportable(session)
    if strategy not in STRATEGIES:
        raise ConfigError(f"strategy={strategy!r} is not a valid choice", column="strategy",
                          fix="use 'ddp' (every GPU holds the model) or 'fsdp' (the model is sharded)")
    _check_target(target)
    recipe, copy = recipe_dict(session, data=data, strategy=strategy,
                               train=_train_settings(session, train_overrides or {}))

    # file by file, recipe.json last: runs already trained in <recipe>/output stay where they are
    if recipe["tokenizer"]["folder"]:
        atomic_replace_dir(lambda tmp: session.tokenizer.save_pretrained(str(tmp)), target / TOKENIZER_DIR)
    else:
        shutil.rmtree(target / TOKENIZER_DIR, ignore_errors=True)
    if copy:
        _write_rows(session.raw_dataset, target / ROWS_FILE, session.clean_config if session.clean_applied else None)
    else:
        (target / ROWS_FILE).unlink(missing_ok=True)
    atomic_write_text(target / "train.py", ENTRY_SCRIPT)
    atomic_write_json(target / RECIPE_FILE, recipe)
    return recipe


# ---------------------------------------------------------------------------- rebuild


def read_recipe(folder: Path) -> dict[str, Any]:
    path = Path(folder) / RECIPE_FILE
    if not path.is_file():
        raise DataError(f"no {RECIPE_FILE} here", path=Path(folder),
                        fix="pass the folder written by Session.export_recipe(...)")
    try:
        recipe = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DataError(f"{RECIPE_FILE} is not valid JSON: {exc.msg}", path=path, line=exc.lineno, column=exc.colno,
                        fix="fix the edit, or export the recipe again") from None
    if recipe.get("nbtune_recipe") != RECIPE_VERSION:
        raise DataError(f"{RECIPE_FILE} is not an nbtune recipe of version {RECIPE_VERSION}", path=path,
                        fix="export the recipe again with this nbtune version")
    return recipe


def _load_source(session: Any, entry: dict[str, Any], folder: Path, append: bool) -> None:
    kind = entry["kind"]
    if kind == "example":
        session.load_example(entry["name"], append=append)
    elif kind == "rows":
        session.load(str(folder / entry["path"]), format=entry["format"], append=append)
    else:
        session.load(entry["path"], format=entry["format"], mapping=entry["mapping"] or None,
                     file_type=entry.get("file_type"), split=entry.get("split"), append=append)


def build_session(folder: Path, workdir: Path, *, trust_remote_code: bool = False,
                  allow_pickle: bool = False) -> Any:
    """Every stage of the recipe, replayed into a Session that writes nothing (autosave off).

    recipe.json never grants trust by itself: a model or tokenizer it names with trust_remote_code or
    allow_pickle is loaded only when the caller passes the same flag (train.py --trust-remote-code).
    """
    from nbtune.config import CleanConfig, PretrainedModelConfig, ScratchModelConfig, TokenizerConfig
    from nbtune.session import Session, check_trust

    recipe = read_recipe(folder)
    path = Path(folder) / RECIPE_FILE
    granted = {"trust_remote_code": trust_remote_code, "allow_pickle": allow_pickle}
    model = recipe["model"]
    for section, what in ((recipe["tokenizer"]["config"], "recipe.json's tokenizer settings"),
                          (model.get("config") or {}, "recipe.json's model settings")):
        check_trust(section, granted, what=what, where=path,
                    how=lambda flags: "add " + " ".join("--" + f.replace("_", "-") for f in flags) + " to train.py "
                    "(run_recipe(..., " + ", ".join(f"{f}=True" for f in flags) + ") from Python)")
    session = Session.in_memory(workdir, **granted)
    for i, entry in enumerate(recipe["data"]["sources"]):
        _load_source(session, entry, folder, append=i > 0)
    session.split(**recipe["split"])
    if recipe["clean"] is not None:
        session.clean(CleanConfig.from_dict(recipe["clean"], path=path))
    settings = TokenizerConfig.from_dict(recipe["tokenizer"]["config"], path=path)
    if model["kind"] == "scratch":
        from nbtune.data.tokens import load_pretrained_tokenizer

        tokenizer = load_pretrained_tokenizer(str(folder / recipe["tokenizer"]["folder"]))
        session.tokenize_with(tokenizer, settings, name="the recipe's tokenizer")
        session.new_model(ScratchModelConfig.from_dict(model["config"], path=path))
    else:
        session.tokenizer_config = settings  # use_model re-tokenizes with the model's own tokenizer
        session.use_model(config=PretrainedModelConfig.from_dict(model["config"], path=path))
    return session


# ---------------------------------------------------------------------------- run


@contextlib.contextmanager
def _local_main_first(info: Any) -> Iterator[None]:
    """Let each machine's first process fill the caches (converted models, hub downloads) before the others read."""
    from nbtune.train import distributed

    if info is not None and info.local_rank != 0:
        distributed.barrier()
    yield
    if info is not None and info.local_rank == 0:
        distributed.barrier()


def _check_data(session: Any, recipe: dict[str, Any], info: Any) -> str:
    """The tokens' fingerprint, the same on every rank; a note when it differs from the notebook's."""
    from nbtune.train import distributed

    fingerprint = tokens_fingerprint(session.tokens)
    if info is not None:
        distributed.agree(fingerprint, "the tokenized data",
                          fix="every process must read the same sources: put them on a filesystem all machines "
                              "see, or use data='copy' when exporting the recipe")
    if fingerprint != recipe["expected"]["tokens_fingerprint"] and (info is None or info.is_main):
        print("nbtune: note: the tokenized data differ from the notebook's at export time (the sources changed, or "
              "recipe.json was edited); training goes on with the data as they are now", file=sys.stderr)
    return fingerprint


def _run_record(session: Any, recipe: dict[str, Any], settings: Any, run_id: str, info: Any, backend: str | None,
                fingerprint: str, folder: Path) -> dict[str, Any]:
    """The run's record, as a notebook run's, plus where it came from and how it was distributed."""
    lm = session.model
    return {"id": run_id, "dir": f"runs/{run_id}", "method": lm.method, "model": session.model_settings,
            "config": settings.to_dict(), "status": "created", "created": _now(), "checkpoint": None,
            "recipe": {"name": recipe["name"], "folder": str(folder)},
            "distributed": {"strategy": info.strategy, "world_size": info.world_size, "backend": backend}
            if info is not None else None,
            "data_fingerprint": fingerprint, "tokenizer_fingerprint": tokenizer_fingerprint(session.tokenizer)}


def _checkpoint_to_resume(run_dir: Path, resume: bool, info: Any) -> Path | None:
    from nbtune.train.checkpoint import list_checkpoints

    found = list_checkpoints(run_dir)
    if resume:
        if not found:
            raise StageOrderError(f"--resume: there is no checkpoint in {run_dir} to continue from; run without "
                                  "--resume to start the run, or pass the --out / --run-id it was started with")
        return found[-1]
    if (info is None or info.is_main) and (found or (run_dir / "metrics.jsonl").exists()):
        raise ConfigError("this run folder already holds a run; nothing was changed", path=run_dir,
                          fix="continue it with --resume, or start a new one with --run-id NAME or --out FOLDER")
    return None


def _bus(run_dir: Path, info: Any, progress: bool, settings: Any, record: dict[str, Any]) -> Any:
    """Rank 0 records metrics (and shows progress, and feeds log_to's trackers); the other ranks' events go nowhere."""
    from nbtune.events import EventBus
    from nbtune.train import trackers
    from nbtune.train.factory import make_bus
    from nbtune.train.listeners import ConsoleProgress

    if info is not None and not info.is_main:
        return EventBus()
    bus, _ = make_bus(run_dir, [*trackers.listeners_for(settings, run_dir, record),
                                *([ConsoleProgress()] if progress else [])], recorder=False)
    return bus


def _method(recipe: dict[str, Any]) -> str:
    model = recipe["model"]
    return "scratch" if model["kind"] == "scratch" else model["config"]["method"]


def _strategy(recipe: dict[str, Any], flag: str | None) -> str | None:
    """The --strategy flag, else recipe.json's "fsdp"; None lets `accelerate launch --use_fsdp` choose."""
    chosen = recipe["distributed"]["strategy"]
    return flag or (chosen if chosen != "ddp" else None)


def run_recipe(folder: str | Path, *, out: str | Path | None = None, run_id: str | None = None,
               steps: int | None = None, resume: bool = False, strategy: str | None = None,
               progress: bool = True, trust_remote_code: bool = False, allow_pickle: bool = False) -> str:
    """Train a recipe in this process, as one rank of a torchrun / accelerate job or alone; returns the status.

    `trust_remote_code` / `allow_pickle`: allow what recipe.json's model asks for (never taken from the file).
    """
    from nbtune.config import TrainConfig
    from nbtune.train import distributed

    folder = Path(folder).expanduser().resolve()
    recipe = read_recipe(folder)
    workdir = Path(out).expanduser().resolve() if out else folder / "output"
    run_id = run_id or f"{recipe['name']}-{_method(recipe)}"
    settings = TrainConfig.from_dict(recipe["train"], path=folder / RECIPE_FILE).replace(
        background=False, **({"steps": steps} if steps else {})).for_method(_method(recipe))
    info = distributed.from_env(_strategy(recipe, strategy))
    checkpoint = _checkpoint_to_resume(workdir / "runs" / run_id, resume, info)  # before the slow part
    backend = distributed.init(info) if info is not None else None
    if info is not None and not info.is_main:
        import datasets

        datasets.disable_progress_bars()  # one copy of each progress bar is enough
    try:
        with _local_main_first(info):
            session = build_session(folder, workdir, trust_remote_code=trust_remote_code,
                                    allow_pickle=allow_pickle)
        fingerprint = _check_data(session, recipe, info)
        record = _run_record(session, recipe, settings, run_id, info, backend, fingerprint, folder)
        return _train(session, record, settings, checkpoint, info, progress)
    finally:
        if info is not None:
            distributed.shutdown()


def _train(session: Any, record: dict[str, Any], settings: Any, checkpoint: Path | None, info: Any,
           progress: bool) -> str:
    """The notebook's engine on the rebuilt session: distributed, continued from `checkpoint` if given."""
    from nbtune.train.factory import session_engine

    run_dir = session.workdir / record["dir"]
    with _run_lock(run_dir, info):
        if checkpoint is None and (info is None or info.is_main):
            runs.write_run_file(session, record)
        engine = session_engine(session, record, settings, _bus(run_dir, info, progress, settings, record))
        if info is not None:
            engine.distribute(info)
        if checkpoint is not None:
            engine.restore(checkpoint)
        status = engine.run()
    if engine.error is not None:
        raise engine.error
    return status


@contextlib.contextmanager
def _run_lock(run_dir: Path, info: Any) -> Iterator[None]:
    """The first process holds the run folder's lock while the job trains, as a notebook run does: a notebook
    cannot resume (or another job start) the same run meanwhile."""
    from nbtune.store import FileLock, describe_holder
    from nbtune.train.run import RUN_LOCK

    if info is not None and not info.is_main:
        yield
        return
    lock = FileLock(run_dir / RUN_LOCK)
    holder = lock.acquire()
    if holder is not None:
        raise StageOrderError(f"{run_dir.name} is being trained right now by {describe_holder(holder)}; nothing "
                              "was changed")
    try:
        yield
    finally:
        lock.release()


def main(argv: list[str] | None = None) -> int:
    """`train.py`'s command line."""
    parser = argparse.ArgumentParser(prog="train.py", description="Train an nbtune recipe (one process, or one rank "
                                     "of torchrun / accelerate launch).")
    parser.add_argument("recipe", help="the recipe folder (train.py passes its own)")
    parser.add_argument("--out", help="where runs/<run id>/ goes (default: <recipe>/output)")
    parser.add_argument("--run-id", help="the run's name (default: <recipe name>-<method>)")
    parser.add_argument("--steps", type=int, help="optimizer steps (overrides recipe.json's train settings)")
    parser.add_argument("--resume", action="store_true", help="continue the run from its latest checkpoint")
    parser.add_argument("--strategy", choices=["ddp", "fsdp"], help="ddp (default) or fsdp (shards the model); "
                        "`accelerate launch --use_fsdp` selects fsdp too")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--trust-remote-code", action="store_true", help="let the model's repository run its own "
                        "Python code, if recipe.json asks for it (only for sources you trust)")
    parser.add_argument("--allow-pickle", action="store_true", help="allow pickle weights (.bin/.pt), if "
                        "recipe.json asks for it (unpickling can run code)")
    args = parser.parse_args(argv)
    status = run_recipe(args.recipe, out=args.out, run_id=args.run_id, steps=args.steps, resume=args.resume,
                        strategy=args.strategy, progress=not args.no_progress,
                        trust_remote_code=args.trust_remote_code, allow_pickle=args.allow_pickle)
    return 0 if status == "finished" else 1


# ---------------------------------------------------------------------------- back in the notebook


def find_run_dir(path: str | Path) -> Path:
    """A run folder, given it or a recipe output folder holding exactly one run."""
    folder = Path(path).expanduser().resolve()
    if (folder / "run.json").is_file() or not (folder / "runs").is_dir():
        return folder  # load_run() says what is wrong, if anything
    runs = sorted(p for p in (folder / "runs").iterdir() if (p / "run.json").is_file())
    if len(runs) != 1:
        names = ", ".join(p.name for p in runs) or "none"
        raise DataError(f"this folder holds {len(runs)} runs ({names})", path=folder,
                        fix="pass one run folder, e.g. <out>/runs/<run id>")
    return runs[0]


def attached_id(run_id: str, taken: list[str]) -> str:
    """A session-unique id that `Session.train()`'s run-NNN-method ids can never collide with."""
    import re

    candidate = f"attached-{run_id}" if re.match(r"^run-\d{3}-", run_id) else run_id
    n, unique = 1, candidate
    while unique in taken:
        n += 1
        unique = f"{candidate}-{n}"
    return unique


def pick_checkpoint(run: Any, which: Any) -> Path:
    """'latest', 'best' (lowest validation loss) or a step number -> a checkpoint folder of `run`."""
    from nbtune.eval.compare import best_checkpoint

    if not run.checkpoints:
        raise DataError("this run has no checkpoint", path=run.dir, fix="attach it without checkpoint=...")
    if which == "latest":
        return run.checkpoints[-1]
    if which == "best":
        best = best_checkpoint(run)["checkpoint"]
        return Path(best) if best else run.checkpoints[-1]
    if isinstance(which, int) and not isinstance(which, bool):
        for path in run.checkpoints:
            if path.name == f"step-{which:06d}":
                return path
    kept = ", ".join(p.name for p in run.checkpoints)
    raise ConfigError(f"checkpoint={which!r}: no such checkpoint (kept: {kept})", column="checkpoint",
                      fix="use 'latest', 'best' or the step number of a kept checkpoint")


# ---------------------------------------------------------------------------- notebook launcher


def launch(folder: str | Path, num_processes: int, **options: Any) -> None:
    """Train a recipe on this machine's GPUs from a notebook (accelerate's `notebook_launcher`, DDP).

    CUDA must not have been touched in the notebook's process yet (the
    processes are forked), so call this in a fresh kernel, before any model
    is on the GPU; `options` go to `run_recipe`. The processes print nothing: follow the run in
    `<out>/runs/<run id>/metrics.jsonl`, or attach it when it is done.
    """
    from accelerate import notebook_launcher

    notebook_launcher(_launched, args=(str(folder), options), num_processes=num_processes)


def _launched(folder: str, options: dict[str, Any]) -> None:
    """One forked process: the kernel's widgets and output streams cannot be reached from here, so no progress bars."""
    import datasets

    datasets.disable_progress_bars()
    run_recipe(folder, **{"progress": False, **options})
