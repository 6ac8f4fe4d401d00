"""Same inputs, same numbers: a fingerprint of what the public API computes, to compare two versions of nbtune.

A refactor must not change behaviour. This script runs the pipeline through the public API only, seeded, on
CPU (load -> clean -> tokenize -> new_model -> train -> resume with more steps -> evaluate -> generate ->
export_recipe -> the recipe's own trainer in a subprocess -> lab) and prints one JSON object of
what came out: row counts, token counts, the loss of every logged step to full precision, bits/byte, the
generated text, the lab's arms. Run it on two checkouts and diff the two files:

    python benchmarks/bench_parity.py --out /tmp/before.json         # in the old checkout
    python benchmarks/bench_parity.py --out /tmp/after.json          # in the new one
    python benchmarks/bench_parity.py --compare /tmp/before.json /tmp/after.json --record parity.md

`--record` writes benchmarks/results/<name> with the comparison. Wall time is printed, not compared.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _machine import machine_lines, write_result  # noqa: E402


def _losses(run_dir: Path) -> list[list]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return [[r.get("kind"), r.get("step"), r.get("loss"), r.get("eval_loss")] for r in rows
            if r.get("kind") in ("step", "eval")]


def fingerprint(workdir: Path) -> dict:
    import nbtune

    out: dict = {}
    s = nbtune.Session(workdir / "project")
    s.load_example("kjv")
    out["raw_rows"] = len(s.raw_dataset)
    s.clean(min_words=3)
    out["clean_rows"] = len(s.dataset)
    s.tokenize(vocab_size=1000, context_length=128)
    out["train_tokens"] = int(sum(s.tokens["train"]["n_tokens"]))
    out["validation_tokens"] = int(sum(s.tokens["validation"]["n_tokens"]))
    s.new_model(preset="tiny")
    run = s.train(steps=12, learning_rate=1e-3, batch_size=4, eval_every=6, checkpoint_every=6, progress=False)
    run.wait()
    s.resume(run.id, steps=6)
    s.run.wait()
    out["run_id"] = run.id
    out["losses"] = _losses(s.workdir / "runs" / run.id)
    ev = s.evaluate(max_rows=20)
    out["eval_bpb"] = ev.result.bits_per_byte
    gen = s.generate(["In the beginning"], max_new_tokens=12)
    out["generated"] = [[g.model, g.mode, g.text] for g in gen.generations]
    recipe = workdir / "recipe"
    s.export_recipe(recipe)
    s.close()
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run([sys.executable, str(recipe / "train.py"), "--steps", "6", "--no-progress"], cwd=recipe,
                          env=env, capture_output=True, text=True, timeout=900)
    out["recipe_rc"] = proc.returncode
    runs = sorted((recipe / "output" / "runs").glob("*"))
    out["recipe_losses"] = _losses(runs[-1]) if runs else proc.stderr[-800:]
    lab = nbtune.Session(workdir / "lab")
    lab.load_example("dialogs")
    lab.clean()
    report = lab.lab(fractions=(1.0,), finetune_steps=2)
    out["lab"] = [[a.arm, a.fraction, a.steps, a.start_bpb, a.final_bpb] for a in report.result.arms]
    lab.close()
    return out


def compare(before: dict, after: dict) -> list[str]:
    lines = ["| quantity | before | after | same |", "| --- | --- | --- | --- |"]
    for key in sorted(set(before) | set(after)):
        a, b = before.get(key), after.get(key)
        shown_a = json.dumps(a)[:60]
        shown_b = json.dumps(b)[:60]
        lines.append(f"| {key} | {shown_a} | {shown_b} | {'yes' if a == b else '**NO**'} |")
    return lines


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", help="write the fingerprint JSON here")
    ap.add_argument("--compare", nargs=2, metavar=("BEFORE", "AFTER"))
    ap.add_argument("--record", help="with --compare: results file name in benchmarks/results")
    ap.add_argument("--label", default="", help="with --record: what BEFORE and AFTER are (commits)")
    args = ap.parse_args()
    if args.compare:
        before, after = (json.loads(Path(p).read_text()) for p in args.compare)
        lines = compare(before, after)
        print("\n".join(lines))
        same = before == after
        if args.record:
            write_result(args.record, ["# Behaviour before and after a refactor (bench_parity.py)", "",
                                       *machine_lines(), f"- compared: {args.label}", "", *lines, "",
                                       f"All equal: **{'yes' if same else 'no'}**", ""])
        return 0 if same else 1
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        result = fingerprint(Path(tmp))
    result_text = json.dumps(result, indent=1, sort_keys=True)
    print(result_text)
    print(f"wall time {time.perf_counter() - started:.1f} s", file=sys.stderr)
    if args.out:
        Path(args.out).write_text(result_text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
