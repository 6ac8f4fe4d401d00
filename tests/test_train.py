"""The training engine: it learns, stops and resumes exactly, survives OOM, and reports events."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import FAST
from conftest import counting_docs as _counting_docs
from conftest import counting_down_docs_list as _counting_down_docs

import nbtune
from nbtune.config import TrainConfig
from nbtune.events import EVENT_KINDS
from nbtune.train.loop import Plan, learning_rate


@pytest.fixture
def scratch_session(tmp_path):
    s = nbtune.Session(tmp_path / "scratch")
    s.load(_counting_docs())
    s.tokenize(vocab_size=300, context_length=32)
    s.new_model(preset="tiny", layers=2, hidden_size=64, heads=4, kv_heads=2)
    return s


def test_scratch_model_learns_and_parameters_change(scratch_session):
    before = {n: p.detach().clone() for n, p in scratch_session.model.model.named_parameters()}
    run = scratch_session.train(steps=40, **FAST)
    assert run.status == "finished"
    evals = [e["eval_loss"] for e in run.evals]
    assert evals[-1] < 0.6 * evals[0], evals
    changed = [n for n, p in scratch_session.model.model.named_parameters() if not torch.equal(before[n], p)]
    assert len(changed) == len(before)


def _losses_after_stop_and_resume(session, k: int, steps: int) -> list[float]:
    def stop_at_k(event):
        if event.kind == "step" and event.step == k:
            session.run.stop()

    run = session.train(steps=steps, listeners=(stop_at_k,), **FAST)
    assert run.status == "stopped" and run.engine.step == k
    assert run.last_checkpoint.name == f"step-{k:06d}"
    run.resume()
    assert run.status == "finished"
    return run.losses


@pytest.mark.parametrize("k", [1, 4, 7])
def test_stop_and_resume_in_the_same_kernel_is_bitwise_exact(tmp_path, k):
    steps = 9
    reference = _fresh_scratch(tmp_path / "ref").train(steps=steps, **FAST).losses
    resumed = _losses_after_stop_and_resume(_fresh_scratch(tmp_path / f"k{k}"), k, steps)
    assert resumed == reference  # bitwise: the same floats


def _fresh_scratch(workdir):
    s = nbtune.Session(workdir)
    s.load(_counting_docs())
    s.tokenize(vocab_size=300, context_length=32)
    s.new_model(preset="tiny", layers=2, hidden_size=64, heads=4, kv_heads=2)
    return s


RESUME_SCRIPT = """
import json, sys, nbtune
s = nbtune.Session.open(sys.argv[1])
run = s.resume(progress=False)
print(json.dumps({"status": run.status, "losses": run.losses}))
"""


@pytest.mark.parametrize("k", [2, 5])
def test_resume_from_disk_in_a_fresh_process_is_bitwise_exact(tmp_path, k):
    steps = 8
    reference = _fresh_scratch(tmp_path / "ref").train(steps=steps, **FAST).losses
    session = _fresh_scratch(tmp_path / "stopped")

    def stop_at_k(event):
        if event.kind == "step" and event.step == k:
            session.run.stop()

    session.train(steps=steps, listeners=(stop_at_k,), **FAST)
    out = subprocess.run([sys.executable, "-c", RESUME_SCRIPT, str(session.workdir)], capture_output=True,
                         text=True, env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"}, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["status"] == "finished"
    assert reference[:k] + result["losses"] == reference
    from nbtune.train.listeners import read_metrics

    logged = [r["loss"] for r in read_metrics(session.workdir / "runs/run-001-scratch/metrics.jsonl")
              if r["kind"] == "step"]
    assert logged == reference


def test_events_files_and_checkpoints(scratch_session):
    seen, broken_calls = [], []

    def broken_listener(event):
        broken_calls.append(event.kind)
        raise RuntimeError("a broken chart must not stop training")

    run = scratch_session.train(steps=6, checkpoint_every=2, keep_checkpoints=2, sample_prompt="one two",
                                listeners=(lambda e: seen.append(e.kind), broken_listener), **FAST)
    assert run.status == "finished" and broken_calls
    assert {"run_start", "step", "eval", "checkpoint", "sample", "run_end"} <= set(seen) <= set(EVENT_KINDS)
    step = run.metrics[-1]
    for key in ("loss", "lr", "grad_norm", "tokens_seen", "tokens_per_s", "memory", "mfu"):
        assert key in step
    lines = (run.dir / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == len(seen) and json.loads(lines[-1])["kind"] == "run_end"
    checkpoints = sorted(p.name for p in (run.dir / "checkpoints").iterdir())
    assert checkpoints == ["step-000004", "step-000006"]
    files = {p.name for p in (run.dir / "checkpoints" / "step-000006").rglob("*") if p.is_file()}
    assert {"optimizer.safetensors", "rng.safetensors", "state.json"} <= files
    assert not [f for f in files if f.endswith((".bin", ".pt", ".pkl"))]
    saved = json.loads((scratch_session.workdir / "session.json").read_text())
    assert saved["runs"][0]["status"] == "finished" and saved["runs"][0]["checkpoint"].endswith("step-000006")


def _fail_on_big_batches(model, limit: int):
    real_forward = model.forward
    calls = {"oom": 0}

    def forward(*args, input_ids=None, **kwargs):
        if input_ids is not None and input_ids.shape[0] > limit and model.training:
            calls["oom"] += 1
            raise torch.OutOfMemoryError("CUDA out of memory (simulated on CPU)")
        return real_forward(*args, input_ids=input_ids, **kwargs)

    model.forward = forward
    return calls


def test_out_of_memory_halves_the_micro_batch_and_keeps_the_effective_batch(tmp_path):
    reference = _fresh_scratch(tmp_path / "ref").train(steps=6, **FAST)
    session = _fresh_scratch(tmp_path / "oom")
    calls = _fail_on_big_batches(session.model.model, limit=1)
    errors = []
    run = session.train(steps=6, listeners=(lambda e: errors.append(e.data) if e.kind == "error" else None,),
                        **FAST)
    assert run.status == "finished" and calls["oom"] == 2  # 4 -> 2 -> 1
    assert [e["micro_batch"] for e in errors] == [2, 1] and all(e["recovered"] for e in errors)
    assert run.engine.plan.micro_batch * run.engine.plan.grad_accum == 4
    assert len(run.losses) == 6
    np.testing.assert_allclose(run.losses, reference.losses, rtol=1e-4)


def test_out_of_memory_without_auto_batch_fails_cleanly_and_keeps_the_session(tmp_path):
    session = _fresh_scratch(tmp_path / "oom2")
    _fail_on_big_batches(session.model.model, limit=1)
    run = session.train(steps=4, auto_batch=False, **FAST)
    assert run.status == "failed" and "out of memory" in str(run.error)
    assert run.engine.optimizer is None
    assert len(session.dataset) > 0 and session.model is not None
    assert json.loads((session.workdir / "session.json").read_text())["runs"][0]["status"] == "failed"


def test_memory_is_released_after_a_run(scratch_session):
    run = scratch_session.train(steps=3, **FAST)
    assert run.engine.optimizer is None
    assert all(p.grad is None for p in scratch_session.model.model.parameters())


def test_background_run_pause_resume_stop(scratch_session):
    import time

    run = scratch_session.train(steps=10_000, **{**FAST, "background": True})
    deadline = time.time() + 60
    while len(run.metrics) < 2 and time.time() < deadline:
        time.sleep(0.05)
    run.pause()
    while run.status != "paused" and time.time() < deadline:
        time.sleep(0.05)
    paused_at = run.engine.step
    time.sleep(0.3)
    assert run.engine.step == paused_at and run.last_checkpoint.name == f"step-{paused_at:06d}"
    run.resume()
    while run.engine.step < paused_at + 2 and time.time() < deadline:
        time.sleep(0.05)
    run.stop().wait(60)
    assert run.status == "stopped" and run.engine.step >= paused_at + 2
    assert run.last_checkpoint.name == f"step-{run.engine.step:06d}"


def test_keyboard_interrupt_in_the_foreground_is_a_graceful_stop(scratch_session):
    def interrupt(event):
        if event.kind == "step" and event.step == 3:
            raise KeyboardInterrupt

    # listeners swallow exceptions, so interrupt from inside the model like a real Ctrl-C would
    model = scratch_session.model.model
    real_forward, count = model.forward, {"n": 0}

    def forward(*args, **kwargs):
        count["n"] += 1
        if count["n"] == 4 and model.training:
            raise KeyboardInterrupt
        return real_forward(*args, **kwargs)

    model.forward = forward
    run = scratch_session.train(steps=10, **FAST)
    assert run.status == "stopped" and run.engine.step == 3
    assert run.last_checkpoint.name == "step-000003"
    del interrupt


def test_learning_rate_schedule():
    config = TrainConfig(learning_rate=1.0, min_lr_ratio=0.1)
    plan = Plan(total_steps=100, steps_per_epoch=100, sequences_per_epoch=100, seq_len=8, sequences_per_step=1,
                micro_batch=1, grad_accum=1, warmup_steps=10, eval_every=10, checkpoint_every=None)
    assert learning_rate(0, plan, config) == pytest.approx(0.1)
    assert learning_rate(9, plan, config) == pytest.approx(1.0)
    assert learning_rate(10, plan, config) == pytest.approx(1.0)
    assert learning_rate(55, plan, config) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert learning_rate(99, plan, config) > 0.1 - 1e-9


def test_train_before_model_says_what_to_do(tmp_path):
    s = nbtune.Session(tmp_path / "w")
    s.load(_counting_docs(20))
    s.tokenize(vocab_size=280, context_length=16)
    with pytest.raises(nbtune.StageOrderError, match="new_model"):
        s.train(steps=1)


def test_gradient_checkpointing_gives_the_same_losses(tmp_path):
    reference = _fresh_scratch(tmp_path / "ref").train(steps=3, **FAST).losses
    checkpointed = _fresh_scratch(tmp_path / "gc").train(steps=3, gradient_checkpointing=True, **FAST).losses
    np.testing.assert_allclose(checkpointed, reference, rtol=1e-5)


@pytest.mark.parametrize("method,lr", [("full", 3e-3), ("lora", 1e-2), ("qlora", 1e-2), ("lora-8bit", 1e-2)])
def test_fine_tuning_methods_learn(tmp_path, tiny_pretrained, method, lr):
    s = nbtune.Session(tmp_path / method)
    s.load(_counting_down_docs())
    s.tokenize(vocab_size=300, context_length=32)
    card = s.use_model(str(tiny_pretrained), method=method, lora_rank=16, lora_alpha=32, lora_dropout=0.0)
    assert s.tokenizer_config.tokenizer == str(tiny_pretrained)  # re-tokenized with the model's tokenizer
    trainable = {n: p.detach().clone() for n, p in s.model.model.named_parameters() if p.requires_grad}
    run = s.train(steps=40, **{**FAST, "learning_rate": lr})
    assert run.status == "finished", run.error
    evals = [e["eval_loss"] for e in run.evals]
    assert evals[-1] < 0.7 * evals[0], evals
    after = dict(s.model.model.named_parameters())
    assert all(not torch.equal(trainable[n], after[n]) for n in trainable)
    assert card.params_trainable == sum(p.numel() for p in trainable.values())
