"""mbc_jax/models/layers.py and attention.py against independent numpy: RoPE frequencies (default,
linear, llama3) and rotation, RMSNorm, and grouped-query attention."""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np

from mbc_jax.models import config_from_hf
from mbc_jax.models.attention import _attend
from mbc_jax.models.layers import inverse_frequencies, rotary

LLAMA = dict(model_type="llama", vocab_size=64, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, intermediate_size=48, max_position_embeddings=64)


def _llama3_by_hand(theta, dim, factor, low, high, old):
    """Llama 3.1's frequency rule, one frequency at a time in float64 (Meta's reference code)."""
    out = []
    for i in range(0, dim, 2):
        freq = 1.0 / theta ** (i / dim)
        wavelen = 2 * math.pi / freq
        if wavelen < old / high:
            out.append(freq)
        elif wavelen > old / low:
            out.append(freq / factor)
        else:
            smooth = (old / wavelen - low) / (high - low)
            out.append((1 - smooth) * freq / factor + smooth * freq)
    return np.asarray(out)


def test_inverse_frequencies_default_linear_llama3():
    cfg = config_from_hf(dict(LLAMA, rope_parameters=dict(rope_theta=500.0)))
    np.testing.assert_allclose(inverse_frequencies(cfg), 500.0 ** -(np.arange(0, 16, 2) / 16), rtol=1e-6)
    linear = config_from_hf(dict(LLAMA, rope_parameters=dict(rope_type="linear", rope_theta=500.0, factor=4.0)))
    np.testing.assert_allclose(inverse_frequencies(linear), 500.0 ** -(np.arange(0, 16, 2) / 16) / 4, rtol=1e-6)
    # original context 64: wavelengths 2pi ... 2pi x 1e4^(14/16) fall in all three bands
    llama3 = config_from_hf(dict(LLAMA, rope_parameters=dict(rope_type="llama3", rope_theta=1e4, factor=8.0,
                                                             low_freq_factor=1.0, high_freq_factor=4.0,
                                                             original_max_position_embeddings=64)))
    want = _llama3_by_hand(1e4, 16, 8.0, 1.0, 4.0, 64)
    base = 1e4 ** -(np.arange(0, 16, 2) / 16)
    assert (want == base).any() and (want == base / 8).any() and ((want != base) & (want != base / 8)).any()
    np.testing.assert_allclose(inverse_frequencies(llama3), want, rtol=1e-6)


def test_rotary_rotates_pairs_i_and_i_plus_half_and_passes_the_rest():
    """As complex numbers z_i = x_i + 1j x_{i+half}, RoPE multiplies z_i by exp(1j pos freq_i)."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 5, 3, 10)).astype(np.float32)
    pos = np.array([[0, 1, 2, 3, 4], [7, 0, 1, 9, 2]])
    inv = np.array([1.0, 0.1, 0.01], np.float32)  # rotates the first 6 of 10 dims
    got = np.asarray(rotary(jnp.asarray(x), jnp.asarray(pos), inv))
    z = (x[..., :3] + 1j * x[..., 3:6]) * np.exp(1j * pos[:, :, None, None] * inv)
    np.testing.assert_allclose(got[..., :3], z.real, atol=1e-5)
    np.testing.assert_allclose(got[..., 3:6], z.imag, atol=1e-5)
    np.testing.assert_array_equal(got[..., 6:], x[..., 6:])


def test_grouped_query_attention_reads_key_value_head_h_over_group():
    """q [B, T, 6 heads, D] over 2 key/value heads equals plain attention with each key/value head
    repeated for its 3 query heads (transformers' repeat_kv), computed in numpy."""
    rng = np.random.default_rng(1)
    b, t, h, kv, d = 2, 7, 6, 2, 4
    q, k, v = (rng.normal(size=s).astype(np.float32) for s in ((b, t, h, d), (b, t, kv, d), (b, t, kv, d)))
    pos = np.broadcast_to(np.arange(t), (b, t)).astype(np.int32)
    seg = np.ones((b, t), np.int32)
    seg[1, 5:] = 0  # padding
    got = np.asarray(_attend(*map(jnp.asarray, (q, k, v, pos, seg, pos, seg)), 3))  # window 3
    kr, vr = np.repeat(k, h // kv, axis=2), np.repeat(v, h // kv, axis=2)
    scores = np.einsum("bqhd,bkhd->bhqk", q, kr)
    dist = pos[:, :, None] - pos[:, None, :]
    allowed = (dist >= 0) & (dist < 3) & (seg[:, None, :] == seg[:, :, None]) & (seg[:, None, :] != 0)
    scores = np.where(allowed[:, None], scores, -np.inf)
    with np.errstate(invalid="ignore"):
        p = np.exp(scores - scores.max(-1, keepdims=True))
        want = np.einsum("bhqk,bkhd->bqhd", p / p.sum(-1, keepdims=True), vr)
    real = seg.astype(bool)
    np.testing.assert_allclose(got[real], want[real], atol=1e-5)
