"""The cleaning stage: normalise text, strip markup, mask PII, filter and deduplicate rows.

What and why
------------
Text collected from files, web pages and chat logs carries noise that a small
model learns all too well: HTML tags and entities, mixed Unicode forms, ragged
whitespace, personal data, boilerplate repeated many times and (near-)copies
of the same document. Duplicates in particular make a model memorise instead
of generalise and make validation loss look better than it is.

This module removes that noise in a fixed order (the order of the fields of
`CleanConfig`), with every step a small, pure, named function that can be
tested on its own:

* transforms (change text, never drop a row), applied to ``text`` or to every
  message ``content``: `normalize_unicode`, `strip_html`,
  `collapse_whitespace`, `mask_pii`;
* per-row filters, which judge a row's *document text* (for chat rows all
  contents joined with a newline): `length_reason`, `regex_reason`,
  `repetition_reason`;
* global filters, which compare rows with each other: exact dedup
  (`exact_key`) and near-duplicate dedup (`minhash_signatures` + LSH banding).

Every removed row gets a reason string ("too short: 3 chars < min_chars=5",
"duplicate of row 17", ...) so a report can show *why* data went away, and
`StepStats` counts what each step did. Cleaning never adds rows, never mutates
its input and is idempotent: cleaning cleaned data changes nothing more.

`preview` cleans a seeded random sample in-process (fast enough for an
interactive form); `apply` cleans everything with a batched `Dataset.map` and
then decides the dedup passes globally with numpy.
"""

from __future__ import annotations

import bisect
import contextvars
import hashlib
import html
import ipaddress
import re
import threading
import time
import unicodedata
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import lru_cache, partial
from itertools import chain
from typing import TYPE_CHECKING, Any

import numpy as np
import regex

from nbtune.config import CleanConfig
from nbtune.errors import ConfigError, DataError, NbtuneError

if TYPE_CHECKING:  # pragma: no cover
    import datasets

__all__ = [
    "CleanCancelled",
    "CleanResult",
    "cancellable",
    "redact",
    "StepStats",
    "STEP_KINDS",
    "active_steps",
    "apply",
    "preview",
    "normalize_unicode",
    "strip_html",
    "collapse_whitespace",
    "mask_pii",
    "length_reason",
    "regex_reason",
    "repetition_reason",
    "duplicate_line_fraction",
    "duplicate_ngram_char_fraction",
    "document_text",
    "exact_key",
    "minhash_signatures",
    "lsh_params",
]

try:  # xxhash comes with `datasets`; blake2b is the fallback. Never the salted built-in hash().
    import xxhash

    def _hash64(data: bytes) -> int:
        return xxhash.xxh3_64_intdigest(data)

except ImportError:  # pragma: no cover

    def _hash64(data: bytes) -> int:
        return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little")


# --------------------------------------------------------------------------- cancelling


class CleanCancelled(NbtuneError):
    """A preview (or clean) was cancelled through `cancellable`'s event; nothing was changed."""


_CANCEL: contextvars.ContextVar[threading.Event | None] = contextvars.ContextVar("nbtune_clean_cancel",
                                                                                default=None)


@contextmanager
def cancellable(event: threading.Event) -> Iterator[None]:
    """Cleaning in this block (this thread or task) stops with `CleanCancelled` soon after `event` is set.

    The row loop checks the event before every row, so a newer preview or a
    Cancel button in the app stops an older preview within one row's work
    (every step is linear in the row). A context variable rather than a
    parameter, so `Session.preview_clean` needs no knowledge of it.
    """
    token = _CANCEL.set(event)
    try:
        yield
    finally:
        _CANCEL.reset(token)


def _check_cancelled() -> None:
    event = _CANCEL.get()
    if event is not None and event.is_set():
        raise CleanCancelled("cleaning was cancelled (a newer preview or the Cancel button)")


# --------------------------------------------------------------------------- results


@dataclass
class StepStats:
    """What one cleaning step did."""

    name: str  # e.g. "strip_html", "exact_dedup"
    kind: str  # "transform" or "filter"
    changed: int = 0  # rows whose text this step changed (transforms)
    removed: int = 0  # rows this step dropped (filters)
    changed_examples: list[tuple[int, str, str]] = field(default_factory=list)  # (row_id, before, after)
    removed_examples: list[tuple[int, str, str]] = field(default_factory=list)  # (row_id, text, reason)


@dataclass
class CleanResult:
    """The cleaned rows plus everything a report needs to explain them.

    For a preview every count, length and reason refers to the sample
    (``rows_before`` is the sample size). `apply`'s ``dataset`` is a selection
    of the cleaned table (an indices mapping; ``flatten_indices()`` makes it
    contiguous if needed, which costs ~2 s per 100k rows, so it is not done
    here).
    """

    dataset: datasets.Dataset  # cleaned rows (for a preview: the cleaned sample), same columns as the input
    rows_before: int
    rows_after: int
    steps: list[StepStats]  # only the steps that ran, in order
    lengths_before: list[int]  # characters per row (document text) before cleaning
    lengths_after: list[int]  # and after (kept rows only)
    sampled: bool  # True for a preview on a sample
    seconds: float
    removed_reasons: dict[int, str]  # row_id -> first reason it was removed


#: Every step in pipeline order, with its kind. `active_steps` picks from these.
STEP_KINDS: dict[str, str] = {
    "row_cap": "filter",
    "normalize_unicode": "transform",
    "strip_html": "transform",
    "collapse_whitespace": "transform",
    "mask_pii": "transform",
    "length_filter": "filter",
    "regex_filter": "filter",
    "repetition_filter": "filter",
    "exact_dedup": "filter",
    "near_dedup": "filter",
}
_TRANSFORMS = [name for name, kind in STEP_KINDS.items() if kind == "transform"]


def active_steps(config: CleanConfig) -> list[str]:
    """Names of the steps `config` runs, in pipeline order (see `STEP_KINDS`).

    ``row_cap`` is max_row_chars (judged on the row as loaded, before the
    transforms, which then skip the row), ``length_filter`` covers min/max chars and words, ``regex_filter`` covers
    keep_regex and drop_regex. A bound that cannot remove anything (None, or a
    minimum of 0) does not make its step active.
    """
    c = config
    on = {
        "row_cap": c.max_row_chars is not None,
        "normalize_unicode": c.unicode_form is not None,
        "strip_html": c.strip_html,
        "collapse_whitespace": c.collapse_whitespace,
        "mask_pii": c.mask_pii,
        "length_filter": bool(c.min_chars) or bool(c.min_words) or c.max_chars is not None or c.max_words is not None,
        "regex_filter": c.keep_regex is not None or c.drop_regex is not None,
        "repetition_filter": c.repetition_filter,
        "exact_dedup": c.exact_dedup,
        "near_dedup": c.near_dedup,
    }
    return [name for name in STEP_KINDS if on[name]]


# --------------------------------------------------------------------------- transforms

_MAX_PASSES = 100  # safety cap for the fixed-point loops; each pass that changes text makes it shorter


# Unicode's Stream-Safe Text Format (UAX #15): after 30 combining marks in a row, a COMBINING GRAPHEME
# JOINER (U+034F, itself never reordered). Normalisation sorts each run of combining marks with an
# insertion sort, so without this cap a "zalgo" row of 40,000 marks takes seconds and 400,000 minutes.
_LONG_MARK_RUN = regex.compile(r"[^\P{M}\u034F]{30}(?=[^\P{M}\u034F])")


