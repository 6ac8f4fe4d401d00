"""Which kind of training data a table holds, and how it becomes canonical rows.

The formats are TRL's dataset types, each in its standard (strings) and its
conversational (message lists) form, plus alpaca-style instructions (see
`nbtune.data` for the canonical row schema):

* ``"text"``: language modeling, standard: one document per row (a column such
  as ``text`` / ``content`` / ``body``, or the only string column);
* ``"chat"``: language modeling, conversational: a list of messages per row,
  OpenAI style (``role``/``content``, with ``tool_calls`` and ``role: "tool"``
  messages, and an optional ``tools`` column), ShareGPT style
  (``from``/``value`` with ``human``/``gpt``/``system``) or a plain list of
  strings that alternates user and assistant;
* ``"instruction"``: alpaca-style ``instruction`` (+ optional ``input``) and
  ``output`` / ``response`` / ``answer``;
* ``"prompt_completion"``: pairs such as ``prompt``/``completion``,
  ``question``/``answer`` or ``input``/``target``, strings or message lists;
* ``"preference"``: ``prompt`` / ``chosen`` / ``rejected``, or ``chosen`` /
  ``rejected`` alone holding whole conversations (implicit prompt);
* ``"unpaired_preference"``: ``prompt`` / ``completion`` / ``label`` (bool);
* ``"stepwise"``: stepwise supervision, ``prompt`` / ``completions`` (list) /
  ``labels`` (list of bool).

Prompt-only data (a ``prompt`` column and nothing to answer it, or
conversations without an assistant turn) is refused: there is nothing to learn.
The three preference formats keep their columns; supervised fine-tuning on
them needs an explicit choice (`SFT_CHOICES`, ``load(..., sft=...)``).

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

FORMATS = ("text", "instruction", "prompt_completion", "chat", "preference", "unpaired_preference", "stepwise")
#: Formats whose rows hold more than one answer, or judged answers: supervised fine-tuning needs a choice.
PREFERENCE_FORMATS = ("preference", "unpaired_preference", "stepwise")

#: Canonical roles of each format: (required, optional).
ROLES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "text": (("text",), ()),
    "instruction": (("instruction", "output"), ("input",)),
    "prompt_completion": (("prompt", "completion"), ()),
    "chat": (("messages",), ("tools",)),
    "preference": (("chosen", "rejected"), ("prompt",)),
    "unpaired_preference": (("prompt", "completion", "label"), ()),
    "stepwise": (("prompt", "completions", "labels"), ()),
}

#: What `load(..., sft=)` accepts per format, and what each choice trains on.
SFT_CHOICES: dict[str, dict[str, str]] = {
    "preference": {"chosen": "the chosen responses (the rejected ones are kept, not trained)"},
    "unpaired_preference": {"desirable": "the completions labelled True (rows labelled False are kept, not trained)"},
    "stepwise": {"correct": "the rows whose steps are all labelled True, steps joined by newlines "
                            "(other rows are kept, not trained)"},
}

TEXT_NAMES = (
    "text", "content", "contents", "body", "document", "doc", "story", "article", "passage",
    "paragraph", "sentence", "markdown", "raw", "raw_text", "full_text", "review", "abstract",
)
CHAT_NAMES = ("messages", "conversations", "conversation", "dialog", "dialogue", "dialogs", "chat", "turns")
TOOLS_NAMES = ("tools", "functions")
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
    "developer": "system",
    "tool": "tool",
    "function": "tool",
    "ipython": "tool",
    "observation": "tool",
}


@dataclass
class FormatInfo:
    """What the data is and which source column plays which canonical role."""

    format: str
    mapping: dict[str, str]
    reason: str
    #: Per role: "messages" (conversational) or "text" (standard); roles of plain-text formats are left out.
    kinds: dict[str, str] = field(default_factory=dict)
    #: Whether messages carry tool calls / tool results (their Arrow schema then has the tool fields).
    tools: bool = False
    #: The supervised fine-tuning choice for preference formats (a key of `SFT_CHOICES[format]`), else None.
    sft: str | None = None

    @property
    def form(self) -> str:
        """'conversational' when any role holds message lists, else 'standard'."""
        return "conversational" if "messages" in self.kinds.values() or self.format == "chat" else "standard"


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
            elif isinstance(msg, dict) and "role" in msg and ("content" in msg or _is_tool_call_turn(msg)):
                styles.add("openai")
            elif isinstance(msg, dict) and ("from" in msg and "value" in msg):
                styles.add("sharegpt")
            else:
                return None
    if len(styles) == 1:
        return styles.pop()
    return None


def _is_tool_call_turn(msg: dict) -> bool:
    """An assistant message that calls tools (OpenAI may leave its content out)."""
    return bool(msg.get("tool_calls")) or bool(msg.get("function_call"))


def _uses_tools(values: list[Any]) -> bool:
    """True when sampled message lists hold tool calls or tool results."""
    for value in values:
        value = _maybe_json_list(value)
        for msg in value if isinstance(value, list) else ():
            msg = _plain(msg)
            if isinstance(msg, dict) and (_is_tool_call_turn(msg) or ROLE_ALIASES.get(
                    str(msg.get("role", msg.get("from", ""))).strip().lower()) == "tool"):
                return True
    return False


def _has_assistant_turn(value: Any) -> bool:
    value = _maybe_json_list(value)
    if not isinstance(value, list):
        return False
    for n, msg in enumerate(value):
        msg = _plain(msg)
        if isinstance(msg, str) and n % 2 == 1:
            return True
        if isinstance(msg, dict) and ROLE_ALIASES.get(
                str(msg.get("role", msg.get("from", ""))).strip().lower()) == "assistant":
            return True
    return False


def _kind(sample: list[dict], column: str) -> str:
    """'messages' when the sampled values of `column` are message lists, else 'text'."""
    values = _values(sample, column)
    return "messages" if values and _chat_style(values) not in (None, "strings") else "text"


def _is_texty(values: list[Any]) -> bool:
    """True when most sampled values are strings (a few numbers or gaps are allowed)."""
    if not values:
        return False
    strings = sum(isinstance(v, str) for v in values)
    return strings >= max(1, 0.8 * len(values))


def _mean_len(values: list[Any]) -> float:
    strings = [v for v in values if isinstance(v, str)]
    return sum(map(len, strings)) / len(strings) if strings else 0.0


def _detect_chat(columns: list[str], sample: list[dict], *, named_only: bool = False) -> FormatInfo | None:
    named = _find(columns, CHAT_NAMES)
    candidates = ([named] if named else []) + ([] if named_only else [c for c in columns if c != named])
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
        mapping = {"messages": col}
        tools_col = _find(columns, TOOLS_NAMES)
        if tools_col:
            mapping["tools"] = tools_col
            why += f", with tool definitions in column {tools_col!r}"
        uses = bool(tools_col) or _uses_tools(values)
        if uses and not tools_col:
            why += ", with tool calls"
        return FormatInfo("chat", mapping, f"column {col!r} {why}", kinds={"messages": "messages"}, tools=uses)
    return None


def _detect_named_chat(columns: list[str], sample: list[dict]) -> FormatInfo | None:
    return _detect_chat(columns, sample, named_only=True)


def _form_note(kinds: dict[str, str]) -> str:
    return "conversational (message lists)" if "messages" in kinds.values() else "standard (strings)"


def _detect_stepwise(columns: list[str], sample: list[dict]) -> FormatInfo | None:
    prompt, completions, labels = (_find(columns, (n,)) for n in ("prompt", "completions", "labels"))
    if not (prompt and completions and labels):
        return None
    return FormatInfo("stepwise", {"prompt": prompt, "completions": completions, "labels": labels},
                      f"columns {prompt}/{completions}/{labels} look like stepwise supervision (TRL): "
                      "a list of steps per row, each labelled", kinds={"prompt": "text"})


def _detect_preference(columns: list[str], sample: list[dict]) -> FormatInfo | None:
    chosen, rejected = _find(columns, ("chosen",)), _find(columns, ("rejected",))
    if not (chosen and rejected):
        return None
    prompt = _find(columns, ("prompt",))
    mapping = {"prompt": prompt} if prompt else {}
    mapping.update({"chosen": chosen, "rejected": rejected})
    kinds = {role: _kind(sample, col) for role, col in mapping.items()}
    if prompt:
        how = f"columns {prompt}/{chosen}/{rejected} look like preference pairs (TRL)"
    else:
        how = (f"columns {chosen}/{rejected} look like preference pairs with an implicit prompt (TRL): each holds "
               "the whole exchange, and the prompt is what they share at the start")
    tools = any(_uses_tools(_values(sample, c)) for r, c in mapping.items() if kinds[r] == "messages")
    return FormatInfo("preference", mapping, f"{how}; {_form_note(kinds)}", kinds=kinds, tools=tools)


def _detect_unpaired(columns: list[str], sample: list[dict]) -> FormatInfo | None:
    prompt, completion, label = (_find(columns, (n,)) for n in ("prompt", "completion", "label"))
    if not (prompt and completion and label):
        return None
    mapping = {"prompt": prompt, "completion": completion, "label": label}
    kinds = {role: _kind(sample, mapping[role]) for role in ("prompt", "completion")}
    tools = any(_uses_tools(_values(sample, mapping[r])) for r in kinds if kinds[r] == "messages")
    return FormatInfo("unpaired_preference", mapping,
                      f"columns {prompt}/{completion}/{label} look like unpaired preference data (TRL: one "
                      f"completion per row, labelled good or bad); {_form_note(kinds)}", kinds=kinds, tools=tools)


def _detect_prompt_only(columns: list[str], sample: list[dict]) -> FormatInfo | None:
    """A `prompt` column with nothing that answers it (TRL's prompt-only type): refused with advice."""
    prompt = _find(columns, ("prompt", "prompts"))
    if not prompt or _find(columns, TEXT_NAMES):
        return None
    kind = _kind(sample, prompt)
    shape = "message lists" if kind == "messages" else "strings"
    raise DataError(
        f"this looks like prompt-only data (column {prompt!r} holds {shape}, and no column holds answers): "
        "there is nothing to learn from, since supervised fine-tuning learns the responses",
        column=prompt,
        fix="add a 'completion' column with the answer to each prompt (or give each conversation an assistant "
            f"turn); to train on the prompts themselves as plain text, pass text_column={prompt!r}",
    )


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
            kinds = {"prompt": _kind(sample, prompt), "completion": _kind(sample, completion)}
            tools = any(_uses_tools(_values(sample, c)) for r, c in ((("prompt", prompt), ("completion", completion)))
                        if kinds[r] == "messages")
            return FormatInfo(
                "prompt_completion",
                {"prompt": prompt, "completion": completion},
                f"columns {prompt}/{completion} look like prompt/completion pairs; {_form_note(kinds)}",
                kinds=kinds, tools=tools,
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
    "preference": _detect_preference,
    "unpaired_preference": _detect_unpaired,
    "stepwise": _detect_stepwise,
}
#: The order of detection: the most specific column sets first.
_ORDER = (_detect_stepwise, _detect_preference, _detect_unpaired, _detect_named_chat, _detect_instruction,
          _detect_prompt_completion, _detect_prompt_only, _detect_chat, _detect_text)


def _refuse_prompt_only_chat(info: FormatInfo, sample: list[dict]) -> None:
    """Conversations of which no sampled one has an assistant turn: nothing to learn from."""
    col = info.mapping["messages"]
    values = _values(sample, col)
    if values and not any(_has_assistant_turn(v) for v in values):
        raise DataError(
            f"no conversation in the first {len(values)} rows of column {col!r} has an assistant turn: this is "
            "prompt-only data, and there is nothing to learn from (training learns the assistant's turns)",
            column=col,
            fix="add the assistant's answer to each conversation (a message with role 'assistant'), or load "
                "the answers as a 'completion' column next to the prompts",
        )


def detect_format(columns: list[str], sample: list[dict]) -> FormatInfo:
    """Guess the format from column names and a few rows; raise DataError when nothing fits.

    Order: stepwise supervision, preference (explicit or implicit prompt), unpaired
    preference, a column named like a conversation, instruction (alpaca),
    prompt/completion pairs, prompt-only (refused), any column of message lists,
    then plain text (a column named like text, the only string column, or else
    the string column with the longest values, which the reason says).
    """
    columns = [str(c) for c in columns]
    for detector in _ORDER:
        info = detector(columns, sample)
        if info is not None:
            if info.format == "chat":
                _refuse_prompt_only_chat(info, sample)
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
        return _forced_mapping(columns, sample, mapping, format, path=path, text_column=text_column)
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
        raise DataError(exc.what, path=path, column=exc.column, fix=exc.fix) from None


def _example_mapping(format: str) -> str:
    required, optional = ROLES[format]
    return "{" + ", ".join(f"{r!r}: '<column>'" for r in required + optional) + "}"


def _forced_mapping(
    columns: list[str], sample: list[dict], mapping: dict[str, str], format: str | None, *, path: str | None,
    text_column: str | None,
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
    kinds = {r: _kind(sample, mapping[r]) for r in _MESSAGE_ROLES.get(format, ()) if r in mapping}
    if format == "chat":
        kinds = {"messages": "messages"}
    tools = "tools" in mapping or any(_uses_tools(_values(sample, mapping[r])) for r, k in kinds.items()
                                      if k == "messages")
    return FormatInfo(format, dict(mapping), f"{given}= was given: {format} data from column(s) {cols}",
                      kinds=kinds, tools=tools)


#: Roles that hold a string or a list of messages, per format.
_MESSAGE_ROLES = {
    "prompt_completion": ("prompt", "completion"),
    "preference": ("prompt", "chosen", "rejected"),
    "unpaired_preference": ("prompt", "completion"),
    "stepwise": ("prompt",),
}


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

    def messages(self, i: int, value: Any, col: str | None = None) -> list[dict[str, Any]]:
        """One list of messages (a chat row, or a conversational prompt/completion) as canonical messages.

        Messages are ``{"role", "content"}``; when the data uses tools they also
        have ``tool_calls`` (a list of ``{"id", "type", "function": {"name",
        "arguments"}}`` with the arguments as a JSON string), ``tool_call_id``
        and ``name``, and the role may be ``"tool"``.
        """
        col = col or self.info.mapping["messages"]
        value = _maybe_json_list(_plain(value))
        if value is None:
            return []
        if not isinstance(value, list):
            raise self.where.error(
                i, f"holds a {type(value).__name__} where a list of messages is expected: {_short(value)}",
                column=col, fix="each row needs a list of messages ({'role': ..., 'content': ...})",
            )
        out: list[dict[str, Any]] = []
        for n, msg in enumerate(value):
            msg = _plain(msg)
            if isinstance(msg, str):
                role = "user" if n % 2 == 0 else "assistant"
                out.append(self._message(role, msg))
                continue
            if not isinstance(msg, dict):
                raise self.where.error(
                    i, f"message {n + 1} is a {type(msg).__name__}, not a message object: {_short(msg)}",
                    column=col, fix="each message needs 'role' and 'content' (or ShareGPT 'from' and 'value')",
                )
            raw_role = msg.get("role", msg.get("from"))
            calls = self._tool_calls(i, n, msg, col)
            if "content" in msg:
                content = msg["content"]
            elif "value" in msg:
                content = msg["value"]
            else:
                content = msg.get("text", None if calls else _MISSING)
            if raw_role is None or content is _MISSING:
                raise self.where.error(
                    i, f"message {n + 1} has keys {sorted(map(str, msg))}",
                    column=col,
                    fix="each message needs 'role' and 'content' (OpenAI) or 'from' and 'value' (ShareGPT)",
                )
            role = ROLE_ALIASES.get(str(raw_role).strip().lower())
            if role is None:
                raise self.where.error(
                    i, f"message {n + 1} has role {raw_role!r}, which nbtune does not know",
                    column=col,
                    fix="use roles system/user/assistant/tool (ShareGPT: system/human/gpt/observation)",
                )
            if calls and role != "assistant":
                raise self.where.error(i, f"message {n + 1} has tool calls but role {raw_role!r}", column=col,
                                       fix="only assistant messages call tools")
            if isinstance(content, list):  # OpenAI content parts
                content = self._parts(i, n, content, col)
            message = self._message(role, self.text(i, content, col))
            if calls or role == "tool":
                if not self.info.tools:
                    raise ToolsFound(self.where.error(i, f"message {n + 1} uses tools", column=col))
                message["tool_calls"] = calls or None
                if role == "tool":
                    call_id, name = msg.get("tool_call_id"), msg.get("name")
                    message["tool_call_id"] = None if call_id is None else str(call_id)
                    message["name"] = None if name is None else str(name)
            out.append(message)
        return out

    def _message(self, role: str, content: str) -> dict[str, Any]:
        if self.info.tools:
            return {"role": role, "content": content, "tool_calls": None, "tool_call_id": None, "name": None}
        return {"role": role, "content": content}

    def _tool_calls(self, i: int, n: int, msg: dict, col: str) -> list[dict[str, Any]] | None:
        """OpenAI ``tool_calls`` (or the older ``function_call``) in the canonical shape, or None."""
        raw = _plain(msg.get("tool_calls"))
        if not raw and msg.get("function_call"):
            raw = [{"type": "function", "function": _plain(msg["function_call"])}]
        if not raw:
            return None
        if isinstance(raw, str):
            raw = _maybe_json_list(raw)
        if not isinstance(raw, list):
            raise self.where.error(i, f"message {n + 1} has tool_calls that are not a list: {_short(raw)}",
                                   column=col, fix="tool_calls is a list of {'type': 'function', 'function': "
                                                   "{'name': ..., 'arguments': ...}}")
        calls = []
        for call in raw:
            call = _plain(call)
            fn = _plain(call.get("function", call)) if isinstance(call, dict) else None
            if not isinstance(fn, dict) or not fn.get("name"):
                raise self.where.error(
                    i, f"message {n + 1} has a tool call without a function name: {_short(call)}", column=col,
                    fix="each tool call needs {'type': 'function', 'function': {'name': ..., 'arguments': ...}}")
            args = _plain(fn.get("arguments", {}))
            if isinstance(args, str):
                try:
                    json.loads(args or "{}")
                except ValueError:
                    raise self.where.error(
                        i, f"message {n + 1}: the arguments of tool call {fn['name']!r} are not valid JSON: "
                        f"{_short(args)}", column=col, fix="arguments are a JSON object (or a JSON string of one)",
                    ) from None
                args_json = args or "{}"
            else:
                args_json = json.dumps(args, ensure_ascii=False)
            call_id = call.get("id") if isinstance(call, dict) else None
            calls.append({"id": None if call_id is None else str(call_id), "type": str(call.get("type", "function")),
                          "function": {"name": str(fn["name"]), "arguments": args_json}})
        return calls

    def tools(self, i: int, value: Any) -> str | None:
        """A row's tool definitions (a list of JSON schemas) as one JSON string, or None."""
        col = self.info.mapping["tools"]
        value = _maybe_json_list(_plain(value))
        if value is None or value == "" or value == []:
            return None
        if not isinstance(value, list) or not all(isinstance(t, dict) for t in map(_plain, value)):
            raise self.where.error(i, f"holds {_short(value)} where a list of tool definitions is expected",
                                   column=col, fix="tools is a list of {'type': 'function', 'function': "
                                                   "{'name': ..., 'description': ..., 'parameters': {...}}}")
        return json.dumps([_plain(t) for t in value], ensure_ascii=False)

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

    # ---- values of the TRL formats

    def turns(self, i: int, rec: Any, role: str, speaker: str) -> list[dict[str, Any]]:
        """A prompt/completion-like value as messages: a string becomes one `speaker` turn."""
        col = self.info.mapping[role]
        value = self.field(i, rec, role)
        if self.info.kinds.get(role) == "messages":
            return self.messages(i, value, col)
        return [self._message(speaker, self.text(i, value, col))]

    def kept(self, i: int, rec: Any, role: str) -> Any:
        """A prompt/chosen/rejected/completion value as it will be kept: text, or canonical messages."""
        col = self.info.mapping[role]
        value = self.field(i, rec, role)
        if self.info.kinds.get(role) == "messages":
            return self.messages(i, value, col)
        return self.text(i, value, col)

    def flag(self, i: int, value: Any, column: str) -> bool:
        """A label: a bool, 0/1 or 'true'/'false'."""
        value = _plain(value)
        if isinstance(value, bool):
            return value
        if isinstance(value, (int, float)) and value in (0, 1):
            return bool(value)
        if isinstance(value, str) and value.strip().lower() in ("true", "false", "1", "0"):
            return value.strip().lower() in ("true", "1")
        raise self.where.error(i, f"holds {_short(value)} where a label (true/false) is expected", column=column,
                               fix="labels are booleans: true for a good completion, false for a bad one")

    def _steps(self, i: int, rec: Any) -> tuple[list[str], list[bool]]:
        m = self.info.mapping
        steps = _maybe_json_list(_plain(self.field(i, rec, "completions")))
        labels = _maybe_json_list(_plain(self.field(i, rec, "labels")))
        if not isinstance(steps, list) or not isinstance(labels, list) or len(steps) != len(labels):
            raise self.where.error(
                i, f"completions and labels must be lists of the same length (got {_short(steps)} and "
                f"{_short(labels)})", column=m["completions"],
                fix="give each step of 'completions' one true/false in 'labels'")
        return ([self.text(i, s, m["completions"]) for s in steps],
                [self.flag(i, v, m["labels"]) for v in labels])

    # ---- rows

    def _preference_row(self, i: int, rec: Any) -> dict[str, Any]:
        m = self.info.mapping
        row = {role: self.kept(i, rec, role) for role in ("prompt", "chosen", "rejected") if role in m}
        if "prompt" in m:
            sft = self.turns(i, rec, "prompt", "user") + self.turns(i, rec, "chosen", "assistant")
        elif self.info.kinds.get("chosen") == "messages":
            sft = row["chosen"]
        else:
            prompt, answer = split_implicit_prompt(row["chosen"], row["rejected"])
            sft = ([self._message("user", prompt)] if prompt else []) + [self._message("assistant", answer)]
        row["messages"] = sft
        if self.info.sft:
            row["sft"] = True
        return row

    def _unpaired_row(self, i: int, rec: Any) -> dict[str, Any]:
        m = self.info.mapping
        row = {role: self.kept(i, rec, role) for role in ("prompt", "completion")}
        row["label"] = self.flag(i, self.field(i, rec, "label"), m["label"])
        row["messages"] = self.turns(i, rec, "prompt", "user") + self.turns(i, rec, "completion", "assistant")
        if self.info.sft:
            row["sft"] = row["label"]
        return row

    def _stepwise_row(self, i: int, rec: Any) -> dict[str, Any]:
        prompt = self.text(i, self.field(i, rec, "prompt"), self.info.mapping["prompt"])
        steps, labels = self._steps(i, rec)
        row = {"prompt": prompt, "completions": steps, "labels": labels,
               "messages": [self._message("user", prompt), self._message("assistant", "\n".join(steps))]}
        if self.info.sft:
            row["sft"] = all(labels)
        return row

    def convert(self, records: Sequence[Any]) -> Converted:
        fmt = self.info.format
        m = self.info.mapping
        extra: dict[str, list] = {}
        if fmt == "text":
            col = m["text"]
            out = [self.text(i, self.field(i, rec, "text"), col) for i, rec in enumerate(records)]
            key = "text"
        elif fmt == "chat":
            out = [self.messages(i, self.field(i, rec, "messages")) for i, rec in enumerate(records)]
            key = "messages"
            if "tools" in m:
                extra["tools"] = [self.tools(i, self.field(i, rec, "tools", required=False))
                                  for i, rec in enumerate(records)]
        elif fmt == "instruction":
            out = []
            for i, rec in enumerate(records):
                instruction = self.text(i, self.field(i, rec, "instruction"), m["instruction"])
                inp = self.text(i, self.field(i, rec, "input", required=False), m["input"]) if "input" in m else ""
                output = self.text(i, self.field(i, rec, "output"), m["output"])
                user = "\n\n".join(p for p in (instruction, inp) if p.strip())
                out.append([self._message("user", user), self._message("assistant", output)])
            key = "messages"
        elif fmt == "prompt_completion":
            out = [self.turns(i, rec, "prompt", "user") + self.turns(i, rec, "completion", "assistant")
                   for i, rec in enumerate(records)]
            key = "messages"
        elif fmt in PREFERENCE_FORMATS:
            make = {"preference": self._preference_row, "unpaired_preference": self._unpaired_row,
                    "stepwise": self._stepwise_row}[fmt]
            rows = [make(i, rec) for i, rec in enumerate(records)]
            out = [r.pop("messages") for r in rows]
            key = "messages"
            for name in rows[0] if rows else ():
                extra[name] = [r[name] for r in rows]
        else:  # pragma: no cover - resolve_format guards this
            raise DataError(f"unknown format {fmt!r}", fix=f"use one of {', '.join(FORMATS)}")
        batch = {"row_id": list(range(self.start_row_id, self.start_row_id + len(out))), key: out, **extra}
        return Converted(batch, self.non_string, self.non_string_rows)


class ToolsFound(DataError):  # noqa: N818 - a signal the loader catches
    """A row uses tools but the rows detection saw did not: the loader starts again with the tool fields.

    Called directly, `convert` lets it through: a DataError that says which row and what to do.
    """

    def __init__(self, where: DataError) -> None:
        super().__init__(where.what, path=where.path, line=where.line, column=where.column,
                         fix="pass a FormatInfo with tools=True (load_source detects this itself)")


def split_implicit_prompt(chosen: str, rejected: str) -> tuple[str, str]:
    """(prompt, chosen answer) of a standard implicit-prompt pair: the prompt is the text both share at the start.

    Like TRL's `extract_prompt`, the cut moves back to the last whitespace
    before the two differ, so a shared first letter of the answers stays in
    the answer.
    """
    n = 0
    for a, b in zip(chosen, rejected, strict=False):
        if a != b:
            break
        n += 1
    if n < min(len(chosen), len(rejected)) or len(chosen) == len(rejected):
        cut = max(chosen.rfind(" ", 0, n + 1), chosen.rfind("\n", 0, n + 1))
        n = cut if cut >= 0 else 0
    return chosen[:n], chosen[n:]


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
