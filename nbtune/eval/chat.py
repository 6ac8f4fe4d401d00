"""Chat with one or several models side by side, the answers streaming in token by token.

Why a token loop of our own instead of `model.generate`: the Playground and
`s.chat()` need the text *while* it is written, for several models at once,
and a Stop that acts between two tokens. Each model gets a `_Decoder` that
makes one token per `step()` (the prompt once, then one token at a time
through the KV cache); `stream_chat` steps the decoders in turns, so every
column grows together (or one after another: `interleave=False`, for a
terminal). Greedy decoding gives exactly what `generate_texts` gives.

Each model is prompted as in training and in `s.generate()`: chat models
through their own chat template (`render_prompt`; with a conversation, every
earlier turn is rendered too), raw-text models with the prompt alone; each
stops at its own EOS / end-of-turn tokens (`stop_token_ids`). In a
conversation every chat model sees its *own* earlier answers. Raw-text
models have no turns: they continue the latest prompt only.

The base of a LoRA model is the same module with its adapters switched off
(`base_model_context`), entered around each of its steps only, so tuned and
base take turns on one copy of the weights.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from nbtune.device import DeviceInfo
from nbtune.errors import ConfigError
from nbtune.eval.generate import base_model_context, render_prompt, stop_token_ids

Message = dict[str, str]
REPLACEMENT_CHAR = "\ufffd"  # what a byte-level tokenizer decodes half a UTF-8 character to


def _cache_name() -> str:
    """The KV cache's name in model inputs and outputs: transformers 5.x renamed `past_key_values` to `cache`."""
    from transformers.modeling_outputs import CausalLMOutputWithPast

    return "cache" if "cache" in CausalLMOutputWithPast.__dataclass_fields__ else "past_key_values"


@dataclass
class ChatModel:
    """One column of the chat: a model, its tokenizer and how it is prompted."""

    label: str  # the column's name, e.g. "this session (lora)"
    model: Any  # the torch causal LM (a transformers or peft model)
    tokenizer: Any
    chat: bool  # True: through the chat template; False: the raw prompt text
    device: DeviceInfo
    context: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext  # e.g. LoRA adapters off


@dataclass(frozen=True)
class Sampling:
    """How the next token is picked: greedy (temperature None or 0, the default) or seeded nucleus sampling."""

    max_new_tokens: int = 128
    temperature: float | None = None
    top_p: float = 0.95
    seed: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 1:
            raise ConfigError(f"max_new_tokens must be a whole number of at least 1, got {self.max_new_tokens!r}",
                              column="max_new_tokens", fix="pass e.g. max_new_tokens=128")
        if self.temperature is not None and not self.temperature >= 0:
            raise ConfigError(f"temperature must be 0 or more, got {self.temperature!r}", column="temperature",
                              fix="use temperature=None (or 0) for greedy answers, e.g. 0.8 to sample")
        if not 0 < self.top_p <= 1:
            raise ConfigError(f"top_p must be in (0, 1], got {self.top_p!r}", column="top_p", fix="e.g. top_p=0.95")

    @property
    def greedy(self) -> bool:
        return not self.temperature

    def describe(self) -> str:
        if self.greedy:
            return "greedy (the most likely token each time; deterministic)"
        return f"sampled: temperature {self.temperature:g}, top-p {self.top_p:g}, seed {self.seed} (reproducible)"


@dataclass
class ChatDelta:
    """New text from one model: `delta` is what was added, `text` the whole answer so far."""

    label: str
    delta: str
    text: str
    tokens: int  # tokens generated so far (a final stop token included)
    done: bool  # this model's answer is complete (stop token, max_new_tokens, or Stop)


@dataclass
class ChatAnswer:
    """One model's complete answer to one prompt."""

    label: str
    prompt: str  # the prompt as typed
    rendered: str  # what the model saw: the conversation through its chat template, or the raw prompt
    text: str  # the answer, special tokens removed, stripped
    tokens: int
    seconds: float  # this model's own time (the models take turns, so wall time is shared)
    finished: bool  # ended at its EOS / end-of-turn token
    stopped: bool  # ended by Stop

    @property
    def tokens_per_s(self) -> float | None:
        return self.tokens / self.seconds if self.seconds > 0 and self.tokens else None

    @property
    def ending(self) -> str:
        if self.finished:
            return "end of turn"
        return "stopped" if self.stopped else f"cut at {self.tokens:,} tokens"


@dataclass
class ChatTurn:
    """What a chat returns: the answers to one prompt and each model's conversation up to and including it."""

    prompt: str
    answers: list[ChatAnswer]
    history: dict[str, list[Message]] = field(default_factory=dict)  # label -> messages, for chat models
    sampling: Sampling = field(default_factory=Sampling)
    stopped: bool = False


