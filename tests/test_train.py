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
    session.close()  # the project is handed to the other process, as when a kernel is restarted
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
    model = model.get_decoder()  # what the engine calls: the decoder, then the fused loss runs the head
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
    run = session.train(steps=6, listeners=(lambda e: errors.append(e) if e.kind == "error" else None,),
                        **FAST)
    assert run.status == "finished" and calls["oom"] == 2  # 4 -> 2 -> 1
    assert [e.micro_batch for e in errors] == [2, 1] and all(e.recovered for e in errors)
    assert run.engine.plan.micro_batch * run.engine.plan.grad_accum == 4
    assert len(run.losses) == 6
    np.testing.assert_allclose(run.losses, reference.losses, rtol=1e-4)


def test_out_of_memory_without_auto_batch_fails_cleanly_and_keeps_the_session(tmp_path):
    session = _fresh_scratch(tmp_path / "oom2")
    _fail_on_big_batches(session.model.model, limit=1)
    with pytest.raises(MemoryError, match="out of memory") as info:  # in the foreground the failure is raised
        session.train(steps=4, auto_batch=False, **FAST)
    assert "run-001-scratch failed at step 1" in "\n".join(info.value.__notes__)
    run = session.run
    assert run.status == "failed" and run.error is info.value
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
    model = scratch_session.model.model.get_decoder()  # what the engine calls (the fused loss runs the head)
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


# ------------------------------------------------------------------------------ one read per step, compile fallback


READS = ("item", "tolist", "__float__", "__int__", "__bool__", "__index__", "numpy")


def test_one_device_to_host_read_per_step(scratch_session, monkeypatch):
    """Every way a tensor's value reaches Python is counted during each step: one per step, the loss read.

    (On CPU these reads cost nothing; on CUDA each one is a sync. `torch.cuda.set_sync_debug_mode` would catch
    syncs directly, but only on a GPU.)
    """
    from nbtune.train import loop

    counts: list[int] = []
    reads = {"n": 0}
    real_step = loop.Engine._accumulate_and_step

    def counted(self):
        reads["n"] = 0
        result = real_step(self)
        counts.append(reads["n"])
        return result

    for name in READS:
        real = getattr(torch.Tensor, name)

        def wrapper(self, *a, _real=real, **k):
            reads["n"] += 1
            return _real(self, *a, **k)

        monkeypatch.setattr(torch.Tensor, name, wrapper)
    monkeypatch.setattr(loop.Engine, "_accumulate_and_step", counted)
    run = scratch_session.train(steps=3, **{**FAST, "grad_accum": 2})
    assert run.status == "finished", run.error
    assert counts == [1, 1, 1]


def test_a_failing_compile_falls_back_to_eager_with_a_message(tmp_path, monkeypatch):
    from nbtune.train import loop

    reference = _fresh_scratch(tmp_path / "ref").train(steps=3, **FAST).losses

    class Broken:
        def __init__(self, module):
            self.module = module

        def __call__(self, *args, **kwargs):
            raise RuntimeError("inductor: no C++ compiler (simulated)")

    monkeypatch.setattr(loop, "_compile", Broken)
    errors = []
    run = _fresh_scratch(tmp_path / "c").train(steps=3, compile=True, **FAST,
                                              listeners=(lambda e: errors.append(e) if e.kind == "error" else None,))
    assert run.status == "finished", run.error
    assert [e.kind_of_error for e in errors] == ["compile"] and errors[0].recovered
    assert "training goes on uncompiled" in errors[0].message and "compile=False" in errors[0].advice
    np.testing.assert_allclose(run.losses, reference, rtol=1e-6)
    assert run.engine.compiled is False


def test_compile_defaults_to_cuda_only(scratch_session):
    run = scratch_session.train(steps=1, **FAST)
    assert TrainConfig().compile is None and run.engine.compiled is False  # CPU: off


