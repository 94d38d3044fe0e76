"""Zeng et al.'s two claims about fine-tuned models, tested on these runs: memorization differs by task,
and it goes with how attention is distributed. One command, one Markdown section (REPORT.md's).

    python -m experiments.zeng --runs runs/demo/mbc runs/demo/uniform --out figures/ \
        [--steps all] [--prefix-fraction 0.5 | --prefix-tokens N] [--window response|pythia] \
        [--threshold 0.5] [--top-k 5] [--max-records 200] [--no-attention] [--no-baseline]

For each run and each checkpoint (default: every saved one, step 0 always included: the model before
fine-tuning is the baseline) the checkpoint is loaded once and
1. extraction memorization (experiments.extraction_memorization) of the selected training records:
   prompt + first part of the response, greedy continuation against the rest of the response;
2. attention concentration (experiments.attention_concentration): the attention of the positions that
   produce the response over the prompt, per layer and head, from the model's own sown softmax.
Written to `--out`: zeng.md (the section), zeng_extraction.png / .csv (per category and step, ranked,
with CIs and the change from step 0), zeng_records.csv (every record at every step), zeng_attention.png,
zeng_correlations.csv, zeng_heads.csv and zeng_attention_maps.png (a memorized and an unmemorized
record of one category).
"""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Sequence

import numpy as np

from experiments import attention_concentration as att
from experiments import common
from experiments import extraction_memorization as ext
from experiments.common import Artifact, fmt
from mbc_jax.generate import EXTRACTION_MAX_NEW_TOKENS
from mbc_jax.run_folder import RunFolder

NAME = "zeng"
TITLE = "Zeng et al.: memorization by task, and attention concentration"
RECORD_COLUMNS = (*ext.RECORD_COLUMNS, *att.MEASURES)
MIN_RECORDS = 5  # per category, for a verdict on whether two tasks differ
CLAIMS = ("Zeng et al. (2024, *Exploring Memorization in Fine-tuned Language Models*) claim that (1) memorization "
          "in fine-tuned models differs sharply between tasks (summarization and dialog far above classification, "
          "QA and translation in their runs), and (2) that it goes with how attention is distributed (tasks with "
          "high memorization have more uniform attention, low memorization more concentrated attention).")


def pick_pair(rows: list[dict], threshold: float) -> tuple[str, dict, dict] | None:
    """(category, most extracted record, least extracted record) of the category whose records differ
    most, preferring one where the first is memorized (ROUGE-L >= threshold) and the second is not."""
    best = None
    for cat in sorted({r["category"] for r in rows}):
        sel = [r for r in rows if r["category"] == cat and math.isfinite(r.get(att.HEADLINE, math.nan))]
        if len(sel) < 2:
            continue
        hi, lo = max(sel, key=lambda r: r["rouge_l"]), min(sel, key=lambda r: r["rouge_l"])
        key = (hi["rouge_l"] >= threshold > lo["rouge_l"], hi["rouge_l"] - lo["rouge_l"])
        if best is None or key > best[0]:
            best = (key, cat, hi, lo)
    return None if best is None else best[1:]


def measure_run(run: RunFolder, steps: Sequence[int], *, attention: bool, top_k: int, tokens_per_batch: int,
                threshold: float, **opts) -> tuple[list[dict], list[dict], dict | None]:
    """(record rows with extraction and attention values, per-head rows, the attention maps of the last step)."""
    heads: list[dict] = []
    maps: dict = {}

    def per_step(model, step, examples, cuts, rows):
        spans = [(c.prompt_tokens, c.prompt_tokens + c.response_tokens) for c in cuts]
        values = att.prompt_concentration(model, examples, spans, top_k=top_k, tokens_per_batch=tokens_per_batch)
        for m, v in att.record_means(values).items():
            for row, x in zip(rows, v):
                row[m] = float(x)
        windows = [w if w < 1 << 29 else 0 for w in model.config.layer_windows]
        heads.extend(att.head_rows(run.label, step, values, np.array([r["rouge_l"] for r in rows]), windows))
        pair = pick_pair(rows, threshold) if step == steps[-1] else None
        if pair:
            cat, hi, lo = pair
            where = {e.index: (e, s) for e, s in zip(examples, spans)}
            labels = ("memorized" if hi["rouge_l"] >= threshold else "most extracted",
                      "unmemorized" if lo["rouge_l"] < threshold else "least extracted")
            maps.update(run=run.label, step=step, category=cat, pairs=[
                (label, r, att.attention_map(model, *where[r["index"]]), where[r["index"]][1][0])
                for r, label in zip((hi, lo), labels)])

    records = ext.measure(run, steps, per_step=per_step if attention else None, **opts)
    return records, heads, (maps or None)


