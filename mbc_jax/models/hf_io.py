"""Hugging Face checkpoint folders in and out.

In: `config.json` plus weights from `model.safetensors`, sharded safetensors
(`model.safetensors.index.json`), HF Flax `flax_model.msgpack`, or `pytorch_model.bin` (only with
torch installed). Each parameter is created straight into its sharding with
`jax.make_array_from_callback`: every device reads only its own slice from the safetensors file,
so no full replica of a large checkpoint ever sits on one device.

Out: `config.json` + `model.safetensors` (+ tokenizer files) that transformers' `from_pretrained`
loads.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable

import jax
import numpy as np
from flax import serialization
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save_file

from mbc_jax import UserError
from mbc_jax.models.config import ModelConfig
from mbc_jax.models.weight_names import BASE_PREFIXES, IGNORABLE, HFTensor, fuse, fused_part, hf_name

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "flax_model.msgpack",
                "pytorch_model.bin", "pytorch_model.bin.index.json")



# --------------------------------------------------------------------------- tensor sources


class TensorSource:
    """Named tensors that can be read by slice."""

    where: str

    def keys(self) -> Iterable[str]: ...
    def shape(self, name: str) -> tuple[int, ...]: ...
    def read(self, name: str, index: tuple[slice, ...]) -> np.ndarray: ...


def _safe_open(path: Path) -> Any:
    """safetensors' reader for `path`; a truncated or corrupt file (often a partial download) is one line."""
    try:
        return safe_open(str(path), framework="np")
    except (SafetensorError, OSError) as e:
        raise UserError(f"{path}: not a readable safetensors file ({e}); a partial download? "
                        f"fetch the file again") from None


class SafetensorsSource(TensorSource):
    def __init__(self, files: dict[str, Path], where: str):
        self.where = where
        self._handles = {f: _safe_open(f) for f in set(files.values())}
        self._file_of = files

    @classmethod
    def single(cls, path: Path) -> "SafetensorsSource":
        with _safe_open(path) as f:
            names = list(f.keys())
        return cls({n: path for n in names}, str(path))

    @classmethod
    def indexed(cls, index_path: Path) -> "SafetensorsSource":
        try:
            weight_map = json.loads(index_path.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError) as e:
            raise UserError(f"{index_path}: not a valid safetensors index (needs a 'weight_map'): {e}") from None
        files = {name: index_path.parent / fname for name, fname in weight_map.items()}
        missing = sorted({str(p) for p in files.values() if not p.is_file()})
        if missing:
            raise UserError(f"{index_path}: weight_map names missing shard files: {', '.join(missing)}")
        return cls(files, str(index_path))

    def keys(self):
        return self._file_of.keys()

    def shape(self, name):
        return tuple(self._handles[self._file_of[name]].get_slice(name).get_shape())

    def read(self, name, index):
        return self._handles[self._file_of[name]].get_slice(name)[index]


class DictSource(TensorSource):
    def __init__(self, tensors: dict[str, np.ndarray], where: str):
        self.tensors, self.where = tensors, where

    def keys(self):
        return self.tensors.keys()

    def shape(self, name):
        return tuple(self.tensors[name].shape)

    def read(self, name, index):
        return self.tensors[name][index]


def _flax_msgpack_source(path: Path) -> DictSource:
    """HF Flax checkpoints name tensors like PyTorch's but with kernel [in, out], scale, embedding."""
    tree = serialization.msgpack_restore(path.read_bytes())
    tensors: dict[str, np.ndarray] = {}

    def walk(prefix: str, node: Any) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                walk(f"{prefix}.{k}" if prefix else str(k), v)
            return
        head, _, leaf = prefix.rpartition(".")
        array = np.asarray(node)
        if leaf == "kernel":
            tensors[f"{head}.weight"] = array.T
        elif leaf in ("scale", "embedding"):
            tensors[f"{head}.weight"] = array
        else:
            tensors[prefix] = array

    walk("", tree)
    return DictSource(tensors, str(path))


def _torch_bin_source(paths: list[Path], where: str) -> DictSource:
    try:
        import torch
    except ImportError:
        raise UserError(
            f"{where}: this checkpoint has only PyTorch .bin weights and torch is not installed; either "
            f"`pip install torch`, or convert it once where torch is available: "
            f"`AutoModelForCausalLM.from_pretrained(DIR).save_pretrained(DIR, safe_serialization=True)`"
        ) from None
    tensors = {}
    for p in paths:
        for k, v in torch.load(str(p), map_location="cpu", weights_only=True).items():
            tensors[k] = (v.float() if v.dtype == torch.bfloat16 else v).numpy()
    return DictSource(tensors, where)


def open_weights(model_dir: Path) -> TensorSource:
    """The weights of a checkpoint folder, whichever format it holds."""
    if (model_dir / "model.safetensors").is_file():
        return SafetensorsSource.single(model_dir / "model.safetensors")
    if (model_dir / "model.safetensors.index.json").is_file():
        return SafetensorsSource.indexed(model_dir / "model.safetensors.index.json")
    if (model_dir / "flax_model.msgpack").is_file():
        return _flax_msgpack_source(model_dir / "flax_model.msgpack")
    if (model_dir / "pytorch_model.bin").is_file():
        return _torch_bin_source([model_dir / "pytorch_model.bin"], str(model_dir / "pytorch_model.bin"))
    index = model_dir / "pytorch_model.bin.index.json"
    if index.is_file():
        files = sorted({model_dir / f for f in json.loads(index.read_text())["weight_map"].values()})
        return _torch_bin_source(files, str(index))
    raise UserError(f"{model_dir}: no weights found (looked for {', '.join(WEIGHT_FILES)})")


