"""Which checkpoint pairs the judge compares, within a bound on judge calls.

Each compared pair of checkpoints is judged on every dev prompt, and each judgment costs
`calls_per_judgment` requests (2 under the both-orders protocol). With K checkpoints and P prompts:

- the full round robin (all K(K-1)/2 pairs) when it fits in `max_calls`;
- else every adjacent pair (consecutive steps: K-1 pairs, so every checkpoint is compared and the
  comparison graph is connected) plus a seeded uniform sample, without replacement, of as many of
  the other pairs as the remaining calls allow;
- when even the adjacent pairs do not fit, an error saying how many calls they need.

The count is of judgments asked for, cached or not: the schedule depends only on (K, P, the bound,
the seed), so a rerun asks for the same judgments and finds them all in the cache. Retries of
failed or invalid requests are not counted (the judge client bounds them with --max-retries).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mbc_jax import UserError


@dataclass(frozen=True)
class Schedule:
    """The pairs (indices into the checkpoint list, i < j) and how they were chosen."""

    pairs: list[tuple[int, int]]
    scheme: str  # "round robin", "adjacent + sample", or "single checkpoint"
    description: str
    calls: int  # judge requests the pairs need: len(pairs) * prompts * calls_per_judgment
    round_robin_calls: int


def schedule(n_checkpoints: int, n_prompts: int, max_calls: int, calls_per_judgment: int, seed: int = 0) -> Schedule:
    """The checkpoint pairs to judge (see the module docstring)."""
    k = n_checkpoints
    per_pair = n_prompts * calls_per_judgment
    full = [(i, j) for i in range(k) for j in range(i + 1, k)]
    full_calls = len(full) * per_pair
    if k < 2:
        return Schedule([], "single checkpoint", "one checkpoint: nothing to compare", 0, 0)
    if full_calls <= max_calls:
        return Schedule(full, "round robin", f"round robin: all {len(full)} pairs of the {k} checkpoints",
                        full_calls, full_calls)
    adjacent = [(i, i + 1) for i in range(k - 1)]
    if len(adjacent) * per_pair > max_calls:
        raise UserError(f"--max-calls {max_calls}: too few for {k} checkpoints on {n_prompts} dev prompts; comparing "
                        f"each checkpoint with the next alone needs {len(adjacent)} pairs x {n_prompts} prompts x "
                        f"{calls_per_judgment} calls = {len(adjacent) * per_pair} (the round robin: {full_calls}); "
                        "raise --max-calls, lower --dev, or pick fewer --steps")
    others = [p for p in full if p[1] - p[0] > 1]
    extra = min(len(others), max_calls // per_pair - len(adjacent))
    rng = np.random.default_rng(seed)
    sampled = [others[i] for i in sorted(rng.choice(len(others), size=extra, replace=False))] if extra else []
    pairs = sorted(adjacent + sampled)
    return Schedule(pairs, "adjacent + sample",
                    f"the {len(adjacent)} adjacent pairs plus a seeded sample (seed {seed}) of {extra} of the other "
                    f"{len(others)} pairs ({len(pairs)} of {len(full)} round-robin pairs)",
                    len(pairs) * per_pair, full_calls)
