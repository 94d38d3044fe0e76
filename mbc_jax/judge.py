"""Pairwise LLM judge: which of two models answered each prompt better.

`mbc-jax judge --a A.jsonl --b B.jsonl --out results.json` reads two answer files written by
`mbc-jax generate`, matches their records by `id` (or `index`), and asks a judge model behind any
OpenAI-compatible chat-completions endpoint (OpenAI, vLLM, a llama.cpp server) to compare each
pair with the prompt in `templates/judge_pairwise.txt` (the paper's Figure 4 judge prompt; see
the note in that file).

Protocol:
- Every pair is judged twice, with A's answer shown first and with B's answer shown first.
- A verdict must contain exactly one of [[A]], [[B]], [[C]] (C = tie); the same token may be
  repeated but no two different ones may appear. Anything else is an invalid verdict and the
  request is retried (at most --max-retries times); a pair still without two valid verdicts is
  reported (`n_invalid`), left out of the rates, not cached, and retried by the next run.
- A pair is a win for a model only when both orders pick it; otherwise it is a tie. The raw
  per-order verdicts and the consistency rate are reported too (mbc_jax.winrate).
- 429, 408, 409, 5xx, timeouts and connection errors are retried with exponential backoff and
  jitter (honouring Retry-After); other HTTP errors (bad key, unknown model, ...) stop the run at
  once. When retries run out the run stops with an error; everything judged so far is cached.
- Each valid judgment is written to the on-disk cache (one JSON file per key, written atomically)
  as soon as it arrives. The key is a hash of the judge model, the sampling settings and the full
  rendered prompt, so a rerun, or a run resumed after a crash or kill, never pays for a judgment
  twice (at most the requests in flight at the moment of a hard kill are lost).
- The API key is read from OPENAI_API_KEY only; it is never written to any file, and error
  messages are scrubbed of it. Endpoints on this machine or a private network need no key.
- Empty answers stop the run with the file:line of each (use --allow-empty to judge them as they
  are; they are then counted in the results as `n_empty`).

Outputs: the results JSON (--out), the per-pair judgments next to it (`<stem>.judgments.jsonl`,
including the judge's explanations), and the chart `<stem>.png` with its numbers `<stem>.csv`.
"""

from __future__ import annotations

import argparse
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

TEMPLATE_PATH = Path(__file__).parent / "templates" / "judge_pairwise.txt"
DEFAULT_BASE_URL = "https://api.openai.com/v1"
DEFAULT_MODEL = "gpt-4o"
API_KEY_ENV = "OPENAI_API_KEY"
# Sent when the endpoint is local and no key is set (vLLM / llama.cpp ignore it unless started
# with an API key of their own).
LOCAL_PLACEHOLDER_KEY = "no-key-needed-for-local-endpoint"
RETRYABLE_STATUS = frozenset({408, 409, 429})
ORDERS = ("a_first", "b_first")
_VERDICT_RE = re.compile(r"\[\[([ABC])\]\]")
_PLACEHOLDER_RE = re.compile(r"\{(question|answer_a|answer_b)\}")
_SECRET_LIKE_RE = re.compile(r"\b(sk-[A-Za-z0-9_\-]{2})[A-Za-z0-9_\-*.]*")


# --------------------------------------------------------------------------- template, verdicts


@dataclass(frozen=True)
class JudgeTemplate:
    """The judging prompt: an optional system message and a user message with placeholders."""

    system: str | None
    user: str
    path: str
    sha256: str

    def render(self, question: str, first: str, second: str) -> list[dict[str, str]]:
        """Chat messages for one presentation order (`first` is labelled Assistant A)."""
        values = {"question": question, "answer_a": first, "answer_b": second}

        def fill(text: str) -> str:  # one pass: placeholders inside an answer stay literal
            return _PLACEHOLDER_RE.sub(lambda m: values[m.group(1)], text)

        messages = [{"role": "user", "content": fill(self.user)}]
        if self.system is not None:
            messages.insert(0, {"role": "system", "content": fill(self.system)})
        return messages


