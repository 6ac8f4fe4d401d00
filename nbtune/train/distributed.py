"""Several processes, one run: what nbtune adds to torch.distributed (DDP by default, FSDP for big models).

`torchrun` or `accelerate launch` start one process per device and set RANK,
WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT. nbtune does not launch or
synchronise anything itself; it uses torch's engines and only decides how the
notebook's single-process run maps onto them:

* each process joins the process group (NCCL on GPUs, gloo on CPUs) and is
  pinned to its local GPU, so "cuda" means that GPU everywhere in nbtune;
* the model is wrapped in DistributedDataParallel (the default: every rank
  holds the whole model, gradients are averaged) or sharded with FSDP2
  `fully_shard` per decoder layer (strategy "fsdp": parameters, gradients and
  optimizer state are split across ranks, for models that do not fit one GPU):
  the training loop sees either through a strategy object
  (`nbtune.train.strategy`), built by `strategy.for_job(from_env())`;
* each optimizer step's sequences, the very ones a single process would train
  on in that step, are split into equal contiguous shares, one per rank, so the
  global batch and the data order are those of the notebook run;
* rank 0 alone writes metrics and checkpoints, in the single-process format
  (with FSDP the full state is gathered to rank 0 first).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from nbtune.errors import ConfigError

STRATEGIES = ("ddp", "fsdp")


@dataclass(frozen=True)
class DistInfo:
    """This process's place in the job."""

    rank: int
    world_size: int
    local_rank: int
    strategy: str = "ddp"

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def describe(self) -> str:
        return f"{self.strategy.upper()}, {self.world_size} processes"


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes")


def from_env(strategy: str | None = None) -> DistInfo | None:
    """The job as torchrun / accelerate launch describe it, or None for a single process.

    Without an explicit `strategy`, `accelerate launch --use_fsdp` (which sets
    ACCELERATE_USE_FSDP=true) selects FSDP; everything else is DDP.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return None
    chosen = strategy or ("fsdp" if _truthy(os.environ.get("ACCELERATE_USE_FSDP")) else "ddp")
    if chosen not in STRATEGIES:
        raise ConfigError(f"unknown strategy {chosen!r}", column="strategy", fix="use 'ddp' or 'fsdp'")
    return DistInfo(rank=int(os.environ["RANK"]), world_size=world,
                    local_rank=int(os.environ.get("LOCAL_RANK", "0")), strategy=chosen)


def init(info: DistInfo) -> str:
    """Join the process group; on GPUs pin this process to its local GPU first. Returns the backend."""
    import torch
    import torch.distributed as dist

    backend = "gloo"
    if torch.cuda.is_available():
        torch.cuda.set_device(info.local_rank)
        backend = "nccl"
    if not dist.is_initialized():
        dist.init_process_group(backend)
    return backend


def shutdown() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()


def check_batch(info: DistInfo, sequences_per_step: int) -> int:
    """Sequences each rank trains per step; every rank must get the same number (DDP/FSDP run in lockstep)."""
    if sequences_per_step % info.world_size:
        raise ConfigError(
            f"a step has {sequences_per_step} sequences (batch_size x grad_accum), which {info.world_size} "
            "processes cannot share equally", column="batch_size",
            fix=f"make batch_size x grad_accum a multiple of {info.world_size} (e.g. grad_accum="
                f"{info.world_size}), or launch a number of processes that divides {sequences_per_step}")
    return sequences_per_step // info.world_size


def shard(info: DistInfo, n_rows: int) -> slice:
    """This rank's contiguous share of a step's `n_rows` sequences."""
    share = n_rows // info.world_size
    return slice(info.rank * share, (info.rank + 1) * share)


# ---------------------------------------------------------------------------- the model and its numbers


def decoder_layers(model: Any) -> list[Any]:
    """The transformer blocks, sharded one by one so FSDP gathers one block's weights at a time."""
    return [m for m in model.modules() if type(m).__name__.endswith("DecoderLayer")]


def all_reduce_sum(tensor: Any) -> Any:
    import torch.distributed as dist

    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def plain_number(value: Any) -> float:
    """A gradient norm as a float (FSDP returns it as a DTensor)."""
    from torch.distributed.tensor import DTensor

    return float(value.full_tensor() if isinstance(value, DTensor) else value)


def barrier() -> None:
    import torch.distributed as dist

    dist.barrier()


def agree(text: str, what: str, fix: str) -> None:
    """Raise on every rank unless all ranks computed the same `text` (e.g. a data fingerprint)."""
    import hashlib

    import torch
    import torch.distributed as dist

    from nbtune.errors import DataError

    value = int(hashlib.sha256(text.encode()).hexdigest()[:15], 16)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    low = torch.tensor([value], dtype=torch.int64, device=device)
    high = low.clone()
    dist.all_reduce(low, op=dist.ReduceOp.MIN)
    dist.all_reduce(high, op=dist.ReduceOp.MAX)
    if int(low) != int(high):
        raise DataError(f"the processes disagree on {what}", fix=fix)


# ---------------------------------------------------------------------------- FSDP checkpoints


def _full_options(rank0_only: bool) -> Any:
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, cpu_offload=rank0_only)


def gather_full_state(model: Any, optimizer: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """The unsharded model state dict and optimizer tensors (`name::key`) on rank 0; empty elsewhere.

    A collective: every rank must call it.
    """
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

    model_state = get_model_state_dict(model, options=_full_options(True))
    for alias in _tied_aliases(model):  # tied weights are written once, as save_pretrained does
        model_state.pop(alias, None)
    optim_state = get_optimizer_state_dict(model, optimizer, options=_full_options(True))
    tensors = {f"{name}::{key}": value.detach().to("cpu").contiguous()
               for name, state in optim_state.get("state", {}).items() for key, value in state.items()}
    return model_state, tensors


def _tied_aliases(model: Any) -> list[str]:
    """Names under which an already named parameter appears again (e.g. lm_head.weight tied to the embeddings)."""
    seen: set[int] = set()
    aliases = []
    for name, param in model.named_parameters(remove_duplicate=False):
        if id(param) in seen:
            aliases.append(name)
        seen.add(id(param))
    return aliases


def load_full_optimizer_state(model: Any, optimizer: Any, tensors: dict[str, Any]) -> None:
    """Put optimizer tensors saved as `name::key` (full, unsharded) back into a sharded optimizer."""
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict, set_optimizer_state_dict

    template = get_optimizer_state_dict(model, optimizer, options=_full_options(False))
    state: dict[str, dict[str, Any]] = {}
    for flat, value in tensors.items():
        name, key = flat.rsplit("::", 1)
        state.setdefault(name, {})[key] = value
    set_optimizer_state_dict(model, optimizer, {"state": state, "param_groups": template["param_groups"]},
                             options=_full_options(False))
