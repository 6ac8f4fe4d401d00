"""Checkpoints without pickle: safetensors for tensors, JSON for the rest.

A checkpoint folder `step-000120/` holds

* ``model/``: the model or LoRA adapter (`LoadedModel.save`, safetensors);
* ``optimizer.safetensors``: every AdamW state tensor, keyed by parameter name;
* ``rng.safetensors``: the torch CPU (and CUDA) random generator states;
* ``state.json``: step, data position, tokens seen, batch layout, loss scale,
  the run's settings and the names of the trained parameters, in order.

Nothing is ever unpickled, so opening a checkpoint cannot run code. Folders
are written atomically and only the newest `keep` are kept.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

from nbtune.storage import atomic_replace_dir, atomic_write_json

STATE = "state.json"
_STEP_FOLDER = re.compile(r"^step-(\d+)$")


def checkpoint_dir(run_dir: Path, step: int) -> Path:
    return run_dir / "checkpoints" / f"step-{step:06d}"


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoints of a run, ordered by step number (not by name: step-1000000 comes after step-999999)."""
    folder = Path(run_dir) / "checkpoints"
    if not folder.is_dir():
        return []
    found = []
    for path in folder.iterdir():
        match = _STEP_FOLDER.match(path.name)
        if match and not path.is_symlink() and (path / STATE).is_file():
            found.append((int(match.group(1)), path))
    return [path for _, path in sorted(found)]


def _optimizer_tensors(optimizer: Any, names: dict[int, str]) -> dict[str, Any]:
    """Flatten AdamW state into name-keyed tensors (contiguous, CPU)."""
    tensors = {}
    for group in optimizer.param_groups:
        for param in group["params"]:
            for key, value in optimizer.state.get(param, {}).items():
                tensors[f"{names[id(param)]}::{key}"] = value.detach().to("cpu").contiguous()
    return tensors


def _load_optimizer_tensors(optimizer: Any, names: dict[int, str], tensors: dict[str, Any]) -> None:
    import torch

    for group in optimizer.param_groups:
        for param in group["params"]:
            prefix = f"{names[id(param)]}::"
            state = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
            if state:
                optimizer.state[param] = {
                    k: (v.to(param.device) if k != "step" else v.to(torch.float32)) for k, v in state.items()}


def _rng_tensors() -> dict[str, Any]:
    import torch

    tensors = {"torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"torch_cuda_{i}"] = state
    return tensors


def restore_rng(tensors: dict[str, Any]) -> None:
    import torch

    torch.set_rng_state(tensors["torch_cpu"])
    cuda = [tensors[k] for k in sorted(tensors) if k.startswith("torch_cuda_")]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)


def save_checkpoint(run_dir: Path, step: int, *, loaded_model: Any, optimizer: Any, param_names: dict[int, str],
                    state: dict[str, Any], keep: int | None, model_state: dict[str, Any] | None = None,
                    optimizer_tensors: dict[str, Any] | None = None) -> Path:
    """Write a checkpoint atomically and keep only the newest `keep` (by step; None keeps all); returns its folder.

    `model_state` and `optimizer_tensors` replace what would be read from the
    model and optimizer: a sharded (FSDP) run passes the full state it gathered.
    """
    from safetensors.torch import save_file

    def build(tmp: Path) -> None:
        loaded_model.save(tmp / "model", state_dict=model_state)
        tensors = optimizer_tensors if optimizer_tensors is not None else _optimizer_tensors(optimizer, param_names)
        save_file(tensors, str(tmp / "optimizer.safetensors"))
        save_file(_rng_tensors(), str(tmp / "rng.safetensors"))
        atomic_write_json(tmp / STATE, state)

    target = atomic_replace_dir(build, checkpoint_dir(run_dir, step))
    if keep:
        for old in list_checkpoints(run_dir)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    return target


def read_state(folder: Path) -> dict[str, Any]:
    return json.loads((Path(folder) / STATE).read_text(encoding="utf-8"))


def load_checkpoint(folder: Path, *, loaded_model: Any, optimizer: Any, param_names: dict[int, str]) -> dict[str, Any]:
    """Restore model weights, optimizer state and RNG from `folder`; return its state.json."""
    from safetensors.torch import load_file

    folder = Path(folder)
    loaded_model.load_trainable_state(folder / "model")
    _load_optimizer_tensors(optimizer, param_names, load_file(str(folder / "optimizer.safetensors")))
    restore_rng(load_file(str(folder / "rng.safetensors")))
    return read_state(folder)
