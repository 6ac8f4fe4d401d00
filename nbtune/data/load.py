"""Load training data from wherever it is, into the canonical row schema.

`load_source` accepts a file, a glob, a folder, a pandas DataFrame, a list of
strings or records, a `datasets.Dataset` / `DatasetDict`, or a Hugging Face hub
dataset id, and returns a `LoadedData`: a `datasets.Dataset` with ``row_id``
plus ``text`` or ``messages`` (see `nbtune.data`), the detected format and why,
and where the rows came from.

Why the line-based formats are read here rather than by `datasets`: when a file
is broken, the user needs the file, the line and the column of the problem and
what to do about it. JSONL is parsed one line at a time with `json.loads`, CSV
and TSV with the `csv` module (tracking where each record starts, so multi-line
quoted fields keep exact line numbers), and bytes are decoded up front so a
non-UTF-8 byte is reported with its line and byte position. Files are only
ever read, never written.

Plain-text files (.txt, .md): a single file is split into documents at blank
lines (one document per non-empty paragraph), while a folder or glob of files
gives one document per file, since a folder of text files is usually a folder
of documents. `FormatInfo.reason` says which rule applied.

`find_problems` then lists what is worth knowing before cleaning: empty rows,
conversations without an assistant turn, values that were not text, very long
rows and exact duplicates.
"""

from __future__ import annotations

import codecs
import contextlib
import csv
import difflib
import fnmatch
import io
import json
import os
import re
import sys
import unicodedata
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

import numpy as np

from nbtune.data.formats import (
    CHAT_NAMES,
    PREFERENCE_FORMATS,
    SFT_CHOICES,
    FormatInfo,
    ToolsFound,
    convert,
    resolve_format,
)
from nbtune.errors import DataError

if TYPE_CHECKING:  # pragma: no cover
    import datasets

#: File name suffix -> file type.
SUPPORTED_SUFFIXES = {
    ".csv": "csv",
    ".tsv": "tsv",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "json",
    ".parquet": "parquet",
    ".txt": "txt",
    ".md": "md",
}
FILE_TYPES = ("csv", "tsv", "jsonl", "json", "parquet", "txt", "md")
_FILE_TYPE_ALIASES = {"ndjson": "jsonl", "markdown": "md", "text": "txt", "pq": "parquet"}
#: Suffixes that mark a string as a file name rather than a hub dataset id.
_OTHER_FILE_SUFFIXES = {
    ".xlsx", ".xls", ".ods", ".gz", ".zip", ".bz2", ".xz", ".zst", ".tar", ".arrow", ".feather",
    ".pkl", ".pickle", ".html", ".htm", ".xml", ".yaml", ".yml", ".docx", ".pdf", ".rtf", ".log", ".dat",
}
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?$")
_SAMPLE_ROWS = 100
_MAX_EXAMPLES = 5


@dataclass
class LoadedData:
    """Loaded rows in the canonical schema, plus what was detected and where they came from."""

    dataset: datasets.Dataset
    format: str
    mapping: dict[str, str]
    format_reason: str
    columns: list[str]
    origin: dict
    files: list[str]
    #: How many non-string values (numbers, booleans) were converted to text while loading.
    non_string_values: int = 0
    #: row_ids of (up to 5) rows that had such values.
    non_string_examples: list[int] = field(default_factory=list)
    #: Rows in each chunk that was read, converted and written (memory holds one chunk at a time).
    chunk_rows: list[int] = field(default_factory=list)
    #: "standard" (strings) or "conversational" (message lists), as TRL names the two forms.
    form: str = "standard"
    #: What supervised fine-tuning will train on, in one sentence (the load report states it).
    training: str = ""
    #: The `sft=` choice for preference formats, else None.
    sft: str | None = None

    def __len__(self) -> int:
        return len(self.dataset)


@dataclass
class Problem:
    """Something in the loaded rows worth knowing before cleaning."""

    kind: str
    count: int
    examples: list[int]
    message: str


# --------------------------------------------------------------------------- read parts


class _LazyLines(Sequence):
    """Line numbers computed only when an error message needs one."""

    def __init__(self, compute: Callable[[], list[int]], length: int) -> None:
        self._compute = compute
        self._length = length
        self._lines: list[int] | None = None

    def __getitem__(self, i):  # type: ignore[override]
        if self._lines is None:
            self._lines = self._compute()
        return self._lines[i]

    def __len__(self) -> int:
        return self._length


@dataclass
class _Chunk:
    """Consecutive records of one part, with the line each starts on (None for in-memory rows)."""

    records: list[Any]
    lines: Sequence[int] | None
    #: Position of records[0] in its part.
    first_row: int = 0


class _Shape:
    """The kind of a part's rows (all objects, all strings or all message lists) and its keys, chunk by chunk.

    The first row sets the kind; a later row of another kind is a DataError
    with its line (or row). Strings become ``{"text": s}``, lists
    ``{"messages": m}``. The keys of object rows are collected as they stream by.
    """

    def __init__(self, path: str | None) -> None:
        self.path = path
        self.base: type | None = None
        self.keys: dict[str, None] = {}

    def _error(self, chunk: _Chunk, i: int, what: str, fix: str) -> DataError:
        if chunk.lines is None:
            what = f"row {chunk.first_row + i}: {what}"
        return DataError(what, path=self.path, line=chunk.lines[i] if chunk.lines is not None else None, fix=fix)

    def records(self, chunk: _Chunk) -> list[Any]:
        items = chunk.records
        if not items:
            return items
        if self.base is None:
            first = items[0]
            if not isinstance(first, (dict, str, list)):
                raise self._error(chunk, 0, f"this row is {_kind_of(first)} ({first!r:.40}), not a record, a string "
                                  "or a list of messages", "each row must be an object with named fields (e.g. "
                                  "{\"text\": ...}), a string, or a list of messages")
            self.base = dict if isinstance(first, dict) else str if isinstance(first, str) else list
        base = self.base
        plural = {dict: "objects", str: "strings", list: "lists"}[base]
        for i, item in enumerate(items):
            if not isinstance(item, base):
                raise self._error(
                    chunk, i, f"this row is {_kind_of(item)}, but earlier rows are {plural}",
                    "make every row the same kind of value (e.g. all objects with the same fields), or remove this row",
                )
        if base is dict:
            keys = self.keys
            known = keys.keys()
            for rec in items:
                if not rec.keys() <= known:
                    keys.update(dict.fromkeys(rec))
            return items
        if base is str:
            return [{"text": s} for s in items]
        return [{"messages": m} for m in items]

    @property
    def columns(self) -> list[str]:
        return {dict: [str(k) for k in self.keys], str: ["text"], list: ["messages"]}.get(self.base, [])


#: Rows per chunk while loading: files are parsed, converted and written to Arrow one chunk at a time,
#: so memory holds one chunk of rows, not the file (`load_source(..., chunk_rows=)`).
CHUNK_ROWS = 10_000
#: A chunk also ends once its rows hold this many characters of input (for long documents).
CHUNK_CHARS = 16 * 2**20


def _chunked(items: Iterable[tuple[Any, int | None, int]], rows: int) -> Iterator[_Chunk]:
    """Chunks of at most `rows` records (and about CHUNK_CHARS characters) from (record, line, size) items."""
    records: list[Any] = []
    lines: list[int | None] = []
    size, first = 0, 0
    for record, line, n in items:
        records.append(record)
        lines.append(line)
        size += n
        if len(records) >= rows or size >= CHUNK_CHARS:
            yield _Chunk(records, lines if lines[0] is not None else None, first)
            first += len(records)
            records, lines, size = [], [], 0
    if records:
        yield _Chunk(records, lines if lines[0] is not None else None, first)


