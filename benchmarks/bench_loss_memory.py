"""Peak memory of one training step with the plain loss (full logits, fp32 upcast) vs nbtune's fused loss.

A one-layer Llama as wide as SmolLM2-135M (hidden 576, MLP 1536, 9/3 heads) with a 49,152-token vocabulary,
so the head and the loss dominate, as they do for small models with large vocabularies. Each variant runs
in a fresh process: build the model, run one warm-up step, then measure one forward + backward step:

* CUDA: `torch.cuda.max_memory_allocated()` during the step minus the memory allocated before it (bf16
  autocast, as the engine runs on GPUs);
* CPU: the process's peak resident set during the step (VmHWM, reset through /proc/self/clear_refs) minus the
  resident set before it (fp32).

    python benchmarks/bench_loss_memory.py [--device cpu|cuda] [--batch 1] [--seq 2048] [--vocab 49152]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
TAG = "LOSS_MEMORY "
MIB = 2**20


def _status(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key):
            return int(line.split()[1]) * 1024
    return 0


def measure(variant: str, device: str, batch: int, seq: int, vocab: int) -> dict[str, Any]:
    import torch
    import torch.nn.functional as F
    from transformers import LlamaConfig, LlamaForCausalLM

    from nbtune.train.loss import fused_linear_cross_entropy

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=vocab, hidden_size=576, intermediate_size=1536, num_hidden_layers=1,
                         num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=seq,
                         tie_word_embeddings=True, attn_implementation="sdpa")
    model = LlamaForCausalLM(config).to(device)
    ids = torch.randint(0, vocab, (batch, seq), device=device)
    targets = torch.randint(0, vocab, (batch, seq), device=device)
    weights = torch.ones(batch, seq, device=device)
    dtype = torch.bfloat16 if device == "cuda" else None

    def step() -> None:
        with torch.autocast(device, dtype=dtype, enabled=dtype is not None):
            if variant == "plain":  # the engine before issue 12
                logits = model(input_ids=ids, use_cache=False).logits
                loss = (F.cross_entropy(logits.float().reshape(-1, vocab), targets.reshape(-1), reduction="none")
                        * weights.reshape(-1)).sum()
            else:
                hidden = model.get_decoder()(input_ids=ids, use_cache=False).last_hidden_state
                head = model.get_output_embeddings()
                loss = fused_linear_cross_entropy(hidden, head.weight, head.bias, targets, weights)
        loss.backward()
        model.zero_grad(set_to_none=False)  # keep the gradient buffers: they are not the loss's memory

    step()
    if device == "cuda":
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        step()
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - before
    else:
        import gc

        gc.collect()
        before = _status("VmRSS:")
        Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current resident set
        step()
        peak = _status("VmHWM:") - before
    return {"variant": variant, "peak_step_bytes": int(peak), "device": device, "batch": batch, "seq": seq,
            "vocab": vocab}


def run(device: str, batch: int, seq: int, vocab: int) -> list[dict[str, Any]]:
    """Both variants, each in its own process; returns their results (plain first)."""
    out = []
    for variant in ("plain", "fused"):
        spec = json.dumps({"variant": variant, "device": device, "batch": batch, "seq": seq, "vocab": vocab})
        proc = subprocess.run([sys.executable, __file__, "--child", spec], capture_output=True, text=True,
                              timeout=600, env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
        line = next((x for x in proc.stdout.splitlines() if x.startswith(TAG)), None)
        out.append(json.loads(line[len(TAG):]) if line else {"variant": variant, "error": proc.stderr[-800:]})
    return out


def summary(results: list[dict[str, Any]]) -> str:
    if any("error" in r for r in results):
        return "FAIL: " + "; ".join(str(r.get("error", ""))[-300:] for r in results)
    plain, fused = (r["peak_step_bytes"] for r in results)
    r = results[0]
    return (f"one step at batch {r['batch']} x {r['seq']} tokens, vocabulary {r['vocab']:,} ({r['device']}): "
            f"plain loss {plain / MIB:,.0f} MiB, fused loss {fused / MIB:,.0f} MiB ({fused / plain:.2f}x)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--seq", type=int, default=2048)
    parser.add_argument("--vocab", type=int, default=49152)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--out", default=None, help="also write a result file with this name to benchmarks/results/")
    args = parser.parse_args(argv)
    if args.child:
        spec = json.loads(args.child)
        print(TAG + json.dumps(measure(spec["variant"], spec["device"], spec["batch"], spec["seq"], spec["vocab"])))
        return 0
    lines = []
    for _ in range(args.repeats):
        load = os.getloadavg()[0]
        lines.append(f"- {summary(run(args.device, args.batch, args.seq, args.vocab))}; load {load:.2f}")
        print(lines[-1], flush=True)
    if args.out:
        sys.path.insert(0, str(Path(__file__).parent))
        from _machine import machine_lines, write_result

        write_result(args.out, ["# Peak memory of one training step: plain loss vs fused loss", "",
                                *machine_lines(), f"- uptime: {os.popen('uptime').read().strip()}",
                                "- a one-layer Llama as wide as SmolLM2-135M (hidden 576, MLP 1536, 9/3 heads), "
                                f"vocabulary {args.vocab:,}, tied embeddings; {'fp32' if args.device == 'cpu' else 'bf16 autocast'}",
                                "- plain: `model(...).logits`, `.float()`, cross-entropy (the engine before issue 12); "
                                "fused: decoder + `nbtune.train.loss.fused_linear_cross_entropy`",
                                "- CPU: peak resident set during the step (VmHWM after /proc/self/clear_refs) minus the "
                                "resident set before it; each variant in its own process after one warm-up step", "",
                                *lines])
    return 0


if __name__ == "__main__":
    sys.exit(main())
