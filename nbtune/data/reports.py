"""The data stages' report objects, built from what the stages computed.

The report classes (`nbtune.viz.data_reports`) only display; this module
measures what they show: lengths batch by batch (no list of every document's
text), the split sizes, the first row's tokens with their loss mask.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from nbtune.config import SplitConfig, TokenizerConfig
from nbtune.data import column, text_lengths
from nbtune.data.split import split_rows
from nbtune.viz.data_reports import CleanReport, LoadReport, ProblemInfo, StepRow, TokenReport

EXAMPLE_TOKENS = 1024  # the token report's example row: enough for a tool schema, a call and the answer


def row_text(row: dict[str, Any]) -> str:
    """One line of readable text for a row (chat rows as 'role: content' lines)."""
    if "text" in row:
        return row["text"]
    return "\n".join(f"{m['role']}: {m['content']}" for m in row["messages"])


def describe_origin(origin: dict[str, Any]) -> str:
    """Where loaded rows came from, in a few words ("jsonl notes/a.jsonl", "embedded example 'kjv'")."""
    kind = origin.get("kind", "?")
    if kind == "example":
        return f"embedded example '{origin.get('name')}'"
    for key in ("path", "pattern", "id", "description"):
        if origin.get(key):
            return f"{kind} {origin[key]}"
    return str(kind)


def load_report(dataset: Any, loaded: Any, origin: dict, problems: list[ProblemInfo], split_config: SplitConfig,
                seconds: float) -> LoadReport:
    """What was loaded: format and why, columns, lengths, the split it would get, problems, a sample."""
    chars, words = text_lengths(dataset)  # batch by batch: no list of every document's text
    train, val = split_rows(dataset, len(dataset), split_config)
    sample_rows = dataset.select(range(min(5, len(dataset))))
    sample = [(row["row_id"], row_text(row)) for row in sample_rows]
    return LoadReport(
        source=describe_origin(origin), format=loaded.format, format_reason=loaded.format_reason,
        mapping=loaded.mapping, columns=loaded.columns, rows=len(dataset), train_rows=len(train),
        validation_rows=len(val), sample=sample, char_lengths=chars.tolist(),
        word_lengths=words.tolist(), problems=problems, seconds=seconds, training=loaded.training)


def clean_report(result: Any, *, applied: bool, train_rows: int | None = None,
                 validation_rows: int | None = None) -> CleanReport:
    """What a cleaning pass (or its preview on a sample) changed and removed, step by step."""
    steps = [StepRow(s.name, s.kind, s.changed, s.removed, list(s.changed_examples), list(s.removed_examples))
             for s in result.steps]
    return CleanReport(applied=applied, rows_before=result.rows_before, rows_after=result.rows_after, steps=steps,
                       lengths_before=list(result.lengths_before), lengths_after=list(result.lengths_after),
                       seconds=result.seconds, train_rows=train_rows, validation_rows=validation_rows,
                       sampled=result.sampled)


def token_report(tokenized: Any, tokenizer: Any, name: str, settings: TokenizerConfig, data_format: str,
                 template_added: bool, seconds: float, rows: Any) -> TokenReport:
    """The token report; `rows` are the training split's rows (their text, which the tokens do not keep)."""
    from nbtune.data import tokens as tk

    train, val = tokenized["train"], tokenized["validation"]
    lengths = np.asarray(column(train, "n_tokens") + column(val, "n_tokens"), dtype=np.int64)
    kept = np.minimum(lengths, settings.context_length) if not (data_format == "text" and settings.pack) else lengths
    total_train = int(kept[: len(train)].sum())
    trained = int(np.sum(column(train, "n_trained")))
    chars = int(text_lengths(rows)[0].sum())
    over = int((lengths > settings.context_length).sum())
    splittable = data_format == "text" and settings.pack
    action = "split across packed sequences (nothing lost)" if splittable else "truncated to the context length"
    return TokenReport(
        tokenizer=name, vocab_size=len(tokenizer), context_length=settings.context_length, format=data_format,
        rows=len(lengths), train_tokens=total_train, validation_tokens=int(kept[len(train):].sum()),
        token_lengths=lengths.tolist(), over_context=over, over_context_action=action,
        packing=tk.packing_efficiency(lengths, settings.context_length), chars_per_token=chars / max(total_train, 1),
        trained_token_share=trained / max(total_train, 1), response_only=settings.response_only_loss,
        template_note=_template_note(data_format, template_added),
        example=_example_tokens(rows, tokenizer, settings), seconds=seconds)


def _template_note(data_format: str, template_added: bool) -> str:
    if data_format == "text":
        return "plain text: every document ends with EOS"
    if template_added:
        return "the tokenizer had no chat template; using a ChatML-style template"
    return "the tokenizer's own chat template"


def _example_tokens(rows: Any, tokenizer: Any, settings: TokenizerConfig) -> list[tuple[str, bool]]:
    """The first row's tokens as (text piece, trained?) pairs, up to EXAMPLE_TOKENS."""
    from nbtune.data import tokens as tk

    if not len(rows):
        return []
    first = rows[0]
    row = {k: first[k] for k in ("text", "messages", "tools") if k in first}
    enc = tk.encode_row(tokenizer, row, response_only=settings.response_only_loss)
    return [(enc.text[s:e] if e > s else tokenizer.convert_ids_to_tokens(i), bool(m))
            for (s, e), i, m in zip(enc.offsets, enc.input_ids, enc.loss_mask, strict=True)][:EXAMPLE_TOKENS]
