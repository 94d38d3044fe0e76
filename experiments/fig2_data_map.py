"""Figure 2: a data map of memorization: each training record's mean against its variance of
exact memorization across checkpoints, coloured by category, with the easy-to-memorize and
hard-to-memorize regions marked and example records of each listed.

    python -m experiments.fig2_data_map --runs runs/demo/uniform --out figures/ [--include-step0]

The memorization mapped is that of the positions the run trained (`common.trained_positions`, from its
config.yaml): response exact match under `loss_on: response`, so untrained context (a Dolly record's
Wikipedia passage, the instruction) is not counted as memorized by SFT; full-dialogue exact match under
`loss_on: full`. `--metric` picks another column. The CSV names the column used (`positions`) and keeps the
full-dialogue mean and variance as the labelled extras `full_dialogue_mean` and `full_dialogue_variance`.

Mean and (population) variance are over the memorization snapshots taken after training began
(step > 0; `--include-step0` adds the untrained model's). Regions, from the quantiles of the run's
own records: easy = mean in the top third and variance at most the median (memorized early and
kept); hard = mean in the bottom third and variance at most the median (never memorized);
variable = variance above the median; the rest is "middle".
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np

from experiments import common
from experiments.common import Artifact, fmt
from mbc_jax.run_folder import RunFolder

NAME = "fig2_data_map"
TITLE = "Figure 2: data map of memorization"
COLUMNS = ("run", "index", "id", "category", "positions", "checkpoints", "mean", "variance", "region",
           "full_dialogue_mean", "full_dialogue_variance")
EXAMPLE_COLUMNS = ("run", "region", "rank", "index", "id", "category", "mean", "variance", "text")
REGIONS = ("easy", "hard", "variable", "middle")
POSITIONS = {"response_exact_match": "response positions", "exact_match": "full dialogue"}


def trained_metric(run: RunFolder) -> str:
    """The exact-match column of the positions the run's loss trained."""
    return "response_exact_match" if common.trained_positions(run) == "response" else "exact_match"


def data_map(run: RunFolder, metric: str | None = None, include_step0: bool = False) -> dict:
    """{metric, steps, index, id, category, mean, variance, region, thresholds, full_mean, full_variance} for the
    training records; `metric` None: the positions the run trained (`trained_metric`); full_*: full dialogue."""
    metric = metric or trained_metric(run)
    steps = [s for s in run.memorization_steps() if include_step0 or s > 0]
    if not steps:
        raise common.UserError(f"{run.path}: only the step-0 snapshot exists; a data map needs checkpoints after "
                               "training began (or pass --include-step0)")
    steps, index, values = run.record_matrix(metric, "train", steps)
    _, _, full = run.record_matrix("exact_match", "train", steps)
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a record without response targets: nan, said below
        mean, var = np.nanmean(values, axis=0), np.nanvar(values, axis=0)
        full_mean, full_var = np.nanmean(full, axis=0), np.nanvar(full, axis=0)
    train = run.records["split"] == "train"
    ok = np.isfinite(mean)
    lo, hi = np.quantile(mean[ok], [1 / 3, 2 / 3])
    vmed = float(np.median(var[ok]))
    region = np.full(len(mean), "middle", dtype=object)
    region[ok & (var > vmed)] = "variable"
    region[ok & (var <= vmed) & (mean >= hi)] = "easy"
    region[ok & (var <= vmed) & (mean <= lo)] = "hard"
    region[~ok] = "undefined"
    return {"metric": metric, "full_mean": full_mean, "full_variance": full_var, "steps": steps, "index": index,
            "id": run.records["id"][train], "category": run.records["category"][train],
            "mean": mean, "variance": var, "region": region,
            "thresholds": {"mean_low": float(lo), "mean_high": float(hi), "variance_median": vmed}}


def examples(run: RunFolder, dm: dict, per_region: int, log=common.log) -> tuple[list[dict], str]:
    """The `per_region` most typical records of each region (easy: highest mean; hard: lowest mean;
    variable: highest variance), with their text; and a note when the text is unavailable."""
    order = {"easy": np.argsort(-dm["mean"], kind="stable"), "hard": np.argsort(dm["mean"], kind="stable"),
             "variable": np.argsort(-dm["variance"], kind="stable")}
    texts, note = {}, ""
    try:
        records = run.load_records("train")
        template = run.template()
        texts = {r.index: common.record_text(r, template) for r in records}
    except common.UserError as e:
        note = f"record texts unavailable ({e})"
        log(f"{NAME}: {note}")
    rows = []
    for region, idx in order.items():
        picked = [i for i in idx if dm["region"][i] == region][:per_region]
        for rank, i in enumerate(picked, 1):
            rows.append({"run": run.label, "region": region, "rank": rank, "index": int(dm["index"][i]),
                         "id": dm["id"][i], "category": dm["category"][i], "mean": float(dm["mean"][i]),
                         "variance": float(dm["variance"][i]), "text": texts.get(int(dm["index"][i]), "")})
    return rows, note


