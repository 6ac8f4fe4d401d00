"""The training engine: it learns, stops and resumes exactly, survives OOM, and reports events."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import torch
from conftest import FAST, counting_docs, counting_down_docs_list

import nbtune
from nbtune.config import TrainConfig
from nbtune.events import EVENT_KINDS
from nbtune.train.loop import Plan, learning_rate


def test_scratch_model_learns_and_parameters_change(tiny_session):
    s = tiny_session()
    before = {n: p.detach().clone() for n, p in s.model.model.named_parameters()}
    run = s.train(steps=40, **FAST)
    assert run.status == "finished"
    evals = [e["eval_loss"] for e in run.evals]
    assert evals[-1] < 0.6 * evals[0], evals
    changed = [n for n, p in s.model.model.named_parameters() if not torch.equal(before[n], p)]
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
def test_stop_and_resume_in_the_same_kernel_is_bitwise_exact(tiny_session, k):
    steps = 9
    reference = tiny_session("ref").train(steps=steps, **FAST).losses
    resumed = _losses_after_stop_and_resume(tiny_session(f"k{k}"), k, steps)
    assert resumed == reference  # bitwise: the same floats


RESUME_SCRIPT = """
import json, sys, nbtune
s = nbtune.Session.open(sys.argv[1])
run = s.resume(progress=False)
print(json.dumps({"status": run.status, "losses": run.losses}))
"""


@pytest.mark.parametrize("k", [2, 5])
def test_resume_from_disk_in_a_fresh_process_is_bitwise_exact(tiny_session, k):
    steps = 8
    reference = tiny_session("ref").train(steps=steps, **FAST).losses
    session = tiny_session("stopped")

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


def test_events_files_and_checkpoints(tiny_session):
    s = tiny_session()
    seen, broken_calls = [], []

    def broken_listener(event):
        broken_calls.append(event.kind)
        raise RuntimeError("a broken chart must not stop training")

    run = s.train(steps=6, checkpoint_every=2, keep_checkpoints=2, sample_prompt="one two",
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
    saved = json.loads((s.workdir / "session.json").read_text())
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


def test_out_of_memory_halves_the_micro_batch_and_keeps_the_effective_batch(tiny_session):
    reference = tiny_session("ref").train(steps=6, **FAST)
    session = tiny_session("oom")
    calls = _fail_on_big_batches(session.model.model, limit=1)
    errors = []
    run = session.train(steps=6, listeners=(lambda e: errors.append(e) if e.kind == "error" else None,),
                        **FAST)
    assert run.status == "finished" and calls["oom"] == 2  # 4 -> 2 -> 1
    assert [e.micro_batch for e in errors] == [2, 1] and all(e.recovered for e in errors)
    assert run.engine.plan.micro_batch * run.engine.plan.grad_accum == 4
    assert len(run.losses) == 6
    np.testing.assert_allclose(run.losses, reference.losses, rtol=1e-4)


def test_out_of_memory_without_auto_batch_fails_cleanly_and_keeps_the_session(tiny_session):
    session = tiny_session("oom2")
    _fail_on_big_batches(session.model.model, limit=1)
    with pytest.raises(MemoryError, match="out of memory") as info:  # in the foreground the failure is raised
        session.train(steps=4, auto_batch=False, **FAST)
    assert "run-001-scratch failed at step 1" in "\n".join(info.value.__notes__)
    run = session.run
    assert run.status == "failed" and run.error is info.value
    assert run.engine.optimizer is None
    assert len(session.dataset) > 0 and session.model is not None
    assert json.loads((session.workdir / "session.json").read_text())["runs"][0]["status"] == "failed"


def test_memory_is_released_after_a_run(tiny_session):
    s = tiny_session()
    held = []  # the control: during the run the optimizer state exists, so its release below is the run's doing
    run = s.train(steps=3, **FAST, listeners=(
        lambda e: held.append(s.run.engine.optimizer is not None) if e.kind == "step" else None,))
    assert run.status == "finished" and held == [True, True, True]
    assert run.engine.optimizer is None
    assert all(p.grad is None for p in s.model.model.parameters())


def test_background_run_pause_resume_stop(tiny_session):
    s = tiny_session()
    two_steps, paused, moved_on = threading.Event(), threading.Event(), threading.Event()
    paused_at = {}

    def watch(event):
        if event.kind == "step" and event.step == 2:
            two_steps.set()
        if event.kind == "checkpoint" and event.reason == "pause":
            paused_at["step"] = event.step
            paused.set()
        if event.kind == "step" and paused.is_set() and event.step == paused_at["step"] + 2:
            moved_on.set()

    run = s.train(steps=10_000, listeners=(watch,), **{**FAST, "background": True})
    try:
        assert two_steps.wait(60), "the run did not reach step 2"
        run.pause()  # from this thread, as a user's click or cell would
        assert paused.wait(60), "the run did not write its pause checkpoint"
        step = paused_at["step"]
        time.sleep(0.3)  # a time window by nature: nothing may move while paused, however long one looks
        assert run.status == "paused" and step >= 2 and run.engine.step == step
        assert run.last_checkpoint.name == f"step-{step:06d}" and not moved_on.is_set()
        run.resume()
        assert moved_on.wait(60), "the run did not go on after resume()"
    finally:
        run.stop().wait(60)
    assert run.status == "stopped" and run.engine.step >= step + 2
    assert run.last_checkpoint.name == f"step-{run.engine.step:06d}"


def test_keyboard_interrupt_in_the_foreground_is_a_graceful_stop(tiny_session):
    s = tiny_session()
    # listeners swallow exceptions, so interrupt from inside the model like a real Ctrl-C would
    model = s.model.model.get_decoder()  # what the engine calls (the fused loss runs the head)
    real_forward, count = model.forward, {"n": 0}

    def forward(*args, **kwargs):
        count["n"] += 1
        if count["n"] == 4 and model.training:
            raise KeyboardInterrupt
        return real_forward(*args, **kwargs)

    model.forward = forward
    run = s.train(steps=10, **FAST)
    assert run.status == "stopped" and run.engine.step == 3
    assert run.last_checkpoint.name == "step-000003"


def _hundred_step_plan(schedule_start: int = 0) -> Plan:
    """100 steps after `schedule_start`, the first 10 of them warmup: decay spans the 90 steps after those."""
    return Plan(total_steps=schedule_start + 100, steps_per_epoch=100, sequences_per_epoch=100, seq_len=8,
                sequences_per_step=1, micro_batch=1, grad_accum=1, warmup_steps=10, eval_every=10,
                checkpoint_every=None, schedule_start=schedule_start)


def test_learning_rate_warms_up_then_follows_a_cosine_to_the_floor():
    config, plan = TrainConfig(learning_rate=1.0, min_lr_ratio=0.1), _hundred_step_plan()
    rates = {step: learning_rate(step, plan, config) for step in (0, 4, 9, 10, 40, 55, 99)}
    # warmup: step i runs at (i + 1) / 10 of the peak
    assert (rates[0], rates[4], rates[9]) == (pytest.approx(0.1), pytest.approx(0.5), pytest.approx(1.0))
    # decay from 1.0 (step 10) to the floor 0.1 (step 100): 0.1 + 0.9 * (1 + cos(pi * done)) / 2
    assert rates[10] == pytest.approx(1.0)
    assert rates[40] == pytest.approx(0.775)  # a third done: cos(pi/3) = 1/2, 0.1 + 0.9 * 3/4
    assert rates[55] == pytest.approx(0.55)  # halfway: cos(pi/2) = 0, 0.1 + 0.9 / 2
    assert rates[99] == pytest.approx(0.1003, abs=1e-4)  # 89/90 done: 1 - cos(2 deg) ~ (pi/90)^2/2 = 6.1e-4


def test_linear_and_constant_schedules_and_a_schedule_that_starts_later():
    linear = TrainConfig(learning_rate=1.0, min_lr_ratio=0.1, schedule="linear")
    assert learning_rate(55, _hundred_step_plan(), linear) == pytest.approx(0.55)  # halfway from 1.0 to 0.1
    assert learning_rate(40, _hundred_step_plan(), linear) == pytest.approx(0.7)  # a third: 1.0 - 0.9 / 3
    constant = TrainConfig(learning_rate=0.5, schedule="constant")
    assert [learning_rate(step, _hundred_step_plan(), constant) for step in (4, 10, 99)] == \
        pytest.approx([0.25, 0.5, 0.5])  # warmup still: step 4 is at half the peak
    extended = _hundred_step_plan(schedule_start=100)  # a run trained 100 steps further: warmup and decay again
    cosine = TrainConfig(learning_rate=1.0, min_lr_ratio=0.1)
    assert [learning_rate(step, extended, cosine) for step in (100, 109, 155)] == pytest.approx([0.1, 1.0, 0.55])


def test_train_before_model_says_what_to_do(tiny_session):
    s = tiny_session("w", counting_docs(20), model=None, vocab_size=280, context_length=16)
    with pytest.raises(nbtune.StageOrderError, match="new_model"):
        s.train(steps=1)


def _count_layer_forwards(session) -> dict[str, int]:
    """How often the first layer's MLP starts a forward: checkpointing runs it again in each backward pass.

    (A pre-hook: transformers checkpoints a layer's `forward`, outside its own hooks, and torch's recompute stops
    once it has the tensors the backward needs, before the MLP returns.)
    """
    calls = {"n": 0}
    session.model.model.get_decoder().layers[0].mlp.register_forward_pre_hook(
        lambda *_: calls.__setitem__("n", calls["n"] + 1))
    return calls


def test_gradient_checkpointing_gives_the_same_losses(tiny_session):
    plain, checkpointed = tiny_session("ref"), tiny_session("gc")
    plain_calls, checkpointed_calls = _count_layer_forwards(plain), _count_layer_forwards(checkpointed)
    reference = plain.train(steps=3, **FAST).losses
    losses = checkpointed.train(steps=3, gradient_checkpointing=True, **FAST).losses
    np.testing.assert_allclose(losses, reference, rtol=1e-5)
    # the control: checkpointing was on, one recomputed forward per step (micro-batch 4 = the whole batch)
    assert checkpointed_calls["n"] == plain_calls["n"] + 3


@pytest.mark.parametrize("method,lr", [("full", 3e-3), ("lora", 1e-2), ("qlora", 1e-2), ("lora-8bit", 1e-2)])
def test_fine_tuning_methods_learn(tiny_session, tiny_pretrained, method, lr):
    s = tiny_session(method, counting_down_docs_list(), model=None)  # its own BPE first: use_model replaces it
    card = s.use_model(str(tiny_pretrained), method=method, lora_rank=16, lora_alpha=32, lora_dropout=0.0)
    assert s.tokenizer_config.tokenizer == str(tiny_pretrained)  # re-tokenized with the model's tokenizer
    trainable = {n: p.detach().clone() for n, p in s.model.model.named_parameters() if p.requires_grad}
    assert trainable  # (else "every trainable tensor changed" below holds for none)
    run = s.train(steps=40, **{**FAST, "learning_rate": lr})
    assert run.status == "finished", run.error
    evals = [e["eval_loss"] for e in run.evals]
    assert evals[-1] < 0.7 * evals[0], evals
    after = dict(s.model.model.named_parameters())
    assert all(not torch.equal(trainable[n], after[n]) for n in trainable)
    assert card.params_trainable == sum(p.numel() for p in trainable.values())


# ------------------------------------------------------------------------------ one read per step, compile fallback


READS = ("item", "tolist", "__float__", "__int__", "__bool__", "__index__", "numpy")


def test_one_device_to_host_read_per_step(tiny_session, monkeypatch):
    """Every way a tensor's value reaches Python is counted during each step: one per step, the loss read.

    (On CPU these reads cost nothing; on CUDA each one is a sync. `torch.cuda.set_sync_debug_mode` would catch
    syncs directly, but only on a GPU.)
    """
    from nbtune.train import loop

    s = tiny_session()

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
    run = s.train(steps=3, **{**FAST, "grad_accum": 2})
    assert run.status == "finished", run.error
    assert counts == [1, 1, 1]


def test_a_failing_compile_falls_back_to_eager_with_a_message(tiny_session, monkeypatch):
    from nbtune.train import loop

    reference = tiny_session("ref").train(steps=3, **FAST).losses

    class Broken:
        def __init__(self, module):
            self.module = module

        def __call__(self, *args, **kwargs):
            raise RuntimeError("inductor: no C++ compiler (simulated)")

    monkeypatch.setattr(loop, "_compile", Broken)
    errors = []
    run = tiny_session("c").train(steps=3, compile=True, **FAST,
                                  listeners=(lambda e: errors.append(e) if e.kind == "error" else None,))
    assert run.status == "finished", run.error
    assert [e.kind_of_error for e in errors] == ["compile"] and errors[0].recovered
    assert "training goes on uncompiled" in errors[0].message and "compile=False" in errors[0].advice
    np.testing.assert_allclose(run.losses, reference, rtol=1e-6)
    assert run.engine.compiled is False


def test_compile_defaults_to_cuda_only(tiny_session):
    s = tiny_session()
    run = s.train(steps=1, **FAST)
    assert TrainConfig().compile is None and run.engine.compiled is False  # CPU: off


def test_the_fused_loss_is_used_and_equals_the_plain_loss(tiny_session):
    """The engine's loss (decoder + fused head) equals model(...).logits + fp32 cross-entropy on the same batch."""
    import torch.nn.functional as F

    s = tiny_session()
    run = s.train(steps=1, **FAST)
    engine = run.engine
    engine._prepare_model()
    assert engine._head is not None
    inputs, targets, weights, positions = engine._step_batch(0)
    got = engine._micro_loss(inputs, targets, weights, positions)
    model = s.model.model
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