class _Window(Sequence):
    """lines[start:] without copying (chunks of a part read whole, whose lines are computed lazily)."""

    def __init__(self, lines: Sequence[int], start: int, length: int) -> None:
        self._lines, self._start, self._length = lines, start, length

    def __getitem__(self, i):  # type: ignore[override]
        return self._lines[self._start + i]

    def __len__(self) -> int:
        return self._length


def _slices(items: Sequence[Any], lines: Sequence[int] | None, rows: int) -> Iterator[_Chunk]:
    """Chunks of an in-memory list."""
    for start in range(0, len(items), rows):
        part = list(items[start : start + rows])
        yield _Chunk(part, None if lines is None else _Window(lines, start, len(part)), start)


@dataclass
class _Part:
    """One file (or in-memory object), read chunk by chunk.

    `read(rows)` yields chunks of raw rows; `select(columns, rows)`, for
    tables, yields chunks of only the needed columns. `head()` is the first
    rows (format detection); `columns` is known from a schema or header, or
    collected from the rows read so far.
    """

    read: Callable[[int], Iterator[_Chunk]]
    path: str | None = None
    file_type: str | None = None
    note: dict = field(default_factory=dict)
    known_columns: list[str] | None = None
    select: Callable[[list[str], int], Iterator[_Chunk]] | None = None
    shape: _Shape = field(default_factory=lambda: _Shape(None))
    _head: list[Any] | None = None

    def __post_init__(self) -> None:
        self.shape.path = self.path

    def head(self) -> list[Any]:
        if self._head is None:
            chunks = self.read(_SAMPLE_ROWS)
            try:
                first = next(chunks, None)
            finally:
                getattr(chunks, "close", lambda: None)()
            self._head = self.shape.records(first) if first is not None else []
        return self._head

    @property
    def columns(self) -> list[str]:
        if self.known_columns is not None:
            return self.known_columns
        self.head()
        return self.shape.columns

    def chunks(self, needed: list[str], rows: int) -> Iterator[_Chunk]:
        """All rows in chunks, as records (only the `needed` columns where the source is a table)."""
        raw = self.select(needed, rows) if self.select is not None else self.read(rows)
        for chunk in raw:
            chunk.records = self.shape.records(chunk)
            yield chunk


def _decode(data: bytes, path: str, encoding: str, *, first_line: int = 1, offset: int = 0) -> str:
    """File bytes as text; a bad byte is reported with its line and position.

    `first_line` and `offset` say where `data` starts in the file (when a file
    is decoded line by line).
    """
    try:
        text = data.decode(encoding)
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + first_line
        col = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        bad = data[exc.start : exc.start + 1].hex()
        raise DataError(
            f"contains bytes that are not valid {encoding} (byte 0x{bad} at byte {col} of the line, "
            f"offset {offset + exc.start} in the file)",
            path=path,
            line=line,
            column=col,
            fix="re-save the file as UTF-8 (most editors and Excel offer 'Save as... UTF-8'), or pass the "
            "file's real encoding, e.g. load(..., encoding='latin-1') or encoding='cp1252'",
        ) from None
    except LookupError:
        raise DataError(f"unknown encoding {encoding!r}", path=path,
                        fix="pass a Python codec name such as 'utf-8', 'latin-1' or 'cp1252'") from None
    return text[1:] if text.startswith("\ufeff") else text


def _empty_file(path: str, detail: str = "is empty") -> DataError:
    return DataError(f"the file {detail}", path=path,
                     fix="check that this is the right file (and that it was saved); remove it from the folder "
                     "if it is meant to be empty")


def _kind_of(item: Any) -> str:
    if isinstance(item, dict):
        return "an object"
    if isinstance(item, str):
        return "a string"
    if isinstance(item, list):
        return "a list"
    return f"a {type(item).__name__}"


def _jsonl_lines(text: str) -> Iterator[tuple[int, str]]:
    return enumerate(text.split("\n"), 1)


def _read_jsonl(text: str, path: str) -> _Part:
    """JSONL already in memory (a .json file that turned out to hold one object per line)."""
    part = _Part(lambda rows: _chunked(_jsonl_items(_jsonl_lines(text), path), rows), path, "jsonl")
    part.head()  # a broken first line is reported now
    return part


def _file_lines(path: str, encoding: str) -> Iterator[tuple[int, str]]:
    """(line number, text) of a file read line by line: a big JSONL file is never one string in memory.

    A byte that is not valid in `encoding` is reported with its line, its
    position in the line and its offset in the file, as `_decode` does.
    """
    offset = 0
    with open(path, "rb") as fh:  # read-only: never modify the user's files
        for n, raw in enumerate(fh, 1):
            if n == 1 and raw.startswith(b"\xef\xbb\xbf"):
                raw, offset = raw[3:], 3
            try:
                yield n, raw.decode(encoding)
            except UnicodeDecodeError as exc:
                _decode(raw, path, encoding, first_line=n, offset=offset)  # raises with line and column
                raise AssertionError(exc) from None  # pragma: no cover
            except LookupError:
                _decode(b"", path, encoding)  # raises "unknown encoding"
            offset += len(raw)


def _jsonl_items(numbered: Iterable[tuple[int, str]], path: str) -> Iterator[tuple[Any, int, int]]:
    """(value, line, characters) of each non-blank line; a line that is not JSON is a DataError with line and column."""
    loads = json.loads
    found = False
    for n, raw in numbered:
        if not raw.strip():
            continue
        try:
            value = loads(raw)
        except (RecursionError, ValueError) as exc:
            if not isinstance(exc, json.JSONDecodeError):
                raise _unparsable(exc, path, n) from None
            stripped = raw.strip()
            pretty = stripped in ("{", "[") or stripped.startswith('"') and stripped.endswith(",")
            fix = ("each line must hold one complete JSON object; this looks like one JSON document spread over "
                   "several lines: rename the file to .json or pass file_type='json'") if pretty else (
                   "each line must hold one complete JSON object: fix or delete this line")
            raise DataError(f"this line is not valid JSON: {exc.msg}", path=path, line=n, column=exc.colno,
                            fix=fix) from None
        found = True
        yield value, n, len(raw)
    if not found:
        raise _empty_file(path, "holds only whitespace")


def _unparsable(exc: BaseException, path: str, line: int | None) -> DataError:
    """A DataError for valid-looking JSON that Python cannot hold: nesting too deep or an integer too long."""
    if isinstance(exc, RecursionError):
        return DataError("the JSON is nested too deeply to read (hundreds of [ or { inside each other)",
                         path=path, line=line,
                         fix="rows must be flat records such as {\"text\": ...}; fix or delete this row")
    return DataError(f"the JSON holds a number Python cannot read: {str(exc).split(';')[0]}", path=path, line=line,
                     fix="store very long numbers as strings (in quotes), or delete this row")


def _deep_line(text: str, limit: int = 500) -> int | None:
    """Line where JSON nesting first goes deeper than `limit` (strings skipped); None if it never does."""
    depth, line, in_str, escaped = 0, 1, False, False
    for ch in text:
        if ch == "\n":
            line += 1
        if in_str:
            in_str = not (ch == '"' and not escaped)
            escaped = ch == "\\" and not escaped
        elif ch == '"':
            in_str = True
        elif ch in "[{":
            depth += 1
            if depth > limit:
                return line
        elif ch in "]}":
            depth -= 1
    return None


_INT_DIGITS = sys.get_int_max_str_digits() if hasattr(sys, "get_int_max_str_digits") else 4300
_LONG_INT = re.compile(r"\d{" + str(_INT_DIGITS + 1) + ",}")  # longer than int() accepts: a ValueError in json


def _skip_ws(text: str, i: int) -> int:
    while i < len(text) and text[i] in " \t\r\n":
        i += 1
    return i


def _array_offsets(text: str, i: int) -> list[int]:
    """Offsets of the elements of the JSON array starting at text[i] == '['."""
    decoder = json.JSONDecoder()
    offsets: list[int] = []
    i = _skip_ws(text, i + 1)
    if text[i] == "]":
        return offsets
    while True:
        i = _skip_ws(text, i)
        offsets.append(i)
        _, i = decoder.raw_decode(text, i)
        i = _skip_ws(text, i)
        if text[i] != ",":
            return offsets
        i += 1


