"""The tokens stage: text rows -> token ids and a loss mask per row.

Two ways to get a tokenizer:

* ``"bpe"``: train a byte-level BPE tokenizer (the `tokenizers` library) on the
  training split only, so validation text never shapes the vocabulary. It gets
  ChatML-style special tokens and a chat template, so chat data works for a
  model trained from scratch too.
* a local folder or hub id: a pretrained tokenizer via `AutoTokenizer`, with
  `trust_remote_code` off unless the user turns it on.

Every row becomes ``input_ids`` plus ``loss_mask`` (1 = the model learns to
predict this token). Plain text rows end with EOS and are fully trained. Chat
rows are rendered with the tokenizer's chat template; with response-only loss
only the assistant's spans (including the end-of-turn token) are trained. The
spans are found by rendering each conversation prefix with the template, so any
template works, not only those that mark `{% generation %}` blocks.

Tool calls: messages may carry OpenAI-style ``tool_calls`` (assistant) and
``role: "tool"`` results, and a row may have a ``tools`` column (JSON schemas);
they go to the template as transformers expects them (``apply_chat_template(...,
tools=...)``, tool-call arguments as dicts). Tool-call turns are assistant turns,
so they are trained; tool results are masked like prompts. A template that
drops tools is refused before tokenizing (`check_tool_template`). nbtune's own
ChatML template (`CHATML_TEMPLATE`) renders them like this::

    <|im_start|>system
    {system message, if any, then a blank line}# Tools
    <tools>
    {"type": "function", "function": {...}}      (one JSON line per tool)
    </tools><|im_end|>
    <|im_start|>assistant
    {content, if any, then a newline}<tool_call>
    {"name": "get_weather", "arguments": {"city": "Paris"}}
    </tool_call><|im_end|>
    <|im_start|>tool
    {the tool's result}<|im_end|>

Without tools it renders exactly as plain ChatML.

Preference data (`nbtune.data.formats.PREFERENCE_FORMATS`) is tokenized only
after a supervised fine-tuning choice (``load(..., sft=...)``), and only the
rows that choice marks (`sft` column); a split with nothing to learn from is an
error.

Packing into fixed-length sequences happens at training time; here we only
measure how well it will work (packing efficiency, rows over the context).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from nbtune.config import TokenizerConfig
from nbtune.data import column_array, column_batches
from nbtune.data.formats import SFT_CHOICES
from nbtune.errors import ConfigError, DataError

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|pad|>"]

CHATML_TEMPLATE = (
    "{%- if tools %}"
    "{{- '<|im_start|>system\n' }}"
    "{%- if messages and messages[0]['role'] == 'system' %}{{- messages[0]['content'] + '\n\n' }}{%- endif %}"
    "{{- '# Tools\n<tools>' }}"
    "{%- for tool in tools %}{{- '\n' + (tool | tojson) }}{%- endfor %}"
    "{{- '\n</tools><|im_end|>\n' }}"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{%- if not (tools and loop.first and message['role'] == 'system') %}"
    "{{- '<|im_start|>' + message['role'] + '\n' + (message['content'] or '') }}"
    "{%- for call in message['tool_calls'] or [] %}"
    "{%- set fn = call['function'] if call['function'] is defined else call %}"
    "{{- ('\n' if (message['content'] or not loop.first) else '') + '<tool_call>\n'"
    " + ({'name': fn['name'], 'arguments': fn['arguments']} | tojson) + '\n</tool_call>' }}"
    "{%- endfor %}"
    "{{- '<|im_end|>\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\n' }}{%- endif %}"
)
#: Models whose chat templates render tools (checked: Qwen2.5's template renders `tools`, `tool_calls`
#: and tool results); named when a template cannot.
TOOL_TEMPLATE_MODELS = ("Qwen/Qwen2.5-0.5B-Instruct", "Qwen/Qwen2.5-1.5B-Instruct")


@dataclass
class Encoded:
    """One tokenized row: ids, the loss mask, and character offsets into `text`."""

    text: str
    input_ids: list[int]
    loss_mask: list[int]
    offsets: list[tuple[int, int]]


def train_bpe_tokenizer(texts: Iterable[str], vocab_size: int) -> Any:
    """Train a byte-level BPE tokenizer on `texts` and wrap it for transformers."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    core.train_from_iterator(texts, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token="<|endoftext|>",
        eos_token="<|endoftext|>",
        pad_token="<|pad|>",
        unk_token=None,
    )
    tokenizer.chat_template = CHATML_TEMPLATE
    tokenizer.model_max_length = 1_000_000
    return tokenizer


