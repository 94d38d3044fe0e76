"""Tests for mbc_jax.data: schemas, template parity with the shared benchmark file, bad input, split, batching."""

from __future__ import annotations

import json
import random
import re
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from benchmarks._buckets import bucket, default_bucket_lengths, pad_rows
from mbc_jax import UserError
from mbc_jax.data import (
    SCHEMAS,
    Batch,
    DataError,
    Example,
    Record,
    Template,
    load_records,
    pack,
    split_train_val,
    tokenize,
)

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
TOKENIZER_DIR = SHARED / "tokenizers" / "gpt-neo-125M"
BENCH = SHARED / "bench" / "dolly256_gptneo.jsonl"
DOLLY = SHARED / "data" / "dolly-15k" / "databricks-dolly-15k.jsonl"
EOS = 50256

needs_shared = pytest.mark.skipif(not TOKENIZER_DIR.is_dir(), reason="../shared/tokenizers not present")


@pytest.fixture(scope="module")
def tok():
    if not TOKENIZER_DIR.is_dir():
        pytest.skip("../shared/tokenizers not present")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(TOKENIZER_DIR))


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


# --------------------------------------------------------------------------------------------
# the oracle: the shared benchmark file was built with the paper's template
# --------------------------------------------------------------------------------------------


@pytest.mark.skipif(not (BENCH.is_file() and DOLLY.is_file()), reason="../shared/bench or data not present")
def test_dolly_template_reproduces_shared_bench_file(tok, tmp_path):
    bench = [json.loads(line) for line in BENCH.read_text().splitlines()]
    lines = DOLLY.read_bytes().split(b"\n")
    # the benchmark's Dolly rows, written as a Dolly JSONL file in the benchmark's order
    src = tmp_path / "dolly256.jsonl"
    src.write_bytes(b"".join(lines[b["dolly_row"]] + b"\n" for b in bench))
    records, lrep = load_records(src)
    assert lrep.schema == "dolly" and lrep.records_loaded == 256 and not lrep.skipped
    examples, trep = tokenize(records, tok, max_length=512)
    assert len(examples) == 256
    for ex, b in zip(examples, bench):
        assert ex.input_ids.dtype == np.int32 and ex.response_mask.dtype == bool
        assert ex.input_ids.tolist() == b["input_ids"], ex.id
        first_response = int(np.argmax(ex.response_mask)) if ex.response_mask.any() else len(ex)
        assert first_response == b["prompt_length"], ex.id
        assert ex.response_mask[first_response:].all() and not ex.response_mask[:first_response].any()
        assert ex.category == b["category"]
    # RESULTS.md: 41,264 real tokens; 10 records over 512, 7 of them with the whole response cut away
    assert trep.tokens == 41264 and trep.examples_out == 256
    assert len(trep.truncated) == 10 and sum(ex.truncated for ex in examples) == 10
    assert len(trep.no_response) == 7 and trep.longest > 512
    assert all(len(ex) == 512 for ex in examples if ex.truncated)
    assert "truncated to 512: 10" in trep.summary()

    # the same file read back as pre-tokenized records gives identical examples
    pre, prep = load_records(BENCH)
    assert prep.schema == "tokens"
    pre_examples, _ = tokenize(pre, tok)
    for a, b in zip(examples, pre_examples):
        np.testing.assert_array_equal(a.input_ids, b.input_ids)
        np.testing.assert_array_equal(a.response_mask, b.response_mask)


def test_tokens_schema_mask_and_no_tokenizer(tmp_path):
    src = write_jsonl(tmp_path / "t.jsonl", [
        {"input_ids": [5, 6, 7, 8], "prompt_length": 2, "id": "a", "category": "c"},
        {"input_ids": [9, 10]},
    ])
    records, rep = load_records(src)
    assert rep.schema == "tokens"
    examples, trep = tokenize(records, None, vocab_size=11)
    assert examples[0].response_mask.tolist() == [False, False, True, True]
    assert examples[1].response_mask.tolist() == [True, True]  # prompt_length defaults to 0
    assert (examples[0].id, examples[0].category, examples[1].id) == ("a", "c", "1")
    assert trep.tokens == 6 and trep.response_tokens == 4


# --------------------------------------------------------------------------------------------
# schemas and template
# --------------------------------------------------------------------------------------------


