"""Figure 6: memorization dynamics and training loss of MBC and the uniform baseline at each learning rate.

    python -m experiments.fig6_mbc_vs_baseline --runs runs/mbc_lr1e-5 runs/uniform_lr1e-5 \
        runs/mbc_lr5e-5 runs/uniform_lr5e-5 --out figures/

Runs are grouped by the learning rate in their config.yaml (one panel each) and told apart by
their sampler. The curves are Figure 1's: exact memorization as the paper's Eq. 1, the token-pooled
ratio over the training records per snapshot (columns `exact_match`, `response_exact_match`; full
dialogue solid, response only dotted), and the per-record (macro) mean as a dashed second line
(`exact_match_macro`, `response_exact_match_macro`). The summary compares the last snapshot, the
mean over snapshots (both pooled, and the last snapshot's macro mean), the peak, and the final
validation perplexity over the trained positions (Figure 3's headline, by `loss_on`).

The lower panels are the training loss the paper's text discusses (at 5e-5 the baseline's
memorization rises, then falls, while its training loss rises): the `loss_mean` of each metrics.jsonl
line (the mean train-step loss since the previous line; each step's loss is the mean NLL over the
`loss_on` targets of its batch), CSV `_loss.csv` with the single-step `loss` too. MBC's batches are
drawn with replacement from its perplexity-weighted distribution, so its training loss is measured
on a sample tilted towards the records the model fits worst, not on the uniform sample the
baseline's is: the two curves are not like for like.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Sequence

import numpy as np

from experiments import common
from experiments.common import LOSS_ON, Artifact, fmt
from experiments.fig1_memorization_dynamics import dynamics
from experiments.fig3_validation_perplexity import curve as val_curve
from mbc_jax.run_folder import RunFolder

NAME = "fig6_mbc_vs_baseline"
TITLE = "Figure 6: MBC vs baseline memorization"
COLUMNS = ("run", "sampler", "learning_rate", "step", "epoch", "exact_match", "response_exact_match",
           "exact_match_macro", "response_exact_match_macro")
SUMMARY_COLUMNS = ("run", "sampler", "learning_rate", "checkpoints", "final_step", "final_exact_match",
                   "final_response_exact_match", "mean_exact_match", "final_exact_match_macro",
                   "final_response_exact_match_macro", "max_exact_match", "max_exact_match_step",
                   "final_val_perplexity", "loss_on", "final_val_trained_perplexity", "first_train_loss",
                   "final_train_loss", "min_train_loss", "min_train_loss_step")
LOSS_COLUMNS = ("run", "sampler", "learning_rate", "loss_on", "step", "epoch", "loss", "loss_mean")
SAMPLER_ORDER = {"mbc": 0, "uniform": 1}
Group = tuple[RunFolder, list[dict], dict, list[dict]]  # run, memorization rows, summary, loss rows


def training_loss(run: RunFolder) -> list[dict]:
    """The training-loss lines of metrics.jsonl (every `log_every` steps), in step order."""
    loss_on = common.trained_positions(run)
    lines = sorted((m for m in run.metrics() if not m.get("eval") and "loss_mean" in m), key=lambda m: m["step"])
    if not lines:
        raise common.UserError(f"{run.path / 'metrics.jsonl'}: no training-loss lines (loss_mean); Figure 6's "
                               "loss panel needs the run's logged training loss (log_every)")
    return [{"run": run.label, "sampler": run.sampler, "learning_rate": run.learning_rate, "loss_on": loss_on,
             "step": int(m["step"]), "epoch": m["step"] / run.epoch_steps, "loss": float(m["loss"]),
             "loss_mean": float(m["loss_mean"])} for m in lines]


def summarize(run: RunFolder, rows: list[dict], loss: list[dict]) -> dict:
    val = val_curve(run)
    em = np.array([r["exact_match"] for r in rows])
    peak = int(np.nanargmax(em))
    lm = np.array([r["loss_mean"] for r in loss])
    low = int(np.argmin(lm))
    return {"run": run.label, "sampler": run.sampler, "learning_rate": run.learning_rate, "checkpoints": len(rows),
            "final_step": rows[-1]["step"], "final_exact_match": rows[-1]["exact_match"],
            "final_response_exact_match": rows[-1]["response_exact_match"],
            "mean_exact_match": float(np.mean([r["exact_match"] for r in rows])),
            "final_exact_match_macro": rows[-1]["exact_match_macro"],
            "final_response_exact_match_macro": rows[-1]["response_exact_match_macro"],
            "max_exact_match": float(em[peak]), "max_exact_match_step": rows[peak]["step"],
            "final_val_perplexity": val[-1]["val_perplexity"] if val else math.nan, "loss_on": loss[0]["loss_on"],
            "final_val_trained_perplexity": val[-1]["val_trained_perplexity"] if val else math.nan,
            "first_train_loss": float(lm[0]), "final_train_loss": float(lm[-1]), "min_train_loss": float(lm[low]),
            "min_train_loss_step": loss[low]["step"]}


def describe_loss(run: RunFolder, s: dict) -> str:
    """The run's training loss and exact memorization, end against extremum."""
    t = (f"{run.label}'s training loss went from {fmt(s['first_train_loss'])} to {fmt(s['final_train_loss'])}")
    if s["min_train_loss"] < s["final_train_loss"]:
        t += (f", rising {100 * (s['final_train_loss'] / s['min_train_loss'] - 1):.1f}% after its minimum "
              f"{fmt(s['min_train_loss'])} at step {s['min_train_loss_step']}")
    t += "; its exact memorization "
    if s["max_exact_match_step"] < s["final_step"] and s["max_exact_match"] > s["final_exact_match"]:
        t += (f"peaked at {fmt(s['max_exact_match'])} (step {s['max_exact_match_step']}) and then fell to "
              f"{fmt(s['final_exact_match'])}.")
    else:
        t += f"was highest at the end ({fmt(s['final_exact_match'])})."
    return t


