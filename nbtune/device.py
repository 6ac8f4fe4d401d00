"""Which device and precision to train on, decided once, in one place.

CUDA with bf16 where the GPU supports it, else fp16 with loss scaling; Apple
MPS; CPU in fp32. The user can override both. The peak bf16 throughput of known
GPUs is listed here so the engine can report MFU (model FLOPs utilisation).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from nbtune.errors import ConfigError

# Dense bf16 tensor-core peaks (FLOP/s) from the vendors' data sheets, without sparsity.
PEAK_BF16_FLOPS = {
    "H200": 989e12,
    "H100 SXM": 989e12,
    "H100 NVL": 835e12,
    "H100 PCIe": 756e12,
    "H100": 989e12,
    "GH200": 989e12,
    "B200": 2250e12,
    "A100": 312e12,
    "A800": 312e12,
    "L40S": 362e12,
    "L4": 121e12,
    "A10G": 125e12,
    "A10": 125e12,
    "RTX 4090": 165e12,
    "RTX 3090": 71e12,
    "T4": 65e12,  # fp16 (no bf16 support)
    "V100": 125e12,  # fp16 (no bf16 support)
}


@dataclass(frozen=True)
class DeviceInfo:
    """The chosen device, precision and what we know about its size and speed."""

    type: str  # "cuda", "mps" or "cpu"
    name: str
    precision: str  # "bf16", "fp16" or "fp32"
    total_memory: int | None  # bytes
    peak_flops: float | None  # bf16/fp16 dense peak, for MFU

    @property
    def torch_device(self) -> Any:
        import torch

        return torch.device(self.type)

    @property
    def autocast_dtype(self) -> Any:
        import torch

        return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}[self.precision]

    @property
    def needs_loss_scaling(self) -> bool:
        return self.precision == "fp16"

    def describe(self) -> str:
        memory = f", {self.total_memory / 2**30:.1f} GiB" if self.total_memory else ""
        return f"{self.name} ({self.type}{memory}), {self.precision}"


def _cuda_peak(name: str) -> float | None:
    for key, flops in PEAK_BF16_FLOPS.items():
        if key in name:
            return flops
    return None


def _cpu_memory() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


@lru_cache(maxsize=8)
def pick_device(device: str | None = None, precision: str | None = None) -> DeviceInfo:
    """The best attached device (cuda > mps > cpu) and its natural precision, unless overridden."""
    import torch

    kind = device or ("cuda" if torch.cuda.is_available() else
                      "mps" if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available() else "cpu")
    if kind == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError("device='cuda' was requested but no CUDA GPU is visible", column="device",
                              fix="leave device unset to use the CPU, or attach a GPU (Colab: Runtime > Change "
                                  "runtime type)")
        props = torch.cuda.get_device_properties(0)
        # Native bf16 only (Ampere and newer): torch would also say yes for a T4, where bf16 is emulated and slow.
        natural = "bf16" if torch.cuda.is_bf16_supported(including_emulation=False) else "fp16"
        info = DeviceInfo("cuda", props.name, precision or natural, props.total_memory, _cuda_peak(props.name))
    elif kind == "mps":
        info = DeviceInfo("mps", "Apple GPU (MPS)", precision or "fp32", None, None)
    elif kind == "cpu":
        info = DeviceInfo("cpu", f"CPU ({os.cpu_count()} cores)", precision or "fp32", _cpu_memory(), None)
    else:
        raise ConfigError(f"unknown device {kind!r}", column="device", fix="use 'cuda', 'mps' or 'cpu'")
    if info.precision == "bf16" and kind == "cuda" and not torch.cuda.is_bf16_supported():
        raise ConfigError(f"{info.name} does not support bf16", column="precision", fix="use precision='fp16'")
    return info


def memory_in_use(info: DeviceInfo) -> int:
    """Bytes the device allocator holds now (0 where it cannot be measured)."""
    import torch

    if info.type == "cuda":
        return int(torch.cuda.memory_allocated())
    if info.type == "mps":
        return int(torch.mps.current_allocated_memory())
    return 0


def free_memory(info: DeviceInfo) -> int | None:
    """Free bytes on the device, if known."""
    import torch

    if info.type == "cuda":
        return int(torch.cuda.mem_get_info()[0])
    if info.type == "cpu":
        try:
            with open("/proc/meminfo") as handle:
                for line in handle:
                    if line.startswith("MemAvailable:"):
                        return int(line.split()[1]) * 1024
        except OSError:
            return None
    return None