def normalize_unicode(text: str, form: str = "NFC") -> str:
    """Unicode normalisation (`unicodedata.normalize`); ASCII text is returned as is.

    Runs of more than 30 combining marks get a U+034F after every 30 (the
    Stream-Safe Text Format), which keeps normalisation linear in the row.
    """
    if text.isascii():
        return text
    text = _LONG_MARK_RUN.sub("\\g<0>\u034f", text)
    return unicodedata.normalize(form, text)


# Markdown code is left alone by `strip_html` and `collapse_whitespace`: an
# answer that shows `<div>` or indented Python must keep it.
#
# Every scan below is linear in the row on purpose. A lazy pattern such as
# ``<!--.*?-->`` re-scans the rest of the row from every opening that is never
# closed, so a pasted log of 50,000 "<!--" took minutes; here an opening with no
# closing after it ends the scan (no later opening can be closed either).


def _split_fences(text: str) -> list[str]:
    """[outside, fence, outside, fence, ..., outside]: ``` fenced blocks cut out, in one pass over the lines.

    A fence opens on a line whose first non-blank characters are ```, and
    closes at the first line that is only ``` (spaces or tabs around it) at
    least two lines below, else at the line right below; an opening line with
    no closing line is ordinary text. (This is what the regex
    ``^[ \t]*```[^\n]*\n(?:.*?\n)?[ \t]*```[ \t]*$`` matched, without its
    re-scan of the rest of the row from every unclosed opening.) The fence
    keeps its lines but not the line break after the closing ```.
    """
    lines = text.split("\n")
    n = len(lines)
    starts, pos = [], 0
    for line in lines:
        starts.append(pos)
        pos += len(line) + 1
    close_from = [-1] * (n + 2)  # close_from[k]: first closing line at index >= k (-1: none)
    for k in range(n - 1, -1, -1):
        close_from[k] = k if lines[k].strip(" \t") == "```" else close_from[k + 1]
    parts, out_start, i = [], 0, 0
    while i < n - 1 and close_from[i + 1] >= 0:  # with no closing line below, no line can open a fence
        j = close_from[i + 2] if close_from[i + 2] >= 0 else close_from[i + 1]
        if lines[i].lstrip(" \t").startswith("```"):
            parts += [text[out_start : starts[i]], text[starts[i] : starts[j] + len(lines[j])]]
            out_start, i = starts[j] + len(lines[j]), j + 1
        else:
            i += 1
    parts.append(text[out_start:])
    return parts


def _cut_between(text: str, opener: str, closer: str) -> str:
    """Remove every ``opener ... closer`` span (shortest, left to right); an unclosed opener stays."""
    out, pos = [], 0
    while True:
        start = text.find(opener, pos)
        if start < 0:
            break
        end = text.find(closer, start + len(opener))
        if end < 0:
            break  # no closer anywhere after: no later opener can be closed either
        out.append(text[pos:start])
        pos = end + len(closer)
    out.append(text[pos:])
    return "".join(out) if len(out) > 1 else text
_INLINE_CODE = re.compile(r"(`[^`\n]+`)")

_BLOCK_TAGS = [
    "address", "article", "aside", "blockquote", "body", "br", "caption", "center", "dd", "details", "dialog",
    "dir", "div", "dl", "dt", "fieldset", "figcaption", "figure", "footer", "form", "frameset", "h1", "h2",
    "h3", "h4", "h5", "h6", "head", "header", "hgroup", "hr", "html", "legend", "li", "main", "menu", "nav",
    "noscript", "ol", "p", "pre", "section", "summary", "table", "tbody", "tfoot", "thead", "title", "tr", "ul"
]
_CELL_TAGS = ["td", "th"]
_INLINE_TAGS = [
    "a", "abbr", "acronym", "area", "audio", "b", "base", "basefont", "bdi", "bdo", "big", "blink", "button",
    "canvas", "cite", "code", "col", "colgroup", "data", "datalist", "del", "dfn", "em", "embed", "font",
    "frame", "i", "iframe", "img", "input", "ins", "kbd", "label", "link", "map", "mark", "meta", "meter",
    "nobr", "object", "optgroup", "option", "output", "param", "picture", "progress", "q", "rp", "rt", "ruby",
    "s", "samp", "select", "small", "source", "span", "strike", "strong", "sub", "sup", "svg", "template",
    "textarea", "time", "track", "tt", "u", "var", "video", "wbr", "script", "style", "math"
]
_TAG_REPLACEMENT = {**dict.fromkeys(_BLOCK_TAGS, "\n"), **dict.fromkeys(_CELL_TAGS, " "),
                    **dict.fromkeys(_INLINE_TAGS, "")}
_ATTRS = r"""(?:"[^"]*"|'[^']*'|[^'"<>])*"""
# Only known HTML element names count as tags, so "x<y", "<EMAIL>" or "List<T>"
# in prose and code stay as they are.
_TAG = re.compile(
    r"<(/?)(" + "|".join(sorted(_TAG_REPLACEMENT, key=len, reverse=True)) + r")(?=[\s/>])" + _ATTRS + ">",
    re.I,
)
_SCRIPT_STYLE_OPEN = re.compile(r"<(script|style)\b" + _ATTRS + ">", re.I)
_SCRIPT_STYLE_CLOSE = {"script": re.compile(r"</script\s*>", re.I), "style": re.compile(r"</style\s*>", re.I)}
_DECLARATION = re.compile(r"<![A-Za-z][^<>]*>|<\?[^<>]*\?>|<!\[CDATA\[|\]\]>")
# Entities must end in ";" (plain text such as "R&D" or "&notes" is not touched).
_ENTITY = re.compile(r"&(?:#[0-9]{1,7}|#[xX][0-9a-fA-F]{1,6}|[A-Za-z][A-Za-z0-9]{1,31});")


def _replace_tag(match: re.Match[str]) -> str:
    return _TAG_REPLACEMENT[match.group(2).lower()]


def _strip_markup(text: str) -> str:
    """Remove declarations and tags and decode entities (one pass, outside inline code)."""
    parts = _INLINE_CODE.split(text) if "`" in text else [text]
    for i in range(0, len(parts), 2):  # even indices are outside `code`
        part = _DECLARATION.sub("", parts[i])
        part = _TAG.sub(_replace_tag, part)
        parts[i] = _ENTITY.sub(lambda m: html.unescape(m.group(0)), part)
    return "".join(parts)


def _remove_script_style(text: str) -> str:
    """Remove ``<script ...>...</script>`` and ``<style ...>...</style>`` blocks with their content.

    Each opening tag is matched with the first closing tag of its kind after
    it. The closing tags are found once, in one pass, and looked up by
    bisection, so an opening tag that is never closed costs nothing more than
    finding it.
    """
    if "<" not in text:
        return text
    closers = {kind: ([], []) for kind in _SCRIPT_STYLE_CLOSE}
    for kind, pattern in _SCRIPT_STYLE_CLOSE.items():
        for m in pattern.finditer(text):
            closers[kind][0].append(m.start())
            closers[kind][1].append(m.end())
    if not closers["script"][0] and not closers["style"][0]:
        return text
    out, pos, search_from = [], 0, 0
    while (m := _SCRIPT_STYLE_OPEN.search(text, search_from)) is not None:
        starts, ends = closers[m.group(1).lower()]
        k = bisect.bisect_left(starts, m.end())
        if k == len(starts):  # never closed: the regex would try the next position
            search_from = m.start() + 1
            continue
        out.append(text[pos : m.start()])
        pos = search_from = ends[k]
    out.append(text[pos:])
    return "".join(out) if len(out) > 1 else text


def _strip_html_once(text: str) -> str:
    parts = _split_fences(text) if "```" in text else [text]
    for i in range(0, len(parts), 2):  # even indices are outside ``` fences
        part = _cut_between(parts[i], "<!--", "-->") if "<!--" in parts[i] else parts[i]
        part = _remove_script_style(part)
        parts[i] = _strip_markup(part)
    return "".join(parts)


