"""Figure 8: how often each training record was drawn, MBC vs uniform.

    python -m experiments.fig8_sampling_frequency --runs runs/demo/mbc runs/demo/uniform --out figures/

Draw counts come from sampling.csv (written at the end of a run); for a run that has not finished,
from the `draws` column of its last memorization snapshot. One row of panels per run. Left, the
paper's plot: x = every training record, grouped by category (categories in blocks in sorted order,
labelled; within a block the records keep their records.csv order, i.e. their order in the data
file), y = times drawn, with each block's mean as a short black line and the uniform level marked:
total draws / records, the flat line a uniform sampler drawing as many records gives (15 for the
paper's 15 epochs). Right, beside it on the same y axis: the histogram of draws per record.
`_records.csv` holds the per-record points in plotting order; the summary relates each record's
draws to how hard it was (its mean perplexity over the snapshots, Spearman correlation).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Sequence

import numpy as np

from experiments import common
from experiments.common import Artifact, fmt
from mbc_jax.run_folder import HEALTH, RunFolder

NAME = "fig8_sampling_frequency"
TITLE = "Figure 8: sampling frequency of training records"
COLUMNS = ("run", "sampler", "draws", "records")
RECORD_COLUMNS = ("run", "sampler", "position", "category", "index", "id", "draws", "uniform_level")
SUMMARY_COLUMNS = ("run", "sampler", "category", "records", "total_draws", "mean_draws", "std_draws", "min_draws",
                   "max_draws", "never_drawn", "uniform_level", "above_uniform")


def draws(run: RunFolder) -> tuple[dict[str, np.ndarray], str]:
    """({index, id, category, draws}, source) for the training records."""
    if (run.path / "sampling.csv").is_file():
        t = run.sampling()
        return {k: t[k] for k in ("index", "id", "category", "draws")}, "sampling.csv"
    step = run.memorization_steps()[-1]
    t = run.memorization(step, "train")
    common.log(f"{run.path}: no sampling.csv (run not finished); using the draws of snapshot step {step}")
    return {k: t[k] for k in ("index", "id", "category", "draws")}, f"memorization step {step}"


def uniform_level(t: dict[str, np.ndarray]) -> float:
    """Total draws / records: what every record gets from a uniform sampler (without replacement,
    epoch by epoch) drawing as many records, i.e. the run's epochs-equivalent."""
    return float(np.asarray(t["draws"], np.float64).sum() / len(t["draws"]))


def record_order(categories: Sequence[str]) -> np.ndarray:
    """Plotting order of the records: grouped by category (blocks in sorted category order), each
    block in the given (records.csv) order. Returns positions into `categories`."""
    cats = np.array([str(c) for c in categories], dtype=object)
    blocks = [np.flatnonzero(cats == c) for c in sorted(set(cats))]
    return np.concatenate(blocks) if blocks else np.zeros(0, np.int64)


def record_rows(run: RunFolder, t: dict[str, np.ndarray]) -> list[dict]:
    """One row per training record in plotting order (`position` = x)."""
    level = uniform_level(t)
    return [{"run": run.label, "sampler": run.sampler, "position": x, "category": str(t["category"][i]),
             "index": int(t["index"][i]), "id": str(t["id"][i]), "draws": int(t["draws"][i]), "uniform_level": level}
            for x, i in enumerate(record_order(t["category"]))]


def histogram(d: np.ndarray) -> list[tuple[int, int]]:
    values, counts = np.unique(np.asarray(d, np.int64), return_counts=True)
    return [(int(v), int(c)) for v, c in zip(values, counts)]


def summary_rows(run: RunFolder, t: dict[str, np.ndarray]) -> list[dict]:
    level = uniform_level(t)
    rows = []
    for cat in ["all", *sorted(set(t["category"]))]:
        d = t["draws"] if cat == "all" else t["draws"][t["category"] == cat]
        rows.append({"run": run.label, "sampler": run.sampler, "category": cat, "records": len(d),
                     "total_draws": int(d.sum()), "mean_draws": float(d.mean()), "std_draws": float(d.std()),
                     "min_draws": int(d.min()), "max_draws": int(d.max()), "never_drawn": int((d == 0).sum()),
                     "uniform_level": level, "above_uniform": int((d > level).sum())})
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
                f"times ({a['total_draws']} draws), the uniform level, as a sampler that visits each record once per "
                "epoch does.")
    s = (f"{run.label} ({source}): {a['total_draws']} draws over {a['records']} records, {fmt(a['mean_draws'], 2)} per "
         f"record on average, the uniform level (std {fmt(a['std_draws'], 2)}, range "
         f"{a['min_draws']}-{a['max_draws']}); {a['above_uniform']} records were drawn more often than that and "
         f"{a['never_drawn']} never.")
    if len(cats) > 1:
        hi, lo = max(cats, key=lambda r: r["mean_draws"]), min(cats, key=lambda r: r["mean_draws"])
        s += (f" {hi['category']} records were drawn most ({fmt(hi['mean_draws'], 2)} each), {lo['category']} least "
              f"({fmt(lo['mean_draws'], 2)}).")
    if corr.get("n", 0) >= 3:
        s += (f" Spearman correlation of draws with the record's mean log-perplexity: {fmt(corr['spearman'], 2)} "
              f"(95% CI {fmt(corr['spearman_lo'], 2)} to {fmt(corr['spearman_hi'], 2)}).")
    return s


