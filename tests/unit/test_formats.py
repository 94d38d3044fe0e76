"""mbc_jax/data/formats.py: Alpaca, ShareGPT, TRL conversational and --fields, auto-detected, each bad input
named by file, line and field, and counted and listed with skip_bad."""

from __future__ import annotations

import json

import pytest

from conftest import write_jsonl
from mbc_jax import UserError
from mbc_jax.data import DataError, Template, load_records

T = Template()


def render(rec) -> str:
    """The dialogue as the template renders it, responses in [brackets], EOS as <eos>."""
    return "".join(f"[{t}]<eos>" if r else t for t, r in T.segments(rec))


def test_alpaca_detected_with_input_system_and_history(tmp_path):
    src = write_jsonl(tmp_path / "a.jsonl", [
        {"instruction": "Add 2 and 3.", "input": "", "output": "5"},
        {"instruction": "Translate.", "input": "chat", "output": "cat", "system": "Be brief.",
         "history": [["Hi", "Hello!"], ["Who are you?", "A model."]], "category": "mt"},
    ])
    records, rep = load_records(src)
    assert rep.schema == "alpaca" and [r.schema for r in records] == ["alpaca", "alpaca"]
    assert records[0].turns == [("user", "Add 2 and 3."), ("assistant", "5")] and records[0].context == ""
    assert render(records[0]) == "Human: Add 2 and 3.\n\nAssistant:[ 5]<eos>"
    r = records[1]
    assert r.category == "mt" and r.context == "chat"
    assert r.turns == [("system", "Be brief."), ("user", "Hi"), ("assistant", "Hello!"), ("user", "Who are you?"),
                       ("assistant", "A model."), ("user", "Translate."), ("assistant", "cat")]
    # the input goes with the last instruction, not the first history turn
    assert render(r) == ("Be brief.\n\nHuman: Hi\n\nAssistant:[ Hello!]<eos>\n\nHuman: Who are you?\n\nAssistant:"
                         "[ A model.]<eos>\n\nHuman: Translate.\n\nchat\n\nAssistant:[ cat]<eos>")
    assert T.prompt(r).endswith("Human: Translate.\n\nchat\n\nAssistant:")


def test_dolly_still_dolly_and_schema_forcing(tmp_path):
    src = write_jsonl(tmp_path / "d.jsonl", [{"instruction": "q", "context": "c", "response": "a", "output": "x"}])
    assert load_records(src)[1].schema == "dolly"
    rec = load_records(src, schema="alpaca")[0][0]
    assert rec.turns == [("user", "q"), ("assistant", "x")] and rec.context == ""


ALPACA_BAD = {
    "missing_output": ({"instruction": "q"}, "output", "missing"),
    "empty_output": ({"instruction": "q", "output": "  "}, "output", "empty"),
    "history_not_list": ({"instruction": "q", "output": "a", "history": "x"}, "history", "expected an array"),
    "history_triple": ({"instruction": "q", "output": "a", "history": [["a", "b", "c"]]}, "history[0]",
                       "expected an [instruction, output] pair"),
    "history_empty_answer": ({"instruction": "q", "output": "a", "history": [["a", ""]]}, "history[0][1]",
                             "empty output"),
    "input_number": ({"instruction": "q", "output": "a", "input": 3}, "input", "expected a string, got integer"),
}


@pytest.mark.parametrize("name", ALPACA_BAD)
def test_alpaca_bad_input(tmp_path, name):
    bad, field, problem = ALPACA_BAD[name]
    src = write_jsonl(tmp_path / "a.jsonl", [{"instruction": "q", "output": "a"}, bad])
    with pytest.raises(DataError) as e:
        load_records(src, schema="alpaca")
    assert str(e.value).startswith(f"{src}:2: {field}: {problem}")
    records, rep = load_records(src, schema="alpaca", skip_bad=True)
    assert len(records) == 1 and rep.records_read == 2 and [s for s, _ in rep.skipped] == [f"{src}:2"]
    assert f"skipped 1 bad record(s):\n  {src}:2: {field}: {problem}" in rep.summary()


def test_sharegpt_roles_variants_and_system(tmp_path):
    src = write_jsonl(tmp_path / "s.jsonl", [
        {"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"},
                           {"from": "Human", "value": "Sing"}, {"from": "ChatGPT", "value": "La"}]},
        {"system": "Sys", "conversations": [{"from": "user", "value": "q"}, {"from": "bard", "value": "a"}]},
        {"conversations": [{"role": "system", "content": "S"}, {"role": "user", "content": "q"},
                           {"role": "assistant", "content": "a"}], "id": 7},
    ])
    records, rep = load_records(src)
    assert rep.schema == "sharegpt" and [r.id for r in records] == ["0", "1", "7"]
    assert records[0].turns == [("user", "Hi"), ("assistant", "Hello"), ("user", "Sing"), ("assistant", "La")]
    assert records[1].turns == [("system", "Sys"), ("user", "q"), ("assistant", "a")]
    assert records[2].turns == [("system", "S"), ("user", "q"), ("assistant", "a")]
    assert render(records[0]) == "Human: Hi\n\nAssistant:[ Hello]<eos>\n\nHuman: Sing\n\nAssistant:[ La]<eos>"


