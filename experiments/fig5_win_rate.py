"""Figure 5: MBC vs baseline win / tie / loss rates from the pairwise LLM judge, one bar per
comparison (e.g. per learning rate).

    python -m experiments.fig5_win_rate --results judge/lr1e-5.json judge/lr5e-5.json \
        --labels "lr 1e-5" "lr 5e-5" --out figures/

Reads the results JSON files of `mbc-jax judge --out` (model A = MBC, model B = baseline, as
`experiments.reproduce` runs it). A win needs both presentation orders to prefer A; whiskers are
the judge's bootstrap CIs. The per-category breakdown goes to `fig5_win_rate_categories.csv`.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Sequence

from experiments import common
from experiments.common import Artifact, pct

NAME = "fig5_win_rate"
TITLE = "Figure 5: MBC vs baseline, pairwise judge"
CATEGORY_COLUMNS = ("label", "category", "n", "win", "tie", "loss", "win_rate", "tie_rate", "loss_rate", "win_lo",
                    "win_hi", "loss_lo", "loss_hi")


def load(paths: Sequence[str | Path], labels: Sequence[str] | None) -> dict[str, dict]:
    from mbc_jax.judge.winrate import load_results

    if labels and len(labels) != len(paths):
        raise common.UserError(f"--labels: {len(labels)} labels for {len(paths)} results files; give one per file")
    out = {}
    for i, p in enumerate(paths):
        p = Path(p)
        if not p.is_file():
            raise common.UserError(f"{p}: no such results file (write it with `mbc-jax judge --out {p}`)")
        try:
            res = load_results(p)
        except ValueError as e:
            raise common.UserError(f"{p}: not a judge results JSON ({e})") from None
        if "overall" not in res:
            raise common.UserError(f"{p}: no `overall` block; is this the results JSON of `mbc-jax judge`?")
        label = labels[i] if labels else f"{res.get('name_a', 'A')} vs {res.get('name_b', 'B')} ({p.stem})"
        out[label] = res
    return out


def describe(results: dict[str, dict]) -> str:
    parts = []
    for label, res in results.items():
        o = res["overall"]
        a, b = res.get("name_a", "A"), res.get("name_b", "B")
        if not o.get("n"):
            parts.append(f"{label}: no valid judgments.")
            continue
        lo, hi = o.get("win_ci") or (None, None)
        parts.append(
            f"{label}: over {o['n']} prompts judged in both orders, {a} wins {pct(o['win_rate'])} (95% CI "
            f"{pct(lo)}-{pct(hi)}), ties {pct(o['tie_rate'])} and loses {pct(o['loss_rate'])} against {b}; "
            f"the judge agreed with itself across orders on {pct(o['consistency'])} of pairs"
            + (f" and {o['n_invalid']} pairs got no valid verdict." if o.get("n_invalid") else "."))
        cats = {c: blk for c, blk in res.get("per_category", {}).items() if blk.get("n")}
        if len(cats) > 1:
            best = max(cats, key=lambda c: cats[c]["win_rate"] - cats[c]["loss_rate"])
            worst = min(cats, key=lambda c: cats[c]["win_rate"] - cats[c]["loss_rate"])
            parts.append(f"By category, {a} does best on {best} (win {pct(cats[best]['win_rate'])}, loss "
                         f"{pct(cats[best]['loss_rate'])}) and worst on {worst} (win {pct(cats[worst]['win_rate'])}, "
                         f"loss {pct(cats[worst]['loss_rate'])}).")
    return " ".join(parts)


def build(results_paths: Sequence[str | Path], out: str | Path, labels: Sequence[str] | None = None) -> Artifact:
    from mbc_jax.judge.winrate import plot_win_rates

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    results = load(results_paths, labels)
    png = plot_win_rates(results, out / f"{NAME}.png", title="MBC vs baseline (pairwise judge, both orders)")
    csv_path = png.with_suffix(".csv")  # written by plot_win_rates next to the PNG
    rows = []
    for label, res in results.items():
        for cat, blk in res.get("per_category", {}).items():
            win, loss = blk.get("win_ci") or [None, None], blk.get("loss_ci") or [None, None]
            rows.append({"label": label, "category": cat, **{k: blk.get(k) for k in CATEGORY_COLUMNS[2:9]},
                         "win_lo": win[0], "win_hi": win[1], "loss_lo": loss[0], "loss_hi": loss[1]})
    cat_path = common.write_csv(out / f"{NAME}_categories.csv", rows, CATEGORY_COLUMNS)
    paragraph = describe(results)
    md = common.write_markdown(out, NAME, TITLE, paragraph, png, [csv_path, cat_path])
    return Artifact(NAME, TITLE, png, [csv_path, cat_path], md, paragraph, {"results": results})


def main(argv: list[str] | None = None) -> int:
    p = common.base_parser(NAME, __doc__, runs=False)
    p.add_argument("--results", nargs="+", required=True, metavar="FILE", help="results JSON files of `mbc-jax judge`")
    p.add_argument("--labels", nargs="+", default=None, metavar="LABEL", help="one bar label per results file")
    args = p.parse_args(argv)
    return common.run_cli(lambda: build(args.results, args.out, args.labels))


if __name__ == "__main__":
    sys.exit(main())
