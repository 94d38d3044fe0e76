"""Checkpoints the analyses need survive: a tiny demo run trained with the paper's retention
(keep_checkpoints 2, five checkpoint steps) keeps a param snapshot of every memorization-snapshot
step, each exports (`mbc-jax export --step S`) to exactly the params the trainer held at that step,
and the experiments name a step whose weights are gone instead of using another. Also: bfloat16
snapshots, rewind on resume, and a half-written snapshot is never listed."""

from __future__ import annotations

import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
from safetensors.numpy import load_file

from conftest import TINY_RUN
from mbc_jax import UserError
from mbc_jax import config as config_lib
from mbc_jax.checkpoints import Checkpoints, export_run
from mbc_jax.cli import main as cli
from mbc_jax.models import hf_io
from mbc_jax.run_folder import RunFolder

STEPS = [0, 4, 8, 12, 16]  # TINY_RUN: 64 demo records, batch 8, 2 epochs = 16 steps, a checkpoint every 4
FULL = [0, 12, 16]  # keep_checkpoints 2: the latest two, plus step 0


@pytest.fixture(scope="module")
def paper_retention(tmp_path_factory):
    """(run folder, model config, {step: the params the trainer held, copied to numpy as it saved them})."""
    from mbc_jax.assemble import create_trainer

    held = {}
    real = Checkpoints.save_params

    def spy(self, step, params):
        held[step] = jax.tree_util.tree_map(np.array, jax.device_get(params))
        return real(self, step, params)

    out = tmp_path_factory.mktemp("ckpt") / "run"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Checkpoints, "save_params", spy)
        trainer = create_trainer(config_lib.load(None, [f"out={out}", *TINY_RUN]), log=lambda *a: None)
        trainer.train()
    return out, trainer.model.config, held


def test_every_snapshot_step_exports_the_params_of_that_step(paper_retention, tmp_path, capsys):
    out, mcfg, held = paper_retention
    run = RunFolder.open(out)
    assert run.memorization_steps() == STEPS and sorted(held) == STEPS
    assert run.param_snapshot_steps() == STEPS and run.full_checkpoint_steps() == FULL
    assert run.checkpoint_steps() == STEPS
    assert run.first_last_checkpoints() == {"first": 4, "last": 16}  # epoch 1 survives keep_checkpoints 2
    for step in STEPS:
        assert cli(["export", "--run", str(out), "--out", str(tmp_path / str(step)), "--step", str(step)]) == 0
        got = load_file(str(tmp_path / str(step) / "model.safetensors"))
        want = hf_io.params_to_hf(mcfg, held[step])
        assert got.keys() == want.keys()
        for k in want:  # float32 compute: the snapshot is the master weights, bitwise
            np.testing.assert_array_equal(got[k], np.asarray(want[k]), err_msg=f"step {step}: {k}")
    assert f"exported step 16 of {out}" in capsys.readouterr().out
    # where a full checkpoint is kept too, its params equal the snapshot's, read straight from orbax
    snapshots = ocp.CheckpointManager(out / "params", item_handlers=ocp.StandardCheckpointHandler())
    full = ocp.CheckpointManager(out / "checkpoints")
    for step in FULL:
        a = snapshots.restore(step)
        b = full.restore(step, args=ocp.args.Composite(state=ocp.args.PyTreeRestore()))["state"]["params"]
        jax.tree_util.tree_map(np.testing.assert_array_equal, a, b)
    snapshots.close()
    full.close()
    # an unknown step names the steps there are
    assert cli(["export", "--run", str(out), "--out", str(tmp_path / "x"), "--step", "5"]) != 0
    err = capsys.readouterr().err
    assert "no weights of step 5" in err and "steps with weights: 0, 4, 8, 12, 16" in err


def test_export_records_its_source_and_refuses_a_non_empty_folder_without_force(paper_retention, tmp_path, capsys):
    """Issue 30: export silently overwrote a folder and recorded neither the run nor the step."""
    out = paper_retention[0]
    target = tmp_path / "e"
    assert cli(["export", "--run", str(out), "--out", str(target), "--step", "4"]) == 0
    info = json.loads((target / "export.json").read_text())
    assert (info["run"], info["step"], info["weights"], info["dtype"]) == (str(out), 4, "param snapshot", "float32")
    before = (target / "model.safetensors").read_bytes()
    capsys.readouterr()
    assert cli(["export", "--run", str(out), "--out", str(target), "--step", "16"]) == 2
    err = capsys.readouterr().err
    assert "exists and is not empty" in err and "--force" in err and len(err.strip().splitlines()) == 1
    assert (target / "model.safetensors").read_bytes() == before  # nothing lost
    assert cli(["export", "--run", str(out), "--out", str(target), "--step", "16", "--force"]) == 0
    assert json.loads((target / "export.json").read_text())["weights"] == "full checkpoint"


