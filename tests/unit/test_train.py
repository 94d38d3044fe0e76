"""mbc_jax/train.py without a run folder: the learning-rate schedule (the train step on a model and
the Trainer are in integration/test_trainer.py)."""

from __future__ import annotations

import pytest

from mbc_jax import config as config_lib


def test_learning_rate_schedule_linear_decay_no_warmup():
    from mbc_jax.train import make_optimizer

    cfg = config_lib.load(None, ["learning_rate=1e-4"])
    _, schedule = make_optimizer(cfg, 100)
    assert float(schedule(0)) == pytest.approx(1e-4)
    assert float(schedule(50)) == pytest.approx(5e-5)
    assert float(schedule(100)) == pytest.approx(0.0, abs=1e-12)
    cfg = config_lib.load(None, ["learning_rate=1e-4", "warmup_steps=10"])
    _, schedule = make_optimizer(cfg, 100)
    assert float(schedule(5)) == pytest.approx(5e-5)
    assert float(schedule(10)) == pytest.approx(1e-4)
