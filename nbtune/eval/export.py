"""Export a trained model as a folder that plain transformers / peft can load, then check it really loads.

    report = export_model(session.model, "exports/my-model")               # LoRA: the adapter
    report = export_model(session.model, "exports/my-model", merge=True)   # LoRA folded into a full model

What is written (always safetensors, never pickle, atomically: a crash
leaves the previous export untouched):

* a full or scratch model: the whole model (``model.safetensors`` +
  ``config.json``), loadable with ``AutoModelForCausalLM.from_pretrained``;
* a LoRA model (``lora``, ``qlora``, ``lora-8bit``), by default: the adapter
  (``adapter_model.safetensors`` + ``adapter_config.json``), loadable with
  ``PeftModel.from_pretrained`` on its base model;
* with ``merge=True``: one full model with the adapter folded in. The merge
  never touches the model being trained (it works on a copy). For a base that
  was trained in 4-bit or 8-bit, the adapter is *not* folded into the
  quantised weights (that would round the base weights to 4/8 bits for good):
  the base is loaded again from its source in full precision (fp32 on CPU,
  bf16 on a GPU) and the adapter is merged into that;
* the tokenizer, with its chat template (or the one passed as
  ``chat_template=``), and ``nbtune_export.json`` (what this folder is).

Then the smoke test: the written folder is loaded back the way a user would
(an adapter on a freshly loaded base), and a short greedy generation from
``smoke_prompt`` (through the chat template when there is one) goes into the
report, so a broken export shows at once and not in production.

``format="gguf"`` writes the same folder (a LoRA model merged), then converts
it with llama.cpp's own converter into ``model-<quantization>.gguf`` next to
an Ollama ``Modelfile``, reads the GGUF metadata back and checks parity with
the safetensors files (see `nbtune.eval.gguf`).
"""

from __future__ import annotations

import copy
import datetime as _dt
import gc
import json
import shutil
import time
import warnings
from pathlib import Path
from typing import Any

from nbtune.errors import ConfigError
from nbtune.eval import gguf as _gguf
from nbtune.models.base import PICKLE_SUFFIXES, _quiet_progress_bars
from nbtune.storage import atomic_replace_dir
from nbtune.viz.compare_report import ExportReport

EXPORT_FILE = "nbtune_export.json"


# --- where to write -------------------------------------------------------------------------------------------------


def _source_folder(lm: Any) -> Path | None:
    source = (lm.settings or {}).get("resolved_source")
    if not source:
        return None
    path = Path(str(source)).expanduser()
    return path.resolve() if path.is_dir() else None


def _check_target(directory: str | Path, lm: Any) -> Path:
    """The export folder; refuse to replace a folder that nbtune did not write (it is replaced as a whole)."""
    target = Path(directory).expanduser().resolve()
    if target.exists() and not target.is_dir():
        raise ConfigError("the export target is a file, not a folder", path=target, column="directory",
                          fix="pass a folder name (it is created)")
    source = _source_folder(lm)
    if source is not None and (target == source or target in source.parents):
        raise ConfigError("the export would replace the folder of the base model itself", path=target,
                          column="directory", fix="export into a new folder")
    if target.is_dir() and any(target.iterdir()) and not (target / EXPORT_FILE).is_file():
        raise ConfigError("this folder already holds files that nbtune did not export; an export replaces the "
                          "whole folder, so nbtune will not write here", path=target, column="directory",
                          fix="pick a new folder name, or empty or delete this folder yourself first")
    return target


_EXPORT_SUFFIXES = {".safetensors", ".json", ".jinja", ".model"}  # what exports wrote before they listed their files