def strip_html(text: str) -> str:
    """Remove HTML: comments, script/style blocks with their content, tags; decode entities.

    Block-level tags (``<p>``, ``<br>``, ``<li>``...) become line breaks, table
    cells a space, inline tags nothing. Markdown code (``` fences and
    `inline code`) is left as it is. The step repeats until nothing changes, so
    double-escaped text (``&amp;lt;b&amp;gt;``) is fully decoded and the result
    is stable: running it again changes nothing.
    """
    if "<" not in text and "&" not in text:
        return text
    for _ in range(_MAX_PASSES):
        new = _strip_html_once(text)
        if new == text:
            break
        text = new
    return text


_NEWLINES = re.compile(r"\r\n?|[\x85\u2028\u2029]")
_HSPACE = re.compile(r"[^\S\n]{2,}|[^\S \n]")  # runs of whitespace other than newlines, or one odd space
_LINE_EDGE = re.compile(r" ?\n ?")
_BLANK_LINES = re.compile(r"\n{3,}")


def _collapse_plain(text: str) -> str:
    # The `in` / isprintable checks are fast C scans that skip the (slow) regexes when they
    # could not change anything: every whitespace character but " " and "\n" is non-printable.
    if "  " in text or not text.replace("\n", "").isprintable():
        text = _HSPACE.sub(" ", text)
    if " \n" in text or "\n " in text:
        text = _LINE_EDGE.sub("\n", text)
    if "\n\n\n" in text:
        text = _BLANK_LINES.sub("\n\n", text)
    return text


def collapse_whitespace(text: str) -> str:
    """Runs of spaces/tabs become one space, lines are trimmed, at most one blank line in a row, ends stripped.

    Line endings become ``\\n`` and any other whitespace character (tab,
    no-break space...) a plain space. Fenced Markdown code blocks keep their
    indentation (only their line endings are normalised).
    """
    if "\r" in text or "\x85" in text or "\u2028" in text or "\u2029" in text:
        text = _NEWLINES.sub("\n", text)
    if "```" in text:
        parts = _split_fences(text)
        text = "".join(part if i % 2 else _collapse_plain(part) for i, part in enumerate(parts))
    else:
        text = _collapse_plain(text)
    return text.strip(" \n")


_EMAIL = re.compile(r"(?<![\w.%+<>-])[\w.%+-]+@(?:[^\W_][\w-]*\.)+[^\W\d_]{2,}\b")
_IPV6_CANDIDATE = re.compile(
    r"(?<![\w:.<>])(?:[0-9A-Fa-f]{0,4}:){2,7}(?:(?:\d{1,3}\.){3}\d{1,3}|[0-9A-Fa-f]{1,4})?(?![\w:])"
)
_OCTET = r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
_IPV4 = re.compile(rf"(?<![\w.<>])(?:{_OCTET}\.){{3}}{_OCTET}(?!\w|\.\d)")
_PHONE_CANDIDATE = re.compile(r"(?<![\w+.,/<>-])(?:\+ ?)?(?:\(\d{1,5}\) ?)?\d(?:[ .-]?\(?\d\)?)*(?!\w)")
_DATE = re.compile(r"\d{4}[-. ]\d{1,2}[-. ]\d{1,2}|\d{1,2}[-. ]\d{1,2}[-. ]\d{2,4}")
_NANP_SPACED = re.compile(r"\d{3} \d{3} \d{4}")


def _ipv6_or_keep(match: re.Match[str]) -> str:
    """An IPv6 candidate is masked only if it parses and has some digits ("::" in code is not an address)."""
    cand = match.group(0)
    if sum(c in "0123456789abcdefABCDEF" for c in cand) < 2 or not any(c.isdigit() for c in cand):
        return cand
    try:
        ipaddress.IPv6Address(cand)
    except ValueError:
        return cand
    return "<IP>"


def _looks_like_phone(cand: str) -> bool:
    """Decide whether a run of digits and separators is a phone number.

    7-15 digits. With a leading ``+`` or an area code in parentheses it is a
    phone. Otherwise it needs separators, must not be a date (2021-03-04,
    04.03.2021), a list or range of years (1990-2000), or a decimal
    (3.14159265); space-separated groups count only as 3-3-4 (555 123 4567) or
    with a trunk 0 (020 7946 0958), so tables of numbers stay as they are.
    """
    digits = sum(c.isdigit() for c in cand)
    if not 7 <= digits <= 15:
        return False
    if cand.startswith("+") or "(" in cand:
        return True
    groups = re.findall(r"\d+", cand)
    seps = set(re.findall(r"[ .-]", cand))
    if len(groups) < 2 or len(groups[-1]) < 2:
        return False
    if _DATE.fullmatch(cand):
        return False
    if all(len(g) == 4 and 1000 <= int(g) <= 2099 for g in groups):
        return False
    if seps == {"."} and len(groups) == 2:
        return False
    return not (seps == {" "} and not (cand.startswith("0") or _NANP_SPACED.fullmatch(cand)))


def _phone_or_keep(match: re.Match[str]) -> str:
    cand = match.group(0)
    return "<PHONE>" if _looks_like_phone(cand) else cand


_DIGIT = re.compile(r"\d")


def _has_digit(text: str) -> bool:
    """Fast digit test: ten C-level scans for ASCII text, the (Unicode-aware) regex otherwise."""
    if text.isascii():
        return any(d in text for d in "0123456789")
    return _DIGIT.search(text) is not None


def _recording(kind: str, decide: Callable[[re.Match[str]], str] | None,
               found: list[tuple[str, str]]) -> Callable[[re.Match[str]], str]:
    """A `re.sub` replacement that also records (kind, original value) of what it masks."""
    def repl(match: re.Match[str]) -> str:
        out = f"<{kind}>" if decide is None else decide(match)
        if out != match.group(0):
            found.append((kind, match.group(0)))
        return out
    return repl


def _mask_pii_once(text: str, found: list[tuple[str, str]] | None = None) -> str:
    rec = found is not None
    if "@" in text:
        text = _EMAIL.sub(_recording("EMAIL", None, found) if rec else "<EMAIL>", text)  # type: ignore[arg-type]
    if not _has_digit(text):
        return text
    if ":" in text:
        text = _IPV6_CANDIDATE.sub(_recording("IP", _ipv6_or_keep, found) if rec else _ipv6_or_keep, text)  # type: ignore[arg-type]
    if "." in text:
        text = _IPV4.sub(_recording("IP", None, found) if rec else "<IP>", text)  # type: ignore[arg-type]
    return _PHONE_CANDIDATE.sub(_recording("PHONE", _phone_or_keep, found) if rec else _phone_or_keep, text)  # type: ignore[arg-type]


def mask_pii(text: str, found: list[tuple[str, str]] | None = None) -> str:
    """Replace e-mail addresses with <EMAIL>, IPv4/IPv6 addresses with <IP>, phone numbers with <PHONE>.

    Phone numbers need 7-15 digits and a phone-like shape (see
    `_looks_like_phone`): years, dates, decimals and short numbers are not
    masked. Repeats until stable, so the result is idempotent. `found`, if
    given, collects (kind, original value) of everything masked, so reports
    can hide those values wherever else they would show them (`redact`).
    """
    if "@" not in text and not _has_digit(text):
        return text
    for _ in range(_MAX_PASSES):
        new = _mask_pii_once(text, found)
        if new == text:
            break
        text = new
    return text


