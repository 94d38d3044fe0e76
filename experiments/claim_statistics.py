"""The statistics of the claims check (experiments/claims.py): pure numpy over per-record arrays, each
with its seeded percentile-bootstrap interval.

    value, lo, hi = mean_diff_ci(a, b)          # mean(a) - mean(b), each group resampled within itself
    value, lo, hi = auc_ci(positives, negatives)

`ci(stat, n1, n2, ...)` is the one bootstrap: `stat` takes one index array per group ([B, n]) and
returns [B] values; it is called once on the full sample (the value) and once on `N_BOOT` resamples
drawn with replacement from one seeded generator (the interval: the 2.5th and 97.5th percentiles).
The draws stay on the returned `Interval` (`.boot`), so a verdict can read a wider interval from them.

A row's verdict (`verdict(tests)`) reads one or more `Test`s, each a CI against a bound or a permutation
p-value:
- holds: every test is on the finding's side (CI beyond the bound; permutation p < 0.05, a one-sided one's
  p < 0.025) and meets any condition the row adds (`Test.unmet`, e.g. Fig. 7's rank);
- contradicted: some CI test's one-sided bootstrap bound at level 0.0125 / m (m: the row's CI tests,
  Bonferroni) lies wholly on the other side, so a row says "contradicted" of a finding at its bound at
  most 1.25% of the time in theory, however many tests it has. The nominal level is half the 2.5% a 95% CI
  gives because the percentile bootstrap's tails are thin at the miniature's sizes: at 2.5% nominal the
  measured rate reached 5.5% (familiarity, 47 vs 33 records; tests/unit/test_claim_calibration.py). A
  permutation test of "differs" cannot contradict; a one-sided permutation test (`category_gap_test`)
  contradicts when its p-value on the other side is below 0.0125 / m;
- inconclusive: neither; with the effect beyond the bound each undecided test could have detected
  (80% power, two-sided 5%: 2.80 standard errors, the SE read from the CI's width / 3.92).

A two-sided test of "differs" by a CI (`Test.differs`, side 0; issue 32's membership row) holds when its
95% CI excludes the bound, and the row's two-sided tests hold together only when all their CIs lie on one
side (the direction is not chosen in advance; the row's values name it). It contradicts by equivalence:
both one-sided bounds at level 0.0125 / m lie within the stated margin of the bound (two one-sided
tests), so a row says "contradicted" of a difference as large as its margin at most 1.25% of the time.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence

import numpy as np

N_BOOT = 1000
SEED = 0
CONFIDENCE = 0.95


HOLDS, CONTRADICTED, INCONCLUSIVE, UNMEASURED = "holds", "contradicted", "inconclusive", "not measured"
ALPHA = 1 - CONFIDENCE
CONTRADICT_ALPHA = ALPHA / 4  # a row's one-sided error budget for "contradicted" (see the module docstring)
DETECT_Z = 1.959964 + 0.841621  # z(0.975) + z(0.80): the effect a two-sided 5% test finds 80% of the time


class Interval(tuple):
    """(value, lo, hi), with the bootstrap draws behind it on `.boot` (finite ones; None when not kept)."""

    def __new__(cls, value: float, lo: float, hi: float, boot: np.ndarray | None = None):
        self = super().__new__(cls, (value, lo, hi))
        self.boot = boot
        return self


def ci(stat: Callable[..., np.ndarray], *sizes: int, n_boot: int = N_BOOT, seed: int = SEED,
       confidence: float = CONFIDENCE) -> Interval:
    """(value, lo, hi): `stat(*index_arrays)` on the full sample (each index [1, n]) and its percentile
    bootstrap interval, each group's indices resampled with replacement ([n_boot, n] each, one generator)."""
    value = float(np.asarray(stat(*[np.arange(n)[None] for n in sizes]))[0])
    rng = np.random.default_rng(seed)
    boot = np.asarray(stat(*[rng.integers(0, n, (n_boot, n)) for n in sizes]), np.float64)
    boot = boot[np.isfinite(boot)]
    if not len(boot):
        return Interval(value, math.nan, math.nan, boot)
    alpha = (1 - confidence) / 2
    lo, hi = np.quantile(boot, [alpha, 1 - alpha])
    return Interval(value, float(lo), float(hi), boot)


