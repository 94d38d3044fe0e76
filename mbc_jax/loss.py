"""The next-token loss and the position helpers it shares with the scorer.

Packed batches hold several records per row (`segment_ids`, 0 = padding). `targets` says which
positions predict a token of their own record, `segment_sums` brings per-position values back to
per-record sums, and `position_chunks` / `unchunk` cut [B, T] positions into chunks so that the LM
head never materializes float32 [B, T, V] logits. `fused_nll_loss` is the train step's loss through
the LM head, with its gradient formed in the forward pass.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def targets(batch: dict[str, jax.Array]) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(next-token ids, full-target mask, response-target mask), each [B, T].

    Position t predicts token t+1 when both lie in the same (non-padding) record; it is a response
    target when token t+1 is a response token.
    """
    ids, seg = batch["input_ids"], batch["segment_ids"]
    nxt = jnp.pad(ids[:, 1:], ((0, 0), (0, 1)))
    nxt_seg = jnp.pad(seg[:, 1:], ((0, 0), (0, 1)))
    full = (seg != 0) & (nxt_seg == seg)
    resp = full & jnp.pad(batch["response_mask"][:, 1:], ((0, 0), (0, 1)))
    return nxt, full, resp


def position_chunks(chunk: int, *arrays: jax.Array) -> list[jax.Array]:
    """[B, T, ...] arrays flattened over positions and cut into [n_chunks, c, ...] with
    c = min(chunk, B * T), the last chunk zero-padded (`unchunk` undoes it)."""
    n = arrays[0].shape[0] * arrays[0].shape[1]
    c = min(chunk, n)
    pad = -n % c
    out = []
    for a in arrays:
        flat = a.reshape(n, *a.shape[2:])
        out.append(jnp.pad(flat, ((0, pad),) + ((0, 0),) * (flat.ndim - 1)).reshape(-1, c, *a.shape[2:]))
    return out


def unchunk(chunked: jax.Array, b: int, t: int) -> jax.Array:
    """[n_chunks, c] per-position values back to [B, T] (dropping the padding)."""
    return chunked.reshape(-1)[:b * t].reshape(b, t)


def segment_sums(values: jax.Array, mask: jax.Array, seg: jax.Array, num_segments: int) -> jax.Array:
    """[B, S]: sum of `values` over positions of segment s+1 where `mask` holds."""
    onehot = (seg[:, :, None] == jnp.arange(1, num_segments + 1)[None, None, :]) & mask[:, :, None]
    return jnp.einsum("bt,bts->bs", values.astype(jnp.float32), onehot.astype(jnp.float32))


def fused_nll_loss(hidden: jax.Array, unembed: jax.Array, nxt: jax.Array, weight: jax.Array,
                   chunk: int = 1024) -> tuple[jax.Array, jax.Array]:
    """(sum over positions of weight * NLL, per-position NLL [B, T]) through the LM head, with its
    gradient computed in the forward pass.

    hidden [B, T, E]; unembed [V, E] (the LM head as rows, `CausalLM.unembedding`); nxt [B, T]
    target ids; weight [B, T] (the loss mask divided by the target count: the loss is linear in
    it). Logits go `chunk` positions at a time and are never stored: while a chunk's logits are in
    hand, d loss / d logits = weight * (softmax - onehot) is formed and turned into the chunk's
    hidden-state gradient and its share of the head gradient right away. Backward then only scales
    the stored gradients by the incoming cotangent: three head matmuls per chunk instead of the
    four (forward, recompute, two gradients) of a rematerialized chunked loss.

    The per-position NLL output is for logging (MBC's incremental refresh): it carries no gradient.
    """
    h, y, w = position_chunks(chunk, hidden, nxt, weight.astype(jnp.float32))
    loss, nll = _fused_head(h, unembed, y, w)
    return loss, unchunk(nll, *hidden.shape[:2])


def _head_pass(h, unembed, y, w, grads: bool):
    """Chunks h [C, c, E] through the head: (loss, nll [C, c]) and, with `grads`, (dh, d_unembed)."""
    rows = unembed.astype(h.dtype)

    def one(d_head, xs):
        hc, yc, wc = xs
        logits = jnp.einsum("te,ve->tv", hc, rows, preferred_element_type=jnp.float32)
        top = logits.max(-1, keepdims=True)
        ex = jnp.exp(logits - top)
        z = ex.sum(-1, keepdims=True)
        nll = (top + jnp.log(z))[:, 0] - jnp.take_along_axis(logits, yc[:, None], -1)[:, 0]
        if not grads:
            return d_head, (nll, None)
        d_logits = (ex * (wc[:, None] / z)).at[jnp.arange(yc.shape[0]), yc].add(-wc).astype(hc.dtype)
        dh = jnp.dot(d_logits, rows, preferred_element_type=jnp.float32).astype(hc.dtype)
        d_head = d_head + jnp.einsum("tv,te->ve", d_logits, hc, preferred_element_type=jnp.float32)
        return d_head, (nll, dh)

    init = jnp.zeros(unembed.shape if grads else (), jnp.float32)
    d_head, (nll, dh) = jax.lax.scan(one, init, (h, y, w))
    loss = jnp.where(w != 0, w * nll, 0.0).sum()
    return loss, nll, dh, (d_head.astype(unembed.dtype) if grads else None)


@jax.custom_vjp
def _fused_head(h, unembed, y, w):
    loss, nll, _, _ = _head_pass(h, unembed, y, w, grads=False)
    return loss, nll


def _fused_head_fwd(h, unembed, y, w):
    loss, nll, dh, d_head = _head_pass(h, unembed, y, w, grads=True)
    return (loss, nll), (dh, d_head, nll)


def _fused_head_bwd(res, cts):
    dh, d_head, nll = res
    ct = cts[0]  # the per-position NLL output is for logging: its cotangent is ignored
    y_zero = np.zeros(nll.shape, jax.dtypes.float0)  # target ids are integers
    return ct.astype(dh.dtype) * dh, ct.astype(d_head.dtype) * d_head, y_zero, ct * nll


_fused_head.defvjp(_fused_head_fwd, _fused_head_bwd)