def test_the_run_header_names_how_a_step_is_computed(tiny_session):
    s = tiny_session()
    starts = []
    run = s.train(steps=2, listeners=(lambda e: starts.append(e) if e.kind == "run_start" else None,), **FAST)
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
def test_distributed_checkpoints_keep_what_the_run_asks(tiny_session, one_rank_job, tmp_path, kind, prune):
    """An attached run (prune_checkpoints=False) never loses a checkpoint, under DDP and FSDP as in one process."""
    from nbtune.events import EventBus, StopToken
    from nbtune.train.distributed import DistInfo
    from nbtune.train.loop import Engine
    from nbtune.train.strategy import for_job

    s = tiny_session()
    engine = Engine(loaded_model=s.model, train_rows=s.tokens["train"], validation_rows=s.tokens["validation"],
                    config=TrainConfig(steps=3, batch_size=2, grad_accum=1, learning_rate=3e-3, checkpoint_every=1,
                                       keep_checkpoints=1, eval_every=10, background=False),
                    seq_len=32, pack_rows=True, pad_id=0, run_dir=tmp_path / "run", run_id="r", bus=EventBus(),
                    token=StopToken(), flops_per_token=1.0, prune_checkpoints=prune,
                    strategy=for_job(DistInfo(rank=0, world_size=1, local_rank=0, strategy=kind)))
    assert engine.run() == "finished", engine.error
    kept = sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir())
    assert kept == (["step-000003"] if prune else ["step-000001", "step-000002", "step-000003"])


def test_two_lora_runs_with_dropout_and_the_same_seed_train_the_same(tiny_session, tiny_pretrained):
    """TrainConfig.seed seeds the adapters' dropout: the same settings give the same losses, another seed others
    (before, the masks came from whatever had used torch's random numbers last)."""

    def losses(name: str, seed: int, noise: int) -> list[float]:
        s = tiny_session(name, counting_down_docs_list(), model=None)
        s.use_model(str(tiny_pretrained), method="lora", lora_rank=8, lora_alpha=16, lora_dropout=0.3)
        torch.rand(noise)  # something else drew random numbers before training
        return s.train(steps=4, seed=seed, **{**FAST, "learning_rate": 1e-2}).losses

    first = losses("a", seed=0, noise=3)
    assert losses("b", seed=0, noise=11) == first
    assert losses("c", seed=1, noise=3) != first
