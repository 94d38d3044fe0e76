"""mbc_jax/judge/bradley_terry.py: hand-computed tournaments, an independent scipy optimization of the
same likelihood written game by game, the gradient at the fit, and the bootstrap against a direct loop."""

import numpy as np
import pytest
from scipy.optimize import minimize

from mbc_jax.judge import bradley_terry as bt


def games_from_counts(counts):
    """counts: {(i, j): (wins of i, ties, wins of j)} -> (a, b, score_a, group), one group per game."""
    a, b, s = [], [], []
    for (i, j), (w, t, lost) in counts.items():
        for score, n in ((1.0, w), (0.5, t), (0.0, lost)):
            a += [i] * n
            b += [j] * n
            s += [score] * n
    return a, b, s, list(range(len(a)))


def summed(n, a, b, s, g):
    t = bt.tables(n, max(g) + 1, a, b, s, g)
    return t, t.scores.sum(0), t.games.sum(0)


def nll_by_games(theta, a, b, s, ridge):
    """The negative penalized log-likelihood, one game at a time (independent of bt's matrices)."""
    total = 0.0
    for i, j, x in zip(a, b, s):
        p = 1.0 / (1.0 + np.exp(-(theta[i] - theta[j])))
        total += x * np.log(p) + (1 - x) * np.log(1 - p)
    return -(total - 0.5 * ridge * np.sum(theta ** 2))


def test_three_players_with_known_strengths():
    # p = (4, 2, 1): P(A>B) = 4/6, P(B>C) = 2/3, P(A>C) = 4/5; observed = expected, so the MLE is exact
    a, b, s, g = games_from_counts({(0, 1): (4, 0, 2), (1, 2): (4, 0, 2), (0, 2): (4, 0, 1)})
    t, S, N = summed(3, a, b, s, g)
    want = np.log([4.0, 2.0, 1.0])
    np.testing.assert_allclose(bt.fit(S, N, ridge=0), want - want.mean(), atol=1e-10)
    assert list(t.wins) == [8, 6, 3] and list(t.losses) == [3, 6, 8] and list(t.ties) == [0, 0, 0]


def test_two_players_closed_form_with_ties_as_half_wins():
    # 3 wins, 2 ties, 1 loss: score 4 of 6, so exp(theta_0 - theta_1) = 4 / 2
    a, b, s, g = games_from_counts({(0, 1): (3, 2, 1)})
    t, S, N = summed(2, a, b, s, g)
    theta = bt.fit(S, N, ridge=0)
    assert theta[0] - theta[1] == pytest.approx(np.log(2.0), abs=1e-10)
    assert theta.sum() == pytest.approx(0, abs=1e-12)
    assert (list(t.wins), list(t.ties), list(t.losses)) == ([3, 1], [2, 2], [1, 3])


def test_cycle_gives_equal_strengths():
    a, b, s, g = games_from_counts({(0, 1): (2, 0, 1), (1, 2): (2, 0, 1), (2, 0): (2, 0, 1)})
    np.testing.assert_allclose(bt.fit(*summed(3, a, b, s, g)[1:], ridge=0), 0, atol=1e-10)


@pytest.mark.parametrize("ridge", [0.0, bt.DEFAULT_RIDGE, 0.5])
def test_random_tournament_matches_scipy_and_zero_gradient(ridge):
    rng = np.random.default_rng(3)
    n = 5
    a, b, s = [], [], []
    for _ in range(120):
        i, j = rng.choice(n, 2, replace=False)
        a.append(int(i))
        b.append(int(j))
        s.append(float(rng.choice([0.0, 0.5, 1.0], p=[0.3, 0.2, 0.5] if i < j else [0.5, 0.2, 0.3])))
    _, S, N = summed(n, a, b, s, list(range(len(a))))
    theta = bt.fit(S, N, ridge=ridge)
    ref = minimize(nll_by_games, np.zeros(n), args=(a, b, s, ridge), method="BFGS", options={"gtol": 1e-9}).x
    if ridge == 0:
        ref -= ref.mean()
    np.testing.assert_allclose(theta, ref, atol=1e-5)
    # the score equations: each player's half-point wins = expected wins (+ ridge * theta)
    grad = np.zeros(n)
    for i, j, x in zip(a, b, s):
        p = 1.0 / (1.0 + np.exp(-(theta[i] - theta[j])))
        grad[i] += x - p
        grad[j] -= x - p
    np.testing.assert_allclose(grad - ridge * theta, 0, atol=1e-8)
    assert nll_by_games(theta, a, b, s, ridge) <= nll_by_games(ref, a, b, s, ridge) + 1e-9


def test_a_player_winning_everything_stays_finite_with_the_ridge():
    a, b, s, g = games_from_counts({(0, 1): (5, 0, 0), (0, 2): (5, 0, 0), (1, 2): (3, 0, 2)})
    _, S, N = summed(3, a, b, s, g)
    theta = bt.fit(S, N)
    assert np.all(np.isfinite(theta)) and np.argmax(theta) == 0
    assert theta.sum() == pytest.approx(0, abs=1e-8)  # the ridge centres the strengths
    ref = minimize(nll_by_games, np.zeros(3), args=(a, b, s, bt.DEFAULT_RIDGE), method="BFGS",
                   options={"gtol": 1e-10}).x
    np.testing.assert_allclose(theta, ref, atol=1e-4)


def test_bootstrap_resamples_groups_like_a_direct_loop():
    rng = np.random.default_rng(0)
    n, groups = 4, 7
    a, b, s, g = [], [], [], []
    for grp in range(groups):
        for i in range(n):
            for j in range(i + 1, n):
                a.append(i)
                b.append(j)
                s.append(float(rng.choice([0.0, 0.5, 1.0])))
                g.append(grp)
    t = bt.tables(n, groups, a, b, s, g)
    r = bt.rank(t, n_boot=50, seed=5)
    # the same draws, refitted from the game list of the drawn groups (with repeats)
    draws = np.random.default_rng(5)
    boots = []
    for _ in range(50):
        picked = draws.integers(0, groups, groups)
        ga, gb, gs = [], [], []
        for grp in picked:
            idx = [k for k in range(len(g)) if g[k] == grp]
            ga += [a[k] for k in idx]
            gb += [b[k] for k in idx]
            gs += [s[k] for k in idx]
        _, S, N = summed(n, ga, gb, gs, list(range(len(ga))))
        boots.append(bt.fit(S, N))
    boots = np.array(boots)
    lo, hi = np.quantile(boots, [0.025, 0.975], axis=0)
    np.testing.assert_allclose(r.ci_low, lo, atol=1e-8)
    np.testing.assert_allclose(r.ci_high, hi, atol=1e-8)
    top = boots >= boots.max(1, keepdims=True) - 1e-9  # players tied at the top of a fit share it
    np.testing.assert_allclose(r.p_top, (top / top.sum(1, keepdims=True)).mean(0))
    assert (top.sum(1) > 1).any()  # this tournament has such ties (argmax would give them all to the first)
    np.testing.assert_allclose(r.strength, bt.fit(t.scores.sum(0), t.games.sum(0)), atol=1e-12)
    assert r.best == int(np.argmax(r.strength))
    assert (r.wins + r.ties + r.losses).sum() == 2 * len(a)


def test_tables_refuses_bad_games():
    with pytest.raises(ValueError, match="two different"):
        bt.tables(2, 1, [0], [0], [1.0], [0])
    with pytest.raises(ValueError, match="0, 0.5 or 1"):
        bt.tables(2, 1, [0], [1], [0.7], [0])
