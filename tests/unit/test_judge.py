"""mbc_jax/judge without a server: strict verdict parsing, order mapping, the template, endpoint and
key resolution, backoff, and the `judge` command's arguments."""

from __future__ import annotations

import argparse
import hashlib

import numpy as np
import pytest

from conftest import SECRET
from mbc_jax import UserError, judge
from mbc_jax.commands import judge as judge_command

pytestmark = pytest.mark.usefixtures("_no_key")


def test_parse_verdict_is_strict():
    assert judge.parse_verdict("A is clearer. [[A]]") == "A"
    assert judge.parse_verdict("[[C]]") == "C"
    assert judge.parse_verdict("[[B]] ... final: [[B]]") == "B"  # repeated, not conflicting
    for bad in ("", None, "A is better", "[A]", "[[a]]", "[[D]]", "[[A]] or [[C]]", "[[ A ]]"):
        with pytest.raises(judge.InvalidVerdict):
            judge.parse_verdict(bad)


def test_order_mapping_and_combination():
    assert judge.winner_of("A", "a_first") == "A" and judge.winner_of("A", "b_first") == "B"
    assert judge.winner_of("B", "b_first") == "A" and judge.winner_of("C", "b_first") == "tie"
    assert judge.combine("A", "A") == "A" and judge.combine("A", "B") == "tie"
    assert judge.combine("A", "tie") == "tie" and judge.combine("tie", "tie") == "tie"


def test_template_cites_paper_and_renders_in_one_pass():
    raw = judge.TEMPLATE_PATH.read_text()
    header = "".join(line for line in raw.splitlines(keepends=True) if line.startswith("#"))
    assert "Through the Lens of Memorization" in header and "Figure 4" in header
    assert "Ge, Devamanyu Hazarika, Yang Liu, Mahdi Namazifar" in header
    assert "MT-Bench" in header and "Zheng et al. 2023" in header and "[26]" in header
    assert "[[A]]" in raw and "[[B]]" in raw and "[[C]]" in raw
    t = judge.load_template()
    system, user = t.render("Q? {response_b}", "first {instruction}", "second")
    assert system["role"] == "system" and "#" not in system["content"][:1]
    assert "Q? {response_b}" in user["content"]  # a response's braces are never expanded
    assert user["content"].index("first {instruction}") < user["content"].index("second")


def test_default_template_is_figure4_verbatim(shared_dir):
    """The shipped prompt, system paragraph + blank line + user message, is byte for byte the
    paper's Figure 4 text, and rendering the placeholders as themselves gives it back."""
    want = (shared_dir / "paper" / "figure4_judge_prompt.txt").read_bytes()
    t = judge.load_template()
    assert (t.system + "\n\n" + t.user + "\n").encode() == want
    system, user = t.render("{instruction}", "{response_a}", "{response_b}")
    assert (system["content"] + "\n\n" + user["content"] + "\n").encode() == want
    assert judge.DEFAULT_MODEL == "gpt-4"  # the paper's judge


def test_custom_templates_use_the_papers_placeholder_names(tmp_path):
    ok = tmp_path / "ok.txt"
    ok.write_text("# mine\n[user]\nI: {instruction}\nA: {response_a}\nB: {response_b}\n")
    (msg,) = judge.load_template(ok).render("do {response_a}", "x", "y")
    assert msg == {"role": "user", "content": "I: do {response_a}\nA: x\nB: y"}
    old = tmp_path / "old.txt"
    old.write_text("[user]\nQ: {question}\nA: {answer_a}\nB: {answer_b}\n")
    with pytest.raises(UserError, match=r"old\.txt: placeholder\(s\) \{instruction\}, \{response_a\}, "
                                        r"\{response_b\} missing; rename the old \{question\}, \{answer_a\}, "
                                        r"\{answer_b\} to \{instruction\}, \{response_a\}, \{response_b\}"):
        judge.load_template(old)


