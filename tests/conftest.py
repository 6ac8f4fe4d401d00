"""Shared test setup: never touch the network; the counting data and one way to make a small Session.

Most stage tests need "a session with a tiny model": load the counting documents, train a small BPE, create a
two-layer Llama. `make_tiny_session` is that recipe, written once; the `tiny_session` fixture calls it inside the
test's own tmp_path. Tests that need something else say so with its options (other rows, no model, another
model size, trained for some steps) instead of copying the recipe.
"""

from __future__ import annotations

import contextlib
import os
import threading

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


# The tests' usual scratch model (~0.1M parameters) and the smallest one (a single 32-wide layer).
TINY_MODEL = dict(preset="tiny", layers=2, hidden_size=64, heads=4, kv_heads=2)
SMALLEST_MODEL = dict(preset="tiny", layers=1, hidden_size=32, heads=2, kv_heads=1)


def make_tiny_session(workdir, docs=None, *, model: dict | None = TINY_MODEL, trained_steps: int = 0,
                      vocab_size: int = 300, context_length: int = 32, tokenizer: str | None = None,
                      **load_options) -> nbtune.Session:
    """A Session in `workdir`: `docs` loaded (the counting documents by default), tokenized, a scratch model made.

    `docs` may be anything `Session.load` takes (text rows, chat rows, a path); `load_options` go to `load`.
    `tokenizer` is a pretrained tokenizer folder instead of a new BPE of `vocab_size`. `model=None` stops after
    tokenizing; `trained_steps` trains that many steps with the FAST settings (and checks the run finished).
    """
    s = nbtune.Session(workdir)
    s.load(counting_docs() if docs is None else docs, **load_options)
    if tokenizer is None:
        s.tokenize(vocab_size=vocab_size, context_length=context_length)
    else:
        s.tokenize(tokenizer=tokenizer, context_length=context_length)
    if model is not None:
        s.new_model(**model)
    if trained_steps:
        assert s.train(steps=trained_steps, **FAST).status == "finished"
    return s


@pytest.fixture
def tiny_session(tmp_path):
    """A factory: `tiny_session()` or `tiny_session("name", docs, **options)`, a session in tmp_path / name."""

    def make(name: str = "s", docs=None, **options) -> nbtune.Session:
        return make_tiny_session(tmp_path / name, docs, **options)

    return make


@pytest.fixture(scope="session")
def tiny_pretrained(tmp_path_factory):
    """A small 'pretrained' model folder: a tiny Llama trained (with nbtune) on counting up.

    Made once per test session (tests only read it; one that changes a model folder copies it first)."""
    from nbtune.data.tokens import train_bpe_tokenizer

    root = tmp_path_factory.mktemp("tiny-pretrained")
    tokenizer = train_bpe_tokenizer(counting_docs() + counting_down_docs_list(), vocab_size=300)
    tokenizer.save_pretrained(root / "tokenizer")
    s = make_tiny_session(root / "pretraining", counting_docs(seed=5), tokenizer=str(root / "tokenizer"),
                          trained_steps=60)
    s.model.save(root / "model")
    tokenizer.save_pretrained(root / "model")
    return root / "model"


@pytest.fixture
def counting_down_docs():
    return counting_down_docs_list()


@contextlib.contextmanager
def run_held_at_step(session, step: int = 2, steps: int = 50):
    """A background run of `session`, held inside its step `step` until the block ends; then stopped and waited
    for. For tests of what is refused (or allowed) while a run trains."""
    at_step, release = threading.Event(), threading.Event()

    def hold(event):
        if event.kind == "step" and event.step == step:
            at_step.set()
            release.wait(60)

    run = session.train(steps=steps, listeners=(hold,), **{**FAST, "background": True})
    try:
        assert at_step.wait(120), f"the run did not reach step {step}"
        yield run
    finally:
        release.set()
        run.stop()
        run.wait()
