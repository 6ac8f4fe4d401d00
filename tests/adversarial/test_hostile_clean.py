"""Hostile rows through real Session calls: nothing hangs, user regexes have a time limit, previews stop."""

from __future__ import annotations

import threading
import time

import pytest

import nbtune
from nbtune.data import clean
from nbtune.errors import ConfigError

HOSTILE = ["```x\n" * 20000, "<!--" * 50000, "<script>" * 20000]  # 260 s together before issue 11


@pytest.mark.timeout(120)
@pytest.mark.parametrize("mask_pii", [False, True])
def test_the_three_hostile_rows_clean_in_seconds(tmp_path, mask_pii):
    s = nbtune.Session(tmp_path / "s")
    s.load(HOSTILE + ["an ordinary row of text"])
    started = time.perf_counter()
    s.preview_clean(mask_pii=mask_pii)
    report = s.clean(mask_pii=mask_pii)
    assert time.perf_counter() - started < 30
    # unclosed fences stay text (and repeat: the repetition filter drops them); unclosed comments stay text;
    # unclosed <script> tags are removed as tags, leaving nothing (too short); the ordinary row stays
    removed = {rid: reason for st in report.steps for rid, _, reason in st.removed_examples}
    assert set(removed) == {0, 2}
    assert removed[0].startswith("repetitive") and removed[2].startswith("too short")
    assert s.dataset["text"] == ["<!--" * 50000, "an ordinary row of text"]


@pytest.mark.timeout(60)
def test_a_zalgo_row_normalises_in_linear_time(tmp_path):
    s = nbtune.Session(tmp_path / "s")
    s.load(["a" + "\u0316\u0301" * 200000, "plain"])
    started = time.perf_counter()
    s.clean()
    assert time.perf_counter() - started < 20
    text = s.dataset[0]["text"]
    assert text.count("\u034f") >= 400000 // 30 - 1  # a grapheme joiner after every 30 marks (UAX #15)


@pytest.mark.timeout(60)
def test_a_catastrophic_drop_regex_is_a_config_error_naming_pattern_and_row(tmp_path):
    s = nbtune.Session(tmp_path / "s")
    s.load(["fine row", "another fine row", "a" * 40 + "!"])
    with pytest.raises(ConfigError) as err:
        s.clean(drop_regex="(a|aa)+$", regex_timeout=0.2)
    assert "(a|aa)+$" in str(err.value) and "row 2" in str(err.value) and err.value.column == "drop_regex"
    assert not s.clean_applied  # the failed stage left the session as it was
    with pytest.raises(ConfigError, match="keep_regex"):
        s.preview_clean(keep_regex="(a|aa)+$", regex_timeout=0.2)


@pytest.mark.timeout(60)
def test_max_row_chars_removes_giant_rows_before_any_step_and_says_so(tmp_path):
    s = nbtune.Session(tmp_path / "s")
    giant = "mail me at someone@example.com " * 200_000
    s.load(["short row one", giant, "short row two"])
    report = s.clean(max_row_chars=1_000_000, mask_pii=True)
    assert report.rows_after == 2
    step = next(st for st in report.steps if st.name == "row_cap")
    assert step.removed == 1
    row_id, text, reason = step.removed_examples[0]
    assert row_id == 1 and "max_row_chars=1,000,000" in reason and f"{len(giant):,}" in reason
    assert "someone@example.com" not in text and len(text) < 200  # not cleaned, so not shown with mask_pii on


class PolledEvent(threading.Event):
    """A cancel event that also says when the row loop first looks at it (so a test can cancel mid-loop)."""

    def __init__(self) -> None:
        super().__init__()
        self.polled = threading.Event()

    def is_set(self) -> bool:
        self.polled.set()
        return super().is_set()


@pytest.mark.timeout(60)
def test_a_preview_stops_soon_after_its_cancel_event_is_set(tmp_path):
    s = nbtune.Session(tmp_path / "s")
    row = '<div "<!--<style>```\n&amp; 555-123-4567 a@b.co\n' * 1000  # ~47 KB: ~30 ms per row with mask_pii
    s.load([f"{i} {row}" for i in range(2000)])
    stop = PolledEvent()
    cancelled_at = []

    def cancel_once_inside_the_row_loop():  # what the app's Cancel button does, from another thread
        assert stop.polled.wait(30), "the preview never checked its cancel event"
        cancelled_at.append(time.perf_counter())
        stop.set()

    canceller = threading.Thread(target=cancel_once_inside_the_row_loop, daemon=True)
    canceller.start()
    with clean.cancellable(stop), pytest.raises(clean.CleanCancelled):
        s.preview_clean(mask_pii=True)
    stopped_at = time.perf_counter()
    canceller.join(30)
    assert cancelled_at and stopped_at - cancelled_at[0] < 10  # the whole preview takes about a minute
    s.preview_clean(mask_pii=True, sample_size=20, repetition_filter=False)  # outside the block nothing is cancelled
