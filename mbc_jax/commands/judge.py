"""`mbc-jax judge`: judge two answer files against each other with an LLM (see `mbc_jax.judge`).

    mbc-jax judge --a mbc/answers.jsonl --b uniform/answers.jsonl --out judge/mbc_vs_uniform.json

`--orders 1` (the default) is the paper's protocol: one judgment per pair, the order drawn per pair
from `--seed`; `--orders 2` judges both orders (a win needs both to agree). Prints a short summary;
writes the results JSON, the judgments JSONL, and the chart with its CSV.
"""

from __future__ import annotations

import argparse
import sys

from mbc_jax import UserError, exit_code
from mbc_jax.judge import API_KEY_ENV, DEFAULT_BASE_URL, DEFAULT_MODEL, JudgeConfig, judge_files, summary_line


def register(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "judge", help="pairwise LLM judge of two answer files (win/tie/loss rates, chart)",
        description="Judge the answers of model A against model B with an LLM behind any "
                    "OpenAI-compatible endpoint; by default each pair is judged once, in an order drawn "
                    "per pair from --seed (the paper's protocol). The API key "
                    f"is read from {API_KEY_ENV} (not needed for a local endpoint).")
    p.add_argument("--a", required=True, metavar="FILE", help="answers of model A (JSONL)")
    p.add_argument("--b", required=True, metavar="FILE", help="answers of model B (JSONL)")
    p.add_argument("--out", required=True, metavar="FILE",
                   help="results JSON; judgments .jsonl, .png and .csv are written next to it")
    p.add_argument("--base-url", metavar="URL", default=None,
                   help="chat-completions endpoint, e.g. http://127.0.0.1:8000/v1 "
                        f"(default: $OPENAI_BASE_URL, else {DEFAULT_BASE_URL})")
    p.add_argument("--model", metavar="NAME", default=DEFAULT_MODEL,
                   help=f"judge model (default: {DEFAULT_MODEL})")
    p.add_argument("--concurrency", type=int, default=8, metavar="N",
                   help="parallel requests (default: 8)")
    p.add_argument("--max-retries", type=int, default=6, metavar="N",
                   help="retries per request on 429/5xx/timeouts, and separately on invalid "
                        "verdicts (default: 6)")
    p.add_argument("--timeout", type=float, default=120.0, metavar="S",
                   help="seconds per request (default: 120)")
    p.add_argument("--backoff", type=float, default=1.0, metavar="S",
                   help="first retry delay in seconds, doubled per retry, max 60 (default: 1)")
    p.add_argument("--cache", metavar="DIR", default=None,
                   help="judgment cache (default: judge_cache/ next to --out)")
    p.add_argument("--name-a", default=None, metavar="NAME",
                   help="label of model A (default: from the file name)")
    p.add_argument("--name-b", default=None, metavar="NAME",
                   help="label of model B (default: from the file name)")
    p.add_argument("--orders", type=int, choices=(1, 2), default=1,
                   help="1: one judgment per pair, order drawn per pair from --seed (the paper's protocol); "
                        "2: both orders, a win only when both agree; also reports the seeded order's rates "
                        "(default: 1)")
    p.add_argument("--seed", type=int, default=0, metavar="S",
                   help="draws each pair's presentation order and seeds the bootstrap; recorded in the "
                        "output (default: 0)")
    p.add_argument("--max-calls", type=int, default=None, metavar="N",
                   help="stop before sending anything if more than N uncached judge requests are needed")
    p.add_argument("--bootstrap", type=int, default=1000, metavar="N",
                   help="bootstrap resamples for the confidence intervals (default: 1000)")
    p.add_argument("--temperature", type=float, default=0.0, metavar="T",
                   help="judge temperature (default: 0)")
    p.add_argument("--max-tokens", type=int, default=1024, metavar="N",
                   help="judge reply limit; 0 leaves it out of the request (default: 1024)")
    p.add_argument("--template", metavar="FILE", default=None,
                   help="judging prompt template with {instruction}, {response_a}, {response_b} "
                        "(default: the paper's Figure 4 prompt, templates/figure4_judge_prompt.txt)")
    p.add_argument("--allow-empty", action="store_true",
                   help="judge empty answers as they are instead of stopping")
    p.add_argument("--judge-identical", action="store_true",
                   help="send pairs whose two answers are the same text to the judge too (default: such a pair is "
                        "a tie without a call, counted as 'identical', as `mbc-jax select` does)")
    p.add_argument("--limit", type=int, default=None, metavar="N",
                   help="judge only the first N matched pairs (a cheap trial run)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    config = JudgeConfig(model=args.model, temperature=args.temperature,
                         max_tokens=args.max_tokens, max_retries=args.max_retries,
                         timeout=args.timeout, backoff_base=args.backoff,
                         concurrency=args.concurrency)
    for name in ("concurrency", "timeout", "bootstrap", "limit", "max_calls"):
        value = getattr(args, name)
        if value is not None and value <= 0:
            raise UserError(f"--{name.replace('_', '-')} must be positive, got {value}")
    if args.max_retries < 0 or args.backoff < 0:
        raise UserError("--max-retries and --backoff must be >= 0")
    results = judge_files(
        args.a, args.b, args.out, config=config, base_url=args.base_url, cache_dir=args.cache,
        name_a=args.name_a, name_b=args.name_b, template=args.template, orders=args.orders,
        seed=args.seed, max_calls=args.max_calls,
        n_boot=args.bootstrap, allow_empty=args.allow_empty, judge_identical=args.judge_identical, limit=args.limit,
        progress=not args.no_progress)
    print(summary_line(results, args.out))
    return 0


def main(argv: list[str] | None = None) -> int:
    """`python -m mbc_jax.commands.judge ...`: the judge command without loading the other commands."""
    parser = argparse.ArgumentParser(prog="mbc-jax")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["judge", *(sys.argv[1:] if argv is None else argv)])
    return exit_code(lambda: args.func(args),
                     interrupted="interrupted; judgments so far are cached, rerun to resume")


if __name__ == "__main__":
    sys.exit(main())