def test_the_fused_loss_is_used_and_equals_the_plain_loss(scratch_session):
    """The engine's loss (decoder + fused head) equals model(...).logits + fp32 cross-entropy on the same batch."""
    import torch.nn.functional as F

    run = scratch_session.train(steps=1, **FAST)
    engine = run.engine
    engine._prepare_model()
    assert engine._head is not None
    inputs, targets, weights, positions = engine._step_batch(0)
    got = engine._micro_loss(inputs, targets, weights, positions)
    model = scratch_session.model.model
    from nbtune.train import attention

    kwargs = attention.model_kwargs(engine.attention, attention.documents(positions), torch.device("cpu"))
    logits = model(input_ids=torch.from_numpy(inputs), position_ids=torch.from_numpy(positions), use_cache=False,
                   **kwargs).logits
    expected = (F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), torch.from_numpy(targets).reshape(-1),
                                reduction="none") * torch.from_numpy(weights).reshape(-1)).sum()
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-4)


# ------------------------------------------------------------------------------ memory savers from the card


def _card(method, *, memory_gib, params=1_000_000_000, trainable=10_000_000, weight_bytes=None):
    from nbtune.device import DeviceInfo
    from nbtune.models.card import estimate_card

    device = DeviceInfo("cuda", "test GPU", "bf16", int(memory_gib * 2**30), None)
    return estimate_card(params_total=params, params_trainable=trainable, layers=16, hidden=2048, heads=32,
                         kv_heads=8, intermediate=8192, vocab=49152, context=2048, batch=1, seq_len=512,
                         device=device, method=method, weight_bytes=weight_bytes or params * 2)


def _choose(card, *, micro_batch=1, seq_len=512, device_type="cuda", checkpointing=None, optimizer="auto",
            paged=True):
    from nbtune.train.memory import choose_savers

    return choose_savers(card, device_type=device_type, precision="bf16", micro_batch=micro_batch, seq_len=seq_len,
                         checkpointing=checkpointing, optimizer=optimizer, paged_available=paged)


def test_memory_savers_stay_off_when_the_step_fits():
    choice = _choose(_card("lora", memory_gib=80))
    assert (choice.gradient_checkpointing, choice.optimizer) == (False, "adamw")


def test_checkpointing_turns_on_when_the_step_would_not_fit():
    card = _card("lora", memory_gib=8)
    assert _choose(card, micro_batch=1).gradient_checkpointing is False
    big = _choose(card, micro_batch=16, seq_len=2048)
    assert big.gradient_checkpointing is True and "not fit" in big.reason
    assert _choose(card, micro_batch=16, seq_len=2048, checkpointing=False).gradient_checkpointing is False


def test_qlora_on_a_gpu_gets_checkpointing_when_activations_dominate_and_a_paged_optimizer():
    card = _card("qlora", memory_gib=80, weight_bytes=700 * 2**20)
    choice = _choose(card, micro_batch=4, seq_len=2048)
    assert choice.gradient_checkpointing and choice.optimizer == "paged_adamw_8bit"
    assert choice.estimate < _choose(card, micro_batch=4, seq_len=2048, checkpointing=False,
                                     optimizer="adamw").estimate
    assert _choose(card, micro_batch=4, seq_len=2048, paged=False).optimizer == "adamw"  # no bitsandbytes
    cpu = _choose(card, micro_batch=4, seq_len=2048, device_type="cpu")
    assert (cpu.gradient_checkpointing, cpu.optimizer) == (False, "adamw")


def test_full_fine_tune_gets_8bit_adam_only_when_fp32_state_does_not_fit():
    full = dict(params=1_000_000_000, trainable=1_000_000_000, weight_bytes=4 * 10**9)
    # 4 GB weights + 4 GB grads + 8 GB AdamW = 16 GB: does not fit 16 GiB x 0.85; with 8-bit state (2 GB) it does
    assert _choose(_card("full", memory_gib=16, **full)).optimizer == "paged_adamw_8bit"
    assert _choose(_card("full", memory_gib=40, **full)).optimizer == "adamw"