def test_endpoint_and_key_resolution(monkeypatch):
    for url in ("http://127.0.0.1:8000/v1", "http://localhost/v1", "http://10.1.2.3:8000/v1",
                "http://[::1]:80/v1"):
        assert judge.is_local_url(url)
    assert not judge.is_local_url("https://api.openai.com/v1")
    assert judge.resolve_endpoint("http://127.0.0.1:1/v1")[1] == judge.LOCAL_PLACEHOLDER_KEY
    with pytest.raises(UserError, match="OPENAI_API_KEY"):
        judge.resolve_endpoint("https://judge.example.com/v1")
    with pytest.raises(UserError, match="OPENAI_API_KEY"):
        judge.resolve_endpoint(None)  # the default is OpenAI itself
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    assert judge.resolve_endpoint("https://judge.example.com/v1")[1] == SECRET
    url = "https://u:pw@h.example.com:8443/v1?key=x"
    assert judge.public_url(url) == "https://h.example.com:8443/v1"
    assert SECRET not in judge.redact(f"bad key {SECRET}", [SECRET])
    assert "4f9c2e7a1b" not in judge.redact(f"bad key {SECRET}")  # sk- shaped, even if unknown


def test_backoff_is_exponential_with_jitter():
    j = judge.Judge(None, judge.JudgeConfig(backoff_base=1.0, backoff_max=8.0), None, None,
                    rng=__import__("random").Random(0))
    for failures, d in [(1, 1.0), (2, 2.0), (3, 4.0), (4, 8.0), (9, 8.0)]:
        delays = [j.backoff(failures) for _ in range(50)]
        assert min(delays) >= d / 2 and max(delays) <= d and len(set(delays)) > 1
    assert j.backoff(1, retry_after=3.0) == 3.0  # Retry-After wins when longer
    assert j.backoff(1, retry_after=100.0) == 8.0  # but stays bounded


def test_register_adds_the_judge_command():
    parser = argparse.ArgumentParser()
    judge_command.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["judge", "--a", "A", "--b", "B", "--out", "o.json",
                              "--base-url", "http://127.0.0.1:8000/v1", "--model", "m",
                              "--concurrency", "2", "--max-retries", "1", "--timeout", "3",
                              "--cache", "c", "--name-a", "x", "--name-b", "y", "--seed", "7"])
    assert args.func is judge_command.run and args.seed == 7 and args.cache == "c"
    assert (args.concurrency, args.max_retries, args.timeout) == (2, 1, 3.0)


def test_seeded_order_is_a_fair_coin_per_pair_fixed_by_seed_and_key():
    keys = [f"q{i}" for i in range(4000)]
    zero = [judge.seeded_order(k, 0) for k in keys]
    assert zero == [judge.seeded_order(k, 0) for k in reversed(keys)][::-1]  # per key, not per position
    assert 0.47 < zero.count("a_first") / len(keys) < 0.53  # a fair coin (binomial sd 0.8%)
    one = [judge.seeded_order(k, 1) for k in keys]
    assert 0.47 < np.mean([x == y for x, y in zip(zero, one)]) < 0.53  # another seed, fresh coins
    assert zero[7] == judge.ORDERS[hashlib.sha256(b"0\x00q7").digest()[0] & 1]  # the documented draw
    assert judge.orders_judged(1, "b_first") == ("b_first",) and judge.orders_judged(2, "b_first") == judge.ORDERS
    with pytest.raises(ValueError, match="orders"):
        judge.orders_judged(3, "a_first")


def test_orders_option_defaults_to_the_papers_protocol(capsys):
    parser = argparse.ArgumentParser()
    judge_command.register(parser.add_subparsers(dest="command"))
    base = ["judge", "--a", "A", "--b", "B", "--out", "o.json"]
    assert parser.parse_args(base).orders == 1 and parser.parse_args(base).max_calls is None
    assert parser.parse_args([*base, "--orders", "2", "--max-calls", "40"]).orders == 2
    with pytest.raises(SystemExit):
        parser.parse_args([*base, "--orders", "3"])
    capsys.readouterr()
    with pytest.raises(UserError, match="--orders must be 1"):
        judge.judge_files("A", "B", "o.json", orders=3)