def test_a_removed_snapshot_is_named_not_replaced(paper_retention, tmp_path, capsys):
    from experiments import table1_entropy

    out, _, _ = paper_retention
    copy = tmp_path / "run"
    shutil.copytree(out, copy)
    shutil.rmtree(copy / "params" / "4")
    (copy / "params" / "20.orbax-checkpoint-tmp").mkdir()  # a save cut short: never listed
    (copy / "params" / "24" / "default").mkdir(parents=True)  # no _CHECKPOINT_METADATA: incomplete
    run = RunFolder.open(copy)
    assert run.param_snapshot_steps() == [0, 8, 12, 16] and run.checkpoint_steps() == [0, 8, 12, 16]
    with pytest.raises(UserError, match=r"no weights of step 4 \(the first checkpoint\).*steps with weights: "
                                        r"0, 8, 12, 16"):
        run.first_last_checkpoints()
    assert run.first_last_checkpoints(8) == {"first": 8, "last": 16}
    rc = table1_entropy.main(["--runs", str(copy), "--out", str(tmp_path / "t1"), "--max-records", "2",
                              "--max-new-tokens", "2"])
    err = capsys.readouterr().err
    assert rc != 0 and "no weights of step 4" in err and not (tmp_path / "t1" / "table1_entropy.csv").exists()
    with pytest.raises(UserError, match="no weights of step 20"):
        export_run(copy, tmp_path / "x", 20)


def test_bfloat16_snapshots_rewind_and_full_checkpoint_preferred(tmp_path):
    """bfloat16 compute: snapshots hold the params rounded to bfloat16 (half the bytes); export reads the
    full checkpoint where one exists (float32, exact) and the snapshot elsewhere; rewind drops later ones."""
    from mbc_jax.checkpoints import init_train_state, snapshot_dtype
    from mbc_jax.models import init_model, load_model
    from mbc_jax.run_folder import RunWriter
    from mbc_jax.sharding import make_mesh
    from mbc_jax.train import make_optimizer

    tiny = dict(model_type="gpt_neo", vocab_size=96, hidden_size=32, num_layers=2, num_heads=4, window_size=6,
                attention_types=[[["global", "local"], 1]], max_position_embeddings=64)
    model = init_model(tiny, mesh=make_mesh("1,1,1", jax.devices()[:1]), seed=3)
    RunWriter(tmp_path).write_model(model.hf_config, None)
    cfg = config_lib.load(None, ["dtype=bfloat16"])
    assert snapshot_dtype(cfg) == "bfloat16" and snapshot_dtype(config_lib.load(None, [])) == "float32"
    assert snapshot_dtype(config_lib.load(None, ["save_params=none"])) is None
    tx, _ = make_optimizer(cfg, 10)
    later = jax.tree_util.tree_map(lambda x: x * 1.5, model.params)
    ck = Checkpoints(tmp_path, keep=1, total_steps=8, snapshot="bfloat16")
    ck.save(0, init_train_state(tx, model.params, model.mesh), {"counts": np.zeros(3, np.int64)})
    for step, params in ((0, model.params), (4, later), (8, later)):
        ck.save_params(step, params)
    ck.close(8)
    run_params = sorted(int(p.name) for p in (tmp_path / "params").iterdir())
    assert run_params == [0, 4, 8]

    exact = load_model(str(export_run(tmp_path, tmp_path / "e0", 0)[0]))  # the full checkpoint: float32
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)),
                           exact.params, model.params)
    folder, step = export_run(tmp_path, tmp_path / "e4", 4)  # the snapshot only: bfloat16
    assert step == 4 and '"dtype": "bfloat16"' in (folder / "config.json").read_text()
    snap = load_model(str(folder))
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_array_equal(
        np.asarray(a, np.float32), np.asarray(b.astype(jnp.bfloat16), np.float32)), snap.params, later)
    assert export_run(tmp_path, tmp_path / "e", None)[1] == 8  # default: the latest step with weights

    again = Checkpoints(tmp_path, keep=1, total_steps=8, snapshot="bfloat16")  # a resume from step 4
    again.rewind(4)
    again.save_params(4, model.params)  # complete already: kept as it is
    again.close(8)
    assert sorted(int(p.name) for p in (tmp_path / "params").iterdir()) == [0, 4]
    snap = load_model(str(export_run(tmp_path, tmp_path / "e4b", 4)[0]))
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_array_equal(
        np.asarray(a, np.float32), np.asarray(b.astype(jnp.bfloat16), np.float32)), snap.params, later)
