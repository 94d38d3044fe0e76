"""Extraction memorization (Zeng et al.): prompt the model with the first part of each training
record, decode greedily, and compare the continuation with the record's true suffix, per category,
at the first and last checkpoints.

    python -m experiments.extraction_memorization --runs runs/demo/uniform --out figures/ \
        [--prefix-fraction 0.5 | --prefix-tokens 32] [--max-records 200] [--max-new-tokens 64]

A record of n tokens (tokenized exactly as in training: template, EOS) is cut after p tokens
(p = round(fraction x n), or the given count; at least 1 token on each side). The model continues
the prefix greedily (no repetition penalty), stopping at EOS or after L = min(n - p,
--max-new-tokens) tokens; the candidate is compared with the first L tokens of the true suffix:

- token match rate: positions t < L where candidate[t] == suffix[t], over L (a candidate that stopped
  early misses the rest);
- longest matching prefix: the number of leading tokens that agree (and that number over L);
- ROUGE-L-style F1 of token sequences: LCS / len(candidate) and LCS / L as precision and recall;
- exact extraction: the whole L-token suffix reproduced.

"First" is the first checkpoint saved after training began (or `--first-step`); the teacher-forcing
exact memorization of the same record at the same step is listed next to it.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from experiments import common
from experiments.common import Artifact, fmt
from mbc_jax.run_folder import RunFolder

NAME = "extraction_memorization"
TITLE = "Extraction memorization: greedy continuation of training-record prefixes"
RECORD_COLUMNS = ("run", "checkpoint", "step", "index", "id", "category", "tokens", "prefix_tokens", "suffix_tokens",
                  "generated_tokens", "token_match_rate", "longest_prefix", "longest_prefix_fraction", "lcs_f1",
                  "exact_extraction", "teacher_forcing_exact_match")
METRICS = ("token_match_rate", "longest_prefix", "longest_prefix_fraction", "lcs_f1", "exact_extraction",
           "teacher_forcing_exact_match")
SUMMARY_COLUMNS = ("run", "checkpoint", "step", "category", "records", *METRICS)


# ----------------------------------------------------------------------------- the metrics


def token_match_rate(candidate: Sequence[int], reference: Sequence[int]) -> float:
    """Share of the reference's positions where the candidate has the same token."""
    if not len(reference):
        return float("nan")
    n = min(len(candidate), len(reference))
    return float(sum(int(candidate[t]) == int(reference[t]) for t in range(n)) / len(reference))


def longest_common_prefix(candidate: Sequence[int], reference: Sequence[int]) -> int:
    k = 0
    for a, b in zip(candidate, reference):
        if int(a) != int(b):
            break
        k += 1
    return k


def lcs_length(a: Sequence[int], b: Sequence[int]) -> int:
    """Length of the longest common subsequence (dynamic programming, one row at a time)."""
    a, b = [int(x) for x in a], [int(x) for x in b]
    if not a or not b:
        return 0
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]


def rouge_l_f1(candidate: Sequence[int], reference: Sequence[int]) -> float:
    """F1 of LCS precision (over the candidate) and recall (over the reference); 0 if either is empty."""
    lcs = lcs_length(candidate, reference)
    if lcs == 0:
        return 0.0
    p, r = lcs / len(candidate), lcs / len(reference)
    return 2 * p * r / (p + r)


def compare(candidate: Sequence[int], reference: Sequence[int]) -> dict:
    k = longest_common_prefix(candidate, reference)
    return {"token_match_rate": token_match_rate(candidate, reference), "longest_prefix": k,
            "longest_prefix_fraction": k / len(reference) if len(reference) else float("nan"),
            "lcs_f1": rouge_l_f1(candidate, reference),
            "exact_extraction": float(len(candidate) >= len(reference) and k == len(reference))}


def split_point(n: int, fraction: float | None, tokens: int | None) -> int:
    """Prefix length p of an n-token record: 1 <= p <= n - 1."""
    p = tokens if tokens is not None else int(round(fraction * n))
    return max(1, min(p, n - 1))


# ----------------------------------------------------------------------------- running it


def select_examples(run: RunFolder, tokenizer, vocab_size: int, max_records: int | None) -> list:
    _, examples = run.examples("train", tokenizer, vocab_size)
    examples = [e for e in examples if len(e) >= 2]
    order = common.balanced_order([e.category for e in examples])
    return [examples[i] for i in sorted(order[:max_records] if max_records else order)]


