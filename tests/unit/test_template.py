"""mbc_jax/data/template.py: the template against the shared benchmark file, every schema through
tokenize, special tokens, template files, token-level errors, truncation, and the train/val split."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest

from conftest import BENCH, SHARED, TOKENIZER_DIR, write_jsonl
from mbc_jax import UserError
from mbc_jax.data import DataError, Example, Record, Template, load_records, split_train_val, tokenize

DOLLY = SHARED / "data" / "dolly-15k" / "databricks-dolly-15k.jsonl"
EOS = 50256


@pytest.fixture(scope="module")
def tok():
    if not TOKENIZER_DIR.is_dir():
        pytest.skip("../shared/tokenizers not present")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(TOKENIZER_DIR))


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


def test_eos_outside_the_vocabulary_names_where_it_came_from(tok):
    rec = Record(index=0, id="0", category="", turns=[("user", "q"), ("assistant", "a")], schema="dolly")
    with pytest.raises(UserError, match=r"^the template's eos_token_id: eos_token_id 70000 is outside the model's "
                       r"vocabulary \(ids 0\.\.50256\)"):
        tokenize([rec], tok, Template(eos_token_id=70000), 64, vocab_size=50257)
    with pytest.raises(UserError, match=r"\(tokenizer files\): eos_token_id 50256 is outside the model's vocabulary "
                       r"\(ids 0\.\.99\)"):
        tokenize([rec], tok, Template(), 64, vocab_size=100)
    assert tokenize([rec], tok, Template(eos_token_id=50256), 64, vocab_size=50257)[0][0].input_ids[-1] == 50256
