"""Loading every kind of source, the errors users meet, and find_problems (nbtune.data.load)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from nbtune.data.load import LoadedData, Problem, find_problems, load_source
from nbtune.errors import DataError

ALPACA = [
    {"instruction": "Add the numbers", "input": "1 + 1", "output": "2"},
    {"instruction": "Say hello", "input": "", "output": "Hello!"},
]
OPENAI = [
    {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                  {"role": "assistant", "content": "Hello"}]},
    {"messages": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]},
]
SHAREGPT = [
    {"id": "a", "conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"}]},
    {"id": "b", "conversations": [{"from": "system", "value": "S"}, {"from": "human", "value": "Q"},
                                  {"from": "gpt", "value": "A"}]},
]


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def error_of(source, **kwargs) -> str:
    with pytest.raises(DataError) as exc:
        load_source(source, **kwargs)
    return str(exc.value)


def rows(loaded: LoadedData) -> list[dict]:
    return loaded.dataset.to_list()


# --------------------------------------------------------------------------- files and formats


def test_jsonl_plain_text(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"text": "one"}, {"text": "two"}])
    loaded = load_source(path)
    assert loaded.format == "text"
    assert loaded.mapping == {"text": "text"}
    assert loaded.columns == ["text"]
    assert rows(loaded) == [{"row_id": 0, "text": "one"}, {"row_id": 1, "text": "two"}]
    assert loaded.origin["kind"] == "path" and loaded.origin["file_type"] == "jsonl"
    assert loaded.files == [str(path.resolve())]
    json.dumps(loaded.origin)
    assert loaded.format_reason


def test_jsonl_alpaca_and_schema(tmp_path):
    loaded = load_source(str(write_jsonl(tmp_path / "a.jsonl", ALPACA)))
    assert loaded.format == "instruction"
    assert loaded.mapping == {"instruction": "instruction", "input": "input", "output": "output"}
    assert loaded.columns == ["instruction", "input", "output"]
    feats = loaded.dataset.features
    assert feats["row_id"].dtype == "int64"
    assert list(loaded.dataset.column_names) == ["row_id", "messages"]
    first = rows(loaded)[0]["messages"]
    assert first == [{"role": "user", "content": "Add the numbers\n\n1 + 1"}, {"role": "assistant", "content": "2"}]
    assert rows(loaded)[1]["messages"][0]["content"] == "Say hello"


def test_ndjson_openai_messages(tmp_path):
    loaded = load_source(write_jsonl(tmp_path / "c.ndjson", OPENAI))
    assert loaded.format == "chat"
    assert rows(loaded)[0]["messages"][0] == {"role": "system", "content": "Be brief."}


def test_json_list_sharegpt(tmp_path):
    path = tmp_path / "s.json"
    path.write_text(json.dumps(SHAREGPT, indent=2), encoding="utf-8")
    loaded = load_source(path)
    assert loaded.format == "chat"
    assert loaded.mapping == {"messages": "conversations"}
    assert [m["role"] for m in rows(loaded)[1]["messages"]] == ["system", "user", "assistant"]


def test_json_data_wrapper_and_single_record(tmp_path):
    wrapped = tmp_path / "w.json"
    wrapped.write_text(json.dumps({"version": 2, "data": [{"prompt": "p1", "completion": "c1"}]}), encoding="utf-8")
    loaded = load_source(wrapped)
    assert loaded.format == "prompt_completion"
    assert loaded.origin["json_key"] == "data"
    single = tmp_path / "one.json"
    single.write_text(json.dumps(OPENAI[0]), encoding="utf-8")
    assert len(load_source(single).dataset) == 1


def test_json_with_several_lists_is_ambiguous(tmp_path):
    path = tmp_path / "splits.json"
    path.write_text(json.dumps({"version": 1, "train": [{"text": "a"}], "test": [{"text": "b"}]}), encoding="utf-8")
    msg = error_of(path)
    assert "splits.json" in msg and "'train', 'test'" in msg


def test_json_file_holding_jsonl(tmp_path):
    path = write_jsonl(tmp_path / "lines.json", [{"text": "a"}, {"text": "b"}])
    assert len(load_source(path).dataset) == 2


def test_csv_prompt_completion_with_multiline_field(tmp_path):
    path = tmp_path / "qa.csv"
    path.write_text('question,answer\n"What is\nthis?",A thing\nWhy?,"Because, really"\n', encoding="utf-8")
    loaded = load_source(path)
    assert loaded.format == "prompt_completion"
    assert loaded.mapping == {"prompt": "question", "completion": "answer"}
    assert rows(loaded)[0]["messages"][0]["content"] == "What is\nthis?"
    assert rows(loaded)[1]["messages"][1]["content"] == "Because, really"


def test_csv_bom_and_tsv(tmp_path):
    csv_path = tmp_path / "b.csv"
    csv_path.write_bytes("\ufefftext,id\nhello,1\n".encode())
    assert load_source(csv_path).mapping == {"text": "text"}
    tsv = tmp_path / "t.tsv"
    tsv.write_text("id\tbody\n1\tfirst, with comma\n2\tsecond\n", encoding="utf-8")
    loaded = load_source(tsv)
    assert [r["text"] for r in rows(loaded)] == ["first, with comma", "second"]


def test_parquet(tmp_path):
    import pandas as pd

    path = tmp_path / "p.parquet"
    pd.DataFrame(SHAREGPT).to_parquet(path)
    loaded = load_source(path)
    assert loaded.format == "chat"
    assert rows(loaded)[0]["messages"][1] == {"role": "assistant", "content": "Hello"}


def test_txt_single_file_is_paragraphs(tmp_path):
    path = tmp_path / "book.txt"
    path.write_text("First para\nstill first.\n\n\nSecond para.\n   \nThird.\n", encoding="utf-8")
    loaded = load_source(path)
    assert [r["text"] for r in rows(loaded)] == ["First para\nstill first.", "Second para.", "Third."]
    assert "paragraph" in loaded.format_reason


def test_folder_recursive_sorted_one_doc_per_file(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / ".ipynb_checkpoints").mkdir()
    (tmp_path / "b.txt").write_text("bee\n\nsecond paragraph", encoding="utf-8")
    (tmp_path / "a.md").write_text("# A", encoding="utf-8")
    (tmp_path / "sub" / "c.txt").write_text("sea", encoding="utf-8")
    (tmp_path / ".ipynb_checkpoints" / "a-checkpoint.txt").write_text("hidden", encoding="utf-8")
    (tmp_path / "notes.docx").write_bytes(b"ignored")
    loaded = load_source(tmp_path)
    assert [r["text"] for r in rows(loaded)] == ["# A", "bee\n\nsecond paragraph", "sea"]
    assert loaded.origin["kind"] == "folder"
    assert [Path(f).name for f in loaded.files] == ["a.md", "b.txt", "c.txt"]
    assert "each file is one document" in loaded.format_reason


def test_folder_of_jsonl_continues_row_ids(tmp_path):
    write_jsonl(tmp_path / "1.jsonl", ALPACA)
    write_jsonl(tmp_path / "2.jsonl", ALPACA)
    loaded = load_source(str(tmp_path))
    assert [r["row_id"] for r in rows(loaded)] == [0, 1, 2, 3]


def test_glob(tmp_path):
    write_jsonl(tmp_path / "x1.jsonl", [{"text": "a"}])
    write_jsonl(tmp_path / "x2.jsonl", [{"text": "b"}])
    write_jsonl(tmp_path / "y.jsonl", [{"text": "c"}])
    loaded = load_source(str(tmp_path / "x*.jsonl"))
    assert [r["text"] for r in rows(loaded)] == ["a", "b"]
    assert loaded.origin["kind"] == "glob"
    assert len(loaded.files) == 2


# --------------------------------------------------------------------------- in-memory sources


def test_dataframe():
    import pandas as pd

    df = pd.DataFrame({"id": [1, 2], "content": ["x", "y"]})
    before = df.copy()
    loaded = load_source(df)
    assert loaded.format == "text" and loaded.mapping == {"text": "content"}
    assert loaded.origin["kind"] == "dataframe"
    assert loaded.files == []
    pd.testing.assert_frame_equal(df, before)


def test_dataframe_missing_values_become_empty():
    import pandas as pd

    df = pd.DataFrame({"text": ["a", None, "c"]})
    loaded = load_source(df)
    assert [r["text"] for r in rows(loaded)] == ["a", "", "c"]


def test_list_of_strings():
    loaded = load_source(["a", "b"])
    assert loaded.format == "text"
    assert loaded.origin == {"kind": "list", "rows": 2}


def test_list_of_dicts_and_lists():
    assert load_source(SHAREGPT).format == "chat"
    loaded = load_source([["hi", "hello"], ["how?", "fine"]])
    assert loaded.format == "chat"
    assert rows(loaded)[0]["messages"] == [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]


def test_dataset_and_datasetdict():
    import datasets

    ds = datasets.Dataset.from_list(ALPACA)
    assert load_source(ds).format == "instruction"
    dd = datasets.DatasetDict({"train": ds, "test": datasets.Dataset.from_list(ALPACA[:1])})
    loaded = load_source(dd)
    assert loaded.origin["split"] == "train" and len(loaded.dataset) == 2
    loaded = load_source(dd, split="test")
    assert loaded.origin["split"] == "test" and len(loaded.dataset) == 1
    assert "'train', 'test'" in error_of(dd, split="validation")
    only_val = datasets.DatasetDict({"a": ds, "b": ds})
    assert "split=" in error_of(only_val)


def test_hub_id_offline_fails_fast(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.monotonic()
    msg = error_of("some-owner/surely-missing-dataset")
    assert time.monotonic() - start < 15
    assert "some-owner/surely-missing-dataset" in msg
    assert "could not be fetched" in msg
    assert "download the files and pass their path" in msg


def test_hub_id_without_offline_flag_still_fails_fast(monkeypatch):
    # HF_HUB_OFFLINE was read by huggingface_hub at import (conftest), so load_dataset itself stays offline;
    # without the variable nbtune first checks that the hub can be reached at all.
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    start = time.monotonic()
    msg = error_of("some-owner/surely-missing-dataset-xyz")
    assert time.monotonic() - start < 15
    assert "could not be fetched" in msg


# --------------------------------------------------------------------------- overrides


def test_text_column_override(tmp_path):
    path = write_jsonl(tmp_path / "o.jsonl", [{"text": "t", "summary": "s"}])
    loaded = load_source(path, text_column="summary")
    assert rows(loaded)[0]["text"] == "s"
    assert "text_column" in loaded.format_reason


def test_mapping_and_format_override(tmp_path):
    path = write_jsonl(tmp_path / "m.jsonl", [{"q": "Q", "a": "A", "text": "T"}])
    loaded = load_source(path, mapping={"prompt": "q", "completion": "a"})
    assert loaded.format == "prompt_completion"
    assert rows(loaded)[0]["messages"][1]["content"] == "A"
    msg = error_of(path, format="instructions")
    assert "'q', 'a', 'text'" in msg


def test_text_column_typo_names_file_and_closest(tmp_path):
    path = write_jsonl(tmp_path / "typo.jsonl", [{"body": "b", "title": "t"}])
    msg = error_of(path, text_column="bodyy")
    assert "typo.jsonl" in msg and "did you mean 'body'" in msg and "'body', 'title'" in msg


# --------------------------------------------------------------------------- errors


def test_malformed_jsonl_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "ok"}\n\n{"text": "bad",}\n', encoding="utf-8")
    msg = error_of(path)
    assert "bad.jsonl" in msg and "line 3" in msg and "column 16" in msg and "What to do" in msg


def test_pretty_printed_jsonl_hint(tmp_path):
    path = tmp_path / "pretty.jsonl"
    path.write_text('{\n  "text": "a"\n}\n', encoding="utf-8")
    assert "file_type='json'" in error_of(path)


def test_malformed_json(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text('[\n  {"text": "a"},\n  {"text": "b"\n]\n', encoding="utf-8")
    msg = error_of(path)
    assert "bad.json" in msg and "line 4" in msg and "column" in msg


def test_json_record_error_has_line(tmp_path):
    path = tmp_path / "list.json"
    path.write_text(json.dumps([{"text": "a"}, {"text": "b"}, {"text": {"x": 1}}], indent=2), encoding="utf-8")
    msg = error_of(path)
    assert "list.json" in msg and "line 8" in msg and "'text'" in msg
    wrapped = tmp_path / "wrapped.json"
    wrapped.write_text('{"meta": 1,\n "data": [\n  {"text": "a"},\n  {"text": [1]}\n]}', encoding="utf-8")
    assert "line 4" in error_of(wrapped)


def test_ragged_csv(tmp_path):
    path = tmp_path / "r.csv"
    path.write_text("text,label\nfine,1\nnot, fine,2\n", encoding="utf-8")
    msg = error_of(path)
    assert "r.csv" in msg and "line 3" in msg and "3 fields" in msg and "has 2" in msg


def test_unclosed_quote_csv(tmp_path):
    path = tmp_path / "q.csv"
    path.write_text('text,label\nok,1\n"never closed,2\nmore,3\n', encoding="utf-8")
    msg = error_of(path)
    assert "q.csv" in msg and "line 3" in msg and "never closed" in msg


def test_not_utf8(tmp_path):
    path = tmp_path / "latin.csv"
    path.write_bytes("text\nfine\ncaf\xe9 au lait\n".encode("latin-1"))
    msg = error_of(path)
    assert "latin.csv" in msg and "line 3" in msg and "column 4" in msg and "UTF-8" in msg and "encoding=" in msg
    assert rows(load_source(path, encoding="latin-1"))[1]["text"] == "café au lait"


@pytest.mark.parametrize("name, content", [("e.jsonl", ""), ("w.txt", "  \n\n"), ("h.csv", "text,label\n"),
                                           ("l.json", "[]")])
def test_empty_files(tmp_path, name, content):
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    msg = error_of(path)
    assert name in msg and ("empty" in msg or "no data rows" in msg or "only" in msg)


def test_unknown_extension_and_file_type(tmp_path):
    path = tmp_path / "data.log"
    path.write_text("a line\n\nanother\n", encoding="utf-8")
    msg = error_of(path)
    assert "data.log" in msg and ".jsonl" in msg and "file_type=" in msg
    assert len(load_source(path, file_type="txt").dataset) == 2
    assert "'csv'" in error_of(path, file_type="excel")


def test_mixed_shapes(tmp_path):
    lines = [{"text": f"row {i}"} for i in range(11)] + [{"a": 1, "b": 2}]
    msg = error_of(write_jsonl(tmp_path / "mixed.jsonl", lines))
    assert "mixed.jsonl" in msg and "line 12" in msg and "['a', 'b']" in msg and "['text']" in msg


def test_mixed_kinds_in_jsonl(tmp_path):
    msg = error_of(write_jsonl(tmp_path / "k.jsonl", [{"text": "a"}, "just a string"]))
    assert "k.jsonl" in msg and "line 2" in msg and "string" in msg


def test_nested_value_where_text_expected(tmp_path):
    msg = error_of(write_jsonl(tmp_path / "n.jsonl", [{"text": "a"}, {"text": {"nested": True}}]))
    assert "n.jsonl" in msg and "line 2" in msg and "column 'text'" in msg


def test_numbers_converted_and_counted(tmp_path):
    loaded = load_source(write_jsonl(tmp_path / "num.jsonl", [{"text": "a"}, {"text": 42}, {"text": 1.5}]))
    assert [r["text"] for r in rows(loaded)] == ["a", "42", "1.5"]
    assert loaded.non_string_values == 2
    assert loaded.non_string_examples == [1, 2]


def test_missing_path_suggests_closest(tmp_path):
    write_jsonl(tmp_path / "train.jsonl", [{"text": "a"}])
    msg = error_of(str(tmp_path / "trian.jsonl"))
    assert "no such file" in msg and "train.jsonl" in msg
    msg = error_of(str(tmp_path / "nowhere" / "x.csv"))
    assert "does not exist" in msg


def test_mistyped_bare_name_is_a_path_not_a_hub_id(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_jsonl(tmp_path / "data.jsonl", [{"text": "a"}])
    msg = error_of("data.jsonx")
    assert "no such file" in msg and "data.jsonl" in msg


def test_glob_matching_nothing(tmp_path):
    write_jsonl(tmp_path / "a.jsonl", [{"text": "a"}])
    msg = error_of(str(tmp_path / "*.csv"))
    assert "matches no files" in msg and "a.jsonl" in msg


def test_folder_without_data_files(tmp_path):
    (tmp_path / "x.docx").write_bytes(b"x")
    msg = error_of(tmp_path)
    assert "no supported data files" in msg and ".docx" in msg and "file_type=" in msg


def test_unsupported_object():
    assert "cannot load" in error_of(42)
    assert "empty" in error_of([])


def test_loading_never_modifies_the_file(tmp_path):
    path = tmp_path / "keep.csv"
    path.write_bytes(b"text,label\r\nhello,1\r\nworld,2\r\n")
    past = time.time() - 3600
    os.utime(path, (past, past))
    before = (path.read_bytes(), path.stat().st_mtime_ns)
    load_source(path)
    load_source(path, text_column="label")
    assert (path.read_bytes(), path.stat().st_mtime_ns) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.csv"]


def test_large_jsonl_is_fast(tmp_path):
    path = tmp_path / "big.jsonl"
    path.write_text("".join(json.dumps({"text": f"document number {i}"}) + "\n" for i in range(100_000)),
                    encoding="utf-8")
    load_source(["warm up the datasets import"])
    start = time.monotonic()
    loaded = load_source(path)
    assert time.monotonic() - start < 10
    assert len(loaded.dataset) == 100_000


# --------------------------------------------------------------------------- find_problems


def test_find_problems_text(tmp_path):
    data = ["good", "", "   ", "dup", "dup", "x" * 30, 7, "", "dup"]
    loaded = load_source(write_jsonl(tmp_path / "p.jsonl", [{"text": t} for t in data]))
    problems = {p.kind: p for p in find_problems(loaded, very_long_chars=20)}
    assert list(problems) == ["empty", "non_string", "very_long", "duplicate"]
    assert problems["empty"] == Problem("empty", 3, [1, 2, 7], problems["empty"].message)
    assert problems["non_string"].count == 1 and problems["non_string"].examples == [6]
    assert problems["very_long"].examples == [5]
    assert problems["duplicate"].count == 2 and problems["duplicate"].examples == [4, 8]
    assert "exact_dedup" in problems["duplicate"].message
    assert "clean()" in problems["empty"].message


def test_find_problems_chat_and_none():
    clean = load_source(OPENAI)
    assert find_problems(clean) == []
    empty_chat = [{"messages": [{"role": "user", "content": " "}, {"role": "assistant", "content": ""}]}]
    problems = find_problems(load_source(OPENAI + empty_chat + OPENAI[:1]))
    kinds = {p.kind: p for p in problems}
    assert kinds["empty"].examples == [2]
    assert kinds["duplicate"].examples == [3]


def test_find_problems_raw_non_string_override():
    loaded = load_source(["a", "b"])
    problems = find_problems(loaded, raw_non_string=3)
    assert [(p.kind, p.count) for p in problems] == [("non_string", 3)]


# --------------------------------------------------------------------------- big files: chunks, bounded memory


def _rows_of(n: int, width: int = 40) -> list[dict]:
    return [{"text": f"document {i} " + "x" * (i % width), "n": i} for i in range(n)]


@pytest.mark.parametrize("kind", ["jsonl", "csv", "parquet", "txt", "list", "dataframe", "dataset", "json"])
def test_every_source_is_read_converted_and_written_in_chunks(tmp_path, kind):
    import datasets
    import pandas as pd

    rows = _rows_of(2_500)
    texts = [r["text"] for r in rows]
    source: object
    if kind == "jsonl":
        source = write_jsonl(tmp_path / "a.jsonl", rows)
    elif kind == "json":
        source = tmp_path / "a.json"
        source.write_text(json.dumps(rows), encoding="utf-8")
    elif kind == "csv":
        source = tmp_path / "a.csv"
        pd.DataFrame(rows).to_csv(source, index=False)
    elif kind == "parquet":
        source = tmp_path / "a.parquet"
        pd.DataFrame(rows).to_parquet(source)
    elif kind == "txt":
        source = tmp_path / "a.txt"
        source.write_text("\n\n".join(texts), encoding="utf-8")
    elif kind == "list":
        source = texts
    elif kind == "dataframe":
        source = pd.DataFrame(rows)
    else:
        source = datasets.Dataset.from_list(rows)
    loaded = load_source(source, chunk_rows=400)
    assert loaded.chunk_rows == [400] * 6 + [100]  # never more than one chunk of rows at a time
    assert loaded.dataset["text"][:] == texts
    assert loaded.dataset["row_id"][:] == list(range(2_500))
    assert loaded.dataset.cache_files  # memory-mapped from an Arrow file, so clean/tokenize stream from disk too


def test_errors_in_later_chunks_keep_their_line_and_row(tmp_path):
    import pandas as pd

    rows = _rows_of(1_000)
    path = tmp_path / "late.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"text": oops}\n', encoding="utf-8")
    msg = error_of(path, chunk_rows=300)
    assert "line 1001" in msg and "not valid JSON" in msg
    bad = [*rows[:700], {"text": {"nested": 1}, "n": 0}]
    msg = error_of(pd.DataFrame(bad), chunk_rows=300)
    assert "row 700" in msg
    csv_path = tmp_path / "late.csv"
    pd.DataFrame(rows).to_csv(csv_path, index=False)
    with open(csv_path, "a", encoding="utf-8") as fh:
        fh.write("only one field\n")
    msg = error_of(csv_path, chunk_rows=300)
    assert "line 1002" in msg and "1 fields" in msg
    msg = error_of(write_jsonl(tmp_path / "kinds.jsonl", [*rows[:500], "a string"]), chunk_rows=300)
    assert "line 501" in msg and "earlier rows are objects" in msg


def test_long_documents_make_smaller_chunks(tmp_path, monkeypatch):
    from nbtune.data import load

    monkeypatch.setattr(load, "CHUNK_CHARS", 10_000)
    path = write_jsonl(tmp_path / "long.jsonl", [{"text": "y" * 3_000} for _ in range(20)])
    loaded = load_source(path, chunk_rows=1_000)
    assert max(loaded.chunk_rows) <= 4 and sum(loaded.chunk_rows) == 20


def test_columns_seen_after_the_first_rows_are_reported(tmp_path):
    rows = [{"text": f"r{i}"} for i in range(300)] + [{"text": "late", "extra": 1}]
    loaded = load_source(write_jsonl(tmp_path / "late_key.jsonl", rows), chunk_rows=100)
    assert loaded.columns == ["text", "extra"]


def test_find_problems_counts_all_but_keeps_five_examples():
    texts = ["same"] * 8 + [""] * 7 + [f"u{i}" for i in range(20)]
    problems = {p.kind: p for p in find_problems(load_source(texts, chunk_rows=3))}
    assert problems["duplicate"].count == 7 and problems["duplicate"].examples == [1, 2, 3, 4, 5]
    assert problems["empty"].count == 7 and problems["empty"].examples == [8, 9, 10, 11, 12]


_PEAK_CHILD = r"""
import json, sys, threading, time
from pathlib import Path

