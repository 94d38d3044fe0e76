"""The claims check: each finding of Ge et al. (and Zeng et al.'s), the statistic that tests it, its
measured value with a bootstrap CI, and a verdict by a rule written here, computed from the run folders
and the figure files `experiments.reproduce` writes. No verdict is written by hand.

    rows = evaluate(baselines, figs, judge_results, judge_note)   # list[Claim], one per finding
    markdown(rows)                                                # REPORT.md's first section

Conventions, the same in every row:
- the SFT findings are tested on the baseline runs (uniform sampler), one value per learning rate, as
  the paper's Figures 1, 2 and 7 are; each learning rate's comparison is one `Test` of the row;
- a CI is the 95% percentile bootstrap (1000 resamples, seed 0) over the records (validation prompts,
  judged pairs) the statistic averages, resampled with replacement; a statistic over two groups
  resamples each group separately; paired statistics (two checkpoints, two readings) resample the
  record once for both; nothing is chosen on the data outside the resample (a test of "the categories
  differ" is a permutation test of the category labels, no category picked);
- four verdicts (claim_statistics.verdict): **holds** (every test's CI beyond the bound on the finding's
  side), **contradicted** (some test's CI, widened for the row's number of tests, wholly on the other side),
  **inconclusive** (neither; with the effect the sample could have detected), **not measured** (an input
  is missing: a figure step failed, no judge, data without the demo world's ground truth; with the reason);
- each rule's false-holds and false-contradicted rates at the miniature's sizes are measured by
  tests/unit/test_claim_calibration.py and listed in experiments/README.md;
- one row tests a two-sided "differs" by CIs (issue 32's membership row, `Test.differs`): it holds when every
  rate's CI excludes 0 and all lie on one side, and is contradicted by equivalence, a CI (widened as above)
  within a stated margin of 0.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from experiments import common
from experiments.claim_statistics import (
    CONTRADICTED,
    HOLDS,
    INCONCLUSIVE,
    N_BOOT,
    SEED,
    UNMEASURED,
    Test,
    auc,
    auc_ci,
    category_gap_test,
    gain_shares_ci,
    length_residuals,
    length_strata,
    mean_diff_ci,
    net_win_ci,
    paired_auc_diff_ci,
    paired_diff_ci,
    partial_spearman_ci,
    permutation_test,
    perplexity_ratio_ci,
    pooled_diff_ci,
    response_gap_ci,
    strength_diff_ci,
    verdict,
)
from experiments.common import fmt
from mbc_jax import UserError
from mbc_jax.answers_file import answer_rows
from mbc_jax.run_folder import RunFolder, read_csv

VERDICTS = (HOLDS, CONTRADICTED, INCONCLUSIVE, UNMEASURED)
FACT_QA, HARD_TASK = "open_qa", "summarization"  # the demo's and Dolly's category names of the paper's pair
QUALITY_MARGIN = 0.05  # generation quality "holds": mean grade change's CI lower bound above -0.05
JUDGED_MARGIN = math.log(0.45 / 0.55)  # or, judged: the last checkpoint wins >= 45% against the first (ties half)
MIN_RECORDS = 5  # per category, for Zeng's claim 1 and Fig. 7
MIN_CATEGORIES = 4  # Fig. 7: "the lowest third" of fewer categories is the lowest one alone
LOW_TASKS = ("classification", "open_qa", "closed_qa")  # Zeng's low-memorization tasks the demo and Dolly have
WORLD_SEED = 0  # the demo world of `data: demo` (mbc_jax.train materializes seed 0)
MEMBERSHIP_MARGIN = 0.05  # membership: "no difference" when MBC's AUC is within 0.05 of uniform's


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
    why: str = ""  # for "not measured" the reason; for "inconclusive" the detectable effect


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


# ----------------------------------------------------------------------------- the rules, on arrays
# Each takes one run's per-record arrays and returns (the value's text, the row's tests for that run);
# the readers below feed them from run folders, tests/unit/test_claim_calibration.py from simulations.


def plateau_rule(em: np.ndarray, tokens: np.ndarray, steps: Sequence[int], label: str) -> tuple[str, list[Test]]:
    early, late = gain_shares_ci(em, tokens, steps)
    a = steps[int(np.argmax(np.asarray(steps) > 0))]
    text = (f"{label} (from step {a}): early {fmt(early[0], 2)} [{fmt(early[1], 2)}, {fmt(early[2], 2)}], late "
            f"{fmt(late[0], 2)} [{fmt(late[1], 2)}, {fmt(late[2], 2)}]")
    return text, [Test.of(f"{label} early", early, 0.5, +1), Test.of(f"{label} late", late, 1 / 3, -1)]


def response_rule(em, tok, rem, rtok, label: str) -> tuple[str, list[Test]]:
    v = response_gap_ci(em, tok, rem, rtok)
    return _ci_text(label, v), [Test.of(label, v)]


def difference_rule(a: np.ndarray, b: np.ndarray, label: str) -> tuple[str, list[Test]]:
    v = mean_diff_ci(a, b)
    return _ci_text(f"{label} ({len(a)} vs {len(b)} records)", v), [Test.of(label, v)]


def perplexity_rule(ppl: np.ndarray, tokens: np.ndarray, base: int, label: str) -> tuple[str, list[Test]]:
    v = perplexity_ratio_ci(ppl, tokens, base)
    return (f"{label}: perplexity last / first checkpoint {fmt(v[0], 2)} [{fmt(v[1], 2)}, {fmt(v[2], 2)}]",
            [Test.of(f"{label} perplexity", v, 1.0)])


def quality_rule(first: np.ndarray, last: np.ndarray, label: str) -> tuple[str, list[Test]]:
    v = paired_diff_ci(last, first)
    return (f"grade last - first ({len(first)} prompts) {fmt(v[0])} [{fmt(v[1])}, {fmt(v[2])}]",
            [Test.of(f"{label} grade", v, -QUALITY_MARGIN)])


def judged_quality_rule(scores: np.ndarray, games: np.ndarray, steps: Sequence[int], ridge: float, label: str
                        ) -> tuple[str, list[Test]]:
    """Fig. 3's quality half from the selection's judged games (per dev prompt tables [G, K, K] of the K
    checkpoints): Bradley-Terry strength of the last checkpoint minus that of the first, prompts resampled."""
    v = strength_diff_ci(scores, games, 0, len(steps) - 1, ridge)
    text = (f"judged Bradley-Terry strength step {steps[-1]} - step {steps[0]} ({scores.shape[0]} dev prompts, "
            f"{int(games.sum() / 2)} games) {fmt(v[0])} [{fmt(v[1])}, {fmt(v[2])}]")
    return text, [Test.of(f"{label} judged quality", v, JUDGED_MARGIN)]


def entropy_rule(nucleus: np.ndarray, teacher: np.ndarray, label: str) -> tuple[str, list[Test]]:
    """nucleus, teacher: [n, 2] per-prompt entropies at the first and the last checkpoint."""
    dn, dt = paired_diff_ci(nucleus[:, 0], nucleus[:, 1]), paired_diff_ci(teacher[:, 0], teacher[:, 1])
    text = (f"{label}: nucleus {fmt(dn[0])} [{fmt(dn[1])}, {fmt(dn[2])}], teacher forcing {fmt(dt[0])} "
            f"[{fmt(dt[1])}, {fmt(dt[2])}]")
    return text, [Test.of(f"{label} nucleus", dn), Test.of(f"{label} teacher forcing", dt)]


def nucleus_rule(nucleus: np.ndarray, teacher: np.ndarray, label: str) -> tuple[str, list[Test]]:
    """Table 1's other finding: teacher forcing minus nucleus, per prompt, at the first and the last checkpoint."""
    a, b = paired_diff_ci(teacher[:, 0], nucleus[:, 0]), paired_diff_ci(teacher[:, 1], nucleus[:, 1])
    text = f"{label}: first {fmt(a[0])} [{fmt(a[1])}, {fmt(a[2])}], last {fmt(b[0])} [{fmt(b[1])}, {fmt(b[2])}]"
    return text, [Test.of(f"{label} first", a), Test.of(f"{label} last", b)]


