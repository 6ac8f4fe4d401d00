"""Malformed and shared files: real files in temp folders, loaded through the Session and the app."""

from __future__ import annotations

import json
import os

import pytest
from conftest import SMALLEST_MODEL

import nbtune
from nbtune.data.load import load_source, safe_file_name
from nbtune.errors import DataError


def _write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.timeout(60)
@pytest.mark.parametrize("name,body,line", [
    ("deep.jsonl", '{"text": "ok"}\n' + "[" * 100000 + "]" * 100000 + "\n", 2),
    ("deep.json", '[{"text": "ok"},\n' + "[" * 100000 + "]" * 100000 + "]\n", 2),
    ("long_int.jsonl", '{"text": "ok"}\n{"text": "a", "n": ' + "9" * 5000 + "}\n", 2),
    ("long_int.json", '[{"text": "ok"},\n{"text": "a", "n": ' + "9" * 5000 + "}]\n", 2),
])
def test_malformed_json_is_a_data_error_with_file_and_line(tmp_path, name, body, line):
    path = _write(tmp_path / name, body)
    s = nbtune.Session(tmp_path / "s")
    with pytest.raises(DataError) as err:
        s.load(str(path))
    assert err.value.path == str(path) and err.value.line == line
    assert s.raw_dataset is None


@pytest.mark.timeout(60)
def test_tilde_is_the_home_folder(tmp_path, monkeypatch):
    home = tmp_path / "home"
    _write(home / "notes" / "rows.jsonl", '{"text": "from home"}\n')
    monkeypatch.setenv("HOME", str(home))
    s = nbtune.Session(tmp_path / "s")
    s.load("~/notes/rows.jsonl")
    assert s.raw_dataset["text"] == ["from home"]
    s2 = nbtune.Session(tmp_path / "s2")
    s2.load("~/notes/*.jsonl")
    assert s2.raw_dataset["text"] == ["from home"]


@pytest.fixture
def shared(tmp_path):
    """A shared data folder with links out of it, to itself and to its parent."""
    data, secret = tmp_path / "data", tmp_path / "elsewhere"
    _write(data / "a.jsonl", '{"text": "inside"}\n')
    _write(data / "sub" / "b.jsonl", '{"text": "inside too"}\n')
    _write(secret / "s.jsonl", '{"text": "SECRET"}\n')
    os.symlink(secret, data / "out")
    os.symlink(secret / "s.jsonl", data / "s.jsonl")
    os.symlink("..", data / "sub" / "up")
    os.symlink(".", data / "self")
    os.symlink(".", data / "self2")
    return data


@pytest.mark.timeout(60)
def test_a_folder_does_not_follow_links_out_of_it_unless_asked(tmp_path, shared):
    s = nbtune.Session(tmp_path / "s")
    s.load(str(shared))
    assert sorted(s.raw_dataset["text"]) == ["inside", "inside too"]
    followed = load_source(str(shared), follow_symlinks=True)
    assert sorted(followed.dataset["text"]) == ["SECRET", "inside", "inside too"]  # each file once


@pytest.mark.timeout(60)
def test_a_glob_through_self_referencing_links_terminates(tmp_path, shared):
    s = nbtune.Session(tmp_path / "s")
    s.load(str(shared / "**" / "*.jsonl"))
    assert sorted(s.raw_dataset["text"]) == ["inside", "inside too"]
    loaded = load_source(str(shared / "**" / "*.jsonl"), follow_symlinks=True)
    assert sorted(loaded.dataset["text"]) == ["SECRET", "inside", "inside too"]
    only_links = tmp_path / "only"
    only_links.mkdir()
    os.symlink(shared.parent / "elsewhere" / "s.jsonl", only_links / "x.jsonl")
    with pytest.raises(DataError, match="follow_symlinks=True"):
        s.load(str(only_links))


@pytest.mark.timeout(30)
@pytest.mark.parametrize("name", [".", "..", "", "a\x00b.jsonl", "x" * 300 + ".jsonl", "report\u202eldnl.jsonl",
                                  "\u2067evil.jsonl"])
def test_bad_upload_names_are_data_errors(name):
    with pytest.raises(DataError, match="upload name"):
        safe_file_name(name)


@pytest.mark.timeout(30)
def test_upload_names_lose_folders_and_repeats_are_numbered():
    taken: set[str] = set()
    assert [safe_file_name(n, taken) for n in ["../../etc/rows.jsonl", "ROWS.jsonl", "rows.jsonl", "a\\b.csv"]] == [
        "rows.jsonl", "ROWS (2).jsonl", "rows (3).jsonl", "b.csv"]


@pytest.mark.timeout(120)
def test_app_upload_saves_sanitised_names_and_clears_the_widget(tmp_path):
    from test_ui import simulate_upload

    s = nbtune.Session(tmp_path / "s")
    app = s.ui(background=False)
    data = app.panel("Data")
    simulate_upload(data.upload, "../rows.jsonl", b'{"text": "uploaded row"}\n{"text": "second"}\n')
    assert s.raw_dataset["text"] == ["uploaded row", "second"]
    assert [p.name for p in (s.workdir / "uploads").rglob("*.jsonl")] == ["rows.jsonl"]
    assert not data.upload.value  # the bytes are not kept in the widget
    simulate_upload(data.upload, "..", b'{"text": "x"}\n')
    assert "upload name" in app.errors.widget.value and not data.upload.value
    assert s.raw_dataset["text"] == ["uploaded row", "second"]


@pytest.mark.timeout(300)
def test_a_re_export_keeps_files_the_user_added(tmp_path, tiny_session):
    s = tiny_session("s", [f"row number {i} of the counting data" for i in range(60)], model=SMALLEST_MODEL)
    target = tmp_path / "export"
    s.export(target, smoke_prompt=None)
    _write(target / "NOTES.md", "my notes")
    _write(target / "eval" / "scores.txt", "0.5")
    report = s.export(target, smoke_prompt=None)
    assert (target / "NOTES.md").read_text() == "my notes" and (target / "eval" / "scores.txt").read_text() == "0.5"
    assert any("NOTES.md" in note for note in report.notes)
    written = json.loads((target / "nbtune_export.json").read_text())["files"]
    assert "NOTES.md" not in written and "config.json" in written
    # a file of the user's with a name the export writes itself: refused, naming it, and nothing is replaced
    record = json.loads((target / "nbtune_export.json").read_text())
    record["files"].remove("config.json")
    (target / "nbtune_export.json").write_text(json.dumps(record))
    with pytest.raises(nbtune.ConfigError, match="config.json"):
        s.export(target, smoke_prompt=None)
    assert (target / "NOTES.md").is_file()