def redact(text: str, found: Sequence[tuple[str, str]], *, where: bool = False) -> str:
    """`text` for a report when mask_pii is on: no value that was masked in this row, and nothing maskable.

    Each recorded value becomes ``[EMAIL]`` (with `where`: ``[EMAIL at char
    10–28]``, positions in `text`), then `mask_pii` runs over the rest. The
    values are replaced by plain substring search (C speed, linear per value),
    so text the masking saw in another context (inside HTML before strip_html,
    say) is hidden as well.
    """
    kinds: dict[str, str] = {}
    for kind, value in found:
        kinds.setdefault(value, kind)
    spans: list[tuple[int, int, str]] = []
    taken = bytearray(len(text))
    for value in sorted(kinds, key=len, reverse=True):
        start = text.find(value)
        while start >= 0:
            end = start + len(value)
            if not any(taken[start:end]):
                taken[start:end] = b"\x01" * len(value)
                spans.append((start, end, kinds[value]))
            start = text.find(value, end)
    out, pos = [], 0
    for start, end, kind in sorted(spans):
        out.append(text[pos:start])
        out.append(f"[{kind} at char {start}–{end}]" if where else f"[{kind}]")
        pos = end
    out.append(text[pos:])
    return mask_pii("".join(out))


_NO_ANGLES = str.maketrans("<>", "  ")


def redact_raw(text: str) -> str:
    """`text` as loaded (not cleaned), with anything mask_pii would mask hidden, for a report to show.

    Markup is blanked for the search only (``<b>a@b.co</b>`` hides the address
    from mask_pii's look-behind), then the values found are hidden in the
    original text by `redact`.
    """
    found: list[tuple[str, str]] = []
    mask_pii(text.translate(_NO_ANGLES), found)
    return redact(text, found)


# --------------------------------------------------------------------------- per-row filters


def document_text(value: Any) -> str:
    """The text filters judge: the ``text`` itself, or the message contents joined with a newline.

    Empty contents are skipped, so a conversation of blank messages is empty
    (and too short) rather than a run of newlines.
    """
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    return _join_contents([m.get("content") for m in value])


def _join_contents(contents: Sequence[Any]) -> str:
    return "\n".join(c for c in contents if c)


def length_reason(doc: str, config: CleanConfig, n_words: int | None = None) -> tuple[str, str] | None:
    """(setting, reason) if `doc` breaks a length bound, else None."""
    c = config
    n = len(doc)
    if c.min_chars is not None and n < c.min_chars:
        return "min_chars", f"too short: {n} chars < min_chars={c.min_chars}"
    if c.max_chars is not None and n > c.max_chars:
        return "max_chars", f"too long: {n} chars > max_chars={c.max_chars}"
    if c.min_words is not None or c.max_words is not None:
        w = len(doc.split()) if n_words is None else n_words
        if c.min_words is not None and w < c.min_words:
            return "min_words", f"too few words: {w} < min_words={c.min_words}"
        if c.max_words is not None and w > c.max_words:
            return "max_words", f"too many words: {w} > max_words={c.max_words}"
    return None


def regex_reason(doc: str, keep: Any, drop: Any, *, timeout: float | None = None,
                 row_id: int | None = None) -> tuple[str, str] | None:
    """(setting, reason) if `doc` fails keep_regex (no search match) or matches drop_regex.

    The patterns are `regex` module patterns (or `re` ones when there is no
    `timeout`). A search that takes longer than `timeout` seconds raises a
    `ConfigError` naming the pattern and the row: a user's pattern such as
    ``(a+)+$`` backtracks exponentially and would otherwise hang cleaning.
    """
    if keep is not None and _search(keep, doc, timeout, "keep_regex", row_id) is None:
        return "keep_regex", f"does not match keep_regex {keep.pattern!r}"
    if drop is not None:
        m = _search(drop, doc, timeout, "drop_regex", row_id)
        if m is not None:
            return "drop_regex", f"matches drop_regex {drop.pattern!r} (at {m.group(0)[:40]!r})"
    return None


def _search(pattern: Any, doc: str, timeout: float | None, setting: str, row_id: int | None) -> Any:
    if timeout is None:
        return pattern.search(doc)
    try:
        return pattern.search(doc, timeout=timeout)
    except TimeoutError:
        row = f"row {row_id}" if row_id is not None else "a row"
        raise ConfigError(
            f"{setting} {pattern.pattern!r} took longer than {timeout:g} s on {row} ({len(doc):,} characters)",
            column=setting,
            fix="simplify the pattern: repetition of overlapping choices such as (a|aa)+ backtracks exponentially; "
            "anchor it or use a plain substring; or raise regex_timeout",
        ) from None


def duplicate_line_fraction(doc: str) -> float:
    """Share of non-blank lines that repeat an earlier line (Gopher's duplicate-line fraction)."""
    lines = [line.strip() for line in doc.split("\n")]
    lines = [line for line in lines if line]
    if not lines:
        return 0.0
    return 1.0 - len(set(lines)) / len(lines)


def duplicate_ngram_char_fraction(words: Sequence[str], n: int = 5) -> float:
    """Share of word characters inside word n-grams that repeat an earlier n-gram (Gopher, Rae et al. 2021).

    Every word of a repeated occurrence counts once; the first occurrence does
    not (as in datatrove's Gopher filter).
    """
    if len(words) < n:
        return 0.0
    grams = list(zip(*(words[k:] for k in range(n)), strict=False))
    if len(set(grams)) == len(grams):  # the usual case, decided in C
        return 0.0
    total = sum(map(len, words))
    seen: set[tuple[str, ...]] = set()
    marked = bytearray(len(words))
    for i, gram in enumerate(grams):
        if gram in seen:
            marked[i : i + n] = b"\x01" * n
        else:
            seen.add(gram)
    return sum(len(w) for w, m in zip(words, marked, strict=True) if m) / total if total else 0.0


def repetition_reason(doc: str, config: CleanConfig, words: Sequence[str] | None = None) -> tuple[str, str] | None:
    """(setting, reason) if a row of at least `repetition_min_words` words is too repetitive, else None."""
    c = config
    words = doc.split() if words is None else words
    if len(words) < c.repetition_min_words:
        return None
    frac = duplicate_line_fraction(doc)
    if frac > c.max_duplicate_line_fraction:
        return ("max_duplicate_line_fraction",
                f"repetitive: {frac:.0%} duplicated lines > max_duplicate_line_fraction={c.max_duplicate_line_fraction}")
    frac = duplicate_ngram_char_fraction(words, 5)
    if frac > c.max_duplicate_ngram_fraction:
        return ("max_duplicate_ngram_fraction",
                f"repetitive: {frac:.0%} of characters in duplicated 5-grams > "
                f"max_duplicate_ngram_fraction={c.max_duplicate_ngram_fraction}")
    return None


# --------------------------------------------------------------------------- dedup keys


def exact_key(value: Any) -> str:
    """The text exact dedup compares: case-folded with whitespace collapsed.

    For chat rows the roles are part of the key, so the same words split
    differently between user and assistant are not duplicates.
    """
    if value is None:
        return ""
    if isinstance(value, str):
        return " ".join(value.casefold().split())
    return "\x1e".join(f"{m.get('role')}\x1f{' '.join((m.get('content') or '').casefold().split())}" for m in value)


def _exact_hash(value: Any) -> int:
    """63-bit stable hash of `exact_key` (fits an int64 column)."""
    return _hash64(exact_key(value).encode("utf-8", "surrogatepass")) & 0x7FFF_FFFF_FFFF_FFFF


