"""The widget app, driven headless: Button.click() and value changes, then the Session's state is checked."""

from __future__ import annotations

import datetime
import json
import threading
import time

import pytest
from conftest import counting_docs

import nbtune
from nbtune.ui.forms import IPYWIDGETS_MAJOR

TRAIN = {"steps": "6", "batch_size": "4", "eval_every": "3", "eval_batches": "2", "warmup_steps": "1",
         "learning_rate": "0.003"}


def set_form(form, values):
    for name, value in values.items():
        form[name].value = value


def loaded_app(tmp_path, **options):
    s = nbtune.Session(tmp_path / "s")
    app = s.ui(**options)
    data = app.panel("Data")
    data.path.value = str(write_docs(tmp_path))
    data.load_path.click()
    app.wait()
    return s, app


def write_docs(tmp_path, docs=None):
    path = tmp_path / "docs.jsonl"
    path.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs or counting_docs(200)), encoding="utf-8")
    return path


def tokenized_app(tmp_path, **options):
    s, app = loaded_app(tmp_path, **options)
    tokens = app.panel("Tokens")
    set_form(tokens.form, {"vocab_size": "300", "context_length": "32"})
    tokens.go.click()
    app.wait()
    model = app.panel("Model")
    set_form(model.scratch, {"layers": "2", "hidden_size": "64", "heads": "4", "kv_heads": "2"})
    model.create.click()
    app.wait()
    return s, app


def tab_titles(app) -> list[str]:
    return [app.tabs.get_title(i) for i in range(len(app.panels))]


def test_app_has_the_pipeline_tabs(tmp_path):
    app = nbtune.Session(tmp_path / "s").ui()
    assert tab_titles(app) == ["Data", "Clean", "Tokens", "Model", "Train", "Evaluate", "Compare", "Lab", "Playground"]
    built = nbtune.App(app.session)  # the exported class builds the same app as s.ui()
    assert built.session is app.session and tab_titles(built) == tab_titles(app)


def test_load_clean_preview_apply_and_undo(tmp_path):
    s, app = loaded_app(tmp_path)
    assert len(s.raw_dataset) == 200 and app.errors.last is None
    assert app.panel("Data").view.report is s.reports["load"]
    clean = app.panel("Clean")
    clean.form["min_words"].value = "5"  # a change previews at once (no debounce outside a kernel)
    preview = clean.view.report
    assert preview is s.reports["clean_preview"] and not preview.applied
    assert s.dataset is s.raw_dataset  # a preview changes nothing
    clean.apply.click()
    assert s.clean_applied and s.clean_config.min_words == 5
    assert len(s.dataset) == sum(1 for d in set(counting_docs(200)) if len(d.split()) >= 5)
    clean.undo.click()
    assert not s.clean_applied and len(s.dataset) == 200 and s.clean_config.min_words == 5


def test_bad_values_are_shown_next_to_the_field_and_change_nothing(tmp_path):
    s, app = loaded_app(tmp_path)
    clean = app.panel("Clean")
    clean.form["min_words"].value = "many"
    assert "not a whole number" in clean.form.rows["min_words"].message.value
    assert "previewing cleaning failed" in app.errors.widget.value
    clean.form["min_words"].value = "5"
    clean.form["max_words"].value = "3"  # validate(): min larger than max
    assert "larger than max_words" in clean.form.rows["min_words"].message.value
    clean.apply.click()
    assert not s.clean_applied
    clean.form["max_words"].value = ""
    assert clean.form.rows["min_words"].message.value == "" and app.errors.last is None


def test_a_preview_that_succeeds_does_not_hide_another_actions_error(tmp_path):
    s, app = loaded_app(tmp_path)
    tokens = app.panel("Tokens")
    tokens.form["vocab_size"].value = "lots"
    tokens.go.click()
    assert app.errors.action == "tokenizing"
    app.panel("Clean").form["min_words"].value = "2"  # a preview runs and succeeds
    assert s.reports["clean_preview"] is not None and "tokenizing failed" in app.errors.widget.value
    tokens.form["vocab_size"].value = "300"
    tokens.go.click()
    assert app.errors.last is None and s.tokens is not None


def test_errors_say_what_to_do_with_the_traceback_one_click_away(tmp_path):
    app = nbtune.Session(tmp_path / "s").ui()
    app.panel("Tokens").go.click()
    html = app.errors.widget.value
    assert "tokenizing failed" in html and "s.load" in html
    assert "<details" in html and "Traceback (most recent call last)" in html
    assert isinstance(app.errors.last, nbtune.StageOrderError)


