"""Train state and its checkpoints: sharded initialization, orbax save / restore, export to HF.

The train state is `{"params", "opt_state", "step"}`. `abstract_train_state` gives its shapes,
dtypes and shardings without allocating anything: the trainer initializes the optimizer state
directly into them (no full copy ever sits on one device), restores into them, and `mbc-jax plan`
compiles against them. A checkpoint holds the train state and the sampler's state (draw counts,
MBC perplexities), so a resumed run continues exactly.

Two kinds of saves, both orbax and asynchronous:

- full checkpoints (checkpoints/<step>/): train state + sampler state, what resume reads; the latest
  `keep_checkpoints`, plus step 0 and the last step.
- parameters-only snapshots (params/<step>/, `save_params: snapshots`, the default): the params alone,
  cast to the snapshot dtype (`snapshot_dtype`), at every checkpoint step (the steps of the memorization
  snapshots), never deleted by retention, so every step an analysis reads stays exportable.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
from jax.sharding import NamedSharding, PartitionSpec

from mbc_jax import UserError, __version__
from mbc_jax.models import Model, abstract_params, export_model, load_tokenizer
from mbc_jax.models.config import config_from_hf
from mbc_jax.paths import UrlPath, as_path, fetch, orbax_dir, staged
from mbc_jax.run_folder import CHECKPOINTS, MODEL, PARAMS, weight_sources
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


# ----------------------------------------------------------------------------- which steps, which dtype


def total_steps(cfg: Any, n_train: int) -> int:
    """Micro-steps of a run of `n_train` training records: `steps`, else ceil(epochs * N / (batch * accum)) * accum."""
    return cfg.steps or math.ceil(cfg.epochs * n_train / (cfg.batch_size * cfg.grad_accum)) * cfg.grad_accum


def checkpoint_schedule(cfg: Any, n_train: int) -> list[int]:
    """The checkpoint steps of a run (memorization snapshot, param snapshot, full checkpoint): every
    `checkpoint_every` steps (0: once per epoch-equivalent, ceil(N / batch_size) steps) from 0, and the last."""
    last = total_steps(cfg, n_train)
    every = cfg.checkpoint_every or max(1, math.ceil(n_train / cfg.batch_size))
    return sorted(set(range(0, last, every)) | {last})


def snapshot_dtype(cfg: Any) -> str | None:
    """The dtype param snapshots are stored in (None: `save_params: none`): the compute dtype (`dtype`),
    or `param_dtype` when that is narrower, so a snapshot never stores more bits than the model computes
    with: bfloat16 compute -> bfloat16 snapshots (half the bytes of the float32 master weights)."""
    if cfg.save_params == "none":
        return None
    return "bfloat16" if "bfloat16" in (cfg.dtype, cfg.param_dtype) else "float32"


def tree_bytes(tree: Any, dtype: Any = None) -> int:
    """Global bytes of a tree of arrays / abstract values (each leaf in `dtype` when given)."""
    return sum(int(np.prod(x.shape)) * jnp.dtype(dtype or x.dtype).itemsize for x in jax.tree_util.tree_leaves(tree))


def disk_needed(abstract_state: dict, snapshot: str | None, keep: int, steps: int | None) -> dict:
    """Bytes this checkpoint policy writes for a run with `steps` checkpoint steps (0 and the last included;
    None: unknown, sizes per save only).

    Full train states (params, AdamW moments, counts, step): the latest `keep`, plus step 0; while the next
    one is written the oldest is still there, so the peak is min(steps, keep + 2) of them (keep + step 0 +
    the one being written), the end min(steps, keep + 1). Param snapshots: one per checkpoint step, all kept.
    The sampler's state (a few numbers per training record) and orbax's metadata (KiB) are not counted."""
    full = tree_bytes(abstract_state)
    params = tree_bytes(abstract_state["params"], snapshot) if snapshot else 0
    out = {"checkpoint_steps": steps, "keep_checkpoints": keep, "snapshot_dtype": snapshot,
           "full_state_bytes": full, "param_snapshot_bytes": params}
    if steps is not None:
        out |= {"full_states_peak": min(steps, keep + 2), "full_states_end": min(steps, keep + 1),
                "param_snapshots": steps if snapshot else 0}
        out["param_snapshots_bytes"] = out["param_snapshots"] * params
        out["peak_bytes"] = out["full_states_peak"] * full + out["param_snapshots_bytes"]
        out["end_bytes"] = out["full_states_end"] * full + out["param_snapshots_bytes"]
    return out


# ----------------------------------------------------------------------------- saving


def _barriers(prefix: str) -> ocp.options.MultiprocessingOptions:
    return ocp.options.MultiprocessingOptions(barrier_sync_key_prefix=prefix)


class Checkpoints:
    """A run's orbax saves: full checkpoints (the latest `keep`, plus step 0 (the untrained model) and the
    last step) and, unless `snapshot` is None, a parameters-only snapshot of every checkpoint step in
    that dtype (never deleted)."""

    def __init__(self, run_dir: Path | UrlPath, keep: int, total_steps: int, snapshot: str | None = None):
        # Two managers save asynchronously; across processes their barriers need distinct keys, and their
        # saves take turns (JAX collectives must not run concurrently: a shared barrier key fails with
        # "Barrier ... is already ongoing", as a 2-process run showed).
        self._multiprocess = jax.process_count() > 1
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True, keep_period=total_steps,
                                               enable_async_checkpointing=True,
                                               multiprocessing_options=_barriers("checkpoints"))
        self.manager = ocp.CheckpointManager(orbax_dir(as_path(run_dir) / CHECKPOINTS), options=options)
        self.snapshot = snapshot
        self.params = None if snapshot is None else ocp.CheckpointManager(
            orbax_dir(as_path(run_dir) / PARAMS), item_handlers=ocp.StandardCheckpointHandler(),
            options=ocp.CheckpointManagerOptions(create=True, enable_async_checkpointing=True,
                                                 cleanup_tmp_directories=True,
                                                 multiprocessing_options=_barriers("params")))
        self._cast = None
        self.seconds = 0.0

    def latest(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state: dict, sampler_state: dict[str, np.ndarray]) -> None:
        t0 = time.perf_counter()
        if self._multiprocess and self.params is not None:
            self.params.wait_until_finished()
        try:
            self.manager.save(step, args=ocp.args.Composite(
                state=ocp.args.StandardSave(state),
                sampler=ocp.args.StandardSave({k: np.asarray(v) for k, v in sampler_state.items()})))
        except OSError as e:
            raise UserError(self._failed(step, e)) from None
        self.seconds += time.perf_counter() - t0

    def save_params(self, step: int, params: Any) -> None:
        """The param snapshot of `step` (params cast to the snapshot dtype, on their shardings); nothing when
        snapshots are off or a complete one exists (written before a kill: the resumed params are the same)."""
        if self.params is None or step in self.params.all_steps():
            return
        t0 = time.perf_counter()
        dtype = jnp.dtype(self.snapshot)
        if any(x.dtype != dtype for x in jax.tree_util.tree_leaves(params)):  # cast on the devices, in place
            if self._cast is None:
                self._cast = jax.jit(lambda p: jax.tree_util.tree_map(lambda x: x.astype(dtype), p),
                                     out_shardings=jax.tree_util.tree_map(lambda x: x.sharding, params))
            params = self._cast(params)
        if self._multiprocess:
            self.manager.wait_until_finished()
        try:
            self.params.save(step, args=ocp.args.StandardSave(params))
        except OSError as e:
            raise UserError(self._failed(step, e, "param snapshot")) from None
        self.seconds += time.perf_counter() - t0

    def rewind(self, step: int) -> None:
        """On resume from the checkpoint of `step`: drops the param snapshots of later steps (written before
        the kill, after that checkpoint; they are written again), as `RunWriter.rewind` does the memorization
        snapshots."""
        if self.params is not None:
            for s in self.params.all_steps():
                if s > step:
                    self.params.delete(s)

    def restore(self, step: int, abstract_state: dict) -> tuple[dict, dict]:
        """(train state, sampler state) of `step`, onto the shardings of `abstract_state`."""
        restored = self.manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state), sampler=ocp.args.StandardRestore()))
        return restored["state"], restored["sampler"]

    def close(self, last_step: int) -> None:
        """Waits for the asynchronous saves; a failed one (disk full) is an error naming the last good step."""
        try:
            self.manager.wait_until_finished()
            if self.params is not None:
                self.params.wait_until_finished()
        except OSError as e:
            raise UserError(self._failed(last_step, e)) from None
        self.manager.close()
        if self.params is not None:
            self.params.close()

    def _failed(self, step: int, e: Exception, what: str = "checkpoint") -> str:
        good = [s for s in self.manager.all_steps() if s != step or what != "checkpoint"]
        return (f"saving the {what} of step {step} failed ({e}); the last good checkpoint is "
                f"{'step ' + str(max(good)) if good else 'none'}, and running the same command again resumes from it")


EXPORT_INFO = "export.json"  # beside config.json in an exported folder: the run and step its weights came from


def export_run(run_dir: str | Path | UrlPath, out_dir: str | Path | UrlPath, step: int | None = None
               ) -> tuple[Path | UrlPath, int]:
    """Writes a Hugging Face folder of a run's weights at `step` (default: the latest step with weights).

    Any step with a full checkpoint or a param snapshot exports (`run_folder.weight_sources`). Where both
    exist the full checkpoint is read: its float32 master weights are exact, whereas a bfloat16 param
    snapshot (bfloat16 compute) holds them rounded to bfloat16. The folder's tensors keep the dtype they
    were read in (float32 from a full checkpoint, the snapshot dtype from a snapshot); config.json's
    `dtype` says which. Returns (folder, step)."""
    run_dir = as_path(run_dir)
    if not (run_dir / MODEL / "config.json").is_file():
        raise UserError(f"{run_dir}: not a run folder (no model/config.json)")
    sources = weight_sources(run_dir)
    if not sources:
        raise UserError(f"{run_dir}: no checkpoints or param snapshots saved yet")
    step = max(sources) if step is None else step
    if step not in sources:
        raise UserError(f"{run_dir}: no weights of step {step} (no full checkpoint or param snapshot); steps with "
                        f"weights: {', '.join(map(str, sources))}")
    hf_config = json.loads((run_dir / MODEL / "config.json").read_text())
    cfg = config_from_hf(hf_config)
    mesh = make_mesh("1,1,1", jax.devices()[:1])
    abstract, shardings, module = abstract_params(cfg, mesh)
    full = sources[step].parent.name == CHECKPOINTS
    manager = ocp.CheckpointManager(orbax_dir(sources[step].parent),
                                    item_handlers=None if full else ocp.StandardCheckpointHandler())
    try:
        if full:
            target = jax.tree_util.tree_map(_sds, abstract, shardings)
            params = manager.restore(step, args=ocp.args.Composite(state=ocp.args.PyTreeRestore(
                {"params": target}, partial_restore=True)))["state"]["params"]
        else:  # restored in the dtype it was saved in
            saved = manager.item_metadata(step)
            saved = getattr(saved, "tree", saved)
            target = jax.tree_util.tree_map(lambda a, s, m: jax.ShapeDtypeStruct(a.shape, m.dtype, sharding=s),
                                            abstract, shardings, saved)
            params = manager.restore(step, args=ocp.args.StandardRestore(target))
    finally:
        manager.close()
    model = Model(cfg, hf_config, module, params, mesh, load_tokenizer(fetch(run_dir / MODEL)), str(run_dir))
    with staged(out_dir) as folder:  # a URL: written locally, then uploaded
        export_model(model, folder)
        provenance = {"run": str(run_dir), "step": step, "mbc_jax": __version__,
                      "weights": "full checkpoint" if full else "param snapshot",
                      "dtype": str(jax.tree_util.tree_leaves(params)[0].dtype)}
        (folder / EXPORT_INFO).write_text(json.dumps(provenance, indent=2) + "\n")
    return as_path(out_dir), step
