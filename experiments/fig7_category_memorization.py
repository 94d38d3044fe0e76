"""Figure 7: memorization per category at the first and last checkpoints.

    python -m experiments.fig7_category_memorization --runs runs/demo/uniform --out figures/ [--first-step 0]

For each run and category: the mean exact memorization of its training records at the first snapshot
after training began (or `--first-step`) and at the last, over the positions the run trained
(`trained_exact_match`: response exact match under `loss_on: response`, full-dialogue under `loss_on: full`;
the bars and the text use it). The full-dialogue and the response-only means stay as labelled extras
(`full_dialogue_exact_match`, `response_exact_match`); `records` counts the records with a trained value.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Sequence

import numpy as np

from experiments import common
from experiments.common import Artifact, fmt
from mbc_jax.run_folder import RunFolder

NAME = "fig7_category_memorization"
TITLE = "Figure 7: memorization by category (trained positions)"
COLUMNS = ("run", "category", "checkpoint", "step", "loss_on", "records", "trained_exact_match",
           "trained_exact_match_std", "full_dialogue_exact_match", "response_exact_match")
TRAINED = {"response": "response_exact_match", "full": "exact_match"}  # loss_on -> the trained positions' column


def _mean(values: np.ndarray) -> float:
    values = values[np.isfinite(values)]
    return float(values.mean()) if len(values) else math.nan


def by_category(run: RunFolder, first_step: int | None = None) -> list[dict]:
    loss_on = common.trained_positions(run)
    rows = []
    for which, step in run.first_last_snapshots(first_step).items():
        t = run.memorization(step, "train")
        for cat in sorted(set(t["category"])):
            m = t["category"] == cat
            trained = t[TRAINED[loss_on]][m].astype(float)
            trained = trained[np.isfinite(trained)]
            rows.append({"run": run.label, "category": cat, "checkpoint": which, "step": step, "loss_on": loss_on,
                         "records": len(trained), "trained_exact_match": _mean(trained),
                         "trained_exact_match_std": float(trained.std()) if len(trained) else math.nan,
                         "full_dialogue_exact_match": _mean(t["exact_match"][m].astype(float)),
                         "response_exact_match": _mean(t["response_exact_match"][m].astype(float))})
    return rows


def describe(run: RunFolder, rows: list[dict]) -> str:
    first = {r["category"]: r for r in rows if r["checkpoint"] == "first"}
    last = {r["category"]: r for r in rows if r["checkpoint"] == "last"}
    key = "trained_exact_match"
    ranked = sorted(last.values(), key=lambda r: -r[key])
    gain = sorted(last, key=lambda c: -(last[c][key] - first[c][key]))
    step0, step1 = next(iter(first.values()))["step"], ranked[0]["step"]
    s = (f"{run.label} (exact memorization of the trained positions, {TRAINED[rows[0]['loss_on']]} under loss_on: "
         f"{rows[0]['loss_on']}): at the last checkpoint (step {step1}) the most memorized category is "
         f"{ranked[0]['category']} "
         f"({fmt(ranked[0][key])}) and the least {ranked[-1]['category']} "
         f"({fmt(ranked[-1][key])}); "
         f"at the first (step {step0}) they stood at {fmt(first[ranked[0]['category']][key])} and "
         f"{fmt(first[ranked[-1]['category']][key])}.")
    if len(gain) > 1:
        c0, c1 = gain[0], gain[-1]
        s += (f" {c0} gained the most ({last[c0][key] - first[c0][key]:+.3f}), {c1} the least "
              f"({last[c1][key] - first[c1][key]:+.3f}).")
    return s


def plot(per_run: list[tuple[RunFolder, list[dict]]], path: Path) -> Path:
    fig, axes = common.figure(len(per_run), 1, size=(8.0, 3.6 * len(per_run)))
    for ax, (run, rows) in zip(axes, per_run):
        cats = sorted({r["category"] for r in rows})
        x = np.arange(len(cats))
        for k, (which, color) in enumerate((("first", "#9ECAE1"), ("last", "#08519C"))):
            vals = {r["category"]: r for r in rows if r["checkpoint"] == which}
            step = next(iter(vals.values()))["step"]
            ax.bar(x + (k - 0.5) * 0.38, [vals[c]["trained_exact_match"] for c in cats], 0.38, color=color,
                   yerr=[vals[c]["trained_exact_match_std"] for c in cats], error_kw={"lw": 0.8, "alpha": 0.6},
                   label=f"{which} checkpoint (step {step})")
        ax.set_xticks(x, cats, rotation=25, ha="right", fontsize=8)
        ax.set_ylabel("exact memorization, trained positions")
        ax.set_title(f"{run.label} ({TRAINED[rows[0]['loss_on']]}, loss_on: {rows[0]['loss_on']})", fontsize=10)
        ax.grid(alpha=0.3, axis="y")
        ax.legend(fontsize=8)
    return common.save_figure(fig, path)


def build(runs: Sequence[RunFolder], out: str | Path, *, first_step: int | None = None) -> Artifact:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    per_run = [(run, by_category(run, first_step)) for run in runs]
    rows = [r for _, rs in per_run for r in rs]
    csv_path = common.write_csv(out / f"{NAME}.csv", rows, COLUMNS)
    png = plot(per_run, out / f"{NAME}.png")
    paragraph = " ".join(describe(run, rs) for run, rs in per_run)
    md = common.write_markdown(out, NAME, TITLE, paragraph, png, [csv_path])
    return Artifact(NAME, TITLE, png, [csv_path], md, paragraph, {"rows": rows})


def main(argv: list[str] | None = None) -> int:
    p = common.base_parser(NAME, __doc__)
    p.add_argument("--first-step", type=int, default=None, metavar="STEP",
                   help="snapshot used as the first checkpoint (default: the first after step 0)")
    args = p.parse_args(argv)
    return common.run_cli(lambda: build(common.open_runs(args.runs, args.labels), args.out, first_step=args.first_step))


if __name__ == "__main__":
    sys.exit(main())
