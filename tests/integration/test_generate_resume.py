"""`mbc-jax generate` streams (issue 31): answers go to OUT.partial a chunk at a time, a kill -9 loses at most the
chunk in flight, a rerun of the same command resumes and ends byte-identical to an uninterrupted run (nucleus
sampling: each record's random stream is keyed by its index in the whole input, not in its chunk); a rerun with
other settings is one line naming what differs."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO, _write

TIMING = ("seconds", "tokens_per_second")


def _args(model, data, *extra):
    return ["generate", "--model", str(model), "--data", str(data), "--out", "a.jsonl", "--max-new-tokens", "4",
            "--top-p", "0.9", "--temperature", "0.7", "--seed", "5", "--batch-size", "8", "--chunk-records", "16",
            *extra]


def _generate(cwd, args, kill_after=None):
    env = dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS="cpu", MBC_JAX_PROGRESS_SECONDS="0")
    env.pop("MBC_JAX_TEST_KILL_AFTER_CHUNKS", None)
    if kill_after is not None:
        env["MBC_JAX_TEST_KILL_AFTER_CHUNKS"] = str(kill_after)
    cwd.mkdir(exist_ok=True)
    return subprocess.run([sys.executable, "-m", "mbc_jax", *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=600)


def _meta(folder):
    meta = json.loads((folder / "a.meta.json").read_text())
    return {**meta, "summary": {k: v for k, v in meta["summary"].items() if k not in TIMING}}


def test_a_killed_generate_resumes_to_the_bytes_of_an_uninterrupted_run(tmp_path, tiny_neo_dir, capsys,
                                                                          monkeypatch):
    from mbc_jax.cli import main
    from mbc_jax.generate import bucket_length

    rng = np.random.default_rng(0)
    words = "the a model answer question river number seven what why how long".split()
    rows = [{"id": f"r{i}", "category": "ab"[i % 2], "response": "ok.",
             "instruction": " ".join(rng.choice(words, size=int(rng.integers(1, 16))))} for i in range(50)]
    data = _write(tmp_path / "data.jsonl", rows)
    args = _args(tiny_neo_dir, data)

    whole = _generate(tmp_path / "whole", args)
    assert whole.returncode == 0, whole.stderr
    lines = (tmp_path / "whole" / "a.jsonl").read_text().splitlines()
    assert [json.loads(x)["index"] for x in lines] == list(range(50))
    assert len({bucket_length(json.loads(x)["prompt_tokens"]) for x in lines}) >= 2  # buckets differ within a chunk

    killed = _generate(tmp_path / "cut", args, kill_after=2)  # chunks of 16: 16, 16, 16, 2
    assert killed.returncode == -9, killed.stderr
    partial = tmp_path / "cut" / "a.jsonl.partial"
    assert not (tmp_path / "cut" / "a.jsonl").exists() and partial.read_text().splitlines() == lines[:32]
    with open(partial, "ab") as f:  # a chunk half written when the process died is cut away on resume
        f.write(b'{"index": 32, "half a ro')

    monkeypatch.chdir(tmp_path / "cut")  # the other setting: one line naming it, the partial file kept
    assert main([*args, "--temperature", "0.8"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "sampling.temperature: 0.7 -> 0.8" in err[0] and partial.is_file()

    resumed = _generate(tmp_path / "cut", args)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming after 2 chunks (32 answers" in resumed.stderr
    assert (tmp_path / "cut" / "a.jsonl").read_bytes() == (tmp_path / "whole" / "a.jsonl").read_bytes()
    assert _meta(tmp_path / "cut") == _meta(tmp_path / "whole")
    assert not partial.exists() and not (tmp_path / "cut" / "a.jsonl.partial.json").exists()
    summary = _meta(tmp_path / "whole")["summary"]
    answers = [json.loads(x) for x in lines]
    assert summary["records"] == 50 and summary["tokens"] == sum(a["num_tokens"] for a in answers)
    assert summary["mean_entropy"] == pytest.approx(np.mean([a["entropy"] for a in answers]), rel=1e-12)

    # one chunk (the default size): other prompt buckets and batches, the same samples per record
    monkeypatch.chdir(tmp_path / "whole")
    assert main([*args[:-2], "--out", "one.jsonl"]) == 0
    one = [json.loads(x) for x in (tmp_path / "whole" / "one.jsonl").read_text().splitlines()]
    assert [a["output_ids"] for a in one] == [a["output_ids"] for a in answers]
    assert [a["entropy"] for a in one] == pytest.approx([a["entropy"] for a in answers], rel=1e-5)
