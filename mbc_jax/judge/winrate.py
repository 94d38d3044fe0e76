"""Win / tie / loss rates of a pairwise comparison, with bootstrap confidence intervals, and the
paper's Figure 5 style chart (one stacked horizontal bar per comparison or category).

Input: one judgment per matched pair, as made by `mbc_jax.judge.protocol.judgment` (the
`.judgments.jsonl` file next to the results JSON). Two kinds of rates are read from it:

- **single-order** (`single`): the verdict of the pair's seeded presentation order, one judgment
  per pair, the paper's protocol (`--orders 1`; with `--orders 2` the seeded order's half of the
  judgments).
- **consistent** (`consistent_outcome`, `--orders 2` only): a pair is a win only when both
  presentation orders pick A (a loss when both pick B); any disagreement is a tie.

"win" is always from model A's side: win = A wins, loss = B wins. A pair without a valid outcome
of that kind (the judge never gave a valid verdict) is counted in `n_invalid` and left out. A pair
of identical answers (`identical`, judged without a call) is a tie, counted in `identical`; the
per-order counts, the first-position rate and the consistency cover the judged pairs only.

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
# kind of rates -> (judgment field, label)
KINDS = {"single_order": ("single", "one order per pair (seeded; the paper's protocol)"),
         "consistent": ("consistent_outcome", "both orders, a win only when both agree")}


def bootstrap_rates(
    outcome: np.ndarray,
    consistent: np.ndarray | None = None,
    *,
    n_boot: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
) -> dict[str, tuple[float, float]]:
    """Percentile bootstrap CIs of win, tie, loss (and consistency) rates.

    `outcome` holds +1 (A wins), 0 (tie) or -1 (B wins) per pair; `consistent`, when given, holds
    1 where the two presentation orders agreed. Returns {"win": (lo, hi), "tie": ..., "loss": ...}
    and "consistency" when `consistent` is given.
    """
    outcome = np.asarray(outcome, dtype=np.int64)
    n = outcome.shape[0]
    if n == 0:
        raise ValueError("bootstrap over zero pairs")
    agree = np.ones(n, dtype=bool) if consistent is None else np.asarray(consistent, dtype=bool)
    # Resampling n pairs with replacement only matters through how many of each kind of pair
    # (outcome, consistent) are drawn: those counts are multinomial(n, observed shares). Drawing
    # them directly is the same bootstrap at O(n_boot) cost instead of O(n_boot * n).
    cells, counts = np.unique(np.stack([outcome, agree]), axis=1, return_counts=True)
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
    names = ("win", "tie", "loss") + (("consistency",) if consistent is not None else ())
    return {name: (float(lo[i]), float(hi[i])) for i, name in enumerate(names)}


def _used_orders(j: Mapping, kind: str) -> tuple[str, ...]:
    """The presentation orders whose verdicts make this kind of outcome of judgment j."""
    return (j["seeded_order"],) if kind == "single_order" else ORDERS


def _block(judgments: list[Mapping], kind: str, *, n_boot: int, seed: int, confidence: float) -> dict:
    field = KINDS[kind][0]
    valid = [j for j in judgments if j.get(field) in OUTCOMES]
    counts = Counter(j[field] for j in valid)
    n = len(valid)
    judged = [j for j in valid if not j.get("identical")]  # identical answers: a tie with no verdict
    block: dict = {"n": n, "n_invalid": len(judgments) - n,
                   "win": counts["A"], "tie": counts["tie"], "loss": counts["B"], "identical": n - len(judged)}
    # Raw counts per presentation order, over the verdicts this kind of outcome uses.
    per_order = {}
    for order in ORDERS:
        used = [j for j in judged if order in _used_orders(j, kind)]
        positional = Counter(j[f"verdict_{order}"] for j in used)
        winners = Counter(j[f"winner_{order}"] for j in used)
        per_order[order] = {"judged": len(used), "positional": {v: positional[v] for v in ("A", "B", "C")},
                            "a_wins": winners["A"], "b_wins": winners["B"], "tie": winners["tie"]}
    block["per_order"] = per_order
    keys = ("win_rate", "tie_rate", "loss_rate", "win_ci", "tie_ci", "loss_ci", "first_position_rate")
    if kind == "consistent":
        keys += ("consistency", "consistency_ci")
    if n == 0:
        block.update(dict.fromkeys(keys))
        return block
    outcome = np.array([{"A": 1, "tie": 0, "B": -1}[j[field]] for j in valid])
    # identical pairs were never shown to the judge: they count as agreeing in the resampling cells only
    consistent = (np.array([j.get("identical") or j["winner_a_first"] == j["winner_b_first"] for j in valid])
                  if kind == "consistent" else None)
    block["win_rate"], block["tie_rate"], block["loss_rate"] = counts["A"] / n, counts["tie"] / n, counts["B"] / n
    # How often the judge picked whichever answer was shown first (position bias), over the
    # verdicts used; 0.5 of the non-tie verdicts would be unbiased.
    verdicts = sum(per_order[o]["judged"] for o in ORDERS)
    block["first_position_rate"] = (sum(per_order[o]["positional"]["A"] for o in ORDERS) / verdicts
                                    if verdicts else None)
    cis = bootstrap_rates(outcome, consistent, n_boot=n_boot, seed=seed, confidence=confidence)
    for name, ci in cis.items():
        block[f"{name}_ci"] = list(ci)
    if consistent is not None:  # the judge's consistency: over the pairs it judged
        block["consistency"], block["consistency_ci"] = _consistency(judged, n_boot=n_boot, seed=seed,
                                                                     confidence=confidence)
    return block


def _consistency(judged: list[Mapping], **kw) -> tuple[float | None, list | None]:
    """Share of judged pairs whose two orders named the same winner, with its bootstrap CI (as
    `bootstrap_rates` draws it); None without judged pairs."""
    if not judged:
        return None, None
    agree = np.array([j["winner_a_first"] == j["winner_b_first"] for j in judged])
    outcome = np.array([{"A": 1, "tie": 0, "B": -1}[j["consistent_outcome"]] for j in judged])
    return float(agree.mean()), list(bootstrap_rates(outcome, agree, **kw)["consistency"])


def summarize(
    judgments: Iterable[Mapping],
    kind: str = "single_order",
    *,
    n_boot: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
) -> dict:
    """One kind of rates ("single_order" or "consistent") overall and per category (sorted by name).

    Every block has: n (pairs with a valid outcome of that kind), n_invalid, win / tie / loss
    counts and rates, `*_ci` = [lo, hi], first_position_rate (share of the verdicts used that
    picked the answer shown first), per_order raw counts (verdicts judged, positional A/B/C and the
    winners they imply, for A shown first and for B shown first); consistent blocks also have
    consistency (share of pairs where both orders named the same winner, ties included) with its CI.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {sorted(KINDS)}, got {kind!r}")
    judgments = list(judgments)
    by_category: dict[str, list[Mapping]] = {}
    for j in judgments:
        by_category.setdefault(str(j.get("category") or "(none)"), []).append(j)
    kw = dict(n_boot=n_boot, confidence=confidence)
    return {
        "kind": kind,
        "label": KINDS[kind][1],
        "overall": _block(judgments, kind, seed=seed, **kw),
        "per_category": {
            # A per-category seed that does not depend on which other categories exist.
            cat: _block(items, kind, seed=seed + zlib.crc32(cat.encode()), **kw)
            for cat, items in sorted(by_category.items())
        },
    }


