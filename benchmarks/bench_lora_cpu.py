"""The CPU workshop path: the embedded SmolLM2-135M on the embedded chat dialogs, nbtune vs Trainer + peft.

Both sides get the same model, the same rows and the same LoRA settings, built the same way: a Session loads
the "dialogs" example and `use_model("default", method=...)` (rank 16, alpha 32, dropout 0, all linear layers)
tokenizes them with the model's chat template (loss on the assistant's tokens only). Then

* ``trainer``: `transformers.Trainer` on that very (peft) model, N dialogs per optimizer step, each batch padded
  to its longest dialog, labels -100 outside the assistant's tokens (the usual SFT setup), fp32 (Trainer's
  CPU default) — or with ``--trainer-bf16`` bf16 autocast too;
* ``nbtune``: `Session.train` with packed sequences of 512 tokens, round(N x mean dialog length / 512)
  sequences per step (about the same real tokens), fp32, and ``nbtune_bf16`` with bf16 autocast
  (`use_model(precision="bf16")`, for CPUs with AVX512-BF16 or AMX).

Reported: real (non-padding) tokens/s and trained (assistant) tokens/s over the timed steps (after warm-up
steps), peak resident memory (VmHWM) of each recipe's own process, and the loss curve of nbtune fp32 vs bf16.
Recipes run interleaved, each in a fresh process, repeated; the table keeps each recipe's fastest run and
records the load average.

    python benchmarks/bench_lora_cpu.py                 # LoRA and full fine-tune tables -> results/lora-cpu.md
    python benchmarks/bench_lora_cpu.py --methods lora --repeats 1 --steps 3   # a quick look
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
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
HERE = Path(__file__).resolve().parent
for _p in (str(ROOT), str(HERE)):
    if _p not in sys.path:
        sys.path.insert(0, _p)

from _machine import machine_lines, write_result  # noqa: E402

RESULT_TAG = "BENCH_RESULT "
SEQ_LEN = 512
TARGET_SPEEDUP = 3.0
LORA = dict(lora_rank=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear")
LR = {"lora": 2e-4, "full": 2e-5}


# ---------------------------------------------------------------------------------------------- child side


def _peak_rss() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def _session(method: str, precision: str | None) -> Any:
    """The shared start of both sides: the dialogs, tokenized by the default model's chat template."""
    import datasets

    import nbtune

    datasets.disable_progress_bars()
    s = nbtune.Session(Path(tempfile.mkdtemp(prefix="bench-lora-cpu-")))
    s.load_example("dialogs")
    s.tokenize(context_length=SEQ_LEN)
    s.use_model("default", method=method, device="cpu", precision=precision, **(LORA if method == "lora" else {}))
    return s


def _rows(s: Any) -> tuple[list[list[int]], list[list[int]]]:
    train = s.tokens["train"]
    return list(train["input_ids"]), list(train["loss_mask"])


def nbtune_batch(mean_len: float, per_step: int) -> int:
    return max(1, round(per_step * mean_len / SEQ_LEN))


def child_nbtune(spec: dict[str, Any]) -> dict[str, Any]:
    s = _session(spec["method"], spec.get("precision"))
    ids, _ = _rows(s)
    mean_len = sum(map(len, ids)) / len(ids)
    batch = nbtune_batch(mean_len, spec["per_step"])
    warm, timed = spec["warmup"], spec["steps"]
    marks: dict[int, float] = {}
    cpu: dict[int, float] = {}
    steps: list[dict[str, Any]] = []

    def timer(event: Any) -> None:
        if event.kind == "step":
            steps.append(event.payload())
            if event.step in (warm, warm + timed):
                marks[event.step] = time.perf_counter()
                cpu[event.step] = time.process_time()

    run = s.train(steps=warm + timed, batch_size=batch, grad_accum=1, seq_len=SEQ_LEN, learning_rate=LR[spec["method"]],
                  warmup_steps=1, eval_every=10**9, eval_batches=1, background=False, progress=False,
                  listeners=(timer,))
    if run.status != "finished":
        return {"ok": False, "error": f"run {run.status}: {run.error!r}"}
    window = steps[warm:warm + timed]
    engine = run.engine
    return {"ok": True, "seconds": marks[warm + timed] - marks[warm], "cpu_seconds": cpu[warm + timed] - cpu[warm],
            "real_tokens": sum(r["tokens"] for r in window),
            "trained_tokens": sum(r["trained_tokens"] for r in window), "peak_bytes": _peak_rss(),
            "losses": [r["loss"] for r in steps], "layout": f"{batch} x {SEQ_LEN} packed",
            "setup": engine.setup_report, "eval_loss": run.evals[-1]["eval_loss"] if run.evals else None,
            "precision": s.model.device.precision, "mean_len": mean_len}


