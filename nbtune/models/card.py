"""The model card: size, memory and compute of a model before (or right after) it is built.

For a model trained from scratch the card is computed from the settings alone,
before a single weight is allocated, so a user sees "this will need 9 GiB and
your device has 8" instead of an out-of-memory error ten minutes later. For a
pretrained model the card uses the numbers of the loaded model (true parameter
counts, true bytes of 4-bit / 8-bit weights).

Everything here is a pure function of numbers (no torch): easy to test, and
cheap to show again.

Memory model (bytes, for one training micro-batch):

* weights: parameters x bytes per parameter (fp32 4, bf16/fp16 2, int8 1,
  NF4 ~0.5 plus block scales), or the measured bytes of a loaded model;
* gradients: one fp32 value per trainable parameter;
* optimizer: AdamW keeps two fp32 moments per trainable parameter (8 bytes);
* activations: what the backward pass needs, see `activation_bytes`;
* a margin for the allocator, the CUDA context, the data and Python itself:
  only ~85% of the device memory (minus 0.5 GiB on a GPU) counts as usable.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from nbtune.device import DeviceInfo
from nbtune.viz.html import bullet_list, esc, human_bytes, table
from nbtune.viz.report import Report

LORA_METHODS = ("lora", "qlora", "lora-8bit")
# Fraction of device memory we plan to use, and a fixed reserve on GPUs (CUDA context, allocator slack).
USABLE_FRACTION = 0.85
GPU_RESERVE = 512 * 2**20
# Bytes per stored weight by storage type; NF4 adds ~1 byte of scales per 64 weights (double-quantised: less).
WEIGHT_BYTES = {"fp32": 4.0, "bf16": 2.0, "fp16": 2.0, "int8": 1.0, "nf4": 0.5 + 1 / 64}


def human_count(n: float) -> str:
    """1_234_567 -> '1.23M'."""
    for div, suffix in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K")):
        if abs(n) >= div:
            return f"{n / div:.3g}{suffix}"
    return f"{n:.0f}"


def activation_bytes(
    *,
    layers: int,
    hidden: int,
    kv_dim: int,
    intermediate: int,
    vocab: int,
    batch: int,
    seq_len: int,
    bytes_per_value: int,
    gradient_checkpointing: bool = False,
    lora: bool = False,
    fused_loss: bool = True,
) -> int:
    """Activations kept for the backward pass of a Llama-style decoder (one micro-batch).

    Per token and layer the backward pass needs roughly: the block input and
    the RMSNorm output (2h), q and k before and after RoPE and v
    (2h + 3 kv_dim), the attention output (h), the second norm's input and
    output (2h) and the SwiGLU MLP's gate, up, silu(gate) and product (4 I):
    7h + 3 kv_dim + 4 I values. Fused SDPA kernels do not store the T x T
    attention matrix, so there is no quadratic term (Korthikanti et al. 2022,
    "Reducing Activation Recomputation in Large Transformer Models", count the
    same tensors for GPT blocks). LoRA adds a dropout copy of each adapted
    layer's input (~6h + I). The language-model head dominates small models
    with large vocabularies: unfused, the logits and their gradient, plus the
    fp32 log-softmax of the loss and its gradient, take V x (2 bytes + 8) per
    token. The engine's fused loss (`nbtune.train.loss`) keeps only the
    gradient of the final hidden state (h values per token) plus one chunk of
    logits at a time (~128 MiB of fp32, a constant left to the margin).

    This counts tensors. Measured on CPU before the fused loss (SmolLM2-135M, 256-token sequences) the
    tensors autograd saved came to 0.75x (full) and 0.85x (LoRA) of this
    estimate, while the process grew by 1.1x (full) to 1.6x (LoRA) of the
    card's gradients + optimizer + activations during a training step
    (allocator caching, backward temporaries). The 15% margin absorbs part of
    that; treat a "fits" close to the limit as a maybe.

    With gradient checkpointing only each block's input (h) is kept, and one
    block's activations are rebuilt at a time during the backward pass.
    """
    per_layer = 7 * hidden + 3 * kv_dim + 4 * intermediate + ((6 * hidden + intermediate) if lora else 0)
    tokens = batch * seq_len
    # checkpointing keeps each block's input and rebuilds one block at a time
    blocks = layers * hidden + per_layer if gradient_checkpointing else layers * per_layer
    embed_and_norm = 3 * hidden
    head = hidden * bytes_per_value if fused_loss else vocab * (2 * bytes_per_value + 8)
    return int(tokens * ((blocks + embed_and_norm) * bytes_per_value + head))


def flops_per_token(*, matmul_params: int, layers: int, hidden: int, seq_len: int) -> float:
    """Training FLOPs per token: 6N + 12 L h T.

    6N is Kaplan et al. 2020 ("Scaling Laws for Neural Language Models",
    section 2.1): 2N for the forward matmuls and 4N for the backward pass. The
    attention term 12 L h T (L layers, h = heads x head_dim, T the sequence
    length) counts the QK^T and attention-times-V matmuls, forward and
    backward, as in PaLM (Chowdhery et al. 2022, appendix B), the convention
    behind "model FLOPs utilisation" (MFU). N counts the parameters that take
    part in a matmul: the output head counts, a separate input embedding (a
    table lookup) does not. LoRA runs skip the frozen weights' gradients
    (~4N instead of 6N of hardware work) but the card keeps the standard 6N so
    MFU stays comparable between runs.
    """
    return 6.0 * matmul_params + 12.0 * layers * hidden * seq_len


def usable_memory(device: DeviceInfo) -> int | None:
    """The part of the device memory we plan with (None when the size is unknown)."""
    if not device.total_memory:
        return None
    reserve = GPU_RESERVE if device.type == "cuda" else 0
    return max(0, int(device.total_memory * USABLE_FRACTION) - reserve)


@dataclass(repr=False)
class ModelCard(Report):
    """Size, shape, memory and compute of one model for one training micro-batch."""

    source: str
    method: str
    params_total: int
    params_trainable: int
    layers: int
    hidden: int
    heads: int
    kv_heads: int
    intermediate: int
    vocab: int
    context: int
    batch: int
    seq_len: int
    weight_bytes: int
    gradient_bytes: int
    optimizer_bytes: int
    activation_bytes: int
    flops_per_token: float
    device_name: str
    device_memory: int | None
    usable_memory: int | None
    gradient_checkpointing: bool = False
    weight_format: str = "fp32"
    max_batch: int | None = None
    advice: str | None = None
    notes: list[str] = field(default_factory=list)
    title = "Model"

    @property
    def total_bytes(self) -> int:
        return self.weight_bytes + self.gradient_bytes + self.optimizer_bytes + self.activation_bytes

    @property
    def fits(self) -> bool | None:
        """True/False when the device size is known, None otherwise."""
        if self.usable_memory is None:
            return None
        return self.total_bytes <= self.usable_memory

    @property
    def trainable_fraction(self) -> float:
        return self.params_trainable / self.params_total if self.params_total else 0.0

    def _fits_text(self) -> str:
        if self.fits is None:
            return f"unknown ({self.device_name} does not report its memory size)"
        verdict = "yes" if self.fits else "NO"
        return (f"{verdict}: {human_bytes(self.total_bytes)} of {human_bytes(self.usable_memory)} usable "
                f"({human_bytes(self.device_memory)} on {self.device_name})")

    def summary(self) -> list[tuple[str, Any]]:
        kv = f" ({self.kv_heads} key/value)" if self.kv_heads != self.heads else ""
        pairs = [
            ("model", self.source),
            ("method", self.method),
            ("parameters", f"{self.params_total:,} total, {self.params_trainable:,} trainable "
                           f"({100 * self.trainable_fraction:.2f}%)"),
            ("shape", f"{self.layers} layers x {self.hidden} wide, {self.heads} heads{kv}, MLP {self.intermediate}, "
                      f"vocabulary {self.vocab:,}, context {self.context:,}"),
            ("memory", f"{human_bytes(self.total_bytes)} at batch {self.batch} x {self.seq_len} tokens "
                       f"(weights {human_bytes(self.weight_bytes)}, gradients {human_bytes(self.gradient_bytes)}, "
                       f"optimizer {human_bytes(self.optimizer_bytes)}, activations "
                       f"{human_bytes(self.activation_bytes)})"),
            ("compute", f"{human_count(self.flops_per_token)} FLOPs per training token"),
            ("fits", self._fits_text()),
        ]
        if self.advice:
            pairs.append(("advice", self.advice))
        return pairs

    def body_html(self) -> str:
        rows = [
            ("weights", human_bytes(self.weight_bytes), f"{self.params_total:,} parameters as {self.weight_format}"),
            ("gradients", human_bytes(self.gradient_bytes), "fp32, trainable parameters only"),
            ("optimizer", human_bytes(self.optimizer_bytes), "AdamW: two fp32 moments per trainable parameter"),
            ("activations", human_bytes(self.activation_bytes),
             f"batch {self.batch} x {self.seq_len} tokens"
             + (", gradient checkpointing" if self.gradient_checkpointing else "")),
            ("total", human_bytes(self.total_bytes), ""),
        ]
        parts = ["<h4>Memory for one training step</h4>", table(["part", "size", "how"], rows, numeric=[1])]
        if self.advice:
            css = "warn" if self.fits is False else "muted"
            parts.append(f'<p class="{css}">{esc(self.advice)}</p>')
        if self.notes:
            parts.append(bullet_list(self.notes, cls="muted"))
        return "".join(parts)


def _largest_batch(static: int, per_sample: int, usable: int) -> int:
    if per_sample <= 0:
        return 0
    return max(0, (usable - static) // per_sample)


def _advice(*, method: str, fits: bool, static: int, usable: int, max_batch: int, batch: int,
            max_batch_checkpointed: int | None) -> str | None:
    """One plain sentence on what to change when the run would not fit."""
    if fits:
        return None
    if static > usable:
        need = human_bytes(static)
        if method == "scratch":
            return (f"The weights, gradients and optimizer state alone need {need}, more than the "
                    f"{human_bytes(usable)} usable here: pick a smaller preset or fewer layers / a smaller "
                    "hidden_size.")
        if method == "full":
            return (f"Full fine-tuning needs {need} for weights, gradients and optimizer state alone: use "
                    "method='lora' (or 'qlora', which also stores the frozen weights in 4 bits).")
        if method in ("lora", "lora-8bit"):
            return (f"The frozen weights alone need {need}: use method='qlora' (4-bit weights) or a smaller "
                    "model.")
        return f"Even in 4 bits this model needs {need}: pick a smaller model."
    options = []
    if max_batch >= 1:
        options.append(f"lower batch_size from {batch} to {max_batch} and raise grad_accum to keep the effective "
                       "batch")
    if max_batch_checkpointed is not None and max_batch_checkpointed > max_batch:
        options.append(f"turn on gradient_checkpointing (then batch_size up to {max_batch_checkpointed} fits)"
                       if max_batch_checkpointed >= 1 else "turn on gradient_checkpointing")
    if not options:
        options.append("use a shorter seq_len")
    if method == "full":
        options.append("or switch to method='lora'")
    elif method == "lora":
        options.append("or switch to method='qlora'")
    return "Activations for this micro-batch do not fit: " + "; ".join(options) + "."


def estimate_card(
    *,
    params_total: int,
    params_trainable: int,
    layers: int,
    hidden: int,
    heads: int,
    kv_heads: int,
    vocab: int,
    context: int,
    batch: int,
    seq_len: int,
    device: DeviceInfo,
    method: str,
    intermediate: int | None = None,
    weight_bytes_per_param: float = 4.0,
    weight_bytes: int | None = None,
    weight_format: str = "fp32",
    tied_embeddings: bool = True,
    gradient_checkpointing: bool = False,
    source: str = "",
    notes: list[str] | None = None,
) -> ModelCard:
    """Build the card from plain numbers (no torch, nothing allocated).

    `weight_bytes` (measured from a loaded model) wins over
    `params_total * weight_bytes_per_param`. Trainable parameters are fp32
    (full fine-tune keeps fp32 master weights; LoRA adapters are fp32 even on
    a half-precision base), hence 4 bytes of gradient and 8 of AdamW state
    each. Activations are in the autocast dtype on GPUs (2 bytes) and fp32 on
    CPUs.
    """
    intermediate = intermediate or round(hidden * 8 / 3)
    head_dim = hidden // max(heads, 1)
    kv_dim = head_dim * kv_heads
    weights = int(weight_bytes if weight_bytes is not None else math.ceil(params_total * weight_bytes_per_param))
    grads = 4 * params_trainable
    optimizer = 8 * params_trainable
    act_value = 2 if device.precision in ("bf16", "fp16") else 4
    shape = dict(layers=layers, hidden=hidden, kv_dim=kv_dim, intermediate=intermediate, vocab=vocab,
                 seq_len=seq_len, bytes_per_value=act_value, lora=method in LORA_METHODS)
    acts = activation_bytes(batch=batch, gradient_checkpointing=gradient_checkpointing, **shape)
    autocast_copies = 0
    if act_value == 2 and weight_format == "fp32":
        # autocast caches a half-precision copy of every weight it casts during the forward pass
        autocast_copies = 2 * params_total
    acts += autocast_copies
    matmul_params = params_total - (0 if tied_embeddings else vocab * hidden)
    usable = usable_memory(device)
    static = weights + grads + optimizer
    max_batch = max_batch_ckpt = None
    advice = None
    if usable is not None:
        per_sample = activation_bytes(batch=1, gradient_checkpointing=gradient_checkpointing, **shape)
        max_batch = _largest_batch(static + autocast_copies, per_sample, usable)
        if not gradient_checkpointing:
            per_sample_ckpt = activation_bytes(batch=1, gradient_checkpointing=True, **shape)
            max_batch_ckpt = _largest_batch(static + autocast_copies, per_sample_ckpt, usable)
        advice = _advice(method=method, fits=static + acts <= usable, static=static, usable=usable,
                         max_batch=max_batch, batch=batch, max_batch_checkpointed=max_batch_ckpt)
    return ModelCard(
        source=source, method=method, params_total=int(params_total), params_trainable=int(params_trainable),
        layers=layers, hidden=hidden, heads=heads, kv_heads=kv_heads, intermediate=intermediate, vocab=vocab,
        context=context, batch=batch, seq_len=seq_len, weight_bytes=weights, gradient_bytes=grads,
        optimizer_bytes=optimizer, activation_bytes=acts,
        flops_per_token=flops_per_token(matmul_params=matmul_params, layers=layers, hidden=hidden, seq_len=seq_len),
        device_name=device.name, device_memory=device.total_memory, usable_memory=usable,
        gradient_checkpointing=gradient_checkpointing, weight_format=weight_format, max_batch=max_batch,
        advice=advice, notes=list(notes or []),
    )
