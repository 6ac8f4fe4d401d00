"""A new Llama-style model initialised at random: the from-scratch path.

The model is a plain `transformers.LlamaForCausalLM` (RMSNorm, RoPE, SwiGLU,
grouped-query attention through PyTorch SDPA), so what you train here saves
with `save_pretrained` and loads anywhere transformers, vLLM or llama.cpp
converters do.

Sizes come from a preset; any size set explicitly in `ScratchModelConfig`
wins. The vocabulary and the bos/eos/pad ids come from the session's
tokenizer. `plan_scratch` computes the model card by arithmetic, before any
weight exists, so an impossible size is caught before allocating gigabytes.

Weights are fp32 master weights on every device; the training engine runs the
forward pass under autocast (bf16/fp16) where the device supports it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from nbtune.config import ScratchModelConfig
from nbtune.device import DeviceInfo
from nbtune.errors import ConfigError
from nbtune.models.base import LoadedModel, enable_checkpointing
from nbtune.models.card import ModelCard, estimate_card

if TYPE_CHECKING:  # pragma: no cover
    from transformers import LlamaConfig

# Parameter counts at vocabulary 4096 with tied embeddings (the default BPE tokenizer):
# tiny 0.92M, small 9.9M, medium 39.8M, large 318M (362M at SmolLM2's vocabulary of 49152).
PRESETS: dict[str, dict[str, Any]] = {
    "tiny": {"layers": 2, "hidden_size": 128, "heads": 4, "kv_heads": 2, "intermediate_size": 384,
             "rope_theta": 10_000.0},
    "small": {"layers": 12, "hidden_size": 256, "heads": 8, "kv_heads": 4, "intermediate_size": 704,
              "rope_theta": 10_000.0},
    "medium": {"layers": 12, "hidden_size": 512, "heads": 8, "kv_heads": 4, "intermediate_size": 1536,
               "rope_theta": 10_000.0},
    # The shape of SmolLM2-360M.
    "large": {"layers": 32, "hidden_size": 960, "heads": 15, "kv_heads": 5, "intermediate_size": 2560,
              "rope_theta": 100_000.0},
}
SIZE_FIELDS = ("layers", "hidden_size", "heads", "kv_heads", "intermediate_size")


def default_intermediate(hidden: int) -> int:
    """About 8/3 of the width (SwiGLU keeps the MLP's parameters at ~8 h^2), rounded up to a multiple of 32."""
    return -(-round(hidden * 8 / 3) // 32) * 32


def resolve_sizes(config: ScratchModelConfig, *, context_length: int) -> dict[str, Any]:
    """The preset with explicit settings on top, checked; all sizes filled in.

    Derived defaults follow the explicit settings: a new hidden_size without an
    intermediate_size gets ~8/3 of it; new heads without kv_heads keep the
    preset's key/value heads if they divide, else use one key/value head per head.
    """
    config.validate()
    if config.preset not in PRESETS:
        raise ConfigError(f"unknown preset {config.preset!r}", column="preset",
                          fix=f"use one of {', '.join(map(repr, PRESETS))}")
    sizes = dict(PRESETS[config.preset])
    explicit = {name: getattr(config, name) for name in SIZE_FIELDS if getattr(config, name) is not None}
    sizes.update(explicit)
    if "hidden_size" in explicit and "intermediate_size" not in explicit:
        sizes["intermediate_size"] = default_intermediate(sizes["hidden_size"])
    if "heads" in explicit and "kv_heads" not in explicit and sizes["heads"] % sizes["kv_heads"]:
        sizes["kv_heads"] = sizes["heads"]
    sizes["context_length"] = config.context_length or context_length
    _check_sizes(sizes, explicit)
    return sizes


def _check_sizes(sizes: dict[str, Any], explicit: dict[str, Any]) -> None:
    hidden, heads, kv = sizes["hidden_size"], sizes["heads"], sizes["kv_heads"]
    if hidden % heads:
        field = "heads" if "heads" in explicit and "hidden_size" not in explicit else "hidden_size"
        raise ConfigError(f"hidden_size={hidden} is not divisible by heads={heads}", column=field,
                          fix=f"pick a hidden_size that is a multiple of {heads}, or heads that divide {hidden} "
                              f"(e.g. {', '.join(map(str, _head_counts(hidden)[:6]))})")
    if (hidden // heads) % 2:
        raise ConfigError(f"the head size hidden_size/heads = {hidden // heads} is odd; rotary embeddings need an "
                          "even head size", column="heads", fix="change heads or hidden_size so hidden_size/heads "
                                                                "is even (64 is the usual choice)")
    if heads % kv:
        raise ConfigError(f"kv_heads={kv} does not divide heads={heads}", column="kv_heads",
                          fix=f"use one of {', '.join(str(d) for d in range(1, heads + 1) if heads % d == 0)}")


def _head_counts(hidden: int) -> list[int]:
    """Head counts that split `hidden` into even head sizes."""
    return [d for d in range(1, hidden + 1) if hidden % d == 0 and (hidden // d) % 2 == 0] or [1]


def scratch_llama_config(config: ScratchModelConfig, *, vocab_size: int, context_length: int, bos_id: int | None,
                         eos_id: int | None, pad_id: int | None) -> LlamaConfig:
    """The `LlamaConfig` for these settings and this tokenizer (SDPA attention)."""
    from transformers import LlamaConfig

    sizes = resolve_sizes(config, context_length=context_length)
    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=sizes["hidden_size"],
        intermediate_size=sizes["intermediate_size"],
        num_hidden_layers=sizes["layers"],
        num_attention_heads=sizes["heads"],
        num_key_value_heads=sizes["kv_heads"],
        max_position_embeddings=sizes["context_length"],
        rope_parameters={"rope_type": "default", "rope_theta": float(sizes["rope_theta"])},
        tie_word_embeddings=config.tie_embeddings,
        bos_token_id=bos_id,
        eos_token_id=eos_id,
        pad_token_id=pad_id,
        initializer_range=0.02,
        rms_norm_eps=1e-5,
        attn_implementation="sdpa",
    )


def llama_param_count(*, vocab: int, hidden: int, layers: int, heads: int, kv_heads: int, intermediate: int,
                      tied: bool) -> int:
    """Exact parameter count of a bias-free LlamaForCausalLM (checked against the real model in the tests)."""
    kv_dim = hidden // heads * kv_heads
    attention = 2 * hidden * hidden + 2 * hidden * kv_dim  # q, o and k, v projections
    mlp = 3 * hidden * intermediate  # gate, up, down
    norms = 2 * hidden
    embeddings = vocab * hidden * (1 if tied else 2)
    return layers * (attention + mlp + norms) + hidden + embeddings


def _tokenizer_ids(tokenizer: Any) -> tuple[int, int | None, int | None, int | None]:
    if tokenizer is None:
        raise ConfigError("a model trained from scratch needs the session's tokenizer", column="tokenizer",
                          fix="run the tokens stage first (it trains a BPE tokenizer on your data)")
    return len(tokenizer), tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id


def plan_scratch(config: ScratchModelConfig, *, tokenizer: Any, context_length: int, batch_size: int = 8,
                 seq_len: int | None = None, device: DeviceInfo, gradient_checkpointing: bool = False) -> ModelCard:
    """The card of the model these settings describe; nothing is allocated."""
    vocab = _tokenizer_ids(tokenizer)[0]
    return _card(config, resolve_sizes(config, context_length=context_length), vocab=vocab, batch_size=batch_size,
                 seq_len=seq_len, device=device, gradient_checkpointing=gradient_checkpointing)


def _card(config: ScratchModelConfig, sizes: dict[str, Any], *, vocab: int, batch_size: int, seq_len: int | None,
          device: DeviceInfo, gradient_checkpointing: bool) -> ModelCard:
    total = llama_param_count(vocab=vocab, hidden=sizes["hidden_size"], layers=sizes["layers"], heads=sizes["heads"],
                              kv_heads=sizes["kv_heads"], intermediate=sizes["intermediate_size"],
                              tied=config.tie_embeddings)
    notes = []
    if device.type == "cpu" and total > 50e6:
        notes.append(f"{total / 1e6:.0f}M parameters train very slowly on a CPU; the 'tiny' and 'small' presets "
                     "suit CPUs, this one a GPU.")
    return estimate_card(
        params_total=total, params_trainable=total, layers=sizes["layers"], hidden=sizes["hidden_size"],
        heads=sizes["heads"], kv_heads=sizes["kv_heads"], intermediate=sizes["intermediate_size"], vocab=vocab,
        context=sizes["context_length"], batch=batch_size, seq_len=seq_len or sizes["context_length"],
        weight_bytes_per_param=4.0, weight_format="fp32", tied_embeddings=config.tie_embeddings, device=device,
        method="scratch", gradient_checkpointing=gradient_checkpointing, source=f"scratch ({config.preset})",
        notes=notes,
    )


def new_model(config: ScratchModelConfig, *, tokenizer: Any, context_length: int, device: DeviceInfo,
              batch_size: int = 8, seq_len: int | None = None, gradient_checkpointing: bool = False) -> LoadedModel:
    """Build the model: card first, then a seeded fp32 init on the CPU, then moved to the device.

    The initialisation runs on the CPU under a private RNG seeded with
    `config.seed`, so the same settings give bitwise the same starting weights
    on every machine and the global random state is left untouched.
    """
    import torch
    from transformers import LlamaForCausalLM

    vocab, bos, eos, pad = _tokenizer_ids(tokenizer)
    sizes = resolve_sizes(config, context_length=context_length)
    card = _card(config, sizes, vocab=vocab, batch_size=batch_size, seq_len=seq_len, device=device,
                 gradient_checkpointing=gradient_checkpointing)
    llama_config = scratch_llama_config(config, vocab_size=vocab, context_length=context_length, bos_id=bos,
                                        eos_id=eos, pad_id=pad)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        model = LlamaForCausalLM(llama_config)
    model = model.to(device=device.torch_device, dtype=torch.float32)
    if gradient_checkpointing:
        enable_checkpointing(model)
    model.train()
    settings = {
        "kind": "scratch",
        "config": config.to_dict(),
        "sizes": sizes,
        "context_length": context_length,
        "vocab_size": vocab,
        "batch_size": batch_size,
        "seq_len": seq_len,
        "gradient_checkpointing": gradient_checkpointing,
    }
    return LoadedModel(model=model, tokenizer=None, method="scratch", source=f"scratch ({config.preset})",
                       device=device, card=card, settings=settings)
