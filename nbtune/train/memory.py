"""Memory: out-of-memory safety, measurement, and the memory savers a run uses.

A `torch.OutOfMemoryError` keeps the whole failed step alive through its
traceback (activations, logits). `release_after_oom` drops those references
so the memory really comes back, then asks the allocator to return it.

`choose_savers` decides, before the first step, whether the run recomputes
activations (gradient checkpointing) and whether AdamW keeps its moments in
8 bits (bitsandbytes' paged AdamW8bit), from the model card's memory model for
the run's actual micro-batch: each costs speed, so each is used only where the
estimate says it is needed, or for QLoRA, which is chosen to save memory.
"""

from __future__ import annotations

import gc
import sys
from dataclasses import dataclass
from typing import Any


def is_oom(exc: BaseException) -> bool:
    import torch

    if isinstance(exc, torch.OutOfMemoryError):
        return True
    # MPS and some CPU allocators raise a RuntimeError with this text instead
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


def release_after_oom(exc: BaseException | None, optimizer: Any = None) -> None:
    """Free the failed step's memory: clear tracebacks and grads, collect, empty the cache."""
    import torch

    if exc is not None:
        exc.__traceback__ = None
    sys.last_traceback = sys.last_value = sys.last_type = None
    if optimizer is not None:
        optimizer.zero_grad(set_to_none=True)
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def device_memory(device_type: str) -> int:
    """Bytes in use on the device (CUDA allocator) or by this process (CPU resident set)."""
    import torch

    if device_type == "cuda":
        return int(torch.cuda.memory_allocated())
    if device_type == "mps":
        return int(torch.mps.current_allocated_memory())
    try:
        with open("/proc/self/statm") as handle:
            import os

            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def peak_memory(device_type: str) -> int:
    """Peak bytes since the last reset (CUDA), else the current use."""
    import torch

    if device_type == "cuda":
        return int(torch.cuda.max_memory_allocated())
    return device_memory(device_type)


def reset_peak(device_type: str) -> None:
    import torch

    if device_type == "cuda":
        torch.cuda.reset_peak_memory_stats()


# ------------------------------------------------------------------------------ memory savers, chosen from the card

# QLoRA is chosen to save memory: when activations would be more than this share of the step's memory, the
# 4-bit weights alone cannot bring the peak down, so gradient checkpointing is turned on too.
QLORA_ACTIVATION_SHARE = 0.5
OPTIMIZER_BYTES = {"adamw": 8, "paged_adamw_8bit": 2}  # per trainable parameter: two moments, fp32 or 8-bit


@dataclass(frozen=True)
class MemoryChoice:
    """Gradient checkpointing on/off and the optimizer, with the estimate and reason behind them."""

    gradient_checkpointing: bool
    optimizer: str  # "adamw" or "paged_adamw_8bit"
    estimate: int | None  # bytes of one step with these choices (card model), None without a card
    reason: str

    def describe(self) -> str:
        ckpt = "on" if self.gradient_checkpointing else "off"
        return f"gradient checkpointing {ckpt}, optimizer {self.optimizer} ({self.reason})"


def step_estimate(card: Any, *, micro_batch: int, seq_len: int, checkpointing: bool, optimizer: str,
                  precision: str) -> int:
    """Bytes of one training step by the card's memory model, for this micro-batch and these choices."""
    from nbtune.models.card import LORA_METHODS, activation_bytes

    head_dim = card.hidden // max(card.heads, 1)
    acts = activation_bytes(layers=card.layers, hidden=card.hidden, kv_dim=head_dim * card.kv_heads,
                            intermediate=card.intermediate, vocab=card.vocab, batch=micro_batch, seq_len=seq_len,
                            bytes_per_value=2 if precision in ("bf16", "fp16") else 4,
                            gradient_checkpointing=checkpointing, lora=card.method in LORA_METHODS)
    optimizer_bytes = OPTIMIZER_BYTES[optimizer] * card.params_trainable
    return card.weight_bytes + card.gradient_bytes + optimizer_bytes + acts


def choose_savers(card: Any, *, device_type: str, precision: str, micro_batch: int, seq_len: int,
                  checkpointing: bool | None, optimizer: str, paged_available: bool) -> MemoryChoice:
    """Turn on gradient checkpointing / paged 8-bit AdamW where the card's estimate says they help.

    Explicit settings win. Otherwise: checkpointing when the step would not fit without it, or for QLoRA
    on a GPU when activations would dominate; paged 8-bit AdamW (GPU, bitsandbytes) for QLoRA, where the
    adapters' optimizer state is small and paging keeps spikes off the card, and whenever the step would
    not fit with fp32 AdamW state.
    """
    usable = card.usable_memory

    def estimate(ckpt: bool, opt: str) -> int:
        return step_estimate(card, micro_batch=micro_batch, seq_len=seq_len, checkpointing=ckpt, optimizer=opt,
                             precision=precision)

    reasons = []
    plain = estimate(False, "adamw")
    ckpt = checkpointing
    if ckpt is None:
        acts_share = 1 - estimate(True, "adamw") / plain if plain else 0.0  # ~ the share checkpointing saves
        if usable is not None and plain > usable:
            ckpt = True
            reasons.append("the step would not fit without checkpointing")
        elif card.method == "qlora" and device_type == "cuda" and acts_share > QLORA_ACTIVATION_SHARE:
            ckpt = True
            reasons.append(f"QLoRA: checkpointing removes {acts_share:.0%} of the step's memory")
        else:
            ckpt = False
    opt = optimizer
    if opt == "auto":
        paged_helps = card.method == "qlora" or (usable is not None and estimate(ckpt, "adamw") > usable)
        opt = "paged_adamw_8bit" if paged_available and device_type == "cuda" and paged_helps else "adamw"
        if opt != "adamw":
            reasons.append("QLoRA" if card.method == "qlora" else "fp32 AdamW state would not fit")
    return MemoryChoice(bool(ckpt), opt, estimate(bool(ckpt), opt), "; ".join(reasons) or "the estimate fits")


def checkpointable(optimizer_class: Any) -> Any:
    """A bitsandbytes 8-bit optimizer class whose state checkpoints like torch's AdamW.

    bitsandbytes keeps each parameter's step count as a Python int; nbtune's checkpoints store optimizer state
    as tensors (safetensors). The count is kept as a 0-d CPU tensor between steps and handed to bitsandbytes
    as an int during its update (a host value: no device sync).
    """
    import torch

    class Checkpointable(optimizer_class):
        def update_step(self, group: dict, p: Any, gindex: int, pindex: int) -> None:
            state = self.state[p]
            if isinstance(state.get("step"), torch.Tensor):
                state["step"] = int(state["step"].item())  # a CPU tensor: no device sync
            super().update_step(group, p, gindex, pindex)
            state["step"] = torch.tensor(float(state["step"]))

    Checkpointable.__name__ = Checkpointable.__qualname__ = f"Checkpointable{optimizer_class.__name__}"
    return Checkpointable


def paged_adamw_8bit(groups: list[dict], **kwargs: Any) -> Any:
    """bitsandbytes' PagedAdamW8bit (moments in 8 bits, paged to host memory under pressure), checkpointable."""
    from bitsandbytes.optim import PagedAdamW8bit

    return checkpointable(PagedAdamW8bit)(groups, **kwargs)