def load_template(path: str | Path | None = None) -> JudgeTemplate:
    """Parse a template file: '#' header lines, then `[system]` and `[user]` sections."""
    path = Path(path) if path is not None else TEMPLATE_PATH
    try:
        raw = path.read_text()
    except OSError as e:
        raise UserError(f"{path}: cannot read the judge template ({e.strerror})") from None
    sections: dict[str, list[str]] = {}
    current: str | None = None
    for lineno, line in enumerate(raw.splitlines(), 1):
        marker = line.strip().lower()
        if marker in ("[system]", "[user]"):
            current = marker[1:-1]
            if current in sections:
                raise UserError(f"{path}:{lineno}: second {line.strip()} section")
            sections[current] = []
        elif current is None:
            if line.strip() and not line.startswith("#"):
                raise UserError(f"{path}:{lineno}: text before the first [system] or [user] "
                                "line; header lines must start with '#'")
        else:
            sections[current].append(line)
    if "user" not in sections:
        raise UserError(f"{path}: no [user] section; the template needs one")
    user = "\n".join(sections["user"]).strip("\n")
    system = "\n".join(sections["system"]).strip("\n") if "system" in sections else None
    missing = [p for p in ("question", "answer_a", "answer_b")
               if "{" + p + "}" not in (system or "") + user]
    if missing:
        raise UserError(f"{path}: placeholder(s) {', '.join('{'+m+'}' for m in missing)} missing")
    return JudgeTemplate(system, user, str(path), hashlib.sha256(raw.encode()).hexdigest())


class InvalidVerdict(ValueError):
    """The judge's reply does not contain exactly one kind of [[A]] / [[B]] / [[C]]."""


def parse_verdict(text: str | None) -> str:
    """'A', 'B' or 'C' (tie) from a judge reply; InvalidVerdict unless exactly one kind appears."""
    found = set(_VERDICT_RE.findall(text or ""))
    if len(found) != 1:
        what = "no verdict" if not found else "conflicting verdicts " + "/".join(
            f"[[{v}]]" for v in sorted(found))
        raise InvalidVerdict(what)
    return found.pop()


def winner_of(verdict: str, order: str) -> str:
    """Map a positional verdict to the model it favours: 'A', 'B' or 'tie'."""
    if verdict == "C":
        return "tie"
    first_is_a = order == "a_first"
    return "A" if (verdict == "A") == first_is_a else "B"


def combine(winner_a_first: str, winner_b_first: str) -> str:
    """A win needs both orders to agree; anything else is a tie."""
    return winner_a_first if winner_a_first == winner_b_first else "tie"


# --------------------------------------------------------------------------- answer files


@dataclass(frozen=True)
class Pair:
    """One prompt answered by both models."""

    key: str
    id: object
    index: object
    category: str
    question: str
    answer_a: str
    answer_b: str
    where_a: str  # file:line
    where_b: str


@dataclass
class Matched:
    pairs: list[Pair]
    field: str  # "id" or "index"
    only_a: list[str]
    only_b: list[str]


def read_answers(path: str | Path) -> list[tuple[int, dict]]:
    """(line number, record) for every non-blank line of a JSONL answer file."""
    path = Path(path)
    try:
        lines = path.read_text().splitlines()
    except OSError as e:
        raise UserError(f"{path}: cannot read answer file ({e.strerror})") from None
    records = []
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise UserError(f"{path}:{lineno}: not valid JSON ({e.msg}); answer files are JSONL "
                            "written by `mbc-jax generate`") from None
        if not isinstance(rec, dict):
            raise UserError(f"{path}:{lineno}: expected a JSON object per line")
        for name in ("prompt", "output_text"):
            if not isinstance(rec.get(name), str):
                raise UserError(f"{path}:{lineno}: field `{name}` missing or not a string; answer "
                                "files need `prompt` and `output_text` (from `mbc-jax generate`)")
        records.append((lineno, rec))
    if not records:
        raise UserError(f"{path}: no records")
    return records


def _key_field(a: list[tuple[int, dict]], b: list[tuple[int, dict]]) -> str:
    for name in ("id", "index"):
        if all(rec.get(name) is not None for _, rec in a + b):
            return name
    raise UserError("cannot match the answer files: every record of both files needs an `id` "
                    "(or else an `index`) field")


