"""mbc_jax/data/records.py: JSONL, JSON arrays and hf: datasets, schema detection and override, and bad
input that names file, line and field."""

from __future__ import annotations

import json
import re
import sys
import types

import pytest

from conftest import write_jsonl
from mbc_jax import UserError
from mbc_jax.data import SCHEMAS, DataError, load_records

# --------------------------------------------------------------------------------------------
# reading files
# --------------------------------------------------------------------------------------------


def test_json_array_blank_lines_ids_and_indices(tmp_path):
    arr = tmp_path / "a.json"
    arr.write_text('[\n  {"text": "one"},\n\n  {"text": "two", "id": "x"},\n  {"text": 3}\n]\n')
    with pytest.raises(DataError) as e:
        load_records(arr)
    assert str(e.value).startswith(f"{arr}:5: text: expected a string, got integer")
    records, rep = load_records(arr, skip_bad=True)
    assert rep.format == "json" and rep.records_read == 3 and [r.id for r in records] == ["0", "x"]
    assert [r.source for r in records] == [f"{arr}:2", f"{arr}:4"] and rep.skipped[0][0] == f"{arr}:5"

    jl = tmp_path / "b.jsonl"
    jl.write_text('{"text": "one"}\r\n\n{"text": "two", "category": "k"}\n   \n{"text": "three"}')
    records, rep = load_records(jl)
    assert [r.index for r in records] == [0, 1, 2] and [r.id for r in records] == ["0", "1", "2"]
    assert [r.source for r in records] == [f"{jl}:1", f"{jl}:3", f"{jl}:5"]
    assert records[1].category == "k" and records[0].category == "" and rep.blank_lines == 2


def test_schema_override(tmp_path):
    src = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "p", "completion": "c", "text": "t"}])
    assert load_records(src)[1].schema == "prompt_completion"
    records, rep = load_records(src, schema="text")
    assert rep.schema == "text" and records[0].text == "t"
    with pytest.raises(DataError, match=r"d\.jsonl:1: instruction: missing"):
        load_records(src, schema="dolly")
    with pytest.raises(UserError, match="unknown schema 'vicuna'; known schemas: dolly, chat, prompt_completion, "
                       "text, tokens, alpaca, sharegpt, tree"):
        load_records(src, schema="vicuna")


def test_hf_without_datasets_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # import fails as if not installed
    with pytest.raises(UserError, match="pip install datasets"):
        load_records("hf:databricks/databricks-dolly-15k")


def test_hf_with_datasets(monkeypatch):
    calls = []

    def load_dataset(name, config=None, *, revision=None, split, data_files=None):
        calls.append((name, split) if (config, revision, data_files) == (None, None, None)
                     else (name, config, revision, split, data_files))
        return [{"instruction": "q", "context": None, "response": "a", "category": "c"},
                {"instruction": "q2", "context": "", "response": "", "category": "c"}]

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    records, rep = load_records("hf:org/set", skip_bad=True)
    assert calls == [("org/set", "train")] and rep.format == "hf" and rep.schema == "dolly"
    assert records[0].context == "" and records[0].source == "hf:org/set:1"
    assert rep.skipped == [("hf:org/set:2", "hf:org/set:2: response: empty")]
    load_records("hf:org/set:validation", skip_bad=True)
    assert calls[-1] == ("org/set", "validation")
    load_records("hf:org/set:main@0123abc:test?data_files=a/x.jsonl,b/*.jsonl", skip_bad=True)
    assert calls[-1] == ("org/set", "main", "0123abc", "test", ["a/x.jsonl", "b/*.jsonl"])
    load_records("hf:org/set@v1.0", skip_bad=True)
    assert calls[-1] == ("org/set", None, "v1.0", "train", None)


# --------------------------------------------------------------------------------------------
# bad input: every problem names file, line and field
# --------------------------------------------------------------------------------------------