def test_user_text_in_errors_is_escaped(tmp_path):
    app = nbtune.Session(tmp_path / "s").ui()
    data = app.panel("Data")
    data.path.value = str(tmp_path / "<img src=x onerror=alert(1)>.txt")
    data.load_path.click()
    html = app.errors.widget.value
    assert "<img" not in html and "&lt;img src=x onerror=alert(1)&gt;" in html


def test_upload_is_saved_in_the_session_and_loaded(tmp_path):
    s = nbtune.Session(tmp_path / "s")
    app = s.ui()
    content = "".join(json.dumps({"text": d}) + "\n" for d in counting_docs(50)).encode()
    simulate_upload(app.panel("Data").upload, "notes.jsonl", content)
    assert len(s.raw_dataset) == 50
    saved = list((s.workdir / "uploads").rglob("notes.jsonl"))
    assert len(saved) == 1 and saved[0].read_bytes() == content


def simulate_upload(upload, name: str, content: bytes) -> None:
    """What the browser does when a file is chosen, in ipywidgets 8 (value) and 7 (metadata, data, _counter)."""
    if IPYWIDGETS_MAJOR >= 8:
        upload.value = ({"name": name, "type": "text/plain", "size": len(content), "content": memoryview(content),
                         "last_modified": datetime.datetime.now(datetime.timezone.utc)},)
    else:
        upload.metadata = [{"name": name, "type": "text/plain", "size": len(content), "lastModified": 0}]
        upload.data = [content]
        upload._counter += 1


def test_split_form_calls_session_split(tmp_path):
    s, app = loaded_app(tmp_path)
    data = app.panel("Data")
    set_form(data.split, {"validation_fraction": "0.25", "seed": "3"})
    data.apply_split.click()
    assert s.split_config.validation_fraction == 0.25 and s.split_config.seed == 3
    assert len(s.validation_split) == 50


def test_model_estimate_updates_and_create_builds_it(tmp_path):
    s, app = loaded_app(tmp_path)
    model = app.panel("Model")
    model.scratch["layers"].value = "2"
    assert model.estimate.report is None  # no tokenizer yet: nothing to estimate, no error
    assert app.errors.last is None
    tokens = app.panel("Tokens")
    set_form(tokens.form, {"vocab_size": "300", "context_length": "32"})
    tokens.go.click()
    assert s.tokens is not None and s.tokenizer_config.vocab_size == 300
    model.scratch["hidden_size"].value = "64"
    small = model.estimate.report.params_total
    model.scratch["hidden_size"].value = "128"
    assert model.estimate.report.params_total > small and s.model is None  # an estimate allocates nothing
    model.create.click()
    assert s.model is not None and s.model.card.params_total == model.estimate.report.params_total


def test_train_in_the_foreground_then_evaluate_compare(tmp_path):
    s, app = tokenized_app(tmp_path)
    train = app.panel("Train")
    set_form(train.form, TRAIN)
    train.start.click()
    assert s.run.status == "finished" and len(s.run.metrics) == 6
    assert train.bar.value == 6 and train.bar.max == 6
    assert [r["step"] for r in train.chart.steps] == [1, 2, 3, 4, 5, 6]
    assert "finished" in train.state.value and "checkpoint" in train.state.value
    evaluate = app.panel("Evaluate")
    evaluate.max_rows.value = "8"
    evaluate.go.click()
    assert evaluate.view.report is s.reports["eval"] and evaluate.view.report.result.rows == 8
    evaluate.prompts.value = "one two\nfive"
    evaluate.generate.click()
    assert {g.prompt for g in s.reports["generate"].generations} == {"one two", "five"}
    compare = app.panel("Compare")
    compare.refresh()
    assert compare.runs.options == (s.run.id,)
    compare.go.click()
    assert compare.view.report is s.reports["compare"]


def started_in_the_background(tmp_path, steps: int, after: int):
    """A tiny model training in the background from the app, with at least `after` steps done."""
    s, app = tokenized_app(tmp_path, background=True)
    train = app.panel("Train")
    set_form(train.form, {**TRAIN, "steps": str(steps), "eval_every": "1000"})
    train.start.click()
    app.wait()
    wait_for(lambda: len(s.run.metrics) >= after)
    return s, app, train


