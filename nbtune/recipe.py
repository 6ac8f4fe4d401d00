"""Training a recipe folder: `train.py`'s command line, one rank of a torchrun / accelerate job, or alone.

A recipe folder (`nbtune.recipe_files`, written by `Session.export_recipe(dir)`) holds the
session's pipeline as settings. `train.py` calls `main()`. Every process rebuilds the same session
(load, split, clean, tokenize, model) with the notebook's own code; the pipeline is
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
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from nbtune import runs
from nbtune.errors import ConfigError, StageOrderError
from nbtune.recipe_files import (
    RECIPE_FILE,
    ROWS_FILE,
    attached_id,
    export_recipe,
    find_run_dir,
    pick_checkpoint,
    read_recipe,
    tokenizer_fingerprint,
    tokens_fingerprint,
)
from nbtune.storage import now

__all__ = ["RECIPE_FILE", "ROWS_FILE", "attached_id", "build_session", "export_recipe", "find_run_dir", "launch",
           "main", "pick_checkpoint", "read_recipe", "run_recipe", "tokenizer_fingerprint", "tokens_fingerprint"]


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
    from nbtune.session import Session
    from nbtune.trust import check_trust

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
            "config": settings.to_dict(), "status": "created", "created": now(), "checkpoint": None,
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
    from nbtune.train.strategy import for_job

    run_dir = session.workdir / record["dir"]
    with _run_lock(run_dir, info):
        if checkpoint is None and (info is None or info.is_main):
            runs.write_run_file(session, record)
        engine = session_engine(session, record, settings, _bus(run_dir, info, progress, settings, record),
                                strategy=for_job(info) if info is not None else None)
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