def test_dialogue_schemas_agree_and_render_the_template(tok, tmp_path):
    rows = {
        "dolly": {"instruction": "Name a color.", "context": "", "response": "Blue.", "category": "open_qa"},
        "chat": {"messages": [{"role": "user", "content": "Name a color."}, {"role": "assistant", "content": "Blue."}]},
        "prompt_completion": {"prompt": "Name a color.", "completion": "Blue."},
    }
    outs = {}
    for schema, row in rows.items():
        records, rep = load_records(write_jsonl(tmp_path / f"{schema}.jsonl", [row]))
        assert rep.schema == schema
        outs[schema] = tokenize(records, tok)[0][0]
    ref = outs["dolly"]
    assert tok.decode(ref.input_ids) == "Human: Name a color.\n\nAssistant: Blue.<|endoftext|>"
    assert tok.decode(ref.input_ids[ref.response_mask]) == " Blue.<|endoftext|>"
    assert ref.input_ids[-1] == EOS
    for ex in outs.values():
        np.testing.assert_array_equal(ex.input_ids, ref.input_ids)
        np.testing.assert_array_equal(ex.response_mask, ref.response_mask)

    # Dolly context joins the instruction with the context separator
    records, _ = load_records(write_jsonl(tmp_path / "ctx.jsonl", [
        {"instruction": "Summarize.", "context": "Some text.", "response": "Short."}]))
    ex = tokenize(records, tok)[0][0]
    assert tok.decode(ex.input_ids) == "Human: Summarize.\n\nSome text.\n\nAssistant: Short.<|endoftext|>"
    assert Template().prompt(records[0]) == "Human: Summarize.\n\nSome text.\n\nAssistant:"


def test_multi_turn_chat_scores_only_assistant_turns(tok, tmp_path):
    row = {"id": 7, "messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello."},
        {"role": "user", "content": "Bye"},
        {"role": "assistant", "content": "Goodbye."},
    ]}
    records, _ = load_records(write_jsonl(tmp_path / "c.jsonl", [row]))
    assert records[0].id == "7"
    assert [r for r, _ in records[0].turns] == ["system", "user", "assistant", "user", "assistant"]
    ex = tokenize(records, tok)[0][0]
    assert tok.decode(ex.input_ids) == (
        "Be brief.\n\nHuman: Hi\n\nAssistant: Hello.<|endoftext|>\n\nHuman: Bye\n\nAssistant: Goodbye.<|endoftext|>")
    assert tok.decode(ex.input_ids[ex.response_mask]) == " Hello.<|endoftext|> Goodbye.<|endoftext|>"
    # exactly two contiguous response runs, each ending with EOS
    edges = np.flatnonzero(np.diff(ex.response_mask.astype(int)))
    assert len(edges) == 3 and ex.input_ids[edges[1]] == EOS and ex.input_ids[-1] == EOS
    assert Template().prompt(records[0]).endswith("Human: Bye\n\nAssistant:")


def test_text_schema_is_encoded_exactly_with_nothing_appended(tok, tmp_path):
    text = "The quick brown fox.\nJumps over  the lazy dog."
    records, rep = load_records(write_jsonl(tmp_path / "t.jsonl", [{"text": text, "category": "web"}]))
    assert rep.schema == "text"
    ex = tokenize(records, tok)[0][0]
    assert ex.input_ids.tolist() == tok(text)["input_ids"]
    assert ex.response_mask.all() and ex.input_ids[-1] != EOS


class _BosTokenizer:
    """The GPT-Neo vocabulary with OPT's habit: `</s>` (id 2) prepended when add_special_tokens."""

    eos_token_id = 2

    def __init__(self, tok):
        self.tok = tok

    def __len__(self):
        return len(self.tok)

    def __call__(self, texts, add_special_tokens=True, **kw):
        ids = self.tok(texts, add_special_tokens=False)["input_ids"]
        return {"input_ids": [([2] if add_special_tokens else []) + x for x in ids]}


def test_default_special_tokens_only_at_the_start(tok, tmp_path):
    records, _ = load_records(write_jsonl(tmp_path / "d.jsonl", [
        {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
                      {"role": "user", "content": "c"}, {"role": "assistant", "content": "d"}]}]))
    records += load_records(write_jsonl(tmp_path / "t.jsonl", [{"text": "plain"}]))[0]
    chat, text = tokenize(records, _BosTokenizer(tok))[0]
    plain = tokenize(records, tok)[0][0]
    assert chat.input_ids[0] == 2 and (chat.input_ids == 2).sum() == 3  # BOS + two EOS
    np.testing.assert_array_equal(chat.input_ids[1:], np.where(plain.input_ids == EOS, 2, plain.input_ids))
    assert text.input_ids.tolist() == [2] + tok("plain")["input_ids"]


