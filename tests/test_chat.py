"""Chat: streamed answers add up to generate()'s greedy text, each model's own template, Stop, safe reports."""

from __future__ import annotations

import io
import threading

import pytest
import torch
from conftest import run_held_at_step

import nbtune
from nbtune.device import DeviceInfo
from nbtune.errors import ConfigError, StageOrderError
from nbtune.eval.chat import (
    ChatAnswer,
    ChatDelta,
    ChatModel,
    ChatTurn,
    Sampling,
    run_chat,
    stream_chat,
)
from nbtune.eval.generate import base_model_context, generate_texts
from nbtune.ui.chat_stream import TerminalStream
from nbtune.viz.chat_report import ChatReport, columns_html

CPU = DeviceInfo("cpu", "CPU", "fp32", None, None)


@pytest.fixture(scope="module")
def tokenizer():
    from nbtune.data.tokens import train_bpe_tokenizer

    texts = ["the quick brown fox jumps over the lazy dog", "one two three four five six seven eight",
             "hello there, how are you today?"] * 20
    return train_bpe_tokenizer(texts, 300)


def tiny_llama(tokenizer, seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                         bos_token_id=tokenizer.bos_token_id)
    return LlamaForCausalLM(config)


def lora_llama(tokenizer):
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(tiny_llama(tokenizer), LoraConfig(r=4, target_modules=["q_proj", "v_proj"],
                                                             lora_dropout=0.0))
    for name, param in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=0.5)  # adapters that change the answers
    return model


def script(model, tokens: list[int]) -> dict:
    """Make greedy decoding emit `tokens` in order, one per forward call (then repeat the last one).

    Returns the plan: set its "tokens" (and "call" to 0) to script the next answer.
    """
    plan = {"call": 0, "tokens": tokens}

    def hook(module, args, output):
        bias = torch.zeros(output.shape[-1])
        bias[plan["tokens"][min(plan["call"], len(plan["tokens"]) - 1)]] = 1e4
        plan["call"] += 1
        return output + bias

    model.lm_head.register_forward_hook(hook)
    return plan


def streamed(models, prompt, **options):
    deltas, turns = [], []
    for item in stream_chat(models, prompt, **options):
        (turns if isinstance(item, ChatTurn) else deltas).append(item)
    assert len(turns) == 1 and all(isinstance(d, ChatDelta) for d in deltas)
    return deltas, turns[0]


def joined(deltas, label):
    return "".join(d.delta for d in deltas if d.label == label)


@pytest.mark.parametrize("chat", [False, True])
def test_deltas_join_to_the_answer_and_equal_generates_greedy_text(tokenizer, chat):
    model = tiny_llama(tokenizer)
    prompts = ["the quick brown", "one two three"]
    for prompt in prompts:
        deltas, turn = streamed([ChatModel("m", model, tokenizer, chat, CPU)], prompt,
                                sampling=Sampling(max_new_tokens=24))
        [answer] = turn.answers
        [expected] = generate_texts(model, tokenizer, [prompt], chat=chat, max_new_tokens=24, device=CPU,
                                    modes=("greedy",))
        assert answer.text == expected.text and expected.text  # a random model writes something
        assert joined(deltas, "m") == answer.text
        assert answer.tokens == expected.new_tokens and answer.finished == expected.finished
        assert [d.tokens for d in deltas] == list(range(1, answer.tokens + 1))  # one delta per token
        assert deltas[-1].done and not any(d.done for d in deltas[:-1])


def test_the_text_grows_token_by_token_and_half_characters_wait(tokenizer):
    model = tiny_llama(tokenizer)
    words = tokenizer("one two three four", add_special_tokens=False)["input_ids"]
    euro = tokenizer("€", add_special_tokens=False)["input_ids"]  # three bytes: more than one token here
    assert len(euro) > 1
    script(model, [*words, *euro, *words])
    deltas, turn = streamed([ChatModel("m", model, tokenizer, False, CPU)], "x",
                            sampling=Sampling(max_new_tokens=len(words) * 2 + len(euro)))
    texts = [d.text for d in deltas]
    assert texts[len(words) - 1] == "one two three four"
    assert all(texts[i] == texts[len(words) - 1] for i in range(len(words), len(words) + len(euro) - 1))
    assert texts[len(words) + len(euro) - 1] == "one two three four€"  # no half character ever shown
    assert turn.answers[0].text == "one two three four€one two three four" == joined(deltas, "m")
    assert all("\ufffd" not in t for t in texts)


