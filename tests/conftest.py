"""Shared test setup: never touch the network, keep caches in a temp dir."""

from __future__ import annotations

import os

# Set before anything imports huggingface_hub: a hub id then fails at once
# instead of after ~50 s of retries.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