# ----------------------------------------------------------------------------- the section's text


def _ci(s: dict, name: str, digits: int = 3) -> str:
    return f"{fmt(s[name], digits)} (95% CI {fmt(s[name + '_lo'], digits)} to {fmt(s[name + '_hi'], digits)})"


def _verdict(c: dict, expected_sign: int) -> str:
    lo, hi = c["spearman_lo"], c["spearman_hi"]
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return "too few points to tell"
    if lo > 0 or hi < 0:
        return "in Zeng's direction" if (lo > 0) == (expected_sign > 0) else "against Zeng's direction"
    return "the interval includes zero"


def claim1(run: str, summary: list[dict], threshold: float) -> str:
    last = max(s["step"] for s in summary if s["run"] == run)
    cats = sorted((s for s in summary if s["run"] == run and s["step"] == last and s["category"] != "all"),
                  key=lambda s: s["rank"])
    a = next(s for s in summary if s["run"] == run and s["step"] == last and s["category"] == "all")
    text = (f"**{run}**, step {last}: ROUGE-L of the continuations {_ci(a, 'rouge_l')}, change from step 0 "
            f"{_ci(a, 'rouge_l_change')}; memorization ratio (ROUGE-L >= {threshold:g}) {common.pct(a['ratio'])}.")
    if len(cats) < 2:
        return text + " One category only: no comparison between tasks."
    top, bottom = cats[0], cats[-1]
    by_change = sorted(cats, key=lambda s: -s["rouge_l_change"])
    hi, lo = by_change[0], by_change[-1]
    apart = hi["rouge_l_change_lo"] > lo["rouge_l_change_hi"]
    enough = min(hi["records"], lo["records"]) >= MIN_RECORDS
    text += (f" Ranked by ROUGE-L, {top['category']} is first ({fmt(top['rouge_l'])}, {top['response_tokens']:.0f} "
             f"response tokens on average) and {bottom['category']} last ({fmt(bottom['rouge_l'])}, "
             f"{bottom['response_tokens']:.0f} tokens). What fine-tuning added (change from step 0) ranges from "
             f"{_ci(lo, 'rouge_l_change')} ({lo['category']}, {lo['records']} records) to "
             f"{_ci(hi, 'rouge_l_change')} ({hi['category']}, {hi['records']} records): "
             + (f"too few records per category (fewer than {MIN_RECORDS}) to separate the tasks." if not enough else
                "the two intervals do not overlap, so the tasks differ beyond resampling noise." if apart else
                "the intervals overlap, so these records do not separate the tasks."))
    if len(cats) >= 3:
        rho = float(common.spearman(np.array([s["response_tokens"] for s in cats]),
                                    np.array([s["rouge_l_change"] for s in cats])))
        text += (f" Across categories, the change from step 0 and the mean response length correlate at Spearman "
                 f"{fmt(rho, 2)} (the response-length confound reviewers raised against Zeng et al.).")
    return text


