"""Training throughput: nbtune vs the Hugging Face `Trainer`, on the same model and the same documents.

Recipes (each runs in a fresh subprocess, so its peak memory is its own):

* ``trainer_default``: `Trainer` with `DataCollatorForLanguageModeling(mlm=False)`, which pads every batch
  of N documents to its longest one;
* ``trainer_flattening``: `Trainer` with `DataCollatorWithFlattening` (padding-free: the N documents are
  concatenated into one row, with position ids restarting at each document);
* ``nbtune``: the nbtune engine through the public `Session` API (`s.new_model` on CPU, a from-scratch
  model; `s.use_model(folder, method="full")` on a GPU, a full fine-tune of the same random-init model the
  Trainer recipes load), with its packed sequences;
* GPU only: ``nbtune_scratch`` (from-scratch pre-training of the same shape, for the MFU target) and, with
  ``--qlora``, ``nbtune_lora`` vs ``nbtune_qlora`` on a ~1B random-init Llama.

Every recipe sees the same token-id documents: lognormal lengths (median 330 tokens, sigma 0.6, clipped to
[16, 2048]), ids drawn uniformly from the vocabulary with a fixed seed, each ending with EOS. Throughput is
counted in REAL tokens (document tokens, never padding) per second, so padding waste shows. The first
`warmup_steps` optimizer steps are not timed. Each optimizer step holds about the same real tokens in every
recipe: the Trainer's N documents, and nbtune's `batch_size x seq_len` packed tokens with batch_size chosen
as round(N x mean document length / seq_len); the output says exactly what was matched. On a GPU every
recipe runs bf16 autocast over fp32 master weights (Trainer `bf16=True`, nbtune's natural precision).

MFU = flops_per_token x tokens/s / peak bf16 FLOP/s of the card, with nbtune's own card formula
(`nbtune.models.card.flops_per_token`: 6N + 12 L h T, T = nbtune's seq_len), the same number for every
recipe so MFU ratios equal throughput ratios. The "MFU 6N" column leaves the attention term out (the
convention of the reference numbers in the issue).

Targets:

* CPU, tiny Llama (nbtune preset "tiny", vocabulary 4096): nbtune >= 1.5x trainer_default tokens/s;
* one H100/H200, SmolLM2-360M shape (hidden 960, 32 layers, 15 heads, 5 kv heads, vocab 49152), bf16:
  nbtune full fine-tune >= 8x trainer_default tokens/s; nbtune from-scratch >= 45% MFU;
* ``--qlora`` (GPU): QLoRA must use clearly less peak memory than bf16 LoRA (we require <= 0.8x).

Run:

    python benchmarks/bench_train.py [--device cpu|cuda] [--qlora] [--steps N] [--repeats N] [--no-wait]

and it writes benchmarks/results/train-<device>.md. On CPU the recipes run in 2 interleaved rounds and each
keeps its fastest run; before each round the script waits (up to --max-wait-s) for the 1-minute load
average to drop below --max-load, because other processes on a 2-core machine distort the numbers; the
load is reported either way, with tokens per CPU-second as a cross-check that moves less with load.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
HERE = Path(__file__).resolve().parent
for _p in (str(ROOT), str(HERE)):
    if _p not in sys.path:
        sys.path.insert(0, _p)

from _machine import RESULTS, machine_lines  # noqa: E402

RESULT_TAG = "BENCH_RESULT "
SPECIALS = ["<|endoftext|>", "<|pad|>", "<|unk|>"]  # ids 0, 1, 2; documents use ids >= 3

CPU_SPEEDUP_TARGET = 1.5
GPU_SPEEDUP_TARGET = 8.0
GPU_MFU_TARGET = 0.45
QLORA_MEMORY_RATIO = 0.8  # QLoRA peak must be at most this fraction of bf16 LoRA's
QLORA_ISSUE_MEMORY, QLORA_ISSUE_SPEED = 0.5, 0.8  # issue 12: QLoRA peak <= 0.5x LoRA's at >= 0.8x its tokens/s


@dataclass(frozen=True)
class Setup:
    """One model shape, one document set and one batch layout, shared by every recipe."""

    name: str
    layers: int
    hidden: int
    heads: int
    kv_heads: int
    intermediate: int
    vocab: int
    docs_per_step: int  # N: documents per optimizer step (Trainer: per_device_train_batch_size x trainer_accum)
    seq_len: int  # nbtune's packed sequence length (also the model's context_length)
    warmup_steps: int
    measured_steps: int
    learning_rate: float = 1e-4
    median_len: float = 330.0
    sigma: float = 0.6
    min_len: int = 16
    max_len: int = 2048
    seed: int = 0
    nbtune_batch: int | None = None  # None: matched to docs_per_step (see nbtune_batch_size)
    preset: str = "tiny"  # nbtune preset the explicit sizes override (only names the source)
    trainer_accum: int = 1  # Trainer gradient_accumulation_steps (docs_per_step must be a multiple)

    @property
    def total_steps(self) -> int:
        return self.warmup_steps + self.measured_steps


CPU_TINY = Setup("tiny Llama (nbtune preset 'tiny')", layers=2, hidden=128, heads=4, kv_heads=2, intermediate=384,
                 vocab=4096, docs_per_step=8, seq_len=512, warmup_steps=3, measured_steps=20,
                 learning_rate=1e-3)
# 32 documents per step; the Trainer takes them as 2 micro-batches of 16 (padded to the longest of 16
# documents, 32 at once could exceed an H100's 80 GB in the pad-to-longest recipe).
GPU_360M = Setup("SmolLM2-360M shape (preset 'large')", layers=32, hidden=960, heads=15, kv_heads=5,
                 intermediate=2560, vocab=49152, docs_per_step=32, seq_len=2048, warmup_steps=5,
                 measured_steps=25, learning_rate=1e-4, preset="large", trainer_accum=2)
# A Llama-3.2-1B-like shape at SmolLM2's vocabulary: ~1.07B parameters (tied embeddings). One sequence of
# 512 tokens per step: the QLoRA setting of a small card, where the weights (not the activations, which
# nbtune cannot shrink with gradient checkpointing from the Session) decide the peak.
GPU_1B = Setup("~1B Llama (hidden 2048, 16 layers, 32/8 heads, MLP 8192)", layers=16, hidden=2048, heads=32,
               kv_heads=8, intermediate=8192, vocab=49152, docs_per_step=2, seq_len=512, warmup_steps=3,
               measured_steps=12, learning_rate=2e-4, nbtune_batch=1, preset="large")


# ---------------------------------------------------------------------------------------------- shared pieces


def doc_lengths(setup: Setup, n: int) -> Any:
    import numpy as np

    rng = np.random.default_rng(setup.seed)
    raw = np.exp(rng.normal(np.log(setup.median_len), setup.sigma, size=n))
    return np.clip(np.round(raw), setup.min_len, setup.max_len).astype(np.int64)


def n_documents(setup: Setup) -> int:
    """Enough documents that no recipe starts a second epoch inside the timed steps."""
    by_trainer = setup.docs_per_step * (setup.total_steps + 2)
    return int(by_trainer * 1.25) + 16


def make_documents(setup: Setup, n: int | None = None) -> list[list[int]]:
    """Token-id documents with lognormal lengths, random ids >= len(SPECIALS), each ending with EOS (id 0)."""
    import numpy as np

    n = n or n_documents(setup)
    lengths = doc_lengths(setup, n)
    rng = np.random.default_rng(setup.seed + 1)
    ids = rng.integers(len(SPECIALS), setup.vocab, size=int(lengths.sum()))
    docs, start = [], 0
    for length in lengths.tolist():
        docs.append(ids[start: start + length - 1].tolist() + [0])
        start += length
    return docs


def mean_doc_len(setup: Setup) -> float:
    return float(doc_lengths(setup, n_documents(setup)).mean())


def nbtune_batch_size(setup: Setup) -> int:
    """Packed sequences per nbtune step holding about the real tokens of the Trainer's N documents."""
    if setup.nbtune_batch:
        return setup.nbtune_batch
    return max(1, round(setup.docs_per_step * mean_doc_len(setup) / setup.seq_len))


