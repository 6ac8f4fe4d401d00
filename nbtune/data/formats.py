"""Which kind of training data a table holds, and how it becomes canonical rows.

Four formats are recognised (see `nbtune.data` for the canonical row schema):

* ``"text"``: one document per row (a column such as ``text`` / ``content`` /
  ``body``, or the only string column);
* ``"instruction"``: alpaca-style ``instruction`` (+ optional ``input``) and
  ``output`` / ``response`` / ``answer``;
* ``"prompt_completion"``: pairs such as ``prompt``/``completion``,
  ``question``/``answer`` or ``input``/``target``;
* ``"chat"``: a list of messages per row, OpenAI style (``role``/``content``),
  ShareGPT style (``from``/``value`` with ``human``/``gpt``/``system``) or a plain
  list of strings that alternates user and assistant.

`detect_format` looks only at column names and a small sample of rows, so it is
cheap and its answer can be explained in one sentence (`FormatInfo.reason`).
`resolve_format` applies the user's overrides (``text_column=``, ``format=``,
``mapping=``) and checks them against the real columns, so a typo is reported
with the closest column name instead of failing later. `to_canonical` converts
records to the canonical columns and reports bad values with the file and line
they came from.

Only the standard library is used here: this module is imported by
`nbtune.data.load` and must stay cheap to import.
"""

from __future__ import annotations

import difflib
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from nbtune.errors import DataError

FORMATS = ("text", "instruction", "prompt_completion", "chat")

#: Canonical roles of each format: (required, optional).
ROLES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "text": (("text",), ()),
    "instruction": (("instruction", "output"), ("input",)),
    "prompt_completion": (("prompt", "completion"), ()),
    "chat": (("messages",), ()),
}

TEXT_NAMES = (
    "text", "content", "contents", "body", "document", "doc", "story", "article", "passage",
    "paragraph", "sentence", "markdown", "raw", "raw_text", "full_text", "review", "abstract",
)
CHAT_NAMES = ("messages", "conversations", "conversation", "dialog", "dialogue", "dialogs", "chat", "turns")
INSTRUCTION_NAMES = ("instruction", "instructions")
INSTRUCTION_INPUT_NAMES = ("input", "context")
INSTRUCTION_OUTPUT_NAMES = ("output", "response", "answer", "completion")
#: (prompt column, completion column) pairs, most specific first.
PROMPT_COMPLETION_PAIRS = (
    ("prompt", "completion"),
    ("prompt", "response"),
    ("prompt", "output"),
    ("question", "answer"),
    ("question", "response"),
    ("query", "response"),
    ("query", "answer"),
    ("input", "target"),
    ("input", "output"),
    ("source", "target"),
    ("src", "tgt"),
)

#: ShareGPT / OpenAI role names -> canonical role.
ROLE_ALIASES = {
    "system": "system",
    "user": "user",
    "human": "user",
    "assistant": "assistant",
    "gpt": "assistant",
    "bot": "assistant",
    "model": "assistant",
    "chatgpt": "assistant",
}


@dataclass
class FormatInfo:
    """What the data is and which source column plays which canonical role."""

    format: str
    mapping: dict[str, str]
    reason: str


# --------------------------------------------------------------------------- detection


def _find(columns: Sequence[str], names: Sequence[str]) -> str | None:
    """The first column whose name (case-insensitive) is one of `names`, in the order of `names`."""
    lowered = {}
    for col in columns:
        lowered.setdefault(col.lower().strip(), col)
    for name in names:
        if name in lowered:
            return lowered[name]
    return None


def _values(sample: list[dict], column: str) -> list[Any]:
    """The non-missing values of `column` in the sample."""
    out = []
    for rec in sample:
        value = rec.get(column) if isinstance(rec, dict) else None
        if value is None or (isinstance(value, float) and math.isnan(value)):
            continue
        out.append(_plain(value))
    return out


def _plain(value: Any) -> Any:
    """numpy arrays and scalars as plain Python values (lists, ints...); other values unchanged."""
    if isinstance(value, (str, bytes, dict, list, int, float, bool)) or value is None:
        return value
    tolist = getattr(value, "tolist", None)
    return tolist() if callable(tolist) else value


def _maybe_json_list(value: Any) -> Any:
    """A string that holds a JSON list (a messages column saved in a CSV) as the list; else unchanged."""
    if isinstance(value, str) and value.lstrip().startswith("["):
        try:
            parsed = json.loads(value)
        except ValueError:
            return value
        if isinstance(parsed, list):
            return parsed
    return value


