"""The Playground tab, driven headless: type, Send, watch the columns fill, Stop, Clear, other sessions."""

from __future__ import annotations

import threading
import time

import pytest
from conftest import counting_docs, run_held_at_step

import nbtune


def session_with_model(path, seed: int = 0):
    s = nbtune.Session(path)
    s.load(counting_docs(200, seed=seed))
    s.tokenize(vocab_size=300, context_length=32)
    s.new_model(preset="tiny", layers=2, hidden_size=64, heads=4, kv_heads=2, seed=seed)
    return s


def visible_columns(panel):
    return [c for c in panel.columns if c.widget.layout.display != "none"]


def test_send_streams_the_answer_into_a_column_and_keeps_the_conversation(tmp_path):
    s = session_with_model(tmp_path / "s")
    expected = s.chat("one two", stream=False, max_new_tokens=12)
    app = s.ui(background=False)
    assert [app.tabs.get_title(i) for i in range(len(app.panels))][-1] == "Playground"
    play = app.panel("Playground")
    play.max_new_tokens.value = 12
    play.prompt.value = "one two"
    play.send.click()
    assert app.errors.last is None
    [column] = visible_columns(play)
    assert column.label == "this session (scratch)" and "this session (scratch)" in column.header.value
    assert expected.text() and expected.text() in column.body.value and "▌" not in column.body.value
    assert play.report.text() == expected.text() and play.prompt.value == ""
    assert "tokens/s" in play.conversation.widget.outputs[0]["data"]["text/html"]
    assert not play.send.disabled and play.stop.disabled

    play.prompt.value = "<script>window.x=1</script>"
    play.send.click()
    assert len(play.report.turns) == 2  # the conversation goes on
    html = play.conversation.widget.outputs[0]["data"]["text/html"]
    assert "<script>window" not in html and "&lt;script&gt;window.x=1&lt;/script&gt;" in html

    play.clear.click()
    assert play.report is None and not visible_columns(play)
    play.prompt.value = "one two"
    play.send.click()
    assert len(play.report.turns) == 1 and play.report.text() == expected.text()


def test_an_empty_message_says_what_to_do(tmp_path):
    app = session_with_model(tmp_path / "s").ui(background=False)
    app.panel("Playground").send.click()
    assert "chatting failed" in app.errors.widget.value and "type something" in app.errors.widget.value


def test_other_sessions_of_the_kernel_answer_in_their_own_columns(tmp_path):
    s = session_with_model(tmp_path / "mine")
    other = session_with_model(tmp_path / "theirs", seed=1)
    app = s.ui(background=False)
    play = app.panel("Playground")
    app.show_tab("Playground")  # showing the tab re-reads which sessions are open
    assert ("theirs", str(other.workdir)) in play.others.options
    assert str(s.workdir) not in [value for _, value in play.others.options]
    play.others.value = (str(other.workdir),)
    play.max_new_tokens.value = 6
    play.prompt.value = "one two"
    play.send.click()
    assert [c.label for c in visible_columns(play)] == ["this session (scratch)", "theirs (scratch)"]
    theirs = other.chat("one two", stream=False, max_new_tokens=6).text()
    assert play.report.text("theirs (scratch)") == theirs and theirs in visible_columns(play)[1].body.value


def slow_down(model, seconds: float, at_call: dict | None = None):
    """Each forward pass takes at least `seconds` (a model on slow hardware); counts the calls."""
    calls = {"n": 0}

    def hook(module, args):
        calls["n"] += 1
        time.sleep(seconds)

    model.register_forward_pre_hook(hook)
    return calls


def test_columns_grow_while_tokens_stream_in_the_background(tmp_path):
    s = session_with_model(tmp_path / "s")
    slow_down(s.model.model, 0.03)
    app = s.ui(background=True)
    play = app.panel("Playground")
    play.max_new_tokens.value = 30
    play.prompt.value = "one two"
    lengths = []
    play._prepare_columns(1)
    play.columns[0].body.observe(lambda change: lengths.append(len(change["new"])), names="value")
    play.send.click()
    app.wait(120)
    assert app.errors.last is None and play.report.answers[0].tokens == 30
    growing = [n for n in lengths if n]
    assert len(set(growing)) >= 4 and growing == sorted(growing)  # several updates, each one longer


def test_stop_ends_the_answers_within_a_token(tmp_path):
    s = session_with_model(tmp_path / "s")
    other = session_with_model(tmp_path / "other", seed=1)
    reached, go = threading.Event(), threading.Event()
    calls = {"n": 0}

    def hold_at_fifth_token(module, args):
        calls["n"] += 1
        if calls["n"] == 5:
            reached.set()
            go.wait(60)

    s.model.model.register_forward_pre_hook(hold_at_fifth_token)
    app = s.ui(background=True)
    play = app.panel("Playground")
    app.show_tab("Playground")
    play.others.value = (str(other.workdir),)
    play.max_new_tokens.value = 200
    play.prompt.value = "one two"
    play.send.click()
    assert reached.wait(60), "the model never reached its fifth token"
    assert play.send.disabled and not play.stop.disabled
    play.stop.click()
    go.set()
    app.wait(60)
    mine, theirs = play.report.answers
    assert mine.tokens == 5 and theirs.tokens == 4  # the token being computed is the last one
    assert mine.stopped and theirs.stopped and "stopped" in play.state.value
    assert "[stopped]" in play.columns[0].body.value


def test_chat_is_refused_while_a_run_trains(tmp_path):
    s = session_with_model(tmp_path / "s")
    with run_held_at_step(s) as run:
        app = s.ui(background=False)
        play = app.panel("Playground")
        play.prompt.value = "one two"
        play.send.click()
        html = app.errors.widget.value
        assert "chatting failed" in html and run.id in html and "running" in html and "run.stop()" in html
        assert not play.send.disabled  # ready for the next try


@pytest.mark.parametrize("temperature", [0.0, 1.2])
def test_the_settings_reach_the_chat(tmp_path, temperature):
    s = session_with_model(tmp_path / "s")
    app = s.ui(background=False)
    play = app.panel("Playground")
    play.temperature.value, play.max_new_tokens.value = temperature, 3
    play.prompt.value = "one"
    play.send.click()
    sampling = play.report.turns[-1].sampling
    assert sampling.max_new_tokens == 3 and sampling.greedy == (temperature == 0.0)
    assert play.report.answers[0].tokens <= 3
