"""A run folder behind a URL (the tests' emulated bucket, tests/bucket_fs.py: atomic puts, no append, no
rename), killed with SIGKILL after a checkpoint and resumed from the URL, ends bitwise equal to an
uninterrupted local run: weights, metrics.jsonl lines, memorization snapshots, sampling.csv and param
snapshots. Small on purpose (12 steps, 32 records); tests/integration/test_resume.py covers kills at
other moments on local folders."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import bucket_fs
import jax
import numpy as np
import pytest

from conftest import TINY_RUN
from mbc_jax import paths

bucket_fs.register()

SMALL = [*TINY_RUN, "demo_records=32", "epochs=3", "checkpoint_every=4", "sampler=mbc", "mbc.k=3"]  # 12 steps


def _env(root: Path, cache: Path) -> dict:
    env = dict(os.environ)
    env.update(XLA_FLAGS="", JAX_PLATFORMS="cpu", MBC_JAX_CACHE=str(cache))  # one CPU device in the children
    env[bucket_fs.ROOT_ENV] = str(root)
    return env


def _metric_lines(text: str) -> list[dict]:
    timing = {"tokens_per_s", "mfu", "step_seconds", "score_seconds", "train_seconds", "loss_mean"}
    return [{k: v for k, v in json.loads(x).items() if k not in timing} for x in text.splitlines()]


@pytest.mark.slow
def test_url_run_folder_killed_and_resumed_equals_uninterrupted_local_run(tmp_path, monkeypatch):
    root, cache = tmp_path / "bucket", tmp_path / "cache"
    monkeypatch.setenv(bucket_fs.ROOT_ENV, str(root))
    monkeypatch.setenv("MBC_JAX_CACHE", str(cache))
    env = _env(root, cache)
    straight, url = tmp_path / "straight", "bucket://b/runs/mbc"
    subprocess.run(bucket_fs.cli("train", f"out={straight}", *SMALL), check=True, env=env, capture_output=True,
                   timeout=600)

    stored = root / "b" / "runs" / "mbc"  # where the bucket keeps the objects
    proc = subprocess.Popen(bucket_fs.cli("train", f"out={url}", *SMALL), env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 400
    while time.time() < deadline and proc.poll() is None:  # kill as soon as the step-4 checkpoint is complete
        if (stored / "checkpoints" / "4" / "_CHECKPOINT_METADATA").exists():
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the run ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (stored / "summary.json").exists()
    before = (stored / "metrics.jsonl").read_text()
    assert {r["step"] for r in _metric_lines(before)} >= {0, 2, 4}  # flushed before the step-4 checkpoint

    done = subprocess.run(bucket_fs.cli("train", f"out={url}", *SMALL), env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert re.search(rf"resuming {url} from the checkpoint of step (4|8)\n", done.stdout), done.stdout[-3000:]

    from mbc_jax.checkpoints import export_run
    from mbc_jax.run_folder import RunFolder

    a, b = RunFolder.open(straight), RunFolder.open(url)
    assert isinstance(b.path, paths.UrlPath)
    assert _metric_lines((straight / "metrics.jsonl").read_text()) == _metric_lines(b.path.joinpath("metrics.jsonl")
                                                                                    .read_text())
    assert b.memorization_steps() == a.memorization_steps() == [0, 4, 8, 12]
    for step in (0, 4, 8, 12):
        name = f"memorization/step_{step:08d}.csv"
        assert (straight / name).read_bytes() == (b.path / name).read_bytes(), name
    assert (straight / "sampling.csv").read_bytes() == (b.path / "sampling.csv").read_bytes()
    assert b.param_snapshot_steps() == a.param_snapshot_steps() == [0, 4, 8, 12]
    assert json.loads((b.path / "summary.json").read_text())["run"] == url

    from safetensors.numpy import load_file

    exported, step = export_run(url, f"{url}-export")  # read from the URL, written to a URL
    assert step == 12 and str(exported) == f"{url}-export"
    mine = load_file(str(paths.fetch(exported) / "model.safetensors"))
    theirs, _ = export_run(straight, tmp_path / "export-straight")
    theirs = load_file(str(theirs / "model.safetensors"))
    assert mine.keys() == theirs.keys()
    for k in mine:
        np.testing.assert_array_equal(mine[k], theirs[k], err_msg=k)  # bitwise
    import orbax.checkpoint as ocp

    managers = [ocp.CheckpointManager(paths.orbax_dir(r / "params"), item_handlers=ocp.StandardCheckpointHandler())
                for r in (straight, b.path)]
    for step in (0, 4, 8, 12):
        jax.tree_util.tree_map(np.testing.assert_array_equal, *(m.restore(step) for m in managers))
