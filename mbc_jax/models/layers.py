"""The decoder's small parts: linear layers, LayerNorm / RMSNorm, the MLP (plain or gated), dropout
and rotary position embeddings. Each family's choice among them is a `ModelConfig` field."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn
from jax.sharding import Mesh

from mbc_jax.models.config import ModelConfig
from mbc_jax.sharding import constrain

Array = jax.Array


def activation(name: str):
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


def train_dropout(module: nn.Module, x: Array, rate: float) -> Array:
    """`dropout` with the module's "dropout" rng when it is a training clone and `rate` is set; else x."""
    if module.deterministic or not rate:
        return x
    return dropout(x, rate, module.make_rng("dropout"))


def normal(std: float):
    return nn.initializers.normal(stddev=std)


class Linear(nn.Module):
    features: int
    axes: tuple[str | None, str | None]
    use_bias: bool
    cfg: ModelConfig

    @nn.compact
    def __call__(self, x: Array) -> Array:
        flip = self.cfg.kernels_transposed
        kernel = self.param(
            "kernel",
            nn.with_logical_partitioning(normal(0.02), self.axes[::-1] if flip else self.axes),
            (self.features, x.shape[-1]) if flip else (x.shape[-1], self.features),
            jnp.dtype(self.cfg.param_dtype),
        )
        dtype = jnp.dtype(self.cfg.dtype)
        # As one 2-D matmul over all positions: XLA:CPU lowers the backward of a 3-D `x @ kernel`
        # (the kernel gradient contracts over batch and length at once) to a slow generic loop
        # (measured in benchmarks/README.md).
        lead = x.shape[:-1]
        x2, k = x.reshape(-1, x.shape[-1]).astype(dtype), kernel.astype(dtype)
        if flip:  # [out, in] . [rows, in] -> [out, rows]: XLA:CPU's fast form for a few rows (decoding)
            y = jax.lax.dot_general(k, x2, (((1,), (1,)), ((), ()))).T
        else:
            y = jnp.dot(x2, k)
        y = y.reshape(*lead, self.features)
        if self.use_bias:
            bias = self.param(
                "bias", nn.with_logical_partitioning(nn.initializers.zeros, self.axes[1:]),
                (self.features,), jnp.dtype(self.cfg.param_dtype),
            )
            y = y + bias.astype(dtype)
        return y


class LayerNorm(nn.Module):
    """LayerNorm, or RMSNorm when `cfg.norm == "rmsnorm"`; statistics in float32 either way.

    RMSNorm follows transformers' Llama: normalize in float32, cast back to the compute dtype, then
    scale. LayerNorm scales and shifts in float32 before the cast.
    """

    cfg: ModelConfig

    @nn.compact
    def __call__(self, x: Array) -> Array:
        cfg, x32 = self.cfg, x.astype(jnp.float32)
        shape, pdt, dtype = (x.shape[-1],), jnp.dtype(cfg.param_dtype), jnp.dtype(cfg.dtype)
        scale_init = nn.with_logical_partitioning(nn.initializers.ones, ("norm",))
        if cfg.norm == "rmsnorm":
            y = x32 * jax.lax.rsqrt(jnp.square(x32).mean(-1, keepdims=True) + cfg.layer_norm_epsilon)
            return y.astype(dtype) * self.param("scale", scale_init, shape, pdt).astype(dtype)
        mean = x32.mean(-1, keepdims=True)
        var = jnp.square(x32 - mean).mean(-1, keepdims=True)
        y = (x32 - mean) * jax.lax.rsqrt(var + cfg.layer_norm_epsilon)
        if cfg.layer_norm_affine:
            scale = self.param("scale", scale_init, shape, pdt)
            bias = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros, ("norm",)), shape, pdt)
            y = y * scale.astype(jnp.float32) + bias.astype(jnp.float32)
        return y.astype(dtype)


class Mlp(nn.Module):
    """fc_out(act(fc_in(x))), or with `gated_mlp` fc_out(act(fc_gate(x)) * fc_in(x)) (SwiGLU)."""

    cfg: ModelConfig
    mesh: Mesh | None = None
    deterministic: bool = True

    @nn.compact
    def __call__(self, x):
        cfg = self.cfg
        y = Linear(cfg.intermediate_size, ("embed", "mlp"), cfg.mlp_bias, cfg, name="fc_in")(x)
        if cfg.gated_mlp:
            gate = Linear(cfg.intermediate_size, ("embed", "mlp"), cfg.mlp_bias, cfg, name="fc_gate")(x)
            y = activation(cfg.activation)(gate) * y
        else:
            y = activation(cfg.activation)(y)
        y = constrain(y, self.mesh, ("batch", "length", "act_mlp"))
        y = Linear(x.shape[-1], ("mlp", "embed"), cfg.mlp_bias, cfg, name="fc_out")(y)
        return train_dropout(self, y, cfg.resid_dropout)


# ----------------------------------------------------------------------------- rotary positions


def inverse_frequencies(cfg: ModelConfig) -> np.ndarray:
    """RoPE's float32 inverse frequencies [rotary_dim / 2], as transformers computes them for
    `rope_type` default (theta ** (-2i / dim)), linear (divided by `factor`) and llama3 (low
    frequencies divided by `factor`, a smooth blend between the two wavelength bounds)."""
    dim = cfg.rotary_dim
    inv = (1.0 / (np.float32(cfg.rope_theta) ** (np.arange(0, dim, 2).astype(np.float32) / np.float32(dim))))
    inv = inv.astype(np.float32)
    if cfg.rope_type == "linear":
        inv = inv / np.float32(cfg.rope_factor)
    elif cfg.rope_type == "llama3":
        factor, low, high = cfg.rope_factor, cfg.rope_low_freq_factor, cfg.rope_high_freq_factor
        old = cfg.rope_original_max_positions
        wavelen = 2 * np.pi / inv
        scaled = np.where(wavelen > old / low, inv / factor, inv)
        smooth = (old / wavelen - low) / (high - low)
        blended = (1 - smooth) * scaled / factor + smooth * scaled
        medium = ~(wavelen < old / high) & ~(wavelen > old / low)
        inv = np.where(medium, blended, scaled)
    return inv.astype(np.float32)


def rotary(x: Array, positions: Array, inv_freq: np.ndarray) -> Array:
    """x [B, T, heads, D] with its first 2 * len(inv_freq) dims rotated by position (rotate-half:
    pairs (i, i + half)), the rest passed through."""
    rd = 2 * len(inv_freq)
    angles = positions.astype(jnp.float32)[..., None] * jnp.asarray(inv_freq)  # [B, T, rd / 2]
    angles = jnp.concatenate([angles, angles], axis=-1)[:, :, None, :]
    cos, sin = jnp.cos(angles).astype(x.dtype), jnp.sin(angles).astype(x.dtype)
    rot, rest = x[..., :rd], x[..., rd:]
    half = jnp.concatenate([-rot[..., rd // 2:], rot[..., :rd // 2]], axis=-1)
    out = rot * cos + half * sin
    return out if rest.shape[-1] == 0 else jnp.concatenate([out, rest], axis=-1)
