"""Win / tie / loss rates of a pairwise comparison, with bootstrap confidence intervals, and the
paper's Figure 5 style chart (one stacked horizontal bar per comparison or category).

Input: one judgment per matched pair, as made by `mbc_jax.judge.protocol.judgment` (the `.judgments.jsonl`
file next to the results JSON): `outcome` is "A", "B" or "tie" (None for a pair the judge never
gave a valid verdict for; such pairs are counted in `n_invalid` and left out of the rates),
`category`, and per presentation order the positional verdict (`verdict_a_first`,
`verdict_b_first`: "A", "B" or "C") and the winner it implies (`winner_a_first`,
`winner_b_first`: "A", "B" or "tie").

"win" is always from model A's side: win = A wins, loss = B wins. A pair is a win only when both
presentation orders pick A; any disagreement between the orders is a tie.

Confidence intervals are percentile bootstrap intervals over pairs (pairs resampled with
replacement, all rates of one block computed from the same resamples; drawn as multinomial counts
of the observed kinds of pairs, which is the same distribution), seeded and reproducible.
"""

from __future__ import annotations

import csv
import json
import zlib
from collections import Counter
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from mbc_jax.judge.protocol import ORDERS

OUTCOMES = ("A", "tie", "B")


def bootstrap_rates(
    outcome: np.ndarray,
    consistent: np.ndarray,
    *,
    n_boot: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
) -> dict[str, tuple[float, float]]:
    """Percentile bootstrap CIs of win, tie, loss and consistency rates.

    `outcome` holds +1 (A wins), 0 (tie) or -1 (B wins) per pair; `consistent` holds 1 where the
    two presentation orders agreed. Returns {"win": (lo, hi), "tie": ..., "loss": ...,
    "consistency": ...}.
    """
    outcome = np.asarray(outcome, dtype=np.int64)
    consistent = np.asarray(consistent, dtype=bool)
    n = outcome.shape[0]
    if n == 0:
        raise ValueError("bootstrap over zero pairs")
    # Resampling n pairs with replacement only matters through how many of each kind of pair
    # (outcome, consistent) are drawn: those counts are multinomial(n, observed shares). Drawing
    # them directly is the same bootstrap at O(n_boot) cost instead of O(n_boot * n).
    cells, counts = np.unique(np.stack([outcome, consistent]), axis=1, return_counts=True)
    rng = np.random.default_rng(seed)
    draws = rng.multinomial(n, counts / n, size=n_boot) / n  # [n_boot, cells]
    stats = np.stack([
        draws[:, cells[0] == 1].sum(axis=1),
        draws[:, cells[0] == 0].sum(axis=1),
        draws[:, cells[0] == -1].sum(axis=1),
        draws[:, cells[1] == 1].sum(axis=1),
    ])
    alpha = (1.0 - confidence) / 2.0
    lo, hi = np.quantile(stats, [alpha, 1.0 - alpha], axis=1)
    names = ("win", "tie", "loss", "consistency")
    return {name: (float(lo[i]), float(hi[i])) for i, name in enumerate(names)}


def _block(judgments: list[Mapping], *, n_boot: int, seed: int, confidence: float) -> dict:
    valid = [j for j in judgments if j.get("outcome") in OUTCOMES]
    counts = Counter(j["outcome"] for j in valid)
    n = len(valid)
    block: dict = {
        "n": n,
        "n_invalid": len(judgments) - n,
        "win": counts["A"],
        "tie": counts["tie"],
        "loss": counts["B"],
    }
    per_order = {}
    for order in ORDERS:
        positional = Counter(j.get(f"verdict_{order}") for j in valid)
        winners = Counter(j.get(f"winner_{order}") for j in valid)
        per_order[order] = {
            "positional": {v: positional[v] for v in ("A", "B", "C")},
            "a_wins": winners["A"],
            "b_wins": winners["B"],
            "tie": winners["tie"],
        }
    block["per_order"] = per_order
    if n == 0:
        for key in ("win_rate", "tie_rate", "loss_rate", "consistency"):
            block[key] = None
        for key in ("win_ci", "tie_ci", "loss_ci", "consistency_ci", "first_position_rate"):
            block[key] = None
        return block
    outcome = np.array([{"A": 1, "tie": 0, "B": -1}[j["outcome"]] for j in valid])
    consistent = np.array([j.get("winner_a_first") == j.get("winner_b_first") for j in valid])
    block["win_rate"] = counts["A"] / n
    block["tie_rate"] = counts["tie"] / n
    block["loss_rate"] = counts["B"] / n
    block["consistency"] = float(consistent.mean())
    # How often the judge picked whichever answer was shown first (position bias), over all
    # 2n verdicts; 0.5 of the non-tie verdicts would be unbiased.
    first = per_order["a_first"]["positional"]["A"] + per_order["b_first"]["positional"]["A"]
    block["first_position_rate"] = first / (2 * n)
    cis = bootstrap_rates(outcome, consistent, n_boot=n_boot, seed=seed, confidence=confidence)
    for name, ci in cis.items():
        block[f"{name}_ci"] = list(ci)
    return block


