"""Batch samplers: which training records each step sees.

Both draw as a pure function of (seed, step[, weights]), so a resumed run draws exactly what an
uninterrupted one would, whatever the number of hosts:

- `UniformSampler`: without replacement, a fresh permutation every epoch (the baseline).
- `MBCSampler`: Memorization-Based Curriculum. Every k steps the trainer re-scores the training
  records and calls `set_perplexities`; weights are proportional to perplexity ** power (higher
  perplexity = less memorized = more likely), mixed with a floor so no record reaches zero, and
  every batch is `jax.random.choice(key, N, (batch,), replace=True, p=weights)`. No epochs.
"""

from __future__ import annotations

import numpy as np
import jax
import jax.numpy as jnp


class Sampler:
    def __init__(self, num_records: int, batch_size: int, seed: int):
        self.n, self.batch_size = num_records, batch_size
        self.key = jax.random.PRNGKey(seed)
        self.counts = np.zeros(num_records, np.int64)

    def indices(self, step: int) -> np.ndarray:
        raise NotImplementedError

    def draw(self, step: int) -> np.ndarray:
        idx = self.indices(step)
        np.add.at(self.counts, idx, 1)
        return idx

    def probabilities(self) -> np.ndarray:
        return np.full(self.n, 1.0 / self.n)

    def state(self) -> dict[str, np.ndarray]:
        return {"counts": self.counts.copy()}

    def load_state(self, state: dict) -> None:
        self.counts = np.asarray(state["counts"], np.int64).copy()


class UniformSampler(Sampler):
    """Global draw positions [step*B, (step+1)*B) of the concatenation of per-epoch permutations."""

    def indices(self, step: int) -> np.ndarray:
        start = step * self.batch_size
        out = []
        for pos in range(start, start + self.batch_size):
            epoch, offset = divmod(pos, self.n)
            out.append(self._perm(epoch)[offset])
        return np.asarray(out, np.int64)

    def _perm(self, epoch: int) -> np.ndarray:
        cache = getattr(self, "_perm_cache", None)
        if cache is None or cache[0] != epoch:
            perm = np.asarray(jax.random.permutation(jax.random.fold_in(self.key, epoch), self.n))
            self._perm_cache = cache = (epoch, perm)
        return cache[1]


def mbc_weights(perplexity: np.ndarray, power: float = 1.0, floor: float = 0.1) -> np.ndarray:
    """Sampling probabilities from per-record perplexities.

    p_i = (1 - floor) * ppl_i**power / sum_j ppl_j**power + floor / N: proportional to perplexity
    for floor=0, uniform for floor=1; every record keeps at least floor / N.
    """
    ppl = np.asarray(perplexity, np.float64)
    n = len(ppl)
    finite = np.isfinite(ppl)
    fill = np.nanmax(ppl[finite]) if finite.any() else 1.0  # an unscorable record counts as least memorized
    ppl = np.where(finite, ppl, fill)
    logw = power * np.log(np.maximum(ppl, 1e-12))
    w = np.exp(logw - logw.max())
    p = (1.0 - floor) * w / w.sum() + floor / n
    return p / p.sum()


class MBCSampler(Sampler):
    def __init__(self, num_records: int, batch_size: int, seed: int, power: float = 1.0, floor: float = 0.1):
        super().__init__(num_records, batch_size, seed)
        self.power, self.floor = power, floor
        self.perplexity = np.ones(num_records)  # until the first score: uniform
        self.scored_step = np.full(num_records, -1, np.int64)  # when each record's perplexity was measured
        self._p = None

    def set_perplexities(self, perplexity: np.ndarray, step: int, which: np.ndarray | None = None) -> None:
        which = np.arange(self.n) if which is None else np.asarray(which)
        self.perplexity[which] = perplexity
        self.scored_step[which] = step
        self._p = None

    def probabilities(self) -> np.ndarray:
        if self._p is None:
            self._p = mbc_weights(self.perplexity, self.power, self.floor)
        return self._p

    def indices(self, step: int) -> np.ndarray:
        p = jnp.asarray(self.probabilities(), jnp.float32)
        key = jax.random.fold_in(self.key, step)
        return np.asarray(jax.random.choice(key, self.n, (self.batch_size,), replace=True, p=p), np.int64)

    def staleness_order(self) -> np.ndarray:
        """Record indices, measured longest ago first (never measured first of all; ties by index)."""
        return np.lexsort((np.arange(self.n), self.scored_step))

    def stalest(self, fraction: float) -> np.ndarray:
        """The `fraction` of records measured longest ago (ties by index): re-scored next."""
        return self.staleness_order()[:max(1, int(round(fraction * self.n)))]

    def state(self) -> dict[str, np.ndarray]:
        return {"counts": self.counts.copy(), "perplexity": self.perplexity.copy(),
                "scored_step": self.scored_step.copy()}

    def load_state(self, state: dict) -> None:
        super().load_state(state)
        self.perplexity = np.asarray(state["perplexity"], np.float64).copy()
        self.scored_step = np.asarray(state["scored_step"], np.int64).copy()
        self._p = None
