"""`mbc-jax score`: the HF fixture metrics through the CLI, Dolly rows through the real tokenizer, and
bad input in one line."""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest

from conftest import FIXTURE_MODELS, FIXTURES, TINY, assert_matches_reference, fixture_examples
from mbc_jax.cli import main as cli
from mbc_jax.models import init_model
from mbc_jax.sharding import make_mesh


@pytest.mark.parametrize("name", FIXTURE_MODELS)
def test_cli_reproduces_fixture_metrics(name, tmp_path, shared_dir, capsys):
    examples, ref = fixture_examples(name)
    data = tmp_path / "records.jsonl"
    data.write_text("".join(json.dumps({"input_ids": e.input_ids.tolist(), "prompt_length": int(ref["prompt_lens"][i]),
                                        "id": f"rec-{i}", "category": "even" if i % 2 == 0 else "odd"}) + "\n"
                            for i, e in enumerate(examples)))
    out = tmp_path / "scores.jsonl"
    assert cli(["score", "--model", str(FIXTURES / name), "--data", str(data), "--out", str(out)]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["index"] for r in rows] == list(range(len(examples)))
    assert [r["id"] for r in rows] == [f"rec-{i}" for i in range(len(examples))]
    assert set(rows[0]) >= {"index", "id", "category", "tokens", "response_tokens", "perplexity",
                            "response_perplexity", "exact_match", "response_exact_match", "entropy"}
    assert_matches_reference(lambda k: np.asarray([r[k] for r in rows]), ref)
    printed = capsys.readouterr().out
    assert "even" in printed and "odd" in printed and "ALL" in printed


def test_real_tokenizer_dolly_records(tmp_path, shared_dir, capsys):
    """Dolly rows through the real GPT-Neo tokenizer and a random model of the real vocabulary."""
    from transformers import AutoTokenizer

    from mbc_jax.models import export_model

    cfg = dict(TINY, vocab_size=50257, max_position_embeddings=256)
    model = init_model(cfg, mesh=make_mesh("1,1,1", jax.devices()[:1]), seed=0)
    model.tokenizer = AutoTokenizer.from_pretrained(str(shared_dir / "tokenizers" / "gpt-neo-125M"))
    export_model(model, tmp_path / "model")
    lines = (shared_dir / "data" / "dolly-15k" / "databricks-dolly-15k.jsonl").open().readlines()[:24]
    (tmp_path / "dolly.jsonl").write_text("".join(lines))
    out = tmp_path / "scores.jsonl"
    assert cli(["score", "--model", str(tmp_path / "model"), "--data", str(tmp_path / "dolly.jsonl"),
                "--out", str(out), "--max-length", "128"]) == 0
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(rows) == 24 and [r["category"] for r in rows] == [json.loads(x)["category"] for x in lines]
    for r in rows:
        assert 0 <= r["response_tokens"] < r["tokens"] <= 127
        assert 0 <= r["exact_match"] <= 1 and r["perplexity"] > 1
    # records whose response was truncated away have undefined (null) response metrics, and are reported
    no_response = [r["id"] for r in rows if r["response_tokens"] == 0]
    assert no_response == ["20", "21", "22", "23"]
    assert all(r["response_exact_match"] is None for r in rows if r["response_tokens"] == 0)
    # the template appends EOS (50256) after each response: the no-EOS columns leave exactly that target out,
    # except in the records truncated to 128 tokens (127 targets), whose EOS was cut away
    truncated = [r["id"] for r in rows if r["tokens"] == 127]
    assert truncated == ["3", "7", "18", "20", "21", "22", "23"]
    assert [r["response_tokens"] - r["response_tokens_no_eos"] for r in rows] == [
        0 if r["id"] in truncated else 1 for r in rows]
    assert all((r["response_exact_match_no_eos"] is None) == (r["response_tokens_no_eos"] == 0) for r in rows)
    assert "no response token left" in capsys.readouterr().err
    # a random model of vocabulary V is close to uniform: perplexity near V, entropy near log V
    assert np.median([r["perplexity"] for r in rows]) == pytest.approx(50257, rel=0.5)
    assert np.mean([r["entropy"] for r in rows]) == pytest.approx(np.log(50257), rel=0.05)


def test_cli_bad_input_is_one_line(tmp_path, shared_dir, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"input_ids": [1, 2, 3]}\n{"input_ids": [1, 2,\n')
    code = cli(["score", "--model", str(FIXTURES / "gpt_neo_tiny"), "--data", str(bad), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2
    assert f"{bad}:2:" in err and "Traceback" not in err
    assert not (tmp_path / "o").exists()
    # with --skip-bad the good record is scored and the bad one counted and listed
    code = cli(["score", "--model", str(FIXTURES / "gpt_neo_tiny"), "--data", str(bad), "--out", str(tmp_path / "o"),
                "--skip-bad"])
    assert code == 0
    assert len((tmp_path / "o").read_text().splitlines()) == 1
    skipped = [json.loads(x) for x in (tmp_path / "o.skipped.jsonl").read_text().splitlines()]
    assert len(skipped) == 1 and skipped[0]["source"].endswith(":2")


def test_cli_text_records_need_a_tokenizer(tmp_path, capsys, shared_dir):
    data = tmp_path / "t.jsonl"
    data.write_text('{"text": "hello"}\n')
    assert cli(["score", "--model", str(FIXTURES / "gpt_neo_tiny"), "--data", str(data),
                "--out", str(tmp_path / "o")]) == 2
    assert "no tokenizer" in capsys.readouterr().err