def _user_files(target: Path) -> list[str]:
    """Files in an earlier export folder that the export did not write (relative, posix): the user's to keep.

    Exports list the files they wrote in export.json; for an older export
    without that list, model, tokenizer and config files (by suffix) count as
    the export's and everything else as the user's.
    """
    record_path = target / EXPORT_FILE
    if not record_path.is_file():
        return []
    try:
        record = json.loads(record_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        record = {}
    written = set(record.get("files") or []) if isinstance(record, dict) else set()
    have = sorted(p.relative_to(target).as_posix() for p in target.rglob("*") if p.is_file() or p.is_symlink())
    if written:
        return [f for f in have if f not in written and f != EXPORT_FILE]
    return [f for f in have if Path(f).suffix not in _EXPORT_SUFFIXES and f != "merges.txt"]


def _keep_user_files(source: Path, tmp: Path, names: list[str]) -> None:
    """Copy the user's files from the old export into the new one; a name the export now writes is refused."""
    clash = [name for name in names if (tmp / name).exists()]
    if clash:
        raise ConfigError(f"the export folder holds files you added whose names the export writes itself: "
                          f"{', '.join(clash)}", path=source, column="directory",
                          fix="move or rename these files, or export into a new folder")
    for name in names:
        (tmp / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source / name, tmp / name, follow_symlinks=False)


# --- tokenizer ------------------------------------------------------------------------------------------------------


def _export_tokenizer(tokenizer: Any, chat_template: str | None) -> Any:
    """A copy of the tokenizer with the chat template to write (the caller's tokenizer is never changed)."""
    out = copy.deepcopy(tokenizer)
    if chat_template is not None:
        out.chat_template = chat_template
    if getattr(out, "chat_template", None):
        try:
            out.apply_chat_template([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}],
                                    tokenize=False)
        except Exception as exc:  # jinja2 errors, missing variables
            raise ConfigError(f"the chat template does not render: {type(exc).__name__}: {exc}",
                              column="chat_template",
                              fix="fix the Jinja template, or pass chat_template=None to keep the tokenizer's own"
                              ) from None
    return out


def _prompt_ids(tokenizer: Any, prompt: str, use_chat_template: bool | None = None) -> tuple[list[int], str]:
    """Token ids of a prompt: through the chat template (None: when the tokenizer has one), or as plain text."""
    if use_chat_template is None:
        use_chat_template = bool(getattr(tokenizer, "chat_template", None))
    if use_chat_template:
        text = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                             add_generation_prompt=True)
    else:
        text = prompt
    return tokenizer(text, add_special_tokens=False)["input_ids"], text


# --- models ---------------------------------------------------------------------------------------------------------


def _pretrained_config(lm: Any) -> Any:
    from nbtune.config import PretrainedModelConfig

    settings = lm.settings or {}
    if settings.get("kind") != "pretrained":
        raise ConfigError(f"a {lm.method} model has no pretrained base to load again", column="merge")
    config = PretrainedModelConfig.from_dict(settings.get("config", {}))
    source = settings.get("resolved_source")
    return config.replace(model=str(source)) if source else config


def _load_base(lm: Any, *, as_trained: bool) -> Any:
    """Load the LoRA model's base again from its source: as trained (4/8-bit or half precision), or in full precision."""
    import torch
    from transformers import AutoModelForCausalLM

    from nbtune.models import pretrained as pt

    config = _pretrained_config(lm)
    source, folder = pt.resolve_source(config)
    if folder is not None:
        use_safetensors: bool | None = pt.check_local_folder(folder, allow_pickle=config.allow_pickle)
        local_only = True
    else:
        local_only = pt._hub_plan(source, config)
        use_safetensors = None if config.allow_pickle else True
    if as_trained:
        return pt._load_model(source, config=config, device=lm.device, use_safetensors=use_safetensors,
                              local_only=local_only)
    dtype = torch.bfloat16 if lm.device.type == "cuda" else torch.float32
    try:
        model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype, trust_remote_code=config.trust_remote_code,
                                                     use_safetensors=use_safetensors, local_files_only=local_only)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise pt._friendly(exc, source, "the base model") from None
    return model.to(lm.device.torch_device)


def _full_precision_base(lm: Any) -> Any:
    try:
        return _load_base(lm, as_trained=False)
    except ConfigError as exc:
        source = (lm.settings or {}).get("resolved_source") or lm.source
        raise ConfigError(
            f"merging a {lm.method} adapter needs its base model {source!r} again, in full precision (folding the "
            f"adapter into the {'4' if lm.method == 'qlora' else '8'}-bit weights would round them), and it could "
            f"not be loaded: {exc.what}", column="merge",
            fix="make the base model available again (the same folder, or the hub id in the local Hugging Face "
                "cache), or export the adapter with merge=False and merge it later where the base model is") from None


