"""The train/validation split, defined on the row ids of the loaded data.

A seeded permutation of all loaded row ids decides which rows are held out, so
cleaning removes rows from either side but never moves a row from one side to
the other, and the same seed gives the same split after a restart.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from nbtune.config import SplitConfig
from nbtune.data import column_array


def validation_ids(n_loaded: int, config: SplitConfig) -> np.ndarray:
    """Row ids held out for validation: the first share of a seeded permutation of all loaded row ids
    (at least one row on each side when there are two rows or more)."""
    n_val = int(round(n_loaded * config.validation_fraction))
    if config.validation_fraction > 0 and n_loaded >= 2:
        n_val = min(max(n_val, 1), n_loaded - 1)
    perm = np.random.default_rng(config.seed).permutation(n_loaded)
    return np.sort(perm[:n_val])


def split_rows(dataset: Any, n_loaded: int, config: SplitConfig) -> tuple[Any, Any]:
    """(train rows, validation rows) of `dataset`, whose `row_id`s number the `n_loaded` loaded rows."""
    row_ids = column_array(dataset, "row_id").astype(np.int64)
    is_val = np.isin(row_ids, validation_ids(n_loaded, config))
    return dataset.select(np.flatnonzero(~is_val)), dataset.select(np.flatnonzero(is_val))