def make_tokenizer(vocab: int) -> Any:
    """A word-level tokenizer with exactly `vocab` entries (no download): '<|endoftext|>', '<|pad|>', 't3'..."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = {tok: i for i, tok in enumerate(SPECIALS)}
    words.update({f"t{i}": i for i in range(len(SPECIALS), vocab)})
    core = Tokenizer(models.WordLevel(vocab=words, unk_token="<|unk|>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<|endoftext|>", eos_token="<|endoftext|>",
                                        pad_token="<|pad|>", unk_token="<|unk|>")
    tokenizer.model_max_length = 1_000_000
    return tokenizer


def scratch_config(setup: Setup, device: str | None = None) -> Any:
    from nbtune.config import ScratchModelConfig

    return ScratchModelConfig(preset=setup.preset, layers=setup.layers, hidden_size=setup.hidden, heads=setup.heads,
                              kv_heads=setup.kv_heads, intermediate_size=setup.intermediate,
                              context_length=setup.seq_len, seed=setup.seed, device=device)


def card_flops_per_token(setup: Setup) -> float:
    """nbtune's training FLOPs per token for this shape (6N + 12 L h T, T = seq_len), as its card computes it."""
    from nbtune.models.card import flops_per_token

    return flops_per_token(matmul_params=param_count(setup), layers=setup.layers, hidden=setup.hidden,
                           seq_len=setup.seq_len)


def param_count(setup: Setup) -> int:
    from nbtune.models.scratch import llama_param_count

    return llama_param_count(vocab=setup.vocab, hidden=setup.hidden, layers=setup.layers, heads=setup.heads,
                             kv_heads=setup.kv_heads, intermediate=setup.intermediate, tied=True)


def missing_modules(names: tuple[str, ...] = ("torch", "transformers", "datasets", "accelerate", "peft")) -> list[str]:
    import importlib.util

    return [name for name in names if importlib.util.find_spec(name) is None]


# ---------------------------------------------------------------------------------------------- child side


def _sync(device: str) -> None:
    if device == "cuda":
        import torch

        torch.cuda.synchronize()


def _peak_bytes(device: str) -> int:
    if device == "cuda":
        import torch

        return int(torch.cuda.max_memory_allocated())
    # VmHWM, the peak resident set of this process image. (ru_maxrss would not do: Linux carries it over
    # fork + exec, so a child started by a parent that holds torch reports the parent's peak.)
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    import resource

    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024  # KiB on Linux


def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def _device_facts(device: str) -> dict[str, Any]:
    from nbtune.device import pick_device

    info = pick_device(device)
    return {"device_name": info.name, "peak_flops": info.peak_flops, "precision": info.precision}


