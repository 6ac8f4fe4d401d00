"""The fine-tune path on tiny local models: full / lora / qlora / lora-8bit on CPU with real bitsandbytes.

Never touches the hub: a 2-layer Llama with a BPE tokenizer trained here is
saved to a temporary folder and loaded back as a "pretrained" model.
"""

from __future__ import annotations

import json
import time

import pytest
import torch

from nbtune.config import PretrainedModelConfig
from nbtune.data.tokens import train_bpe_tokenizer
from nbtune.device import DeviceInfo, pick_device
from nbtune.errors import ConfigError
from nbtune.models.pretrained import bnb_usable, plan_pretrained, use_model
from nbtune.models.rebuild import rebuild

CPU = pick_device("cpu")
METHODS = ["full", "lora", "qlora", "lora-8bit"]
needs_bnb = pytest.mark.skipif(not bnb_usable(CPU)[0], reason=f"bitsandbytes unusable: {bnb_usable(CPU)[1]}")


def _make_folder(path, tokenizer, *, hidden=64, layers=2, seed=0):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden,
                         num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=128, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                         tie_word_embeddings=True)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.save_pretrained(str(path))
    tokenizer.save_pretrained(str(path))
    return model


@pytest.fixture(scope="module")
def tokenizer():
    texts = [f"hello world, this is tiny sentence number {i} about cats and dogs" for i in range(300)]
    return train_bpe_tokenizer(texts, 320)


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory, tokenizer):
    folder = tmp_path_factory.mktemp("tiny-llama")
    _make_folder(folder, tokenizer)
    return folder


@pytest.fixture(scope="module")
def batch(tokenizer):
    ids = tokenizer(["hello world, this is tiny sentence number 7 about cats",
                     "dogs and cats say hello to the world number 12 again"], add_special_tokens=False,
                    padding="max_length", max_length=16, truncation=True, return_tensors="pt")["input_ids"]
    return ids


def _load(folder, method, **extra):
    settings = {"model": str(folder), "method": method, "lora_rank": 4, "lora_alpha": 8, "lora_dropout": 0.0}
    settings.update(extra)
    return use_model(PretrainedModelConfig(**settings), device=CPU, batch_size=2, seq_len=16)


def _grads(loaded, ids):
    model = loaded.model
    model.train()
    model.zero_grad(set_to_none=True)
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    return loss.item(), {n: None if p.grad is None else p.grad.detach().clone()
                         for n, p in loaded.named_trainable_parameters()}


@pytest.mark.parametrize("method", METHODS)
def test_method_trains_the_right_parameters_and_checkpoints(method, tiny_folder, batch, tmp_path):
    if method in ("qlora", "lora-8bit") and not bnb_usable(CPU)[0]:
        pytest.skip(bnb_usable(CPU)[1])
    loaded = _load(tiny_folder, method)
    model = loaded.model
    assert loaded.method == method and loaded.tokenizer is not None and loaded.tokenizer.pad_token is not None
    assert model.training
    trainable = loaded.named_trainable_parameters()
    names = [n for n, _ in trainable]
    if method == "full":
        assert len(trainable) == len(list(model.parameters()))
        assert all(p.dtype == torch.float32 for _, p in trainable)
        assert loaded.card.params_trainable == loaded.card.params_total == sum(p.numel() for p in model.parameters())
    else:
        from peft import PeftModel

        assert isinstance(model, PeftModel)
        assert names and all(".lora_A." in n or ".lora_B." in n for n in names)
        assert not any("lm_head" in n or "embed_tokens" in n for n in names)
        assert loaded.card.params_trainable == sum(p.numel() for _, p in trainable)
        assert all(p.dtype == torch.float32 for _, p in trainable)
        # all-linear: 7 projections in each of 2 layers, A and B each
        assert len(names) == 2 * 7 * 2
        assert loaded.card.params_trainable < 0.2 * loaded.card.params_total
    if method == "qlora":
        import bitsandbytes as bnb

        layers = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
        assert len(layers) == 14 and not any(m.support_avx512bf16_for_cpu for m in layers)
        assert layers[0].weight.quant_state.quant_type == "nf4"
        assert loaded.card.weight_bytes < _load(tiny_folder, "lora").card.weight_bytes
    if method == "lora-8bit":
        import bitsandbytes as bnb

        assert len([m for m in model.modules() if isinstance(m, bnb.nn.Linear8bitLt)]) == 14

    loss, grads = _grads(loaded, batch)
    assert 0 < loss < 20
    assert all(g is not None and torch.isfinite(g).all() for g in grads.values())
    assert any(g.abs().sum() > 0 for g in grads.values())

    target = loaded.save(tmp_path / "ckpt")
    files = {p.name for p in target.iterdir()}
    assert not [f for f in files if f.endswith((".bin", ".pt", ".pth", ".pkl", ".ckpt"))]
    assert {"tokenizer.json", "tokenizer_config.json", "nbtune_model.json"} <= files
    if method == "full":
        assert "model.safetensors" in files
    else:
        assert {"adapter_model.safetensors", "adapter_config.json"} <= files and "model.safetensors" not in files
        assert json.loads((target / "adapter_config.json").read_text())["r"] == 4

    saved = {n: p.detach().clone() for n, p in loaded.named_trainable_parameters()}
    with torch.no_grad():
        for _, p in loaded.named_trainable_parameters():
            p.add_(torch.randn_like(p))
    loaded.load_trainable_state(target)
    assert all(torch.equal(saved[n], p) for n, p in loaded.named_trainable_parameters())
    json.dumps(loaded.settings)