def match_answers(path_a: str | Path, path_b: str | Path) -> Matched:
    """Pair the records of two answer files by `id` (else `index`), in A's order."""
    a, b = read_answers(path_a), read_answers(path_b)
    name = _key_field(a, b)

    def by_key(path, records):
        out: dict[str, tuple[int, dict]] = {}
        for lineno, rec in records:
            k = str(rec[name])
            if k in out:
                raise UserError(f"{path}:{lineno}: duplicate {name} {k!r} (first on line "
                                f"{out[k][0]}); records must be unique to be matched")
            out[k] = (lineno, rec)
        return out

    map_a, map_b = by_key(path_a, a), by_key(path_b, b)
    pairs = []
    for k, (line_a, rec_a) in map_a.items():
        if k not in map_b:
            continue
        line_b, rec_b = map_b[k]
        if rec_a["prompt"].strip() != rec_b["prompt"].strip():
            raise UserError(f"{path_b}:{line_b}: prompt of {name} {k!r} differs from "
                            f"{path_a}:{line_a}; both files must answer the same prompts")
        category = rec_a.get("category") or rec_b.get("category") or "(none)"
        pairs.append(Pair(k, rec_a.get("id"), rec_a.get("index"), str(category),
                          rec_a["prompt"], rec_a["output_text"], rec_b["output_text"],
                          f"{path_a}:{line_a}", f"{path_b}:{line_b}"))
    only_a = [k for k in map_a if k not in map_b]
    only_b = [k for k in map_b if k not in map_a]
    if not pairs:
        raise UserError(f"no record of {path_a} matches one of {path_b} by {name}; are they "
                        "answers to the same data?")
    return Matched(pairs, name, only_a, only_b)


# --------------------------------------------------------------------------- endpoint, secrets


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


# --------------------------------------------------------------------------- cache


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
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{key}.{os.getpid()}.{threading.get_ident()}.tmp")
        with tmp.open("w") as f:
            json.dump(entry, f, ensure_ascii=False)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)

    def __len__(self) -> int:
        return sum(1 for _ in self.dir.glob("*/*.json")) if self.dir.is_dir() else 0


# --------------------------------------------------------------------------- judge


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
    import openai

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
        import openai

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

    def judge_pairs(
        self,
        pairs: Sequence[Pair],
        *,
        progress: bool = True,
        on_result: Callable[[dict], None] | None = None,
    ) -> list[dict]:
        """Judge every pair in both orders; one judgment dict per pair, in the order given."""
        from tqdm import tqdm

        params = self.config.params()
        tasks: dict[str, list[dict]] = {}  # key -> messages (identical prompts share one call)
        slots: list[dict[str, str]] = []
        for pair in pairs:
            keys = {}
            for order in ORDERS:
                first, second = ((pair.answer_a, pair.answer_b) if order == "a_first"
                                 else (pair.answer_b, pair.answer_a))
                messages = self.template.render(pair.question, first, second)
                key = self.cache.key(self.config.model, messages, params)
                tasks[key] = messages
                keys[order] = key
            slots.append(keys)

        results: dict[str, dict] = {}
        for key in tasks:
            entry = self.cache.get(key)
            if entry is not None:
                results[key] = entry
        self.stats.add("cached", len(results))
        todo = [k for k in tasks if k not in results]
        bar = tqdm(total=len(tasks), initial=len(results), desc="judge", unit="call",
                   file=sys.stderr, disable=not progress, dynamic_ncols=True)
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

        judgments = []
        for pair, keys in zip(pairs, slots):
            j: dict = {"key": pair.key, "id": pair.id, "index": pair.index,
                       "category": pair.category}
            for order in ORDERS:
                entry = results[keys[order]]
                verdict = entry["verdict"]
                j[f"verdict_{order}"] = verdict
                j[f"winner_{order}"] = winner_of(verdict, order) if verdict else None
            ok = j["verdict_a_first"] is not None and j["verdict_b_first"] is not None
            j["outcome"] = combine(j["winner_a_first"], j["winner_b_first"]) if ok else None
            j["consistent"] = (j["winner_a_first"] == j["winner_b_first"]) if ok else None
            for order in ORDERS:
                entry = results[keys[order]]
                j[f"judge_text_{order}"] = entry.get("text")
                if entry["verdict"] is None:
                    j[f"error_{order}"] = entry.get("error")
            judgments.append(j)
        return judgments


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