def _member_offset(text: str, i: int, key: str) -> int:
    """Offset of the value of `key` in the JSON object starting at text[i] == '{'."""
    decoder = json.JSONDecoder()
    i = _skip_ws(text, i + 1)
    while text[i] != "}":
        name, i = decoder.raw_decode(text, i)
        i = _skip_ws(text, _skip_ws(text, i) + 1)  # past ':'
        if name == key:
            return i
        _, i = decoder.raw_decode(text, i)
        i = _skip_ws(text, i)
        if text[i] == ",":
            i = _skip_ws(text, i + 1)
    raise KeyError(key)  # pragma: no cover - the key was found by json.loads


def _line_numbers(text: str, offsets: list[int]) -> list[int]:
    """1-based line numbers of character offsets (offsets ascending)."""
    out, line, pos = [], 1, 0
    for off in offsets:
        line += text.count("\n", pos, off)
        pos = off
        out.append(line)
    return out


def _read_json(text: str, path: str) -> _Part:
    """A JSON list of records, a {"data": [...]}-style object with one list, or a single record."""
    try:
        data = json.loads(text)
    except RecursionError as exc:
        raise _unparsable(exc, path, _deep_line(text)) from None
    except json.JSONDecodeError as exc:
        if exc.msg == "Extra data" and text.lstrip()[:1] in "{[":
            part = _read_jsonl(text, path)  # one object per line, saved as .json
            part.note["read_as"] = "jsonl"
            return part
        raise DataError(f"the file is not valid JSON: {exc.msg}", path=path, line=exc.lineno, column=exc.colno,
                        fix="fix the JSON at this position (a missing comma or quote is the usual cause)") from None
    except ValueError as exc:  # an integer longer than sys.get_int_max_str_digits()
        m = _LONG_INT.search(text)
        raise _unparsable(exc, path, text.count("\n", 0, m.start()) + 1 if m else None) from None
    start = _skip_ws(text, 0)
    note: dict = {}
    if isinstance(data, list):
        items = data
        array_at: Callable[[], int] = lambda: start  # noqa: E731
    elif isinstance(data, dict):
        lists = [k for k, v in data.items() if isinstance(v, list)]
        record_lists = [k for k in lists if data[k] and all(isinstance(x, (dict, str)) for x in data[k])]
        if len(lists) == 1 and not data[lists[0]] and lists[0].lower() not in CHAT_NAMES:
            raise _empty_file(path, f"holds an empty {lists[0]!r} list")
        if len(lists) == 1 and lists[0].lower() not in CHAT_NAMES and lists[0] in record_lists:
            key = lists[0]
            items = data[key]
            note["json_key"] = key
            array_at = lambda: _member_offset(text, start, key)  # noqa: E731
        elif len(record_lists) > 1 and not any(k.lower() in CHAT_NAMES for k in lists):
            raise DataError(
                f"the file holds several lists ({', '.join(map(repr, record_lists))}); nbtune cannot tell which "
                "one holds the rows",
                path=path, line=1,
                fix="save the list you want to train on as its own file (a JSON list or JSONL)",
            )
        else:
            note["single_record"] = True
            return _finish_json([data], path, [_line_numbers(text, [start])[0]], note)
    else:
        raise DataError(
            f"the file holds a single {type(data).__name__}, not a list of records", path=path, line=1,
            fix='save the rows as a JSON list ([{"text": ...}, ...]) or as JSONL (one object per line)',
        )
    if not items:
        raise _empty_file(path, "holds an empty list")
    lines = _LazyLines(lambda: _line_numbers(text, _array_offsets(text, array_at())), len(items))
    return _finish_json(items, path, lines, note)


def _finish_json(items: list[Any], path: str, lines: Sequence[int], note: dict) -> _Part:
    """A JSON document is parsed whole (the standard library has no streaming parser); it is converted in chunks."""
    part = _Part(lambda rows: _slices(items, lines, rows), path, "json", note)
    part.head()
    return part


_LONE_CR = re.compile(r"\r(?!\n|$)")


def _csv_lines(numbered: Iterable[tuple[int, str]], seen_text: list[bool]) -> Iterator[str]:
    """Lines for the csv module, ending at \\n, \\r\\n or a lone \\r as `open(newline="")` would split them.

    `seen_text[0]` becomes True once a line holds something other than whitespace.
    """
    for _, line in numbered:
        if not seen_text[0] and not line.isspace() and line:
            seen_text[0] = True
        if "\r" in line and _LONE_CR.search(line):
            yield from io.StringIO(line, newline="")
        else:
            yield line


def _csv_items(numbered: Iterable[tuple[int, str]], path: str, delimiter: str, file_type: str,
               ) -> Iterator[tuple[dict, int, int]]:
    """(record, line it starts on, characters) of each CSV/TSV data row, after the header row."""
    old_limit = csv.field_size_limit(2**31 - 1)  # long documents exceed the 128 KiB default
    try:
        yield from _csv_rows(numbered, path, delimiter, file_type)
    finally:
        csv.field_size_limit(old_limit)


def _csv_rows(numbered: Iterable[tuple[int, str]], path: str, delimiter: str, file_type: str,
              ) -> Iterator[tuple[dict, int, int]]:
    seen_text = [False]
    reader = csv.reader(_csv_lines(numbered, seen_text), delimiter=delimiter, strict=True)
    name = file_type.upper()
    header: list[str] | None = None
    prev = 0
    rows = 0
    try:
        for row in reader:
            start, prev = prev + 1, reader.line_num
            if not row:
                continue
            if header is None:
                header = _csv_header(row, path, start)
                continue
            if len(row) != len(header):
                sep = "tab" if delimiter == "\t" else repr(delimiter)
                raise DataError(
                    f"this row has {len(row)} fields, but the header (line 1) has {len(header)}",
                    path=path, line=start,
                    fix=f"a field that contains the separator ({sep}) or a line break must be in double quotes "
                    f"(\"a{delimiter} b\"); fix or delete this row"
                    + ("" if delimiter == "\t" else ", or pass file_type='tsv' if the file is tab-separated"),
                )
            rows += 1
            yield dict(zip(header, row, strict=True)), start, sum(map(len, row))
    except csv.Error as exc:
        msg = str(exc)
        if "unexpected end of data" in msg:
            msg = "a quoted field that starts on this line is never closed"
        raise DataError(f"cannot be read as {name}: {msg}", path=path, line=prev + 1,
                        fix='check the double quotes on this line (a quote inside a field is written "")') from None
    if not seen_text[0]:
        raise _empty_file(path, "holds only whitespace")
    if header is None:
        raise _empty_file(path)
    if not rows:
        raise _empty_file(path, "has a header row but no data rows")


def _csv_file(lines: Callable[[], Iterable[tuple[int, str]]], path: str, file_type: str) -> _Part:
    """A CSV/TSV file with a header row, read in chunks; each record keeps the line it starts on."""
    delimiter = "," if file_type == "csv" else "\t"
    part = _Part(lambda rows: _chunked(_csv_items(lines(), path, delimiter, file_type), rows), path, file_type)
    part.head()
    return part


def _csv_header(row: list[str], path: str, line: int) -> list[str]:
    """Header names; blank names become column_N, duplicates are an error."""
    header = [name.strip() or f"column_{i + 1}" for i, name in enumerate(row)]
    seen: set[str] = set()
    for name in header:
        if name in seen:
            raise DataError(f"the header names column {name!r} twice", path=path, line=line, column=name,
                            fix="give every column a different name in the first row")
        seen.add(name)
    return header


