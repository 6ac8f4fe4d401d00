"""`LoadedModel`: what the model stage hands to the training engine, whichever path built it.

A scratch model and a pretrained one (fully trainable or with LoRA adapters,
on a 16/32-bit, 8-bit or 4-bit base) look the same from the outside: a torch
module ready to train, the tokenizer (pretrained only), a card, the settings
that rebuild it, and three operations the engine needs for checkpoints:

* `save(directory)`: safetensors only, written atomically (a crash mid-save
  leaves the previous checkpoint intact). LoRA methods save just the adapter
  (`adapter_model.safetensors` + `adapter_config.json`, loadable with
  `PeftModel.from_pretrained`); the others save the whole model with
  `save_pretrained`, loadable with `AutoModelForCausalLM.from_pretrained`.
* `load_trainable_state(directory)`: put exactly (bitwise) those weights back
  into this same object, for an exact resume.
* `release()`: drop the model and give the memory back.

`nbtune.models.rebuild.rebuild(settings, ...)` makes the same model again in a
fresh process from `LoadedModel.settings` (which is plain JSON); it lives above
scratch.py and pretrained.py, which build on this module.
"""

from __future__ import annotations

import gc
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nbtune.device import DeviceInfo
from nbtune.errors import ConfigError
from nbtune.models.card import LORA_METHODS, ModelCard
from nbtune.storage import atomic_replace_dir

if TYPE_CHECKING:  # pragma: no cover
    import torch

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
ADAPTER_WEIGHTS = "adapter_model.safetensors"
SETTINGS_FILE = "nbtune_model.json"


@dataclass
class LoadedModel:
    """A model ready to train: on `device.torch_device`, in train() mode, trainable parameters require grad."""

    model: torch.nn.Module
    tokenizer: Any | None
    method: str
    source: str
    device: DeviceInfo
    card: ModelCard
    settings: dict

    @property
    def is_lora(self) -> bool:
        return self.method in LORA_METHODS

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        """The parameters the optimizer should update (in a stable order)."""
        return [p for p in self._require_model().parameters() if p.requires_grad]

    def named_trainable_parameters(self) -> list[tuple[str, torch.nn.Parameter]]:
        return [(n, p) for n, p in self._require_model().named_parameters() if p.requires_grad]

    def _require_model(self) -> torch.nn.Module:
        if self.model is None:
            raise RuntimeError("this model was released; load it again")
        return self.model

    # --- checkpoints -------------------------------------------------------------------------------------------

    def save(self, directory: str | Path, *, state_dict: dict | None = None) -> Path:
        """Write the trainable state (and the tokenizer, and settings) atomically; return the folder.

        `state_dict` (full, unsharded tensors) is written instead of the model's own: an FSDP-sharded
        model gathers it on rank 0 first.
        """
        model = self._require_model()
        given = {"state_dict": state_dict} if state_dict is not None else {}

        def build(tmp: Path) -> None:
            _quiet_progress_bars()
            if self.is_lora:
                model.save_pretrained(str(tmp), safe_serialization=True, save_embedding_layers=False, **given)
            else:
                model.save_pretrained(str(tmp), **given)
            if self.tokenizer is not None:
                self.tokenizer.save_pretrained(str(tmp))
            (tmp / SETTINGS_FILE).write_text(json.dumps(
                {"method": self.method, "source": self.source, "settings": self.settings}, indent=2, default=str))
            leftovers = pickle_files(tmp)
            if leftovers:  # pragma: no cover - transformers 5 / peft only write safetensors
                raise RuntimeError(f"refusing to keep pickle files in a checkpoint: {leftovers}")

        return atomic_replace_dir(build, directory)

    def load_trainable_state(self, directory: str | Path) -> None:
        """Load what `save()` wrote back into this model, bitwise."""
        folder = Path(directory)
        if self.is_lora:
            _load_adapter(self._require_model(), folder)
        else:
            _load_full(self._require_model(), folder)

    def release(self) -> None:
        """Drop the model (and its memory); the object is unusable afterwards."""
        device_type = self.device.type
        self.model = None  # type: ignore[assignment]
        gc.collect()
        import torch

        if device_type == "cuda" and torch.cuda.is_available():
            torch.cuda.empty_cache()
        elif device_type == "mps" and hasattr(torch, "mps"):
            torch.mps.empty_cache()

    def __repr__(self) -> str:
        return (f"LoadedModel(method={self.method!r}, source={self.source!r}, device={self.device.describe()!r}, "
                f"parameters={self.card.params_total:,}, trainable={self.card.params_trainable:,})")