# --------------------------------------------------------------------------- run


def output_paths(out: str | Path) -> dict[str, Path]:
    out = Path(out)
    stem = out.with_suffix("") if out.suffix == ".json" else out
    return {"results": out, "judgments": Path(f"{stem}.judgments.jsonl"),
            "png": Path(f"{stem}.png"), "csv": Path(f"{stem}.csv")}


def default_name(path: str | Path, other: str | Path) -> str:
    """A short label for a model: the file stem, or the folder if both stems are equal."""
    path, other = Path(path), Path(other)
    if path.stem != other.stem:
        return path.stem
    return path.resolve().parent.name or path.stem


def judge_files(
    path_a: str | Path,
    path_b: str | Path,
    out: str | Path,
    *,
    config: JudgeConfig | None = None,
    base_url: str | None = None,
    cache_dir: str | Path | None = None,
    name_a: str | None = None,
    name_b: str | None = None,
    template: str | Path | None = None,
    seed: int = 0,
    n_boot: int = 1000,
    allow_empty: bool = False,
    limit: int | None = None,
    progress: bool = True,
    sleep: Callable[[float], None] | None = None,
    on_result: Callable[[dict], None] | None = None,
    log: Callable[[str], None] | None = None,
) -> dict:
    """Judge A against B, write results JSON, judgments JSONL and chart; return the results."""
    from mbc_jax import winrate

    config = config or JudgeConfig()
    log = log or (lambda msg: print(msg, file=sys.stderr))
    url, key = resolve_endpoint(base_url)
    tmpl = load_template(template)
    matched = match_answers(path_a, path_b)
    name_a = name_a or default_name(path_a, path_b)
    name_b = name_b or default_name(path_b, path_a)
    if matched.only_a or matched.only_b:
        log(f"warning: {len(matched.only_a)} record(s) only in {path_a}, "
            f"{len(matched.only_b)} only in {path_b}: not judged (matched by "
            f"{matched.field}; first: {(matched.only_a + matched.only_b)[:5]})")
    pairs = matched.pairs
    if limit is not None and limit < len(pairs):
        log(f"note: --limit {limit}: judging the first {limit} of {len(pairs)} matched pairs")
        pairs = pairs[:limit]
    empty = [(p.where_a, "a") for p in pairs if not p.answer_a.strip()]
    empty += [(p.where_b, "b") for p in pairs if not p.answer_b.strip()]
    if empty and not allow_empty:
        where = ", ".join(w for w, _ in empty[:5]) + (", ..." if len(empty) > 5 else "")
        raise UserError(f"{where}: empty output_text ({len(empty)} empty answer(s) in all); "
                        "regenerate them, or pass --allow-empty to judge them as they are")

    paths = output_paths(out)
    cache = JudgmentCache(cache_dir if cache_dir is not None
                          else paths["results"].parent / "judge_cache")
    judge = Judge(make_client(url, key, config.timeout), config, cache, tmpl, secrets=[key],
                  sleep=sleep, endpoint=url)
    started = time.monotonic()
    try:
        judgments = judge.judge_pairs(pairs, progress=progress, on_result=on_result)
    except JudgeUnavailable as e:
        raise UserError(f"judge endpoint {public_url(url)} unreachable or failing after retries "
                        f"({e}); {len(cache)} judgment(s) are cached in {cache.dir}: rerun the "
                        "same command to resume") from None
    summary = winrate.summarize(judgments, n_boot=n_boot, seed=seed)
    n_invalid = summary["overall"]["n_invalid"]
    results = {
        "name_a": name_a,
        "name_b": name_b,
        "a": str(path_a),
        "b": str(path_b),
        "judge": {
            "model": config.model,
            "base_url": public_url(url),
            "params": config.params(),
            "template": tmpl.path,
            "template_sha256": tmpl.sha256,
            "protocol": "both orders; a win needs both orders to agree, otherwise tie",
        },
        "n_pairs": len(pairs),
        "n_invalid": n_invalid,
        "n_empty": {"a": sum(1 for _, s in empty if s == "a"),
                    "b": sum(1 for _, s in empty if s == "b")},
        "matched_by": matched.field,
        "unmatched": {"only_in_a": matched.only_a, "only_in_b": matched.only_b},
        "calls": {**judge.stats.as_dict(), "cache_dir": str(cache.dir),
                  "seconds": round(time.monotonic() - started, 3)},
        **summary,
    }
    paths["results"].parent.mkdir(parents=True, exist_ok=True)
    _write_atomic(paths["judgments"],
                  "".join(json.dumps(j, ensure_ascii=False) + "\n" for j in judgments))
    _write_atomic(paths["results"], json.dumps(results, indent=2, ensure_ascii=False) + "\n")
    if summary["overall"]["n"]:
        winrate.plot_win_rates(winrate.summary_rows(results), paths["png"], name_a=name_a,
                               name_b=name_b, title=f"{name_a} vs {name_b} (judge: {config.model})")
    if n_invalid:
        log(f"warning: {n_invalid} pair(s) got no valid verdict after {config.max_retries} "
            "retries; they are left out of the rates and will be retried by the next run")
    return results


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _fmt(block: dict, part: str) -> str:
    lo, hi = block[f"{part}_ci"]
    return f"{100 * block[f'{part}_rate']:.1f}% [{100 * lo:.1f}, {100 * hi:.1f}]"