def mbc_memorization_rule(em_mbc: np.ndarray, em_base: np.ndarray, tokens: np.ndarray, steps: Sequence[int],
                          label: str) -> tuple[str, list[Test]]:
    """Fig. 6: MBC minus baseline pooled exact memorization over the same records at each of `steps` (rows)."""
    diffs = pooled_diff_ci(em_mbc, em_base, tokens)
    text = f"{label}: " + ", ".join(_ci_text(f"step {s}", v) for s, v in zip(steps, diffs))
    return text, [Test.of(f"{label} step {s}", v) for s, v in zip(steps, diffs)]


def rise_fall_rule(em: np.ndarray, ppl: np.ndarray, tokens: np.ndarray, steps: Sequence[int], label: str
                   ) -> tuple[str, list[Test]]:
    """Fig. 6 at the higher rate: em, ppl [3, N] of the training records at the first checkpoint after step 0,
    the middle one (fixed in advance, not the peak) and the last: pooled exact memorization middle minus first
    (rises) and middle minus last (then falls), pooled training perplexity last / middle (loss rises)."""
    rise, fall = pooled_diff_ci(em[[1, 1]], em[[0, 2]], tokens)
    loss = perplexity_ratio_ci(ppl[1:], tokens, 0)
    a, m, b = steps
    text = (f"{label}: " + _ci_text(f"memorization {m} - {a}", rise) + ", " + _ci_text(f"{m} - {b}", fall) +
            f", training perplexity {b} / {m} {fmt(loss[0], 3)} [{fmt(loss[1], 3)}, {fmt(loss[2], 3)}]")
    return text, [Test.of(f"{label} rise", rise), Test.of(f"{label} fall", fall),
                  Test.of(f"{label} loss", loss, 1.0)]


def draws_rule(draws: np.ndarray, perplexity0: np.ndarray, label: str) -> tuple[str, list[Test]]:
    """Fig. 8: Spearman, over training records, of the times MBC drew a record with its step-0 perplexity."""
    v = partial_spearman_ci(draws, perplexity0)
    return _ci_text(f"{label} ({len(draws)} records)", v, 2), [Test.of(label, v)]


def category_rule(first: np.ndarray, last: np.ndarray, cats: np.ndarray, label: str) -> tuple[str, list[Test]]:
    """Fig. 7 on one run's per-record exact memorization (trained positions) at the first checkpoint after step 0
    and the last, categories of >= MIN_RECORDS records: (1) at the last checkpoint, the mean of the other
    categories' means minus summarization's, one-sided permutation test of the category labels, with
    summarization's mean among the lowest ceil(K / 3) of the K category means; (2) summarization's change, last
    minus first, records paired, CI > 0. Every category's change is reported beside them."""
    names = sorted(set(cats))
    hard = cats == HARD_TASK
    mean_last = {c: float(last[cats == c].mean()) for c in names}
    rank = 1 + sum(mean_last[c] < mean_last[HARD_TASK] for c in names if c != HARD_TASK)
    lowest = math.ceil(len(names) / 3)
    gap, p, p_other, critical = category_gap_test(last, cats, HARD_TASK)
    rise = paired_diff_ci(last[hard], first[hard])
    changes = ", ".join(f"{c} {mean_last[c] - float(first[cats == c].mean()):+.3f}" for c in names)
    text = (f"{label}: the other categories' mean minus {HARD_TASK}'s at the last checkpoint {fmt(gap)} (p = {fmt(p)}),"
            f" {HARD_TASK} ranks {rank} of {len(names)} from the lowest (lowest third: <= {lowest}); "
            + _ci_text(f"{HARD_TASK} last - first ({int(hard.sum())} records)", rise)
            + f"; change by category: {changes}")
    unmet = "" if rank <= lowest else f"{HARD_TASK} ranks {rank} of {len(names)}, not among the lowest {lowest}"
    return text, [Test.permutation(f"{label} {HARD_TASK} below the others", gap, p, critical, p_other, unmet),
                  Test.of(f"{label} {HARD_TASK} rises", rise)]


def net_win_rule(win: int, tie: int, loss: int, label: str) -> tuple[str, list[Test]]:
    v = net_win_ci(win, tie, loss)
    return _ci_text(f"{label} ({win}/{tie}/{loss})", v), [Test.of(label, v)]


def task_rule(change: np.ndarray, cats: np.ndarray, length: np.ndarray, label: str) -> tuple[str, list[Test]]:
    """Zeng 1, omnibus: do the categories differ in the change of extraction ROUGE-L? Permutation test of
    the category labels, raw and with response length controlled (residuals on log length, labels permuted
    within length quartiles)."""
    raw = permutation_test(change, cats)
    adj = permutation_test(length_residuals(change, length), cats, length_strata(length))
    text = (f"{label}: spread {fmt(raw[0])} (p = {fmt(raw[1])}), length controlled {fmt(adj[0])} "
            f"(p = {fmt(adj[1])})")
    return text, [Test.permutation(f"{label} spread", *raw),
                  Test.permutation(f"{label} spread, length controlled", *adj)]