def child_trainer(spec: dict[str, Any]) -> dict[str, Any]:
    import torch
    from transformers import Trainer, TrainerCallback, TrainingArguments

    s = _session(spec["method"], None)
    ids, masks = _rows(s)
    pad = s.tokenizer.pad_token_id
    warm, timed, per_step = spec["warmup"], spec["steps"], spec["per_step"]
    real: list[int] = []
    trained: list[int] = []
    padded: list[int] = []
    marks: dict[int, float] = {}
    cpu: dict[int, float] = {}

    def collate(rows: list[int]) -> dict[str, Any]:
        width = max(len(ids[i]) for i in rows)
        input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
        labels = torch.full((len(rows), width), -100, dtype=torch.long)
        attention = torch.zeros((len(rows), width), dtype=torch.long)
        for r, i in enumerate(rows):
            n = len(ids[i])
            input_ids[r, :n] = torch.tensor(ids[i])
            attention[r, :n] = 1
            labels[r, :n] = torch.where(torch.tensor(masks[i]) > 0, torch.tensor(ids[i]), -100)
        real.append(int(attention.sum()))
        padded.append(int(attention.numel()))
        trained.append(int((labels[:, 1:] != -100).sum()))  # the model shifts labels: the first never trains
        return {"input_ids": input_ids, "attention_mask": attention, "labels": labels}

    class Rows(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return len(ids)

        def __getitem__(self, i: int) -> int:
            return i

    class Timer(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):  # noqa: ANN001, ANN201
            if state.global_step in (warm, warm + timed):
                marks[state.global_step] = time.perf_counter()
                cpu[state.global_step] = time.process_time()

    args = TrainingArguments(output_dir=tempfile.mkdtemp(prefix="bench-trainer-"), per_device_train_batch_size=per_step,
                             max_steps=warm + timed, learning_rate=LR[spec["method"]], use_cpu=True,
                             bf16=bool(spec.get("bf16")), report_to="none", save_strategy="no", eval_strategy="no",
                             logging_strategy="no", disable_tqdm=True, seed=0, remove_unused_columns=False,
                             dataloader_num_workers=0)
    trainer = Trainer(model=s.model.model, args=args, train_dataset=Rows(), data_collator=collate, callbacks=[Timer()])
    trainer.train()
    window = slice(warm, warm + timed)
    share = 1 - sum(real[window]) / sum(padded[window])
    return {"ok": True, "seconds": marks[warm + timed] - marks[warm], "cpu_seconds": cpu[warm + timed] - cpu[warm],
            "real_tokens": sum(real[window]),
            "trained_tokens": sum(trained[window]), "peak_bytes": _peak_rss(), "losses": [],
            "layout": f"{per_step} dialogs padded to the longest ({share:.0%} of the input is padding)",
            "precision": "bf16 autocast" if spec.get("bf16") else "fp32", "optim": str(args.optim)}


def child_main(spec: dict[str, Any]) -> int:
    import logging
    import warnings

    warnings.filterwarnings("ignore")
    logging.getLogger("transformers").setLevel(logging.ERROR)
    try:
        result = (child_trainer if spec["kind"].startswith("trainer") else child_nbtune)(spec)
    except Exception as exc:
        import traceback

        traceback.print_exc()
        result = {"ok": False, "error": f"{type(exc).__name__}: {str(exc)[:500]}"}
    print(RESULT_TAG + json.dumps(result, default=str), flush=True)
    return 0 if result.get("ok") else 1


# ---------------------------------------------------------------------------------------------- parent side


def run_child(spec: dict[str, Any], timeout: float) -> dict[str, Any]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    load_before = os.getloadavg()[0]
    try:
        proc = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], capture_output=True, text=True,
                              env=env, timeout=timeout, cwd=str(ROOT))
    except subprocess.TimeoutExpired:
        return {"ok": False, "error": f"timed out after {timeout:.0f} s", **spec}
    result = next((json.loads(line[len(RESULT_TAG):]) for line in proc.stdout.splitlines()
                   if line.startswith(RESULT_TAG)), None) or {"ok": False, "error": proc.stderr[-1500:]}
    result.update(spec)
    result["load_before"], result["load_after"] = load_before, os.getloadavg()[0]
    if result.get("ok"):
        result["tokens_per_s"] = result["real_tokens"] / result["seconds"]
        result["trained_per_s"] = result["trained_tokens"] / result["seconds"]
        result["tokens_per_cpu_s"] = result["real_tokens"] / result["cpu_seconds"]
    return result


