"""mbc_jax/trackers.py: every metrics record goes to metrics.jsonl and to each tracker at its step
(fakes), the `tracker` / `wandb.*` config keys are checked (file:line), TensorBoard event files read
back by an independent TFRecord/protobuf reader (purge on resume included), wandb through a fake
module (and offline, when wandb is installed), and a missing optional package is a UserError
naming the extra."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from conftest import read_tensorboard
from mbc_jax import UserError, distributed, trackers
from mbc_jax import config as config_lib
from mbc_jax.run_folder import RunWriter

TRAIN = {"step": 2, "epoch": 0.25, "loss": 2.5, "learning_rate": 1e-3, "grad_norm": 0.75, "tokens": 512}
EVAL = {"step": 4, "eval": True, "train_exact_match": 0.125, "val_perplexity": 9.5}


class FakeTracker:
    def __init__(self):
        self.logged: list[tuple[dict, int]] = []
        self.closed = False

    def log(self, record: dict, step: int) -> None:
        self.logged.append((dict(record), step))

    def close(self) -> None:
        self.closed = True


def test_scalars_are_named_by_kind_without_step_or_flags():
    assert trackers.scalars(TRAIN) == {"train/epoch": 0.25, "train/loss": 2.5, "train/learning_rate": 1e-3,
                                       "train/grad_norm": 0.75, "train/tokens": 512.0}
    assert trackers.scalars(EVAL) == {"eval/train_exact_match": 0.125, "eval/val_perplexity": 9.5}


def test_every_record_goes_to_jsonl_and_each_tracker_at_its_step(tmp_path):
    a, b = FakeTracker(), FakeTracker()
    writer = RunWriter(tmp_path)
    with writer.metrics([a, b]) as emit:
        for rec in (TRAIN, EVAL, {**TRAIN, "step": 6, "loss": 1.5}):
            emit(rec)
        assert not a.closed
    assert a.closed and b.closed
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert lines == [TRAIN, EVAL, {**TRAIN, "step": 6, "loss": 1.5}]
    for t in (a, b):
        assert t.logged == [(r, r["step"]) for r in lines]


def test_trackers_open_on_process_0_only(tmp_path, monkeypatch):
    cfg = config_lib.load(None, ["tracker=[jsonl,tensorboard]"])
    monkeypatch.setattr(distributed, "is_main", lambda: False)
    assert trackers.open_trackers(cfg, tmp_path, 0, resumed=False) == []
    assert not (tmp_path / "tensorboard").exists()


# ----------------------------------------------------------------------------- config


def test_tracker_config(tmp_path):
    assert config_lib.TrainConfig().tracker == ["jsonl"]
    assert config_lib.load(None, ["tracker=tensorboard,wandb"]).tracker == ["tensorboard", "wandb"]
    f = tmp_path / "c.yaml"
    f.write_text("learning_rate: 1e-5\ntracker: [jsonl, tensorboard]\nwandb:\n  project: p\n  mode: offline\n")
    cfg = config_lib.load(str(f), [])
    assert (cfg.tracker, cfg.wandb.project, cfg.wandb.mode, cfg.wandb.name) == (["jsonl", "tensorboard"], "p",
                                                                                 "offline", None)
    # the saved config.yaml round-trips; a resumed run may change its trackers without --override
    assert config_lib.from_dict(config_lib.to_dict(cfg), "saved") == cfg
    assert config_lib.differences(config_lib.TrainConfig(), cfg) == ["learning_rate: 5e-05 -> 1e-05"]


@pytest.mark.parametrize("text,line,msg", [
    ("steps: 3\n\ntracker:\n  - jsonl\n  - tensorbord\n", 3,
     "tracker: 'tensorbord' is not a tracker; valid: jsonl, tensorboard, wandb"),
    ("tracker: [wandb, wandb]\n", 1, "tracker: 'wandb' is listed twice"),
    ("tracker: {wandb: 1}\n", 1, "tracker: expected a list of names"),
    ("steps: 3\nwandb:\n  projct: p\n", 3, "unknown config key 'wandb.projct'; did you mean wandb.project"),
    ("wandb: offline\n", 1, "wandb: expected a mapping of wandb.\\* keys"),
])
def test_bad_tracker_config_names_file_and_line(tmp_path, text, line, msg):
    f = tmp_path / "c.yaml"
    f.write_text(text)
    with pytest.raises(UserError, match=rf"^{f}:{line}: {msg}"):
        config_lib.load(str(f), [])


def test_bad_tracker_overrides():
    with pytest.raises(UserError, match=r"^overrides: tracker: 'mlflow' is not a tracker; valid: jsonl, tensorboard"):
        config_lib.load(None, ["tracker=[jsonl,mlflow]"])
    with pytest.raises(UserError, match=r"wandb.mode: 'later' is not one of online, offline, disabled"):
        config_lib.load(None, ["wandb.mode=later"])


# ----------------------------------------------------------------------------- missing packages


@pytest.mark.parametrize("tracker,package", [("tensorboard", "tensorboardX"), ("wandb", "wandb")])
def test_missing_package_names_it_and_the_extra(tmp_path, monkeypatch, tracker, package):
    monkeypatch.setitem(sys.modules, package, None)  # `import package` now raises ImportError
    msg = rf"tracker: {tracker} needs the {package} package.*pip install 'mbc-jax\[{tracker}\]'"
    with pytest.raises(UserError, match=msg):
        trackers.check(["jsonl", tracker])
    cfg = config_lib.load(None, [f"tracker=[{tracker}]"])
    with pytest.raises(UserError, match=msg):
        trackers.open_trackers(cfg, tmp_path, 0, resumed=False)
    trackers.check(["jsonl"])  # jsonl needs nothing


# ----------------------------------------------------------------------------- tensorboard


def test_tensorboard_event_files_hold_the_logged_scalars_and_resume_purges(tmp_path):
    pytest.importorskip("tensorboardX")
    cfg = config_lib.load(None, ["tracker=[jsonl,tensorboard]"])
    losses = {s: 3.0 - 0.25 * s for s in range(1, 7)}
    (tb,) = trackers.open_trackers(cfg, tmp_path, 0, resumed=False)
    for s, loss in losses.items():  # a first attempt logs steps 1..6, then dies; its checkpoint was step 3
        tb.log({"step": s, "loss": loss, "grad_norm": 0.1 * s}, s)
    tb.log(EVAL, EVAL["step"])
    tb.close()
    got = read_tensorboard(tmp_path / "tensorboard")
    assert got["train/loss"] == {s: np.float32(v) for s, v in losses.items()}
    assert got["train/grad_norm"] == {s: np.float32(0.1 * s) for s in losses}
    assert got["eval/val_perplexity"] == {4: 9.5} and got["eval/train_exact_match"] == {4: 0.125}

    (tb,) = trackers.open_trackers(cfg, tmp_path, 3, resumed=True)  # the rerun from step 3 logs 4..5 anew
    for s in (4, 5):
        tb.log({"step": s, "loss": 10.0 + s}, s)
    tb.close()
    got = read_tensorboard(tmp_path / "tensorboard")
    assert len(list((tmp_path / "tensorboard").glob("events.*"))) == 2
    assert got["train/loss"] == {1: 2.75, 2: 2.5, 3: 2.25, 4: 14.0, 5: 15.0}  # step 6 of the first attempt: gone
    assert got["train/grad_norm"] == {s: np.float32(0.1 * s) for s in (1, 2, 3)}
    assert got["eval/val_perplexity"] == {}


# ----------------------------------------------------------------------------- wandb


class FakeRun:
    def __init__(self, **kwargs):
        self.kwargs, self.logged, self.finished = kwargs, [], False

    def log(self, data: dict, step: int) -> None:
        self.logged.append((data, step))

    def finish(self) -> None:
        self.finished = True


@pytest.fixture
def fake_wandb(monkeypatch):
    module = types.ModuleType("wandb")
    module.runs = []

    def init(**kwargs):
        module.runs.append(FakeRun(**kwargs))
        return module.runs[-1]

    module.init = init
    monkeypatch.setitem(sys.modules, "wandb", module)
    return module


def test_wandb_adapter_settings_log_and_resume_id(tmp_path, fake_wandb):
    run_dir = tmp_path / "my-run"
    cfg = config_lib.load(None, [f"out={run_dir}", "tracker=[jsonl,wandb]", "wandb.project=proj",
                                 "wandb.group=g", "wandb.mode=offline"])
    writer = RunWriter(run_dir)
    with writer.metrics(trackers.open_trackers(cfg, run_dir, 0, resumed=False)) as emit:
        emit(TRAIN)
        emit(EVAL)
    run = fake_wandb.runs[0]
    saved_id = (run_dir / "wandb" / "run_id.txt").read_text().strip()
    assert run.kwargs == {"project": "proj", "entity": None, "name": "my-run", "group": "g", "mode": "offline",
                          "dir": str(run_dir), "id": saved_id, "resume": "allow",
                          "config": config_lib.to_dict(cfg)}
    assert run.logged == [(trackers.scalars(TRAIN), 2), (trackers.scalars(EVAL), 4)]
    assert run.finished

    trackers.open_trackers(cfg, run_dir, 4, resumed=True)  # resumed from a checkpoint: the same wandb run
    assert fake_wandb.runs[1].kwargs["id"] == saved_id
    trackers.open_trackers(cfg, run_dir, 0, resumed=False)  # started afresh: a new run, its id saved
    new_id = fake_wandb.runs[2].kwargs["id"]
    assert new_id != saved_id and (run_dir / "wandb" / "run_id.txt").read_text().strip() == new_id


def test_wandb_offline_run_files(tmp_path, monkeypatch):
    """With the real package (when installed): an offline run writes its files under RUN/wandb/."""
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    cfg = config_lib.load(None, [f"out={tmp_path}", "tracker=[wandb]"])
    (w,) = trackers.open_trackers(cfg, tmp_path, 0, resumed=False)
    w.log(TRAIN, 2)
    w.close()
    assert list(Path(tmp_path, "wandb").glob(f"offline-run-*-{w.id}/run-{w.id}.wandb"))
