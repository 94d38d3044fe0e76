"""`mbc-jax score`: per-record perplexity, exact memorization and entropy for a data file, and the membership
signals Min-K%, Min-K%++, zlib ratio (and, with `--reference`, the reference-calibrated loss)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

from mbc_jax import UserError, __version__
from mbc_jax.commands.common import (
    add_data_args,
    add_model_args,
    fmt,
    format_options,
    load_model_from_args,
    load_template,
    require_positive,
    table,
)
from mbc_jax.paths import UrlPath, as_path, atomic_write, check_output_file, write_jsonl
from mbc_jax.progress import progress_bar


def register(sub) -> None:
    p = sub.add_parser("score", help="score every record: perplexity, exact memorization, entropy (JSONL out)")
    add_model_args(p)
    add_data_args(p)
    p.add_argument("--out", required=True, help="output JSONL: one line per scored record, in input order")
    p.add_argument("--max-length", type=int, default=None,
                   help="tokens per record (default: min(512, the model's max positions))")
    p.add_argument("--overflow", default="truncate", choices=("truncate", "drop", "error"),
                   help="records longer than --max-length: truncate (default, counted), drop (counted), or error")
    p.add_argument("--tokens-per-batch", type=int, default=2048, help="packed tokens per scoring batch")
    add_membership_args(p)
    p.set_defaults(func=run)


def add_membership_args(p) -> None:
    """The membership signals' flags (issue 32): k of Min-K% / Min-K%++, off switch, reference model."""
    p.add_argument("--min-k-percent", type=float, default=20.0, metavar="K",
                   help="Min-K%% Prob and Min-K%%++: the mean over each record's lowest K%% of targets (default 20)")
    p.add_argument("--no-membership", action="store_true",
                   help="leave out the membership signals (min_k*, min_k_pp*, zlib_ratio*: empty columns)")
    p.add_argument("--reference", default=None, metavar="MODEL",
                   help="a reference model with the same tokenizer (e.g. the base model before fine-tuning): adds "
                        "reference_mean_nll and calibrated_nll = mean_nll - reference_mean_nll (and response_*)")


def min_k_fraction(percent: float) -> float:
    if not 0 < percent <= 100:
        raise UserError(f"--min-k-percent {percent}: expected a percentage in (0, 100]")
    return percent / 100


REFERENCE_COLUMNS = ("reference_mean_nll", "response_reference_mean_nll", "calibrated_nll", "response_calibrated_nll")


def add_reference(rows: list[dict], reference_rows: list[dict]) -> None:
    """Appends the reference model's mean NLL per record and the calibrated loss, mean_nll minus it (None where
    either is None): the reference-model attack of Carlini et al. 2021, with the base model as reference."""
    by_index = {r["index"]: r for r in reference_rows}
    for r in rows:
        ref = by_index[r["index"]]
        for prefix in ("", "response_"):
            ref_nll, nll = ref[f"{prefix}mean_nll"], r[f"{prefix}mean_nll"]
            r[f"{prefix}reference_mean_nll"] = ref_nll
            r[f"{prefix}calibrated_nll"] = None if ref_nll is None or nll is None else nll - ref_nll


def score_with_reference(args: argparse.Namespace, model, examples, max_length: int, eos_id) -> list[dict]:
    """The rows of `examples` under `--reference` (its own model load; the same token ids: the tokenizers
    must agree)."""
    from mbc_jax.models import load_model
    from mbc_jax.scoring import Scorer
    from mbc_jax.sharding import make_mesh

    ref = load_model(args.reference, mesh=make_mesh(args.mesh), dtype=args.dtype, param_dtype=args.param_dtype)
    tokenizers = (model.tokenizer, ref.tokenizer)
    if None not in tokenizers and tokenizers[0].get_vocab() != tokenizers[1].get_vocab():
        raise UserError(f"--reference {args.reference}: its tokenizer differs from {args.model}'s; the reference "
                        "must score the same token ids (use the model's base checkpoint)")
    if max(int(e.input_ids.max()) for e in examples) >= ref.config.vocab_size:
        raise UserError(f"--reference {args.reference}: its vocabulary ({ref.config.vocab_size}) does not hold "
                        "every token id of the data")
    if max_length > ref.config.max_position_embeddings:
        raise UserError(f"--reference {args.reference}: {ref.config.max_position_embeddings} positions, fewer than "
                        f"--max-length {max_length}")
    scorer = Scorer(ref.module, ref.mesh, seq_len=max_length, tokens_per_batch=args.tokens_per_batch, eos_id=eos_id,
                    membership=False)
    with progress_bar(len(examples), "scoring (reference)") as bar:
        scores = scorer(ref.params, examples, progress=bar)
    return list(scores.rows(examples))


# The table's pooled columns: (value column, its per-record target count). Pooled = targets summed first, as
# the paper's Eq. 1 (exact memorization over all targets of a set, so long records weigh more); the same for
# the entropy. Perplexity is a per-record median.
POOLED = (("exact_match", "tokens"), ("response_exact_match", "response_tokens"),
          ("response_exact_match_no_eos", "response_tokens_no_eos"), ("entropy", "tokens"),
          ("response_entropy", "response_tokens"))


def pooled(rows: list[dict], key: str, count: str) -> float | None:
    """sum(value x targets) / sum(targets) over the rows that have targets for `key`: Eq. 1 for exact match."""
    pairs = [(r[key], r[count]) for r in rows if r[key] is not None and r[count]]
    n = sum(c for _, c in pairs)
    return sum(v * c for v, c in pairs) / n if n else None