RECIPES = {  # name: (kind, extra spec)
    "trainer": ("trainer", {}),
    "trainer_bf16": ("trainer", {"bf16": True}),
    "nbtune": ("nbtune", {}),
    "nbtune_bf16": ("nbtune", {"precision": "bf16"}),
}


def gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB"


def table(method: str, best: dict[str, dict[str, Any]], runs: list[dict[str, Any]]) -> list[str]:
    base = best.get("trainer")
    lines = [f"## {method}", "", "| recipe | precision | batch per step | real tokens/s | vs trainer | real tokens per "
             "CPU-second | vs trainer | trained tokens/s | peak RSS | vs trainer | load (1 min) before / after | "
             "all runs (real tokens/s) |",
             "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- |"]
    for name, r in best.items():
        if not r.get("ok"):
            lines.append(f"| {name} | FAIL | | | | | | | | | | {str(r.get('error'))[:200].replace('|', '/')} |")
            continue
        all_runs = " / ".join(f"{x['tokens_per_s']:,.0f}" for x in runs if x["recipe"] == name and x.get("ok"))
        speed = f"{r['tokens_per_s'] / base['tokens_per_s']:.2f}x" if base and base.get("ok") else "-"
        mem = f"{r['peak_bytes'] / base['peak_bytes']:.2f}x" if base and base.get("ok") else "-"
        per_cpu = (f"{r['tokens_per_cpu_s'] / base['tokens_per_cpu_s']:.2f}x" if base and base.get("ok") else "-")
        lines.append(f"| {name} | {r['precision']} | {r['layout']} | {r['tokens_per_s']:,.0f} | {speed} | "
                     f"{r['tokens_per_cpu_s']:,.1f} | {per_cpu} | {r['trained_per_s']:,.0f} | {gib(r['peak_bytes'])} | {mem} | {r['load_before']:.2f} / "
                     f"{r['load_after']:.2f} | {all_runs} |")
    return lines