def load_pretrained_tokenizer(name: str, *, trust_remote_code: bool = False) -> Any:
    """Load a pretrained tokenizer from a folder or the hub, with an actionable error."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(name, trust_remote_code=trust_remote_code)
    except Exception as exc:  # transformers raises OSError, ValueError, HTTP errors...
        raise ConfigError(
            f"could not load the tokenizer {name!r}: {type(exc).__name__}: {str(exc).splitlines()[0][:300]}",
            column="tokenizer",
            fix="pass a local folder that holds tokenizer.json / tokenizer_config.json, or a hub id while "
            "online (HF_HUB_OFFLINE must not be set), or tokenizer='bpe' to train one on your data",
        ) from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def ensure_chat_template(tokenizer: Any) -> bool:
    """Give a tokenizer without a chat template the ChatML one; return True if we had to."""
    if getattr(tokenizer, "chat_template", None):
        return False
    tokenizer.chat_template = CHATML_TEMPLATE
    return True


def document_text(row: dict[str, Any]) -> str:
    """The text a row stands for: its `text`, or its messages' contents (and tool calls) joined by newlines."""
    if "text" in row:
        return row["text"]
    parts = []
    for m in row["messages"]:
        parts.append(m.get("content") or "")
        for call in m.get("tool_calls") or ():
            parts.append(f"{call['function']['name']} {call['function']['arguments']}")
    return "\n".join(parts)


def sft_rows(rows: Any) -> Any:
    """The rows supervised fine-tuning trains on: all, or for preference data those its `sft` column marks.

    Preference data loaded without an `sft=` choice is refused with what to pass.
    """
    cols = rows.column_names
    if "sft" in cols:
        keep = np.flatnonzero(column_array(rows, "sft").astype(bool))
        return rows if len(keep) == len(rows) else rows.select(keep)
    fmt = "preference" if "chosen" in cols else "unpaired_preference" if "label" in cols else (
        "stepwise" if "labels" in cols and "completions" in cols else None)
    if fmt is None:
        return rows
    options = " or ".join(f"sft={k!r} ({v})" for k, v in SFT_CHOICES[fmt].items())
    raise DataError(
        f"this is {fmt.replace('_', ' ')} data, and supervised fine-tuning on it needs a choice of what to train on",
        fix=f"load it again with s.load(..., {options}); the other columns stay in s.dataset for preference "
            "tuning later",
    )


def training_texts(dataset: Any, batch_size: int = 1000) -> Iterator[list[str]]:
    """Batches of texts to train a BPE tokenizer on (one text per row), read batch by batch from Arrow.

    Preference data gives the rows supervised fine-tuning will train on (`sft_rows`).
    """
    dataset = sft_rows(dataset)
    name = "text" if "text" in dataset.column_names else "messages"
    for values in column_batches(dataset, name, batch_size):
        yield [document_text({name: value}) for value in values]


def for_template(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Canonical messages as chat templates expect them: no None fields, tool-call arguments as dicts.

    transformers' tool-use convention passes arguments as a dict (templates
    write them with `tojson`); nbtune stores them as a JSON string.
    """
    out = []
    for m in messages:
        msg = {k: v for k, v in m.items() if v is not None}
        if msg.get("tool_calls"):
            msg["tool_calls"] = [{**c, "function": {**c["function"], "arguments": _arguments(c["function"])}}
                                 for c in msg["tool_calls"]]
            msg["tool_calls"] = [{k: v for k, v in c.items() if v is not None} for c in msg["tool_calls"]]
        out.append(msg)
    return out


def _arguments(fn: dict[str, Any]) -> Any:
    args = fn.get("arguments")
    if isinstance(args, str):
        try:
            return json.loads(args or "{}")
        except ValueError:
            return args
    return args


def row_tools(value: Any) -> list[dict[str, Any]] | None:
    """A row's `tools` value (JSON text, as loaded) as the list `apply_chat_template(tools=)` takes."""
    if value is None or value == "":
        return None
    return json.loads(value) if isinstance(value, str) else list(value)


