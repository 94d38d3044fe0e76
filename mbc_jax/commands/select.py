"""`mbc-jax select`: choose a run's checkpoint with the judge, as the paper chose by hand.

    mbc-jax select --run runs/mbc --dev 50 --base-url http://127.0.0.1:8000/v1

Prints the ranking and the chosen step; writes RUN/selection/ (see `mbc_jax.selection.select`).
"""

from __future__ import annotations

import argparse
import sys

from mbc_jax import UserError
from mbc_jax.commands.common import add_mesh_arg, fmt, table

DEFAULT_DEV, DEFAULT_MAX_CALLS = 50, 2000  # = mbc_jax.selection (not imported here: --help stays fast)


def register(subparsers) -> argparse.ArgumentParser:
    from mbc_jax.generate.sampling import (  # light: no model code
        DEFAULT_MAX_NEW_TOKENS,
        DEFAULT_REPETITION_PENALTY,
        DEFAULT_TEMPERATURE,
        DEFAULT_TOP_P,
    )
    from mbc_jax.judge.client import API_KEY_ENV, DEFAULT_BASE_URL, DEFAULT_MODEL

    p = subparsers.add_parser(
        "select", help="rank a run's checkpoints with the judge on dev prompts and choose one",
        description=(
            "Automates the paper's checkpoint choice (by hand, on a 50-example development set). Every kept "
            f"checkpoint after step 0 answers N dev prompts with the paper's sampling settings (top-p {DEFAULT_TOP_P}, "
            f"temperature {DEFAULT_TEMPERATURE}, repetition penalty {DEFAULT_REPETITION_PENALTY}, the same seed for "
            "every checkpoint). Dev prompts: by "
            "default a seeded sample of N records of the run's VALIDATION split (held out from training, but "
            "part of the validation set: comparisons judged on that split should leave their ids out, as "
            "experiments/reproduce.py does; the paper kept them separate), or of --dev-data FILE. The judge "
            "(Figure 4 prompt, both orders, a win only when both agree, every reply cached) compares checkpoint "
            "pairs: the full round robin when it fits in --max-calls, else every adjacent pair plus a seeded "
            "sample of the others. A Bradley-Terry fit (ties = half a win each, a tiny ridge) with bootstrap "
            "CIs over the dev prompts ranks them; the strongest is chosen when the games separate it: with no valid "
            "game, only ties, or a strongest checkpoint whose 95% CI overlaps the CI of every other, it reports "
            "\"no winner\" with the reason and chooses no step. Writes RUN/selection/: "
            f"selection.json, ranking.csv, games.jsonl, answers/, judge_cache/. The API key is read from "
            f"{API_KEY_ENV} (not needed for a local endpoint)."))
    p.add_argument("--run", required=True, metavar="DIR", help="run folder written by `mbc-jax train`")
    p.add_argument("--dev", type=int, default=DEFAULT_DEV, metavar="N",
                   help=f"dev prompts (default: {DEFAULT_DEV}, the paper's development set size)")
    p.add_argument("--dev-data", default=None, metavar="FILE",
                   help="draw the dev prompts from this file instead of the run's validation split")
    p.add_argument("--steps", default=None, metavar="S1,S2,...",
                   help="checkpoints to compare (default: every kept checkpoint after step 0)")
    p.add_argument("--max-calls", type=int, default=DEFAULT_MAX_CALLS, metavar="N",
                   help=f"judge requests at most, cached ones included, retries not (default: {DEFAULT_MAX_CALLS})")
    p.add_argument("--out", default=None, metavar="DIR", help="output folder (default: RUN/selection)")
    p.add_argument("--seed", type=int, default=0, metavar="S",
                   help="seed of the dev sample, the pair sample, generation and the bootstrap (default: 0)")
    p.add_argument("--max-new-tokens", type=int, default=None, metavar="N",
                   help=f"new tokens per answer (default: {DEFAULT_MAX_NEW_TOKENS}, the paper's; on a model with fewer "
                        "than twice that many positions, half its positions, as `mbc-jax generate`)")
    p.add_argument("--batch-size", type=int, default=32, metavar="B", help="generation rows per batch (default: 32)")
    add_mesh_arg(p)
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"), help="compute dtype for generation")
    p.add_argument("--bootstrap", type=int, default=1000, metavar="N",
                   help="bootstrap resamples of the dev prompts for the CIs (default: 1000)")
    p.add_argument("--base-url", metavar="URL", default=None,
                   help=f"judge chat-completions endpoint (default: $OPENAI_BASE_URL, else {DEFAULT_BASE_URL})")
    p.add_argument("--model", metavar="NAME", default=DEFAULT_MODEL, help=f"judge model (default: {DEFAULT_MODEL})")
    p.add_argument("--template", metavar="FILE", default=None,
                   help="judge prompt template (default: the paper's Figure 4 prompt)")
    p.add_argument("--cache", metavar="DIR", default=None, help="judgment cache (default: OUT/judge_cache)")
    p.add_argument("--concurrency", type=int, default=8, metavar="N", help="parallel judge requests (default: 8)")
    p.add_argument("--max-retries", type=int, default=6, metavar="N",
                   help="judge retries per request, on failures and on invalid verdicts (default: 6)")
    p.add_argument("--timeout", type=float, default=120.0, metavar="S", help="seconds per judge request (default: 120)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)
    return p


def parse_steps(text: str | None) -> list[int] | None:
    if not text:
        return None
    try:
        return [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise UserError(f"--steps {text!r}: expected comma-separated step numbers, e.g. 1000,2000") from None


def run(args: argparse.Namespace) -> int:
    from mbc_jax.judge.client import JudgeConfig
    from mbc_jax.selection import SelectConfig, select_checkpoint

    for name in ("dev", "bootstrap", "concurrency", "timeout"):
        if getattr(args, name) <= 0:
            raise UserError(f"--{name} must be positive, got {getattr(args, name)}")
    config = SelectConfig(dev=args.dev, dev_data=args.dev_data, seed=args.seed, steps=parse_steps(args.steps),
                          max_calls=args.max_calls, max_new_tokens=args.max_new_tokens, batch_size=args.batch_size,
                          mesh=args.mesh, dtype=args.dtype, n_boot=args.bootstrap)
    judge = JudgeConfig(model=args.model, max_retries=args.max_retries, timeout=args.timeout,
                        concurrency=args.concurrency)
    result = select_checkpoint(args.run, config, judge, out=args.out, base_url=args.base_url, cache_dir=args.cache,
                               template=args.template, progress=not args.no_progress,
                               log=lambda m: print(m, file=sys.stderr))
    print(report(result))
    return 0


def report(result: dict) -> str:
    """The ranking table and the chosen step, for the terminal."""
    rows = [[("* " if r["chosen"] else "  ") + str(r["step"]), r["rank"], fmt(r["strength"], 2),
             f"[{fmt(r['ci_low'], 2)}, {fmt(r['ci_high'], 2)}]", fmt(r["p_top"], 2), r["wins"], r["ties"], r["losses"]]
            for r in sorted(result["ranking"], key=lambda r: r["rank"])]
    calls = result["calls"]
    return "\n".join([
        f"dev prompts: {result['dev']['description']}",
        f"pairs: {result['schedule']['description']}; {calls['api_calls']} judge API calls, {calls['cached']} cached, "
        f"{result['games']['identical_answers']} identical-answer ties, {result['games']['invalid']} invalid",
        table(rows, ["step", "rank", "strength", "95% CI", "P(top)", "wins", "ties", "losses"]),
        truncation_line(result),
        (f"chosen step: {result['chosen_step']} ({result['reason']}; last: {result['last_step']})"
         if result["chosen_step"] is not None else f"{result['reason']}; no step chosen (last: {result['last_step']})"),
        f"wrote {result['out']}",
    ])


def truncation_line(result: dict) -> str:
    """How many dev prompts were cut to fit the model (the most over the checkpoints)."""
    n = max(result["prompts_truncated"].values(), default=0)
    return f"dev prompts cut to fit the model: {n} of {result['dev']['n']}"