def loss_lines(best: dict[str, dict[str, Any]]) -> list[str]:
    a, b = best.get("nbtune"), best.get("nbtune_bf16")
    if not (a and b and a.get("ok") and b.get("ok")):
        return []
    diffs = [abs(x - y) for x, y in zip(a["losses"], b["losses"], strict=False)]
    return ["", "Loss per step, nbtune fp32 vs bf16 autocast (same data order, same init):", "",
            "| step | fp32 | bf16 | difference |", "| ---: | ---: | ---: | ---: |",
            *[f"| {i + 1} | {x:.4f} | {y:.4f} | {abs(x - y):.4f} |" for i, (x, y) in
              enumerate(zip(a["losses"], b["losses"], strict=False))],
            "", f"Largest difference {max(diffs):.4f} (relative {max(diffs) / max(a['losses']):.2%}); held-out loss "
            f"after the run: fp32 {a.get('eval_loss') or float('nan'):.4f}, bf16 {b.get('eval_loss') or float('nan'):.4f}."]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--methods", default="lora,full", help="lora, full or both (default)")
    parser.add_argument("--recipes", default="trainer,nbtune,nbtune_bf16", help=f"of {', '.join(RECIPES)}")
    parser.add_argument("--per-step", type=int, default=16, help="dialogs per optimizer step on the Trainer side")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=6, help="timed steps")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=600)
    parser.add_argument("--out", default="lora-cpu.md")
    args = parser.parse_args(argv)
    if args.child:
        return child_main(json.loads(args.child))
    recipes = args.recipes.split(",")
    lines = ["# SmolLM2-135M on the embedded dialogs, CPU: nbtune vs Trainer + peft", "", *machine_lines(),
             f"- uptime at start: {os.popen('uptime').read().strip()}",
             f"- per optimizer step: Trainer {args.per_step} dialogs (padded to the longest of the batch), nbtune the "
             f"same real tokens packed into {SEQ_LEN}-token sequences; {args.warmup} warm-up + {args.steps} timed "
             f"steps; LoRA r16 alpha 32 dropout 0 all-linear; lr {LR}",
             "- real tokens: non-padding input tokens; trained: tokens with a loss (assistant turns)",
             f"- each recipe in its own process, interleaved, {args.repeats} round(s); best run shown",
             "- real tokens per CPU-second: the same tokens over the CPU time of all the recipe process's threads in the "
             "timed window; other load on the shared machine changes it less than wall-clock throughput", ""]
    ok = True
    for method in args.methods.split(","):
        runs: list[dict[str, Any]] = []
        for round_ in range(args.repeats):
            for name in recipes:
                kind, extra = RECIPES[name]
                spec = {"kind": kind, "recipe": name, "method": method, "per_step": args.per_step,
                        "warmup": args.warmup, "steps": args.steps, **extra}
                r = run_child(spec, args.timeout)
                runs.append(r)
                print(f"[{method} round {round_ + 1}] {name}: "
                      + (f"{r['tokens_per_s']:,.0f} real tokens/s ({r['tokens_per_cpu_s']:,.1f} per CPU-s), peak {gib(r['peak_bytes'])}, load "
                         f"{r['load_before']:.2f}->{r['load_after']:.2f}" if r.get("ok") else f"FAIL {r.get('error')}"),
                      flush=True)
        best = {}
        for name in recipes:
            mine = [r for r in runs if r["recipe"] == name]
            good = [r for r in mine if r.get("ok")]
            best[name] = max(good, key=lambda r: r["tokens_per_s"]) if good else mine[0]
        lines += table(method, best, runs) + loss_lines(best)
        setup = next((r.get("setup") for r in best.values() if r.get("ok") and r.get("setup")), None)
        if setup:
            lines.append(f"\nnbtune engine setup: {setup}")
        fastest = max((r for n, r in best.items() if n.startswith("nbtune") and r.get("ok")),
                      key=lambda r: r["tokens_per_s"], default=None)
        base = best.get("trainer")
        if fastest and base and base.get("ok"):
            lines.append("")
            for r in (best[n] for n in best if n.startswith("nbtune") and best[n].get("ok")):
                speed = r["tokens_per_s"] / base["tokens_per_s"]
                per_cpu = r["tokens_per_cpu_s"] / base["tokens_per_cpu_s"]
                mem = r["peak_bytes"] / base["peak_bytes"]
                passed = speed >= TARGET_SPEEDUP and mem <= 1.0
                ok &= passed or r is not fastest
                lines.append(f"- **{method}, {r['recipe']}: {speed:.2f}x Trainer's real tokens/s ({per_cpu:.2f}x per "
                             f"CPU-second) at {mem:.2f}x its peak RSS — target >= {TARGET_SPEEDUP}x at <= 1.0x: "
                             f"{'PASS' if passed else 'FAIL'}**")
            lines.append("")
        else:
            ok = False
    lines.append(f"- uptime at the end: {os.popen('uptime').read().strip()}")
    write_result(args.out, lines)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
