"""The lab with the embedded defaults must finish in at most 3 minutes on 2 CPU cores.

Embedded data: the chatterbot dialogs (cleaned); base: the embedded SmolLM2-135M-Instruct
with LoRA; scratch: the tiny preset with its own BPE tokenizer; default LabConfig.
The one-time GGUF -> safetensors conversion of the base is done (and timed) first,
outside the lab, as it happens once per machine.
Run: python benchmarks/bench_lab.py   (writes benchmarks/results/lab.md)
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

from _machine import machine_lines, write_result

LIMIT_S = 180.0


def main() -> int:
    import nbtune
    from nbtune.models.default import default_model_folder

    started = time.perf_counter()
    default_model_folder()
    conversion = time.perf_counter() - started
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        s = nbtune.Session(Path(tmp) / "lab")
        s.load_example("dialogs")
        s.clean()
        started = time.perf_counter()
        report = s.lab()
        seconds = time.perf_counter() - started
    ok = seconds <= LIMIT_S
    rows = [f"| {a.arm} | {a.fraction:.0%} | {a.train_rows} | {a.steps} | {a.start_bpb:.3f} | {a.final_bpb:.3f} | "
            f"{a.seconds:.1f} s |" for a in report.result.arms]
    lines = ["# Lab on the embedded defaults (dialogs, SmolLM2-135M-Instruct + LoRA vs tiny scratch)", "",
             *machine_lines(), f"- load average before the lab: {load_before:.2f}",
             f"- one-time base model conversion (cached afterwards): {conversion:.1f} s", "",
             "| arm | data | rows | steps | bits/byte before | after | time |", "| --- | --- | --- | --- | --- | --- | --- |",
             *rows, "", f"Lab wall time: **{seconds:.1f} s** (limit {LIMIT_S:.0f} s): {'PASS' if ok else 'FAIL'}", "",
             "What it concluded:", "", *[f"- {line}" for line in report.differences()], ""]
    write_result("lab.md", lines)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