def direction_rule(change: np.ndarray, cats: np.ndarray, length: np.ndarray, label: str
                   ) -> tuple[str, list[Test]]:
    """Zeng 1, direction: summarization minus the records of classification and QA, raw and on the
    residuals after log response length (the line fitted once, on all records)."""
    hi, lo = cats == HARD_TASK, np.isin(cats, LOW_TASKS)
    if hi.sum() < MIN_RECORDS or lo.sum() < MIN_RECORDS:
        raise Missing(f"{label}: {hi.sum()} {HARD_TASK} and {lo.sum()} {'/'.join(LOW_TASKS)} records "
                      f"(at least {MIN_RECORDS} each)")
    res = length_residuals(change, length)
    raw, adj = mean_diff_ci(change[hi], change[lo]), mean_diff_ci(res[hi], res[lo])
    text = _ci_text(f"{label} ({hi.sum()} vs {lo.sum()})", raw) + "; length controlled " + _ci_text("", adj)[2:]
    return text, [Test.of(f"{label}", raw), Test.of(f"{label}, length controlled", adj)]


def attention_rule(d_entropy: np.ndarray, d_rouge: np.ndarray, prompt: np.ndarray, label: str,
                   d_raw: np.ndarray | None = None) -> tuple[str, list[Test]]:
    """Zeng 2 on the change from step 0: partial Spearman of the change of the normalized attention
    entropy with the change of ROUGE-L, prompt length controlled (the verdict); the plain Spearman and
    the raw entropy's beside it."""
    part = partial_spearman_ci(d_entropy, d_rouge, prompt)
    plain = partial_spearman_ci(d_entropy, d_rouge)
    text = _ci_text(f"{label} (n = {len(d_rouge)}) partial | prompt length", part, 2)
    text += "; plain " + _ci_text("", plain, 2)[2:]
    if d_raw is not None:
        text += "; raw entropy " + _ci_text("", partial_spearman_ci(d_raw, d_rouge), 2)[2:]
    return text, [Test.of(label, part)]


def familiarity_rule(pos: np.ndarray, unseen: np.ndarray, others: np.ndarray, label: str
                     ) -> tuple[str, list[Test]]:
    v = auc_ci(pos, unseen)
    text = _ci_text(f"{label} ({len(pos)} vs {len(unseen)})", v)
    if len(others):
        w = auc_ci(pos, others)
        text += f"; extra, against all others ({len(others)}): {fmt(w[0])} [{fmt(w[1])}, {fmt(w[2])}]"
    return text, [Test.of(label, v, 0.5)]


def membership_rule(members: np.ndarray, non_members: np.ndarray, label: str) -> tuple[str, list[Test]]:
    """Issue 32: the loss signal's membership AUC of the MBC run minus the baseline's at one learning rate.
    members [2, n1], non_members [2, n0]: row 0 MBC's scores, row 1 the baseline's, of the same records
    (column k one record in both runs); members resampled once for both runs, non-members once for both."""
    v = paired_auc_diff_ci(members[0], non_members[0], members[1], non_members[1])
    a, b = (float(auc(members[k], non_members[k])) for k in (0, 1))
    text = (f"{label} ({members.shape[1]} members vs {non_members.shape[1]} non-members): MBC {fmt(a)}, uniform "
            f"{fmt(b)}; " + _ci_text("MBC - uniform", v))
    return text, [Test.differs(label, v, MEMBERSHIP_MARGIN)]


# ----------------------------------------------------------------------------- the findings, from run folders
# Each returns (values: one text per run, tests: every run's tests).

Result = tuple[list[str], list[Test]]


def _collect(runs: Sequence[RunFolder], one: Callable[[RunFolder], tuple[str, list[Test]]]) -> Result:
    values, tests = [], []
    for run in runs:
        text, t = one(run)
        values.append(text)
        tests += t
    return values, tests


def memorization_plateaus(runs: Sequence[RunFolder], figs: Path) -> Result:
    def one(run: RunFolder) -> tuple[str, list[Test]]:
        steps, _, em = run.record_matrix("exact_match", "train")
        _, _, tok = run.record_matrix("tokens", "train")
        after = [s for s in steps if s > 0]
        if len(after) < 3:
            raise Missing(f"{run.path}: {len(after)} memorization snapshots after step 0; the rise's shape needs a "
                          "first, one between and a last")
        return plateau_rule(em, tok[0], list(steps), run.lr_label)
    return _collect(runs, one)


def response_above_full(runs: Sequence[RunFolder], figs: Path) -> Result:
    def one(run: RunFolder) -> tuple[str, list[Test]]:
        steps, _, em = run.record_matrix("exact_match", "train")
        _, _, rem = run.record_matrix("response_exact_match", "train")
        _, _, tok = run.record_matrix("tokens", "train")
        _, _, rtok = run.record_matrix("response_tokens", "train")
        return response_rule(em[-1], tok[-1], rem[-1], rtok[-1], f"{run.lr_label} (step {steps[-1]})")
    return _collect(runs, one)


def _data_map(run: RunFolder) -> dict[str, np.ndarray]:
    """Fig. 2's per-record mean over the checkpoints after step 0, of the positions the run trained (response
    exact match under `loss_on: response`: full-dialogue exact match would count untrained context, which
    measures what pretraining recalls)."""
    from experiments import fig2_data_map

    dm = fig2_data_map.data_map(run, _trained(run)[0])
    return {"id": np.asarray(_ids(dm["id"])), "category": np.asarray(dm["category"]).astype(str),
            "mean": np.asarray(dm["mean"], float)}


def qa_easy_summarization_hard(runs: Sequence[RunFolder], figs: Path) -> Result:
    def one(run: RunFolder) -> tuple[str, list[Test]]:
        dm = _data_map(run)
        cats, mean = dm["category"], dm["mean"]
        a, b = mean[(cats == FACT_QA) & np.isfinite(mean)], mean[(cats == HARD_TASK) & np.isfinite(mean)]
        if not (len(a) and len(b)):
            raise Missing(f"{run.label} has {len(a)} {FACT_QA} and {len(b)} {HARD_TASK} training records")
        return difference_rule(a, b, f"{run.lr_label} ({_trained(run)[0]})")
    return _collect(runs, one)


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


