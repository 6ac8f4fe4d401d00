"""The tokens stage: BPE training, EOS handling, response-only masks, pretrained loading."""

from __future__ import annotations

import time

import numpy as np
import pytest

from nbtune.config import TokenizerConfig
from nbtune.data import tokens as tk
from nbtune.errors import ConfigError

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
