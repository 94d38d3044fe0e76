"""mbc_jax/judge/length.py: the logistic fit vs scipy and vs hand-derivable cases, the length-controlled win
rate and its bootstrap, the mean answer lengths."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.optimize import minimize

from mbc_jax.judge import length

Y = {1.0: "A", 0.5: "tie", 0.0: "B"}


def scipy_fit(x, y, l2=length.L2):
    def f(t):
        z = t[0] + t[1] * x
        return (np.logaddexp(0, z) - y * z).sum() + 0.5 * l2 * t[1] ** 2

    def g(t):
        r = 0.5 * (1 + np.tanh(0.5 * (t[0] + t[1] * x))) - y
        return np.array([r.sum(), (r * x).sum() + l2 * t[1]])

    return minimize(f, [0.0, 0.0], jac=g, method="BFGS", options={"gtol": 1e-11}).x


def synthetic(n, rng, b0=0.4, b1=1.5, tie_share=0.25, longer=0.0):
    """Word-length differences (A longer by `longer` words on average) and verdicts from a known
    length-favouring judge, ties included."""
    diff = np.round(rng.normal(longer, 30, n))
    p = 1 / (1 + np.exp(-(b0 + b1 * np.tanh(diff / diff.std()))))
    u = rng.random(n)
    y = np.where(u < tie_share, 0.5, np.where(rng.random(n) < p, 1.0, 0.0))
    js = [{"words_a": 100 + d, "words_b": 100, "outcome": Y[v]} for d, v in zip(diff, y)]
    return diff, y, js


def test_fit_matches_scipy_with_and_without_ties():
    rng = np.random.default_rng(0)
    diff, y, js = synthetic(300, rng)
    x = np.tanh(diff / diff.std())
    for mask in (np.ones_like(y, bool), y != 0.5):  # ties as half, ties excluded
        b = length.fit_logistic(x[mask], y[mask])
        assert b == pytest.approx(scipy_fit(x[mask], y[mask]), abs=1e-6)
    for ties, mask in (("half", np.ones_like(y, bool)), ("exclude", y != 0.5)):
        lc = length.length_controlled(js, ties=ties, n_boot=200)
        b0, b1 = scipy_fit(np.tanh(diff[mask] / diff[mask].std()), y[mask])
        assert (lc["intercept"], lc["slope"]) == pytest.approx((b0, b1), abs=1e-6)
        assert lc["lc_win_rate"] == pytest.approx(1 / (1 + np.exp(-b0)), abs=1e-9)
        assert lc["raw_preference"] == pytest.approx(y[mask].mean()) and lc["n"] == mask.sum()
        assert lc["slope"] > 0.5  # the synthetic judge favours length, and the fit sees it
    # a length-favouring judge and A longer: the raw preference overstates A; the LC rate removes that
    _, _, js = synthetic(2000, rng, b0=0.0, b1=2.0, longer=20.0)
    lc = length.length_controlled(js, n_boot=200)
    assert lc["raw_preference"] > 0.58 and lc["lc_win_rate"] == pytest.approx(0.5, abs=0.04)


def test_no_length_effect_gives_the_raw_rate_exactly():
    # Every length difference carries the same mix of verdicts (2 wins, 1 tie, 1 loss): the MLE
    # slope is 0 and the unpenalized intercept reproduces the raw preference exactly.
    diffs = [-40, -5, 0, 12, 70]
    js = [{"words_a": 50 + d, "words_b": 50, "outcome": o} for d in diffs for o in ("A", "A", "tie", "B")]
    lc = length.length_controlled(js, n_boot=300)
    assert lc["slope"] == pytest.approx(0, abs=1e-9)
    assert lc["lc_win_rate"] == pytest.approx(lc["raw_preference"], abs=1e-12) == 2.5 / 4
    excl = length.length_controlled(js, ties="exclude", n_boot=50)
    assert excl["lc_win_rate"] == pytest.approx(2 / 3, abs=1e-12) and excl["n"] == 15


def test_two_length_groups_by_hand():
    # d = +c for half the pairs, -c for the other half: x = +-tanh(1), two groups with win shares
    # p1 and p2; without a penalty the fit is saturated, so sigmoid(b0 + b1 t) = p1 and
    # sigmoid(b0 - b1 t) = p2, hence b0 = (logit p1 + logit p2) / 2.
    y1 = [1.0] * 6 + [0.5] * 2 + [0.0] * 2  # p1 = 0.7
    y2 = [1.0] * 2 + [0.5] * 2 + [0.0] * 6  # p2 = 0.3
    x = np.tanh(np.array([1.0] * 10 + [-1.0] * 10))
    b0, b1 = length.fit_logistic(x, y1 + y2, l2=0.0)
    logit = lambda p: np.log(p / (1 - p))  # noqa: E731
    assert b0 == pytest.approx((logit(0.7) + logit(0.3)) / 2, abs=1e-10)  # = 0: LC rate 50%
    assert b1 == pytest.approx((logit(0.7) - logit(0.3)) / (2 * np.tanh(1.0)), abs=1e-10)
    y2 = [1.0] * 4 + [0.5] * 2 + [0.0] * 4  # p2 = 0.5
    b0, _ = length.fit_logistic(x, y1 + y2, l2=0.0)
    assert b0 == pytest.approx(logit(0.7) / 2, abs=1e-10)


def test_bootstrap_ci_is_the_refit_on_each_resample_and_seeded():
    rng = np.random.default_rng(1)
    diff, y, js = synthetic(60, rng)
    lc = length.length_controlled(js, n_boot=200, seed=5)
    # the same resamples (one batch, drawn as the function draws them), refit one by one with scipy
    idx = np.random.default_rng(5).integers(0, 60, size=(200, 60))
    ref = []
    for row in idx:
        d, yy = diff[row], y[row]
        b0, _ = scipy_fit(np.tanh(d / d.std()), yy)
        ref.append(1 / (1 + np.exp(-b0)))
    assert lc["lc_ci"] == pytest.approx(np.quantile(ref, [0.025, 0.975]), abs=1e-5)
    assert lc["lc_ci"][0] < lc["lc_win_rate"] < lc["lc_ci"][1]
    assert length.length_controlled(js, n_boot=200, seed=5) == lc
    assert length.length_controlled(js, n_boot=200, seed=6)["lc_ci"] != lc["lc_ci"]


def test_degenerate_samples():
    same = [{"words_a": 10, "words_b": 10, "outcome": o} for o in ("A", "B", "A", "tie")]
    lc = length.length_controlled(same, n_boot=100)  # no length spread: the raw rate
    assert lc["lc_win_rate"] == pytest.approx(2.5 / 4, abs=1e-12) and lc["slope"] == 0
    wins = [{"words_a": 10 + i, "words_b": 10, "outcome": "A"} for i in range(5)]
    assert length.length_controlled(wins, n_boot=50)["lc_win_rate"] == 1.0
    # separated by length (every longer A wins, every shorter A loses): finite, in (0, 1)
    sep = [{"words_a": 10 + d, "words_b": 10, "outcome": "A" if d > 0 else "B"} for d in (-9, -3, -1, 2, 4, 8)]
    lc = length.length_controlled(sep, n_boot=100)
    assert np.isfinite(lc["slope"]) and 0 < lc["lc_ci"][0] <= lc["lc_win_rate"] <= lc["lc_ci"][1] < 1
    empty = length.length_controlled([{"words_a": 1, "words_b": 2, "outcome": None}])
    assert empty["n"] == 0 and empty["lc_win_rate"] is None


def test_answer_lengths_vs_numpy():
    rng = np.random.default_rng(2)
    wa, wb = rng.integers(0, 200, 30), rng.integers(0, 200, 30)
    js = [{"words_a": int(a), "words_b": int(b), "tokens_a": int(2 * a), "tokens_b": int(b) + 1}
          for a, b in zip(wa, wb)]
    out = length.answer_lengths(js)
    assert (out["mean_words_a"], out["mean_words_b"]) == pytest.approx((wa.mean(), wb.mean()))
    assert out["words_ratio_a_to_b"] == pytest.approx(wa.mean() / wb.mean())
    assert (out["mean_tokens_a"], out["mean_tokens_b"]) == pytest.approx((2 * wa.mean(), wb.mean() + 1))
    js[0].pop("tokens_a")
    assert length.answer_lengths(js)["n_with_tokens"] == 29