def _judged_quality(run: RunFolder) -> tuple[str, list[Test]] | None:
    """The quality half from `mbc-jax select`'s games in the run folder (None when the run has no selection)."""
    from mbc_jax.judge.bradley_terry import DEFAULT_RIDGE, tables
    from mbc_jax.selection import SELECTION
    from mbc_jax.selection.tournament import SCORE

    folder = run.path / SELECTION
    if not ((folder / "selection.json").is_file() and (folder / "games.jsonl").is_file()):
        return None
    try:
        sel = json.loads((folder / "selection.json").read_text())
        games = [json.loads(x) for x in (folder / "games.jsonl").read_text().splitlines() if x.strip()]
        steps, ids = [int(x) for x in sel["steps"]], [str(x) for x in sel["dev"]["ids"]]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise Missing(f"{folder}: not a selection of this version ({e})") from None
    valid = [g for g in games if g.get("outcome") in SCORE and int(g["step_a"]) in steps and int(g["step_b"]) in steps
             and str(g["id"]) in ids]
    if len(steps) < 2 or not valid:
        raise Missing(f"{folder}: {len(steps)} checkpoints and {len(valid)} judged games; the quality trend needs 2 "
                      "checkpoints and a game")
    pos, group = {s: k for k, s in enumerate(steps)}, {i: k for k, i in enumerate(ids)}
    t = tables(len(steps), len(ids), [pos[int(g["step_a"])] for g in valid], [pos[int(g["step_b"])] for g in valid],
               [SCORE[g["outcome"]] for g in valid], [group[str(g["id"])] for g in valid])
    ridge = float(sel.get("bradley_terry", {}).get("ridge", DEFAULT_RIDGE))
    return judged_quality_rule(t.scores, t.games, steps, ridge, run.lr_label)


def _graded_quality(run: RunFolder, figs: Path) -> tuple[str, list[Test]]:
    """The quality half from the demo world's grader on the Table 1 nucleus answers, first and last checkpoint."""
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
    qtext, q = quality_rule(pairs[:, 0], pairs[:, 1], run.lr_label)
    steps_note = f"grade last - first (step {gens['last'][0]} - {gens['first'][0]},"
    return qtext.replace("grade last - first (", steps_note + " ", 1), q


def perplexity_rises_quality_holds(runs: Sequence[RunFolder], figs: Path) -> Result:
    values, tests, reasons = [], [], []
    for run in runs:  # the positions the loss trained, as Figure 3's headline curve
        column = {"full": "perplexity", "response": "response_perplexity"}[common.trained_positions(run)]
        steps, _, ppl = run.record_matrix(column, "val")
        _, _, tok = run.record_matrix("response_tokens" if column.startswith("response") else "tokens", "val")
        after = np.nonzero(np.asarray(steps) > 0)[0]
        if len(after) < 2:
            raise Missing(f"{run.path}: fewer than 2 validation snapshots after step 0")
        keep = np.all(np.isfinite(ppl), 0) & (tok[0] > 0)
        text, t = perplexity_rule(ppl[:, keep], tok[0, keep].astype(float), int(after[0]),
                                  f"{run.lr_label} (step {steps[-1]} / {steps[after[0]]})")
        tests += t
        quality = _judged_quality(run)
        if quality is None and run.config.get("data") != "demo":
            reasons.append(f"{run.label}: generation quality is measured by the selection's judged games (this run "
                           f"has no selection/: no judge) or by the demo world's grader, and this run's data is "
                           f"{run.config.get('data')!r}")
            values.append(text)
            continue
        qtext, q = quality if quality is not None else _graded_quality(run, figs)
        values.append(text + "; " + qtext)
        tests += q
    if reasons:
        raise Missing("; ".join(reasons) + " (" + "; ".join(values) + ")")
    return values, tests


def _entropies(run: RunFolder, figs: Path) -> tuple[int, int, np.ndarray, np.ndarray]:
    """(first step, last step, nucleus [n, 2], teacher forcing [n, 2]): per Table 1 prompt with all four
    readings, the mean entropy along the nucleus-sampled answer and of the reference response under teacher
    forcing, at the first and the last checkpoint."""
    gens = _generations(figs, run)
    (s0, first), (s1, last) = gens["first"], gens["last"]
    nucleus = {r["index"]: [r["entropy"]] for r in first}
    for r in last:
        nucleus.get(r["index"], []).append(r["entropy"])
    tf = []
    for step in (s0, s1):
        t = run.memorization(step, "val")
        tf.append(dict(zip(t["index"].astype(int), t["response_entropy"].astype(float))))
    both = [i for i, v in nucleus.items() if len(v) == 2 and i in tf[0] and i in tf[1]]
    n = np.array([nucleus[i] for i in both], float).reshape(-1, 2)
    t = np.array([[tf[0][i], tf[1][i]] for i in both], float).reshape(-1, 2)
    ok = np.all(np.isfinite(n), 1) & np.all(np.isfinite(t), 1)
    if not ok.any():
        raise Missing(f"{run.label}: no record with both checkpoints' entropies")
    return s0, s1, n[ok], t[ok]


def entropy_falls(runs: Sequence[RunFolder], figs: Path) -> Result:
    def one(run: RunFolder) -> tuple[str, list[Test]]:
        s0, s1, n, tf = _entropies(run, figs)
        return entropy_rule(n, tf, f"{run.lr_label}, first - last (step {s0} - {s1})")
    return _collect(runs, one)


def nucleus_below_teacher_forcing(runs: Sequence[RunFolder], figs: Path) -> Result:
    def one(run: RunFolder) -> tuple[str, list[Test]]:
        s0, s1, n, tf = _entropies(run, figs)
        return nucleus_rule(n, tf, f"{run.lr_label} (step {s0}, {s1}; {len(n)} prompts)")
    return _collect(runs, one)


