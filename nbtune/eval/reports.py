"""The evaluation stage's reports, built from a model and tokenized rows.

`Session.evaluate()` and `Session.generate()` pick the model, rows and prompts;
the scoring, the base-model comparison (a LoRA model with its adapters off)
and the report objects are made here.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from nbtune.data import column_array
from nbtune.data.reports import row_text
from nbtune.eval.generate import base_model_context, generate_texts
from nbtune.eval.metrics import evaluate_rows, worst_examples
from nbtune.train.factory import pad_id
from nbtune.viz.eval_reports import EvalReport, GenerationReport

BASE_LABEL = "base (adapters off)"


def evaluation_report(lm: Any, tokenizer: Any, tokens: Any, split: str, rows: Any, *, seq_len: int,
                      batch_size: int, max_rows: int | None, compare_base: bool) -> EvalReport:
    """Score `tokens` (one split's tokenized rows) with the model, and its base when `compare_base`; the worst
    rows are shown with their text, looked up in `rows` (the current data) by row id."""
    options = {"device": lm.device, "batch_size": batch_size, "max_rows": max_rows, "seq_len": seq_len,
               "pad_id": pad_id(tokenizer)}
    result = evaluate_rows(lm.model, tokens, **options)
    others = []
    if compare_base:
        with base_model_context(lm):
            others.append((BASE_LABEL, evaluate_rows(lm.model, tokens, **options)))
    worst = worst_examples(result)
    texts = texts_of(rows, [score.row_id for score in worst])
    shown = [(score.row_id, score.bits_per_byte if score.bits_per_byte is not None else score.loss,
              texts.get(score.row_id, "")) for score in worst]
    return EvalReport(split, result, model=lm.source, worst=shown, others=others, seq_len=seq_len)


def texts_of(rows: Any, row_ids: list[int]) -> dict[int, str]:
    """row id -> readable text, for a few row ids only (never a copy of every row's text)."""
    wanted = set(row_ids)
    if not wanted:
        return {}
    picked = np.flatnonzero(np.isin(column_array(rows, "row_id"), sorted(wanted)))
    name = "text" if "text" in rows.column_names else "messages"
    chosen = rows.select(picked)
    return {int(rid): row_text({name: value}) for rid, value in zip(chosen["row_id"], chosen[name], strict=True)}


def generation_report(models: list[tuple[str, Any, Any, bool]], prompts: list[str], *, chat: bool,
                      max_new_tokens: int, seed: int) -> GenerationReport:
    """Greedy and sampled generations of each (label, loaded model, tokenizer, with its base?) for `prompts`."""
    started = time.perf_counter()
    options = {"chat": chat, "max_new_tokens": max_new_tokens, "seed": seed}
    outputs = []
    for label, lm, tokenizer, with_base in models:
        outputs += generate_texts(lm.model, tokenizer, prompts, device=lm.device, label=label, **options)
        if with_base:
            with base_model_context(lm):
                outputs += generate_texts(lm.model, lm.tokenizer, prompts, device=lm.device, label=BASE_LABEL,
                                          **options)
    return GenerationReport(outputs, chat=chat, max_new_tokens=max_new_tokens, temperature=0.8, top_p=0.95,
                            seed=seed, seconds=time.perf_counter() - started)