def _chat_style(values: list[Any]) -> str | None:
    """'openai', 'sharegpt' or 'strings' when the values look like message lists, else None."""
    styles = set()
    for value in values:
        value = _maybe_json_list(value)
        if not isinstance(value, list):
            return None
        for msg in value:
            msg = _plain(msg)
            if isinstance(msg, str):
                styles.add("strings")
            elif isinstance(msg, dict) and ("role" in msg and "content" in msg):
                styles.add("openai")
            elif isinstance(msg, dict) and ("from" in msg and "value" in msg):
                styles.add("sharegpt")
            else:
                return None
    if len(styles) == 1:
        return styles.pop()
    return None


def _is_texty(values: list[Any]) -> bool:
    """True when most sampled values are strings (a few numbers or gaps are allowed)."""
    if not values:
        return False
    strings = sum(isinstance(v, str) for v in values)
    return strings >= max(1, 0.8 * len(values))


def _mean_len(values: list[Any]) -> float:
    strings = [v for v in values if isinstance(v, str)]
    return sum(map(len, strings)) / len(strings) if strings else 0.0


def _detect_chat(columns: list[str], sample: list[dict]) -> FormatInfo | None:
    named = _find(columns, CHAT_NAMES)
    candidates = ([named] if named else []) + [c for c in columns if c != named]
    for col in candidates:
        values = _values(sample, col)
        if not values:
            continue
        style = _chat_style(values)
        if style is None or (style == "strings" and col != named):
            # a list of strings is a conversation only in a column named like one
            continue
        why = {
            "openai": "holds OpenAI-style messages (role/content)",
            "sharegpt": "holds ShareGPT-style turns (from/value)",
            "strings": "holds lists of strings, read as alternating user/assistant turns",
        }[style]
        return FormatInfo("chat", {"messages": col}, f"column {col!r} {why}")
    return None


def _detect_instruction(columns: list[str], sample: list[dict]) -> FormatInfo | None:
    instruction = _find(columns, INSTRUCTION_NAMES)
    output = _find(columns, INSTRUCTION_OUTPUT_NAMES)
    if not instruction or not output:
        return None
    mapping = {"instruction": instruction}
    inp = _find(columns, INSTRUCTION_INPUT_NAMES)
    if inp:
        mapping["input"] = inp
    mapping["output"] = output
    names = "/".join(mapping.values())
    return FormatInfo("instruction", mapping, f"columns {names} look alpaca-style (instruction data)")


def _detect_prompt_completion(columns: list[str], sample: list[dict]) -> FormatInfo | None:
    for prompt_name, completion_name in PROMPT_COMPLETION_PAIRS:
        prompt = _find(columns, (prompt_name,))
        completion = _find(columns, (completion_name,))
        if prompt and completion:
            return FormatInfo(
                "prompt_completion",
                {"prompt": prompt, "completion": completion},
                f"columns {prompt}/{completion} look like prompt/completion pairs",
            )
    return None


def _detect_text(columns: list[str], sample: list[dict]) -> FormatInfo | None:
    named = _find(columns, TEXT_NAMES)
    # a column named like text needs only some text: bad values in it are then reported with their line
    if named and any(isinstance(v, str) for v in _values(sample, named)):
        return FormatInfo("text", {"text": named}, f"column {named!r} holds plain text")
    texty = [c for c in columns if _is_texty(_values(sample, c))]
    if len(texty) == 1:
        return FormatInfo("text", {"text": texty[0]}, f"{texty[0]!r} is the only text column")
    if texty:
        best = max(texty, key=lambda c: _mean_len(_values(sample, c)))
        others = ", ".join(repr(c) for c in texty if c != best)
        return FormatInfo(
            "text", {"text": best},
            f"no column is named like text, so {best!r} was picked as the text column with the longest "
            f"values (others: {others}); pass text_column= to choose another",
        )
    return None


_DETECTORS = {
    "chat": _detect_chat,
    "instruction": _detect_instruction,
    "prompt_completion": _detect_prompt_completion,
    "text": _detect_text,
}


def detect_format(columns: list[str], sample: list[dict]) -> FormatInfo:
    """Guess the format from column names and a few rows; raise DataError when nothing fits.

    Order: chat (a column of message lists), instruction (alpaca), prompt/completion
    pairs, then plain text (a column named like text, the only string column, or
    else the string column with the longest values, which the reason says).
    """
    columns = [str(c) for c in columns]
    for detector in _DETECTORS.values():
        info = detector(columns, sample)
        if info is not None:
            return info
    raise DataError(
        f"found no column with text in it (columns: {_listing(columns)})",
        fix="pass text_column='...' for plain text, or format=/mapping= to say which columns to use",
    )


