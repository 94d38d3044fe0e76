"""Train state and its checkpoints: sharded initialization, orbax save / restore, export to HF.

The train state is `{"params", "opt_state", "step"}`. `abstract_train_state` gives its shapes,
dtypes and shardings without allocating anything: the trainer initializes the optimizer state
directly into them (no full copy ever sits on one device), restores into them, and `mbc-jax plan`
compiles against them. A checkpoint holds the train state and the sampler's state (draw counts,
MBC perplexities), so a resumed run continues exactly.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
from jax.sharding import NamedSharding, PartitionSpec

from mbc_jax import UserError
from mbc_jax.models import Model, abstract_params, export_model, load_tokenizer
from mbc_jax.models.config import config_from_hf
from mbc_jax.run_folder import CHECKPOINTS, MODEL
from mbc_jax.sharding import make_mesh


def _sds(a: Any, sharding: Any) -> jax.ShapeDtypeStruct:
    return jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sharding)


def abstract_train_state(tx: optax.GradientTransformation, params: Any, mesh: Any) -> dict:
    """{"params", "opt_state", "step"} as `jax.ShapeDtypeStruct`s with their shardings. `params` may
    be arrays or abstract values, each with a sharding. Optimizer moments are sharded like their
    params; counts and the step are replicated."""
    replicated = NamedSharding(mesh, PartitionSpec())
    shardings = jax.tree_util.tree_map(lambda p: p.sharding, params)
    opt_abstract = jax.eval_shape(tx.init, params)
    opt_shardings = optax.tree_map_params(tx, lambda _, s: s, opt_abstract, shardings,
                                          transform_non_params=lambda _: replicated)
    return {"params": jax.tree_util.tree_map(_sds, params, shardings),
            "opt_state": jax.tree_util.tree_map(_sds, opt_abstract, opt_shardings),
            "step": jax.ShapeDtypeStruct((), jnp.int32, sharding=replicated)}


def init_train_state(tx: optax.GradientTransformation, params: Any, mesh: Any) -> dict:
    """The train state at step 0, the optimizer state created in place on its shardings."""
    abstract = abstract_train_state(tx, params, mesh)
    opt_shardings = jax.tree_util.tree_map(lambda a: a.sharding, abstract["opt_state"])
    opt_state = jax.jit(tx.init, out_shardings=opt_shardings)(params)
    # from numpy: device_put of a jax array onto a multi-process sharding fails with one device per process
    step = jax.device_put(np.zeros((), np.int32), abstract["step"].sharding)
    return {"params": params, "opt_state": opt_state, "step": step}


class Checkpoints:
    """A run's orbax checkpoints: the latest `keep` of them, plus step 0 (the untrained model) and
    the last step, which are never deleted, so first-vs-last analyses always find both."""

    def __init__(self, run_dir: Path, keep: int, total_steps: int):
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True, keep_period=total_steps,
                                               enable_async_checkpointing=True)
        self.manager = ocp.CheckpointManager((Path(run_dir) / CHECKPOINTS).absolute(), options=options)
        self.seconds = 0.0

    def latest(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state: dict, sampler_state: dict[str, np.ndarray]) -> None:
        t0 = time.perf_counter()
        try:
            self.manager.save(step, args=ocp.args.Composite(
                state=ocp.args.StandardSave(state),
                sampler=ocp.args.StandardSave({k: np.asarray(v) for k, v in sampler_state.items()})))
        except OSError as e:
            raise UserError(self._failed(step, e)) from None
        self.seconds += time.perf_counter() - t0

    def restore(self, step: int, abstract_state: dict) -> tuple[dict, dict]:
        """(train state, sampler state) of `step`, onto the shardings of `abstract_state`."""
        restored = self.manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state), sampler=ocp.args.StandardRestore()))
        return restored["state"], restored["sampler"]

    def close(self, last_step: int) -> None:
        """Waits for the asynchronous saves; a failed one (disk full) is an error naming the last good step."""
        try:
            self.manager.wait_until_finished()
        except OSError as e:
            raise UserError(self._failed(last_step, e)) from None
        self.manager.close()

    def _failed(self, step: int, e: Exception) -> str:
        good = [s for s in self.manager.all_steps() if s != step]
        return (f"saving the checkpoint of step {step} failed ({e}); the last good checkpoint is "
                f"{'step ' + str(max(good)) if good else 'none'}, and running the same command again resumes from it")


def export_run(run_dir: str | Path, out_dir: str | Path, step: int | None = None) -> tuple[Path, int]:
    """Writes a Hugging Face folder from a run's checkpoint (latest, or `step`)."""
    run_dir = Path(run_dir)
    if not (run_dir / MODEL / "config.json").is_file():
        raise UserError(f"{run_dir}: not a run folder (no model/config.json)")
    manager = ocp.CheckpointManager((run_dir / CHECKPOINTS).absolute())
    steps = manager.all_steps()
    if not steps:
        raise UserError(f"{run_dir}: no checkpoints saved yet")
    step = max(steps) if step is None else step
    if step not in steps:
        raise UserError(f"{run_dir}: no checkpoint of step {step} (saved: {', '.join(map(str, sorted(steps)))})")
    hf_config = json.loads((run_dir / MODEL / "config.json").read_text())
    cfg = config_from_hf(hf_config)
    mesh = make_mesh("1,1,1", jax.devices()[:1])
    abstract, shardings, module = abstract_params(cfg, mesh)
    target = jax.tree_util.tree_map(_sds, abstract, shardings)
    restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.PyTreeRestore(
        {"params": target}, partial_restore=True)))
    params = restored["state"]["params"]
    manager.close()
    model = Model(cfg, hf_config, module, params, mesh, load_tokenizer(run_dir / MODEL), str(run_dir))
    return export_model(model, out_dir), step
