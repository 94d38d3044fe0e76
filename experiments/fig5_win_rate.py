"""Figure 5: MBC vs baseline win / tie / loss rates from the pairwise LLM judge, next to the paper's.

    python -m experiments.fig5_win_rate --results judge/lr1e-5.json judge/lr5e-5.json \
        --labels "lr 1e-5" "lr 5e-5" [--lrs 1e-5 5e-5] --out figures/

Reads the results JSON files of `mbc-jax judge --out` (model A = MBC, model B = baseline, as
`experiments.reproduce` runs it). Each comparison is drawn as three kinds of bars, each labelled:
the paper's (hatched; Ge et al., Figure 5: GPT-4, one judgment per validation prompt), ours with one
judgment per pair in a seeded order (the paper's protocol, `--orders 1`), and, when the judge ran
with `--orders 2`, ours with both orders (a win only when both orders agree). The paper bar of a
comparison is found by its learning rate: `--lrs`, else an "lr 1e-5" / "lr 5e-5" in its label;
without one, the paper's two bars come first. Whiskers are the judge's bootstrap CIs. The paragraph
adds each side's mean answer length (words) and the length-controlled win rate.
`fig5_win_rate.csv` holds every bar; `fig5_win_rate_categories.csv` the per-category rates of each protocol.
"""

from __future__ import annotations

import math
import re
import sys
from pathlib import Path
from typing import Sequence

from experiments import common
from experiments.common import Artifact, pct
from mbc_jax.judge.comparison import IDENTICAL_JUDGED

NAME = "fig5_win_rate"
TITLE = "Figure 5: MBC vs baseline, pairwise judge"
# The paper's Figure 5 (Ge, Hazarika, Liu, Namazifar, "Supervised Fine-Tuning of LLMs on Human
# Demonstrations Through the Lens of Memorization"): learning rate -> (MBC win, MBC loss); ties are the rest.
PAPER = {1e-5: (0.410, 0.266), 5e-5: (0.483, 0.278)}
PAPER_CITE = "Ge et al., Fig. 5"
KIND_LABELS = {"single_order": "one order per pair (the paper's protocol)",
               "consistent": "both orders, win only if both agree"}
CATEGORY_COLUMNS = ("label", "protocol", "category", "n", "win", "tie", "loss", "win_rate", "tie_rate", "loss_rate",
                    "win_lo", "win_hi", "loss_lo", "loss_hi")
_LR_RE = re.compile(r"\blr\s*=?\s*(\d+(?:\.\d+)?e-?\d+)", re.IGNORECASE)


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
            raise common.UserError(f"{p}: not a judge results JSON of this version ({e})") from None
        label = labels[i] if labels else f"{res.get('name_a', 'A')} vs {res.get('name_b', 'B')} ({p.stem})"
        out[label] = res
    return out


def paper_block(lr: float) -> dict:
    win, loss = PAPER[lr]
    return {"win_rate": win, "tie_rate": round(1 - win - loss, 3), "loss_rate": loss, "reference": True}


def match_lrs(labels: Sequence[str], lrs: Sequence[float] | None) -> list[float | None]:
    """The paper learning rate of each comparison: from `lrs`, else from an 'lr X' in its label."""
    if lrs is not None and len(lrs) != len(labels):
        raise common.UserError(f"--lrs: {len(lrs)} learning rates for {len(labels)} results files; give one per file")
    found = []
    for i, label in enumerate(labels):
        m = _LR_RE.search(label)
        lr = lrs[i] if lrs is not None else (float(m.group(1)) if m else None)
        found.append(next((p for p in PAPER if lr is not None and math.isclose(p, lr, rel_tol=1e-6)), None))
    return found