def describe(groups: dict[float, list[Group]]) -> str:
    parts = []
    for lr, items in groups.items():
        by = {run.sampler: s for run, _, s, _ in items}
        if "mbc" in by and "uniform" in by:
            m, u = by["mbc"], by["uniform"]
            d = m["final_exact_match"] - u["final_exact_match"]
            parts.append(
                f"At learning rate {common.fmt_lr(lr)}, MBC ends with exact memorization "
                f"{fmt(m['final_exact_match'])} against the baseline's {fmt(u['final_exact_match'])} ({d:+.3f}; "
                f"response only {fmt(m['final_response_exact_match'])} "
                f"vs {fmt(u['final_response_exact_match'])}), averages {fmt(m['mean_exact_match'])} vs "
                f"{fmt(u['mean_exact_match'])} over the checkpoints, and reaches validation perplexity "
                f"{fmt(m['final_val_trained_perplexity'], 2)} vs {fmt(u['final_val_trained_perplexity'], 2)} over "
                f"the trained positions ({trained(items)}). "
                f"(Exact memorization here is Eq. 1, matched targets / targets pooled over the training records; "
                f"the per-record (macro) mean, dashed, ends at {fmt(m['final_exact_match_macro'])} vs "
                f"{fmt(u['final_exact_match_macro'])}.)")
        else:
            parts.append(f"At learning rate {common.fmt_lr(lr)}: " + "; ".join(
                f"{run.label} ends at exact memorization {fmt(s['final_exact_match'])} (Eq. 1, pooled; per-record "
                f"mean {fmt(s['final_exact_match_macro'])})" for run, _, s, _ in items)
                + " (no MBC/baseline pair at this learning rate).")
        parts.append(" ".join(describe_loss(run, s) for run, _, s, _ in items))
    parts.append("Training loss (lower panels) is the mean train-step loss over each logging interval, over the "
                 "loss_on targets; MBC draws its batches with replacement from its perplexity-weighted distribution, "
                 "so its training loss is measured on a different sample (weighted towards the records the model "
                 "fits worst) than the baseline's uniform epochs, and the two curves are not like for like.")
    return " ".join(parts)


def trained(items: list) -> str:
    ons = sorted({s["loss_on"] for _, _, s, _ in items})
    return "; ".join(f"{LOSS_ON[o]}, loss_on: {o}" for o in ons)


def plot(groups: dict[float, list[Group]], path: Path) -> Path:
    n = len(groups)
    fig, axes = common.figure(2, n, size=(5.5 * n, 8.2))
    palette = {"mbc": "#1F77B4", "uniform": "#D62728"}
    for ax, lx, (lr, items) in zip(axes[:n], axes[n:], groups.items()):
        for (run, _, _, rows), color in zip(items, common.colors(len(items))):
            lx.plot([r["step"] for r in rows], [r["loss_mean"] for r in rows], "-",
                    color=palette.get(run.sampler, color), label=f"{run.label} (loss_on: {rows[0]['loss_on']})")
        lx.set_title(f"training loss, learning rate {common.fmt_lr(lr)} (MBC: on its own weighted draws)", fontsize=9)
        lx.set_xlabel("training step")
        lx.set_ylabel("training loss (mean per log interval)")
        lx.grid(alpha=0.3)
        lx.legend(fontsize=7)
        for (run, rows, _, _), color in zip(items, common.colors(len(items))):
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
        loss = training_loss(run)
        groups.setdefault(run.learning_rate, []).append((run, rows, summarize(run, rows, loss), loss))
    curve_rows = [{k: r[k] for k in COLUMNS} for items in groups.values() for _, rows, _, _ in items for r in rows]
    csv_path = common.write_csv(out / f"{NAME}.csv", curve_rows, COLUMNS)
    summary = [s for items in groups.values() for _, _, s, _ in items]
    loss_rows = [r for items in groups.values() for *_, loss in items for r in loss]
    sum_path = common.write_csv(out / f"{NAME}_summary.csv", summary, SUMMARY_COLUMNS)
    loss_path = common.write_csv(out / f"{NAME}_loss.csv", loss_rows, LOSS_COLUMNS)
    png = plot(groups, out / f"{NAME}.png")
    paragraph = describe(groups)
    table = common.markdown_table(
        [[s["run"], fmt(s["final_exact_match"]), fmt(s["final_response_exact_match"]), fmt(s["mean_exact_match"]),
          fmt(s["final_exact_match_macro"]), fmt(s["final_val_trained_perplexity"], 2), s["loss_on"],
          fmt(s["final_train_loss"]), f"{fmt(s['min_train_loss'])} (step {s['min_train_loss_step']})"]
         for s in summary],
        ["run", "final exact memorization (Eq. 1, pooled)", "final (response, pooled)",
         "mean over checkpoints (pooled)", "final per-record mean", "final val perplexity (trained positions)",
         "loss_on", "final training loss", "lowest training loss"])
    csvs = [csv_path, sum_path, loss_path]
    md = common.write_markdown(out, NAME, TITLE, paragraph, png, csvs, extra=table)
    return Artifact(NAME, TITLE, png, csvs, md, paragraph, {"summary": summary, "rows": curve_rows,
                                                            "loss": loss_rows})


def main(argv: list[str] | None = None) -> int:
    args = common.base_parser(NAME, __doc__).parse_args(argv)
    return common.run_cli(lambda: build(common.open_runs(args.runs, args.labels), args.out))


if __name__ == "__main__":
    sys.exit(main())