def pickle_files(folder: Path) -> list[str]:
    """Names of pickle-format weight files directly in `folder`."""
    return sorted(p.name for p in Path(folder).iterdir() if p.is_file() and p.suffix in PICKLE_SUFFIXES)


def enable_checkpointing(model: Any) -> None:
    """Activation (gradient) checkpointing, non-reentrant, through whichever name this transformers has."""
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.x
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:  # pragma: no cover - older transformers
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    model.config.use_cache = False


def _quiet_progress_bars() -> None:
    """transformers 5 shows tqdm bars for loading and writing shards; a notebook has its own progress UI."""
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    except Exception:  # pragma: no cover - best effort only
        pass


def _load_adapter(model: Any, folder: Path) -> None:
    from peft import get_peft_model_state_dict, set_peft_model_state_dict
    from safetensors.torch import load_file

    path = folder / ADAPTER_WEIGHTS
    if not path.is_file():
        raise ConfigError(f"no {ADAPTER_WEIGHTS} in this checkpoint", path=folder,
                          fix="pass a folder written by LoadedModel.save() for a LoRA method")
    state = load_file(str(path), device=str(next(model.parameters()).device))
    expected = get_peft_model_state_dict(model, save_embedding_layers=False)
    unknown, missing = sorted(set(state) - set(expected)), sorted(set(expected) - set(state))
    reshaped = sorted(k for k in set(state) & set(expected) if state[k].shape != expected[k].shape)
    if unknown or missing or reshaped:
        example = (unknown or missing or reshaped)[0]
        raise ConfigError(f"the checkpoint's adapter does not match this model ({len(unknown)} unknown, "
                          f"{len(missing)} missing and {len(reshaped)} differently shaped tensors, e.g. {example})",
                          path=path,
                          fix="resume with the same model and LoRA settings (rank, target_modules) it was saved with")
    set_peft_model_state_dict(model, state)


def _read_safetensors(folder: Path) -> dict[str, Any]:
    from safetensors.torch import load_file

    files = sorted(folder.glob("*.safetensors"))
    files = [f for f in files if f.name != ADAPTER_WEIGHTS]
    if not files:
        raise ConfigError("no .safetensors weights in this checkpoint", path=folder,
                          fix="pass a folder written by LoadedModel.save()")
    state: dict[str, Any] = {}
    for file in files:
        state.update(load_file(str(file)))
    return state


def _load_full(model: Any, folder: Path) -> None:
    """Copy saved tensors into the model's own tensors (tied weights are saved once and shared)."""
    import torch

    state = _read_safetensors(folder)
    own = model.state_dict()
    unknown = sorted(set(state) - set(own))
    if unknown:
        raise ConfigError(f"the checkpoint holds {len(unknown)} tensors this model does not have, e.g. {unknown[0]}",
                          path=folder, fix="resume with the same model settings the checkpoint was saved with")
    loaded_ptrs = {own[k].data_ptr() for k in state}
    missing = [k for k in own if k not in state and own[k].data_ptr() not in loaded_ptrs]
    if missing:
        raise ConfigError(f"the checkpoint lacks {len(missing)} tensors, e.g. {missing[0]}", path=folder,
                          fix="resume with the same model settings the checkpoint was saved with")
    with torch.no_grad():
        for key, value in state.items():
            target = own[key]
            if target.shape != value.shape:
                raise ConfigError(f"tensor {key} has shape {tuple(value.shape)} in the checkpoint but "
                                  f"{tuple(target.shape)} in the model", path=folder,
                                  fix="resume with the same model settings the checkpoint was saved with")
            target.copy_(value.to(dtype=target.dtype))
