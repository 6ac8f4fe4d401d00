"""Loss, perplexity and bits per byte of a model on tokenized rows.

Every row is scored as its own sequence (no packing, so no row sees another
row as context). The target at position t is ``input_ids[t + 1]``, scored when
``loss_mask[t + 1] == 1``; the first token of a row is never predicted. This is
the same definition the tokens stage uses for ``n_trained`` and ``n_bytes``, so:

* ``loss`` is the mean cross-entropy in nats per scored token, token-weighted
  over all rows (the number the training loop reports as validation loss);
* ``perplexity`` is ``exp(loss)``;
* ``bits_per_byte`` is ``sum of nats / ln 2 / sum of n_bytes``: the bits the
  model needs per UTF-8 byte of scored text. Unlike loss and perplexity it does
  not depend on the tokenizer, so models with different tokenizers compare
  fairly on the same rows.

Rows longer than ``seq_len`` are scored in consecutive, non-overlapping
windows of ``seq_len`` input tokens (every scored token of the row counts, so
bits per byte stays exact); each window starts with a fresh context, so the
first tokens of a later window are predicted from less context than the full
row would give.

Rows are batched with right padding, an attention mask and position ids
``0..n-1`` per window, under ``torch.no_grad`` and ``model.eval()`` (the
model's train/eval state is restored afterwards), with the same autocast
setting as the training loop. Windows are processed longest first (less
padding); the results are returned in the rows' order, and do not depend on the
batch size beyond float rounding.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from nbtune.data import column
from nbtune.device import DeviceInfo
from nbtune.errors import ConfigError, DataError

LN2 = math.log(2.0)


@dataclass
class ExampleScore:
    """One row's score."""

    row_id: int
    loss: float  # mean nats per scored token (nan when the row has none)
    bits_per_byte: float | None  # None when the row has no scored bytes (or bytes are unknown)
    tokens: int  # scored tokens
    bytes: int  # UTF-8 bytes of the scored text (n_bytes)

    @property
    def nats(self) -> float:
        """Total nats of the row (loss x tokens)."""
        return self.loss * self.tokens if self.tokens else 0.0


@dataclass
class EvalResult:
    """Loss, perplexity and bits per byte over a set of rows, with each row's score."""

    loss: float  # mean nats per scored token over all rows (token-weighted)
    perplexity: float  # exp(loss)
    bits_per_byte: float | None  # sum of nats / ln 2 / sum of scored bytes; None if bytes are unknown
    tokens: int
    bytes: int
    rows: int
    seconds: float
    examples: list[ExampleScore] = field(default_factory=list)

    @property
    def bytes_known(self) -> bool:
        return self.bits_per_byte is not None

    def summary_dict(self) -> dict[str, Any]:
        """The totals as plain JSON-ready values (no per-example list)."""
        return {"loss": self.loss, "perplexity": self.perplexity, "bits_per_byte": self.bits_per_byte,
                "tokens": self.tokens, "bytes": self.bytes, "rows": self.rows, "seconds": self.seconds}


@dataclass
class _Window:
    row: int  # index into the evaluated rows
    inputs: list[int]
    targets: list[int]
    weights: list[int]


def _windows(index: int, ids: list[int], mask: list[int], seq_len: int | None) -> list[_Window]:
    """The scored windows of one row: inputs ids[s:s+L] predict ids[s+1:s+L+1]."""
    n = len(ids)
    if n < 2:
        return []
    step = seq_len or (n - 1)
    out = []
    for start in range(0, n - 1, step):
        stop = min(start + step, n - 1)
        weights = [1 if m else 0 for m in mask[start + 1: stop + 1]]
        if any(weights):  # a window with nothing scored changes nothing: skip its forward pass
            out.append(_Window(index, ids[start:stop], ids[start + 1: stop + 1], weights))
    return out


@contextmanager
def eval_mode(model: Any) -> Iterator[None]:
    """`model.eval()` inside, and every submodule's train/eval flag exactly as before afterwards."""
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield
    finally:
        model.train(modes[0][1])  # through train(): some modules (peft DoRA, transformers kernels) hook it
        for module, was_training in modes:
            module.training = was_training


def _perplexity(loss: float) -> float:
    if math.isnan(loss):
        return math.nan
    try:
        return math.exp(loss)
    except OverflowError:
        return math.inf


def _forward_batch(model: Any, batch: list[_Window], device: DeviceInfo, pad_id: int) -> list[float]:
    """Sum of nats over the scored targets of each window in `batch`."""
    import torch
    import torch.nn.functional as F

    dev = device.torch_device
    width = max(len(w.inputs) for w in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(batch), width), dtype=torch.long)
    for i, w in enumerate(batch):
        ids[i, : len(w.inputs)] = torch.tensor(w.inputs, dtype=torch.long)
        attention[i, : len(w.inputs)] = 1
    positions = torch.arange(width, dtype=torch.long).expand(len(batch), width)
    padded = bool((attention == 0).any())
    dtype = device.autocast_dtype
    with torch.autocast(device_type=device.type, dtype=dtype, enabled=dtype is not None):
        logits = model(input_ids=ids.to(dev), attention_mask=attention.to(dev) if padded else None,
                       position_ids=positions.to(dev), use_cache=False).logits
    sums = []
    for i, w in enumerate(batch):  # one row at a time: the fp32 copy of the logits stays one row big
        n = len(w.inputs)
        per_token = F.cross_entropy(logits[i, :n].float(), torch.tensor(w.targets, device=dev), reduction="none")
        weights = torch.tensor(w.weights, dtype=torch.float32, device=dev)
        sums.append(float((per_token * weights).sum().double()))
    return sums