def test_stop_pause_resume_in_the_background(tmp_path):
    s, app, train = started_in_the_background(tmp_path, steps=400, after=2)
    train.pause.click()
    wait_for(lambda: s.run.status == "paused")
    assert not train.resume.disabled and train.pause.disabled
    train.resume.click()
    app.wait()
    wait_for(lambda: s.run.status == "running")
    train.stop.click()
    s.run.wait(60)
    assert s.run.status == "stopped" and s.run.last_checkpoint is not None
    assert 2 <= len(s.run.metrics) < 400
    assert "stopped" in train.state.value and str(s.run.last_checkpoint) in train.state.value
    assert not train.resume.disabled and not train.start.disabled


def test_reopened_app_shows_the_session_state(tmp_path):
    s, app = tokenized_app(tmp_path)
    clean = app.panel("Clean")
    clean.form["mask_pii"].value = True
    clean.apply.click()
    app.panel("Tokens").go.click()  # cleaning again dropped the tokens
    run = s.train(steps=3, batch_size=4, eval_every=10, background=False, progress=False, live=False)
    again = s.ui()  # everything comes from the Session, nothing from the first app
    assert again.panel("Clean").form["mask_pii"].value is True
    assert again.panel("Clean").view.report is s.reports["clean"]
    assert again.panel("Tokens").form["vocab_size"].value == "300"
    assert again.panel("Model").scratch["hidden_size"].value == "64"
    assert [r["step"] for r in again.panel("Train").chart.steps] == [1, 2, 3]
    assert run.id in again.header.value
    reopened = nbtune.Session.open(s.workdir).ui()
    assert reopened.panel("Clean").form["mask_pii"].value is True
    assert reopened.panel("Train").form["steps"].value == "3"
    assert reopened.panel("Train").resume.disabled  # a finished run cannot be resumed; the state line says so
    assert f"{run.id}: finished" in reopened.panel("Train").state.value


def test_resume_button_continues_a_stopped_run_after_session_open(tmp_path):
    s, app, train = started_in_the_background(tmp_path, steps=60, after=3)
    train.stop.click()
    s.run.wait(60)
    stopped_at = s.run.metrics[-1]["step"]
    reopened = nbtune.Session.open(s.workdir)  # a new kernel: no model, no run handle in memory
    app2 = reopened.ui()
    train2 = app2.panel("Train")
    assert not train2.resume.disabled and "stopped" in train2.state.value
    train2.resume.click()
    app2.wait()
    reopened.run.wait(120)  # the run keeps its settings: it was started in the background
    assert reopened.run.status == "finished"
    assert reopened.run.metrics[0]["step"] == stopped_at + 1 and reopened.run.metrics[-1]["step"] == 60
    assert [r["step"] for r in train2.chart.steps][-1] == 60


def test_a_run_started_from_code_shows_up_when_the_train_tab_opens(tmp_path):
    s, app = tokenized_app(tmp_path)
    s.train(steps=2, batch_size=4, eval_every=10, background=False, progress=False, live=False)
    app.show_tab("Train")
    assert [r["step"] for r in app.panel("Train").chart.steps] == [1, 2]


def test_clicks_during_an_action_queue_behind_it_and_previews_keep_only_the_latest(tmp_path):
    s, app = loaded_app(tmp_path, background=True)
    done, started, release = [], threading.Event(), threading.Event()

    def held_until_released():
        started.set()
        assert release.wait(60), "the test never released the first action"
        done.append("slow")

    app.jobs.run("slow thing", held_until_released)
    assert started.wait(60), "the first action never started"  # from here on the worker is busy with it
    app.jobs.run("other", lambda: done.append("other"))
    assert "(then other)</span>" in app.jobs.status.value
    for word in ("first", "second", "third"):
        app.jobs.run("preview", lambda w=word: done.append(w), replace=True)
    assert "(then other, preview)</span>" in app.jobs.status.value  # waiting jobs in the order they will run
    assert done == []  # everything waits behind the held action
    release.set()
    app.wait(60)
    assert done == ["slow", "other", "third"] and app.errors.last is None


def test_the_app_says_when_it_runs_actions_in_the_foreground(tmp_path):
    session = nbtune.Session(tmp_path / "s")
    foreground, background = session.ui(background=False), session.ui(background=True)
    notice = foreground.widget.children[1].value
    assert "runs in the foreground" in notice and "interrupt button" in notice
    assert background.widget.children[1].value == ""


def test_core_never_imports_widgets(tmp_path):
    import subprocess
    import sys

    code = ("import sys, nbtune; s = nbtune.Session('x', autosave=False); import nbtune.ui.live;"
            "from nbtune.ui.live import notebook_listener; assert notebook_listener() is None;"
            "print('ipywidgets' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path).stdout
    assert out.strip() == "False"


def wait_for(condition, timeout: float = 60.0):
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail("timed out waiting for the app")
        time.sleep(0.05)