def _render(tokenizer: Any, messages: list[dict[str, Any]], tools: list | None, **kwargs: Any) -> str:
    if tools:
        kwargs["tools"] = tools
    return tokenizer.apply_chat_template(messages, tokenize=False, **kwargs)


_PROBE_TOOL = {"type": "function", "function": {"name": "nbtune_probe_tool", "description": "probe",
                                                "parameters": {"type": "object", "properties": {}}}}
_PROBE = [
    {"role": "user", "content": "hi"},
    {"role": "assistant", "content": "", "tool_calls": [
        {"type": "function", "function": {"name": "nbtune_probe_call", "arguments": {"nbtune_probe_arg": 1}}}]},
    {"role": "tool", "content": "nbtune_probe_result"},
    {"role": "assistant", "content": "done"},
]


def check_tool_template(tokenizer: Any, *, tools: bool) -> None:
    """Raise ConfigError unless the chat template renders tool calls, tool results (and `tools` when needed).

    A probe conversation is rendered; a template that raises, or whose output
    lacks the probe's tool call, result or tool definition, cannot train on
    tool calls (most such templates drop them silently).
    """
    name = getattr(tokenizer, "name_or_path", "") or "this tokenizer"
    try:
        text = _render(tokenizer, _PROBE, [_PROBE_TOOL] if tools else None)
        error = ""
    except Exception as exc:  # jinja's TemplateError, or the template's own raise_exception
        text, error = "", f" (it raises {type(exc).__name__}: {str(exc)[:200]})"
    missing = [what for what, mark in (("tool calls", "nbtune_probe_call"), ("tool results", "nbtune_probe_result"),
                                       ("tool definitions", "nbtune_probe_tool" if tools else ""))
               if mark and mark not in text]
    if error or missing:
        listed = " and ".join([", ".join(missing[:-1]), missing[-1]] if len(missing) > 1 else missing)
        dropped = f"it drops {listed}" if not error else "rendering a tool call fails"
        raise ConfigError(
            f"the chat template of {name} cannot render tools: {dropped}{error}, so the data's tool calls "
            "would be lost or the model would learn a format it never sees",
            column="tokenizer",
            fix=f"use a model whose chat template renders tools, e.g. {' or '.join(TOOL_TEMPLATE_MODELS)} "
                "(Qwen2.5 Instruct); for a model trained from scratch, tokenizer='bpe' gets nbtune's ChatML template, "
                "which renders tools (README, Tokens)",
        )


def encode_text(tokenizer: Any, text: str) -> Encoded:
    """A plain-text row: all tokens trained, EOS appended as the document separator.

    The text is plain text: a row that contains "<|endoftext|>" gets the
    characters, not the EOS id (`split_special_tokens=True`), so data cannot
    forge document boundaries or turns.
    """
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True, split_special_tokens=True)
    ids = list(enc["input_ids"]) + [tokenizer.eos_token_id]
    offsets = [tuple(o) for o in enc["offset_mapping"]] + [(len(text), len(text))]
    return Encoded(text, ids, [1] * len(ids), offsets)


def assistant_spans(tokenizer: Any, messages: list[dict[str, Any]],
                    tools: list | None = None) -> tuple[str, list[tuple[int, int]]]:
    """Render a conversation and find the character spans of the assistant turns (tool calls included).

    For each assistant turn i, the prefix `messages[:i]` rendered with a generation
    prompt ends where the answer starts, and `messages[:i+1]` rendered ends where it
    (and its end-of-turn marker) stops. Tool results are not assistant turns: masked.
    """
    messages = for_template(messages)
    full = _render(tokenizer, messages, tools)
    spans = []
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        start = len(_render(tokenizer, messages[:i], tools, add_generation_prompt=True)) if i else 0
        end = len(_render(tokenizer, messages[: i + 1], tools))
        spans.append((start, min(end, len(full))))
    return full, spans


