"""A pretrained causal LM prepared for fine-tuning: the fine-tune path.

Where the model comes from:

* ``"default"``: the embedded SmolLM2-135M-Instruct (see `nbtune.models.default`);
* a local folder with ``config.json``, tokenizer files and weights;
* a hub id (``"HuggingFaceTB/SmolLM2-360M-Instruct"``), through the local
  Hugging Face cache when the hub is unreachable or ``HF_HUB_OFFLINE=1``.

Safety: weights are read from safetensors (``use_safetensors=True``). A
folder or repository that only has pickle files (.bin/.pt) is refused unless
``allow_pickle=True``, because unpickling can run arbitrary code (transformers
5 also loads them with ``weights_only=True``, which blocks most but not every
attack). ``trust_remote_code`` stays off unless the user turns it on.

How it is trained (``method``), and in which precision:

* ``full``: every weight trains. Master weights stay fp32 on every device; the
  engine runs the forward pass under autocast (bf16/fp16 on GPUs), so
  updates smaller than bf16's resolution are not lost.
* ``lora``: peft LoRA adapters (fp32) on a frozen base. On a GPU the frozen
  base is stored in the device's half precision (bf16/fp16) to halve its
  memory; on CPU and MPS everything is fp32.
* ``qlora``: LoRA on a base whose linear layers are stored as 4-bit NF4 with
  double quantisation (bitsandbytes). Compute dtype: the GPU's bf16/fp16; fp32
  on CPU, where bf16 compute was not faster in our measurements (~2-3 s per
  step either way for SmolLM2-135M on 2 AVX512-BF16 cores) and is much slower
  on CPUs without AVX512-BF16. `prepare_model_for_kbit_training` then casts
  the remaining half-precision parameters (embeddings, norms, head) to fp32,
  as the QLoRA recipe does for stability: a little more memory, and the
  engine must not cast the model to half precision afterwards.
* ``lora-8bit``: the same on int8 weights (LLM.int8(), bitsandbytes).

CPU trap: on CPUs with AVX512-BF16, bitsandbytes 0.50 repacks a 4-bit layer's
weights into an inference-only layout the first time it runs a forward pass
in eval() mode without gradients (generate, evaluation). From then on LoRA
gradients are silently wrong or None. `use_model` turns that path off on every
4-bit layer (`support_avx512bf16_for_cpu = False`); the tests check gradients
stay equal before and after `generate`.
"""

from __future__ import annotations

import logging
import os
import socket
import warnings
from contextlib import contextmanager
from functools import lru_cache
from math import prod
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from nbtune.config import PretrainedModelConfig
from nbtune.device import DeviceInfo
from nbtune.errors import ConfigError
from nbtune.models.base import LoadedModel, _quiet_progress_bars, enable_checkpointing, pickle_files
from nbtune.models.card import LORA_METHODS, ModelCard, estimate_card

QUANTIZED_METHODS = ("qlora", "lora-8bit")
HUB_CONNECT_TIMEOUT = 3.0  # seconds; an unreachable hub otherwise costs ~25 s of retries


# --- bitsandbytes --------------------------------------------------------------------------------------------------


@contextmanager
def _quiet_logger(name: str, level: int = logging.ERROR):
    logger = logging.getLogger(name)
    old = logger.level
    logger.setLevel(level)
    try:
        yield
    finally:
        logger.setLevel(old)


class _DropMessage(logging.Filter):
    """Drops one chatty bitsandbytes log line (logged on every 8-bit matmul)."""

    def __init__(self, prefix: str) -> None:
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.prefix)


@lru_cache(maxsize=8)
def _import_bitsandbytes() -> tuple[Any, str]:
    """(module or None, why not). The CPU backend logs a harmless warning about an optional kernel; hidden."""
    try:
        with _quiet_logger("bitsandbytes"), _quiet_logger("bitsandbytes.backends.cpu.ops"):
            import bitsandbytes
    except Exception as exc:  # ImportError, or a broken native library (OSError, RuntimeError)
        return None, f"bitsandbytes cannot be imported ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})"
    return bitsandbytes, ""


