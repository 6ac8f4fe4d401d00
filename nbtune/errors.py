"""Errors nbtune raises on purpose.

Every error a user can cause says three things: what was wrong, where (file,
line, column, field or column name) and what to do about it. They are
subclasses of the built-in exceptions people already catch (`ValueError`), so
existing `except ValueError` code keeps working.
"""

from __future__ import annotations

from os import PathLike


class NbtuneError(Exception):
    """Base class of every error nbtune raises deliberately.

    `what`, `where()` and `fix` are the three parts a user needs; errors that do
    not know a location or a fix leave them empty and say it all in the message.
    """

    what: str | None = None
    fix: str | None = None

    def where(self) -> str:
        """Where it happened (file, line, column or setting), or '' when unknown."""
        return ""


class _LocatedError(NbtuneError):
    """An error that knows where it happened and how to fix it."""

    column_label = "column"  # what `column` names: a data column, or a setting (ConfigError)

    def __init__(
        self,
        what: str,
        *,
        path: str | PathLike | None = None,
        line: int | None = None,
        column: int | str | None = None,
        fix: str | None = None,
    ) -> None:
        self.what = what
        self.path = str(path) if path is not None else None
        self.line = line
        self.column = column
        self.fix = fix
        super().__init__(self._message())

    def where(self) -> str:
        parts = []
        if self.path:
            parts.append(self.path)
        if self.line is not None:
            parts.append(f"line {self.line}")
        if self.column is not None:
            shown = repr(self.column) if isinstance(self.column, str) else self.column
            parts.append(f"{self.column_label} {shown}")
        return ", ".join(parts)

    def _message(self) -> str:
        where = self.where()
        text = f"{where}: {self.what}" if where else self.what
        if self.fix:
            text = f"{text}\n  What to do: {self.fix}"
        return text


class DataError(_LocatedError, ValueError):
    """The user's data cannot be used as it is (bad file, bad column, empty...)."""


class ConfigError(_LocatedError, ValueError):
    """A setting is out of range or inconsistent; `column` names the setting."""

    column_label = "setting"


class StageOrderError(NbtuneError, RuntimeError):
    """A stage was called before the stage it needs (e.g. clean before load)."""
