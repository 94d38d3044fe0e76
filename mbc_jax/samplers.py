"""Batch samplers: which training records each step sees. MBC (Algorithm 1 of Ge et al.) lives here.

The trainer calls, around every step s (steps completed so far):

    sampler.before_step(s, params, score_fn)   # MBC: re-score when due
    idx = sampler.draw(s)                      # the records of step s's batch
    ...train step...
    if sampler.uses_step_losses:               # MBC incremental: the step's own losses
        sampler.after_step(s, record_index, per_record_losses)

Drawing is a pure function of (seed, step[, weights]), so a resumed run draws exactly what an
uninterrupted one would, whatever the number of hosts.

- `UniformSampler` (the baseline): without replacement, a fresh permutation every epoch; its
  `before_step` and `after_step` do nothing.
- `MBCSampler`, Memorization-Based Curriculum. Algorithm 1:
    every k steps: perplexity_i = exp(mean NLL of record i under the current model), for all i
    p_i = perplexity_i ** power / sum_j perplexity_j ** power   (power 1 in the paper)
    every step: batch = jax.random.choice(key, N, (B,), replace=True, p=p)   (no epochs)
  Higher perplexity = less memorized = more likely. Defaults are the paper's (power 1, no floor).
  Our choices where the paper is silent: k (default one re-score per epoch-equivalent, N / batch
  steps) and which perplexity (over the loss's targets: the response under `loss_on: response`).
  Extensions, opt-in: `power` != 1 sharpens or flattens the weights; `floor` > 0 mixes in
  floor / N of uniform probability to damp the curriculum (not for positivity: perplexity is at
  least 1, so no record ever reaches zero probability without it).
  Extension, opt-in (`refresh="incremental"`): instead of re-scoring all N records every k steps,
  each drawn record's perplexity is updated from the train step's own loss (`after_step`), and
  every k steps only the stalest `refresh_fraction` of records is re-scored, topped up with the
  next stalest ones that fit in the same packed batches.

`score_fn(params, order, count) -> (which, scores)` is the trainer's scorer: it scores the records
`order[:count]` (and may score more of `order`, in order, when they come at no extra cost), and
returns the indices it scored and a `Scores`-like object with `.perplexity(response: bool)` for
them. A fake one makes this module testable without a model.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import jax
import jax.numpy as jnp
import numpy as np


class PerplexityScores(Protocol):
    def perplexity(self, response: bool = False) -> np.ndarray: ...


ScoreFn = Callable[[Any, np.ndarray, int], tuple[np.ndarray, PerplexityScores]]


class Sampler:
    uses_step_losses = False  # whether after_step reads the step's per-record losses (else they are not fetched)

    def __init__(self, num_records: int, batch_size: int, seed: int):
        self.n, self.batch_size = num_records, batch_size
        self.key = jax.random.PRNGKey(seed)
        self.counts = np.zeros(num_records, np.int64)

    def before_step(self, step: int, params: Any, score_fn: ScoreFn) -> None:
        """Called before drawing step `step`'s batch: re-score when due (MBC)."""

    def after_step(self, step: int, record_index: np.ndarray, per_record_losses: dict[str, np.ndarray]) -> None:
        """Called after step `step`: `record_index` [rows, S] (-1 = none) names the training records
        of the batch; `per_record_losses` {"nll": summed NLL, "count": loss targets}, both [rows, S]."""

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