def control_pattern(tokenizer: Any) -> re.Pattern[str] | None:
    """A regex matching any added token of `tokenizer` (its special and control strings), longest first."""
    added = sorted(getattr(tokenizer, "added_tokens_encoder", {}) or {}, key=len, reverse=True)
    return re.compile("|".join(map(re.escape, added))) if added else None


_SENTINEL = "\ue000{}\ue001"  # private-use characters: stand-ins for message contents while locating them


def content_spans(tokenizer: Any, messages: list[dict[str, Any]], text: str,
                  tools: list | None = None) -> list[tuple[int, int]] | None:
    """Where each message's content sits in the rendered `text`, or None if the template changes contents.

    The conversation is rendered once more with each content replaced by a
    sentinel; if putting the contents back gives `text` exactly, the
    sentinels' positions are the contents' positions. (Searching `text` for a
    content is not enough: a content may repeat the template's own markers.)
    """
    messages = for_template(messages)
    stand_ins = [{**m, "content": _SENTINEL.format(i)} for i, m in enumerate(messages)]
    layout = _render(tokenizer, stand_ins, tools)
    spans, pieces, pos, shift = [], [], 0, 0
    for i, m in enumerate(messages):
        mark = _SENTINEL.format(i)
        content = m.get("content") or ""
        at = layout.find(mark, pos)
        if at < 0:
            return None
        pieces += [layout[pos:at], content]
        start = at + shift
        spans.append((start, start + len(content)))
        shift += len(content) - len(mark)
        pos = at + len(mark)
    pieces.append(layout[pos:])
    return spans if "".join(pieces) == text else None


def _encode_piece(tokenizer: Any, text: str, plain: bool, at_start: bool) -> tuple[list[int], list[tuple[int, int]]]:
    """Ids and offsets of one piece of a rendered chat; `plain` pieces never become special tokens.

    A piece after the start is encoded after a newline that is then dropped,
    so SentencePiece tokenizers do not add the space they add at the start
    of a string (the trick transformers' own chat sanitizing uses).
    """
    kwargs = {"add_special_tokens": False, "return_offsets_mapping": True, "split_special_tokens": plain}
    if not at_start:
        newline = tokenizer("\n", add_special_tokens=False)["input_ids"]
        enc = tokenizer("\n" + text, **kwargs)
        ids, offs = list(enc["input_ids"]), [tuple(o) for o in enc["offset_mapping"]]
        if newline and ids[: len(newline)] == newline:
            return ids[len(newline) :], [(max(s - 1, 0), max(e - 1, 0)) for s, e in offs[len(newline) :]]
    enc = tokenizer(text, **kwargs)
    return list(enc["input_ids"]), [tuple(o) for o in enc["offset_mapping"]]


def _encode_rendered(tokenizer: Any, text: str, plain_spans: list[tuple[int, int]]) -> tuple[list[int], list]:
    """Encode `text` with the `plain_spans` (message contents) as plain text and the rest as the template wrote it."""
    ids: list[int] = []
    offsets: list[tuple[int, int]] = []
    pos = 0
    cuts = [(s, e, True) for s, e in sorted(plain_spans) if e > s]
    pieces = []
    for start, end, plain in cuts:
        if start > pos:
            pieces.append((pos, start, False))
        pieces.append((start, end, plain))
        pos = end
    if pos < len(text):
        pieces.append((pos, len(text), False))
    for start, end, plain in pieces:
        piece_ids, piece_offs = _encode_piece(tokenizer, text[start:end], plain, at_start=start == 0)
        ids += piece_ids
        offsets += [(s + start, e + start) for s, e in piece_offs]
    return ids, offsets


