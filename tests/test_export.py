"""Exporting models: adapters, merged LoRA and QLoRA (through a full-precision base), scratch models; safetensors only.

A tiny "pretrained" model is made here: a 2-layer Llama trained (with nbtune)
on counting upwards, saved to a folder. LoRA weights are then set to seeded
random values, so the adapters are far from a no-op.
"""

from __future__ import annotations

import shutil

import pytest
import torch
from conftest import counting_docs as _counting_docs

import nbtune
from nbtune.config import PretrainedModelConfig
from nbtune.device import pick_device
from nbtune.errors import ConfigError
from nbtune.eval.export import export_model, generate_text
from nbtune.models.base import PICKLE_SUFFIXES
from nbtune.models.pretrained import bnb_usable, use_model

CPU = pick_device("cpu")
needs_bnb = pytest.mark.skipif(not bnb_usable(CPU)[0], reason=f"bitsandbytes unusable: {bnb_usable(CPU)[1]}")
TEMPLATE = ("{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}"
            "{% if add_generation_prompt %}[assistant] {% endif %}")
IDS = torch.tensor([[3, 17, 25, 40, 41, 42, 7, 9]])


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """(session that trained a scratch model on counting, the model saved as a 'pretrained' folder)."""
    from nbtune.data.tokens import train_bpe_tokenizer

    root = tmp_path_factory.mktemp("tiny-pretrained")
    tokenizer = train_bpe_tokenizer(_counting_docs() + _counting_docs(seed=1), vocab_size=300)
    tokenizer.save_pretrained(root / "tokenizer")
    s = nbtune.Session(root / "pretraining")
    s.load(_counting_docs(seed=5))
    s.tokenize(tokenizer=str(root / "tokenizer"), context_length=32)
    s.new_model(preset="tiny", layers=2, hidden_size=64, heads=4, kv_heads=2)
    run = s.train(steps=40, batch_size=4, learning_rate=3e-3, warmup_steps=2, eval_every=20, eval_batches=2,
                  background=False, progress=False)
    assert run.status == "finished"
    s.model.save(root / "model")
    tokenizer.save_pretrained(root / "model")
    return s, root / "model"


def _lora(folder, method: str):
    lm = use_model(PretrainedModelConfig(model=str(folder), method=method, lora_rank=4, lora_alpha=8,
                                         lora_dropout=0.0), device=CPU, batch_size=2, seq_len=16)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for _, param in lm.named_trainable_parameters():
            param.copy_(torch.randn(param.shape, generator=generator) * 0.2)
    return lm


def _logits(model, ids=IDS):
    was_training = model.training
    model.eval()
    with torch.no_grad():
        out = model(input_ids=ids).logits.float()
    model.train(was_training)
    return out


def _fp32_base(folder):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32).eval()


def _assert_safetensors_only(folder):
    names = [p.name for p in folder.rglob("*") if p.is_file()]
    assert not [n for n in names if n.endswith(PICKLE_SUFFIXES)], names
    assert any(n.endswith(".safetensors") for n in names)


def test_lora_adapter_export_loads_on_a_fresh_base_and_generates(pretrained, tmp_path):
    _, folder = pretrained
    lm = _lora(folder, "lora")
    live = _logits(lm.model)
    report = export_model(lm, tmp_path / "adapter", chat_template=TEMPLATE, max_new_tokens=8)
    out = tmp_path / "adapter"
    assert report.kind == "adapter" and report.folder == str(out) and report.base == str(folder)
    names = {name for name, _ in report.files}
    assert {"adapter_model.safetensors", "adapter_config.json", "tokenizer.json", "nbtune_export.json"} <= names
    assert "model.safetensors" not in names and all(size > 0 for _, size in report.files)
    _assert_safetensors_only(out)
    from peft import PeftModel
    from transformers import AutoTokenizer

    reloaded = PeftModel.from_pretrained(_fp32_base(folder), str(out))
    torch.testing.assert_close(_logits(reloaded), live, rtol=0, atol=1e-6)
    tokenizer = AutoTokenizer.from_pretrained(str(out))
    assert tokenizer.chat_template == TEMPLATE and lm.tokenizer.chat_template != TEMPLATE  # the caller's is kept
    assert report.smoke_ok and report.smoke_input == "[user] Hello!\n[assistant] "
    assert report.smoke_text == generate_text(reloaded, tokenizer, "Hello!", max_new_tokens=8)[1]
    assert report.smoke_text == generate_text(lm.model, tokenizer, "Hello!", max_new_tokens=8)[1]
    assert "Hello!" in repr(report) and "PeftModel.from_pretrained" in report._repr_html_()


def test_lora_merged_export_matches_the_live_model_and_leaves_it_untouched(pretrained, tmp_path):
    _, folder = pretrained
    lm = _lora(folder, "lora")
    live = _logits(lm.model)
    state = {n: p.detach().clone() for n, p in lm.model.named_parameters()}
    report = export_model(lm, tmp_path / "merged", merge=True, max_new_tokens=6)
    assert report.kind == "merged" and report.smoke_ok, report.smoke_error
    names = {name for name, _ in report.files}
    assert "model.safetensors" in names and "config.json" in names and "adapter_config.json" not in names
    _assert_safetensors_only(tmp_path / "merged")
    merged = _fp32_base(tmp_path / "merged")
    assert not any("lora" in n for n, _ in merged.named_parameters())
    torch.testing.assert_close(_logits(merged), live, rtol=0, atol=1e-5)
    # the model being trained is still the LoRA model, bitwise the same
    assert all(torch.equal(state[n], p) for n, p in lm.model.named_parameters())
    assert torch.equal(_logits(lm.model), live) and lm.model.training


