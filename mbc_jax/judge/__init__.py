"""Pairwise LLM judge: which of two models answered each prompt better.

`mbc-jax judge --a A.jsonl --b B.jsonl --out results.json` (the command: `mbc_jax.commands.judge`)
reads two answer files written by `mbc-jax generate`, matches their records by `id` (or `index`),
and asks a judge model behind any OpenAI-compatible chat-completions endpoint (OpenAI, vLLM, a
llama.cpp server) to compare each pair. `--orders 1` (the default, the paper's protocol) judges
each pair once, in an order drawn per pair from `--seed`; `--orders 2` judges both orders and also
reports the consistent rates (a win needs both orders to agree; anything else is a tie).

- `protocol`: the prompt template, the verdict format, the orders judged and how they make one outcome.
- `answers`: reading and matching the answer files.
- `client`: endpoint and API key, requests with retries and backoff, the judgment cache.
- `comparison`: one comparison end to end (`judge_files`) and the files it writes.
- `winrate`: win / tie / loss rates with bootstrap CIs, and the Figure 5 style chart.
- `length`: mean answer lengths and the length-controlled win rate (logistic fit, bootstrap CI).

For other callers (e.g. checkpoint selection): build `Pair`s, then
`make_judge(cfg, base_url, cache_dir).judge_pairs(pairs, orders=1, seed=0, max_calls=N)` returns one
judgment dict per pair (`outcome`: "A", "B", "tie" or None); `Judge.calls_needed` says what it would cost first.
"""

from mbc_jax.judge.answers import Matched, Pair, match_answers, read_answers
from mbc_jax.judge.client import (
    API_KEY_ENV,
    DEFAULT_BASE_URL,
    DEFAULT_MODEL,
    LOCAL_PLACEHOLDER_KEY,
    RETRYABLE_STATUS,
    Judge,
    JudgeConfig,
    JudgeStats,
    JudgeUnavailable,
    JudgmentCache,
    is_local_url,
    make_client,
    make_judge,
    public_url,
    redact,
    resolve_endpoint,
)
from mbc_jax.judge.comparison import default_name, judge_files, output_paths, summary_line
from mbc_jax.judge.protocol import (
    ORDERS,
    PROTOCOLS,
    TEMPLATE_PATH,
    InvalidVerdict,
    JudgeTemplate,
    combine,
    judgment,
    load_template,
    orders_judged,
    parse_verdict,
    seeded_order,
    shown,
    winner_of,
    words,
)

__all__ = [
    "API_KEY_ENV", "DEFAULT_BASE_URL", "DEFAULT_MODEL", "LOCAL_PLACEHOLDER_KEY", "ORDERS", "PROTOCOLS",
    "RETRYABLE_STATUS", "TEMPLATE_PATH", "InvalidVerdict", "Judge", "JudgeConfig", "JudgeStats", "JudgeTemplate",
    "JudgeUnavailable", "JudgmentCache", "Matched", "Pair", "combine", "default_name", "is_local_url", "judge_files",
    "judgment", "load_template", "make_client", "make_judge", "match_answers", "orders_judged", "output_paths",
    "parse_verdict", "public_url", "read_answers", "redact", "resolve_endpoint", "seeded_order", "shown",
    "summary_line", "winner_of", "words",
]
