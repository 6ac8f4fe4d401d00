"""Cross-entropy without the full fp32 logits.

A language model's head turns every token's hidden state into one score per
vocabulary entry. At a 49k vocabulary and 8 x 2048 tokens, the logits are
3.2 GB in fp32, and the usual loss (`logits.float()` then cross-entropy)
keeps that copy, its softmax and its gradient alive until the backward pass:
often the largest allocation of the whole step.

`fused_linear_cross_entropy` never builds the full logits. It runs the head on
a chunk of tokens at a time, computes that chunk's loss and, while the chunk's
logits are at hand, its gradients (softmax minus the one-hot target, times the
token's weight), then drops the chunk. What the backward pass needs is only
the gradient with respect to the hidden states (the size of the hidden states)
and, when the head trains, the head's weight gradient. The arithmetic is the
same as the unfused loss: the head's matmul in the autocast dtype, the softmax
in fp32; the same three matmuls (two when the head is frozen, as in LoRA).
Liger-Kernel's FusedLinearCrossEntropy does the same on GPUs with Triton; this
one is plain torch so it runs everywhere.

`chunked_cross_entropy` is the fallback when the head cannot be separated from
the model (a wrapper that must see the whole forward, such as DDP or FSDP, or a
head that is not a plain `nn.Linear`): the logits exist in the model's dtype,
but the fp32 copy and its fp32 gradient are made one chunk at a time.

Both return the *sum* over tokens of weight x cross-entropy (the engine divides
by the step's trained tokens).
"""

from __future__ import annotations

from typing import Any

import torch

# Bytes of fp32 logits per chunk: big enough for efficient matmuls, small next to the model.
CHUNK_BYTES = 128 * 2**20


def chunk_tokens(vocab: int, chunk_bytes: int = CHUNK_BYTES) -> int:
    """Tokens per chunk so that one chunk's fp32 logits take about `chunk_bytes` (a multiple of 64, >= 64)."""
    return max(64, (chunk_bytes // (4 * max(vocab, 1))) // 64 * 64)


def _compute_dtype(device_type: str, default: torch.dtype) -> torch.dtype:
    """The dtype autocast would run the head's matmul in (the weight's own dtype without autocast)."""
    if torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return default


def _chunk_loss_and_grad(logits: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor,
                         want_grad: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Weighted CE sum of one chunk (fp32) and d(sum)/d(logits) in fp32 (None when not wanted)."""
    logits = logits.float()
    lse = torch.logsumexp(logits, dim=-1)
    picked = logits.gather(1, targets[:, None]).squeeze(1)
    loss = ((lse - picked) * weights).sum()
    if not want_grad:
        return loss, None
    grad = logits.sub_(lse[:, None]).exp_()  # softmax, in place: the logits are not needed any more
    grad.scatter_add_(1, targets[:, None], -torch.ones_like(picked)[:, None])
    grad.mul_(weights[:, None])
    return loss, grad


class _FusedLinearCE(torch.autograd.Function):
    """Head matmul + cross-entropy per chunk; gradients computed in the forward pass, scaled in backward."""

    @staticmethod
    def forward(ctx: Any, hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                targets: torch.Tensor, weights: torch.Tensor, chunk: int, dtype: torch.dtype,
                want_grad: bool) -> torch.Tensor:
        need_h = want_grad and hidden.requires_grad
        need_w = want_grad and weight.requires_grad
        need_b = want_grad and bias is not None and bias.requires_grad
        w = weight.to(dtype)
        b = bias.to(dtype) if bias is not None else None
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        grad_h = torch.empty_like(hidden) if need_h else None
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_w else None
        grad_b = torch.zeros(bias.shape, dtype=torch.float32, device=bias.device) if need_b else None
        for start in range(0, hidden.shape[0], chunk):
            part = slice(start, start + chunk)
            h = hidden[part].to(dtype)
            logits = h @ w.t() if b is None else torch.addmm(b, h, w.t())
            loss, grad = _chunk_loss_and_grad(logits, targets[part], weights[part], need_h or need_w or need_b)
            total += loss
            if grad is None:
                continue
            grad = grad.to(dtype)
            if need_h:
                grad_h[part] = grad @ w
            if need_w:
                if dtype == torch.float32:
                    grad_w.addmm_(grad.t(), h)
                else:  # half-precision matmul as autograd would do it, accumulated in fp32
                    grad_w.add_((grad.t() @ h).float())
            if need_b:
                grad_b.add_(grad.float().sum(0))
        ctx.save_for_backward(*(t for t in (grad_h, grad_w, grad_b) if t is not None))
        ctx.has = (need_h, need_w, need_b)
        ctx.dtypes = (hidden.dtype, weight.dtype, bias.dtype if bias is not None else None)
        return total

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[Any, ...]:
        saved = iter(ctx.saved_tensors)
        grads = []
        for has, dtype in zip(ctx.has, ctx.dtypes, strict=True):
            grads.append((next(saved) * grad_out).to(dtype) if has else None)
        return (*grads, None, None, None, None, None)


def fused_linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                               targets: torch.Tensor, weights: torch.Tensor, *, chunk: int | None = None) -> torch.Tensor:
    """Sum over tokens of `weights` x CE(`hidden` @ `weight`.T + `bias`, `targets`), chunk by chunk.

    hidden: (..., H) final hidden states; weight: (V, H); targets, weights: (...) matching hidden's leading
    dimensions. Runs the head in the autocast dtype when autocast is on (as `nn.Linear` would), the softmax
    in fp32.
    """
    hidden = hidden.reshape(-1, hidden.shape[-1])
    dtype = _compute_dtype(hidden.device.type, weight.dtype)
    want_grad = torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad or
                                              (bias is not None and bias.requires_grad))
    chunk = chunk or chunk_tokens(weight.shape[0])
    with torch.autocast(hidden.device.type, enabled=False):
        return _FusedLinearCE.apply(hidden, weight, bias, targets.reshape(-1), weights.reshape(-1).float(),
                                    chunk, dtype, want_grad)


class _ChunkedCE(torch.autograd.Function):
    """Cross-entropy over given logits, upcasting one chunk at a time; the gradient is kept in the logits' dtype."""

    @staticmethod
    def forward(ctx: Any, logits: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor, chunk: int,
                want_grad: bool) -> torch.Tensor:
        total = torch.zeros((), dtype=torch.float32, device=logits.device)
        grad_all = torch.empty_like(logits) if want_grad else None
        for start in range(0, logits.shape[0], chunk):
            part = slice(start, start + chunk)
            loss, grad = _chunk_loss_and_grad(logits[part], targets[part], weights[part], want_grad)
            total += loss
            if grad is not None:
                grad_all[part] = grad
        if grad_all is not None:
            ctx.save_for_backward(grad_all)
        return total

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[Any, ...]:
        (grad_all,) = ctx.saved_tensors
        return grad_all * grad_out.to(grad_all.dtype), None, None, None, None


def chunked_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor, *,
                          chunk: int | None = None) -> torch.Tensor:
    """Sum over tokens of `weights` x CE(`logits`, `targets`), never holding fp32 copies of all the logits."""
    logits = logits.reshape(-1, logits.shape[-1])
    want_grad = torch.is_grad_enabled() and logits.requires_grad
    chunk = chunk or chunk_tokens(logits.shape[-1])
    return _ChunkedCE.apply(logits, targets.reshape(-1), weights.reshape(-1).float(), chunk, want_grad)