def render_conversation(tokenizer: Any, history: list[Message], prompt: str, *, chat: bool) -> str:
    """The text a model sees for `prompt` after `history` (earlier user and assistant turns).

    Without history this is exactly `render_prompt`, so one-turn chats are prompted as `s.generate()` prompts.
    Raw-text models (`chat=False`) have no turns: they see the prompt alone.
    """
    if not chat or not history:
        return render_prompt(tokenizer, prompt, chat=chat)
    return tokenizer.apply_chat_template([*history, {"role": "user", "content": prompt}], tokenize=False,
                                         add_generation_prompt=True)


def _ids(tokenizer: Any, text: str) -> list[int]:
    ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
    if not ids:  # an empty raw prompt starts a new document, as in prompt_ids
        ids = [tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id]
    return ids


def pick_token(logits: Any, sampling: Sampling, generator: Any) -> int:
    """The next token: the argmax, or a draw from the smallest set of tokens whose probability reaches top_p."""
    import torch

    if sampling.greedy:
        return int(torch.argmax(logits))
    probs = torch.softmax(logits.float() / sampling.temperature, dim=-1)
    ordered, order = torch.sort(probs, descending=True)
    keep = (torch.cumsum(ordered, dim=-1) - ordered) < sampling.top_p  # the most likely token is always kept
    ordered = ordered * keep
    choice = torch.multinomial(ordered / ordered.sum(), 1, generator=generator)
    return int(order[choice])


class _Decoder:
    """One model's answer, one token per `step()`: the whole prompt first, then one token through the KV cache."""

    def __init__(self, source: ChatModel, history: list[Message], prompt: str, sampling: Sampling) -> None:
        import torch

        self.source, self.prompt, self.sampling = source, prompt, sampling
        self.rendered = render_conversation(source.tokenizer, history, prompt, chat=source.chat)
        self.next_input = torch.tensor([_ids(source.tokenizer, self.rendered)], device=source.device.torch_device)
        self.stops = set(stop_token_ids(source.tokenizer, chat=source.chat, model=source.model))
        self.generator = None if sampling.greedy else torch.Generator(source.device.torch_device).manual_seed(
            sampling.seed)
        self.past: Any = None  # the KV cache, filled by the first step
        self.cache_name = _cache_name()
        self.new: list[int] = []
        self.text = ""
        self.seconds = 0.0
        self.finished = self.done = self.stopped = False

    def step(self) -> ChatDelta:
        import torch

        started = time.perf_counter()
        with self.source.context():
            token = pick_token(self._next_logits(), self.sampling, self.generator)
        self.new.append(token)
        self.next_input = torch.tensor([[token]], device=self.source.device.torch_device)
        self.finished = token in self.stops
        self.done = self.finished or len(self.new) >= self.sampling.max_new_tokens
        delta = self._grow_text()
        self.seconds += time.perf_counter() - started
        return delta

    def _next_logits(self) -> Any:
        import torch

        device, dtype = self.source.device, self.source.device.autocast_dtype
        with torch.autocast(device_type=device.type, dtype=dtype, enabled=dtype is not None):
            out = self.source.model(input_ids=self.next_input, use_cache=True, **{self.cache_name: self.past})
        self.past = getattr(out, self.cache_name)
        return out.logits[0, -1].float()

    def _grow_text(self) -> ChatDelta:
        """The answer so far; half a character waits for the next token. The text is stripped (trailing spaces
        wait too), so the deltas add up to the final answer."""
        text = self.source.tokenizer.decode(self.new, skip_special_tokens=True).strip()
        if not self.done and text.endswith(REPLACEMENT_CHAR):
            text = self.text
        return self._delta(text)

    def stop(self) -> ChatDelta:
        """End early (Stop): the text so far becomes the answer."""
        self.done = self.stopped = True
        return self._delta(self.source.tokenizer.decode(self.new, skip_special_tokens=True).strip())

    def _delta(self, text: str) -> ChatDelta:
        delta = text[len(self.text):] if text.startswith(self.text) else text  # a tokenizer that rewrote the past
        self.text = text
        return ChatDelta(self.source.label, delta, text, len(self.new), self.done)

    def answer(self) -> ChatAnswer:
        return ChatAnswer(self.source.label, self.prompt, self.rendered, self.text, len(self.new), self.seconds,
                          self.finished, self.stopped)


@contextlib.contextmanager
def _inference(models: list[ChatModel]) -> Iterator[None]:
    """Eval mode (restored afterwards) and no gradients for every distinct module."""
    import torch

    from nbtune.eval.metrics import eval_mode

    with contextlib.ExitStack() as stack:
        stack.enter_context(torch.no_grad())
        for module in {id(m.model): m.model for m in models}.values():
            stack.enter_context(eval_mode(module))
        yield