def child_prepare(spec: dict[str, Any]) -> dict[str, Any]:
    """Save a random-init model of the setup's shape (and the tokenizer) as a transformers folder."""
    import torch

    from nbtune.models.scratch import scratch_llama_config

    setup = Setup(**spec["setup"])
    folder = Path(spec["folder"])
    tokenizer = make_tokenizer(setup.vocab)
    config = scratch_llama_config(scratch_config(setup), vocab_size=len(tokenizer), context_length=setup.max_len,
                                  bos_id=tokenizer.bos_token_id, eos_id=tokenizer.eos_token_id,
                                  pad_id=tokenizer.pad_token_id)
    from transformers import LlamaForCausalLM

    started = time.perf_counter()
    build_on = "cuda" if spec["device"] == "cuda" and torch.cuda.is_available() else "cpu"
    torch.manual_seed(setup.seed)
    with torch.device(build_on):
        model = LlamaForCausalLM(config)
    model = model.to(torch.bfloat16 if spec["device"] == "cuda" else torch.float32)
    model.save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    return {"ok": True, "seconds": time.perf_counter() - started, "params": sum(p.numel() for p in model.parameters())}


class _CountingCollator:
    """Wraps a collator; records the real (non-padding) and total input tokens of each batch, in order."""

    def __init__(self, inner: Any, real: list[int], total: list[int]) -> None:
        self.inner, self.real, self.total = inner, real, total

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        batch = self.inner(features)
        self.real.append(sum(len(f["input_ids"]) for f in features))
        self.total.append(int(batch["input_ids"].numel()))
        return batch