def _paragraphs(numbered: Iterable[tuple[int, str]], path: str) -> Iterator[tuple[str, int, int]]:
    """(paragraph, start line, characters) for each non-empty, blank-line-separated paragraph."""
    block: list[str] = []
    start = 0
    for n, line in numbered:
        line = (line[:-1] if line.endswith("\n") else line).rstrip("\r")
        if line.strip():
            if not block:
                start = n
            block.append(line)
        elif block:
            para = "\n".join(block)
            yield para, start, len(para)
            block = []
    if block:
        para = "\n".join(block)
        yield para, start, len(para)
    elif not start:
        raise _empty_file(path, "holds only whitespace")


def _plain_file(lines: Callable[[], Iterable[tuple[int, str]]], path: str, file_type: str) -> _Part:
    """A .txt/.md file given on its own: one document per paragraph, read in chunks."""
    part = _Part(lambda rows: _chunked(_paragraphs(lines(), path), rows), path, file_type, known_columns=["text"])
    part.head()
    return part


def _whole_text_file(path: Path, file_type: str, encoding: str) -> _Part:
    """A .txt/.md file from a folder or glob: the whole file is one document (read when its chunk is)."""
    name = str(path)

    def read(rows: int) -> Iterator[_Chunk]:
        data = path.read_bytes()  # read-only: never modify the user's files
        text = _decode(data, name, encoding)
        if not text.strip():
            raise _empty_file(name, "is empty" if not data else "holds only whitespace")
        yield _Chunk([{"text": text}], [1], 0)

    return _Part(read, name, file_type, known_columns=["text"])


def _read_parquet(path: str) -> _Part:
    """The first rows (for format detection) now; later only the columns the format needs, in batches."""
    import pyarrow.parquet as pq

    def bad(exc: Exception) -> DataError:
        return DataError(f"cannot be read as Parquet: {exc}", path=path,
                         fix="re-export the file (it may be incomplete), or pass file_type= if it is another "
                         "format")

    try:
        pf = pq.ParquetFile(path)
        sample = next(pf.iter_batches(batch_size=_SAMPLE_ROWS), None)
    except Exception as exc:  # pyarrow raises several types for a bad file
        raise bad(exc) from None
    if pf.metadata.num_rows == 0 or sample is None:
        raise _empty_file(path, "has no rows")
    meta = pf.metadata
    row_bytes = sum(meta.row_group(i).total_byte_size for i in range(meta.num_row_groups)) / max(meta.num_rows, 1)
    head = sample.to_pylist()

    def read(rows: int) -> Iterator[_Chunk]:
        yield _Chunk(head[:rows], None, 0)

    def select(cols: list[str], rows: int) -> Iterator[_Chunk]:
        rows = max(1, min(rows, int(CHUNK_CHARS / max(row_bytes, 1.0))))
        first = 0
        try:
            batches = pq.ParquetFile(path).iter_batches(batch_size=rows, columns=cols)
            for batch in batches:
                records = batch.to_pylist()
                yield _Chunk(records, None, first)
                first += len(records)
        except DataError:
            raise
        except Exception as exc:
            raise bad(exc) from None

    return _Part(read, path, "parquet", known_columns=list(pf.schema_arrow.names), select=select)


def _normalise_file_type(file_type: str | None) -> str | None:
    if file_type is None:
        return None
    ft = file_type.lower().lstrip(".")
    ft = _FILE_TYPE_ALIASES.get(ft, ft)
    if ft not in FILE_TYPES:
        raise DataError(f"unknown file_type {file_type!r}", fix=f"use one of {', '.join(map(repr, FILE_TYPES))}")
    return ft


def _type_of(path: Path, file_type: str | None) -> str:
    """The file type from file_type= or the suffix; unknown suffixes raise DataError."""
    if file_type:
        return file_type
    ft = SUPPORTED_SUFFIXES.get(path.suffix.lower())
    if ft is None:
        suffix = path.suffix or "(no extension)"
        extra = ""
        if path.suffix.lower() in (".xlsx", ".xls", ".ods"):
            extra = "; for a spreadsheet, read it with pandas.read_excel() and pass the DataFrame"
        raise DataError(
            f"unknown file type {suffix}; supported: {', '.join(SUPPORTED_SUFFIXES)}",
            path=str(path),
            fix=f"if the file is one of these formats under another name, pass file_type= "
            f"(one of {', '.join(map(repr, FILE_TYPES))}){extra}",
        )
    return ft


def _text_lines(path: str, encoding: str) -> Callable[[], Iterable[tuple[int, str]]]:
    """A function giving (line number, line with its ending) of a file, read line by line when the encoding
    allows (a byte 0x0A always ends a line), else decoded whole first (UTF-16/32)."""
    if _line_safe(encoding):
        return lambda: _file_lines(path, encoding)
    with open(path, "rb") as fh:  # read-only: never modify the user's files
        text = _decode(fh.read(), path, encoding)
    return lambda: enumerate(io.StringIO(text, newline=""), 1)


def _read_file(path: Path, file_type: str | None, encoding: str, per_file_text: bool) -> _Part:
    """A part reading one file in chunks (a JSON document is parsed whole)."""
    name = str(path)
    ft = _type_of(path, file_type)
    if path.stat().st_size == 0:
        raise _empty_file(name)
    if ft == "parquet":
        return _read_parquet(name)
    if ft in ("txt", "md") and per_file_text:
        return _whole_text_file(path, ft, encoding)
    if ft != "json":
        lines = _text_lines(name, encoding)
        if ft == "jsonl":
            part = _Part(lambda rows: _chunked(_jsonl_items(lines(), name), rows), name, "jsonl")
            part.head()  # a broken first line is reported now, before any other file is read
            return part
        if ft in ("csv", "tsv"):
            return _csv_file(lines, name, ft)
        return _plain_file(lines, name, ft)
    with open(path, "rb") as fh:  # read-only: never modify the user's files
        data = fh.read()
    text = _decode(data, name, encoding)
    if not text.strip():
        raise _empty_file(name, "holds only whitespace")
    return _read_json(text, name)


def _line_safe(encoding: str) -> bool:
    """True if b"\\n" always ends a line in `encoding` (not UTF-16/32), so a file can be split into lines as bytes."""
    try:
        return codecs.lookup(encoding).name not in {"utf-16", "utf-16-le", "utf-16-be", "utf-32", "utf-32-le",
                                                    "utf-32-be"}
    except LookupError:
        return False


# --------------------------------------------------------------------------- sources


def _is_hidden(rel: Path) -> bool:
    return any(part.startswith(".") or part == "__pycache__" for part in rel.parts)


def _walk_files(base: Path, follow_symlinks: bool) -> Iterator[tuple[Path, bool]]:
    """(file, leaves_base) for every file under `base`, each real folder visited once.

    Symlinked folders are entered only with `follow_symlinks`, and a folder
    reached twice (a link to itself or to a parent) is not entered again, so
    the walk ends on any tree of links. `leaves_base` is True for a file whose
    real location is outside `base` (through a link to a file or a folder).
    """
    root = base.resolve()
    seen: set[tuple[int, int]] = set()
    files: set[Path] = set()
    for dirpath, dirnames, filenames in os.walk(base, followlinks=follow_symlinks):
        try:
            st = os.stat(dirpath)
        except OSError:
            dirnames[:] = []
            continue
        if (st.st_dev, st.st_ino) in seen:
            dirnames[:] = []
            continue
        seen.add((st.st_dev, st.st_ino))
        dirnames.sort()
        for name in sorted(filenames):
            path = Path(dirpath) / name
            real = path.resolve()
            if real in files:  # the same file again, through another link: read once
                continue
            files.add(real)
            yield path, not real.is_relative_to(root)


def _outside_error(links: list[Path], base: Path) -> DataError:
    shown = ", ".join(str(p) for p in links[:3]) + (f" and {len(links) - 3} more" if len(links) > 3 else "")
    return DataError(f"{len(links)} file(s) here are links to places outside {str(base)!r} ({shown}) and are not "
                     "read", path=str(base),
                     fix="pass follow_symlinks=True to read them, or copy the files into the folder")


