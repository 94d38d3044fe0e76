"""The judge client: endpoint and API key, the HTTP requests with their retries, and the cache.

- 429, 408, 409, 5xx, timeouts and connection errors are retried with exponential backoff and
  jitter (honouring Retry-After); other HTTP errors (bad key, unknown model, ...) stop the run at
  once. When retries run out the run stops (JudgeUnavailable); everything judged so far is cached.
- An invalid verdict is retried at once, at most `max_retries` times; a reply still invalid is
  returned with verdict None and not cached, so the next run asks again.
- Each valid judgment is written to the on-disk cache (one JSON file per key, written atomically)
  as soon as it arrives. The key is a hash of the judge model, the sampling settings and the full
  rendered prompt, so a rerun, or a run resumed after a crash or kill, never pays for a judgment
  twice (at most the requests in flight at the moment of a hard kill are lost).
- The protocol is not part of the key, because the rendered prompt already fixes the presentation
  order: one cached judgment is one (prompt, order) request, valid under either protocol. Switching
  `--orders 1` <-> `2` (same seed) reuses every cached order and pays only for the missing ones;
  which orders a result uses is decided per pair by the protocol and the seed, never by what the
  cache happens to hold, so the protocols never mix.
- The API key is read from OPENAI_API_KEY only; it is never written to any file, and error
  messages are scrubbed of it. Endpoints on this machine or a private network need no key.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import os
import random
import re
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from mbc_jax import UserError
from mbc_jax.judge.answers import Pair
from mbc_jax.judge.protocol import (
    InvalidVerdict,
    JudgeTemplate,
    judgment,
    load_template,
    orders_judged,
    parse_verdict,
    seeded_order,
    shown,
)
from mbc_jax.progress import progress_bar
from mbc_jax.run_folder import atomic_write

DEFAULT_BASE_URL = "https://api.openai.com/v1"
DEFAULT_MODEL = "gpt-4"  # the paper's judge (Section 4: GPT-4)
API_KEY_ENV = "OPENAI_API_KEY"
# Sent when the endpoint is local and no key is set (vLLM / llama.cpp ignore it unless started
# with an API key of their own).
LOCAL_PLACEHOLDER_KEY = "no-key-needed-for-local-endpoint"
RETRYABLE_STATUS = frozenset({408, 409, 429})
_SECRET_LIKE_RE = re.compile(r"\b(sk-[A-Za-z0-9_\-]{2})[A-Za-z0-9_\-*.]*")


def is_local_url(url: str) -> bool:
    """True for endpoints on this machine or a private network (no API key required)."""
    host = (urlsplit(url).hostname or "").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False
    return ip.is_loopback or ip.is_private or ip.is_link_local or ip.is_unspecified


def public_url(url: str) -> str:
    """The URL without user info, query or fragment (safe to write to results)."""
    parts = urlsplit(url)
    netloc = parts.hostname or ""
    if parts.port:
        netloc += f":{parts.port}"
    return f"{parts.scheme}://{netloc}{parts.path}"


def resolve_endpoint(base_url: str | None) -> tuple[str, str]:
    """(base_url, api_key): --base-url, else OPENAI_BASE_URL, else OpenAI; key from the env only."""
    url = base_url or os.environ.get("OPENAI_BASE_URL") or DEFAULT_BASE_URL
    if urlsplit(url).scheme not in ("http", "https") or not urlsplit(url).hostname:
        raise UserError(f"--base-url {public_url(url)!r} is not an http(s) URL (e.g. "
                        "http://127.0.0.1:8000/v1)")
    key = os.environ.get(API_KEY_ENV, "").strip()
    if not key:
        if not is_local_url(url):
            raise UserError(f"no API key for the remote judge endpoint {public_url(url)}: set "
                            f"{API_KEY_ENV} in the environment (keys are read from the "
                            "environment only)")
        key = LOCAL_PLACEHOLDER_KEY
    return url, key


def redact(text: str, secrets: Sequence[str] = ()) -> str:
    """Remove API keys from a message: the given secrets and anything shaped like an sk- key."""
    for secret in secrets:
        if secret and len(secret) >= 4:
            text = text.replace(secret, "***")
    return _SECRET_LIKE_RE.sub(r"\1***", text)


class JudgmentCache:
    """One JSON file per judgment, `DIR/<key[:2]>/<key>.json`, written atomically.

    Safe for several threads and processes: a file either exists complete or not at all, and two
    writers of one key write the same judgment.
    """

    def __init__(self, directory: str | Path):
        self.dir = Path(directory)

    @staticmethod
    def key(model: str, messages: list[dict], params: dict) -> str:
        blob = json.dumps({"model": model, "messages": messages, "params": params},
                          sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(blob.encode()).hexdigest()

    def _path(self, key: str) -> Path:
        return self.dir / key[:2] / f"{key}.json"

    def get(self, key: str) -> dict | None:
        try:
            entry = json.loads(self._path(key).read_text())
        except (OSError, json.JSONDecodeError):
            return None
        if entry.get("key") != key or entry.get("verdict") not in ("A", "B", "C"):
            return None
        return entry

    def put(self, key: str, entry: dict) -> None:
        atomic_write(self._path(key), json.dumps(entry, ensure_ascii=False), fsync=True)

    def __len__(self) -> int:
        return sum(1 for _ in self.dir.glob("*/*.json")) if self.dir.is_dir() else 0


@dataclass
class JudgeConfig:
    """How to call the judge. `max_tokens` <= 0 leaves it out of the request."""

    model: str = DEFAULT_MODEL
    temperature: float = 0.0
    max_tokens: int = 1024
    max_retries: int = 6
    timeout: float = 120.0
    backoff_base: float = 1.0
    backoff_max: float = 60.0
    concurrency: int = 8

    def params(self) -> dict:
        out: dict = {"temperature": self.temperature}
        if self.max_tokens > 0:
            out["max_tokens"] = self.max_tokens
        return out


class JudgeUnavailable(Exception):
    """Retries ran out on 429 / 5xx / timeout / connection errors."""


class _Stopped(Exception):
    pass


@dataclass
class JudgeStats:
    api_calls: int = 0
    cached: int = 0
    retries: Counter = field(default_factory=Counter)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, what: str, n: int = 1) -> None:
        with self.lock:
            if what in ("api_calls", "cached"):
                setattr(self, what, getattr(self, what) + n)
            else:
                self.retries[what] += n

    def as_dict(self) -> dict:
        return {"api_calls": self.api_calls, "cached": self.cached,
                "retries": dict(sorted(self.retries.items()))}


def make_client(base_url: str, api_key: str, timeout: float):
    """An OpenAI chat-completions client for `base_url`, without retries of its own."""
    import openai  # slow to import; only a run that sends requests needs it

    # Retries are ours (classified, counted, injectable sleep), so the client's are off.
    return openai.OpenAI(api_key=api_key, base_url=base_url, timeout=timeout, max_retries=0)


class Judge:
    """Sends judging requests with retries, caching every valid verdict as it arrives."""

    def __init__(
        self,
        client,
        config: JudgeConfig,
        cache: JudgmentCache,
        template: JudgeTemplate,
        *,
        secrets: Sequence[str] = (),
        sleep: Callable[[float], None] | None = None,
        rng: random.Random | None = None,
        endpoint: str = "",
    ):
        self.client, self.config, self.cache, self.template = client, config, cache, template
        self.secrets = tuple(secrets)
        self.stats = JudgeStats()
        self.endpoint = endpoint
        self._stop = threading.Event()
        self._sleep = sleep or self._stop.wait  # a stopped run wakes up at once
        self._rng = rng or random.Random()

    def backoff(self, failures: int, retry_after: float | None = None) -> float:
        """Exponential backoff with equal jitter: in [d/2, d], d = base * 2**(failures-1)."""
        d = min(self.config.backoff_max, self.config.backoff_base * 2 ** (failures - 1))
        delay = d * (0.5 + 0.5 * self._rng.random())
        if retry_after is not None:
            delay = max(delay, min(retry_after, self.config.backoff_max))
        return delay

    def _attempt(
        self, messages: list[dict]
    ) -> tuple[str | None, dict | None, str | None, float | None]:
        """One request: (text, usage, None, None), or (None, None, failure, retry_after) for a
        transient failure ("http_429", "timeout", "connection: ..."); other errors raise."""
        import openai  # slow to import; only a run that sends requests needs it

        self.stats.add("api_calls")
        try:
            response = self.client.chat.completions.create(
                model=self.config.model, messages=messages, **self.config.params())
        except openai.APIStatusError as e:
            if e.status_code in RETRYABLE_STATUS or e.status_code >= 500:
                return None, None, f"http_{e.status_code}", _retry_after(e)
            hint = {401: "check OPENAI_API_KEY", 403: "check OPENAI_API_KEY",
                    404: "check --base-url (it usually ends in /v1) and --model"}.get(e.status_code)
            raise UserError(redact(
                f"judge endpoint {public_url(self.endpoint)} answered HTTP {e.status_code}: "
                f"{_error_message(e)}" + (f" ({hint})" if hint else ""), self.secrets)) from None
        except openai.APITimeoutError:
            return None, None, "timeout", None
        except openai.APIConnectionError as e:
            return None, None, f"connection: {e.__cause__ or e}", None
        except openai.APIResponseValidationError:
            return None, None, None, None  # an unreadable body counts as an invalid verdict
        usage = response.usage.model_dump() if getattr(response, "usage", None) else None
        text = response.choices[0].message.content if response.choices else None
        return text, usage, None, None

    def request(self, messages: list[dict], key: str) -> dict:
        """A cache entry with a valid verdict, or {"verdict": None, ...} if every try was invalid.

        Transient failures and invalid verdicts each get `max_retries` retries; only transient
        failures back off (an invalid verdict is retried at once).
        """
        failures = invalid = 0
        while True:
            if self._stop.is_set():
                raise _Stopped()
            text, usage, failure, retry_after = self._attempt(messages)
            if failure is not None:
                failures += 1
                if failures > self.config.max_retries:
                    raise JudgeUnavailable(redact(
                        f"{failures} attempts failed, last: {failure.replace('_', ' ')}",
                        self.secrets))
                self.stats.add(failure.split(":")[0])
                self._sleep(self.backoff(failures, retry_after))
                continue
            try:
                verdict = parse_verdict(text)
            except InvalidVerdict as e:
                invalid += 1
                if invalid > self.config.max_retries:
                    return {"key": key, "verdict": None, "text": text, "error": str(e)}
                self.stats.add("invalid_verdict")
                continue
            entry = {
                "key": key,
                "model": self.config.model,
                "params": self.config.params(),
                "template_sha256": self.template.sha256,
                "messages": messages,
                "text": text,
                "verdict": verdict,
                "usage": usage,
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            }
            self.cache.put(key, entry)
            return entry

    def _plan(self, pairs: Sequence[Pair], orders: int, seed: int
              ) -> tuple[dict[str, list[dict]], list[tuple[str, dict[str, str]]]]:
        """(key -> messages of every request needed, per pair (seeded order, order -> key))."""
        params = self.config.params()
        tasks: dict[str, list[dict]] = {}  # identical prompts share one call
        slots = []
        for pair in pairs:
            seeded = seeded_order(pair.key, seed)
            keys = {}
            for order in orders_judged(orders, seeded):
                messages = self.template.render(pair.instruction, *shown(pair, order))
                key = self.cache.key(self.config.model, messages, params)
                tasks[key] = messages
                keys[order] = key
            slots.append((seeded, keys))
        return tasks, slots

    def calls_needed(self, pairs: Sequence[Pair], *, orders: int = 1, seed: int = 0) -> tuple[int, int]:
        """(requests not yet cached, requests cached) that `judge_pairs` would make; sends nothing."""
        tasks, _ = self._plan(pairs, orders, seed)
        cached = sum(1 for key in tasks if self.cache.get(key) is not None)
        return len(tasks) - cached, cached

    def judge_pairs(
        self,
        pairs: Sequence[Pair],
        *,
        orders: int = 1,
        seed: int = 0,
        max_calls: int | None = None,
        progress: bool = True,
        on_result: Callable[[dict], None] | None = None,
    ) -> list[dict]:
        """Judge every pair under a protocol; one judgment dict per pair, in the order given.

        `orders=1` (the paper's protocol): one request per pair, in the order `seeded_order(pair.key,
        seed)`; `orders=2`: both orders. Cached judgments are reused; `max_calls` bounds the
        requests to send (not counting retries): when more are needed, UserError before anything is
        sent. Each judgment is `protocol.judgment`'s dict: `outcome` ("A", "B", "tie", or None if a
        needed verdict stayed invalid after the retries), `single`, per judged order the verdicts.
        """
        tasks, slots = self._plan(pairs, orders, seed)
        results: dict[str, dict] = {}
        for key in tasks:
            entry = self.cache.get(key)
            if entry is not None:
                results[key] = entry
        self.stats.add("cached", len(results))
        todo = [k for k in tasks if k not in results]
        if max_calls is not None and len(todo) > max_calls:
            raise UserError(f"judging {len(pairs)} pair(s) with {orders} order(s) needs {len(todo)} judge "
                            f"call(s) ({len(results)} cached), over the limit of {max_calls}: raise the "
                            "limit or judge fewer pairs")
        bar = progress_bar(len(tasks), "judge", unit="call", initial=len(results), show=progress)
        self._stop.clear()
        pool = ThreadPoolExecutor(max_workers=max(1, self.config.concurrency),
                                  thread_name_prefix="judge")
        try:
            pending: set[Future] = {pool.submit(self.request, tasks[k], k) for k in todo}
            while pending:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for fut in done:
                    entry = fut.result()  # re-raises a fatal error from the worker
                    results[entry["key"]] = entry
                    bar.update(1)
                    if self.stats.retries:
                        bar.set_postfix(retries=sum(self.stats.retries.values()), refresh=False)
                    if on_result is not None:
                        on_result(entry)
        except BaseException as e:
            # Stop queued work; requests already in flight finish and are cached.
            self._stop.set()
            if isinstance(e, KeyboardInterrupt):
                print("\ninterrupted: letting requests in flight finish so they are cached",
                      file=sys.stderr)
            pool.shutdown(wait=True, cancel_futures=True)
            raise
        finally:
            bar.close()
        pool.shutdown(wait=True)

        return [judgment(pair, {order: results[key] for order, key in keys.items()},
                         seeded=seeded, orders=orders)
                for pair, (seeded, keys) in zip(pairs, slots)]


def make_judge(config: JudgeConfig, base_url: str | None, cache_dir: str | Path, template: str | Path | None = None,
               sleep: Callable[[float], None] | None = None) -> Judge:
    """The judge client (endpoint and key as `resolve_endpoint` finds them) with its on-disk cache and template."""
    url, key = resolve_endpoint(base_url)
    return Judge(make_client(url, key, config.timeout), config, JudgmentCache(cache_dir), load_template(template),
                 secrets=[key], sleep=sleep, endpoint=url)


def _retry_after(e) -> float | None:
    try:
        value = e.response.headers.get("retry-after")
        return float(value) if value is not None else None
    except (AttributeError, TypeError, ValueError):
        return None


def _error_message(e) -> str:
    body = getattr(e, "body", None)
    if isinstance(body, dict):
        msg = body.get("message") or (body.get("error") or {}).get("message")
        if msg:
            return str(msg)[:300]
    return str(e)[:300]