def counts(idx: np.ndarray, n: int) -> np.ndarray:
    """How often each of `n` records is drawn in each resample: idx [B, m] -> [B, n]."""
    rows = idx + n * np.arange(idx.shape[0])[:, None]
    return np.bincount(rows.ravel(), minlength=idx.shape[0] * n).reshape(idx.shape[0], n).astype(np.float64)


def pooled(matched: np.ndarray, tokens: np.ndarray, idx: np.ndarray | None, c: np.ndarray | None = None) -> np.ndarray:
    """Eq. 1 over the resampled records: matched[..., idx].sum / tokens[idx].sum; matched [S, N] -> [B, S]
    (`c`: the resamples' `counts`, when the caller has them already)."""
    c = counts(idx, len(tokens)) if c is None else c  # einsum, not a BLAS product: one thread, no spinning
    with np.errstate(invalid="ignore", divide="ignore"):  # a resample without targets: nan, left out of the CI
        return np.einsum("bn,sn->bs", c, matched) / np.einsum("bn,n->b", c, tokens)[:, None]


def gain_shares(matched: np.ndarray, tokens: np.ndarray, steps: Sequence[int], idx: np.ndarray
                ) -> tuple[np.ndarray, np.ndarray]:
    """(early, late) over the span from the first checkpoint after step 0 (a, as the paper's Fig. 1 starts
    at its first checkpoint, not before fine-tuning) to the last (T): the share of the gain of pooled exact
    memorization (T minus a) reached by the first checkpoint at or after a + (T - a) / 3, and the share
    added after the last checkpoint at or before a + 2 (T - a) / 3. A linear rise gives about 1/3 each."""
    steps = np.asarray(steps)
    a = int(np.argmax(steps > 0))
    span = steps[-1] - steps[a]
    t1 = int(np.argmax(steps >= steps[a] + span / 3))
    t2 = int(np.nonzero(steps <= steps[a] + 2 * span / 3)[0][-1])
    p = pooled(matched, tokens, idx)
    gain = p[:, -1] - p[:, a]
    with np.errstate(invalid="ignore", divide="ignore"):
        return (p[:, t1] - p[:, a]) / gain, (p[:, -1] - p[:, t2]) / gain


