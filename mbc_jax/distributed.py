"""Several processes (hosts) as one JAX job: joining it, and moving batches and results across it.

    initialize()                      # once, before any JAX computation; a no-op for one process
    arrays = put_batch(batch, batch_sharding(mesh))   # each host supplies only the rows it owns
    sums = gather(out)                # per-record results, whole, on every host (numpy)
    if is_main(): write(...)          # only process 0 writes logs and run files

When is there more than one process? `JAX_NUM_PROCESSES` > 1 (with `JAX_COORDINATOR_ADDRESS` and
`JAX_PROCESS_ID`, the names `tpu_setup/README.md` documents for several GPU machines), or a
cluster JAX detects by itself with more than one process: a TPU pod slice, SLURM (`srun`), Open
MPI (`mpirun`). Every process computes the same host-side plan (packing, sampler draws: pure
functions of the data, seed and step), then feeds only its own rows of each global batch; the
rows a process owns are those its devices hold under the batch sharding (contiguous, process by
process, for the (data, fsdp, tensor) mesh over `jax.devices()`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from typing import Any, Iterator

import jax
import numpy as np
from jax.experimental import multihost_utils

from mbc_jax import UserError

ENV_ADDRESS, ENV_COUNT, ENV_ID = "JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"


def _env_int(name: str) -> int | None:
    text = os.environ.get(name, "").strip()
    if not text:
        return None
    try:
        return int(text)
    except ValueError:
        raise UserError(f"{name}={text!r}: expected an integer") from None


def _cluster_process_count() -> int:
    """Processes of a cluster JAX auto-detects (TPU pod slice, SLURM, Open MPI, ...); 1 if none."""
    try:
        from jax._src.clusters import ClusterEnv  # the detection `jax.distributed.initialize()` itself runs
    except ImportError:  # pragma: no cover - a JAX without it: fall back to the common variables
        return max(_env_int("SLURM_NTASKS") or 1, _env_int("OMPI_COMM_WORLD_SIZE") or 1)
    for env in ClusterEnv._cluster_types:
        try:
            if not env.opt_in_only_method and env.is_env_present():
                return int(env.get_process_count() or 1)
        except Exception:  # a half-configured environment: treat as a single process
            continue
    return 1


def initialize() -> bool:
    """Joins the multi-process job when there is one; returns whether JAX is now distributed.

    Idempotent. Must run before the first JAX computation (the CLI calls it first thing).
    """
    if jax.distributed.is_initialized():
        return True
    count = _env_int(ENV_COUNT)
    if count is not None:
        if count <= 1:
            return False
        address, pid = os.environ.get(ENV_ADDRESS, "").strip(), _env_int(ENV_ID)
        if not address or pid is None:
            raise UserError(f"{ENV_COUNT}={count} needs {ENV_ADDRESS} (host 0's address:port) and {ENV_ID} "
                            f"(0..{count - 1}) on every process; see tpu_setup/README.md")
        if not 0 <= pid < count:
            raise UserError(f"{ENV_ID}={pid}: must be in 0..{count - 1} ({ENV_COUNT}={count})")
        jax.distributed.initialize(coordinator_address=address, num_processes=count, process_id=pid)
        return True
    if _cluster_process_count() > 1:
        jax.distributed.initialize()  # JAX reads the coordinator, count and id from the cluster
        return True
    return False


def is_main() -> bool:
    """Process 0: the one that writes logs, run files and figures."""
    return jax.process_index() == 0


def barrier(name: str) -> None:
    """Waits until every process gets here (a no-op for one process)."""
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)


@contextlib.contextmanager
def main_first(name: str) -> Iterator[None]:
    """Process 0 runs the block first (e.g. writes shared files), then the others run it."""
    if not is_main():
        barrier(name)
    try:
        yield
    finally:
        if is_main():
            barrier(name)


def local_rows(sharding: jax.sharding.Sharding, shape: tuple[int, ...]) -> slice:
    """The rows (leading dimension) of a global array of `shape` this process's devices hold."""
    rows = shape[0]
    if jax.process_count() == 1:
        return slice(0, rows)
    ranges = sorted({index[0].indices(rows)[:2] for device, index in sharding.devices_indices_map(tuple(shape)).items()
                     if device.process_index == jax.process_index()})
    lo, hi = ranges[0][0], ranges[-1][1]
    covered = sum(b - a for a, b in ranges)
    if covered != hi - lo or any(b > c for (_, b), (c, _) in zip(ranges, ranges[1:])):
        raise UserError(f"this process's devices hold rows {ranges} of the batch, not one contiguous range; "
                        f"order the mesh's devices by process")
    return slice(lo, hi)


def host_local_array(local: np.ndarray, sharding: jax.sharding.Sharding, global_shape: tuple[int, ...]) -> jax.Array:
    """A global array from this process's rows `local` (the whole array when there is one process)."""
    if jax.process_count() == 1:
        return jax.device_put(local, sharding)
    return jax.make_array_from_process_local_data(sharding, np.asarray(local), global_shape)


def put_batch(batch: Any, sharding: jax.sharding.Sharding) -> dict[str, jax.Array]:
    """{field: global array} from a host-side batch dataclass whose fields are [rows, ...] arrays.

    Every process holds the same (global) batch plan; each feeds only the rows its devices own.
    """
    fields = {f.name: np.asarray(getattr(batch, f.name)) for f in dataclasses.fields(batch)}
    return {name: host_local_array(a[local_rows(sharding, a.shape)], sharding, a.shape) for name, a in fields.items()}


def gather(tree: Any) -> Any:
    """Numpy copies of a tree of (possibly multi-host sharded) arrays, whole on every process."""
    if jax.process_count() == 1:
        return jax.tree_util.tree_map(np.asarray, tree)
    return multihost_utils.process_allgather(tree, tiled=True)