def extract(model, examples: list, *, fraction: float | None, tokens: int | None, max_new_tokens: int,
            batch_size: int = 32, eos: int | None = None) -> list[dict]:
    """One dict per example: prefix / suffix lengths, the candidate, and the metrics."""
    from mbc_jax.generate import SamplingConfig, generate

    cuts = [split_point(len(e), fraction, tokens) for e in examples]
    lengths = [min(len(e) - p, max_new_tokens) for e, p in zip(examples, cuts)]
    max_new = max(lengths)
    room = model.config.max_position_embeddings - max_new
    prompts = [e.input_ids[:p][-room:] for e, p in zip(examples, cuts)]  # keep the end of over-long prefixes
    cfg = SamplingConfig(greedy=True, repetition_penalty=1.0, max_new_tokens=max_new)
    gens = generate(model, prompts, cfg, eos_token_id=eos, batch_size=batch_size, row_keys=[e.index for e in examples])
    out = []
    for e, p, n_ref, g in zip(examples, cuts, lengths, gens):
        reference = e.input_ids[p:p + n_ref]
        candidate = g.output_ids[:n_ref]
        out.append({"index": e.index, "id": e.id, "category": e.category, "tokens": len(e), "prefix_tokens": p,
                    "suffix_tokens": n_ref, "generated_tokens": len(candidate), **compare(candidate, reference)})
    return out


def summarize(rows: list[dict]) -> list[dict]:
    out = []
    keys = list(dict.fromkeys((r["run"], r["checkpoint"], r["step"]) for r in rows))
    for run, which, step in keys:
        mine = [r for r in rows if r["run"] == run and r["checkpoint"] == which]
        for cat in ["all", *sorted({r["category"] for r in mine})]:
            sel = mine if cat == "all" else [r for r in mine if r["category"] == cat]
            out.append({"run": run, "checkpoint": which, "step": step, "category": cat, "records": len(sel),
                        **{m: float(np.nanmean([r[m] for r in sel])) for m in METRICS}})
    return out


def measure(run: RunFolder, *, fraction: float | None = 0.5, tokens: int | None = None, max_records: int | None = 200,
            max_new_tokens: int = 64, first_step: int | None = None, batch_size: int = 32,
            cache_dir: str | Path | None = None, mesh: str | None = None, log=common.log) -> list[dict]:
    tok = run.tokenizer()
    rows = []
    for which, step in run.first_last_checkpoints(first_step, log).items():
        t0 = time.perf_counter()
        with common.checkpoint_model(run, step, cache_dir, mesh) as model:
            examples = select_examples(run, tok, model.config.vocab_size, max_records)
            template = run.template()
            eos = template.eos_id(tok)
            got = extract(model, examples, fraction=fraction, tokens=tokens, max_new_tokens=max_new_tokens,
                          batch_size=batch_size, eos=eos)
        mem = run.memorization(step, "train")
        tf = dict(zip(mem["index"].tolist(), mem["exact_match"].tolist()))
        for r in got:
            rows.append({"run": run.label, "checkpoint": which, "step": step, **r,
                         "teacher_forcing_exact_match": tf.get(r["index"], float("nan"))})
        log(f"{NAME}: {run.label} step {step}: {len(got)} records, token match "
            f"{np.mean([r['token_match_rate'] for r in got]):.3f} ({time.perf_counter() - t0:.0f}s)")
    return rows


def describe(run_label: str, summary: list[dict], records: list[dict], prefix: str) -> str:
    f, last = [next(s for s in summary if s["run"] == run_label and s["checkpoint"] == w and s["category"] == "all")
               for w in common.FIRST_LAST]
    s = (f"{run_label} ({f['records']} training records, prefix {prefix}): greedy continuations matched "
         f"{common.pct(f['token_match_rate'])} of the true suffix tokens at the first checkpoint (step {f['step']}) "
         "and "
         f"{common.pct(last['token_match_rate'])} at the last (step {last['step']}); "
         "the longest matching prefix averaged "
         f"{fmt(f['longest_prefix'], 1)} then {fmt(last['longest_prefix'], 1)} tokens, "
         f"ROUGE-L F1 {fmt(f['lcs_f1'])} then "
         f"{fmt(last['lcs_f1'])}, and {common.pct(last['exact_extraction'])} of suffixes "
         "were reproduced exactly at the last "
         f"checkpoint (teacher-forced exact memorization of the same records: "
         f"{fmt(last['teacher_forcing_exact_match'])}).")
    cats = [c for c in summary if c["run"] == run_label and c["checkpoint"] == "last" and c["category"] != "all"]
    if len(cats) > 1:
        hi, lo = max(cats, key=lambda c: c["lcs_f1"]), min(cats, key=lambda c: c["lcs_f1"])
        s += (f" By category, {hi['category']} is the most extractable (ROUGE-L F1 {fmt(hi['lcs_f1'])}) and "
              f"{lo['category']} the least ({fmt(lo['lcs_f1'])}).")
    last = [r for r in records if r["run"] == run_label and r["checkpoint"] == "last"]
    c = common.correlation([r["teacher_forcing_exact_match"] for r in last], [r["lcs_f1"] for r in last], n_boot=500)
    if c["n"] >= 3 and np.isfinite(c["spearman"]):
        s += (f" Across records, extraction F1 and teacher-forced memorization correlate with Spearman "
              f"{fmt(c['spearman'], 2)} (95% CI {fmt(c['spearman_lo'], 2)} to {fmt(c['spearman_hi'], 2)}).")
    return s


