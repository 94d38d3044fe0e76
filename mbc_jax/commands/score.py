"""`mbc-jax score`: per-record perplexity, exact memorization and entropy for a data file, and the membership
signals Min-K%, Min-K%++, zlib ratio (and, with `--reference`, the reference-calibrated loss)."""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import sys
import time
from array import array
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from mbc_jax import UserError, __version__
from mbc_jax.commands.common import (
    add_data_args,
    add_model_args,
    chunked,
    fmt,
    format_options,
    load_model_from_args,
    load_template,
    record_count,
    require_positive,
    table,
)
from mbc_jax.partial import PartialOutput, data_fingerprint, folder_fingerprint
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
    p.add_argument("--chunk-records", type=int, default=4096, metavar="N",
                   help="records read, scored and written at a time (default 4096): memory stays flat however "
                        "long the data; rows go to OUT.partial as they are made, and a rerun of the same command "
                        "after a kill resumes from the last whole chunk")
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


@dataclasses.dataclass
class Reference:
    """The `--reference` model and its scorer (the same token ids: the tokenizers must agree)."""

    path: str
    model: Any
    scorer: Any

    def rows(self, examples: list) -> list[dict]:
        """The rows of `examples` under the reference model."""
        if max(int(e.input_ids.max()) for e in examples) >= self.model.config.vocab_size:
            raise UserError(f"--reference {self.path}: its vocabulary ({self.model.config.vocab_size}) does not "
                            "hold every token id of the data")
        return list(self.scorer(self.model.params, examples).rows(examples))


def load_reference(args: argparse.Namespace, model, max_length: int, eos_id, max_segments: int) -> Reference:
    """The `--reference` model (its own load), checked against the model: the same vocabulary, enough positions."""
    from mbc_jax.models import load_model
    from mbc_jax.scoring import Scorer
    from mbc_jax.sharding import make_mesh

    ref = load_model(args.reference, mesh=make_mesh(args.mesh), dtype=args.dtype, param_dtype=args.param_dtype)
    tokenizers = (model.tokenizer, ref.tokenizer)
    if None not in tokenizers and tokenizers[0].get_vocab() != tokenizers[1].get_vocab():
        raise UserError(f"--reference {args.reference}: its tokenizer differs from {args.model}'s; the reference "
                        "must score the same token ids (use the model's base checkpoint)")
    if max_length > ref.config.max_position_embeddings:
        raise UserError(f"--reference {args.reference}: {ref.config.max_position_embeddings} positions, fewer than "
                        f"--max-length {max_length}")
    scorer = Scorer(ref.module, ref.mesh, seq_len=max_length, tokens_per_batch=args.tokens_per_batch, eos_id=eos_id,
                    membership=False, max_segments=max_segments, zlib_cache=False)
    return Reference(args.reference, ref, scorer)


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


class CategoryStats:
    """The category table's numbers, kept as rows stream past: per group, the pooled sums of `POOLED` (added in
    row order, as `pooled` adds them) and the per-record perplexities for the medians (8 bytes a record, the
    only part that grows with the data)."""

    def __init__(self):
        self.groups: dict[str, dict] = {}

    def add(self, row: dict) -> None:
        for name in (row["category"] or "(none)", "ALL"):
            g = self.groups.get(name)
            if g is None:
                g = self.groups[name] = {"records": 0, "sums": [[0.0, 0] for _ in POOLED],
                                         "perplexity": array("d"), "response_perplexity": array("d")}
            g["records"] += 1
            for acc, (key, count) in zip(g["sums"], POOLED):
                if row[key] is not None and row[count]:
                    acc[0] += row[key] * row[count]
                    acc[1] += row[count]
            if name != "ALL":  # ALL's medians are over every category's values
                for key in ("perplexity", "response_perplexity"):
                    if row[key] is not None:
                        g[key].append(row[key])

    def table(self) -> str:
        """Per category and ALL: exact match and entropy pooled over the group's targets (Eq. 1), median perplexity."""
        cats = [g for name, g in self.groups.items() if name != "ALL"]

        def median(g, key):
            vals = np.concatenate([np.asarray(c[key]) for c in cats]) if g is self.groups.get("ALL") else g[key]
            return float(np.median(vals)) if len(vals) else None

        body = []
        for name, g in sorted(self.groups.items(), key=lambda kv: (kv[0] == "ALL", kv[0])):
            em, resp_em, no_eos, ent, resp_ent = (total / n if n else None for total, n in g["sums"])
            body.append([name, str(g["records"]), fmt(em), fmt(resp_em), fmt(no_eos), fmt(median(g, "perplexity"), 2),
                         fmt(median(g, "response_perplexity"), 2), fmt(ent), fmt(resp_ent)])
        if "ALL" not in self.groups:
            body.append(["ALL", "0"] + [fmt(None)] * 7)
        return (table(body, ["category", "records", "exact_match", "resp_exact_match", "resp_em_no_eos",
                             "median_ppl", "median_resp_ppl", "entropy", "resp_entropy"])
                + "\nexact match and entropy: pooled over each group's targets (Eq. 1; long records weigh more), "
                  "not per-record means; perplexity: the per-record median")


