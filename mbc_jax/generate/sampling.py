"""How each token is picked: the sampling settings, the logits processing, the entropy of a distribution.

Logits processing follows Hugging Face `generate`, in its order:
1. repetition penalty (CTRL rule): for every token already in the row's sequence (prompt +
   generated so far; left padding excluded), a logit l becomes l / r if l > 0 else l * r;
2. temperature: l / T;
3. top-k: tokens below the k-th largest logit get -inf (ties with it are kept);
4. top-p (nucleus): the smallest set of most probable tokens whose probability reaches p is kept
   (a token is kept iff the probability of the tokens strictly more probable than it is < p; ties
   at the boundary are kept); the rest get -inf.
Greedy decoding applies only the penalty, then takes the argmax (as HF's do_sample=False).
All settings are traced values (`Settings`), so one compiled program serves every sampling
configuration; top-k and top-p run only when they are on (`lax.cond`), and neither sorts the vocabulary:
each finds its cutoff logit exactly by a three-pass radix search (`_threshold_filters`).
A token is drawn by inverting the CDF of the processed distribution with one uniform per row (`draw`).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from mbc_jax import UserError

# The paper's generation settings (Ge et al., Section 4: one response per prompt, nucleus sampling
# p 0.9, temperature 0.7, repetition penalty 1.2, at most 256 new tokens); every command and experiment
# that generates the judged or Table 1 answers takes them from here.
DEFAULT_TOP_P = 0.9
DEFAULT_TEMPERATURE = 0.7
DEFAULT_REPETITION_PENALTY = 1.2
DEFAULT_MAX_NEW_TOKENS = 256
# Our choices, where the paper says nothing:
EXTRACTION_MAX_NEW_TOKENS = 64  # extraction memorization (Zeng et al.'s test): reference tokens compared at most
TINY_MAX_NEW_TOKENS = 64  # the tiny (CPU) scale: new tokens per answer, and the positions its base keeps for them


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
    """How to pick each token. `greedy` ignores temperature, top_k and top_p (not the penalty)."""

    greedy: bool = False
    temperature: float = DEFAULT_TEMPERATURE
    top_p: float = DEFAULT_TOP_P
    top_k: int = 0  # 0: off
    repetition_penalty: float = DEFAULT_REPETITION_PENALTY  # 1.0: off
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS
    ignore_eos: bool = False

    def validate(self) -> "SamplingConfig":
        if self.max_new_tokens < 1:
            raise UserError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if not self.repetition_penalty > 0:
            raise UserError(f"repetition penalty must be > 0 (1 = off), got {self.repetition_penalty}")
        if not self.greedy:
            if not (self.temperature > 0 and math.isfinite(self.temperature)):
                raise UserError(f"temperature must be > 0, got {self.temperature} (use greedy decoding for the argmax)")
            if not 0 < self.top_p <= 1:
                raise UserError(f"top_p must be in (0, 1], got {self.top_p} (1 = off)")
            if self.top_k < 0:
                raise UserError(f"top_k must be >= 0 (0 = off), got {self.top_k}")
        return self

    def describe(self) -> str:
        s = "greedy" if self.greedy else (f"sampling T={self.temperature:g} top_p={self.top_p:g}"
                                          + (f" top_k={self.top_k}" if self.top_k else ""))
        s += f", repetition penalty {self.repetition_penalty:g}, max {self.max_new_tokens} new tokens"
        return s + (", ignoring EOS" if self.ignore_eos else "")

    def prompt_room(self, positions: int) -> int:
        """How many prompt tokens fit before `max_new_tokens` new ones in a model with `positions`
        positions (the check of every prompt; under 1: none fits)."""
        return positions - self.max_new_tokens


def default_new_tokens(positions: int, flag: str = "--max-new-tokens") -> tuple[int, str | None]:
    """The default new tokens per answer for a model with `positions` positions, and the note when it is
    capped: the paper's 256 where a prompt keeps at least as many positions, else half the positions
    (`mbc-jax generate` and `mbc-jax select` both default to this)."""
    n = min(DEFAULT_MAX_NEW_TOKENS, positions // 2)
    if n == DEFAULT_MAX_NEW_TOKENS:
        return n, None
    return n, (f"{flag}: the model has {positions} positions, so the default {DEFAULT_MAX_NEW_TOKENS} is "
               f"capped at {n} (half of them; the prompt keeps the rest); pass {flag} to choose")


def entropy(logits: jax.Array) -> jax.Array:
    """Entropy (nats) of softmax(logits) over the last axis, in float32; -inf logits contribute 0."""
    logits = logits.astype(jnp.float32)
    logp = jax.nn.log_softmax(logits, axis=-1)
    return -jnp.sum(jnp.where(jnp.isneginf(logits), 0.0, jnp.exp(logp) * logp), axis=-1)


def first_argmax(x: jax.Array) -> jax.Array:
    """`jnp.argmax` over the last axis (the first index of the maximum; int32) as two plain reductions:
    XLA:CPU runs the (value, index) reduction of `argmax` several times slower over a vocabulary."""
    top = jnp.max(x, axis=-1, keepdims=True)
    iota = jax.lax.broadcasted_iota(jnp.int32, x.shape, x.ndim - 1)
    return jnp.min(jnp.where(x == top, iota, x.shape[-1]), axis=-1)


CDF_BLOCK = 256  # tokens per block of the two-level CDF `draw` inverts


def draw(x: jax.Array, u: jax.Array) -> jax.Array:
    """One token per row from softmax(x) over the last axis (-inf: never drawn), by inverting its CDF at
    u [B] in [0, 1): the first token whose cumulative probability exceeds u. int32 [B].

    The CDF is two-level (sums of blocks of CDF_BLOCK tokens, then a running sum inside the one block
    that holds u), so a draw costs about two passes over [B, V] and one uniform per row, where the Gumbel-max
    draw of `jax.random.categorical` costs V uniforms and 2V logarithms per row (measured: benchmarks/README.md,
    "Generation"). Float rounding can only move u across a boundary it lies within rounding of; a token of
    probability 0 is never returned.
    """
    b, v = x.shape
    nb = -(-v // CDF_BLOCK)
    x = x.astype(jnp.float32)
    e = jnp.exp(x - jnp.max(x, axis=-1, keepdims=True))  # unnormalised; -inf -> 0
    e = jnp.pad(e, ((0, 0), (0, nb * CDF_BLOCK - v))).reshape(b, nb, CDF_BLOCK)
    block_cdf = jnp.cumsum(e.sum(axis=-1), axis=-1)  # [B, nb]
    target = u.astype(jnp.float32) * block_cdf[:, -1]
    blk = jnp.minimum(jnp.sum(block_cdf <= target[:, None], axis=-1), nb - 1)  # the first block past u
    before = jnp.where(blk > 0, jnp.take_along_axis(block_cdf, jnp.maximum(blk - 1, 0)[:, None], -1)[:, 0], 0.0)
    inner = jnp.take_along_axis(e, blk[:, None, None], axis=1)[:, 0]  # [B, CDF_BLOCK]
    j = jnp.sum(before[:, None] + jnp.cumsum(inner, axis=-1) <= target[:, None], axis=-1)
    idx = jax.lax.broadcasted_iota(jnp.int32, inner.shape, 1)
    last_positive = jnp.max(jnp.where(inner > 0, idx, 0), axis=-1)  # rounding never lands on a 0 token
    return (blk * CDF_BLOCK + jnp.minimum(j, last_positive)).astype(jnp.int32)


def repetition_penalty(logits: jax.Array, present: jax.Array, penalty: jax.Array | float) -> jax.Array:
    """CTRL rule as HF applies it: where `present`, l -> l / penalty if l > 0 else l * penalty."""
    penalized = jnp.where(logits < 0, logits * penalty, logits / penalty)
    return jnp.where(present, penalized, logits)


def top_k_filter(logits: jax.Array, k: int) -> jax.Array:
    """Keep the k largest logits per row (and any tied with the k-th); the rest -> -inf."""
    return _jit_filters(jnp.asarray(logits, jnp.float32), k, 1.0)


def top_p_filter(logits: jax.Array, p: jax.Array | float) -> jax.Array:
    """Nucleus: keep a token iff the tokens more probable than it hold < p of the probability mass."""
    return _jit_filters(jnp.asarray(logits, jnp.float32), 0, p)


def _order_keys(x: jax.Array) -> jax.Array:
    """int32 keys in the order of the float32 values (-0.0 and 0.0 equal; -inf lowest): a < b iff key(a) < key(b)."""
    bits = jax.lax.bitcast_convert_type(x + 0.0, jnp.int32)  # + 0.0: -0.0 -> 0.0
    return jnp.where(bits < 0, jnp.int32(-(2 ** 31)) - bits - 1, bits)


_RADIX_LEVELS = ((21, 11), (10, 11), (0, 10))  # (shift, bits): 32 bits of key in three digit passes


def _smallest_threshold(keys: jax.Array, weight: jax.Array, limit: jax.Array) -> jax.Array:
    """Per row, the smallest int32 t with sum(weight[keys > t]) < limit: a radix search over the 32 bits of
    the keys in three passes (11, 11, 10 bits), each a histogram of the weight over one digit of the keys
    still in range, no sort. `weight` >= 0, `limit` > 0; returns [B, 1].

    Level by level: the mass strictly above each digit value (the keys above the range, plus the higher
    digits' bins) is a suffix sum of the histogram; the answer's digit is the smallest one whose mass
    above is < limit (the top digit always qualifies: the invariant is that less than `limit` lies above
    the range). Same answer as a 32-step bisection over the keys (`_bisect_threshold`, kept as the test
    oracle), in 3 passes over [B, V] instead of 32.
    """
    b = keys.shape[0]
    u = jax.lax.bitcast_convert_type(keys, jnp.uint32) ^ jnp.uint32(0x80000000)  # int32 order as uint32 order
    prefix = jnp.zeros((b, 1), jnp.uint32)
    above = jnp.zeros((b, 1), weight.dtype)
    rows = jnp.arange(b, dtype=jnp.int32)[:, None]
    for shift, bits in _RADIX_LEVELS:
        nb = 1 << bits
        in_range = weight if shift + bits == 32 else jnp.where(
            (u >> (shift + bits)) == (prefix >> (shift + bits)), weight, 0)
        digit = ((u >> shift) & jnp.uint32(nb - 1)).astype(jnp.int32)
        hist = jnp.zeros((b * nb,), weight.dtype).at[(rows * nb + digit).reshape(-1)].add(in_range.reshape(-1))
        at_or_above = jnp.cumsum(hist.reshape(b, nb)[:, ::-1], axis=-1)[:, ::-1]
        strictly_above = above + jnp.concatenate([at_or_above[:, 1:], jnp.zeros((b, 1), weight.dtype)], axis=-1)
        d = jnp.sum(strictly_above >= limit, axis=-1, keepdims=True)  # a prefix of the digits holds >= limit
        prefix = prefix | (d.astype(jnp.uint32) << shift)
        above = jnp.take_along_axis(strictly_above, d, axis=-1)
    return jax.lax.bitcast_convert_type(prefix ^ jnp.uint32(0x80000000), jnp.int32)


def _bisect_threshold(keys: jax.Array, weight: jax.Array, limit: jax.Array) -> jax.Array:
    """`_smallest_threshold` by 32 halvings of [min key - 1, max key] (one pass over [B, V] each): the
    reference the radix search is tested against."""
    lo = jnp.min(keys, axis=-1, keepdims=True) - 1  # the mass above it is everything (may not be < limit)
    hi = jnp.max(keys, axis=-1, keepdims=True)  # nothing lies above the max: always < limit

    def halve(_, bounds):  # invariant: mass(hi) < limit; mass(t) >= limit for every t <= lo
        lo, hi = bounds
        mid = (lo & hi) + ((lo ^ hi) >> 1)  # floor((lo + hi) / 2) without overflow: lo < mid < hi if hi - lo > 1
        below = jnp.sum(jnp.where(keys > mid, weight, 0), axis=-1, keepdims=True) < limit
        return jnp.where(below, lo, mid), jnp.where(below, mid, hi)

    return jax.lax.fori_loop(0, 32, halve, (lo, hi))[1]  # the keys span < 2**32: 32 halvings leave hi = lo + 1


def _threshold_filters(x: jax.Array, k: jax.Array | int, p: jax.Array | float) -> jax.Array:
    """top-k (k <= 0: off) then top-p (p >= 1: off) over the last axis, without sorting the vocabulary.

    Both keep the tokens at or above a cutoff logit. top-k's is the k-th largest value: the smallest value
    with fewer than k tokens strictly above it. top-p's (sorting, it is the value of the last token whose
    mass strictly ahead is < p) is the smallest value with less than p of the probability strictly above
    it. Either is found exactly by a radix search over the order of the float32 values
    (`_smallest_threshold`): a tie at the cutoff is kept, as in HF. The masses are sums of per-digit
    histograms of the unsorted row, where a sort takes a running sum in sorted order: the two can disagree
    only when the mass ahead of a token is within float32 rounding of p.
    """
    keys = _order_keys(x)
    k, p = jnp.asarray(k, jnp.int32), jnp.asarray(p, x.dtype)

    def top_k(x):
        return jnp.where(keys < _smallest_threshold(keys, jnp.ones_like(x), k.astype(x.dtype)), -jnp.inf, x)

    def top_p(x):
        return jnp.where(keys < _smallest_threshold(keys, jax.nn.softmax(x, axis=-1), p), -jnp.inf, x)

    x = jax.lax.cond(k > 0, top_k, lambda x: x, x)
    return jax.lax.cond(p < 1, top_p, lambda x: x, x)


_jit_filters = jax.jit(_threshold_filters)  # the public filters, called eagerly: one compile per shape


class Settings(NamedTuple):
    """A SamplingConfig as traced scalars: changing them never recompiles."""

    greedy: Any
    temperature: Any
    top_k: Any
    top_p: Any
    penalty: Any
    ignore_eos: Any

    @classmethod
    def of(cls, cfg: SamplingConfig) -> "Settings":
        t, k, p = (1.0, 0, 1.0) if cfg.greedy else (cfg.temperature, cfg.top_k, cfg.top_p)  # greedy: neutral
        return cls(np.bool_(cfg.greedy), np.float32(t), np.int32(k), np.float32(p),
                   np.float32(cfg.repetition_penalty), np.bool_(cfg.ignore_eos))


def process_logits(raw: jax.Array, present: jax.Array, s: Settings) -> jax.Array:
    """Raw logits [B, V] -> the logits the next token is drawn from, in HF's order.

    Greedy: only the penalty (the argmax of the result is the token). top-k / top-p run only when one of
    them is on (`lax.cond`: one branch executes).
    """
    x = repetition_penalty(raw.astype(jnp.float32), present, s.penalty)  # penalty 1: exact identity

    def warp(x):
        x = x / s.temperature  # temperature 1: exact identity
        return _threshold_filters(x, s.top_k, s.top_p)

    return jax.lax.cond(s.greedy, lambda y: y, warp, x)