@lru_cache(maxsize=8)
def bnb_usable(device: DeviceInfo) -> tuple[bool, str]:
    """Whether bitsandbytes 4-bit/8-bit layers can train on this device, and why not."""
    if device.type == "mps":
        return False, ("bitsandbytes' Apple-GPU (MPS) backend is a new pure-PyTorch fallback that nbtune does not "
                       "support yet")
    module, why = _import_bitsandbytes()
    if module is None:
        return False, why
    supported = getattr(module, "supported_torch_devices", {"cuda"})
    if device.type not in supported:
        return False, f"bitsandbytes {module.__version__} has no {device.type} backend"
    import importlib.util

    if importlib.util.find_spec("accelerate") is None:
        return False, "transformers needs the accelerate package to load 4-bit/8-bit models"
    return True, f"bitsandbytes {module.__version__} ({device.type} backend)"


def _require_bnb(method: str, device: DeviceInfo) -> None:
    usable, why = bnb_usable(device)
    if not usable:
        raise ConfigError(f"method={method!r} needs bitsandbytes, which cannot run here: {why}", column="method",
                          fix="use method='lora' (adapters on a full-precision base) or method='full'")


def fix_bnb_cpu_repacking(model: Any) -> int:
    """Turn off bitsandbytes' AVX512-BF16 inference repacking on every 4-bit layer; return how many.

    On such CPUs, the first forward pass in eval() mode on an input without
    gradients (generate, evaluation) rewrites the packed weights in place into a layout only the inference
    kernel understands; training afterwards gives wrong or missing LoRA
    gradients with nothing but a warning. Without the fast path every call
    uses the ordinary dequantise-and-matmul kernel, for training and inference.
    """
    module, _ = _import_bitsandbytes()
    if module is None:
        return 0
    count = 0
    for layer in model.modules():
        if isinstance(layer, module.nn.Linear4bit):
            layer.support_avx512bf16_for_cpu = False
            count += 1
    return count


def _quantization_config(method: str, device: DeviceInfo) -> Any:
    import torch
    from transformers import BitsAndBytesConfig

    if method == "lora-8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    compute = device.autocast_dtype if device.type == "cuda" and device.autocast_dtype else torch.float32
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=compute)


# --- where the model comes from ------------------------------------------------------------------------------------


def _looks_like_path(name: str) -> bool:
    return name.startswith((".", "/", "~")) or os.sep in name.replace("/", "") or name.count("/") > 1 or \
        Path(name).expanduser().exists()


def resolve_source(config: PretrainedModelConfig) -> tuple[str, Path | None]:
    """(name to load, local folder or None for a hub id)."""
    name = config.model.strip()
    if name == "default":
        from nbtune.models.default import default_model_folder

        folder = default_model_folder()
        return str(folder), folder
    if _looks_like_path(name):
        folder = Path(name).expanduser().resolve()
        if not folder.is_dir():
            raise ConfigError(f"no model folder at {folder}", column="model",
                              fix="check the path, or pass a hub id such as 'HuggingFaceTB/SmolLM2-135M-Instruct', "
                                  "or 'default' for the embedded model")
        return str(folder), folder
    return name, None


def check_local_folder(folder: Path, *, allow_pickle: bool) -> bool:
    """Check a model folder; return `use_safetensors` for from_pretrained."""
    if not (folder / "config.json").is_file():
        hint = ("this looks like a LoRA adapter: pass its base model as model=... and load the adapter with "
                "load_trainable_state()" if (folder / "adapter_config.json").is_file() else
                "pass the folder that save_pretrained() wrote (config.json, weights, tokenizer files)")
        raise ConfigError("this folder has no config.json, so it is not a transformers model folder", path=folder,
                          column="model", fix=hint)
    if any(folder.glob("*.safetensors")):
        return True
    pickles = pickle_files(folder)
    if not pickles:
        raise ConfigError("this folder has no model weights (*.safetensors)", path=folder, column="model",
                          fix="pass the folder that save_pretrained() wrote")
    if not allow_pickle:
        raise _pickle_refused(str(folder), pickles)
    return False


