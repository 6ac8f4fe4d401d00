"""The chunked / fused cross-entropy equals the plain `logits.float()` + cross-entropy, loss and gradients."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from nbtune.train.loss import chunk_tokens, chunked_cross_entropy, fused_linear_cross_entropy


def reference(hidden, weight, bias, targets, weights):
    """Today's loss, written out independently: full logits, fp32 upcast, per-token CE times weights."""
    logits = F.linear(hidden, weight, bias)
    per_token = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="none")
    return (per_token * weights.reshape(-1)).sum()


def case(seed=0, tokens=(3, 37), hidden=16, vocab=101, bias=False):
    gen = torch.Generator().manual_seed(seed)
    h = torch.randn(*tokens, hidden, generator=gen, requires_grad=True)
    w = torch.randn(vocab, hidden, generator=gen).mul_(0.3).requires_grad_(True)
    b = torch.randn(vocab, generator=gen).requires_grad_(True) if bias else None
    t = torch.randint(0, vocab, tokens, generator=gen)
    m = (torch.rand(tokens, generator=gen) > 0.3).float()
    return h, w, b, t, m


def grads(loss, *tensors):
    return torch.autograd.grad(loss, [x for x in tensors if x is not None])


@pytest.mark.parametrize("chunk", [1, 7, 64, 1000])
@pytest.mark.parametrize("bias", [False, True])
def test_fused_equals_reference_in_fp32(chunk, bias):
    h, w, b, t, m = case(bias=bias)
    expected = reference(h, w, b, t, m)
    got = fused_linear_cross_entropy(h, w, b, t, m, chunk=chunk)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    for g, e in zip(grads(got * 0.7, h, w, b), grads(expected * 0.7, h, w, b), strict=True):
        torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-6)


def test_fused_with_a_frozen_head_gives_only_the_hidden_gradient():
    h, w, b, t, m = case()
    w.requires_grad_(False)
    got = fused_linear_cross_entropy(h, w, None, t, m, chunk=16)
    expected = reference(h, w, None, t, m)
    torch.testing.assert_close(grads(got, h)[0], grads(expected, h)[0], rtol=1e-5, atol=1e-6)


def test_fused_under_bf16_autocast_matches_the_autocast_reference():
    h, w, b, t, m = case(tokens=(2, 64), hidden=32, vocab=257)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        expected = reference(h, w, None, t, m)
        got = fused_linear_cross_entropy(h, w, None, t, m, chunk=32)
    torch.testing.assert_close(got, expected, rtol=2e-3, atol=1e-2)
    for g, e in zip(grads(got, h, w), grads(expected, h, w), strict=True):
        assert g.dtype == e.dtype
        torch.testing.assert_close(g, e, rtol=2e-2, atol=2e-2)


def test_no_grad_gives_the_same_loss():
    h, w, b, t, m = case()
    with torch.no_grad():
        torch.testing.assert_close(fused_linear_cross_entropy(h, w, None, t, m, chunk=10), reference(h, w, None, t, m))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_chunked_over_logits_equals_reference(dtype):
    h, w, b, t, m = case()
    logits = F.linear(h, w).to(dtype).detach().requires_grad_(True)
    expected = (F.cross_entropy(logits.float().reshape(-1, 101), t.reshape(-1), reduction="none") * m.reshape(-1)).sum()
    got = chunked_cross_entropy(logits, t, m, chunk=9)
    torch.testing.assert_close(got, expected)
    (g,), (e,) = torch.autograd.grad(got, logits), torch.autograd.grad(expected, logits)
    assert g.dtype == dtype
    torch.testing.assert_close(g, e, rtol=1e-5 if dtype == torch.float32 else 1e-2, atol=1e-6)


def test_chunk_size_keeps_fp32_logits_near_the_budget():
    # 128 MiB of fp32 logits over a 49,152-token vocabulary: 2**27 / (4 * 49152) = 682.7 tokens, down to 64s: 640
    assert chunk_tokens(49152) == 640
    assert chunk_tokens(49152) * 49152 * 4 <= 128 * 2**20
    assert chunk_tokens(10**9) == 64


def test_a_model_step_equals_the_plain_loss(tiny_llama):
    """Through a real (tiny) Llama: decoder + fused head == model(...).logits + plain CE, loss and every grad."""
    model, inputs, targets, weights = tiny_llama
    out = model(input_ids=inputs, use_cache=False)
    expected = reference_from_logits(out.logits, targets, weights)
    expected_grads = torch.autograd.grad(expected, list(model.parameters()))
    hidden = model.get_decoder()(input_ids=inputs, use_cache=False).last_hidden_state
    head = model.get_output_embeddings()
    got = fused_linear_cross_entropy(hidden, head.weight, head.bias, targets, weights, chunk=24)
    got_grads = torch.autograd.grad(got, list(model.parameters()))
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    for g, e in zip(got_grads, expected_grads, strict=True):
        torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-6)


def reference_from_logits(logits, targets, weights):
    per_token = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="none")
    return (per_token * weights.reshape(-1)).sum()


@pytest.fixture
def tiny_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                         tie_word_embeddings=True)
    model = LlamaForCausalLM(config)
    inputs = torch.randint(0, 97, (2, 40))
    targets = torch.randint(0, 97, (2, 40))
    weights = (torch.rand(2, 40) > 0.2).float()
    return model, inputs, targets, weights