def stream_chat(models: list[ChatModel], prompt: str, *, history: dict[str, list[Message]] | None = None,
                sampling: Sampling | None = None, stop: threading.Event | None = None,
                interleave: bool = True) -> Iterator[ChatDelta | ChatTurn]:
    """Yield each model's new text as tokens are generated, then one `ChatTurn` with the complete answers.

    `history` maps a label to that model's earlier messages (a previous turn's
    `ChatTurn.history`); a label without history starts a new conversation.
    `stop` (a `threading.Event`) ends every answer before its next token. With
    `interleave` the models take turns token by token (the columns grow
    together); without, each answers in full before the next starts.
    """
    if not models:
        raise ConfigError("nothing to chat with: no models given", column="models",
                          fix="load or create a model first (s.use_model(...) or s.new_model())")
    labels = [m.label for m in models]
    if len(set(labels)) != len(labels):
        raise ConfigError(f"two models share a name in {labels}", column="models", fix="give each model its own name")
    sampling, history, stop = sampling or Sampling(), history or {}, stop or threading.Event()
    decoders = [_Decoder(m, history.get(m.label, []) if m.chat else [], prompt, sampling) for m in models]
    with _inference(models):
        yield from _steps(decoders, stop, interleave)
    yield ChatTurn(prompt, [d.answer() for d in decoders], _next_history(decoders, history), sampling,
                   any(d.stopped for d in decoders))


def _steps(decoders: list[_Decoder], stop: threading.Event, interleave: bool) -> Iterator[ChatDelta]:
    waiting = list(decoders)
    while waiting:
        if stop.is_set():
            for decoder in waiting:
                yield decoder.stop()
            return
        batch = waiting if interleave else waiting[:1]
        for decoder in batch:
            yield decoder.step()
            if stop.is_set():
                break
        waiting = [d for d in waiting if not d.done]


def _next_history(decoders: list[_Decoder], history: dict[str, list[Message]]) -> dict[str, list[Message]]:
    """Every chat model's conversation with this turn added (other labels' histories are kept as they were)."""
    updated = {label: list(messages) for label, messages in history.items()}
    for d in decoders:
        if d.source.chat:
            updated[d.source.label] = [*history.get(d.source.label, []), {"role": "user", "content": d.prompt},
                                       {"role": "assistant", "content": d.text}]
    return updated


def session_models(loaded: Any, tokenizer: Any, label: str, *, chat: bool, base: bool | None) -> list[ChatModel]:
    """The columns for one session's model: the model itself and, for LoRA (or `base=True`), its base.

    `base=None` adds the base for LoRA models only; `base=True` for a model without a base inside is refused
    with what to do (see `base_model_context`).
    """
    columns = [ChatModel(f"{label} ({loaded.method})", loaded.model, tokenizer, chat, loaded.device)]
    if base if base is not None else loaded.is_lora:
        base_model_context(loaded)  # refuses (with a fix) when there is no base inside
        columns.append(ChatModel(f"{label}: base (adapters off)", loaded.model, tokenizer, chat, loaded.device,
                                 context=lambda: base_model_context(loaded)))
    return columns


def named_sessions(others: Any) -> list[tuple[str, Any]]:
    """(name, session) pairs from a dict {name: session} or a list of sessions (named by their folder)."""
    if isinstance(others, dict):
        return list(others.items())
    named: list[tuple[str, Any]] = []
    for other in others or ():
        name = other.workdir.name
        taken = {n for n, _ in named}
        count = 2
        while name in taken:
            name, count = f"{other.workdir.name} ({count})", count + 1
        named.append((name, other))
    return named


def run_chat(models: list[ChatModel], prompt: str, *, history: Any = None, sampling: Sampling | None = None,
             on_delta: Callable[[ChatDelta], None] | None = None, stop: threading.Event | None = None,
             interleave: bool = True) -> Any:
    """One turn of a chat, each delta handed to `on_delta`; returns a `ChatReport` of the conversation so far.

    `history`: the report of the previous turn (None: a new conversation).
    """
    from nbtune.viz.chat_report import ChatReport

    if history is not None and not isinstance(history, ChatReport):
        raise ConfigError(f"history= takes the report of an earlier chat, got {type(history).__name__}",
                          column="history", fix="r = s.chat('hi'); then s.chat('and then?', history=r)")
    turn: ChatTurn | None = None
    for item in stream_chat(models, prompt, history=history.history if history else None, sampling=sampling,
                            stop=stop, interleave=interleave):
        if isinstance(item, ChatTurn):
            turn = item
        elif on_delta is not None:
            on_delta(item)
    return ChatReport([*(history.turns if history else []), turn])