def bars(results: dict[str, dict], lrs: Sequence[float | None]) -> tuple[dict[str, dict], dict[str, dict]]:
    """(row label -> block, row label -> extra CSV columns): paper bars and ours, each protocol labelled."""
    rows: dict[str, dict] = {}
    extra: dict[str, dict] = {}

    def add_paper(lr: float) -> None:
        label = f"paper, lr {common.fmt_lr(lr)}: GPT-4, one judgment per prompt ({PAPER_CITE})"
        if label not in rows:
            rows[label] = paper_block(lr)
            extra[label] = {"source": "paper", "comparison": f"lr {common.fmt_lr(lr)}",
                            "protocol": "paper: one judgment per prompt"}

    if all(lr is None for lr in lrs):
        for lr in PAPER:
            add_paper(lr)
    for (label, res), lr in zip(results.items(), lrs):
        if lr is not None:
            add_paper(lr)
        for kind, kind_label in KIND_LABELS.items():
            if not res.get(kind):
                continue
            row = f"{label}: {kind_label}"
            lc = res["length_controlled"].get(kind) or {}
            lengths = res["lengths"]["overall"]
            rows[row] = res[kind]["overall"]
            extra[row] = {"source": "ours", "comparison": label, "protocol": kind,
                          "seed": res["protocol"]["seed"], "judge": res.get("judge", {}).get("model"),
                          "lc_win_rate": lc.get("lc_win_rate"), "lc_lo": (lc.get("lc_ci") or [None])[0],
                          "lc_hi": (lc.get("lc_ci") or [None, None])[1], "raw_preference": lc.get("raw_preference"),
                          "mean_words_a": lengths["mean_words_a"], "mean_words_b": lengths["mean_words_b"]}
    return rows, extra


def _rates(block: dict, a: str, b: str) -> str:
    lo, hi = block.get("win_ci") or (None, None)
    return (f"{a} wins {pct(block['win_rate'])} (95% CI {pct(lo)}-{pct(hi)}), ties {pct(block['tie_rate'])} and "
            f"loses {pct(block['loss_rate'])} against {b}")


def identical_sentence(res: dict) -> str:
    """The caption's count of identical answer pairs ("identical: N"), and whether they were judged."""
    n = res.get("n_identical")
    if n is None:
        return "The results file does not count identical answers (written before that count existed)."
    if res.get("identical") == IDENTICAL_JUDGED:
        return f"Identical: {n} prompts got the same answer from both models; they were judged like the others."
    return (f"Identical: {n} prompts got the same answer from both models; each is a tie without a judge call "
            "(included in the ties above).")


def describe(results: dict[str, dict], lrs: Sequence[float | None]) -> str:
    parts = []
    for (label, res), lr in zip(results.items(), lrs):
        a, b = res.get("name_a", "A"), res.get("name_b", "B")
        if lr is not None:
            win, loss = PAPER[lr]
            parts.append(f"{label}: the paper reports MBC winning {pct(win)} and losing {pct(loss)} (ties "
                         f"{pct(1 - win - loss)}), GPT-4 judging each prompt once ({PAPER_CITE}).")
        single = res["single_order"]["overall"]
        if not single.get("n"):
            parts.append(f"{label}: no valid judgments.")
            continue
        judge = res.get("judge", {}).get("model", "unknown")
        parts.append(f"Here ({label}), judged once per prompt in an order drawn per prompt from seed "
                     f"{res['protocol']['seed']} (the paper's protocol; judge {judge}, "
                     f"{single['n']} prompts), {_rates(single, a, b)}.")
        parts.append(identical_sentence(res))
        cons = (res.get("consistent") or {}).get("overall")
        if cons and cons.get("n"):
            agreed = (f"; the judge agreed with itself across orders on {pct(cons['consistency'])} of the prompts it "
                      "judged" if cons.get("consistency") is not None else "")
            parts.append(f"Judged in both orders, counting a win only when both orders agree, {_rates(cons, a, b)}"
                         f"{agreed}.")
        lengths = res["lengths"]["overall"]
        if lengths.get("n"):
            parts.append(f"{a}'s answers average {lengths['mean_words_a']:.1f} words against "
                         f"{lengths['mean_words_b']:.1f} for {b}.")
        lcs = []
        for kind, name in (("single_order", "one order"), ("consistent", "both orders")):
            lc = res["length_controlled"].get(kind) or {}
            if lc.get("lc_win_rate") is not None:
                lo, hi = lc["lc_ci"]
                lcs.append(f"{pct(lc['lc_win_rate'])} (95% CI {pct(lo)}-{pct(hi)}) against a raw "
                           f"{pct(lc['raw_preference'])} with {name}")
        if lcs:
            parts.append(f"Controlling for length (a logistic model of the verdict on the length difference, "
                         f"read at equal lengths; a tie counts as half a win, in the raw rate too), {a}'s win rate is "
                         + "; ".join(lcs) + ".")
        if single.get("n_invalid"):
            parts.append(f"{single['n_invalid']} prompts got no valid verdict.")
        headline = res[res["protocol"]["headline"]]
        cats = {c: blk for c, blk in headline.get("per_category", {}).items() if blk.get("n")}
        if len(cats) > 1:
            best = max(cats, key=lambda c: cats[c]["win_rate"] - cats[c]["loss_rate"])
            worst = min(cats, key=lambda c: cats[c]["win_rate"] - cats[c]["loss_rate"])
            which = "one order" if res["protocol"]["headline"] == "single_order" else "both orders"
            parts.append(f"By category ({which}), {a} does best on {best} (win {pct(cats[best]['win_rate'])}, loss "
                         f"{pct(cats[best]['loss_rate'])}) and worst on {worst} (win {pct(cats[worst]['win_rate'])}, "
                         f"loss {pct(cats[worst]['loss_rate'])}).")
    return " ".join(parts)