def _folder_files(folder: Path, file_type: str | None, follow_symlinks: bool = False) -> list[Path]:
    """Supported files inside `folder`, recursively and sorted; hidden files and folders are skipped.

    Files reached through a symlink that leaves the folder are read only with
    `follow_symlinks` (a shared folder must not make nbtune read, and report,
    files elsewhere on the machine); when only such files are there, the error says so.
    """
    found, others, outside = [], [], []
    for p, leaves in _walk_files(folder, follow_symlinks):
        rel = p.relative_to(folder)
        if _is_hidden(rel) or not p.is_file():
            continue
        if not (file_type or p.suffix.lower() in SUPPORTED_SUFFIXES):
            others.append(p)
        elif leaves and not follow_symlinks:
            outside.append(p)
        else:
            found.append(p)
    if not found and outside:
        raise _outside_error(outside, folder)
    if not found:
        seen = sorted({p.suffix or "(no extension)" for p in others})
        what = f"the folder has no supported data files (found {len(others)} other file(s)"
        what += f" with extension(s) {', '.join(seen)})" if others else ")"
        raise DataError(
            what, path=str(folder),
            fix=f"put {', '.join(SUPPORTED_SUFFIXES)} files in it, or pass file_type= to read the files as one "
            f"of {', '.join(map(repr, FILE_TYPES))}",
        )
    return sorted(found)


def _glob_base(pattern: str) -> tuple[Path, str]:
    """(the folder before the first wildcard, the rest of the pattern)."""
    parts = PurePosixPath(pattern.replace(os.sep, "/")).parts
    k = next(i for i, part in enumerate(parts) if any(ch in part for ch in "*?["))
    base = Path(*parts[:k]) if k else Path(".")
    return base, "/".join(parts[k:])


def _glob_regex(rest: str) -> re.Pattern[str]:
    """A regex for a relative glob: ** spans folders, * and ? stay in one name, [..] as in fnmatch."""
    out = []
    for i, part in enumerate(rest.split("/")):
        last = i == len(rest.split("/")) - 1
        if part == "**":
            out.append("(?:[^/]+/)*" if not last else "(?:[^/]+/)*[^/]+")
            continue
        out.append(fnmatch.translate(part).replace("(?s:", "(?:").removesuffix(r"\Z").replace(".*", "[^/]*")
                   + ("" if last else "/"))
    return re.compile("".join(out) + r"\Z")


def _glob_files(pattern: str, follow_symlinks: bool = False) -> list[Path]:
    """Files matching a glob pattern (** allowed), sorted; none is an error.

    The folders are walked by `_walk_files`, so ``**`` through links that point
    at themselves ends, and files behind links that leave the pattern's base
    folder are skipped unless `follow_symlinks`. As with `glob`, names starting
    with "." match only a pattern part that starts with ".".
    """
    expanded = os.path.expanduser(pattern)
    base, rest = _glob_base(expanded)
    regex_ = _glob_regex(rest)
    matches, outside = [], []
    if base.is_dir():
        for p, leaves in _walk_files(base, follow_symlinks):
            rel = p.relative_to(base).as_posix()
            hidden = any(n.startswith(".") for n in rel.split("/")) and "/." not in "/" + rest
            if hidden or not regex_.match(rel) or not p.is_file():
                continue
            (outside if leaves and not follow_symlinks else matches).append(p)
    if not matches and outside:
        raise _outside_error(outside, base)
    if not matches:
        base_str = re.split(r"[*?\[]", pattern, maxsplit=1)[0]
        folder = Path(base_str) if base_str.endswith(("/", os.sep)) else Path(base_str).parent
        folder = folder if str(folder) else Path(".")
        if folder.is_dir():
            names = sorted(p.name for p in folder.iterdir() if not p.name.startswith("."))[:10]
            fix = f"the folder {str(folder)!r} holds: {', '.join(names) or 'nothing'}; adjust the pattern"
        else:
            fix = f"the folder {str(folder)!r} does not exist (working folder: {os.getcwd()}); check the path"
        raise DataError("the pattern matches no files", path=pattern, fix=fix)
    return sorted(matches, key=str)


_BIDI_CONTROLS = set("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def safe_file_name(name: str, taken: set[str] | None = None) -> str:
    """A file name from outside (an upload) that is safe to create in a folder of ours, or a DataError.

    Folders in the name are dropped (only the last part is kept). Names that
    are empty, ``.`` or ``..``, or that hold NUL or other control characters or
    bidirectional-text controls (which make ``txt.exe`` look like ``exe.txt``),
    or that are longer than 255 bytes in UTF-8, are refused. `taken` (names
    already used in the folder, compared case-insensitively, as macOS and
    Windows do) gets the result added; a repeat becomes ``name (2).ext``.
    """
    base = re.split(r"[/\\]", name)[-1]
    shown = ascii(name)
    if base in ("", ".", ".."):
        raise DataError(f"the upload name {shown} is not a file name", fix="rename the file and upload it again")
    bad = [ch for ch in base if ch in _BIDI_CONTROLS or unicodedata.category(ch) == "Cc"]
    if bad:
        kinds = "bidirectional-text controls" if any(ch in _BIDI_CONTROLS for ch in bad) else "control characters"
        raise DataError(f"the upload name {shown} holds {kinds} ({', '.join(sorted({ascii(c) for c in bad}))})",
                        fix="rename the file with plain characters and upload it again")
    if len(base.encode("utf-8")) > 255:
        raise DataError(f"the upload name is {len(base.encode('utf-8'))} bytes long (at most 255)",
                        fix="rename the file with a shorter name and upload it again")
    if taken is None:
        return base
    stem, dot, suffix = base.rpartition(".") if "." in base.lstrip(".") else (base, "", "")
    candidate, k = base, 1
    while candidate.casefold() in taken:
        k += 1
        candidate = f"{stem} ({k}){dot}{suffix}"
    if len(candidate.encode("utf-8")) > 255:
        raise DataError(f"the upload name {shown} is used more than once and too long to number",
                        fix="rename the files and upload them again")
    taken.add(candidate.casefold())
    return candidate


def _missing_path(given: str) -> DataError:
    """A DataError for a path that does not exist, naming the closest existing name."""
    path = Path(os.path.expanduser(given))
    parent = path.parent
    where = f" (relative paths start in the working folder {os.getcwd()})" if not path.is_absolute() else ""
    if parent.is_dir():
        names = sorted(p.name for p in parent.iterdir() if not p.name.startswith("."))
        close = difflib.get_close_matches(path.name, names, n=1, cutoff=0.5)
        if close:
            fix = f"did you mean {str(parent / close[0])!r}?"
        else:
            fix = f"check the name{where}; that folder holds: {', '.join(names[:10]) or 'nothing'}"
    else:
        fix = f"the folder {str(parent)!r} does not exist either; check the path{where}"
    return DataError("no such file or folder", path=given, fix=fix)


def _looks_like_hub_id(text: str) -> bool:
    """'owner/name' or a bare name without a file extension (and not inside an existing local folder)."""
    if not _HUB_ID.match(text):
        return False
    suffix = PurePosixPath(text).suffix.lower()
    if suffix in SUPPORTED_SUFFIXES or suffix in _OTHER_FILE_SUFFIXES:
        return False
    if "/" not in text and re.fullmatch(r"\.[a-z]{1,6}", suffix):
        return False  # "data.jsonx": a mistyped file name; bare hub ids (imdb, squad) have no dots
    return not ("/" in text and Path(text.split("/")[0]).is_dir())


def _offline() -> bool:
    """True when HF_HUB_OFFLINE or HF_DATASETS_OFFLINE is set (the hub libraries then never go online)."""
    return any(os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on")
               for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))


