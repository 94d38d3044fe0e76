"""`mbc-jax generate`: answer every record's prompt with a model; one JSON line per record.

    mbc-jax generate --model run/final --data test.jsonl --out answers.jsonl      # paper defaults

Each output line: index, id, category, instruction (what `mbc-jax judge` shows the judge: the record's
instruction, its context under "Context:", earlier turns under a label; no template markers),
prompt (the template-rendered text generation continued), output_text, output_ids, entropy,
sampling_entropy (see `mbc_jax.generate.decode` for both distributions), num_tokens, stopped
("eos" | "length"), prompt_tokens, prompt_truncated, and reference (the held-out response) when the
record has one. The settings and the run summary go to OUT's stem + `.meta.json`.

Records are answered `--chunk-records` at a time and each chunk's answers appended to OUT.partial
(`mbc_jax.partial`): a rerun of the same command after a kill resumes after the last whole chunk and writes
what an uninterrupted run writes.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import sys
from pathlib import Path

from mbc_jax import UserError, __version__
from mbc_jax.answers_file import answer_lines, finish_answers, meta_path, partial_answers
from mbc_jax.commands.common import (
    add_data_args,
    add_model_args,
    chunked,
    format_options,
    load_model_from_args,
    load_template,
    record_count,
)
from mbc_jax.generate import (
    DEFAULT_BUCKET,
    DEFAULT_MAX_NEW_TOKENS,
    DEFAULT_REPETITION_PENALTY,
    DEFAULT_TEMPERATURE,
    DEFAULT_TOP_P,
    Answerer,
    AnswerProgress,
    AnswerTotals,
    SamplingConfig,
    default_new_tokens,
)
from mbc_jax.partial import data_fingerprint, folder_fingerprint
from mbc_jax.paths import check_output_file


def register(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "generate", help="generate answers to every record's prompt (KV-cache sampling, entropy)",
        description="Generate a continuation of every record's prompt (the record rendered up to the "
                    "assistant prefix; responses held out) with nucleus sampling (paper defaults: top-p "
                    f"{DEFAULT_TOP_P}, temperature {DEFAULT_TEMPERATURE}, repetition penalty "
                    f"{DEFAULT_REPETITION_PENALTY}, {DEFAULT_MAX_NEW_TOKENS} new tokens) or greedily; "
                    "writes one JSON line per record for `mbc-jax judge`. The checkpoint folder needs "
                    "tokenizer files.")
    add_model_args(p)
    add_data_args(p)
    p.add_argument("--out", required=True, metavar="FILE",
                   help="answers JSONL to write (settings: FILE stem + .meta.json)")
    p.add_argument("--greedy", action="store_true",
                   help="argmax decoding (the repetition penalty still applies; "
                        "--repetition-penalty 1 for plain greedy)")
    p.add_argument("--top-p", type=float, default=DEFAULT_TOP_P, metavar="P",
                   help=f"nucleus mass, 1 = off (default: {DEFAULT_TOP_P})")
    p.add_argument("--top-k", type=int, default=0, metavar="K",
                   help="keep the K most likely tokens, 0 = off (default: 0; HF generate's own default is 50)")
    p.add_argument("--temperature", type=float, default=DEFAULT_TEMPERATURE, metavar="T",
                   help=f"softmax temperature (default: {DEFAULT_TEMPERATURE})")
    p.add_argument("--repetition-penalty", type=float, default=DEFAULT_REPETITION_PENALTY, metavar="R",
                   help="CTRL penalty on tokens already in the sequence, 1 = off "
                        f"(default: {DEFAULT_REPETITION_PENALTY})")
    p.add_argument("--max-new-tokens", type=int, default=None, metavar="N",
                   help=f"new tokens per record at most (default: {DEFAULT_MAX_NEW_TOKENS}, the paper's; on a model "
                        "with fewer than twice that many positions, half its positions, and the output says so)")
    p.add_argument("--ignore-eos", action="store_true", help="do not stop at EOS: always generate --max-new-tokens")
    p.add_argument("--seed", type=int, default=0, metavar="S", help="sampling seed (default: 0)")
    p.add_argument("--batch-size", type=int, default=32, metavar="B",
                   help="rows per decoding batch, rounded up to a multiple of the mesh's data x fsdp (default: 32)")
    p.add_argument("--max-prompt-length", type=int, default=None, metavar="N",
                   help="keep at most the last N prompt tokens (default: the model's positions minus --max-new-tokens)")
    p.add_argument("--bucket", type=int, default=DEFAULT_BUCKET, metavar="N",
                   help=f"the smallest prompt bucket: prompts are padded to N x 1, 1.5, 2, 3, 4, 6, ... tokens "
                        f"(one compile per bucket; default: {DEFAULT_BUCKET})")
    p.add_argument("--chunk-records", type=int, default=4096, metavar="N",
                   help="records read, answered and written at a time (default 4096; prompts are bucketed and "
                        "batched within a chunk): answers go to OUT.partial a chunk at a time, and a rerun of the same "
                        "command after a kill resumes from the last whole chunk")
    p.set_defaults(func=run)
    return p


def _check_args(args: argparse.Namespace) -> SamplingConfig:
    for name in ("batch_size", "bucket", "limit", "max_prompt_length", "chunk_records"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise UserError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    given = {} if args.max_new_tokens is None else {"max_new_tokens": args.max_new_tokens}  # else: default_new_tokens
    cfg = SamplingConfig(greedy=args.greedy, temperature=args.temperature, top_p=args.top_p, top_k=args.top_k,
                         repetition_penalty=args.repetition_penalty, ignore_eos=args.ignore_eos, **given)
    try:
        return cfg.validate()
    except UserError as e:  # name the flag
        raise UserError(f"{e} (--top-p, --top-k, --temperature, --repetition-penalty, --max-new-tokens)") from None


def fingerprint(args: argparse.Namespace, model, cfg: SamplingConfig, template) -> dict:
    """What made the answers of OUT: a resumed run must match it (model and data files by size and mtime, the
    template, the seed and every sampling and batching setting)."""
    return dict(mbc_jax=__version__, model=model.path, model_files=folder_fingerprint(model.path),
                data=data_fingerprint(str(args.data)), template=template.to_dict(), seed=args.seed,
                sampling=dataclasses.asdict(cfg), batch_size=args.batch_size, bucket=args.bucket,
                max_prompt_length=args.max_prompt_length, chunk_records=args.chunk_records, limit=args.limit,
                schema=args.schema, skip_bad=args.skip_bad, **format_options(args), dtype=args.dtype,
                param_dtype=args.param_dtype, mesh=args.mesh)


def answer_stream(args: argparse.Namespace, answerer: Answerer, records, part, main_process: bool) -> AnswerTotals:
    """Answers the records `--chunk-records` at a time (chunks cut from the start of the input, so a rerun cuts
    the same ones; prompt buckets and batches are made inside each chunk), each chunk's answers committed to
    OUT.partial with the running totals; a committed earlier run's chunks are read past, not answered again."""
    state = part.open(write=main_process)
    totals = AnswerTotals() if state is None else AnswerTotals.from_state(state["totals"])
    done_chunks = 0 if state is None else state["chunks"]
    if state is not None:
        print(f"{args.out}: resuming after {done_chunks} chunks ({totals.records} answers in {part.partial})",
              file=sys.stderr)
    chunks = chunked(records, args.chunk_records)
    for _ in range(done_chunks):  # read past what is committed
        next(chunks, None)
    total = record_count(args)
    print(answerer.plan(total), file=sys.stderr)
    with AnswerProgress(total, "generate") as bar:
        for chunk in chunks:
            base = (totals.records, totals.tokens)
            rows, seconds, truncated = answerer.answer(
                chunk, on_batch=lambda done, tokens, base=base: bar(base[0] + done, base[1] + tokens),
                log=lambda line: print(line, file=sys.stderr))
            totals.add(rows, seconds, truncated)
            done_chunks += 1
            if main_process:
                part.commit(answer_lines(rows), {"chunks": done_chunks, "totals": totals.state()})
    return totals