@needs_bnb
def test_qlora_gradients_survive_generate_and_no_grad_forward(tiny_folder, batch):
    """The AVX512-BF16 trap: bitsandbytes must not repack 4-bit weights after inference."""
    loaded = _load(tiny_folder, "qlora")
    model = loaded.model
    loss_before, before = _grads(loaded, batch)

    model.eval()
    with torch.no_grad():
        model(input_ids=batch)
    model.generate(input_ids=batch[:1, :5], max_new_tokens=4, do_sample=False,
                   pad_token_id=loaded.tokenizer.pad_token_id)
    model.train()
    with torch.no_grad():
        model(input_ids=batch)  # no-grad in train mode too

    loss_after, after = _grads(loaded, batch)
    assert loss_after == pytest.approx(loss_before, rel=1e-6, abs=1e-7)
    for name, grad in before.items():
        assert after[name] is not None, name
        torch.testing.assert_close(after[name], grad, rtol=1e-5, atol=1e-7, msg=name)


@needs_bnb
def test_the_repacking_trap_is_real_without_the_fix(tiny_folder, batch):
    """Control: with bitsandbytes' default the same check fails on AVX512-BF16 CPUs (so the fix is needed)."""
    from bitsandbytes.functional import has_avx512bf16

    if not has_avx512bf16():
        pytest.skip("this CPU has no AVX512-BF16: bitsandbytes never repacks here")
    import bitsandbytes as bnb

    loaded = _load(tiny_folder, "qlora")
    for layer in loaded.model.modules():
        if isinstance(layer, bnb.nn.Linear4bit):
            layer.support_avx512bf16_for_cpu = True
    _, before = _grads(loaded, batch)
    loaded.model.eval()
    with torch.no_grad():
        loaded.model(input_ids=batch)
    _, after = _grads(loaded, batch)
    broken = [n for n, g in before.items() if after[n] is None or not torch.allclose(after[n], g, rtol=1e-4)]
    assert broken, ("this bitsandbytes no longer corrupts LoRA gradients after inference: the "
                    "support_avx512bf16_for_cpu=False workaround in nbtune.models.pretrained may go, and this test")


@pytest.mark.parametrize("method", ["lora", "qlora"])
def test_gradient_checkpointing_gives_the_same_gradients(method, tiny_folder, batch):
    if method == "qlora" and not bnb_usable(CPU)[0]:
        pytest.skip(bnb_usable(CPU)[1])
    plain = _load(tiny_folder, method)
    settings = {"model": str(tiny_folder), "method": method, "lora_rank": 4, "lora_alpha": 8, "lora_dropout": 0.0}
    ckpt = use_model(PretrainedModelConfig(**settings), device=CPU, batch_size=2, seq_len=16,
                     gradient_checkpointing=True)
    assert ckpt.card.activation_bytes < plain.card.activation_bytes
    assert ckpt.model.config.use_cache is False
    _, g_plain = _grads(plain, batch)
    _, g_ckpt = _grads(ckpt, batch)
    for name, grad in g_plain.items():
        torch.testing.assert_close(g_ckpt[name], grad, rtol=1e-4, atol=1e-6)


