"""One settings dataclass per pipeline stage.

Each field carries `metadata={"help": ...}` (and, where it helps, `choices`,
`min`, `max`). The Python API takes these objects (or their fields as keyword
arguments) and the widget forms are generated from the very same fields, so the
help text in a tooltip is the help text in `help(CleanConfig)` and the two can
never drift apart.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field, fields
from typing import Any, TypeVar

from nbtune.errors import ConfigError

T = TypeVar("T")


def _opt(default: Any, help: str, **extra: Any) -> Any:
    """A dataclass field with help text (and optional choices / bounds)."""
    return field(default=default, metadata={"help": help, **extra})


class _Config:
    """Shared behaviour: validation, dict round-trip, keyword overrides."""

    def validate(self) -> None:
        for f in fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            meta = f.metadata
            if value is None:
                continue
            if "choices" in meta and value not in meta["choices"]:
                raise ConfigError(
                    f"{value!r} is not a valid choice",
                    column=f.name,
                    fix=f"use one of {', '.join(map(repr, meta['choices']))}",
                )
            if "min" in meta and isinstance(value, (int, float)) and value < meta["min"]:
                raise ConfigError(f"{value!r} is below the minimum {meta['min']}", column=f.name,
                                  fix=f"set {f.name} to at least {meta['min']}")
            if "max" in meta and isinstance(value, (int, float)) and value > meta["max"]:
                raise ConfigError(f"{value!r} is above the maximum {meta['max']}", column=f.name,
                                  fix=f"set {f.name} to at most {meta['max']}")
        self._check()

    def _check(self) -> None:
        """Cross-field checks; subclasses override."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls: type[T], data: dict[str, Any]) -> T:
        known = {f.name for f in fields(cls)}  # type: ignore[arg-type]
        return cls(**{k: v for k, v in data.items() if k in known})

    def replace(self: T, **changes: Any) -> T:
        """A copy with some fields changed; unknown names raise a ConfigError."""
        known = {f.name for f in fields(self)}  # type: ignore[arg-type]
        unknown = sorted(set(changes) - known)
        if unknown:
            raise ConfigError(
                f"unknown setting(s) {', '.join(unknown)} for {type(self).__name__}",
                fix=f"valid settings are: {', '.join(sorted(known))}",
            )
        new = dataclasses.replace(self, **changes)  # type: ignore[type-var]
        new.validate()  # type: ignore[attr-defined]
        return new


@dataclass
class SplitConfig(_Config):
    """How the loaded rows are split into training and validation sets."""

    validation_fraction: float = _opt(0.1, "Share of rows held out for validation (0 disables the split).",
                                      min=0.0, max=0.5)
    seed: int = _opt(0, "Random seed of the split; the same seed always gives the same split.")


@dataclass
class CleanConfig(_Config):
    """The cleaning recipe: which steps run, in this order, and their settings.

    Transform steps change text; filter steps drop whole rows and record why.
    For chat and instruction data the transforms apply to every message and the
    filters look at all the messages of a row together.
    """

    unicode_form: str | None = _opt("NFC", "Unicode normalisation form (None to skip). NFKC also folds look-alike "
                                    "characters such as full-width letters.", choices=["NFC", "NFKC", "NFD", "NFKD"])
    strip_html: bool = _opt(True, "Remove HTML tags and decode entities such as &amp;amp;.")
    collapse_whitespace: bool = _opt(True, "Collapse runs of spaces and tabs, trim lines and drop repeated blank lines.")
    mask_pii: bool = _opt(False, "Replace e-mail addresses, phone numbers and IP addresses with <EMAIL>, <PHONE>, <IP>.")
    min_chars: int | None = _opt(1, "Drop rows shorter than this many characters (None: no lower bound).", min=0)
    max_chars: int | None = _opt(None, "Drop rows longer than this many characters (None: no upper bound).", min=1)
    min_words: int | None = _opt(None, "Drop rows with fewer words than this (None: no lower bound).", min=0)
    max_words: int | None = _opt(None, "Drop rows with more words than this (None: no upper bound).", min=1)
    keep_regex: str | None = _opt(None, "Keep only rows that match this regular expression.")
    drop_regex: str | None = _opt(None, "Drop rows that match this regular expression.")
    repetition_filter: bool = _opt(True, "Drop repetitive rows (Gopher-style: too many duplicated lines or "
                                   "duplicated word n-grams). Only rows with at least `repetition_min_words` words "
                                   "are judged.")
    max_duplicate_line_fraction: float = _opt(0.3, "Repetition filter: highest allowed share of duplicated lines.",
                                              min=0.0, max=1.0)
    max_duplicate_ngram_fraction: float = _opt(0.15, "Repetition filter: highest allowed share of characters inside "
                                               "duplicated word 5-grams.", min=0.0, max=1.0)
    repetition_min_words: int = _opt(50, "Repetition filter: rows with fewer words are never judged repetitive.",
                                     min=0)
    exact_dedup: bool = _opt(True, "Drop rows whose normalised text (case-folded, whitespace-collapsed) was seen "
                             "before; the first occurrence is kept.")
    near_dedup: bool = _opt(False, "Drop near-duplicates (MinHash + LSH over word 5-grams); slower than exact dedup.")
    near_dedup_threshold: float = _opt(0.8, "Near-dedup: estimated Jaccard similarity at or above which two rows "
                                       "count as duplicates.", min=0.1, max=1.0)

    def _check(self) -> None:
        for low, high in (("min_chars", "max_chars"), ("min_words", "max_words")):
            lo, hi = getattr(self, low), getattr(self, high)
            if lo is not None and hi is not None and lo > hi:
                raise ConfigError(f"{low}={lo} is larger than {high}={hi}", column=low,
                                  fix=f"lower {low} or raise {high}")
        for name in ("keep_regex", "drop_regex"):
            pattern = getattr(self, name)
            if pattern is None:
                continue
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ConfigError(f"invalid regular expression {pattern!r}: {exc.msg}", column=name,
                                  fix=f"fix the pattern near position {exc.pos}") from None


@dataclass
class TokenizerConfig(_Config):
    """Which tokenizer turns text into tokens, and how rows become training sequences."""

    tokenizer: str = _opt("bpe", "'bpe' trains a new byte-level BPE tokenizer on the session's training split; "
                          "anything else is a local folder or a hub id of a pretrained tokenizer.")
    vocab_size: int = _opt(4096, "Vocabulary size of a newly trained BPE tokenizer.", min=260, max=262144)
    context_length: int = _opt(512, "Longest training sequence in tokens; longer rows are truncated or split.",
                               min=8, max=131072)
    pack: bool = _opt(True, "Pack several rows into each sequence (no padding waste); document boundaries are kept.")
    response_only_loss: bool = _opt(True, "For instruction and chat data, learn only from the assistant's tokens "
                                    "(prompt tokens are masked).")
    trust_remote_code: bool = _opt(False, "Allow a hub tokenizer to run its own Python code. Only for sources you trust.")
