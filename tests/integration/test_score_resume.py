"""`mbc-jax score` streams (issue 31): rows go to OUT.partial a chunk at a time, a kill -9 loses at most the chunk in
flight, a rerun of the same command resumes and ends byte-identical to an uninterrupted run; a rerun with other
settings is one line naming what differs."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np

from conftest import FIXTURES, REPO


def _data(path, n=300):
    rng = np.random.default_rng(0)
    lines = []
    for i in range(n):
        ids = rng.integers(1, 100, size=int(rng.integers(4, 60))).tolist()
        lines.append(json.dumps({"input_ids": ids, "prompt_length": len(ids) // 2, "id": f"r{i}",
                                 "category": "ab"[i % 2]}))
    lines[7] = '{"input_ids": [1, 2,'  # a bad line: skipped and listed with --skip-bad
    path.write_text("\n".join(lines) + "\n")


def _score(data, out, *extra, kill_after=None):
    env = dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS="cpu", MBC_JAX_PROGRESS_SECONDS="0")
    env.pop("MBC_JAX_TEST_KILL_AFTER_CHUNKS", None)
    if kill_after is not None:
        env["MBC_JAX_TEST_KILL_AFTER_CHUNKS"] = str(kill_after)
    cmd = [sys.executable, "-m", "mbc_jax", "score", "--model", str(FIXTURES / "gpt_neo_tiny"), "--data", str(data),
           "--out", str(out), "--chunk-records", "40", "--max-length", "48", "--overflow", "drop", "--skip-bad",
           "--tokens-per-batch", "96", *extra]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)


def test_a_killed_score_resumes_to_the_bytes_of_an_uninterrupted_run(tmp_path, shared_dir):
    data = tmp_path / "d.jsonl"
    _data(data)
    whole = tmp_path / "whole.jsonl"
    done = _score(data, whole)
    assert done.returncode == 0, done.stderr
    rows = [json.loads(x) for x in whole.read_text().splitlines()]
    skipped = [json.loads(x) for x in (tmp_path / "whole.jsonl.skipped.jsonl").read_text().splitlines()]
    dropped = [s for s in skipped if "dropped" in s["skipped"]]
    assert len(rows) + len(skipped) == 300 and dropped and any(s.get("source", "").endswith(":8") for s in skipped)
    assert [r["index"] for r in rows] == sorted(r["index"] for r in rows)  # input order

    out = tmp_path / "cut.jsonl"
    killed = _score(data, out, kill_after=3)
    assert killed.returncode == -9, killed.stderr
    partial = tmp_path / "cut.jsonl.partial"
    assert not out.exists() and partial.is_file()
    kept = partial.read_text().splitlines()
    assert 0 < len(kept) < len(rows) and kept == whole.read_text().splitlines()[:len(kept)]
    with open(partial, "ab") as f:  # a chunk half written when the process died is cut away on resume
        f.write(b'{"index": 999, "half a ro')

    other = _score(data, out, "--min-k-percent", "30")
    assert other.returncode == 2 and "min_k_percent: 20.0 -> 30.0" in other.stderr
    assert len(other.stderr.strip().splitlines()) == 1 and partial.is_file()

    resumed = _score(data, out)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming after 3 chunks" in resumed.stderr
    assert out.read_bytes() == whole.read_bytes()
    assert (tmp_path / "cut.jsonl.skipped.jsonl").read_bytes() == (tmp_path / "whole.jsonl.skipped.jsonl").read_bytes()
    assert not partial.exists() and not (tmp_path / "cut.jsonl.partial.json").exists()
    table = lambda p: p.stdout[:p.stdout.index("scored ")]  # noqa: E731  (the summary line's seconds differ)
    assert table(resumed) == table(done)
    meta = json.loads((tmp_path / "cut.meta.json").read_text())
    assert meta["scored"] == len(rows) and meta["not_scored"] == len(skipped)