def _hub_unreachable() -> str | None:
    """Why the hub cannot be reached, found within a few seconds; None when it can (or behind a proxy).

    Without this check `datasets` retries for about half a minute before giving up.
    """
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY",
                                       "all_proxy")):
        return None
    import socket
    from urllib.parse import urlsplit

    try:
        from huggingface_hub import constants

        endpoint = constants.ENDPOINT
    except Exception:  # pragma: no cover - huggingface_hub comes with datasets
        endpoint = "https://huggingface.co"
    parts = urlsplit(endpoint)
    host = parts.hostname or "huggingface.co"
    port = parts.port or (443 if parts.scheme != "http" else 80)
    try:
        with socket.create_connection((host, port), timeout=3):
            return None
    except OSError as exc:
        return f"{host} cannot be reached ({exc.strerror or exc})"


def _hub_error(name: str, split: str, detail: str) -> DataError:
    why = " (HF_HUB_OFFLINE / HF_DATASETS_OFFLINE is set)" if _offline() else ""
    fix = ("check the id (owner/name as shown on huggingface.co/datasets) and the split; connect to the internet "
           "and unset HF_HUB_OFFLINE if it is set; or download the files and pass their path")
    if not _offline():
        fix += "; a dataset downloaded before loads from the cache with HF_HUB_OFFLINE=1 set before starting Python"
    return DataError(
        f"no local file or folder is named {name!r}, and as a Hugging Face hub dataset id (split {split!r}) it "
        f"could not be fetched{why}: {detail}",
        path=name,
        fix=fix,
    )


def _load_hub(name: str, split: str | None) -> datasets.Dataset:
    """datasets.load_dataset(name, split=...) with a plain DataError, quickly, when it cannot be fetched."""
    split = split or "train"
    if not _offline():
        unreachable = _hub_unreachable()
        if unreachable:
            raise _hub_error(name, split, unreachable)
    import datasets

    try:
        return datasets.load_dataset(name, split=split)
    except Exception as exc:  # ConnectionError, DatasetNotFoundError, ValueError (bad split), ...
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise _hub_error(name, split, detail) from None


def _dataset_part(ds: Any, split: str | None, kind: str) -> tuple[_Part, dict]:
    """A Dataset / DatasetDict as a part whose records are fetched column by column."""
    import datasets

    origin: dict = {"kind": kind}
    if isinstance(ds, (datasets.IterableDataset, datasets.IterableDatasetDict)):
        raise DataError(
            "streaming (iterable) datasets are not supported",
            fix="load it with streaming=False, or take a slice: datasets.Dataset.from_list(list(ds.take(10000)))",
        )
    if isinstance(ds, datasets.DatasetDict):
        splits = list(ds)
        if split is not None:
            if split not in ds:
                raise DataError(f"the DatasetDict has no split {split!r} (splits: {', '.join(splits)})",
                                fix=f"pass split= one of {', '.join(map(repr, splits))}")
            chosen = split
        elif "train" in ds:
            chosen = "train"
        elif len(splits) == 1:
            chosen = splits[0]
        else:
            raise DataError(f"the DatasetDict has several splits and none is called 'train' "
                            f"(splits: {', '.join(splits)})", fix=f"pass split= one of {', '.join(map(repr, splits))}")
        ds = ds[chosen]
        origin["split"] = chosen
        origin["splits"] = splits
    elif getattr(ds, "split", None):
        origin["split"] = str(ds.split)
    origin["rows"] = len(ds)
    fingerprint = getattr(ds, "_fingerprint", None)
    if fingerprint:
        origin["fingerprint"] = fingerprint
    if len(ds) == 0:
        raise DataError("the dataset has no rows", fix="pass a dataset (or split) that has rows")

    def select(cols: list[str], rows: int) -> Iterator[_Chunk]:
        table = ds.select_columns(cols).with_format("arrow")
        for start in range(0, len(ds), rows):
            yield _Chunk(table[start : start + rows].to_pylist(), None, start)  # honours select()/filter()

    def read(rows: int) -> Iterator[_Chunk]:
        yield _Chunk(ds.with_format("arrow")[:rows].to_pylist(), None, 0)

    return _Part(read, known_columns=list(ds.column_names), select=select), origin


def _dataframe_part(df: Any) -> tuple[_Part, dict]:
    columns = [str(c) for c in df.columns]
    dupes = sorted({c for c in columns if columns.count(c) > 1})
    if dupes:
        raise DataError(f"the DataFrame has duplicate column names {dupes}", column=dupes[0],
                        fix="rename the columns so each name is used once (df.columns = [...])")
    if len(df) == 0:
        raise DataError("the DataFrame has no rows", fix="pass a DataFrame with rows")
    df = df.set_axis(columns, axis=1)  # a renamed copy: the user's frame is left alone

    def select(cols: list[str], rows: int) -> Iterator[_Chunk]:
        for start in range(0, len(df), rows):
            yield _Chunk(df[cols].iloc[start : start + rows].to_dict("records"), None, start)

    def read(rows: int) -> Iterator[_Chunk]:
        yield _Chunk(df.head(rows).to_dict("records"), None, 0)

    origin = {"kind": "dataframe", "rows": len(df), "columns": columns}
    return _Part(read, known_columns=columns, select=select), origin


def _list_part(items: Sequence[Any]) -> tuple[_Part, dict]:
    items = list(items)
    if not items:
        raise DataError("the list is empty", fix="pass a list of strings, records (dicts) or message lists")
    part = _Part(lambda rows: _slices(items, None, rows))
    part.head()
    return part, {"kind": "list", "rows": len(items)}


def _file_parts(paths: list[Path], file_type: str | None, encoding: str, per_file_text: bool) -> list[_Part]:
    return [_read_file(p, file_type, encoding, per_file_text) for p in paths]


def _read_source(
    source: Any, *, split: str | None, file_type: str | None, encoding: str, follow_symlinks: bool = False
) -> tuple[list[_Part], dict, list[str]]:
    """Parts, origin and files read, for any supported kind of source."""
    type_name = f"{type(source).__module__}.{type(source).__name__}"
    if type_name.startswith("datasets."):
        part, origin = _dataset_part(source, split, "dataset")
        return [part], origin, []
    if type_name.startswith("pandas.") and type(source).__name__ == "DataFrame":
        part, origin = _dataframe_part(source)
        return [part], origin, []
    if type_name.startswith("pandas.") and type(source).__name__ == "Series":
        part, origin = _list_part(source.tolist())
        origin["kind"] = "series"
        return [part], origin, []
    if isinstance(source, (list, tuple)):
        part, origin = _list_part(source)
        return [part], origin, []
    if not isinstance(source, (str, os.PathLike)):
        raise DataError(
            f"cannot load a {type(source).__name__}",
            fix="pass a file, folder or glob path, a pandas DataFrame, a list of strings or dicts, a "
            "datasets.Dataset or a hub dataset id",
        )
    given = os.fspath(source)
    if not given.strip():
        raise DataError("the source is an empty string", fix="pass a file, folder or glob path")
    path = Path(os.path.expanduser(given))
    if path.is_file():
        ft = _type_of(path, file_type)
        parts = _file_parts([path], file_type, encoding, per_file_text=False)
        origin = {"kind": "path", "path": given, "paths": [str(path.resolve())], "file_type": ft, **parts[0].note}
        return parts, origin, [str(path.resolve())]
    if path.is_dir():
        paths = _folder_files(path, file_type, follow_symlinks)
        parts = _file_parts(paths, file_type, encoding, per_file_text=True)
        files = [str(p.resolve()) for p in paths]
        return parts, {"kind": "folder", "path": given, "paths": files}, files
    if any(ch in given for ch in "*?["):
        paths = _glob_files(given, follow_symlinks)
        parts = _file_parts(paths, file_type, encoding, per_file_text=True)
        files = [str(p.resolve()) for p in paths]
        return parts, {"kind": "glob", "pattern": given, "paths": files}, files
    if isinstance(source, str) and _looks_like_hub_id(given):
        ds = _load_hub(given, split)
        part, origin = _dataset_part(ds, None, "hub")
        origin.update({"id": given, "split": split or "train"})
        return [part], origin, []
    raise _missing_path(given)


