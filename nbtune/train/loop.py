"""The training loop, readable top to bottom.

`Engine.run()` does, for each optimizer step:

1. honour stop / pause requests (a checkpoint is written first);
2. take this step's sequences (a pure function of the step number, see
   `packing`), split them into micro-batches and accumulate gradients; the
   loss is summed over trained tokens and divided by the step's trained-token
   count, so the result does not depend on how the step is split;
3. clip, step the optimizer, emit a `step` event;
4. evaluate, sample and checkpoint at their intervals.

The loop is written for one process. As one process of a torchrun /
accelerate job it takes a DDP or FSDP strategy object (`nbtune.train.strategy`):
each process then trains an equal share of step 2's sequences and the gradients
are summed across processes, so a step trains on the same batch as in one
process. Every difference between one process and several lives in the strategy.

An out-of-memory error in a step is recovered: memory is released and, with
`auto_batch`, the micro-batch halves and gradient accumulation doubles, so the
effective batch and the step count stay the same. Any other error ends the
run with an `error` event, after saving the last completed step.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from nbtune.config import TrainConfig
from nbtune.data import column
from nbtune.events import (
    CheckpointEvent,
    ErrorEvent,
    EvalEvent,
    Event,
    EventBus,
    RunEndEvent,
    RunStartEvent,
    SampleEvent,
    StepEvent,
    StopToken,
)
from nbtune.train import memory
from nbtune.train.packing import Packed, one_per_sequence, pack
from nbtune.train.strategy import SingleProcess, Strategy


@dataclass
class Plan:
    """The shape of a run, fixed at its start."""

    total_steps: int
    steps_per_epoch: int
    sequences_per_epoch: int
    seq_len: int
    sequences_per_step: int
    micro_batch: int
    grad_accum: int
    warmup_steps: int
    eval_every: int
    checkpoint_every: int | None
    schedule_start: int = 0  # where the learning-rate schedule begins: 0, or the step a `resume(steps=)` added from

    @property
    def tokens_per_step(self) -> int:
        return self.sequences_per_step * self.seq_len


def make_plan(config: TrainConfig, *, sequences_per_epoch: int, seq_len: int, schedule_start: int = 0) -> Plan:
    """Turn steps / epochs / token budget and batch settings into a concrete plan.

    `schedule_start` > 0 re-plans the learning rate for the steps after it (a run
    trained further): warmup and decay then span `schedule_start`..`total_steps`.
    """
    micro = config.batch_size
    accum = config.grad_accum
    if config.batch_tokens:
        accum = max(1, round(config.batch_tokens / (micro * seq_len)))
    per_step = micro * accum
    if sequences_per_epoch < per_step:
        micro = max(1, min(micro, sequences_per_epoch))
        accum = max(1, sequences_per_epoch // micro)
        per_step = micro * accum
    steps_per_epoch = max(1, sequences_per_epoch // per_step)
    if config.steps:
        total = config.steps
    elif config.token_budget:
        total = max(1, math.ceil(config.token_budget / (per_step * seq_len)))
    else:
        total = max(1, math.ceil((config.epochs or 1.0) * steps_per_epoch))
    scheduled = max(1, total - schedule_start)
    warmup = config.warmup_steps if config.warmup_steps is not None else max(1, round(0.05 * scheduled))
    eval_every = config.eval_every or max(1, total // 10)
    return Plan(total, steps_per_epoch, sequences_per_epoch, seq_len, per_step, micro, accum, min(warmup, scheduled),
                eval_every, config.checkpoint_every, schedule_start)


def learning_rate(step: int, plan: Plan, config: TrainConfig) -> float:
    """Warmup then cosine / linear decay to `min_lr_ratio` of the peak (or constant)."""
    peak = config.learning_rate
    step, total = step - plan.schedule_start, plan.total_steps - plan.schedule_start
    if step < plan.warmup_steps:
        return peak * (step + 1) / plan.warmup_steps
    if config.schedule == "constant" or total <= plan.warmup_steps:
        return peak
    progress = (step - plan.warmup_steps) / max(1, total - plan.warmup_steps)
    floor = peak * config.min_lr_ratio
    if config.schedule == "linear":
        return floor + (peak - floor) * (1 - progress)
    return floor + (peak - floor) * 0.5 * (1 + math.cos(math.pi * progress))


def _param_groups(model: Any, weight_decay: float) -> tuple[list[dict], dict[int, str]]:
    """AdamW groups (no decay on norms and biases) and a stable id -> name map for checkpoints."""
    decay, no_decay, names = [], [], {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        names[id(param)] = name
        (decay if param.ndim >= 2 else no_decay).append(param)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]], names


def _enable_activation_checkpointing(model: Any) -> None:
    """Recompute activations in the backward pass (transformers renamed the API in 5.x)."""
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.x
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


# Configuration fields by which a model's forward changes its logits after the head; the fused loss would skip
# them, so such models keep the plain head + chunked loss path.
_LOGIT_TRANSFORMS = ("final_logit_softcapping", "logit_scale", "logits_scaling", "output_multiplier_scale")


def _plain_head(model: Any) -> Any:
    """The output head when it is a plain `nn.Linear` the loss can run itself (else None)."""
    import torch

    head = model.get_output_embeddings()
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    if type(head) is not torch.nn.Linear or any(getattr(config, name, None) not in (None, 1, 1.0)
                                                for name in _LOGIT_TRANSFORMS):
        return None
    return head


def _compile(module: Any) -> Any:
    """torch.compile, lazily: errors surface in the first step, where the engine falls back to eager."""
    import torch

    return torch.compile(module)


def _read_together(loss: Any, norm: Any) -> tuple[float, float]:
    """The step's one device-to-host read: loss and gradient norm in a single transfer."""
    import torch

    if isinstance(norm, torch.Tensor):
        values = torch.stack([loss.float(), norm.float().to(loss.device)]).tolist()
        return values[0], values[1]
    return float(loss), float(norm)


