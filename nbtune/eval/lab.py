"""The lab: fine-tuning vs training from scratch, measured on the user's own data.

For each fraction of the training rows, two arms train on exactly those rows
and are scored on exactly the same held-out rows:

* fine-tune: the pretrained base (LoRA by default), `finetune_steps` steps;
* scratch: a new small Llama (with its own BPE tokenizer by default), given the
  same compute budget in FLOPs as the fine-tune arm (times `compute_ratio`),
  capped at `max_scratch_steps`.

Quality is measured in bits per byte, which does not depend on the tokenizer,
so the arms compare fairly. The target quality is what the fine-tune arm
reached on all the data; for every arm the lab reports the FLOPs, tokens and
wall time it needed to reach that target (or "not reached"), from which the
ratios and the plain-language summary are computed.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from nbtune.config import LabConfig, PretrainedModelConfig, ScratchModelConfig, TokenizerConfig, TrainConfig
from nbtune.data import column
from nbtune.data import tokens as tk
from nbtune.events import EventBus, StopToken
from nbtune.train.listeners import MetricsFile, MetricsRecorder


@dataclass
class ArmResult:
    """One trained arm: its curve of held-out bits/byte and what it cost."""

    arm: str  # "fine-tune" or "scratch"
    fraction: float
    train_rows: int
    train_tokens: int
    steps: int
    flops_per_token: float
    parameters: int
    trainable: int
    curve: list[dict] = field(default_factory=list)  # step, tokens_seen, flops, elapsed, bpb, loss
    seconds: float = 0.0
    peak_memory: int = 0
    run_dir: str = ""

    @property
    def start_bpb(self) -> float | None:
        return self.curve[0]["bpb"] if self.curve else None

    @property
    def final_bpb(self) -> float | None:
        return self.curve[-1]["bpb"] if self.curve else None

    def to_reach(self, target: float) -> dict | None:
        """FLOPs / tokens / seconds at which the curve first reaches `target` (linear interpolation)."""
        previous = None
        for point in self.curve:
            if point["bpb"] <= target:
                if previous is None or previous["bpb"] == point["bpb"]:
                    return {k: point[k] for k in ("flops", "tokens_seen", "elapsed")}
                share = (previous["bpb"] - target) / (previous["bpb"] - point["bpb"])
                return {k: previous[k] + share * (point[k] - previous[k]) for k in ("flops", "tokens_seen", "elapsed")}
            previous = point
        return None


@dataclass
class LabResult:
    config: LabConfig
    arms: list[ArmResult]
    target_bpb: float
    held_out_rows: int
    seconds: float


def _subset(rows: Any, fraction: float, seed: int) -> Any:
    """The first `fraction` of the rows in a seeded order, so smaller subsets are inside larger ones."""
    order = np.random.default_rng(seed).permutation(len(rows))
    keep = max(1, int(round(fraction * len(rows))))
    return rows.select(np.sort(order[:keep]))


def _engine(lm: Any, train_tok: Any, val_tok: Any, settings: TrainConfig, *, seq_len: int, pad_id: int,
            run_dir: Path, run_id: str) -> tuple[Any, MetricsRecorder]:
    from nbtune.train.loop import Engine

    bus, recorder = EventBus(), MetricsRecorder()
    bus.subscribe(recorder)
    bus.subscribe(MetricsFile(run_dir / "metrics.jsonl"))
    n_bytes = sum(column(val_tok, "n_bytes"))
    engine = Engine(loaded_model=lm, train_rows=train_tok, validation_rows=val_tok, config=settings,
                    seq_len=seq_len, pack_rows=True, pad_id=pad_id, run_dir=run_dir, run_id=run_id, bus=bus,
                    token=StopToken(), flops_per_token=lm.card.flops_per_token,
                    tokens_per_byte=sum(column(val_tok, "n_trained")) / n_bytes if n_bytes else None)
    return engine, recorder


def _train_arm(arm: str, fraction: float, lm: Any, tokenizer: Any, train_rows: Any, val_rows: Any, steps: int,
               lr: float, config: LabConfig, workdir: Path, token_config: TokenizerConfig,
               start: dict | None = None) -> ArmResult:
    """Train one arm; `start` is a known step-0 point (the same base scored on the same rows) to reuse."""
    started = time.perf_counter()
    train_tok = tk.tokenize_rows(train_rows, tokenizer, token_config, desc=f"{arm} {fraction:.0%}: tokenizing")
    val_tok = tk.tokenize_rows(val_rows, tokenizer, token_config, desc="held-out rows", schema_from=train_tok)
    eval_batches = math.ceil(config.max_eval_rows * 2 / config.batch_size)  # packed: covers the held-out rows
    settings = TrainConfig(steps=steps, learning_rate=lr, batch_size=config.batch_size, seq_len=config.seq_len,
                           warmup_steps=max(1, steps // 10), eval_every=max(1, steps // config.evaluations),
                           eval_batches=eval_batches, eval_at_start=start is None, seed=config.seed,
                           background=False)
    run_id = f"lab-{arm}-{int(round(fraction * 100)):03d}"
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    engine, recorder = _engine(lm, train_tok, val_tok, settings, seq_len=config.seq_len, pad_id=pad,
                               run_dir=workdir / run_id, run_id=run_id)
    status = engine.run()
    if status != "finished":
        raise RuntimeError(f"the {arm} arm at {fraction:.0%} of the data ended {status}: {engine.error}")
    evals = recorder.of_kind("eval")
    steps_done = recorder.of_kind("step")
    return ArmResult(
        arm=arm, fraction=fraction, train_rows=len(train_rows), train_tokens=int(sum(column(train_tok, "n_trained"))),
        steps=engine.plan.total_steps, flops_per_token=lm.card.flops_per_token, parameters=lm.card.params_total,
        trainable=lm.card.params_trainable,
        curve=([start] if start else []) + [
            {"step": e["step"], "tokens_seen": e["tokens_seen"], "flops": e["flops"], "elapsed": e["elapsed"],
             "bpb": e["eval_bpb"], "loss": e["eval_loss"]} for e in evals if e.get("eval_bpb") is not None],
        seconds=time.perf_counter() - started, peak_memory=max((s.get("memory") or 0) for s in steps_done),
        run_dir=str(workdir / run_id))


def _finetune_model(config: LabConfig, device: Any) -> Any:
    from nbtune.models.pretrained import use_model

    settings = PretrainedModelConfig(model=config.base, method=config.method)
    return use_model(settings, device=device, batch_size=config.batch_size, seq_len=config.seq_len, seed=config.seed)


def _scratch_model(config: LabConfig, tokenizer: Any, device: Any) -> Any:
    from nbtune.models.scratch import new_model

    settings = ScratchModelConfig(preset=config.scratch_preset, seed=config.seed)
    return new_model(settings, tokenizer=tokenizer, context_length=config.seq_len, device=device,
                     batch_size=config.batch_size, seq_len=config.seq_len)


def run_lab(train_rows: Any, val_rows: Any, config: LabConfig, *, workdir: Path, chat: bool,
            progress: Any = print) -> LabResult:
    """Train both arms at every fraction; return their curves and costs (see the module docstring)."""
    from nbtune.device import pick_device

    config.validate()
    started = time.perf_counter()
    device = pick_device()
    val_rows = val_rows.select(range(min(len(val_rows), config.max_eval_rows)))
    token_config = TokenizerConfig(context_length=config.seq_len, pack=True, response_only_loss=chat)
    arms: list[ArmResult] = []
    base_start = None  # the base model scored before training: the same for every fraction
    for fraction in sorted(config.fractions):
        subset = _subset(train_rows, fraction, config.seed)
        lm = _finetune_model(config, device)
        tuned = _train_arm("fine-tune", fraction, lm, lm.tokenizer, subset, val_rows, config.finetune_steps,
                           config.finetune_lr, config, workdir, token_config, start=base_start)
        base_start = tuned.curve[0]
        base_tokenizer = lm.tokenizer
        lm.release()
        progress(f"fine-tune {fraction:.0%}: {tuned.start_bpb:.3f} -> {tuned.final_bpb:.3f} bits/byte "
                 f"in {tuned.seconds:.1f} s")
        tokenizer = (tk.train_bpe_tokenizer(tk.training_texts(subset), config.scratch_vocab_size)
                     if config.scratch_tokenizer == "own" else base_tokenizer)
        if chat:
            tk.ensure_chat_template(tokenizer)
        scratch_lm = _scratch_model(config, tokenizer, device)
        budget = tuned.curve[-1]["flops"] * config.compute_ratio
        tokens_per_step = config.batch_size * config.seq_len
        steps = int(min(config.max_scratch_steps, max(1, budget // (scratch_lm.card.flops_per_token * tokens_per_step))))
        scratch = _train_arm("scratch", fraction, scratch_lm, tokenizer, subset, val_rows, steps, config.scratch_lr,
                             config, workdir, token_config)
        scratch_lm.release()
        progress(f"scratch {fraction:.0%}: {scratch.start_bpb:.3f} -> {scratch.final_bpb:.3f} bits/byte "
                 f"in {steps} steps, {scratch.seconds:.1f} s")
        arms += [tuned, scratch]
    full = next(a for a in arms if a.arm == "fine-tune" and a.fraction == max(config.fractions))
    return LabResult(config=config, arms=arms, target_bpb=full.final_bpb, held_out_rows=len(val_rows),
                     seconds=time.perf_counter() - started)