# --------------------------------------------------------------------------- load


def _message_type(tools: bool) -> Any:
    """The Arrow type of a list of canonical messages (with the tool fields when the data uses tools)."""
    from datasets import List, Value

    fields: dict[str, Any] = {"role": Value("string"), "content": Value("string")}
    if tools:
        function = {"name": Value("string"), "arguments": Value("string")}
        fields["tool_calls"] = List({"id": Value("string"), "type": Value("string"), "function": function})
        fields["tool_call_id"] = Value("string")
        fields["name"] = Value("string")
    return List(fields)


def _features(info: FormatInfo) -> Any:
    """The canonical features: row_id plus text, or plus messages (and the columns a format keeps)."""
    from datasets import Features, List, Value

    if info.format == "text":
        return Features({"row_id": Value("int64"), "text": Value("string")})
    messages = _message_type(info.tools)
    cols: dict[str, Any] = {"row_id": Value("int64"), "messages": messages}
    if info.format == "chat" and "tools" in info.mapping:
        cols["tools"] = Value("string")  # JSON: tool schemas differ from row to row
    if info.format in ("preference", "unpaired_preference"):
        for role in ("prompt", "chosen", "rejected", "completion"):
            if role in info.mapping:
                cols[role] = messages if info.kinds.get(role) == "messages" else Value("string")
        if info.format == "unpaired_preference":
            cols["label"] = Value("bool")
    if info.format == "stepwise":
        cols.update(prompt=Value("string"), completions=List(Value("string")), labels=List(Value("bool")))
    if info.sft:
        cols["sft"] = Value("bool")
    return Features(cols)


def _check_sft(info: FormatInfo, sft: str | None, path: str | None) -> None:
    """Set `info.sft`, checking that the choice fits the format."""
    if sft is None:
        return
    choices = SFT_CHOICES.get(info.format)
    if choices is None:
        raise DataError(
            f"sft={sft!r} is for preference data, but this is {info.format} data ({info.reason})",
            path=path,
            fix="leave sft= out: this data trains on its responses as it is",
        )
    if sft not in choices:
        options = "; ".join(f"sft={k!r}: {v}" for k, v in choices.items())
        raise DataError(f"sft={sft!r} does not fit {info.format.replace('_', ' ')} data", path=path,
                        fix=f"use {options}")
    info.sft = sft


def training_note(info: FormatInfo) -> str:
    """One sentence: what supervised fine-tuning on this data trains on."""
    if info.format == "text":
        return "every token of each document (language modeling)"
    if info.format in PREFERENCE_FORMATS:
        if info.sft:
            return f"sft={info.sft!r}: {SFT_CHOICES[info.format][info.sft]}"
        options = " or ".join(f"sft={k!r} ({v})" for k, v in SFT_CHOICES[info.format].items())
        return (f"nothing yet: {info.format.replace('_', ' ')} data needs a choice before supervised "
                f"fine-tuning; load it with {options}. tokenize() refuses until then")
    note = "the assistant's turns (prompts masked, with response-only loss)"
    if info.tools:
        note = "the assistant's turns, tool calls included (prompts and tool results masked, with response-only loss)"
    return note


class _ArrowRows:
    """Canonical batches written to an Arrow file one chunk at a time, then memory-mapped as a Dataset.

    The file goes to the temporary folder `datasets` deletes when Python exits;
    `Dataset.map` (cleaning, tokenizing) writes its results next to it, so
    later stages stream from disk too. Saving a Session copies the data into
    its workdir.
    """

    def __init__(self, info: FormatInfo) -> None:
        import uuid

        from datasets.arrow_writer import ArrowWriter
        from datasets.fingerprint import get_temporary_cache_files_directory

        self.features = _features(info)
        self.schema = self.features.arrow_schema
        self.path = os.path.join(get_temporary_cache_files_directory(), f"nbtune-load-{uuid.uuid4().hex}.arrow")
        self.writer = ArrowWriter(features=self.features, path=self.path)
        self.rows = 0

    def write(self, batch: dict[str, list]) -> None:
        import pyarrow as pa

        table = pa.Table.from_pydict(batch, schema=self.schema)
        self.writer.write_table(table)
        self.rows += table.num_rows

    def finish(self) -> datasets.Dataset:
        from datasets import Dataset

        self.writer.finalize()
        self.writer.close()
        return Dataset.from_file(self.path)

    def discard(self) -> None:
        self.writer.close()
        with contextlib.suppress(OSError):
            os.remove(self.path)


def _plain_text_reason(parts: list[_Part], per_file: bool) -> str | None:
    if not parts or any(p.file_type not in ("txt", "md") for p in parts):
        return None
    if per_file:
        return ("plain-text .txt/.md files from a folder or glob: each file is one document "
                "(a single file would be split into paragraphs)")
    return ("plain-text .txt/.md file: each non-empty, blank-line-separated paragraph is one document "
            "(load a folder or glob to get one document per file)")


def load_source(
    source: Any,
    *,
    text_column: str | None = None,
    format: str | None = None,
    mapping: dict[str, str] | None = None,
    split: str | None = None,
    file_type: str | None = None,
    encoding: str = "utf-8",
    follow_symlinks: bool = False,
    chunk_rows: int = CHUNK_ROWS,
    sft: str | None = None,
) -> LoadedData:
    """Load `source` into the canonical schema, detecting its format (or using the overrides).

    `source` is a file path (csv, tsv, jsonl/ndjson, json, parquet, txt, md), a
    glob such as ``"data/*.jsonl"``, a folder (its supported files,
    recursively, sorted; hidden files skipped), a pandas DataFrame, a list of
    strings / dicts / message lists, a `datasets.Dataset` or `DatasetDict`
    (``split``, else ``"train"``), or a hub dataset id (``"owner/name"``),
    fetched with `datasets.load_dataset(id, split=split or "train")`.

    A .txt/.md path given on its own is one document per blank-line-separated
    paragraph; files from a folder or glob are one document each.

    `text_column`, `format` and `mapping` override detection; `file_type`
    forces how files are parsed (e.g. a .log file as "txt"); `encoding` is the
    text encoding of the files (UTF-8 by default; a leading BOM is ignored).
    A leading ``~`` is the home folder. In a folder or glob, files behind
    symlinks that lead outside it are not read unless `follow_symlinks=True`
    (a shared folder must not pull in files from elsewhere), and ``**``
    through links that point back at a parent folder ends.
    Every problem raises `DataError` naming the file, line and what to do.

    Rows are read, converted and written to an Arrow file `chunk_rows` at a
    time (fewer for long documents), so memory holds one chunk, not the
    source; the Dataset is memory-mapped from that file. JSONL, CSV/TSV and
    single .txt/.md files are read line by line, parquet by record batches
    and only the needed columns; a .json document is parsed whole. The
    format is detected from the first rows; `LoadedData.chunk_rows` says how
    many rows each chunk held. A row past them that uses tools, when those
    rows did not, makes the load start again with the tool fields.

    Preference, unpaired-preference and stepwise data keep their columns;
    `sft` chooses what supervised fine-tuning trains on (see
    `nbtune.data.formats.SFT_CHOICES`), and without it `tokenize` refuses.
    """
    ft = _normalise_file_type(file_type)
    if chunk_rows < 1:
        raise DataError(f"chunk_rows must be at least 1, not {chunk_rows!r}", fix="pass chunk_rows=10000 or more")
    parts, origin, files = _read_source(source, split=split, file_type=ft, encoding=encoding,
                                        follow_symlinks=follow_symlinks)
    first = parts[0]
    columns: list[str] = []
    for part in parts:
        columns += [c for c in part.columns if c not in columns]
    sample: list[Any] = []
    for part in parts:
        sample.extend(part.head()[: _SAMPLE_ROWS - len(sample)])
        if len(sample) >= _SAMPLE_ROWS:
            break
    info: FormatInfo = resolve_format(columns, sample, text_column=text_column, format=format,
                                      mapping=mapping, path=first.path)
    forced = text_column is not None or format is not None or bool(mapping)
    reason = _plain_text_reason(parts, per_file=origin["kind"] in ("folder", "glob"))
    if reason and not forced:
        info.reason = reason
    first_keys = next((list(r) for r in first.head() if isinstance(r, dict)), [])

    _check_sft(info, sft, first.path)
    try:
        dataset, non_string, examples, chunk_sizes = _write_rows(parts, info, chunk_rows, first_keys)
    except ToolsFound:  # a later row uses tools: start again with the tool fields in the schema
        info.tools = True
        dataset, non_string, examples, chunk_sizes = _write_rows(parts, info, chunk_rows, first_keys)
    for part in parts:  # keys first seen after the detection sample
        columns += [c for c in part.columns if c not in columns]
    if origin["kind"] in ("folder", "glob"):
        origin["file_types"] = sorted({p.file_type for p in parts if p.file_type})
    return LoadedData(
        dataset=dataset,
        format=info.format,
        mapping=dict(info.mapping),
        format_reason=info.reason,
        columns=columns,
        origin=origin,
        files=files,
        non_string_values=non_string,
        non_string_examples=examples,
        chunk_rows=chunk_sizes,
        form=info.form,
        training=training_note(info),
        sft=info.sft,
    )