def test_template_from_file_json_and_yaml(tok, tmp_path):
    (tmp_path / "t.json").write_text(json.dumps({"user_prefix": "### Instruction:\n",
                                                 "assistant_prefix": "\n### Response:", "add_eos": False}))
    (tmp_path / "t.yaml").write_text('user_prefix: "### Instruction:\\n"\nassistant_prefix: "\\n### Response:"\n'
                                     'add_eos: false\n')
    t_json, t_yaml = Template.from_file(tmp_path / "t.json"), Template.from_file(tmp_path / "t.yaml")
    assert t_json == t_yaml and t_json.turn_separator == "\n\n" and t_json.add_eos is False
    assert Template.from_dict(t_json.to_dict()) == t_json
    records, _ = load_records(write_jsonl(tmp_path / "d.jsonl", [{"prompt": "Add 2+2.", "completion": "4"}]))
    ex = tokenize(records, tok, t_json)[0][0]
    assert tok.decode(ex.input_ids) == "### Instruction:\nAdd 2+2.\n### Response: 4"
    assert tok.decode(ex.input_ids[ex.response_mask]) == " 4"
    (tmp_path / "bad.json").write_text(json.dumps({"user_prefx": "x"}))
    with pytest.raises(UserError, match=r"bad\.json: user_prefx: unknown template field; known fields: .*user_prefix"):
        Template.from_file(tmp_path / "bad.json")


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
    with pytest.raises(UserError,
                       match="unknown schema 'alpaca'; known schemas: dolly, chat, prompt_completion, text, tokens"):
        load_records(src, schema="alpaca")


def test_hf_without_datasets_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # import fails as if not installed
    with pytest.raises(UserError, match="pip install datasets"):
        load_records("hf:databricks/databricks-dolly-15k")


def test_hf_with_datasets(monkeypatch):
    calls = []

    def load_dataset(name, split):
        calls.append((name, split))
        return [{"instruction": "q", "context": None, "response": "a", "category": "c"},
                {"instruction": "q2", "context": "", "response": "", "category": "c"}]

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    records, rep = load_records("hf:org/set", skip_bad=True)
    assert calls == [("org/set", "train")] and rep.format == "hf" and rep.schema == "dolly"
    assert records[0].context == "" and records[0].source == "hf:org/set:1"
    assert rep.skipped == [("hf:org/set:2", "hf:org/set:2: response: empty")]
    load_records("hf:org/set:validation", skip_bad=True)
    assert calls[-1] == ("org/set", "validation")


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


def test_token_id_out_of_range_and_too_long_at_tokenize(tmp_path):
    src = write_jsonl(tmp_path / "t.jsonl",
                      [{"input_ids": [1, 2, 3]}, {"input_ids": [4, 50257, 1]}, {"input_ids": list(range(9))}])
    records, _ = load_records(src)
    with pytest.raises(DataError,
                       match=r"t\.jsonl:2: input_ids\[1\]: token id 50257 out of range for the vocabulary size 50257"):
        tokenize(records, None, vocab_size=50257)
    with pytest.raises(DataError, match=r"t\.jsonl:3: input_ids: 9 tokens, longer than the maximum length 8"):
        tokenize(records[:1] + records[2:], None, max_length=8, overflow="error")
    examples, rep = tokenize(records, None, vocab_size=50257, max_length=8, overflow="error", skip_bad=True)
    assert [ex.index for ex in examples] == [0]
    assert [s for s, _ in rep.skipped] == [f"{src}:2", f"{src}:3"]
    assert "skipped bad records: 2" in rep.summary()


# --------------------------------------------------------------------------------------------
# truncation policy
# --------------------------------------------------------------------------------------------


def test_truncate_and_drop_are_counted(tok, tmp_path):
    long_prompt = "word " * 40
    src = write_jsonl(tmp_path / "d.jsonl", [
        {"instruction": "Hi", "response": "Hello there."},          # 11 tokens: fits
        {"instruction": "Hi", "response": "one two three four five six seven eight nine ten"},  # response cut
        {"instruction": long_prompt, "response": "x"},                 # prompt alone overflows
    ])
    records, _ = load_records(src)
    full, _ = tokenize(records, tok, max_length=1000)
    lengths = [len(ex) for ex in full]
    assert lengths[0] <= 16 < lengths[1] and lengths[2] > 40
    ex, rep = tokenize(records, tok, max_length=16)
    assert [len(e) for e in ex] == [lengths[0], 16, 16] and [e.truncated for e in ex] == [False, True, True]
    np.testing.assert_array_equal(ex[1].input_ids, full[1].input_ids[:16])
    np.testing.assert_array_equal(ex[1].response_mask, full[1].response_mask[:16])
    assert ex[1].response_tokens > 0 and ex[2].response_tokens == 0
    assert rep.truncated == [(1, "1", lengths[1]), (2, "2", lengths[2])] and rep.no_response == [(2, "2")]
    assert rep.tokens == lengths[0] + 32 and rep.longest == lengths[2]
    ex, rep = tokenize(records, tok, max_length=16, overflow="drop")
    assert [e.index for e in ex] == [0] and [d[0] for d in rep.dropped] == [1, 2]
    assert "dropped, longer than 16: 2 (ids 1, 2)" in rep.summary()


