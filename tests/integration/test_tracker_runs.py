"""Trackers in a training run: every line of metrics.jsonl reaches TensorBoard (event files read back
independently) and wandb (a fake module) at its step, and a resumed run continues both: TensorBoard
holds the resumed run's values, wandb the same run id."""

from __future__ import annotations

import json
import shutil
import sys
import types

import numpy as np
import pytest

from conftest import TINY_RUN, read_tensorboard
from mbc_jax import config as config_lib


def _expected(lines: list[dict]) -> dict[str, dict[int, float]]:
    """{tag: {step: value}} by hand from metrics.jsonl: eval/ or train/ + key, every number but step."""
    out: dict[str, dict[int, float]] = {}
    for rec in lines:
        for k, v in rec.items():
            if k not in ("step", "eval"):
                out.setdefault(("eval/" if rec.get("eval") else "train/") + k, {})[rec["step"]] = np.float32(v)
    return out


@pytest.mark.slow
def test_training_feeds_tensorboard_and_wandb_and_resume_continues_them(tmp_path, monkeypatch):
    pytest.importorskip("tensorboardX")
    from mbc_jax.assemble import create_trainer

    runs = []
    wandb = types.ModuleType("wandb")

    class Run:
        def __init__(self, **kwargs):
            self.kwargs, self.logged, self.finished = kwargs, [], False
            runs.append(self)

        def log(self, data, step):
            self.logged.append((data, step))

        def finish(self):
            self.finished = True

    wandb.init = Run
    monkeypatch.setitem(sys.modules, "wandb", wandb)
    run_dir = tmp_path / "r"
    cfg = config_lib.load(None, [f"out={run_dir}", *TINY_RUN, "epochs=1", "tracker=[jsonl,tensorboard,wandb]",
                                 "wandb.mode=offline"])
    create_trainer(cfg, log=lambda *a: None).train()

    def metric_lines():
        return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]

    first = metric_lines()
    assert [r["step"] for r in first] == [0, 2, 4, 4, 6, 8, 8]  # eval at 0, 4, 8; train lines every 2 steps
    assert read_tensorboard(run_dir / "tensorboard") == _expected(first)
    (run,) = runs
    assert run.finished and run.kwargs["mode"] == "offline" and run.kwargs["name"] == "r"
    assert [step for _, step in run.logged] == [r["step"] for r in first]
    assert [{k: np.float32(v) for k, v in d.items()} for d, _ in run.logged] == [
        {t: series[r["step"]] for t, series in _expected([r]).items()} for r in first]

    shutil.rmtree(run_dir / "checkpoints" / "8")  # as if killed before the last checkpoint: resumes from 4
    create_trainer(cfg, log=lambda *a: None).train()
    second = metric_lines()
    assert second[:4] == first[:4] and [r["step"] for r in second] == [0, 2, 4, 4, 6, 8, 8]
    assert len(list((run_dir / "tensorboard").glob("events.*"))) == 2
    assert read_tensorboard(run_dir / "tensorboard") == _expected(second)
    assert runs[1].kwargs["id"] == run.kwargs["id"] == (run_dir / "wandb" / "run_id.txt").read_text().strip()
    assert [step for _, step in runs[1].logged] == [6, 8, 8]
