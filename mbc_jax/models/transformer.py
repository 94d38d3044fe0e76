"""The Flax (Linen) decoder shared by GPT-Neo and OPT.

Layers are stacked and run under `nn.scan` (one compiled layer body, fast compiles at any depth);
each layer's attention window is a scanned input, so any pattern of global and local layers runs
in the same scan. Attention is masked by segment ids and positions, which covers a right-padded
batch (segment 0 = padding), several records packed into one row (attention never crosses a
segment boundary; positions restart per record) and a KV cache for decoding (unwritten cache slots
have segment 0).

The attention probabilities of every layer can be read out: `apply(..., mutable=["intermediates"])`
makes each layer `sow` them, and `sown_attention_probs` picks them from the returned collection. It is
opt-in: without that `mutable`, `sow` does nothing and the program is the same as without the hook.

Every parameter carries logical axis names (see `mbc_jax.sharding.RULES`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn
from jax.sharding import Mesh

from mbc_jax.models.config import ModelConfig
from mbc_jax.sharding import constrain

Array = jax.Array
Cache = dict[str, Array]  # k, v: [L, B, S, H, D]; pos, seg: [B, S]; index: [] (next slot to write)

NEG_INF = float(jnp.finfo(jnp.float32).min)
ATTENTION_PROBS = "attention_probs"  # name of the sown attention probabilities in the "intermediates" collection


def _activation(name: str):
    return {
        "gelu_new": functools.partial(jax.nn.gelu, approximate=True),
        "gelu_fast": functools.partial(jax.nn.gelu, approximate=True),
        "gelu_pytorch_tanh": functools.partial(jax.nn.gelu, approximate=True),
        "gelu": functools.partial(jax.nn.gelu, approximate=False),
        "relu": jax.nn.relu,
        "silu": jax.nn.silu,
        "swish": jax.nn.silu,
    }[name]


def dropout(x: Array, rate: float, key: Array) -> Array:
    """Inverted dropout: each element zeroed with probability `rate`, the rest scaled by 1 / (1 - rate)."""
    keep = jax.random.bernoulli(key, 1.0 - rate, x.shape)
    return jnp.where(keep, x / jnp.asarray(1.0 - rate, x.dtype), jnp.zeros((), x.dtype))


def _train_dropout(module: nn.Module, x: Array, rate: float) -> Array:
    """`dropout` with the module's "dropout" rng when it is a training clone and `rate` is set; else x."""
    if module.deterministic or not rate:
        return x
    return dropout(x, rate, module.make_rng("dropout"))


def _normal(std: float):
    return nn.initializers.normal(stddev=std)


class Linear(nn.Module):
    features: int
    axes: tuple[str, str]
    use_bias: bool
    cfg: ModelConfig

    @nn.compact
    def __call__(self, x: Array) -> Array:
        kernel = self.param(
            "kernel",
            nn.with_logical_partitioning(_normal(0.02), self.axes),
            (x.shape[-1], self.features),
            jnp.dtype(self.cfg.param_dtype),
        )
        dtype = jnp.dtype(self.cfg.dtype)
        # As one 2-D matmul over all positions: XLA:CPU lowers the backward of a 3-D `x @ kernel`
        # (the kernel gradient contracts over batch and length at once) to a slow generic loop
        # (measured in benchmarks/README.md).
        lead = x.shape[:-1]
        y = jnp.dot(x.reshape(-1, x.shape[-1]).astype(dtype), kernel.astype(dtype)).reshape(*lead, self.features)
        if self.use_bias:
            bias = self.param(
                "bias", nn.with_logical_partitioning(nn.initializers.zeros, self.axes[1:]),
                (self.features,), jnp.dtype(self.cfg.param_dtype),
            )
            y = y + bias.astype(dtype)
        return y