class Engine:
    """Runs one training run of a `LoadedModel` on tokenized data, emitting events on `bus`."""

    def __init__(self, *, loaded_model: Any, train_rows: Any, validation_rows: Any, config: TrainConfig,
                 seq_len: int, pack_rows: bool, pad_id: int, run_dir: Path, run_id: str, bus: EventBus,
                 token: StopToken, flops_per_token: float, sample_prompt_ids: list[int] | None = None,
                 decode: Any = None, tokens_per_byte: float | None = None, schedule_start: int = 0,
                 prune_checkpoints: bool = True, strategy: Strategy | None = None) -> None:
        self.lm = loaded_model
        self.config = config
        self.run_dir = Path(run_dir)
        self.run_id = run_id
        self.bus = bus
        self.token = token
        self.flops_per_token = flops_per_token
        self.sample_prompt_ids = sample_prompt_ids
        self.decode = decode
        self.tokens_per_byte = tokens_per_byte
        self.pack_rows, self.pad_id, self.seq_len = pack_rows, pad_id, seq_len
        self.train_docs = (column(train_rows, "input_ids"), column(train_rows, "loss_mask"))
        self.val_docs = (column(validation_rows, "input_ids"), column(validation_rows, "loss_mask"))
        self._epochs: dict[int, Packed] = {}  # one epoch's packed sequences at a time
        first = self._epoch(0)
        if len(first) == 0:
            from nbtune.errors import DataError

            raise DataError(f"the training split has fewer tokens than one sequence of {seq_len}",
                            fix="load more data, or lower seq_len / context_length")
        self.plan = make_plan(config, sequences_per_epoch=len(first), seq_len=seq_len, schedule_start=schedule_start)
        self.prune_checkpoints = prune_checkpoints  # False for a run attached from elsewhere: never delete its files
        self._val = self._packed(self.val_docs, epoch=0, shuffle=False)
        self.step = 0
        self.tokens_seen = 0
        self.elapsed = 0.0
        self.optimizer: Any = None
        self.param_names: dict[int, str] = {}
        self.scaler: Any = None
        self.last_checkpoint: Path | None = None
        self.error: Exception | None = None
        self._forward: Any = loaded_model.model  # what the training forward calls (maybe compiled)
        self._eager_forward: Any = loaded_model.model  # the same, never compiled (evaluation, compile fallback)
        self._head: Any = None  # the output head, when the loss runs it itself (fused loss)
        self.attention: Any = None  # attention.AttentionChoice, decided in _prepare_model
        self.memory_choice: Any = None  # memory.MemoryChoice, decided in _prepare_model
        self.setup_report: dict[str, Any] = {}  # kernels and memory savers of this run (for the run header)
        self.compiled = False
        self.use_strategy(strategy or SingleProcess())
        self.status = "created"

    def use_strategy(self, strategy: Strategy) -> None:
        """Train with `strategy` (e.g. DDP or FSDP for one rank of a torchrun job); call before `run()`."""
        strategy.check_batch(self.plan.sequences_per_step)
        self.strategy: Strategy = strategy

    def distribute(self, info: Any) -> None:
        """Train as one rank of the job `info` (`distributed.from_env()`) describes; call before `run()`."""
        from nbtune.train import strategy

        self.use_strategy(strategy.for_job(info))

    # ------------------------------------------------------------ data
    def _packed(self, docs: tuple[list, list], *, epoch: int, shuffle: bool) -> Packed:
        if self.pack_rows:
            return pack(docs[0], docs[1], seq_len=self.seq_len, seed=self.config.seed, epoch=epoch, shuffle=shuffle)
        return one_per_sequence(docs[0], docs[1], seq_len=self.seq_len, pad_id=self.pad_id, seed=self.config.seed,
                                epoch=epoch, shuffle=shuffle)

    def _epoch(self, epoch: int) -> Packed:
        if epoch not in self._epochs:
            self._epochs.clear()  # keep one epoch in memory
            self._epochs[epoch] = self._packed(self.train_docs, epoch=epoch, shuffle=True)
        return self._epochs[epoch]

    def _step_batch(self, step: int) -> tuple[np.ndarray, ...]:
        """The sequences of optimizer step `step`: a pure function of the step number."""
        epoch, index = divmod(step, self.plan.steps_per_epoch)
        data = self._epoch(epoch)
        rows = slice(index * self.plan.sequences_per_step, (index + 1) * self.plan.sequences_per_step)
        return data.input_ids[rows], data.targets[rows], data.weights[rows], data.position_ids[rows]

    # ------------------------------------------------------------ setup
    def setup_optimizer(self) -> None:
        import torch

        self._prepare_model()
        groups, self.param_names = _param_groups(self.lm.model, self.config.weight_decay)
        hyper = dict(lr=self.config.learning_rate, betas=(0.9, 0.95), eps=1e-8)
        if self.memory_choice.optimizer == "paged_adamw_8bit":
            self.optimizer = memory.paged_adamw_8bit(groups, **hyper)
        else:  # fused AdamW runs on CUDA and CPU since torch 2.4
            self.optimizer = torch.optim.AdamW(groups, fused=self.lm.device.type in ("cuda", "cpu"), **hyper)
        if self.lm.device.needs_loss_scaling:
            self.scaler = torch.amp.GradScaler("cuda")

    def _prepare_model(self) -> None:
        """Decide the run's kernels and memory savers, then apply them: checkpointing, wrapping, compile."""
        from nbtune.train import attention

        model = self.lm.model
        device = self.lm.device
        self.memory_choice = self._choose_memory_savers()
        if self.memory_choice.gradient_checkpointing:
            _enable_activation_checkpointing(model)
        wrapped = self.strategy.wrap(model)
        self.attention = attention.choose(device.type, device.precision, model, self.config.attention)
        # the fused loss calls the decoder and runs the head itself; a DDP/FSDP wrapper must see the whole forward
        self._head = None if self.strategy.needs_whole_forward else _plain_head(model)
        forward = model.get_decoder() if self._head is not None else wrapped
        self._eager_forward = forward
        # compile a wrapper, not the model itself: checkpoints keep saving the plain module
        compile_wanted = self.config.compile if self.config.compile is not None else device.type == "cuda"
        self._forward = _compile(forward) if compile_wanted else forward
        self.compiled = compile_wanted
        self.setup_report = self._describe_setup()

    def _choose_memory_savers(self) -> Any:
        from nbtune.models.pretrained import bnb_usable

        device = self.lm.device
        paged = device.type == "cuda" and bnb_usable(device)[0]
        if self.config.optimizer == "paged_adamw_8bit" and not paged:
            from nbtune.errors import ConfigError

            raise ConfigError("optimizer='paged_adamw_8bit' needs bitsandbytes on a CUDA GPU", column="optimizer",
                              fix="use optimizer='auto' or 'adamw'")
        return memory.choose_savers(self.lm.card, device_type=device.type, precision=device.precision,
                                    micro_batch=self.plan.micro_batch, seq_len=self.plan.seq_len,
                                    checkpointing=self.config.gradient_checkpointing,
                                    optimizer=self.config.optimizer, paged_available=paged)

    def _describe_setup(self) -> dict[str, Any]:
        """How this run computes a step (for the run header): attention kernel, loss, compile, memory savers."""
        return {"attention": self.attention.describe(),
                "loss": "fused linear + cross-entropy, chunked" if self._head is not None else
                        "chunked cross-entropy over the logits",
                "compile": self.compiled, "memory": self.memory_choice.describe()}

    def restore(self, folder: Path) -> None:
        """Continue from a checkpoint: weights, optimizer, RNG, data position."""
        state = self.strategy.load_checkpoint(Path(folder), loaded_model=self.lm, optimizer_ready=self._optimizer)
        if self.lm.device.type == "cuda":
            for group in self.optimizer.param_groups:
                for param in group["params"]:
                    if "step" in self.optimizer.state.get(param, {}):
                        self.optimizer.state[param]["step"] = self.optimizer.state[param]["step"].to(param.device)
        self.step = state["step"]
        self.tokens_seen = state["tokens_seen"]
        self.elapsed = state["elapsed"]
        self.plan.micro_batch, self.plan.grad_accum = state["micro_batch"], state["grad_accum"]
        if self.scaler is not None and state.get("loss_scale"):
            self.scaler.update(state["loss_scale"])
        self.last_checkpoint = Path(folder)

    def _optimizer(self) -> tuple[Any, dict[int, str]]:
        """The optimizer and its parameter names, built (model prepared first) when there is none yet."""
        if self.optimizer is None:
            self.setup_optimizer()
        return self.optimizer, self.param_names

    # ------------------------------------------------------------ events
    def emit(self, event_type: type[Event], **fields: Any) -> None:
        """Emit an event of `event_type` for this run at the current step (its fields are checked by type)."""
        self.bus.emit(event_type(run_id=self.run_id, step=self.step, **fields))

    # ------------------------------------------------------------ the loop
    def run(self) -> str:
        """Train until the plan is done or a stop is requested; returns the final status."""
        if self.optimizer is None:
            self.setup_optimizer()
        if self.step == 0 and self.last_checkpoint is None:
            _seed_dropout(self.config.seed)
        self.lm.model.train()
        self.status = "running"
        self.emit(RunStartEvent, plan=self.plan.__dict__, device=self.lm.device.describe(), method=self.lm.method,
                  resumed_from=str(self.last_checkpoint) if self.last_checkpoint else None, setup=self.setup_report)
        try:
            if self.step == 0 and self.config.eval_at_start:
                self.evaluate()
            while self.step < self.plan.total_steps:
                if self._handle_requests():
                    return self._finish("stopped")
                self._one_step()
                self._after_step()
            self.save_checkpoint("end")
            return self._finish("finished")
        except KeyboardInterrupt:  # Ctrl-C / the interrupt button in the foreground: a graceful stop
            self.optimizer.zero_grad(set_to_none=True)
            self.save_checkpoint("stop")
            return self._finish("stopped")
        except Exception as exc:
            return self._fail(exc)

    def _handle_requests(self) -> bool:
        """True when the run must stop now; blocks while paused."""
        if self.token.stop_requested:
            self.save_checkpoint("stop")
            return True
        if self.token.pause_requested:
            self.save_checkpoint("pause")
            self.status = "paused"
            self.token.wait_for_resume()
            self.status = "running"
            return self.token.stop_requested
        return False

    def _one_step(self) -> None:
        """One optimizer step, retried with a smaller micro-batch after an out-of-memory error."""
        while True:
            try:
                started = time.perf_counter()
                memory.reset_peak(self.lm.device.type)
                loss, trained, grad_norm = self._forward_backward_step()
                self._report_step(loss, trained, grad_norm, time.perf_counter() - started)
                return
            except Exception as exc:
                if not memory.is_oom(exc):
                    raise
                self._recover_from_oom(exc)

    def _forward_backward_step(self) -> tuple[float, int, float]:
        """One optimizer step; a first compiled step that fails (not for memory) is redone uncompiled."""
        try:
            return self._accumulate_and_step()
        except Exception as exc:
            if not self.compiled or self._forward is self._eager_forward or memory.is_oom(exc):
                raise
            self.optimizer.zero_grad(set_to_none=True)
            self._forward, self.compiled = self._eager_forward, False
            self.setup_report = self._describe_setup()
            first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ""
            self.emit(ErrorEvent, recovered=True, kind_of_error="compile",
                      message=f"torch.compile failed ({type(exc).__name__}: {first}); training goes on uncompiled "
                              "(pass compile=False to skip the attempt)",
                      advice="nothing to do now (the steps run uncompiled, slower on GPUs); compile=False skips "
                             "the attempt next time")
            return self._accumulate_and_step()

    def _accumulate_and_step(self) -> tuple[float, int, float]:
        """Forward/backward over the micro-batches, clip, step. One device-to-host read: loss and norm together."""
        import torch

        inputs, targets, weights, positions = self._step_batch(self.step)
        total_weight = max(float(weights.sum()), 1.0)  # of the whole step, on every rank (numpy: no sync)
        lr = learning_rate(self.step, self.plan, self.config)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        mine = self.strategy.my_share(len(inputs))  # one process: all of them
        inputs, targets, weights, positions = inputs[mine], targets[mine], weights[mine], positions[mine]
        loss_sum = torch.zeros((), device=self.lm.device.torch_device)
        micro = self.plan.micro_batch
        starts = range(0, len(inputs), micro)
        for start in starts:
            part = slice(start, start + micro)
            with self.strategy.gradient_sync(last=start == starts[-1]):
                loss = self._micro_loss(inputs[part], targets[part], weights[part], positions[part]) / total_weight
                summed = self.strategy.to_gradient_sum(loss)
                (self.scaler.scale(summed) if self.scaler else summed).backward()
            loss_sum += loss.detach()
        self.strategy.sum_over_ranks(loss_sum)
        grad_norm = self._clip()
        if self.scaler:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        loss_value, norm_value = _read_together(loss_sum, grad_norm)
        return loss_value, int(weights.sum()), norm_value

    def _micro_loss(self, inputs: np.ndarray, targets: np.ndarray, weights: np.ndarray,
                    positions: np.ndarray) -> Any:
        """Sum over trained tokens of the cross-entropy (not yet normalised); no device-to-host reads."""
        import torch

        from nbtune.train import attention
        from nbtune.train import loss as losses

        if self.attention is None:  # evaluation before any training step
            self._prepare_model()
        dev = self.lm.device.torch_device
        as_tensor = lambda a: attention.to_device(a, dev)  # noqa: E731
        kwargs = attention.model_kwargs(self.attention, attention.documents(positions), dev)
        dtype = self.lm.device.autocast_dtype
        forward = self._forward if self.lm.model.training else self._eager_forward
        with torch.autocast(device_type=self.lm.device.type, dtype=dtype, enabled=dtype is not None), \
                attention.use(self.lm.model, self.attention):
            out = forward(input_ids=as_tensor(inputs), position_ids=as_tensor(positions), use_cache=False, **kwargs)
            if self._head is not None:
                return losses.fused_linear_cross_entropy(out.last_hidden_state, self._head.weight, self._head.bias,
                                                         as_tensor(targets), as_tensor(weights))
        return losses.chunked_cross_entropy(out.logits, as_tensor(targets), as_tensor(weights))

    def _clip(self) -> Any:
        """Clip the gradient norm; returns it as a tensor (read with the loss, once per step)."""
        import torch

        if self.scaler:
            self.scaler.unscale_(self.optimizer)
        params = [p for g in self.optimizer.param_groups for p in g["params"] if p.grad is not None]
        if not params:
            return 0.0
        max_norm = self.config.max_grad_norm if self.config.max_grad_norm is not None else float("inf")
        return self.strategy.plain_norm(torch.nn.utils.clip_grad_norm_(params, max_norm))

    def _recover_from_oom(self, exc: BaseException) -> None:
        memory.release_after_oom(exc, self.optimizer)
        plan = self.plan
        self.strategy.check_batch_can_shrink(at_step=self.step + 1, micro_batch=plan.micro_batch)
        if not self.config.auto_batch or plan.micro_batch == 1:
            advice = ("lower batch_size, enable gradient_checkpointing, shorten seq_len, or use lora/qlora"
                      if plan.micro_batch == 1 else "set auto_batch=True, or lower batch_size")
            raise MemoryError(f"out of memory at step {self.step + 1} with micro-batch {plan.micro_batch}; {advice}")
        old = plan.micro_batch
        plan.micro_batch = max(1, old // 2)
        plan.grad_accum = math.ceil(plan.sequences_per_step / plan.micro_batch)
        self.emit(ErrorEvent, recovered=True, kind_of_error="out_of_memory",
                  message=f"out of memory at step {self.step + 1}: micro-batch {old} -> {plan.micro_batch}, "
                          f"gradient accumulation -> {plan.grad_accum}; effective batch unchanged, training goes on",
                  advice=f"nothing to do now; start with batch_size={plan.micro_batch}, grad_accum={plan.grad_accum} "
                         "next time to skip the retry",
                  micro_batch=plan.micro_batch, grad_accum=plan.grad_accum)

    def _report_step(self, loss: float, trained: int, grad_norm: float, seconds: float) -> None:
        self.step += 1
        self.tokens_seen += self.plan.tokens_per_step
        self.elapsed += seconds
        tokens_per_s = self.plan.tokens_per_step / max(seconds, 1e-9)
        mfu = (self.flops_per_token * tokens_per_s / (self.lm.device.peak_flops * self.strategy.world_size)
               if self.lm.device.peak_flops else None)
        self.emit(StepEvent, loss=loss, lr=learning_rate(self.step - 1, self.plan, self.config), grad_norm=grad_norm,
                  tokens=self.plan.tokens_per_step, trained_tokens=trained, tokens_seen=self.tokens_seen,
                  tokens_per_s=tokens_per_s, mfu=mfu, memory=memory.peak_memory(self.lm.device.type),
                  elapsed=self.elapsed, epoch=self.step / self.plan.steps_per_epoch, total_steps=self.plan.total_steps,
                  micro_batch=self.plan.micro_batch, grad_accum=self.plan.grad_accum,
                  flops=self.flops_per_token * self.tokens_seen)

    def _after_step(self) -> None:
        plan = self.plan
        if self.step % plan.eval_every == 0 or self.step == plan.total_steps:
            self.evaluate()
            self.sample()
        if plan.checkpoint_every and self.step % plan.checkpoint_every == 0 and self.step < plan.total_steps:
            self.save_checkpoint("interval")

    # ------------------------------------------------------------ eval, sample, checkpoint
    def evaluate(self) -> dict[str, float] | None:
        """Mean loss per trained token on the first `eval_batches` validation micro-batches."""
        import torch

        if len(self._val) == 0:
            return None
        n = min(len(self._val), self.config.eval_batches * self.plan.micro_batch)
        weight = float(self._val.weights[:n].sum())
        self.lm.model.eval()
        try:
            with torch.no_grad():
                total = torch.zeros((), device=self.lm.device.torch_device)
                for start in range(0, n, self.plan.micro_batch):
                    part = slice(start, min(start + self.plan.micro_batch, n))
                    total += self._micro_loss(self._val.input_ids[part], self._val.targets[part],
                                              self._val.weights[part], self._val.position_ids[part])
                total = float(total)  # one read for the whole evaluation
        finally:
            self.lm.model.train()
        if weight == 0:
            return None
        loss = total / weight
        result = {"eval_loss": loss, "eval_ppl": math.exp(min(loss, 50.0)), "eval_tokens": int(weight),
                  "eval_bpb": loss / math.log(2) * self.tokens_per_byte if self.tokens_per_byte else None,
                  "tokens_seen": self.tokens_seen, "elapsed": self.elapsed,
                  "flops": self.flops_per_token * self.tokens_seen}
        self.emit(EvalEvent, **result)
        return result

    def sample(self, max_new_tokens: int = 40) -> str | None:
        """Greedy text from the model for the configured prompt (a `sample` event)."""
        import torch

        if not self.sample_prompt_ids or self.decode is None:
            return None
        self.lm.model.eval()
        try:
            with torch.no_grad():
                ids = torch.tensor([self.sample_prompt_ids], device=self.lm.device.torch_device)
                out = self.lm.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                                             max_new_tokens=max_new_tokens, do_sample=False,
                                             pad_token_id=self.pad_id)
        finally:
            self.lm.model.train()
        text = self.decode(out[0, ids.shape[1]:].tolist())
        self.emit(SampleEvent, prompt=self.decode(self.sample_prompt_ids), text=text)
        return text

    def state(self) -> dict[str, Any]:
        return {"step": self.step, "tokens_seen": self.tokens_seen, "elapsed": self.elapsed,
                "micro_batch": self.plan.micro_batch, "grad_accum": self.plan.grad_accum,
                "data_position": {"epoch": self.step // self.plan.steps_per_epoch,
                                  "sequence": (self.step % self.plan.steps_per_epoch) * self.plan.sequences_per_step},
                "loss_scale": float(self.scaler.get_scale()) if self.scaler else None,
                "plan": self.plan.__dict__, "config": self.config.to_dict(),
                "parameters": [self.param_names[id(p)] for g in self.optimizer.param_groups for p in g["params"]]}

    def save_checkpoint(self, reason: str) -> Path | None:
        if self.last_checkpoint is not None and self.last_checkpoint.name == f"step-{self.step:06d}":
            return self.last_checkpoint  # this step is already on disk
        if self.optimizer is None:
            return None
        path = self.strategy.save_checkpoint(self.run_dir, self.step, loaded_model=self.lm, optimizer=self.optimizer,
                                             param_names=self.param_names, state=self.state(),
                                             keep=self.config.keep_checkpoints if self.prune_checkpoints else None)
        self.last_checkpoint = path
        self.emit(CheckpointEvent, path=str(path), reason=reason)
        return path

    # ------------------------------------------------------------ endings
    def _finish(self, status: str) -> str:
        self.status = status
        self.emit(RunEndEvent, status=status, checkpoint=str(self.last_checkpoint) if self.last_checkpoint else None,
                  elapsed=self.elapsed, tokens_seen=self.tokens_seen)
        self.release()
        return status

    def _fail(self, exc: Exception) -> str:
        """Save the last completed step, report the error, end the run."""
        oom = memory.is_oom(exc) or isinstance(exc, MemoryError)
        if oom:
            memory.release_after_oom(exc, self.optimizer)
        saved = None
        try:
            # an FSDP checkpoint needs every process, and the others are not here to help: none is written
            if self.optimizer is not None and self.strategy.can_checkpoint_alone:
                self.optimizer.zero_grad(set_to_none=True)
                saved = self.save_checkpoint("error")
        except Exception as save_exc:  # report both; the original error matters most
            exc.add_note(f"saving a checkpoint after the error also failed: {save_exc!r}")
        self.error = exc
        self.emit(ErrorEvent, recovered=False, kind_of_error="out_of_memory" if oom else type(exc).__name__,
                  message=str(exc), advice=self._failure_advice(oom), checkpoint=str(saved) if saved else None)
        self.status = "failed"
        self.emit(RunEndEvent, status="failed", checkpoint=str(self.last_checkpoint) if self.last_checkpoint else None,
                  elapsed=self.elapsed, tokens_seen=self.tokens_seen, error=f"{type(exc).__name__}: {exc}")
        self.release()
        return "failed"

    def _failure_advice(self, oom: bool) -> str:
        """What to do after a failed run: remove the cause, then continue from the last checkpoint."""
        cause = "make a step fit in memory (the message says how)" if oom else "fix the cause"
        if self.last_checkpoint is None:
            return f"no step had finished, so nothing is saved: {cause} and start the run again"
        return (f"{cause}, then continue from {self.last_checkpoint.name}: s.resume({self.run_id!r}) in a notebook, "
                "train.py --resume for a recipe")

    def release(self) -> None:
        """Drop optimizer state and gradients so device memory returns to what the model alone needs."""
        if self.optimizer is not None:
            self.optimizer.zero_grad(set_to_none=True)
        self.optimizer = None
        self.scaler = None
        self._forward = self._eager_forward = self._head = None  # drop compiled graphs with the model's references
        self.attention = None
        memory.release_after_oom(None)


def _seed_dropout(seed: int) -> None:
    """A new run draws its dropout masks (LoRA adapters' dropout) from `seed`, so two runs with the same settings
    train the same; a resumed run continues from the random state its checkpoint saved instead."""
    import torch

    torch.manual_seed(seed)