def run(args: argparse.Namespace) -> int:
    from mbc_jax import distributed
    from mbc_jax.data import iter_records

    cfg = _check_args(args)
    out = Path(args.out)
    if out.is_dir():
        raise UserError(f"--out {out}: is a folder; give a file name such as {out / 'answers.jsonl'}")
    check_output_file(out)  # before the data and the model load
    check_output_file(meta_path(out), "--out's settings file")
    template = load_template(args)
    load_report, records = iter_records(args.data, schema=args.schema, skip_bad=args.skip_bad, **format_options(args))
    if args.limit is not None:
        records = itertools.islice(records, args.limit)
    model = load_model_from_args(args)
    cap_note = None
    if args.max_new_tokens is None:
        n, cap_note = default_new_tokens(model.config.max_position_embeddings)
        cfg = dataclasses.replace(cfg, max_new_tokens=n)
        if cap_note:
            print(cap_note, file=sys.stderr)
    answerer = Answerer.prepare(model, cfg, template, seed=args.seed, batch_size=args.batch_size,
                                bucket=args.bucket, max_prompt_length=args.max_prompt_length,
                                template_source=args.template or "the template")
    main_process = distributed.is_main()  # every process answers every record; process 0 writes the answers
    part = partial_answers(out, fingerprint(args, model, cfg, template))
    try:
        totals = answer_stream(args, answerer, records, part, main_process)
    finally:
        part.close()
    print(load_report.summary(), file=sys.stderr)
    summary = totals.summary(answerer.max_prompt)
    meta = {"model": model.path, "data": str(args.data), "out": str(out), "seed": args.seed,
            "sampling": dataclasses.asdict(cfg), "eos_token_id": answerer.eos, "template": template.to_dict(),
            "entropy": "full softmax of the raw logits (temperature 1, before penalty/top-k/top-p), nats",
            "sampling_entropy": "softmax of the processed logits the token was drawn from (0 for greedy), nats",
            "summary": summary, "max_new_tokens_note": cap_note, "chunk_records": args.chunk_records}
    if main_process:
        finish_answers(part, meta)
    report(summary, cfg, cap_note, out)
    return 0


def report(summary: dict, cfg: SamplingConfig, cap_note: str | None, out: Path) -> None:
    """The run's one line (and the warning on empty answers)."""
    print(f"generated {summary['records']} records, {summary['tokens']} tokens in {summary['seconds']:.1f}s "
          f"({summary['tokens_per_second']:.1f} tok/s); mean entropy {summary['mean_entropy']:.3f} nats "
          f"(sampling {summary['mean_sampling_entropy']:.3f}); stopped at EOS {summary['stopped_eos']}/"
          f"{summary['records']}; prompts cut to fit {summary['prompts_truncated']}; empty answers {summary['empty']}; "
          f"wrote {out}"
          + (f" ({cfg.max_new_tokens} new tokens at most: capped by the model's positions)" if cap_note else ""))
    if summary["empty"]:
        print(f"warning: {summary['empty']} of {summary['records']} answers are empty; `mbc-jax judge` refuses them "
              "unless --allow-empty", file=sys.stderr)
