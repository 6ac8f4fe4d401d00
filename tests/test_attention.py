"""Document masking: every kernel path gives what each document alone would give (no attention across documents)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from nbtune.train import attention
from nbtune.train.attention import AttentionChoice, documents, model_kwargs
from nbtune.train.packing import one_per_sequence, pack

LENGTHS = [[5, 11, 3, 13], [20, 12]]  # two rows of 32 tokens, documents of these lengths


def packed_positions() -> np.ndarray:
    return np.array([np.concatenate([np.arange(n) for n in row]) for row in LENGTHS])


def test_documents_from_the_packing_arrays():
    docs = documents(packed_positions())
    assert docs.doc_ids[0].tolist() == [0] * 5 + [1] * 11 + [2] * 3 + [3] * 13
    assert docs.cu_seqlens.tolist() == [0, 5, 16, 19, 32, 52, 64]  # row 2 starts at 32 in the flattened batch
    assert docs.max_length == 20
    assert docs.cu_seqlens.dtype == np.int32


def test_documents_of_real_packings():
    rows = [[3, 4, 5, 6, 7, 8, 9], [10, 11, 12], [13, 14, 15, 16, 17]]
    packed = pack(rows, [[1] * len(r) for r in rows], seq_len=5, seed=0, epoch=0, shuffle=False)
    docs = documents(packed.position_ids)
    # each sequence starts a segment; a document cut by the sequence end continues as a new segment
    assert docs.cu_seqlens.tolist() == [0, 5, 7, 10]  # 2 sequences of 5 (the rest is dropped)
    padded = one_per_sequence(rows, [[1] * len(r) for r in rows], seq_len=8, pad_id=0, seed=0, epoch=0,
                              shuffle=False)
    assert documents(padded.position_ids).cu_seqlens.tolist() == [0, 7, 8, 11, 16, 21, 24]  # padding apart


@pytest.fixture(scope="module")
def model():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=61, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                         attn_implementation="sdpa")
    return LlamaForCausalLM(config).eval()


def each_document_alone(model, ids: torch.Tensor) -> torch.Tensor:
    """The reference: every document run by itself, logits put back in place."""
    out = torch.empty(*ids.shape, model.config.vocab_size)
    for row, lengths in enumerate(LENGTHS):
        start = 0
        for n in lengths:
            with torch.no_grad():
                out[row, start:start + n] = model(input_ids=ids[row:row + 1, start:start + n]).logits[0]
            start += n
    return out


def packed_logits(model, ids: torch.Tensor, kernel: str) -> torch.Tensor:
    positions = packed_positions()
    choice = AttentionChoice(kernel, "test")
    kwargs = model_kwargs(choice, documents(positions), ids.device)
    with torch.no_grad(), attention.use(model, choice):
        return model(input_ids=ids, position_ids=torch.from_numpy(positions), use_cache=False, **kwargs).logits


def reference_varlen(q, k, v, cu_q, cu_k, max_q, max_k, dropout_p=0.0, softmax_scale=None, causal=False):
    """flash_attn_varlen_func's contract in plain torch: (total, heads, dim), causal within each segment."""
    assert causal and isinstance(max_q, int) and cu_q.dtype == torch.int32
    out = torch.empty_like(q)
    groups = q.shape[1] // k.shape[1]
    for a, b in zip(cu_q[:-1].tolist(), cu_q[1:].tolist(), strict=True):
        qs, ks, vs = (x[a:b].transpose(0, 1) for x in (q, k, v))
        ks, vs = ks.repeat_interleave(groups, 0), vs.repeat_interleave(groups, 0)
        out[a:b] = torch.nn.functional.scaled_dot_product_attention(qs, ks, vs, is_causal=True,
                                                                    scale=softmax_scale).transpose(0, 1)
    return out


@pytest.mark.parametrize("kernel", ["sdpa", "flash_varlen", "flex"])
def test_each_kernel_equals_documents_run_alone(model, kernel, monkeypatch):
    if kernel == "flash_varlen":  # no flash_attn on a CPU: its varlen contract, in torch, through our plumbing
        monkeypatch.setattr(attention, "_varlen_kernel", lambda: reference_varlen)
    ids = torch.randint(0, 61, (2, 32), generator=torch.Generator().manual_seed(1))
    expected = each_document_alone(model, ids)
    got = packed_logits(model, ids, kernel)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    assert model.config._attn_implementation == "sdpa"  # restored after the block


def test_without_masking_documents_would_leak(model):
    """The check can fail: plain causal attention over the packed row differs from the reference."""
    ids = torch.randint(0, 61, (2, 32), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        leaky = model(input_ids=ids, position_ids=torch.from_numpy(packed_positions()),
                      attention_mask=torch.ones_like(ids)).logits
    assert not torch.allclose(leaky, each_document_alone(model, ids), atol=1e-3)


class FakeModel:
    _supports_attention_backend = True


@pytest.mark.parametrize(("device", "precision", "flash", "flex", "expected"), [
    ("cuda", "bf16", True, True, "flash_varlen"),
    ("cuda", "fp16", True, True, "flash_varlen"),
    ("cuda", "fp32", True, True, "flex"),  # flash-attention has no fp32 kernel
    ("cuda", "bf16", False, True, "flex"),
    ("cuda", "bf16", False, False, "sdpa"),
    ("cpu", "fp32", True, True, "sdpa"),
    ("mps", "fp32", False, True, "sdpa"),
])
def test_choice(monkeypatch, device, precision, flash, flex, expected):
    monkeypatch.setattr(attention, "flash_attn_available", lambda: flash)
    monkeypatch.setattr(attention, "flex_available", lambda: flex)
    choice = attention.choose(device, precision, FakeModel())
    assert choice.kernel == expected
    assert choice.reason
    assert attention.choose(device, precision, FakeModel(), requested="sdpa").kernel == "sdpa"


def test_a_model_outside_the_attention_interface_gets_sdpa(monkeypatch):
    monkeypatch.setattr(attention, "flash_attn_available", lambda: True)
    assert attention.choose("cuda", "bf16", object()).kernel == "sdpa"
