"""How one optimizer step is spread over processes: one object per way, so the loop reads as one process.

The training loop (`nbtune.train.loop`) is written for a single process. What
changes when several processes train one run (a torchrun / accelerate job) is
gathered here, behind the handful of operations the loop calls:

==========================  ======================  ==============================  ==============================
operation                   `SingleProcess`         `DDP`                           `FSDP`
==========================  ======================  ==============================  ==============================
`wrap(model)`               the model               a DistributedDataParallel       the model, sharded per decoder
                                                    wrapper                         layer (FSDP2 `fully_shard`)
`my_share(n)`               every sequence          this rank's contiguous share    the same
`to_gradient_sum(loss)`     the loss                loss x ranks (DDP averages)     the same
`gradient_sync(last)`       nothing                 `no_sync()` until the last      `set_requires_gradient_sync`
                                                    micro-batch
`sum_over_ranks(tensor)`    the tensor              all-reduce sum                  the same
`plain_norm(norm)`          the norm                the norm                        a float (it is a DTensor)
`check_batch_can_shrink`    yes (OOM recovery)      no: ranks run in lockstep       no
`save_checkpoint`           write it                rank 0 writes it                every rank gathers, rank 0
                                                                                    writes
`load_checkpoint`           into the optimizer      the same                        full weights before sharding,
                                                                                    then scatter the optimizer
==========================  ======================  ==============================  ==============================

Every strategy writes and reads the single-process checkpoint format, so a run
moves freely between a notebook, DDP and FSDP. Joining the process group and
reading the job from the environment stay in `nbtune.train.distributed`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from nbtune.train import checkpoint as ckpt

# what the loop passes to build (or return) its optimizer and the parameter-name map checkpoints are keyed by
OptimizerReady = Callable[[], tuple[Any, dict[int, str]]]


class SingleProcess:
    """One process trains the whole run: the default, and what every other strategy must reproduce.

    A strategy keeps the model it wrapped, so each engine gets its own (`for_job` makes one).
    """

    name = "single"
    rank = 0
    world_size = 1
    is_main = True
    # the fused loss calls the decoder and runs the output head itself; a DDP/FSDP wrapper must see the whole forward
    needs_whole_forward = False
    can_checkpoint_alone = True  # after an error, this process can write a checkpoint without the others

    def __init__(self) -> None:
        self.wrapped: Any = None  # what the training forward calls, made once

    def describe(self) -> str:
        return "one process"

    def check_batch(self, sequences_per_step: int) -> None:
        """Raise when this job cannot share a step of `sequences_per_step` sequences (one process always can)."""

    def wrap(self, model: Any) -> Any:
        """What the training forward pass calls; made on the first call, the same object afterwards."""
        if self.wrapped is None:
            self.wrapped = self._wrap(model)
        return self.wrapped

    def _wrap(self, model: Any) -> Any:
        return model

    def my_share(self, n_rows: int) -> slice:
        """The rows of a step's `n_rows` sequences this process trains on."""
        return slice(0, n_rows)

    def to_gradient_sum(self, loss: Any) -> Any:
        """The loss to call backward on so that gradients end up summed over the whole step."""
        return loss

    def gradient_sync(self, *, last: bool) -> contextlib.AbstractContextManager:
        """Around one micro-batch's forward and backward: share gradients only after the step's last one."""
        return contextlib.nullcontext()

    def sum_over_ranks(self, tensor: Any) -> Any:
        """The tensor summed over every process (in place)."""
        return tensor

    def plain_norm(self, norm: Any) -> Any:
        """The gradient norm `clip_grad_norm_` returned, as something `float()` reads on this process."""
        return norm

    def check_batch_can_shrink(self, *, at_step: int, micro_batch: int) -> None:
        """Raise `MemoryError` when out-of-memory recovery may not change the micro-batch (one process may)."""

    def save_checkpoint(self, run_dir: Path, step: int, *, loaded_model: Any, optimizer: Any,
                        param_names: dict[int, str], state: dict[str, Any], keep: int | None) -> Path:
        """Write step `step`'s checkpoint (keeping the newest `keep`; None keeps all); returns its folder."""
        return ckpt.save_checkpoint(run_dir, step, loaded_model=loaded_model, optimizer=optimizer,
                                    param_names=param_names, state=state, keep=keep)

    def load_checkpoint(self, folder: Path, *, loaded_model: Any, optimizer_ready: OptimizerReady) -> dict[str, Any]:
        """Restore weights, optimizer state and RNG from `folder`; returns its state.json."""
        optimizer, param_names = optimizer_ready()
        return ckpt.load_checkpoint(folder, loaded_model=loaded_model, optimizer=optimizer, param_names=param_names)