def mbc_weights(perplexity: np.ndarray, power: float = 1.0, floor: float = 0.0) -> np.ndarray:
    """Sampling probabilities from per-record perplexities.

    p_i = (1 - floor) * ppl_i**power / sum_j ppl_j**power + floor / N. The paper's Algorithm 1 is
    power 1, floor 0: p proportional to perplexity. floor 1 is uniform.
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


# MBC's sampling health: below this share of N, the effective sample size of the weights means the draws
# concentrate on few records (our threshold, not the paper's; the paper reports no such statistic).
ESS_WARN_SHARE = 0.10


def weight_health(p: np.ndarray, counts: np.ndarray, top: int = 3) -> dict:
    """How concentrated sampling weights `p` (summing to 1) are, and how many records `counts` has drawn.

    ess: the effective sample size 1 / sum p_i^2 (N for uniform weights, 1 when one record has all of it);
    ess_share: ess / N; max_weight: the largest p_i; top1pct_share: the weight held by the heaviest 1% of
    records (at least one record); distinct_drawn: records drawn at least once so far; heaviest: the `top`
    heaviest record indices, heaviest first."""
    p = np.asarray(p, np.float64)
    n = len(p)
    order = np.argsort(-p, kind="stable")
    ess = float(1.0 / np.sum(p**2))
    return {"ess": ess, "ess_share": ess / n, "max_weight": float(p[order[0]]),
            "top1pct_share": float(p[order[:max(1, n // 100)]].sum()),
            "distinct_drawn": int((np.asarray(counts) > 0).sum()), "heaviest": order[:top].tolist()}


def record_perplexity(scores: PerplexityScores, response: bool) -> np.ndarray:
    """The perplexity MBC weighs by: over the response targets (`response`) or the whole dialogue.
    A record without response targets falls back to its full-dialogue perplexity."""
    ppl = scores.perplexity(response)
    return np.where(np.isfinite(ppl), ppl, scores.perplexity(False))


class MBCSampler(Sampler):
    """Memorization-Based Curriculum: draws with replacement, weights from perplexities re-measured
    every `k` steps (see the module docstring)."""

    def __init__(self, num_records: int, batch_size: int, seed: int, power: float = 1.0, floor: float = 0.0,
                 k: int = 1, response: bool = True, refresh: str = "full", refresh_fraction: float = 0.1):
        super().__init__(num_records, batch_size, seed)
        if refresh not in ("full", "incremental"):
            raise ValueError(f"refresh: {refresh!r} is not 'full' or 'incremental'")
        self.power, self.floor, self.k, self.response = power, floor, max(1, k), response
        self.refresh, self.refresh_fraction = refresh, refresh_fraction
        self.perplexity = np.ones(num_records)  # until the first score: uniform
        self.scored_step = np.full(num_records, -1, np.int64)  # when each record's perplexity was measured
        self._p = None

    # ------------------------------------------------------------------ Algorithm 1

    def before_step(self, step: int, params: Any, score_fn: ScoreFn) -> None:
        """Every k steps: re-score all records (or, incremental after step 0, the stalest ones)."""
        if step % self.k:
            return
        if self.refresh == "incremental" and step > 0:
            order, count = self.staleness_order(), max(1, int(round(self.refresh_fraction * self.n)))
        else:
            order, count = np.arange(self.n), self.n
        which, scores = score_fn(params, order, count)
        self.set_perplexities(record_perplexity(scores, self.response), step, which)

    @property
    def uses_step_losses(self) -> bool:
        return self.refresh == "incremental"

    def probabilities(self) -> np.ndarray:
        if self._p is None:
            self._p = mbc_weights(self.perplexity, self.power, self.floor)
        return self._p

    def indices(self, step: int) -> np.ndarray:
        p = jnp.asarray(self.probabilities(), jnp.float32)
        key = jax.random.fold_in(self.key, step)
        return np.asarray(jax.random.choice(key, self.n, (self.batch_size,), replace=True, p=p), np.int64)

    # ------------------------------------------------------------------ the incremental extension

    def after_step(self, step: int, record_index: np.ndarray, per_record_losses: dict[str, np.ndarray]) -> None:
        """Incremental refresh: the drawn records' perplexities from the train step's own losses."""
        if self.refresh != "incremental":
            return
        idx = np.asarray(record_index)
        real = idx >= 0
        nll, count = np.asarray(per_record_losses["nll"])[real], np.asarray(per_record_losses["count"])[real]
        ok = count > 0
        if ok.any():
            self.set_perplexities(np.exp(nll[ok] / count[ok]), step, idx[real][ok])

    def set_perplexities(self, perplexity: np.ndarray, step: int, which: np.ndarray | None = None) -> None:
        which = np.arange(self.n) if which is None else np.asarray(which)
        self.perplexity[which] = perplexity
        self.scored_step[which] = step
        self._p = None

    def staleness_order(self) -> np.ndarray:
        """Record indices, measured longest ago first (never measured first of all; ties by index)."""
        return np.lexsort((np.arange(self.n), self.scored_step))

    def stalest(self, fraction: float) -> np.ndarray:
        """The `fraction` of records measured longest ago (ties by index): re-scored next."""
        return self.staleness_order()[:max(1, int(round(fraction * self.n)))]

    # ------------------------------------------------------------------ checkpointed state

    def state(self) -> dict[str, np.ndarray]:
        return {"counts": self.counts.copy(), "perplexity": self.perplexity.copy(),
                "scored_step": self.scored_step.copy()}

    def load_state(self, state: dict) -> None:
        super().load_state(state)
        self.perplexity = np.asarray(state["perplexity"], np.float64).copy()
        self.scored_step = np.asarray(state["scored_step"], np.int64).copy()
        self._p = None


def make_sampler(cfg: Any, num_records: int, k: int) -> Sampler:
    """The sampler a `TrainConfig` asks for; `k` is the resolved re-scoring interval (`mbc.k` or
    one epoch-equivalent)."""
    if cfg.sampler == "uniform":
        return UniformSampler(num_records, cfg.batch_size, cfg.seed)
    m = cfg.mbc
    response = m.metric == "response" or (m.metric == "loss" and cfg.loss_on == "response")
    return MBCSampler(num_records, cfg.batch_size, cfg.seed, m.power, m.floor, k=k, response=response,
                      refresh=m.refresh, refresh_fraction=m.refresh_fraction)