# --------------------------------------------------------------------------- overrides


def _listing(columns: Sequence[str]) -> str:
    return ", ".join(repr(c) for c in columns) if columns else "none"


def check_column(name: str, columns: Sequence[str], *, what: str, path: str | None = None) -> None:
    """Raise DataError when `name` is not a column, listing the columns and the closest match."""
    if name in columns:
        return
    close = difflib.get_close_matches(name, list(columns), n=1, cutoff=0.5)
    if not close:
        lowered = {c.lower(): c for c in columns}
        if name.lower() in lowered:
            close = [lowered[name.lower()]]
    hint = f"did you mean {close[0]!r}? " if close else ""
    raise DataError(
        f"{what} {name!r} is not a column of the data (available columns: {_listing(columns)})",
        path=path,
        column=name,
        fix=f"{hint}use one of the available columns",
    )


def _format_from_mapping(mapping: dict[str, str]) -> str | None:
    keys = set(mapping)
    for fmt, (required, optional) in ROLES.items():
        if keys and keys <= set(required) | set(optional) and set(required) <= keys:
            return fmt
    return None


def resolve_format(
    columns: list[str],
    sample: list[dict],
    *,
    text_column: str | None = None,
    format: str | None = None,
    mapping: dict[str, str] | None = None,
    path: str | None = None,
) -> FormatInfo:
    """The format to use: detected, or as the user forced it (each override is checked).

    * ``text_column='body'`` means plain text from column ``body`` (with
      ``format='chat'`` it names the messages column instead);
    * ``format=`` alone restricts detection to that format;
    * ``mapping=`` (canonical role -> column) is used as given; the format is
      inferred from its keys when ``format`` is not given.
    """
    columns = [str(c) for c in columns]
    if format is not None and format not in FORMATS:
        close = difflib.get_close_matches(str(format), FORMATS, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise DataError(
            f"unknown format {format!r}",
            path=path,
            fix=f"{hint}use one of {', '.join(map(repr, FORMATS))} (columns of the data: {_listing(columns)})",
        )
    if text_column is not None:
        if format in (None, "text"):
            mapping = {**(mapping or {}), "text": text_column}
            format = "text"
        elif format == "chat":
            mapping = {**(mapping or {}), "messages": text_column}
        else:
            raise DataError(
                f"text_column= is for plain text or chat data, not format={format!r}",
                path=path,
                fix=f"pass mapping= instead, e.g. {_example_mapping(format)} (columns: {_listing(columns)})",
            )
    if mapping:
        return _forced_mapping(columns, mapping, format, path=path, text_column=text_column)
    if format is not None:
        info = _DETECTORS[format](columns, sample)
        if info is None:
            raise DataError(
                f"format={format!r} was asked for, but no columns fit it (columns: {_listing(columns)})",
                path=path,
                fix=f"say which columns to use with mapping=, e.g. {_example_mapping(format)}",
            )
        info.reason = f"format={format!r} was given; {info.reason}"
        return info
    try:
        return detect_format(columns, sample)
    except DataError as exc:
        raise DataError(exc.what, path=path, fix=exc.fix) from None


def _example_mapping(format: str) -> str:
    required, optional = ROLES[format]
    return "{" + ", ".join(f"{r!r}: '<column>'" for r in required + optional) + "}"


def _forced_mapping(
    columns: list[str], mapping: dict[str, str], format: str | None, *, path: str | None, text_column: str | None
) -> FormatInfo:
    """Check a user-given mapping against the format's roles and the real columns."""
    if format is None:
        format = _format_from_mapping(mapping)
        if format is None:
            raise DataError(
                f"cannot tell the format from mapping keys {sorted(mapping)}",
                path=path,
                fix="use the canonical roles as keys: " + "; ".join(
                    f"{fmt}: {_example_mapping(fmt)}" for fmt in FORMATS) + f" (columns: {_listing(columns)})",
            )
    required, optional = ROLES[format]
    unknown = [k for k in mapping if k not in required + optional]
    missing = [k for k in required if k not in mapping]
    if unknown or missing:
        problem = []
        if unknown:
            problem.append(f"unknown role(s) {', '.join(map(repr, unknown))}")
        if missing:
            problem.append(f"missing role(s) {', '.join(map(repr, missing))}")
        raise DataError(
            f"mapping for format {format!r} has " + " and ".join(problem),
            path=path,
            fix=f"use mapping={_example_mapping(format)} with columns from: {_listing(columns)}",
        )
    for role, col in mapping.items():
        what = "text_column" if text_column is not None and col == text_column else f"mapping[{role!r}]"
        check_column(str(col), columns, what=what, path=path)
    given = "text_column" if text_column is not None and format in ("text", "chat") else "mapping"
    cols = "/".join(mapping[r] for r in required + optional if r in mapping)
    return FormatInfo(format, dict(mapping), f"{given}= was given: {format} data from column(s) {cols}")


# --------------------------------------------------------------------------- conversion


@dataclass
class _Where:
    """Locates record i of a batch for error messages: file + line, or 'row i'."""

    source: str | None
    lines: Sequence[int] | None
    #: Position of record 0 in its source (records are converted chunk by chunk).
    first_row: int = 0

    def error(self, i: int, what: str, *, column: str | int | None = None, fix: str | None = None) -> DataError:
        line = None
        if self.lines is not None:
            line = self.lines[i]
        else:
            what = f"row {self.first_row + i}: {what}"
        return DataError(what, path=self.source, line=line, column=column, fix=fix)


@dataclass
class Converted:
    """A canonical batch plus the non-string values that were turned into text."""

    batch: dict[str, list]
    non_string_values: int = 0
    non_string_rows: list[int] = field(default_factory=list)


class _Converter:
    """Turns records into canonical columns, one row at a time, with located errors."""

    def __init__(self, info: FormatInfo, where: _Where, start_row_id: int, first_keys: Sequence[str]):
        self.info = info
        self.where = where
        self.start_row_id = start_row_id
        self.first_keys = sorted(map(str, first_keys))
        self.non_string = 0
        self.non_string_rows: list[int] = []
        self._row_flagged = -1

    # ---- values

    def _note_non_string(self, i: int) -> None:
        self.non_string += 1
        if self._row_flagged != i:
            self._row_flagged = i
            self.non_string_rows.append(self.start_row_id + i)

    def text(self, i: int, value: Any, column: str) -> str:
        """`value` as a str: missing -> '', numbers -> str (counted), containers -> DataError."""
        if isinstance(value, str):
            return value
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return ""
        value = _plain(value)
        if isinstance(value, (int, float, bool)):
            self._note_non_string(i)
            return str(value)
        if isinstance(value, bytes):
            raise self.where.error(i, "holds bytes where text is expected", column=column,
                                   fix="decode the bytes to str before loading")
        kind = type(value).__name__
        raise self.where.error(
            i,
            f"holds a {kind} where text is expected: {_short(value)}",
            column=column,
            fix="point text_column=/mapping= at a column with plain text, or flatten this field to a string",
        )

    def field(self, i: int, rec: Any, role: str, required: bool = True) -> Any:
        """The value of the column mapped to `role` in record i (mixed-shape check included)."""
        col = self.info.mapping[role]
        if not isinstance(rec, dict):
            raise self.where.error(
                i, f"this row is a {type(rec).__name__}, but earlier rows are records with keys {self.first_keys}",
                fix="make every row the same kind of value (all objects with the same fields), or remove this row",
            )
        if col in rec:
            return rec[col]
        if not required:
            return None
        keys = sorted(map(str, rec))
        if keys == self.first_keys:
            what = f"this row has no field {col!r} (its keys: {keys})"
        else:
            what = f"this row has keys {keys} but earlier rows have {self.first_keys} (field {col!r} is missing)"
        raise self.where.error(i, what, fix=f"give every row the field {col!r}, or remove this row")

    # ---- rows

    def messages(self, i: int, value: Any) -> list[dict[str, str]]:
        """One chat row as canonical messages."""
        col = self.info.mapping["messages"]
        value = _maybe_json_list(_plain(value))
        if value is None:
            return []
        if not isinstance(value, list):
            raise self.where.error(
                i, f"holds a {type(value).__name__} where a list of messages is expected: {_short(value)}",
                column=col, fix="each row needs a list of messages ({'role': ..., 'content': ...})",
            )
        out: list[dict[str, str]] = []
        for n, msg in enumerate(value):
            msg = _plain(msg)
            if isinstance(msg, str):
                role = "user" if n % 2 == 0 else "assistant"
                out.append({"role": role, "content": msg})
                continue
            if not isinstance(msg, dict):
                raise self.where.error(
                    i, f"message {n + 1} is a {type(msg).__name__}, not a message object: {_short(msg)}",
                    column=col, fix="each message needs 'role' and 'content' (or ShareGPT 'from' and 'value')",
                )
            raw_role = msg.get("role", msg.get("from"))
            if "content" in msg:
                content = msg["content"]
            elif "value" in msg:
                content = msg["value"]
            else:
                content = msg.get("text", _MISSING)
            if raw_role is None or content is _MISSING:
                raise self.where.error(
                    i, f"message {n + 1} has keys {sorted(map(str, msg))}",
                    column=col,
                    fix="each message needs 'role' and 'content' (OpenAI) or 'from' and 'value' (ShareGPT)",
                )
            role = ROLE_ALIASES.get(str(raw_role).strip().lower())
            if role is None:
                raise self.where.error(
                    i, f"message {n + 1} has role {raw_role!r}, which nbtune does not train on",
                    column=col,
                    fix="use roles system/user/assistant (ShareGPT: system/human/gpt); drop tool or function "
                        "messages before loading",
                )
            if isinstance(content, list):  # OpenAI content parts
                content = self._parts(i, n, content, col)
            out.append({"role": role, "content": self.text(i, content, col)})
        return out

    def _parts(self, i: int, n: int, parts: list, col: str) -> str:
        texts = []
        for part in parts:
            part = _plain(part)
            if isinstance(part, str):
                texts.append(part)
            elif isinstance(part, dict) and part.get("type", "text") == "text" and "text" in part:
                texts.append(self.text(i, part["text"], col))
            else:
                raise self.where.error(
                    i, f"message {n + 1} has a content part that is not text: {_short(part)}",
                    column=col, fix="nbtune trains on text only; remove image/audio parts before loading",
                )
        return "\n".join(texts)

    def convert(self, records: Sequence[Any]) -> Converted:
        fmt = self.info.format
        m = self.info.mapping
        if fmt == "text":
            col = m["text"]
            out = [self.text(i, self.field(i, rec, "text"), col) for i, rec in enumerate(records)]
            key = "text"
        elif fmt == "chat":
            out = [self.messages(i, self.field(i, rec, "messages")) for i, rec in enumerate(records)]
            key = "messages"
        elif fmt == "instruction":
            out = []
            for i, rec in enumerate(records):
                instruction = self.text(i, self.field(i, rec, "instruction"), m["instruction"])
                inp = self.text(i, self.field(i, rec, "input", required=False), m["input"]) if "input" in m else ""
                output = self.text(i, self.field(i, rec, "output"), m["output"])
                user = "\n\n".join(p for p in (instruction, inp) if p.strip())
                out.append([{"role": "user", "content": user}, {"role": "assistant", "content": output}])
            key = "messages"
        elif fmt == "prompt_completion":
            out = []
            for i, rec in enumerate(records):
                prompt = self.text(i, self.field(i, rec, "prompt"), m["prompt"])
                completion = self.text(i, self.field(i, rec, "completion"), m["completion"])
                out.append([{"role": "user", "content": prompt}, {"role": "assistant", "content": completion}])
            key = "messages"
        else:  # pragma: no cover - resolve_format guards this
            raise DataError(f"unknown format {fmt!r}", fix=f"use one of {', '.join(FORMATS)}")
        batch = {"row_id": list(range(self.start_row_id, self.start_row_id + len(out))), key: out}
        return Converted(batch, self.non_string, self.non_string_rows)


_MISSING = object()


def _short(value: Any, limit: int = 60) -> str:
    """A short repr of a value for an error message."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def convert(
    records: Sequence[Any],
    info: FormatInfo,
    *,
    source: str | None = None,
    lines: Sequence[int] | None = None,
    start_row_id: int = 0,
    first_keys: Sequence[str] | None = None,
    first_row: int = 0,
) -> Converted:
    """Like `to_canonical`, but also returns how many non-string values were converted, and where.

    `first_row` is the position of ``records[0]`` in its source, for "row N"
    in errors when there are no `lines` (a chunk of a DataFrame, list or Dataset).
    """
    if first_keys is None:
        first = next((r for r in records if isinstance(r, dict)), {})
        first_keys = list(first)
    where = _Where(source, lines, first_row)
    return _Converter(info, where, start_row_id, first_keys).convert(records)


def to_canonical(
    records: list[dict],
    info: FormatInfo,
    *,
    source: str | None = None,
    first_line: int | None = None,
    lines: Sequence[int] | None = None,
    start_row_id: int = 0,
) -> dict[str, list]:
    """Convert records to a columnar canonical batch: ``row_id`` plus ``text`` or ``messages``.

    `source` and `first_line` (line of ``records[0]``, one record per line) or
    `lines` (the line of each record) make errors name the file and line;
    without them an error names the row's position. Numbers where text is
    expected become strings; a dict or list there raises DataError.
    """
    if lines is None and first_line is not None:
        lines = range(first_line, first_line + len(records))
    return convert(records, info, source=source, lines=lines, start_row_id=start_row_id).batch