def pooled_perplexity(log_ppl: np.ndarray, tokens: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """exp(sum tokens * log ppl / sum tokens) over the resampled records: log_ppl [S, N] -> [B, S]."""
    return np.exp(pooled(log_ppl * tokens, tokens, idx))


def auc(scores_pos: np.ndarray, scores_neg: np.ndarray) -> np.ndarray:
    """Area under the ROC curve of `scores` separating positives from negatives, along the last axis:
    P(a positive scores above a negative) + 0.5 P(tie) (Mann-Whitney U / (n_pos n_neg))."""
    from scipy.stats import rankdata

    n1, n0 = scores_pos.shape[-1], scores_neg.shape[-1]
    if n1 * n0 <= 10_000:  # small groups: count the pairs (faster than ranking each resample's row)
        d = scores_pos[..., :, None] - scores_neg[..., None, :]
        return ((d > 0).sum((-2, -1)) + 0.5 * (d == 0).sum((-2, -1))) / (n1 * n0)
    both = np.concatenate([scores_pos, scores_neg], -1)
    ranks = rankdata(both, axis=-1)[..., : scores_pos.shape[-1]]
    n1, n0 = scores_pos.shape[-1], scores_neg.shape[-1]
    return (ranks.sum(-1) - n1 * (n1 + 1) / 2) / (n1 * n0)


def weighted_auc(pos: np.ndarray, neg: np.ndarray, c_pos: np.ndarray, c_neg: np.ndarray) -> np.ndarray:
    """`auc` of `pos` [n1] against `neg` [n0] with each record counted as often as a resample drew it
    (c_pos [B, n1], c_neg [B, n0]: `counts`): sum_ij c_i d_j (1[pos_i > neg_j] + 1[pos_i == neg_j] / 2) /
    (sum_i c_i sum_j d_j), [B] values, by one sort of `neg` and a prefix sum of its weights per resample
    (B (n1 + n0) work and memory, no [n1, n0] table: the paper's scale has thousands of records per side)."""
    order = np.argsort(neg, kind="stable")
    cum = np.zeros((c_neg.shape[0], len(neg) + 1))
    np.cumsum(c_neg[:, order], 1, out=cum[:, 1:])
    below, upto = np.searchsorted(neg[order], pos, "left"), np.searchsorted(neg[order], pos, "right")
    wins = cum[:, below]  # the weight of the non-members below each member, plus half that of the tied ones:
    tied = np.nonzero(upto > below)[0]
    wins[:, tied] += 0.5 * (cum[:, upto[tied]] - wins[:, tied])
    return np.einsum("bi,bi->b", c_pos, wins) / (c_pos.sum(1) * c_neg.sum(1))


def paired_auc_diff_ci(pos_a: np.ndarray, neg_a: np.ndarray, pos_b: np.ndarray, neg_b: np.ndarray) -> Interval:
    """AUC(pos_a, neg_a) - AUC(pos_b, neg_b): two scorings (two runs) of the same members and the same
    non-members (element k of pos_a and of pos_b is one record's two scores); members resampled once for
    both scorings and non-members once for both, each group within itself, so what a record brings to both
    runs (its difficulty) cancels in the difference."""
    pa, na, pb, nb = (np.asarray(x, float) for x in (pos_a, neg_a, pos_b, neg_b))
    if pa.shape != pb.shape or na.shape != nb.shape:
        raise ValueError(f"paired scorings differ in size: {pa.shape} / {pb.shape} members, {na.shape} / {nb.shape}")

    def diff(i: np.ndarray, j: np.ndarray) -> np.ndarray:
        cp, cn = counts(i, len(pa)), counts(j, len(na))
        return weighted_auc(pa, na, cp, cn) - weighted_auc(pb, nb, cp, cn)

    return ci(diff, len(pa), len(na))


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
    def gap(i: np.ndarray) -> np.ndarray:
        c = counts(i, len(tokens))
        return pooled(resp, rtokens, None, c)[:, 0] - pooled(full, tokens, None, c)[:, 0]

    return ci(gap, len(tokens))


def pooled_diff_ci(em_a: np.ndarray, em_b: np.ndarray, tokens: np.ndarray) -> list[Interval]:
    """Per step s, pooled exact memorization (Eq. 1) of run a minus that of run b over the same records,
    each record resampled once for both: em_a, em_b [S, N], tokens [N] (records without a value in either
    run count nowhere)."""
    ok = np.all(np.isfinite(em_a) & np.isfinite(em_b), 0)
    tok = np.where(ok, tokens, 0.0)
    d = (np.nan_to_num(em_a) - np.nan_to_num(em_b)) * tok  # one denominator: pooled(a) - pooled(b) = pooled(a - b)
    return [ci(lambda i, s=s: pooled(d[s:s + 1], tok, i)[:, 0], len(tok)) for s in range(len(em_a))]


def perplexity_ratio_ci(ppl: np.ndarray, tokens: np.ndarray, base: int = 0) -> Interval:
    """Pooled perplexity at the last step / at step position `base` (fixed in advance, not chosen on the
    data), from per-record perplexity [S, N] and targets [N]."""
    log_ppl = np.log(ppl)

    def ratio(i: np.ndarray) -> np.ndarray:
        p = pooled_perplexity(log_ppl, tokens, i)
        return p[:, -1] / p[:, base]

    return ci(ratio, len(tokens))


def net_win_ci(win: int, tie: int, loss: int) -> Interval:
    """Win rate minus loss rate over judged pairs (+1 win, 0 tie, -1 loss), pairs resampled."""
    outcome = np.array([1.0] * win + [0.0] * tie + [-1.0] * loss)
    return ci(lambda i: outcome[i].mean(-1), len(outcome))


def bradley_terry_batch(scores: np.ndarray, games: np.ndarray, ridge: float, iters: int = 100) -> np.ndarray:
    """Bradley-Terry strengths [B, n] of B tournaments at once (scores, games [B, n, n] as
    mbc_jax.judge.bradley_terry.tables sums them; ties half a win): the penalized maximum likelihood of
    bradley_terry.fit (ridge > 0), by Newton's method, a step halved (up to 30 times) while it lowers the
    likelihood."""
    b, n = scores.shape[:2]
    theta = np.zeros((b, n))

    def loglik(t: np.ndarray, rows: np.ndarray | slice = slice(None)) -> np.ndarray:
        d = t[:, :, None] - t[:, None, :]
        return np.sum(scores[rows] * -np.logaddexp(0.0, -d), (1, 2)) - 0.5 * ridge * np.sum(t ** 2, 1)

    current = loglik(theta)
    for _ in range(iters):
        p = 1.0 / (1.0 + np.exp(-(theta[:, :, None] - theta[:, None, :])))
        grad = scores.sum(2) - np.sum(games * p, 2) - ridge * theta
        w = games * p * np.swapaxes(p, 1, 2)
        step = np.linalg.solve(-w + np.eye(n) * (w.sum(2) + ridge)[:, :, None], grad[..., None])[..., 0]
        value = loglik(theta + step)
        worse = np.nonzero(value < current - 1e-12)[0]
        for _ in range(30):  # halve the steps that lower the likelihood, those alone
            if not len(worse):
                break
            step[worse] /= 2
            value[worse] = loglik(theta[worse] + step[worse], worse)
            worse = worse[value[worse] < current[worse] - 1e-12]
        theta, current = theta + step, value
        if np.max(np.abs(step)) < 1e-9:
            break
    return theta


def strength_diff_ci(scores: np.ndarray, games: np.ndarray, first: int, last: int, ridge: float) -> Interval:
    """Bradley-Terry strength of player `last` minus that of `first` (logits), from per-prompt tables
    scores, games [G, n, n]; prompts resampled with replacement (every game on a drawn prompt comes along),
    the draws widened about the estimate by sqrt(G / (G - 1)), the small-sample correction of a bootstrap
    over G clusters (a selection judges 16 dev prompts at the tiny scale: unwidened, the draws' SD fell 8%
    short of the estimate's and the row said "contradicted" of a finding at its bound in 5% of seeds)."""
    g = scores.shape[0]

    def stat(idx: np.ndarray) -> np.ndarray:
        c = counts(idx, g)
        theta = bradley_terry_batch(np.einsum("bg,gij->bij", c, scores), np.einsum("bg,gij->bij", c, games), ridge)
        return theta[:, last] - theta[:, first]

    raw = ci(stat, g)
    if g < 2 or raw.boot is None or not len(raw.boot):
        return raw
    boot = raw[0] + (raw.boot - raw[0]) * math.sqrt(g / (g - 1))
    lo, hi = np.quantile(boot, [ALPHA / 2, 1 - ALPHA / 2])
    return Interval(raw[0], float(lo), float(hi), boot)


# ----------------------------------------------------------------------------- permutation tests, partial correlation


def _category_means(values: np.ndarray, labels: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(records [B, k], mean [B, k]) of `values` [N] per category under integer `labels` [B, N] in 0..k-1."""
    flat = (labels + k * np.arange(labels.shape[0])[:, None]).ravel()
    n = np.bincount(flat, minlength=labels.shape[0] * k).reshape(-1, k)
    sums = np.bincount(flat, np.broadcast_to(values, labels.shape).ravel(), labels.shape[0] * k).reshape(-1, k)
    return n, sums / np.maximum(n, 1)


def spread(values: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    """Between-category standard deviation sqrt(sum_c n_c (mean_c - mean)^2 / N) of `values` [N] under
    integer `labels` [B, N] in 0..k-1, one value per row."""
    n, means = _category_means(values, labels, k)
    return np.sqrt((n * (means - values.mean()) ** 2).sum(-1) / len(values))


def category_gap_test(values: Sequence[float], labels: Sequence, target: str, n_perm: int = N_BOOT, seed: int = SEED
                      ) -> tuple[float, float, float, float]:
    """(gap, p, p_other, critical): the one-sided test of "category `target` lies below the others": gap = the
    mean of the other categories' means (each category weighs the same) minus `target`'s mean; category labels
    permuted over the records (the null: categories exchangeable); p = (1 + #(null >= gap)) / (1 + n_perm), p_other
    the same on the other side (target above), critical the null's 97.5th percentile (the gap the one-sided 2.5%
    test tells from none). No category chosen on the data."""
    values = np.asarray(values, float)
    names, codes = np.unique(np.asarray(labels).astype(str), return_inverse=True)
    k, t = len(names), int(np.nonzero(names == target)[0][0])

    def gap(lab: np.ndarray) -> np.ndarray:
        means = _category_means(values, lab, k)[1]
        return (means.sum(-1) - means[:, t]) / (k - 1) - means[:, t]

    observed = float(gap(codes[None])[0])
    null = gap(np.random.default_rng(seed).permuted(np.broadcast_to(codes, (n_perm, len(codes))), axis=1))
    p = float((1 + np.sum(null >= observed - 1e-12)) / (1 + n_perm))
    p_other = float((1 + np.sum(null <= observed + 1e-12)) / (1 + n_perm))
    return observed, p, p_other, float(np.quantile(null, 1 - ALPHA / 2))


def permutation_test(values: np.ndarray, labels: Sequence, strata: np.ndarray | None = None, n_perm: int = N_BOOT,
                     seed: int = SEED) -> tuple[float, float, float]:
    """(spread, p, critical): the omnibus test of "the categories differ": `spread` of `values` by category,
    its permutation p-value (category labels permuted over the records, within each of `strata` when
    given; p = (1 + #(null >= observed)) / (1 + n_perm)) and the null's 95th percentile (the spread the
    sample could have told from none). No category is chosen on the data."""
    values = np.asarray(values, float)
    _, codes = np.unique(np.asarray(labels).astype(str), return_inverse=True)
    k = int(codes.max()) + 1
    observed = float(spread(values, codes[None], k)[0])
    rng = np.random.default_rng(seed)
    perm = np.broadcast_to(codes, (n_perm, len(codes))).copy()
    for s in (np.unique(strata) if strata is not None else [None]):
        cols = np.arange(len(codes)) if s is None else np.nonzero(strata == s)[0]
        perm[:, cols] = rng.permuted(perm[:, cols], axis=1)
    null = spread(values, perm, k)
    p = float((1 + np.sum(null >= observed - 1e-12)) / (1 + n_perm))
    return observed, p, float(np.quantile(null, CONFIDENCE))


def length_strata(length: np.ndarray, n: int = 4) -> np.ndarray:
    """Quantile strata (0..n-1) of `length`: records of one stratum have about the same length."""
    edges = np.quantile(length, np.linspace(0, 1, n + 1)[1:-1])
    return np.searchsorted(edges, length, side="right")


def length_residuals(values: np.ndarray, length: np.ndarray) -> np.ndarray:
    """`values` minus their least-squares line on log(length) (response length controlled by regression)."""
    x = np.column_stack([np.ones(len(length)), np.log(np.maximum(np.asarray(length, float), 1))])
    coef, *_ = np.linalg.lstsq(x, values, rcond=None)
    return values - x @ coef


def _pearson_rows(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    x, y = x - x.mean(-1, keepdims=True), y - y.mean(-1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (x * y).sum(-1) / np.sqrt((x * x).sum(-1) * (y * y).sum(-1))


def partial_spearman_ci(x: np.ndarray, y: np.ndarray, z: np.ndarray | None = None) -> Interval:
    """Spearman of x and y (partial: with z controlled, from the three rank correlations), records
    resampled; ranks are taken once on the full sample and each resample's correlation is the Pearson of
    the resampled ranks."""
    from scipy.stats import rankdata

    rx, ry = rankdata(x), rankdata(y)
    rz = None if z is None else rankdata(z)

    def stat(i: np.ndarray) -> np.ndarray:
        rxy = _pearson_rows(rx[i], ry[i])
        if rz is None:
            return rxy
        rxz, ryz = _pearson_rows(rx[i], rz[i]), _pearson_rows(ry[i], rz[i])
        with np.errstate(invalid="ignore", divide="ignore"):
            return (rxy - rxz * ryz) / np.sqrt((1 - rxz ** 2) * (1 - ryz ** 2))

    return ci(stat, len(rx))


# ----------------------------------------------------------------------------- verdicts


@dataclasses.dataclass
class Test:
    """One comparison of a row: a CI (value, lo, hi, with its draws) against `bound` on the finding's
    `side` (+1: the finding says above the bound, -1: below), or a permutation test (`p`, `critical`)."""

    label: str
    value: float
    lo: float = math.nan
    hi: float = math.nan
    bound: float = 0.0
    side: int = 1
    boot: np.ndarray | None = None
    p: float | None = None
    critical: float | None = None
    p_other: float | None = None  # a one-sided permutation test's p-value on the other side (it can contradict)
    unmet: str = ""  # a condition the finding also needs that the data does not meet (the test cannot hold)
    margin: float = 0.0  # a two-sided test (side 0): contradicted when the CI lies within bound +- margin

    @classmethod
    def of(cls, label: str, interval: Sequence[float], bound: float = 0.0, side: int = 1) -> Test:
        return cls(label, *map(float, interval[:3]), bound=bound, side=side, boot=getattr(interval, "boot", None))

    @classmethod
    def differs(cls, label: str, interval: Sequence[float], margin: float, bound: float = 0.0) -> Test:
        """Two-sided: holds when the CI excludes `bound`, contradicted when it lies within `bound` +- `margin`."""
        return cls(label, *map(float, interval[:3]), bound=bound, side=0, boot=getattr(interval, "boot", None),
                   margin=margin)

    @classmethod
    def permutation(cls, label: str, observed: float, p: float, critical: float, p_other: float | None = None,
                    unmet: str = "") -> Test:
        return cls(label, observed, p=p, critical=critical, p_other=p_other, unmet=unmet)

    def holds(self) -> bool:
        if self.unmet:
            return False
        if self.p is not None:  # a one-sided test (p_other set) at 2.5%, as one side of a 95% CI
            return self.p < (ALPHA / 2 if self.p_other is not None else ALPHA)
        if self.side == 0:
            return self.lo > self.bound or self.hi < self.bound
        return (self.lo > self.bound) if self.side > 0 else (self.hi < self.bound)

    def contradicts(self, m: int) -> bool:
        """The one-sided bound at level CONTRADICT_ALPHA / m lies wholly on the other side of the bound (a
        two-sided test: both one-sided bounds lie within bound +- margin)."""
        if self.p is not None:  # a two-sided "differs" cannot contradict; a one-sided test on its other side
            return self.p_other is not None and self.p_other < CONTRADICT_ALPHA / m
        if not (math.isfinite(self.lo) and math.isfinite(self.hi)):
            return False
        q = CONTRADICT_ALPHA / m
        if self.boot is None or not len(self.boot):
            return False
        if self.side == 0:  # equivalence: both one-sided bounds within the margin (two one-sided tests)
            lo, hi = np.quantile(self.boot, [q, 1 - q])
            return self.margin > 0 and self.bound - self.margin < lo and hi < self.bound + self.margin
        far = np.quantile(self.boot, 1 - q if self.side > 0 else q)
        return (far < self.bound) if self.side > 0 else (far > self.bound)

    def detectable(self) -> str:
        if self.unmet:
            return f"{self.label}: {self.unmet}"
        if self.p is not None:
            what, pct = ("a spread", "95th") if self.p_other is None else ("a value", "97.5th")
            return (f"{self.label}: {what} above {self.critical:.3g} (the permutation null's {pct} percentile; now "
                    f"{self.value:.3g}, p = {self.p:.3f})")
        if not (math.isfinite(self.lo) and math.isfinite(self.hi)):
            return f"{self.label}: too few records for an interval"
        size = DETECT_Z * (self.hi - self.lo) / (2 * 1.959964)
        if self.side == 0:
            return (f"{self.label}: a difference of +-{size:.3g} from {self.bound:.3g} (80% power); \"no "
                    f"difference\" needs the CI within +-{self.margin:.3g}")
        return f"{self.label}: {'+' if self.side > 0 else '-'}{size:.3g} beyond {self.bound:.3g} (80% power)"


def verdict(tests: Sequence[Test]) -> tuple[str, str]:
    """(holds | contradicted | inconclusive, why): the rule of the module docstring; `why` names the
    contradicting tests, or the effect each undecided test could have detected (or, two-sided tests that
    each hold on opposite sides, their values)."""
    m = sum(t.p is None or t.p_other is not None for t in tests)  # the tests that can contradict
    against = [t for t in tests if t.contradicts(m)]
    if against:
        beyond = [t.label for t in against if t.side]
        within = [f"{t.label} (within +-{t.margin:.3g} of {t.bound:.3g})" for t in against if not t.side]
        return CONTRADICTED, "; ".join([f"on the other side of the bound: {', '.join(beyond)}"] * bool(beyond)
                                       + [f"no difference: {', '.join(within)}"] * bool(within))
    if all(t.holds() for t in tests):
        two_sided = [t for t in tests if t.side == 0]
        if len({t.lo > t.bound for t in two_sided}) <= 1:
            return HOLDS, ""
        return INCONCLUSIVE, "the differences lie on opposite sides of 0: " + ", ".join(
            f"{t.label} {t.value:+.3g}" for t in two_sided)
    return INCONCLUSIVE, "the sample could detect " + "; ".join(t.detectable() for t in tests if not t.holds())