def anon():
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) * 1024
    return 0

from nbtune.data.load import find_problems, load_source
find_problems(load_source(["warm up"]))  # imports and first-use allocations before the baseline
base = anon()
peak = [base]
done = threading.Event()
def sample():
    while not done.is_set():
        peak[0] = max(peak[0], anon())
        time.sleep(0.002)
t = threading.Thread(target=sample, daemon=True)
t.start()
loaded = load_source(sys.argv[1], chunk_rows=int(sys.argv[2]))
find_problems(loaded)
done.set()
t.join()
peak[0] = max(peak[0], anon())
print(json.dumps({"rows": len(loaded.dataset), "growth": peak[0] - base}))
"""


def _peak_growth(path: Path, chunk_rows: int) -> dict:
    """Growth of anonymous memory (RssAnon, sampled) while a child process loads `path` and finds its problems."""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", _PEAK_CHILD, str(path), str(chunk_rows)], capture_output=True, text=True,
                         timeout=120, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads RssAnon from /proc (Linux)")
def test_memory_of_a_load_does_not_grow_with_the_file(tmp_path):
    """Loading a 50 MB JSONL file needs about as much memory as a 5 MB one, not ten times as much.

    Both files span several chunks of 1,000 rows (~1 MB of text), so both peaks are about one chunk.
    Measured: ~9 MiB (5 MB) and ~12 MiB (50 MB) streaming; with the whole file as one chunk
    (chunk_rows=10**9, i.e. rows held in memory), 25 and 86 MiB, which fails the check below.
    """
    line = json.dumps({"text": "In the beginning God created the heaven and the earth. " * 17, "n": 0})

    def write(name: str, rows: int) -> Path:
        path = tmp_path / name
        with open(path, "w", encoding="utf-8") as fh:
            for i in range(rows):
                fh.write(line.replace('"n": 0', f'"n": {i}').replace("beginning", f"beginning {i}") + "\n")
        return path

    small = _peak_growth(write("small.jsonl", 5_000), chunk_rows=1_000)
    big = _peak_growth(write("big.jsonl", 50_000), chunk_rows=1_000)
    assert (small["rows"], big["rows"]) == (5_000, 50_000)
    assert big["growth"] <= 1.5 * small["growth"] + 8 * 2**20, (small, big)  # ratio, plus allocator noise


# --------------------------------------------------------------------------- the load report: nothing dropped silently

FORMAT_FILES = Path(__file__).parent / "data" / "formats"


def _summary(report) -> dict:
    return dict(report.summary())


def test_load_report_names_format_columns_used_and_not_used(tmp_path):
    import nbtune

    s = nbtune.Session(tmp_path / "s")
    report = _summary(s.load(FORMAT_FILES / "standard_preference.jsonl"))
    assert report["format"].startswith("preference (columns prompt/chosen/rejected look like preference pairs")
    assert "standard (strings)" in report["format"]
    assert report["columns used"] == "prompt, chosen, rejected"
    assert report["columns not used"].startswith("score_chosen, score_rejected (not loaded")
    assert report["supervised fine-tuning on"].startswith("nothing yet") and "sft='chosen'" in \
        report["supervised fine-tuning on"]
    assert s.dataset.column_names == ["row_id", "messages", "prompt", "chosen", "rejected"]

    report = _summary(s.load(FORMAT_FILES / "standard_preference.jsonl", sft="chosen"))
    assert report["supervised fine-tuning on"].startswith("sft='chosen': the chosen responses")


def test_load_report_of_tool_calls_and_renamed_columns(tmp_path):
    import nbtune

    s = nbtune.Session(tmp_path / "s")
    report = _summary(s.load(FORMAT_FILES / "openai_tool_calls.jsonl"))
    assert report["columns used"] == "messages, tools"
    assert report["columns not used"].startswith("customer")
    assert "tool calls included" in report["supervised fine-tuning on"]
    report = _summary(s.load([{"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "yo"}],
                               "lang": "en"}]))
    assert report["columns used"] == "conversations (as messages)"
    assert report["columns not used"].startswith("lang")
    report = _summary(s.load(FORMAT_FILES / "conversational_language_modeling.jsonl"))
    assert report["columns not used"].startswith("id (not loaded")


def test_conversations_without_an_assistant_turn_are_a_problem():
    rows = [{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]},
            {"messages": [{"role": "user", "content": "anyone there?"}]}]
    problems = {p.kind: p for p in find_problems(load_source(rows))}
    assert problems["no_response"].count == 1 and problems["no_response"].examples == [1]
    assert "nothing to learn from" in problems["no_response"].message