# --------------------------------------------------------------------------- load


def _resolver(available: set[str]):
    """HF name -> the name this checkpoint uses: as is, or without the base model's prefix."""

    def resolve(name: str) -> str:
        if name in available:
            return name
        for prefix in BASE_PREFIXES:
            if name.startswith(prefix) and name[len(prefix):] in available:
                return name[len(prefix):]
        return name

    return resolve


def load_params(cfg: ModelConfig, source: TensorSource, abstract: Any, shardings: Any) -> Any:
    """Reads every parameter of `abstract` (a tree of ShapeDtypeStruct) into its sharding.

    Checks every tensor's presence and shape first, and that the checkpoint holds nothing the
    config does not account for, so a config that contradicts the weights is one clear error.
    """
    available = set(source.keys())
    resolve = _resolver(available)
    used: set[str] = set()
    plan = []
    for path, leaf in jax.tree_util.tree_flatten_with_path(abstract)[0]:
        t = hf_name(cfg, tuple(k.key for k in path))
        shape = tuple(leaf.shape[1:] if t.stacked else leaf.shape)
        if t.part is not None:  # the fused tensor holds q, k and v
            shape = (*shape[:-1], 3 * shape[-1])
        want = shape[::-1] if t.transposed else shape
        for i in range(cfg.num_layers) if t.stacked else [None]:
            name = resolve(t.template.format(i=i))
            if name not in available:
                raise UserError(f"{source.where}: tensor {name} is missing (the config needs it, shape {want})")
            got = source.shape(name)
            if got != want:
                raise UserError(
                    f"{source.where}: tensor {name} has shape {got} but the config implies {want}; "
                    f"does config.json belong to these weights?"
                )
            used.add(name)
        plan.append((t, leaf))
    extra = sorted(n for n in available - used if not IGNORABLE.match(n) and
                   not (n == "lm_head.weight" and cfg.tie_word_embeddings))
    if extra:
        shown = ", ".join(extra[:5]) + (f" and {len(extra) - 5} more" if len(extra) > 5 else "")
        raise UserError(
            f"{source.where}: the config does not account for {len(extra)} tensor(s) in the checkpoint: {shown} "
            f"(config.json says {cfg.num_layers} layers; does it belong to these weights?)"
        )

    def load_leaf(t: HFTensor, leaf, sharding):
        def read(name, index):
            name = resolve(name)
            if t.part is not None:  # the whole fused tensor (one layer's), then our part of it
                whole = np.asarray(source.read(name, (slice(None),) * len(source.shape(name))))
                return fused_part(whole.T if t.transposed else whole, t)[index]
            if t.transposed:
                return np.asarray(source.read(name, tuple(index[::-1]))).T
            return np.asarray(source.read(name, tuple(index)))

        def callback(index):
            index = tuple(index) + (slice(None),) * (len(leaf.shape) - len(index))
            if not t.stacked:
                return read(t.template, index).astype(leaf.dtype)
            layer_ids = range(cfg.num_layers)[index[0]]
            return np.stack([read(t.template.format(i=i), index[1:]) for i in layer_ids]).astype(leaf.dtype)

        return jax.make_array_from_callback(leaf.shape, sharding, callback)

    flat_shardings = jax.tree_util.tree_leaves(shardings)
    arrays = [load_leaf(t, leaf, s) for (t, leaf), s in zip(plan, flat_shardings)]
    return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(abstract), arrays)


# --------------------------------------------------------------------------- export


def params_to_hf(cfg: ModelConfig, params: Any) -> dict[str, np.ndarray]:
    """Our parameter tree -> {HF tensor name: numpy array} (gathered to the host)."""
    out: dict[str, np.ndarray] = {}
    fused: dict[str, tuple[HFTensor, dict[int, np.ndarray]]] = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        t = hf_name(cfg, tuple(k.key for k in path))
        array = np.asarray(jax.device_get(leaf))
        for i, a in enumerate(array if t.stacked else [array]):
            name = t.template.format(i=i)
            if t.part is not None:
                fused.setdefault(name, (t, {}))[1][t.part] = a
            else:
                out[name] = np.ascontiguousarray(a.T if t.transposed else a)
    for name, (t, parts) in fused.items():
        whole = fuse([parts[p] for p in range(3)], t)
        out[name] = np.ascontiguousarray(whole.T if t.transposed else whole)
    return out


def save_safetensors(tensors: dict[str, np.ndarray], out_dir: Path, max_shard_bytes: int = 5 * 2**30) -> None:
    """`model.safetensors`, or shards plus `model.safetensors.index.json` past `max_shard_bytes`."""
    total = sum(a.nbytes for a in tensors.values())
    if total <= max_shard_bytes:
        save_file(tensors, str(out_dir / "model.safetensors"), metadata={"format": "pt"})
        return
    shards: list[dict[str, np.ndarray]] = [{}]
    size = 0
    for name in sorted(tensors):
        if shards[-1] and size + tensors[name].nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = tensors[name]
        size += tensors[name].nbytes
    weight_map = {}
    for k, shard in enumerate(shards):
        fname = f"model-{k + 1:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, str(out_dir / fname), metadata={"format": "pt"})
        weight_map.update({name: fname for name in shard})
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (out_dir / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
