"""Trainer: kill -9 and resume equals an uninterrupted run (bitwise), sampler statistics,
packed train loss == per-record losses, config validation, and faults."""

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

from mbc_jax import UserError
from mbc_jax import config as config_lib

TINY_RUN = ["model=demo", "data=demo", "demo_records=64", "epochs=2", "batch_size=8",
            "checkpoint_every=4", "log_every=2", "learning_rate=3e-3", "max_length=256", "keep_checkpoints=2",
            "mesh=1,1,1"]


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


# ------------------------------------------------------------------ MBC's scoring batches


def test_incremental_refresh_fills_the_batches_it_needs(tmp_path):
    """The stalest fraction always, then the next stalest while they pack into no more batches."""
    from mbc_jax.train import Trainer

    args = [f"out={tmp_path / 'r'}", *TINY_RUN, "sampler=mbc", "mbc.refresh=incremental", "mbc.refresh_fraction=0.1"]
    run = Trainer.create(config_lib.load(None, args), log=lambda *a: None)
    n = len(run.data.train)
    run.sampler.set_perplexities(np.ones(n), step=0)
    run.sampler.set_perplexities(np.ones(n - 10), step=5, which=np.arange(10, n))  # 0..9 are stalest
    order = run.sampler.staleness_order()
    k = round(0.1 * n)
    which, batches = run.scorer.prefix_batches(run.data.train, order, k)
    np.testing.assert_array_equal(which, order[:len(which)])
    assert set(which[:10].tolist()) <= set(range(10)) and len(which) > k
    alone = run.scorer.batches([run.data.train[i] for i in order[:k]])
    assert len(batches) == len(alone)
    packed = sorted(int(i) for b in batches for i in b.record_index.ravel() if i >= 0)
    assert packed == list(range(len(which)))