def test_lora_init_is_seeded(tiny_folder):
    a = dict(_load(tiny_folder, "lora").named_trainable_parameters())
    b = dict(_load(tiny_folder, "lora").named_trainable_parameters())
    assert len(a) == 2 * 7 * 2 and a.keys() == b.keys()  # A and B of 7 projections in 2 layers
    assert all(torch.equal(a[n], b[n]) for n in a)
    assert any(a[n].abs().sum() > 0 for n in a if ".lora_A." in n)  # A is random (B starts at zero): seeded


def test_target_modules_list_and_bad_names(tiny_folder):
    loaded = _load(tiny_folder, "lora", target_modules="q_proj, v_proj")
    names = [n for n, _ in loaded.named_trainable_parameters()]
    assert len(names) == 2 * 2 * 2 and all("q_proj" in n or "v_proj" in n for n in names)
    with pytest.raises(ConfigError) as info:
        _load(tiny_folder, "lora", target_modules="query,value")
    assert info.value.column == "target_modules" and "q_proj" in info.value.fix


def test_pickle_only_folder_is_refused_unless_allowed(tmp_path, tokenizer):
    folder = tmp_path / "pickled"
    original = _make_folder(folder, tokenizer, seed=3)
    (folder / "model.safetensors").unlink()
    torch.save(original.state_dict(), folder / "pytorch_model.bin")
    with pytest.raises(ConfigError) as info:
        _load(folder, "full")
    assert info.value.column == "allow_pickle"
    assert "arbitrary code" in str(info.value) and "allow_pickle=True" in info.value.fix
    loaded = _load(folder, "full", allow_pickle=True)
    assert torch.equal(loaded.model.model.layers[1].mlp.up_proj.weight, original.model.layers[1].mlp.up_proj.weight)
    # safetensors are preferred when both exist, even with allow_pickle
    original.save_pretrained(str(folder))
    assert (folder / "model.safetensors").is_file()
    _load(folder, "full", allow_pickle=False)


def test_bad_folders_are_config_errors(tmp_path, tiny_folder, tokenizer):
    with pytest.raises(ConfigError, match="no model folder"):
        _load(tmp_path / "nowhere", "lora")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ConfigError, match="config.json"):
        _load(empty, "lora")
    adapter = _load(tiny_folder, "lora").save(tmp_path / "adapter")
    with pytest.raises(ConfigError) as info:
        _load(adapter, "lora")
    assert "adapter" in info.value.fix
    weightless = tmp_path / "weightless"
    weightless.mkdir()
    (weightless / "config.json").write_text((tiny_folder / "config.json").read_text())
    with pytest.raises(ConfigError, match="no model weights"):
        _load(weightless, "full")


def test_missing_hub_id_fails_fast_with_advice():
    started = time.perf_counter()
    with pytest.raises(ConfigError) as info:
        use_model(PretrainedModelConfig(model="nbtune-tests/no-such-model", method="lora"), device=CPU)
    assert time.perf_counter() - started < 20
    message = str(info.value)
    assert "could not be fetched" in message and "nbtune-tests/no-such-model" in message
    assert "model='default'" in info.value.fix and info.value.column == "model"


def test_quantized_methods_refused_where_bitsandbytes_cannot_run(tiny_folder):
    mps = DeviceInfo("mps", "Apple GPU (MPS)", "fp32", None, None)
    usable, why = bnb_usable(mps)
    assert not usable and why
    for method in ("qlora", "lora-8bit"):
        with pytest.raises(ConfigError) as info:
            use_model(PretrainedModelConfig(model=str(tiny_folder), method=method), device=mps)
        assert info.value.column == "method" and "method='lora'" in info.value.fix


def test_card_memory_follows_the_method(tiny_folder):
    cards = {m: _load(tiny_folder, m).card for m in (["full", "lora"] + (["qlora", "lora-8bit"]
                                                                          if bnb_usable(CPU)[0] else []))}
    assert cards["full"].gradient_bytes > 4 * cards["lora"].gradient_bytes
    assert cards["full"].optimizer_bytes == 8 * cards["full"].params_trainable
    if "qlora" in cards:
        assert cards["qlora"].weight_bytes < cards["lora-8bit"].weight_bytes < cards["lora"].weight_bytes
        assert cards["qlora"].params_total == cards["lora"].params_total  # counted unpacked
    for card in cards.values():
        assert card.fits is True and card.layers == 2 and card.hidden == 64 and card.kv_heads == 2
        assert card.total_bytes == (card.weight_bytes + card.gradient_bytes + card.optimizer_bytes
                                    + card.activation_bytes)


