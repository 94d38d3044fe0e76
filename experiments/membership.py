"""Membership inference along training: can a signal tell a training record from a held-out one?

    python -m experiments.membership --runs runs/demo/mbc runs/demo/uniform --out figures/

For every run and memorization snapshot, members are the training records (split `train`) and
non-members the validation records (split `val`). Each signal is a per-record score oriented so
that higher reads as "member", over the positions the run's loss trained (`loss_on`):

- `loss`: minus the mean NLL (log of the snapshot's `perplexity` / `response_perplexity`);
- `zlib`: minus the zlib ratio, mean NLL / zlib-compressed bytes of the record's text (Carlini et al. 2021);
- `min_k`: Min-K% Prob, the mean of the lowest 20% target log-probs (Shi et al. 2024);
- `min_k_pp`: Min-K%++, the same over per-token z-scores of log p under the model (Zhang et al. 2024);
- `reference`: minus (mean NLL - the same record's mean NLL at step 0), the step-0 model as the reference
  model (Carlini et al. 2021's calibration; no second model pass: both come from the snapshots).

For each (run, step, signal): the AUC (the probability that a random member outscores a random
non-member, ties counting one half) with a percentile-bootstrap CI (members and non-members
resampled separately), and the TPR at 1% and 10% FPR. Writes `membership.csv` (every step),
`membership_categories.csv` (per category at the last snapshot), `membership.png` (AUC over steps:
one colour per signal, one line style per run) and `membership.md`.

MIMIR (Duan et al. 2024) found most membership attacks on pretrained LMs near chance, and that many
reported successes came from a shift in distribution between members and non-members rather than from
memorization. The AUCs here mean something only because the non-members come from the same
distribution: the validation split is a random hold-out of the same data (`val_fraction`), or the
demo's held-out suite drawn by the same generator. The step-0 AUC, before any training, checks it:
it should be near 0.5 (the `reference` signal is exactly 0 for every record there, so its AUC is 0.5
by construction and is not evidence).
"""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Sequence

import numpy as np

from experiments import claim_statistics, common
from experiments.common import Artifact, fmt
from mbc_jax.run_folder import RunFolder

NAME = "membership"
TITLE = "Membership inference over training: AUC of each signal, training vs validation records"
SIGNALS = ("loss", "zlib", "min_k", "min_k_pp", "reference")
FPRS = (0.01, 0.1)
COLUMNS = ("run", "sampler", "learning_rate", "loss_on", "step", "epoch", "signal", "members", "non_members",
           "auc", "auc_lo", "auc_hi", "tpr_at_1pct_fpr", "tpr_at_10pct_fpr")
CATEGORY_COLUMNS = ("run", "sampler", "step", "category", "signal", "members", "non_members", "auc", "auc_lo",
                    "auc_hi")


# ----------------------------------------------------------------------------- statistics


def auc(members: np.ndarray, non_members: np.ndarray) -> float:
    """P(member score > non-member score) + P(tie) / 2 (the Mann-Whitney U over n1 * n0); nan if a side is empty."""
    m, n = np.asarray(members, np.float64), np.asarray(non_members, np.float64)
    if not len(m) or not len(n):
        return math.nan
    return float(claim_statistics.auc(m, n))  # the claims check's AUC, one definition


def auc_ci(members: np.ndarray, non_members: np.ndarray, *, n_boot: int = 1000, seed: int = 0,
           confidence: float = 0.95) -> tuple[float, float, float]:
    """(AUC, lo, hi): the percentile-bootstrap interval, members and non-members each resampled with replacement."""
    m, n = np.asarray(members, np.float64), np.asarray(non_members, np.float64)
    point = auc(m, n)
    if math.isnan(point) or n_boot <= 0:
        return point, math.nan, math.nan
    rng = np.random.default_rng(seed)
    both = np.concatenate([m[rng.integers(0, len(m), (n_boot, len(m)))],
                           n[rng.integers(0, len(n), (n_boot, len(n)))]], axis=1)
    ranks = common.rankdata(both)
    boot = (ranks[:, :len(m)].sum(1) - len(m) * (len(m) + 1) / 2) / (len(m) * len(n))
    alpha = (1 - confidence) / 2
    lo, hi = np.quantile(boot, [alpha, 1 - alpha])
    return point, float(lo), float(hi)


def tpr_at_fpr(members: np.ndarray, non_members: np.ndarray, fpr: float) -> float:
    """The largest share of members flagged by a threshold rule "score >= t" that flags at most `fpr` of the
    non-members (t over the observed scores, and +inf: flags none); nan if a side is empty."""
    m, n = np.asarray(members, np.float64), np.asarray(non_members, np.float64)
    if not len(m) or not len(n):
        return math.nan
    thresholds = np.concatenate([np.unique(np.concatenate([m, n])), [np.inf]])
    false_pos = 1 - np.searchsorted(np.sort(n), thresholds, "left") / len(n)  # share of non-members >= t
    true_pos = 1 - np.searchsorted(np.sort(m), thresholds, "left") / len(m)
    return float(true_pos[false_pos <= fpr + 1e-12].max())