NUM_PERM = 128
_SHINGLE = 5
_WORD = re.compile(r"\w+")
_RNG = np.random.default_rng(0x6E62_7475)  # fixed: signatures are the same in every process and run
_PERM_A = _RNG.integers(1, 2**63, size=NUM_PERM, dtype=np.uint64) * np.uint64(2) + np.uint64(1)  # odd
_PERM_B = _RNG.integers(0, 2**63, size=NUM_PERM, dtype=np.uint64)
_MIX = _RNG.integers(1, 2**63, size=max(_SHINGLE, NUM_PERM), dtype=np.uint64) * np.uint64(2) + np.uint64(1)
_CHUNK = 1 << 14  # shingles per numpy block (x NUM_PERM x 8 bytes = 16 MiB)


def _word_hashes(tokens: list[list[str]], total: int) -> np.ndarray:
    """Stable 64-bit hash of every token, flattened; each distinct word is hashed once."""
    flat = list(chain.from_iterable(tokens))
    try:
        import pyarrow as pa

        encoded = pa.array(flat, type=pa.large_string()).dictionary_encode()
        ids = encoded.indices.to_numpy(zero_copy_only=False)
        vocab = encoded.dictionary.to_pylist()
    except (ImportError, UnicodeError, ValueError):  # pragma: no cover - e.g. lone surrogates
        table: dict[str, int] = {}
        ids = np.fromiter((table.setdefault(w, len(table)) for w in flat), dtype=np.int64, count=total)
        vocab = list(table)
    unique = np.fromiter((_hash64(w.encode("utf-8", "surrogatepass")) for w in vocab), dtype=np.uint64,
                         count=len(vocab))
    return unique[ids]


def minhash_signatures(docs: Sequence[str]) -> np.ndarray:
    """MinHash signatures, shape (len(docs), NUM_PERM) uint32, over case-folded word 5-grams.

    A document of fewer than 5 words is one shingle (its whole normalised
    text). Word hashes are stable (xxhash), 5-grams combine them with fixed odd
    multipliers and each permutation is a multiply-add-shift hash; all of it is
    vectorised with numpy, in blocks of `_CHUNK` shingles.
    """
    n = len(docs)
    sig = np.full((n, NUM_PERM), np.iinfo(np.uint32).max, dtype=np.uint32)
    if n == 0:
        return sig
    tokens = [_WORD.findall(d.casefold()) for d in docs]
    counts = np.fromiter(map(len, tokens), dtype=np.int64, count=n)
    word_hash = _word_hashes(tokens, int(counts.sum()))
    long_doc = counts >= _SHINGLE
    n_sh = np.where(long_doc, counts - (_SHINGLE - 1), 1)
    total = int(n_sh.sum())
    doc_of = np.repeat(np.arange(n), n_sh)
    within = np.arange(total) - np.repeat(np.cumsum(n_sh) - n_sh, n_sh)
    shingles = np.empty(total, dtype=np.uint64)
    is_long = long_doc[doc_of]
    m = len(word_hash)
    if m >= _SHINGLE and is_long.any():
        comb = np.zeros(m - _SHINGLE + 1, dtype=np.uint64)
        for k in range(_SHINGLE):
            comb += word_hash[k : m - _SHINGLE + 1 + k] * _MIX[k]
        src = (np.repeat(np.cumsum(counts) - counts, n_sh) + within)[is_long]
        shingles[is_long] = comb[src]
    short = np.flatnonzero(~long_doc)
    if len(short):
        shingles[~is_long] = np.fromiter(
            (_hash64((" ".join(tokens[i]) if tokens[i] else " ".join(docs[i].casefold().split()))
                     .encode("utf-8", "surrogatepass")) for i in short), dtype=np.uint64, count=len(short))
    shift = np.uint64(32)
    b = _PERM_B[:, None]
    for s0 in range(0, total, _CHUNK):
        s1 = min(total, s0 + _CHUNK)
        h = np.multiply.outer(_PERM_A, shingles[s0:s1])  # (NUM_PERM, chunk): rows are contiguous
        h += b
        h >>= shift
        d = doc_of[s0:s1]
        starts = np.flatnonzero(np.r_[True, d[1:] != d[:-1]])
        red = np.minimum.reduceat(h, starts, axis=1).T.astype(np.uint32)
        rows = d[starts]
        sig[rows] = np.minimum(sig[rows], red)
    return sig


_trapezoid = getattr(np, "trapezoid", None) or np.trapz  # numpy < 2 has only trapz


