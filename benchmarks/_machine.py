"""Describe the machine a benchmark ran on (shared by the benchmark scripts)."""

from __future__ import annotations

import datetime as _dt
import os
import platform
from pathlib import Path

RESULTS = Path(__file__).parent / "results"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def gpu_name() -> str | None:
    try:
        import torch

        if torch.cuda.is_available():
            return torch.cuda.get_device_name(0)
    except ImportError:
        pass
    return None


def machine_lines() -> list[str]:
    lines = [
        f"- date: {_dt.date.today().isoformat()}",
        f"- machine: {os.cpu_count()} cores, {cpu_model()}",
        f"- python: {platform.python_version()} on {platform.system()} {platform.machine()}",
    ]
    gpu = gpu_name()
    if gpu:
        lines.append(f"- GPU: {gpu}")
    return lines


def write_result(name: str, lines: list[str]) -> Path:
    """Write a result file into benchmarks/results/ and print it."""
    RESULTS.mkdir(exist_ok=True)
    target = RESULTS / name
    target.write_text("\n".join(lines))
    print("\n".join(lines))
    return target
