"""Shared test setup: never touch the network, keep caches in a temp dir."""

from __future__ import annotations

import os

# Set before anything imports huggingface_hub: a hub id then fails at once
# instead of after ~50 s of retries.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


import numpy as np  # noqa: E402
import pytest  # noqa: E402

import nbtune  # noqa: E402

WORDS = ["one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve"]
FAST = dict(batch_size=4, learning_rate=3e-3, warmup_steps=2, eval_every=10, eval_batches=4, background=False,
            progress=False)


def counting_docs(n: int = 300, seed: int = 0) -> list[str]:
    """A learnable task: count upwards from a random start."""
    rng = np.random.default_rng(seed)
    docs = []
    for _ in range(n):
        start = int(rng.integers(0, 6))
        docs.append(" ".join(WORDS[start: start + int(rng.integers(4, 7))]))
    return docs


def counting_down_docs_list(n: int = 300, seed: int = 1) -> list[str]:
    """The fine-tuning task: count downwards (the 'pretrained' model only saw counting up)."""
    return [" ".join(reversed(doc.split())) for doc in counting_docs(n, seed)]


@pytest.fixture(scope="module")
def tiny_pretrained(tmp_path_factory):
    """A small 'pretrained' model folder: a tiny Llama trained (with nbtune) on counting up."""
    from nbtune.data.tokens import train_bpe_tokenizer

    root = tmp_path_factory.mktemp("tiny-pretrained")
    tokenizer = train_bpe_tokenizer(counting_docs() + counting_down_docs_list(), vocab_size=300)
    tokenizer.save_pretrained(root / "tokenizer")
    s = nbtune.Session(root / "pretraining")
    s.load(counting_docs(seed=5))
    s.tokenize(tokenizer=str(root / "tokenizer"), context_length=32)
    s.new_model(preset="tiny", layers=2, hidden_size=64, heads=4, kv_heads=2)
    assert s.train(steps=60, **FAST).status == "finished"
    s.model.save(root / "model")
    tokenizer.save_pretrained(root / "model")
    return root / "model"


@pytest.fixture
def counting_down_docs():
    return counting_down_docs_list()