def plot(summary: list[dict], path: Path) -> Path:
    runs = list(dict.fromkeys(s["run"] for s in summary))
    fig, axes = common.figure(len(runs), 2, size=(12.0, 3.6 * len(runs)))
    for r, run in enumerate(runs):
        mine = [s for s in summary if s["run"] == run]
        cats = list(dict.fromkeys(s["category"] for s in mine))
        x = np.arange(len(cats))
        for ax, metric, label in ((axes[2 * r], "token_match_rate", "token match rate"),
                                  (axes[2 * r + 1], "lcs_f1", "ROUGE-L F1 (token LCS)")):
            for k, (which, color) in enumerate((("first", "#A1D99B"), ("last", "#238B45"))):
                vals = {s["category"]: s for s in mine if s["checkpoint"] == which}
                step = next(iter(vals.values()))["step"]
                ax.bar(x + (k - 0.5) * 0.38, [vals[c][metric] for c in cats], 0.38, color=color,
                       label=f"{which} checkpoint (step {step})")
            ax.set_xticks(x, cats, rotation=25, ha="right", fontsize=8)
            ax.set_ylabel(label)
            ax.set_ylim(0, 1)
            ax.set_title(run, fontsize=10)
            ax.grid(alpha=0.3, axis="y")
            ax.legend(fontsize=7)
    return common.save_figure(fig, path)


def build(runs: Sequence[RunFolder], out: str | Path, *, fraction: float | None = 0.5, tokens: int | None = None,
          max_records: int | None = 200, max_new_tokens: int = 64, first_step: int | None = None,
          batch_size: int = 32, cache_dir: str | Path | None = None, mesh: str | None = None) -> Artifact:
    if tokens is None and not (fraction is not None and 0 < fraction < 1):
        raise common.UserError(f"--prefix-fraction must be in (0, 1), got {fraction}")
    if tokens is not None and tokens < 1:
        raise common.UserError(f"--prefix-tokens must be >= 1, got {tokens}")
    if max_new_tokens < 1:
        raise common.UserError(f"--max-new-tokens must be >= 1, got {max_new_tokens}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    records = [r for run in runs for r in measure(run, fraction=fraction, tokens=tokens, max_records=max_records,
                                                  max_new_tokens=max_new_tokens, first_step=first_step,
                                                  batch_size=batch_size, cache_dir=cache_dir, mesh=mesh)]
    summary = summarize(records)
    csv_path = common.write_csv(out / f"{NAME}.csv", summary, SUMMARY_COLUMNS)
    rec_path = common.write_csv(out / f"{NAME}_records.csv", records, RECORD_COLUMNS)
    png = plot(summary, out / f"{NAME}.png")
    prefix = f"the first {tokens} tokens" if tokens is not None else f"the first {fraction:g} of each record's tokens"
    paragraph = " ".join(describe(run.label, summary, records, prefix) for run in runs)
    table = common.markdown_table(
        [[s["run"], s["checkpoint"], s["step"], s["category"], s["records"], common.pct(s["token_match_rate"]),
          fmt(s["longest_prefix"], 1), fmt(s["lcs_f1"]), common.pct(s["exact_extraction"])]
         for s in summary if s["category"] == "all"],
        ["run", "checkpoint", "step", "category", "records", "token match", "longest prefix", "ROUGE-L F1", "exact"])
    md = common.write_markdown(out, NAME, TITLE, paragraph, png, [csv_path, rec_path], extra=table)
    return Artifact(NAME, TITLE, png, [csv_path, rec_path], md, paragraph, {"summary": summary, "records": records})


def main(argv: list[str] | None = None) -> int:
    p = common.base_parser(NAME, __doc__)
    g = p.add_mutually_exclusive_group()
    g.add_argument("--prefix-fraction", type=float, default=None, metavar="F",
                   help="prefix = this share of each record's tokens (default: 0.5)")
    g.add_argument("--prefix-tokens", type=int, default=None, metavar="N", help="prefix = the first N tokens")
    p.add_argument("--max-records", type=int, default=200, metavar="N",
                   help="training records per checkpoint, category-balanced; 0 = all (default: 200)")
    p.add_argument("--max-new-tokens", type=int, default=64, metavar="N",
                   help="suffix tokens compared at most (default: 64)")
    p.add_argument("--first-step", type=int, default=None, metavar="STEP",
                   help="checkpoint used as the first (default: the first saved after step 0)")
    p.add_argument("--batch-size", type=int, default=32, metavar="B")
    p.add_argument("--export-cache", default=None, metavar="DIR",
                   help="keep exported checkpoints here for reuse (default: a temporary folder)")
    p.add_argument("--mesh", default=None, metavar="D,F,T", help="device mesh for the model (default: all on data)")
    args = p.parse_args(argv)
    fraction = None if args.prefix_tokens is not None else (args.prefix_fraction or 0.5)
    return common.run_cli(lambda: build(
        common.open_runs(args.runs, args.labels), args.out, fraction=fraction, tokens=args.prefix_tokens,
        max_records=args.max_records or None, max_new_tokens=args.max_new_tokens, first_step=args.first_step,
        batch_size=args.batch_size, cache_dir=args.export_cache, mesh=args.mesh))


if __name__ == "__main__":
    sys.exit(main())