# --------------------------------------------------------------------------------------------
# split and duplicates
# --------------------------------------------------------------------------------------------


def _records(n: int, dup_every: int = 0) -> list[Record]:
    out = []
    for i in range(n):
        k = i % dup_every if dup_every and i >= n // 2 else i
        out.append(Record(index=i, id=f"r{i}", category=f"c{i % 3}", turns=[("user", f"q{k}"), ("assistant", f"a{k}")],
                          schema="dolly"))
    return out


def test_split_is_deterministic_and_order_independent():
    recs = _records(200)
    train, val = split_train_val(recs, 0.1, seed=0)
    assert len(val) == 20 and len(train) == 180
    assert {r.id for r in train} | {r.id for r in val} == {r.id for r in recs}
    assert not {r.id for r in train} & {r.id for r in val}
    assert [r.index for r in val] == sorted(r.index for r in val)  # input order kept
    shuffled = recs[:]
    random.Random(1).shuffle(shuffled)
    # ids and categories do not matter, only content
    relabeled = [Record(index=r.index + 1000, id="x", category="y", turns=r.turns, schema=r.schema) for r in shuffled]
    _, val2 = split_train_val(relabeled, 0.1, seed=0)
    assert sorted(r.turns[0][1] for r in val2) == sorted(r.turns[0][1] for r in val)
    _, val3 = split_train_val(recs, 0.1, seed=1)
    assert {r.id for r in val3} != {r.id for r in val}
    assert split_train_val(recs, 0.0)[1] == []
    with pytest.raises(UserError, match="val_fraction"):
        split_train_val(recs, 1.0)


def test_split_keeps_duplicates_together_and_works_on_examples():
    recs = _records(100, dup_every=10)  # records 50..99 repeat the contents of records 0..9
    for seed in range(5):
        train, val = split_train_val(recs, 0.2, seed=seed)
        val_contents = {r.turns[0][1] for r in val}
        assert not val_contents & {r.turns[0][1] for r in train}
    exs = [Example(index=i, id=str(i), category="", input_ids=np.array([i % 7, i], np.int32),
                   response_mask=np.array([False, True])) for i in range(50)]
    a = split_train_val(exs, 0.3, seed=2)
    b = split_train_val(exs[::-1], 0.3, seed=2)
    assert len(a[1]) == 15 and {e.index for e in a[1]} == {e.index for e in b[1]}


# --------------------------------------------------------------------------------------------
# batching
# --------------------------------------------------------------------------------------------


def _examples(lengths: list[int]) -> list[Example]:
    """Token ids encode (example, position) so every token can be traced back."""
    out = []
    for i, n in enumerate(lengths):
        ids = (1000 * (i + 1) + np.arange(n)).astype(np.int32)
        mask = np.arange(n) >= n // 3
        out.append(Example(index=i, id=str(i), category="", input_ids=ids, response_mask=mask))
    return out


def padding_stats(batches: list[Batch]) -> dict:
    """Real vs padded token counts over a list of batches (efficiency = real / padded)."""
    real = sum(int((b.segment_ids > 0).sum()) for b in batches)
    padded = sum(int(b.input_ids.size) for b in batches)
    return {"real_tokens": real, "efficiency": real / padded if padded else 0.0}


