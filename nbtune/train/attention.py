"""Exact document masking for packed sequences, on the fastest attention kernel this machine has.

A packed sequence holds several documents; a token must attend only to earlier
tokens of its own document. transformers can infer that from restarting
position ids, but it does so on the device every forward pass and then reads
the answer back (`find_packed_sequence_indices`), which makes the host wait for
the GPU, and the dense block-diagonal mask it builds keeps sdpa off its flash
kernel. Here the boundaries come from the packing's numpy arrays, on the host,
and travel to the kernel explicitly:

* ``flash_varlen`` (CUDA, when ``flash_attn`` imports): flash-attention's
  variable-length kernel with ``cu_seqlens`` (document starts in the flattened
  batch) and the longest document's length as a plain int: no mask at all, no
  work on masked blocks, no sync;
* ``flex`` (CUDA, torch's FlexAttention): a block mask from per-token document
  ids; blocks that cross documents are skipped;
* ``sdpa`` (everywhere else, CPUs included): a boolean causal
  block-diagonal mask built on the device from the document ids.

`choose` picks one once per run; the engine reports it in the run header.
`model_kwargs` turns one micro-batch's position ids into what the chosen kernel
needs, and `use(model, choice)` switches the model's attention implementation
for the training forward pass only (generation keeps the model's own).
"""

from __future__ import annotations

import contextlib
import importlib.util
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np

KERNELS = ("flash_varlen", "flex", "sdpa")
FLASH_NAME = "nbtune_flash_varlen"  # our AttentionInterface entry (see `_flash_varlen_attention`)
_IMPLEMENTATION = {"flash_varlen": FLASH_NAME, "flex": "flex_attention", "sdpa": "sdpa"}


@dataclass(frozen=True)
class AttentionChoice:
    """The kernel that runs attention in training, and why it was picked."""

    kernel: str  # one of KERNELS
    reason: str

    def describe(self) -> str:
        return f"{self.kernel} ({self.reason})"


@lru_cache(maxsize=1)
def flash_attn_available() -> bool:
    """True when the flash-attention 2 package imports (a broken CUDA build counts as missing)."""
    if importlib.util.find_spec("flash_attn") is None:
        return False
    try:
        from flash_attn import flash_attn_varlen_func  # noqa: F401
    except Exception:  # ImportError or a broken native library
        return False
    return True


def flex_available() -> bool:
    try:
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention  # noqa: F401
    except ImportError:
        return False
    return True


def choose(device_type: str, precision: str, model: Any, requested: str = "auto") -> AttentionChoice:
    """The kernel for this device and model: `requested` when given, else flash varlen > flex > sdpa."""
    if requested != "auto":
        return AttentionChoice(requested, "requested")
    if not getattr(model, "_supports_attention_backend", False):
        return AttentionChoice("sdpa", "the model does not take attention functions from transformers' interface")
    if device_type == "cuda" and precision in ("bf16", "fp16") and flash_attn_available():
        return AttentionChoice("flash_varlen", "flash_attn imports; document starts passed as cu_seqlens")
    if device_type == "cuda" and flex_available():
        return AttentionChoice("flex", "flash_attn is not installed; FlexAttention block mask from document ids")
    return AttentionChoice("sdpa", "boolean block-diagonal mask" + ("" if device_type == "cuda" else
                                                                   "; FlexAttention on a CPU would first compile "
                                                                   "its kernel with a C++ toolchain"))


# ------------------------------------------------------------------------------ document boundaries, on the host


@dataclass(frozen=True)
class Documents:
    """Where the documents of one micro-batch are (numpy, computed on the host)."""

    doc_ids: np.ndarray  # (batch, seq_len) int32: which document of its row each token belongs to
    cu_seqlens: np.ndarray  # (n_documents + 1,) int32: document starts in the flattened batch, then its length
    max_length: int  # the longest document


def documents(position_ids: np.ndarray) -> Documents:
    """Documents start where the position id is 0 (the packing restarts positions at every document and row)."""
    starts = np.asarray(position_ids) == 0
    starts[:, 0] = True
    doc_ids = (np.cumsum(starts, axis=1) - 1).astype(np.int32)
    flat_starts = np.flatnonzero(starts.reshape(-1))
    cu = np.append(flat_starts, starts.size).astype(np.int32)
    return Documents(doc_ids, cu, int(np.diff(cu).max()))


