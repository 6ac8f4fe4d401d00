"""What a model writes: greedy and seeded sampled continuations of a few prompts.

* ``chat=True``: each prompt becomes one user turn rendered with the
  tokenizer's chat template plus the generation prompt (the assistant header),
  exactly as chat rows were rendered for training; generation stops at the
  end-of-turn token (or EOS).
* ``chat=False``: the model continues the raw text (no special tokens added,
  as plain-text rows were tokenized) and stops at EOS.

Greedy output is deterministic. Sampled output (temperature + nucleus/top-p
sampling, no top-k) is reproducible: the torch RNG is seeded with `seed` right
before each sampled generation, inside a forked RNG so the caller's random
state is left as it was. Only the new text is returned, decoded without special
tokens and stripped.

For a LoRA model, `base_model_context(loaded_model)` gives the base model's
outputs (peft's `disable_adapter()`), so base and tuned can be compared side by
side without loading a second copy.
"""

from __future__ import annotations

import re
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

import numpy as np

from nbtune.data import column
from nbtune.device import DeviceInfo
from nbtune.errors import ConfigError, DataError

MODES = ("greedy", "sampled")
# End-of-turn markers of common chat templates, used only when the template probe finds none.
END_OF_TURN_TOKENS = ("<|im_end|>", "<|eot_id|>", "<end_of_turn>", "<|end|>", "<|endoftext|>", "</s>")
PROMPT_WORDS = 8


@dataclass
class Generation:
    """One generated text."""

    model: str  # label of the model that wrote it, e.g. "tuned" or "base"
    prompt: str  # the prompt as given (before any chat template)
    mode: str  # "greedy" or "sampled"
    text: str  # only the new text, special tokens removed, stripped
    new_tokens: int = 0  # tokens generated (including a final stop token)
    finished: bool = False  # True when it stopped at EOS / end of turn, False when max_new_tokens cut it


def render_prompt(tokenizer: Any, prompt: str, *, chat: bool) -> str:
    """The text the model sees for `prompt`: the chat-template rendering of one user turn, or the prompt itself."""
    if not chat:
        return prompt
    if not getattr(tokenizer, "chat_template", None):
        raise ConfigError("chat=True needs a tokenizer with a chat template, and this one has none",
                          column="chat", fix="pass chat=False to continue raw text, or tokenize chat data first "
                                             "(s.tokenize() gives the tokenizer a template)")
    return tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                         add_generation_prompt=True)


def prompt_ids(tokenizer: Any, prompt: str, *, chat: bool) -> list[int]:
    """Token ids of the rendered prompt (no special tokens added beyond what the template writes)."""
    ids = list(tokenizer(render_prompt(tokenizer, prompt, chat=chat), add_special_tokens=False)["input_ids"])
    if not ids:  # an empty raw-text prompt: start a new document, as after an EOS in the training stream
        start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
        ids = [start]
    return ids


def _special_ids(tokenizer: Any) -> set[int]:
    ids = set(getattr(tokenizer, "all_special_ids", []) or [])
    decoder = getattr(tokenizer, "added_tokens_decoder", None) or {}
    ids |= {int(i) for i, token in decoder.items() if getattr(token, "special", False)}
    return ids


def _as_list(value: Any) -> list[int]:
    if value is None:
        return []
    return [int(v) for v in value] if isinstance(value, list | tuple) else [int(value)]


def stop_token_ids(tokenizer: Any, *, chat: bool, model: Any = None) -> list[int]:
    """Token ids that end a generation: EOS (tokenizer's and the model's, which may be a list) and, for chat,
    the template's end-of-turn token.

    The end-of-turn token is found by rendering a one-exchange conversation and
    taking the first special token after the assistant's text; common markers
    (``<|im_end|>``, ``<|eot_id|>``...) that the vocabulary has are added too.
    """
    stops = _as_list(tokenizer.eos_token_id)
    config = getattr(model, "generation_config", None)
    stops += _as_list(getattr(config, "eos_token_id", None))
    if chat:
        special = _special_ids(tokenizer)
        try:
            marker = "nbtune-probe-reply"
            text = tokenizer.apply_chat_template([{"role": "user", "content": "hi"},
                                                  {"role": "assistant", "content": marker}], tokenize=False)
            after = text[text.index(marker) + len(marker):]
            stops += [i for i in tokenizer(after, add_special_tokens=False)["input_ids"] if i in special][:1]
        except Exception:  # a template that rejects this conversation: fall back to the known markers
            pass
        vocab = tokenizer.get_vocab()
        stops += [vocab[t] for t in END_OF_TURN_TOKENS if t in vocab and vocab[t] in special]
    return list(dict.fromkeys(stops))


def _rng_fork(device: DeviceInfo) -> AbstractContextManager:
    import torch

    if device.type == "cuda":
        return torch.random.fork_rng(devices=[torch.cuda.current_device()], device_type="cuda")
    return torch.random.fork_rng(devices=[])


