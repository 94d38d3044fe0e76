"""Self-attention: projections, optional per-head q/k norm and RoPE, grouped-query heads, the mask
(segments, causality, windows) and the two ways of computing it without a KV cache.

Grouped-query attention: query head h reads key/value head h // (num_heads / num_kv_heads), as
transformers' `repeat_kv`; keys and values are never repeated, so the KV cache holds only the
`num_kv_heads` heads and the tensor axis splits the key/value heads (with their query groups).
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
from mbc_jax.models.layers import LayerNorm, Linear, dropout, inverse_frequencies, rotary, train_dropout
from mbc_jax.sharding import constrain

Array = jax.Array
# A KV cache (`transformer.init_cache`): k, v: one [B, KV heads, S, D] array per layer (separate buffers, so a
# decode step writes one slot of each in place and reads it without slicing a stacked array); pos, seg: [B, S];
# index: [] (next slot to write). `Attention` sees one layer's {k, v, pos, seg, index}.
Cache = dict[str, Any]

NEG_INF = float(jnp.finfo(jnp.float32).min)
ATTENTION_PROBS = "attention_probs"  # name of the sown attention probabilities in the "intermediates" collection


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
    def __call__(self, x, pos, seg, window, scale, cache: Cache | None = None):
        """`window`, `scale`: this layer's attention window and query scale (scanned per layer). With `cache`
        (this layer's, see `Cache`) returns (out, {"k", "v"}: the cache with this call's tokens written)."""
        cfg = self.cfg
        b, t, e = x.shape
        d = cfg.head_dim

        def proj(name, heads):
            y = Linear(heads * d, ("embed", "heads"), cfg.qkv_bias, cfg, name=name)(x)
            return constrain(y.reshape(b, t, heads, d), self.mesh, ("batch", "length", "act_heads", None))

        q, k, v = proj("q", cfg.num_heads), proj("k", cfg.num_kv_heads), proj("v", cfg.num_kv_heads)
        if cfg.qk_norm:
            q, k = LayerNorm(cfg, name="q_norm")(q), LayerNorm(cfg, name="k_norm")(k)
        if cfg.positions == "rotary":
            inv_freq = inverse_frequencies(cfg)
            q, k = rotary(q, pos, inv_freq), rotary(k, pos, inv_freq)
        if cfg.attention_scale or cfg.scale_by_inverse_layer:
            q = q * scale.astype(q.dtype)
        if cache is not None:  # write this call's keys/values at cache["index"] (in place), attend over the cache
            i, cache_pos, cache_seg = cache["index"], cache["pos"], cache["seg"]
            k, v = (jax.lax.dynamic_update_slice(cache[n], new.astype(cache[n].dtype).transpose(0, 2, 1, 3),
                                                 (0, 0, i, 0)) for n, new in (("k", k), ("v", v)))
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
            out = cached_attention(q, k, v, pos, seg, cache_pos, cache_seg, window, drop, record)
        out = Linear(e, ("heads", "embed"), cfg.out_bias, cfg, name="o")(out.reshape(b, t, cfg.num_heads * d))
        return train_dropout(self, out, cfg.resid_dropout), cache


def causal_attention(q, k, v, pos, seg, window, block: int = 128, per_head: bool = False,
                     drop: tuple[Array, float] | None = None, record: Callable[[Array], Any] | None = None):
    """Attention without a KV cache, where every record's tokens lie in position order along the row.

    q [B, T, H, D]; k, v [B, T, KV, D] with KV dividing H (grouped-query attention).

    Causal block skipping: query block i only needs keys [0, (i+1) * block), so at T = 512 with
    blocks of 128 only 10/16 of the score matrix is computed (the skipped entries would be masked
    to exactly zero). `per_head` loops over key/value heads (each with its group of query heads) with
    `lax.map` so that one head's scores for the whole batch stay in cache between the matmul, the
    mask, the softmax and the second matmul: on CPU this halves attention time; accelerators prefer
    one batched einsum.

    `drop = (key, rate)` applies dropout to the attention probabilities (training); each query block
    (and key/value head, per head) draws its mask from its own fold of `key`.

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
    b, _, h, d = q.shape
    kv = k.shape[2]
    groups = q.reshape(b, t, kv, h // kv, d).transpose(2, 0, 1, 3, 4)  # [KV, B, T, G, D]
    heads = [x.transpose(2, 0, 1, 3)[:, :, :, None] for x in (k, v)]  # [KV, B, T, 1, D]
    keys = None if drop is None else jax.random.split(key, kv)
    out = jax.lax.map(lambda xs: attend(*xs), (groups, *heads, keys))  # [KV, B, T, G, D]
    return out.transpose(1, 2, 0, 3, 4).reshape(b, t, h, d)


def _attend(q, k, v, q_pos, q_seg, k_pos, k_seg, window, drop: tuple[Array, float] | None = None,
            record: Callable[[Array], Any] | None = None):
    """Softmax attention of q [B, Tq, H, D] over k, v [B, Tk, KV, D] under `attention_mask`, query
    head h reading key/value head h // (H / KV); `drop = (key, rate)`: dropout on the probabilities;
    `record(probs)` receives the float32 probabilities [B, H, Tq, Tk] (before the cast to the compute
    dtype and before dropout)."""
    b, tq, h, d = q.shape
    kv = k.shape[2]
    mask = attention_mask(q_pos, q_seg, k_pos, k_seg, window)
    if kv == h:
        scores = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32)
    else:  # [B, KV, G, Tq, Tk]
        scores = jnp.einsum("bqhgd,bkhd->bhgqk", q.reshape(b, tq, kv, h // kv, d), k,
                            preferred_element_type=jnp.float32)
        mask = mask[:, :, None]
    probs = _masked_probs(scores, mask, v.dtype, drop, record)
    if kv == h:
        return jnp.einsum("bhqk,bkhd->bqhd", probs, v)
    return jnp.einsum("bhgqk,bkhd->bqhgd", probs, v).reshape(b, tq, h, d)


def _masked_probs(scores, mask, dtype, drop: tuple[Array, float] | None, record: Callable[[Array], Any] | None):
    """softmax of the masked float32 scores [B, KV, (G,) Tq, Tk] (recorded as [B, H, Tq, Tk] when asked), in
    `dtype`, with attention dropout when `drop` is (rng, rate)."""
    probs = jax.nn.softmax(jnp.where(mask, scores, NEG_INF), axis=-1)
    if record is not None:
        b, tq, tk = probs.shape[0], probs.shape[-2], probs.shape[-1]
        record(probs.reshape(b, -1, tq, tk))
    probs = probs.astype(dtype)
    if drop is not None:
        probs = dropout(probs, drop[1], drop[0])
    return probs


def cached_attention(q, k, v, q_pos, q_seg, k_pos, k_seg, window, drop: tuple[Array, float] | None = None,
                     record: Callable[[Array], Any] | None = None):
    """Attention of q [B, Tq, H, D] over a KV cache k, v [B, KV, S, D] (the cache's layout: key/value heads
    ahead of the slots, so both matmuls read it as stored, with no transposed copy), masked by the slots'
    positions and segments k_pos, k_seg [B, S] (unwritten slots have segment 0). Same function as `_attend`."""
    b, tq, h, d = q.shape
    kv = k.shape[1]
    mask = attention_mask(q_pos, q_seg, k_pos, k_seg, window)[:, :, None]  # [B, 1, 1, Tq, S]
    q = q.reshape(b, tq, kv, h // kv, d).transpose(0, 2, 3, 1, 4)  # [B, KV, G, Tq, D]: a small copy
    scores = jnp.einsum("bhgqd,bhkd->bhgqk", q, k, preferred_element_type=jnp.float32)
    probs = _masked_probs(scores, mask, v.dtype, drop, record)
    out = jnp.einsum("bhgqk,bhkd->bhgqd", probs, v)
    return out.transpose(0, 3, 1, 2, 4).reshape(b, tq, h, d)
