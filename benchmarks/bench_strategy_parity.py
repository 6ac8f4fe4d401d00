"""Bit-for-bit: the per-step losses of one process, DDP and FSDP runs, before and after a change to the loop.

Moving the distributed branches of `nbtune.train.loop` into strategy objects (issue 14, item 5) and turning
events into dataclasses (item 4) must not change a single number or file. This script trains, seeded, on CPU:

* one process: the tiny scratch model of `tests/test_recipe.py` (8 steps, batch 4, checkpoint every 4),
  and the same with micro-batch 2 x accumulation 2;
* the exported recipe under `torchrun --nproc_per_node=2` (DDP over gloo) and with `--strategy fsdp`;

and records each run's step losses as `float.hex` (exact), the keys of every metrics.jsonl line kind, and the
files the run folder holds. Run it on the old code and on the new code, then compare:

    PYTHONPATH=/tmp/old-checkout python benchmarks/bench_strategy_parity.py --out /tmp/before.json
    python benchmarks/bench_strategy_parity.py --out /tmp/after.json
    python benchmarks/bench_strategy_parity.py --compare /tmp/before.json /tmp/after.json

`--compare` writes benchmarks/results/strategy-parity.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _machine import machine_lines, write_result  # noqa: E402

WORDS = ["one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve"]
SETTINGS = dict(steps=8, batch_size=4, learning_rate=3e-3, warmup_steps=2, eval_every=4, eval_batches=4,
                checkpoint_every=4, keep_checkpoints=3, background=False, progress=False)
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
# the volatile parts of a metrics line and of a run folder: times, absolute paths, lock files
VOLATILE_FILES = (".run.lock",)


def counting_docs(n: int = 300, seed: int = 0) -> list[str]:
    """The documents of tests/conftest.py: count upwards from a random start."""
    import numpy as np

    rng = np.random.default_rng(seed)
    docs = []
    for _ in range(n):
        start = int(rng.integers(0, 6))
        docs.append(" ".join(WORDS[start: start + int(rng.integers(4, 7))]))
    return docs


def _record(run_dir: Path) -> dict:
    """Exact losses, the keys written per event kind, the run folder's files."""
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    keys: dict[str, list[str]] = {}
    for line in lines:
        keys.setdefault(line["kind"], list(line))
    return {"losses": [float(r["loss"]).hex() for r in lines if r["kind"] == "step"],
            "eval_losses": [float(r["eval_loss"]).hex() for r in lines if r["kind"] == "eval"],
            "keys": keys,
            "files": sorted(str(p.relative_to(run_dir)) for p in run_dir.rglob("*")
                            if p.is_file() and p.name not in VOLATILE_FILES)}


def _launch(recipe: Path, *args: str) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "CUDA_VISIBLE_DEVICES": ""}
    out = subprocess.run([*TORCHRUN, str(recipe / "train.py"), "--no-progress", *args], capture_output=True,
                         text=True, env=env, timeout=900, cwd=recipe)
    if out.returncode:
        raise SystemExit(f"torchrun {' '.join(args)} failed:\n{out.stderr[-4000:]}")


def measure(workdir: Path) -> dict:
    import nbtune

    s = nbtune.Session(workdir / "nb")
    s.load(counting_docs())
    s.tokenize(vocab_size=300, context_length=32)
    s.new_model(preset="tiny", layers=2, hidden_size=64, heads=4, kv_heads=2)
    out = {"nbtune": str(Path(nbtune.__file__).parent)}
    run = s.train(**SETTINGS)
    out["single"] = _record(run.dir)
    s.export_recipe("recipe")
    accumulated = s.train(**{**SETTINGS, "batch_size": 2, "grad_accum": 2})
    out["single, micro-batch 2 x 2"] = _record(accumulated.dir)
    recipe = s.workdir / "recipe"
    _launch(recipe, "--run-id", "ddp")
    out["DDP, 2 ranks"] = _record(recipe / "output" / "runs" / "ddp")
    _launch(recipe, "--run-id", "fsdp", "--strategy", "fsdp")
    out["FSDP, 2 ranks"] = _record(recipe / "output" / "runs" / "fsdp")
    return out


def compare(before: dict, after: dict) -> list[str]:
    lines = ["| run | steps | losses bitwise equal | eval losses equal | metrics keys equal | files equal |",
             "| --- | --- | --- | --- | --- | --- |"]
    for name in (k for k in before if k != "nbtune"):
        same = ["yes" if before[name][key] == after[name][key] else "**no**"
                for key in ("losses", "eval_losses", "keys", "files")]
        lines.append(f"| {name} | {len(after[name]['losses'])} | {' | '.join(same)} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="write this version's numbers to this JSON file")
    parser.add_argument("--compare", nargs=2, metavar=("BEFORE", "AFTER"), help="compare two JSON files")
    args = parser.parse_args()
    if args.out:
        with tempfile.TemporaryDirectory() as tmp:
            numbers = measure(Path(tmp))
        Path(args.out).write_text(json.dumps(numbers, indent=1))
        print(json.dumps({k: v["losses"] if isinstance(v, dict) else v for k, v in numbers.items()}, indent=1))
    if args.compare:
        before, after = (json.loads(Path(p).read_text()) for p in args.compare)
        table = compare(before, after)
        decoded = {name: [float.fromhex(x) for x in after[name]["losses"]] for name in after if name != "nbtune"}
        write_result("strategy-parity.md", [
            "# Strategy parity: the loop before and after the single/DDP/FSDP strategy objects and typed events",
            "", *machine_lines(), "",
            "`python benchmarks/bench_strategy_parity.py` (tiny scratch Llama, 8 steps, batch 4, seeded, CPU, gloo); "
            "losses compared as exact `float.hex` strings, metrics.jsonl keys per event kind and in order, "
            "run-folder file lists. The micro-batch 2 x 2 run continues the session's model after the first run "
            "(so its losses start lower). Before: the code at commit ac07b9c (`git archive`, run with PYTHONPATH); "
            "after: this commit's code.", "", *table, "",
            "Per-step losses after the change:", "",
            *(f"- {name}: {', '.join(f'{x:.6f}' for x in values)}" for name, values in decoded.items()), ""])


if __name__ == "__main__":
    main()