class _SeveralProcesses(SingleProcess):
    """What DDP and FSDP share: each rank trains an equal share of every step; rank 0 writes."""

    needs_whole_forward = True

    def __init__(self, info: Any) -> None:
        super().__init__()
        self.info = info  # a distributed.DistInfo
        self.rank, self.world_size, self.is_main = info.rank, info.world_size, info.is_main

    def describe(self) -> str:
        return self.info.describe()

    def check_batch(self, sequences_per_step: int) -> None:
        from nbtune.train import distributed

        distributed.check_batch(self.info, sequences_per_step)

    def my_share(self, n_rows: int) -> slice:
        from nbtune.train import distributed

        return distributed.shard(self.info, n_rows)

    def to_gradient_sum(self, loss: Any) -> Any:
        # DDP and FSDP average gradients over ranks; scaling each rank's loss by their number makes that a sum
        return loss * float(self.world_size)

    def sum_over_ranks(self, tensor: Any) -> Any:
        from nbtune.train import distributed

        return distributed.all_reduce_sum(tensor)

    def check_batch_can_shrink(self, *, at_step: int, micro_batch: int) -> None:
        # the ranks run in lockstep: one rank cannot change its batch layout alone
        raise MemoryError(f"out of memory on rank {self.rank} at step {at_step} with micro-batch {micro_batch}; "
                          "lower batch_size (it is per process), enable gradient_checkpointing, or use "
                          "--strategy fsdp to shard the model")

    def save_checkpoint(self, run_dir: Path, step: int, *, loaded_model: Any, optimizer: Any,
                        param_names: dict[int, str], state: dict[str, Any], keep: int | None) -> Path:
        """Rank 0 writes the single-process format; every rank returns the folder."""
        if not self.is_main:
            return ckpt.checkpoint_dir(run_dir, step)
        return super().save_checkpoint(run_dir, step, loaded_model=loaded_model, optimizer=optimizer,
                                       param_names=param_names, state=state, keep=keep)


class DDP(_SeveralProcesses):
    """Every rank holds the whole model (DistributedDataParallel); gradients are all-reduced once per step."""

    name = "ddp"

    def _wrap(self, model: Any) -> Any:
        import torch
        from torch.nn.parallel import DistributedDataParallel

        device_ids = [self.info.local_rank] if torch.cuda.is_available() else None
        return DistributedDataParallel(model, device_ids=device_ids)

    def gradient_sync(self, *, last: bool) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext() if last else self.wrapped.no_sync()


class FSDP(_SeveralProcesses):
    """Parameters, gradients and optimizer state split across ranks (FSDP2), for models one device cannot hold."""

    name = "fsdp"
    can_checkpoint_alone = False  # gathering the full state needs every process

    def _wrap(self, model: Any) -> Any:
        from torch.distributed.fsdp import fully_shard

        from nbtune.train import distributed

        for layer in distributed.decoder_layers(model):  # one block's weights gathered at a time
            fully_shard(layer)
        fully_shard(model)
        return model

    @contextlib.contextmanager
    def _no_gradient_sync(self) -> Iterator[None]:
        self.wrapped.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            self.wrapped.set_requires_gradient_sync(True)

    def gradient_sync(self, *, last: bool) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext() if last else self._no_gradient_sync()

    def plain_norm(self, norm: Any) -> float:
        from nbtune.train import distributed

        return distributed.plain_number(norm)

    def save_checkpoint(self, run_dir: Path, step: int, *, loaded_model: Any, optimizer: Any,
                        param_names: dict[int, str], state: dict[str, Any], keep: int | None) -> Path:
        """Every rank helps gather the full state (a collective); rank 0 writes the single-process format."""
        from nbtune.train import distributed

        full_model, full_optimizer = distributed.gather_full_state(loaded_model.model, optimizer)
        if not self.is_main:
            return ckpt.checkpoint_dir(run_dir, step)
        return ckpt.save_checkpoint(run_dir, step, loaded_model=loaded_model, optimizer=optimizer,
                                    param_names=param_names, state=state, keep=keep, model_state=full_model,
                                    optimizer_tensors=full_optimizer)

    def load_checkpoint(self, folder: Path, *, loaded_model: Any, optimizer_ready: OptimizerReady) -> dict[str, Any]:
        """Load the full weights into the still unsharded model, shard it, then scatter the optimizer state."""
        from safetensors.torch import load_file

        from nbtune.train import distributed

        if self.wrapped is not None:
            raise RuntimeError("restore an FSDP engine before it starts training (its model is sharded already)")
        loaded_model.load_trainable_state(folder / "model")
        optimizer, _ = optimizer_ready()  # shards the model, then builds the optimizer over the shards
        distributed.load_full_optimizer_state(loaded_model.model, optimizer,
                                              load_file(str(folder / "optimizer.safetensors")))
        ckpt.restore_rng(load_file(str(folder / "rng.safetensors")))
        return ckpt.read_state(folder)


Strategy = SingleProcess  # the interface: DDP and FSDP override what differs


def for_job(info: Any) -> SingleProcess:
    """The strategy for this process of a job (`distributed.from_env()`); None is a single process."""
    if info is None:
        return SingleProcess()
    return FSDP(info) if info.strategy == "fsdp" else DDP(info)
