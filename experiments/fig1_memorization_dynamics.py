"""Figure 1: exact memorization of all training records against training step, full dialogue vs
response only.

    python -m experiments.fig1_memorization_dynamics --runs runs/demo/uniform --out figures/

For every memorization snapshot (memorization/step_*.csv) of every run, full dialogue and response
only: exact memorization as the paper's Eq. 1, the token-pooled ratio over all training records
(matched targets summed / targets summed; columns `exact_match`, `response_exact_match`: the
headline curves), and the per-record (macro) mean (`exact_match_macro`, `response_exact_match_macro`:
the dashed second lines), with the 25th-75th percentile band of the per-record full-dialogue values.
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

NAME = "fig1_memorization_dynamics"
TITLE = "Figure 1: memorization dynamics during SFT"
COLUMNS = ("run", "sampler", "learning_rate", "step", "epoch", "records", "exact_match", "exact_match_macro",
           "exact_match_std", "exact_match_q25", "exact_match_q75", "response_records", "response_exact_match",
           "response_exact_match_macro")


def dynamics(run: RunFolder) -> list[dict]:
    """One row per memorization snapshot over the training records: the pooled ratio (Eq. 1) and the
    per-record (macro) mean, full dialogue and response only, with the per-record spread."""
    rows = []
    for step in run.memorization_steps():
        t = run.memorization(step, "train")
        em = t["exact_match"].astype(float)
        rem = t["response_exact_match"].astype(float)
        rows.append({
            "run": run.label, "sampler": run.sampler, "learning_rate": run.learning_rate, "step": step,
            "epoch": step / run.epoch_steps, "records": len(em),
            "exact_match": common.pooled_exact_match(t), "exact_match_macro": common.macro_exact_match(t),
            "exact_match_std": float(em.std()),
            "exact_match_q25": float(np.quantile(em, 0.25)), "exact_match_q75": float(np.quantile(em, 0.75)),
            "response_records": int(np.isfinite(rem).sum()),
            "response_exact_match": common.pooled_exact_match(t, response=True),
            "response_exact_match_macro": common.macro_exact_match(t, response=True),
        })
    return rows


def describe(run: RunFolder, rows: list[dict]) -> str:
    a, b = rows[0], rows[-1]
    s = (f"{run.label}: over {len(rows)} checkpoints (step {a['step']} to {b['step']}, "
         f"{b['epoch']:.1f} epoch-equivalents), exact memorization of the {b['records']} training records "
         f"(Eq. 1: matched targets / targets, pooled over the records; solid lines) went from "
         f"{fmt(a['exact_match'])} to {fmt(b['exact_match'])} on the full dialogue and from "
         f"{fmt(a['response_exact_match'])} to {fmt(b['response_exact_match'])} on the response alone "
         f"({b['response_records']} records with response tokens). The per-record (macro) mean, every record "
         f"weighing the same (dashed lines), went from {fmt(a['exact_match_macro'])} to "
         f"{fmt(b['exact_match_macro'])} (full) and from {fmt(a['response_exact_match_macro'])} to "
         f"{fmt(b['response_exact_match_macro'])} (response).")
    if len(rows) > 1:
        gains = np.diff([r["exact_match"] for r in rows])
        i = int(np.argmax(gains))
        s += f" The largest gain, {gains[i]:+.3f}, came between steps {rows[i]['step']} and {rows[i + 1]['step']}"
        s += f"; the last interval added {gains[-1]:+.3f}." if len(gains) > 1 else "."
    gap = b["exact_match"] - b["response_exact_match"]
    if math.isfinite(gap):
        s += (f" At the last checkpoint the response is {'less' if gap > 0 else 'more'} memorized than the full "
              f"dialogue by {abs(gap):.3f} (pooled).")
    return s


def plot(per_run: list[tuple[RunFolder, list[dict]]], path: Path) -> Path:
    fig, (ax,) = common.figure(size=(7.5, 4.5))
    for (run, rows), color in zip(per_run, common.colors(len(per_run))):
        steps = [r["step"] for r in rows]
        ax.plot(steps, [r["exact_match"] for r in rows], "-o", ms=3, color=color, label=f"{run.label}: full dialogue")
        ax.fill_between(steps, [r["exact_match_q25"] for r in rows], [r["exact_match_q75"] for r in rows],
                        color=color, alpha=0.12, lw=0)
        ax.plot(steps, [r["response_exact_match"] for r in rows], "-s", ms=3, color=color, alpha=0.6,
                label=f"{run.label}: response only")
        ax.plot(steps, [r["exact_match_macro"] for r in rows], "--", color=color, lw=1,
                label=f"{run.label}: full dialogue, per-record mean")
        ax.plot(steps, [r["response_exact_match_macro"] for r in rows], ":", color=color, lw=1,
                label=f"{run.label}: response only, per-record mean")
    ax.set_xlabel("training step")
    ax.set_ylabel("exact memorization (Eq. 1, pooled over training records)")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    ax.set_title("Exact memorization during SFT (solid: pooled, Eq. 1; dashed/dotted: per-record mean; "
                 "band: 25th-75th percentile of records)", fontsize=8)
    return common.save_figure(fig, path)


def build(runs: Sequence[RunFolder], out: str | Path) -> Artifact:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    per_run = [(run, dynamics(run)) for run in runs]
    csv_path = common.write_csv(out / f"{NAME}.csv", [r for _, rows in per_run for r in rows], COLUMNS)
    png = plot(per_run, out / f"{NAME}.png")
    paragraph = " ".join(describe(run, rows) for run, rows in per_run)
    md = common.write_markdown(out, NAME, TITLE, paragraph, png, [csv_path])
    return Artifact(NAME, TITLE, png, [csv_path], md, paragraph, {"rows": [r for _, rows in per_run for r in rows]})


def main(argv: list[str] | None = None) -> int:
    args = common.base_parser(NAME, __doc__).parse_args(argv)
    return common.run_cli(lambda: build(common.open_runs(args.runs, args.labels), args.out))


if __name__ == "__main__":
    sys.exit(main())
