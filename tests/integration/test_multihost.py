"""Multi-process runs on one machine (CPU collectives, 2 and 4 local processes) equal one process.

Each case starts `python -m mbc_jax ...` N times with JAX_NUM_PROCESSES / JAX_PROCESS_ID /
JAX_COORDINATOR_ADDRESS (the variables `mbc_jax.distributed.initialize` reads) and 4 / N fake CPU
devices per process, so every run has the same 4-device mesh and therefore the same packing:
`score` writes the same JSONL, and `train` logs the same per-step losses, as one process with 4
devices. The 4-process training run resumes from the 2-process run's checkpoint (orbax restores
across a different number of hosts), and only process 0 writes the run folder's files.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import FIXTURES

DEVICES = 4  # global devices in every run
# the same in every run (single and multi-process): cheaper CPU compiles (about 40 % less time)
FAST_COMPILE = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"


def launch(n: int, args: list[str], log_dir: Path, timeout: float = 300) -> None:
    """Runs the CLI as `n` processes of one JAX job (one plain process for n == 1); all must exit 0."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JAX_", "XLA_"))}
    env.update(JAX_PLATFORMS="cpu", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
               XLA_FLAGS=f"--xla_force_host_platform_device_count={DEVICES // n} {FAST_COMPILE}")
    log_dir.mkdir(parents=True, exist_ok=True)
    procs, logs = [], []
    for i in range(n):
        if n > 1:
            env.update(JAX_NUM_PROCESSES=str(n), JAX_PROCESS_ID=str(i), JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}")
        logs.append(log_dir / f"process-{i}.log")
        procs.append(subprocess.Popen([sys.executable, "-m", "mbc_jax", *args], env=dict(env),
                                      stdout=open(logs[-1], "w"), stderr=subprocess.STDOUT))
    try:
        rcs = [p.wait(timeout=timeout) for p in procs]
    finally:
        for p in procs:  # only these processes, started here
            if p.poll() is None:
                p.kill()
                p.wait()
    if any(rcs):
        tails = "\n".join(f"--- process {i} (rc {rc}):\n" + "\n".join(logs[i].read_text().splitlines()[-25:])
                          for i, rc in enumerate(rcs) if rc)
        pytest.fail(f"{n}-process run of {' '.join(args[:1])} failed:\n{tails}")


# ----------------------------------------------------------------------------- score


@pytest.fixture(scope="module")
def score_setup(tmp_path_factory, shared_dir):
    tmp = tmp_path_factory.mktemp("score")
    rng = np.random.default_rng(0)
    with open(tmp / "records.jsonl", "w") as f:
        for i in range(37):  # not a multiple of anything: the last batch has empty rows
            n = int(rng.integers(4, 60))
            f.write(json.dumps({"input_ids": rng.integers(0, 500, n).tolist(), "prompt_length": int(rng.integers(1, n)),
                                "id": f"r{i}"}) + "\n")
    args = ["score", "--model", str(FIXTURES / "gpt_neo_tiny"), "--data", str(tmp / "records.jsonl"),
            "--max-length", "64", "--tokens-per-batch", "256"]
    launch(1, [*args, "--out", str(tmp / "single.jsonl")], tmp / "logs-1")
    return tmp, args, [json.loads(line) for line in (tmp / "single.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("n", [2, 4])
def test_score_equals_single_process(n, score_setup):
    tmp, args, single = score_setup
    out = tmp / f"multi-{n}.jsonl"
    launch(n, [*args, "--out", str(out)], tmp / f"logs-{n}")
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in rows] == [f"r{i}" for i in range(37)]  # every record once, in input order
    assert len(single) == 37
    for a, b in zip(rows, single):
        assert {k: v for k, v in a.items() if not isinstance(v, float)} == \
               {k: v for k, v in b.items() if not isinstance(v, float)}
        for k, v in a.items():
            if isinstance(v, float):
                assert v == pytest.approx(b[k], rel=1e-5, abs=1e-7), (a["id"], k)
    assert not list(tmp.glob("*.tmp"))


# ----------------------------------------------------------------------------- train


def losses(run: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
            if "loss" in r}


@pytest.mark.slow
def test_train_losses_equal_single_process_and_resume_across_hosts(tmp_path):
    from mbc_jax.demo import materialize

    demo = materialize(tmp_path / "demo", num_records=32, seed=0)
    # max_length 64: every drawn record fills its own row, so every step has 8 rows (one compile).
    # MBC re-scores all records (the multi-host scorer inside training) before steps 1 and 3.
    args = ["train", f"model={demo['model']}", f"data={demo['data']}", "steps=3", "batch_size=8", "max_length=64",
            "sampler=mbc", "mbc.k=2", "val_fraction=0", "track_memorization=false", "log_every=1",
            "checkpoint_every=1", "tracker=[jsonl,tensorboard]"]
    single, two, four = tmp_path / "single", tmp_path / "two", tmp_path / "four"
    launch(1, [*args, f"out={single}"], tmp_path / "logs-1")
    launch(2, [*args, f"out={two}"], tmp_path / "logs-2")
    expected = losses(single)
    assert sorted(expected) == [1, 2, 3]
    np.testing.assert_allclose([losses(two)[s] for s in (1, 2, 3)], [expected[s] for s in (1, 2, 3)], rtol=1e-5)

    # only process 0 wrote the run files: one TensorBoard event file, each metrics step once
    assert len(list((two / "tensorboard").glob("events.*"))) == 1
    assert [json.loads(line)["step"] for line in (two / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3]
    assert json.loads((two / "summary.json").read_text())["steps"] == 3

    # the 2-process run's checkpoint of step 1, resumed by 4 processes: steps 2 and 3 again
    shutil.copytree(two, four)
    for step in (2, 3):
        shutil.rmtree(four / "checkpoints" / str(step))
    launch(4, [*args, f"out={four}"], tmp_path / "logs-4")
    assert "from the checkpoint of step 1" in (tmp_path / "logs-4" / "process-0.log").read_text()
    resumed = losses(four)
    assert sorted(resumed) == [1, 2, 3]
    np.testing.assert_allclose([resumed[s] for s in (2, 3)], [expected[s] for s in (2, 3)], rtol=1e-5)
    assert sorted(int(p.name) for p in (four / "checkpoints").iterdir() if p.name.isdigit())[-1] == 3
