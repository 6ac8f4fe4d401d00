"""One GPU check, sized for a single call of the device tool (under 8 minutes on one H100/H200).

It checks, through nbtune's public Session API and with local random-init models only (no hub):

1. imports: torch with CUDA, transformers, accelerate, peft, datasets, bitsandbytes (a clear message if one
   is missing; the parts that need it then FAIL and the script goes on);
2. scratch, full (bf16 autocast), lora, qlora (4-bit) and lora-8bit each train some steps with falling loss;
3. after every run, device memory returns to where it was: within 100 MB of the model-only value while the
   model is kept, and within 100 MB of the value before loading once the model is released;
4. a real CUDA out-of-memory error, provoked with a micro-batch far too large for the card (a 49k vocabulary
   makes the logits alone several times the card's memory), is recovered with auto_batch: the run finishes
   with the same effective batch and step count;
5. stop at step k + resume gives the losses of an uninterrupted run (max abs difference reported; GPU kernels
   are not bitwise deterministic, so the bound is 1e-2);
6. peak memory of one step at vocabulary 49,152 and 8 x 2048 tokens with the plain loss (full fp32 logits) vs
   nbtune's fused loss (benchmarks/bench_loss_memory.py);
7. the speed table of benchmarks/bench_train.py: the ~360M Llama full fine-tune (nbtune compiled and eager vs
   Trainer default vs Trainer with DataCollatorWithFlattening; the attention kernel and memory savers each run
   chose are in its notes), its from-scratch MFU, and ~1B QLoRA vs bf16 LoRA memory and speed.

Every part has a time budget; a failing part prints FAIL with its error and the next part runs. The result
goes to benchmarks/results/gpu-<card>-<date>.md (and train-cuda.md), copied to $OUT when that is set.

    python benchmarks/gpu_check.py               # on the GPU machine
    python benchmarks/gpu_check.py --dry-run     # on a CPU, tiny sizes: proves the script itself works
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import importlib.util
import json
import math
import os
import re
import shutil
import signal
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

os.environ.setdefault("PYTHONUNBUFFERED", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]
HERE = Path(__file__).resolve().parent
for _p in (str(ROOT), str(HERE)):
    if _p not in sys.path:
        sys.path.insert(0, _p)

import bench_loss_memory  # noqa: E402
import bench_train as bt  # noqa: E402
from _machine import RESULTS, machine_lines  # noqa: E402

MB = 2**20
SESSIONS: list[Any] = []  # every Session a part made, so a part that fails can have its model released
MEMORY_TOLERANCE = 100 * MB
RESUME_TOLERANCE = 1e-2
WORDS = "one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen".split()
START = time.time()


class PartTimeout(BaseException):
    """Raised by SIGALRM when a part runs past its hard limit (a BaseException, so the engine does not catch it)."""


def _on_alarm(signum: int, frame: Any) -> None:
    raise PartTimeout()


def say(text: str) -> None:
    print(f"[{time.time() - START:6.1f}s] {text}", flush=True)


@dataclass(frozen=True)
class Sizes:
    """Everything that differs between the real GPU check and the CPU dry run."""

    device: str
    preset: str  # nbtune preset of the functional checks' models
    hidden: int
    layers: int
    context: int
    batch: int
    steps: int
    resume_steps: int
    resume_k: int
    oom_vocab: int
    oom_seq_len: int
    oom_hidden: int
    loss_batch: int
    loss_seq: int
    speed: bt.Setup
    qlora: bt.Setup
    part_budget_s: float
    child_timeout_s: float


def gpu_sizes() -> Sizes:
    return Sizes(device="cuda", preset="small", hidden=256, layers=8, context=64, batch=16, steps=40,
                 resume_steps=10, resume_k=4, oom_vocab=49152, oom_seq_len=1024, oom_hidden=2048, loss_batch=8, loss_seq=2048, speed=bt.GPU_360M, qlora=bt.GPU_1B,
                 part_budget_s=45, child_timeout_s=100)


def dry_sizes() -> Sizes:
    speed = replace(bt.CPU_TINY, name="dry-run tiny Llama", layers=1, hidden=64, heads=4, kv_heads=2,
                    intermediate=128, vocab=512, docs_per_step=2, seq_len=256, warmup_steps=1, measured_steps=2,
                    median_len=60, max_len=256)
    qlora = replace(speed, name="dry-run tiny Llama for QLoRA", nbtune_batch=1, seq_len=128)
    return Sizes(device="cpu", preset="tiny", hidden=64, layers=2, context=32, batch=8, steps=25, resume_steps=8,
                 resume_k=3, oom_vocab=512, oom_seq_len=64, oom_hidden=64, loss_batch=1, loss_seq=256, speed=speed, qlora=qlora, part_budget_s=60,
                 child_timeout_s=120)


# ------------------------------------------------------------------------------------------------ helpers


def memory_now(device: str) -> int:
    if device != "cuda":
        return 0
    import torch

    gc.collect()
    torch.cuda.synchronize()
    return int(torch.cuda.memory_allocated())


def mib(n: float) -> str:
    return f"{n / MB:,.0f} MiB"


def counting_docs(n: int, seed: int = 0) -> list[str]:
    """A learnable task: count upwards from a random start."""
    import numpy as np

    rng = np.random.default_rng(seed)
    docs = []
    for _ in range(n):
        start = int(rng.integers(0, 8))
        docs.append(" ".join(WORDS[start: start + int(rng.integers(4, 9))]))
    return docs


def new_session(workdir: Path, sz: Sizes) -> Any:
    import nbtune

    s = nbtune.Session(workdir)
    SESSIONS.append(s)
    s.load(counting_docs(600))
    s.tokenize(vocab_size=300, context_length=sz.context)  # trains a small BPE tokenizer here, on this data
    return s


def train_kwargs(sz: Sizes, **extra: Any) -> dict[str, Any]:
    # compile off in the functional checks: they test behaviour within a short budget; the speed part measures
    # the default (compiled on CUDA) against eager
    base = dict(batch_size=sz.batch, learning_rate=3e-3, warmup_steps=3, eval_every=10**6, eval_batches=2,
                background=False, progress=False, compile=False)
    base.update(extra)
    return base


def falling(losses: list[float]) -> tuple[bool, str]:
    if len(losses) < 6:
        return False, f"only {len(losses)} steps"
    first, last = sum(losses[:3]) / 3, sum(losses[-3:]) / 3
    return last < 0.9 * first, f"loss {first:.3f} -> {last:.3f} over {len(losses)} steps"


def save_random_folder(s: Any, sz: Sizes, folder: Path) -> None:
    """A random-init Llama (the functional checks' shape) with the session's tokenizer, as a model folder."""
    import torch
    from transformers import LlamaForCausalLM

    from nbtune.config import ScratchModelConfig
    from nbtune.models.scratch import scratch_llama_config

    tok = s.tokenizer
    config = scratch_llama_config(ScratchModelConfig(preset=sz.preset, hidden_size=sz.hidden, layers=sz.layers),
                                  vocab_size=len(tok), context_length=sz.context, bos_id=tok.bos_token_id,
                                  eos_id=tok.eos_token_id, pad_id=tok.pad_token_id)
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(str(folder))
    tok.save_pretrained(str(folder))


class MemoryTrack:
    """Device memory before loading, with the model only, after the run, and after releasing the model."""

    def __init__(self, device: str) -> None:
        self.device = device
        self.before = memory_now(device)
        self.model_only = self.after_run = self.released = 0

    def loaded(self) -> None:
        self.model_only = memory_now(self.device)

    def ran(self) -> None:
        self.after_run = memory_now(self.device)

    def release(self, s: Any) -> None:
        if s.model is not None:
            s.model.release()
        gc.collect()
        if self.device == "cuda":
            import torch

            torch.cuda.empty_cache()
        self.released = memory_now(self.device)

    def ok(self) -> bool:
        return (abs(self.after_run - self.model_only) <= MEMORY_TOLERANCE
                and abs(self.released - self.before) <= MEMORY_TOLERANCE)

    def text(self) -> str:
        if self.device != "cuda":
            return "memory: n/a on CPU"
        return (f"memory: before {mib(self.before)}, model {mib(self.model_only)}, after run {mib(self.after_run)}, "
                f"released {mib(self.released)}")


# ------------------------------------------------------------------------------------------------ the parts


def part_imports(sz: Sizes, ctx: dict[str, Any]) -> tuple[bool, str]:
    wanted = ["torch", "transformers", "accelerate", "peft", "datasets", "tokenizers", "bitsandbytes", "safetensors"]
    missing = [m for m in wanted if importlib.util.find_spec(m) is None]
    for name in missing:
        say(f"MISSING: the Python package '{name}' is not installed here. Install it (on a machine without "
            f"network: `pip download {name} -d wheels/` elsewhere, carry wheels/, then `pip install --no-index "
            f"--find-links wheels/ {name}`); the parts that need it will FAIL.")
    versions = []
    for name in wanted:
        if name in missing:
            continue
        try:
            module = __import__(name)
            versions.append(f"{name} {getattr(module, '__version__', '?')}")
        except Exception as exc:  # a broken native library (bitsandbytes) is as bad as a missing one
            missing.append(name)
            say(f"BROKEN: '{name}' is installed but cannot be imported: {type(exc).__name__}: {exc}")
    import torch

    cuda = torch.cuda.is_available()
    if sz.device == "cuda" and not cuda:
        return False, "torch sees no CUDA GPU"
    if cuda:
        props = torch.cuda.get_device_properties(0)
        versions.append(f"GPU {props.name} {props.total_memory / 2**30:.0f} GiB, CUDA {torch.version.cuda}")
    ctx["missing"] = missing
    return not missing, ("; ".join(versions) + (f"; MISSING {', '.join(missing)}" if missing else ""))


def part_scratch(sz: Sizes, ctx: dict[str, Any]) -> tuple[bool, str]:
    s = new_session(ctx["tmp"] / "scratch", sz)
    ctx["session"] = s
    folder = ctx["tmp"] / "random-base"
    save_random_folder(s, sz, folder)
    ctx["folder"] = folder
    mem = MemoryTrack(sz.device)
    s.new_model(preset=sz.preset, hidden_size=sz.hidden, layers=sz.layers, device=sz.device)
    mem.loaded()
    run = s.train(steps=sz.steps, **train_kwargs(sz))
    mem.ran()
    good, text = falling(run.losses)
    mem.release(s)
    return run.status == "finished" and good and mem.ok(), f"{run.status}; {text}; {mem.text()}"


def part_method(method: str) -> Any:
    def part(sz: Sizes, ctx: dict[str, Any]) -> tuple[bool, str]:
        s, folder = ctx.get("session"), ctx.get("folder")
        if s is None or folder is None:
            s = new_session(ctx["tmp"] / f"ft-{method}", sz)
            folder = ctx["tmp"] / "random-base"
            if not (folder / "config.json").exists():
                save_random_folder(s, sz, folder)
            ctx["session"], ctx["folder"] = s, folder
        mem = MemoryTrack(sz.device)
        card = s.use_model(str(folder), method=method, device=sz.device, lora_dropout=0.0)
        mem.loaded()
        lr = 3e-3 if method == "full" else 1e-2
        run = s.train(steps=sz.steps, **train_kwargs(sz, learning_rate=lr))
        mem.ran()
        good, text = falling(run.losses)
        mem.release(s)
        return (run.status == "finished" and good and mem.ok(),
                f"{run.status}; {card.weight_format}, {card.params_trainable:,} trainable; {text}; {mem.text()}")

    return part


def part_oom(sz: Sizes, ctx: dict[str, Any]) -> tuple[bool, str]:
    """A real CUDA OOM (on CPU: a simulated one) in step 1, recovered by halving the micro-batch."""
    import numpy as np
    import torch
    from datasets import Dataset, DatasetDict

    import nbtune
    from nbtune.config import TokenizerConfig

    seq = sz.oom_seq_len
    if sz.device == "cuda":
        from nbtune.models.card import activation_bytes

        total = torch.cuda.get_device_properties(0).total_memory
        # the activations of `micro` sequences (the card's count, bf16, fused loss: no logits) must exceed twice
        # the card; a wide 2-layer model keeps the data small (~2k sequences)
        h = sz.oom_hidden
        per_sequence = activation_bytes(layers=2, hidden=h, kv_dim=h // 2, intermediate=round(h * 8 / 3),
                                        vocab=sz.oom_vocab, batch=1, seq_len=seq, bytes_per_value=2)
        micro = 2 ** math.ceil(math.log2(2 * total / per_sequence))
    else:
        micro = 16
    steps = 2
    setup = replace(bt.CPU_TINY, vocab=sz.oom_vocab, seq_len=seq)
    n_tokens = micro * seq * (steps + 1)
    lengths = bt.doc_lengths(setup, max(64, n_tokens // 300))
    rng = np.random.default_rng(0)
    ids = rng.integers(len(bt.SPECIALS), sz.oom_vocab, size=int(lengths.sum()))
    cuts = np.cumsum(lengths)[:-1]
    docs = [part.tolist() + [0] for part in np.split(ids, cuts)]
    rows = Dataset.from_dict({"input_ids": docs, "loss_mask": [[1] * len(d) for d in docs]})
    s = nbtune.Session(ctx["tmp"] / "oom")
    SESSIONS.append(s)
    s._tokenizer = bt.make_tokenizer(sz.oom_vocab)
    s.tokenizer_config = TokenizerConfig(tokenizer="bench word-level", vocab_size=sz.oom_vocab, context_length=seq)
    s._tokens = DatasetDict({"train": rows, "validation": rows.select(range(4))})
    mem = MemoryTrack(sz.device)
    s.new_model(preset=sz.preset, hidden_size=sz.oom_hidden, layers=2, device=sz.device)
    mem.loaded()
    simulated = None
    if sz.device != "cuda":  # no real OOM on a CPU: fail like the tests do, above 4 sequences per micro-batch
        model = s.model.model.get_decoder()  # what the engine calls: the decoder, then the fused loss
        real_forward = model.forward
        simulated = {"n": 0}

        def forward(*args: Any, input_ids: Any = None, **kwargs: Any) -> Any:
            if input_ids is not None and input_ids.shape[0] > 4 and model.training:
                simulated["n"] += 1
                raise torch.OutOfMemoryError("CUDA out of memory (simulated in the CPU dry run)")
            return real_forward(*args, input_ids=input_ids, **kwargs)

        model.forward = forward
    errors: list[dict[str, Any]] = []
    run = s.train(steps=steps, batch_size=micro, seq_len=seq, auto_batch=True, eval_every=10**6, eval_batches=1,
                  warmup_steps=1, background=False, progress=False, compile=False,
                  listeners=(lambda e: errors.append(e.payload()) if e.kind == "error" else None,))
    mem.ran()
    plan = run.engine.plan
    recovered = [e for e in errors if e.get("recovered")]
    same_batch = plan.micro_batch * plan.grad_accum == plan.sequences_per_step == micro
    ok = run.status == "finished" and bool(recovered) and same_batch and len(run.losses) == steps
    mem.release(s)
    kind = "simulated" if simulated is not None else "real CUDA"
    text = (f"{run.status}; {kind} OOM at micro-batch {micro} x {seq} (vocab {sz.oom_vocab:,}); "
            f"{len(recovered)} recoveries -> micro-batch {plan.micro_batch} x accum {plan.grad_accum} = "
            f"{plan.micro_batch * plan.grad_accum} sequences/step (asked {micro}); {len(run.losses)}/{steps} steps; "
            f"{mem.text()}")
    if run.error is not None:
        text += f"; error: {run.error!r}"[:300]
    return ok and mem.ok(), text


def part_resume(sz: Sizes, ctx: dict[str, Any]) -> tuple[bool, str]:
    steps, k = sz.resume_steps, sz.resume_k

    def fresh(name: str) -> Any:
        s = new_session(ctx["tmp"] / name, sz)
        s.new_model(preset=sz.preset, hidden_size=sz.hidden, layers=sz.layers, device=sz.device)
        return s

    reference_session = fresh("resume-ref")
    reference = reference_session.train(steps=steps, **train_kwargs(sz)).losses
    reference_session.model.release()
    s = fresh("resume-stop")

    def stop_at_k(event: Any) -> None:
        if event.kind == "step" and event.step == k:
            s.run.stop()

    run = s.train(steps=steps, listeners=(stop_at_k,), **train_kwargs(sz))
    stopped_at = run.engine.step
    status_after_stop = run.status
    run.resume()
    losses = run.losses
    s.model.release()
    if len(losses) != len(reference):
        return False, f"stopped {status_after_stop} at {stopped_at}; {len(losses)} losses vs {len(reference)}"
    diff = max(abs(a - b) for a, b in zip(losses, reference, strict=True))
    ok = status_after_stop == "stopped" and stopped_at == k and run.status == "finished" and diff <= RESUME_TOLERANCE
    return ok, (f"stopped at step {stopped_at} of {steps} ({status_after_stop}), resumed -> {run.status}; "
                f"max |loss diff| vs an uninterrupted run {diff:.2e} (bitwise: {losses == reference})")


def part_speed(sz: Sizes, ctx: dict[str, Any]) -> tuple[bool, str]:
    deadline = ctx["deadline"]
    if sz.device == "cuda":
        import torch

        gc.collect()
        torch.cuda.empty_cache()
    out = bt.run_benchmark(sz.device, setup=sz.speed, finetune=True, qlora=True, qlora_setup=sz.qlora,
                           workdir=ctx["tmp"] / "speed", child_timeout=sz.child_timeout_s, deadline=deadline,
                           log=say)
    ctx["speed"] = out
    checks = out["checks"]
    text = "; ".join(f"{a}: {b} {c}" for a, b, c in checks)
    # dry run: the targets are for the real sizes on a GPU; only the script's working is checked
    if sz.device != "cuda":
        ok = all(r.get("ok") for r in out["results"] + out.get("qlora_results", []))
        return ok, "dry run (targets not judged): " + text
    return all(c[2] in ("PASS", "info") for c in checks), text


def part_loss_memory(sz: Sizes, ctx: dict[str, Any]) -> tuple[bool, str]:
    """The fused loss must take less step memory than the plain one at a 49k vocabulary."""
    results = bench_loss_memory.run(sz.device, sz.loss_batch, sz.loss_seq, 49152)
    text = bench_loss_memory.summary(results)
    if any("error" in r for r in results):
        return False, text
    plain, fused = (r["peak_step_bytes"] for r in results)
    return fused < plain, text


PARTS: list[tuple[str, Any, float | None]] = [  # name, function, share of the part budget (x part_budget_s)
    ("imports", part_imports, None),  # no hard limit: an alarm inside `import torch` would break torch
    ("scratch", part_scratch, 1.0),
    ("full", part_method("full"), 1.0),
    ("lora", part_method("lora"), 1.0),
    ("qlora", part_method("qlora"), 1.0),
    ("lora-8bit", part_method("lora-8bit"), 1.0),
    ("oom", part_oom, 1.5),
    ("resume", part_resume, 1.0),
    ("loss_memory", part_loss_memory, 1.0),
    ("speed", part_speed, 0.0),  # gets whatever is left of the total budget
]


def release_all() -> None:
    """Release every model a part left loaded (after a failure) and give the cached memory back."""
    try:
        for s in SESSIONS:
            if s.model is not None and s.model.model is not None:
                s.model.release()
        gc.collect()
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except Exception as exc:  # best effort only
        say(f"  (could not release the models: {type(exc).__name__}: {exc})")


def card_slug() -> str:
    import torch

    name = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu-dry-run"
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="tiny sizes on the CPU (checks the script)")
    parser.add_argument("--budget-s", type=float, default=450, help="total wall-clock budget (default 450 s)")
    parser.add_argument("--part-budget-s", type=float, default=None,
                        help="budget of each functional part (default: 45 s on a GPU, 60 s in the dry run)")
    parser.add_argument("--only", default=None, help="comma-separated part names to run (default: all)")
    parser.add_argument("--out-dir", type=Path, default=None,
                        help="where the markdown goes (default: benchmarks/results; dry run: a temp folder)")
    args = parser.parse_args(argv)
    sz = dry_sizes() if args.dry_run else gpu_sizes()
    if args.part_budget_s:
        sz = replace(sz, part_budget_s=args.part_budget_s)
    deadline = START + args.budget_s
    tmp = Path(tempfile.mkdtemp(prefix="nbtune-gpu-check-"))
    try:  # the tokens stage's per-split progress bars would drown the progress lines
        import datasets

        datasets.disable_progress_bars()
    except ImportError:
        pass
    ctx: dict[str, Any] = {"tmp": tmp, "deadline": deadline}
    say(f"nbtune GPU check ({'DRY RUN on CPU' if args.dry_run else 'GPU'}), budget {args.budget_s:.0f} s, work in {tmp}")
    only = set(args.only.split(",")) if args.only else None
    rows: list[tuple[str, str, str, float]] = []
    for name, function, share in PARTS:
        if only and name not in only and name != "imports":
            continue
        left = deadline - time.time()
        budget = share * sz.part_budget_s if share else (60.0 if share is None else left)
        if left < (20 if share else 30):
            rows.append((name, "SKIP", "the total time budget is spent", 0.0))
            say(f"SKIP {name}: the total time budget is spent")
            continue
        # hard limit: twice the budget, never past the total budget (+30 s for the speed part's children)
        hard = min(2 * budget, left) if share else (None if share is None else left + 30)
        limit = f", hard limit {hard:.0f} s" if hard else ""
        say(f"--- {name} (budget {budget:.0f} s{limit}) ...")
        started = time.time()
        signal.signal(signal.SIGALRM, _on_alarm)
        if hard:
            signal.alarm(max(1, int(hard)))
        try:
            ok, text = function(sz, ctx)
            result = "PASS" if ok else "FAIL"
        except PartTimeout:
            result, text = "FAIL", f"stopped at its hard time limit of {hard:.0f} s"
        except Exception as exc:
            traceback.print_exc()
            first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ""
            result, text = "FAIL", f"{type(exc).__name__}: {first}"
        finally:
            signal.alarm(0)
        seconds = time.time() - started
        if share and seconds > budget:
            text += f" (over its {budget:.0f} s budget)"
        rows.append((name, result, text, seconds))
        say(f"{result} {name} in {seconds:.1f} s: {text}")
        release_all()

    total = time.time() - START
    lines = [f"# nbtune GPU check{' (dry run on CPU, tiny sizes)' if args.dry_run else ''}", "", *machine_lines(),
             f"- total wall time: {total:.0f} s (budget {args.budget_s:.0f} s)", "",
             "| check | result | seconds | numbers |", "| --- | --- | ---: | --- |"]
    lines += [f"| {n} | {r} | {s:.0f} | {t.replace('|', '/')} |" for n, r, t, s in rows]
    lines.append("")
    speed = ctx.get("speed")
    if speed:
        speed_lines = bt.markdown(speed, title=f"Training throughput ({sz.device})")
        lines += ["## Speed table (benchmarks/bench_train.py)", "", *speed_lines[1:]]
    print("\n" + "\n".join(lines), flush=True)

    out_dir = args.out_dir or (tmp if args.dry_run else RESULTS)
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / f"gpu-{card_slug()}-{dt.date.today().isoformat()}.md"
    target.write_text("\n".join(lines))
    written = [target]
    if speed and not args.dry_run:
        train_md = out_dir / "train-cuda.md"
        train_md.write_text("\n".join(bt.markdown(speed, title="Training throughput (cuda)")))
        written.append(train_md)
    if os.environ.get("OUT") and Path(os.environ["OUT"]).is_dir():
        for path in written:
            shutil.copy(path, Path(os.environ["OUT"]) / path.name)
    say(f"written: {', '.join(map(str, written))}")
    print("\n".join(["", "summary:", *(f"  {r:4} {n:12} {s:5.0f} s  {t[:110]}" for n, r, t, s in rows)]), flush=True)
    (tmp / "summary.json").write_text(json.dumps(rows))
    return 0 if all(r in ("PASS",) for _, r, _, _ in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