@lru_cache(maxsize=32)
def lsh_params(threshold: float, num_perm: int = NUM_PERM) -> tuple[int, int]:
    """(bands, rows per band) for LSH banding at `threshold`.

    Two rows become a candidate pair if their signatures agree on all rows of
    at least one band, with probability 1 - (1 - s**r)**b at Jaccard s. As in
    datasketch's MinHashLSH, (b, r) minimise a weighted sum of the
    false-positive area (below the threshold) and the false-negative area
    (above it), but with weights 0.1 / 0.9 instead of 0.5 / 0.5: every
    candidate is verified on the full signature afterwards, so extra
    candidates cost little and missed ones are lost for good. At 0.8 this gives
    14 bands of 9 rows (a pair at Jaccard 0.8 becomes a candidate with
    probability 0.87; datasketch's 9 x 13: 0.40). Bands have at least 2 rows,
    so low thresholds do not turn every shared shingle into a candidate.
    """
    s_lo = np.linspace(0.0, threshold, 201)
    s_hi = np.linspace(threshold, 1.0, 201)
    best, best_err = (1, num_perm), float("inf")
    for b in range(1, num_perm + 1):
        for r in range(2, num_perm // b + 1):
            fp = _trapezoid(1 - (1 - s_lo**r) ** b, s_lo)
            fn = _trapezoid((1 - s_hi**r) ** b, s_hi)
            err = 0.1 * fp + 0.9 * fn
            if err < best_err:
                best, best_err = (b, r), err
    return best


_MAX_REFS = 16  # in one LSH bucket each row is compared with at most this many earlier rows (the first ones)
_MAX_PAIRS = 20_000_000  # ... fewer if bands x rows x refs would exceed this many candidate pairs


def _near_duplicates(sig: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """For rows in order: index of the earlier kept row it nearly duplicates (-1: keep) and the Jaccard estimate.

    Candidate pairs come from LSH buckets, are verified on the full signature
    (estimated Jaccard >= threshold) and decided greedily: a row is dropped if
    it is similar to an earlier row that was kept. Because a big bucket only
    compares each row with its first few members, the pass is repeated on the
    rows left until it removes nothing (almost always once more, at the cost
    of one LSH pass), so a second run removes nothing either.
    """
    n = len(sig)
    partner = np.full(n, -1, dtype=np.int64)
    jaccard = np.zeros(n, dtype=np.float64)
    alive = np.arange(n)
    for _ in range(_MAX_PASSES):
        p, j = _near_duplicates_once(sig[alive], threshold)
        hit = np.flatnonzero(p >= 0)
        if not len(hit):
            break
        partner[alive[hit]] = alive[p[hit]]
        jaccard[alive[hit]] = j[hit]
        alive = alive[p < 0]
    # A row matched in an early pass may point at a row a later pass removed: follow to the kept row.
    for i in np.flatnonzero(partner >= 0).tolist():
        r = partner[i]
        if partner[r] >= 0:
            while partner[r] >= 0:
                r = partner[r]
            partner[i] = r
            jaccard[i] = float((sig[i] == sig[r]).mean())
    return partner, jaccard


def _near_duplicates_once(sig: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """One LSH + verification + greedy pass of `_near_duplicates`."""
    n = len(sig)
    partner = np.full(n, -1, dtype=np.int64)
    jaccard = np.zeros(n, dtype=np.float64)
    if n < 2:
        return partner, jaccard
    bands, rows = lsh_params(threshold, sig.shape[1])
    max_refs = max(2, min(_MAX_REFS, _MAX_PAIRS // (bands * n)))
    lefts, rights = [], []
    for band in range(bands):
        block = sig[:, band * rows : (band + 1) * rows].astype(np.uint64)
        key = (block * _MIX[:rows]).sum(axis=1, dtype=np.uint64)
        order = np.argsort(key, kind="stable")  # equal keys stay in row order
        ks = key[order]
        new = np.r_[True, ks[1:] != ks[:-1]]
        if new.all():
            continue
        gstart = np.flatnonzero(new)
        gid = np.cumsum(new) - 1
        rank = np.arange(n) - gstart[gid]
        for a in range(min(max_refs, int(rank.max()))):
            sel = rank > a
            lefts.append(order[gstart[gid[sel]] + a])
            rights.append(order[sel])
    if not lefts:
        return partner, jaccard
    pair = np.unique(np.concatenate(rights) * n + np.concatenate(lefts))  # sorted by right, then left
    right, left = pair // n, pair % n
    est = np.empty(len(pair), dtype=np.float64)
    for p0 in range(0, len(pair), 1 << 15):
        p1 = p0 + (1 << 15)
        est[p0:p1] = (sig[left[p0:p1]] == sig[right[p0:p1]]).mean(axis=1)
    ok = est >= threshold
    kept = np.ones(n, dtype=bool)
    for lft, rgt, j in zip(left[ok].tolist(), right[ok].tolist(), est[ok].tolist(), strict=True):
        if kept[rgt] and kept[lft]:
            kept[rgt] = False
            partner[rgt] = lft
            jaccard[rgt] = j
    return partner, jaccard


# --------------------------------------------------------------------------- the per-batch pipeline

# Removal codes (int8 column): which setting removed a row. 0 keeps it.
_CODE_SETTINGS = ["", "min_chars", "max_chars", "min_words", "max_words", "keep_regex", "drop_regex",
                  "max_duplicate_line_fraction", "max_duplicate_ngram_fraction", "exact_dedup", "near_dedup",
                  "max_row_chars"]
_CODE = {name: i for i, name in enumerate(_CODE_SETTINGS) if name}
_CODE_STEP = {1: "length_filter", 2: "length_filter", 3: "length_filter", 4: "length_filter",
              5: "regex_filter", 6: "regex_filter", 7: "repetition_filter", 8: "repetition_filter",
              9: "exact_dedup", 10: "near_dedup", 11: "row_cap"}
_COL = "__nbt_"  # prefix of the helper columns the map adds (removed again)
_MAX_CHAIN_PASSES = 5


@dataclass(frozen=True)
class _Plan:
    """A validated config turned into what each batch needs (picklable for num_proc > 1)."""

    config: CleanConfig
    column: str  # "text" or "messages"
    transforms: tuple[tuple[int, Callable[[str], str]], ...]  # (bit, function)
    keep: Any  # regex.Pattern: searched with a timeout
    drop: Any
    steps: tuple[str, ...]

    @classmethod
    def build(cls, config: CleanConfig, column: str) -> _Plan:
        steps = tuple(active_steps(config))
        funcs: dict[str, Callable[[str], str]] = {
            "normalize_unicode": partial(normalize_unicode, form=config.unicode_form or "NFC"),
            "strip_html": strip_html,
            "collapse_whitespace": collapse_whitespace,
            "mask_pii": mask_pii,
        }
        transforms = tuple((1 << i, funcs[name]) for i, name in enumerate(_TRANSFORMS) if name in steps)
        keep = regex.compile(config.keep_regex) if config.keep_regex is not None else None
        drop = regex.compile(config.drop_regex) if config.drop_regex is not None else None
        return cls(config, column, transforms, keep, drop, steps)

    @property
    def row_filters(self) -> bool:
        """True if any per-row filter runs."""
        return any(s in self.steps for s in ("length_filter", "regex_filter", "repetition_filter"))


def _chain(text: str, transforms: Sequence[tuple[int, Callable[[str], str]]]) -> tuple[str, int]:
    """Run the transforms in order until nothing changes; return the text and a bitmask of steps that changed it.

    Each step is idempotent alone; repeating the chain also settles the rare
    interplay between steps (an entity decoded by strip_html that unicode
    normalisation would compose), so the whole pipeline is idempotent.
    """
    bits = 0
    for _ in range(_MAX_CHAIN_PASSES):
        start = text
        for bit, fn in transforms:
            new = fn(text)
            if new != text:
                bits |= bit
                text = new
        if text == start:
            break
    return text, bits


def _transform_value(value: Any, plan: _Plan) -> tuple[Any, int]:
    """Apply the transforms to a text value or to every message content (other message keys kept)."""
    if value is None or not plan.transforms:
        return value, 0
    if isinstance(value, str):
        return _chain(value, plan.transforms)
    bits = 0
    out = []
    for message in value:
        content = message.get("content")
        if isinstance(content, str):
            content, b = _chain(content, plan.transforms)
            bits |= b
        out.append({**message, "content": content})
    return out, bits


def _judge(doc: str, plan: _Plan, row_id: int | None = None) -> tuple[str, str] | None:
    """The first per-row filter that rejects `doc`, as (setting, reason); None keeps the row."""
    c = plan.config
    words = None
    if "length_filter" in plan.steps:
        if c.min_words is not None or c.max_words is not None:
            words = doc.split()
        hit = length_reason(doc, c, None if words is None else len(words))
        if hit:
            return hit
    if "regex_filter" in plan.steps:
        hit = regex_reason(doc, plan.keep, plan.drop, timeout=c.regex_timeout, row_id=row_id)
        if hit:
            return hit
    if "repetition_filter" in plan.steps:
        return repetition_reason(doc, c, words)
    return None


def _process_batch(batch: dict[str, list], plan: _Plan) -> dict[str, Any]:
    """Transforms, per-row filters and dedup hashes for one batch (the function `Dataset.map` runs)."""
    values = batch[plan.column]
    row_ids = batch.get("row_id")
    n = len(values)
    new_values = []
    bits = np.zeros(n, dtype=np.int16)
    len0 = np.zeros(n, dtype=np.int32)
    len1 = np.zeros(n, dtype=np.int32)
    code = np.zeros(n, dtype=np.int8)
    reasons = [""] * n
    docs = []
    row_filters = plan.row_filters
    cap = plan.config.max_row_chars
    cancel = _CANCEL.get()
    for i, value in enumerate(values):
        if cancel is not None and cancel.is_set():
            _check_cancelled()
        len0[i] = len(document_text(value))
        if cap is not None and len0[i] > cap:  # too big to clean: judged as loaded, never transformed
            new_values.append(value)
            docs.append("")
            code[i] = _CODE["max_row_chars"]
            reasons[i] = f"too long to clean: {len0[i]:,} chars > max_row_chars={cap:,}"
            len1[i] = len0[i]
            continue
        new, b = _transform_value(value, plan)
        new_values.append(new)
        bits[i] = b
        doc = document_text(new)
        docs.append(doc)
        len1[i] = len(doc)
        if row_filters:
            hit = _judge(doc, plan, None if row_ids is None else row_ids[i])
            if hit is not None:
                code[i] = _CODE[hit[0]]
                reasons[i] = hit[1]
    out: dict[str, Any] = {plan.column: new_values, f"{_COL}code": code, f"{_COL}reason": reasons,
                           f"{_COL}bits": bits, f"{_COL}len0": len0, f"{_COL}len1": len1}
    alive = np.flatnonzero(code == 0)
    if "exact_dedup" in plan.steps:
        h = np.zeros(n, dtype=np.int64)
        h[alive] = np.fromiter((_exact_hash(new_values[i]) for i in alive), dtype=np.int64, count=len(alive))
        out[f"{_COL}hash"] = h
    if "near_dedup" in plan.steps:
        sig = np.zeros((n, NUM_PERM), dtype=np.uint32)
        sig[alive] = minhash_signatures([docs[i] for i in alive])
        out[f"{_COL}sig"] = sig
    return out


def _helper_features(plan: _Plan) -> dict[str, Any]:
    from datasets import List, Value

    feats: dict[str, Any] = {f"{_COL}code": Value("int8"), f"{_COL}reason": Value("string"),
                             f"{_COL}bits": Value("int16"), f"{_COL}len0": Value("int32"),
                             f"{_COL}len1": Value("int32")}
    if "exact_dedup" in plan.steps:
        feats[f"{_COL}hash"] = Value("int64")
    if "near_dedup" in plan.steps:
        feats[f"{_COL}sig"] = List(Value("uint32"), length=NUM_PERM)
    return feats


# --------------------------------------------------------------------------- global decisions and stats


@dataclass
class _Outcome:
    """Per-row arrays of one cleaning run, in row order, before the final selection."""

    row_ids: np.ndarray
    code: np.ndarray  # int8, 0 = kept
    reasons: list[str]
    bits: np.ndarray
    len0: np.ndarray
    len1: np.ndarray
    hashes: np.ndarray | None
    sig: np.ndarray | None


def _dedup(out: _Outcome, plan: _Plan) -> None:
    """Exact then near-duplicate dedup over the rows the per-row filters kept; fills code and reasons in place."""
    ids = out.row_ids
    exact_of: dict[int, int] = {}
    if out.hashes is not None:
        alive = np.flatnonzero(out.code == 0)
        if len(alive):
            _, first, inverse = np.unique(out.hashes[alive], return_index=True, return_inverse=True)
            rep = alive[first[inverse.ravel()]]
            for i, r in zip(alive[rep != alive].tolist(), rep[rep != alive].tolist(), strict=True):
                out.code[i] = _CODE["exact_dedup"]
                out.reasons[i] = f"duplicate of row {ids[r]}"
                exact_of[i] = r
    if out.sig is not None:
        alive = np.flatnonzero(out.code == 0)
        partner, jac = _near_duplicates(out.sig[alive], plan.config.near_dedup_threshold)
        near_of: dict[int, int] = {}
        for k in np.flatnonzero(partner >= 0).tolist():
            i, r = int(alive[k]), int(alive[partner[k]])
            out.code[i] = _CODE["near_dedup"]
            out.reasons[i] = f"near-duplicate of row {ids[r]} (Jaccard≈{jac[k]:.2f})"
            near_of[i] = r
        if near_of and exact_of:  # an exact duplicate of a row near_dedup removed: name the row that stays
            for i, r in exact_of.items():
                if r in near_of:
                    out.reasons[i] = f"duplicate of row {ids[r]}, itself a near-duplicate of row {ids[near_of[r]]}"


_FIXES = {
    "max_row_chars": "raise max_row_chars (now {v}) or set it to None",
    "min_chars": "lower min_chars (now {v}) or set it to None",
    "max_chars": "raise max_chars (now {v}) or set it to None",
    "min_words": "lower min_words (now {v}) or set it to None",
    "max_words": "raise max_words (now {v}) or set it to None",
    "keep_regex": "loosen keep_regex {v!r} (no row matched it) or set it to None",
    "drop_regex": "narrow drop_regex {v!r} (every row matched it) or set it to None",
    "max_duplicate_line_fraction": "raise max_duplicate_line_fraction (now {v}) or repetition_min_words, "
                                   "or set repetition_filter=False",
    "max_duplicate_ngram_fraction": "raise max_duplicate_ngram_fraction (now {v}) or repetition_min_words, "
                                    "or set repetition_filter=False",
    "exact_dedup": "set exact_dedup=False to keep duplicates",
    "near_dedup": "raise near_dedup_threshold (now {v}) or set near_dedup=False",
}


def _raise_if_empty(out: _Outcome, plan: _Plan, sampled: bool) -> None:
    """Cleaning everything away is almost always a setting that is too strict: say which one."""
    n = len(out.code)
    if n and (out.code != 0).all():
        counts = Counter(out.code.tolist())
        parts, fixes = [], []
        for code, count in counts.most_common():
            setting = _CODE_SETTINGS[code]
            if setting == "near_dedup":
                value = plan.config.near_dedup_threshold
                label = f"near_dedup_threshold={value!r}"
            else:
                value = getattr(plan.config, setting)
                label = setting if setting == "exact_dedup" else f"{setting}={value!r}"
            parts.append(f"{label} removed {count} of {n} rows ({_CODE_STEP[code]})")
            fixes.append(_FIXES[setting].format(v=value))
        what = f"cleaning removed every row{' of the preview sample' if sampled else ''}: " + "; ".join(parts)
        emptied = int(((out.len0 > 0) & (out.len1 == 0)).sum())
        if emptied:
            what += (f" ({emptied} rows had text before cleaning and none after the transforms, e.g. only "
                     "whitespace or only HTML markup / <script> content)")
        raise DataError(what, column=plan.column, fix="; ".join(fixes))


_MASK_BIT = 1 << _TRANSFORMS.index("mask_pii")


def _trace(value: Any, plan: _Plan, found: list[tuple[str, str]] | None = None) -> dict[int, tuple[str, str]]:
    """For one row: bit -> (document before, after) of the first change each transform made.

    `found` collects what mask_pii masked in this row (see `redact`).
    """
    first: dict[int, tuple[str, str]] = {}
    contents = [value] if isinstance(value, str) else [m.get("content") for m in value or []]
    transforms = [(bit, partial(mask_pii, found=found) if bit == _MASK_BIT and found is not None else fn)
                  for bit, fn in plan.transforms]
    for _ in range(_MAX_CHAIN_PASSES):
        changed_any = False
        for bit, fn in transforms:
            new = [fn(c) if isinstance(c, str) else c for c in contents]
            if new != contents:
                changed_any = True
                if bit not in first:
                    first[bit] = (_join_contents(contents), _join_contents(new))
                contents = new
        if not changed_any:
            break
    return first


def _step_stats(out: _Outcome, plan: _Plan, originals: Callable[[list[int]], list],
                cleaned: Callable[[list[int]], list]) -> list[StepStats]:
    """Counts from the per-row arrays; up to 5 examples per step (transforms re-traced on the original rows)."""
    stats = []
    bit_of = {name: 1 << i for i, name in enumerate(_TRANSFORMS)}
    masking = "mask_pii" in plan.steps
    for name in plan.steps:
        _check_cancelled()
        st = StepStats(name=name, kind=STEP_KINDS[name])
        if st.kind == "transform":
            bit = bit_of[name]
            hit = np.flatnonzero(out.bits & bit)
            st.changed = len(hit)
            idx = hit[:5].tolist()
            for i, value in zip(idx, originals(idx), strict=True):
                found: list[tuple[str, str]] | None = [] if masking else None
                before, after = _trace(value, plan, found).get(bit, ("", ""))
                if found is not None:  # masked means masked: no example shows a value mask_pii hid
                    before, after = redact(before, found, where=name == "mask_pii"), redact(after, found)
                st.changed_examples.append((int(out.row_ids[i]), before, after))
        else:
            codes = [c for c, step in _CODE_STEP.items() if step == name]
            hit = np.flatnonzero(np.isin(out.code, codes))
            st.removed = len(hit)
            idx = hit[:5].tolist()
            for i, value in zip(idx, cleaned(idx), strict=True):
                st.removed_examples.append((int(out.row_ids[i]), _removed_text(value, name, masking),
                                            out.reasons[i]))
        stats.append(st)
    return stats


_CAPPED_SHOWN = 1000  # characters of a row removed by max_row_chars kept as its example (it was never cleaned)


def _removed_text(value: Any, step: str, masking: bool) -> str:
    """A removed row's text for its example; a capped row was never transformed, so it is cut (and masked)."""
    text = document_text(value)
    if step != "row_cap":
        return text
    if masking:  # not masked by the pipeline: say what it is instead of showing it
        return f"({len(text):,} characters, not cleaned and not shown because mask_pii is on)"
    return text[:_CAPPED_SHOWN] + f"… (+{len(text) - _CAPPED_SHOWN:,} chars)"


# --------------------------------------------------------------------------- public entry points


def _content_column(dataset: datasets.Dataset) -> str:
    cols = dataset.column_names
    for name in ("text", "messages"):
        if name in cols:
            return name
    raise DataError(f"no 'text' or 'messages' column to clean (columns: {', '.join(cols)})",
                    fix="load the data with nbtune's loader, which produces the canonical row schema")


def _result(out: _Outcome, plan: _Plan, keep: np.ndarray, data: datasets.Dataset, steps: list[StepStats],
            sampled: bool, t0: float) -> CleanResult:
    removed = np.flatnonzero(out.code != 0)
    return CleanResult(
        dataset=data,
        rows_before=len(out.code),
        rows_after=len(keep),
        steps=steps,
        lengths_before=out.len0.tolist(),
        lengths_after=out.len1[keep].tolist(),
        sampled=sampled,
        seconds=time.perf_counter() - t0,
        removed_reasons={int(out.row_ids[i]): out.reasons[i] for i in removed.tolist()},
    )


def _check_not_empty(dataset: datasets.Dataset) -> None:
    if len(dataset) == 0:
        raise DataError("the dataset has no rows to clean", fix="check the source you loaded")


def preview(dataset: datasets.Dataset, config: CleanConfig, *, sample_size: int = 2000, seed: int = 0) -> CleanResult:
    """Clean a seeded random sample (all rows if there are fewer) to see what the settings do.

    Runs in-process without `Dataset.map`, so it is quick enough to rerun on
    every change of a settings form (well under a second for 2,000 short rows
    of a 100k-row dataset). Exact and near dedup only see the sample: a row
    whose duplicate was not sampled is kept here but may be removed by
    `apply`. The sample keeps the original row order.
    """
    t0 = time.perf_counter()
    config.validate()
    column = _content_column(dataset)
    _check_not_empty(dataset)
    plan = _Plan.build(config, column)
    dataset = dataset.with_format(None)  # plain Python rows whatever format the caller set
    n = len(dataset)
    sampled = sample_size < n
    if sampled:
        idx = np.sort(np.random.default_rng(seed).choice(n, size=max(sample_size, 1), replace=False))
        sample = dataset.select(idx)
    else:
        sample = dataset
    rows = sample[:]
    res = _process_batch(rows, plan)
    row_ids = np.asarray(rows["row_id"], dtype=np.int64) if "row_id" in rows else np.arange(len(sample))
    out = _Outcome(row_ids, res[f"{_COL}code"], res[f"{_COL}reason"], res[f"{_COL}bits"], res[f"{_COL}len0"],
                   res[f"{_COL}len1"], res.get(f"{_COL}hash"), res.get(f"{_COL}sig"))
    _check_cancelled()
    _dedup(out, plan)
    _raise_if_empty(out, plan, sampled)
    keep = np.flatnonzero(out.code == 0)
    cleaned_values = res[column]
    steps = _step_stats(out, plan, lambda ix: [rows[column][i] for i in ix], lambda ix: [cleaned_values[i] for i in ix])
    from datasets import Dataset

    kept = {name: [(cleaned_values if name == column else rows[name])[i] for i in keep.tolist()]
            for name in sample.column_names}
    data = Dataset.from_dict(kept, features=sample.features)
    return _result(out, plan, keep, data, steps, sampled, t0)


#: `apply`'s number of processes when `num_proc` is None. Measured on the 2-core target machine
#: (benchmarks/results/clean.md), which also ran other work: handing shards to worker processes and
#: collecting their Arrow files cost more than the second core saved for the default steps in every
#: run (100k short rows: ~2-4 s in one process, ~3.3-6.5 s in two); with near_dedup on, two processes
#: won only 3 of 9 paired runs. Pass num_proc=2 (or more, on bigger or idle machines) to override.
DEFAULT_NUM_PROC = 1


def apply(dataset: datasets.Dataset, config: CleanConfig, *, num_proc: int | None = None) -> CleanResult:
    """Clean every row: transforms and per-row filters in one batched `Dataset.map`, then global dedup.

    The map also computes each row's dedup hash (and MinHash signature when
    near_dedup is on); which rows to keep is then decided in one pass with
    numpy. `num_proc=None` means `DEFAULT_NUM_PROC` (1: a second process
    measured slower on a 2-core machine). Raises `DataError` if nothing
    would be left, naming the settings that removed the rows.
    """
    t0 = time.perf_counter()
    config.validate()
    column = _content_column(dataset)
    _check_not_empty(dataset)
    plan = _Plan.build(config, column)
    dataset = dataset.with_format(None)  # the map gets plain Python rows whatever format the caller set
    if num_proc is None:
        num_proc = DEFAULT_NUM_PROC
    num_proc = max(1, min(num_proc, len(dataset)))
    from datasets import Features

    features = Features({**dataset.features, **_helper_features(plan)})
    fingerprint = hashlib.blake2b(
        f"nbtune.clean/1|{dataset._fingerprint}|{sorted(config.to_dict().items())!r}".encode(), digest_size=16
    ).hexdigest()
    mapped = dataset.map(
        _process_batch, fn_kwargs={"plan": plan}, batched=True, batch_size=1000, features=features,
        num_proc=num_proc if num_proc > 1 else None, new_fingerprint=fingerprint, load_from_cache_file=False,
        desc="Cleaning",
    )
    if mapped._indices is not None:  # pragma: no cover - map writes a fresh table
        mapped = mapped.flatten_indices()
    table = mapped.data

    def col(name: str) -> np.ndarray:
        return table.column(f"{_COL}{name}").to_numpy()

    sig = None
    if "near_dedup" in plan.steps:
        sig = table.column(f"{_COL}sig").combine_chunks().flatten().to_numpy().reshape(-1, NUM_PERM)
    row_ids = (table.column("row_id").to_numpy().astype(np.int64) if "row_id" in mapped.column_names
               else np.arange(len(mapped), dtype=np.int64))
    out = _Outcome(row_ids, col("code").copy(), table.column(f"{_COL}reason").to_pylist(), col("bits"),
                   col("len0"), col("len1"), col("hash") if "exact_dedup" in plan.steps else None, sig)
    _dedup(out, plan)
    _raise_if_empty(out, plan, False)
    keep = np.flatnonzero(out.code == 0)
    steps = _step_stats(out, plan, lambda ix: list(dataset.select(ix)[column]) if ix else [],
                        lambda ix: list(mapped.select(ix)[column]) if ix else [])
    helpers = [c for c in mapped.column_names if c.startswith(_COL)]
    data = mapped.remove_columns(helpers)
    if len(keep) < len(data):
        data = data.select(keep)
    return _result(out, plan, keep, data, steps, False, t0)


def transform_rows(values: Sequence[Any], config: CleanConfig, column: str) -> list[Any]:
    """Each text (or message list) through the recipe's transforms only (no row is removed, order kept).

    The transforms are idempotent, so cleaning these values again gives the same rows as cleaning the
    originals: what a copy of the data may hold when the originals must not leave (masked PII).
    """
    plan = _Plan.build(config, column)
    return [_transform_value(value, plan)[0] for value in values]
