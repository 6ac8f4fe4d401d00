"""The Session: stages, reports, persistence, atomic saves, failures that change nothing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import nbtune
from nbtune import CleanConfig, DataError, Session, StageOrderError

DOCS = [
    "The <b>first</b> document talks about   gardens and rivers.",
    "Contact me at jane.doe@example.com for the second document.",
    "A third document, with plain words about mountains and valleys.",
    "The <b>first</b> document talks about   gardens and rivers.",  # duplicate
    "Fourth: short notes on bread, butter and the morning sun.",
    "Fifth: a longer piece about ships, harbours, storms and the sea at night.",
] * 3 + [f"Unique line number {i} about stars, planets and the quiet moon." for i in range(40)]


@pytest.fixture
def session(tmp_path):
    s = Session(tmp_path / "work")
    s.load(list(DOCS))
    return s


def test_load_report_describes_the_data(session):
    report = session.reports["load"]
    assert report.rows == len(DOCS) and report.format == "text"
    assert report.train_rows + report.validation_rows == len(DOCS)
    # the six-row block appears three times and its rows 0 and 3 are the same text: 18 rows, 5 texts, 13 repeats
    assert {p.kind: p.count for p in report.problems}["duplicate"] == 13
    text = repr(report)
    assert f"rows: {len(DOCS)}" in text and "format: text" in text and "duplicate: 13" in text
    assert "<table" in report._repr_html_()
    assert len(report.figures()) == 2


def test_stage_order_errors_say_what_to_do(tmp_path):
    s = Session(tmp_path / "empty")
    with pytest.raises(StageOrderError, match="load"):
        s.clean()
    with pytest.raises(StageOrderError, match="load"):
        s.tokenize()


def test_preview_changes_nothing_and_clean_keeps_the_original(session):
    before = session.dataset
    preview = session.preview_clean(mask_pii=True)
    assert not preview.applied and session.dataset is before and session.clean_config is None
    report = session.clean(mask_pii=True)
    assert report.applied and report.rows_after < report.rows_before
    assert len(session.raw_dataset) == len(DOCS)
    texts = session.dataset["text"]
    assert any("<EMAIL>" in t for t in texts) and not any("<b>" in t for t in texts)
    assert session.clean_config.mask_pii is True


def test_undo_and_replay_on_new_data(session):
    session.clean(mask_pii=True)
    session.undo_clean()
    assert len(session.dataset) == len(DOCS) and not session.clean_applied
    session.load(["write to bob@example.org please", "write to bob@example.org please", "another line here"])
    report = session.clean()  # replays the stored recipe
    assert report.rows_after == 2 and any("<EMAIL>" in t for t in session.dataset["text"])


def _state_without_time(session):
    state = session.state()
    state.pop("saved")
    return json.dumps(state, sort_keys=True, default=str)


def test_failed_stage_leaves_the_session_as_it_was(session, tmp_path):
    session.clean()
    state_before = _state_without_time(session)
    rows_before = len(session.dataset)
    with pytest.raises(DataError):
        session.load(tmp_path / "does-not-exist.jsonl")
    with pytest.raises(DataError):
        session.clean(min_chars=10_000)  # empties the data
    with pytest.raises(nbtune.ConfigError):
        session.clean(keep_regex="([unclosed")
    assert len(session.dataset) == rows_before and session.clean_applied
    state_after = _state_without_time(session)
    assert state_after == state_before


def test_split_is_seeded_and_stable_under_cleaning(session):
    first = session.split(validation_fraction=0.2, seed=3)
    val_ids = set(session.validation_split["row_id"])
    again = session.split(validation_fraction=0.2, seed=3)
    assert first.validation_rows == again.validation_rows and set(session.validation_split["row_id"]) == val_ids
    session.clean()
    assert set(session.validation_split["row_id"]) <= val_ids
    assert not set(session.train_split["row_id"]) & val_ids


def test_save_and_open_restore_everything(session):
    session.split(validation_fraction=0.25, seed=7)
    session.clean(mask_pii=True, min_words=3)
    session.tokenize(vocab_size=300, context_length=64)
    reopened = Session.open(session.workdir)
    assert reopened.format == "text" and reopened.sources == session.sources
    assert reopened.clean_config == session.clean_config and reopened.clean_applied
    assert reopened.split_config == session.split_config
    assert reopened.tokenizer_config == session.tokenizer_config
    assert reopened.dataset["text"] == session.dataset["text"]
    assert reopened.raw_dataset["text"] == session.raw_dataset["text"]
    assert reopened.tokens["train"]["input_ids"] == session.tokens["train"]["input_ids"]
    assert reopened.tokenizer("gardens and rivers")["input_ids"] == session.tokenizer("gardens and rivers")["input_ids"]


def test_reopened_in_a_fresh_process(session):
    session.clean(mask_pii=True)
    session.close()  # another process may open the project for writing only once this one lets go
    code = (f"import nbtune, json; s = nbtune.Session.open({str(session.workdir)!r}); "
            "print(json.dumps([len(s.dataset), s.clean_config.mask_pii, s.format]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert json.loads(out.strip().splitlines()[-1]) == [len(session.dataset), True, "text"]


def test_a_crash_mid_save_leaves_the_previous_state_file(session, monkeypatch):
    state_file = session.workdir / "session.json"
    good = state_file.read_text()
    real_replace = os.replace

    def crash(src, dst):
        if str(dst).endswith("session.json"):
            raise OSError("disk full (simulated)")
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="simulated"):
        session.save()
    monkeypatch.setattr(os, "replace", real_replace)
    assert state_file.read_text() == good
    json.loads(state_file.read_text())
    assert not [p for p in session.workdir.iterdir() if p.name.endswith(".tmp")]
    saved = json.loads(good)["data"]
    assert sorted(p.name for p in (session.workdir / "data").iterdir()) == sorted(Path(v).name for v in saved.values())
    assert Session.open(session.workdir).raw_dataset["text"] == session.raw_dataset["text"]


def test_open_reports_a_corrupt_state_file_with_its_line(tmp_path):
    folder = tmp_path / "broken"
    folder.mkdir()
    (folder / "session.json").write_text('{\n  "version": 1,\n  "sources": [\n}')
    with pytest.raises(DataError) as info:
        Session.open(folder)
    assert "session.json" in str(info.value) and "line 4" in str(info.value)


def test_open_missing_folder(tmp_path):
    with pytest.raises(DataError, match="no saved nbtune session"):
        Session.open(tmp_path / "nothing-here")


def test_user_files_are_never_modified(tmp_path):
    path = tmp_path / "notes.jsonl"
    path.write_text("\n".join(json.dumps({"text": t}) for t in DOCS) + "\n")
    before = (path.read_bytes(), path.stat().st_mtime_ns)
    s = Session(tmp_path / "w")
    s.load(path)
    s.clean(mask_pii=True)
    s.tokenize(vocab_size=300, context_length=64)
    assert (path.read_bytes(), path.stat().st_mtime_ns) == before


def test_chat_data_end_to_end(tmp_path):
    rows = [{"instruction": f"Name a colour number {i}.", "input": "", "output": f"Colour {i} is blue."}
            for i in range(30)]
    s = Session(tmp_path / "chat")
    load = s.load(rows)
    assert load.format == "instruction"
    tokens = s.tokenize(vocab_size=300, context_length=64)
    assert tokens.response_only and 0 < tokens.trained_token_share < 1
    assert any(not trained for _, trained in tokens.example) and any(trained for _, trained in tokens.example)
    assert 'class="tok-mask"' in tokens._repr_html_()


def test_load_example_data_offline(tmp_path):
    s = Session(tmp_path / "ex")
    kjv = s.load_example("kjv")
    assert kjv.rows == 31103 and kjv.format == "text"
    dialogs = s.load_example("dialogs")
    assert dialogs.format == "chat" and dialogs.rows > 2000
    with pytest.raises(DataError, match="unknown example"):
        s.load_example("nope")


def test_append_adds_rows_with_new_ids(session):
    report = session.load(["one more line of text", "and another one"], append=True)
    assert report.rows == len(DOCS) + 2
    ids = session.dataset["row_id"]
    assert len(set(ids)) == len(ids) and max(ids) == len(DOCS) + 1
    assert len(session.sources) == 2


def test_report_file_is_self_contained(session, tmp_path):
    session.preview_clean()
    session.clean()
    session.tokenize(vocab_size=300, context_length=64)
    path = session.report(tmp_path / "r.html")
    html = path.read_text()
    assert "Plotly.newPlot" in html and "<script src=" not in html and len(html) > 3_000_000  # plotly.js inside
    for heading in ("1. Data", "2. Cleaning", "3. Tokens"):
        assert heading in html


def test_clean_config_object_and_overrides(session):
    report = session.clean(CleanConfig(exact_dedup=False), min_words=4)
    assert "exact_dedup" not in [s.name for s in report.steps]
    assert session.clean_config.min_words == 4
    with pytest.raises(nbtune.ConfigError, match="unknown setting"):
        session.clean(not_a_setting=1)


def test_session_repr_and_html(session):
    assert f"data: {len(DOCS)} rows, text" in repr(session) and "not tokenized" in repr(session)
    assert "nbtune Session" in session._repr_html_()


def test_workdir_paths_are_escaped_in_html(tmp_path):
    s = Session(tmp_path / "<img src=x onerror=alert(1)>")
    assert "<img src=x" not in s._repr_html_()


@pytest.mark.parametrize("missing", [Path("nope.csv")])
def test_missing_file_error_names_the_path(tmp_path, missing):
    with pytest.raises(DataError, match="nope.csv"):
        Session(tmp_path / "w").load(tmp_path / missing)