def test_tuned_and_base_take_turns_on_one_lora_model_and_each_equals_generate(tokenizer):
    model = lora_llama(tokenizer)
    loaded = type("Loaded", (), {"model": model, "is_lora": True, "method": "lora"})()
    columns = [ChatModel("tuned", model, tokenizer, True, CPU),
               ChatModel("base", model, tokenizer, True, CPU, context=lambda: base_model_context(loaded))]
    deltas, turn = streamed(columns, "hello there", sampling=Sampling(max_new_tokens=16))
    [tuned] = generate_texts(model, tokenizer, ["hello there"], chat=True, max_new_tokens=16, device=CPU,
                             modes=("greedy",))
    with base_model_context(loaded):
        [base] = generate_texts(model, tokenizer, ["hello there"], chat=True, max_new_tokens=16, device=CPU,
                                modes=("greedy",))
    assert [a.text for a in turn.answers] == [tuned.text, base.text] and tuned.text != base.text
    assert [d.label for d in deltas[:4]] == ["tuned", "base", "tuned", "base"]  # interleaved token by token
    model.train()
    streamed(columns, "x", sampling=Sampling(max_new_tokens=2))
    assert model.training  # eval mode only while chatting


def test_the_chat_template_is_used_with_every_earlier_turn_and_ends_at_end_of_turn(tokenizer):
    model = tiny_llama(tokenizer)
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    hello = tokenizer("hello there", add_special_tokens=False)["input_ids"]
    [the] = tokenizer(" the", add_special_tokens=False)["input_ids"]
    plan = script(model, [*hello, im_end])
    seen = []
    model.register_forward_pre_hook(lambda module, args, kwargs: seen.append(kwargs["input_ids"][0].tolist()),
                                    with_kwargs=True)
    columns = [ChatModel("m", model, tokenizer, True, CPU)]
    first = run_chat(columns, "how are you?")
    [answer] = first.answers
    assert answer.rendered == "<|im_start|>user\nhow are you?<|im_end|>\n<|im_start|>assistant\n"
    assert seen[0] == tokenizer(answer.rendered, add_special_tokens=False)["input_ids"]  # what the model saw
    assert answer.text == "hello there" and answer.finished and answer.tokens == len(hello) + 1
    assert first.history == {"m": [{"role": "user", "content": "how are you?"},
                                   {"role": "assistant", "content": "hello there"}]}
    plan.update(call=0, tokens=[the])
    second = run_chat(columns, "and then?", history=first, sampling=Sampling(max_new_tokens=2))
    assert second.answers[0].rendered == ("<|im_start|>user\nhow are you?<|im_end|>\n<|im_start|>assistant\n"
                                          "hello there<|im_end|>\n<|im_start|>user\nand then?<|im_end|>\n"
                                          "<|im_start|>assistant\n")
    assert len(second.turns) == 2 and second.text() == "the the" and not second.answers[0].finished
    assert second.answers[0].ending == "cut at 2 tokens"


def test_raw_text_models_see_only_the_latest_prompt(tokenizer):
    columns = [ChatModel("raw", tiny_llama(tokenizer), tokenizer, False, CPU)]
    first = run_chat(columns, "the quick", sampling=Sampling(max_new_tokens=3))
    second = run_chat(columns, "one two", history=first, sampling=Sampling(max_new_tokens=3))
    assert second.answers[0].rendered == "one two" and second.history == {}


def test_stop_ends_every_answer_between_two_tokens(tokenizer):
    model = tiny_llama(tokenizer)
    columns = [ChatModel("a", model, tokenizer, False, CPU), ChatModel("b", tiny_llama(tokenizer, 1), tokenizer,
                                                                         False, CPU)]
    stop, k = threading.Event(), 5

    def on_delta(delta):
        if delta.label == "a" and delta.tokens == k:
            stop.set()

    report = run_chat(columns, "one two", on_delta=on_delta, stop=stop, sampling=Sampling(max_new_tokens=100))
    a, b = report.answers
    assert a.tokens == k and b.tokens == k - 1  # b had not taken its k-th turn yet
    assert a.stopped and b.stopped and a.ending == "stopped" and report.turns[-1].stopped
    [full] = generate_texts(model, tokenizer, ["one two"], chat=False, max_new_tokens=k, device=CPU,
                            modes=("greedy",))
    assert a.text == full.text  # the answer so far is kept


