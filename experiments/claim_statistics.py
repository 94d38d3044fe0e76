"""The statistics of the claims check (experiments/claims.py): pure numpy over per-record arrays, each
with its seeded percentile-bootstrap interval.

    value, lo, hi = mean_diff_ci(a, b)          # mean(a) - mean(b), each group resampled within itself
    value, lo, hi = auc_ci(positives, negatives)

`ci(stat, n1, n2, ...)` is the one bootstrap: `stat` takes one index array per group ([B, n]) and
returns [B] values; it is called once on the full sample (the value) and once on `N_BOOT` resamples
drawn with replacement from one seeded generator (the interval: the 2.5th and 97.5th percentiles).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np

N_BOOT = 1000
SEED = 0
CONFIDENCE = 0.95


def ci(stat: Callable[..., np.ndarray], *sizes: int, n_boot: int = N_BOOT, seed: int = SEED,
       confidence: float = CONFIDENCE) -> tuple[float, float, float]:
    """(value, lo, hi): `stat(*index_arrays)` on the full sample (each index [1, n]) and its percentile
    bootstrap interval, each group's indices resampled with replacement ([n_boot, n] each, one generator)."""
    value = float(np.asarray(stat(*[np.arange(n)[None] for n in sizes]))[0])
    rng = np.random.default_rng(seed)
    boot = np.asarray(stat(*[rng.integers(0, n, (n_boot, n)) for n in sizes]), np.float64)
    boot = boot[np.isfinite(boot)]
    if not len(boot):
        return value, math.nan, math.nan
    alpha = (1 - confidence) / 2
    lo, hi = np.quantile(boot, [alpha, 1 - alpha])
    return value, float(lo), float(hi)


def pooled(matched: np.ndarray, tokens: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Eq. 1 over the resampled records: matched[..., idx].sum / tokens[idx].sum; matched [S, N] -> [B, S]."""
    with np.errstate(invalid="ignore", divide="ignore"):  # a resample without targets: nan, left out of the CI
        return matched[:, idx].sum(-1).T / tokens[idx].sum(-1)[:, None]


def gain_shares(matched: np.ndarray, tokens: np.ndarray, steps: Sequence[int], idx: np.ndarray
                ) -> tuple[np.ndarray, np.ndarray]:
    """(early, late): the share of the total gain of pooled exact memorization (last step minus step 0)
    reached by the first checkpoint at or after a third of training, and the share added after the last
    checkpoint at or before two thirds of it. A linear rise gives about 1/3 each."""
    steps = np.asarray(steps)
    t1 = int(np.argmax(steps >= steps[-1] / 3))
    t2 = int(np.nonzero(steps <= 2 * steps[-1] / 3)[0][-1])
    p = pooled(matched, tokens, idx)
    gain = p[:, -1] - p[:, 0]
    with np.errstate(invalid="ignore", divide="ignore"):
        return (p[:, t1] - p[:, 0]) / gain, (p[:, -1] - p[:, t2]) / gain


def pooled_perplexity(log_ppl: np.ndarray, tokens: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """exp(sum tokens * log ppl / sum tokens) over the resampled records: log_ppl [S, N] -> [B, S]."""
    return np.exp((log_ppl * tokens)[:, idx].sum(-1).T / tokens[idx].sum(-1)[:, None])


def auc(scores_pos: np.ndarray, scores_neg: np.ndarray) -> np.ndarray:
    """Area under the ROC curve of `scores` separating positives from negatives, along the last axis:
    P(a positive scores above a negative) + 0.5 P(tie) (Mann-Whitney U / (n_pos n_neg))."""
    from scipy.stats import rankdata

    both = np.concatenate([scores_pos, scores_neg], -1)
    ranks = rankdata(both, axis=-1)[..., : scores_pos.shape[-1]]
    n1, n0 = scores_pos.shape[-1], scores_neg.shape[-1]
    return (ranks.sum(-1) - n1 * (n1 + 1) / 2) / (n1 * n0)


Interval = tuple[float, float, float]  # (value, lo, hi)


def mean_diff_ci(a: np.ndarray, b: np.ndarray) -> Interval:
    """mean(a) - mean(b) of two independent groups, each resampled within itself."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    return ci(lambda i, j: a[i].mean(-1) - b[j].mean(-1), len(a), len(b))


def paired_diff_ci(x: np.ndarray, y: np.ndarray) -> Interval:
    """mean(x - y) over paired values (record r's x and y resampled together)."""
    d = np.asarray(x, float) - np.asarray(y, float)
    return ci(lambda i: d[i].mean(-1), len(d))


def auc_ci(pos: np.ndarray, neg: np.ndarray) -> Interval:
    pos, neg = np.asarray(pos, float), np.asarray(neg, float)
    return ci(lambda i, j: auc(pos[i], neg[j]), len(pos), len(neg))


def gain_shares_ci(em: np.ndarray, tokens: np.ndarray, steps: Sequence[int]) -> tuple[Interval, Interval]:
    """(early, late) of `gain_shares` from per-record exact memorization em [S, N] and targets [N]."""
    matched = np.nan_to_num(em) * tokens
    return tuple(ci(lambda i, k=k: gain_shares(matched, tokens, steps, i)[k], len(tokens)) for k in (0, 1))


def response_gap_ci(em: np.ndarray, tokens: np.ndarray, rem: np.ndarray, rtokens: np.ndarray) -> Interval:
    """Pooled response exact memorization minus pooled full-dialogue exact memorization (Eq. 1 both) at one
    checkpoint, per-record [N] inputs; records without response targets (nan) add nothing to the first."""
    rtokens = np.where(np.isfinite(rem), rtokens, 0)
    full, resp = (np.nan_to_num(em) * tokens)[None], (np.nan_to_num(rem) * rtokens)[None]
    return ci(lambda i: pooled(resp, rtokens, i)[:, 0] - pooled(full, tokens, i)[:, 0], len(tokens))


def perplexity_ratio_ci(ppl: np.ndarray, tokens: np.ndarray) -> tuple[Interval, int]:
    """(pooled perplexity at the last step / at the step where it is lowest, that step's position), from
    per-record perplexity [S, N] and targets [N]; the lowest step is found once, on the full sample."""
    log_ppl = np.log(ppl)
    best = int(np.argmin(pooled_perplexity(log_ppl, tokens, np.arange(len(tokens))[None])[0]))

    def ratio(i: np.ndarray) -> np.ndarray:
        p = pooled_perplexity(log_ppl, tokens, i)
        return p[:, -1] / p[:, best]

    return ci(ratio, len(tokens)), best


def net_win_ci(win: int, tie: int, loss: int) -> Interval:
    """Win rate minus loss rate over judged pairs (+1 win, 0 tie, -1 loss), pairs resampled."""
    outcome = np.array([1.0] * win + [0.0] * tie + [-1.0] * loss)
    return ci(lambda i: outcome[i].mean(-1), len(outcome))
