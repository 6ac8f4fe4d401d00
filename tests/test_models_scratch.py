"""The from-scratch model path: presets, the card (before allocation), the model, checkpoints."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from nbtune.config import ScratchModelConfig
from nbtune.data.tokens import train_bpe_tokenizer
from nbtune.device import DeviceInfo, pick_device
from nbtune.errors import ConfigError
from nbtune.models.base import LoadedModel
from nbtune.models.card import estimate_card, human_bytes
from nbtune.models.rebuild import rebuild
from nbtune.models.scratch import (
    PRESETS,
    new_model,
    plan_scratch,
    resolve_sizes,
    scratch_llama_config,
)

CPU = pick_device("cpu")


class _VocabOnly:
    """Stands in for a tokenizer where only the size and special ids matter."""

    def __init__(self, size: int = 4096) -> None:
        self.size = size
        self.bos_token_id, self.eos_token_id, self.pad_token_id = 0, 0, 3

    def __len__(self) -> int:
        return self.size


@pytest.fixture(scope="module")
def tokenizer():
    texts = [f"the quick brown fox {i} jumps over the lazy dog number {i * 7}" for i in range(300)]
    return train_bpe_tokenizer(texts, 400)


def _device(memory_gib: float | None, kind: str = "cpu", precision: str = "fp32") -> DeviceInfo:
    memory = int(memory_gib * 2**30) if memory_gib is not None else None
    return DeviceInfo(kind, f"test {kind}", precision, memory, None)


def _numel(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# --- presets and sizes ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("preset", list(PRESETS))
def test_param_count_formula_matches_transformers(preset):
    from transformers import LlamaForCausalLM

    for tied in (True, False):
        config = ScratchModelConfig(preset=preset, tie_embeddings=tied)
        llama = scratch_llama_config(config, vocab_size=4096, context_length=256, bos_id=0, eos_id=0, pad_id=3)
        with torch.device("meta"):  # no memory: the 360M preset costs nothing here
            model = LlamaForCausalLM(llama)
        card = plan_scratch(config, tokenizer=_VocabOnly(), context_length=256, device=CPU)
        assert card.params_total == _numel(model)


def test_preset_sizes_are_as_advertised():
    counts = {name: plan_scratch(ScratchModelConfig(preset=name), tokenizer=_VocabOnly(4096), context_length=512,
                                 device=CPU).params_total for name in PRESETS}
    assert 0.7e6 < counts["tiny"] < 1.3e6
    assert 8e6 < counts["small"] < 12e6
    assert 32e6 < counts["medium"] < 48e6
    assert 300e6 < counts["large"] < 400e6
    smollm2 = plan_scratch(ScratchModelConfig(preset="large"), tokenizer=_VocabOnly(49152), context_length=2048,
                           device=CPU)
    assert abs(smollm2.params_total - 361.8e6) < 1e6  # SmolLM2-360M has 361,821,120 parameters
    large = PRESETS["large"]
    assert (large["hidden_size"], large["layers"], large["heads"], large["kv_heads"], large["intermediate_size"]) == \
        (960, 32, 15, 5, 2560)


def test_explicit_settings_override_the_preset():
    sizes = resolve_sizes(ScratchModelConfig(preset="small", layers=3, hidden_size=96, heads=6, kv_heads=3,
                                             context_length=100), context_length=512)
    assert (sizes["layers"], sizes["hidden_size"], sizes["heads"], sizes["kv_heads"]) == (3, 96, 6, 3)
    assert sizes["intermediate_size"] == 256  # 96 * 8 / 3, follows the new width (the preset's is 704)
    assert sizes["context_length"] == 100  # the model's own setting wins over the tokenizer settings
    assert resolve_sizes(ScratchModelConfig(preset="tiny"), context_length=77)["context_length"] == 77
    # heads changed alone: the preset's kv_heads (2) are kept when they divide, else one kv head per head
    assert resolve_sizes(ScratchModelConfig(preset="tiny", heads=8), context_length=64)["kv_heads"] == 2
    assert resolve_sizes(ScratchModelConfig(preset="tiny", heads=1, hidden_size=64), context_length=64)["kv_heads"] == 1
    assert resolve_sizes(ScratchModelConfig(preset="tiny", intermediate_size=100), context_length=64)[
        "intermediate_size"] == 100


def test_llama_config_carries_tokenizer_ids_and_sdpa():
    config = ScratchModelConfig(preset="tiny", tie_embeddings=False)
    llama = scratch_llama_config(config, vocab_size=500, context_length=128, bos_id=1, eos_id=2, pad_id=3)
    assert (llama.vocab_size, llama.bos_token_id, llama.eos_token_id, llama.pad_token_id) == (500, 1, 2, 3)
    assert llama.max_position_embeddings == 128
    assert llama.tie_word_embeddings is False
    assert llama._attn_implementation == "sdpa"


@pytest.mark.parametrize(
    ("settings", "column", "words"),
    [
        ({"preset": "huge"}, "preset", "tiny"),  # the error lists the presets
        ({"hidden_size": 130}, "hidden_size", "divisible"),  # 130 / 4 preset heads
        ({"hidden_size": 96, "heads": 5}, "hidden_size", "divisible"),
        ({"heads": 6, "hidden_size": 126}, "heads", "even"),  # head size 21: RoPE needs an even head size
        ({"kv_heads": 3}, "kv_heads", "divide"),
        ({"layers": 0}, "layers", "minimum"),
    ],
)
def test_config_errors_say_what_and_how(settings, column, words):
    with pytest.raises(ConfigError) as info:
        resolve_sizes(ScratchModelConfig(**settings), context_length=64)
    assert info.value.column == column
    assert words in str(info.value)
    assert info.value.fix


def test_missing_tokenizer_is_a_config_error():
    with pytest.raises(ConfigError, match="tokenizer"):
        plan_scratch(ScratchModelConfig(), tokenizer=None, context_length=64, device=CPU)


# --- the card -------------------------------------------------------------------------------------------------------


def test_card_numbers_add_up():
    card = plan_scratch(ScratchModelConfig(preset="small"), tokenizer=_VocabOnly(), context_length=256, batch_size=4,
                        device=_device(16))
    # "small": 12 layers of width 256, 8 heads of 32 (4 kv heads: k and v are 256 x 128), MLP 704, vocab 4096, tied
    per_layer = 2 * 256 * 256 + 2 * 256 * 128 + 3 * 256 * 704 + 2 * 256  # q, o; k, v; gate, up, down; two norms
    n = 12 * per_layer + 4096 * 256 + 256  # + the embedding (also the head) + the final norm
    assert n == 9_902_336 and card.params_total == n and card.params_trainable == n
    assert card.weight_bytes == 4 * n and card.gradient_bytes == 4 * n and card.optimizer_bytes == 8 * n  # fp32 AdamW
    assert card.total_bytes == card.weight_bytes + card.gradient_bytes + card.optimizer_bytes + card.activation_bytes
    assert card.seq_len == 256 and card.batch == 4
    # 6N (forward 2N + backward 4N) + attention 12 L h T = 59,414,016 + 12 * 12 * 256 * 256
    assert card.flops_per_token == 68_851_200
    assert card.fits is True and card.advice is None
    assert 0 < card.activation_bytes < 4 * 2**30


def test_activations_scale_with_batch_and_shrink_with_checkpointing():
    def card(batch: int, ckpt: bool = False):
        return plan_scratch(ScratchModelConfig(preset="medium"), tokenizer=_VocabOnly(), context_length=512,
                            batch_size=batch, device=_device(16), gradient_checkpointing=ckpt)

    assert card(8).activation_bytes == 2 * card(4).activation_bytes
    assert card(8, ckpt=True).activation_bytes < card(8).activation_bytes / 3
    assert card(8, ckpt=True).weight_bytes == card(8).weight_bytes


def test_flops_formula_without_tied_embeddings_skips_the_lookup_table():
    card = estimate_card(params_total=1000, params_trainable=1000, layers=2, hidden=8, heads=2, kv_heads=2, vocab=10,
                         context=16, batch=1, seq_len=16, device=CPU, method="scratch", tied_embeddings=False)
    # the 10 x 8 input table is a lookup, not a matmul: 6 * (1000 - 80) + 12 * 2 layers * 8 wide * 16 tokens
    assert card.flops_per_token == 5_520 + 3_072


def test_card_fits_logic_and_advice():
    big = plan_scratch(ScratchModelConfig(preset="large"), tokenizer=_VocabOnly(), context_length=512,
                       device=_device(2.0))
    assert big.fits is False
    assert "smaller preset" in big.advice
    assert big.max_batch == 0

    # The weights fit but the activations of batch 64 x 1024 do not: lower the batch or checkpoint.
    device = _device(3.0)
    busy = plan_scratch(ScratchModelConfig(preset="medium"), tokenizer=_VocabOnly(), context_length=1024,
                        batch_size=64, device=device)
    assert busy.fits is False
    assert "batch_size" in busy.advice and "gradient_checkpointing" in busy.advice
    assert busy.max_batch >= 1
    just = plan_scratch(ScratchModelConfig(preset="medium"), tokenizer=_VocabOnly(), context_length=1024,
                        batch_size=busy.max_batch, device=device)
    over = plan_scratch(ScratchModelConfig(preset="medium"), tokenizer=_VocabOnly(), context_length=1024,
                        batch_size=busy.max_batch + 1, device=device)
    assert just.fits is True and over.fits is False

    unknown = plan_scratch(ScratchModelConfig(), tokenizer=_VocabOnly(), context_length=64,
                           device=_device(None, kind="mps"))
    assert unknown.fits is None and unknown.advice is None
    assert "unknown" in repr(unknown)


def test_gpu_card_uses_half_precision_activations_and_reserve():
    gpu = _device(16, kind="cuda", precision="bf16")
    cpu = _device(16)
    config = ScratchModelConfig(preset="small")
    on_gpu = plan_scratch(config, tokenizer=_VocabOnly(), context_length=256, device=gpu)
    on_cpu = plan_scratch(config, tokenizer=_VocabOnly(), context_length=256, device=cpu)
    assert on_gpu.activation_bytes < on_cpu.activation_bytes
    assert on_gpu.usable_memory < on_cpu.usable_memory  # the CUDA context reserve


def test_card_renders_and_escapes():
    card = plan_scratch(ScratchModelConfig(), tokenizer=_VocabOnly(), context_length=64, device=_device(0.001))
    card.source = "<script>alert(1)</script>"
    html = card._repr_html_()
    assert "<script>alert" not in html and "&lt;script&gt;" in html
    text = repr(card)
    assert "parameters" in text and "fits: NO" in text and "advice" in text
    assert human_bytes(1536) == "1.5 KiB" and human_bytes(None) == "unknown"


# --- the model ------------------------------------------------------------------------------------------------------


def test_new_model_is_a_trainable_llama_matching_its_card(tokenizer):
    from transformers import LlamaForCausalLM

    config = ScratchModelConfig(preset="tiny")
    planned = plan_scratch(config, tokenizer=tokenizer, context_length=64, batch_size=2, device=CPU)
    loaded = new_model(config, tokenizer=tokenizer, context_length=64, device=CPU, batch_size=2)
    model = loaded.model
    assert isinstance(loaded, LoadedModel) and isinstance(model, LlamaForCausalLM)
    assert loaded.method == "scratch" and loaded.tokenizer is None and loaded.source == "scratch (tiny)"
    assert loaded.card.params_total == planned.params_total == _numel(model)
    assert model.config.vocab_size == len(tokenizer)
    assert model.config.eos_token_id == tokenizer.eos_token_id == tokenizer.convert_tokens_to_ids("<|endoftext|>")
    assert model.config.pad_token_id == tokenizer.convert_tokens_to_ids("<|pad|>")
    assert model.config._attn_implementation == "sdpa"
    assert model.training
    assert all(p.dtype == torch.float32 and p.requires_grad for p in model.parameters())
    assert len(loaded.trainable_parameters()) == len(list(model.parameters()))
    json.dumps(loaded.settings)  # plain JSON

    ids = torch.tensor([tokenizer.encode("the quick brown fox jumps")] * 2)
    out = model(input_ids=ids, labels=ids)
    out.loss.backward()
    assert torch.isfinite(out.loss) and abs(out.loss.item() - torch.log(torch.tensor(len(tokenizer)))) < 1.0
    assert all(p.grad is not None for p in loaded.trainable_parameters())


def test_init_is_seeded_and_leaves_global_rng_alone(tokenizer):
    torch.manual_seed(123)
    expected_next = torch.rand(1)
    torch.manual_seed(123)
    a = new_model(ScratchModelConfig(seed=5), tokenizer=tokenizer, context_length=32, device=CPU).model
    assert torch.equal(torch.rand(1), expected_next)
    b = new_model(ScratchModelConfig(seed=5), tokenizer=tokenizer, context_length=32, device=CPU).model
    c = new_model(ScratchModelConfig(seed=6), tokenizer=tokenizer, context_length=32, device=CPU).model
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))
    assert not torch.equal(a.model.layers[0].mlp.up_proj.weight, c.model.layers[0].mlp.up_proj.weight)


def test_explicit_knobs_reach_the_model(tokenizer):
    config = ScratchModelConfig(preset="tiny", layers=3, hidden_size=64, heads=2, kv_heads=1, tie_embeddings=False)
    loaded = new_model(config, tokenizer=tokenizer, context_length=48, device=CPU)
    c = loaded.model.config
    assert (c.num_hidden_layers, c.hidden_size, c.num_attention_heads, c.num_key_value_heads) == (3, 64, 2, 1)
    assert c.intermediate_size == 192  # 64 * 8 / 3 = 170.7, rounded up to a multiple of 32
    assert c.max_position_embeddings == 48
    assert loaded.card.params_total == _numel(loaded.model)
    assert loaded.model.lm_head.weight.data_ptr() != loaded.model.model.embed_tokens.weight.data_ptr()


def test_save_writes_safetensors_and_restores_bitwise(tokenizer, tmp_path):
    from transformers import AutoModelForCausalLM

    loaded = new_model(ScratchModelConfig(), tokenizer=tokenizer, context_length=32, device=CPU)
    target = loaded.save(tmp_path / "ckpt")
    names = {p.name for p in target.iterdir()}
    assert "model.safetensors" in names and "config.json" in names
    assert not [n for n in names if n.endswith((".bin", ".pt", ".pth", ".pkl"))]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp folder left behind

    saved = {k: v.clone() for k, v in loaded.model.state_dict().items()}
    with torch.no_grad():
        for p in loaded.model.parameters():
            p.add_(torch.randn_like(p))
    loaded.load_trainable_state(target)
    assert all(torch.equal(saved[k], v) for k, v in loaded.model.state_dict().items())
    tied = loaded.model.lm_head.weight.data_ptr() == loaded.model.model.embed_tokens.weight.data_ptr()
    assert tied  # still one tensor after loading

    again = AutoModelForCausalLM.from_pretrained(str(target))  # loads anywhere transformers does
    assert torch.equal(again.model.embed_tokens.weight, saved["model.embed_tokens.weight"])

    loaded.save(tmp_path / "ckpt")  # overwriting an existing checkpoint is atomic too
    other = new_model(ScratchModelConfig(layers=3), tokenizer=tokenizer, context_length=32, device=CPU)
    with pytest.raises(ConfigError, match="same model settings"):
        other.load_trainable_state(target)


def test_rebuild_from_settings_gives_the_same_model(tokenizer):
    loaded = new_model(ScratchModelConfig(preset="tiny", layers=1, seed=9), tokenizer=tokenizer, context_length=40,
                       device=CPU, batch_size=3)
    settings = json.loads(json.dumps(loaded.settings))
    again = rebuild(settings, device=CPU, tokenizer=tokenizer)
    assert again.card.params_total == loaded.card.params_total and again.card.batch == 3
    assert all(torch.equal(x, y) for x, y in zip(loaded.model.parameters(), again.model.parameters(), strict=True))
    with pytest.raises(ConfigError, match="tokenizer"):
        rebuild(settings, device=CPU)


def test_release_drops_the_model(tokenizer):
    loaded = new_model(ScratchModelConfig(), tokenizer=tokenizer, context_length=32, device=CPU)
    loaded.release()
    assert loaded.model is None
    with pytest.raises(RuntimeError, match="released"):
        loaded.trainable_parameters()


def test_importing_the_model_modules_does_not_import_torch():
    code = ("import sys, nbtune.models.base, nbtune.models.card, nbtune.models.scratch, nbtune.models.pretrained, "
            "nbtune.models.default; heavy = [m for m in ('torch', 'transformers', 'peft', 'bitsandbytes') "
            "if m in sys.modules]; print(heavy); sys.exit(1 if heavy else 0)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