def _zeng_changes(table: dict[str, np.ndarray], run: RunFolder) -> tuple[int, dict[str, np.ndarray], int]:
    """(last step, per-record columns of the records with step 0 and the last step: change of ROUGE-L and
    of the attention measures, category, response and prompt length, records left out as EOS-only targets)."""
    mine = _rows_of(table, run, "zeng_records.csv")
    step = table["step"][mine].astype(int)
    last = int(step.max())
    if last == 0 or not (step == 0).any():
        raise Missing(f"zeng_records.csv: {run.label} lacks step 0 or a later step")
    if "suffix_tokens" not in table:
        raise Missing("zeng_records.csv has no suffix_tokens column (written by an earlier version; rerun zeng)")
    cols = [c for c in ("rouge_l", "normalized_entropy", "entropy") if c in table]
    at = {s: {int(i): k for k, i in zip(np.nonzero(mine & (table["step"].astype(int) == s))[0],
                                         table["index"][mine & (table["step"].astype(int) == s)])} for s in (0, last)}
    both = sorted(set(at[0]) & set(at[last]))
    k0, k1 = np.array([at[0][i] for i in both], int), np.array([at[last][i] for i in both], int)
    eos_only = table["suffix_tokens"][k1].astype(float) <= 1  # the target is the response's end token alone
    k0, k1 = k0[~eos_only], k1[~eos_only]
    out = {f"d_{c}": table[c][k1].astype(float) - table[c][k0].astype(float) for c in cols}
    out.update(category=table["category"][k1].astype(str), response=table["response_tokens"][k1].astype(float),
               prompt=table["prompt_tokens"][k1].astype(float))
    ok = np.isfinite(out["d_rouge_l"])
    return last, {k: v[ok] for k, v in out.items()}, int(eos_only.sum())


def zeng_by_task(runs: Sequence[RunFolder], figs: Path) -> Result:
    table = _figure(figs, "zeng_records.csv")

    def one(run: RunFolder) -> tuple[str, list[Test]]:
        last, d, eos = _zeng_changes(table, run)
        cats, n = np.unique(d["category"], return_counts=True)
        keep = np.isin(d["category"], cats[n >= MIN_RECORDS])
        if (n >= MIN_RECORDS).sum() < 2:
            raise Missing(f"zeng_records.csv: {run.label} has fewer than 2 categories of >= {MIN_RECORDS} records")
        text, t = task_rule(d["d_rouge_l"][keep], d["category"][keep], d["response"][keep],
                            f"{run.lr_label}, step {last} - 0")
        return text + f" ({int(keep.sum())} records in {(n >= MIN_RECORDS).sum()} categories; {eos} with an " \
                      "EOS-only target left out)", t
    return _collect(runs, one)


def zeng_direction(runs: Sequence[RunFolder], figs: Path) -> Result:
    table = _figure(figs, "zeng_records.csv")

    def one(run: RunFolder) -> tuple[str, list[Test]]:
        last, d, eos = _zeng_changes(table, run)
        text, t = direction_rule(d["d_rouge_l"], d["category"], d["response"], f"{run.lr_label}, step {last} - 0")
        return text + f" ({eos} EOS-only targets left out)", t
    return _collect(runs, one)


def zeng_attention(runs: Sequence[RunFolder], figs: Path) -> Result:
    table = _figure(figs, "zeng_records.csv")
    if "normalized_entropy" not in table:
        raise Missing("zeng_records.csv has no attention columns (the analysis ran without attention)")

    def one(run: RunFolder) -> tuple[str, list[Test]]:
        last, d, _ = _zeng_changes(table, run)
        ok = np.isfinite(d["d_normalized_entropy"])
        raw = d["d_entropy"][ok] if "d_entropy" in d else None
        return attention_rule(d["d_normalized_entropy"][ok], d["d_rouge_l"][ok], d["prompt"][ok],
                              f"{run.lr_label}, step {last} - 0", raw)
    return _collect(runs, one)


def familiarity_auc(runs: Sequence[RunFolder], figs: Path) -> Result:
    from mbc_jax.demo.familiarity import labels_of

    def one(run: RunFolder) -> tuple[str, list[Test]]:
        labels = labels_of(run.path / "data")
        if run.config.get("data") != "demo" or not labels:
            raise Missing(f"{run.label}: the records carry no familiarity label (the demo world's data only)")
        dm = _data_map(run)
        fam = np.array([labels.get(i, "") for i in dm["id"]])
        mean = dm["mean"]
        pos, unseen = mean[fam == "corpus_fact"], mean[fam == "unseen_fact"]
        if not (len(pos) and len(unseen)):
            raise Missing(f"{run.label}: {len(pos)} corpus_fact and {len(unseen)} unseen_fact records")
        return familiarity_rule(pos, unseen, mean[(fam != "corpus_fact") & (fam != "")],
                                f"{run.lr_label} ({_trained(run)[0]})")
    return _collect(runs, one)


def _trained(run: RunFolder) -> tuple[str, str]:
    """(exact-match column, its target-count column) of the positions the run's loss trained."""
    return (("response_exact_match", "response_tokens") if common.trained_positions(run) == "response"
            else ("exact_match", "tokens"))


def mbc_above_baseline(pairs: Sequence[tuple[RunFolder, RunFolder]], figs: Path) -> Result:
    def one(pair: tuple[RunFolder, RunFolder]) -> tuple[str, list[Test]]:
        mbc, base = pair
        column, tokens = _trained(base)
        common_steps = sorted(set(mbc.memorization_steps()) & set(base.memorization_steps()) - {0})
        if len(common_steps) < 2:
            raise Missing(f"{mbc.label} and {base.label} share {len(common_steps)} snapshots after step 0")
        last = common_steps[-1]
        middle = min(common_steps[:-1], key=lambda s: abs(s - last / 2))
        _, im, em_m = mbc.record_matrix(column, "train", [middle, last])
        _, ib, em_b = base.record_matrix(column, "train", [middle, last])
        _, _, tok = base.record_matrix(tokens, "train", [last])
        if not np.array_equal(im, ib):
            raise Missing(f"{mbc.label} and {base.label} do not hold the same training records")
        return mbc_memorization_rule(em_m, em_b, tok[0].astype(float), [middle, last],
                                     f"{base.lr_label} ({column})")
    return _collect(pairs, one)


def _loss_scores(runs: Sequence[RunFolder], column: str, split: str, step: int) -> np.ndarray:
    """[len(runs), n]: membership's `loss` signal (minus the mean NLL: -log perplexity) of the `split` records
    at `step`, records in the same order in every run; records without a value in some run left out."""
    index, values = None, []
    for run in runs:
        _, i, v = run.record_matrix(column, split, [step])
        if index is not None and not np.array_equal(i, index):
            raise Missing(f"{runs[0].label} and {run.label} do not hold the same {split} records")
        index = i
        values.append(v[0])
    with np.errstate(divide="ignore", invalid="ignore"):
        scores = -np.log(np.asarray(values, float))
    return scores[:, np.all(np.isfinite(scores), 0)]