def to_device(array: np.ndarray, device: Any) -> Any:
    """A host array on `device` without making the host wait: through pinned memory on CUDA."""
    import torch

    tensor = torch.from_numpy(np.ascontiguousarray(array))
    if getattr(device, "type", device) == "cuda":
        tensor = tensor.pin_memory()
    return tensor.to(device, non_blocking=True)


def model_kwargs(choice: AttentionChoice, docs: Documents, device: Any) -> dict[str, Any]:
    """The forward-pass keyword arguments that carry `docs` to the chosen kernel (no device-to-host reads)."""
    if choice.kernel == "flash_varlen":
        cu = to_device(docs.cu_seqlens, device)
        # the row length bounds every document; a constant keeps torch.compile from specialising on each batch's
        # longest document (the kernel only sizes its grid with it; blocks past a document's end exit at once)
        bound = int(docs.doc_ids.shape[1])
        return {"cu_seq_lens_q": cu, "cu_seq_lens_k": cu, "max_length_q": bound, "max_length_k": bound}
    doc = to_device(docs.doc_ids, device)
    if choice.kernel == "flex":
        return {"attention_mask": block_mask(doc)}
    return {"attention_mask": dense_mask(doc)}


def dense_mask(doc: Any) -> Any:
    """(batch, 1, T, T) bool: True where query q may attend key k (same document, k <= q)."""
    import torch

    length = doc.shape[1]
    causal = torch.ones(length, length, dtype=torch.bool, device=doc.device).tril()
    return ((doc[:, :, None] == doc[:, None, :]) & causal)[:, None]


def block_mask(doc: Any) -> Any:
    """FlexAttention BlockMask of the same pattern as `dense_mask`."""
    from torch.nn.attention.flex_attention import create_block_mask

    def same_document_causal(b: Any, h: Any, q: Any, k: Any) -> Any:
        return (doc[b, q] == doc[b, k]) & (q >= k)

    batch, length = doc.shape
    return create_block_mask(same_document_causal, batch, None, length, length, device=doc.device)


# ------------------------------------------------------------------------------ the flash varlen path


def _varlen_kernel() -> Any:
    from flash_attn import flash_attn_varlen_func

    return flash_attn_varlen_func


def _flash_varlen_attention(module: Any, query: Any, key: Any, value: Any, attention_mask: Any, scaling: float | None = None,
                            dropout: float = 0.0, cu_seq_lens_q: Any = None, cu_seq_lens_k: Any = None,
                            max_length_q: int | None = None, max_length_k: int | None = None,
                            **kwargs: Any) -> tuple[Any, None]:
    """transformers attention function: (batch, heads, T, dim) in, (batch, T, heads, dim) out.

    Without document boundaries (generation, which this path never sees) it hands over to transformers'
    own flash-attention function.
    """
    if cu_seq_lens_q is None:
        from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

        return ALL_ATTENTION_FUNCTIONS["flash_attention_2"](module, query, key, value, attention_mask,
                                                            scaling=scaling, dropout=dropout, **kwargs)
    batch, heads, length, dim = query.shape
    flat = lambda x: x.transpose(1, 2).reshape(batch * length, x.shape[1], dim)  # noqa: E731
    out = _varlen_kernel()(flat(query), flat(key), flat(value), cu_seq_lens_q, cu_seq_lens_k, max_length_q,
                           max_length_k, dropout_p=dropout if module.training else 0.0, softmax_scale=scaling,
                           causal=True)
    return out.reshape(batch, length, heads, dim), None


@lru_cache(maxsize=1)
def _register_flash() -> None:
    from transformers import AttentionInterface

    AttentionInterface.register(FLASH_NAME, _flash_varlen_attention)


@contextlib.contextmanager
def use(model: Any, choice: AttentionChoice) -> Iterator[None]:
    """Run the model's attention through the chosen kernel inside this block, then restore its own setting."""
    name = _IMPLEMENTATION[choice.kernel]
    if choice.kernel == "flash_varlen":
        _register_flash()
    config = model.config
    old = config._attn_implementation
    if old == name:
        yield
        return
    config._attn_implementation = name
    try:
        yield
    finally:
        config._attn_implementation = old
