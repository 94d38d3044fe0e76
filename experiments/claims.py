"""The claims check: each finding of Ge et al. (and Zeng et al.'s two), the statistic that tests it, its
measured value with a bootstrap CI, and holds / does not hold by a rule written here, computed from the
run folders and the figure files `experiments.reproduce` writes. No verdict is written by hand.

    rows = evaluate(baselines, figs, judge_results, judge_note)   # list[Claim], one per finding
    markdown(rows)                                                # REPORT.md's first section

Conventions, the same in every row:
- the SFT findings are tested on the baseline runs (uniform sampler), one value per learning rate, as
  the paper's Figures 1, 2 and 7 are; a finding holds when its rule holds at every learning rate;
- a CI is the 95% percentile bootstrap (1000 resamples, seed 0) over the records (validation prompts,
  judged pairs) the statistic averages, resampled with replacement; a statistic over two groups
  resamples each group separately; paired statistics (two checkpoints, two readings) resample the
  record once for both;
- a rule compares the CI (not the point value) to a bound, so "holds" means "beyond resampling noise";
- a finding whose input is missing (a figure step failed, no judge, data without the demo world's
  ground truth) is "not measured" with the reason.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from experiments import common
from experiments.claim_statistics import (
    N_BOOT,
    SEED,
    auc_ci,
    gain_shares_ci,
    mean_diff_ci,
    net_win_ci,
    paired_diff_ci,
    perplexity_ratio_ci,
    response_gap_ci,
)
from experiments.common import fmt
from mbc_jax import UserError
from mbc_jax.answers_file import answer_rows
from mbc_jax.run_folder import RunFolder, read_csv

HOLDS, FAILS, UNMEASURED = "holds", "does not hold", "not measured"
FACT_QA, HARD_TASK = "open_qa", "summarization"  # the demo's and Dolly's category names of the paper's pair
QUALITY_MARGIN = 0.05  # generation quality "holds": mean grade change's CI lower bound above -0.05
MIN_RECORDS = 5  # per category, for Zeng's claim 1
WORLD_SEED = 0  # the demo world of `data: demo` (mbc_jax.train materializes seed 0)


class Missing(Exception):
    """An input a finding needs is not there; the message says which and why."""


@dataclasses.dataclass
class Claim:
    """One row of the table."""

    finding: str
    statistic: str  # one-line definition
    rule: str
    values: list[str]  # one per run (or comparison), with the CI
    verdict: str
    why: str = ""  # for "not measured"


def _ids(values: np.ndarray) -> list[str]:
    return [str(int(v)) if isinstance(v, float) and v == int(v) else str(v) for v in values]


def _ci_text(label: str, v: tuple[float, float, float], digits: int = 3) -> str:
    return f"{label}: {fmt(v[0], digits)} [{fmt(v[1], digits)}, {fmt(v[2], digits)}]"


def _figure(figs: Path, name: str) -> dict[str, np.ndarray]:
    path = figs / name
    if not path.is_file():
        raise Missing(f"{path} is missing (its figure step failed or did not run)")
    return read_csv(path)


def _rows_of(table: dict[str, np.ndarray], run: RunFolder, path: str) -> np.ndarray:
    mask = table["run"].astype(str) == run.label
    if not mask.any():
        raise Missing(f"{path} has no rows of {run.label}")
    return mask


# ----------------------------------------------------------------------------- the findings


def memorization_plateaus(runs: Sequence[RunFolder], figs: Path) -> tuple[list[str], bool]:
    values, ok = [], True
    for run in runs:
        steps, _, em = run.record_matrix("exact_match", "train")
        _, _, tok = run.record_matrix("tokens", "train")
        if len(steps) < 4 or steps[0] != 0:
            raise Missing(f"{run.path}: {len(steps)} memorization snapshots; the rise's shape needs step 0 and 3 more")
        early, late = gain_shares_ci(em, tok[0], steps)
        values.append(f"{run.lr_label}: early {fmt(early[0], 2)} [{fmt(early[1], 2)}, {fmt(early[2], 2)}], late "
                      f"{fmt(late[0], 2)} [{fmt(late[1], 2)}, {fmt(late[2], 2)}]")
        ok &= early[1] > 0.5 and late[2] < 1 / 3
    return values, ok


def response_above_full(runs: Sequence[RunFolder], figs: Path) -> tuple[list[str], bool]:
    values, ok = [], True
    for run in runs:
        steps, _, em = run.record_matrix("exact_match", "train")
        _, _, rem = run.record_matrix("response_exact_match", "train")
        _, _, tok = run.record_matrix("tokens", "train")
        _, _, rtok = run.record_matrix("response_tokens", "train")
        v = response_gap_ci(em[-1], tok[-1], rem[-1], rtok[-1])
        values.append(_ci_text(f"{run.lr_label} (step {steps[-1]})", v))
        ok &= v[1] > 0
    return values, ok


def qa_easy_summarization_hard(runs: Sequence[RunFolder], figs: Path) -> tuple[list[str], bool]:
    table = _figure(figs, "fig2_data_map.csv")
    values, ok = [], True
    for run in runs:
        mine = _rows_of(table, run, "fig2_data_map.csv")
        cats, mean = table["category"].astype(str)[mine], table["mean"][mine].astype(float)
        a, b = mean[(cats == FACT_QA) & np.isfinite(mean)], mean[(cats == HARD_TASK) & np.isfinite(mean)]
        if not (len(a) and len(b)):
            raise Missing(f"fig2_data_map.csv: {run.label} has {len(a)} {FACT_QA} and {len(b)} {HARD_TASK} records")
        v = mean_diff_ci(a, b)
        values.append(_ci_text(f"{run.lr_label} ({len(a)} vs {len(b)} records)", v))
        ok &= v[1] > 0
    return values, ok


def _generations(figs: Path, run: RunFolder) -> dict[str, tuple[int, list[dict]]]:
    table = _figure(figs, "table1_entropy.csv")
    mine = _rows_of(table, run, "table1_entropy.csv")
    out = {}
    for which, step in zip(table["checkpoint"][mine].astype(str), table["step"][mine].astype(int)):
        path = figs / "table1_entropy_generations" / f"{run.slug}_step{step}.jsonl"
        if not path.is_file():
            raise Missing(f"{path} is missing (Table 1's generations)")
        out[which] = (int(step), answer_rows(path))
    if set(out) != set(common.FIRST_LAST):
        raise Missing(f"table1_entropy.csv: {run.label} lacks a first or a last checkpoint")
    return out


def perplexity_rises_quality_holds(runs: Sequence[RunFolder], figs: Path) -> tuple[list[str], bool]:
    values, ok, reasons = [], True, []
    for run in runs:  # the positions the loss trained, as Figure 3's headline curve
        column = {"full": "perplexity", "response": "response_perplexity"}[common.trained_positions(run)]
        steps, _, ppl = run.record_matrix(column, "val")
        _, _, tok = run.record_matrix("response_tokens" if column.startswith("response") else "tokens", "val")
        if len(steps) < 2:
            raise Missing(f"{run.path}: fewer than 2 validation snapshots")
        keep = np.all(np.isfinite(ppl), 0) & (tok[0] > 0)
        ratio, best = perplexity_ratio_ci(ppl[:, keep], tok[0, keep].astype(float))
        text = (f"{run.lr_label}: perplexity last / lowest (step {steps[-1]} / {steps[best]}) "
                f"{fmt(ratio[0], 2)} [{fmt(ratio[1], 2)}, {fmt(ratio[2], 2)}]")
        ok &= ratio[1] > 1
        if run.config.get("data") != "demo":
            reasons.append(f"{run.label}: generation quality is graded by the demo world's grader, and this run's "
                           f"data is {run.config.get('data')!r}")
            values.append(text)
            continue
        from mbc_jax.demo.grader import WorldGrader

        grader = WorldGrader(WORLD_SEED)
        gens = _generations(figs, run)
        grades = {}
        for which, (_, rows) in gens.items():
            for r in rows:
                g = grader.grade(r["instruction"], r.get("output_text") or "")
                grades.setdefault(str(r["id"]), {})[which] = math.nan if g is None else g.score
        pairs = np.array([[g["first"], g["last"]] for g in grades.values() if len(g) == 2], float)
        pairs = pairs[np.all(np.isfinite(pairs), 1)]
        if not len(pairs):
            raise Missing(f"{run.label}: no Table 1 generation the world grader can grade")
        change = paired_diff_ci(pairs[:, 1], pairs[:, 0])
        values.append(text + f"; grade last - first (step {gens['last'][0]} - {gens['first'][0]}, {len(pairs)} "
                             f"prompts) {fmt(change[0])} [{fmt(change[1])}, {fmt(change[2])}]")
        ok &= change[1] > -QUALITY_MARGIN
    if reasons:
        raise Missing("; ".join(reasons) + " (" + "; ".join(values) + ")")
    return values, ok


def entropy_falls(runs: Sequence[RunFolder], figs: Path) -> tuple[list[str], bool]:
    values, ok = [], True
    for run in runs:
        gens = _generations(figs, run)
        (s0, first), (s1, last) = gens["first"], gens["last"]
        nucleus = {r["index"]: [r["entropy"]] for r in first}
        for r in last:
            nucleus.get(r["index"], []).append(r["entropy"])
        n = np.array([v for v in nucleus.values() if len(v) == 2], float)
        n = n[np.all(np.isfinite(n), 1)]
        tf = []
        for step in (s0, s1):
            t = run.memorization(step, "val")
            tf.append(dict(zip(t["index"].astype(int), t["response_entropy"].astype(float))))
        tf = np.array([[tf[0][i], tf[1][i]] for i in nucleus if i in tf[0] and i in tf[1]], float)
        tf = tf[np.all(np.isfinite(tf), 1)]
        if not (len(n) and len(tf)):
            raise Missing(f"{run.label}: no record with both checkpoints' entropies")
        dn, dt = paired_diff_ci(n[:, 0], n[:, 1]), paired_diff_ci(tf[:, 0], tf[:, 1])
        values.append(f"{run.lr_label}, first - last (step {s0} - {s1}): nucleus {fmt(dn[0])} [{fmt(dn[1])}, "
                      f"{fmt(dn[2])}], teacher forcing {fmt(dt[0])} [{fmt(dt[1])}, {fmt(dt[2])}]")
        ok &= dn[1] > 0 and dt[1] > 0
    return values, ok


def zeng_by_task(runs: Sequence[RunFolder], figs: Path) -> tuple[list[str], bool]:
    table = _figure(figs, "zeng_records.csv")
    values, ok = [], True
    for run in runs:
        mine = _rows_of(table, run, "zeng_records.csv")
        step = table["step"][mine].astype(int)
        last = step.max()
        rouge = {(int(s), int(i)): float(v) for s, i, v in zip(step, table["index"][mine], table["rouge_l"][mine])}
        cats = dict(zip(table["index"][mine].astype(int), table["category"][mine].astype(str)))
        change: dict[str, list[float]] = {}
        for i, c in cats.items():
            if (0, i) in rouge and (last, i) in rouge and last > 0:
                change.setdefault(c, []).append(rouge[(last, i)] - rouge[(0, i)])
        if len(change) < 2:
            raise Missing(f"zeng_records.csv: {run.label} has fewer than 2 categories with step 0 and a later step")
        means = {c: float(np.mean(v)) for c, v in change.items()}
        top, bottom = max(means, key=means.get), min(means, key=means.get)
        a, b = np.array(change[top]), np.array(change[bottom])
        v = mean_diff_ci(a, b)
        values.append(_ci_text(f"{run.lr_label}, step {last}: {top} ({len(a)}) - {bottom} ({len(b)})", v))
        ok &= min(len(a), len(b)) >= MIN_RECORDS and v[1] > 0
    return values, ok


def zeng_attention(runs: Sequence[RunFolder], figs: Path) -> tuple[list[str], bool]:
    table = _figure(figs, "zeng_records.csv")
    if "normalized_entropy" not in table:
        raise Missing("zeng_records.csv has no attention columns (the analysis ran without attention)")
    values, ok = [], True
    for run in runs:
        mine = _rows_of(table, run, "zeng_records.csv")
        last = mine & (table["step"] == table["step"][mine].max())
        c = common.correlation(table["normalized_entropy"][last], table["rouge_l"][last], n_boot=N_BOOT, seed=SEED)
        values.append(_ci_text(f"{run.lr_label} (n = {c['n']})", (c["spearman"], c["spearman_lo"], c["spearman_hi"]),
                               2))
        ok &= c["spearman_lo"] > 0
    return values, ok


def familiarity_auc(runs: Sequence[RunFolder], figs: Path) -> tuple[list[str], bool]:
    from mbc_jax.demo.familiarity import labels_of

    table = _figure(figs, "fig2_data_map.csv")
    values, ok = [], True
    for run in runs:
        labels = labels_of(run.path / "data")
        if run.config.get("data") != "demo" or not labels:
            raise Missing(f"{run.label}: the records carry no familiarity label (the demo world's data only)")
        mine = _rows_of(table, run, "fig2_data_map.csv")
        fam = np.array([labels.get(i, "") for i in _ids(table["id"][mine])])
        mean = table["mean"][mine].astype(float)
        pos, neg = mean[fam == "corpus_fact"], mean[(fam != "corpus_fact") & (fam != "")]
        unseen = mean[fam == "unseen_fact"]
        if not (len(pos) and len(neg)):
            raise Missing(f"{run.label}: {len(pos)} corpus_fact and {len(neg)} other records")
        v = auc_ci(pos, neg)
        text = _ci_text(f"{run.lr_label} ({len(pos)} vs {len(neg)})", v)
        if len(unseen):
            w = auc_ci(pos, unseen)
            text += f"; against unseen_fact alone {fmt(w[0])} [{fmt(w[1])}, {fmt(w[2])}]"
        values.append(text)
        ok &= v[1] > 0.5
    return values, ok


# (finding, statistic, rule, function); the judge's row is built apart (its input is not a run folder)
FINDINGS = (
    ("Memorization rises fast, then plateaus (Fig. 1)",
     "share of the gain in pooled exact memorization (Eq. 1, training records, step 0 -> last) reached by the first "
     "checkpoint at >= 1/3 of training (early), and added after the last one at <= 2/3 (late)",
     "early CI > 0.5 and late CI < 1/3 (a straight line gives 1/3 each)", memorization_plateaus),
    ("Response-only memorization is above full-dialogue (Fig. 1)",
     "pooled exact memorization of the response targets minus that of all targets, training records, last checkpoint",
     "CI > 0", response_above_full),
    (f"Factual QA is easy to memorize, summarization hard (Fig. 2 / 7; categories {FACT_QA} vs {HARD_TASK})",
     f"mean data-map memorization (mean exact memorization over the checkpoints after step 0, Fig. 2) of the "
     f"{FACT_QA} records minus that of the {HARD_TASK} records", "CI > 0", qa_easy_summarization_hard),
    ("Validation perplexity rises while generation quality holds (Fig. 3)",
     "pooled validation perplexity (trained positions) at the last checkpoint / at its lowest checkpoint; and the "
     "world grader's mean grade (0-1) of the Table 1 nucleus answers, last minus first checkpoint, same prompts",
     f"ratio CI > 1 and grade change CI > -{QUALITY_MARGIN}", perplexity_rises_quality_holds),
    ("Entropy falls under nucleus sampling and teacher forcing (Table 1)",
     "per-prompt mean entropy, first minus last checkpoint, on the Table 1 validation prompts: of the full softmax "
     "along the nucleus-sampled answer, and of the response under teacher forcing", "both CIs > 0", entropy_falls),
    ("Zeng et al. 1: memorization differs by task",
     "ROUGE-L of the greedy continuation (extraction, Zeng), change from step 0 to the last checkpoint, mean of the "
     "category with the largest change minus that of the smallest (chosen on the data)",
     f"CI > 0 and >= {MIN_RECORDS} records in each", zeng_by_task),
    ("Zeng et al. 2: memorization goes with attention (more memorized, more uniform attention)",
     "Spearman, across training records at the last checkpoint, of the normalized entropy of the response "
     "positions' attention over the prompt against the continuation's ROUGE-L", "CI > 0", zeng_attention),
    ("Familiarity: easy to memorize = already known (issue 17)",
     "AUC of the data-map mean memorization separating corpus_fact records (answer stated in the base's corpus) "
     "from all others (unseen_fact, context_given, open_ended)", "CI > 0.5", familiarity_auc),
)
JUDGE_FINDING = ("MBC wins more than it loses (Fig. 5)",
                 "judge's win rate minus loss rate of MBC against the baseline, each at its selected checkpoint, one "
                 "order per pair (the paper's protocol); bootstrap over pairs", "CI > 0 at every learning rate")


def mbc_wins(results: Sequence[Path]) -> tuple[list[str], bool]:
    from mbc_jax.judge.winrate import load_results

    values, ok = [], True
    for path in results:
        try:
            block = load_results(path)["single_order"]["overall"]
        except (OSError, ValueError, KeyError) as e:
            raise Missing(f"{path}: not a judge results file of this version ({e})") from None
        win, tie, loss = int(block["win"]), int(block["tie"]), int(block["loss"])
        if not win + tie + loss:
            raise Missing(f"{path}: no judged pair")
        v = net_win_ci(win, tie, loss)
        values.append(_ci_text(f"{path.stem} ({win}/{tie}/{loss})", v))
        ok &= v[1] > 0
    return values, ok


def _claim(finding: str, statistic: str, rule: str, fn: Callable[[], tuple[list[str], bool]]) -> Claim:
    try:
        values, ok = fn()
    except (Missing, UserError) as e:  # UserError: an input there but unreadable (it names the file)
        return Claim(finding, statistic, rule, [], UNMEASURED, str(e))
    return Claim(finding, statistic, rule, values, HOLDS if ok else FAILS)


def evaluate(baselines: Sequence[RunFolder], figs: str | Path, judge_results: Sequence[str | Path] = (),
             judge_note: str = "no judge results") -> list[Claim]:
    """Every finding's row: the SFT findings on `baselines` with the figures in `figs`, the judge's on the
    `*_selected.json` files among `judge_results` (none: not measured, `judge_note` saying why)."""
    figs = Path(figs)

    def on_baselines(fn: Callable) -> Callable[[], tuple[list[str], bool]]:
        def measure() -> tuple[list[str], bool]:
            if not baselines:
                raise Missing("no baseline (uniform) run")
            return fn(baselines, figs)
        return measure

    rows = [_claim(finding, statistic, rule, on_baselines(fn)) for finding, statistic, rule, fn in FINDINGS]
    selected = [Path(p) for p in judge_results if Path(p).name.endswith("_selected.json")]

    def judge() -> tuple[list[str], bool]:
        if not selected:
            raise Missing(judge_note)
        return mbc_wins(selected)

    rows.insert(5, _claim(*JUDGE_FINDING, judge))
    return rows


def markdown(rows: Sequence[Claim]) -> str:
    """The claims section of REPORT.md: the conventions, then one row per finding."""
    counts = {v: sum(r.verdict == v for r in rows) for v in (HOLDS, FAILS, UNMEASURED)}
    head = ("## Claims check\n\n"
            f"{counts[HOLDS]} of {len(rows)} findings hold here, {counts[FAILS]} do not, {counts[UNMEASURED]} not "
            "measured. Computed by `experiments/claims.py` from the run folders and figures below; no verdict is "
            "written by hand. The SFT findings are tested on the baseline (uniform) runs at each learning rate and "
            "hold when the rule holds at every one; values are point estimates with 95% percentile-bootstrap CIs "
            f"([lo, hi]; {N_BOOT} resamples, seed {SEED}, over records, prompts or judged pairs).\n\n")
    table = common.markdown_table(
        [[r.finding, r.statistic, "; ".join(r.values) or "n/a", r.rule,
          f"**{r.verdict}**" + (f": {r.why}" if r.why else "")] for r in rows],
        ["finding", "statistic (definition)", "measured [95% CI]", "rule", "verdict"])
    return head + table + "\n"
