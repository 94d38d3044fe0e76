"""Which perplexity MBC weights by: the response's (the loss's targets) or the whole dialogue's, side by side.

    python -m experiments.mbc_perplexity_choice --runs RUN_MBC RUN_MBC_FULL [RUN_UNIFORM] --out figures/

The paper's Algorithm 1 draws records with probability proportional to their perplexity and does not say over
which positions that perplexity is taken. Our default (`mbc.metric: loss`) takes it over the loss's targets, the
response under `loss_on: response`; `mbc.metric: full` takes it over the whole dialogue. This module compares two
MBC runs that differ only there (and a uniform run, when given, as the reference): at each refresh, the weights'
effective sample size 1 / sum p^2 (count and share of N), the largest weight, the top 1%'s share (the run
folder's mbc_health.jsonl), the distinct records drawn, and at each snapshot the training records' pooled exact
memorization of the response and of the full dialogue (the paper's Eq. 1, experiments.common.pooled_exact_match).
The real scale of `reproduce` (SmolLM2-135M on Dolly) runs it; README "What a real model shows" reads it.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Sequence

from experiments import common
from experiments.common import Artifact, fmt
from experiments.fig3_validation_perplexity import pooled_perplexity
from experiments.fig8_sampling_frequency import HEALTH_COLUMNS, health_rows
from mbc_jax import UserError
from mbc_jax.run_folder import RunFolder

NAME = "mbc_perplexity_choice"
TITLE = "Which perplexity MBC weights by: response or full dialogue"
CURVE_COLUMNS = ("run", "metric", "step", "exact_match", "response_exact_match", "perplexity", "response_perplexity")
SUMMARY_COLUMNS = ("run", "metric", "refreshes", "ess_first", "ess_share_first", "ess_min", "ess_share_min",
                   "ess_last", "ess_share_last", "max_weight_max", "top1pct_share_max", "distinct_drawn", "records")


def mbc_metric(run: RunFolder) -> str:
    """What the run's MBC weights were: "response"/"full" perplexity (metric `loss` resolves through loss_on),
    or "uniform" for a run that is not MBC."""
    if run.sampler != "mbc":
        return "uniform"
    metric = (run.config.get("mbc") or {}).get("metric", "loss")
    return str(run.config.get("loss_on", "full")) if metric == "loss" else str(metric)


def name(run: RunFolder) -> str:
    """The run's label with its weighting: two MBC runs at one rate share a label otherwise."""
    metric = mbc_metric(run)
    return run.label if metric == "uniform" else f"{run.label}, {metric} perplexity"


def curve_rows(run: RunFolder) -> list[dict]:
    """The training records' pooled exact memorization and pooled perplexity at every snapshot."""
    rows = []
    for step in run.memorization_steps():
        t = run.memorization(step, "train")
        rows.append({"run": name(run), "metric": mbc_metric(run), "step": step,
                     "exact_match": common.pooled_exact_match(t),
                     "response_exact_match": common.pooled_exact_match(t, response=True),
                     "perplexity": pooled_perplexity(t["tokens"], t["perplexity"]),
                     "response_perplexity": pooled_perplexity(t["response_tokens"], t["response_perplexity"])})
    return rows


def summary_row(run: RunFolder, health: list[dict]) -> dict:
    row = {"run": name(run), "metric": mbc_metric(run), "refreshes": len(health), "records": run.n_train}
    if not health:
        return row
    low = min(health, key=lambda r: r["ess"])
    row.update(ess_first=health[0]["ess"], ess_share_first=health[0]["ess_share"], ess_min=low["ess"],
               ess_share_min=low["ess_share"], ess_last=health[-1]["ess"], ess_share_last=health[-1]["ess_share"],
               max_weight_max=max(r["max_weight"] for r in health),
               top1pct_share_max=max(r["top1pct_share"] for r in health),
               distinct_drawn=health[-1]["distinct_drawn"])
    return row


def describe(summary: list[dict], curves: list[dict]) -> str:
    parts = []
    for s in summary:
        if s["metric"] == "uniform" or not s["refreshes"]:
            continue
        parts.append(f"{s['run']}: effective sample size "
                     f"{fmt(s['ess_first'], 1)} ({s['ess_share_first']:.0%} of {s['records']}) at step 0, lowest "
                     f"{fmt(s['ess_min'], 1)} ({s['ess_share_min']:.0%}), {fmt(s['ess_last'], 1)} at the last refresh; "
                     f"largest single weight {s['max_weight_max']:.3f}; {s['distinct_drawn']} distinct records drawn "
                     "by the last refresh")
    last = {}
    for c in curves:
        last[c["run"]] = c
    ends = "; ".join(f"{r}: {common.pct(c['response_exact_match'])} of response tokens, "
                     f"{common.pct(c['exact_match'])} of all tokens at step {c['step']}" for r, c in last.items())
    return ("MBC's weights " + "; ".join(parts) + ". Training records' exact memorization at the last snapshot: "
            + ends + ". One run each, one seed: a difference here is a description of these runs, not a test.")


def plot(health: dict[str, list[dict]], curves: list[dict], path: Path) -> Path:
    fig, (a, b, c) = common.figure(1, 3, size=(15.0, 4.2))
    for run, rows in health.items():
        if rows:
            a.plot([r["step"] for r in rows], [r["ess_share"] for r in rows], marker="o", label=run)
    a.set(xlabel="step", ylabel="ESS / N", title="MBC weights: effective sample size share", ylim=(0, 1.05))
    for ax, key, what in ((b, "response_exact_match", "response"), (c, "exact_match", "full dialogue")):
        for run in dict.fromkeys(r["run"] for r in curves):
            rows = [r for r in curves if r["run"] == run]
            ax.plot([r["step"] for r in rows], [r[key] for r in rows], marker="o", label=run)
        ax.set(xlabel="step", ylabel="pooled exact memorization", title=f"training records: {what}")
    for ax in (a, b, c):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return common.save_figure(fig, path)


def build(runs: Sequence[RunFolder], out: str | Path) -> Artifact:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    health = {name(run): [{**r, "run": name(run)} for r in health_rows(run)] for run in runs}
    if len(health) < len(runs):
        raise UserError(f"{NAME}: two of the runs have the same label and weighting: "
                        f"{', '.join(str(r.path) for r in runs)}")
    curves = [row for run in runs for row in curve_rows(run)]
    summary = [summary_row(run, health[name(run)]) for run in runs]
    csvs = [common.write_csv(out / f"{NAME}.csv", curves, CURVE_COLUMNS),
            common.write_csv(out / f"{NAME}_summary.csv", summary, SUMMARY_COLUMNS),
            common.write_csv(out / f"{NAME}_health.csv", [r for rows in health.values() for r in rows],
                             HEALTH_COLUMNS)]
    png = plot(health, curves, out / f"{NAME}.png")
    paragraph = ("Two MBC runs that differ only in the positions their perplexity is taken over (the paper does not "
                 "say), with the uniform run for reference. " + describe(summary, curves))
    md = common.write_markdown(out, NAME, TITLE, paragraph, png, csvs)
    return Artifact(NAME, TITLE, png, csvs, md, paragraph, {"summary": summary, "curves": curves, "health": health})


def main(argv: list[str] | None = None) -> int:
    args = common.base_parser(NAME, __doc__).parse_args(argv)
    return common.run_cli(lambda: build(common.open_runs(args.runs, args.labels), args.out))


if __name__ == "__main__":
    sys.exit(main())