# ----------------------------------------------------------------------------- signals from snapshots


def _nll(table: dict[str, np.ndarray], response: bool) -> np.ndarray:
    return np.log(np.asarray(table["response_perplexity" if response else "perplexity"], np.float64))


def reference_calibrated(table: dict[str, np.ndarray], step0: dict[str, np.ndarray], response: bool) -> np.ndarray:
    """Per row of `table`: its mean NLL minus the same record's (split and index) mean NLL in the step-0 snapshot
    `step0`; nan where either is missing. No second model pass: the step-0 model is the reference."""
    at0 = {(s, int(i)): v for s, i, v in zip(step0["split"], step0["index"], _nll(step0, response))}
    ref = np.array([at0.get((s, int(i)), math.nan) for s, i in zip(table["split"], table["index"])])
    return _nll(table, response) - ref


def signals(table: dict[str, np.ndarray], step0: dict[str, np.ndarray] | None, response: bool
            ) -> dict[str, np.ndarray]:
    """{signal: per-row score, higher = "member"}; a signal whose columns the snapshot lacks (written before
    issue 32) is all nan."""
    prefix = "response_" if response else ""
    nan = np.full(len(table["index"]), math.nan)

    def col(name: str) -> np.ndarray:
        return np.asarray(table[name], np.float64) if name in table else nan

    return {"loss": -_nll(table, response), "zlib": -col(f"{prefix}zlib_ratio"), "min_k": col(f"{prefix}min_k"),
            "min_k_pp": col(f"{prefix}min_k_pp"),
            "reference": nan if step0 is None else -reference_calibrated(table, step0, response)}