def _check_tool_text(messages: list[dict[str, Any]], tools: list | None, controls: re.Pattern[str]) -> None:
    """Tool calls and tool definitions are written by the template, not as plain text: refuse control strings there."""
    texts = [json.dumps(tools, ensure_ascii=False)] if tools else []
    for m in messages:
        texts += [json.dumps(c, ensure_ascii=False) for c in m.get("tool_calls") or ()]
    for text in texts:
        found = controls.search(text)
        if found:
            raise DataError(
                f"a tool call or tool definition holds {found.group()!r}, which the chat template would write as "
                "a control token (a forged turn or document end)",
                fix="remove that string from the row's tool calls / tools before loading",
            )


def _chat_ids(tokenizer: Any, messages: list[dict[str, Any]], text: str,
              controls: re.Pattern[str] | None, tools: list | None = None) -> tuple[list[int], list[tuple[int, int]]]:
    """Token ids and offsets of a rendered chat, with every message content tokenized as plain text.

    Only the template's own markers become control tokens: a content holding
    "<|im_end|>\\n<|im_start|>assistant" must not forge a turn. Rows whose
    contents hold no added-token string (nearly all) are encoded in one call.
    """
    if controls is not None:
        _check_tool_text(messages, tools, controls)
    if controls is None or not any(controls.search(m.get("content") or "") for m in messages):
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        return list(enc["input_ids"]), [tuple(o) for o in enc["offset_mapping"]]
    spans = content_spans(tokenizer, messages, text, tools)
    if spans is None:  # the template rewrites contents (e.g. trims them): find them in its output, in order
        spans, pos = [], 0
        for m in messages:
            content = m.get("content") or ""
            for candidate in (content, content.strip()):
                at = text.find(candidate, pos) if candidate else -1
                if at >= 0:
                    spans.append((at, at + len(candidate)))
                    pos = at + len(candidate)
                    break
    return _encode_rendered(tokenizer, text, spans)


def encode_chat(tokenizer: Any, messages: list[dict[str, Any]], *, response_only: bool,
                controls: re.Pattern[str] | None | bool = True, tools: list | None = None) -> Encoded:
    """A chat row rendered with the chat template; prompt tokens (and tool results) masked when `response_only`.

    Message contents are plain text (see `_chat_ids`); `controls` is the
    tokenizer's `control_pattern` (computed here when True); `tools` are the
    row's tool definitions (`row_tools`).
    """
    text, spans = assistant_spans(tokenizer, messages, tools)
    pattern = control_pattern(tokenizer) if controls is True else controls
    ids, offsets = _chat_ids(tokenizer, messages, text, pattern or None, tools)
    if not response_only:
        mask = [1] * len(offsets)
    else:
        mask = [int(any(s < end and e > start for start, end in spans)) for s, e in offsets]
    return Encoded(text, ids, mask, offsets)


def encode_row(tokenizer: Any, row: dict[str, Any], *, response_only: bool) -> Encoded:
    if "text" in row:
        return encode_text(tokenizer, row["text"])
    return encode_chat(tokenizer, row["messages"], response_only=response_only, tools=row_tools(row.get("tools")))


def _char_bytes(text: str) -> np.ndarray:
    """cum[i] = UTF-8 bytes of text[:i] (length len(text) + 1)."""
    if text.isascii():
        return np.arange(len(text) + 1, dtype=np.int64)
    points = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
    width = 1 + (points >= 0x80).astype(np.int64) + (points >= 0x800) + (points >= 0x10000)
    cum = np.zeros(len(text) + 1, dtype=np.int64)
    np.cumsum(width, out=cum[1:])
    return cum


def _trained_bytes(text: str, offsets: np.ndarray, mask: np.ndarray) -> int:
    """`trained_bytes` on arrays: offsets (n, 2) int, mask (n,) 0/1; no Python loop over tokens."""
    pick = mask.astype(bool)
    pick[:1] = False  # the first token is never predicted
    starts, stops = offsets[pick, 0], offsets[pick, 1]
    real = stops > starts
    starts, stops = starts[real], stops[real]
    if not len(starts):
        return 0
    order = np.lexsort((stops, starts))
    starts, stops = starts[order], stops[order]
    covered = np.maximum.accumulate(np.concatenate(([0], stops[:-1])))  # end of the spans before each one
    starts = np.maximum(starts, covered)
    new = stops > starts
    cum = _char_bytes(text)
    return int((cum[stops[new]] - cum[starts[new]]).sum())