def _pickle_refused(where: str, files: list[str] | None = None) -> ConfigError:
    names = f" ({', '.join(files[:3])})" if files else ""
    return ConfigError(
        f"the model's weights exist only as pickle files{names}; loading a pickle can run arbitrary code hidden "
        "in the file",
        path=where, column="allow_pickle",
        fix="prefer a copy in safetensors format; if you trust the source, pass allow_pickle=True",
    )


def _hub_offline() -> bool:
    try:
        from huggingface_hub import constants

        return bool(constants.HF_HUB_OFFLINE)
    except Exception:  # pragma: no cover
        return os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")


def _hub_reachable() -> bool:
    """A quick TCP connect to the hub endpoint (so an unplugged machine fails in seconds, not ~25 s)."""
    try:
        from huggingface_hub import constants

        endpoint = constants.ENDPOINT
    except Exception:  # pragma: no cover
        endpoint = "https://huggingface.co"
    parsed = urlparse(endpoint)
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        with socket.create_connection((parsed.hostname or "huggingface.co", port), timeout=HUB_CONNECT_TIMEOUT):
            return True
    except OSError:
        return False


def _cached_locally(model_id: str, trust_remote_code: bool) -> bool:
    from transformers import AutoConfig

    try:
        AutoConfig.from_pretrained(model_id, local_files_only=True, trust_remote_code=trust_remote_code)
    except Exception:
        return False
    return True


def _hub_plan(model_id: str, config: PretrainedModelConfig) -> bool:
    """Return `local_files_only` for a hub id, or fail fast when it can be neither found nor fetched."""
    if _cached_locally(model_id, config.trust_remote_code):
        return _hub_offline() or not _hub_reachable()
    if _hub_offline():
        why = "HF_HUB_OFFLINE is set and it is not in the local Hugging Face cache"
    elif not _hub_reachable():
        why = "the Hugging Face hub cannot be reached from this machine and it is not in the local cache"
    else:
        return False
    raise ConfigError(
        f"the model {model_id!r} could not be fetched: {why}", column="model",
        fix="download it on a machine with internet access (e.g. `hf download "
            f"{model_id} --local-dir ./my-model`) and pass that folder, or use model='default' (embedded, works "
            "offline)",
    )


def _friendly(exc: Exception, source: str, what: str) -> ConfigError:
    """Turn a loading error from transformers into an actionable ConfigError."""
    text = str(exc)
    first = text.strip().splitlines()[0][:300] if text.strip() else type(exc).__name__
    if "trust_remote_code" in text:
        return ConfigError(f"{what} {source!r} needs to run its own Python code", column="trust_remote_code",
                           fix="only if you trust its authors, pass trust_remote_code=True")
    if "safetensors" in text and ("does not appear to have" in text or "cannot be loaded" in text):
        return _pickle_refused(source)
    if "couldn't connect" in text.lower() or "offline" in text.lower():
        return ConfigError(f"{what} {source!r} could not be fetched: {first}", column="model",
                           fix="check the hub id and your connection, or download the model and pass its folder")
    return ConfigError(f"could not load {what} {source!r}: {type(exc).__name__}: {first}", column="model",
                       fix="check the name or folder (config.json, weights and tokenizer files must be there)")


# --- loading --------------------------------------------------------------------------------------------------------


def _load_tokenizer(source: str, *, trust_remote_code: bool, local_only: bool) -> Any:
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code,
                                                  local_files_only=local_only)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise _friendly(exc, source, "the tokenizer of") from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _base_dtype(method: str, device: DeviceInfo) -> Any:
    """dtype of the weights that are not quantised (see the module docstring)."""
    import torch

    if method == "lora" and device.type == "cuda" and device.autocast_dtype is not None:
        return device.autocast_dtype
    return torch.float32


def _current_cuda() -> int:
    import torch

    return torch.cuda.current_device()