def evaluate_rows(model: Any, rows: Any, *, device: DeviceInfo, batch_size: int = 8, max_rows: int | None = None,
                  seq_len: int | None = None, pad_id: int = 0,
                  progress: Callable[[int, int], None] | None = None) -> EvalResult:
    """Score tokenized rows (`input_ids`, `loss_mask`, `n_bytes`, `row_id`) with `model`.

    `model` is the torch module (``LoadedModel.model``): called as
    ``model(input_ids=, attention_mask=, position_ids=, use_cache=False)`` and
    returning an object with ``.logits``. `max_rows` takes the first rows.
    Rows longer than `seq_len` input tokens are scored in consecutive windows
    (see the module docstring); `seq_len=None` scores every row whole.
    `pad_id` fills the padding (it is masked out, any valid id works).
    `progress(done, total)` is called after each batch, in windows.
    A batch that runs out of memory is retried with half the batch size.
    """
    import torch

    from nbtune.train import memory

    if batch_size < 1:
        raise ConfigError(f"batch_size must be at least 1, got {batch_size}", column="batch_size")
    if seq_len is not None and seq_len < 1:
        raise ConfigError(f"seq_len must be at least 1, got {seq_len}", column="seq_len")
    missing = [c for c in ("input_ids", "loss_mask") if c not in rows.column_names]
    if missing:
        raise DataError(f"these rows are not tokenized (no {', '.join(missing)} column)",
                        fix="evaluate a split of Session.tokens (after s.tokenize())")
    started = time.perf_counter()
    if max_rows is not None and max_rows < len(rows):
        rows = rows.select(range(max(0, max_rows)))
    ids_col, mask_col = column(rows, "input_ids"), column(rows, "loss_mask")
    row_ids = column(rows, "row_id") if "row_id" in rows.column_names else list(range(len(rows)))
    n_bytes = column(rows, "n_bytes") if "n_bytes" in rows.column_names else None

    windows = [w for i, (ids, mask) in enumerate(zip(ids_col, mask_col, strict=True))
               for w in _windows(i, ids, mask, seq_len)]
    windows.sort(key=lambda w: -len(w.inputs))  # stable: ties keep row order
    nats = [0.0] * len(ids_col)
    tokens = [0] * len(ids_col)

    with eval_mode(model), torch.no_grad():
        start, size = 0, batch_size
        while start < len(windows):
            batch = windows[start: start + size]
            try:
                sums = _forward_batch(model, batch, device, pad_id)
            except Exception as exc:
                if not memory.is_oom(exc) or size == 1:
                    raise
                memory.release_after_oom(exc)
                size = max(1, size // 2)
                continue
            for w, value in zip(batch, sums, strict=True):
                nats[w.row] += value
                tokens[w.row] += sum(w.weights)
            start += len(batch)
            if progress is not None:
                progress(start, len(windows))

    examples = []
    for i, rid in enumerate(row_ids):
        b = int(n_bytes[i]) if n_bytes is not None else 0
        loss = nats[i] / tokens[i] if tokens[i] else math.nan
        bpb = nats[i] / LN2 / b if (n_bytes is not None and b > 0) else None
        examples.append(ExampleScore(int(rid), loss, bpb, tokens[i], b))
    total_nats, total_tokens = sum(nats), sum(tokens)
    total_bytes = sum(e.bytes for e in examples)
    loss = total_nats / total_tokens if total_tokens else math.nan
    bpb = total_nats / LN2 / total_bytes if (n_bytes is not None and total_bytes > 0) else None
    return EvalResult(loss=loss, perplexity=_perplexity(loss), bits_per_byte=bpb, tokens=total_tokens,
                      bytes=total_bytes, rows=len(examples), seconds=time.perf_counter() - started,
                      examples=examples)


def example_score(example: ExampleScore) -> float:
    """The per-row number reports rank by: bits per byte when known, else loss."""
    return example.bits_per_byte if example.bits_per_byte is not None else example.loss


def worst_examples(result: EvalResult, n: int = 5) -> list[ExampleScore]:
    """The `n` rows the model predicts worst (highest bits per byte, else loss); rows with nothing scored skipped."""
    use_bpb = result.bits_per_byte is not None
    scored = [e for e in result.examples if e.tokens and (e.bits_per_byte is not None or not use_bpb)]
    return sorted(scored, key=lambda e: (-example_score(e), e.row_id))[:n]