@pytest.mark.parametrize("method", METHODS)
def test_plan_before_loading_matches_the_loaded_card(method, tiny_folder):
    if method in ("qlora", "lora-8bit") and not bnb_usable(CPU)[0]:
        pytest.skip(bnb_usable(CPU)[1])
    config = PretrainedModelConfig(model=str(tiny_folder), method=method, lora_rank=4)
    planned = plan_pretrained(config, device=CPU, batch_size=2, seq_len=16)
    loaded = use_model(config, device=CPU, batch_size=2, seq_len=16).card
    assert (planned.params_total, planned.params_trainable) == (loaded.params_total, loaded.params_trainable)
    assert planned.weight_bytes == pytest.approx(loaded.weight_bytes, rel=0.02)
    assert planned.activation_bytes == loaded.activation_bytes


def test_remote_code_is_not_run_unless_trusted(tmp_path, tiny_folder):
    import shutil

    folder = tmp_path / "remote"
    shutil.copytree(tiny_folder, folder)
    config = json.loads((folder / "config.json").read_text())
    config.update(model_type="nbtune_custom", auto_map={"AutoConfig": "configuration_x.XConfig",
                                                        "AutoModelForCausalLM": "modeling_x.XModel"})
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "configuration_x.py").write_text("raise SystemExit('remote code ran')\n")
    with pytest.raises(ConfigError) as info:
        _load(folder, "lora")
    assert info.value.column == "trust_remote_code" and "trust_remote_code=True" in info.value.fix


def test_rebuild_pretrained_from_settings(tiny_folder, tmp_path):
    loaded = _load(tiny_folder, "lora")
    with torch.no_grad():
        for p in loaded.trainable_parameters():
            p.add_(0.5)
    ckpt = loaded.save(tmp_path / "ckpt")
    again = rebuild(json.loads(json.dumps(loaded.settings)), device=CPU)
    again.load_trainable_state(ckpt)
    assert all(torch.equal(a, b) for a, b in zip(loaded.trainable_parameters(), again.trainable_parameters(),
                                                   strict=True))
    other = _load(tiny_folder, "lora", lora_rank=2)
    with pytest.raises(ConfigError, match="LoRA settings"):
        other.load_trainable_state(ckpt)


@pytest.mark.slow
def test_default_model_is_converted_once_and_generates(tmp_path, monkeypatch):
    from nbtune.models.default import MARKER, default_model_folder

    monkeypatch.setenv("NBTUNE_CACHE_DIR", str(tmp_path / "cache"))
    started = time.perf_counter()
    folder = default_model_folder()
    converted = time.perf_counter() - started
    files = {p.name for p in folder.iterdir()}
    assert {"model.safetensors", "config.json", "tokenizer.json", MARKER} <= files
    assert "quantization_config" not in json.loads((folder / "config.json").read_text())
    started = time.perf_counter()
    assert default_model_folder() == folder
    assert time.perf_counter() - started < 2 < converted

    loaded = use_model(PretrainedModelConfig(model="default", method="lora"), device=CPU, batch_size=1, seq_len=32)
    tokenizer = loaded.tokenizer
    assert tokenizer.chat_template and tokenizer.eos_token == "<|im_end|>"
    assert 130e6 < loaded.card.params_total < 140e6 and loaded.card.layers == 30
    planned = plan_pretrained(PretrainedModelConfig(model="default", method="lora"), device=CPU, batch_size=1,
                              seq_len=32)
    assert planned.params_total == loaded.card.params_total
    assert planned.params_trainable == loaded.card.params_trainable
    assert loaded.source.startswith("default")
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                           add_generation_prompt=True, return_tensors="pt", return_dict=True)
    out = loaded.model.generate(**prompt, max_new_tokens=8, do_sample=False)
    answer = tokenizer.decode(out[0, prompt["input_ids"].shape[1]:], skip_special_tokens=True)
    assert "Paris" in answer
    ids = prompt["input_ids"]
    loss = loaded.model(input_ids=ids, labels=ids).loss
    loss.backward()
    assert all(p.grad is not None for p in loaded.trainable_parameters())