def _load_model(source: str, *, config: PretrainedModelConfig, device: DeviceInfo, use_safetensors: bool | None,
                local_only: bool) -> Any:
    from transformers import AutoModelForCausalLM

    kwargs: dict[str, Any] = {
        "dtype": _base_dtype(config.method, device),
        "trust_remote_code": config.trust_remote_code,
        "use_safetensors": use_safetensors,
        "local_files_only": local_only,
    }
    if config.method in QUANTIZED_METHODS:
        kwargs["quantization_config"] = _quantization_config(config.method, device)
        # the current GPU: 0 in one process, this process's own GPU under torchrun / accelerate launch
        kwargs["device_map"] = {"": _current_cuda() if device.type == "cuda" else device.type}
    try:
        with _quiet_logger("bitsandbytes.backends.cpu.ops"):
            model = AutoModelForCausalLM.from_pretrained(source, **kwargs)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise _friendly(exc, source, "the model") from None
    if config.method not in QUANTIZED_METHODS:
        model = model.to(device.torch_device)
    return model


def _target_modules(config: PretrainedModelConfig) -> str | list[str]:
    text = config.target_modules.strip()
    if text == "all-linear":
        return text
    names = [part.strip() for part in text.split(",") if part.strip()]
    if not names:
        raise ConfigError("target_modules is empty", column="target_modules",
                          fix="use 'all-linear' or names such as 'q_proj,v_proj'")
    return names


def _linear_names(model: Any) -> list[str]:
    import torch

    names = {name.rsplit(".", 1)[-1] for name, module in model.named_modules()
             if isinstance(module, torch.nn.Linear) and name}
    return sorted(names)


def _apply_lora(model: Any, config: PretrainedModelConfig, seed: int | None) -> Any:
    """Add LoRA adapters (fp32). With a seed, their random init is reproducible and the global RNG untouched."""
    _import_bitsandbytes()  # peft imports it if installed; do it first, without the CPU backend's log noise
    import torch
    from peft import LoraConfig, get_peft_model

    lora = LoraConfig(r=config.lora_rank, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                      target_modules=_target_modules(config), task_type="CAUSAL_LM", bias="none")
    try:
        with warnings.catch_warnings(), torch.random.fork_rng(enabled=seed is not None):
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
            if seed is not None:
                torch.manual_seed(seed)
            return get_peft_model(model, lora)
    except ValueError as exc:
        if "not found" in str(exc) or "target" in str(exc).lower():
            raise ConfigError(f"target_modules={config.target_modules!r} matches no layer of this model",
                              column="target_modules",
                              fix=f"use 'all-linear' or some of: {', '.join(_linear_names(model))}") from None
        raise


def _prepare(model: Any, *, method: str, gradient_checkpointing: bool) -> Any:
    """Freeze/unfreeze, k-bit preparation and gradient checkpointing, before adapters are added."""
    ckpt_kwargs = {"use_reentrant": False}
    if method in QUANTIZED_METHODS:
        from peft import prepare_model_for_kbit_training

        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=FutureWarning)
            model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=gradient_checkpointing,
                                                    gradient_checkpointing_kwargs=ckpt_kwargs)
    elif gradient_checkpointing:
        enable_checkpointing(model)
    if gradient_checkpointing:
        model.config.use_cache = False
    if method == "full":
        for param in model.parameters():
            param.requires_grad_(True)
    return model


def _check_vocab(model: Any, tokenizer: Any, source: str) -> None:
    rows = model.get_input_embeddings().weight.shape[0]
    if len(tokenizer) > rows:
        raise ConfigError(f"the tokenizer has {len(tokenizer):,} tokens but the model's embedding only {rows:,}",
                          path=source, column="model",
                          fix="use the tokenizer that belongs to this model (same folder / hub id)")


# --- the card -------------------------------------------------------------------------------------------------------


def _logical_numel(param: Any) -> int:
    """Parameter count as the unquantised model has it (a packed 4-bit tensor holds two weights per byte)."""
    state = getattr(param, "quant_state", None)
    if state is not None and getattr(state, "shape", None) is not None:
        return int(prod(state.shape))
    return int(param.numel())


def _stored_bytes(param: Any) -> int:
    total = param.numel() * param.element_size()
    state = getattr(param, "quant_state", None)
    if state is not None:
        for tensor in (getattr(state, "absmax", None), getattr(getattr(state, "state2", None), "absmax", None)):
            if tensor is not None:
                total += tensor.numel() * tensor.element_size()
    scales = getattr(param, "SCB", None)
    if scales is not None:
        total += scales.numel() * scales.element_size()
    return int(total)