class LayerNorm(nn.Module):
    cfg: ModelConfig

    @nn.compact
    def __call__(self, x: Array) -> Array:
        x32 = x.astype(jnp.float32)
        mean = x32.mean(-1, keepdims=True)
        var = jnp.square(x32 - mean).mean(-1, keepdims=True)
        y = (x32 - mean) * jax.lax.rsqrt(var + self.cfg.layer_norm_epsilon)
        if self.cfg.layer_norm_affine:
            shape, pdt = (x.shape[-1],), jnp.dtype(self.cfg.param_dtype)
            scale = self.param("scale", nn.with_logical_partitioning(nn.initializers.ones, ("norm",)), shape, pdt)
            bias = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros, ("norm",)), shape, pdt)
            y = y * scale.astype(jnp.float32) + bias.astype(jnp.float32)
        return y.astype(self.cfg.dtype)


def attention_mask(q_pos: Array, q_seg: Array, k_pos: Array, k_seg: Array, window: Array) -> Array:
    """[B, 1, Tq, Tk] bool: same non-padding segment, causal by position, within the window."""
    same = (q_seg[:, :, None] == k_seg[:, None, :]) & (k_seg[:, None, :] != 0)
    dist = q_pos[:, :, None] - k_pos[:, None, :]
    return (same & (dist >= 0) & (dist < window))[:, None]


class Attention(nn.Module):
    cfg: ModelConfig
    mesh: Mesh | None = None
    deterministic: bool = True

    @nn.compact
    def __call__(self, x, pos, seg, window, cache: Cache | None = None):
        cfg = self.cfg
        b, t, e = x.shape
        h, d = cfg.num_heads, cfg.head_dim

        def proj(name, bias):
            y = Linear(e, ("embed", "heads"), bias, cfg, name=name)(x)
            return constrain(y.reshape(b, t, h, d), self.mesh, ("batch", "length", "act_heads", None))

        q = proj("q", cfg.qkv_bias)
        if cfg.attention_scale:
            q = q * jnp.asarray(d**-0.5, q.dtype)
        k = proj("k", cfg.qkv_bias)
        v = proj("v", cfg.qkv_bias)
        k_pos, k_seg = pos, seg
        if cache is not None:  # write this step's keys/values at cache["index"], attend over the whole cache
            i = cache["index"]
            k = jax.lax.dynamic_update_slice(cache["k"], k.astype(cache["k"].dtype), (0, i, 0, 0))
            v = jax.lax.dynamic_update_slice(cache["v"], v.astype(cache["v"].dtype), (0, i, 0, 0))
            k_pos, k_seg = cache["pos"], cache["seg"]
            cache = {"k": k, "v": v}
        k = k.astype(q.dtype)
        drop = None
        if not self.deterministic and cfg.attention_dropout:
            drop = (self.make_rng("dropout"), cfg.attention_dropout)
        # Collecting the probabilities (the caller made "intermediates" mutable) takes one score matrix
        # per layer, batched over heads: the per-head loop and the causal blocks never hold it whole.
        collect = self.is_mutable_collection("intermediates")
        record = functools.partial(self.sow, "intermediates", ATTENTION_PROBS) if collect else None
        if cache is None:
            per_head = not collect and (cfg.attention_impl == "per_head" or (
                cfg.attention_impl == "auto" and jax.default_backend() == "cpu"
                and (self.mesh is None or self.mesh.shape.get("tensor", 1) == 1)))
            block = 0 if collect else cfg.attention_block
            out = causal_attention(q, k, v, pos, seg, window, block, per_head, drop, record)
        else:
            out = _attend(q, k, v, pos, seg, k_pos, k_seg, window, drop, record)
        out = Linear(e, ("heads", "embed"), cfg.out_bias, cfg, name="o")(out.reshape(b, t, e))
        return _train_dropout(self, out, cfg.resid_dropout), cache


