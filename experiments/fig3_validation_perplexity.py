"""Figure 3: validation perplexity at every checkpoint.

    python -m experiments.fig3_validation_perplexity --runs runs/demo/mbc runs/demo/uniform --out figures/

From the validation rows of each memorization snapshot: perplexity = exp(total NLL / total target
tokens) over the validation set, the total NLL of a record being tokens x log(perplexity) (the same
number the trainer logs as `val_perplexity` in metrics.jsonl, which the CSV repeats for checking),
and the same over response tokens only.
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

NAME = "fig3_validation_perplexity"
TITLE = "Figure 3: validation perplexity"
COLUMNS = ("run", "sampler", "learning_rate", "step", "epoch", "records", "tokens", "val_perplexity",
           "val_response_perplexity", "val_perplexity_logged")


def pooled_perplexity(tokens: np.ndarray, perplexity: np.ndarray) -> float:
    """exp(sum_r tokens_r * log ppl_r / sum_r tokens_r) over records with targets."""
    tokens, perplexity = np.asarray(tokens, float), np.asarray(perplexity, float)
    ok = (tokens > 0) & np.isfinite(perplexity)
    if not ok.any():
        return math.nan
    return float(np.exp((tokens[ok] * np.log(perplexity[ok])).sum() / tokens[ok].sum()))


def curve(run: RunFolder) -> list[dict]:
    logged = {m["step"]: m.get("val_perplexity") for m in run.metrics() if m.get("eval")}
    rows = []
    for step in run.memorization_steps():
        t = run.memorization(step, "val")
        if not len(t["index"]):
            continue
        rows.append({"run": run.label, "sampler": run.sampler, "learning_rate": run.learning_rate, "step": step,
                     "epoch": step / run.epoch_steps, "records": len(t["index"]), "tokens": int(t["tokens"].sum()),
                     "val_perplexity": pooled_perplexity(t["tokens"], t["perplexity"]),
                     "val_response_perplexity": pooled_perplexity(t["response_tokens"], t["response_perplexity"]),
                     "val_perplexity_logged": logged.get(step)})
    return rows


def describe(run: RunFolder, rows: list[dict]) -> str:
    ppl = np.array([r["val_perplexity"] for r in rows])
    i = int(np.nanargmin(ppl))
    s = (f"{run.label}: validation perplexity ({rows[0]['records']} records) went from {fmt(ppl[0], 2)} at step "
         f"{rows[0]['step']} to {fmt(ppl[-1], 2)} at step {rows[-1]['step']}; its minimum, {fmt(ppl[i], 2)}, was at "
         f"step {rows[i]['step']} (epoch {rows[i]['epoch']:.1f})")
    if i < len(rows) - 1:
        s += (f", after which it rose by {100 * (ppl[-1] / ppl[i] - 1):.1f}% (the model fits the training records "
              "at the expense of held-out ones).")
    else:
        s += ", i.e. it was still falling at the end of training."
    r0, r1 = rows[0]["val_response_perplexity"], rows[-1]["val_response_perplexity"]
    if math.isfinite(r1):
        s += f" On response tokens alone it went from {fmt(r0, 2)} to {fmt(r1, 2)}."
    return s


def plot(curves: list[tuple[RunFolder, list[dict]]], path: Path) -> Path:
    fig, (ax,) = common.figure(size=(7.0, 4.5))
    for (run, rows), color in zip(curves, common.colors(len(curves))):
        steps = [r["step"] for r in rows]
        ax.plot(steps, [r["val_perplexity"] for r in rows], "-o", ms=3, color=color, label=f"{run.label}")
        ax.plot(steps, [r["val_response_perplexity"] for r in rows], ":", color=color, alpha=0.7,
                label=f"{run.label}: response only")
    ax.set_yscale("log")
    ax.set_xlabel("training step")
    ax.set_ylabel("validation perplexity (log scale)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
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
    paragraph = " ".join(describe(run, rows) for run, rows in curves)
    if empty:
        paragraph += f" No validation records in: {', '.join(empty)}."
    md = common.write_markdown(out, NAME, TITLE, paragraph, png, [csv_path])
    return Artifact(NAME, TITLE, png, [csv_path], md, paragraph, {"rows": [r for _, rows in curves for r in rows]})


def main(argv: list[str] | None = None) -> int:
    args = common.base_parser(NAME, __doc__).parse_args(argv)
    return common.run_cli(lambda: build(common.open_runs(args.runs, args.labels), args.out))


if __name__ == "__main__":
    sys.exit(main())