def _weight_format(method: str, dtype: Any) -> str:
    name = str(dtype).replace("torch.", "").replace("float32", "fp32").replace("bfloat16", "bf16")
    name = name.replace("float16", "fp16")
    return {"qlora": f"nf4 + {name}", "lora-8bit": f"int8 + {name}"}.get(method, name)


def _text_config(model: Any) -> Any:
    config = model.config
    return config.get_text_config() if hasattr(config, "get_text_config") else config


def pretrained_card(model: Any, *, config: PretrainedModelConfig, source: str, device: DeviceInfo, batch_size: int,
                    seq_len: int, gradient_checkpointing: bool, notes: list[str] | None = None) -> ModelCard:
    """The card of a loaded (and, for LoRA, adapted) model: measured counts and bytes."""
    params = list(model.parameters())
    unique = {id(p): p for p in params}.values()
    text = _text_config(model)
    hidden = int(text.hidden_size)
    heads = int(getattr(text, "num_attention_heads", 1))
    base_dtype = _base_dtype(config.method, device)
    return estimate_card(
        params_total=sum(_logical_numel(p) for p in unique),
        params_trainable=sum(p.numel() for p in unique if p.requires_grad),
        layers=int(text.num_hidden_layers), hidden=hidden, heads=heads,
        kv_heads=int(getattr(text, "num_key_value_heads", None) or heads),
        intermediate=int(getattr(text, "intermediate_size", 0) or 0) or None,
        vocab=int(text.vocab_size), context=int(getattr(text, "max_position_embeddings", 0) or seq_len),
        batch=batch_size, seq_len=seq_len, device=device, method=config.method,
        weight_bytes=sum(_stored_bytes(p) for p in unique)
        + sum(b.numel() * b.element_size() for b in model.buffers()),
        weight_format=_weight_format(config.method, base_dtype),
        tied_embeddings=bool(getattr(text, "tie_word_embeddings", False)),
        gradient_checkpointing=gradient_checkpointing, source=source, notes=notes,
    )


def _adapted(name: str, module: Any, targets: str | list[str], output_layer: Any) -> bool:
    """Whether peft would put an adapter on this linear layer (same matching rule: suffix after a dot)."""
    if targets == "all-linear":
        return module is not output_layer
    return any(name == t or name.endswith("." + t) for t in targets)


def _planned_bytes(numel: int, rows: int, method: str, base_bytes: int) -> float:
    """Stored bytes of one linear weight: NF4 (+ double-quantised block scales), int8 (+ fp32 row scales) or float."""
    if method == "qlora":
        return numel * (0.5 + 1 / 64 + 4 / (64 * 256))
    if method == "lora-8bit":
        return numel + 4 * rows
    return numel * base_bytes