def mbc_membership_differs(pairs: Sequence[tuple[RunFolder, RunFolder]], figs: Path) -> Result:
    """Issue 32: does MBC change how well a membership attack tells its training records from held-out ones?
    Per (MBC, baseline) pair at one learning rate, at their last common snapshot after step 0:
    - the signal: `loss` (minus the mean NLL over the trained positions, experiments.membership's primary
      signal): every snapshot has it (Min-K%, Min-K%++ and zlib need issue 32's columns), it is what MBC's
      sampler acts on, and one signal fixed in advance needs no correction over five strongly correlated ones
      (membership.csv has every signal's AUC per run beside it). `reference` subtracts each record's step-0
      loss, a per-record constant the two runs share (one base model), so it asks the same question on a
      recentred scale;
    - the test: the AUC of MBC minus that of the baseline; both runs score the same members (training records)
      and non-members (validation records), so the bootstrap resamples the members once for both runs and the
      non-members once for both (paired, stratified): a record's difficulty, shared by both runs, cancels;
    - the verdict: two-sided, the direction not fixed in advance: holds when every rate's 95% CI excludes 0,
      all on one side (the values say whether MBC is above or below); contradicted when a rate's CI at
      0.0125 / m each side lies within +-MEMBERSHIP_MARGIN (equivalence: the AUCs differ by less than 0.05);
      rates combine as in every row (each one `Test`, Bonferroni over them for "contradicted").
    Not measured without a validation split in the snapshots (no non-members) or a shared snapshot after
    step 0. MIMIR's caveat holds here in its favourable form: the non-members are a random hold-out of the
    same data, so a difference is memorization, not a shift in distribution."""
    def one(pair: tuple[RunFolder, RunFolder]) -> tuple[str, list[Test]]:
        mbc, base = pair
        column = {"full": "perplexity", "response": "response_perplexity"}[common.trained_positions(base)]
        if common.trained_positions(mbc) != common.trained_positions(base):
            raise Missing(f"{mbc.label} and {base.label} trained different positions (loss_on)")
        shared = sorted(set(mbc.memorization_steps()) & set(base.memorization_steps()) - {0})
        if not shared:
            raise Missing(f"{mbc.label} and {base.label} share no memorization snapshot after step 0")
        members = _loss_scores((mbc, base), column, "train", shared[-1])
        non_members = _loss_scores((mbc, base), column, "val", shared[-1])
        if members.shape[1] < 2 or non_members.shape[1] < 2:
            raise Missing(f"{base.label}: {members.shape[1]} training and {non_members.shape[1]} validation records "
                          f"with {column} in both runs' step-{shared[-1]} snapshots; membership needs a validation "
                          "split (val_fraction or val_data) and >= 2 records each side")
        return membership_rule(members, non_members, f"{base.lr_label}, step {shared[-1]} ({column})")
    return _collect(pairs, one)


def baseline_rises_then_falls(runs: Sequence[RunFolder], figs: Path) -> Result:
    run = max(runs, key=lambda r: r.learning_rate)  # the paper's Fig. 6 shows it at the higher rate (5e-5)
    column, tokens = _trained(run)
    steps = [s for s in run.memorization_steps() if s > 0]
    if len(steps) < 3:
        raise Missing(f"{run.path}: {len(steps)} snapshots after step 0; a rise then a fall needs 3")
    middle = min(steps[1:-1], key=lambda s: abs(s - steps[-1] / 2))
    chosen = [steps[0], middle, steps[-1]]
    _, _, em = run.record_matrix(column, "train", chosen)
    _, _, ppl = run.record_matrix(column.replace("exact_match", "perplexity"), "train", chosen)
    _, _, tok = run.record_matrix(tokens, "train", [steps[-1]])
    keep = np.all(np.isfinite(ppl), 0) & (tok[0] > 0)
    text, tests = rise_fall_rule(em[:, keep], ppl[:, keep], tok[0, keep].astype(float), chosen,
                                 f"{run.lr_label} ({column})")
    return [text], tests


def mbc_draws_unmemorized(runs: Sequence[RunFolder], figs: Path) -> Result:
    from experiments.fig8_sampling_frequency import draws

    def one(run: RunFolder) -> tuple[str, list[Test]]:
        t, _ = draws(run)
        column = {"full": "perplexity", "response": "response_perplexity"}[common.trained_positions(run)]
        if 0 not in run.memorization_steps():
            raise Missing(f"{run.path}: no step-0 memorization snapshot")
        _, index, ppl = run.record_matrix(column, "train", [0])
        at = dict(zip(index.astype(int), ppl[0].astype(float)))
        d = np.array([(n, at.get(int(i), math.nan)) for i, n in zip(t["index"], t["draws"].astype(float))])
        d = d[np.all(np.isfinite(d), 1)]
        if len(d) < 3:
            raise Missing(f"{run.label}: fewer than 3 records with draws and a step-0 perplexity")
        return draws_rule(d[:, 0], d[:, 1], run.lr_label)
    return _collect(runs, one)


def mbc_category_memorization(runs: Sequence[RunFolder], figs: Path) -> Result:
    run = min(runs, key=lambda r: r.learning_rate)  # the paper's Fig. 7: MBC at the lower rate (1e-5)
    column, _ = _trained(run)
    steps = [s for s in run.memorization_steps() if s > 0]
    if len(steps) < 2:
        raise Missing(f"{run.path}: {len(steps)} memorization snapshots after step 0; Fig. 7 needs a first and a last")
    _, _, em = run.record_matrix(column, "train", [steps[0], steps[-1]])
    cats = np.asarray(run.records["category"][run.records["split"] == "train"]).astype(str)
    ok = np.all(np.isfinite(em), 0)
    names, n = np.unique(cats[ok], return_counts=True)
    enough = names[n >= MIN_RECORDS]
    if HARD_TASK not in enough or len(enough) < MIN_CATEGORIES:
        raise Missing(f"{run.label}: {len(enough)} categories of >= {MIN_RECORDS} training records with {column} "
                      f"({HARD_TASK} {'among them' if HARD_TASK in enough else 'not among them'}); the row needs "
                      f"{HARD_TASK} and >= {MIN_CATEGORIES} categories")
    keep = ok & np.isin(cats, enough)
    text, tests = category_rule(em[0, keep], em[1, keep], cats[keep],
                                f"{run.lr_label}, step {steps[0]} to {steps[-1]} ({column})")
    return [text], tests