def generate_texts(model: Any, tokenizer: Any, prompts: list[str], *, chat: bool, max_new_tokens: int = 64,
                   seed: int = 0, temperature: float = 0.8, top_p: float = 0.95, device: DeviceInfo,
                   label: str = "model", modes: tuple[str, ...] = MODES) -> list[Generation]:
    """Greedy and sampled generations for each prompt, in order: for each prompt, one per mode.

    `model` is the torch module (``LoadedModel.model``, a transformers or peft
    causal LM). It runs in eval mode under no_grad with the device's autocast;
    its train/eval state is restored afterwards. `label` names the model in the
    results (e.g. "tuned", "base").
    """
    import torch

    from nbtune.eval.metrics import eval_mode

    if max_new_tokens < 1:
        raise ConfigError(f"max_new_tokens must be at least 1, got {max_new_tokens}", column="max_new_tokens")
    if temperature <= 0:
        raise ConfigError(f"temperature must be above 0, got {temperature}", column="temperature",
                          fix="use the greedy output for deterministic text")
    if not 0 < top_p <= 1:
        raise ConfigError(f"top_p must be in (0, 1], got {top_p}", column="top_p")
    unknown = [m for m in modes if m not in MODES]
    if unknown:
        raise ConfigError(f"unknown generation mode {unknown[0]!r}", column="modes", fix="use 'greedy' and/or 'sampled'")
    stops = stop_token_ids(tokenizer, chat=chat, model=model)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (stops[0] if stops else 0)
    dtype = device.autocast_dtype
    out: list[Generation] = []
    with eval_mode(model), torch.no_grad():
        for prompt in prompts:
            ids = torch.tensor([prompt_ids(tokenizer, prompt, chat=chat)], device=device.torch_device)
            for mode in modes:
                settings = {"do_sample": False} if mode == "greedy" else {
                    "do_sample": True, "temperature": float(temperature), "top_p": float(top_p), "top_k": 0}
                with _rng_fork(device), torch.autocast(device_type=device.type, dtype=dtype,
                                                       enabled=dtype is not None):
                    if mode == "sampled":
                        torch.manual_seed(seed)
                    result = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                                            max_new_tokens=max_new_tokens, pad_token_id=pad_id,
                                            eos_token_id=stops or None, **settings)
                new = result[0, ids.shape[1]:].tolist()
                finished = bool(new) and new[-1] in stops
                text = tokenizer.decode(new, skip_special_tokens=True).strip()
                out.append(Generation(label, prompt, mode, text, len(new), finished))
    return out


def base_model_context(loaded_model: Any) -> AbstractContextManager:
    """A context manager inside which `loaded_model.model` behaves as its base model (LoRA adapters off).

        with base_model_context(lm):
            base = generate_texts(lm.model, lm.tokenizer, prompts, ..., label="base")

    Only LoRA methods keep the base weights untouched; after a full fine-tune
    (or for a model trained from scratch) there is no base inside the model.
    """
    if getattr(loaded_model, "model", None) is None:
        raise ConfigError("this model was released; load it again", column="model")
    if not getattr(loaded_model, "is_lora", False):
        method = getattr(loaded_model, "method", "?")
        why = ("a model trained from scratch has no base model" if method == "scratch" else
               f"method={method!r} changed the base weights themselves, so no untouched base is inside this model")
        raise ConfigError(f"cannot switch to the base model: {why}", column="method",
                          fix="load the base model separately (s.use_model(...) with the same model name) to get its "
                              "outputs, or fine-tune with method='lora' to compare base and tuned in one model")
    disable = getattr(loaded_model.model, "disable_adapter", None)
    if disable is None:
        raise ConfigError(f"the {loaded_model.method} model has no adapters to turn off (not a peft model)",
                          column="method", fix="load it with s.use_model(..., method='lora')")
    return disable()


def _first_words(text: str, words: int) -> str:
    """The text up to the end of its `words`-th word, with the original spacing and line breaks."""
    matches = list(re.finditer(r"\S+", text))
    if not matches:
        return ""
    keep = min(words, max(1, len(matches) // 2))  # leave a short row something to continue
    return text[matches[0].start(): matches[keep - 1].end()]


def _cut(text: str, max_chars: int) -> str:
    """At most `max_chars` characters, cut at a word boundary when there is one."""
    if len(text) <= max_chars:
        return text
    cut = text[:max_chars]
    space = cut.rfind(" ")
    return (cut[:space] if space > max_chars // 2 else cut).rstrip()


def _chat_prompt(messages: list[dict[str, str]]) -> str:
    for message in messages or []:
        if message.get("role") == "user" and (message.get("content") or "").strip():
            return message["content"].strip()
    return ""


def default_prompts(rows_dataset: Any, *, chat: bool, n: int = 4, max_chars: int = 120) -> list[str]:
    """`n` prompts drawn from held-out rows (canonical schema: `text` or `messages`), spread over the split.

    Chat rows give their first user message; text rows their first ~8 words
    (at most half the row, so something is left to continue). Each prompt is at
    most `max_chars` characters; empty and duplicate prompts are skipped.
    """
    if n < 1:
        return []
    names = getattr(rows_dataset, "column_names", [])
    use_messages = "messages" in names and (chat or "text" not in names)
    if not use_messages and "text" not in names:
        raise DataError("these rows have neither a 'text' nor a 'messages' column",
                        fix="pass canonical rows (Session.validation_split), not tokenized ones")
    total = len(rows_dataset)
    if total == 0:
        return []
    # evenly spread candidates first, then the rest of a window around them, so a few empty rows do not matter
    spread = np.unique(np.linspace(0, total - 1, num=min(total, n)).round().astype(np.int64)).tolist()
    taken = set(spread)
    extra = [i for i in range(min(total, 8 * n)) if i not in taken]
    order = spread + extra
    values = column(rows_dataset.select(order), "messages" if use_messages else "text")
    prompts: list[str] = []
    for value in values:
        prompt = _chat_prompt(value) if use_messages else _first_words(value or "", PROMPT_WORDS).strip()
        prompt = _cut(prompt, max_chars)
        if prompt and prompt not in prompts:
            prompts.append(prompt)
        if len(prompts) == n:
            break
    return prompts