def summarize(
    judgments: Iterable[Mapping],
    *,
    n_boot: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
) -> dict:
    """Rates overall and per category (sorted by name), each with bootstrap CIs.

    Every block has: n (pairs with a valid outcome), n_invalid, win / tie / loss counts and rates,
    `*_ci` = [lo, hi], consistency (share of pairs where both orders named the same winner, ties
    included) with its CI, first_position_rate, and per_order raw counts (positional verdicts
    A/B/C and the winners they imply, for A shown first and for B shown first).
    """
    judgments = list(judgments)
    by_category: dict[str, list[Mapping]] = {}
    for j in judgments:
        by_category.setdefault(str(j.get("category") or "(none)"), []).append(j)
    kw = dict(n_boot=n_boot, confidence=confidence)
    return {
        "overall": _block(judgments, seed=seed, **kw),
        "per_category": {
            # A per-category seed that does not depend on which other categories exist.
            cat: _block(items, seed=seed + zlib.crc32(cat.encode()), **kw)
            for cat, items in sorted(by_category.items())
        },
        "bootstrap": {
            "n_boot": n_boot,
            "seed": seed,
            "confidence": confidence,
            "method": "percentile bootstrap, pairs resampled with replacement",
        },
    }


def load_results(path: str | Path) -> dict:
    """Read a results JSON written by `mbc-jax judge --out`."""
    return json.loads(Path(path).read_text())


def _as_block(value: Mapping) -> Mapping:
    return value["overall"] if "overall" in value else value


def summary_rows(summary: Mapping) -> dict[str, Mapping]:
    """Rows for `plot_win_rates` from one results dict: overall first, then each category."""
    rows = {"overall": summary["overall"]}
    for cat, block in summary.get("per_category", {}).items():
        rows[cat] = block
    return rows


def plot_win_rates(
    results: Mapping[str, Mapping],
    path: str | Path,
    *,
    name_a: str | None = None,
    name_b: str | None = None,
    title: str | None = None,
) -> Path:
    """Stacked horizontal bars (A wins | tie | B wins), one per entry of `results`, top to bottom.

    `results` maps a row label to either a full results dict (as written by `mbc-jax judge`; its
    overall block is drawn) or a single block (with win_rate / tie_rate / loss_rate). Use it for
    several comparisons at once, e.g. {"lr 1e-5": load_results(p1), "lr 5e-5": load_results(p2)},
    or per category with `summary_rows(summary)`. Whiskers show the bootstrap CI of the win rate
    (at the right end of the win segment) and of the loss rate (at the left end of the loss
    segment). Writes the PNG and the numbers behind it as CSV next to it (same stem, `.csv`).
    Legend names come from `name_a` / `name_b`, else from the first full results dict, else
    "A" / "B".
    """
    path = Path(path)
    if not results:
        raise ValueError("plot_win_rates: no results to plot")
    for value in results.values():
        if "overall" in value:
            name_a = name_a or value.get("name_a")
            name_b = name_b or value.get("name_b")
            break
    name_a, name_b = name_a or "A", name_b or "B"

    labels = list(results)
    blocks = [_as_block(results[label]) for label in labels]
    fig = Figure(figsize=(8.0, 1.2 + 0.55 * len(labels)))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    colors = {"win": "#4C9F70", "tie": "#BDBDBD", "loss": "#D1605E"}
    legend = {"win": f"{name_a} wins", "tie": "tie", "loss": f"{name_b} wins"}
    ys = np.arange(len(labels))[::-1]
    for y, block in zip(ys, blocks):
        if not block.get("n"):
            ax.text(0.5, y, "no valid judgments", ha="center", va="center", fontsize=8)
            continue
        left = 0.0
        for part in ("win", "tie", "loss"):
            width = block[f"{part}_rate"]
            ax.barh(y, width, left=left, color=colors[part], edgecolor="white", height=0.6,
                    label=legend[part] if y == ys[0] else None)
            if width >= 0.06:
                ax.text(left + width / 2, y, f"{100 * width:.0f}%", ha="center", va="center",
                        fontsize=8)
            left += width
        if block.get("win_ci"):
            lo, hi = block["win_ci"]
            ax.plot([lo, hi], [y + 0.2, y + 0.2], color="black", lw=1)
        if block.get("loss_ci"):
            lo, hi = block["loss_ci"]
            ax.plot([1 - hi, 1 - lo], [y - 0.2, y - 0.2], color="black", lw=1)
    ax.set_yticks(ys, [f"{label} (n={block.get('n', 0)})" for label, block in zip(labels, blocks)])
    ax.set_xlim(0, 1)
    ax.xaxis.set_major_formatter(lambda x, _: f"{100 * x:.0f}%")
    ax.set_xlabel("share of prompts (whiskers: bootstrap CI of win and loss rates)")
    ax.legend(loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=3, frameon=False, fontsize=8)
    if title:
        ax.set_title(title, pad=24)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=150)

    fields = ["label", "n", "win", "tie", "loss", "win_rate", "tie_rate", "loss_rate",
              "win_lo", "win_hi", "tie_lo", "tie_hi", "loss_lo", "loss_hi", "consistency"]
    with path.with_suffix(".csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(fields)
        for label, block in zip(labels, blocks):
            row = [label] + [block.get(k) for k in ("n", "win", "tie", "loss", "win_rate",
                                                     "tie_rate", "loss_rate")]
            for part in ("win", "tie", "loss"):
                ci = block.get(f"{part}_ci") or [None, None]
                row += list(ci)
            row.append(block.get("consistency"))
            writer.writerow(row)
    return path
