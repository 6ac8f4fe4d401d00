"""`rebuild(settings)`: make the model described by `LoadedModel.settings` again, in a fresh process.

It picks the path that built the model (scratch or pretrained), so it sits
above `scratch.py` and `pretrained.py`, which both build on `base.py`.
"""

from __future__ import annotations

from typing import Any

from nbtune.config import PretrainedModelConfig, ScratchModelConfig
from nbtune.device import DeviceInfo
from nbtune.errors import ConfigError
from nbtune.models.base import LoadedModel
from nbtune.models.pretrained import use_model
from nbtune.models.scratch import new_model


def rebuild(settings: dict, *, device: DeviceInfo, tokenizer: Any = None) -> LoadedModel:
    """Make the model described by `LoadedModel.settings` again (e.g. to resume in a fresh process).

    Scratch models need the session's `tokenizer`; pretrained ones bring their own.
    """
    kind = settings.get("kind")
    if kind == "scratch":
        if tokenizer is None:
            raise ConfigError("a scratch model needs the session's tokenizer to be rebuilt", column="tokenizer",
                              fix="pass tokenizer=... (the one the model was trained with)")
        return new_model(ScratchModelConfig.from_dict(settings["config"]), tokenizer=tokenizer,
                         context_length=settings["context_length"], device=device,
                         batch_size=settings.get("batch_size", 8), seq_len=settings.get("seq_len"),
                         gradient_checkpointing=settings.get("gradient_checkpointing", False))
    if kind == "pretrained":
        return use_model(PretrainedModelConfig.from_dict(settings["config"]), device=device,
                         batch_size=settings.get("batch_size", 8), seq_len=settings.get("seq_len", 512),
                         gradient_checkpointing=settings.get("gradient_checkpointing", False),
                         seed=settings.get("seed", 0))
    raise ConfigError(f"unknown model settings kind {kind!r}", fix="pass LoadedModel.settings unchanged")