def causal_attention(q, k, v, pos, seg, window, block: int = 128, per_head: bool = False,
                     drop: tuple[Array, float] | None = None, record: Callable[[Array], Any] | None = None):
    """Attention without a KV cache, where every record's tokens lie in position order along the row.

    Causal block skipping: query block i only needs keys [0, (i+1) * block), so at T = 512 with
    blocks of 128 only 10/16 of the score matrix is computed (the skipped entries would be masked
    to exactly zero). `per_head` loops over heads with `lax.map` so that one head's scores for the
    whole batch stay in cache between the matmul, the mask, the softmax and the second matmul: on
    CPU this halves attention time; accelerators prefer one batched einsum.

    `drop = (key, rate)` applies dropout to the attention probabilities (training); each query block
    (and head, per head) draws its mask from its own fold of `key`.

    `record(probs)` receives the probabilities [B, H, T, T]; only with one score matrix (no blocks,
    no per-head loop), since it sees them whole.
    """
    t = q.shape[1]
    if record is not None and (per_head or (block and t > block and t % block == 0)):
        raise ValueError("record needs one score matrix: block=0 (or T <= block) and per_head=False")

    def attend(q, k, v, key):
        fold = lambda i: None if drop is None else (jax.random.fold_in(key, i), drop[1])  # noqa: E731
        if not block or t <= block or t % block:
            return _attend(q, k, v, pos, seg, pos, seg, window, fold(0), record)
        return jnp.concatenate([
            _attend(q[:, i:i + block], k[:, :i + block], v[:, :i + block], pos[:, i:i + block],
                    seg[:, i:i + block], pos[:, :i + block], seg[:, :i + block], window, fold(i))
            for i in range(0, t, block)], axis=1)

    key = None if drop is None else drop[0]
    if not per_head:
        return attend(q, k, v, key)
    heads = [x.transpose(2, 0, 1, 3)[:, :, :, None] for x in (q, k, v)]  # [H, B, T, 1, D]
    keys = None if drop is None else jax.random.split(key, q.shape[2])
    out = jax.lax.map(lambda xs: attend(*xs), (*heads, keys))
    return out[:, :, :, 0].transpose(1, 2, 0, 3)


def _attend(q, k, v, q_pos, q_seg, k_pos, k_seg, window, drop: tuple[Array, float] | None = None,
            record: Callable[[Array], Any] | None = None):
    """Softmax attention of q [B, Tq, H, D] over k, v [B, Tk, H, D] under `attention_mask`;
    `drop = (key, rate)`: dropout on the probabilities; `record(probs)` receives the float32
    probabilities [B, H, Tq, Tk] (before the cast to the compute dtype and before dropout)."""
    scores = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32)
    scores = jnp.where(attention_mask(q_pos, q_seg, k_pos, k_seg, window), scores, NEG_INF)
    probs = jax.nn.softmax(scores, axis=-1)
    if record is not None:
        record(probs)
    probs = probs.astype(v.dtype)
    if drop is not None:
        probs = dropout(probs, drop[1], drop[0])
    return jnp.einsum("bhqk,bkhd->bqhd", probs, v)


class Mlp(nn.Module):
    cfg: ModelConfig
    mesh: Mesh | None = None
    deterministic: bool = True

    @nn.compact
    def __call__(self, x):
        cfg = self.cfg
        y = Linear(cfg.intermediate_size, ("embed", "mlp"), cfg.mlp_bias, cfg, name="fc_in")(x)
        y = constrain(_activation(cfg.activation)(y), self.mesh, ("batch", "length", "act_mlp"))
        y = Linear(x.shape[-1], ("mlp", "embed"), cfg.mlp_bias, cfg, name="fc_out")(y)
        return _train_dropout(self, y, cfg.resid_dropout)


class Block(nn.Module):
    """One decoder layer; pre-LN (GPT-Neo, OPT) or post-LN (OPT-350m)."""

    cfg: ModelConfig
    mesh: Mesh | None = None
    deterministic: bool = True

    @nn.compact
    def __call__(self, x, pos, seg, window, cache):
        cfg = self.cfg
        attn = Attention(cfg, self.mesh, self.deterministic, name="attn")
        mlp = Mlp(cfg, self.mesh, self.deterministic, name="mlp")
        ln_attn, ln_mlp = LayerNorm(cfg, name="ln_attn"), LayerNorm(cfg, name="ln_mlp")
        if cfg.pre_layer_norm:
            a, cache = attn(ln_attn(x), pos, seg, window, cache)
            x = x + a
            x = x + mlp(ln_mlp(x))
        else:
            a, cache = attn(x, pos, seg, window, cache)
            x = ln_attn(x + a)
            x = ln_mlp(x + mlp(x))
        return constrain(x, self.mesh, ("batch", "length", "act_embed")), cache


