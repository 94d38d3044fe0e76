"""mbc_jax/judge/winrate.py: bootstrap intervals, summaries with invalid and empty blocks, the plot."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from mbc_jax.judge import winrate


def fake_judgments(outcomes, consistent=None):
    out = []
    for i, o in enumerate(outcomes):
        agree = True if consistent is None else consistent[i]
        w1, w2 = (o, o) if agree else ("A", "B")
        v = {"A": "A", "B": "B", "tie": "C"}
        out.append({"id": f"q{i}", "category": "c", "outcome": o,
                    "verdict_a_first": v[w1], "winner_a_first": w1,
                    "verdict_b_first": {"A": "B", "B": "A", "tie": "C"}[w2],
                    "winner_b_first": w2})
    return out


def test_bootstrap_ci_contains_estimate_shrinks_with_n_and_is_seeded():
    # 4 A wins, 2 B wins, 1 consistent tie, 3 inconsistent pairs (ties): the known script's mix
    base = ["A"] * 4 + ["B"] * 2 + ["tie"] * 4
    cons = [True] * 7 + [False] * 3
    small = winrate.summarize(fake_judgments(base, cons), n_boot=2000, seed=1)["overall"]
    big = winrate.summarize(fake_judgments(base * 16, cons * 16), n_boot=2000, seed=1)["overall"]
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
    again = winrate.summarize(fake_judgments(base, cons), n_boot=2000, seed=1)["overall"]
    assert again == small
    outcome = np.array([{"A": 1, "tie": 0, "B": -1}[o] for o in base * 16])
    cis = [winrate.bootstrap_rates(outcome, np.array(cons * 16), n_boot=500, seed=s)
           for s in (1, 1, 2)]
    assert cis[0] == cis[1] and cis[0] != cis[2]


def test_summary_skips_invalid_and_handles_empty_blocks():
    js = fake_judgments(["A", "B"]) + [{"id": "x", "category": "d", "outcome": None}]
    s = winrate.summarize(js, n_boot=100)
    assert s["overall"]["n"] == 2 and s["overall"]["n_invalid"] == 1
    assert s["per_category"]["d"]["n"] == 0 and s["per_category"]["d"]["win_rate"] is None


def test_plot_win_rates_for_several_comparisons(tmp_path):
    r1 = {"name_a": "MBC", "name_b": "uniform",
          **winrate.summarize(fake_judgments(["A"] * 6 + ["tie"] * 3 + ["B"]), n_boot=100)}
    r2 = {"name_a": "MBC", "name_b": "uniform",
          **winrate.summarize(fake_judgments(["A"] * 3 + ["tie"] * 3 + ["B"] * 4), n_boot=100)}
    path = winrate.plot_win_rates({"lr 1e-5": r1, "lr 5e-5": r2}, tmp_path / "fig5.png")
    assert path.read_bytes()[:4] == b"\x89PNG"
    rows = list(csv.DictReader((tmp_path / "fig5.csv").open()))
    assert [(r["label"], float(r["win_rate"]), float(r["loss_rate"])) for r in rows] == [
        ("lr 1e-5", 0.6, 0.1), ("lr 5e-5", 0.3, 0.4)]
