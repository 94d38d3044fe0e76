"""mbc_jax/judge/winrate.py: single-order and consistent rates vs numpy, bootstrap intervals, summaries with
invalid and empty blocks, the plot."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from mbc_jax.judge import winrate

POSITIONAL = {"a_first": {"A": "A", "B": "B", "tie": "C"}, "b_first": {"A": "B", "B": "A", "tie": "C"}}


def judgment(w_a_first, w_b_first, seeded="a_first", category="c", i=0):
    """A judgment dict of `protocol.judgment`'s shape for --orders 2 (winners per order)."""
    agree = w_a_first == w_b_first
    return {"id": f"q{i}", "category": category, "orders": 2, "seeded_order": seeded,
            "verdict_a_first": POSITIONAL["a_first"][w_a_first], "winner_a_first": w_a_first,
            "verdict_b_first": POSITIONAL["b_first"][w_b_first], "winner_b_first": w_b_first,
            "single": w_a_first if seeded == "a_first" else w_b_first,
            "consistent_outcome": w_a_first if agree else "tie", "consistent": agree,
            "outcome": w_a_first if agree else "tie"}


def fake_judgments(outcomes, consistent=None):
    """Pairs with the given consistent outcomes; an inconsistent pair is A-first A, B-first B."""
    out = []
    for i, o in enumerate(outcomes):
        agree = True if consistent is None else consistent[i]
        out.append(judgment(*((o, o) if agree else ("A", "B")), i=i))
    return out


def test_rates_match_numpy_on_random_judgments():
    rng = np.random.default_rng(3)
    n = 400
    w1 = rng.choice(["A", "B", "tie"], size=n, p=[0.5, 0.3, 0.2])
    w2 = np.where(rng.random(n) < 0.7, w1, rng.choice(["A", "B", "tie"], size=n))
    seeded = rng.choice(["a_first", "b_first"], size=n)
    js = [judgment(a, b, s, i=i) for i, (a, b, s) in enumerate(zip(w1, w2, seeded))]
    single = np.where(seeded == "a_first", w1, w2)
    consistent = np.where(w1 == w2, w1, "tie")
    for kind, truth in (("single_order", single), ("consistent", consistent)):
        o = winrate.summarize(js, kind, n_boot=3000, seed=0)["overall"]
        for part, label in (("win", "A"), ("tie", "tie"), ("loss", "B")):
            assert o[part] == (truth == label).sum() and o[f"{part}_rate"] == (truth == label).mean()
            # the multinomial shortcut vs a plain index-resampling bootstrap in numpy
            idx = np.random.default_rng(9).integers(0, n, size=(3000, n))
            ref = np.quantile((truth[idx] == label).mean(axis=1), [0.025, 0.975])
            assert o[f"{part}_ci"] == pytest.approx(ref, abs=0.012)
    o = winrate.summarize(js, "single_order", n_boot=100)["overall"]
    assert "consistency" not in o
    for order in ("a_first", "b_first"):  # single-order counts use only the seeded verdicts
        sel = seeded == order
        assert o["per_order"][order]["judged"] == sel.sum()
        assert o["per_order"][order]["a_wins"] == (single[sel] == "A").sum()
    first = sum(((seeded == od) & (np.array([POSITIONAL[od][w] for w in single]) == "A")).sum()
                for od in ("a_first", "b_first"))
    assert o["first_position_rate"] == first / n
    c = winrate.summarize(js, "consistent", n_boot=100)["overall"]
    assert c["consistency"] == (w1 == w2).mean() and c["per_order"]["a_first"]["judged"] == n


