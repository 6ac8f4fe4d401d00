"""Masked means masked in recipes too, and a report never overwrites a file nbtune did not write."""

from __future__ import annotations

import pytest
from conftest import FAST, TINY_MODEL, counting_docs

import nbtune
from nbtune import ConfigError

pytestmark = pytest.mark.timeout(300)

SECRETS = ["jane.doe@example.com", "+1 415 555 0134", "10.20.30.40"]


def test_a_recipe_of_masked_data_copies_no_original_value_and_rebuilds_the_same_tokens(tmp_path):
    from nbtune.recipe import build_session, tokens_fingerprint

    rows = [f"{doc} write to {SECRETS[i % 3]} today" for i, doc in enumerate(counting_docs(120))]
    s = nbtune.Session(tmp_path / "p")
    s.load(rows)  # a list: the recipe must carry a copy of the rows
    s.clean(mask_pii=True)
    s.tokenize(vocab_size=300, context_length=32)
    s.new_model(**TINY_MODEL)
    s.train(steps=1, **FAST)
    s.export_recipe("recipe")
    copied = (s.workdir / "recipe" / "data" / "rows.jsonl").read_text()
    assert not any(secret in copied for secret in SECRETS)
    assert copied.count("\n") == len(rows)  # every loaded row, so the split stays the same
    rebuilt = build_session(s.workdir / "recipe", tmp_path / "out")
    assert tokens_fingerprint(rebuilt.tokens) == tokens_fingerprint(s.tokens)


def test_report_never_overwrites_a_file_nbtune_did_not_write(tmp_path):
    s = nbtune.Session(tmp_path / "p")
    s.load(counting_docs(30))
    mine = tmp_path / "notes.html"
    mine.write_text("<p>my own notes</p>")
    with pytest.raises(ConfigError, match="not written by nbtune"):
        s.report(mine)
    assert mine.read_text() == "<p>my own notes</p>"
    (tmp_path / "a-folder.html").mkdir()
    with pytest.raises(ConfigError):
        s.report(tmp_path / "a-folder.html")
    ours = s.report(tmp_path / "report.html")
    assert s.report(ours) == ours  # a report nbtune wrote is replaced
    assert s.report() == s.workdir / "report.html"


def test_report_path_with_a_tilde_goes_to_the_home_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    s = nbtune.Session(tmp_path / "p")
    s.load(counting_docs(30))
    assert s.report("~/r.html") == (tmp_path / "home" / "r.html").resolve()


def test_export_paths_with_a_tilde_go_to_the_home_folder(tmp_path, monkeypatch, tiny_session):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    s = tiny_session("p", counting_docs(60))
    s.export("~/my-model", smoke_prompt=None)
    assert (tmp_path / "home" / "my-model" / "config.json").is_file()
    assert not (s.workdir / "~").exists()


def test_a_recipe_of_preference_data_is_refused_rather_than_cut(tiny_session):
    from pathlib import Path

    from nbtune import StageOrderError

    data = Path(__file__).resolve().parents[1] / "data" / "formats"
    s = tiny_session("p", str(data / "standard_preference.jsonl"), context_length=64, sft="chosen")
    with pytest.raises(StageOrderError, match="does not carry preference data"):
        s.export_recipe("recipe")
    assert not (s.workdir / "recipe").exists()
