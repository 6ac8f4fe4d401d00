"""The tokens stage: BPE training, EOS handling, response-only masks, pretrained loading."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

import nbtune
from nbtune.config import TokenizerConfig
from nbtune.data import tokens as tk
from nbtune.data.load import load_source
from nbtune.errors import ConfigError, DataError

TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "A journey of a thousand miles begins with a single step.",
    "To be, or not to be, that is the question.",
    "All that glitters is not gold.",
] * 20


@pytest.fixture(scope="module")
def tokenizer():
    return tk.train_bpe_tokenizer(TEXTS, vocab_size=400)


def test_bpe_tokenizer_round_trips_text_and_has_chat_tokens(tokenizer):
    ids = tokenizer("The quick brown fox", add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(ids) == "The quick brown fox"
    assert tokenizer.eos_token == "<|endoftext|>"
    assert tokenizer.convert_tokens_to_ids("<|im_end|>") != tokenizer.unk_token_id
    assert 260 <= len(tokenizer) <= 400


def test_text_rows_end_with_eos_and_are_fully_trained(tokenizer):
    enc = tk.encode_text(tokenizer, "All that glitters is not gold.")
    assert enc.input_ids[-1] == tokenizer.eos_token_id
    assert enc.loss_mask == [1] * len(enc.input_ids)


def _trained_text(enc):
    return "".join(enc.text[s:e] for (s, e), m in zip(enc.offsets, enc.loss_mask, strict=True) if m)


def test_chat_rows_train_only_on_assistant_turns(tokenizer):
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What is gold?"},
        {"role": "assistant", "content": "A metal."},
        {"role": "user", "content": "And the fox?"},
        {"role": "assistant", "content": "Quick and brown."},
    ]
    enc = tk.encode_chat(tokenizer, messages, response_only=True)
    trained = _trained_text(enc)
    assert "A metal.<|im_end|>" in trained and "Quick and brown.<|im_end|>" in trained
    for prompt in ("Be brief.", "What is gold?", "And the fox?", "user", "system"):
        assert prompt not in trained
    assert 0 < sum(enc.loss_mask) < len(enc.loss_mask)
    full = tk.encode_chat(tokenizer, messages, response_only=False)
    assert full.loss_mask == [1] * len(full.input_ids) and full.input_ids == enc.input_ids


def test_encode_batch_truncates_chat_but_keeps_long_text_when_packing(tokenizer):
    long_text = " ".join(TEXTS)
    config = TokenizerConfig(context_length=16, pack=True)
    out = tk.encode_batch({"text": [long_text]}, tokenizer, config)
    assert out["n_tokens"][0] > 16 and len(out["input_ids"][0]) == out["n_tokens"][0] and not out["truncated"][0]
    no_pack = tk.encode_batch({"text": [long_text]}, tokenizer, config.replace(pack=False))
    assert len(no_pack["input_ids"][0]) == 16 and no_pack["truncated"][0]
    chat = [[{"role": "user", "content": long_text}, {"role": "assistant", "content": long_text}]]
    out = tk.encode_batch({"messages": chat}, tokenizer, config)
    assert len(out["input_ids"][0]) == 16 and len(out["loss_mask"][0]) == 16 and out["truncated"][0]


def test_packing_efficiency_hand_computed():
    eff = tk.packing_efficiency(np.array([10, 30, 60]), context_length=50)
    # 100 tokens need 2 packed sequences of 50 -> 100%; padded: min(len, 50) = 10+30+50 over 3*50
    assert eff["packed"] == pytest.approx(1.0)
    assert eff["padded_to_context"] == pytest.approx(90 / 150)
    assert eff["sequences_packed"] == 2


def test_pretrained_tokenizer_loads_from_a_local_folder(tokenizer, tmp_path):
    tokenizer.save_pretrained(tmp_path / "tok")
    loaded = tk.load_pretrained_tokenizer(str(tmp_path / "tok"))
    assert loaded("All that glitters")["input_ids"] == tokenizer("All that glitters")["input_ids"]
    assert loaded.chat_template == tokenizer.chat_template


def test_missing_tokenizer_fails_fast_with_advice(tmp_path):
    started = time.perf_counter()
    with pytest.raises(ConfigError) as info:
        tk.load_pretrained_tokenizer("no-such-owner/no-such-tokenizer")
    assert time.perf_counter() - started < 20
    assert "no-such-owner/no-such-tokenizer" in str(info.value) and "What to do" in str(info.value)


def test_chat_template_added_only_when_missing(tokenizer):
    assert tk.ensure_chat_template(tokenizer) is False
    tokenizer_copy = tk.train_bpe_tokenizer(TEXTS[:8], vocab_size=300)
    tokenizer_copy.chat_template = None
    assert tk.ensure_chat_template(tokenizer_copy) is True and tokenizer_copy.chat_template


def test_trained_bytes_counts_predicted_text_once(tokenizer):
    text = "héllo wörld"  # multi-byte characters may be split across byte-level tokens
    enc = tk.encode_text(tokenizer, text)
    first_end = enc.offsets[0][1]
    assert tk.trained_bytes(text, enc.offsets, enc.loss_mask) == len(text[first_end:].encode("utf-8"))
    assert tk.trained_bytes(text, enc.offsets, [0] * len(enc.loss_mask)) == 0


# --------------------------------------------------------------------------- tool calls and preference data

FORMAT_FILES = Path(__file__).parent / "data" / "formats"


def _split_by_mask(enc):
    """(trained text, masked text), character by character (byte-level tokens may share a character)."""
    on = np.zeros(len(enc.text), dtype=bool)
    for (s, e), m in zip(enc.offsets, enc.loss_mask, strict=True):
        on[s:e] |= bool(m)
    return ("".join(c for c, t in zip(enc.text, on, strict=True) if t),
            "".join(c for c, t in zip(enc.text, on, strict=True) if not t))


def test_chatml_renders_tools_as_documented(tokenizer):
    row = load_source(FORMAT_FILES / "openai_tool_calls.jsonl").dataset[0]
    enc = tk.encode_row(tokenizer, row, response_only=True)
    weather = ('{"type": "function", "function": {"name": "get_weather", "description": "Current weather in a city", '
               '"parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}')
    assert enc.text.startswith("<|im_start|>system\nYou are a helpful assistant.\n\n# Tools\n<tools>\n" + weather + "\n")
    assert ("<|im_start|>assistant\n<tool_call>\n"
            '{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call><|im_end|>\n'
            '<|im_start|>tool\n{"temperature_c": 18, "sky": "cloudy"}<|im_end|>\n') in enc.text
    trained, masked = _split_by_mask(enc)
    # the assistant's two turns, written out by hand from the documented rendering
    assert trained == ('<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call><|im_end|>\n'
                       "It is 18 °C and cloudy in Paris.<|im_end|>\n")
    assert '"temperature_c": 18' in masked and "What's the weather in Paris?" in masked


def test_chatml_without_tools_is_plain_chatml(tokenizer):
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "yo"}]
    expected = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in msgs)
    assert tokenizer.apply_chat_template(msgs, tokenize=False) == expected
    assert tokenizer.apply_chat_template(msgs[:2], tokenize=False, add_generation_prompt=True) == (
        expected[: expected.index("<|im_start|>assistant")] + "<|im_start|>assistant\n")


def test_content_next_to_a_tool_call_is_trained_with_it(tokenizer):
    row = load_source(FORMAT_FILES / "openai_tool_calls.jsonl").dataset[1]
    trained, _ = _split_by_mask(tk.encode_row(tokenizer, row, response_only=True))
    assert trained.startswith('Let me check the rate.\n<tool_call>\n{"name": "convert_currency", "arguments": '
                              '{"amount": 20, "from": "EUR", "to": "USD"}}\n</tool_call><|im_end|>\n')


def test_token_report_shows_tool_calls_trained_and_tool_results_masked(tmp_path):
    s = nbtune.Session(tmp_path / "tools")
    s.load(FORMAT_FILES / "openai_tool_calls.jsonl", validation_fraction=0.25, seed=0)
    assert s.train_split["row_id"][0] == 0  # the report shows row 0, the Paris weather call
    report = s.tokenize(tokenizer="bpe", vocab_size=400, context_length=1024)
    trained = "".join(piece for piece, on in report.example if on)
    masked = "".join(piece for piece, on in report.example if not on)
    assert '"arguments": {"city": "Paris"}' in trained and "It is 18 °C and cloudy in Paris." in trained
    assert '"temperature_c": 18' in masked and '"temperature_c"' not in trained
    assert "What's the weather in Paris?" in masked
    html = report._repr_html_()
    assert 'class="tok-train"' in html and 'class="tok-mask"' in html
    for row in s.tokens["train"]:
        assert sum(row["loss_mask"]) == row["n_trained"] > 0


def test_a_template_that_drops_tools_is_refused_naming_ones_that_render_them():
    from nbtune.models.default import default_model_folder

    smol = tk.load_pretrained_tokenizer(str(default_model_folder()))
    # the embedded SmolLM2 template writes role 'tool' but silently drops tool_calls and tools
    text = smol.apply_chat_template(tk._PROBE, tools=[tk._PROBE_TOOL], tokenize=False)
    assert "nbtune_probe_result" in text and "nbtune_probe_call" not in text and "nbtune_probe_tool" not in text
    with pytest.raises(ConfigError, match="cannot render tools: it drops tool calls and tool definitions") as err:
        tk.check_tool_template(smol, tools=True)
    assert "Qwen/Qwen2.5-0.5B-Instruct" in err.value.fix and "tokenizer='bpe'" in err.value.fix


def test_a_control_string_in_tool_arguments_is_refused(tokenizer):
    msgs = [{"role": "user", "content": "x"}, {"role": "assistant", "content": "", "tool_calls": [
        {"id": None, "type": "function", "function": {"name": "f", "arguments": '{"a": "<|im_end|>"}'}}]}]
    with pytest.raises(DataError, match="control token"):
        tk.encode_chat(tokenizer, msgs, response_only=True)


def test_preference_data_needs_an_sft_choice_before_tokenizing(tmp_path):
    s = nbtune.Session(tmp_path / "pref")
    s.load(FORMAT_FILES / "standard_preference.jsonl")
    with pytest.raises(DataError, match="preference data, and supervised fine-tuning on it needs a choice") as err:
        s.tokenize(tokenizer="bpe", vocab_size=300, context_length=128)
    assert "sft='chosen'" in err.value.fix
    s.load(FORMAT_FILES / "standard_preference.jsonl", sft="chosen")
    s.tokenize(tokenizer="bpe", vocab_size=300, context_length=128)
    texts = [s.tokenizer.decode([i for i, m in zip(r["input_ids"], r["loss_mask"], strict=True) if m])
             for split in ("train", "validation") for r in s.tokens[split]]
    assert any("Jane Austen" in t for t in texts) and not any("Dickens" in t for t in texts)
    assert "rejected" in s.dataset.column_names  # kept for preference tuning later


def test_unpaired_preference_trains_only_rows_labelled_true(tmp_path):
    s = nbtune.Session(tmp_path / "kto")
    s.load(FORMAT_FILES / "conversational_unpaired_preference.jsonl", sft="desirable", validation_fraction=0.2)
    s.tokenize(tokenizer="bpe", vocab_size=300, context_length=128)
    labels = dict(zip(s.dataset["row_id"][:], s.dataset["label"][:], strict=True))
    tokenized = [r for split in ("train", "validation") for r in s.tokens[split]["row_id"][:]]
    assert sorted(tokenized) == sorted(rid for rid, good in labels.items() if good)
    assert len(s.dataset) == 10  # every row stays in s.dataset


def test_prompt_only_forced_through_is_refused_at_tokenize(tmp_path):
    s = nbtune.Session(tmp_path / "prompts")
    s.load(FORMAT_FILES / "conversational_prompt_only.jsonl", format="chat")
    with pytest.raises(DataError, match="no token of these 4 rows is trained"):
        s.tokenize(tokenizer="bpe", vocab_size=300, context_length=128)
