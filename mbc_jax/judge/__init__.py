"""Pairwise LLM judge: which of two models answered each prompt better.

`mbc-jax judge --a A.jsonl --b B.jsonl --out results.json` (the command: `mbc_jax.commands.judge`)
reads two answer files written by `mbc-jax generate`, matches their records by `id` (or `index`),
and asks a judge model behind any OpenAI-compatible chat-completions endpoint (OpenAI, vLLM, a
llama.cpp server) to compare each pair in both presentation orders. A win needs both orders to
agree; anything else is a tie.

- `protocol`: the prompt template, the verdict format, how two orders make one outcome.
- `answers`: reading and matching the answer files.
- `client`: endpoint and API key, requests with retries and backoff, the judgment cache.
- `comparison`: one comparison end to end (`judge_files`) and the files it writes.
- `winrate`: win / tie / loss rates with bootstrap CIs, and the Figure 5 style chart.
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
    public_url,
    redact,
    resolve_endpoint,
)
from mbc_jax.judge.comparison import default_name, judge_files, output_paths, summary_line
from mbc_jax.judge.protocol import (
    ORDERS,
    TEMPLATE_PATH,
    InvalidVerdict,
    JudgeTemplate,
    combine,
    judgment,
    load_template,
    parse_verdict,
    shown,
    winner_of,
)

__all__ = [
    "API_KEY_ENV", "DEFAULT_BASE_URL", "DEFAULT_MODEL", "LOCAL_PLACEHOLDER_KEY", "ORDERS", "RETRYABLE_STATUS",
    "TEMPLATE_PATH", "InvalidVerdict", "Judge", "JudgeConfig", "JudgeStats", "JudgeTemplate", "JudgeUnavailable",
    "JudgmentCache", "Matched", "Pair", "combine", "default_name", "is_local_url", "judge_files", "judgment",
    "load_template", "make_client", "match_answers", "output_paths", "parse_verdict", "public_url", "read_answers",
    "redact", "resolve_endpoint", "shown", "summary_line", "winner_of",
]