def bootstrap_info(n_boot: int, seed: int, confidence: float = 0.95) -> dict:
    return {"n_boot": n_boot, "seed": seed, "confidence": confidence,
            "method": "percentile bootstrap, pairs resampled with replacement"}


def load_results(path: str | Path) -> dict:
    """Read a results JSON written by `mbc-jax judge --out`; ValueError if it is not one of this version."""
    results = json.loads(Path(path).read_text())
    if not isinstance(results, dict) or "single_order" not in results or "protocol" not in results:
        raise ValueError("no `protocol` / `single_order` blocks: written by an older `mbc-jax judge`? Rerun it "
                         "(its cached judgments make that free for the orders already judged)")
    return results


def headline(results: Mapping) -> Mapping:
    """The rates of a results dict's own protocol: single-order with --orders 1, consistent with 2."""
    return results[results["protocol"]["headline"]]


def _as_block(value: Mapping) -> Mapping:
    if "single_order" in value:  # a full results dict
        return headline(value)["overall"]
    return value["overall"] if "overall" in value else value


def summary_rows(results: Mapping) -> dict[str, Mapping]:
    """Rows for `plot_win_rates`: each kind of rates overall, then each category of the headline kind.

    Takes a full results dict of `mbc-jax judge` or one `summarize` output.
    """
    if "single_order" not in results:
        return {"overall": results["overall"], **results.get("per_category", {})}
    rows = {f"overall, {KINDS[kind][1]}": results[kind]["overall"]
            for kind in KINDS if results.get(kind)}
    return {**rows, **headline(results)["per_category"]}