def plan_pretrained(config: PretrainedModelConfig, *, device: DeviceInfo, batch_size: int = 8, seq_len: int = 512,
                    gradient_checkpointing: bool = False) -> ModelCard:
    """The card before loading: the model's config is read and built on the meta device (no weights, no memory).

    Counts match the loaded model's card exactly; weight bytes of 4-bit/8-bit
    layers are computed from the bitsandbytes formats (within a few percent).
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config.validate()
    if config.method in QUANTIZED_METHODS:
        _require_bnb(config.method, device)
    source, folder = resolve_source(config)
    if folder is not None:
        check_local_folder(folder, allow_pickle=config.allow_pickle)
        local_only = True
    else:
        local_only = _hub_plan(source, config)
    try:
        model_config = AutoConfig.from_pretrained(source, trust_remote_code=config.trust_remote_code,
                                                  local_files_only=local_only)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise _friendly(exc, source, "the model") from None
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(model_config, trust_remote_code=config.trust_remote_code)
    base_bytes = torch.tensor([], dtype=_base_dtype(config.method, device)).element_size()
    quantized = config.method in QUANTIZED_METHODS
    targets = _target_modules(config) if config.method in LORA_METHODS else []
    output_layer = model.get_output_embeddings()
    linear_ids, adapters, weight_bytes = set(), 0, 0.0
    for name, module in model.named_modules():
        if not isinstance(module, torch.nn.Linear) or module is output_layer:
            continue
        linear_ids.add(id(module.weight))
        rows, cols = module.weight.shape
        weight_bytes += _planned_bytes(module.weight.numel(), rows, config.method if quantized else "", base_bytes)
        if targets and _adapted(name, module, targets, output_layer):
            adapters += config.lora_rank * (rows + cols)
    unique = {id(p): p for p in model.parameters()}
    total = sum(p.numel() for p in unique.values())
    weight_bytes += sum(p.numel() * base_bytes for key, p in unique.items() if key not in linear_ids)
    weight_bytes += 4 * adapters
    text = _text_config(model)
    heads = int(getattr(text, "num_attention_heads", 1))
    display = "default (SmolLM2-135M-Instruct)" if config.model.strip() == "default" else source
    return estimate_card(
        params_total=total + adapters, params_trainable=total if config.method == "full" else adapters,
        layers=int(text.num_hidden_layers), hidden=int(text.hidden_size), heads=heads,
        kv_heads=int(getattr(text, "num_key_value_heads", None) or heads),
        intermediate=int(getattr(text, "intermediate_size", 0) or 0) or None, vocab=int(text.vocab_size),
        context=int(getattr(text, "max_position_embeddings", 0) or seq_len), batch=batch_size, seq_len=seq_len,
        device=device, method=config.method, weight_bytes=int(weight_bytes),
        weight_format=_weight_format(config.method, _base_dtype(config.method, device)),
        tied_embeddings=bool(getattr(text, "tie_word_embeddings", False)),
        gradient_checkpointing=gradient_checkpointing, source=display,
    )


# --- the entry point ------------------------------------------------------------------------------------------------


def use_model(config: PretrainedModelConfig, *, device: DeviceInfo, batch_size: int = 8, seq_len: int = 512,
              gradient_checkpointing: bool = False, seed: int | None = 0) -> LoadedModel:
    """Load a pretrained model and tokenizer and make them ready to fine-tune with `config.method`.

    `batch_size` and `seq_len` only size the memory estimate on the card.
    `seed` seeds the LoRA adapters' random init (None: use the global RNG).
    """
    config.validate()
    if config.method in QUANTIZED_METHODS:
        _require_bnb(config.method, device)
        logging.getLogger("bitsandbytes.autograd._functions").addFilter(_DropMessage("MatMul8bitLt: inputs"))
    _quiet_progress_bars()
    source, folder = resolve_source(config)
    if folder is not None:
        use_safetensors: bool | None = check_local_folder(folder, allow_pickle=config.allow_pickle)
        local_only = True
    else:
        local_only = _hub_plan(source, config)
        use_safetensors = None if config.allow_pickle else True
    tokenizer = _load_tokenizer(source, trust_remote_code=config.trust_remote_code, local_only=local_only)
    model = _load_model(source, config=config, device=device, use_safetensors=use_safetensors,
                        local_only=local_only)
    _check_vocab(model, tokenizer, source)
    notes = []
    repacked = fix_bnb_cpu_repacking(model) if config.method == "qlora" else 0
    if repacked and device.type == "cpu":
        notes.append(f"bitsandbytes' AVX512-BF16 inference repacking turned off on {repacked} 4-bit layers "
                     "(it corrupts LoRA gradients after generate/evaluation on CPU).")
    model = _prepare(model, method=config.method, gradient_checkpointing=gradient_checkpointing)
    if config.method in LORA_METHODS:
        model = _apply_lora(model, config, seed)
    model.train()
    display = "default (SmolLM2-135M-Instruct)" if config.model.strip() == "default" else source
    card = pretrained_card(model, config=config, source=display, device=device, batch_size=batch_size,
                           seq_len=seq_len, gradient_checkpointing=gradient_checkpointing, notes=notes)
    settings = {
        "kind": "pretrained",
        "config": config.to_dict(),
        "resolved_source": source,
        "batch_size": batch_size,
        "seq_len": seq_len,
        "gradient_checkpointing": gradient_checkpointing,
        "seed": seed,
        "base_dtype": str(_base_dtype(config.method, device)).replace("torch.", ""),
    }
    return LoadedModel(model=model, tokenizer=tokenizer, method=config.method, source=display, device=device,
                       card=card, settings=settings)
