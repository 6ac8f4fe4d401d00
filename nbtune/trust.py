"""Permissions that run code from a model's files are given by the caller, in the call, never by a file.

`trust_remote_code` runs the Python code of a model repository, and `allow_pickle` unpickles weights
(which can run code too). A project folder, run.json or recipe.json someone shares may record that a
model needed them; nbtune then refuses to load it until the caller passes the same flag again.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from nbtune.errors import ConfigError

TRUST_FLAGS = ("trust_remote_code", "allow_pickle")


def check_trust(settings: dict[str, Any], granted: dict[str, bool], *, what: str, where: Path | str,
                how: Callable[[list[str]], str]) -> None:
    """Refuse settings read from a file that turn on a trust flag the caller did not pass in this call.

    `how(flags)` says how to allow them (a Session argument, a recipe's command-line flag).
    """
    asked = [flag for flag in TRUST_FLAGS if settings.get(flag)]
    missing = [flag for flag in asked if not granted.get(flag)]
    if not missing:
        return
    source = settings.get("model") or settings.get("tokenizer") or "?"
    raise ConfigError(
        f"{what} ask for {' and '.join(f'{f}=True' for f in missing)} (source {source!r}): that would run code "
        "from the model's files, and nbtune never takes that permission from a saved file", path=where,
        column=missing[0], fix=f"only if you trust {source!r} and whoever wrote this folder: {how(missing)}")
