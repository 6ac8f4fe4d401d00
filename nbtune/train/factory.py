"""One way to make a training run: the event bus with its standard listeners, and the engine.

A notebook run (`Session.train` / `resume`), a recipe's run (`train.py`, one
rank of a torchrun job) and each arm of the lab train with the same engine on
the same kind of inputs; they differ only in which listeners hear the run.
Building both here keeps them from drifting apart: the padding id, the
bits-per-byte factor, the FLOPs per token and the sample prompt are computed
once, in one way.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from nbtune.data import column
from nbtune.events import EventBus, Listener, StopToken
from nbtune.train.listeners import MetricsFile, MetricsRecorder


def pad_id(tokenizer: Any) -> int:
    """The id that fills the end of a short sequence: the tokenizer's pad token, else its EOS."""
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def tokens_per_byte(rows: Any) -> float | None:
    """Trained tokens per byte of trained text in tokenized rows (turns nats/token into bits/byte)."""
    if len(rows) == 0 or "n_bytes" not in rows.column_names:
        return None
    total_bytes = sum(column(rows, "n_bytes"))
    return sum(column(rows, "n_trained")) / total_bytes if total_bytes else None


def flops_at(card: Any, seq_len: int) -> float:
    """The card's FLOPs per token (6N + 12 L h T), with T the run's sequence length instead of the card's."""
    return card.flops_per_token + 12.0 * card.layers * card.hidden * (seq_len - card.seq_len)


def sample_ids(tokenizer: Any, prompt: str | None, *, chat: bool) -> list[int] | None:
    """The token ids of the prompt a run continues at each evaluation (as a user turn for chat data)."""
    if not prompt:
        return None
    if chat:
        prompt = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                               add_generation_prompt=True)
    return tokenizer(prompt, add_special_tokens=False)["input_ids"]


def make_bus(run_dir: Path, listeners: Iterable[Listener] = (), *,
             recorder: bool = True) -> tuple[EventBus, MetricsRecorder | None]:
    """A bus that records the run, metrics in memory (for `run.report()`) and `metrics.jsonl` in its folder,
    then tells the caller's listeners (progress bar, live chart, trackers, bookkeeping) in their order."""
    bus = EventBus()
    memory = MetricsRecorder() if recorder else None
    if memory is not None:
        bus.subscribe(memory)
    bus.subscribe(MetricsFile(Path(run_dir) / "metrics.jsonl"))
    for listener in listeners:
        bus.subscribe(listener)
    return bus, memory


def make_engine(*, loaded_model: Any, tokenizer: Any, train_rows: Any, validation_rows: Any, settings: Any,
                seq_len: int, pack_rows: bool, run_dir: Path, run_id: str, bus: EventBus,
                token: StopToken | None = None, chat: bool = False, flops_per_token: float | None = None,
                schedule_start: int = 0, prune_checkpoints: bool = True, strategy: Any = None) -> Any:
    """The training engine for a model on tokenized rows, reporting to `bus`.

    `flops_per_token` defaults to the model card's at this sequence length; `schedule_start` is where the
    learning-rate schedule begins (a run trained further); `prune_checkpoints=False` keeps every checkpoint
    (a run attached from elsewhere: never delete its files); `strategy` is one process (None), or DDP / FSDP for
    one rank of a torchrun job (`nbtune.train.strategy.for_job`).
    """
    from nbtune.train.loop import Engine

    return Engine(loaded_model=loaded_model, train_rows=train_rows, validation_rows=validation_rows,
                  config=settings, seq_len=seq_len, pack_rows=pack_rows, pad_id=pad_id(tokenizer),
                  run_dir=Path(run_dir), run_id=run_id, bus=bus, token=token or StopToken(),
                  flops_per_token=flops_per_token if flops_per_token is not None
                  else flops_at(loaded_model.card, seq_len),
                  sample_prompt_ids=sample_ids(tokenizer, settings.sample_prompt, chat=chat),
                  decode=lambda ids: tokenizer.decode(ids, skip_special_tokens=False),
                  tokens_per_byte=tokens_per_byte(validation_rows),
                  schedule_start=schedule_start, prune_checkpoints=prune_checkpoints, strategy=strategy)


def session_engine(session: Any, record: dict[str, Any], settings: Any, bus: EventBus,
                   token: StopToken | None = None, strategy: Any = None) -> Any:
    """The engine for a run record of a Session (a notebook run, or a recipe's replayed session), from the
    Session's public state: its model, tokenizer, tokens and tokenizer settings."""
    lm = session.model
    tokenizer = lm.tokenizer or session.tokenizer
    seq_len = settings.seq_len or session.tokenizer_config.context_length
    segments = record.get("segments") or [{"start": 0}]
    return make_engine(loaded_model=lm, tokenizer=tokenizer, train_rows=session.tokens["train"],
                       validation_rows=session.tokens["validation"], settings=settings, seq_len=seq_len,
                       pack_rows=session.tokenizer_config.pack, run_dir=session.workdir / record["dir"],
                       run_id=record["id"], bus=bus, token=token, chat=session.format != "text",
                       schedule_start=segments[-1]["start"], prune_checkpoints=not record.get("attached"),
                       strategy=strategy)
