"""Answer lengths and the length-controlled win rate of a pairwise comparison.

Why: a judge that prefers longer answers credits whichever model writes more. MBC draws perplexing
(often long) records more often, and on Dolly trains on about 1.5x the baseline's tokens, so its
answers may be longer; the raw win rate cannot tell quality from length.

- Lengths are counted in **words** (whitespace-separated, `protocol.words`) of each answer as the
  judge reads it, for any two answer files whatever their tokenizers; mean generated **tokens**
  (`num_tokens` of `mbc-jax generate`) are reported beside them when both files carry them.
- The length-controlled (LC) win rate follows length-controlled AlpacaEval (Dubois et al. 2024,
  "Length-Controlled AlpacaEval: A Simple Way to Debias Automatic Evaluators"): a logistic model of
  the verdict, P(A preferred) = sigmoid(b0 + b1 * tanh(d / sd(d))), with d = words(A) - words(B)
  per pair and sd its standard deviation over the pairs; the LC win rate is the model's prediction
  at zero length difference, sigmoid(b0). (AlpacaEval's model also has instruction-difficulty
  terms fit across many models; with one comparison there is nothing to fit them on.)
- Ties count as half a win (y = 0.5 in the log-likelihood, as AlpacaEval counts them), so the LC
  rate is comparable with the raw preference (wins + ties / 2) / n, which is reported next to it;
  `ties="exclude"` fits on wins and losses only.
- The fit is Newton's method (IRLS) with backtracking on the negative log-likelihood plus a weak
  L2 penalty (`L2`) on the slope only, so that the slope stays finite when the length difference
  separates wins from losses (it happens in small bootstrap resamples). The intercept is not
  penalized: with no length effect in the data the LC rate equals the raw preference exactly.
- The CI is a percentile bootstrap over pairs (the whole estimator, sd included, refit on every
  resample), seeded.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np

L2 = 1e-3  # penalty on the slope: keeps separated samples finite, negligible otherwise
_Y = {"A": 1.0, "tie": 0.5, "B": 0.0}
_CHUNK = 2_000_000  # resamples x pairs per vectorized batch of bootstrap fits


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))  # stable for any z


def _feature(diff: np.ndarray) -> np.ndarray:
    """tanh(d / sd(d)) per row of `diff` [B, n] (all zero for a row with no spread)."""
    sd = diff.std(axis=1, keepdims=True)
    return np.tanh(np.divide(diff, sd, out=np.zeros_like(diff), where=sd > 0))


def _fit_rows(x: np.ndarray, y: np.ndarray, l2: float, max_iter: int = 100,
              tol: float = 1e-10) -> np.ndarray:
    """Penalized logistic fits of y on [1, x], one per row of x, y [B, n]: [B, 2] (b0, b1).

    Rows whose y are all 0 or all 1 have no finite intercept; the caller handles them.
    """
    theta = np.zeros((x.shape[0], 2))

    def loss(t: np.ndarray) -> np.ndarray:
        z = t[:, :1] + t[:, 1:] * x
        return (np.logaddexp(0.0, z) - y * z).sum(axis=1) + 0.5 * l2 * t[:, 1] ** 2

    f = loss(theta)
    for _ in range(max_iter):
        p = _sigmoid(theta[:, :1] + theta[:, 1:] * x)
        r, w = p - y, p * (1.0 - p)
        g0, g1 = r.sum(axis=1), (r * x).sum(axis=1) + l2 * theta[:, 1]
        h00, h01, h11 = w.sum(axis=1), (w * x).sum(axis=1), (w * x * x).sum(axis=1) + l2
        det = h00 * h11 - h01 * h01
        step = np.stack([h11 * g0 - h01 * g1, h00 * g1 - h01 * g0], axis=1) / det[:, None]
        step = np.nan_to_num(step)  # a row whose Hessian vanished has nothing left to move
        if np.abs(step).max() < tol:  # converged: the last (tiny) Newton step is exact enough to take
            theta = theta - step
            break
        scale = np.ones(x.shape[0])
        for _ in range(60):  # backtracking: the penalized NLL must not increase
            new = theta - scale[:, None] * step
            f_new = loss(new)
            worse = ~(f_new <= f + 1e-12 * np.abs(f))  # NaN counts as worse
            if not worse.any():
                break
            scale = np.where(worse, scale / 2, scale)
        theta, f = np.where(worse[:, None], theta, new), np.where(worse, f, f_new)
    return theta


def fit_logistic(x, y, *, l2: float = L2) -> tuple[float, float]:
    """(b0, b1) maximizing sum y log s(b0 + b1 x) + (1 - y) log(1 - s(...)) - l2 / 2 * b1**2; y in [0, 1]."""
    x, y = np.asarray(x, dtype=float)[None], np.asarray(y, dtype=float)[None]
    if y.size == 0 or y.min() == y.max() and y.min() in (0.0, 1.0):
        raise ValueError("logistic fit needs some y strictly between 0 and 1, or both 0 and 1")
    b0, b1 = _fit_rows(x, y, l2)[0]
    return float(b0), float(b1)


def _lc_rows(diff: np.ndarray, y: np.ndarray, l2: float) -> np.ndarray:
    """LC win rate sigmoid(b0) per row of (diff, y) [B, n]; a row of all wins is 1, all losses 0."""
    mean = y.mean(axis=1)
    degenerate = (y.min(axis=1) == y.max(axis=1)) & np.isin(mean, (0.0, 1.0))
    y = np.where(degenerate[:, None], 0.5, y)  # any finite fit; overwritten below
    lc = _sigmoid(_fit_rows(_feature(diff), y, l2)[:, 0])
    return np.where(degenerate, mean, lc)


def _verdicts(judgments: Iterable[Mapping], field: str, ties: str) -> tuple[np.ndarray, np.ndarray]:
    """(word-length difference A - B, y) over the pairs with a valid `field` outcome."""
    if ties not in ("half", "exclude"):
        raise ValueError(f"ties must be 'half' or 'exclude', got {ties!r}")
    rows = [(j["words_a"] - j["words_b"], _Y[j[field]]) for j in judgments
            if j.get(field) in _Y and (ties == "half" or j[field] != "tie")]
    diff, y = (np.array(v, dtype=float) for v in zip(*rows)) if rows else (np.zeros(0), np.zeros(0))
    return diff, y


def length_controlled(
    judgments: Iterable[Mapping],
    field: str = "outcome",
    *,
    ties: str = "half",
    n_boot: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
    l2: float = L2,
) -> dict:
    """The LC win rate of model A from the judgments' `field` outcomes, with its bootstrap CI.

    Returns n, ties, the raw preference (mean y: (wins + ties / 2) / n with ties as half,
    wins / (wins + losses) with ties excluded), the fit's intercept and slope, `lc_win_rate` =
    sigmoid(intercept), and `lc_ci` = [lo, hi]; rates are None when no pair has a valid outcome.
    """
    diff, y = _verdicts(judgments, field, ties)
    n = int(y.size)
    out: dict = {"n": n, "ties": ties, "length_unit": "words", "l2": l2, "raw_preference": None,
                 "intercept": None, "slope": None, "lc_win_rate": None, "lc_ci": None}
    if n == 0:
        return out
    out["raw_preference"] = float(y.mean())
    if y.min() == y.max() and y[0] in (0.0, 1.0):
        out["lc_win_rate"], out["lc_ci"] = float(y[0]), [float(y[0])] * 2
        return out
    b0, b1 = _fit_rows(_feature(diff[None]), y[None], l2)[0]
    out.update(intercept=float(b0), slope=float(b1), lc_win_rate=float(_sigmoid(np.array(b0))))
    rng = np.random.default_rng(seed)
    boots = []
    per_batch = max(1, _CHUNK // n)
    for start in range(0, n_boot, per_batch):
        idx = rng.integers(0, n, size=(min(per_batch, n_boot - start), n))
        boots.append(_lc_rows(diff[idx], y[idx], l2))
    alpha = (1.0 - confidence) / 2.0
    lo, hi = np.quantile(np.concatenate(boots), [alpha, 1.0 - alpha])
    out["lc_ci"] = [float(lo), float(hi)]
    return out


def answer_lengths(judgments: Iterable[Mapping]) -> dict:
    """Mean answer length of each side over all matched pairs: words, and tokens when known."""
    judgments = list(judgments)
    n = len(judgments)
    out: dict = {"n": n, "unit": "words (whitespace-separated)"}
    for side in ("a", "b"):
        out[f"mean_words_{side}"] = float(np.mean([j[f"words_{side}"] for j in judgments])) if n else None
    out["words_ratio_a_to_b"] = (out["mean_words_a"] / out["mean_words_b"]
                                 if n and out["mean_words_b"] else None)
    with_tokens = [j for j in judgments if "tokens_a" in j and "tokens_b" in j]
    out["n_with_tokens"] = len(with_tokens)
    for side in ("a", "b"):
        out[f"mean_tokens_{side}"] = (float(np.mean([j[f"tokens_{side}"] for j in with_tokens]))
                                      if with_tokens else None)
    return out