def _adapter_on(base: Any, live: Any) -> Any:
    """A LoRA wrapper of `base` with exactly the live model's adapter weights (no random init, no RNG use)."""
    from peft import get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict

    name = getattr(live, "active_adapter", "default")
    config = copy.deepcopy(live.peft_config[name])
    config.inference_mode = True
    state = get_peft_model_state_dict(live, adapter_name=name, save_embedding_layers=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        wrapped = get_peft_model(base, config, low_cpu_mem_usage=True)
        result = set_peft_model_state_dict(wrapped, state, low_cpu_mem_usage=True)
    unexpected = list(getattr(result, "unexpected_keys", []) or [])
    meta = [n for n, p in wrapped.named_parameters() if p.device.type == "meta"]
    if unexpected or meta:  # pragma: no cover - the same peft config on the same architecture
        raise RuntimeError(f"the adapter did not fit the reloaded base: unexpected {unexpected[:3]}, "
                           f"not loaded {meta[:3]}")
    return wrapped


def _merged_model(lm: Any) -> Any:
    """A plain transformers model with the adapter folded in; the live model is left exactly as it was."""
    from nbtune.models.pretrained import QUANTIZED_METHODS

    if lm.method in QUANTIZED_METHODS:
        wrapped = _adapter_on(_full_precision_base(lm), lm.model)
    else:  # a float base: merge into a copy of the live model (the very same base weights, no reload)
        wrapped = copy.deepcopy(lm.model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        merged = wrapped.merge_and_unload()
    merged.eval()
    return merged


def _save_model(model: Any, folder: Path, *, adapter: bool) -> None:
    if adapter:
        model.save_pretrained(str(folder), safe_serialization=True, save_embedding_layers=False)
        return
    model.save_pretrained(str(folder))
    config_path = folder / "config.json"
    if config_path.is_file():  # training with gradient checkpointing turns the KV cache off; users want it on
        config = json.loads(config_path.read_text(encoding="utf-8"))
        if config.get("use_cache") is False:
            config["use_cache"] = True
            config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def _free(device_type: str) -> None:
    gc.collect()
    import torch

    if device_type == "cuda" and torch.cuda.is_available():
        torch.cuda.empty_cache()


# --- smoke test -----------------------------------------------------------------------------------------------------


def load_export(folder: str | Path, *, device: Any = None, base: Any = None) -> tuple[Any, Any]:
    """(model, tokenizer) from an export folder; an adapter folder needs `base` (a freshly loaded base model)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = Path(folder)
    tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    if (folder / "adapter_config.json").is_file():
        from peft import PeftModel

        if base is None:
            raise ConfigError("an adapter folder needs its base model", path=folder, column="base",
                              fix="pass base=AutoModelForCausalLM.from_pretrained(<the base model>)")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            model = PeftModel.from_pretrained(base, str(folder))
    else:
        kind = getattr(device, "type", "cpu")
        model = AutoModelForCausalLM.from_pretrained(str(folder), dtype="auto" if kind == "cuda" else torch.float32,
                                                     use_safetensors=True, local_files_only=True)
        if device is not None:
            model = model.to(device.torch_device)
    model.eval()
    return model, tokenizer


def generate_text(model: Any, tokenizer: Any, prompt: str, *, max_new_tokens: int,
                  use_chat_template: bool | None = None) -> tuple[str, str]:
    """(model input as text, greedy continuation without special tokens)."""
    import torch

    ids, text = _prompt_ids(tokenizer, prompt, use_chat_template)
    device = next(model.parameters()).device
    input_ids = torch.tensor([ids], dtype=torch.long, device=device)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = model.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids),
                             max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=pad)
    return text, tokenizer.decode(out[0, len(ids):].tolist(), skip_special_tokens=True)


def _smoke_test(lm: Any, folder: Path, kind: str, prompt: str, max_new_tokens: int,
                use_chat_template: bool | None) -> tuple[str, str]:
    base = _load_base(lm, as_trained=True) if kind == "adapter" else None
    model, tokenizer = load_export(folder, device=lm.device, base=base)
    try:
        return generate_text(model, tokenizer, prompt, max_new_tokens=max_new_tokens,
                             use_chat_template=use_chat_template)
    finally:
        del model, base
        _free(lm.device.type)


# --- the entry point ------------------------------------------------------------------------------------------------


def _umask() -> int | None:
    """The process umask, read without changing it (os.umask would, for a moment, for every thread)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return None


def _readable(folder: Path) -> None:
    """Give the export the permissions the user's umask asks for (temporary folders and files start private)."""
    umask = _umask()
    if umask is None:  # not Linux: leave the files private rather than guess
        return
    folder.chmod(0o777 & ~umask)
    for path in folder.rglob("*"):
        path.chmod((0o777 if path.is_dir() else 0o666) & ~umask)


def _files(folder: Path) -> list[tuple[str, int]]:
    return sorted((p.relative_to(folder).as_posix(), p.stat().st_size) for p in folder.rglob("*") if p.is_file())


FORMATS = ("safetensors", "gguf")


def _check_format(format: str, quantization: str | None) -> str | None:
    """The GGUF quantization to write (None: safetensors only); refuses what cannot be written before anything is."""
    if format not in FORMATS:
        raise ConfigError(f"format={format!r} is not one of {', '.join(FORMATS)}", column="format",
                          fix="use format='safetensors' (transformers / peft) or format='gguf' (llama.cpp, Ollama)")
    if format == "safetensors":
        if quantization is not None:
            raise ConfigError(f"quantization={quantization!r} applies to format='gguf' only", column="quantization",
                              fix="pass format='gguf', or leave quantization out")
        return None
    quantization = _gguf.check_quantization(quantization or "f16")
    _gguf.require_converter()
    return quantization


def _gguf_parity(result: Any, target: Path, tokenizer: Any, prompts: Any, max_new_tokens: int, chat: bool) -> None:
    prompts = list(_gguf.PARITY_PROMPTS if prompts is None else prompts)
    if not prompts:
        result.parity_skipped = "parity_prompts is empty"
        return
    encoded = [(prompt, *reversed(_prompt_ids(tokenizer, prompt, chat))) for prompt in prompts]
    try:
        _gguf.parity_check(result, target, tokenizer, encoded, max_new_tokens=max_new_tokens)
    except Exception as exc:  # the files are written; the report says that the check could not run, and why
        first = (str(exc).strip().splitlines() or [""])[0][:500]
        result.parity_error = f"{type(exc).__name__}: {first}"


def export_model(loaded_model: Any, directory: str | Path, *, merge: bool | None = None,
                 chat_template: str | None = None, tokenizer: Any = None, smoke_prompt: str | None = "Hello!",
                 max_new_tokens: int = 20, use_chat_template: bool | None = None, format: str = "safetensors",
                 quantization: str | None = None, parity_prompts: Any = None) -> ExportReport:
    """Write `loaded_model` (a `LoadedModel`) to `directory` for transformers / peft, then load it back and generate.

    merge: None exports LoRA models as their adapter and other models whole;
    True folds a LoRA adapter into a full model (see the module docstring).
    tokenizer: the tokenizer to write (default: the model's own; a scratch
    model needs the session's). chat_template: replaces the tokenizer's
    template in the export. smoke_prompt=None skips the smoke test.
    use_chat_template: whether the smoke prompt goes through the chat template
    (None: when the exported tokenizer has one; pass False for a model trained
    on plain text, whose tokenizer may still carry a template).
    format: "safetensors", or "gguf" for llama.cpp / Ollama (the safetensors
    folder, merged for LoRA, plus model-<quantization>.gguf and a Modelfile).
    quantization: with format="gguf", one of f16 (default), bf16, f32, q8_0.
    parity_prompts: prompts for the GGUF parity check (default: four short
    ones; () skips it).
    """
    started = time.perf_counter()
    lm = loaded_model
    if getattr(lm, "model", None) is None:
        raise ConfigError("this model was released", column="model", fix="load or build the model again, then export")
    tok = tokenizer if tokenizer is not None else lm.tokenizer
    if tok is None:
        raise ConfigError(f"a {lm.method} model has no tokenizer of its own to export with it", column="tokenizer",
                          fix="pass tokenizer=session.tokenizer (the tokenizer it was trained with)")
    if max_new_tokens < 1:
        raise ConfigError(f"max_new_tokens={max_new_tokens} is below the minimum 1", column="max_new_tokens",
                          fix="use 1 or more, or smoke_prompt=None to skip the smoke test")
    quantization = _check_format(format, quantization)
    notes: list[str] = []
    if lm.is_lora and quantization is not None:
        if merge is False:
            raise ConfigError("a GGUF file holds one whole model, and merge=False asks for the adapter alone",
                              column="merge", fix="leave merge out (GGUF export merges), or use format='safetensors'")
        merge = True
    if lm.is_lora:
        kind = "merged" if merge else "adapter"
    else:
        kind = "full"
        if merge is not None:
            notes.append(f"merge={merge} has no effect: a {lm.method} model has no adapter, so the whole model "
                         "was exported")
    target = _check_target(directory, lm)
    export_tok = _export_tokenizer(tok, chat_template)
    if use_chat_template and not getattr(export_tok, "chat_template", None):
        raise ConfigError("use_chat_template=True but the tokenizer has no chat template", column="chat_template",
                          fix="pass chat_template='...' (a Jinja template), or use_chat_template=False")
    base_name = ((lm.settings or {}).get("resolved_source") or lm.source) if lm.is_lora else None
    _quiet_progress_bars()
    merged = _merged_model(lm) if kind == "merged" else None
    if kind == "merged" and lm.method != "lora":
        notes.append(f"merged into the base reloaded in full precision from {base_name} (not into its "
                     f"{'4' if lm.method == 'qlora' else '8'}-bit training copy)")

    keep = _user_files(target)
    if keep:
        notes.append(f"kept {len(keep)} file(s) you added to the folder: {', '.join(keep[:10])}"
                     + (" ..." if len(keep) > 10 else ""))

    chat = bool(getattr(export_tok, "chat_template", None)) if use_chat_template is None else use_chat_template
    gguf_result = None

    def build(tmp: Path) -> None:
        nonlocal gguf_result
        _save_model(merged if merged is not None else lm.model, tmp, adapter=kind == "adapter")
        export_tok.save_pretrained(str(tmp))
        if quantization is not None:
            gguf_result = _gguf.write_gguf(tmp, quantization, tokenizer=export_tok, use_chat_template=chat,
                                           name=target.name)
        written = sorted(p.relative_to(tmp).as_posix() for p in tmp.rglob("*") if p.is_file())
        _keep_user_files(target, tmp, keep)  # a re-export replaces the folder: what the user added comes along
        (tmp / EXPORT_FILE).write_text(json.dumps({
            "kind": kind, "method": lm.method, "source": lm.source, "base": base_name,
            "format": format, "quantization": quantization,
            "chat_template": bool(getattr(export_tok, "chat_template", None)),
            "exported": _dt.datetime.now().isoformat(timespec="seconds"),
            "files": written,
        }, indent=2, default=str) + "\n", encoding="utf-8")
        _readable(tmp)
        pickles = [p.name for p in tmp.rglob("*") if p.suffix in PICKLE_SUFFIXES]
        if pickles:  # pragma: no cover - transformers 5 and peft write safetensors only
            raise RuntimeError(f"refusing to export pickle files: {pickles}")

    try:
        atomic_replace_dir(build, target)
    finally:
        merged = None  # the merged copy can be as large as the model: free it now
        _free(lm.device.type)
    written = time.perf_counter()
    report = ExportReport(folder=str(target), kind=kind, method=lm.method, base=base_name, files=_files(target),
                          chat_template=bool(getattr(export_tok, "chat_template", None)), smoke_prompt=smoke_prompt,
                          seconds=written - started, notes=notes, gguf=gguf_result)
    if smoke_prompt is not None:
        try:
            report.smoke_input, report.smoke_text = _smoke_test(
                lm, target, kind, smoke_prompt, max_new_tokens, use_chat_template)
        except Exception as exc:  # the files are written; the report says loudly that they do not work
            first = (str(exc).strip().splitlines() or [""])[0][:500]
            report.smoke_error = f"{type(exc).__name__}: {first}"
        report.smoke_seconds = time.perf_counter() - written
    if gguf_result is not None:
        _gguf_parity(gguf_result, target, export_tok, parity_prompts, max_new_tokens, chat)
    return report
