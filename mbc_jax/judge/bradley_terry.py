"""Bradley-Terry strengths from pairwise judge outcomes, with bootstrap CIs over prompts.

The model: P(i beats j) = sigmoid(theta_i - theta_j). A tie counts as half a win for each side
(the usual "ties as half points" reading; no Davidson tie parameter). The fit maximizes

    sum over games of  s * log sigmoid(theta_a - theta_b) + (1 - s) * log sigmoid(theta_b - theta_a)
    - (ridge / 2) * sum_i theta_i**2

(s = 1 when a wins, 0.5 for a tie, 0 when b wins) by Newton's method with step halving. The tiny
ridge (a N(0, 1/ridge) prior on each strength) makes the maximum exist and be unique when a
player wins or loses every game or the comparison graph is not connected; it also centres the
strengths (at the optimum they sum to 0, since the game terms' gradients cancel in the sum).

Games are aggregated per group (a dev prompt): `S[g, i, j]` is the score i earned against j on
prompt g, `N[g, i, j]` the number of games between them. The bootstrap resamples the prompts with
replacement (all games on a drawn prompt come along, counted as often as it is drawn) and refits.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

TOP_TOLERANCE = 1e-9  # strengths this close count as a tie for the top of a bootstrap fit
DEFAULT_RIDGE = 0.01  # prior sd 10 on each strength, in logits: it only matters when a fit would diverge


@dataclass(frozen=True)
class Tables:
    """Per-group score and game-count matrices of a tournament: S, N with shape [groups, n, n]."""

    scores: np.ndarray
    games: np.ndarray
    wins: np.ndarray  # [n] games won, tied and lost by each player
    ties: np.ndarray
    losses: np.ndarray

    @property
    def n_players(self) -> int:
        return self.scores.shape[1]


def tables(n_players: int, n_groups: int, a: Sequence[int], b: Sequence[int], score_a: Sequence[float],
           group: Sequence[int]) -> Tables:
    """Aggregate games (player a, player b, a's score in {0, 0.5, 1}, group) into `Tables`."""
    a, b, g = (np.asarray(x, np.int64) for x in (a, b, group))
    s = np.asarray(score_a, np.float64)
    if not (len(a) == len(b) == len(s) == len(g)):
        raise ValueError("a, b, score_a and group must have the same length")
    if np.any(a == b):
        raise ValueError("a game needs two different players")
    if np.any((s != 0) & (s != 0.5) & (s != 1)):
        raise ValueError("scores must be 0, 0.5 or 1")
    scores = np.zeros((n_groups, n_players, n_players))
    games = np.zeros((n_groups, n_players, n_players))
    np.add.at(scores, (g, a, b), s)
    np.add.at(scores, (g, b, a), 1.0 - s)
    np.add.at(games, (g, a, b), 1.0)
    np.add.at(games, (g, b, a), 1.0)
    count = lambda players, mask: np.bincount(players[mask], minlength=n_players)  # noqa: E731
    return Tables(scores, games, wins=count(a, s == 1) + count(b, s == 0), ties=count(a, s == 0.5) + count(b, s == 0.5),
                  losses=count(a, s == 0) + count(b, s == 1))


def log_likelihood(theta: np.ndarray, scores: np.ndarray, games: np.ndarray, ridge: float = DEFAULT_RIDGE) -> float:
    """The penalized log-likelihood of `theta` given summed [n, n] score and game matrices."""
    d = theta[:, None] - theta[None, :]
    # scores[i, j] * log sigmoid(theta_i - theta_j), each game counted from both sides once
    return float(np.sum(scores * -np.logaddexp(0.0, -d)) - 0.5 * ridge * np.sum(theta ** 2))


def fit(scores: np.ndarray, games: np.ndarray, ridge: float = DEFAULT_RIDGE, *, tol: float = 1e-10,
        max_iter: int = 200) -> np.ndarray:
    """Strengths theta [n] maximizing the penalized likelihood of summed [n, n] matrices.

    `ridge` must be > 0 unless every player has both a win and a loss (half-wins count) in a
    connected tournament; then `ridge=0` gives the plain maximum-likelihood fit, centred.
    """
    n = scores.shape[0]
    theta = np.zeros(n)
    wins = scores.sum(1)
    current = log_likelihood(theta, scores, games, ridge)
    for _ in range(max_iter):
        p = 1.0 / (1.0 + np.exp(-(theta[:, None] - theta[None, :])))  # P(i beats j)
        grad = wins - np.sum(games * p, 1) - ridge * theta
        w = games * p * p.T  # games * p_ij * (1 - p_ij)
        hess = np.diag(w.sum(1) + ridge) - w  # minus the Hessian: a Laplacian plus the ridge
        if ridge == 0:
            hess += 1.0 / n  # fixes the free shift (its direction has zero curvature)
        step = np.linalg.solve(hess, grad)
        t = 1.0
        while True:
            new = theta + t * step
            value = log_likelihood(new, scores, games, ridge)
            if value >= current - 1e-12 or t < 1e-8:
                break
            t /= 2
        theta, current = new, value
        if np.max(np.abs(t * step)) < tol:
            break
    return theta - theta.mean() if ridge == 0 else theta


@dataclass(frozen=True)
class Ranking:
    """A fit with its bootstrap: strength per player, CI bounds, P(top), and win/tie/loss counts."""

    strength: np.ndarray
    ci_low: np.ndarray
    ci_high: np.ndarray
    p_top: np.ndarray  # share of bootstrap fits in which the player has the highest strength (m tied: 1/m each)
    wins: np.ndarray
    ties: np.ndarray
    losses: np.ndarray
    n_boot: int
    ridge: float

    @property
    def best(self) -> int:
        """The player with the highest strength (the first one on an exact tie)."""
        return int(np.argmax(self.strength))


def rank(t: Tables, *, ridge: float = DEFAULT_RIDGE, n_boot: int = 1000, seed: int = 0,
         level: float = 0.95) -> Ranking:
    """Fit all groups, then `n_boot` fits of groups resampled with replacement (percentile CIs)."""
    scores, games = t.scores.sum(0), t.games.sum(0)
    strength = fit(scores, games, ridge)
    n, n_groups = t.n_players, t.scores.shape[0]
    rng = np.random.default_rng(seed)
    boot = np.empty((n_boot, n))
    for k in range(n_boot):
        counts = np.bincount(rng.integers(0, n_groups, n_groups), minlength=n_groups).astype(np.float64)
        boot[k] = fit(np.tensordot(counts, t.scores, 1), np.tensordot(counts, t.games, 1), ridge)
    alpha = (1 - level) / 2
    if n_boot:
        lo, hi = np.quantile(boot, [alpha, 1 - alpha], axis=0)
        top = boot >= boot.max(1, keepdims=True) - TOP_TOLERANCE  # a tie at the top is shared, not given to the first
        p_top = (top / top.sum(1, keepdims=True)).mean(0)
    else:
        lo = hi = p_top = np.full(n, np.nan)
    return Ranking(strength, lo, hi, p_top, t.wins, t.ties, t.losses, n_boot=n_boot, ridge=ridge)