MBC_FINDINGS = (
    ("MBC memorizes more than the baseline (Fig. 6)",
     "pooled exact memorization (Eq. 1, trained positions) of MBC minus that of the baseline at the same learning "
     "rate, the same training records resampled once for both, at the middle and at the last common checkpoint",
     "holds: all CIs > 0", mbc_above_baseline),
    ("MBC draws the least-memorized records most (Fig. 8)",
     "Spearman, over the training records of each MBC run, of the times drawn (sampling.csv) with the record's "
     "step-0 perplexity (trained positions)", "holds: CI > 0 at every learning rate", mbc_draws_unmemorized),
    (f"Memorization by category: {HARD_TASK} stays lowest, and rises (Fig. 7)",
     f"MBC run at the lower learning rate, training records, exact memorization of the trained positions per record, "
     f"categories of >= {MIN_RECORDS} records (>= {MIN_CATEGORIES} categories): at the last checkpoint, the mean of "
     f"the other categories' means minus {HARD_TASK}'s (gap) and {HARD_TASK}'s rank among the category means; "
     f"{HARD_TASK}'s mean change from the first checkpoint after step 0 to the last (records paired); every "
     "category's change beside them",
     f"holds: gap > 0 by a one-sided permutation test of the category labels (p < 0.025, 1000 permutations; "
     f"contradicted when {HARD_TASK} lies above the others at p < 0.0125 / 2), {HARD_TASK} among the lowest third "
     f"(rank <= ceil(K / 3)), and its change's CI > 0", mbc_category_memorization),
    ("MBC's membership AUC at the last checkpoint differs from uniform's (issue 32)",
     "AUC of the loss signal (minus the mean NLL over the trained positions) separating the training records "
     "(members) from the validation records (non-members), MBC minus the baseline at the same learning rate, at "
     "their last common snapshot; the same records in both runs, members resampled once for both and non-members "
     "once for both (paired, stratified bootstrap); each run's AUC beside it",
     f"holds: every rate's CI excludes 0, all on one side (two-sided: MBC above uniform at every rate or below at "
     f"every rate, as the values show); contradicted when a rate's CI, at 0.0125 / m each side, lies within "
     f"+-{MEMBERSHIP_MARGIN} (no difference)", mbc_membership_differs),
)
RUN_WISE = (mbc_draws_unmemorized, mbc_category_memorization)  # MBC rows of the MBC runs alone (no baseline pair)


# (finding, statistic, rule, function); the judge's row is built apart (its input is not a run folder)
FINDINGS = (
    ("Memorization rises fast, then plateaus (Fig. 1)",
     "share of the gain in pooled exact memorization (Eq. 1, training records) from the first checkpoint after "
     "step 0 (a, as the paper's Fig. 1 starts at its first checkpoint) to the last (T), reached by the first "
     "checkpoint at >= a + (T - a) / 3 (early), and added after the last one at <= a + 2 (T - a) / 3 (late)",
     "holds: early CI > 0.5 and late CI < 1/3 (a straight line gives 1/3 each)", memorization_plateaus),
    ("Response-only memorization is above full-dialogue (Fig. 1)",
     "pooled exact memorization of the response targets minus that of all targets, training records, last checkpoint",
     "holds: CI > 0", response_above_full),
    (f"Factual QA is easy to memorize, summarization hard (Fig. 2 / 7; categories {FACT_QA} vs {HARD_TASK})",
     f"mean data-map memorization (per-record mean exact memorization over the checkpoints after step 0, Fig. 2, "
     f"of the positions the run trained: the response under loss_on: response) of the {FACT_QA} records minus "
     f"that of the {HARD_TASK} records", "holds: CI > 0", qa_easy_summarization_hard),
    ("Validation perplexity rises while generation quality holds (Fig. 3)",
     "pooled validation perplexity (trained positions) at the last checkpoint / at the first checkpoint after "
     "step 0 (fixed in advance, not the lowest one); and generation quality, last against first checkpoint: where "
     "`mbc-jax select` judged the run's checkpoints (selection/games.jsonl), the Bradley-Terry strength (ties half "
     "a win) of the last minus that of the first checkpoint of the selection, bootstrap over dev prompts; else, on "
     "the demo's data, the world grader's mean grade (0-1) of the Table 1 nucleus answers, last minus first, same "
     "prompts", f"holds: ratio CI > 1 and quality: judged strength change CI > log(0.45/0.55) = "
     f"{JUDGED_MARGIN:.3f} (the last checkpoint wins at least 45% against the first) or grade change CI > "
     f"-{QUALITY_MARGIN}", perplexity_rises_quality_holds),
    ("Entropy falls under nucleus sampling and teacher forcing (Table 1)",
     "per-prompt mean entropy, first minus last checkpoint, on the Table 1 validation prompts: of the full softmax "
     "along the nucleus-sampled answer, and of the response under teacher forcing", "holds: both CIs > 0",
     entropy_falls),
    ("Nucleus-sampling entropy is below teacher forcing's (Table 1)",
     "per-prompt mean entropy under teacher forcing (reference response) minus that along the nucleus-sampled "
     "answer (full softmax), Table 1 validation prompts, at the first and at the last checkpoint",
     "holds: both CIs > 0", nucleus_below_teacher_forcing),
    ("At the higher rate the baseline's memorization rises, then falls, while its training loss rises (Fig. 6)",
     "baseline at the higher learning rate, training records, trained positions: pooled exact memorization at the "
     "middle checkpoint (the one nearest half the last step, fixed in advance) minus at the first after step 0 "
     "(rise) and minus at the last (fall); pooled training perplexity (exp of the loss) last / middle",
     "holds: rise CI > 0, fall CI > 0 and perplexity ratio CI > 1", baseline_rises_then_falls),
    ("Zeng et al. 1a: memorization differs by task",
     "ROUGE-L of the greedy continuation (extraction, Zeng), change from step 0 to the last checkpoint per record; "
     "between-category SD of its category means (categories of >= 5 records; records whose target is the end "
     "token alone left out and counted), raw and with response length controlled (residuals on log length, labels "
     "permuted within length quartiles)", "holds: permutation p < 0.05 (1000 label permutations) for both; a test "
     "of \"differs\" cannot contradict", zeng_by_task),
    ("Zeng et al. 1b: Zeng's direction, summarization above classification and QA",
     f"the same change, mean of the {HARD_TASK} records minus that of the {', '.join(LOW_TASKS)} records (those "
     "the data has), raw and on the residuals after log response length",
     "holds: both CIs > 0 (>= 5 records each side)", zeng_direction),
    ("Zeng et al. 2: memorization goes with attention (more memorized, more uniform attention)",
     "change from step 0 to the last checkpoint per record: partial Spearman of the normalized entropy of the "
     "response positions' attention over the prompt against the continuation's ROUGE-L, prompt length controlled "
     "(the verdict's; the plain one and the raw entropy's beside it)", "holds: partial CI > 0", zeng_attention),
    ("Familiarity: easy to memorize = already known (issue 17)",
     "AUC of the data-map mean memorization (trained positions) separating corpus_fact records (answer stated in "
     "the base's corpus) from unseen_fact records (the same one-fact format, never stated); against all other "
     "labels as an extra",
     "holds: CI > 0.5 (corpus_fact vs unseen_fact)", familiarity_auc),
)
JUDGE_FINDING = ("MBC wins more than it loses (Fig. 5)",
                 "judge's win rate minus loss rate of MBC against the baseline, each at its selected checkpoint, one "
                 "order per pair (the paper's protocol); bootstrap over pairs", "holds: CI > 0 at every learning rate")