SHAREGPT_BAD = {
    "unknown_role": ([{"from": "human", "value": "q"}, {"from": "tool", "value": "x"}], "conversations[1].from",
                     "unknown role 'tool'"),
    "empty_gpt": ([{"from": "human", "value": "q"}, {"from": "gpt", "value": ""}], "conversations[1].value",
                  "empty assistant message"),
    "no_gpt": ([{"from": "human", "value": "q"}], "conversations", "no assistant message"),
    "late_system": ([{"from": "human", "value": "q"}, {"from": "system", "value": "s"}, {"from": "gpt", "value": "a"}],
                    "conversations", "a system message must come first"),
    "not_a_list": ({"from": "human"}, "conversations", "expected an array of messages, got object"),
    "value_missing": ([{"from": "human"}, {"from": "gpt", "value": "a"}], "conversations[0].value", "missing"),
}


@pytest.mark.parametrize("name", SHAREGPT_BAD)
def test_sharegpt_bad_input(tmp_path, name):
    convs, field, problem = SHAREGPT_BAD[name]
    good = {"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]}
    src = write_jsonl(tmp_path / "s.jsonl", [good, good, {"conversations": convs}])
    with pytest.raises(DataError) as e:
        load_records(src)
    assert str(e.value).startswith(f"{src}:3: {field}: {problem}")
    records, rep = load_records(src, skip_bad=True)
    assert len(records) == 2 and rep.skipped[0][0] == f"{src}:3"


def test_trl_conversational_prompt_completion(tmp_path):
    src = write_jsonl(tmp_path / "t.jsonl", [
        {"prompt": [{"role": "user", "content": "What color is the sky?"}],
         "completion": [{"role": "assistant", "content": "Blue."}]},
        {"prompt": [{"role": "system", "content": "S"}, {"role": "user", "content": "a"},
                    {"role": "assistant", "content": "b"}, {"role": "user", "content": "c"}],
         "completion": [{"role": "assistant", "content": "d"}]},
        {"prompt": "plain", "completion": " text"},
    ])
    records, rep = load_records(src)
    assert rep.schema == "prompt_completion"
    assert records[0].turns == [("user", "What color is the sky?"), ("assistant", "Blue.")]
    assert records[1].turns == [("system", "S"), ("user", "a"), ("assistant", "b"), ("user", "c"), ("assistant", "d")]
    assert records[2].turns == [("user", "plain"), ("assistant", " text")]
    # messages (TRL's other conversational form) is the chat schema
    src2 = write_jsonl(tmp_path / "m.jsonl", [{"messages": [{"role": "user", "content": "q"},
                                                            {"role": "assistant", "content": "a"}]}])
    assert load_records(src2)[1].schema == "chat"


TRL_BAD = {
    "mixed": ({"prompt": "q", "completion": [{"role": "assistant", "content": "a"}]}, "prompt",
              "a string, but the other of prompt/completion is a message list"),
    "user_in_completion": ({"prompt": [{"role": "user", "content": "q"}],
                            "completion": [{"role": "user", "content": "a"}]}, "completion[0].role",
                           "'user': a completion holds assistant messages only"),
    "bad_role": ({"prompt": [{"role": "human", "content": "q"}],
                  "completion": [{"role": "assistant", "content": "a"}]}, "prompt[0].role", "unknown role 'human'"),
    "empty_completion": ({"prompt": [{"role": "user", "content": "q"}], "completion": []}, "completion", "empty"),
}


@pytest.mark.parametrize("name", TRL_BAD)
def test_trl_bad_input(tmp_path, name):
    bad, field, problem = TRL_BAD[name]
    src = write_jsonl(tmp_path / "t.jsonl", [bad])
    with pytest.raises(DataError) as e:
        load_records(src, schema="prompt_completion")
    assert str(e.value).startswith(f"{src}:1: {field}: {problem}")


def test_fields_mapping_renames_and_errors_name_the_column(tmp_path):
    src = write_jsonl(tmp_path / "f.jsonl", [
        {"question": "q1", "answer": "a1", "task": "math", "response": "ignored"},
        {"question": "q2", "answer": "", "task": "math"},
        {"question": "q3", "task": "qa"},
    ])
    with pytest.raises(DataError) as e:
        load_records(src, fields="instruction=question,response=answer,category=task")
    assert str(e.value) == f"{src}:2: answer (read as response): empty"
    records, rep = load_records(src, fields={"instruction": "question", "response": "answer", "category": "task"},
                                skip_bad=True)
    assert rep.schema == "dolly" and len(records) == 1
    assert records[0].turns == [("user", "q1"), ("assistant", "a1")] and records[0].category == "math"
    assert [m for _, m in rep.skipped] == [f"{src}:2: answer (read as response): empty",
                                           f"{src}:3: answer (read as response): missing"]
    # a mapping onto alpaca's keys makes it alpaca; nested fields keep their path
    src2 = write_jsonl(tmp_path / "g.jsonl", [{"dialog": [{"from": "human", "value": "q"}, {"from": "gpt"}]}])
    with pytest.raises(DataError) as e:
        load_records(src2, fields="conversations=dialog")
    assert str(e.value) == f"{src2}:1: dialog (read as conversations)[1].value: missing"


@pytest.mark.parametrize("spec,problem", [
    ("instruction", "expected TARGET=COLUMN"),
    ("question=instruction", "'question' is not a record key"),
    ("response=a,response=b", "response is mapped twice"),
])
def test_fields_bad_spec(tmp_path, spec, problem):
    src = write_jsonl(tmp_path / "f.jsonl", [{"instruction": "q", "response": "a"}])
    with pytest.raises(UserError, match=problem):
        load_records(src, fields=spec)


def test_unknown_schema_suggests_fields(tmp_path):
    src = write_jsonl(tmp_path / "u.jsonl", [{"question": "q", "answer": "a"}])
    with pytest.raises(DataError, match=r"u\.jsonl:1: record: unknown schema: keys \[answer, question\].*--fields"):
        load_records(src)


def test_json_array_of_sharegpt_records(tmp_path):
    arr = tmp_path / "s.json"
    arr.write_text(json.dumps([{"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]},
                               {"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": 5}]}],
                              indent=1))
    with pytest.raises(DataError, match=r"s\.json:\d+: conversations\[1\]\.value: expected a string, got integer"):
        load_records(arr)