REMAT_POLICIES = {
    "full": None,  # save nothing, recompute the whole layer
    "dots": jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,
}


class CausalLM(nn.Module):
    """GPT-Neo / OPT causal language model.

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
            "embed_tokens", nn.with_logical_partitioning(_normal(0.02), ("vocab", "embed")),
            (cfg.vocab_size, cfg.word_embed_dim), pdt,
        )
        self.embed_positions = self.param(
            "embed_positions", nn.with_logical_partitioning(_normal(0.02), ("positions", "embed")),
            (cfg.max_position_embeddings + cfg.position_offset, cfg.hidden_size), pdt,
        )
        if cfg.has_projection:
            self.project_in = Linear(cfg.hidden_size, (None, "embed"), False, cfg)
            self.project_out = Linear(cfg.word_embed_dim, ("embed", None), False, cfg)
        if not cfg.tie_word_embeddings:
            self.lm_head = self.param(
                "lm_head", nn.with_logical_partitioning(_normal(0.02), ("embed", "vocab")),
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
        x = x + jnp.take(self.embed_positions, positions + cfg.position_offset, axis=0).astype(dtype)
        x = _train_dropout(self, x, cfg.embed_dropout)
        x = constrain(x, self.mesh, ("batch", "length", "act_embed"))
        windows = jnp.asarray(cfg.layer_windows, jnp.int32)
        if cache is not None:
            i = cache["index"]
            k_pos = jax.lax.dynamic_update_slice(cache["pos"], positions.astype(jnp.int32), (0, i))
            k_seg = jax.lax.dynamic_update_slice(cache["seg"], segment_ids.astype(jnp.int32), (0, i))
            # every layer sees the same positions/segments; broadcast them along the scan
            per_layer = {
                "k": cache["k"],
                "v": cache["v"],
                "pos": jnp.broadcast_to(k_pos, (cfg.num_layers, *k_pos.shape)),
                "seg": jnp.broadcast_to(k_seg, (cfg.num_layers, *k_seg.shape)),
                "index": jnp.broadcast_to(i, (cfg.num_layers,)),
            }
            x, new_kv = self.layers(x, positions, segment_ids, windows, per_layer)
            new_cache = {**new_kv, "pos": k_pos, "seg": k_seg, "index": i + t}
        else:
            x, _ = self.layers(x, positions, segment_ids, windows, None)
        if cfg.final_layer_norm:
            x = self.ln_final(x)
        if cfg.has_projection:
            x = self.project_out(x)
        out = x if return_hidden else self.logits(x)
        return (out, new_cache) if cache is not None else out

    def logits(self, hidden: Array) -> Array:
        """LM head: hidden [..., word_embed_dim] -> logits [..., vocab] in the compute dtype."""
        dtype = jnp.dtype(self.cfg.dtype)
        if self.cfg.tie_word_embeddings:
            return jnp.dot(hidden.astype(dtype), self.embed_tokens.astype(dtype).T)
        return jnp.dot(hidden.astype(dtype), self.lm_head.astype(dtype))

    def unembedding(self) -> Array:
        """The LM head as rows, [vocab, word_embed_dim]: the tied embedding as stored (no copy)."""
        return self.embed_tokens if self.cfg.tie_word_embeddings else self.lm_head.T


def sown_attention_probs(variables: dict) -> Array:
    """The attention probabilities [layers, B, heads, T_query, T_key] from the collections that
    `CausalLM.apply(..., mutable=["intermediates"])` returns."""
    return variables["intermediates"]["layers"]["attn"][ATTENTION_PROBS][0]


def init_cache(cfg: ModelConfig, batch: int, length: int, dtype: Any = None) -> Cache:
    """An empty KV cache for `length` positions (prompt + new tokens)."""
    dtype = jnp.dtype(dtype or cfg.dtype)
    shape = (cfg.num_layers, batch, length, cfg.num_heads, cfg.head_dim)
    return {
        "k": jnp.zeros(shape, dtype),
        "v": jnp.zeros(shape, dtype),
        "pos": jnp.zeros((batch, length), jnp.int32),
        "seg": jnp.zeros((batch, length), jnp.int32),
        "index": jnp.zeros((), jnp.int32),
    }