def build(results_paths: Sequence[str | Path], out: str | Path, labels: Sequence[str] | None = None,
          lrs: Sequence[float] | None = None) -> Artifact:
    from mbc_jax.judge.winrate import plot_win_rates

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    results = load(results_paths, labels)
    matched = match_lrs(list(results), lrs)
    rows, extra = bars(results, matched)
    png = plot_win_rates(rows, out / f"{NAME}.png", extra=extra, name_a="MBC", name_b="baseline",
                         title="MBC vs baseline: the paper's rates (hatched) and ours, per protocol")
    csv_path = png.with_suffix(".csv")  # written by plot_win_rates next to the PNG
    cat_rows = []
    for label, res in results.items():
        for kind in KIND_LABELS:
            for cat, blk in ((res.get(kind) or {}).get("per_category") or {}).items():
                win, loss = blk.get("win_ci") or [None, None], blk.get("loss_ci") or [None, None]
                cat_rows.append({"label": label, "protocol": kind, "category": cat,
                                 **{k: blk.get(k) for k in CATEGORY_COLUMNS[3:10]},
                                 "win_lo": win[0], "win_hi": win[1], "loss_lo": loss[0], "loss_hi": loss[1]})
    cat_path = common.write_csv(out / f"{NAME}_categories.csv", cat_rows, CATEGORY_COLUMNS)
    paragraph = describe(results, matched)
    md = common.write_markdown(out, NAME, TITLE, paragraph, png, [csv_path, cat_path])
    return Artifact(NAME, TITLE, png, [csv_path, cat_path], md, paragraph, {"results": results})


def main(argv: list[str] | None = None) -> int:
    p = common.base_parser(NAME, __doc__, runs=False)
    p.add_argument("--results", nargs="+", required=True, metavar="FILE", help="results JSON files of `mbc-jax judge`")
    p.add_argument("--labels", nargs="+", default=None, metavar="LABEL", help="one bar label per results file")
    p.add_argument("--lrs", nargs="+", type=float, default=None, metavar="LR",
                   help="the learning rate of each results file, to place the paper's bar beside it "
                        "(default: read 'lr X' from the labels)")
    args = p.parse_args(argv)
    return common.run_cli(lambda: build(args.results, args.out, args.labels, args.lrs))


if __name__ == "__main__":
    sys.exit(main())
