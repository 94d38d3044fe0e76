"""Resume and faults: kill -9 and resume equals an uninterrupted run (bitwise), a NaN loss stops
naming the step and its records, a run folder made with another config is refused, a full disk
keeps the last good checkpoint, and the run folder holds what docs/run_folder.md promises."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from conftest import TINY_RUN
from mbc_jax import UserError
from mbc_jax import config as config_lib


def _env() -> dict:
    env = dict(os.environ)
    env["XLA_FLAGS"] = ""  # one CPU device in the child processes
    env["JAX_PLATFORMS"] = "cpu"
    return env


def _train_cmd(out: Path, extra: list[str]) -> list[str]:
    return [sys.executable, "-m", "mbc_jax", "train", f"out={out}", *TINY_RUN, *extra]


def _final_tensors(run: Path, tmp: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    from mbc_jax.checkpoints import export_run

    out, _ = export_run(run, tmp / f"export-{run.name}")
    return load_file(str(out / "model.safetensors"))


def _metric_lines(run: Path) -> list[dict]:
    timing = {"tokens_per_s", "mfu", "step_seconds", "score_seconds", "train_seconds", "loss_mean"}
    return [{k: v for k, v in json.loads(x).items() if k not in timing}
            for x in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
@pytest.mark.parametrize("sampler", ["mbc"])
def test_kill_and_resume_equals_uninterrupted(tmp_path, sampler):
    extra = [f"sampler={sampler}", "mbc.k=5", "dropout=0.1"]  # dropout masks must replay too
    straight = tmp_path / "straight"
    subprocess.run(_train_cmd(straight, extra), check=True, env=_env(), capture_output=True, timeout=600)

    killed = tmp_path / "killed"
    kills = 0
    for wait_for in ("metrics", "checkpoint"):  # kill mid-step, then right as a checkpoint lands
        proc = subprocess.Popen(_train_cmd(killed, extra), env=_env(), stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        deadline = time.time() + 300
        start_ckpts = set(os.listdir(killed / "checkpoints")) if (killed / "checkpoints").exists() else set()
        while time.time() < deadline and proc.poll() is None:
            if wait_for == "metrics":
                m = killed / "metrics.jsonl"
                if m.exists() and sum(1 for x in m.read_text().splitlines() if '"loss"' in x) >= 2:
                    break
            elif (killed / "checkpoints").exists() and set(os.listdir(killed / "checkpoints")) - start_ckpts - {"tmp"}:
                break
            time.sleep(0.05)
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait()
    assert kills >= 1
    subprocess.run(_train_cmd(killed, extra), check=True, env=_env(), capture_output=True, timeout=600)

    a, b = _final_tensors(straight, tmp_path), _final_tensors(killed, tmp_path)
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)  # bitwise
    assert _metric_lines(straight) == _metric_lines(killed)
    for f in (straight / "memorization").glob("*.csv"):
        assert f.read_text() == (killed / "memorization" / f.name).read_text()
    assert (straight / "sampling.csv").read_text() == (killed / "sampling.csv").read_text()
    # summary.json counts the whole run once, however many legs it took (issue 30): tokens and refreshes equal
    # the uninterrupted run's; the legs and their wall-clock are listed
    whole, legs = (json.loads((r / "summary.json").read_text()) for r in (straight, killed))
    for key in ("tokens", "mbc_refreshes", "steps", "distinct_records_drawn"):
        assert legs[key] == whole[key], key
    assert len(whole["legs"]) == 1 and len(legs["legs"]) >= 2
    assert legs["wall_seconds"] == pytest.approx(sum(leg["wall_seconds"] for leg in legs["legs"]))
    assert legs["legs"][-1]["end_step"] == legs["steps"] and legs["legs"][0]["start_step"] == 0
    # rerunning a finished run trains nothing and leaves the totals as they were
    subprocess.run(_train_cmd(straight, extra), check=True, env=_env(), capture_output=True, timeout=600)
    again = json.loads((straight / "summary.json").read_text())
    assert (again["tokens"], again["legs"], again["wall_seconds"]) == (whole["tokens"], whole["legs"],
                                                                      whole["wall_seconds"])
    # the param snapshots: one per memorization snapshot, each bitwise the uninterrupted run's
    import orbax.checkpoint as ocp

    from mbc_jax.run_folder import RunFolder

    steps = RunFolder.open(straight).memorization_steps()
    assert RunFolder.open(killed).param_snapshot_steps() == RunFolder.open(straight).param_snapshot_steps() == steps
    a, b = (ocp.CheckpointManager(r / "params", item_handlers=ocp.StandardCheckpointHandler())
            for r in (straight, killed))
    for step in steps:
        jax.tree_util.tree_map(np.testing.assert_array_equal, a.restore(step), b.restore(step))


def test_nan_loss_stops_naming_step_and_records(tmp_path, monkeypatch):
    from mbc_jax import train as train_lib
    from mbc_jax.assemble import create_trainer

    real = train_lib.make_train_step

    def poisoned(*a, **k):
        step = real(*a, **k)

        def f(state, batch):
            state, m = step(state, batch)
            m["loss"] = jax.numpy.where(state["step"] >= 3, jax.numpy.nan, m["loss"])
            return state, m
        return f

    monkeypatch.setattr(train_lib, "make_train_step", poisoned)
    cfg = config_lib.load(None, [f"out={tmp_path / 'r'}", *TINY_RUN])
    run = create_trainer(cfg, log=lambda *a: None)
    with pytest.raises(UserError, match=r"step 2: the loss is nan; the batch held records (train-\d+, ){7}train-\d+"):
        run.train()


@pytest.fixture(scope="module")
def one_epoch_run(tmp_path_factory) -> tuple[Path, dict]:
    """One finished TINY_RUN epoch, trained once for the tests that only read it (or a copy of it)."""
    from mbc_jax.assemble import create_trainer

    run_dir = tmp_path_factory.mktemp("one_epoch") / "r"
    summary = create_trainer(config_lib.load(None, [f"out={run_dir}", *TINY_RUN, "epochs=1"]),
                             log=lambda *a: None).train()
    return run_dir, summary


def test_run_folder_with_different_config_is_refused(one_epoch_run, tmp_path):
    import shutil

    from mbc_jax.assemble import create_trainer

    shutil.copytree(one_epoch_run[0], tmp_path / "r")  # a finished run folder (`out` may change on resume)
    base = [f"out={tmp_path / 'r'}", *TINY_RUN, "epochs=1"]
    with pytest.raises(UserError, match=r"made with a different config \(learning_rate: 0.003 -> 0.001\)"):
        create_trainer(config_lib.load(None, [*base, "learning_rate=1e-3"]), log=lambda *a: None)
    # allowed with override; and a finished run re-run is a no-op resume
    create_trainer(config_lib.load(None, [*base, "learning_rate=1e-3"]), override=True, log=lambda *a: None)


def test_disk_full_during_save_keeps_last_good_checkpoint(tmp_path, monkeypatch):
    import orbax.checkpoint as ocp

    from mbc_jax.assemble import create_trainer

    args = [f"out={tmp_path / 'r'}", *TINY_RUN, "epochs=1", "sampler=uniform"]
    run = create_trainer(config_lib.load(None, args), log=lambda *a: None)
    real_save = ocp.CheckpointManager.save

    def full_disk(self, step, *a, **k):
        if step >= 4:
            raise OSError(28, "No space left on device")
        return real_save(self, step, *a, **k)

    monkeypatch.setattr(ocp.CheckpointManager, "save", full_disk)
    with pytest.raises(UserError, match=r"checkpoint of step 4 failed.*last good checkpoint is step 0"):
        run.train()
    monkeypatch.setattr(ocp.CheckpointManager, "save", real_save)
    summary = create_trainer(config_lib.load(None, args), log=lambda *a: None).train()
    assert summary["steps"] == 8 and summary["final"]["step"] == 8


def test_run_folder_contents(one_epoch_run):
    """The files docs/run_folder.md promises, read back independently with the csv module."""
    import csv

    run_dir, summary = one_epoch_run
    for name in ("config.yaml", "records.csv", "metrics.jsonl", "sampling.csv", "summary.json", "legs.json",
                 "model/config.json"):
        assert (run_dir / name).is_file(), name
    legs = json.loads((run_dir / "legs.json").read_text())
    assert [(leg["start_step"], leg["end_step"]) for leg in legs] == [(0, 8)] and summary["legs"] == legs
    steps = sorted(int(f.stem[5:]) for f in (run_dir / "memorization").glob("step_*.csv"))
    assert steps == [0, 4, 8]
    rows = list(csv.DictReader(open(run_dir / "memorization" / "step_00000008.csv")))
    records = list(csv.DictReader(open(run_dir / "records.csv")))
    assert len(rows) == len(records) == summary["train_records"] + summary["val_records"]
    train_rows = [r for r in rows if r["split"] == "train"]
    sampling = list(csv.DictReader(open(run_dir / "sampling.csv")))
    assert sum(int(r["draws"]) for r in train_rows) == 8 * 8 == sum(int(r["draws"]) for r in sampling)
    assert all(0 <= float(r["exact_match"]) <= 1 for r in rows)
    ev = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if '"eval"' in x]
    assert [e["step"] for e in ev] == [0, 4, 8]
    # train_exact_match is Eq. 1 (pooled from the Scores sums); recomputed from the snapshot CSV's counts
    em, tok = (np.array([float(r[k]) for r in train_rows]) for k in ("exact_match", "tokens"))
    assert ev[-1]["train_exact_match"] == pytest.approx((em * tok).sum() / tok.sum(), rel=1e-12)
    resp = [r for r in train_rows if int(r["response_tokens"]) > 0]
    rem, rtok = (np.array([float(r[k]) for r in resp]) for k in ("response_exact_match", "response_tokens"))
    assert ev[-1]["train_response_exact_match"] == pytest.approx((rem * rtok).sum() / rtok.sum(), rel=1e-12)
    # the per-record (macro) means
    assert ev[-1]["train_exact_match_macro"] == pytest.approx(em.mean(), rel=1e-12)
    assert ev[-1]["train_response_exact_match_macro"] == pytest.approx(rem.mean(), rel=1e-12)
    # without the EOS target the template appends (one per demo response unless truncation cut it):
    # Eq. 1 and the per-record mean from the CSV's no-EOS counts
    ntok = np.array([int(r["response_tokens_no_eos"]) for r in resp])
    assert set(rtok - ntok) <= {0.0, 1.0} and (rtok - ntok).sum() > 0.9 * len(resp)
    ne = ntok > 0
    rne = np.array([float(r["response_exact_match_no_eos"]) for r, k in zip(resp, ne) if k])
    assert ev[-1]["train_response_exact_match_no_eos"] == pytest.approx((rne * ntok[ne]).sum() / ntok[ne].sum(),
                                                                        rel=1e-12)
    assert ev[-1]["train_response_exact_match_no_eos_macro"] == pytest.approx(rne.mean(), rel=1e-12)
    # the response-only teacher-forcing entropy of the validation records, pooled over their targets
    val_rows = [r for r in rows if r["split"] == "val" and int(r["response_tokens"]) > 0]
    assert val_rows
    vent, vtok = (np.array([float(r[k]) for r in val_rows]) for k in ("response_entropy", "response_tokens"))
    assert ev[-1]["val_response_entropy"] == pytest.approx((vent * vtok).sum() / vtok.sum(), rel=1e-9)