def test_bootstrap_ci_contains_estimate_shrinks_with_n_and_is_seeded():
    # 4 A wins, 2 B wins, 1 consistent tie, 3 inconsistent pairs (ties): the known script's mix
    base = ["A"] * 4 + ["B"] * 2 + ["tie"] * 4
    cons = [True] * 7 + [False] * 3
    small = winrate.summarize(fake_judgments(base, cons), "consistent", n_boot=2000, seed=1)["overall"]
    big = winrate.summarize(fake_judgments(base * 16, cons * 16), "consistent", n_boot=2000, seed=1)["overall"]
    for block in (small, big):
        assert (block["win_rate"], block["tie_rate"], block["loss_rate"]) == (0.4, 0.4, 0.2)
        assert block["consistency"] == 0.7
        for part, rate in (("win", 0.4), ("tie", 0.4), ("loss", 0.2), ("consistency", 0.7)):
            lo, hi = block[f"{part}_ci"]
            assert 0 <= lo <= rate <= hi <= 1
    width = lambda b, p: b[f"{p}_ci"][1] - b[f"{p}_ci"][0]  # noqa: E731
    for part in ("win", "tie", "loss", "consistency"):
        ratio = width(big, part) / width(small, part)
        assert 0.15 < ratio < 0.4, (part, ratio)  # ~ 1/sqrt(16) = 0.25
    # The small-sample win CI is close to the normal approximation 1.96*sqrt(p(1-p)/n)*2.
    assert width(small, "win") == pytest.approx(2 * 1.96 * np.sqrt(0.24 / 10), abs=0.12)
    again = winrate.summarize(fake_judgments(base, cons), "consistent", n_boot=2000, seed=1)["overall"]
    assert again == small
    outcome = np.array([{"A": 1, "tie": 0, "B": -1}[o] for o in base * 16])
    cis = [winrate.bootstrap_rates(outcome, np.array(cons * 16), n_boot=500, seed=s)
           for s in (1, 1, 2)]
    assert cis[0] == cis[1] and cis[0] != cis[2]
    assert set(winrate.bootstrap_rates(outcome, n_boot=50)) == {"win", "tie", "loss"}


def test_summary_skips_invalid_and_handles_empty_blocks():
    bad = {"id": "x", "category": "d", "orders": 2, "seeded_order": "a_first", "verdict_a_first": None,
           "winner_a_first": None, "verdict_b_first": "A", "winner_b_first": "B", "single": None,
           "consistent_outcome": None, "consistent": None, "outcome": None}
    js = fake_judgments(["A", "B"]) + [bad, {**bad, "id": "y", "seeded_order": "b_first", "single": "B"}]
    s = winrate.summarize(js, "consistent", n_boot=100)
    assert s["overall"]["n"] == 2 and s["overall"]["n_invalid"] == 2
    assert s["per_category"]["d"]["n"] == 0 and s["per_category"]["d"]["win_rate"] is None
    single = winrate.summarize(js, "single_order", n_boot=100)
    assert single["overall"]["n"] == 3 and single["per_category"]["d"]["loss"] == 1  # y's seeded order is valid
    with pytest.raises(ValueError, match="kind"):
        winrate.summarize(js, "both")


def test_plot_win_rates_for_several_comparisons(tmp_path):
    r1 = {"name_a": "MBC", "name_b": "uniform",
          **winrate.summarize(fake_judgments(["A"] * 6 + ["tie"] * 3 + ["B"]), n_boot=100)}
    r2 = {"name_a": "MBC", "name_b": "uniform",
          **winrate.summarize(fake_judgments(["A"] * 3 + ["tie"] * 3 + ["B"] * 4), n_boot=100)}
    paper = {"win_rate": 0.41, "tie_rate": 0.324, "loss_rate": 0.266, "reference": True}
    path = winrate.plot_win_rates({"paper": paper, "lr 1e-5": r1, "lr 5e-5": r2}, tmp_path / "fig5.png",
                                  extra={"paper": {"source": "paper"}, "lr 1e-5": {"source": "ours"}})
    assert path.read_bytes()[:4] == b"\x89PNG"
    rows = list(csv.DictReader((tmp_path / "fig5.csv").open()))
    assert [(r["label"], float(r["win_rate"]), float(r["loss_rate"]), r["source"]) for r in rows] == [
        ("paper", 0.41, 0.266, "paper"), ("lr 1e-5", 0.6, 0.1, "ours"), ("lr 5e-5", 0.3, 0.4, "")]