def trained_bytes(text: str, offsets: list[tuple[int, int]], mask: list[int]) -> int:
    """UTF-8 bytes of the text the model is scored on: the spans of masked-in tokens after the first.

    The first token of a row is never predicted. Spans are merged before
    counting, since byte-level tokens that split one character share its span.
    Bits per byte = (sum of losses in nats) / ln 2 / trained_bytes, which does not
    depend on the tokenizer, so models with different tokenizers compare fairly.
    """
    if not len(offsets):
        return 0
    return _trained_bytes(text, np.asarray(offsets, dtype=np.int64).reshape(-1, 2), np.asarray(mask, dtype=np.int8))


#: Types of the token columns: ids fit int32 (vocabularies are far below 2**31), the mask is 0/1.
TOKEN_FEATURES = {"input_ids": ("list", "int32"), "loss_mask": ("list", "int8"), "n_tokens": "int64",
                  "truncated": "bool", "n_trained": "int64", "n_bytes": "int64"}


def token_features() -> dict[str, Any]:
    """The `datasets` features of the columns `encode_batch` adds."""
    from datasets import List, Value

    return {name: List(Value(kind[1])) if isinstance(kind, tuple) else Value(kind)
            for name, kind in TOKEN_FEATURES.items()}


def _text_rows(batch: dict[str, list], tokenizer: Any) -> Iterator[tuple[str, np.ndarray, np.ndarray, np.ndarray]]:
    """(text, ids, loss mask, offsets) of plain-text rows, EOS appended, as numpy arrays."""
    enc = tokenizer(batch["text"], add_special_tokens=False, return_offsets_mapping=True,
                    split_special_tokens=True)  # text is text: "<|endoftext|>" in a row is not EOS
    eos = tokenizer.eos_token_id
    for text, ids, offs in zip(batch["text"], enc["input_ids"], enc["offset_mapping"], strict=True):
        n = len(ids) + 1
        row_ids = np.empty(n, dtype=np.int32)
        row_ids[:-1] = ids
        row_ids[-1] = eos
        offsets = np.empty((n, 2), dtype=np.int64)
        if n > 1:
            offsets[:-1] = offs
        offsets[-1] = len(text)
        yield text, row_ids, np.ones(n, dtype=np.int8), offsets


def _chat_rows(batch: dict[str, list], tokenizer: Any, response_only: bool,
               ) -> Iterator[tuple[str, np.ndarray, np.ndarray, np.ndarray]]:
    controls = control_pattern(tokenizer)
    tools = batch.get("tools") or [None] * len(batch["messages"])
    for messages, row_tool in zip(batch["messages"], tools, strict=True):
        enc = encode_chat(tokenizer, messages, response_only=response_only, controls=controls,
                          tools=row_tools(row_tool))
        yield (enc.text, np.asarray(enc.input_ids, dtype=np.int32), np.asarray(enc.loss_mask, dtype=np.int8),
               np.asarray(enc.offsets, dtype=np.int64).reshape(-1, 2))


