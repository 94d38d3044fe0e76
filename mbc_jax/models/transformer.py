"""The Flax (Linen) decoder shared by every family (GPT-Neo, OPT, GPT-2, GPT-NeoX, Llama, Mistral, Qwen).

Layers are stacked and run under `nn.scan` (one compiled layer body, fast compiles at any depth);
each layer's attention window and query scale are scanned inputs, so any pattern of global and
local layers (and GPT-2's per-layer scaling) runs in the same scan. Attention is masked by segment
ids and positions, which covers a right-padded batch (segment 0 = padding), several records packed
into one row (attention never crosses a segment boundary; positions, learned or rotary, restart
per record) and a KV cache for decoding (unwritten cache slots have segment 0).

The parts live in `layers.py` (linear, norms, MLP, RoPE) and `attention.py`; the family
differences are `ModelConfig` fields.

The attention probabilities of every layer can be read out: `apply(..., mutable=["intermediates"])`
makes each layer `sow` them, and `sown_attention_probs` picks them from the returned collection. It is
opt-in: without that `mutable`, `sow` does nothing and the program is the same as without the hook.

Every parameter carries logical axis names (see `mbc_jax.sharding.RULES`).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn
from jax.sharding import Mesh

from mbc_jax.models.attention import ATTENTION_PROBS, Attention, Cache, attention_mask, causal_attention
from mbc_jax.models.config import ModelConfig
from mbc_jax.models.layers import LayerNorm, Linear, Mlp, dropout, normal, train_dropout
from mbc_jax.sharding import constrain

__all__ = ["CausalLM", "Block", "init_cache", "unstack_layers", "sown_attention_probs", "layer_scales",
           "REMAT_POLICIES",
           # the parts, importable from here as before the split
           "Attention", "attention_mask", "causal_attention", "Linear", "LayerNorm", "Mlp", "dropout"]

Array = jax.Array


def layer_scales(cfg: ModelConfig) -> list[float]:
    """Each layer's query scale: head_dim ** -0.5 (or 1), and / (layer + 1) with GPT-2's
    `scale_attn_by_inverse_layer_idx`."""
    base = cfg.head_dim ** -0.5 if cfg.attention_scale else 1.0
    return [base / (i + 1) if cfg.scale_by_inverse_layer else base for i in range(cfg.num_layers)]


class Block(nn.Module):
    """One decoder layer: pre-LN (most), post-LN (OPT-350m) or pre-LN with a parallel residual (GPT-NeoX)."""

    cfg: ModelConfig
    mesh: Mesh | None = None
    deterministic: bool = True

    @nn.compact
    def __call__(self, x, pos, seg, layer, cache):
        cfg = self.cfg
        attn = Attention(cfg, self.mesh, self.deterministic, name="attn")
        mlp = Mlp(cfg, self.mesh, self.deterministic, name="mlp")
        ln_attn, ln_mlp = LayerNorm(cfg, name="ln_attn"), LayerNorm(cfg, name="ln_mlp")
        window, scale = layer["window"], layer["scale"]
        if cfg.parallel_residual:
            a, cache = attn(ln_attn(x), pos, seg, window, scale, cache)
            x = x + a + mlp(ln_mlp(x))
        elif cfg.pre_layer_norm:
            a, cache = attn(ln_attn(x), pos, seg, window, scale, cache)
            x = x + a
            x = x + mlp(ln_mlp(x))
        else:
            a, cache = attn(x, pos, seg, window, scale, cache)
            x = ln_attn(x + a)
            x = ln_mlp(x + mlp(x))
        return constrain(x, self.mesh, ("batch", "length", "act_embed")), cache


REMAT_POLICIES = {
    "full": None,  # save nothing, recompute the whole layer
    "dots": jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,
}


class CausalLM(nn.Module):
    """The causal language model of every family.

    `__call__(input_ids, positions=None, segment_ids=None)` returns logits [B, T, V] (or the final
    hidden states [B, T, word_embed_dim] with `return_hidden=True`, for chunked heads such as the
    scorer's). Defaults: positions 0..T-1, every token in segment 1. With `cache=` it returns
    `(logits, new_cache)` for incremental decoding.

    `deterministic=False` (the train step's clone) applies the config's dropout rates and needs a
    "dropout" rng: `apply(..., rngs={"dropout": key})`; every layer folds its own key.

    `apply(..., mutable=["intermediates"])` also returns every layer's attention probabilities
    (`sown_attention_probs` reads them): the float32 softmax each layer weighs its values with (before
    dropout), [layers, B, heads, T_query, T_key] (T_key: the cache length with `cache=`). While they are
    collected, attention without a cache runs as one batched einsum per layer (no per-head loop, no
    causal blocks; `attention_impl` and `attention_block` are set aside), so the probabilities are those
    of the very computation that produces the returned logits.
    """

    cfg: ModelConfig
    mesh: Mesh | None = None
    deterministic: bool = True

    def setup(self):
        cfg = self.cfg
        pdt = jnp.dtype(cfg.param_dtype)
        self.embed_tokens = self.param(
            "embed_tokens", nn.with_logical_partitioning(normal(0.02), ("vocab", "embed")),
            (cfg.vocab_size, cfg.word_embed_dim), pdt,
        )
        if cfg.positions == "learned":
            self.embed_positions = self.param(
                "embed_positions", nn.with_logical_partitioning(normal(0.02), ("positions", "embed")),
                (cfg.max_position_embeddings + cfg.position_offset, cfg.hidden_size), pdt,
            )
        if cfg.has_projection:
            self.project_in = Linear(cfg.hidden_size, (None, "embed"), False, cfg)
            self.project_out = Linear(cfg.word_embed_dim, ("embed", None), False, cfg)
        if not cfg.tie_word_embeddings:
            self.lm_head = self.param(
                "lm_head", nn.with_logical_partitioning(normal(0.02), ("embed", "vocab")),
                (cfg.word_embed_dim, cfg.vocab_size), pdt,
            )
        block = Block
        if cfg.remat != "none":
            block = nn.remat(Block, policy=REMAT_POLICIES[cfg.remat], prevent_cse=False)
        self.layers = nn.scan(
            block,
            variable_axes={"params": 0, "intermediates": 0},
            split_rngs={"params": True, "dropout": True},
            in_axes=(nn.broadcast, nn.broadcast, 0, 0),
            length=cfg.num_layers,
            metadata_params={nn.PARTITION_NAME: "layers"},
        )(cfg, self.mesh, self.deterministic)
        if cfg.final_layer_norm:
            self.ln_final = LayerNorm(cfg)

    def __call__(self, input_ids, positions=None, segment_ids=None, cache: Cache | None = None,
                 return_hidden: bool = False):
        cfg = self.cfg
        b, t = input_ids.shape
        if positions is None:
            positions = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
        if segment_ids is None:
            segment_ids = jnp.ones((b, t), jnp.int32)
        dtype = jnp.dtype(cfg.dtype)
        x = jnp.take(self.embed_tokens, input_ids, axis=0).astype(dtype)
        if cfg.has_projection:
            x = self.project_in(x)
        if cfg.positions == "learned":
            x = x + jnp.take(self.embed_positions, positions + cfg.position_offset, axis=0).astype(dtype)
        x = train_dropout(self, x, cfg.embed_dropout)
        x = constrain(x, self.mesh, ("batch", "length", "act_embed"))
        per_layer = {"window": jnp.asarray(cfg.layer_windows, jnp.int32),
                     "scale": jnp.asarray(layer_scales(cfg), jnp.float32)}
        if cache is not None:
            x, new_cache = self._cached_layers(x, positions, segment_ids, per_layer, cache)
        else:
            x, _ = self.layers(x, positions, segment_ids, per_layer, None)
        if cfg.final_layer_norm:
            x = self.ln_final(x)
        if cfg.has_projection:
            x = self.project_out(x)
        out = x if return_hidden else self.logits(x)
        return (out, new_cache) if cache is not None else out

    def _cached_layers(self, x, positions, segment_ids, per_layer, cache: Cache):
        """The layers with a KV cache: a Python loop over the layers, each reading and writing its own cache
        buffers in place (under `nn.scan` a stacked cache is sliced, copied and re-stacked at every layer of
        every decode step). Each layer's parameters are a slice of the stacked ones; a decode loop passes
        `unstack_layers(params)`, sliced once before the loop (XLA:CPU does not hoist the slices out of a
        `while_loop` by itself: they copied every weight at every step, see benchmarks/README.md)."""
        cfg = self.cfg
        i = cache["index"]
        k_pos = jax.lax.dynamic_update_slice(cache["pos"], positions.astype(jnp.int32), (0, i))
        k_seg = jax.lax.dynamic_update_slice(cache["seg"], segment_ids.astype(jnp.int32), (0, i))
        layers = self.variables["params"]["layers"]  # stacked, or a tuple of per-layer trees (`unstack_layers`)
        unstacked = isinstance(layers, (tuple, list))
        block = Block(cfg.replace(kernels_transposed=unstacked), self.mesh, self.deterministic, parent=None)
        collect = self.is_mutable_collection("intermediates")
        ks, vs, probs = [], [], []
        for n in range(cfg.num_layers):
            params = layers[n] if unstacked else jax.tree.map(lambda a: a[n], layers)  # noqa: B023
            layer = jax.tree.map(lambda a: a[n], per_layer)  # noqa: B023
            layer_cache = {"k": cache["k"][n], "v": cache["v"][n], "pos": k_pos, "seg": k_seg, "index": i}
            rngs = None if self.deterministic else {"dropout": jax.random.fold_in(self.make_rng("dropout"), n)}
            if collect:
                (x, kv), state = block.apply({"params": params}, x, positions, segment_ids, layer, layer_cache,
                                             rngs=rngs, mutable=["intermediates"])
                probs.append(state["intermediates"]["attn"][ATTENTION_PROBS][0])
            else:
                x, kv = block.apply({"params": params}, x, positions, segment_ids, layer, layer_cache, rngs=rngs)
            ks.append(kv["k"])
            vs.append(kv["v"])
        if collect:
            self.sow("intermediates", CACHED_ATTENTION_PROBS, jnp.stack(probs))
        return x, {"k": tuple(ks), "v": tuple(vs), "pos": k_pos, "seg": k_seg, "index": i + x.shape[1]}

    def logits(self, hidden: Array) -> Array:
        """LM head: hidden [..., word_embed_dim] -> logits [..., vocab] in the compute dtype."""
        dtype = jnp.dtype(self.cfg.dtype)
        if self.cfg.tie_word_embeddings:
            if hidden.ndim == 2 and hidden.shape[0] <= 64:  # a decode step: [V, E] . [rows, E], XLA:CPU's fast form
                rows = jax.lax.dot_general(self.embed_tokens.astype(dtype), hidden.astype(dtype),
                                           (((1,), (1,)), ((), ())))
                return rows.T
            return jnp.dot(hidden.astype(dtype), self.embed_tokens.astype(dtype).T)
        return jnp.dot(hidden.astype(dtype), self.lm_head.astype(dtype))

    def unembedding(self) -> Array:
        """The LM head as rows, [vocab, word_embed_dim]: the tied embedding as stored (no copy)."""
        return self.embed_tokens if self.cfg.tie_word_embeddings else self.lm_head.T


def unstack_layers(params: dict) -> dict:
    """`params` with "layers" as a tuple of per-layer trees, every Linear kernel stored [out, in] (copies: the
    layers' weights once more in memory), which `CausalLM` with a cache reads as they are. For decode loops:
    they would otherwise slice the stack at every step, and XLA:CPU multiplies a few rows by an [out, in]
    kernel 2-3x faster than by the [in, out] one (benchmarks/README.md)."""
    stacked = params["layers"]
    if isinstance(stacked, (tuple, list)):
        return params

    def layer(i):
        return jax.tree_util.tree_map_with_path(
            lambda path, a: a[i].T if getattr(path[-1], "key", None) == "kernel" else a[i], stacked)

    n = jax.tree.leaves(stacked)[0].shape[0]
    return {**params, "layers": tuple(layer(i) for i in range(n))}


CACHED_ATTENTION_PROBS = "cached_attention_probs"  # where the layer loop with a KV cache sows them


def sown_attention_probs(variables: dict) -> Array:
    """The attention probabilities [layers, B, heads, T_query, T_key] from the collections that
    `CausalLM.apply(..., mutable=["intermediates"])` returns."""
    inter = variables["intermediates"]
    if CACHED_ATTENTION_PROBS in inter:
        return inter[CACHED_ATTENTION_PROBS][0]
    return inter["layers"]["attn"][ATTENTION_PROBS][0]


def init_cache(cfg: ModelConfig, batch: int, length: int, dtype: Any = None) -> Cache:
    """An empty KV cache for `length` positions (prompt + new tokens): per layer, k and v [B, KV heads, S, D]
    (only the key/value heads), in separate buffers."""
    dtype = jnp.dtype(dtype or cfg.dtype)
    shape = (batch, cfg.num_kv_heads, length, cfg.head_dim)
    return {
        "k": tuple(jnp.zeros(shape, dtype) for _ in range(cfg.num_layers)),
        "v": tuple(jnp.zeros(shape, dtype) for _ in range(cfg.num_layers)),
        "pos": jnp.zeros((batch, length), jnp.int32),
        "seg": jnp.zeros((batch, length), jnp.int32),
        "index": jnp.zeros((), jnp.int32),
    }