def summary_line(results: dict, out: str | Path) -> str:
    o = results["overall"]
    calls = results["calls"]
    head = (f"judged {o['n']} pairs ({calls['api_calls']} API calls, {calls['cached']} cached)")
    if not o["n"]:
        return head + f"; no valid judgments; wrote {out}"
    return (f"{head}: {results['name_a']} wins {_fmt(o, 'win')}, tie {_fmt(o, 'tie')}, "
            f"{results['name_b']} wins {_fmt(o, 'loss')}; consistency "
            f"{100 * o['consistency']:.1f}%; wrote {out}")


def run(args: argparse.Namespace) -> int:
    config = JudgeConfig(model=args.model, temperature=args.temperature,
                         max_tokens=args.max_tokens, max_retries=args.max_retries,
                         timeout=args.timeout, backoff_base=args.backoff,
                         concurrency=args.concurrency)
    for name in ("concurrency", "timeout", "bootstrap", "limit"):
        value = getattr(args, name)
        if value is not None and value <= 0:
            raise UserError(f"--{name} must be positive, got {value}")
    if args.max_retries < 0 or args.backoff < 0:
        raise UserError("--max-retries and --backoff must be >= 0")
    results = judge_files(
        args.a, args.b, args.out, config=config, base_url=args.base_url, cache_dir=args.cache,
        name_a=args.name_a, name_b=args.name_b, template=args.template, seed=args.seed,
        n_boot=args.bootstrap, allow_empty=args.allow_empty, limit=args.limit,
        progress=not args.no_progress)
    print(summary_line(results, args.out))
    return 0


def register(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "judge", help="pairwise LLM judge of two answer files (win/tie/loss rates, chart)",
        description="Judge the answers of model A against model B with an LLM behind any "
                    "OpenAI-compatible endpoint; each pair is judged in both orders. The API key "
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
    p.add_argument("--seed", type=int, default=0, metavar="S", help="bootstrap seed (default: 0)")
    p.add_argument("--bootstrap", type=int, default=1000, metavar="N",
                   help="bootstrap resamples for the confidence intervals (default: 1000)")
    p.add_argument("--temperature", type=float, default=0.0, metavar="T",
                   help="judge temperature (default: 0)")
    p.add_argument("--max-tokens", type=int, default=1024, metavar="N",
                   help="judge reply limit; 0 leaves it out of the request (default: 1024)")
    p.add_argument("--template", metavar="FILE", default=None,
                   help="judging prompt template (default: templates/judge_pairwise.txt)")
    p.add_argument("--allow-empty", action="store_true",
                   help="judge empty answers as they are instead of stopping")
    p.add_argument("--limit", type=int, default=None, metavar="N",
                   help="judge only the first N matched pairs (a cheap trial run)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)
    return p


def main(argv: list[str] | None = None) -> int:
    """`python -m mbc_jax.judge ...`: the judge command without loading the other commands."""
    parser = argparse.ArgumentParser(prog="mbc-jax")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["judge", *(sys.argv[1:] if argv is None else argv)])
    try:
        return int(args.func(args) or 0)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; judgments so far are cached, rerun to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
