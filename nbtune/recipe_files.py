"""A recipe folder's files: written from a Session, read back, fingerprinted; and the runs it trained.

`Session.export_recipe(dir)` writes

    recipe.json      data sources, cleaning recipe, split, tokenizer, model and training settings, seeds
    tokenizer/       the session's tokenizer (from-scratch models): every process uses this very
                     vocabulary instead of training a BPE tokenizer again
    data/rows.jsonl  the loaded rows, only when a source cannot be read again (a list, a DataFrame,
                     a `datasets` object); file, folder, glob, hub and example sources are re-read
    train.py         the entry point: `python train.py`, `torchrun --nproc_per_node N train.py`,
                     `accelerate launch --multi_gpu --num_processes N train.py`

Training a recipe (`train.py` -> `nbtune.recipe.main`) lives in `nbtune.recipe`, which replays the
pipeline in a Session; this module reads a Session's public state but never imports it, so the Session
can delegate its `export_recipe` and `attach_run` here.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

from nbtune.errors import ConfigError, DataError, StageOrderError
from nbtune.storage import atomic_replace_dir, atomic_write_json, atomic_write_text, now

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
        "created": now(),
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




def attach_record(workdir: Path, records: list[dict[str, Any]], run: Any) -> dict[str, Any]:
    """The session's record of an attached run, added to `records` (or updated in place when it is attached
    again)."""
    record = {"dir": str(run.dir), "method": run.method, "model": run.config.get("model") or {},
              "config": run.config.get("config") or {}, "status": run.status,
              "created": run.config.get("created"), "attached": now(),
              "checkpoint": str(run.checkpoints[-1]) if run.checkpoints else None,
              "step": run.steps[-1]["step"] if run.steps else 0}
    for existing in records:
        if (workdir / existing["dir"]).resolve() == run.dir:
            existing.update(status=record["status"], checkpoint=record["checkpoint"], step=record["step"])
            return existing
    record = {"id": attached_id(run.id, [r["id"] for r in records]), **record}
    records.append(record)
    return record


def attach_checks(run: Any, model_settings: dict[str, Any], tokenizer: Any, tokens: Any) -> list[tuple[str, str]]:
    """Does the run match a session's model settings, tokenizer and tokens? What resuming it there needs."""

    def same(value: Any, mine: Any) -> str:
        return "unknown (not recorded)" if value is None else "same as this session's" if value == mine else \
            "different from this session's"

    data = run.config.get("data_fingerprint")
    mine = tokens_fingerprint(tokens) if tokens is not None else None
    return [("model settings", same(run.config.get("model"), model_settings)),
            ("tokenizer", same(run.config.get("tokenizer_fingerprint"),
                               tokenizer_fingerprint(tokenizer) if tokenizer is not None else None)),
            ("training data", same(data, mine) + ("" if data is None or mine is None or data == mine else
                                                  ": a resume here would continue on this session's data"))]


def recipe_report(target: Path, recipe: dict[str, Any], *, loaded_rows: int) -> Any:
    """What `Session.export_recipe` wrote, and the commands that train it (one process, torchrun, accelerate)."""
    from nbtune.viz.data_reports import MessageReport

    sources = recipe["data"]["sources"]
    copied = sources[0]["kind"] == "rows"
    script = target / "train.py"
    return MessageReport("Recipe written", [
        ("folder", str(target)),
        ("data", f"a copy of the {loaded_rows:,} loaded rows ({ROWS_FILE})" if copied else
         f"{len(sources)} source(s) read again by every process (they must exist where it runs)"),
        ("one process", f"python {script}"),
        ("4 GPUs on one machine", f"torchrun --nproc_per_node 4 {script}"),
        ("the same with accelerate", f"accelerate launch --multi_gpu --num_processes 4 {script}"),
        ("model too big for one GPU", f"torchrun --nproc_per_node 4 {script} --strategy fsdp"),
        ("back in the notebook", f"s.attach_run({str(target / 'output')!r})"),
    ])