def claim2(run: str, corr: list[dict]) -> str:
    get = {(c["step"], c["level"], c["change"]): c for c in corr if c["run"] == run and c["measure"] == att.HEADLINE}
    if not get:
        return f"**{run}**: no attention measured."
    last = max(step for step, _, _ in get)
    parts = []
    for level, change, what in (("record", "absolute", "across records"),
                                ("category", "absolute", "across category means"),
                                ("record", "from_step0", "across records, change from step 0 against change"),
                                ("category", "from_step0", "across category means, change against change")):
        c = get.get((last, level, change))
        if c is not None and c["n"] >= 3:
            parts.append(f"{what}: Spearman {_ci(c, 'spearman', 2)}, n = {c['n']}, {_verdict(c, +1)}")
    base = get.get((0, "record", "absolute"))
    text = (f"**{run}**, step {last}, normalized entropy of the response positions' attention over the prompt "
            f"(1 = uniform) against the continuation's ROUGE-L: " + "; ".join(parts) + ".")
    if base is not None and base["n"] >= 3 and math.isfinite(base["spearman"]):
        text += f" Before fine-tuning (step 0) the record-level Spearman is {_ci(base, 'spearman', 2)}."
    return text


def describe(runs: list[str], summary: list[dict], corr: list[dict], threshold: float, window: str) -> str:
    lines = [CLAIMS, "", f"Here memorization is extraction of {window}; every number is beside the model before "
             "fine-tuning (step 0), so a change from step 0 is what fine-tuning memorized.", "",
             "*Claim 1: memorization differs by task.*", ""]
    lines += [claim1(run, summary, threshold) for run in runs]
    lines += ["", "*Claim 2: memorization goes with attention concentration* (Zeng's direction: more memorized, "
              "more uniform attention, i.e. a positive correlation with normalized entropy).", ""]
    lines += [claim2(run, corr) for run in runs] if corr else ["Attention was not measured (--no-attention)."]
    return "\n\n".join(x for x in lines if x) + "\n"


# ----------------------------------------------------------------------------- build and CLI


