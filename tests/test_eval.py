"""Evaluation: loss / perplexity / bits per byte are exact, generation is reproducible, reports are safe."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from datasets import Dataset

from nbtune.device import DeviceInfo
from nbtune.errors import ConfigError, DataError
from nbtune.eval.generate import (
    Generation,
    base_model_context,
    default_prompts,
    generate_texts,
    prompt_ids,
    render_prompt,
    stop_token_ids,
)
from nbtune.eval.metrics import EvalResult, ExampleScore, evaluate_rows, worst_examples
from nbtune.viz.eval_reports import EvalReport, GenerationReport

CPU = DeviceInfo("cpu", "CPU", "fp32", None, None)
PAYLOADS = ["<script>alert(1)</script>", "<img src=x onerror=alert(1)>"]


def _assert_escaped(html: str) -> None:
    for payload in PAYLOADS:
        assert payload not in html
    assert "<script>alert" not in html and "<img src=x" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "&lt;img src=x onerror=alert(1)&gt;" in html


# ---------------------------------------------------------------- metrics on a model with uniform predictions


class Uniform(torch.nn.Module):
    """Logits of zeros: every token has probability 1/V, so each scored token costs exactly ln V nats."""

    def __init__(self, vocab: int) -> None:
        super().__init__()
        self.vocab = vocab
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.calls: list[dict] = []

    def forward(self, input_ids, attention_mask=None, position_ids=None, use_cache=False):
        self.calls.append({"shape": tuple(input_ids.shape), "training": self.training, "mask": attention_mask,
                           "positions": position_ids, "grad": torch.is_grad_enabled()})
        return SimpleNamespace(logits=torch.zeros(*input_ids.shape, self.vocab))


ROWS = {
    "row_id": [10, 11, 12, 13, 14, 15],
    "input_ids": [[1, 2, 3, 4], [5, 6], [7, 8, 9, 1, 2, 3, 4, 5, 6], [3], [4, 4, 4], [1, 2, 3, 4, 5]],
    "loss_mask": [[1, 1, 1, 1], [1, 1], [0, 0, 0, 0, 1, 1, 1, 1, 1], [1], [0, 0, 0], [1, 1, 1, 1, 0]],
    "n_bytes": [9, 2, 17, 0, 0, 7],
}
SCORED = [3, 1, 5, 0, 0, 3]  # mask[1:] sums: the first token is never predicted


def _rows(data: dict = ROWS) -> Dataset:
    return Dataset.from_dict(data)


@pytest.mark.parametrize("batch_size", [1, 2, 4, 16])
def test_uniform_model_gives_ln_v_and_exact_bits_per_byte(batch_size):
    vocab = 37
    result = evaluate_rows(Uniform(vocab), _rows(), device=CPU, batch_size=batch_size)
    assert isinstance(result, EvalResult)
    assert result.tokens == sum(SCORED) == 12 and result.bytes == 35 and result.rows == 6
    assert result.loss == pytest.approx(math.log(vocab), rel=1e-6)
    assert result.perplexity == pytest.approx(vocab, rel=1e-5)
    assert result.bits_per_byte == pytest.approx(12 * math.log2(vocab) / 35, rel=1e-6)
    assert [e.row_id for e in result.examples] == ROWS["row_id"]  # the rows' order, whatever the batching
    assert [e.tokens for e in result.examples] == SCORED
    for example, n_bytes in zip(result.examples, ROWS["n_bytes"], strict=True):
        assert isinstance(example, ExampleScore) and example.bytes == n_bytes
        if example.tokens:
            assert example.loss == pytest.approx(math.log(vocab), rel=1e-6)
        else:
            assert math.isnan(example.loss)
        if n_bytes:
            assert example.bits_per_byte == pytest.approx(example.tokens * math.log2(vocab) / n_bytes, rel=1e-6)
        else:
            assert example.bits_per_byte is None


def _same(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or a == b


def test_batching_does_not_change_any_number():
    results = [evaluate_rows(Uniform(11), _rows(), device=CPU, batch_size=b) for b in (1, 3, 8)]
    for other in results[1:]:
        assert other.loss == results[0].loss and other.bits_per_byte == results[0].bits_per_byte
        for a, b in zip(other.examples, results[0].examples, strict=True):
            assert _same(a.loss, b.loss) and a.bits_per_byte == b.bits_per_byte and a.tokens == b.tokens


def test_eval_mode_no_grad_padding_positions_and_train_mode_restored():
    model = Uniform(13)
    model.train()
    evaluate_rows(model, _rows(), device=CPU, batch_size=2)
    assert model.training  # restored
    assert model.calls and not any(c["training"] or c["grad"] for c in model.calls)
    # windows longest first (8, 4, 3, 1 inputs); rows with nothing scored (13, 14) cost no forward pass
    assert [c["shape"] for c in model.calls] == [(2, 8), (2, 3)]
    first = model.calls[0]
    assert first["mask"].tolist() == [[1] * 8, [1] * 4 + [0] * 4]  # right padding
    assert first["positions"].tolist() == [list(range(8))] * 2

    model.calls.clear()
    evaluate_rows(model, _rows(), device=CPU, batch_size=1)
    assert [c["shape"] for c in model.calls] == [(1, 8), (1, 4), (1, 3), (1, 1)]
    assert all(c["mask"] is None for c in model.calls)  # no padding, no mask

    model.eval()
    evaluate_rows(model, _rows(), device=CPU)
    assert not model.training


def test_long_rows_are_scored_in_windows_and_max_rows_takes_the_first_rows():
    model = Uniform(17)
    whole = evaluate_rows(model, _rows(), device=CPU)
    model.calls.clear()
    windowed = evaluate_rows(model, _rows(), device=CPU, seq_len=3, batch_size=64)
    assert windowed.tokens == whole.tokens and windowed.bytes == whole.bytes  # every scored token still counts
    assert windowed.bits_per_byte == pytest.approx(whole.bits_per_byte, rel=1e-6)
    assert max(c["shape"][1] for c in model.calls) == 3
    first = evaluate_rows(Uniform(17), _rows(), device=CPU, max_rows=2)
    assert [e.row_id for e in first.examples] == [10, 11] and first.tokens == 4 and first.bytes == 11


def test_missing_byte_counts_and_bad_input():
    data = {k: v for k, v in ROWS.items() if k != "n_bytes"}
    result = evaluate_rows(Uniform(10), _rows(data), device=CPU)
    assert result.bits_per_byte is None and all(e.bits_per_byte is None for e in result.examples)
    assert result.loss == pytest.approx(math.log(10), rel=1e-6)
    with pytest.raises(DataError, match="not tokenized"):
        evaluate_rows(Uniform(10), Dataset.from_dict({"text": ["a"]}), device=CPU)
    with pytest.raises(ConfigError):
        evaluate_rows(Uniform(10), _rows(), device=CPU, batch_size=0)


def test_worst_examples_rank_by_bits_per_byte():
    result = evaluate_rows(Uniform(19), _rows(), device=CPU)
    worst = worst_examples(result, n=3)
    values = [e.bits_per_byte for e in worst]
    assert values == sorted(values, reverse=True) and all(e.tokens for e in worst)
    assert [e.row_id for e in worst] == [11, 15, 10]  # 1 token in 2 bytes, 3 in 7, 3 in 9


# ---------------------------------------------------------------- metrics on a real (tiny) Llama


@pytest.fixture(scope="module")
def tiny_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=61, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    return LlamaForCausalLM(config)


def _random_rows(n: int = 9, seed: int = 1) -> Dataset:
    g = torch.Generator().manual_seed(seed)
    ids, masks = [], []
    for _ in range(n):
        length = int(torch.randint(2, 25, (1,), generator=g))
        ids.append(torch.randint(0, 61, (length,), generator=g).tolist())
        prompt = int(torch.randint(0, length // 2 + 1, (1,), generator=g))
        masks.append([0] * prompt + [1] * (length - prompt))
    return Dataset.from_dict({"row_id": list(range(100, 100 + n)), "input_ids": ids, "loss_mask": masks,
                              "n_bytes": [3 * len(r) for r in ids]})


def _reference(model, rows: Dataset, seq_len: int | None = None) -> list[tuple[float, int]]:
    """One row (and window) at a time, no padding, no attention mask: (sum of nats, scored tokens)."""
    out = []
    with torch.no_grad():
        for ids, mask in zip(rows["input_ids"], rows["loss_mask"], strict=True):
            ids, mask = list(ids), list(mask)
            total, count = 0.0, 0
            step = seq_len or len(ids)
            for start in range(0, len(ids) - 1, step):
                stop = min(start + step, len(ids) - 1)
                logits = model(input_ids=torch.tensor([ids[start:stop]])).logits[0]
                ce = torch.nn.functional.cross_entropy(logits, torch.tensor(ids[start + 1: stop + 1]), reduction="none")
                weights = torch.tensor(mask[start + 1: stop + 1], dtype=torch.float32)
                total += float((ce * weights).sum())
                count += int(weights.sum())
            out.append((total, count))
    return out


@pytest.mark.parametrize("seq_len", [None, 5])
def test_tiny_llama_matches_one_row_at_a_time(tiny_llama, seq_len):
    rows = _random_rows()
    tiny_llama.train()
    result = evaluate_rows(tiny_llama, rows, device=CPU, batch_size=4, seq_len=seq_len)
    assert tiny_llama.training and all(m.training for m in tiny_llama.modules())
    tiny_llama.eval()
    reference = _reference(tiny_llama, rows, seq_len)
    for example, (nats, count), n_bytes in zip(result.examples, reference, rows["n_bytes"], strict=True):
        assert example.tokens == count
        assert example.loss == pytest.approx(nats / count, rel=1e-5, abs=1e-6)
        assert example.bits_per_byte == pytest.approx(nats / math.log(2) / n_bytes, rel=1e-5, abs=1e-6)
    total_nats, total_tokens = sum(r[0] for r in reference), sum(r[1] for r in reference)
    assert result.loss == pytest.approx(total_nats / total_tokens, rel=1e-5)
    assert result.bits_per_byte == pytest.approx(total_nats / math.log(2) / sum(rows["n_bytes"]), rel=1e-5)
    other = evaluate_rows(tiny_llama, rows, device=CPU, batch_size=1, seq_len=seq_len)
    assert other.loss == pytest.approx(result.loss, rel=1e-5)


# ---------------------------------------------------------------- generation


@pytest.fixture(scope="module")
def tokenizer():
    from nbtune.data.tokens import train_bpe_tokenizer

    texts = ["the quick brown fox jumps over the lazy dog", "one two three four five six seven eight",
             "hello there, how are you today?"] * 20
    return train_bpe_tokenizer(texts, 300)


@pytest.fixture
def gen_model(tokenizer):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                         bos_token_id=tokenizer.bos_token_id)
    return LlamaForCausalLM(config)


def _ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def _script(model, tokens: list[int]) -> None:
    """Make greedy decoding emit `tokens` in order (then keep repeating the last one)."""
    state = {"call": 0}

    def hook(module, args, output):
        bias = torch.zeros(output.shape[-1])
        bias[tokens[min(state["call"], len(tokens) - 1)]] = 1e4
        state["call"] += 1
        return output + bias

    model.lm_head.register_forward_hook(hook)


def test_greedy_is_deterministic_and_sampling_is_reproducible(gen_model, tokenizer):
    prompts = ["the quick brown", "one two"]
    kwargs = dict(chat=False, max_new_tokens=12, device=CPU)
    rng_before = torch.get_rng_state()
    first = generate_texts(gen_model, tokenizer, prompts, seed=3, **kwargs)
    assert torch.equal(torch.get_rng_state(), rng_before)  # the caller's random state is untouched
    again = generate_texts(gen_model, tokenizer, prompts, seed=3, **kwargs)
    assert [(g.prompt, g.mode) for g in first] == [(p, m) for p in prompts for m in ("greedy", "sampled")]
    assert [g.text for g in first] == [g.text for g in again]
    other_seed = generate_texts(gen_model, tokenizer, prompts, seed=4, temperature=1.5, **kwargs)
    greedy = [g.text for g in first if g.mode == "greedy"]
    assert greedy == [g.text for g in other_seed if g.mode == "greedy"]
    sampled = [g.text for g in first if g.mode == "sampled"]
    assert sampled != [g.text for g in other_seed if g.mode == "sampled"]
    assert all(isinstance(g, Generation) and g.model == "model" and g.text == g.text.strip() for g in first)


def test_raw_text_returns_only_the_continuation_without_special_tokens(gen_model, tokenizer):
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    script = [*_ids(tokenizer, " fox jumps"), im_end, *_ids(tokenizer, " dog"), tokenizer.eos_token_id]
    _script(gen_model, script)
    seen = []
    original = gen_model.generate

    def spy(**kwargs):
        seen.append(kwargs["input_ids"][0].tolist())
        return original(**kwargs)

    gen_model.generate = spy
    [g] = generate_texts(gen_model, tokenizer, ["the quick brown"], chat=False, max_new_tokens=10, device=CPU,
                         modes=("greedy",), label="tuned")
    assert seen[0] == tokenizer("the quick brown", add_special_tokens=False)["input_ids"]  # no BOS added
    # raw text does not stop at the end-of-turn marker, only at EOS; special tokens are not in the text
    assert g.text == "fox jumps dog" and g.finished and g.new_tokens == len(script) and g.model == "tuned"


def test_chat_uses_the_template_and_stops_at_end_of_turn(gen_model, tokenizer):
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    words = _ids(tokenizer, "hello there")
    _script(gen_model, [*words, im_end, *_ids(tokenizer, " dog")])
    rendered = render_prompt(tokenizer, "how are you?", chat=True)
    assert rendered == "<|im_start|>user\nhow are you?<|im_end|>\n<|im_start|>assistant\n"
    seen = []
    original = gen_model.generate

    def spy(**kwargs):
        seen.append(kwargs)
        return original(**kwargs)

    gen_model.generate = spy
    [g] = generate_texts(gen_model, tokenizer, ["how are you?"], chat=True, max_new_tokens=10, device=CPU,
                         modes=("greedy",))
    assert tokenizer.decode(seen[0]["input_ids"][0]) == rendered
    assert seen[0]["input_ids"][0].tolist() == prompt_ids(tokenizer, "how are you?", chat=True)
    assert im_end in seen[0]["eos_token_id"] and tokenizer.eos_token_id in seen[0]["eos_token_id"]
    assert g.text == "hello there" and g.finished and g.new_tokens == len(words) + 1


def test_stop_tokens_take_a_list_of_eos_ids(gen_model, tokenizer):
    gen_model.generation_config.eos_token_id = [tokenizer.eos_token_id, 7]
    stops = stop_token_ids(tokenizer, chat=False, model=gen_model)
    assert stops == [tokenizer.eos_token_id, 7]
    assert tokenizer.convert_tokens_to_ids("<|im_end|>") in stop_token_ids(tokenizer, chat=True, model=gen_model)


def test_cut_generation_is_not_finished(gen_model, tokenizer):
    [the] = _ids(tokenizer, " the")
    _script(gen_model, [the])
    [g] = generate_texts(gen_model, tokenizer, ["x"], chat=False, max_new_tokens=4, device=CPU, modes=("greedy",))
    assert g.text == "the the the the" and not g.finished and g.new_tokens == 4
    with pytest.raises(ConfigError):
        generate_texts(gen_model, tokenizer, ["x"], chat=False, device=CPU, temperature=0)


def test_base_model_context_turns_lora_off(gen_model):
    from peft import LoraConfig, get_peft_model

    peft_model = get_peft_model(gen_model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], lora_dropout=0.0))
    for name, param in peft_model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=0.5)
    ids = torch.tensor([[1, 5, 9, 14]])
    with torch.no_grad():
        tuned = peft_model(input_ids=ids).logits
        with base_model_context(SimpleNamespace(model=peft_model, is_lora=True, method="lora")):
            base = peft_model(input_ids=ids).logits
        after = peft_model(input_ids=ids).logits
    assert not torch.allclose(tuned, base) and torch.equal(tuned, after)
    for method in ("full", "scratch"):
        with pytest.raises(ConfigError, match="base model"):
            base_model_context(SimpleNamespace(model=gen_model, is_lora=False, method=method))


# ---------------------------------------------------------------- default prompts


def test_default_prompts_from_text_rows():
    texts = ["In the beginning God created the heaven and the earth. And the earth was without form",
             "", "   ", "short row here", "one\ntwo  three four five six seven eight nine ten",
             "x" * 500]
    rows = Dataset.from_dict({"row_id": list(range(len(texts))), "text": texts})
    prompts = default_prompts(rows, chat=False, n=4, max_chars=120)
    assert prompts == ["In the beginning God created the heaven and", "short", "x" * 120,
                       "one\ntwo  three four five"]  # spread over the rows first, empty rows skipped
    assert default_prompts(rows, chat=False, n=2) == [prompts[0], "x" * 120]
    assert default_prompts(rows.select([]), chat=False) == []


def test_default_prompts_from_chat_rows():
    messages = [
        [{"role": "system", "content": "be brief"}, {"role": "user", "content": "What is a <b>tag</b>?"},
         {"role": "assistant", "content": "markup"}],
        [{"role": "user", "content": "  Hi there  "}, {"role": "assistant", "content": "hello"}],
        [{"role": "assistant", "content": "no user turn"}],
        [{"role": "user", "content": "What is a <b>tag</b>?"}, {"role": "assistant", "content": "again"}],
        [{"role": "user", "content": "word " * 100}, {"role": "assistant", "content": "long"}],
    ]
    rows = Dataset.from_dict({"row_id": list(range(5)), "messages": messages})
    prompts = default_prompts(rows, chat=True, n=5, max_chars=30)
    assert prompts[:2] == ["What is a <b>tag</b>?", "Hi there"]
    assert len(prompts) == 3 and len(prompts[2]) <= 30 and prompts[2].startswith("word word")
    with pytest.raises(DataError):
        default_prompts(Dataset.from_dict({"input_ids": [[1]]}), chat=False)


# ---------------------------------------------------------------- reports


def _result(values: list[float | None], loss: float = 2.0, bpb: float | None = 1.1, tokens: int = 40) -> EvalResult:
    examples = [ExampleScore(i, loss + 0.1 * i, v, 10, 30 if v is not None else 0) for i, v in enumerate(values)]
    return EvalResult(loss=loss, perplexity=math.exp(loss), bits_per_byte=bpb, tokens=tokens, bytes=120,
                      rows=len(values), seconds=0.5, examples=examples)


def test_eval_report_escapes_texts_and_draws_the_histogram(tmp_path):
    tuned, base = _result([0.9, 1.2, 1.0, 1.4]), _result([1.5, 1.9, 1.6, 2.2], loss=3.0, bpb=1.8, tokens=44)
    worst = [(3, 1.4, f"row text {PAYLOADS[0]}"), (1, 1.2, f"{PAYLOADS[1]}\nsecond line")]
    report = EvalReport(split="validation", result=tuned, model="tuned", worst=worst, others=[("base", base)],
                        seq_len=512)
    html = report._repr_html_()
    _assert_escaped(html)
    assert "Comparison" in html and "-38.9%" in html  # 1.1 vs 1.8 bits per byte
    assert "compare bits per byte, not loss" in html  # token counts differ
    text = repr(report)
    assert "bits per byte: 1.1000" in text and "tokenizer" in text and "perplexity" in text
    [fig] = report.figures()
    assert [t.type for t in fig.data] == ["bar", "bar"] and [t.name for t in fig.data] == ["tuned", "base"]
    assert "bits per byte" in fig.layout.xaxis.title.text and fig.layout.yaxis.title.text == "rows"
    assert sum(fig.data[0].y) == 4

    from nbtune.viz.report import write_html_report

    page = write_html_report(tmp_path / "r.html", "eval", [("Evaluation", report)]).read_text()
    assert "<script>alert" not in page and "<img src=x" not in page


def test_eval_report_falls_back_to_loss_without_bytes():
    result = _result([None, None, None], bpb=None)
    report = EvalReport(split="validation", result=result)
    [fig] = report.figures()
    assert [t.type for t in fig.data] == ["bar"] and "loss" in fig.layout.xaxis.title.text
    assert "unknown" in repr(report)
    assert EvalReport(split="v", result=_result([], bpb=None)).figures() == []


def test_generation_report_escapes_and_keeps_whitespace():
    gens = [Generation("tuned", PAYLOADS[0], "greedy", f"{PAYLOADS[1]}\n  indented", 5, True),
            Generation("tuned", PAYLOADS[0], "sampled", "", 64, False),
            Generation("base", PAYLOADS[0], "greedy", PAYLOADS[0], 3, True),
            Generation("base", PAYLOADS[0], "sampled", "b", 2, True),
            Generation(PAYLOADS[1], "plain prompt", "greedy", "x", 1, True)]
    report = GenerationReport(gens, chat=True, max_new_tokens=64, temperature=0.8, top_p=0.95, seed=0)
    html = report._repr_html_()
    _assert_escaped(html)
    assert "&lt;img src=x onerror=alert(1)&gt;\n  indented" in html and "white-space:pre-wrap" in html
    assert 'rowspan="2"' in html and "[cut at 64 tokens]" in html and "(nothing)" in html
    header = html[html.index("<thead>"): html.index("</thead>")]
    assert header.count("<th>") == 5  # prompt, mode, three models
    assert report.figures() == [] and "seed 0" in repr(report)


def test_session_evaluate_and_generate_are_wired(tmp_path, tiny_session, tiny_pretrained, counting_down_docs):
    from conftest import FAST

    s = tiny_session("wired", counting_down_docs, model=None)
    s.use_model(str(tiny_pretrained), method="lora", lora_dropout=0.0)
    before = s.evaluate(max_rows=16)
    s.train(steps=20, **{**FAST, "learning_rate": 1e-2})
    after = s.evaluate(max_rows=16)
    assert after.result.bits_per_byte < before.result.bits_per_byte
    assert after.others and after.others[0][1].bits_per_byte == pytest.approx(before.result.bits_per_byte)
    scratch = tiny_session("scratch", counting_down_docs)
    report = s.generate(["ten nine eight"], max_new_tokens=4, others={"scratch": scratch})
    labels = {g.model for g in report.generations}
    assert len(labels) == 3 and len(report.generations) == 6
    html = s.report(tmp_path / "r.html").read_text()
    assert "5. Evaluation" in html and "5. Generations" in html