def mbc_wins(results: Sequence[Path]) -> Result:
    from mbc_jax.judge.winrate import load_results

    values, tests = [], []
    for path in results:
        try:
            block = load_results(path)["single_order"]["overall"]
        except (OSError, ValueError, KeyError) as e:
            raise Missing(f"{path}: not a judge results file of this version ({e})") from None
        win, tie, loss = int(block["win"]), int(block["tie"]), int(block["loss"])
        if not win + tie + loss:
            raise Missing(f"{path}: no judged pair")
        text, t = net_win_rule(win, tie, loss, path.stem)
        values.append(text)
        tests += t
    return values, tests


def _claim(finding: str, statistic: str, rule: str, fn: Callable[[], Result]) -> Claim:
    try:
        values, tests = fn()
    except (Missing, UserError) as e:  # UserError: an input there but unreadable (it names the file)
        return Claim(finding, statistic, rule, [], UNMEASURED, str(e))
    word, why = verdict(tests)
    return Claim(finding, statistic, rule, values, word, why)


def evaluate(baselines: Sequence[RunFolder], figs: str | Path, judge_results: Sequence[str | Path] = (),
             judge_note: str = "no judge results", mbc: Sequence[RunFolder] = ()) -> list[Claim]:
    """Every finding's row: the SFT findings on `baselines` with the figures in `figs`, the judge's on the
    `*_selected.json` files among `judge_results` (none: not measured, `judge_note` saying why), MBC's
    (Figs. 6 and 8) on the `mbc` runs, each paired with the baseline of its learning rate."""
    figs = Path(figs)

    def on_baselines(fn: Callable) -> Callable[[], Result]:
        def measure() -> Result:
            if not baselines:
                raise Missing("no baseline (uniform) run")
            return fn(baselines, figs)
        return measure

    rows = [_claim(finding, statistic, rule, on_baselines(fn)) for finding, statistic, rule, fn in FINDINGS]
    selected = [Path(p) for p in judge_results if Path(p).name.endswith("_selected.json")]

    def judge() -> Result:
        if not selected:
            raise Missing(judge_note)
        return mbc_wins(selected)

    rows.insert(6, _claim(*JUDGE_FINDING, judge))  # after Table 1's two rows

    def on_mbc(fn: Callable) -> Callable[[], Result]:
        def measure() -> Result:
            if not mbc:
                raise Missing("no MBC run given")
            if fn in RUN_WISE:
                return fn(mbc, figs)
            by_lr = {b.learning_rate: b for b in baselines}
            pairs = [(m, by_lr[m.learning_rate]) for m in mbc if m.learning_rate in by_lr]
            if not pairs:
                raise Missing("no MBC run with a baseline at its learning rate")
            return fn(pairs, figs)
        return measure

    rows[8:8] = [_claim(finding, statistic, rule, on_mbc(fn)) for finding, statistic, rule, fn in MBC_FINDINGS]
    return rows


VERDICT_WORDS = (f"**{HOLDS}**: every CI lies on the finding's side of its bound; **{CONTRADICTED}**: a CI (widened "
                 "for the row's number of tests, Bonferroni) lies wholly on the other side (for the two-sided "
                 "membership row: within its margin of 0); **{INCONCLUSIVE}**: "
                 "neither, with the effect beyond the bound the sample could have detected (80% power); "
                 f"**{UNMEASURED}**: an input is missing, with the reason").replace("{INCONCLUSIVE}", INCONCLUSIVE)


MEMBERSHIP_READING = (
    "Reading the membership row (issue 32): each run's AUC is the chance that a training record (member) has a lower "
    "loss than a validation record (non-member) at the last snapshot, 0.5 being chance; the row tests MBC's minus "
    "uniform's, the same records in both runs. **holds** means MBC changes the attack's success in one direction at "
    "every rate (above 0: MBC's training records are easier to tell from held-out ones, a privacy cost; below: "
    "harder); **contradicted** means the two AUCs lie within +-0.05 of each other; **inconclusive** gives the "
    "difference the sample could have found. The non-members are a random hold-out of the same data (or the "
    "demo's held-out suite from the same generator), so the AUCs measure memorization rather than the shift in "
    "distribution that MIMIR (Duan et al. 2024) found behind many reported membership successes; the step-0 AUC in "
    "the membership section (near 0.5) checks it.")


def markdown(rows: Sequence[Claim]) -> str:
    """The claims section of REPORT.md: the conventions, then one row per finding."""
    counts = {v: sum(r.verdict == v for r in rows) for v in VERDICTS}
    head = ("## Claims check\n\n"
            f"Of {len(rows)} findings: {counts[HOLDS]} hold, {counts[CONTRADICTED]} contradicted, "
            f"{counts[INCONCLUSIVE]} inconclusive, {counts[UNMEASURED]} not measured. Computed by "
            "`experiments/claims.py` from the run folders and figures below; no verdict is written by hand. The SFT "
            "findings are tested on the baseline (uniform) runs at each learning rate; values are point estimates "
            f"with 95% percentile-bootstrap CIs ([lo, hi]; {N_BOOT} resamples, seed {SEED}, over records, prompts or "
            f"judged pairs). Verdicts: {VERDICT_WORDS}. Each rule's false-holds and false-contradicted rates under a "
            "simulated null at this scale's sizes are in experiments/README.md.\n\n")
    table = common.markdown_table(
        [[r.finding, r.statistic, "; ".join(r.values) or "n/a", r.rule,
          f"**{r.verdict}**" + (f": {r.why}" if r.why else "")] for r in rows],
        ["finding", "statistic (definition)", "measured [95% CI]", "rule", "verdict"])
    reading = f"\n{MEMBERSHIP_READING}\n" if any(r.finding == MBC_FINDINGS[3][0] for r in rows) else ""
    return head + table + "\n" + reading
