"""nbtune: train or fine-tune small language models from a notebook.

Importing nbtune is cheap on purpose (well under a second): torch,
transformers, datasets, plotly and ipywidgets are imported only when a stage
first needs them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from nbtune.config import (
    CleanConfig,
    LabConfig,
    PretrainedModelConfig,
    ScratchModelConfig,
    SplitConfig,
    TokenizerConfig,
    TrainConfig,
)
from nbtune.errors import ConfigError, DataError, NbtuneError, StageOrderError

__version__ = "0.1.0"

__all__ = [
    "Session",
    "App",
    "CleanConfig",
    "SplitConfig",
    "TokenizerConfig",
    "ScratchModelConfig",
    "PretrainedModelConfig",
    "TrainConfig",
    "LabConfig",
    "ConfigError",
    "DataError",
    "NbtuneError",
    "StageOrderError",
    "ProjectLockedError",
    "StaleSessionError",
    "__version__",
]

if TYPE_CHECKING:  # pragma: no cover
    from nbtune.session import Session
    from nbtune.store import ProjectLockedError, StaleSessionError
    from nbtune.ui.app import App


def __getattr__(name: str) -> Any:
    if name == "Session":
        from nbtune.session import Session

        return Session
    if name == "App":
        from nbtune.ui.app import App

        return App
    if name in ("ProjectLockedError", "StaleSessionError"):
        from nbtune import store

        return getattr(store, name)
    raise AttributeError(f"module 'nbtune' has no attribute {name!r}")