def test_content_parts_are_joined_text(tmp_path):
    # OpenAI / HF content parts: an array of {type: text, text}; every schema with message lists reads them
    parts = [{"type": "text", "text": "Name a "}, {"type": "text", "text": "colour."}]
    src = write_jsonl(tmp_path / "p.jsonl", [
        {"messages": [{"role": "user", "content": parts}, {"role": "assistant", "content": [{"type": "text",
                                                                                              "text": "Red."}]}]}])
    (rec,), _ = load_records(src)
    assert rec.turns == [("user", "Name a colour."), ("assistant", "Red.")]
    src = write_jsonl(tmp_path / "q.jsonl", [{"prompt": [{"role": "user", "content": parts}],
                                              "completion": [{"role": "assistant", "content": "Red."}]}])
    (rec,), _ = load_records(src)
    assert rec.turns == [("user", "Name a colour."), ("assistant", "Red.")]
    image = [{"type": "image"}, {"type": "text", "text": "What is this?"}]
    src = write_jsonl(tmp_path / "i.jsonl", [{"messages": [{"role": "user", "content": image},
                                                           {"role": "assistant", "content": "A cat."}]}])
    with pytest.raises(DataError) as e:
        load_records(src)
    assert str(e.value) == (f"{src}:1: messages[0].content: expected a string, got array (an array is read when "
                            "every part is {type: text, text: STRING})")


def test_turn_weights_that_would_be_ignored_are_errors(tmp_path):
    # SlimOrca-style weights that say what is done anyway load; a weight asking for something else is an error
    ok = {"conversations": [{"from": "system", "value": "s", "weight": None}, {"from": "human", "value": "q",
                            "weight": 0.0}, {"from": "gpt", "value": "a", "weight": 1.0}]}
    off = {"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a", "weight": 0}]}
    src = write_jsonl(tmp_path / "w.jsonl", [ok, off])
    records, rep = load_records(src, skip_bad=True)
    assert [r.turns for r in records] == [[("system", "s"), ("user", "q"), ("assistant", "a")]]
    assert rep.skipped == [(f"{src}:2", f"{src}:2: conversations[1].weight: 0 on an assistant turn: per-turn "
                            "weights are not read (every assistant turn is trained and scored, weight 1; no other "
                            "turn is, weight 0); drop the turn or the weight")]
    src = write_jsonl(tmp_path / "m.jsonl", [{"messages": [{"role": "user", "content": "q", "weight": 1},
                                                           {"role": "assistant", "content": "a"}]}])
    with pytest.raises(DataError, match=r"m\.jsonl:1: messages\[0\]\.weight: 1 on a user turn"):
        load_records(src)
