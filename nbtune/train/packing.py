"""Tokenized rows -> fixed-length training sequences, deterministically.

Packing puts several documents into one sequence so no compute is spent on
padding. Document boundaries are kept: position ids restart at 0 at every
document start, and transformers turns restarting position ids (with no
attention mask) into a block-diagonal causal mask for the sdpa, eager and
flash-attention kernels, so tokens never attend across documents. The target
that would predict the first token of the next document from the previous one
is masked out.

The order of documents in epoch `e` is a permutation seeded by `seed + e`, so
the sequence at (epoch, index) is the same in every process: that is what
makes resuming from a checkpoint exact.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Packed:
    """An epoch's worth of sequences as arrays of shape (n_sequences, seq_len)."""

    input_ids: np.ndarray  # int64
    targets: np.ndarray  # int64, the next token (or 0 where masked)
    weights: np.ndarray  # float32, 1 where the target is trained
    position_ids: np.ndarray  # int64, restarting at each document

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def trained_tokens(self) -> int:
        return int(self.weights.sum())


def _stream(docs: list[list[int]], masks: list[list[int]], order: np.ndarray) -> tuple[np.ndarray, ...]:
    """Concatenate documents in `order`: tokens, loss mask, document-start flags."""
    lengths = np.array([len(docs[i]) for i in order], dtype=np.int64)
    tokens = np.fromiter((t for i in order for t in docs[i]), dtype=np.int64, count=int(lengths.sum()))
    mask = np.fromiter((m for i in order for m in masks[i]), dtype=np.float32, count=int(lengths.sum()))
    starts = np.zeros(len(tokens), dtype=bool)
    if len(lengths):  # no documents (an empty validation split): nothing starts
        starts[np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)] = True
    return tokens, mask, starts


def _positions(starts: np.ndarray, seq_len: int) -> np.ndarray:
    """Position of each token inside its document segment, restarting at documents and at sequence starts."""
    restart = starts.copy()
    restart[::seq_len] = True
    index = np.arange(len(starts))
    last_restart = np.maximum.accumulate(np.where(restart, index, 0))
    return index - last_restart


def pack(docs: list[list[int]], masks: list[list[int]], *, seq_len: int, seed: int, epoch: int,
         shuffle: bool = True) -> Packed:
    """Pack documents into sequences of `seq_len` tokens (the last partial sequence is dropped)."""
    order = np.random.default_rng(seed + epoch).permutation(len(docs)) if shuffle else np.arange(len(docs))
    tokens, mask, starts = _stream(docs, masks, order)
    n_seq = (len(tokens) - 1) // seq_len
    if n_seq == 0:
        return _empty(seq_len)
    used = n_seq * seq_len
    inputs = tokens[:used]
    targets = tokens[1 : used + 1]
    weights = mask[1 : used + 1] * ~starts[1 : used + 1]
    positions = _positions(starts[:used], seq_len)
    shape = (n_seq, seq_len)
    return Packed(inputs.reshape(shape), targets.reshape(shape), weights.reshape(shape).astype(np.float32),
                  positions.reshape(shape))


def one_per_sequence(docs: list[list[int]], masks: list[list[int]], *, seq_len: int, pad_id: int, seed: int,
                     epoch: int, shuffle: bool = True) -> Packed:
    """No packing: each document (cut to seq_len) gets its own padded sequence."""
    order = np.random.default_rng(seed + epoch).permutation(len(docs)) if shuffle else np.arange(len(docs))
    n = len(order)
    inputs = np.full((n, seq_len), pad_id, dtype=np.int64)
    targets = np.zeros((n, seq_len), dtype=np.int64)
    weights = np.zeros((n, seq_len), dtype=np.float32)
    positions = np.tile(np.arange(seq_len, dtype=np.int64), (n, 1))
    for row, i in enumerate(order):
        doc, m = np.asarray(docs[i][: seq_len + 1]), np.asarray(masks[i][: seq_len + 1], dtype=np.float32)
        k = min(len(doc), seq_len)
        inputs[row, :k] = doc[:k]
        targets[row, : len(doc) - 1] = doc[1:]
        weights[row, : len(doc) - 1] = m[1:]
        positions[row, k:] = np.arange(seq_len - k)  # padding is its own "document"; its targets are masked
    return Packed(inputs, targets, weights, positions)


def _empty(seq_len: int) -> Packed:
    z = np.zeros((0, seq_len), dtype=np.int64)
    return Packed(z, z.copy(), np.zeros((0, seq_len), dtype=np.float32), z.copy())