def test_8bit_adamw_state_survives_a_checkpoint_bitwise():
    """bitsandbytes keeps the step count as an int; the wrapper stores it as a tensor so checkpoints can hold it.

    (The paged variant needs CUDA; the non-paged AdamW8bit runs on CPU with bitsandbytes >= 0.49 and shares the
    update code.)
    """
    bnb = pytest.importorskip("bitsandbytes")
    from nbtune.train import checkpoint as ckpt
    from nbtune.train.memory import checkpointable

    def fresh():
        torch.manual_seed(0)
        param = torch.nn.Parameter(torch.randn(4096, 8))
        return param, checkpointable(bnb.optim.AdamW8bit)([param], lr=1e-2)

    grads = [torch.randn(4096, 8, generator=torch.Generator().manual_seed(i)) for i in range(4)]
    ref, ref_opt = fresh()
    for g in grads:
        ref.grad = g.clone()
        ref_opt.step()
    first, first_opt = fresh()
    for g in grads[:2]:
        first.grad = g.clone()
        first_opt.step()
    saved = ckpt._optimizer_tensors(first_opt, {id(first): "w"})
    assert saved["w::step"].item() == 2.0
    second, second_opt = fresh()
    with torch.no_grad():
        second.copy_(first)
    ckpt._load_optimizer_tensors(second_opt, {id(second): "w"}, saved)
    for g in grads[2:]:
        second.grad = g.clone()
        second_opt.step()
    assert torch.equal(second, ref)


def test_the_run_header_names_how_a_step_is_computed(scratch_session):
    starts = []
    run = scratch_session.train(steps=2, listeners=(lambda e: starts.append(e) if e.kind == "run_start" else None,),
                                **FAST)
    setup = starts[0].setup
    assert setup["attention"].startswith("sdpa") and "fused" in setup["loss"] and setup["compile"] is False
    shown = dict(run.report().summary())
    assert shown["attention kernel"] == setup["attention"] and shown["memory savers"] == setup["memory"]


# ------------------------------------------------------------------------------------------------ strategies


def test_the_strategy_follows_the_job():
    from nbtune.train.distributed import DistInfo
    from nbtune.train.strategy import DDP, FSDP, SingleProcess, for_job

    single = for_job(None)
    assert type(single) is SingleProcess and single.is_main and single.my_share(6) == slice(0, 6)
    loss = torch.tensor(0.25)
    assert single.to_gradient_sum(loss) is loss and not single.needs_whole_forward
    single.check_batch_can_shrink(at_step=3, micro_batch=4)  # one process may halve its micro-batch
    second = for_job(DistInfo(rank=1, world_size=2, local_rank=1))
    assert type(second) is DDP and not second.is_main and second.my_share(6) == slice(3, 6)
    assert second.to_gradient_sum(loss).item() == 0.5  # DDP averages over 2 ranks: x2 makes it the step's sum
    with pytest.raises(MemoryError, match="rank 1 at step 3 with micro-batch 4"):
        second.check_batch_can_shrink(at_step=3, micro_batch=4)  # ranks run in lockstep
    sharded = for_job(DistInfo(rank=0, world_size=2, local_rank=0, strategy="fsdp"))
    assert type(sharded) is FSDP and sharded.is_main and not sharded.can_checkpoint_alone
    with pytest.raises(nbtune.ConfigError, match="multiple of 2"):
        sharded.check_batch(3)


@pytest.fixture
def one_rank_job(tmp_path):
    """A real torch.distributed job of one process (gloo), as torchrun would set up on one CPU."""
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


@pytest.mark.parametrize("kind", ["ddp", "fsdp"])
@pytest.mark.parametrize("prune", [True, False])
def test_distributed_checkpoints_keep_what_the_run_asks(scratch_session, one_rank_job, tmp_path, kind, prune):
    """An attached run (prune_checkpoints=False) never loses a checkpoint, under DDP and FSDP as in one process."""
    from nbtune.events import EventBus, StopToken
    from nbtune.train.distributed import DistInfo
    from nbtune.train.loop import Engine
    from nbtune.train.strategy import for_job

    s = scratch_session
    engine = Engine(loaded_model=s.model, train_rows=s.tokens["train"], validation_rows=s.tokens["validation"],
                    config=TrainConfig(steps=3, batch_size=2, grad_accum=1, learning_rate=3e-3, checkpoint_every=1,
                                       keep_checkpoints=1, eval_every=10, background=False),
                    seq_len=32, pack_rows=True, pad_id=0, run_dir=tmp_path / "run", run_id="r", bus=EventBus(),
                    token=StopToken(), flops_per_token=1.0, prune_checkpoints=prune,
                    strategy=for_job(DistInfo(rank=0, world_size=1, local_rank=0, strategy=kind)))
    assert engine.run() == "finished", engine.error
    kept = sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir())
    assert kept == (["step-000003"] if prune else ["step-000001", "step-000002", "step-000003"])