def category_table(rows: list[dict]) -> str:
    """Per category and ALL: exact match and entropy pooled over the group's targets (Eq. 1), median perplexity
    (`CategoryStats` over a list of rows)."""
    stats = CategoryStats()
    for r in rows:
        stats.add(r)
    return stats.table()


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


def segments_cap(max_length: int) -> int:
    """Records per packed row at most: a fixed number, so every chunk of a stream packs to the one compiled shape
    (a row of 512 tokens holds up to 64 records of 8 tokens; shorter ones take more rows, never another shape)."""
    return max(1, min(64, max_length // 8))


def fingerprint(args: argparse.Namespace, model, max_length: int, template) -> dict:
    """What made the rows of OUT: a resumed run must match it (model and data files by size and mtime, settings)."""
    return dict(mbc_jax=__version__, model=model.path, model_files=folder_fingerprint(model.path),
                data=data_fingerprint(str(args.data)), template=template.to_dict(), max_length=max_length,
                overflow=args.overflow, tokens_per_batch=args.tokens_per_batch, chunk_records=args.chunk_records,
                limit=args.limit, schema=args.schema, skip_bad=args.skip_bad, **format_options(args),
                membership=not args.no_membership, min_k_percent=args.min_k_percent, reference=args.reference,
                reference_files=folder_fingerprint(args.reference) if args.reference else None,
                dtype=args.dtype, param_dtype=args.param_dtype, mesh=args.mesh)


@dataclasses.dataclass
class Stream:
    """A scoring run's running totals: what a commit records and a resumed run starts from."""

    tok_report: Any
    chunks: int = 0
    scored: int = 0
    real: int = 0  # tokens of the scored records
    padded: int = 0  # positions computed
    seconds: float = 0.0
    stats: CategoryStats = dataclasses.field(default_factory=CategoryStats)

    def state(self) -> dict:
        return dict(chunks=self.chunks, scored=self.scored, real=self.real, padded=self.padded,
                    seconds=round(self.seconds, 6), tokenize=dataclasses.asdict(self.tok_report))

    def restore(self, state: dict, rows: Iterator[dict]) -> None:
        """Takes up a committed state; the table's numbers are added up again from the committed rows."""
        from mbc_jax.data import TokenizeReport

        self.chunks, self.scored, self.real, self.padded, self.seconds = (
            state[k] for k in ("chunks", "scored", "real", "padded", "seconds"))
        self.tok_report = TokenizeReport(**{k: [tuple(x) for x in v] if isinstance(v, list) else v
                                            for k, v in state["tokenize"].items()})
        for row in rows:
            self.stats.add(row)


def score_chunk(args, model, scorer, reference, template, chunk: list, stream: Stream, bar) -> list[str]:
    """Tokenizes, packs and scores one chunk of records; its rows as JSON lines (in input order)."""
    from mbc_jax.data import tokenize

    t0 = time.perf_counter()
    examples, report = tokenize(chunk, model.tokenizer, template, scorer.seq_len, args.overflow,
                                skip_bad=args.skip_bad, vocab_size=model.config.vocab_size)
    stream.tok_report.add(report)
    rows: list[dict] = []
    if examples:
        batches = scorer.batches(examples)
        rows = list(scorer(model.params, examples, batches, progress=bar).rows(examples))
        if reference is not None:
            add_reference(rows, reference.rows(examples))
        stream.real += sum(len(e) for e in examples)
        stream.padded += sum(b.input_ids.size for b in batches)
    bar.update(len(chunk) - len(examples))  # the records tokenize left out (the scorer counted the rest)
    stream.seconds += time.perf_counter() - t0
    stream.chunks += 1
    stream.scored += len(rows)
    for r in rows:
        stream.stats.add(r)
    bar.set_postfix_str(f"{stream.real / max(stream.seconds, 1e-9):.0f} tok/s", refresh=False)
    return [json.dumps(r, ensure_ascii=False) + "\n" for r in rows]


def score_stream(args, model, scorer, reference, template, part: PartialOutput, main_process: bool
                 ) -> tuple[Stream, Any]:
    """Reads, tokenizes, scores and writes the records chunk by chunk (`--chunk-records` at a time); a
    committed earlier run's chunks are read past, not scored again (every process of a multi-host run reads the
    state: OUT must be on a file system they share). Returns the totals and the load report."""
    from mbc_jax.data import TokenizeReport, iter_records

    load_report, records = iter_records(args.data, schema=args.schema, skip_bad=args.skip_bad, **format_options(args))
    if args.limit is not None:
        records = itertools.islice(records, args.limit)
    stream = Stream(TokenizeReport(max_length=scorer.seq_len, overflow=args.overflow))
    state = part.open(write=main_process)
    if state is not None:
        stream.restore(state, part.rows())
        print(f"{args.out}: resuming after {stream.chunks} chunks ({stream.scored} rows in {part.partial})",
              file=sys.stderr)
    chunks = chunked(records, args.chunk_records)
    for _ in range(stream.chunks):  # read past what is committed: the load report counts it again
        next(chunks, None)
    total = record_count(args)
    with progress_bar(total, "scoring", initial=min(stream.chunks * args.chunk_records, total or 0)) as bar:
        for chunk in chunks:
            if model.tokenizer is None and load_report.schema != "tokens":
                raise UserError(f"{args.model}: no tokenizer files in the checkpoint folder; needed for "
                                f"{load_report.schema!r} records")
            lines = score_chunk(args, model, scorer, reference, template, chunk, stream, bar)
            if main_process:
                part.commit(lines, stream.state())
    if stream.chunks == 0:  # nothing read, now or by a resumed run (the partial file is not kept: no commit)
        raise UserError(f"{args.data}: no records to score")
    return stream, load_report


def run(args: argparse.Namespace) -> int:
    from mbc_jax import distributed
    from mbc_jax.scoring import Scorer

    for flag in ("--tokens-per-batch", "--max-length", "--chunk-records"):
        require_positive(flag, getattr(args, flag[2:].replace("-", "_")))
    min_k = min_k_fraction(args.min_k_percent)
    check_output_file(args.out)  # before the model loads and every record is scored
    model = load_model_from_args(args)
    max_length = args.max_length or min(512, model.config.max_position_embeddings)
    if max_length > model.config.max_position_embeddings:
        raise UserError(f"--max-length {max_length}: the model has only {model.config.max_position_embeddings} "
                        "positions")
    template = load_template(args)
    eos_id = template.eos_id(model.tokenizer)
    scorer = Scorer(model.module, model.mesh, seq_len=max_length, tokens_per_batch=args.tokens_per_batch,
                    eos_id=eos_id, membership=not args.no_membership, min_k=min_k,
                    tokenizer=None if args.no_membership else model.tokenizer, max_segments=segments_cap(max_length),
                    zlib_cache=False)
    reference = load_reference(args, model, max_length, eos_id, segments_cap(max_length)) if args.reference else None
    main_process = distributed.is_main()  # every process scores every record; process 0 writes the rows
    part = PartialOutput(args.out, fingerprint(args, model, max_length, template))
    try:
        stream, load_report = score_stream(args, model, scorer, reference, template, part, main_process)
    finally:
        part.close()
    if main_process:
        part.finish()
    report_run(args, model, template, max_length, stream, load_report, scorer.compile_seconds, main_process)
    return 0


def report_run(args, model, template, max_length: int, stream: Stream, load_report, compile_seconds: float,
               main_process: bool) -> None:
    """The side files (skipped records, provenance) and what a person reads: the reports, the table, one line."""
    tok_report = stream.tok_report
    print(load_report.summary(), file=sys.stderr)
    print(tok_report.summary(), file=sys.stderr)
    skipped = [{"source": src, "skipped": msg} for src, msg in load_report.skipped + tok_report.skipped]
    skipped += [{"index": i, "id": rid, "skipped": f"dropped: {n} tokens > --max-length {max_length}"}
                for i, rid, n in tok_report.dropped]
    if main_process:
        write_side_files(args, skipped, dict(
            model=model.path, data=str(args.data), template=template.to_dict(), max_length=max_length,
            overflow=args.overflow, tokens_per_batch=args.tokens_per_batch, limit=args.limit,
            schema=load_report.schema, scored=stream.scored, not_scored=len(skipped), seconds=round(stream.seconds, 3),
            membership=not args.no_membership, min_k_percent=args.min_k_percent, reference=args.reference,
            chunk_records=args.chunk_records))
    real, padded, seconds = stream.real, stream.padded, max(stream.seconds, 1e-9)
    print(stream.stats.table())
    print(f"scored {stream.scored} records ({real} tokens, {real / max(padded, 1):.1%} of {padded} computed "
          f"positions) in {seconds:.1f} s ({real / seconds:.0f} tokens/s, compile {compile_seconds:.1f} s) -> "
          f"{args.out}" + (f"; {len(skipped)} not scored, listed in {args.out}.skipped.jsonl" if skipped else ""))