GOOD = json.dumps({"instruction": "q", "context": "", "response": "a"})
BAD_FILES = {
    # name: (lines of the file, line number, field, problem pattern)
    "malformed_json": ([GOOD, '{"instruction": "q", "response": "a"'], 2, "record", "malformed JSON at column"),
    "missing_field": ([GOOD, GOOD, json.dumps({"instruction": "q", "context": ""})], 3, "response", "missing"),
    "mistyped_field": ([GOOD, json.dumps({"instruction": "q", "response": 42})], 2, "response",
                       r"expected a string, got integer \(42\)"),
    "empty_response": ([json.dumps({"instruction": "q", "response": "  \n"}), GOOD], 1, "response", "empty"),
    "not_an_object": ([GOOD, "[1, 2]"], 2, "record", "expected a JSON object, got array"),
    "bad_id": ([GOOD, json.dumps({"instruction": "q", "response": "a", "id": [1]})], 2, "id",
               "expected a string or integer"),
    "chat_role": ([json.dumps({"messages": [{"role": "user", "content": "q"}, {"role": "bot", "content": "a"}]})], 1,
                  r"messages\[1\]\.role", "unknown role 'bot' \\(expected one of system, user, assistant\\)"),
    "chat_content": ([json.dumps({"messages": [{"role": "user", "content": ["q"]},
                                               {"role": "assistant", "content": "a"}]})], 1,
                     r"messages\[0\]\.content", "expected a string, got array"),
    "chat_no_assistant": ([json.dumps({"messages": [{"role": "user", "content": "q"}]})], 1, "messages",
                          "no assistant message"),
    "chat_empty_assistant": ([json.dumps({"messages": [{"role": "user", "content": "q"},
                                                       {"role": "assistant", "content": ""}]})], 1,
                             r"messages\[1\]\.content", "empty assistant message"),
    "negative_prompt_length": ([json.dumps({"input_ids": [1, 2], "prompt_length": -1})], 1, "prompt_length",
                               r"negative \(-1\)"),
    "prompt_length_too_long": ([json.dumps({"input_ids": [1, 2], "prompt_length": 3})], 1, "prompt_length",
                               "exceeds the record's 2 tokens"),
    "negative_token_id": ([json.dumps({"input_ids": [1, -2]})], 1, r"input_ids\[1\]", "token id -2 out of range"),
    "float_token_id": ([json.dumps({"input_ids": [1, 2.5]})], 1, r"input_ids\[1\]", "expected an integer, got number"),
    "unknown_schema": ([json.dumps({"question": "q", "answer": "a"})], 1, "record",
                       r"unknown schema: keys \[answer, question\] match none of the known schemas: dolly .*chat .*"
                       r"prompt_completion .*text .*tokens"),
}


@pytest.mark.parametrize("name", sorted(BAD_FILES))
def test_bad_record_names_file_line_and_field(tmp_path, name):
    lines, line, field, problem = BAD_FILES[name]
    src = write_jsonl(tmp_path / f"{name}.jsonl", lines)
    with pytest.raises(DataError) as e:
        load_records(src)
    assert e.value.source == f"{src}:{line}"
    assert e.value.field is not None
    assert re.fullmatch(re.escape(f"{src}:{line}: ") + field + ": .*" + problem + ".*", str(e.value), re.S), \
        str(e.value)
    if len(lines) > 1:  # with skip_bad, the bad line is a counted, listed skip and the rest load
        records, rep = load_records(src, skip_bad=True)
        assert rep.records_read == len(lines) and rep.records_loaded == len(lines) - 1 == len(records)
        assert [s for s, _ in rep.skipped] == [f"{src}:{line}"]
        assert f"skipped 1 bad record(s):\n  {src}:{line}: " in rep.summary()
        assert sorted(r.index for r in records) == [i for i in range(len(lines)) if i != line - 1]


def test_invalid_utf8_names_the_line(tmp_path):
    src = tmp_path / "u.jsonl"
    src.write_bytes(GOOD.encode() + b"\n" + GOOD.encode() + b"\n" + b'{"instruction": "q\xff\xfe", "response": "a"}\n')
    with pytest.raises(DataError, match=r"u\.jsonl:3: record: invalid UTF-8 at byte 19"):
        load_records(src)
    records, rep = load_records(src, skip_bad=True)
    assert len(records) == 2 and rep.skipped[0][0] == f"{src}:3"
    arr = tmp_path / "u.json"
    arr.write_bytes(b'[\n{"text": "a"},\n{"text": "\xff"}\n]')
    with pytest.raises(DataError, match=r"u\.json:3: file: invalid UTF-8"):
        load_records(arr)


