"""`python -m nbtune demo` must finish in under 2 minutes on 2 cores.

Runs the README's main job in a fresh subprocess with a new workdir and reports
whether the embedded base model was already converted (the one-time GGUF ->
safetensors conversion, ~20 s, happens on a machine's first run).
Run: python benchmarks/bench_demo.py [--fresh-cache]   (writes benchmarks/results/demo.md)
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _machine import machine_lines, write_result

LIMIT_S = 120.0


def run_demo(fresh_cache: bool) -> tuple[float, subprocess.CompletedProcess]:
    """Time the demo; `fresh_cache` gives it an empty model cache, as on a new machine."""
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "HF_HUB_OFFLINE": "1"}
        if fresh_cache:
            env["NBTUNE_CACHE_DIR"] = str(Path(tmp) / "cache")
        started = time.perf_counter()
        result = subprocess.run([sys.executable, "-m", "nbtune", "demo", "--workdir", str(Path(tmp) / "demo")],
                                capture_output=True, text=True, env=env)
        return time.perf_counter() - started, result


def main() -> int:
    from nbtune.models.default import FOLDER_NAME, cache_root

    fresh = "--fresh-cache" in sys.argv
    cached = not fresh and (cache_root() / "models" / FOLDER_NAME).exists()
    load = os.getloadavg()[0]
    seconds, result = run_demo(fresh)
    ok = result.returncode == 0 and seconds < LIMIT_S
    lines = ["# python -m nbtune demo", "", *machine_lines(), f"- load average before: {load:.2f}",
             f"- embedded base model already converted: {'yes' if cached else 'no (includes the one-time conversion)'}",
             "", f"Wall time: **{seconds:.1f} s** (limit {LIMIT_S:.0f} s), exit code {result.returncode}: "
             f"{'PASS' if ok else 'FAIL'}", ""]
    if result.returncode:
        lines += ["```", result.stderr[-2000:], "```", ""]
    write_result(f"demo{'-fresh-cache' if fresh else ''}.md", lines)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