def _write_rows(parts: list[_Part], info: FormatInfo, chunk_rows: int,
                first_keys: list[str]) -> tuple[datasets.Dataset, int, list[int], list[int]]:
    """Convert every part chunk by chunk into one Arrow file: (dataset, non-string values, examples, chunk sizes)."""
    rows = _ArrowRows(info)
    non_string, examples, chunk_sizes = 0, [], []
    needed = list(dict.fromkeys(info.mapping.values()))
    try:
        for part in parts:
            with contextlib.closing(part.chunks(needed, chunk_rows)) as chunks:  # closes the file on an error
                for chunk in chunks:
                    converted = convert(chunk.records, info, source=part.path, lines=chunk.lines,
                                        start_row_id=rows.rows, first_keys=first_keys, first_row=chunk.first_row)
                    rows.write(converted.batch)
                    chunk_sizes.append(len(chunk.records))
                    non_string += converted.non_string_values
                    examples.extend(converted.non_string_rows[: _MAX_EXAMPLES - len(examples)])
        return rows.finish(), non_string, examples, chunk_sizes
    except BaseException:
        rows.discard()
        raise


# --------------------------------------------------------------------------- problems


_PROBLEM_BATCH = 1_000  # rows per batch read back from Arrow (memory holds one batch of texts)


def _row_batches(loaded: LoadedData) -> Iterator[tuple[list[int], list[Any], bool]]:
    """(row_ids, texts or message lists, is_chat) per batch of rows, read from the Arrow table."""
    data = loaded.dataset
    names = data.column_names
    key = "text" if "text" in names else "messages"
    table = data.with_format("arrow")
    for start in range(0, len(data), _PROBLEM_BATCH):
        part = table[start : start + _PROBLEM_BATCH]  # honours select()/filter() index mappings
        ids = part.column("row_id").to_pylist() if "row_id" in names else list(range(start, start + len(part)))
        yield ids, part.column(key).to_pylist(), key == "messages"


def _rows(n: int) -> str:
    """'1 row is' / '3 rows are'."""
    return "1 row is" if n == 1 else f"{n} rows are"


def find_problems(loaded: LoadedData, *, raw_non_string: int = 0, very_long_chars: int = 20000) -> list[Problem]:
    """Empty rows, conversations with no assistant turn, converted non-string values, very long rows and exact
    duplicates, in that order.

    Only kinds that occur are returned. `raw_non_string` overrides the count of
    converted values recorded while loading (`LoadedData.non_string_values`).
    Rows are read in batches; duplicates are found by a 64-bit hash of each
    row (Python's `hash`), so memory grows with the number of rows, not with
    their text.
    """
    empty: list[int] = []
    long: list[int] = []
    silent: list[int] = []  # conversations without an assistant turn
    n_empty = n_long = n_silent = 0
    hashes: list[np.ndarray] = []  # 64-bit hash of each non-blank row, in order: memory O(rows), not O(text)
    hashed_ids: list[np.ndarray] = []
    for row_ids, values, chat in _row_batches(loaded):
        keys: list[int] = []
        ids: list[int] = []
        for rid, value in zip(row_ids, values, strict=True):
            if chat:
                msgs = value or []
                length = sum(len(m["content"] or "") for m in msgs)
                blank = all(not (m["content"] or "").strip() for m in msgs)
                key: Any = tuple((m["role"], m["content"], str(m.get("tool_calls"))) for m in msgs)
                if not blank and not any(m["role"] == "assistant" for m in msgs):
                    n_silent += 1
                    if len(silent) < _MAX_EXAMPLES:
                        silent.append(rid)
            else:
                text = value or ""
                length = len(text)
                blank = not text.strip()
                key = text
            if blank:  # reported as empty, not again as duplicates
                n_empty += 1
                if len(empty) < _MAX_EXAMPLES:
                    empty.append(rid)
            else:
                keys.append(hash(key))
                ids.append(rid)
            if length > very_long_chars:
                n_long += 1
                if len(long) < _MAX_EXAMPLES:
                    long.append(rid)
        hashes.append(np.array(keys, dtype=np.int64))
        hashed_ids.append(np.array(ids, dtype=np.int64))
    all_hashes = np.concatenate(hashes) if hashes else np.zeros(0, np.int64)
    all_ids = np.concatenate(hashed_ids) if hashed_ids else np.zeros(0, np.int64)
    _, first = np.unique(all_hashes, return_index=True)
    later = np.ones(len(all_hashes), dtype=bool)
    later[first] = False  # every row that is not the first with its value
    n_dupes = int(later.sum())
    dupes = all_ids[later][:_MAX_EXAMPLES].tolist()

    problems: list[Problem] = []
    if n_empty:
        problems.append(Problem(
            "empty", n_empty, empty,
            f"{_rows(n_empty)} empty or only whitespace: they teach the model nothing, and clean() drops "
            "them (min_chars=1, the default).",
        ))
    if n_silent:
        problems.append(Problem(
            "no_response", n_silent, silent,
            f"{_rows(n_silent)} conversations without an assistant turn: with response-only loss they have "
            "nothing to learn from. Add the answers, or remove these rows.",
        ))
    non_string = raw_non_string or loaded.non_string_values
    if non_string:
        was = "value was" if non_string == 1 else "values were"
        problems.append(Problem(
            "non_string", non_string, list(loaded.non_string_examples[:_MAX_EXAMPLES]),
            f"{non_string} {was} not text (numbers or booleans) and converted to text; if that is unexpected, "
            "check that the right column is used (text_column= or mapping=).",
        ))
    if n_long:
        problems.append(Problem(
            "very_long", n_long, long,
            f"{_rows(n_long)} longer than {very_long_chars:,} characters: training cuts or splits them at "
            "context_length tokens. Set max_chars in clean() to drop them instead.",
        ))
    if n_dupes:
        problems.append(Problem(
            "duplicate", n_dupes, dupes,
            f"{_rows(n_dupes)} {'an exact copy' if n_dupes == 1 else 'exact copies'} of an earlier row: "
            "duplicates make the model memorise them. "
            "Enable exact_dedup in clean() (on by default) to drop them.",
        ))
    return problems