@needs_bnb
def test_qlora_merge_uses_a_full_precision_base(pretrained, tmp_path):
    _, folder = pretrained
    lm = _lora(folder, "qlora")
    adapter = export_model(lm, tmp_path / "adapter", smoke_prompt=None)
    assert adapter.smoke_text is None and adapter.smoke_error is None
    report = export_model(lm, tmp_path / "merged", merge=True, max_new_tokens=6)
    assert report.kind == "merged" and report.smoke_ok, report.smoke_error
    assert any("full precision" in note for note in report.notes)
    _assert_safetensors_only(tmp_path / "merged")
    merged = _fp32_base(tmp_path / "merged")
    assert "quantization_config" not in merged.config.to_dict()
    assert all(p.dtype == torch.float32 for p in merged.parameters())
    # the reference: the trained adapter on the base in full precision, unmerged
    from peft import PeftModel

    reference = PeftModel.from_pretrained(_fp32_base(folder), str(tmp_path / "adapter"))
    torch.testing.assert_close(_logits(merged), _logits(reference), rtol=0, atol=1e-5)
    # and the merged weights are base + B @ A * scale exactly, not 4-bit rounded ones
    base = _fp32_base(folder)
    layer = lm.model.base_model.model.model.layers[0].self_attn.q_proj
    delta = (layer.lora_B["default"].weight @ layer.lora_A["default"].weight) * layer.scaling["default"]
    expected = base.model.layers[0].self_attn.q_proj.weight + delta.detach()
    got = merged.model.layers[0].self_attn.q_proj.weight
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)
    import bitsandbytes.functional as bnbf

    dequantized = bnbf.dequantize_4bit(layer.base_layer.weight.data, layer.base_layer.weight.quant_state)
    assert (got - (dequantized.float() + delta.detach())).abs().max() > 1e-3  # what merging into nf4 would give


@needs_bnb
def test_quantized_merge_without_its_base_says_what_to_do(pretrained, tmp_path):
    _, folder = pretrained
    moved = tmp_path / "base-copy"
    shutil.copytree(folder, moved)
    lm = _lora(moved, "qlora")
    shutil.rmtree(moved)
    with pytest.raises(ConfigError, match="merge=False") as info:
        export_model(lm, tmp_path / "merged", merge=True)
    assert "full precision" in str(info.value)
    assert not (tmp_path / "merged").exists()


def test_a_failed_smoke_test_is_reported_and_the_files_stay(pretrained, tmp_path):
    _, folder = pretrained
    moved = tmp_path / "base-copy"
    shutil.copytree(folder, moved)
    lm = _lora(moved, "lora")
    shutil.rmtree(moved)  # the adapter is written, but its base cannot be loaded to try it
    report = export_model(lm, tmp_path / "adapter")
    assert not report.smoke_ok and "ConfigError" in report.smoke_error
    assert "FAILED" in repr(report) and (tmp_path / "adapter" / "adapter_model.safetensors").is_file()


def test_scratch_model_exports_whole_with_the_session_tokenizer(pretrained, tmp_path):
    session, _ = pretrained
    with pytest.raises(ConfigError, match="tokenizer=session.tokenizer"):
        export_model(session.model, tmp_path / "x")
    report = export_model(session.model, tmp_path / "scratch", tokenizer=session.tokenizer, merge=True,
                          smoke_prompt="one two three", max_new_tokens=4, use_chat_template=False)
    assert report.kind == "full" and report.smoke_ok, report.smoke_error
    assert report.notes and "no adapter" in report.notes[0]
    assert report.smoke_input == "one two three" and "four" in report.smoke_text  # it learned to count
    merged = _fp32_base(tmp_path / "scratch")
    torch.testing.assert_close(_logits(merged), _logits(session.model.model), rtol=0, atol=1e-6)
    _assert_safetensors_only(tmp_path / "scratch")
    from nbtune.eval.export import _umask

    if _umask() is not None:  # written private in a temporary folder, then given the usual permissions
        assert (tmp_path / "scratch").stat().st_mode & 0o777 == 0o777 & ~_umask()
        assert (tmp_path / "scratch" / "model.safetensors").stat().st_mode & 0o777 == 0o666 & ~_umask()
    # exporting again replaces the previous export; other folders are never replaced
    again = export_model(session.model, tmp_path / "scratch", tokenizer=session.tokenizer, smoke_prompt=None)
    assert again.files == report.files
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(ConfigError, match="did not export"):
        export_model(session.model, tmp_path / "mine", tokenizer=session.tokenizer)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


def test_bad_chat_template_and_base_folder_target_are_refused(pretrained, tmp_path):
    session, folder = pretrained
    with pytest.raises(ConfigError, match="chat template does not render"):
        export_model(session.model, tmp_path / "x", tokenizer=session.tokenizer, chat_template="{% for %}")
    lm = _lora(folder, "lora")
    with pytest.raises(ConfigError, match="base model itself"):
        export_model(lm, folder)
    assert (folder / "config.json").is_file()


def test_export_report_escapes_generated_text(tmp_path):
    from nbtune.viz.compare_report import ExportReport

    payload = "<script>alert('x')</script>"
    report = ExportReport(folder=str(tmp_path / payload), kind="adapter", method="lora", base=payload,
                          files=[(payload, 10)], chat_template=True, smoke_prompt=payload, smoke_input=payload,
                          smoke_text=payload)
    html = report._repr_html_()
    assert payload not in html and "&lt;script&gt;" in html