def child_trainer(spec: dict[str, Any]) -> dict[str, Any]:
    import torch
    from transformers import (
        AutoModelForCausalLM,
        DataCollatorForLanguageModeling,
        DataCollatorWithFlattening,
        Trainer,
        TrainerCallback,
        TrainingArguments,
    )

    setup, device = Setup(**spec["setup"]), spec["device"]
    tokenizer = make_tokenizer(setup.vocab)
    docs = make_documents(setup)
    rss_base = _rss_bytes()
    if spec.get("folder"):
        model = AutoModelForCausalLM.from_pretrained(spec["folder"], dtype=torch.float32)
    else:  # the very same model nbtune's s.new_model builds (same code, same seed)
        from nbtune.device import pick_device
        from nbtune.models.scratch import new_model

        model = new_model(scratch_config(setup, device), tokenizer=tokenizer, context_length=setup.seq_len,
                          device=pick_device(device), seq_len=setup.seq_len).model
    real: list[int] = []
    total: list[int] = []
    if spec["kind"] == "trainer_default":
        inner = DataCollatorForLanguageModeling(tokenizer, mlm=False)
    else:
        inner = DataCollatorWithFlattening()
    marks: dict[int, float] = {}
    cpu_marks: dict[int, float] = {}  # CPU time of all this process's threads (a check on machine load)
    losses: list[float] = []

    class Timer(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):  # noqa: ANN001, ANN201
            if state.global_step in (setup.warmup_steps, setup.total_steps):
                _sync(device)
                marks[state.global_step] = time.perf_counter()
                cpu_marks[state.global_step] = time.process_time()

    class Dataset(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return len(docs)

        def __getitem__(self, i: int) -> dict[str, list[int]]:
            return {"input_ids": docs[i]}

    out = tempfile.mkdtemp(prefix="bench-trainer-")
    args = TrainingArguments(
        output_dir=out, per_device_train_batch_size=setup.docs_per_step // setup.trainer_accum,
        gradient_accumulation_steps=setup.trainer_accum, max_steps=setup.total_steps,
        learning_rate=setup.learning_rate, bf16=device == "cuda", use_cpu=device == "cpu", report_to="none",
        save_strategy="no", eval_strategy="no", logging_strategy="no", disable_tqdm=True, seed=setup.seed,
        remove_unused_columns=False, dataloader_num_workers=0,
    )
    trainer = Trainer(model=model, args=args, train_dataset=Dataset(),
                      data_collator=_CountingCollator(inner, real, total), callbacks=[Timer()])
    result = trainer.train()
    losses.append(float(result.training_loss))
    seconds = marks[setup.total_steps] - marks[setup.warmup_steps]
    cpu_seconds = cpu_marks[setup.total_steps] - cpu_marks[setup.warmup_steps]
    timed = slice(setup.warmup_steps * setup.trainer_accum, setup.total_steps * setup.trainer_accum)
    return {"ok": True, "seconds": seconds, "cpu_seconds": cpu_seconds, "steps": setup.measured_steps,
            "real_tokens": sum(real[timed]),
            "input_tokens": sum(total[timed]), "peak_bytes": _peak_bytes(device), "rss_base": rss_base,
            "loss": losses[-1], "docs_per_step": setup.docs_per_step, "optim": str(args.optim),
            "micro_batches": setup.trainer_accum,
            **_device_facts(device)}


def child_nbtune(spec: dict[str, Any]) -> dict[str, Any]:
    from datasets import Dataset, DatasetDict

    import nbtune
    from nbtune.config import TokenizerConfig

    setup, device, method = Setup(**spec["setup"]), spec["device"], spec.get("method", "scratch")
    docs = make_documents(setup)
    n_val = 8
    rows = lambda part: Dataset.from_dict({  # noqa: E731
        "input_ids": part, "loss_mask": [[1] * len(d) for d in part],
        "n_tokens": [len(d) for d in part], "n_trained": [len(d) for d in part]})
    workdir = Path(tempfile.mkdtemp(prefix="bench-nbtune-"))
    s = nbtune.Session(workdir)
    # The tokens stage, done by hand: these token-id documents are the session's tokenized data.
    s._tokenizer = make_tokenizer(setup.vocab)
    s.tokenizer_config = TokenizerConfig(tokenizer="bench word-level", vocab_size=setup.vocab,
                                         context_length=setup.seq_len, pack=True)
    # every document trains (as in the Trainer recipes); the validation split (used only after the timed
    # steps, for the engine's final evaluation) repeats the first few
    s._tokens = DatasetDict({"train": rows(docs), "validation": rows(docs[:n_val])})
    rss_base = _rss_bytes()
    if method == "scratch":
        s.new_model(scratch_config(setup, device), batch_size=nbtune_batch_size(setup))
    else:
        s.use_model(spec["folder"], method=method, device=device, batch_size=nbtune_batch_size(setup))
    if device == "cuda":
        import torch

        torch.cuda.reset_peak_memory_stats()
        model_bytes = int(torch.cuda.memory_allocated())
    else:
        model_bytes = None  # not separable from the imports on a CPU
    marks: dict[int, float] = {}
    cpu_marks: dict[int, float] = {}  # CPU time of all this process's threads (a check on machine load)
    steps: list[dict[str, Any]] = []

    def timer(event: Any) -> None:
        if event.kind == "step":
            steps.append(event.payload())
            if event.step in (setup.warmup_steps, setup.total_steps):
                _sync(device)
                marks[event.step] = time.perf_counter()
                cpu_marks[event.step] = time.process_time()

    compile_flag = bool(spec.get("compile", device == "cuda"))
    run = s.train(steps=setup.total_steps, batch_size=nbtune_batch_size(setup), grad_accum=1, seq_len=setup.seq_len,
                  learning_rate=setup.learning_rate, warmup_steps=setup.warmup_steps, eval_every=10**9,
                  eval_batches=1, background=False, progress=False, compile=compile_flag, listeners=(timer,))
    if run.status != "finished":
        return {"ok": False, "error": f"run {run.status}: {run.error!r}"}
    seconds = marks[setup.total_steps] - marks[setup.warmup_steps]
    cpu_seconds = cpu_marks[setup.total_steps] - cpu_marks[setup.warmup_steps]
    timed = steps[setup.warmup_steps:setup.total_steps]
    compiled = _compiled_graphs()
    lm = s.model
    return {"ok": True, "seconds": seconds, "cpu_seconds": cpu_seconds, "steps": len(timed),
            "real_tokens": sum(r["tokens"] for r in timed),
            "input_tokens": sum(r["tokens"] for r in timed), "peak_bytes": _peak_bytes(device),
            "peak_train_bytes": max(r["memory"] for r in timed) if device == "cuda" else None,
            "model_bytes": model_bytes, "rss_base": rss_base, "loss": steps[-1]["loss"], "first_loss": steps[0]["loss"],
            "micro_batch": steps[-1]["micro_batch"], "grad_accum": steps[-1]["grad_accum"],
            "seq_len": setup.seq_len, "card_flops_per_token": lm.card.flops_per_token,
            "engine_mfu": timed[-1]["mfu"], "compile_requested": compile_flag, "compiled_graphs": compiled,
            "params_trainable": lm.card.params_trainable, "params_total": lm.card.params_total,
            "weight_format": lm.card.weight_format, "method": lm.method, "engine_setup": run.engine.setup_report,
            **_device_facts(device)}


def _compiled_graphs() -> int:
    """How many graphs torch.compile produced in this process (0: nothing was compiled)."""
    try:
        from torch._dynamo.utils import counters

        return int(counters["stats"].get("unique_graphs", 0))
    except Exception:  # pragma: no cover - private API
        return -1


def child_main(spec: dict[str, Any]) -> int:
    import logging
    import warnings

    warnings.filterwarnings("ignore")
    logging.getLogger("transformers").setLevel(logging.ERROR)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    handlers = {"prepare": child_prepare, "trainer_default": child_trainer, "trainer_flattening": child_trainer,
                "nbtune": child_nbtune}
    try:
        result = handlers[spec["kind"]](spec)
    except Exception as exc:
        import traceback

        traceback.print_exc()
        result = {"ok": False, "error": f"{type(exc).__name__}: {str(exc)[:500]}"}
    print(RESULT_TAG + json.dumps(result, default=str), flush=True)
    return 0 if result.get("ok") else 1


# ---------------------------------------------------------------------------------------------- parent side


def run_child(spec: dict[str, Any], *, timeout: float | None = None, echo: bool = False) -> dict[str, Any]:
    """Run one recipe in a fresh interpreter and return its JSON result (ok=False with the error on failure)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1",
           "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1"}
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(spec)]
    started = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout, cwd=str(ROOT))
    except subprocess.TimeoutExpired as exc:
        tail = (exc.stderr or b"")[-1500:] if isinstance(exc.stderr, bytes) else (exc.stderr or "")[-1500:]
        return {"ok": False, "error": f"timed out after {timeout:.0f} s", "stderr_tail": str(tail),
                "wall_s": time.perf_counter() - started}
    result = None
    for line in proc.stdout.splitlines():
        if line.startswith(RESULT_TAG):
            result = json.loads(line[len(RESULT_TAG):])
    if result is None:
        result = {"ok": False, "error": f"exit code {proc.returncode}, no result line"}
    if not result.get("ok"):
        result["stderr_tail"] = proc.stderr[-2000:]
    if echo and proc.stderr.strip() and not result.get("ok"):
        print(proc.stderr[-2000:], file=sys.stderr)
    result["wall_s"] = time.perf_counter() - started
    return result


def finish(result: dict[str, Any], recipe: str, flops_per_token: float) -> dict[str, Any]:
    result["recipe"] = recipe
    if result.get("ok"):
        result["tokens_per_s"] = result["real_tokens"] / result["seconds"]
        peak = result.get("peak_flops")
        result["mfu"] = flops_per_token * result["tokens_per_s"] / peak if peak else None
        result["flops_per_token"] = flops_per_token
    return result


def human_bytes(n: float | None) -> str:
    from nbtune.models.card import human_bytes as hb

    return hb(n) if n else "-"


def load_now() -> float:
    return os.getloadavg()[0]


def wait_for_quiet(max_load: float, max_wait_s: float) -> float:
    """Wait until the 1-minute load average is below max_load (or the wait runs out); return the load."""
    deadline = time.time() + max_wait_s
    load = load_now()
    announced = False
    while load >= max_load and time.time() < deadline:
        if not announced:
            print(f"load average {load:.2f} >= {max_load}: waiting up to {max_wait_s:.0f} s for a quiet machine ...",
                  flush=True)
            announced = True
        time.sleep(10)
        load = load_now()
    return load


def _timeout(deadline: float | None, cap: float | None) -> float | None:
    """Seconds a child may run: at most `cap`, and never past `deadline` (a time.time() value)."""
    left = None if deadline is None else deadline - time.time()
    if left is None:
        return cap
    return left if cap is None else min(cap, left)


def _spec(recipe: str, setup: Setup, device: str, folder: str | None) -> dict[str, Any]:
    spec: dict[str, Any] = {"setup": asdict(setup), "device": device, "folder": folder}
    if recipe.startswith("trainer_"):
        spec["kind"] = recipe
    else:
        spec["kind"] = "nbtune"
        spec["method"] = {"nbtune": "scratch" if folder is None else "full", "nbtune_scratch": "scratch",
                          "nbtune_eager": "scratch" if folder is None else "full",
                          "nbtune_full": "full", "nbtune_lora": "lora", "nbtune_qlora": "qlora"}[recipe]
        if recipe == "nbtune_eager":  # the same run as "nbtune" without torch.compile: what compile buys
            spec["compile"] = False
        if spec["method"] == "scratch":
            spec["folder"] = None
    return spec


def speed_recipes(device: str, setup: Setup, *, folder: str | None, recipes: tuple[str, ...],
                  child_timeout: float | None = None, deadline: float | None = None, repeats: int = 1,
                  before_round: Any = None, log: Any = print) -> list[dict[str, Any]]:
    """Run the given recipes, each in its own process, and return one result per recipe (in order).

    With `repeats` > 1 the recipes run round after round (interleaved, so a burst of load elsewhere on
    the machine hits all of them alike) and each recipe keeps its fastest run; every run's tokens/s is
    kept in `runs_tokens_per_s`. `before_round()` is called before each round (e.g. to wait for a quiet
    machine). A recipe that would start with less than 20 s left before `deadline` is skipped (ok=False).
    """
    flops = card_flops_per_token(setup)
    runs: dict[str, list[dict[str, Any]]] = {recipe: [] for recipe in recipes}
    for round_no in range(repeats):
        if before_round is not None:
            before_round()
        if repeats > 1:
            log(f"  round {round_no + 1} of {repeats}")
        for recipe in recipes:
            timeout = _timeout(deadline, child_timeout)
            if timeout is not None and timeout < 20:
                runs[recipe].append({"recipe": recipe, "ok": False, "error": "skipped: the time budget is spent"})
                log(f"  {recipe}: SKIPPED (time budget spent)")
                continue
            loads = [load_now()]
            log(f"  {recipe} ...")
            result = finish(run_child(_spec(recipe, setup, device, folder), timeout=timeout), recipe, flops)
            loads.append(load_now())
            result["load"] = max(loads)
            result["params"] = param_count(setup)
            if result.get("ok"):
                log(f"  {recipe}: {result['tokens_per_s']:,.0f} tokens/s, peak {human_bytes(result['peak_bytes'])}, "
                    f"{result['wall_s']:.0f} s wall, load {result['load']:.2f}")
            else:
                log(f"  {recipe}: FAIL {result.get('error')}")
                for line in str(result.get("stderr_tail", "")).strip().splitlines()[-6:]:
                    log(f"    | {line}")
            runs[recipe].append(result)
    results = []
    for recipe in recipes:
        good = [r for r in runs[recipe] if r.get("ok")]
        best = max(good, key=lambda r: r["tokens_per_s"]) if good else runs[recipe][-1]
        best["runs_tokens_per_s"] = [r["tokens_per_s"] for r in good]
        best["runs_failed"] = len(runs[recipe]) - len(good)
        results.append(best)
    return results


def prepare_folder(device: str, setup: Setup, folder: Path, *, timeout: float | None = None) -> dict[str, Any]:
    if (folder / "config.json").exists():
        return {"ok": True, "seconds": 0.0}
    return run_child({"kind": "prepare", "setup": asdict(setup), "device": device, "folder": str(folder)},
                     timeout=timeout)


def matched_line(setup: Setup) -> str:
    mean = mean_doc_len(setup)
    batch = nbtune_batch_size(setup)
    layout = (f" as {setup.trainer_accum} micro-batches of {setup.docs_per_step // setup.trainer_accum}"
              if setup.trainer_accum > 1 else "")
    return (f"matched per optimizer step: Trainer {setup.docs_per_step} documents{layout} "
            f"(~{setup.docs_per_step * mean:,.0f} "
            f"real tokens, mean document {mean:.0f} tokens) vs nbtune {batch} packed sequences x {setup.seq_len} = "
            f"{batch * setup.seq_len:,} real tokens (~{batch * setup.seq_len / mean:.1f} documents); "
            f"{setup.warmup_steps} warm-up + {setup.measured_steps} timed steps each")


def table_lines(results: list[dict[str, Any]], *, baseline: str = "trainer_default", gpu: bool) -> list[str]:
    base = next((r for r in results if r["recipe"] == baseline and r.get("ok")), None)
    head = "| recipe | real tokens/s | vs trainer_default | peak memory | padding share |"
    sep = "| --- | ---: | ---: | ---: | ---: |"
    if gpu:
        head += " MFU | MFU 6N |"
        sep += " ---: | ---: |"
    else:
        head += " real tokens per CPU-second |"
        sep += " ---: |"
    head += " loss (last) | notes |"
    sep += " ---: | --- |"
    lines = [head, sep]
    for r in results:
        if not r.get("ok"):
            lines.append(f"| {r['recipe']} | FAIL | | | |" + (" | |" if gpu else " |")
                         + f" | {str(r.get('error', ''))[:160].replace('|', '/')} |")
            continue
        speed = f"{r['tokens_per_s'] / base['tokens_per_s']:.2f}x" if base else "-"
        padding = 1 - r["real_tokens"] / r["input_tokens"] if r.get("input_tokens") else 0.0
        row = f"| {r['recipe']} | {r['tokens_per_s']:,.0f} | {speed} | {human_bytes(r['peak_bytes'])} | {padding:.0%} |"
        if gpu:
            mfu = f"{r['mfu']:.1%}" if r.get("mfu") is not None else "-"
            six_n = (6 * r["params"] * r["tokens_per_s"] / r["peak_flops"]) if r.get("peak_flops") and r.get(
                "params") else None
            row += f" {mfu} | {f'{six_n:.1%}' if six_n is not None else '-'} |"
        else:
            row += f" {r['real_tokens'] / r['cpu_seconds']:,.0f} |" if r.get("cpu_seconds") else " - |"
        notes = []
        if "micro_batch" in r:
            notes.append(f"micro-batch {r['micro_batch']} x {r['seq_len']}, accum {r['grad_accum']}")
            notes.append(f"compile requested={r['compile_requested']}, graphs compiled={r['compiled_graphs']}")
            setup = r.get("engine_setup") or {}
            if setup:
                notes.append(f"attention {setup.get('attention')}; loss {setup.get('loss')}; compiled at the end "
                             f"{setup.get('compile')}; {setup.get('memory')}")
            card = r.get("card_flops_per_token")
            if card and abs(card / r["flops_per_token"] - 1) > 0.01:
                notes.append(f"(the run's own card says {card / 1e9:.2f} GFLOPs/token)")
        if "optim" in r:
            accum = r.get("micro_batches", 1)
            layout = f" as {accum} micro-batches" if accum > 1 else ""
            notes.append(f"{r['docs_per_step']} docs/step{layout}, optim {r['optim'].split('.')[-1]}")
        notes.append(f"{r['steps']} timed steps in {r['seconds']:.1f} s, load {r['load']:.2f}")
        if len(r.get("runs_tokens_per_s", [])) > 1:
            notes.append("fastest of " + " / ".join(f"{v:,.0f}" for v in r["runs_tokens_per_s"]) + " tokens/s")
        row += f" {r['loss']:.3f} | {'; '.join(notes)} |"
        lines.append(row)
    return lines


def verdict(ok: bool | None) -> str:
    return "PASS" if ok else ("FAIL" if ok is not None else "n/a")


def speedup(results: list[dict[str, Any]], recipe: str, baseline: str = "trainer_default") -> float | None:
    by = {r["recipe"]: r for r in results if r.get("ok")}
    if recipe in by and baseline in by:
        return by[recipe]["tokens_per_s"] / by[baseline]["tokens_per_s"]
    return None


def qlora_lines(results: list[dict[str, Any]]) -> tuple[list[str], bool | None]:
    by = {r["recipe"]: r for r in results if r.get("ok")}
    lines = ["| recipe | weights | trainable params | real tokens/s | peak memory (process) | peak memory (training) |"
             " model memory | loss first -> last | memory savers |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | --- | --- |"]
    for r in results:
        if not r.get("ok"):
            lines.append(f"| {r['recipe']} | FAIL | | | | | | {str(r.get('error', ''))[:160].replace('|', '/')} |")
            continue
        lines.append(f"| {r['recipe']} | {r['weight_format']} | {r['params_trainable']:,} | {r['tokens_per_s']:,.0f} | "
                     f"{human_bytes(r['peak_bytes'])} | {human_bytes(r.get('peak_train_bytes'))} | "
                     f"{human_bytes(r.get('model_bytes'))} | {r['first_loss']:.3f} -> {r['loss']:.3f} | "
                     f"{(r.get('engine_setup') or {}).get('memory', '-')} |")
    ok = None
    if "nbtune_qlora" in by and "nbtune_lora" in by:
        ok = by["nbtune_qlora"]["peak_bytes"] <= QLORA_MEMORY_RATIO * by["nbtune_lora"]["peak_bytes"]
        speed = by["nbtune_qlora"]["tokens_per_s"] / by["nbtune_lora"]["tokens_per_s"]
        lines += ["", f"QLoRA vs bf16 LoRA: {by['nbtune_qlora']['peak_bytes'] / by['nbtune_lora']['peak_bytes']:.2f}x "
                  f"the peak memory at {speed:.2f}x the tokens/s (issue 12's target: <= {QLORA_ISSUE_MEMORY}x at >= "
                  f"{QLORA_ISSUE_SPEED}x)"]
    return lines, ok


def run_benchmark(device: str, *, setup: Setup, finetune: bool | None = None, qlora: bool = False,
                  qlora_setup: Setup = GPU_1B, workdir: Path | None = None, child_timeout: float | None = None,
                  deadline: float | None = None, repeats: int = 1, before_round: Any = None,
                  log: Any = print) -> dict[str, Any]:
    """The whole benchmark for one device; returns results and PASS/FAIL checks (see `markdown`).

    `finetune` (default: on GPUs) makes the nbtune recipe a full fine-tune of a saved random-init model that
    the Trainer recipes load too, and adds the from-scratch recipe; without it nbtune trains the same model
    from scratch (`s.new_model`) and the Trainer gets the identical initialisation.
    """
    workdir = workdir or Path(tempfile.mkdtemp(prefix="bench-train-"))
    gpu = device == "cuda"
    finetune = gpu if finetune is None else finetune
    out: dict[str, Any] = {"device": device, "setup": setup, "checks": [], "finetune": finetune}
    folder = None
    if finetune:
        folder = workdir / "model-main"
        log(f"saving a random-init {setup.name} to {folder} ...")
        prep = prepare_folder(device, setup, folder, timeout=_timeout(deadline, child_timeout))
        if not prep.get("ok"):
            log(f"  FAIL preparing the model folder: {prep.get('error')}")
        recipes: tuple[str, ...] = ("trainer_default", "trainer_flattening", "nbtune", "nbtune_eager",
                                    "nbtune_scratch")
    else:
        recipes = ("trainer_default", "trainer_flattening", "nbtune")
    log(matched_line(setup))
    results = speed_recipes(device, setup, folder=str(folder) if folder else None, recipes=recipes,
                            child_timeout=child_timeout, deadline=deadline, repeats=repeats,
                            before_round=before_round, log=log)
    out["repeats"] = repeats
    out["results"] = results
    ratio = speedup(results, "nbtune")
    target = GPU_SPEEDUP_TARGET if gpu else CPU_SPEEDUP_TARGET
    what = "nbtune full fine-tune" if finetune else "nbtune"
    out["checks"].append((f"{what} >= {target}x trainer_default tokens/s",
                          f"{ratio:.2f}x" if ratio is not None else "no result",
                          verdict(ratio >= target if ratio is not None else None)))
    if not gpu:
        by = {r["recipe"]: r for r in results if r.get("ok") and r.get("cpu_seconds")}
        if "nbtune" in by and "trainer_default" in by:
            per_cpu = [by[k]["real_tokens"] / by[k]["cpu_seconds"] for k in ("nbtune", "trainer_default")]
            out["checks"].append(("for information: the same ratio per CPU-second of the recipe process "
                                  "(less sensitive to other load on the machine)", f"{per_cpu[0] / per_cpu[1]:.2f}x",
                                  "info"))
    if finetune:
        scratch = next((r for r in results if r["recipe"] == "nbtune_scratch" and r.get("ok")), None)
        mfu = scratch.get("mfu") if scratch else None
        measured = f"{mfu:.1%}" if mfu is not None else ("no peak FLOP/s for this device" if scratch else "no result")
        out["checks"].append((f"nbtune from-scratch MFU >= {GPU_MFU_TARGET:.0%}", measured,
                              verdict(mfu >= GPU_MFU_TARGET if mfu is not None else None)))
    if qlora:
        qfolder = workdir / "model-qlora"
        log(f"saving a random-init {qlora_setup.name} to {qfolder} ...")
        prep = prepare_folder(device, qlora_setup, qfolder, timeout=_timeout(deadline, child_timeout))
        if not prep.get("ok"):
            log(f"  FAIL preparing the QLoRA model folder: {prep.get('error')}")
        qresults = speed_recipes(device, qlora_setup, folder=str(qfolder), recipes=("nbtune_lora", "nbtune_qlora"),
                                 child_timeout=child_timeout, deadline=deadline, log=log)
        out["qlora_results"] = qresults
        qlines, qok = qlora_lines(qresults)
        out["qlora_lines"] = qlines
        out["qlora_setup"] = qlora_setup
        by = {r["recipe"]: r for r in qresults if r.get("ok")}
        ratio_text = (f"{by['nbtune_qlora']['peak_bytes'] / by['nbtune_lora']['peak_bytes']:.2f}x of LoRA's peak "
                      f"({human_bytes(by['nbtune_qlora']['peak_bytes'])} vs {human_bytes(by['nbtune_lora']['peak_bytes'])})"
                      if qok is not None else "no result")
        out["checks"].append((f"QLoRA peak memory <= {QLORA_MEMORY_RATIO}x bf16 LoRA's ({qlora_setup.name})",
                              ratio_text, verdict(qok)))
        if qok is not None:
            mem = by["nbtune_qlora"]["peak_bytes"] / by["nbtune_lora"]["peak_bytes"]
            speed = by["nbtune_qlora"]["tokens_per_s"] / by["nbtune_lora"]["tokens_per_s"]
            out["checks"].append((f"issue 12: QLoRA peak <= {QLORA_ISSUE_MEMORY}x LoRA's at >= {QLORA_ISSUE_SPEED}x "
                                  "its tokens/s", f"{mem:.2f}x memory at {speed:.2f}x tokens/s",
                                  verdict(mem <= QLORA_ISSUE_MEMORY and speed >= QLORA_ISSUE_SPEED)))
    return out


def markdown(out: dict[str, Any], *, title: str, extra: list[str] | None = None) -> list[str]:
    setup: Setup = out["setup"]
    gpu = out["device"] == "cuda"
    results = out["results"]
    dev = next((r["device_name"] for r in results if r.get("ok")), out["device"])
    lines = [f"# {title}", "", *machine_lines(), f"- device used: {dev} ({'bf16 autocast' if gpu else 'fp32'})",
             f"- model: {setup.name}: {setup.layers} layers x {setup.hidden}, {setup.heads} heads "
             f"({setup.kv_heads} kv), MLP {setup.intermediate}, vocabulary {setup.vocab:,}, "
             f"{param_count(setup) / 1e6:.1f}M parameters (tied embeddings), random init",
             f"- documents: random token ids, lognormal lengths (median {setup.median_len:.0f}, sigma {setup.sigma}, "
             f"clipped to [{setup.min_len}, {setup.max_len}]), seed {setup.seed}, each ending with EOS",
             f"- {matched_line(setup)}",
             "- throughput counts real (document) tokens only; padding is not counted; warm-up steps are not timed",
             *([] if gpu else ["- real tokens per CPU-second: the same tokens over the CPU time of all the recipe "
                               "process's threads in the timed window; other load on the machine changes it less "
                               "than wall-clock throughput"]),
             f"- peak memory: {'torch.cuda.max_memory_allocated() of the recipe process' if gpu else 'peak resident set (VmHWM) of the recipe process, ~0.5 GiB of it Python/torch/transformers'}",
             ]
    if gpu:
        lines.append(f"- MFU: nbtune card FLOPs/token {card_flops_per_token(setup) / 1e9:.2f} G (6N + 12 L h T, "
                     f"T = {setup.seq_len}) for every recipe; MFU 6N uses 6 x {param_count(setup) / 1e6:.0f}M")
    lines += [*(extra or []), "", *table_lines(results, gpu=gpu), ""]
    if out.get("qlora_lines"):
        q: Setup = out["qlora_setup"]
        lines += ["## QLoRA vs LoRA", "",
                  f"- model: {q.name}: {q.layers} layers x {q.hidden}, {q.heads} heads ({q.kv_heads} kv), MLP "
                  f"{q.intermediate}, vocabulary {q.vocab:,}, {param_count(q) / 1e9:.2f}B parameters, random init, "
                  "saved as a folder and loaded with `s.use_model(folder, method=...)` (LoRA rank 16, all linear "
                  "layers; the LoRA base is bf16 on a GPU, fp32 on a CPU; QLoRA: NF4 + double quantisation)",
                  f"- nbtune batch: {nbtune_batch_size(q)} x {q.seq_len} tokens per step, {q.warmup_steps} warm-up + "
                  f"{q.measured_steps} timed steps; peak (process) includes loading, peak (training) is the largest "
                  "per-step peak the engine reported", "", *out["qlora_lines"], ""]
    lines += ["## Targets", "", "| target | measured | result |", "| --- | --- | --- |"]
    lines += [f"| {a} | {b} | {c} |" for a, b, c in out["checks"]]
    lines.append("")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--device", choices=["cpu", "cuda"], default=None,
                        help="default: cuda if available, else cpu")
    parser.add_argument("--qlora", action="store_true", help="also run QLoRA vs bf16 LoRA on a ~1B model (GPU)")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per recipe (default: per device)")
    parser.add_argument("--docs-per-step", type=int, default=None, help="Trainer documents per optimizer step")
    parser.add_argument("--repeats", type=int, default=None,
                        help="interleaved rounds; each recipe keeps its fastest run (default: CPU 2, GPU 1)")
    parser.add_argument("--max-load", type=float, default=0.5, help="CPU: wait for a 1-minute load below this")
    parser.add_argument("--max-wait-s", type=float, default=600,
                        help="CPU: longest wait for a quiet machine before the first round (later rounds: 1/4)")
    parser.add_argument("--no-wait", action="store_true", help="CPU: do not wait for a quiet machine")
    parser.add_argument("--out", type=Path, default=None, help="markdown file (default: results/train-<device>.md)")
    args = parser.parse_args(argv)
    if args.child:
        return child_main(json.loads(args.child))

    missing = missing_modules()
    if missing:
        print(f"missing Python packages: {', '.join(missing)} (pip install them first)", file=sys.stderr)
        return 2
    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        print("--device cuda: no CUDA GPU is visible", file=sys.stderr)
        return 2
    setup = GPU_360M if device == "cuda" else CPU_TINY
    if args.steps:
        setup = replace(setup, measured_steps=args.steps)
    if args.docs_per_step:
        setup = replace(setup, docs_per_step=args.docs_per_step)
    if args.qlora and device != "cuda":
        print("--qlora needs a GPU (bitsandbytes on CPU would take hours for a 1B model); skipped", file=sys.stderr)
    if args.qlora and device == "cuda" and missing_modules(("bitsandbytes",)):
        print("--qlora: bitsandbytes is not installed, so the QLoRA recipe will FAIL (pip install bitsandbytes, "
              "or carry its wheel: pip install --no-index --find-links wheels/ bitsandbytes)", file=sys.stderr)
    repeats = args.repeats or (1 if device == "cuda" else 2)
    round_loads: list[float] = []

    def before_round() -> None:
        wait = args.max_wait_s if not round_loads else args.max_wait_s / 4
        load = wait_for_quiet(args.max_load, wait) if device == "cpu" and not args.no_wait else load_now()
        round_loads.append(load)
        print(f"device {device}; 1-minute load average before round {len(round_loads)}: {load:.2f}", flush=True)

    out = run_benchmark(device, setup=setup, qlora=args.qlora and device == "cuda", repeats=repeats,
                        before_round=before_round)
    loads = [r["load"] for r in out["results"] if "load" in r]
    extra = [f"- 1-minute load average ({os.cpu_count()} cores): "
             + ", ".join(f"{v:.2f}" for v in round_loads) + " at the start of each round, at most "
             f"{max(loads, default=0):.2f} during the fastest runs (a recipe's own threads add up to ~2 to it)",
             f"- each recipe ran {repeats} time(s), interleaved (round after round); the table shows its fastest "
             "run" if repeats > 1 else "- each recipe ran once"]
    lines = markdown(out, title=f"Training throughput ({device})", extra=extra)
    target = args.out or RESULTS / f"train-{device}.md"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text("\n".join(lines))
    if os.environ.get("OUT") and Path(os.environ["OUT"]).is_dir():
        (Path(os.environ["OUT"]) / target.name).write_text("\n".join(lines))
    print("\n".join(lines))
    print(f"written to {target}")
    return 0 if all(c[2] in ("PASS", "info") for c in out["checks"]) else 1


if __name__ == "__main__":
    sys.exit(main())