def encode_batch(batch: dict[str, list], tokenizer: Any, config: TokenizerConfig) -> dict[str, Any]:
    """`Dataset.map` function: adds input_ids, loss_mask, n_tokens (before any cut), truncated, n_trained, n_bytes.

    Plain text longer than the context is kept whole when packing (it is split
    across sequences, nothing lost); otherwise, and for chat rows, it is cut.
    `n_bytes` counts the UTF-8 bytes of the trained text (see `trained_bytes`).
    Token ids and masks are numpy arrays per row (int32 / int8, see
    `TOKEN_FEATURES`), the counts numpy columns: no Python list per token.
    """
    if "text" in batch:
        rows, splittable = _text_rows(batch, tokenizer), config.pack
    else:
        rows, splittable = _chat_rows(batch, tokenizer, config.response_only_loss), False
    size = len(batch["text" if "text" in batch else "messages"])
    ids_out: list[np.ndarray] = []
    mask_out: list[np.ndarray] = []
    n_tokens = np.zeros(size, dtype=np.int64)
    n_trained = np.zeros(size, dtype=np.int64)
    n_bytes = np.zeros(size, dtype=np.int64)
    ctx = config.context_length
    for i, (text, ids, mask, offsets) in enumerate(rows):
        n = len(ids)
        keep = ctx if n > ctx and not splittable else n
        ids_out.append(ids[:keep])
        mask_out.append(mask[:keep])
        n_tokens[i] = n
        n_trained[i] = int(mask[:keep].sum())
        n_bytes[i] = _trained_bytes(text, offsets[:keep], mask[:keep])
    return {"input_ids": ids_out, "loss_mask": mask_out, "n_tokens": n_tokens,
            "truncated": n_tokens > np.array([len(x) for x in ids_out], dtype=np.int64),
            "n_trained": n_trained, "n_bytes": n_bytes}


def packing_efficiency(lengths: np.ndarray, context_length: int) -> dict[str, float]:
    """Share of sequence slots holding real tokens, packed vs one row per padded sequence."""
    kept = np.minimum(lengths, context_length)
    total = float(lengths.sum())
    if total == 0:
        return {"packed": 0.0, "padded_to_context": 0.0, "sequences_packed": 0}
    sequences = int(np.ceil(total / context_length))
    return {
        "packed": total / (sequences * context_length),
        "padded_to_context": float(kept.sum()) / (len(lengths) * context_length),
        "sequences_packed": sequences,
    }


def tokenize_rows(rows: Any, tokenizer: Any, config: TokenizerConfig, *, desc: str = "tokenizing",
                  schema_from: Any = None) -> Any:
    """Tokenize canonical rows with `encode_batch`.

    Preference data keeps only the rows its `sft` choice marks (`sft_rows`);
    data with tool calls needs a template that renders them
    (`check_tool_template`). A split whose rows have no trained token is a
    DataError. An empty split gets no new columns from `map()`; `schema_from`
    (a tokenized split) gives it the right schema so later stages can rely on
    the columns.
    """
    rows = sft_rows(rows)
    if len(rows) == 0 and schema_from is not None:
        return schema_from.select([])
    if len(rows) == 0:
        raise DataError("no row of the training split is chosen for supervised fine-tuning (sft column)",
                        fix="check the labels, or load more rows")
    if "messages" in rows.column_names and _uses_tools(rows):
        check_tool_template(tokenizer, tools="tools" in rows.column_names)
    from datasets import Features

    features = Features({**rows.features, **token_features()})
    out = rows.map(encode_batch, batched=True, batch_size=256, fn_kwargs={"tokenizer": tokenizer, "config": config},
                   features=features, desc=desc)
    if not column_array(out, "n_trained").any():
        cut = int(column_array(out, "truncated").sum())
        why = ("they have no assistant turn" if not cut else
               f"they are cut at context_length={config.context_length} before their answer" if cut == len(out) else
               f"{cut:,} are cut at context_length={config.context_length} before their answer, the others have no "
               "assistant turn")
        raise DataError(
            f"{desc}: no token of these {len(out):,} rows is trained: {why}, so with response-only loss there is "
            "nothing to learn from",
            fix=("raise context_length, or " if cut else "") + "add the assistant's answers (a 'completion' column, "
                "or assistant messages), or tokenize with response_only_loss=False to train on every token",
        )
    return out


def _uses_tools(rows: Any) -> bool:
    """Whether the rows' messages have the tool fields (the loader adds them only for data with tools)."""
    feature = rows.features["messages"]
    inner = getattr(feature, "feature", feature)
    inner = inner[0] if isinstance(inner, list) else inner
    return "tool_calls" in inner or "tools" in rows.column_names
