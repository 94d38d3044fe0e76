"""Figure 6: memorization dynamics of MBC and the uniform baseline at each learning rate.

    python -m experiments.fig6_mbc_vs_baseline --runs runs/mbc_lr1e-5 runs/uniform_lr1e-5 \
        runs/mbc_lr5e-5 runs/uniform_lr5e-5 --out figures/

Runs are grouped by the learning rate in their config.yaml (one panel each) and told apart by
their sampler. The curves are Figure 1's: exact memorization as the paper's Eq. 1, the token-pooled
ratio over the training records per snapshot (columns `exact_match`, `response_exact_match`; full
dialogue solid, response only dotted), and the per-record (macro) mean as a dashed second line
(`exact_match_macro`, `response_exact_match_macro`). The summary compares the last snapshot, the
mean over snapshots (both pooled, and the last snapshot's macro mean), and the final validation perplexity.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Sequence

import numpy as np

from experiments import common
from experiments.common import Artifact, fmt
from experiments.fig1_memorization_dynamics import dynamics
from experiments.fig3_validation_perplexity import curve as val_curve
from mbc_jax.run_folder import RunFolder

NAME = "fig6_mbc_vs_baseline"
TITLE = "Figure 6: MBC vs baseline memorization"
COLUMNS = ("run", "sampler", "learning_rate", "step", "epoch", "exact_match", "response_exact_match",
           "exact_match_macro", "response_exact_match_macro")
SUMMARY_COLUMNS = ("run", "sampler", "learning_rate", "checkpoints", "final_step", "final_exact_match",
                   "final_response_exact_match", "mean_exact_match", "final_exact_match_macro",
                   "final_response_exact_match_macro", "final_val_perplexity")
SAMPLER_ORDER = {"mbc": 0, "uniform": 1}


def summarize(run: RunFolder, rows: list[dict]) -> dict:
    val = val_curve(run)
    return {"run": run.label, "sampler": run.sampler, "learning_rate": run.learning_rate, "checkpoints": len(rows),
            "final_step": rows[-1]["step"], "final_exact_match": rows[-1]["exact_match"],
            "final_response_exact_match": rows[-1]["response_exact_match"],
            "mean_exact_match": float(np.mean([r["exact_match"] for r in rows])),
            "final_exact_match_macro": rows[-1]["exact_match_macro"],
            "final_response_exact_match_macro": rows[-1]["response_exact_match_macro"],
            "final_val_perplexity": val[-1]["val_perplexity"] if val else math.nan}


def describe(groups: dict[float, list[tuple[RunFolder, list[dict], dict]]]) -> str:
    parts = []
    for lr, items in groups.items():
        by = {run.sampler: s for run, _, s in items}
        if "mbc" in by and "uniform" in by:
            m, u = by["mbc"], by["uniform"]
            d = m["final_exact_match"] - u["final_exact_match"]
            parts.append(
                f"At learning rate {common.fmt_lr(lr)}, MBC ends with exact memorization "
                f"{fmt(m['final_exact_match'])} against the baseline's {fmt(u['final_exact_match'])} ({d:+.3f}; "
                f"response only {fmt(m['final_response_exact_match'])} "
                f"vs {fmt(u['final_response_exact_match'])}), averages {fmt(m['mean_exact_match'])} vs "
                f"{fmt(u['mean_exact_match'])} over the checkpoints, and reaches validation perplexity "
                f"{fmt(m['final_val_perplexity'], 2)} vs {fmt(u['final_val_perplexity'], 2)}. "
                f"(Exact memorization here is Eq. 1, matched targets / targets pooled over the training records; "
                f"the per-record (macro) mean, dashed, ends at {fmt(m['final_exact_match_macro'])} vs "
                f"{fmt(u['final_exact_match_macro'])}.)")
        else:
            parts.append(f"At learning rate {common.fmt_lr(lr)}: " + "; ".join(
                f"{run.label} ends at exact memorization {fmt(s['final_exact_match'])} (Eq. 1, pooled; per-record "
                f"mean {fmt(s['final_exact_match_macro'])})" for run, _, s in items)
                + " (no MBC/baseline pair at this learning rate).")
    return " ".join(parts)


def plot(groups: dict[float, list[tuple[RunFolder, list[dict], dict]]], path: Path) -> Path:
    fig, axes = common.figure(1, len(groups), size=(5.5 * len(groups), 4.3))
    palette = {"mbc": "#1F77B4", "uniform": "#D62728"}
    for ax, (lr, items) in zip(axes, groups.items()):
        for (run, rows, _), color in zip(items, common.colors(len(items))):
            color = palette.get(run.sampler, color)
            steps = [r["step"] for r in rows]
            ax.plot(steps, [r["exact_match"] for r in rows], "-o", ms=3, color=color, label=f"{run.label}")
            ax.plot(steps, [r["response_exact_match"] for r in rows], ":", color=color, alpha=0.8,
                    label=f"{run.label} (response)")
            ax.plot(steps, [r["exact_match_macro"] for r in rows], "--", color=color, lw=1, alpha=0.8,
                    label=f"{run.label} (per-record mean)")
        ax.set_title(f"learning rate {common.fmt_lr(lr)}", fontsize=10)
        ax.set_xlabel("training step")
        ax.set_ylabel("exact memorization (Eq. 1, pooled over training records)")
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return common.save_figure(fig, path)


def build(runs: Sequence[RunFolder], out: str | Path) -> Artifact:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    groups: dict[float, list] = {}
    for run in sorted(runs, key=lambda r: (r.learning_rate, SAMPLER_ORDER.get(r.sampler, 2), r.label)):
        rows = dynamics(run)
        groups.setdefault(run.learning_rate, []).append((run, rows, summarize(run, rows)))
    curve_rows = [{k: r[k] for k in COLUMNS} for items in groups.values() for _, rows, _ in items for r in rows]
    csv_path = common.write_csv(out / f"{NAME}.csv", curve_rows, COLUMNS)
    summary = [s for items in groups.values() for _, _, s in items]
    sum_path = common.write_csv(out / f"{NAME}_summary.csv", summary, SUMMARY_COLUMNS)
    png = plot(groups, out / f"{NAME}.png")
    paragraph = describe(groups)
    table = common.markdown_table(
        [[s["run"], fmt(s["final_exact_match"]), fmt(s["final_response_exact_match"]), fmt(s["mean_exact_match"]),
          fmt(s["final_exact_match_macro"]), fmt(s["final_val_perplexity"], 2)] for s in summary],
        ["run", "final exact memorization (Eq. 1, pooled)", "final (response, pooled)",
         "mean over checkpoints (pooled)", "final per-record mean", "final val perplexity"])
    md = common.write_markdown(out, NAME, TITLE, paragraph, png, [csv_path, sum_path], extra=table)
    return Artifact(NAME, TITLE, png, [csv_path, sum_path], md, paragraph, {"summary": summary, "rows": curve_rows})


def main(argv: list[str] | None = None) -> int:
    args = common.base_parser(NAME, __doc__).parse_args(argv)
    return common.run_cli(lambda: build(common.open_runs(args.runs, args.labels), args.out))


if __name__ == "__main__":
    sys.exit(main())