def describe(run: RunFolder, dm: dict) -> str:
    metric = dm["metric"]
    n = len(dm["mean"])
    counts = {r: int((dm["region"] == r).sum()) for r in REGIONS}
    th = dm["thresholds"]
    s = (f"{run.label} ({metric}, {POSITIONS.get(metric, metric)}; the full-dialogue mean and variance are the CSV's "
         f"full_dialogue_* extras): over {len(dm['steps'])} checkpoints (steps {dm['steps'][0]}-{dm['steps'][-1]}), "
         f"the {n} training records have mean {metric} between {fmt(np.nanmin(dm['mean']))} and "
         f"{fmt(np.nanmax(dm['mean']))} "
         f"(median {fmt(np.nanmedian(dm['mean']))}) and variance up to {np.nanmax(dm['variance']):.4f}. "
         f"{counts['easy']} records are easy to memorize (mean >= {fmt(th['mean_high'])}, variance <= "
         f"{th['variance_median']:.4f}), {counts['hard']} hard (mean <= {fmt(th['mean_low'])}, same variance bound), "
         f"{counts['variable']} variable.")
    if counts_undefined := int((dm["region"] == "undefined").sum()):
        s += f" {counts_undefined} records have no {metric} value (no targets at those positions) and are not mapped."
    cats = sorted(set(dm["category"]))
    share = []
    for c in cats:
        in_c = dm["category"] == c
        share.append((float((dm["region"][in_c] == "easy").mean()), float((dm["region"][in_c] == "hard").mean()), c))
    if len(cats) > 1:
        easiest, hardest = max(share), max(share, key=lambda t: t[1])
        s += (f" By category, {easiest[2]} has the largest share of easy records ({common.pct(easiest[0])}) and "
              f"{hardest[2]} the largest share of hard ones ({common.pct(hardest[1])}).")
    return s


def plot(maps: list[tuple[RunFolder, dict]], path: Path) -> Path:
    fig, axes = common.figure(1, len(maps), size=(6.0 * len(maps), 5.0))
    cats = sorted({str(c) for _, dm in maps for c in dm["category"]})
    colors = common.category_colors(cats)
    for ax, (run, dm) in zip(axes, maps):
        th = dm["thresholds"]
        vmax = max(float(np.nanmax(dm["variance"])), 1e-9) * 1.05
        top = min(1.0, float(np.nanmax(dm["mean"])) * 1.1 + 0.02)
        width = th["variance_median"] / vmax
        ax.axhspan(th["mean_high"], top, xmax=width, color="#4C9F70", alpha=0.15, lw=0)
        ax.axhspan(0.0, th["mean_low"], xmax=width, color="#D1605E", alpha=0.15, lw=0)
        for c in cats:
            m = dm["category"] == c
            ax.scatter(dm["variance"][m], dm["mean"][m], s=12, alpha=0.75, color=colors[c], label=c)
        ax.text(0.01, top, "easy to memorize", transform=ax.get_yaxis_transform(), fontsize=8, color="#2E6B4A",
                va="top", fontweight="bold")
        ax.text(0.01, 0.0, "hard to memorize", transform=ax.get_yaxis_transform(), fontsize=8, color="#8E2F2D",
                va="bottom", fontweight="bold")
        ax.set_ylim(0, top)
        ax.set_xlim(0, vmax)
        ax.set_xlabel(f"variance of {dm['metric']} across checkpoints")
        ax.set_ylabel(f"mean {dm['metric']} across checkpoints")
        ax.set_title(f"{run.label} ({dm['metric']}: {POSITIONS.get(dm['metric'], dm['metric'])})", fontsize=10)
        ax.grid(alpha=0.3)
    axes[-1].legend(fontsize=7, markerscale=1.5, loc="best")
    return common.save_figure(fig, path)


def build(runs: Sequence[RunFolder], out: str | Path, *, metric: str | None = None, include_step0: bool = False,
          per_region: int = 3) -> Artifact:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    maps = [(run, data_map(run, metric, include_step0)) for run in runs]
    rows, ex_rows, notes = [], [], []
    for run, dm in maps:
        for i in range(len(dm["mean"])):
            rows.append({"run": run.label, "index": int(dm["index"][i]), "id": dm["id"][i],
                         "category": dm["category"][i], "positions": dm["metric"], "checkpoints": len(dm["steps"]),
                         "mean": dm["mean"][i], "variance": dm["variance"][i], "region": dm["region"][i],
                         "full_dialogue_mean": dm["full_mean"][i], "full_dialogue_variance": dm["full_variance"][i]})
        ex, note = examples(run, dm, per_region)
        ex_rows += ex
        if note:
            notes.append(f"{run.label}: {note}.")
    csv_path = common.write_csv(out / f"{NAME}.csv", rows, COLUMNS)
    ex_path = common.write_csv(out / f"{NAME}_examples.csv", ex_rows, EXAMPLE_COLUMNS)
    png = plot(maps, out / f"{NAME}.png")
    paragraph = " ".join([describe(run, dm) for run, dm in maps] + notes)
    table = common.markdown_table(
        [[r["run"], r["region"], r["category"], fmt(r["mean"]), f"{r['variance']:.4f}", r["text"] or r["id"]]
         for r in ex_rows], ["run", "region", "category", "mean", "variance", "record"])
    md = common.write_markdown(out, NAME, TITLE, paragraph, png, [csv_path, ex_path],
                               extra="Example records of each region:\n\n" + table)
    return Artifact(NAME, TITLE, png, [csv_path, ex_path], md, paragraph, {"maps": maps, "examples": ex_rows})


def main(argv: list[str] | None = None) -> int:
    p = common.base_parser(NAME, __doc__)
    p.add_argument("--metric", default=None, choices=("exact_match", "response_exact_match"),
                   help="memorization column of the snapshots (default: the positions the run trained, from its "
                        "config.yaml's loss_on)")
    p.add_argument("--include-step0", action="store_true", help="include the snapshot of the untrained model")
    p.add_argument("--examples", type=int, default=3, metavar="N", help="example records per region (default: 3)")
    args = p.parse_args(argv)
    return common.run_cli(lambda: build(common.open_runs(args.runs, args.labels), args.out, metric=args.metric,
                                        include_step0=args.include_step0, per_region=args.examples))


if __name__ == "__main__":
    sys.exit(main())
