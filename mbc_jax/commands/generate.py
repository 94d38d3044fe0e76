"""`mbc-jax generate`: answer every record's prompt with a model; one JSON line per record.

    mbc-jax generate --model run/final --data test.jsonl --out answers.jsonl      # paper defaults

Each output line: index, id, category, prompt (text), output_text, output_ids, entropy,
sampling_entropy (see `mbc_jax.generate` for both distributions), num_tokens, stopped
("eos" | "length"), prompt_tokens, prompt_truncated, and reference (the held-out response) when the
record has one. The settings and the run summary go to OUT's stem + `.meta.json`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

from mbc_jax import UserError
from mbc_jax.commands.common import (add_data_args, add_model_args, load_model_from_args, load_template, progress,
                                     write_jsonl)
from mbc_jax.generate import (DEFAULT_BUCKET, DEFAULT_MAX_NEW_TOKENS, DEFAULT_REPETITION_PENALTY,
                              DEFAULT_TEMPERATURE, DEFAULT_TOP_P, SamplingConfig)


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
    p.add_argument("--out", required=True, metavar="FILE", help="answers JSONL to write (settings: FILE stem + .meta.json)")
    p.add_argument("--greedy", action="store_true",
                   help="argmax decoding (the repetition penalty still applies; --repetition-penalty 1 for plain greedy)")
    p.add_argument("--top-p", type=float, default=DEFAULT_TOP_P, metavar="P",
                   help=f"nucleus mass, 1 = off (default: {DEFAULT_TOP_P})")
    p.add_argument("--top-k", type=int, default=0, metavar="K",
                   help="keep the K most likely tokens, 0 = off (default: 0; HF generate's own default is 50)")
    p.add_argument("--temperature", type=float, default=DEFAULT_TEMPERATURE, metavar="T",
                   help=f"softmax temperature (default: {DEFAULT_TEMPERATURE})")
    p.add_argument("--repetition-penalty", type=float, default=DEFAULT_REPETITION_PENALTY, metavar="R",
                   help=f"CTRL penalty on tokens already in the sequence, 1 = off (default: {DEFAULT_REPETITION_PENALTY})")
    p.add_argument("--max-new-tokens", type=int, default=DEFAULT_MAX_NEW_TOKENS, metavar="N",
                   help=f"new tokens per record at most (default: {DEFAULT_MAX_NEW_TOKENS})")
    p.add_argument("--ignore-eos", action="store_true", help="do not stop at EOS: always generate --max-new-tokens")
    p.add_argument("--seed", type=int, default=0, metavar="S", help="sampling seed (default: 0)")
    p.add_argument("--batch-size", type=int, default=32, metavar="B",
                   help="rows per decoding batch, rounded up to a multiple of the mesh's data x fsdp (default: 32)")
    p.add_argument("--max-prompt-length", type=int, default=None, metavar="N",
                   help="keep at most the last N prompt tokens (default: the model's positions minus --max-new-tokens)")
    p.add_argument("--bucket", type=int, default=DEFAULT_BUCKET, metavar="N",
                   help=f"pad prompts to a multiple of N tokens (one compile per bucket; default: {DEFAULT_BUCKET})")
    p.set_defaults(func=run)
    return p


def _check_args(args: argparse.Namespace) -> SamplingConfig:
    for name in ("batch_size", "bucket", "limit", "max_prompt_length"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise UserError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    cfg = SamplingConfig(greedy=args.greedy, temperature=args.temperature, top_p=args.top_p, top_k=args.top_k,
                         repetition_penalty=args.repetition_penalty, max_new_tokens=args.max_new_tokens,
                         ignore_eos=args.ignore_eos)
    try:
        return cfg.validate()
    except UserError as e:  # name the flag
        raise UserError(f"{e} (--top-p, --top-k, --temperature, --repetition-penalty, --max-new-tokens)") from None


def meta_path(out: str | Path) -> Path:
    out = Path(out)
    return out.with_name(out.stem + ".meta.json")


def run(args: argparse.Namespace) -> int:
    cfg = _check_args(args)
    out = Path(args.out)
    if out.is_dir():
        raise UserError(f"--out {out}: is a folder; give a file name such as {out / 'answers.jsonl'}")

    from mbc_jax.data import load_records
    from mbc_jax.generate import batch_rows, build_prompts, decode_text, generate, summarize
    from mbc_jax.sharding import mesh_str

    template = load_template(args)
    records, load_report = load_records(args.data, schema=args.schema, skip_bad=args.skip_bad)
    print(load_report.summary(), file=sys.stderr)
    if args.limit is not None and args.limit < len(records):
        print(f"--limit {args.limit}: generating for the first {args.limit} of {len(records)} records", file=sys.stderr)
        records = records[:args.limit]

    model = load_model_from_args(args)
    mesh, tok = model.mesh, model.tokenizer
    if tok is None:
        raise UserError(f"--model {args.model}: the folder has no tokenizer files (tokenizer.json, vocab.json, ...); "
                        "generation needs one to encode prompts and decode answers: copy the base model's tokenizer "
                        "files into the folder")
    positions = model.config.max_position_embeddings
    room = positions - cfg.max_new_tokens
    if room < 1:
        raise UserError(f"--max-new-tokens {cfg.max_new_tokens}: the model has only {positions} positions; "
                        f"use at most {positions - 1}")
    max_prompt = args.max_prompt_length or room
    if max_prompt > room:
        raise UserError(f"--max-prompt-length {max_prompt} + --max-new-tokens {cfg.max_new_tokens} exceeds the "
                        f"model's {positions} positions; use --max-prompt-length <= {room}")

    prompts = build_prompts(records, tok, template, vocab_size=model.config.vocab_size, max_prompt_length=max_prompt)
    truncated = [p for p in prompts if p.truncated_from]
    eos = template.eos_id(tok)
    if eos is None and not cfg.ignore_eos:
        raise UserError("the tokenizer has no eos_token_id: set eos_token_id in the template, or pass --ignore-eos")
    pad = next((i for i in (tok.pad_token_id, eos, 0) if i is not None))
    rows = batch_rows(len(prompts), args.batch_size, mesh)
    print(f"generate: {len(prompts)} prompts, {cfg.describe()}, seed {args.seed}, {rows} rows per batch "
          f"on mesh {mesh_str(mesh)}", file=sys.stderr)
    if truncated:
        print(f"generate: {len(truncated)} prompt(s) longer than {max_prompt} tokens kept their last {max_prompt} "
              f"(ids {', '.join(p.id for p in truncated[:10])}{', ...' if len(truncated) > 10 else ''})",
              file=sys.stderr)

    bar = progress(len(prompts), "generate")

    def on_batch(done: int, tokens: int) -> None:
        bar.update(done - bar.n)
        bar.set_postfix(tokens=tokens, refresh=False)

    start = time.perf_counter()
    try:
        gens = generate(model, [p.ids for p in prompts], cfg, seed=args.seed, eos_token_id=eos, pad_token_id=pad,
                        batch_size=args.batch_size, bucket=args.bucket, row_keys=[p.index for p in prompts],
                        on_batch=on_batch)
    finally:
        bar.close()
    seconds = time.perf_counter() - start

    rows_out = []
    for p, g in zip(prompts, gens):
        ids = [int(i) for i in g.output_ids]
        text_ids = ids[:-1] if g.stopped == "eos" else ids
        rec = {
            "index": p.index, "id": p.id, "category": p.category, "prompt": p.text,
            "output_text": decode_text(tok, text_ids).strip(),
            "output_ids": ids, "entropy": g.entropy, "sampling_entropy": g.sampling_entropy,
            "num_tokens": g.num_tokens, "stopped": g.stopped,
            "prompt_tokens": int(p.ids.size), "prompt_truncated": bool(p.truncated_from),
        }
        if p.reference is not None:
            rec["reference"] = p.reference
        rows_out.append(rec)
    write_jsonl(out, rows_out)

    summary = summarize(gens, seconds)
    summary.update(prompts_truncated=len(truncated), max_prompt_length=max_prompt)
    meta = {"model": model.path, "data": str(args.data), "out": str(out), "seed": args.seed,
            "sampling": dataclasses.asdict(cfg), "eos_token_id": eos, "template": template.to_dict(),
            "entropy": "full softmax of the raw logits (temperature 1, before penalty/top-k/top-p), nats",
            "sampling_entropy": "softmax of the processed logits the token was drawn from (0 for greedy), nats",
            "summary": summary}
    tmp = meta_path(out).with_suffix(".json.tmp")
    tmp.write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, meta_path(out))
    print(f"generated {summary['records']} records, {summary['tokens']} tokens in {seconds:.1f}s "
          f"({summary['tokens_per_second']:.1f} tok/s); mean entropy {summary['mean_entropy']:.3f} nats "
          f"(sampling {summary['mean_sampling_entropy']:.3f}); stopped at EOS {summary['stopped_eos']}/"
          f"{summary['records']}; wrote {out}")
    return 0