@pytest.mark.parametrize("content", [b"", b"\n  \n", b"[]", b"\xef\xbb\xbf\n"])
def test_empty_file(tmp_path, content):
    src = tmp_path / "e.jsonl"
    src.write_bytes(content)
    with pytest.raises(DataError, match=r"e\.jsonl:1: file: .*no records"):
        load_records(src, skip_bad=True)


def test_missing_file_and_all_bad(tmp_path):
    with pytest.raises(UserError, match="nope.jsonl: no such file"):
        load_records(tmp_path / "nope.jsonl")
    src = write_jsonl(tmp_path / "bad.jsonl", ['{"text": ""}', "{"])
    with pytest.raises(UserError,
                       match=r"all 2 records are bad; nothing to load\. First problem: .*bad\.jsonl:1: text: empty"):
        load_records(src, skip_bad=True)


def test_malformed_json_array_is_fatal_even_with_skip_bad(tmp_path):
    src = tmp_path / "a.json"
    src.write_text('[\n{"text": "a"},\n{"text": "b",,}\n]')
    with pytest.raises(DataError, match=r"a\.json:3: record: malformed JSON"):
        load_records(src, skip_bad=True)


def test_schemas_table_is_complete():
    assert set(SCHEMAS) == {"dolly", "chat", "prompt_completion", "text", "tokens", "alpaca", "sharegpt", "tree"}


def test_plain_string_prompt_completion_says_the_template_applies(tmp_path):
    """TRL concatenates a plain-string prompt and completion; here the template renders them, and the load
    summary says so, with the template that gives TRL's text."""
    from mbc_jax.data import Template

    rows = [{"prompt": "The capital of France is", "completion": " Paris."},
            {"prompt": [{"role": "user", "content": "Hi"}], "completion": [{"role": "assistant", "content": "Hello"}]},
            {"prompt": "2 + 2 =", "completion": " 4"}]
    src = tmp_path / "pc.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    records, rep = load_records(src)
    assert rep.counts["plain_prompt_completion"] == 2  # the conversational record is not counted
    summary = rep.summary()
    assert ("NOTE: 2 plain-string prompt/completion record(s) are rendered with the template (by default "
            "`Human: {prompt}\n\nAssistant: {completion}` + EOS), not concatenated as TRL does") in summary
    default = "".join(text for text, _ in Template().segments(records[0]))
    assert default == "Human: The capital of France is\n\nAssistant:  Paris."
    trl = Template.from_dict({"user_prefix": "", "assistant_prefix": "", "response_prefix": ""})
    segs = trl.segments(records[0])
    assert "".join(t for t, _ in segs) == "The capital of France is Paris."  # TRL's prompt + completion
    assert [t for t, scored in segs if scored] == [" Paris."]
    assert '"user_prefix": "", "assistant_prefix": "", "response_prefix": ""' in summary
    _, dolly = load_records(write_jsonl(tmp_path / "d.jsonl", [{"instruction": "q", "response": "a"}]))
    assert "plain_prompt_completion" not in dolly.counts and "NOTE" not in dolly.summary()


def test_iter_records_streams_a_jsonl_file_and_counts_as_load_records(tmp_path):
    """Issue 31: records come one at a time (the ones before a bad line arrive before its error), and the report
    the stream fills in equals load_records'."""
    from mbc_jax.data import iter_records

    path = tmp_path / "d.jsonl"
    path.write_text('{"text": "a"}\n\n{"text": "b"}\n{"text": \n{"text": "c"}\n')
    report, records = iter_records(str(path))
    assert next(records).text == "a" and report.records_read == 1
    assert next(records).text == "b" and report.blank_lines == 1
    with pytest.raises(DataError, match=":4:"):
        next(records)
    report, records = iter_records(str(path), skip_bad=True)
    streamed = list(records)
    loaded, loaded_report = load_records(str(path), skip_bad=True)
    assert [r.text for r in streamed] == [r.text for r in loaded] == ["a", "b", "c"]
    assert report == loaded_report and report.blank_lines == 2 and len(report.skipped) == 1
