"""Flax causal LMs (GPT-Neo, OPT, GPT-2, GPT-NeoX/Pythia, Llama, Mistral, Qwen2, Qwen3): build, load
from and export to Hugging Face checkpoint folders.

    model = load_model("EleutherAI/gpt-neo-125m", mesh=make_mesh("2,2,2"))
    logits = model.apply(input_ids)            # jitted forward over the mesh
    export_model(model, "out/")                # a folder transformers' from_pretrained loads
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn
from huggingface_hub import snapshot_download
from jax.sharding import Mesh
from transformers import AutoTokenizer

from mbc_jax import UserError, paths
from mbc_jax.models import hf_io
from mbc_jax.models.config import SUPPORTED_MODEL_TYPES, ModelConfig, config_from_hf, load_config
from mbc_jax.models.transformer import CausalLM, init_cache, sown_attention_probs, unstack_layers
from mbc_jax.sharding import batch_divisor, batch_sharding, make_mesh, mesh_str, tree_shardings

__all__ = [
    "SUPPORTED_MODEL_TYPES", "ModelConfig", "config_from_hf", "load_config", "CausalLM", "init_cache", "unstack_layers",
    "sown_attention_probs", "Model", "abstract_params", "init_model", "load_model", "export_model", "resolve_model_dir",
]

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt",
                   "special_tokens_map.json", "sentencepiece.bpe.model", "tokenizer.model")


@dataclasses.dataclass
class Model:
    """A model ready to run: config, Flax module, sharded params, mesh and (optional) tokenizer."""

    config: ModelConfig
    hf_config: dict  # the checkpoint's config.json: written back unchanged on export
    module: CausalLM
    params: Any
    mesh: Mesh
    tokenizer: Any = None
    path: str = ""

    _forward: Any = dataclasses.field(default=None, init=False, repr=False)

    def apply(self, input_ids, positions=None, segment_ids=None, params=None):
        """Logits for a batch (numpy or jax arrays); jitted, batch sharded over (data, fsdp)."""
        if self._forward is None:
            module = self.module
            self._forward = jax.jit(lambda p, ids, pos, seg: module.apply({"params": p}, ids, pos, seg))
        rows = len(input_ids)
        pad = -rows % batch_divisor(self.mesh)  # rows must split evenly over (data, fsdp)
        shard = batch_sharding(self.mesh)
        args = [None if a is None else
                jax.device_put(np.pad(np.asarray(a, np.int32), ((0, pad), (0, 0))), shard)
                for a in (input_ids, positions, segment_ids)]
        return self._forward(self.params if params is None else params, *args)[:rows]


def abstract_params(cfg: ModelConfig, mesh: Mesh) -> tuple[Any, Any, CausalLM]:
    """(ShapeDtypeStruct tree, NamedSharding tree, module) without allocating anything."""
    tensor = mesh.shape["tensor"]
    # the tensor axis splits the key/value heads, each with its group of query heads
    for what, n in (("attention heads", cfg.num_heads), ("key/value heads", cfg.num_kv_heads),
                    ("MLP width", cfg.intermediate_size)):
        if n % tensor:
            raise UserError(
                f"mesh {mesh_str(mesh)} does not divide the model: {n} {what} "
                f"('{'heads' if 'heads' in what else 'mlp'}') "
                f"are not divisible by the tensor axis ({tensor}); use a tensor size that divides {n}"
            )
    module = CausalLM(cfg, mesh)
    dummy = jnp.zeros((1, 1), jnp.int32)
    boxed = jax.eval_shape(lambda: module.init(jax.random.PRNGKey(0), dummy))["params"]
    shardings = tree_shardings(boxed, mesh)
    abstract = nn.unbox(boxed)
    return abstract, shardings, module


def init_model(hf_config: dict, mesh: Mesh | None = None, seed: int = 0, tokenizer: Any = None,
               **runtime: Any) -> Model:
    """A randomly initialized model (normal(0.02) weights, unit LayerNorms), created sharded."""
    cfg = config_from_hf(hf_config).replace(**runtime)
    mesh = mesh or make_mesh()
    _, shardings, module = abstract_params(cfg, mesh)
    dummy = jnp.zeros((1, 1), jnp.int32)

    @jax.jit
    def init(key):
        return nn.unbox(module.init(key, dummy)["params"])

    params = jax.jit(init, out_shardings=shardings)(jax.random.PRNGKey(seed))
    return Model(cfg, dict(hf_config), module, params, mesh, tokenizer, "<random init>")


def resolve_model_dir(name_or_path: str) -> Path:
    """A local checkpoint folder, or a hub id fetched through the Hugging Face cache, or a URL (gs://...)
    fetched into a local cache (`paths.fetch`)."""
    if paths.is_url(name_or_path):
        if not paths.as_path(name_or_path).is_dir():
            raise UserError(f"{name_or_path}: no such folder")
        return paths.fetch(name_or_path)
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise UserError(f"{name_or_path}: is a file; pass the checkpoint folder that holds config.json")
    if name_or_path.count("/") > 1 or name_or_path.startswith((".", "/", "~")):
        raise UserError(f"{name_or_path}: no such folder")
    patterns = ["config.json", "generation_config.json", "*.safetensors", "model.safetensors.index.json",
                "flax_model.msgpack", *TOKENIZER_FILES]
    try:
        return Path(snapshot_download(name_or_path, allow_patterns=patterns, local_files_only=True))
    except Exception:
        pass
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false"):
        raise UserError(f"{name_or_path}: not in the local Hugging Face cache and HF_HUB_OFFLINE is set")
    try:
        return Path(snapshot_download(name_or_path, allow_patterns=patterns))
    except Exception as e:  # network errors, unknown repo, gated repo
        raise UserError(
            f"{name_or_path}: not a local folder and the Hugging Face hub could not provide it "
            f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}). Offline? Download the "
            f"checkpoint where the hub is reachable and pass its folder."
        ) from None


def load_tokenizer(model_dir: Path) -> Any:
    if not any((model_dir / f).is_file() for f in TOKENIZER_FILES):
        return None
    return AutoTokenizer.from_pretrained(str(model_dir))


def load_model(name_or_path: str, mesh: Mesh | None = None, with_tokenizer: bool = True, **runtime: Any) -> Model:
    """Loads a checkpoint folder or hub id straight into its shardings on `mesh`.

    `runtime` sets `dtype` (compute), `param_dtype` and `remat`.
    """
    model_dir = resolve_model_dir(name_or_path)
    cfg = load_config(model_dir, **runtime)
    hf_config = json.loads((model_dir / "config.json").read_text())
    mesh = mesh or make_mesh()
    abstract, shardings, module = abstract_params(cfg, mesh)
    params = hf_io.load_params(cfg, hf_io.open_weights(model_dir), abstract, shardings)
    tokenizer = load_tokenizer(model_dir) if with_tokenizer else None
    return Model(cfg, hf_config, module, params, mesh, tokenizer, str(model_dir))


def export_model(model: Model, out_dir: str | Path, params: Any = None, dtype: str | None = None) -> Path:
    """Writes config.json + model.safetensors (+ tokenizer files) that `from_pretrained` loads."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tensors = hf_io.params_to_hf(model.config, model.params if params is None else params)
    if dtype is not None:
        tensors = {k: v.astype(jnp.dtype(dtype)) for k, v in tensors.items()}
    hf_io.save_safetensors(tensors, out)
    hf_config = dict(model.hf_config)
    hf_config["dtype"] = str(next(iter(tensors.values())).dtype)
    (out / "config.json").write_text(json.dumps(hf_config, indent=2) + "\n")
    if model.tokenizer is not None:
        model.tokenizer.save_pretrained(str(out))
    return out
