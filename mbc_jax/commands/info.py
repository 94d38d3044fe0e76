"""`mbc-jax info`: what a checkpoint is and how it sits on the mesh."""

from __future__ import annotations

import argparse

import jax
import numpy as np

from mbc_jax.commands.common import add_model_args


def register(sub) -> None:
    p = sub.add_parser("info", help="architecture, parameter count, dtypes, mesh and per-device parameter bytes")
    add_model_args(p)
    p.add_argument("--random", action="store_true",
                   help="do not read the weights: build the model from config.json alone (shapes and shardings only)")
    p.set_defaults(func=run)


def describe(cfg, mesh, params) -> str:
    from mbc_jax.models.config import GLOBAL_WINDOW
    from mbc_jax.sharding import mesh_str, per_device_bytes

    kinds = ["global" if w == GLOBAL_WINDOW else f"local({w})" for w in cfg.layer_windows]
    n = sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(params))
    per_dev = per_device_bytes(params)
    lines = [
        f"model_type      {cfg.model_type}",
        f"layers          {cfg.num_layers} "
        f"({', '.join(kinds) if len(set(kinds)) > 1 else kinds[0] + ' x ' + str(len(kinds))})",
        f"hidden          {cfg.hidden_size} "
        f"(heads {cfg.num_heads} x {cfg.head_dim}"
        f"{f', {cfg.num_kv_heads} key/value heads' if cfg.num_kv_heads != cfg.num_heads else ''}, "
        f"mlp {cfg.intermediate_size}{' gated' if cfg.gated_mlp else ''}, {cfg.activation})",
        f"embeddings      vocab {cfg.vocab_size} x {cfg.word_embed_dim}, positions {cfg.max_position_embeddings}"
        f"{' (offset 2)' if cfg.position_offset else ''}"
        f"{f' (RoPE {cfg.rope_type} on {cfg.rotary_dim} dims)' if cfg.positions == 'rotary' else ''}"
        f"{', project_in/out' if cfg.has_projection else ''}"
        f"{', tied LM head' if cfg.tie_word_embeddings else ', separate LM head'}",
        f"layer norm      {cfg.norm} {'pre-LN' if cfg.pre_layer_norm else 'post-LN'}"
        f"{' + final LN' if cfg.final_layer_norm else ', no final LN'}"
        f"{', parallel residual' if cfg.parallel_residual else ''}{', q/k norm' if cfg.qk_norm else ''}",
        f"parameters      {n:,} ({n / 1e6:.1f}M)",
        f"dtypes          params {cfg.param_dtype}, compute {cfg.dtype}",
        f"mesh            {mesh_str(mesh)} ({mesh.devices.size} {jax.devices()[0].platform} devices)",
        f"param bytes     {min(per_dev.values()) / 2**20:.1f} - {max(per_dev.values()) / 2**20:.1f} MiB per device "
        f"({sum(per_dev.values()) / 2**20:.1f} MiB over all devices)",
    ]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from mbc_jax.models import abstract_params, load_config, resolve_model_dir
    from mbc_jax.sharding import make_mesh

    if args.random:
        cfg = load_config(resolve_model_dir(args.model), dtype=args.dtype, param_dtype=args.param_dtype)
        mesh = make_mesh(args.mesh)
        abstract, shardings, _ = abstract_params(cfg, mesh)
        params = jax.tree_util.tree_map(
            lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings)
    else:
        from mbc_jax.commands.common import load_model_from_args

        model = load_model_from_args(args, with_tokenizer=False)
        cfg, mesh, params = model.config, model.mesh, model.params
    print(f"checkpoint      {args.model}")
    print(describe(cfg, mesh, params))
    return 0