def plot_win_rates(
    results: Mapping[str, Mapping],
    path: str | Path,
    *,
    name_a: str | None = None,
    name_b: str | None = None,
    title: str | None = None,
    extra: Mapping[str, Mapping] | None = None,
) -> Path:
    """Stacked horizontal bars (A wins | tie | B wins), one per entry of `results`, top to bottom.

    `results` maps a row label to either a full results dict (as written by `mbc-jax judge`; its
    overall block is drawn) or a single block (with win_rate / tie_rate / loss_rate). Use it for
    several comparisons at once, e.g. {"lr 1e-5": load_results(p1), "lr 5e-5": load_results(p2)},
    or per category with `summary_rows(summary)`. Whiskers show the bootstrap CI of the win rate
    (at the right end of the win segment) and of the loss rate (at the left end of the loss
    segment). Writes the PNG and the numbers behind it as CSV next to it (same stem, `.csv`).
    Legend names come from `name_a` / `name_b`, else from the first full results dict, else
    "A" / "B". A block with `reference: True` (a published number, e.g. the paper's) is drawn
    hatched, without n or whiskers. `extra` adds CSV columns per row label.
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
    fig = Figure(figsize=(10.0, 1.2 + 0.55 * len(labels)))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    colors = {"win": "#4C9F70", "tie": "#BDBDBD", "loss": "#D1605E"}
    legend = {"win": f"{name_a} wins", "tie": "tie", "loss": f"{name_b} wins"}
    ys = np.arange(len(labels))[::-1]
    # the legend's swatches come from the first measured row (unhatched), else the first row
    legend_y = next((y for y, blk in zip(ys, blocks) if blk.get("n") and not blk.get("reference")), ys[0])
    for y, block in zip(ys, blocks):
        reference = bool(block.get("reference"))
        if not block.get("n") and not reference:
            ax.text(0.5, y, "no valid judgments", ha="center", va="center", fontsize=8)
            continue
        left = 0.0
        for part in ("win", "tie", "loss"):
            width = block[f"{part}_rate"]
            ax.barh(y, width, left=left, color=colors[part], edgecolor="white", height=0.6,
                    hatch="//" if reference else None, label=legend[part] if y == legend_y else None)
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
    ax.set_yticks(ys, [label if block.get("reference") else f"{label} (n={block.get('n', 0)})"
                       for label, block in zip(labels, blocks)], fontsize=8)
    ax.set_xlim(0, 1)
    ax.xaxis.set_major_formatter(lambda x, _: f"{100 * x:.0f}%")
    ax.set_xlabel("share of prompts (whiskers: bootstrap CI of win and loss rates)")
    ax.legend(loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=3, frameon=False, fontsize=8)
    if title:
        ax.set_title(title, pad=24)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=150)
    _write_rates_csv(path.with_suffix(".csv"), labels, blocks, extra or {})
    return path


def _write_rates_csv(path: Path, labels: list[str], blocks: list[Mapping], extra: Mapping[str, Mapping]) -> None:
    """The numbers behind the win-rate chart: one row per label, then the `extra` columns."""
    fields = ["label", "n", "win", "tie", "loss", "win_rate", "tie_rate", "loss_rate",
              "win_lo", "win_hi", "tie_lo", "tie_hi", "loss_lo", "loss_hi", "consistency"]
    extra_fields = list(dict.fromkeys(k for label in labels for k in extra.get(label, {})))
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(fields + extra_fields)
        for label, block in zip(labels, blocks):
            row = [label] + [block.get(k) for k in ("n", "win", "tie", "loss", "win_rate",
                                                     "tie_rate", "loss_rate")]
            for part in ("win", "tie", "loss"):
                ci = block.get(f"{part}_ci") or [None, None]
                row += list(ci)
            row.append(block.get("consistency"))
            writer.writerow(row + [extra.get(label, {}).get(k) for k in extra_fields])