def test_sampling_is_seeded_and_leaves_the_global_random_state_alone(tokenizer):
    model = tiny_llama(tokenizer)
    columns = [ChatModel("m", model, tokenizer, False, CPU)]
    before = torch.get_rng_state()
    texts = [run_chat(columns, "the", sampling=Sampling(24, temperature=1.5, seed=seed)).text()
             for seed in (3, 3, 4)]
    assert texts[0] == texts[1] and texts[0] != texts[2]
    assert torch.equal(torch.get_rng_state(), before)


def test_bad_settings_say_what_to_do(tokenizer):
    with pytest.raises(ConfigError, match="max_new_tokens"):
        Sampling(max_new_tokens=0)
    with pytest.raises(ConfigError, match="temperature"):
        Sampling(temperature=-1.0)
    with pytest.raises(ConfigError, match="top_p"):
        Sampling(top_p=0)
    columns = [ChatModel("m", tiny_llama(tokenizer), tokenizer, False, CPU)]
    with pytest.raises(ConfigError, match="history") as info:
        run_chat(columns, "x", history=[{"role": "user", "content": "hi"}])
    assert "s.chat('and then?', history=r)" in info.value.fix
    with pytest.raises(ConfigError, match="no models"):
        run_chat([], "x")


PAYLOAD = "<script>window.x=1</script><img src=x onerror=alert(1)>"


def test_prompts_and_answers_are_escaped_in_the_report_and_the_live_columns():
    answer = ChatAnswer(PAYLOAD, PAYLOAD, PAYLOAD, PAYLOAD, 3, 0.5, False, True)
    report = ChatReport([ChatTurn(PAYLOAD, [answer], {}, Sampling())])
    for html in (report._repr_html_(), columns_html([PAYLOAD], {PAYLOAD: PAYLOAD}, set())):
        assert "<script>" not in html and "<img" not in html
        assert "&lt;script&gt;window.x=1&lt;/script&gt;&lt;img src=x onerror=alert(1)&gt;" in html
    assert "6.0 tokens/s" in repr(report) and "stopped" in repr(report)


def test_terminal_stream_prints_each_model_as_it_writes():
    out = io.StringIO()
    show = TerminalStream(out)
    for delta in [ChatDelta("a", "one", "one", 1, False), ChatDelta("a", " two", "one two", 2, True),
                  ChatDelta("b", "three", "three", 1, True)]:
        show(delta)
    assert out.getvalue() == "\n── a ──\none two\n\n── b ──\nthree\n"


# ------------------------------------------------------------------ the Session method


def chat_session(tmp_path, name, docs, pretrained=None, **options):
    s = nbtune.Session(tmp_path / name)
    s.load(docs)
    s.tokenize(vocab_size=300, context_length=32)
    if pretrained is not None:
        s.use_model(str(pretrained), **options)
    else:
        s.new_model(preset="tiny", layers=2, hidden_size=64, heads=4, kv_heads=2)
    return s


def test_session_chat_compares_this_model_its_base_and_other_sessions(tmp_path, tiny_pretrained, counting_down_docs,
                                                                      capsys):
    s = chat_session(tmp_path, "lora", counting_down_docs, tiny_pretrained, method="lora", lora_dropout=0.0)
    scratch = chat_session(tmp_path, "scratch", counting_down_docs)
    report = s.chat("ten nine eight", others=[scratch], max_new_tokens=6)
    labels = [a.label for a in report.answers]
    assert labels == ["this session (lora)", "this session: base (adapters off)", "scratch (scratch)"]
    printed = capsys.readouterr().out  # outside a notebook: plain text, one model after another
    assert all(f"── {label} ──" in printed for label in labels)
    assert all(a.text in printed and a.tokens_per_s for a in report.answers)
    [expected] = generate_texts(s.model.model, s.model.tokenizer, ["ten nine eight"], chat=False, max_new_tokens=6,
                                device=s.model.device, modes=("greedy",))
    assert report.text() == expected.text
    quiet = s.chat("seven", others={"other": scratch}, base=False, stream=False, history=report)
    assert [a.label for a in quiet.answers] == ["this session (lora)", "other (scratch)"] and not capsys.readouterr().out
    assert len(quiet.turns) == 2
    with pytest.raises(ConfigError, match="base model"):
        scratch.chat("x", base=True, stream=False)


def test_session_chat_is_refused_while_a_run_trains(tmp_path, counting_down_docs):
    s = chat_session(tmp_path, "busy", counting_down_docs)
    with run_held_at_step(s) as run:
        with pytest.raises(StageOrderError, match="running") as info:
            s.chat("one two", stream=False)
        assert "run.wait()" in str(info.value) and run.id in str(info.value)
    assert s.chat("one two", stream=False, max_new_tokens=2).answers[0].tokens == 2  # fine once it stopped
