"""The judge end to end, and the `mbc-jax judge` command.

The judge runs against a real HTTP server on 127.0.0.1 (started here, ephemeral port) that
speaks the chat-completions shape. The server decides each verdict from a script keyed by
(question id, which model is shown first), can inject failures per prompt, counts requests and
paid (HTTP 200) responses per prompt, and can hold requests to simulate a run killed midway.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

from conftest import REPO, SECRET
from mbc_jax import UserError, judge
from mbc_jax.commands import judge as judge_command
from mbc_jax.judge import length

pytestmark = pytest.mark.usefixtures("_no_key")


# The verdict script of the "known" comparison: (question, order) -> positional verdict.
# q0-q3: A better in both orders; q4-q5: B better in both; q6: tie in both;
# q7-q8: a judge that always picks the first answer (inconsistent -> tie);
# q9: A in one order, tie in the other (inconsistent -> tie).
KNOWN = {}
for _q in range(4):
    KNOWN[_q, "a_first"], KNOWN[_q, "b_first"] = "A", "B"
for _q in (4, 5):
    KNOWN[_q, "a_first"], KNOWN[_q, "b_first"] = "B", "A"
KNOWN[6, "a_first"], KNOWN[6, "b_first"] = "C", "C"
for _q in (7, 8):
    KNOWN[_q, "a_first"], KNOWN[_q, "b_first"] = "A", "A"
KNOWN[9, "a_first"], KNOWN[9, "b_first"] = "A", "C"
CATEGORY = {q: ("brainstorm" if q < 5 else "qa") for q in range(10)}


class FakeJudgeServer:
    """An OpenAI-compatible /v1/chat/completions endpoint with scripted verdicts and failures."""

    def __init__(self, script=None, failures=None, default="A", hold_after=None, sleep=0.6):
        self.script = dict(script or {})
        self.failures = {k: list(v) for k, v in (failures or {}).items()}
        self.default = default
        self.hold_after = hold_after
        self.sleep = sleep
        self.lock = threading.Lock()
        self.requests: Counter = Counter()  # prompt hash -> requests received
        self.seen: Counter = Counter()  # (question, order shown) -> requests received
        self.paid: Counter = Counter()  # prompt hash -> 200 responses sent
        self.served = 0
        self.auth: list[str] = []
        self.gate = threading.Event()
        self.drop = False
        self.mode = None  # e.g. "401": answer every request with it
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                server.handle(self)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.httpd.block_on_close = False
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.gate.set()
        self.httpd.shutdown()
        self.httpd.server_close()

    @staticmethod
    def identify(messages):
        text = messages[-1]["content"]
        # the Figure 4 prompt: its first paragraph as the system message, the record's instruction
        # (never the training template's rendering) in the [User Instruction] section
        assert [m["role"] for m in messages] == ["system", "user"]
        assert messages[0]["content"].startswith("Please act as an impartial judge")
        assert re.match(r"\[User Instruction\]\nQuestion q\d+: ", text) and "Human:" not in text
        q = int(re.search(r"Question q(\d+):", text).group(1))
        second = text.index("[The Start of Assistant B's Response]")  # where the second answer starts
        if "model A" in text:
            order = "a_first" if text.index("model A") < second else "b_first"
        else:  # A's answer is empty
            order = "b_first" if text.index("model B") < second else "a_first"
        return q, order

    def handle(self, h):
        body = json.loads(h.rfile.read(int(h.headers["Content-Length"])))
        assert h.path == "/v1/chat/completions"
        messages = body["messages"]
        prompt = hashlib.sha256(json.dumps(messages).encode()).hexdigest()
        q, order = self.identify(messages)
        with self.lock:
            self.requests[prompt] += 1
            self.seen[q, order] += 1
            self.auth.append(h.headers.get("Authorization", ""))
            queue = self.failures.get((q, order))
            action = self.mode or (queue.pop(0) if queue else None)
            hold = self.hold_after is not None and self.served >= self.hold_after
            if not hold:
                self.served += 1
        if hold:  # simulate a run killed while these requests are in flight
            self.gate.wait(30)
            if self.drop:
                return
        if action in ("429", "500", "503"):
            headers = {"Retry-After": "0.05"} if action == "429" else {}
            return self.send(h, int(action), {"error": {"message": f"injected {action}"}}, headers)
        if action == "401":
            key = h.headers.get("Authorization", "").removeprefix("Bearer ")
            return self.send(h, 401, {"error": {"message": f"Incorrect API key provided: {key}"}})
        if action == "timeout":
            time.sleep(self.sleep)
        verdict = self.script.get((q, order), self.default)
        text = {"garbage": "Both answers have merits.",
                "conflict": "Maybe [[A]], maybe [[B]]."}.get(
            action, f"Reasoning about q{q} ({order}). Final verdict: [[{verdict}]]")
        with self.lock:
            self.paid[prompt] += 1
        self.send(h, 200, {
            "id": "chatcmpl-test", "object": "chat.completion", "created": 0,
            "model": body["model"],
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": text}}],
            "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15},
        })

    @staticmethod
    def send(h, status, payload, headers=None):
        data = json.dumps(payload).encode()
        try:
            h.send_response(status)
            h.send_header("Content-Type", "application/json")
            h.send_header("Content-Length", str(len(data)))
            for k, v in (headers or {}).items():
                h.send_header(k, v)
            h.end_headers()
            h.wfile.write(data)
        except OSError:  # the client gave up (timeout) or was killed
            pass


@pytest.fixture
def server_factory():
    servers = []

    def make(**kw):
        s = FakeJudgeServer(**kw)
        servers.append(s)
        return s

    yield make
    for s in servers:
        s.close()


def record(q, model, **over):
    # A's answers run 6 + 2 * (q % 3) words, B's 6; generated tokens: A 5 + q, B 4
    longer = " and more" * (q % 3) if model == "A" else ""
    rec = {"index": q, "id": f"q{q}", "category": CATEGORY.get(q, "qa"),
           "instruction": f"Question q{q}: what about {q}?",
           "output_text": f"answer of model {model} to q{q}{longer}",
           "output_ids": [1, 2, 3], "entropy": 1.5, "num_tokens": 5 + q if model == "A" else 4}
    rec.update(over)
    return rec


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def answer_files(tmp_path, qs=range(10), qs_b=None):
    a = write_jsonl(tmp_path / "mbc.jsonl", [record(q, "A") for q in qs])
    b = write_jsonl(tmp_path / "uniform.jsonl",
                    [record(q, "B") for q in (qs if qs_b is None else qs_b)])
    return a, b


def expected(seed, qs=range(10)):
    """Per question: the seeded order, and the winner the KNOWN script gives in that order."""
    out = {}
    for q in qs:
        order = judge.seeded_order(f"q{q}", seed)
        out[q] = order, judge.winner_of(KNOWN[q, order], order)
    return out


def counts(winners):
    c = Counter(winners)
    return c["A"], c["tie"], c["B"]


def run_judge(tmp_path, server, a, b, *, sleeps=None, max_retries=3, timeout=5.0, model="judge-test", **kw):
    config = judge.JudgeConfig(model=model, max_retries=max_retries, timeout=timeout,
                               backoff_base=0.001, concurrency=4)
    logs = kw.pop("logs", [])
    return judge.judge_files(
        a, b, tmp_path / "out" / "results.json", config=config, base_url=server.url,
        progress=False, sleep=(sleeps.append if sleeps is not None else (lambda d: None)),
        log=logs.append, n_boot=300, **kw)


def read_judgments(tmp_path):
    lines = (tmp_path / "out" / "results.judgments.jsonl").read_text().splitlines()
    return {j["id"]: j for j in map(json.loads, lines)}


# --------------------------------------------------------------------------- end to end


def test_known_script_both_orders_rates_per_order_counts_and_cli(tmp_path, server_factory, capsys):
    server = server_factory(script=KNOWN)
    a, b = answer_files(tmp_path)
    out = tmp_path / "out" / "results.json"
    cli = ["--a", str(a), "--b", str(b), "--out", str(out), "--base-url", server.url, "--model", "judge-test",
           "--no-progress", "--bootstrap", "300"]
    assert judge_command.main([*cli, "--orders", "2", "--concurrency", "3"]) == 0
    printed = capsys.readouterr().out
    assert "both orders, consistent: mbc wins 40.0%" in printed and "uniform wins 20.0%" in printed
    assert "consistency 70.0%" in printed and "one order (the paper's protocol): mbc wins" in printed

    res = json.loads(out.read_text())
    assert res["protocol"]["orders"] == 2 and res["protocol"]["headline"] == "consistent"
    assert res["protocol"]["seed"] == 0 and not res["protocol"]["papers_protocol"]
    o = res["consistent"]["overall"]
    assert (o["n"], o["win"], o["tie"], o["loss"]) == (10, 4, 4, 2)
    assert (o["win_rate"], o["tie_rate"], o["loss_rate"]) == (0.4, 0.4, 0.2)
    assert o["consistency"] == 0.7
    assert o["first_position_rate"] == pytest.approx(11 / 20)
    assert o["per_order"]["a_first"] == {"judged": 10, "positional": {"A": 7, "B": 2, "C": 1},
                                         "a_wins": 7, "b_wins": 2, "tie": 1}
    assert o["per_order"]["b_first"] == {"judged": 10, "positional": {"A": 4, "B": 4, "C": 2},
                                         "a_wins": 4, "b_wins": 4, "tie": 2}
    for part in ("win", "tie", "loss", "consistency"):
        lo, hi = o[f"{part}_ci"]
        assert lo <= o[f"{part}_rate" if part != "consistency" else part] <= hi
    cats = res["consistent"]["per_category"]
    assert (cats["brainstorm"]["win_rate"], cats["brainstorm"]["loss_rate"]) == (0.8, 0.2)
    assert cats["brainstorm"]["consistency"] == 1.0
    qa = cats["qa"]
    assert (qa["tie_rate"], qa["loss_rate"], qa["consistency"]) == (0.8, 0.2, 0.4)
    # the single-order rates: each pair's seeded order's verdict, from the same 20 judgments
    want = expected(0)
    single = res["single_order"]["overall"]
    assert (single["win"], single["tie"], single["loss"]) == counts(w for _, w in want.values())
    assert res["protocol"]["seeded_orders"]["a_first"] == sum(o == "a_first" for o, _ in want.values())
    assert (res["name_a"], res["name_b"], res["matched_by"]) == ("mbc", "uniform", "id")
    assert res["unmatched"] == {"only_in_a": [], "only_in_b": []}
    assert res["judge"]["model"] == "judge-test" and res["calls"]["api_calls"] == 20

    # Every prompt (10 pairs x 2 orders) was sent exactly once; no key was configured.
    assert len(server.requests) == 20 and set(server.requests.values()) == {1}
    assert set(server.auth) == {f"Bearer {judge.LOCAL_PLACEHOLDER_KEY}"}

    js = read_judgments(tmp_path)
    assert js["q7"]["verdict_a_first"] == "A" and js["q7"]["verdict_b_first"] == "A"
    assert (js["q7"]["outcome"], js["q7"]["consistent"]) == ("tie", False)
    assert (js["q4"]["outcome"], js["q0"]["outcome"], js["q6"]["outcome"]) == ("B", "A", "tie")
    assert all(js[f"q{q}"]["single"] == w and js[f"q{q}"]["seeded_order"] == od for q, (od, w) in want.items())
    assert "Final verdict: [[A]]" in js["q0"]["judge_text_a_first"]

    # Lengths: words of each answer (A: 6 + 2 * (q % 3), B: 6) and the files' num_tokens, vs numpy.
    lengths = res["lengths"]["overall"]
    words_a = np.array([6 + 2 * (q % 3) for q in range(10)])
    assert (lengths["mean_words_a"], lengths["mean_words_b"]) == pytest.approx((words_a.mean(), 6.0))
    assert (lengths["mean_tokens_a"], lengths["mean_tokens_b"]) == pytest.approx((9.5, 4.0))
    assert res["lengths"]["per_category"]["qa"]["mean_words_a"] == pytest.approx(words_a[5:].mean())
    for kind, field in (("single_order", "single"), ("consistent", "consistent_outcome")):
        lc = res["length_controlled"][kind]
        assert lc == length.length_controlled(js.values(), field, n_boot=300, seed=0)
        ys = [{"A": 1, "tie": 0.5, "B": 0}[j[field]] for j in js.values()]
        assert lc["raw_preference"] == pytest.approx(np.mean(ys)) and lc["length_unit"] == "words"

    png = tmp_path / "out" / "results.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = list(csv.DictReader((tmp_path / "out" / "results.csv").open()))
    assert [r["label"] for r in rows] == ["overall, one order per pair (seeded; the paper's protocol)",
                                          "overall, both orders, a win only when both agree", "brainstorm", "qa"]
    assert float(rows[1]["win_rate"]) == 0.4

    # A rerun pays nothing and reproduces the results exactly (seeded bootstrap).
    before = out.read_text()
    assert judge_command.main([*cli, "--orders", "2"]) == 0
    assert sum(server.requests.values()) == 20
    again = json.loads(out.read_text())
    assert again["calls"]["cached"] == 20 and again["calls"]["api_calls"] == 0
    strip = lambda r: {k: v for k, v in r.items() if k != "calls"}  # noqa: E731
    assert strip(again) == strip(json.loads(before))

    # Switching to the paper's protocol (same seed) reuses the seeded orders' judgments: nothing
    # is paid, and its rates are exactly the single-order rates of the both-orders run.
    capsys.readouterr()
    assert judge_command.main(cli) == 0
    one = json.loads(out.read_text())
    assert "one order (the paper's protocol)" in capsys.readouterr().out
    assert one["calls"] == {**one["calls"], "api_calls": 0, "cached": 10}
    assert one["protocol"]["orders"] == 1 and one["protocol"]["papers_protocol"] and one["consistent"] is None
    assert one["single_order"] == again["single_order"]
    assert one["length_controlled"]["single_order"] == again["length_controlled"]["single_order"]
    assert "consistent" not in one["length_controlled"]
    assert all(set(j) & {"verdict_a_first", "verdict_b_first"} == {f"verdict_{j['seeded_order']}"}
               for j in read_judgments(tmp_path).values())  # only the seeded order is used

    # A different judge model is a different cache key: it pays again.
    judge_command.main([*cli, "--orders", "2", "--model", "other-judge", "--bootstrap", "50"])
    assert sum(server.requests.values()) == 40


def test_papers_protocol_one_seeded_order_per_pair(tmp_path, server_factory):
    server = server_factory(script=KNOWN)
    a, b = answer_files(tmp_path)
    res = run_judge(tmp_path, server, a, b, seed=0)
    want = expected(0)
    # one request per pair, in the order the seed drew for it
    assert res["calls"]["api_calls"] == 10 and sum(server.seen.values()) == 10
    assert set(server.seen) == {(q, order) for q, (order, _) in want.items()}
    assert res["protocol"] == {**res["protocol"], "orders": 1, "seed": 0, "headline": "single_order",
                               "papers_protocol": True}
    o = res["single_order"]["overall"]
    assert (o["win"], o["tie"], o["loss"]) == counts(w for _, w in want.values())
    assert o["win_rate"] == o["win"] / 10 and res["n_invalid"] == 0 and "consistency" not in o
    assert o["per_order"]["a_first"]["judged"] + o["per_order"]["b_first"]["judged"] == 10

    # Deterministic: the same seed in a fresh cache draws the same orders and the same results;
    # another seed draws other orders (judging only pairs whose order it changes).
    server2 = server_factory(script=KNOWN)
    again = run_judge(tmp_path / "fresh", server2, a, b, seed=0)
    assert server2.seen == server.seen and again["single_order"] == res["single_order"]
    other = expected(1)
    flipped = {q for q in range(10) if other[q][0] != want[q][0]}
    assert flipped and len(flipped) < 10
    res1 = run_judge(tmp_path, server, a, b, seed=1)
    assert res1["calls"]["api_calls"] == len(flipped) and res1["protocol"]["seed"] == 1
    assert counts(w for _, w in other.values()) == tuple(res1["single_order"]["overall"][k]
                                                         for k in ("win", "tie", "loss"))

    # The both-orders protocol on the same cache pays only for the orders not judged yet, and its
    # single-order rates are those of the one-order run (same seed): the protocols never mix.
    before = sum(server.seen.values())
    res2 = run_judge(tmp_path, server, a, b, seed=0, orders=2)
    assert res2["calls"]["api_calls"] == 20 - before and res2["calls"]["cached"] == before
    assert res2["single_order"] == res["single_order"]
    assert (res2["consistent"]["overall"]["win"], res2["consistent"]["overall"]["loss"]) == (4, 2)

    # A bound on the calls: more needed than allowed stops before sending anything.
    with pytest.raises(UserError, match=r"needs 10 judge call\(s\) \(0 cached\), over the limit of 9"):
        run_judge(tmp_path, server, a, b, model="new-judge", max_calls=9)
    assert sum(server.seen.values()) == 20
    assert run_judge(tmp_path, server, a, b, max_calls=0)["calls"]["cached"] == 10  # all cached: free


@pytest.mark.parametrize("orders", [1, 2])
def test_retries_on_429_5xx_timeout_and_malformed(tmp_path, server_factory, orders):
    injected = {0: ["429", "500"], 1: ["timeout"], 2: ["garbage", "conflict"], 3: ["503"]}
    if orders == 2:
        failures = {(0, "a_first"): injected[0], (1, "b_first"): injected[1], (2, "a_first"): injected[2],
                    (3, "a_first"): ["503"], (3, "b_first"): ["503"]}
    else:  # the same faults, on the order each pair is judged in (the 503 twice, on q3 and q4)
        want = expected(0)
        failures = {(q, want[q][0]): f for q, f in {**injected, 4: ["503"]}.items()}
    server = server_factory(script=KNOWN, failures=failures, sleep=0.6)
    a, b = answer_files(tmp_path)
    sleeps = []
    res = run_judge(tmp_path, server, a, b, sleeps=sleeps, timeout=0.25, orders=orders)
    if orders == 2:
        o = res["consistent"]["overall"]
        assert (o["n"], o["win"], o["tie"], o["loss"], o["consistency"]) == (10, 4, 4, 2, 0.7)
    else:
        o = res["single_order"]["overall"]
        assert (o["n"], o["win"], o["tie"], o["loss"]) == (10, *counts(w for _, w in want.values()))
    assert res["n_invalid"] == 0
    assert res["calls"]["retries"] == {"http_429": 1, "http_500": 1, "http_503": 2,
                                       "timeout": 1, "invalid_verdict": 2}
    n = 10 * orders
    assert res["calls"]["api_calls"] == n + 7
    # requests per prompt: 1 + the injected failures on it
    assert sorted(server.requests.values()) == [1] * (n - 5) + [2, 2, 2, 3, 3]
    # backoff: invalid verdicts retry at once; 5 transport failures slept, the 429 honoured
    # Retry-After (0.05 s), the others slept base * 2**(k-1) with jitter (base = 1 ms).
    assert len(sleeps) == 5 and 0.05 in sleeps
    assert all(d <= 0.05 for d in sleeps) and sum(d == 0.05 for d in sleeps) == 1


@pytest.mark.parametrize("orders", [1, 2])
def test_invalid_verdict_after_retries_is_reported_not_cached(tmp_path, server_factory, orders):
    seeded = judge.seeded_order("q0", 0)
    server = server_factory(script=KNOWN, failures={(0, seeded): ["garbage"] * 3})
    a, b = answer_files(tmp_path, qs=range(2))
    logs = []
    res = run_judge(tmp_path, server, a, b, max_retries=2, logs=logs, orders=orders)
    assert res["n_invalid"] == 1 and res["single_order"]["overall"]["n"] == 1
    if orders == 2:
        assert res["consistent"]["overall"]["n"] == 1
    assert any("no valid verdict" in m for m in logs)
    js = read_judgments(tmp_path)
    assert js["q0"]["outcome"] is None and js["q0"]["single"] is None
    assert "no verdict" in js["q0"][f"error_{seeded}"]
    assert len(judge.JudgmentCache(tmp_path / "out" / "judge_cache")) == 2 * orders - 1
    # The next run retries only that judgment, which the server now answers properly.
    res = run_judge(tmp_path, server, a, b, orders=orders)
    assert res["n_invalid"] == 0 and res["single_order"]["overall"]["n"] == 2 and res["calls"]["api_calls"] == 1
    assert sum(server.requests.values()) == 3 + (2 * orders - 1) + 1


def test_unreachable_endpoint_is_a_clear_error_after_retries(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again before the run: connection refused
    a, b = answer_files(tmp_path, qs=range(2))
    sleeps = []
    config = judge.JudgeConfig(model="m", max_retries=2, backoff_base=0.001, concurrency=1)
    with pytest.raises(UserError, match=r"unreachable.*3 attempts.*rerun"):
        judge.judge_files(a, b, tmp_path / "r.json", config=config, progress=False,
                          base_url=f"http://127.0.0.1:{port}/v1", sleep=sleeps.append)
    # 2 backoffs before the first request gave up (another queued request may have started
    # its own retries before the run stopped)
    assert len(sleeps) >= 2 and max(sleeps) <= 0.002
    assert not (tmp_path / "r.json").exists()


def test_killed_midway_then_resumed_loses_nothing_pays_nothing_twice(tmp_path, server_factory):
    # The server answers 5 requests, then holds the next ones; the judge process is SIGKILLed
    # once those 5 are cached, and the held requests are dropped unanswered (never paid).
    server = server_factory(script=KNOWN, hold_after=5)
    a, b = answer_files(tmp_path)
    out = tmp_path / "out" / "results.json"
    cache = judge.JudgmentCache(tmp_path / "out" / "judge_cache")
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENAI_")}
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.Popen(
        [sys.executable, "-m", "mbc_jax.commands.judge", "--a", str(a), "--b", str(b), "--out", str(out),
         "--base-url", server.url, "--model", "judge-test", "--concurrency", "2", "--orders", "2",
         "--backoff", "0.01", "--timeout", "30", "--no-progress"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 90  # a loaded CI machine can take 30 s to import
        while len(cache) < 5 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.02)
        assert len(cache) == 5, proc.stderr.read() if proc.poll() is not None else "timeout"
        while sum(server.requests.values()) < 7 and time.monotonic() < deadline:
            time.sleep(0.01)  # both workers are now waiting on a held request
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert not out.exists()
    server.drop = True
    server.gate.set()
    server.hold_after = None
    assert sum(server.paid.values()) == 5

    res = run_judge(tmp_path, server, a, b, orders=2)
    assert res["calls"]["cached"] == 5 and res["calls"]["api_calls"] == 15
    assert len(server.paid) == 20 and set(server.paid.values()) == {1}  # none paid twice
    o = res["consistent"]["overall"]
    assert (o["n"], o["win"], o["tie"], o["loss"], o["consistency"]) == (10, 4, 4, 2, 0.7)
    assert len(read_judgments(tmp_path)) == 10  # no judgment lost


def test_exception_midway_then_resumed(tmp_path, server_factory):  # the default: one order per pair
    server = server_factory(script=KNOWN)
    a, b = answer_files(tmp_path)
    seen = []

    def crash_after_three(entry):
        seen.append(entry["key"])
        if len(seen) == 3:
            raise RuntimeError("simulated crash")

    with pytest.raises(RuntimeError, match="simulated crash"):
        run_judge(tmp_path, server, a, b, on_result=crash_after_three)
    paid_before = sum(server.paid.values())
    cached = len(judge.JudgmentCache(tmp_path / "out" / "judge_cache"))
    assert cached == paid_before >= 3  # requests in flight at the crash were kept too
    res = run_judge(tmp_path, server, a, b)
    assert res["calls"]["cached"] == cached and res["calls"]["api_calls"] == 10 - cached
    assert len(server.paid) == 10 and set(server.paid.values()) == {1}
    assert res["single_order"]["overall"]["win"] == counts(w for _, w in expected(0).values())[0]


# --------------------------------------------------------------------------- bad input


def test_unmatched_and_reordered_records_are_matched_by_id(tmp_path, server_factory):
    server = server_factory(script=KNOWN)
    a = write_jsonl(tmp_path / "a.jsonl", [record(q, "A") for q in range(6)])
    # B is reversed, lacks q0 and has an extra q7; its `index` values differ (own numbering).
    b = write_jsonl(tmp_path / "b.jsonl",
                    [record(q, "B", index=i) for i, q in enumerate([7, 5, 4, 3, 2, 1])])
    logs = []
    res = run_judge(tmp_path, server, a, b, logs=logs)
    assert res["matched_by"] == "id" and res["n_pairs"] == 5
    assert res["unmatched"] == {"only_in_a": ["q0"], "only_in_b": ["q7"]}
    assert any("1 record(s) only in" in m and "q0" in m and "q7" in m for m in logs)
    o = res["single_order"]["overall"]  # q1-q3 A, q4-q5 B in either order (by the script, whatever the file order)
    assert (o["win"], o["loss"], o["tie"]) == (3, 2, 0)

    # Without ids, records are matched by index.
    a2 = write_jsonl(tmp_path / "a2.jsonl", [record(q, "A", id=None) for q in range(3)])
    b2 = write_jsonl(tmp_path / "b2.jsonl", [record(q, "B", id=None) for q in (2, 0)])
    m = judge.match_answers(a2, b2)
    assert m.field == "index" and [p.key for p in m.pairs] == ["0", "2"] and m.only_a == ["1"]


def test_bad_answer_files_give_file_line_errors(tmp_path, server_factory):
    server = server_factory(script=KNOWN)
    a, _ = answer_files(tmp_path, qs=range(3))
    b = write_jsonl(tmp_path / "b.jsonl", [record(0, "B"), record(1, "B", output_text="  \n"),
                                          record(2, "B")])
    with pytest.raises(UserError, match=r"b\.jsonl:2: empty output_text \(1 empty.*--allow-empty"):
        run_judge(tmp_path, server, a, b)
    assert not server.requests  # nothing was sent
    res = run_judge(tmp_path, server, a, b, allow_empty=True)
    assert res["n_empty"] == {"a": 0, "b": 1} and res["single_order"]["overall"]["n"] == 3

    bad = tmp_path / "bad.jsonl"
    cases = [
        ([json.dumps(record(0, "B")), "{not json"], r"bad\.jsonl:2: not valid JSON"),
        ([json.dumps({k: v for k, v in record(0, "B").items() if k != "output_text"})],
         r"bad\.jsonl:1: field `output_text` missing"),
        ([json.dumps(record(0, "B")), json.dumps({**{k: v for k, v in record(1, "B").items() if k != "instruction"},
                                                  "prompt": "Human: q1\n\nAssistant:"})],
         r"bad\.jsonl:2: field `instruction` missing .*not the template-rendered `prompt`"),
        ([json.dumps(record(0, "B")), "", json.dumps(record(0, "B"))],
         r"bad\.jsonl:3: duplicate id 'q0' \(first on line 1\)"),
        ([json.dumps(record(1, "B", instruction="another question"))],
         r"bad\.jsonl:1: instruction of id 'q1' differs"),
        ([json.dumps(record(9, "B"))], r"no record .* matches"),
        ([], r"bad\.jsonl: no records"),
    ]
    for lines, pattern in cases:
        bad.write_text("\n".join(lines) + "\n")
        with pytest.raises(UserError, match=pattern):
            judge.match_answers(a, bad)


def test_missing_key_for_remote_endpoint(tmp_path):
    a, b = answer_files(tmp_path, qs=range(2))
    with pytest.raises(UserError, match=r"no API key .*judge\.example\.com.*OPENAI_API_KEY"):
        judge.judge_files(a, b, tmp_path / "r.json", base_url="https://judge.example.com/v1",
                          progress=False)
    assert judge_command.main(["--a", str(a), "--b", str(b), "--out", str(tmp_path / "r.json"),
                               "--base-url", "https://judge.example.com/v1"]) == 2


def test_api_key_is_sent_but_never_written_or_logged(tmp_path, server_factory, monkeypatch, capsys):
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    server = server_factory(script=KNOWN, failures={(0, "a_first"): ["429"]})
    a, b = answer_files(tmp_path, qs=range(3))
    out = tmp_path / "out" / "results.json"
    assert judge_command.main(["--a", str(a), "--b", str(b), "--out", str(out), "--base-url", server.url,
                               "--backoff", "0.001"]) == 0
    assert set(server.auth) == {f"Bearer {SECRET}"}
    # A server that rejects the key and echoes it: the error names the problem, not the key.
    server.mode = "401"
    rc = judge_command.main(["--a", str(a), "--b", str(b), "--out", str(out), "--base-url", server.url,
                             "--model", "fresh-model"])
    captured = capsys.readouterr()
    assert rc == 2 and "HTTP 401" in captured.err and "check OPENAI_API_KEY" in captured.err
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert len(written) > 8  # results, judgments, png, csv, cache entries, inputs
    for path in written:
        assert SECRET.encode() not in path.read_bytes(), path
        assert b"4f9c2e7a1b" not in path.read_bytes(), path
    assert SECRET not in captured.out + captured.err and "4f9c2e7a1b" not in captured.err


@pytest.mark.parametrize("orders", [1, 2])
def test_a_file_against_a_copy_of_itself_costs_no_call_and_ties(tmp_path, server_factory, capsys, orders):
    server = server_factory()  # no script: always "[[A]]", a judge that prefers whatever it is shown first
    a = write_jsonl(tmp_path / "a.jsonl", [record(q, "A") for q in range(10)])
    copy = tmp_path / "copy.jsonl"
    copy.write_bytes(a.read_bytes())
    res = run_judge(tmp_path, server, a, copy, orders=orders)
    assert res["calls"]["api_calls"] == 0 and sum(server.seen.values()) == 0
    assert res["n_identical"] == 10 and res["identical"].startswith("a pair whose two answers are the same text")
    o = judge.winrate.headline(res)["overall"]
    assert (o["n"], o["win"], o["tie"], o["loss"], o["identical"]) == (10, 0, 10, 0, 10)
    assert o["tie_rate"] == 1.0 and o["first_position_rate"] is None
    assert all(j["identical"] and j["outcome"] == "tie" and "verdict_a_first" not in j
               for j in read_judgments(tmp_path).values())
    # --judge-identical sends them: the position-biased judge then "decides" pairs that are the same text
    out = tmp_path / "judged.json"
    assert judge_command.main(["--a", str(a), "--b", str(copy), "--out", str(out), "--base-url", server.url,
                               "--model", "judge-test", "--no-progress", "--orders", str(orders),
                               "--judge-identical"]) == 0
    assert "identical: 10 (judged: --judge-identical)" in capsys.readouterr().out
    judged = json.loads(out.read_text())
    # (both orders of a pair of the same text render one prompt: one request serves both)
    assert judged["calls"]["api_calls"] == 10 and judge.winrate.headline(judged)["overall"]["identical"] == 0
    single = judged["single_order"]["overall"]
    assert single["tie"] == 0 and single["win"] + single["loss"] == 10  # not one tie among identical answers
    assert judge_command.main(["--a", str(a), "--b", str(copy), "--out", str(out), "--base-url", server.url,
                               "--model", "judge-test", "--no-progress", "--orders", str(orders)]) == 0
    assert "identical: 10 (ties without a call)" in capsys.readouterr().out


def test_identical_pairs_among_judged_ones_are_counted_apart(tmp_path, server_factory):
    server = server_factory(script=KNOWN)
    a, _ = answer_files(tmp_path)
    b = write_jsonl(tmp_path / "b.jsonl", [record(q, "A") if q in (0, 4) else record(q, "B") for q in range(10)])
    res = run_judge(tmp_path, server, a, b, orders=2)
    assert res["n_identical"] == 2 and res["calls"]["api_calls"] == 16
    assert (0, "a_first") not in server.seen and (4, "b_first") not in server.seen
    c = res["consistent"]["overall"]
    # q1-q3 A, q5 B, q6 tie, q7-q9 inconsistent ties; q0 and q4: identical ties
    assert (c["win"], c["tie"], c["loss"], c["identical"]) == (3, 6, 1, 2)
    assert c["consistency"] == 5 / 8  # over the 8 judged pairs: q1-q3, q5, q6 agree
    assert c["per_order"]["a_first"]["judged"] == 8


def test_output_checked_before_work_and_a_stale_chart_removed(tmp_path, server_factory, capsys):
    from mbc_jax.judge.comparison import _write_outputs, output_paths

    server = server_factory(script=KNOWN)
    a, b = answer_files(tmp_path)
    blocker = tmp_path / "blocker"
    blocker.write_text("x")
    assert judge_command.main(["--a", str(a), "--b", str(b), "--out", str(blocker / "r.json"),
                               "--base-url", server.url, "--no-progress"]) == 2
    assert capsys.readouterr().err.strip() == f"error: --out {blocker / 'r.json'}: {blocker} is a file, not a folder"
    assert sum(server.seen.values()) == 0
    # a run with no chart to draw removes the chart (and its CSV) an earlier run left
    res = run_judge(tmp_path, server, a, b)
    paths = output_paths(tmp_path / "out" / "results.json")
    assert paths["png"].is_file() and paths["csv"].is_file()
    _write_outputs(paths, [], res, plot=False, title="t")
    assert not paths["png"].exists() and not paths["csv"].exists() and paths["results"].is_file()
