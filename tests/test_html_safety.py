"""Every piece of user text rendered as HTML is escaped: payloads in rows, columns, files, chats."""

from __future__ import annotations

import json

import pytest

from nbtune import Session
from nbtune.viz.html import diff_html, table

PAYLOADS = [
    "<script>alert('x')</script>",
    "<img src=x onerror=alert(1)>",
    "<svg onload=alert(2)>",
    "\"><iframe src=javascript:alert(3)>",
]


def _assert_no_raw_payload(html: str) -> None:
    for payload in PAYLOADS:
        assert payload not in html
    for marker in ("<img src=x", "<svg onload", "<iframe src=javascript", "<script>alert"):
        assert marker not in html


def _all_html(session: Session) -> list[str]:
    return [report._repr_html_() for report in session.reports.values()] + [session._repr_html_()]


def test_text_rows_with_payloads(tmp_path):
    rows = [f"row {i}: {p} and some ordinary words here" for i, p in enumerate(PAYLOADS * 5)]
    rows += [f"harmless row number {i} with words" for i in range(20)]
    s = Session(tmp_path / "w")
    s.load(rows)
    s.preview_clean(strip_html=False, mask_pii=True)
    s.clean(strip_html=False)
    s.tokenize(vocab_size=300, context_length=32)
    for html in _all_html(s):
        _assert_no_raw_payload(html)
    assert "&lt;script&gt;" in s.reports["load"]._repr_html_()
    _assert_no_raw_payload(s.report(tmp_path / "r.html").read_text())


def test_html_stripping_changes_show_escaped_diffs(tmp_path):
    rows = [f"{p} text {i}" for i, p in enumerate(PAYLOADS * 3)] + [f"plain row {i} here" for i in range(10)]
    s = Session(tmp_path / "w")
    s.load(rows)
    preview = s.preview_clean(strip_html=True)
    html = preview._repr_html_()
    _assert_no_raw_payload(html)
    assert "<del>" in html  # the diff itself is our markup


def test_column_names_file_names_and_chat_messages(tmp_path):
    folder = tmp_path / "<img src=x onerror=alert(1)>"
    folder.mkdir()
    path = folder / "data.jsonl"
    records = [{"messages": [{"role": "user", "content": f"{p} question {i}"},
                             {"role": "assistant", "content": f"answer {i} {p}"}]}
               for i, p in enumerate(PAYLOADS * 4)]
    path.write_text("\n".join(json.dumps(r) for r in records))
    s = Session(tmp_path / "w")
    s.load(path)
    s.tokenize(vocab_size=300, context_length=64)
    for html in _all_html(s):
        _assert_no_raw_payload(html)
    assert "&lt;img src=x onerror=alert(1)&gt;" in "".join(_all_html(s))  # shown, as text: not left out

    s2 = Session(tmp_path / "w2")
    s2.load([{"<svg onload=alert(2)>": f"text {i} here"} for i in range(10)])
    for html in _all_html(s2):
        _assert_no_raw_payload(html)
    assert "&lt;svg onload=alert(2)&gt;" in s2.reports["load"]._repr_html_()  # the column name, escaped


@pytest.mark.parametrize("payload", PAYLOADS)
def test_helpers_escape(payload):
    for html in (table(["h"], [[payload]]), diff_html(payload, payload + " x")):
        assert payload not in html
        assert "&lt;" in html  # shown escaped, not dropped