def _split(scores: np.ndarray, split: np.ndarray, keep: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    ok = np.isfinite(scores) & (np.ones(len(scores), bool) if keep is None else keep)
    return scores[ok & (split == "train")], scores[ok & (split == "val")]


def curve(run: RunFolder, n_boot: int = 1000) -> list[dict]:
    """One row per (snapshot, signal) with both members and non-members."""
    loss_on = common.trained_positions(run)
    response = loss_on == "response"
    steps = run.memorization_steps()
    step0 = run.memorization(0) if 0 in steps else None
    rows = []
    for step in steps:
        table = run.memorization(step)
        split = np.asarray(table["split"])
        for name, scores in signals(table, step0, response).items():
            m, n = _split(scores, split)
            if not len(m) or not len(n):
                continue
            a, lo, hi = auc_ci(m, n, n_boot=n_boot, seed=step)
            rows.append({"run": run.label, "sampler": run.sampler, "learning_rate": run.learning_rate,
                         "loss_on": loss_on, "step": step, "epoch": step / run.epoch_steps, "signal": name,
                         "members": len(m), "non_members": len(n), "auc": a, "auc_lo": lo, "auc_hi": hi,
                         "tpr_at_1pct_fpr": tpr_at_fpr(m, n, FPRS[0]), "tpr_at_10pct_fpr": tpr_at_fpr(m, n, FPRS[1])})
    return rows


def category_rows(run: RunFolder, n_boot: int = 1000) -> list[dict]:
    """Per category (members and non-members of that category) at the last snapshot: each signal's AUC."""
    steps = run.memorization_steps()
    if not steps:
        return []
    step0 = run.memorization(0) if 0 in steps else None
    table = run.memorization(steps[-1])
    split, cats = np.asarray(table["split"]), np.asarray(table["category"]).astype(str)
    rows = []
    for cat in sorted(set(cats)):
        for name, scores in signals(table, step0, common.trained_positions(run) == "response").items():
            m, n = _split(scores, split, cats == cat)
            if not len(m) or not len(n):
                continue
            a, lo, hi = auc_ci(m, n, n_boot=n_boot)
            rows.append({"run": run.label, "sampler": run.sampler, "step": steps[-1], "category": cat, "signal": name,
                         "members": len(m), "non_members": len(n), "auc": a, "auc_lo": lo, "auc_hi": hi})
    return rows


# ----------------------------------------------------------------------------- outputs


def plot(rows: list[dict], path: Path) -> Path:
    fig, (ax,) = common.figure(size=(8.0, 4.8))
    runs = list(dict.fromkeys(r["run"] for r in rows))
    styles = ("-", "--", ":", "-.")
    for signal, color in zip(SIGNALS, common.colors(len(SIGNALS))):
        for run, style in zip(runs, styles * len(runs)):
            pts = [r for r in rows if r["run"] == run and r["signal"] == signal]
            if not pts:
                continue
            steps = [r["step"] for r in pts]
            ax.plot(steps, [r["auc"] for r in pts], style, marker="o", ms=3, color=color, label=f"{signal} ({run})")
            ax.fill_between(steps, [r["auc_lo"] for r in pts], [r["auc_hi"] for r in pts], color=color, alpha=0.08)
    ax.axhline(0.5, color="grey", lw=0.8)
    ax.set_xlabel("training step")
    ax.set_ylabel("membership AUC (train vs validation records)")
    ax.set_title("0.5 = chance; shaded: 95% bootstrap CI; line style: run", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6, ncol=2)
    return common.save_figure(fig, path)


def _holdout(run: RunFolder) -> str:
    if run.config.get("val_data"):
        return (f"a separate validation file (val_data: {run.config['val_data']}), the same distribution only if "
                "it was drawn the way the training file was")
    if run.config.get("data") == "demo":
        return "the demo's held-out suite, drawn by the same generator as the training records"
    return f"a random hold-out of the same data (val_fraction {run.config.get('val_fraction')})"


def describe(rows: list[dict], runs: Sequence[RunFolder]) -> str:
    parts = []
    for run in runs:
        mine = [r for r in rows if r["run"] == run.label]
        if not mine:
            continue
        first, last = min(r["step"] for r in mine), max(r["step"] for r in mine)

        def at(step, signal, mine=mine):
            return next((r for r in mine if r["step"] == step and r["signal"] == signal), None)

        s = f"{run.label}: non-members are {_holdout(run)}."
        r0 = at(first, "loss")
        if r0 is not None and first == 0:
            inside = r0["auc_lo"] <= 0.5 <= r0["auc_hi"]
            s += (f" At step 0 the loss AUC is {fmt(r0['auc'])} [{fmt(r0['auc_lo'])}, {fmt(r0['auc_hi'])}], "
                  + ("a CI that includes 0.5, as it should before training." if inside else
                     "a CI that excludes 0.5: the two splits differ before training, so later AUCs mix "
                     "memorization with that difference."))
        last_bits = [f"{r['signal']} {fmt(r['auc'])} [{fmt(r['auc_lo'])}, {fmt(r['auc_hi'])}], "
                     f"TPR@1%FPR {fmt(r['tpr_at_1pct_fpr'])}" for sig in SIGNALS if (r := at(last, sig))]
        s += f" At the last snapshot (step {last}): " + "; ".join(last_bits) + "."
        parts.append(s)
    return " ".join(parts)


def category_markdown(rows: list[dict]) -> str:
    if not rows:
        return ""
    body = [[r["run"], r["category"], r["signal"], r["members"], r["non_members"], fmt(r["auc"]),
             f"[{fmt(r['auc_lo'])}, {fmt(r['auc_hi'])}]"] for r in rows]
    return ("Per category, at each run's last snapshot:\n\n"
            + common.markdown_table(body, ["run", "category", "signal", "members", "non-members", "AUC", "95% CI"]))


CAVEAT = ("Members are the training records, non-members the validation records; each signal is oriented so that "
          "a higher score means 'member' (minus the loss, minus the zlib ratio, Min-K%, Min-K%++, minus the loss "
          "change since step 0). MIMIR (Duan et al. 2024) showed that membership AUCs above chance can come from a "
          "distribution shift between members and non-members rather than from memorization, so these AUCs are "
          "read only where both come from the same distribution; the step-0 AUC, before any training, is that "
          "check and should be near 0.5 (the step-0 reference signal is 0 for every record, 0.5 by construction). ")


def build(runs: Sequence[RunFolder], out: str | Path, n_boot: int = 1000) -> Artifact:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows = [r for run in runs for r in curve(run, n_boot)]
    if not rows:
        raise common.UserError("no run has both training and validation records in its memorization snapshots; "
                               "set val_data or val_fraction when training")
    cats = [r for run in runs for r in category_rows(run, n_boot)]
    csv_path = common.write_csv(out / f"{NAME}.csv", rows, COLUMNS)
    cat_path = common.write_csv(out / f"{NAME}_categories.csv", cats, CATEGORY_COLUMNS)
    png = plot(rows, out / f"{NAME}.png")
    paragraph = CAVEAT + describe(rows, runs)
    md = common.write_markdown(out, NAME, TITLE, paragraph, png, [csv_path, cat_path], category_markdown(cats))
    return Artifact(NAME, TITLE, png, [csv_path, cat_path], md, paragraph, {"rows": rows, "categories": cats})


def main(argv: list[str] | None = None) -> int:
    p = common.base_parser(NAME, __doc__)
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for the AUC CIs (default 1000)")
    args = p.parse_args(argv)
    return common.run_cli(lambda: build(common.open_runs(args.runs, args.labels), args.out, args.bootstrap))


if __name__ == "__main__":
    sys.exit(main())
