"""Figure 8: how often each training record was drawn, MBC vs uniform.

    python -m experiments.fig8_sampling_frequency --runs runs/demo/mbc runs/demo/uniform --out figures/

Draw counts come from sampling.csv (written at the end of a run); for a run that has not finished,
from the `draws` column of its last memorization snapshot. The figure shows the distribution of
draws per record (left) and the mean draws per category (right); the summary relates each
record's draws to how hard it was (its mean perplexity over the snapshots, Spearman correlation).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Sequence

import numpy as np

from experiments import common
from experiments.common import Artifact, fmt
from mbc_jax.run_folder import RunFolder

NAME = "fig8_sampling_frequency"
TITLE = "Figure 8: sampling frequency of training records"
COLUMNS = ("run", "sampler", "draws", "records")
SUMMARY_COLUMNS = ("run", "sampler", "category", "records", "total_draws", "mean_draws", "std_draws", "min_draws",
                   "max_draws", "never_drawn")


def draws(run: RunFolder) -> tuple[dict[str, np.ndarray], str]:
    """({index, id, category, draws}, source) for the training records."""
    if (run.path / "sampling.csv").is_file():
        t = run.sampling()
        return {k: t[k] for k in ("index", "id", "category", "draws")}, "sampling.csv"
    step = run.memorization_steps()[-1]
    t = run.memorization(step, "train")
    common.log(f"{run.path}: no sampling.csv (run not finished); using the draws of snapshot step {step}")
    return {k: t[k] for k in ("index", "id", "category", "draws")}, f"memorization step {step}"


def histogram(d: np.ndarray) -> list[tuple[int, int]]:
    values, counts = np.unique(np.asarray(d, np.int64), return_counts=True)
    return [(int(v), int(c)) for v, c in zip(values, counts)]


def summary_rows(run: RunFolder, t: dict[str, np.ndarray]) -> list[dict]:
    rows = []
    for cat in ["all", *sorted(set(t["category"]))]:
        d = t["draws"] if cat == "all" else t["draws"][t["category"] == cat]
        rows.append({"run": run.label, "sampler": run.sampler, "category": cat, "records": len(d),
                     "total_draws": int(d.sum()), "mean_draws": float(d.mean()), "std_draws": float(d.std()),
                     "min_draws": int(d.min()), "max_draws": int(d.max()), "never_drawn": int((d == 0).sum())})
    return rows


def hardness_correlation(run: RunFolder, t: dict[str, np.ndarray]) -> dict:
    """Spearman correlation between draws and the record's mean perplexity over the snapshots."""
    snaps = run.memorization_steps()
    steps = [s for s in snaps if 0 < s < snaps[-1]] or snaps  # the snapshots the sampler could have acted on
    _, index, ppl = run.record_matrix("perplexity", "train", steps)
    pos = {int(i): n for n, i in enumerate(index)}
    with np.errstate(invalid="ignore"):
        hard = np.nanmean(np.log(ppl), axis=0)[[pos[int(i)] for i in t["index"]]]
    return common.correlation(t["draws"].astype(float), hard, n_boot=500)


def describe(run: RunFolder, rows: list[dict], corr: dict, source: str) -> str:
    a = rows[0]
    cats = [r for r in rows[1:]]
    if a["min_draws"] == a["max_draws"]:
        return (f"{run.label} ({source}): every one of the {a['records']} records was drawn exactly {a['max_draws']} "
                f"times ({a['total_draws']} draws), as a sampler that visits each record once per epoch does.")
    s = (f"{run.label} ({source}): {a['total_draws']} draws over {a['records']} records, {fmt(a['mean_draws'], 2)} per "
         f"record on average (std {fmt(a['std_draws'], 2)}, range {a['min_draws']}-{a['max_draws']}); "
         f"{a['never_drawn']} records were never drawn.")
    if len(cats) > 1:
        hi, lo = max(cats, key=lambda r: r["mean_draws"]), min(cats, key=lambda r: r["mean_draws"])
        s += (f" {hi['category']} records were drawn most ({fmt(hi['mean_draws'], 2)} each), {lo['category']} least "
              f"({fmt(lo['mean_draws'], 2)}).")
    if corr.get("n", 0) >= 3:
        s += (f" Spearman correlation of draws with the record's mean log-perplexity: {fmt(corr['spearman'], 2)} "
              f"(95% CI {fmt(corr['spearman_lo'], 2)} to {fmt(corr['spearman_hi'], 2)}).")
    return s


def plot(per_run: list[tuple[RunFolder, dict, list[dict]]], path: Path) -> Path:
    fig, (ax, bx) = common.figure(1, 2, size=(12.0, 4.5))
    cols = common.colors(len(per_run))
    top = max(int(t["draws"].max()) for _, t, _ in per_run)
    bins = np.arange(-0.5, top + 1.5, max(1, (top + 1) // 40))
    for k, ((run, t, _), color) in enumerate(zip(per_run, cols)):
        ax.hist(t["draws"], bins=bins, histtype="step", lw=1.6, color=color, label=run.label,
                linestyle=("-", "--", "-.", ":")[k % 4])
    ax.set_xlabel("times drawn during training")
    ax.set_ylabel("training records")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    cats = sorted({r["category"] for _, _, rows in per_run for r in rows[1:]})
    x = np.arange(len(cats))
    w = 0.8 / len(per_run)
    for k, ((run, _, rows), color) in enumerate(zip(per_run, cols)):
        by = {r["category"]: r for r in rows[1:]}
        bx.bar(x + (k - (len(per_run) - 1) / 2) * w, [by[c]["mean_draws"] if c in by else 0 for c in cats], w,
               color=color, label=run.label)
    bx.set_xticks(x, cats, rotation=25, ha="right", fontsize=8)
    bx.set_ylabel("mean draws per record")
    bx.grid(alpha=0.3, axis="y")
    bx.legend(fontsize=8)
    return common.save_figure(fig, path)


def build(runs: Sequence[RunFolder], out: str | Path) -> Artifact:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    per_run, hist_rows, summary, texts = [], [], [], []
    for run in runs:
        t, source = draws(run)
        rows = summary_rows(run, t)
        corr = hardness_correlation(run, t)
        per_run.append((run, t, rows))
        hist_rows += [{"run": run.label, "sampler": run.sampler, "draws": v, "records": c}
                      for v, c in histogram(t["draws"])]
        summary += rows
        texts.append(describe(run, rows, corr, source))
    csv_path = common.write_csv(out / f"{NAME}.csv", hist_rows, COLUMNS)
    sum_path = common.write_csv(out / f"{NAME}_summary.csv", summary, SUMMARY_COLUMNS)
    png = plot(per_run, out / f"{NAME}.png")
    paragraph = " ".join(texts)
    md = common.write_markdown(out, NAME, TITLE, paragraph, png, [csv_path, sum_path])
    return Artifact(NAME, TITLE, png, [csv_path, sum_path], md, paragraph, {"histogram": hist_rows, "summary": summary})


def main(argv: list[str] | None = None) -> int:
    args = common.base_parser(NAME, __doc__).parse_args(argv)
    return common.run_cli(lambda: build(common.open_runs(args.runs, args.labels), args.out))


if __name__ == "__main__":
    sys.exit(main())
