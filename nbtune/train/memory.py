"""Out-of-memory safety: release what a failed step held, and measure memory.

A `torch.OutOfMemoryError` keeps the whole failed step alive through its
traceback (activations, logits). `release_after_oom` drops those references
so the memory really comes back, then asks the allocator to return it.
"""

from __future__ import annotations

import gc
import sys
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
