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

The whole truth, not only the end of each curve: every arm's best held-out
bits/byte and the step and FLOPs where it got there; an arm that ends worse than
its best (overfitting, or a learning rate too high) and a scratch arm that ends
worse than it started are flagged in plain words. With `scratch_compute=(1, 10,
100)` the scratch arm on all the data is trained again at each of those multiples
of the fine-tune arm's FLOPs, and the report says at which compute it matched
the fine-tune, or that it did not.
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
from nbtune.train.factory import make_bus, make_engine


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
    compute: float | None = None  # scratch arms: the budget, as a multiple of the fine-tune arm's FLOPs
    capped: bool = False  # the budget needed more steps than max_scratch_steps allows
    sweep: bool = False  # an extra arm of the compute sweep (scratch_compute), beside the main pair

    @property
    def best(self) -> dict | None:
        """The point of the curve with the lowest held-out bits/byte (the first one on a tie)."""
        return min(self.curve, key=lambda p: p["bpb"]) if self.curve else None

    @property
    def best_bpb(self) -> float | None:
        return self.best["bpb"] if self.curve else None

    def warnings(self) -> list[str]:
        """What the end of the curve hides, in plain words (empty when it ends at its best)."""
        if len(self.curve) < 2:
            return []
        name = f"{self.arm} arm at {self.fraction:.0%} of the data" + (
            f" ({self.compute:g}x compute)" if self.sweep else "")
        best, start, final = self.best, self.curve[0]["bpb"], self.final_bpb
        said = []
        if self.arm == "scratch" and final > start + TOLERANCE:
            said.append(f"The {name} ended worse than it started ({start:.3f} -> {final:.3f} bits/byte): training "
                        "made it worse on held-out text. Lower the learning rate (scratch_lr) or give it more rows.")
        if final > best["bpb"] + TOLERANCE and best["step"] > 0:
            said.append(f"The {name} was best at step {best['step']} ({best['bpb']:.3f} bits/byte) and ended at "
                        f"{final:.3f}: it got worse on held-out text while it went on training, which is "
                        "overfitting (it memorises its training rows) or a learning rate too high. Fewer steps, "
                        "more rows or a lower learning rate would do better.")
        elif final > best["bpb"] + TOLERANCE and self.arm == "fine-tune":
            said.append(f"The {name} ended worse than the base model it started from ({best['bpb']:.3f} -> "
                        f"{final:.3f} bits/byte): fine-tuning hurt held-out quality. Lower finetune_lr or train "
                        "fewer steps.")
        return said

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


TOLERANCE = 1e-3  # bits/byte: differences below this are evaluation noise, not a trend


@dataclass
class LabResult:
    config: LabConfig
    arms: list[ArmResult]  # the main pair per fraction, then the compute sweep's extra scratch arms (sweep=True)
    target_bpb: float
    held_out_rows: int
    seconds: float

    def pairs(self) -> list[tuple[ArmResult, ArmResult]]:
        """(fine-tune, scratch) of each fraction, smallest fraction first (sweep arms left out)."""
        main = [a for a in self.arms if not a.sweep]
        return [(next(a for a in main if a.arm == "fine-tune" and a.fraction == f),
                 next(a for a in main if a.arm == "scratch" and a.fraction == f))
                for f in sorted({a.fraction for a in main})]

    def sweep(self) -> list[ArmResult]:
        """The scratch arms on the largest fraction at every compute multiple, least compute first."""
        if not self.config.scratch_compute:
            return []
        largest = max(a.fraction for a in self.arms)
        arms = [a for a in self.arms if a.arm == "scratch" and a.fraction == largest]
        chosen = {float(m) for m in self.config.scratch_compute}
        return sorted((a for a in arms if a.compute in chosen), key=lambda a: a.compute)

    def sweep_verdict(self) -> str | None:
        """At which compute scratch matched the fine-tune arm on all the data (or that it did not)."""
        arms = self.sweep()
        if not arms:
            return None
        target = self.target_bpb
        matched = next((a for a in arms if a.best_bpb <= target), None)
        capped = [f"{a.compute:g}x (really {a.curve[-1]['flops'] / self._finetune_flops():.1f}x)"
                  for a in arms if a.capped]
        cap = f" (capped at max_scratch_steps: {', '.join(capped)})" if capped else ""
        if matched is None:
            best = min(arms, key=lambda a: a.best_bpb)
            return (f"Scratch did not match the fine-tune arm ({target:.3f} bits/byte) even with "
                    f"{arms[-1].compute:g}x its compute: its best was {best.best_bpb:.3f} bits/byte at "
                    f"{best.compute:g}x{cap}.")
        return (f"Scratch matched the fine-tune arm ({target:.3f} bits/byte) with {matched.compute:g}x its compute "
                f"(best {matched.best_bpb:.3f} bits/byte at step {matched.best['step']})"
                + (f"; with {', '.join(f'{a.compute:g}x' for a in arms if a.compute < matched.compute)} it did not"
                   if arms[0] is not matched else "") + f"{cap}.")

    def _finetune_flops(self) -> float:
        largest = max(a.fraction for a in self.arms)
        tuned = next(a for a in self.arms if a.arm == "fine-tune" and a.fraction == largest)
        return tuned.curve[-1]["flops"] or 1.0

    def warnings(self) -> list[str]:
        return [text for arm in self.arms for text in arm.warnings()]


