"""Figure 3: validation perplexity at every checkpoint, over the positions that were trained.

    python -m experiments.fig3_validation_perplexity --runs runs/demo/mbc runs/demo/uniform --out figures/

From the validation rows of each memorization snapshot: perplexity = exp(total NLL / total target
tokens) over the validation set, the total NLL of a record being tokens x log(perplexity), once over
the full dialogue (`val_perplexity`, the trainer's logged `val_perplexity`) and once over response
tokens only (`val_response_perplexity`, the trainer's `val_response_perplexity`); the `*_logged`
columns repeat the trainer's numbers from metrics.jsonl for checking.

The headline curve (`val_trained_perplexity`, solid) is the one over the positions the loss trained,
read from the run's config.yaml: response only under `loss_on: response` (the paper's setup, where
instruction and template positions are never trained), the full dialogue under `loss_on: full`.
The other curve is drawn dotted and labelled as secondary.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Sequence

import numpy as np

from experiments import common
from experiments.common import LOSS_ON, Artifact, fmt
from mbc_jax.run_folder import RunFolder

NAME = "fig3_validation_perplexity"
TITLE = "Figure 3: validation perplexity"
COLUMNS = ("run", "sampler", "learning_rate", "loss_on", "step", "epoch", "records", "tokens", "response_tokens",
           "val_trained_perplexity", "val_perplexity", "val_response_perplexity", "val_perplexity_logged",
           "val_response_perplexity_logged")
HEADLINE = {"response": "val_response_perplexity", "full": "val_perplexity"}  # loss_on -> the headline column
SECONDARY = {"response": "val_perplexity", "full": "val_response_perplexity"}


def pooled_perplexity(tokens: np.ndarray, perplexity: np.ndarray) -> float:
    """exp(sum_r tokens_r * log ppl_r / sum_r tokens_r) over records with targets."""
    tokens, perplexity = np.asarray(tokens, float), np.asarray(perplexity, float)
    ok = (tokens > 0) & np.isfinite(perplexity)
    if not ok.any():
        return math.nan
    return float(np.exp((tokens[ok] * np.log(perplexity[ok])).sum() / tokens[ok].sum()))


def curve(run: RunFolder) -> list[dict]:
    """One row per snapshot with validation records; `val_trained_perplexity` is the column of the
    positions the run trained (`HEADLINE[loss_on]`)."""
    loss_on = common.trained_positions(run)
    logged = {m["step"]: m for m in run.metrics() if m.get("eval")}
    rows = []
    for step in run.memorization_steps():
        t = run.memorization(step, "val")
        if not len(t["index"]):
            continue
        row = {"run": run.label, "sampler": run.sampler, "learning_rate": run.learning_rate, "loss_on": loss_on,
               "step": step, "epoch": step / run.epoch_steps, "records": len(t["index"]),
               "tokens": int(t["tokens"].sum()), "response_tokens": int(t["response_tokens"].sum()),
               "val_perplexity": pooled_perplexity(t["tokens"], t["perplexity"]),
               "val_response_perplexity": pooled_perplexity(t["response_tokens"], t["response_perplexity"]),
               "val_perplexity_logged": logged.get(step, {}).get("val_perplexity"),
               "val_response_perplexity_logged": logged.get(step, {}).get("val_response_perplexity")}
        row["val_trained_perplexity"] = row[HEADLINE[loss_on]]
        rows.append(row)
    if rows and not any(math.isfinite(r["val_trained_perplexity"]) for r in rows):
        raise common.UserError(f"{run.path}: loss_on is {loss_on!r} but no validation record has "
                               f"{LOSS_ON[loss_on]} targets, so the trained positions' perplexity is undefined")
    return rows


def describe(run: RunFolder, rows: list[dict]) -> str:
    loss_on = rows[0]["loss_on"]
    ppl = np.array([r["val_trained_perplexity"] for r in rows])
    i = int(np.nanargmin(ppl))
    s = (f"{run.label} (loss_on: {loss_on}): validation perplexity over the trained positions "
         f"({LOSS_ON[loss_on]}; {rows[0]['records']} records) went from {fmt(ppl[0], 2)} at step "
         f"{rows[0]['step']} to {fmt(ppl[-1], 2)} at step {rows[-1]['step']}; its minimum, {fmt(ppl[i], 2)}, was at "
         f"step {rows[i]['step']} (epoch {rows[i]['epoch']:.1f})")
    if i < len(rows) - 1:
        s += (f", after which it rose by {100 * (ppl[-1] / ppl[i] - 1):.1f}% (the model fits the training records "
              "at the expense of held-out ones).")
    else:
        s += ", i.e. it was still falling at the end of training."
    other = SECONDARY[loss_on]
    r0, r1 = rows[0][other], rows[-1][other]
    if math.isfinite(r1):
        what = ("the full dialogue (instruction and template positions too, which this run never trained)"
                if loss_on == "response" else "response tokens alone")
        s += f" Over {what}, the secondary dotted curve, it went from {fmt(r0, 2)} to {fmt(r1, 2)}."
    return s


def plot(curves: list[tuple[RunFolder, list[dict]]], path: Path) -> Path:
    fig, (ax,) = common.figure(size=(7.0, 4.5))
    for (run, rows), color in zip(curves, common.colors(len(curves))):
        loss_on = rows[0]["loss_on"]
        other = "full" if loss_on == "response" else "response"
        steps = [r["step"] for r in rows]
        ax.plot(steps, [r["val_trained_perplexity"] for r in rows], "-o", ms=3, color=color,
                label=f"{run.label}: {LOSS_ON[loss_on]} (trained positions)")
        ax.plot(steps, [r[SECONDARY[loss_on]] for r in rows], ":", color=color, alpha=0.7,
                label=f"{run.label}: {LOSS_ON[other]} (secondary)")
    ax.set_yscale("log")
    ax.set_xlabel("training step")
    ax.set_ylabel("validation perplexity (log scale)")
    ax.set_title("solid: over the trained positions (loss_on); dotted: the other positions", fontsize=9)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)
    return common.save_figure(fig, path)


def build(runs: Sequence[RunFolder], out: str | Path) -> Artifact:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    curves = [(run, curve(run)) for run in runs]
    empty = [run.label for run, rows in curves if not rows]
    curves = [(run, rows) for run, rows in curves if rows]
    if not curves:
        raise common.UserError("no run has validation records (records.csv split 'val'); set val_data or "
                               "val_fraction when training")
    csv_path = common.write_csv(out / f"{NAME}.csv", [r for _, rows in curves for r in rows], COLUMNS)
    png = plot(curves, out / f"{NAME}.png")
    paragraph = ("Solid curves: validation perplexity over the positions each run's loss trained, read from its "
                 "config.yaml (response only under loss_on: response, the full dialogue under loss_on: full); "
                 "dotted: the other positions, secondary. ")
    paragraph += " ".join(describe(run, rows) for run, rows in curves)
    if empty:
        paragraph += f" No validation records in: {', '.join(empty)}."
    md = common.write_markdown(out, NAME, TITLE, paragraph, png, [csv_path])
    return Artifact(NAME, TITLE, png, [csv_path], md, paragraph, {"rows": [r for _, rows in curves for r in rows]})


def main(argv: list[str] | None = None) -> int:
    args = common.base_parser(NAME, __doc__).parse_args(argv)
    return common.run_cli(lambda: build(common.open_runs(args.runs, args.labels), args.out))


if __name__ == "__main__":
    sys.exit(main())
