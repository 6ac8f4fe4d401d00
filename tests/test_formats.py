"""Format detection, overrides and conversion to the canonical schema (nbtune.data.formats)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from nbtune.data.formats import FORMATS, FormatInfo, convert, detect_format, resolve_format, to_canonical
from nbtune.data.load import load_source
from nbtune.errors import DataError


def _detect(records: list[dict]) -> FormatInfo:
    columns = list(dict.fromkeys(k for r in records for k in r))
    return detect_format(columns, records)


# --------------------------------------------------------------------------- detection


def test_formats_constant():
    assert FORMATS == ("text", "instruction", "prompt_completion", "chat", "preference", "unpaired_preference",
                       "stepwise")


@pytest.mark.parametrize("name", ["text", "content", "body", "document", "story", "Text"])
def test_detect_text_by_name(name):
    info = _detect([{"id": 1, name: "hello world", "title": "t"}])
    assert info.format == "text"
    assert info.mapping == {"text": name}
    assert name in info.reason


def test_detect_text_only_string_column():
    info = _detect([{"id": 1, "passage_of_doom": "some text"}, {"id": 2, "passage_of_doom": "more"}])
    assert info == FormatInfo("text", {"text": "passage_of_doom"}, info.reason)
    assert "only text column" in info.reason


def test_detect_text_longest_when_ambiguous():
    rows = [{"title": "Short", "abstractish": "a much longer bit of writing here"}] * 3
    info = _detect(rows)
    assert info.mapping == {"text": "abstractish"}
    assert "text_column=" in info.reason


def test_detect_alpaca():
    info = _detect([{"instruction": "Add", "input": "1+1", "output": "2"}])
    assert info.format == "instruction"
    assert info.mapping == {"instruction": "instruction", "input": "input", "output": "output"}
    assert "alpaca" in info.reason


@pytest.mark.parametrize("out", ["response", "answer"])
def test_detect_instruction_variants(out):
    info = _detect([{"instruction": "Say hi", out: "hi"}])
    assert info.format == "instruction"
    assert info.mapping == {"instruction": "instruction", "output": out}


def test_detect_dolly_context():
    info = _detect([{"instruction": "Sum up", "context": "text", "response": "sum"}])
    assert info.mapping == {"instruction": "instruction", "input": "context", "output": "response"}


@pytest.mark.parametrize(
    "prompt, completion",
    [("prompt", "completion"), ("question", "answer"), ("input", "target"), ("query", "response")],
)
def test_detect_prompt_completion(prompt, completion):
    info = _detect([{prompt: "p", completion: "c"}])
    assert info.format == "prompt_completion"
    assert info.mapping == {"prompt": prompt, "completion": completion}


def test_detect_openai_messages():
    rows = [{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}]
    info = _detect(rows)
    assert info.format == "chat"
    assert info.mapping == {"messages": "messages"}
    assert "OpenAI" in info.reason


def test_detect_sharegpt():
    rows = [{"id": "x", "conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "yo"}]}]
    info = _detect(rows)
    assert info.format == "chat"
    assert info.mapping == {"messages": "conversations"}
    assert "ShareGPT" in info.reason


def test_detect_chat_in_oddly_named_column():
    rows = [{"turns_here": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}]
    assert _detect(rows).mapping == {"messages": "turns_here"}


def test_detect_list_of_strings_conversation():
    info = _detect([{"dialog": ["hi", "hello", "how are you?", "fine"]}])
    assert info.format == "chat"
    assert "alternating" in info.reason


def test_detect_chat_json_string_column():
    rows = [{"messages": '[{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]'}]
    assert _detect(rows).format == "chat"


def test_detect_nothing_textual():
    with pytest.raises(DataError, match="text_column"):
        _detect([{"a": 1, "b": 2.5}])


# --------------------------------------------------------------------------- overrides


COLUMNS = ["title", "body", "label"]
SAMPLE = [{"title": "t", "body": "some body text", "label": 1}]


def test_text_column_override():
    info = resolve_format(COLUMNS, SAMPLE, text_column="title")
    assert info.format == "text"
    assert info.mapping == {"text": "title"}
    assert "text_column" in info.reason


def test_text_column_typo_suggests_closest():
    with pytest.raises(DataError) as exc:
        resolve_format(COLUMNS, SAMPLE, text_column="bdy", path="data.csv")
    msg = str(exc.value)
    assert "data.csv" in msg
    assert "'bdy'" in msg
    assert "did you mean 'body'" in msg
    assert "'title', 'body', 'label'" in msg


def test_mapping_override_infers_format():
    cols = ["q", "a"]
    info = resolve_format(cols, [{"q": "x", "a": "y"}], mapping={"prompt": "q", "completion": "a"})
    assert info.format == "prompt_completion"
    assert info.mapping == {"prompt": "q", "completion": "a"}


def test_mapping_missing_column():
    with pytest.raises(DataError, match="did you mean 'body'") as exc:
        resolve_format(COLUMNS, SAMPLE, mapping={"text": "Body2"})
    assert "available columns" in str(exc.value)


def test_mapping_bad_roles():
    with pytest.raises(DataError, match="missing role"):
        resolve_format(COLUMNS, SAMPLE, format="instruction", mapping={"instruction": "title"})
    with pytest.raises(DataError, match="cannot tell the format"):
        resolve_format(COLUMNS, SAMPLE, mapping={"foo": "title"})


def test_invalid_format_lists_columns():
    with pytest.raises(DataError) as exc:
        resolve_format(COLUMNS, SAMPLE, format="chatt")
    msg = str(exc.value)
    assert "did you mean 'chat'" in msg
    assert "'title', 'body', 'label'" in msg


def test_format_without_matching_columns():
    with pytest.raises(DataError, match="mapping=") as exc:
        resolve_format(COLUMNS, SAMPLE, format="chat")
    assert "'body'" in str(exc.value)


def test_format_restricts_detection():
    cols = ["instruction", "output", "text"]
    sample = [{"instruction": "a", "output": "b", "text": "c"}]
    assert resolve_format(cols, sample).format == "instruction"
    assert resolve_format(cols, sample, format="text").mapping == {"text": "text"}


# --------------------------------------------------------------------------- conversion


def test_to_canonical_text():
    info = FormatInfo("text", {"text": "body"}, "")
    batch = to_canonical([{"body": "a"}, {"body": "b"}], info)
    assert batch == {"row_id": [0, 1], "text": ["a", "b"]}


def test_to_canonical_instruction():
    info = FormatInfo("instruction", {"instruction": "i", "input": "x", "output": "o"}, "")
    records = [{"i": "Add", "x": "1+1", "o": "2"}, {"i": "Hi", "x": "", "o": "Hello"}, {"i": "Yo", "o": "o"}]
    batch = to_canonical(records, info)
    assert batch["messages"][0] == [{"role": "user", "content": "Add\n\n1+1"}, {"role": "assistant", "content": "2"}]
    assert batch["messages"][1][0] == {"role": "user", "content": "Hi"}
    assert batch["messages"][2][0]["content"] == "Yo"  # input is optional


def test_to_canonical_prompt_completion():
    info = FormatInfo("prompt_completion", {"prompt": "q", "completion": "a"}, "")
    batch = to_canonical([{"q": "2+2?", "a": "4"}], info)
    assert batch["messages"] == [[{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]]


def test_to_canonical_sharegpt_roles():
    info = FormatInfo("chat", {"messages": "conversations"}, "")
    rec = {"conversations": [{"from": "system", "value": "be kind"}, {"from": "human", "value": "hi"},
                             {"from": "gpt", "value": "hello"}]}
    assert to_canonical([rec], info)["messages"][0] == [
        {"role": "system", "content": "be kind"},
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"},
    ]


def test_to_canonical_string_turns_alternate():
    info = FormatInfo("chat", {"messages": "dialog"}, "")
    out = to_canonical([{"dialog": ["a", "b", "c"]}], info)["messages"][0]
    assert [m["role"] for m in out] == ["user", "assistant", "user"]


def test_to_canonical_content_parts():
    info = FormatInfo("chat", {"messages": "messages"}, "")
    rec = {"messages": [{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}]}
    assert to_canonical([rec], info)["messages"][0][0]["content"] == "a\nb"


def test_numbers_are_converted_and_counted():
    info = FormatInfo("text", {"text": "t"}, "")
    out = convert([{"t": 5}, {"t": "x"}, {"t": 2.5}, {"t": None}], info, start_row_id=10)
    assert out.batch["text"] == ["5", "x", "2.5", ""]
    assert out.batch["row_id"] == [10, 11, 12, 13]
    assert out.non_string_values == 2
    assert out.non_string_rows == [10, 12]


def test_dict_where_text_expected_names_file_and_line():
    info = FormatInfo("text", {"text": "t"}, "")
    with pytest.raises(DataError) as exc:
        to_canonical([{"t": "ok"}, {"t": {"nested": 1}}], info, source="d.jsonl", first_line=3)
    msg = str(exc.value)
    assert "d.jsonl" in msg and "line 4" in msg and "'t'" in msg and "dict" in msg


def test_row_index_without_lines():
    info = FormatInfo("text", {"text": "t"}, "")
    with pytest.raises(DataError, match="row 1"):
        to_canonical([{"t": "ok"}, {"t": ["a"]}], info)


def test_mixed_shape_names_keys():
    info = FormatInfo("text", {"text": "text"}, "")
    with pytest.raises(DataError) as exc:
        to_canonical([{"text": "a"}, {"a": 1, "b": 2}], info, source="f.jsonl", lines=[1, 12])
    msg = str(exc.value)
    assert "line 12" in msg and "['a', 'b']" in msg and "['text']" in msg


def test_unknown_role_is_error():
    info = FormatInfo("chat", {"messages": "messages"}, "")
    with pytest.raises(DataError, match="narrator"):
        to_canonical([{"messages": [{"role": "narrator", "content": "x"}]}], info, source="c.jsonl", first_line=1)


def test_bad_message_shape():
    info = FormatInfo("chat", {"messages": "messages"}, "")
    with pytest.raises(DataError, match="'role' and 'content'"):
        to_canonical([{"messages": [{"speaker": "a", "says": "x"}]}], info)
    with pytest.raises(DataError, match="list of messages"):
        to_canonical([{"messages": 5}], info)


# --------------------------------------------------------------------------- TRL's types, one real file each

FORMAT_FILES = Path(__file__).parent / "data" / "formats"

#: file -> (sft choice, format, form, dataset columns, first row's SFT conversation as (role, content) pairs)
TRL_CASES = {
    "standard_language_modeling": (None, "text", "standard", ["row_id", "text"], None),
    "conversational_language_modeling": (None, "chat", "conversational", ["row_id", "messages"], [
        ("system", "You answer in one sentence."), ("user", "What is the boiling point of water at sea level?"),
        ("assistant", "100 degrees Celsius, or 212 degrees Fahrenheit.")]),
    "standard_prompt_completion": (None, "prompt_completion", "standard", ["row_id", "messages"], [
        ("user", "What is the boiling point of water at sea level?"),
        ("assistant", " 100 degrees Celsius, or 212 degrees Fahrenheit.")]),
    "conversational_prompt_completion": (None, "prompt_completion", "conversational", ["row_id", "messages"], [
        ("user", "What is the boiling point of water at sea level?"),
        ("assistant", "100 degrees Celsius, or 212 degrees Fahrenheit.")]),
    "standard_preference": ("chosen", "preference", "standard",
                            ["row_id", "messages", "prompt", "chosen", "rejected", "sft"], [
        ("user", "What is the boiling point of water at sea level?"),
        ("assistant", "100 degrees Celsius, or 212 degrees Fahrenheit.")]),
    "conversational_preference": ("chosen", "preference", "conversational",
                                  ["row_id", "messages", "prompt", "chosen", "rejected", "sft"], [
        ("user", "What is the boiling point of water at sea level?"),
        ("assistant", "100 degrees Celsius, or 212 degrees Fahrenheit.")]),
    "standard_implicit_prompt_preference": ("chosen", "preference", "standard",
                                            ["row_id", "messages", "chosen", "rejected", "sft"], [
        ("user", "The sky is"), ("assistant", " blue.")]),
    "conversational_implicit_prompt_preference": ("chosen", "preference", "conversational",
                                                  ["row_id", "messages", "chosen", "rejected", "sft"], [
        ("user", "What is the boiling point of water at sea level?"),
        ("assistant", "100 degrees Celsius, or 212 degrees Fahrenheit.")]),
    "standard_unpaired_preference": ("desirable", "unpaired_preference", "standard",
                                     ["row_id", "messages", "prompt", "completion", "label", "sft"], [
        ("user", "What is the boiling point of water at sea level?"),
        ("assistant", "100 degrees Celsius, or 212 degrees Fahrenheit.")]),
    "conversational_unpaired_preference": ("desirable", "unpaired_preference", "conversational",
                                           ["row_id", "messages", "prompt", "completion", "label", "sft"], [
        ("user", "What is the boiling point of water at sea level?"),
        ("assistant", "100 degrees Celsius, or 212 degrees Fahrenheit.")]),
    "standard_stepwise_supervision": ("correct", "stepwise", "standard",
                                      ["row_id", "messages", "prompt", "completions", "labels", "sft"], [
        ("user", "Which number is larger, 9.8 or 9.11?"),
        ("assistant", "The fractional part of 9.8 is 0.8.\nThe fractional part of 9.11 is 0.11.\n"
                      "0.8 is greater than 0.11.\nHence, 9.8 > 9.11.")]),
    "openai_tool_calls": (None, "chat", "conversational", ["row_id", "messages", "tools"], None),
}


@pytest.mark.parametrize("name", sorted(TRL_CASES))
def test_each_trl_type_loads_as_itself(name):
    sft, fmt, form, columns, first = TRL_CASES[name]
    loaded = load_source(FORMAT_FILES / f"{name}.jsonl", sft=sft)
    assert (loaded.format, loaded.form) == (fmt, form)
    assert loaded.dataset.column_names == columns
    if first is not None:
        assert [(m["role"], m["content"]) for m in loaded.dataset[0]["messages"]] == first
    assert loaded.training  # the report always says what SFT trains on


def test_preference_keeps_its_columns_as_loaded():
    std = load_source(FORMAT_FILES / "standard_preference.jsonl").dataset
    assert std[1]["prompt"] == "Who wrote Pride and Prejudice?"
    assert (std[1]["chosen"], std[1]["rejected"]) == ("Jane Austen, in 1813.", "Charles Dickens.")
    conv = load_source(FORMAT_FILES / "conversational_preference.jsonl").dataset
    assert conv[3]["rejected"] == [{"role": "assistant", "content": "Sydney."}]
    assert "sft" not in conv.column_names  # no choice made: tokenize refuses (tests/test_tokens.py)


def test_unpaired_and_stepwise_sft_marks_only_the_good_rows():
    unpaired = load_source(FORMAT_FILES / "standard_unpaired_preference.jsonl", sft="desirable").dataset
    assert unpaired["sft"][:] == unpaired["label"][:] == [True, False] * 5
    steps = load_source(FORMAT_FILES / "standard_stepwise_supervision.jsonl", sft="correct").dataset
    assert steps["sft"][:] == [True, False, True]
    assert steps[1]["labels"] == [True, True, False, False]


def test_implicit_prompt_is_the_shared_start():
    from nbtune.data.formats import split_implicit_prompt

    assert split_implicit_prompt("The sky is blue.", "The sky is green.") == ("The sky is", " blue.")
    assert split_implicit_prompt("Spiders have eight legs.", "Spiders have six legs.") == ("Spiders have", " eight legs.")
    assert split_implicit_prompt("Yes.", "No.") == ("", "Yes.")


@pytest.mark.parametrize("name", ["standard_prompt_only", "conversational_prompt_only"])
def test_prompt_only_is_refused_with_what_to_add(name):
    with pytest.raises(DataError, match="prompt-only.*nothing to learn") as err:
        load_source(FORMAT_FILES / f"{name}.jsonl")
    assert "completion" in err.value.fix and "text_column='prompt'" in err.value.fix


def test_prompt_only_chat_is_refused():
    rows = [{"messages": [{"role": "user", "content": "What is 2 + 2?"}]}] * 3
    with pytest.raises(DataError, match="no conversation .* has an assistant turn"):
        load_source(rows)


@pytest.mark.parametrize("fmt, wrong, right", [("standard_preference", "desirable", "chosen"),
                                               ("standard_unpaired_preference", "chosen", "desirable"),
                                               ("standard_stepwise_supervision", "chosen", "correct")])
def test_a_wrong_sft_choice_names_the_right_one(fmt, wrong, right):
    with pytest.raises(DataError, match=f"sft={wrong!r} does not fit") as err:
        load_source(FORMAT_FILES / f"{fmt}.jsonl", sft=wrong)
    assert f"sft={right!r}" in err.value.fix


def test_sft_on_chat_data_is_refused():
    with pytest.raises(DataError, match="sft='chosen' is for preference data"):
        load_source(FORMAT_FILES / "conversational_language_modeling.jsonl", sft="chosen")


def test_tool_calls_load_in_the_canonical_shape():
    loaded = load_source(FORMAT_FILES / "openai_tool_calls.jsonl")
    assert loaded.mapping == {"messages": "messages", "tools": "tools"}
    assert "customer" in loaded.columns and "customer" not in loaded.mapping.values()
    row = loaded.dataset[2]
    call = row["messages"][1]
    assert call["role"] == "assistant" and call["content"] == ""
    assert [c["function"]["name"] for c in call["tool_calls"]] == ["get_weather", "get_weather"]
    assert json.loads(call["tool_calls"][1]["function"]["arguments"]) == {"city": "Bergen"}
    assert [m["role"] for m in row["messages"]] == ["user", "assistant", "tool", "tool", "assistant"]
    assert row["messages"][3]["tool_call_id"] == "call_3"
    assert [t["function"]["name"] for t in json.loads(row["tools"])] == ["get_weather"]


def test_tool_calls_after_the_detection_sample_restart_the_load(tmp_path):
    plain = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
    tool = json.loads((FORMAT_FILES / "openai_tool_calls.jsonl").read_text().splitlines()[0])
    path = tmp_path / "late.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in [plain] * 150 + [{"messages": tool["messages"]}]) + "\n")
    loaded = load_source(path, chunk_rows=40)
    assert len(loaded.dataset) == 151
    assert loaded.dataset[150]["messages"][2]["tool_calls"][0]["function"]["name"] == "get_weather"
    assert "tool calls included" in loaded.training


def test_tool_call_without_a_name_is_located():
    rows = [{"messages": [{"role": "user", "content": "x"},
                          {"role": "assistant", "tool_calls": [{"type": "function", "function": {"arguments": "{}"}}]}]}]
    with pytest.raises(DataError, match="tool call without a function name"):
        load_source(rows)


def test_bad_tool_arguments_are_located(tmp_path):
    path = tmp_path / "bad.jsonl"
    msgs = [{"role": "user", "content": "x"}, {"role": "assistant", "tool_calls": [
        {"type": "function", "function": {"name": "f", "arguments": "{not json"}}]}]
    path.write_text(json.dumps({"messages": msgs}) + "\n")
    with pytest.raises(DataError, match="not valid JSON") as err:
        load_source(path)
    assert err.value.line == 1
