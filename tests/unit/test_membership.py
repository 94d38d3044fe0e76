"""experiments/membership.py: AUC, its bootstrap CI and TPR at a fixed FPR against hand-computed values and a
brute-force pairwise count; the reference calibration over snapshots by hand."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from experiments.membership import auc, auc_ci, reference_calibrated, signals, tpr_at_fpr


def pairwise_auc(m, n) -> float:
    """The definition, pair by pair: wins + ties / 2 over all (member, non-member) pairs."""
    pairs = list(itertools.product(m, n))
    return sum(1.0 if a > b else 0.5 if a == b else 0.0 for a, b in pairs) / len(pairs)


def test_auc_by_hand():
    assert auc([3, 4, 5], [1, 2, 3.5]) == pytest.approx(8 / 9)  # 3 loses to 3.5 only
    assert auc([1, 2], [2, 0]) == pytest.approx(2.5 / 4)  # 2 vs 2 is a tie: one half
    assert auc([1, 1, 1], [1, 1]) == 0.5 and auc([5], [1]) == 1.0 and auc([1], [5]) == 0.0
    assert math.isnan(auc([], [1.0]))
    rng = np.random.default_rng(0)
    m, n = rng.integers(0, 6, 17).astype(float), rng.integers(0, 6, 11).astype(float)  # many ties
    assert auc(m, n) == pytest.approx(pairwise_auc(m, n), abs=1e-12)


def test_auc_ci_brackets_and_is_seeded():
    rng = np.random.default_rng(1)
    m, n = rng.normal(0.5, 1, 60), rng.normal(0, 1, 40)
    point, lo, hi = auc_ci(m, n, n_boot=400, seed=3)
    assert point == auc(m, n) and lo < point < hi and hi - lo < 0.4
    assert auc_ci(m, n, n_boot=400, seed=3) == (point, lo, hi)
    assert auc_ci([0.0] * 5, [0.0] * 4, n_boot=50) == (0.5, 0.5, 0.5)  # all tied: every resample is 0.5


def test_tpr_at_fpr_by_hand():
    members = [0.9, 0.8, 0.7, 0.2]
    non = [0.85, 0.6, 0.5, 0.4, 0.3, 0.25, 0.15, 0.1, 0.05, 0.0]
    assert tpr_at_fpr(members, non, 0.01) == 0.25  # flag no non-member: t above 0.85 flags only 0.9
    assert tpr_at_fpr(members, non, 0.1) == 0.75  # one non-member (0.85) flagged: t = 0.7
    assert tpr_at_fpr(members, non, 0.5) == 0.75  # five flagged (down to 0.3): 0.2 is still below
    assert tpr_at_fpr(members, non, 1.0) == 1.0
    assert tpr_at_fpr([1.0, 1.0], [1.0] * 10, 0.1) == 0.0  # a tie with every non-member: nothing flags it alone


def test_reference_calibration_and_signal_orientation():
    step0 = {"split": np.array(["train", "train", "val"], object), "index": np.array([0, 1, 0]),
             "perplexity": np.exp([2.0, 3.0, 2.5]), "response_perplexity": np.exp([1.0, np.nan, 1.5])}
    later = {"split": np.array(["val", "train", "train"], object), "index": np.array([0, 0, 1]),
             "perplexity": np.exp([2.4, 1.0, 2.0]), "response_perplexity": np.exp([1.2, 0.5, 0.7]),
             "min_k": np.array([-3.0, -1.0, -2.0]), "zlib_ratio": np.array([0.02, 0.01, 0.03])}
    np.testing.assert_allclose(reference_calibrated(later, step0, False), [-0.1, -1.0, -1.0])
    np.testing.assert_allclose(reference_calibrated(later, step0, True), [-0.3, -0.5, np.nan])
    got = signals(later, step0, response=False)
    np.testing.assert_allclose(got["loss"], [-2.4, -1.0, -2.0])
    np.testing.assert_allclose(got["reference"], [0.1, 1.0, 1.0])
    np.testing.assert_allclose(got["zlib"], [-0.02, -0.01, -0.03])
    np.testing.assert_array_equal(got["min_k"], [-3.0, -1.0, -2.0])
    assert np.isnan(got["min_k_pp"]).all()  # a snapshot without the column: no signal
