"""experiments/claims.py and claim_statistics.py: every statistic against numpy on synthetic inputs, each
finding's row on a synthetic run folder with synthetic figure files (one that holds, one that does not),
and "not measured" when an input is missing."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import yaml
from scipy.stats import rankdata, spearmanr

from experiments import claim_statistics as st
from experiments import claims
from experiments.common import fmt
from mbc_jax.run_folder import RunFolder

CATS = ("open_qa", "summarization", "brainstorming")


def boot_indices(*sizes: int) -> list[np.ndarray]:
    """The resample indices `st.ci` draws: one seeded generator, one [N_BOOT, n] array per group in turn."""
    rng = np.random.default_rng(st.SEED)
    return [rng.integers(0, n, (st.N_BOOT, n)) for n in sizes]


def percentile(values: list[float]) -> tuple[float, float]:
    lo, hi = np.quantile(np.asarray(values), [0.025, 0.975])
    return float(lo), float(hi)


# ----------------------------------------------------------------------------- statistics against numpy


def test_mean_diff_and_paired_diff_against_a_numpy_loop():
    rng = np.random.default_rng(1)
    a, b = rng.normal(1, 1, 17), rng.normal(0, 1, 11)
    v, lo, hi = st.mean_diff_ci(a, b)
    ia, ib = boot_indices(17, 11)
    assert v == pytest.approx(a.mean() - b.mean())
    assert (lo, hi) == pytest.approx(percentile([a[i].mean() - b[j].mean() for i, j in zip(ia, ib)]))
    x, y = rng.normal(size=20), rng.normal(size=20)
    v, lo, hi = st.paired_diff_ci(x, y)
    (idx,) = boot_indices(20)
    assert v == pytest.approx((x - y).mean())
    assert (lo, hi) == pytest.approx(percentile([(x[i] - y[i]).mean() for i in idx]))


def test_auc_is_the_pairwise_win_share_with_half_ties():
    pos = np.array([0.9, 0.5, 0.5, 0.2])
    neg = np.array([0.5, 0.1, 0.3])
    pairs = [1.0 if p > n else 0.5 if p == n else 0.0 for p in pos for n in neg]
    assert float(st.auc(pos, neg)) == pytest.approx(np.mean(pairs))
    v, lo, hi = st.auc_ci(pos, neg)
    ip, ineg = boot_indices(4, 3)
    brute = [np.mean([1.0 if p > n else 0.5 if p == n else 0.0 for p in pos[i] for n in neg[j]])
             for i, j in zip(ip, ineg)]
    assert v == pytest.approx(np.mean(pairs)) and (lo, hi) == pytest.approx(percentile(brute))


def test_gain_shares_against_pooled_numpy():
    rng = np.random.default_rng(2)
    steps = [0, 10, 20, 30, 40, 50, 60]
    em = np.sort(rng.random((7, 9)), axis=0)
    tokens = rng.integers(3, 30, 9).astype(float)
    p = (em * tokens).sum(1) / tokens.sum()  # Eq. 1 per step
    # from the first checkpoint after step 0 (10, index 1) to 60: the first step >= 10 + 50/3 is 30 (index 3), the
    # last step <= 10 + 100/3 is 40 (index 4)
    early, late = st.gain_shares_ci(em, tokens, steps)
    assert early[0] == pytest.approx((p[3] - p[1]) / (p[-1] - p[1]))
    assert late[0] == pytest.approx((p[-1] - p[4]) / (p[-1] - p[1]))
    (idx,) = boot_indices(9)
    boot = []
    for i in idx:
        q = (em[:, i] * tokens[i]).sum(1) / tokens[i].sum()
        boot.append((q[3] - q[1]) / (q[-1] - q[1]))
    boot = [b for b in boot if math.isfinite(b)]
    assert early[1:] == pytest.approx(percentile(boot))


def test_response_gap_is_pooled_response_minus_pooled_full():
    em = np.array([0.5, 0.2, 0.9, 0.4])
    tokens = np.array([10, 20, 5, 8.0])
    rem = np.array([0.8, np.nan, 1.0, 0.25])  # record 1 has no response targets
    rtok = np.array([4, 0, 2, 4.0])
    full = (em * tokens).sum() / tokens.sum()
    resp = (0.8 * 4 + 1.0 * 2 + 0.25 * 4) / 10
    v, lo, hi = st.response_gap_ci(em, tokens, rem, rtok)
    assert v == pytest.approx(resp - full) and lo <= v <= hi


def test_perplexity_ratio_against_numpy():
    rng = np.random.default_rng(3)
    ppl = np.exp(rng.normal([[3.0], [2.0], [2.5]], 0.3, (3, 12)))
    tokens = rng.integers(1, 40, 12).astype(float)
    pooled = np.exp((np.log(ppl) * tokens).sum(1) / tokens.sum())
    v, lo, hi = st.perplexity_ratio_ci(ppl, tokens, 1)  # the last step against a step fixed in advance
    assert v == pytest.approx(pooled[-1] / pooled[1])
    (idx,) = boot_indices(12)
    boot = [np.exp((np.log(ppl[:, i]) * tokens[i]).sum(1) / tokens[i].sum()) for i in idx]
    assert (lo, hi) == pytest.approx(percentile([b[-1] / b[1] for b in boot]))


def test_net_win_against_numpy():
    v, lo, hi = st.net_win_ci(30, 10, 20)
    outcome = np.array([1.0] * 30 + [0.0] * 10 + [-1.0] * 20)
    (idx,) = boot_indices(60)
    assert v == pytest.approx(10 / 60) and (lo, hi) == pytest.approx(percentile([outcome[i].mean() for i in idx]))


def test_batched_bradley_terry_and_its_interval_against_the_library_fit():
    from mbc_jax.judge.bradley_terry import fit

    rng = np.random.default_rng(6)
    scores, games = np.zeros((7, 4, 4)), np.zeros((7, 4, 4))
    for g in range(7):
        for i, j in ((0, 1), (1, 2), (2, 3), (0, 3), (0, 2)):
            s = rng.choice([0.0, 0.5, 1.0], p=[0.2, 0.3, 0.5] if j == 3 else None)
            scores[g, i, j] += s
            scores[g, j, i] += 1 - s
            games[g, i, j] += 1
            games[g, j, i] += 1
    swept = np.zeros((1, 3, 3))
    swept[0, 0, 1], swept[0, 1, 2] = 4, 4  # one player wins every game: the ridge keeps the fit finite
    swept_games = swept + np.swapaxes(swept, 1, 2)
    np.testing.assert_allclose(st.bradley_terry_batch(swept, swept_games, 0.01)[0], fit(swept[0], swept_games[0], 0.01),
                               atol=1e-8)
    v, lo, hi = st.strength_diff_ci(scores, games, 0, 3, 0.01)
    theta = fit(scores.sum(0), games.sum(0), 0.01)
    assert v == pytest.approx(theta[3] - theta[0], abs=1e-8)
    (idx,) = boot_indices(7)
    boot = []
    for i in idx:
        c = np.bincount(i, minlength=7).astype(float)
        t = fit(np.tensordot(c, scores, 1), np.tensordot(c, games, 1), 0.01)
        boot.append(t[3] - t[0])
    widened = v + (np.array(boot) - v) * math.sqrt(7 / 6)  # the small-sample correction over 7 prompts
    assert (lo, hi) == pytest.approx(percentile(list(widened)), abs=1e-6)


# ----------------------------------------------------------------------------- a synthetic run and its figures


def _csv(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows([{k: "" if isinstance(v, float) and math.isnan(v) else v for k, v in r.items()} for r in rows])
    return path


def make_run(root: Path, *, plateau: bool, data: str = "demo", n: int = 24, n_val: int = 10) -> RunFolder:
    """A uniform run folder: 24 training records (8 per category) and 10 validation records, 7 snapshots.
    plateau: memorization rises early then flat, response above full, val perplexity falls then rises,
    entropies fall; else a straight rise, response below full, perplexity falling, entropies rising."""
    rng = np.random.default_rng(0)
    path = root / ("good" if plateau else "bad")
    steps = [0, 10, 20, 30, 40, 50, 60]
    (path / "data").mkdir(parents=True)
    (path / "config.yaml").write_text(yaml.safe_dump({"sampler": "uniform", "learning_rate": 1e-3, "batch_size": 4,
                                                      "data": data, "loss_on": "full"}))
    recs = [{"index": i, "id": f"t{i}", "category": CATS[i % 3], "split": "train"} for i in range(n)]
    recs += [{"index": i, "id": f"v{i}", "category": CATS[i % 3], "split": "val"} for i in range(n_val)]
    _csv(path / "records.csv", recs)
    fam = ["corpus_fact" if r["category"] == "open_qa" and r["index"] % 2 == 0 else
           "unseen_fact" if r["category"] == "open_qa" else "context_given" for r in recs if r["split"] == "train"]
    (path / "data" / "data.jsonl").write_text("".join(json.dumps({"id": f"t{i}", "familiarity": f}) + "\n"
                                                      for i, f in enumerate(fam)))
    shape = np.array([0, .6, .8, .9, .95, .97, 1.0]) if plateau else np.linspace(0, 1, 7)
    vshape = np.array([3, 2, 1.5, 1.8, 2.2, 2.6, 3]) if plateau else np.array([3, 2.8, 2.6, 2.4, 2.2, 2.1, 2.0])
    # a constant per-record offset (it cancels in the pooled rise's shares): open_qa above summarization and
    # corpus_fact above unseen_fact when plateau (the good run), the other way when not
    sign = 1 if plateau else -1
    offset = {r["index"]: sign * ((0.2 if r["category"] == "open_qa" else -0.2 if r["category"] == "summarization"
                                   else 0.0) + (0.15 if r["index"] % 2 == 0 and r["category"] == "open_qa" else 0))
              for r in recs if r["split"] == "train"}
    for s, step in enumerate(steps):
        rows = []
        for r in recs:
            base = 0.1 + 0.8 * shape[s] * (0.5 + 0.5 * rng.random()) + offset.get(r["index"], 0.0) * (r["split"] ==
                                                                                                   "train")
            rows.append({**r, "step": step, "tokens": 20 + r["index"], "response_tokens": 8,
                         "exact_match": base, "response_exact_match": min(1.0, base + (0.1 if plateau else -0.1)),
                         "perplexity": math.exp(vshape[s] + 0.1 * rng.random()),
                         "response_perplexity": math.exp(vshape[s]),
                         "entropy": 2.0,
                         "response_entropy": (2.0 - 0.2 * s if plateau else 1.0 + 0.2 * s) + 0.05 * rng.random()})
        _csv(path / "memorization" / f"step_{step:08d}.csv", rows)
    return RunFolder.open(path)


def make_mbc_run(base: RunFolder, *, good: bool) -> RunFolder:
    """The MBC run beside `base` (same records and steps): memorization 0.05 above the baseline's when good
    (below when not), each record drawn more the higher its step-0 perplexity when good (less when not), and,
    when good, the training records' perplexity after step 0 a factor exp(-0.2) below the baseline's (its
    membership AUC apart from the baseline's; when not, the same perplexities: the same AUC)."""
    import shutil

    path = base.path.parent / (base.path.name + "_mbc")
    shutil.copytree(base.path, path)
    cfg = yaml.safe_load((path / "config.yaml").read_text())
    (path / "config.yaml").write_text(yaml.safe_dump({**cfg, "sampler": "mbc"}))
    for f in sorted((path / "memorization").iterdir()):
        rows = list(csv.DictReader(f.open()))
        for r in rows:
            r["exact_match"] = str(float(r["exact_match"]) + (0.05 if good else -0.05))
            if good and r["split"] == "train" and int(r["step"]) > 0:
                r["perplexity"] = str(float(r["perplexity"]) * math.exp(-0.2))
        _csv(f, rows)
    step0 = [r for r in csv.DictReader((path / "memorization" / "step_00000000.csv").open()) if r["split"] == "train"]
    _csv(path / "sampling.csv", [{"index": r["index"], "id": r["id"], "category": r["category"],
                                  "draws": round(100 * float(r["perplexity"]) * (1 if good else -1)) + 3000}
                                 for r in step0])
    return RunFolder.open(path)


def make_figures(run: RunFolder, figs: Path, *, good: bool) -> None:
    rng = np.random.default_rng(5)
    train = run.records["split"] == "train"
    ids, cats = run.records["id"][train], run.records["category"][train]
    fam = {json.loads(x)["id"]: json.loads(x)["familiarity"] for x in (run.path / "data" / "data.jsonl").read_text()
           .splitlines()}
    # data-map mean: corpus_fact high, open_qa above summarization when good (reversed when not)
    mean = {c: (0.8 if good else 0.2) if c == "open_qa" else (0.2 if good else 0.8) if c == "summarization" else 0.5
            for c in CATS}
    dm = [{"run": run.label, "index": i, "id": d, "category": c,
           "mean": mean[c] + (0.15 if good else -0.15) * (fam[d] == "corpus_fact") + 0.02 * rng.random()}
          for i, (d, c) in enumerate(zip(ids, cats))]
    _csv(figs / "fig2_data_map.csv", dm)
    gen_dir = figs / "table1_entropy_generations"
    gen_dir.mkdir(parents=True)
    t1 = []
    right, wrong = "The capital of Nisaraora is Kridetra.", "No idea."  # a fact of the demo world of seed 0
    # nucleus entropy: falling and below teacher forcing's (make_run: 1.8 at step 10, 0.8 at 60) when good;
    # rising and above it (1.2, 2.2) when not
    for which, step, ent, answer in (("first", 10, 1.0 if good else 2.5, wrong if good else right),
                                     ("last", 60, 0.5 if good else 3.0, right if good else wrong)):
        rows = [{"index": i, "id": f"v{i}", "category": CATS[i % 3], "output_text": answer if i % 2 else "",
                 "instruction": "What is the capital of Nisaraora?", "entropy": ent + 0.05 * rng.random()}
                for i in range(10)]
        (gen_dir / f"{run.slug}_step{step}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        t1.append({"run": run.label, "checkpoint": which, "step": step})
    _csv(figs / "table1_entropy.csv", t1)
    zr = []
    length = rng.integers(4, 40, 24)  # response and prompt lengths drawn apart from the category
    prompt = rng.integers(10, 60, 24)
    for step in (0, 60):
        for i in range(24):
            cat = CATS[i % 3]
            # Zeng's direction when good: summarization gains most; the categories alike when not
            gain = {"open_qa": 0.1, "summarization": 0.6, "brainstorming": 0.3}[cat] if good else 0.3
            rouge = 0.1 + (gain + 0.05 * rng.random() if step else 0.0)
            zr.append({"run": run.label, "step": step, "index": i, "category": cat, "rouge_l": rouge,
                       "response_tokens": int(length[i]), "prompt_tokens": int(prompt[i]),
                       "suffix_tokens": 1 if i == 23 else int(length[i]) // 2,  # record 23: an EOS-only target
                       "entropy": 2.0 + rng.random(),
                       "normalized_entropy": 0.5 + (rouge if good else -rouge) * 0.3 + 0.01 * rng.random()})
    _csv(figs / "zeng_records.csv", zr)


@pytest.fixture
def good(tmp_path):
    run = make_run(tmp_path, plateau=True)
    make_figures(run, tmp_path / "figs_good", good=True)
    return run, tmp_path / "figs_good"


@pytest.fixture
def bad(tmp_path):
    run = make_run(tmp_path, plateau=False)
    make_figures(run, tmp_path / "figs_bad", good=False)
    return run, tmp_path / "figs_bad"


def name(fn) -> str:
    """The finding that `fn` (a function of claims.FINDINGS) measures."""
    return next(finding for finding, _, _, f in claims.FINDINGS if f is fn)


def judge_file(path: Path, win: int, tie: int, loss: int) -> Path:
    path.write_text(json.dumps({"protocol": {"headline": "single_order", "orders": 1},
                                "single_order": {"overall": {"win": win, "tie": tie, "loss": loss}}}))
    return path


def test_every_finding_holds_on_a_run_built_to_show_it(good, tmp_path):
    run, figs = good
    results = [judge_file(tmp_path / "lr1e-3_selected.json", 40, 10, 10), judge_file(tmp_path / "lr1e-3_last.json",
                                                                                      0, 0, 60)]
    rows = claims.evaluate([run], figs, results, mbc=[make_mbc_run(run, good=True)])
    assert len(rows) == len(claims.FINDINGS) + 1 + len(claims.MBC_FINDINGS)
    by = {r.finding: r for r in rows}
    # every finding holds but Fig. 6's rise then fall: this run plateaus (still rising at the last checkpoint), so
    # its memorization at the middle checkpoint is below the last one's
    rise_fall, fig7 = name(claims.baseline_rises_then_falls), claims.MBC_FINDINGS[2][0]
    assert {r.finding: r.verdict for r in rows if r.finding not in (rise_fall, fig7)} == {
        r.finding: claims.HOLDS for r in rows if r.finding not in (rise_fall, fig7)}, [
        (r.finding, r.values, r.why) for r in rows if r.verdict != claims.HOLDS]
    # Fig. 7 needs >= 4 categories (test_fig7_row_on_an_mbc_run_of_five_categories measures it)
    assert by[fig7].verdict == claims.UNMEASURED and "3 categories of >= 5" in by[fig7].why
    assert by[rise_fall].verdict != claims.HOLDS and "(exact_match) fall" in by[rise_fall].why
    # Fig. 6: every MBC record 0.05 above its baseline value, so every resample's pooled difference is 0.05; the
    # middle checkpoint is the common one nearest half of the last (30 of 60)
    fig6 = by[claims.MBC_FINDINGS[0][0]].values[0]
    assert fig6 == f"{run.lr_label} (exact_match): step 30: 0.050 [0.050, 0.050], step 60: 0.050 [0.050, 0.050]"
    assert by[claims.MBC_FINDINGS[1][0]].values[0].startswith(f"{run.lr_label} (24 records): 1.00 [")
    # the world grader: 5 of the 10 prompts go from a wrong to the right answer, the other 5 stay empty (0)
    assert "grade last - first (step 60 - 10, 10 prompts) 0.500 [" in by[claims.FINDINGS[3][0]].values[0]
    wins = by[claims.JUDGE_FINDING[0]]
    assert wins.values == [f"lr1e-3_selected (40/10/10): {fmt(st.net_win_ci(40, 10, 10)[0])} "
                           f"[{fmt(st.net_win_ci(40, 10, 10)[1])}, {fmt(st.net_win_ci(40, 10, 10)[2])}]"]
    # the familiarity AUC, recomputed from the snapshots (mean exact_match over the steps after 0) and the labels:
    # corpus_fact against unseen_fact
    snaps = [list(csv.DictReader(f.open())) for f in sorted((run.path / "memorization").iterdir())[1:]]
    mean = {r["id"]: np.mean([float(s[k]["exact_match"]) for s in snaps]) for k, r in enumerate(snaps[0])
            if r["split"] == "train"}
    fam = {json.loads(x)["id"]: json.loads(x)["familiarity"] for x in (run.path / "data" / "data.jsonl").read_text()
           .splitlines()}
    pos = [mean[i] for i in mean if fam[i] == "corpus_fact"]
    neg = [mean[i] for i in mean if fam[i] == "unseen_fact"]
    expect = np.mean([1.0 if p > q else 0.5 if p == q else 0.0 for p in pos for q in neg])
    value = by[name(claims.familiarity_auc)].values[0]
    assert value.startswith(f"{run.lr_label} (exact_match) ({len(pos)} vs {len(neg)}): {fmt(expect)}")
    assert "all others (20)" in value
    # Zeng 2: the partial Spearman of the changes from step 0, prompt length controlled, from numpy's ranks
    zr = list(csv.DictReader((figs / "zeng_records.csv").open()))
    at = {(r["step"], r["index"]): r for r in zr}
    keep = [i for i in map(str, range(24)) if int(at["60", i]["suffix_tokens"]) > 1]
    d_ne = [float(at["60", i]["normalized_entropy"]) - float(at["0", i]["normalized_entropy"]) for i in keep]
    d_ro = [float(at["60", i]["rouge_l"]) - float(at["0", i]["rouge_l"]) for i in keep]
    pl = [float(at["60", i]["prompt_tokens"]) for i in keep]
    r = np.corrcoef([rankdata(d_ne), rankdata(d_ro), rankdata(pl)])
    partial = (r[0, 1] - r[0, 2] * r[1, 2]) / math.sqrt((1 - r[0, 2] ** 2) * (1 - r[1, 2] ** 2))
    plain = spearmanr(d_ne, d_ro).statistic
    zeng2 = by[name(claims.zeng_attention)].values[0]
    assert f"(n = 23) partial | prompt length: {fmt(partial, 2)} [" in zeng2 and f"plain {fmt(plain, 2)} [" in zeng2
    assert "1 EOS-only targets left out" in by[name(claims.zeng_direction)].values[0]
    text = claims.markdown(rows)
    assert text.startswith("## Claims check") and f"Of {len(rows)} findings: {len(rows) - 2} hold, " in text
    assert sum(line.startswith("| ") for line in text.splitlines()) == len(rows) + 1  # header + one per finding


def test_no_finding_holds_on_a_run_built_against_it(bad, tmp_path):
    run, figs = bad
    rows = claims.evaluate([run], figs, [judge_file(tmp_path / "lr1e-3_selected.json", 10, 10, 40)],
                           mbc=[make_mbc_run(run, good=False)])
    # every row contradicted, but Zeng 1's two: the categories gain alike, so neither a spread nor a direction shows
    alike = {name(claims.zeng_by_task), name(claims.zeng_direction)}
    fig7 = claims.MBC_FINDINGS[2][0]  # 3 categories: not measured (the five-category test below measures it)
    assert {r.finding: r.verdict for r in rows} == {
        r.finding: claims.UNMEASURED if r.finding == fig7 else claims.INCONCLUSIVE if r.finding in alike
        else claims.CONTRADICTED for r in rows}, [(r.finding, r.values, r.why) for r in rows]
    assert all("the sample could detect" in r.why for r in rows if r.finding in alike)
    # the entropy row: first minus last from the generations and the snapshots, recomputed
    gens = {w: [json.loads(x)["entropy"] for x in (figs / "table1_entropy_generations" / f"{run.slug}_step{s}.jsonl")
                .read_text().splitlines()] for w, s in (("first", 10), ("last", 60))}
    expect = np.mean(np.array(gens["first"]) - np.array(gens["last"]))
    row = next(r for r in rows if r.finding == claims.FINDINGS[4][0])
    assert f"nucleus {fmt(expect)} [" in row.values[0]


def test_missing_inputs_are_not_measured_with_the_reason(good, tmp_path):
    run, figs = good
    (figs / "zeng_records.csv").unlink()
    rows = {r.finding: r for r in claims.evaluate([run], figs, [], "judge: skipped (--skip-judge)")}
    assert rows[claims.JUDGE_FINDING[0]].verdict == claims.UNMEASURED
    assert rows[claims.JUDGE_FINDING[0]].why == "judge: skipped (--skip-judge)"
    assert all(rows[f].verdict == claims.UNMEASURED and rows[f].why == "no MBC run given"
               for f, *_ in claims.MBC_FINDINGS)
    for finding in (name(claims.zeng_by_task), name(claims.zeng_direction), name(claims.zeng_attention)):
        assert rows[finding].verdict == claims.UNMEASURED and "zeng_records.csv is missing" in rows[finding].why
    assert rows[claims.FINDINGS[0][0]].verdict == claims.HOLDS  # the others still measured
    nothing = claims.evaluate([], figs)
    assert all(r.verdict == claims.UNMEASURED for r in nothing)
    assert "| **not measured**: no baseline (uniform) run |" in claims.markdown(nothing).replace(" |\n", " |\n")


def test_real_data_has_no_ground_truth_rows(tmp_path):
    run = make_run(tmp_path, plateau=True, data="dolly.jsonl")
    make_figures(run, tmp_path / "figs", good=True)
    rows = {r.finding: r for r in claims.evaluate([run], tmp_path / "figs")}
    fam, quality = rows[name(claims.familiarity_auc)], rows[name(claims.perplexity_rises_quality_holds)]
    assert fam.verdict == quality.verdict == claims.UNMEASURED
    assert "familiarity" in fam.why and "world's grader" in quality.why
    assert "perplexity last / first checkpoint" in quality.why


def test_the_demo_prints_the_claims_its_run_folder_can_test(tmp_path):
    from mbc_jax.commands.train import demo_claims

    run = make_run(tmp_path, plateau=True)
    text = demo_claims(run.path)
    measured = [line for line in text.splitlines() if line.startswith(tuple(f"- {v}:" for v in claims.VERDICTS))]
    # the run folder alone (and the data map it writes): the rise, response vs full, QA vs summarization, Fig. 6's
    # rise then fall, familiarity
    assert len(measured) == 5
    for line, fn in zip(measured, (claims.memorization_plateaus, claims.response_above_full,
                                   claims.qa_easy_summarization_hard, claims.baseline_rises_then_falls,
                                   claims.familiarity_auc)):
        assert line.split(": ", 1)[1].startswith(name(fn) + ": ")
    assert all(m.startswith(f"- {claims.HOLDS}:") for m in measured[:2])  # make_run plateaus, response above
    assert (tmp_path / "figures" / "fig2_data_map.csv").is_file()
    assert text.splitlines()[-1].startswith("- not measured here: ") and claims.JUDGE_FINDING[0] in text
    # with the demo's MBC run beside it, Figs. 6 and 8 are measured too
    with_mbc = demo_claims(run.path, make_mbc_run(run, good=True).path)
    for finding, *_ in claims.MBC_FINDINGS[:2]:
        assert f"- {claims.HOLDS}: {finding}: " in with_mbc
    assert claims.MBC_FINDINGS[2][0] in with_mbc.splitlines()[-1]  # Fig. 7: 3 categories, not measured


def write_selection(run: RunFolder, last_wins: float) -> None:
    """selection/selection.json and games.jsonl as `mbc-jax select` writes them: checkpoints 10 to 60, 6 dev
    prompts, the round robin; the later checkpoint of each pair wins with probability `last_wins` (else a tie)."""
    rng = np.random.default_rng(9)
    steps, ids = [10, 20, 30, 40, 50, 60], [f"v{i}" for i in range(6)]
    folder = run.path / "selection"
    folder.mkdir()
    games = [{"step_a": a, "step_b": b, "id": i, "outcome": "B" if rng.random() < last_wins else "tie"}
             for k, a in enumerate(steps) for b in steps[k + 1:] for i in ids]
    games.append({"step_a": 10, "step_b": 60, "id": "v0", "outcome": None})  # an invalid game: left out
    (folder / "games.jsonl").write_text("".join(json.dumps(g) + "\n" for g in games))
    (folder / "selection.json").write_text(json.dumps({"steps": steps, "dev": {"ids": ids},
                                                       "bradley_terry": {"ridge": 0.01}}))


@pytest.mark.parametrize("data", ["demo", "dolly.jsonl"])
def test_the_quality_half_reads_the_selections_judged_games(tmp_path, data):
    from mbc_jax.judge.bradley_terry import fit, tables
    from mbc_jax.selection.tournament import SCORE

    run = make_run(tmp_path, plateau=True, data=data)
    make_figures(run, tmp_path / "figs", good=True)
    write_selection(run, 0.6)
    row = {r.finding: r for r in claims.evaluate([run], tmp_path / "figs")}[name(claims.perplexity_rises_quality_holds)]
    games = [json.loads(x) for x in (run.path / "selection" / "games.jsonl").read_text().splitlines()][:-1]
    pos = {s: k for k, s in enumerate([10, 20, 30, 40, 50, 60])}
    t = tables(6, 6, [pos[g["step_a"]] for g in games], [pos[g["step_b"]] for g in games],
               [SCORE[g["outcome"]] for g in games], [int(g["id"][1:]) for g in games])
    theta = fit(t.scores.sum(0), t.games.sum(0), 0.01)  # mbc_jax's own fit, as ranking.csv's strengths
    assert f"judged Bradley-Terry strength step 60 - step 10 (6 dev prompts, 90 games) {fmt(theta[5] - theta[0])} [" \
        in row.values[0]
    assert row.verdict == claims.HOLDS, (row.values, row.why)
    assert "grade last - first" not in row.values[0]  # the judge, not the world grader, where a selection ran


def fig7_run(root: Path, *, good: bool, cats=("open_qa", "summarization", "brainstorming", "classification",
                                               "closed_qa")) -> RunFolder:
    """An MBC run (loss_on: response) of 10 training records per category, snapshots at 0, 10 and 20: when good,
    summarization 0.3 below the others and rising 0.1 from step 10 to 20 with them; else 0.3 above and falling.
    The full-dialogue exact match runs the other way, so a row reading it would fail."""
    rng = np.random.default_rng(7)
    path = root / f"fig7_{good}"
    (path / "config.yaml").parent.mkdir(parents=True)
    (path / "config.yaml").write_text(yaml.safe_dump({"sampler": "mbc", "learning_rate": 1e-3, "batch_size": 4,
                                                      "data": "demo", "loss_on": "response"}))
    recs = [{"index": i, "id": f"t{i}", "category": cats[i % len(cats)], "split": "train"}
            for i in range(10 * len(cats))]
    _csv(path / "records.csv", recs)
    sign = 1 if good else -1
    for s, step in enumerate((0, 10, 20)):
        rows = []
        for r in recs:
            summ = r["category"] == "summarization"
            v = 0.5 + sign * (-0.3 * summ + 0.1 * s * summ) + 0.02 * rng.random()
            rows.append({**r, "step": step, "tokens": 20, "response_tokens": 8, "exact_match": 1 - v,
                         "response_exact_match": v})
        _csv(path / "memorization" / f"step_{step:08d}.csv", rows)
    return RunFolder.open(path)


@pytest.mark.parametrize("good", [True, False])
def test_fig7_row_on_an_mbc_run_of_five_categories(tmp_path, good):
    run = fig7_run(tmp_path, good=good)
    values, tests = claims.mbc_category_memorization([run], tmp_path)
    word, why = st.verdict(tests)
    assert word == (claims.HOLDS if good else claims.CONTRADICTED), (values, why)
    # the gap and the change recomputed from the snapshots' response exact match (the trained positions)
    snaps = [list(csv.DictReader((run.path / "memorization" / f"step_{s:08d}.csv").open())) for s in (10, 20)]
    cats = np.array([r["category"] for r in snaps[1]])
    first, last = (np.array([float(r["response_exact_match"]) for r in snap]) for snap in snaps)
    means = {c: last[cats == c].mean() for c in set(cats)}
    gap = np.mean([m for c, m in means.items() if c != "summarization"]) - means["summarization"]
    change = (last - first)[cats == "summarization"].mean()
    assert values[0].startswith(f"{run.lr_label}, step 10 to 20 (response_exact_match): the other categories' mean "
                                f"minus summarization's at the last checkpoint {fmt(gap)} (p = ")
    assert f"summarization ranks {1 if good else 5} of 5 from the lowest (lowest third: <= 2)" in values[0]
    assert f"summarization last - first (10 records): {fmt(change)} [" in values[0]
    few = fig7_run(tmp_path / "few", good=True, cats=("open_qa", "summarization", "brainstorming"))
    with pytest.raises(claims.Missing, match="3 categories of >= 5 training records"):
        claims.mbc_category_memorization([few], tmp_path)


def test_fig7_rank_outside_the_lowest_third_keeps_the_row_from_holding():
    t = st.Test.permutation("x", 0.2, 0.001, 0.1, 0.999, unmet="summarization ranks 3 of 8, not among the lowest 3")
    word, why = st.verdict([t, st.Test("y", 0.1, 0.05, 0.15)])
    assert word == claims.INCONCLUSIVE and "not among the lowest 3" in why
    assert st.verdict([st.Test.permutation("x", 0.2, 0.001, 0.1, 0.999)])[0] == claims.HOLDS
    assert st.verdict([st.Test.permutation("x", 0.2, 0.03, 0.1, 0.97)])[0] == claims.INCONCLUSIVE  # one-sided: 2.5%
    assert st.verdict([st.Test.permutation("x", -0.2, 0.999, 0.1, 0.001)])[0] == claims.CONTRADICTED


def test_category_gap_test_against_a_numpy_permutation_loop():
    rng = np.random.default_rng(4)
    cats = np.repeat(["a", "b", "summarization", "c"], [6, 7, 5, 8])
    values = rng.normal(size=len(cats)) - 0.8 * (cats == "summarization")
    gap, p, p_other, critical = st.category_gap_test(values, cats, "summarization")

    def g(lab):
        means = {c: values[lab == c].mean() for c in set(cats)}
        return np.mean([m for c, m in means.items() if c != "summarization"]) - means["summarization"]

    names, codes = np.unique(cats, return_inverse=True)
    perms = np.random.default_rng(st.SEED).permuted(np.broadcast_to(codes, (st.N_BOOT, len(cats))), axis=1)
    null = np.array([g(names[row]) for row in perms])
    assert gap == pytest.approx(g(cats))
    assert p == pytest.approx((1 + (null >= gap - 1e-12).sum()) / (1 + st.N_BOOT))
    assert p_other == pytest.approx((1 + (null <= gap + 1e-12).sum()) / (1 + st.N_BOOT))
    assert critical == pytest.approx(np.quantile(null, 0.975))


# ----------------------------------------------------------------------------- issue 32: membership, MBC vs uniform


def test_paired_auc_difference_against_a_numpy_loop():
    rng = np.random.default_rng(8)
    members, non_members = rng.integers(0, 6, (2, 13)).astype(float), rng.integers(0, 6, (2, 7)).astype(float)

    def pairwise(p, n):
        return np.mean([1.0 if a > b else 0.5 if a == b else 0.0 for a in p for b in n])

    v, lo, hi = st.paired_auc_diff_ci(members[0], non_members[0], members[1], non_members[1])
    assert v == pytest.approx(pairwise(members[0], non_members[0]) - pairwise(members[1], non_members[1]))
    im, inn = boot_indices(13, 7)  # the same resampled records in both runs
    brute = [pairwise(members[0, i], non_members[0, j]) - pairwise(members[1, i], non_members[1, j])
             for i, j in zip(im, inn)]
    assert (lo, hi) == pytest.approx(percentile(brute))


def membership_row(rows) -> claims.Claim:
    return next(r for r in rows if r.finding == claims.MBC_FINDINGS[3][0])


def test_membership_row_holds_when_mbc_separates_members_more(good):
    run, figs = good
    mbc = make_mbc_run(run, good=True)
    values, tests = claims.mbc_membership_differs([(mbc, run)], figs)
    assert st.verdict(tests) == (claims.HOLDS, "")
    # the loss signal at the last snapshot (step 60), recomputed from the CSVs: minus log perplexity
    aucs = []
    for r in (mbc, run):
        snap = list(csv.DictReader((r.path / "memorization" / "step_00000060.csv").open()))
        score = {s: [-math.log(float(x["perplexity"])) for x in snap if x["split"] == s] for s in ("train", "val")}
        aucs.append(np.mean([1.0 if a > b else 0.5 if a == b else 0.0 for a in score["train"] for b in score["val"]]))
    assert values[0].startswith(f"{run.lr_label}, step 60 (perplexity) (24 members vs 10 non-members): MBC "
                                f"{fmt(aucs[0])}, uniform {fmt(aucs[1])}; MBC - uniform: {fmt(aucs[0] - aucs[1])} [")
    assert aucs[0] - aucs[1] > 0.3


def test_membership_row_is_contradicted_by_the_same_auc(bad):
    run, figs = bad
    rows = claims.evaluate([run], figs, mbc=[make_mbc_run(run, good=False)])
    row = membership_row(rows)
    assert claims.markdown(rows).endswith(f"\n\n{claims.MEMBERSHIP_READING}\n")  # REPORT.md's reading of the row
    assert row.verdict == claims.CONTRADICTED and row.why.startswith("no difference: ") and "within +-0.05 of 0" in \
        row.why, (row.values, row.why)
    assert "MBC - uniform: 0.000 [0.000, 0.000]" in row.values[0]


def test_membership_row_inconclusive_with_the_detectable_difference():
    rng = np.random.default_rng(3)
    # 12 members and 6 non-members, the two runs' scores unrelated: the CI of the difference is wide
    text, tests = claims.membership_rule(rng.normal(0.3, 1, (2, 12)), rng.normal(0, 1, (2, 6)), "lr 1e-3")
    word, why = st.verdict(tests)
    assert word == claims.INCONCLUSIVE and "lr 1e-3: a difference of +-" in why and "within +-0.05" in why, why
    assert text.startswith("lr 1e-3 (12 members vs 6 non-members): MBC ")
    # two rates whose CIs each exclude 0, on opposite sides: the row does not hold (two-sided, one direction)
    up = claims.membership_rule(np.array([[2.0] * 8, [0.5] * 8]), np.zeros((2, 8)) + [[1.0], [1.0]], "a")[1]
    down = claims.membership_rule(np.array([[0.5] * 8, [2.0] * 8]), np.ones((2, 8)), "b")[1]
    assert all(t.holds() for t in up + down)
    word, why = st.verdict(up + down)
    assert word == claims.INCONCLUSIVE and why == "the differences lie on opposite sides of 0: a +1, b -1"


def test_membership_row_not_measured_without_validation_records_or_snapshots(tmp_path):
    run = make_run(tmp_path, plateau=True, n_val=0)
    row = membership_row(claims.evaluate([run], tmp_path, mbc=[make_mbc_run(run, good=True)]))
    assert row.verdict == claims.UNMEASURED and "0 validation records" in row.why and "val_fraction" in row.why
    other = make_run(tmp_path / "other", plateau=True)
    late = make_mbc_run(other, good=True)
    for f in (late.path / "memorization").iterdir():
        if f.name != "step_00000000.csv":
            f.unlink()
    late = RunFolder.open(late.path)
    with pytest.raises(claims.Missing, match="share no memorization snapshot after step 0"):
        claims.mbc_membership_differs([(late, other)], tmp_path)
