"""`mbc-jax generate` end to end on a tiny random GPT-Neo with the real tokenizer: the answer lines,
`answer_records` giving the same lines, and bad settings."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import FIXTURES, N, _write, reference
from mbc_jax.generate import SamplingConfig
from mbc_jax.models import load_model


def test_cli_end_to_end(tmp_path, tiny_neo_dir, tokenizer, capsys):
    from mbc_jax.cli import main
    from mbc_jax.data import Template, load_records
    from mbc_jax.judge import match_answers, read_answers

    rows = [{"id": f"r{i}", "category": ["qa", "write"][i % 2], "instruction": f"Question number {i}?",
             "response": f"Answer {i}."} for i in range(3)]
    data = _write(tmp_path / "data.jsonl", rows)
    out = tmp_path / "a.jsonl"
    base = ["generate", "--model", str(tiny_neo_dir), "--data", str(data), "--max-new-tokens", "6", "--seed", "3"]
    assert main([*base, "--out", str(out)]) == 0
    err = capsys.readouterr()
    assert "tok/s" in err.out and "mean entropy" in err.out and "generate" in err.err

    lines = [json.loads(x) for x in out.read_text().splitlines()]
    records, _ = load_records(data)
    assert [x["id"] for x in lines] == ["r0", "r1", "r2"]
    for x, rec in zip(lines, records):
        assert x["index"] == rec.index and x["category"] == rec.category
        assert x["prompt"] == Template().prompt(rec) and x["reference"] == rec.turns[-1][1]
        assert x["instruction"] == rec.turns[0][1] and "Human:" not in x["instruction"]  # what the judge reads
        assert 1 <= x["num_tokens"] == len(x["output_ids"]) <= 6
        assert x["stopped"] in ("eos", "length") and (x["stopped"] == "eos") == (x["output_ids"][-1] == 50256)
        text_ids = x["output_ids"][:-1] if x["stopped"] == "eos" else x["output_ids"]
        assert x["output_text"] == tokenizer.decode(text_ids, skip_special_tokens=True,
                                                    clean_up_tokenization_spaces=False).strip()
        # a random model is close to uniform over 50257 tokens; the nucleus is narrower
        assert 10.0 < x["entropy"] <= np.log(50257) + 1e-4
        assert 0.0 < x["sampling_entropy"] < x["entropy"]
        assert x["prompt_tokens"] == len(tokenizer(x["prompt"])["input_ids"]) and not x["prompt_truncated"]
    meta = json.loads((tmp_path / "a.meta.json").read_text())
    assert meta["sampling"]["top_p"] == 0.9 and meta["summary"]["records"] == 3

    # the judge reads it; a rerun with the same seed is identical; --limit keeps each record's sample
    assert len(read_answers(out)) == 3
    again = tmp_path / "b.jsonl"
    assert main([*base, "--out", str(again)]) == 0
    assert len(match_answers(out, again).pairs) == 3
    assert again.read_text() == out.read_text()
    limited = tmp_path / "c.jsonl"
    assert main([*base, "--out", str(limited), "--limit", "2", "--greedy"]) == 0
    greedy = [json.loads(x) for x in limited.read_text().splitlines()]
    assert len(greedy) == 2 and all(x["sampling_entropy"] == 0.0 for x in greedy)


def test_answer_records_are_the_cli_lines(tmp_path, tiny_neo_dir, capsys):
    """`answer_records` (what `experiments/table1_entropy.py` calls) gives exactly the lines and the
    summary `mbc-jax generate` writes; its progress callback opens with (0, 0), then counts records
    and tokens after each batch."""
    from mbc_jax.cli import main
    from mbc_jax.data import load_records
    from mbc_jax.generate import answer_records

    rows = [{"id": f"r{i}", "instruction": f"Question number {i}?", "response": f"Answer {i}."} for i in range(5)]
    data = _write(tmp_path / "data.jsonl", rows)
    out = tmp_path / "a.jsonl"
    assert main(["generate", "--model", str(tiny_neo_dir), "--data", str(data), "--max-new-tokens", "6",
                 "--seed", "3", "--out", str(out)]) == 0
    capsys.readouterr()
    calls = []
    answers = answer_records(load_model(str(tiny_neo_dir)), load_records(data)[0], SamplingConfig(max_new_tokens=6),
                             seed=3, on_batch=lambda *a: calls.append(a))
    assert [json.loads(x) for x in out.read_text().splitlines()] == answers.rows
    meta = json.loads((tmp_path / "a.meta.json").read_text())
    assert meta["eos_token_id"] == answers.eos_token_id == 50256
    for key in ("records", "tokens", "mean_entropy", "mean_sampling_entropy", "stopped_eos", "mean_tokens",
                "prompts_truncated", "max_prompt_length"):
        assert meta["summary"][key] == answers.summary[key], key
    assert calls == [(0, 0), (5, answers.summary["tokens"])]


@pytest.mark.parametrize("name", ["gpt_neo_tiny", "gpt2_tiny", "pythia_tiny", "llama_gqa_tiny", "qwen2_tiny"])
def test_cli_greedy_reproduces_fixture(name, tmp_path, shared_dir, capsys):
    """`mbc-jax generate --greedy` on a token-id record (the fixture's prompt) writes HF PyTorch's
    greedy continuation. The fixture folder as it is: pre-tokenized records need no tokenizer files
    (EOS and pad come from config.json; the GPT-Neo tokenizer's ids would lie outside these 512-token
    vocabularies, which is an error naming the file)."""
    from mbc_jax.cli import main

    model_dir = FIXTURES / name
    ref = reference(name)
    data = _write(tmp_path / "data.jsonl", [{"id": "r0", "input_ids": ref["greedy_prompt"].tolist() + [5],
                                             "prompt_length": len(ref["greedy_prompt"])}])
    out = tmp_path / "a.jsonl"
    assert main(["generate", "--model", str(model_dir), "--data", str(data), "--out", str(out), "--greedy",
                 "--repetition-penalty", "1.0", "--ignore-eos", "--max-new-tokens", str(N)]) == 0
    capsys.readouterr()
    (line,) = [json.loads(x) for x in out.read_text().splitlines()]
    assert line["output_ids"] == ref["greedy_continuation"].tolist()


def test_cli_errors(tmp_path, tiny_neo_dir, capsys):
    from mbc_jax.cli import main

    data = _write(tmp_path / "data.jsonl", [{"instruction": "q", "response": "a"}])
    out = str(tmp_path / "o.jsonl")
    # the fixture checkpoint has no tokenizer files
    assert main(["generate", "--model", str(FIXTURES / "gpt_neo_tiny"), "--data", str(data), "--out", out]) == 2
    assert "no tokenizer" in capsys.readouterr().err
    args = ["generate", "--model", str(tiny_neo_dir), "--data", str(data), "--out", out]
    for extra, message in ((["--top-p", "0"], "top_p"), (["--temperature", "-1"], "temperature"),
                           (["--max-new-tokens", "64"], "positions"), (["--max-prompt-length", "60"], "positions"),
                           (["--batch-size", "0"], "batch-size")):
        assert main([*args, *extra]) == 2
        assert message in capsys.readouterr().err


def test_pretokenized_records_need_no_tokenizer(tmp_path, capsys):
    """The fixture folder has no tokenizer files: token-id records still generate (plain greedy here, checked
    against argmax of the model's own logits step by step); output_text and prompt are null; EOS comes from
    config.json."""
    from mbc_jax.cli import main

    model_dir = FIXTURES / "gpt_neo_tiny"
    data = _write(tmp_path / "tok.jsonl", [{"input_ids": [5, 6, 7, 8, 9], "prompt_length": 3, "id": "a"},
                                          {"input_ids": [40, 41], "prompt_length": 2, "id": "b"}])
    out = tmp_path / "o.jsonl"
    assert main(["generate", "--model", str(model_dir), "--data", str(data), "--out", str(out), "--greedy",
                 "--repetition-penalty", "1", "--max-new-tokens", "4"]) == 0
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert [r["id"] for r in rows] == ["a", "b"]
    assert all(r["output_text"] is None and r["prompt"] is None for r in rows)
    assert all("reference" not in r for r in rows)  # no text to give without a tokenizer
    assert json.loads((tmp_path / "o.meta.json").read_text())["eos_token_id"] == 2  # config.json's
    model = load_model(str(model_dir), with_tokenizer=False)
    for prompt, row in (([5, 6, 7], rows[0]), ([40, 41], rows[1])):
        ids = list(prompt)
        for _ in range(row["num_tokens"]):
            ids.append(int(np.argmax(np.asarray(model.apply(np.array([ids]))[0, -1]))))
        assert row["output_ids"] == ids[len(prompt):]
        assert row["stopped"] == ("eos" if ids[-1] == 2 else "length")


def test_default_new_tokens_fit_the_model_and_say_so(tmp_path, tiny_neo_dir, capsys):
    """64 positions: the paper's 256 new tokens cannot fit; the default becomes 32 and the output says so."""
    from mbc_jax.cli import main
    from mbc_jax.commands.generate import default_new_tokens

    assert default_new_tokens(2048) == (256, None) and default_new_tokens(512) == (256, None)
    assert default_new_tokens(256)[0] == 128 and default_new_tokens(64)[0] == 32
    data = _write(tmp_path / "data.jsonl", [{"instruction": "q", "response": "a"}])
    out = tmp_path / "o.jsonl"
    assert main(["generate", "--model", str(tiny_neo_dir), "--data", str(data), "--out", str(out),
                 "--ignore-eos"]) == 0
    captured = capsys.readouterr()
    assert "the default 256 is capped at 32" in captured.err and "capped by the model's positions" in captured.out
    meta = json.loads((tmp_path / "o.meta.json").read_text())
    assert meta["sampling"]["max_new_tokens"] == 32 and "capped at 32" in meta["max_new_tokens_note"]
    assert json.loads(out.read_text())["num_tokens"] == 32


def test_special_ids_outside_the_vocabulary_name_the_file(tmp_path, tiny_neo_dir, capsys):
    from mbc_jax.cli import main

    data = _write(tmp_path / "data.jsonl", [{"instruction": "q", "response": "a"}])
    template = tmp_path / "t.json"
    template.write_text('{"eos_token_id": 60000}')
    args = ["generate", "--model", str(tiny_neo_dir), "--data", str(data), "--out", str(tmp_path / "o.jsonl"),
            "--max-new-tokens", "4"]
    assert main([*args, "--template", str(template)]) == 2
    assert f"{template} (eos_token_id): eos_token_id 60000 is outside the model's vocabulary (ids 0..50256" \
        in capsys.readouterr().err
    # the token-id path without a tokenizer: config.json's pad_token_id out of range
    bad = tmp_path / "bad_model"
    bad.mkdir()
    for f in (FIXTURES / "gpt_neo_tiny").iterdir():
        if f.name != "reference.npz":
            (bad / f.name).write_bytes(f.read_bytes())
    cfg = json.loads((bad / "config.json").read_text())
    (bad / "config.json").write_text(json.dumps({**cfg, "pad_token_id": 512}))
    tok = _write(tmp_path / "tok.jsonl", [{"input_ids": [5, 6], "prompt_length": 1}])
    assert main(["generate", "--model", str(bad), "--data", str(tok), "--out", str(tmp_path / "p.jsonl")]) == 2
    assert f"{bad}/config.json: pad_token_id 512 is outside the model's vocabulary (ids 0..511" \
        in capsys.readouterr().err


def test_empty_answers_are_counted_and_the_output_checked_first(tmp_path, tiny_neo_dir, capsys):
    from mbc_jax.answers_file import write_answers
    from mbc_jax.cli import main

    rows = [{"id": f"r{i}", "instruction": f"Question number {i}?", "response": "a"} for i in range(4)]
    data = _write(tmp_path / "data.jsonl", rows)
    base = ["generate", "--model", str(tiny_neo_dir), "--data", str(data), "--greedy", "--max-new-tokens", "3"]
    first = tmp_path / "first.jsonl"
    assert main([*base, "--out", str(first)]) == 0
    assert "prompts cut to fit 0; empty answers 0;" in capsys.readouterr().out
    firsts = [json.loads(x)["output_ids"][0] for x in first.read_text().splitlines()]
    # make the token greedy decoding picks first for r0 the EOS: those answers stop before any text
    template = tmp_path / "t.json"
    template.write_text(json.dumps({"eos_token_id": firsts[0]}))
    out = tmp_path / "o.jsonl"
    assert main([*base, "--out", str(out), "--template", str(template)]) == 0
    captured = capsys.readouterr()
    n = firsts.count(firsts[0])
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert sum(x["output_text"] == "" for x in lines) == n >= 1
    assert json.loads((tmp_path / "o.meta.json").read_text())["summary"]["empty"] == n
    assert f"empty answers {n};" in captured.out
    assert f"warning: {n} of 4 answers are empty; `mbc-jax judge` refuses them unless --allow-empty" in captured.err

    # an --out under a file: one line, before the model loads
    blocker = tmp_path / "blocker"
    blocker.write_text("x")
    assert main([*base, "--out", str(blocker / "o.jsonl")]) == 2
    assert capsys.readouterr().err.strip() == f"error: --out {blocker / 'o.jsonl'}: {blocker} is a file, not a folder"

    # answers rewritten without settings take the old settings file away
    write_answers(out, lines[:1])
    assert not (tmp_path / "o.meta.json").exists()
