"""One device mesh with named axes (data, fsdp, tensor) and the logical-axis rules onto it.

Parameters and activations are annotated with *logical* axis names (`embed`, `heads`, `mlp`,
`vocab`, `batch`, ...); `RULES` maps each onto mesh axes, so changing the parallelism layout is a
change of this table, never of the model code. A dimension that a mesh axis does not divide is
left unsharded (replicated) except the attention heads and the MLP width, whose split the tensor
axis must divide: that is a clear error, raised before anything is compiled.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import jax
import numpy as np
from flax import linen as nn
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from mbc_jax import UserError

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")

RULES: tuple[tuple[str, Any], ...] = (
    # parameters
    ("vocab", "tensor"),
    ("embed", "fsdp"),
    ("heads", "tensor"),  # the flat heads * head_dim dimension of q/k/v/out projections
    ("mlp", "tensor"),
    ("layers", None),
    ("positions", None),
    ("norm", None),
    # activations
    ("batch", BATCH_AXES),
    ("length", None),
    ("act_embed", None),
    ("act_heads", "tensor"),
    ("act_mlp", "tensor"),
    ("act_vocab", "tensor"),
)
MUST_DIVIDE = ("heads", "mlp")  # splitting these unevenly would cut through heads / neurons


def parse_mesh(spec: str | Sequence[int] | None) -> tuple[int, int, int]:
    """`"D,F,T"` -> (D, F, T); `None` -> (-1, 1, 1): all devices on data."""
    if spec is None or spec == "":
        return (-1, 1, 1)
    if isinstance(spec, str):
        parts = [p.strip() for p in spec.split(",")]
        try:
            dims = tuple(int(p) for p in parts)
        except ValueError:
            raise UserError(f"--mesh: expected three integers D,F,T (e.g. 2,2,2 or -1,1,1), got {spec!r}") from None
    else:
        dims = tuple(int(d) for d in spec)
    if len(dims) != 3 or any(d == 0 or d < -1 for d in dims) or dims.count(-1) > 1:
        raise UserError(f"--mesh: expected D,F,T with positive sizes and at most one -1, got {spec!r}")
    return dims  # type: ignore[return-value]


def make_mesh(spec: str | Sequence[int] | None = None, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """Builds the (data, fsdp, tensor) mesh; a -1 axis takes the devices the others leave.

    Sizes whose product is below the device count use the first devices (e.g. `1,1,1`: one device).
    """
    dims = list(parse_mesh(spec))
    devices = list(devices if devices is not None else jax.devices())
    n = len(devices)
    known = math.prod(d for d in dims if d != -1)
    if -1 in dims:
        if n % known:
            raise UserError(f"--mesh {','.join(map(str, dims))}: {n} devices are not divisible by {known}")
        dims[dims.index(-1)] = n // known
    if -1 not in dims and math.prod(dims) < n:
        devices, n = devices[: math.prod(dims)], math.prod(dims)  # an explicit smaller mesh: the first devices
    if math.prod(dims) != n:
        raise UserError(
            f"--mesh {','.join(map(str, dims))}: needs {math.prod(dims)} devices but {n} are available "
            f"(use -1 for one axis to take the rest)"
        )
    return Mesh(np.asarray(devices).reshape(dims), MESH_AXES)


def mesh_str(mesh: Mesh) -> str:
    return " x ".join(f"{name}={size}" for name, size in mesh.shape.items())


def _axis_size(mesh: Mesh, axes: Any) -> int:
    if axes is None:
        return 1
    if isinstance(axes, str):
        return mesh.shape[axes]
    return math.prod(mesh.shape[a] for a in axes)


def spec_for(logical: Sequence[str | None], shape: Sequence[int], mesh: Mesh, what: str = "array") -> P:
    """PartitionSpec for an array with these logical axes and this shape on `mesh`."""
    rules = dict(RULES)
    out: list = []
    used: set[str] = set()
    for name, size in zip(logical, shape):
        axes = rules.get(name) if name is not None else None
        if axes is not None and size % _axis_size(mesh, axes):
            if name in MUST_DIVIDE:
                raise UserError(
                    f"mesh {mesh_str(mesh)} does not divide the model: {what} has {size} along '{name}', "
                    f"not divisible by {_axis_size(mesh, axes)} (mesh axes {axes}); "
                    "choose a tensor size that divides it"
                )
            axes = None  # replicate this dimension rather than shard it unevenly
        names = (axes,) if isinstance(axes, str) else tuple(axes or ())
        if any(a in used for a in names):
            axes = None  # a mesh axis shards at most one dimension
        used.update(names if axes is not None else ())
        out.append(axes)
    return P(*out)


def named_sharding(
    mesh: Mesh, logical: Sequence[str | None], shape: Sequence[int], what: str = "array"
) -> NamedSharding:
    return NamedSharding(mesh, spec_for(logical, shape, mesh, what))


def tree_shardings(abstract_boxed: Any, mesh: Mesh) -> Any:
    """NamedShardings for a tree of `nn.LogicallyPartitioned` abstract values (from `jax.eval_shape(init)`)."""

    def one(path, leaf):
        if isinstance(leaf, nn.LogicallyPartitioned):
            shape = leaf.value.shape
            return named_sharding(mesh, leaf.names, shape, jax.tree_util.keystr(path))
        return NamedSharding(mesh, P())

    return jax.tree_util.tree_map_with_path(
        one, abstract_boxed, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned)
    )


def constrain(x: jax.Array, mesh: Mesh | None, logical: Sequence[str | None]) -> jax.Array:
    """`with_sharding_constraint` by logical axes; a no-op without a mesh."""
    if mesh is None:
        return x
    return jax.lax.with_sharding_constraint(x, named_sharding(mesh, logical, x.shape))


def batch_sharding(mesh: Mesh, ndim: int = 2) -> NamedSharding:
    """Leading dimension over (data, fsdp), the rest replicated."""
    return NamedSharding(mesh, P(BATCH_AXES, *([None] * (ndim - 1))))


def batch_divisor(mesh: Mesh) -> int:
    """A global batch's leading size must be a multiple of this."""
    return _axis_size(mesh, BATCH_AXES)


def per_device_bytes(tree: Any) -> dict[str, int]:
    """Bytes of `tree` (jax arrays or ShapeDtypeStructs with shardings) on each device: {device: bytes}."""
    out: dict[str, int] = {}
    for leaf in jax.tree_util.tree_leaves(tree):
        sharding = leaf.sharding
        itemsize = np.dtype(leaf.dtype).itemsize
        for device, index in sharding.devices_indices_map(leaf.shape).items():
            n = math.prod(
                len(range(*s.indices(dim))) for s, dim in zip(index, leaf.shape)
            ) if leaf.shape else 1
            out[str(device)] = out.get(str(device), 0) + n * itemsize
    return out
