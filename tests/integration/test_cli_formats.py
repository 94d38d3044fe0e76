"""A new user's Alpaca file through `train`, `export`, `score` and `generate` with the demo model: the
response tokens each record scores, checked against the tokenizer directly, and --skip-bad listing."""

from __future__ import annotations

import json

import pytest

from mbc_jax.cli import main as cli


@pytest.mark.slow  # 106 s on 2 CPU cores shared with other jobs (2 train steps, export, score, generate)
def test_alpaca_file_train_score_generate(tmp_path, capsys):
    from transformers import AutoTokenizer

    rows = [{"instruction": f"Name the colour number {i}.", "input": "" if i % 3 else f"Colour list {i}",
             "output": f"Colour {i} is {'red green blue'.split()[i % 3]}."} for i in range(10)]
    rows[4]["history"] = [["Hello?", "Hi there."]]
    data = tmp_path / "alpaca.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows) + json.dumps({"instruction": "q", "output": ""}) + "\n")
    good = tmp_path / "good.jsonl"
    good.write_text("".join(json.dumps(r) + "\n" for r in rows))
    run = tmp_path / "run"
    assert cli(["train", "model=demo", "init=random", f"data={good}", f"out={run}", "sampler=uniform", "steps=2",
                "batch_size=4", "max_length=64", "val_fraction=0", "track_memorization=false", "log_every=1"]) == 0
    assert cli(["export", "--run", str(run), "--out", str(tmp_path / "model")]) == 0
    capsys.readouterr()

    out = tmp_path / "scores.jsonl"
    assert cli(["score", "--model", str(tmp_path / "model"), "--data", str(data), "--out", str(out),
                "--skip-bad"]) == 0
    err = capsys.readouterr().err
    assert "loaded 10 of 11 records (schema alpaca, jsonl); skipped 1 bad record(s)" in err
    assert f"{data}:11: output: empty" in err
    skipped = [json.loads(x) for x in (tmp_path / "scores.jsonl.skipped.jsonl").read_text().splitlines()]
    assert skipped == [{"source": f"{data}:11", "skipped": f"{data}:11: output: empty"}]
    scores = [json.loads(x) for x in out.read_text().splitlines()]
    tok = AutoTokenizer.from_pretrained(str(tmp_path / "model"))
    for r, s in zip(rows, scores):
        # the response segment " {output}" encoded alone, plus its EOS; the history's answer too for record 4
        want = len(tok(" " + r["output"], add_special_tokens=False)["input_ids"]) + 1
        if "history" in r:
            want += len(tok(" " + r["history"][0][1], add_special_tokens=False)["input_ids"]) + 1
        assert s["response_tokens"] == want, s
        assert s["perplexity"] > 1 and 0 <= s["exact_match"] <= 1

    # generate with every default on the demo's exported model (256 positions: 128 new tokens at most)
    answers = tmp_path / "answers.jsonl"
    assert cli(["generate", "--model", str(tmp_path / "model"), "--data", str(good), "--out", str(answers),
                "--limit", "2"]) == 0
    captured = capsys.readouterr()
    assert "the default 256 is capped at 128" in captured.err
    lines = [json.loads(x) for x in answers.read_text().splitlines()]
    assert len(lines) == 2 and all(1 <= x["num_tokens"] <= 128 and isinstance(x["output_text"], str) for x in lines)
    assert lines[0]["instruction"] == rows[0]["instruction"] + "\n\nContext:\nColour list 0"
