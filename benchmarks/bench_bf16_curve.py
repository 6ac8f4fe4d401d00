"""Does bf16 autocast on a CPU train like fp32? The workshop path's LoRA run, three ways:

* fp32, training seed 0 (the reference);
* bf16 autocast, training seed 0 (what `use_model(precision="bf16")` changes);
* fp32, training seed 1 (another data order): the noise yardstick, i.e. how far two equally good fp32 runs
  land apart.

bf16 "matches within noise" when its held-out losses are as close to the reference as the other seed's are.
Each run is a fresh process (`bench_lora_cpu.py`'s session setup); held-out loss every `--eval-every` steps.

    python benchmarks/bench_bf16_curve.py [--steps 12] [--eval-every 4] [--batch 1]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

TAG = "CURVE_RESULT "
VARIANTS = {"fp32 seed 0": (None, 0), "bf16 seed 0": ("bf16", 0), "fp32 seed 1": (None, 1)}


def child(spec: dict[str, Any]) -> dict[str, Any]:
    import datasets
    from bench_lora_cpu import LORA, SEQ_LEN

    import nbtune

    datasets.disable_progress_bars()
    import tempfile

    s = nbtune.Session(Path(tempfile.mkdtemp(prefix="bench-bf16-")))
    s.load_example("dialogs")
    s.tokenize(context_length=SEQ_LEN)
    s.use_model("default", method="lora", device="cpu", precision=spec["precision"], **LORA)
    run = s.train(steps=spec["steps"], batch_size=spec["batch"], seq_len=SEQ_LEN, learning_rate=2e-4,
                  warmup_steps=2, eval_every=spec["eval_every"], eval_batches=4, eval_at_start=True,
                  background=False, progress=False, seed=spec["seed"])
    return {"losses": run.losses, "evals": [(e["tokens_seen"], e["eval_loss"]) for e in run.evals],
            "status": run.status}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--eval-every", type=int, default=4)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--out", default="bf16-curve-cpu.md")
    args = parser.parse_args(argv)
    if args.child:
        print(TAG + json.dumps(child(json.loads(args.child))), flush=True)
        return 0
    results = {}
    for name, (precision, seed) in VARIANTS.items():
        spec = {"precision": precision, "seed": seed, "steps": args.steps, "eval_every": args.eval_every,
                "batch": args.batch}
        proc = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], capture_output=True, text=True,
                              env={**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"})
        line = next((x for x in proc.stdout.splitlines() if x.startswith(TAG)), None)
        if line is None:
            print(proc.stderr[-2000:])
            return 1
        results[name] = json.loads(line[len(TAG):])
        print(name, results[name]["evals"], flush=True)
    from _machine import machine_lines, write_result

    ref = results["fp32 seed 0"]["evals"]
    rows = []
    for i, (tokens, loss) in enumerate(ref):
        bf16 = results["bf16 seed 0"]["evals"][i][1]
        other = results["fp32 seed 1"]["evals"][i][1]
        rows.append(f"| {tokens:,} | {loss:.4f} | {bf16:.4f} | {bf16 - loss:+.4f} | {other:.4f} | {other - loss:+.4f} |")
    gap_bf16 = max(abs(results["bf16 seed 0"]["evals"][i][1] - ref[i][1]) for i in range(1, len(ref)))
    gap_seed = max(abs(results["fp32 seed 1"]["evals"][i][1] - ref[i][1]) for i in range(1, len(ref)))
    verdict = "within noise" if gap_bf16 <= gap_seed else "NOT within noise"
    write_result(args.out, [
        "# bf16 autocast vs fp32 on a CPU: held-out loss of the workshop LoRA run", "", *machine_lines(),
        f"- uptime: {os.popen('uptime').read().strip()}",
        f"- embedded SmolLM2-135M, LoRA r16 on the embedded dialogs, {args.steps} steps of {args.batch} x 512 packed "
        "tokens, lr 2e-4 (2 warm-up steps), held-out loss on 4 micro-batches, same LoRA initialisation in every run",
        "- noise yardstick: the same fp32 run with another training seed (another data order)", "",
        "| tokens seen | fp32 seed 0 | bf16 seed 0 | bf16 - fp32 | fp32 seed 1 | seed 1 - seed 0 |",
        "| ---: | ---: | ---: | ---: | ---: | ---: |", *rows, "",
        f"Largest held-out gap after training started: bf16 {gap_bf16:.4f}, other seed {gap_seed:.4f}: bf16 is "
        f"**{verdict}**."])
    return 0


if __name__ == "__main__":
    sys.exit(main())