def test_row_bucket_sizes_are_few_and_pad_by_at_most_a_third():
    from mbc_jax.data import row_bucket

    for most in (1, 7, 8, 32, 100):
        for divisor in (1, 2, 4):
            sizes = set()
            for used in range(1, most + 1):
                rows = row_bucket(used, most, divisor)
                cap = -(-most // divisor) * divisor
                assert used <= rows <= cap and rows % divisor == 0
                if divisor == 1 and rows < cap:
                    assert (rows - used) * 3 <= rows, (used, rows)  # at most a third of the rows pad
                sizes.add(rows)
            assert len(sizes) <= 2 * max(1, most).bit_length()
    assert [row_bucket(u, 8) for u in range(1, 9)] == [1, 2, 3, 4, 6, 6, 8, 8]


def test_train_batch_holds_every_drawn_record_in_bucketed_rows(tmp_path):
    from mbc_jax.data import row_bucket
    from mbc_jax.sharding import batch_divisor
    from mbc_jax.train import Trainer

    run = Trainer.create(config_lib.load(None, [f"out={tmp_path / 'r'}", *TINY_RUN]), log=lambda *a: None)
    rng = np.random.default_rng(0)
    for _ in range(5):
        idx = rng.choice(len(run.data.train), run.cfg.batch_size, replace=True)
        batch = run.train_batch(idx)
        used = int((batch.segment_ids != 0).any(1).sum())
        rows = row_bucket(used, len(idx), batch_divisor(run.model.mesh))
        assert batch.input_ids.shape == (rows, run.cfg.max_length)
        assert sorted(batch.record_index[batch.record_index >= 0].tolist()) == sorted(idx.tolist())


# ------------------------------------------------------------------ train step


def test_packed_train_loss_equals_per_record_losses():
    """The loss of a packed batch equals the token-weighted mean of each record's loss alone."""
    import jax.numpy as jnp

    from mbc_jax.data import Example, pack
    from mbc_jax.models import init_model
    from mbc_jax.sharding import make_mesh
    from mbc_jax.train import make_optimizer, make_train_step

    model = init_model(dict(model_type="gpt_neo", vocab_size=64, hidden_size=32, num_layers=2, num_heads=4,
                            window_size=4, attention_types=[[["global", "local"], 1]], max_position_embeddings=64),
                       mesh=make_mesh("1,1,1", jax.devices()[:1]), seed=0)
    rng = np.random.default_rng(0)
    examples = [Example(i, str(i), "", rng.integers(0, 64, n).astype(np.int32), np.arange(n) >= 3)
                for i, n in enumerate([20, 9, 30, 14, 5])]
    cfg = config_lib.load(None, ["learning_rate=1e-3"])
    tx, schedule = make_optimizer(cfg, 10)
    step = jax.jit(make_train_step(model.module, tx, schedule, "response"))

    def loss_of(exs, rows):
        (b,) = pack(exs, 64, rows_per_batch=rows)
        state = {"params": model.params, "opt_state": tx.init(model.params), "step": jnp.zeros((), jnp.int32)}
        _, m = step(state, {k: jnp.asarray(getattr(b, k)) for k in
                            ("input_ids", "segment_ids", "positions", "response_mask", "record_index")})
        return float(m["loss"]), float(m["targets"])

    packed_loss, packed_n = loss_of(examples, 2)
    alone = [loss_of([e], 1) for e in examples]
    assert packed_n == sum(n for _, n in alone)
    assert packed_loss == pytest.approx(sum(loss * n for loss, n in alone) / packed_n, rel=1e-5)


def test_train_step_dropout_is_a_function_of_seed_and_step(tmp_path):
    """`dropout=` reaches the model; the train step's masks depend on (seed, step) only, so a
    resumed run replays them; a rate of 0 is the deterministic step."""
    import functools

    import jax.numpy as jnp

    from mbc_jax.train import Trainer, make_train_step, model_runtime

    assert "resid_dropout" not in model_runtime(config_lib.load(None, []))  # default: the model's own rates
    run = Trainer.create(config_lib.load(None, [f"out={tmp_path / 'r'}", *TINY_RUN, "dropout=0.1"]),
                         log=lambda *a: None)
    mc = run.model.module.cfg
    assert (mc.embed_dropout, mc.attention_dropout, mc.resid_dropout) == (0.1, 0.1, 0.1)
    b = run.train_batch(np.arange(8))
    batch = {k: jnp.asarray(getattr(b, k)) for k in
             ("input_ids", "segment_ids", "positions", "response_mask", "record_index")}

    @functools.cache
    def compiled(module, seed):
        return jax.jit(make_train_step(module, run.tx, run.schedule, "response", seed=seed))

    def loss(module, step, seed=0):
        state = {"params": run.model.params, "opt_state": run.tx.init(run.model.params),
                 "step": jnp.asarray(step, jnp.int32)}
        return float(compiled(module, seed)(state, batch)[1]["loss"])

    m = run.model.module
    assert loss(m, 3) == loss(m, 3)
    assert len({loss(m, 3), loss(m, 4), loss(m, 3, seed=1)}) == 3
    no_drop = m.clone(cfg=mc.replace(embed_dropout=0.0, attention_dropout=0.0, resid_dropout=0.0))
    assert loss(no_drop, 3) == loss(no_drop, 4) != loss(m, 3)


def test_fused_head_loss_and_gradients_equal_plain_autodiff():
    """The head loss whose gradient is formed in the forward pass equals jax.grad of the plain loss."""
    import jax.numpy as jnp

    from mbc_jax.loss import fused_nll_loss

    k = jax.random.split(jax.random.PRNGKey(0), 4)
    h = jax.random.normal(k[0], (3, 11, 16))
    rows = jax.random.normal(k[1], (97, 16))
    y = jax.random.randint(k[2], (3, 11), 0, 97)
    mask = jax.random.bernoulli(k[3], 0.7, (3, 11))
    weight = mask / mask.sum()

    def plain(h, rows):
        logits = h @ rows.T
        nll = jax.nn.logsumexp(logits, -1) - jnp.take_along_axis(logits, y[..., None], -1)[..., 0]
        return (weight * nll).sum(), nll

    def fused(h, rows):
        return fused_nll_loss(h, rows, y, weight, chunk=7)  # chunks that do not divide 33 positions

    (want, want_nll), want_g = jax.value_and_grad(plain, (0, 1), has_aux=True)(h, rows)
    (got, got_nll), got_g = jax.value_and_grad(fused, (0, 1), has_aux=True)(h, rows)
    np.testing.assert_allclose(got, want, rtol=1e-5)
    np.testing.assert_allclose(got_nll, want_nll, rtol=1e-5, atol=1e-5)
    for g, w in zip(got_g, want_g):
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-6)
    # scaled cotangent, and the value alone (no gradient work)
    got_g2 = jax.grad(lambda h, r: 3.0 * fused(h, r)[0], (0, 1))(h, rows)
    np.testing.assert_allclose(got_g2[1], 3.0 * want_g[1], rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(jax.jit(fused)(h, rows)[0], want, rtol=1e-5)


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


# ------------------------------------------------------------------ config and faults


def test_unknown_key_names_closest():
    with pytest.raises(UserError, match=r"unknown config key 'learning_rat'; did you mean learning_rate"):
        config_lib.load(None, ["learning_rat=1e-5"])
    with pytest.raises(UserError, match=r"unknown config key 'mbc.pwer'; did you mean mbc.power"):
        config_lib.load(None, ["mbc.pwer=2"])


def test_yaml_file_errors_name_the_file(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("learning_rate: 1e-5\nbatch_sise: 4\n")
    with pytest.raises(UserError, match=rf"{f}: unknown config key 'batch_sise'; did you mean batch_size"):
        config_lib.load(str(f), [])
    f.write_text("learning_rate: [1\n")
    with pytest.raises(UserError, match=rf"{f}:\d+: invalid YAML"):
        config_lib.load(str(f), [])


@pytest.mark.parametrize("override,msg", [
    ("learning_rate=0", "learning_rate: must be positive"),
    ("learning_rate=-1e-5", "learning_rate: must be positive"),
    ("batch_size=abc", "batch_size: expected int"),
    ("sampler=random", "sampler: 'random' is not one of mbc, uniform"),
    ("mbc.floor=2", "mbc.floor: must be at most 1"),
    ("dropout=1", r"dropout: must be in \[0, 1\)"),
])
def test_bad_values(override, msg):
    with pytest.raises(UserError, match=msg):
        config_lib.load(None, [override])


def test_batch_larger_than_data(tmp_path):
    from mbc_jax.train import Trainer

    cfg = config_lib.load(None, [f"out={tmp_path / 'r'}", "demo_records=40", "val_fraction=0", "batch_size=64"])
    with pytest.raises(UserError, match="batch_size: 64 is larger than the 40 training records"):
        Trainer.create(cfg, log=lambda *a: None)


def test_nan_loss_stops_naming_step_and_records(tmp_path, monkeypatch):
    from mbc_jax import train as train_lib

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
    run = train_lib.Trainer.create(cfg, log=lambda *a: None)
    with pytest.raises(UserError, match=r"step 2: the loss is nan; the batch held records (train-\d+, ){7}train-\d+"):
        run.train()


def test_run_folder_with_different_config_is_refused(tmp_path):
    from mbc_jax.train import Trainer

    base = [f"out={tmp_path / 'r'}", *TINY_RUN, "epochs=1"]
    Trainer.create(config_lib.load(None, base), log=lambda *a: None).train()
    with pytest.raises(UserError, match=r"made with a different config \(learning_rate: 0.003 -> 0.001\)"):
        Trainer.create(config_lib.load(None, [*base, "learning_rate=1e-3"]), log=lambda *a: None)
    # allowed with override; and a finished run re-run is a no-op resume
    Trainer.create(config_lib.load(None, [*base, "learning_rate=1e-3"]), override=True, log=lambda *a: None)


def test_disk_full_during_save_keeps_last_good_checkpoint(tmp_path, monkeypatch):
    import orbax.checkpoint as ocp

    from mbc_jax.train import Trainer

    args = [f"out={tmp_path / 'r'}", *TINY_RUN, "epochs=1", "sampler=uniform"]
    run = Trainer.create(config_lib.load(None, args), log=lambda *a: None)
    real_save = ocp.CheckpointManager.save

    def full_disk(self, step, *a, **k):
        if step >= 4:
            raise OSError(28, "No space left on device")
        return real_save(self, step, *a, **k)

    monkeypatch.setattr(ocp.CheckpointManager, "save", full_disk)
    with pytest.raises(UserError, match=r"checkpoint of step 4 failed.*last good checkpoint is step 0"):
        run.train()
    monkeypatch.setattr(ocp.CheckpointManager, "save", real_save)
    summary = Trainer.create(config_lib.load(None, args), log=lambda *a: None).train()
    assert summary["steps"] == 8 and summary["final"]["step"] == 8


def test_run_folder_contents(tmp_path):
    """The files docs/run_folder.md promises, read back independently with the csv module."""
    import csv

    from mbc_jax.train import Trainer

    run_dir = tmp_path / "r"
    summary = Trainer.create(config_lib.load(None, [f"out={run_dir}", *TINY_RUN, "epochs=1"]),
                             log=lambda *a: None).train()
    for name in ("config.yaml", "records.csv", "metrics.jsonl", "sampling.csv", "summary.json", "model/config.json"):
        assert (run_dir / name).is_file(), name
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
    mean_em = np.mean([float(r["exact_match"]) for r in train_rows])
    assert ev[-1]["train_exact_match"] == pytest.approx(mean_em)