def plot(per_run: list[tuple[RunFolder, dict, list[dict], list[dict]]], path: Path) -> Path:
    n = len(per_run)
    fig, axes = common.figure(n, 2, size=(13.0, 3.8 * n), width_ratios=(4, 1), sharey="row")
    colors = common.category_colors(p["category"] for *_, points in per_run for p in points)
    for (run, _, _, points), ax, hx in zip(per_run, axes[0::2], axes[1::2]):
        x = np.array([p["position"] for p in points])
        y = np.array([p["draws"] for p in points])
        cats = np.array([p["category"] for p in points], dtype=object)
        level = points[0]["uniform_level"]
        ticks, names = [], []
        for c in sorted(set(cats)):
            sel = cats == c
            lo, hi = int(x[sel].min()), int(x[sel].max())
            ax.scatter(x[sel], y[sel], s=max(1.0, min(12.0, 4000 / len(x))), color=colors[c], lw=0)
            ax.hlines(y[sel].mean(), lo - 0.4, hi + 0.4, color="black", lw=1.2)
            if lo > 0:
                ax.axvline(lo - 0.5, color="grey", lw=0.6, alpha=0.6)
            ticks.append((lo + hi) / 2)
            names.append(c)
        ax.axhline(level, color="#D62728", ls="--", lw=1.2, label=f"uniform level {fmt(level, 2)} (draws / records)")
        ax.set_xticks(ticks, names, rotation=30, ha="right", fontsize=7)
        ax.set_xlim(-0.5, len(x) - 0.5)
        ax.set_ylim(bottom=0)
        ax.set_ylabel("times drawn")
        ax.set_title(f"{run.label}: every training record, by category (black: category mean)", fontsize=9)
        ax.grid(alpha=0.3, axis="y")
        ax.legend(fontsize=7, loc="upper right")
        top = int(y.max())
        hx.hist(y, bins=np.arange(-0.5, top + 1.5, max(1, (top + 1) // 40)), orientation="horizontal",
                color="#1F77B4")
        hx.axhline(level, color="#D62728", ls="--", lw=1.2)
        hx.set_xlabel("training records")
        hx.set_title("histogram", fontsize=9)
        hx.grid(alpha=0.3)
    return common.save_figure(fig, path)


HEALTH_COLUMNS = ("run", "step", "ess", "ess_share", "max_weight", "top1pct_share", "distinct_drawn")


def health_rows(run: RunFolder) -> list[dict]:
    """MBC's weights at each refresh (the run folder's mbc_health.jsonl, mbc_jax.samplers.weight_health)."""
    path = run.path / HEALTH
    if not path.is_file():
        return []
    return [{"run": run.label, **{k: m[k] for k in HEALTH_COLUMNS[1:]}}
            for m in map(json.loads, path.read_text().splitlines()) if m]


def describe_health(run: RunFolder, rows: list[dict]) -> str:
    """One sentence on how concentrated MBC's weights got: the effective sample size's range over refreshes."""
    if not rows:
        return ""
    low = min(rows, key=lambda r: r["ess_share"])
    return (f"{run.label}: over {len(rows)} refreshes the weights' effective sample size (1 / sum p^2) ran from "
            f"{min(r['ess_share'] for r in rows):.0%} to {max(r['ess_share'] for r in rows):.0%} of the records "
            f"(lowest {low['ess']:.1f} at step {low['step']}, largest weight then {low['max_weight']:.3f}, the top 1% "
            f"holding {low['top1pct_share']:.1%}); {rows[-1]['distinct_drawn']} distinct records drawn by the last "
            f"refresh (of {run.n_train} training records).")


def build(runs: Sequence[RunFolder], out: str | Path) -> Artifact:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    per_run, hist_rows, summary, texts, points, health = [], [], [], [], [], []
    for run in runs:
        t, source = draws(run)
        rows = summary_rows(run, t)
        corr = hardness_correlation(run, t)
        per_run.append((run, t, rows, record_rows(run, t)))
        points += per_run[-1][3]
        hist_rows += [{"run": run.label, "sampler": run.sampler, "draws": v, "records": c}
                      for v, c in histogram(t["draws"])]
        summary += rows
        texts.append(describe(run, rows, corr, source))
        health += health_rows(run)
        texts.append(describe_health(run, [h for h in health if h["run"] == run.label]))
    csv_path = common.write_csv(out / f"{NAME}.csv", hist_rows, COLUMNS)
    sum_path = common.write_csv(out / f"{NAME}_summary.csv", summary, SUMMARY_COLUMNS)
    rec_path = common.write_csv(out / f"{NAME}_records.csv", points, RECORD_COLUMNS)
    png = plot(per_run, out / f"{NAME}.png")
    paragraph = ("Left: every training record (x, grouped by category in blocks, each block in data-file order) "
                 "against the times it was drawn (y); the dashed line is the uniform level (total draws / records, "
                 "the epochs-equivalent: 15 for the paper's 15 epochs), black lines the category means. Right: the "
                 "histogram of the same counts. ") + " ".join(t for t in texts if t)
    csvs = [csv_path, sum_path, rec_path]
    if health:
        csvs.append(common.write_csv(out / f"{NAME}_health.csv", health, HEALTH_COLUMNS))
    md = common.write_markdown(out, NAME, TITLE, paragraph, png, csvs)
    return Artifact(NAME, TITLE, png, csvs, md, paragraph, {"histogram": hist_rows, "summary": summary,
                                                            "records": points, "health": health})


def main(argv: list[str] | None = None) -> int:
    args = common.base_parser(NAME, __doc__).parse_args(argv)
    return common.run_cli(lambda: build(common.open_runs(args.runs, args.labels), args.out))


if __name__ == "__main__":
    sys.exit(main())