def build(runs: Sequence[RunFolder], out: str | Path, *, steps: str = "all", baseline: bool = True,
          window: str = "response", fraction: float | None = 0.5, tokens: int | None = None,
          threshold: float = ext.DEFAULT_THRESHOLD, max_records: int | None = 200,
          max_new_tokens: int = EXTRACTION_MAX_NEW_TOKENS, batch_size: int = 32, attention: bool = True,
          top_k: int = att.DEFAULT_TOP_K, tokens_per_batch: int = 8192,
          n_boot: int = 1000, cache_dir: str | Path | None = None, mesh: str | None = None) -> Artifact:
    ext.check_options(window, fraction, tokens, max_new_tokens, threshold)
    if top_k < 1:
        raise common.UserError(f"--top-k must be >= 1, got {top_k}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    records, heads, maps = [], [], []
    for run in runs:
        r, h, m = measure_run(run, ext.resolve_steps(run, steps, baseline), attention=attention, top_k=top_k,
                              tokens_per_batch=tokens_per_batch, threshold=threshold, window=window,
                              fraction=fraction, tokens=tokens, max_records=max_records,
                              max_new_tokens=max_new_tokens, batch_size=batch_size, cache_dir=cache_dir, mesh=mesh)
        records += r
        heads += h
        maps += [m] if m else []
    summary = ext.summarize(records, threshold=threshold, n_boot=n_boot)
    corr = att.correlations(records, n_boot=n_boot) if attention else []
    csvs = [common.write_csv(out / f"{NAME}_extraction.csv", summary, ext.SUMMARY_COLUMNS),
            common.write_csv(out / f"{NAME}_records.csv", records, RECORD_COLUMNS if attention else ext.RECORD_COLUMNS)]
    png = ext.plot(summary, out / f"{NAME}_extraction.png", threshold)
    extra = []
    for run in runs:
        last = max(s["step"] for s in summary if s["run"] == run.label)
        extra.append(f"Extraction per category, **{run.label}**, step {last} (ranked; CIs: 95% percentile bootstrap "
                     f"over records):\n\n{ext.task_table(summary, run.label, last)}")
    if attention:
        csvs += [common.write_csv(out / f"{NAME}_correlations.csv", corr, att.CORRELATION_COLUMNS),
                 common.write_csv(out / f"{NAME}_heads.csv", heads, att.HEAD_COLUMNS)]
        figs = [att.plot(records, corr, heads, out / f"{NAME}_attention.png")]
        if maps:
            figs.append(att.plot_maps(maps, out / f"{NAME}_attention_maps.png"))
        extra += [f"![attention]({p.name})" for p in figs]
        if len(maps) < len(runs):
            extra.append(f"No attention maps for {len(runs) - len(maps)} run(s): no category has two records there.")
    paragraph = describe([r.label for r in runs], summary, corr, threshold,
                         ext.window_text(window, fraction, tokens))
    md = common.write_markdown(out, NAME, TITLE, paragraph, png, csvs, extra="\n\n".join(extra))
    return Artifact(NAME, TITLE, png, csvs, md, paragraph,
                    {"summary": summary, "records": records, "correlations": corr, "heads": heads, "maps": maps})


def add_arguments(p) -> None:
    """The extraction options ."""
    g = p.add_mutually_exclusive_group()
    g.add_argument("--prefix-fraction", type=float, default=None, metavar="F",
                   help="response tokens given: this share of the response (default: 0.5)")
    g.add_argument("--prefix-tokens", type=int, default=None, metavar="N", help="response tokens given: the first N")
    p.add_argument("--window", choices=ext.WINDOWS, default="response",
                   help="response: prompt + part of the response (default); pythia: 32 + 32 tokens of the whole text")
    p.add_argument("--steps", default="all", metavar="SPEC",
                   help="checkpoints: all (default), or a comma list of steps and first / last")
    p.add_argument("--no-baseline", action="store_true", help="leave out step 0 (the model before fine-tuning)")
    p.add_argument("--threshold", type=float, default=ext.DEFAULT_THRESHOLD, metavar="R",
                   help=f"ROUGE-L at or above which a record counts as memorized (default: {ext.DEFAULT_THRESHOLD})")
    p.add_argument("--max-records", type=int, default=200, metavar="N",
                   help="training records, category-balanced; 0 = all (default: 200)")
    p.add_argument("--max-new-tokens", type=int, default=EXTRACTION_MAX_NEW_TOKENS, metavar="N",
                   help=f"reference tokens compared at most (default: {EXTRACTION_MAX_NEW_TOKENS})")
    p.add_argument("--batch-size", type=int, default=32, metavar="B")
    p.add_argument("--bootstrap", type=int, default=1000, metavar="N", help="bootstrap resamples (default: 1000)")
    p.add_argument("--export-cache", default=None, metavar="DIR",
                   help="keep exported checkpoints here for reuse (default: a temporary folder)")
    p.add_argument("--mesh", default=None, metavar="D,F,T", help="device mesh for the model (default: all on data)")


def options(args) -> dict:
    """build() keywords from the parsed `add_arguments` options."""
    return {"steps": args.steps, "baseline": not args.no_baseline, "window": args.window,
            "fraction": None if args.prefix_tokens is not None else (args.prefix_fraction or 0.5),
            "tokens": args.prefix_tokens, "threshold": args.threshold, "max_records": args.max_records or None,
            "max_new_tokens": args.max_new_tokens, "batch_size": args.batch_size, "n_boot": args.bootstrap,
            "cache_dir": args.export_cache, "mesh": args.mesh}


def main(argv: list[str] | None = None) -> int:
    p = common.base_parser(NAME, __doc__)
    add_arguments(p)
    p.add_argument("--no-attention", action="store_true", help="extraction only")
    p.add_argument("--top-k", type=int, default=att.DEFAULT_TOP_K, metavar="K",
                   help=f"keys whose attention mass is summed for top_k_mass (default: {att.DEFAULT_TOP_K})")
    p.add_argument("--tokens-per-batch", type=int, default=8192, metavar="N",
                   help="padded tokens per attention forward pass (default: 8192)")
    args = p.parse_args(argv)
    return common.run_cli(lambda: build(
        common.open_runs(args.runs, args.labels), args.out, **options(args), attention=not args.no_attention,
        top_k=args.top_k, tokens_per_batch=args.tokens_per_batch))


if __name__ == "__main__":
    sys.exit(main())