def _check_batches(batches: list[Batch], examples: list[Example], max_segments: int | None = None) -> dict[int, tuple]:
    """Every example exactly once, contiguous, in order, right positions/segments/masks; padding clean."""
    seen: dict[int, tuple] = {}
    for bi, b in enumerate(batches):
        B, T = b.input_ids.shape
        assert b.input_ids.dtype == b.segment_ids.dtype == b.positions.dtype == b.record_index.dtype == np.int32
        assert b.response_mask.dtype == bool and b.record_index.shape[0] == B
        for r in range(B):
            seg = b.segment_ids[r]
            pad = seg == 0
            assert not b.input_ids[r][pad].any() and not b.positions[r][pad].any() and not b.response_mask[r][pad].any()
            n_seg = int(seg.max())
            assert (b.record_index[r, :n_seg] >= 0).all() and (b.record_index[r, n_seg:] == -1).all()
            if max_segments:
                assert n_seg <= max_segments
            t = 0
            for s in range(1, n_seg + 1):
                idx = np.flatnonzero(seg == s)
                assert idx[0] == t and np.array_equal(idx, np.arange(t, t + len(idx)))  # contiguous, packed left
                i = int(b.record_index[r, s - 1])
                ex = examples[i]
                assert i not in seen
                seen[i] = (bi, r, s)
                np.testing.assert_array_equal(b.input_ids[r, idx], ex.input_ids)
                np.testing.assert_array_equal(b.positions[r, idx], np.arange(len(ex)))
                np.testing.assert_array_equal(b.response_mask[r, idx], ex.response_mask)
                t += len(idx)
            assert pad[t:].all()  # no row overflows; padding only at the end
    assert sorted(seen) == list(range(len(examples)))
    return seen


def test_pack_invariants_and_fixed_shapes():
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 65, size=300).tolist() + [64, 64, 1]
    examples = _examples(lengths)
    batches = pack(examples, seq_len=64, rows_per_batch=8)
    assert {b.input_ids.shape for b in batches} == {(8, 64)}
    assert len({b.record_index.shape for b in batches}) == 1
    _check_batches(batches, examples)
    rows = sum(int((b.segment_ids.max(axis=1) > 0).sum()) for b in batches)
    lower = max(int(np.ceil(sum(lengths) / 64)), sum(n > 32 for n in lengths))  # no two items > 32 share a row
    assert lower <= rows <= 1.05 * lower
    stats = padding_stats(batches)
    assert stats["real_tokens"] == sum(lengths) and stats["efficiency"] > 0.9

    capped = pack(examples, seq_len=64, rows_per_batch=8, max_segments=2)
    assert {b.record_index.shape for b in capped} == {(8, 2)}
    _check_batches(capped, examples, max_segments=2)


def test_pack_exact_fit_and_errors():
    examples = _examples([3, 5, 2, 6, 4, 4])  # 24 tokens -> exactly 3 rows of 8
    batches = pack(examples, seq_len=8, rows_per_batch=2)
    assert len(batches) == 2 and (batches[0].segment_ids > 0).all() and (batches[1].segment_ids[0] > 0).all()
    assert (batches[1].segment_ids[1] == 0).all() and (batches[1].record_index[1] == -1).all()  # filler row
    _check_batches(batches, examples)
    assert pack([], 8, 2) == []
    with pytest.raises(UserError, match=r"example 1 \(id 1, index 1\) has 9 tokens, more than the row length 8"):
        pack(_examples([3, 9]), seq_len=8, rows_per_batch=2)


def test_bucket_and_pad_rows():
    lengths = [5, 64, 65, 200, 256, 1, 100, 33, 128, 129]
    examples = _examples(lengths)
    batches = bucket(examples, default_bucket_lengths(256, smallest=64), tokens_per_batch=512)
    assert default_bucket_lengths(256, smallest=64) == (64, 128, 256)
    seen = _check_batches(batches, examples)
    shape_of = {i: batches[bi].input_ids.shape for i, (bi, _, _) in seen.items()}
    expected = {64: (8, 64), 128: (4, 128), 256: (2, 256)}
    for i, n in enumerate(lengths):
        assert shape_of[i] == expected[64 if n <= 64 else 128 if n <= 128 else 256]
    assert [b.input_ids.shape for b in batches] == [(8, 64), (4, 128), (2, 256), (2, 256)]
    with pytest.raises(UserError, match="more than the row length 256"):
        bucket(_examples([257]), (64, 256), 512)

    b = pad_rows(examples[:3], seq_len=80)
    assert b.input_ids.shape == (3, 80) and b.record_index.tolist() == [[0], [1], [2]]
    _check_batches([b], examples[:3])


@needs_shared
@pytest.mark.skipif(not BENCH.is_file(), reason="../shared/bench not present")
def test_pack_bench_file_wastes_little():
    records, _ = load_records(BENCH)
    examples, rep = tokenize(records, None, vocab_size=50257)
    batches = pack(examples, seq_len=512, rows_per_batch=4)
    _check_batches(batches, examples)
    stats = padding_stats(batches)
    assert stats["real_tokens"] == rep.tokens == 41264
    assert len(batches) == 21 and stats["efficiency"] > 0.95  # 81 rows is the lower bound (41264 / 512)


def test_schemas_table_is_complete():
    assert set(SCHEMAS) == {"dolly", "chat", "prompt_completion", "text", "tokens"}