def _subset(rows: Any, fraction: float, seed: int) -> Any:
    """The first `fraction` of the rows in a seeded order, so smaller subsets are inside larger ones."""
    order = np.random.default_rng(seed).permutation(len(rows))
    keep = max(1, int(round(fraction * len(rows))))
    return rows.select(np.sort(order[:keep]))


def _train_arm(arm: str, fraction: float, lm: Any, tokenizer: Any, train_rows: Any, val_rows: Any, steps: int,
               lr: float, config: LabConfig, workdir: Path, token_config: TokenizerConfig,
               start: dict | None = None, compute: float | None = None, sweep: bool = False) -> ArmResult:
    """Train one arm; `start` is a known step-0 point (the same base scored on the same rows) to reuse."""
    started = time.perf_counter()
    train_tok = tk.tokenize_rows(train_rows, tokenizer, token_config, desc=f"{arm} {fraction:.0%}: tokenizing")
    val_tok = tk.tokenize_rows(val_rows, tokenizer, token_config, desc="held-out rows", schema_from=train_tok)
    eval_batches = math.ceil(config.max_eval_rows * 2 / config.batch_size)  # packed: covers the held-out rows
    settings = TrainConfig(steps=steps, learning_rate=lr, batch_size=config.batch_size, grad_accum=1,
                           seq_len=config.seq_len,
                           warmup_steps=max(1, steps // 10), eval_every=max(1, steps // config.evaluations),
                           eval_batches=eval_batches, eval_at_start=start is None, seed=config.seed,
                           background=False)
    run_id = f"lab-{arm}-{int(round(fraction * 100)):03d}" + (f"-x{compute:g}" if sweep else "")
    bus, recorder = make_bus(workdir / run_id)
    engine = make_engine(loaded_model=lm, tokenizer=tokenizer, train_rows=train_tok, validation_rows=val_tok,
                         settings=settings, seq_len=config.seq_len, pack_rows=True, run_dir=workdir / run_id,
                         run_id=run_id, bus=bus, flops_per_token=lm.card.flops_per_token)
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
        run_dir=str(workdir / run_id), compute=compute, sweep=sweep)


def _finetune_model(config: LabConfig, device: Any) -> Any:
    from nbtune.models.pretrained import use_model

    settings = PretrainedModelConfig(model=config.base, method=config.method)
    return use_model(settings, device=device, batch_size=config.batch_size, seq_len=config.seq_len, seed=config.seed)


def _scratch_model(config: LabConfig, tokenizer: Any, device: Any) -> Any:
    from nbtune.models.scratch import new_model

    settings = ScratchModelConfig(preset=config.scratch_preset, seed=config.seed)
    return new_model(settings, tokenizer=tokenizer, context_length=config.seq_len, device=device,
                     batch_size=config.batch_size, seq_len=config.seq_len)


def _scratch_arm(config: LabConfig, tokenizer: Any, device: Any, rows: Any, val_rows: Any, workdir: Path,
                 token_config: TokenizerConfig, fraction: float, *, budget: float, compute: float,
                 sweep: bool = False) -> ArmResult:
    """A new scratch model trained on `rows` with `compute` times the fine-tune arm's FLOPs (`budget`)."""
    lm = _scratch_model(config, tokenizer, device)
    flops_per_step = lm.card.flops_per_token * config.batch_size * config.seq_len
    wanted = max(1, int(budget * compute // flops_per_step))
    steps = min(config.max_scratch_steps, wanted)
    try:
        arm = _train_arm("scratch", fraction, lm, tokenizer, rows, val_rows, steps, config.scratch_lr, config,
                         workdir, token_config, compute=compute, sweep=sweep)
    finally:
        lm.release()
    arm.capped = wanted > steps
    return arm


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
        scratch = _scratch_arm(config, tokenizer, device, subset, val_rows, workdir, token_config, fraction,
                               budget=tuned.curve[-1]["flops"], compute=config.compute_ratio)
        progress(f"scratch {fraction:.0%}: {scratch.start_bpb:.3f} -> {scratch.final_bpb:.3f} bits/byte "
                 f"in {scratch.steps} steps, {scratch.seconds:.1f} s")
        arms += [tuned, scratch]
    for compute in sorted({float(m) for m in config.scratch_compute or ()} - {float(config.compute_ratio)}):
        arm = _scratch_arm(config, tokenizer, device, subset, val_rows, workdir, token_config, fraction,
                           budget=tuned.curve[-1]["flops"], compute=compute, sweep=True)  # the largest fraction
        progress(f"scratch {fraction:.0%} at {compute:g}x compute: {arm.start_bpb:.3f} -> best {arm.best_bpb:.3f} "
                 f"bits/byte in {arm.steps} steps, {arm.seconds:.1f} s")
        arms.append(arm)
    full = next(a for a in arms if a.arm == "fine-tune" and a.fraction == max(config.fractions))
    return LabResult(config=config, arms=arms, target_bpb=full.final_bpb, held_out_rows=len(val_rows),
                     seconds=time.perf_counter() - started)


def save_result(folder: Path, result: LabResult) -> None:
    """`lab/lab-NNN/result.json`: the settings, the target and every arm's curve, readable without nbtune."""
    from nbtune.storage import atomic_write_json

    atomic_write_json(folder / "result.json", {
        "config": result.config.to_dict(), "target_bpb": result.target_bpb, "seconds": result.seconds,
        "arms": [dict(arm.__dict__) for arm in result.arms]})