def category_table(rows: list[dict]) -> str:
    """Per category and ALL: exact match and entropy pooled over the group's targets (Eq. 1), median perplexity."""
    groups: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        groups[r["category"] or "(none)"].append(r)
    groups["ALL"] = rows

    def median(rs, key):
        vals = [r[key] for r in rs if r[key] is not None]
        return float(np.median(vals)) if vals else None

    body = []
    for name, rs in sorted(groups.items(), key=lambda kv: (kv[0] == "ALL", kv[0])):
        em, resp_em, no_eos, ent, resp_ent = (pooled(rs, key, count) for key, count in POOLED)
        body.append([name, str(len(rs)), fmt(em), fmt(resp_em), fmt(no_eos), fmt(median(rs, "perplexity"), 2),
                     fmt(median(rs, "response_perplexity"), 2), fmt(ent), fmt(resp_ent)])
    return (table(body, ["category", "records", "exact_match", "resp_exact_match", "resp_em_no_eos", "median_ppl",
                         "median_resp_ppl", "entropy", "resp_entropy"])
            + "\nexact match and entropy: pooled over each group's targets (Eq. 1; long records weigh more), "
              "not per-record means; perplexity: the per-record median")


def meta_path(out: str) -> Path | UrlPath:
    """The provenance file beside the scores: OUT's stem + `.meta.json` (as `generate`'s)."""
    out_path = as_path(out)
    return out_path.with_name(out_path.stem + ".meta.json")


def write_side_files(args: argparse.Namespace, skipped: list[dict], meta: dict) -> None:
    """OUT.skipped.jsonl (the records not scored; a stale one from an earlier run is removed when none are)
    and the provenance file: model, data, settings and counts, so a scores file says what made it."""
    side = as_path(args.out + ".skipped.jsonl")
    if skipped:
        write_jsonl(side, skipped)
    elif side.exists():
        side.unlink()
    atomic_write(meta_path(args.out), json.dumps({"mbc_jax": __version__, **meta}, indent=2) + "\n")


def run(args: argparse.Namespace) -> int:
    from mbc_jax.data import load_records, tokenize
    from mbc_jax.scoring import Scorer

    require_positive("--tokens-per-batch", args.tokens_per_batch)
    require_positive("--max-length", args.max_length)
    min_k = min_k_fraction(args.min_k_percent)
    check_output_file(args.out)  # before the model loads and every record is scored
    model = load_model_from_args(args)
    cfg = model.config
    max_length = args.max_length or min(512, cfg.max_position_embeddings)
    if max_length > cfg.max_position_embeddings:
        raise UserError(f"--max-length {max_length}: the model has only {cfg.max_position_embeddings} positions")
    records, load_report = load_records(args.data, schema=args.schema, skip_bad=args.skip_bad, **format_options(args))
    if args.limit is not None:
        records = records[: args.limit]
    if not records:
        raise UserError(f"{args.data}: no records to score")
    if model.tokenizer is None and load_report.schema != "tokens":
        raise UserError(
            f"{args.model}: no tokenizer files in the checkpoint folder; needed for {load_report.schema!r} records"
        )
    template = load_template(args)
    examples, tok_report = tokenize(records, model.tokenizer, template, max_length, args.overflow,
                                    skip_bad=args.skip_bad, vocab_size=cfg.vocab_size)
    print(load_report.summary(), file=sys.stderr)
    print(tok_report.summary(), file=sys.stderr)
    scorer = Scorer(model.module, model.mesh, seq_len=max_length, tokens_per_batch=args.tokens_per_batch,
                    eos_id=template.eos_id(model.tokenizer), membership=not args.no_membership, min_k=min_k,
                    tokenizer=None if args.no_membership else model.tokenizer)
    batches = scorer.batches(examples)
    t0 = time.perf_counter()
    with progress_bar(len(examples), "scoring") as bar:
        scores = scorer(model.params, examples, batches, progress=bar)
    seconds = time.perf_counter() - t0
    rows = sorted(scores.rows(examples), key=lambda r: r["index"])
    if args.reference:
        add_reference(rows, score_with_reference(args, model, examples, max_length, template.eos_id(model.tokenizer)))
    from mbc_jax import distributed

    main_process = distributed.is_main()  # every process has all rows; process 0 writes them
    if main_process:
        write_jsonl(args.out, rows)
    skipped = [{"source": src, "skipped": msg} for src, msg in load_report.skipped + tok_report.skipped]
    skipped += [{"index": i, "id": rid, "skipped": f"dropped: {n} tokens > --max-length {max_length}"}
                for i, rid, n in tok_report.dropped]
    if main_process:
        write_side_files(args, skipped, dict(
            model=model.path, data=str(args.data), template=template.to_dict(), max_length=max_length,
            overflow=args.overflow, tokens_per_batch=args.tokens_per_batch, limit=args.limit,
            schema=load_report.schema, scored=len(rows), not_scored=len(skipped), seconds=round(seconds, 3),
            membership=not args.no_membership, min_k_percent=args.min_k_percent, reference=args.reference))
    real = sum(len(e) for e in examples)
    padded = sum(b.input_ids.size for b in batches)
    print(category_table(rows))
    print(f"scored {len(rows)} records ({real} tokens, {real / padded:.1%} of {padded} computed positions) in "
          f"{seconds:.1f} s ({real / seconds:.0f} tokens/s, compile {scorer.compile_seconds:.1f} s) -> {args.out}"
          + (f"; {len(skipped)} not scored, listed in {args.out}.skipped.jsonl" if skipped else ""))
    return 0
