"""`mbc-jax score`: the HF fixture metrics through the CLI, Dolly rows through the real tokenizer, and
bad input in one line."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from conftest import FIXTURE_MODELS, FIXTURES, REPO, TINY, assert_matches_reference, fixture_examples
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


def test_cli_score_writes_provenance_and_removes_its_stale_skipped_list(tmp_path, shared_dir, capsys):
    """Issue 30: score records what made its output, and a clean rerun leaves no stale OUT.skipped.jsonl."""
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"input_ids": [1, 2, 3]}\n{"input_ids": [1, 2,\n')
    out = tmp_path / "scores.jsonl"
    model = str(FIXTURES / "gpt_neo_tiny")
    assert cli(["score", "--model", model, "--data", str(bad), "--out", str(out), "--skip-bad"]) == 0
    assert (tmp_path / "scores.jsonl.skipped.jsonl").is_file()
    meta = json.loads((tmp_path / "scores.meta.json").read_text())
    assert (meta["model"], meta["data"], meta["scored"], meta["not_scored"]) == (model, str(bad), 1, 1)
    assert meta["max_length"] == 128 and meta["overflow"] == "truncate" and "mbc_jax" in meta  # the model's 128
    good = tmp_path / "good.jsonl"
    good.write_text('{"input_ids": [1, 2, 3]}\n')
    assert cli(["score", "--model", model, "--data", str(good), "--out", str(out)]) == 0
    assert not (tmp_path / "scores.jsonl.skipped.jsonl").exists()
    assert json.loads((tmp_path / "scores.meta.json").read_text())["not_scored"] == 0


@pytest.mark.parametrize("where", ["parent_is_a_file", "a_folder", "url_without_package"])
def test_cli_score_checks_its_output_before_any_work(tmp_path, shared_dir, capsys, where):
    """Issue 30: an --out that cannot be written is one line, before the model loads or a record is scored."""
    data = tmp_path / "d.jsonl"
    data.write_text('{"input_ids": [1, 2, 3]}\n')
    (tmp_path / "file").write_text("x")
    out = {"parent_is_a_file": str(tmp_path / "file" / "o.jsonl"), "a_folder": str(tmp_path),
           "url_without_package": "nosuchfs-scheme://bucket/o.jsonl"}[where]
    code = cli(["score", "--model", str(FIXTURES / "gpt_neo_tiny"), "--data", str(data), "--out", out])
    captured = capsys.readouterr()
    assert code == 2 and "Traceback" not in captured.err and len(captured.err.strip().splitlines()) == 1
    assert "--out" in captured.err or "nosuchfs-scheme" in captured.err
    assert "loaded" not in captured.err  # nothing was loaded before the check


def test_a_clean_score_run_prints_no_python_warning(tmp_path, shared_dir):
    """Issue 30: warnings a user cannot act on are filtered at the CLI boundary (all warnings shown: -W default)."""
    data = tmp_path / "d.jsonl"
    data.write_text('{"input_ids": [1, 2, 3]}\n{"input_ids": [4, 5, 6, 7]}\n')
    env = dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS="cpu")
    out = subprocess.run([sys.executable, "-W", "default", "-m", "mbc_jax", "score", "--model",
                          str(FIXTURES / "gpt_neo_tiny"), "--data", str(data), "--out", str(tmp_path / "o.jsonl")],
                         env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "Warning" not in out.stderr and "PyTorch was not found" not in out.stderr, out.stderr


def test_cli_membership_columns_and_reference_calibration(tmp_path, shared_dir, capsys):
    """min_k / min_k_pp (oracle-checked in unit/test_scoring.py) come through; `--reference` adds the reference
    model's mean NLL and mean_nll minus it, equal to scoring each model alone; `--no-membership` empties them."""
    examples, ref = fixture_examples("gpt_neo_tiny")
    data = tmp_path / "records.jsonl"
    data.write_text("".join(json.dumps({"input_ids": e.input_ids.tolist(), "prompt_length": int(ref["prompt_lens"][i])})
                            + "\n" for i, e in enumerate(examples)))

    def score(model, *extra):
        out = tmp_path / f"{model}{len(extra)}.jsonl"
        assert cli(["score", "--model", str(FIXTURES / model), "--data", str(data), "--out", str(out), *extra]) == 0
        return [json.loads(line) for line in out.read_text().splitlines()]

    alone, other = score("gpt_neo_tiny"), score("llama_gqa_tiny", "--no-membership")
    calibrated = score("gpt_neo_tiny", "--reference", str(FIXTURES / "llama_gqa_tiny"), "--min-k-percent", "50")
    for a, o, c in zip(alone, other, calibrated):
        assert a["min_k"] is not None and a["min_k_pp"] is not None and a["min_k"] <= -a["mean_nll"] + 1e-6
        assert c["min_k"] >= a["min_k"] - 1e-6  # the lowest 50%'s mean is at least the lowest 20%'s
        assert a["zlib_ratio"] is None  # the fixture has no tokenizer
        assert o["min_k"] is None and o["min_k_pp"] is None
        for prefix in ("", "response_"):
            assert c[f"{prefix}reference_mean_nll"] == pytest.approx(o[f"{prefix}mean_nll"], rel=1e-6)
            assert c[f"{prefix}calibrated_nll"] == pytest.approx(a[f"{prefix}mean_nll"] - o[f"{prefix}mean_nll"],
                                                                 rel=1e-5, abs=1e-6)
    meta = json.loads((tmp_path / "gpt_neo_tiny4.meta.json").read_text())
    assert meta["reference"] == str(FIXTURES / "llama_gqa_tiny") and meta["min_k_percent"] == 50
    assert cli(["score", "--model", str(FIXTURES / "gpt_neo_tiny"), "--data", str(data), "--out",
                str(tmp_path / "x.jsonl"), "--min-k-percent", "0"]) != 0
    assert "--min-k-percent 0" in capsys.readouterr().err
