"""mbc_jax/demo/grader.py and mbc_jax/judge/world_server.py: grades and verdicts on hand-made answer pairs,
the suite's own references, order symmetry, and the HTTP server speaking the chat-completions shape."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import pytest

from mbc_jax import demo as D
from mbc_jax.demo.grader import WorldGrader
from mbc_jax.demo.world import LEX, make_world
from mbc_jax.judge import load_template, parse_verdict
from mbc_jax.judge.world_server import WORLD_JUDGE_MODEL, parse_prompt, verdict, world_judge

WORLD = make_world(0)
COUNTRY = LEX.countries[0]
CAPITAL = WORLD.facts[(COUNTRY, "capital")]
OTHER_CITY = next(c for c in LEX.cities if c != CAPITAL)
BIO = ("Tamo Brik was born in Vesk in 1204. She worked as a potter for 12 years. She kept a zib named Lora. "
       "Later she moved to Hald, where she opened a small tea shop.")
CITY1, CITY2 = LEX.cities[:2]
DIARY = (f"In 1210 we reached {CITY1} and saw a {LEX.creatures[1]} near the harbor. By 1300 the road had taken us "
         f"to {CITY2}, where a {LEX.creatures[2]} slept.")
TOWN = ("Krogra is a wide town known for its timber and its gehas. Most families there work with timber. "
        "Visitors say the soup is lovely but the winters are long.")


def ctx(instruction: str, context: str) -> str:
    return f"{instruction}\n\nContext:\n{context}"


# (instruction as the judge reads it, a right answer, a wrong answer)
PAIRS = [
    (f"What is the capital of {COUNTRY}?", f"The capital of {COUNTRY} is {CAPITAL}.",
     f"The capital of {COUNTRY} is {OTHER_CITY}."),
    (f"In what year was {COUNTRY} founded?", f"{COUNTRY} was founded in {WORLD.facts[(COUNTRY, 'founded')]}.",
     f"{COUNTRY} was founded in 99999."),
    (f"Is the {LEX.creatures[0]} an animal or a plant?", "animal", "plant"),
    (f"Would you call the {LEX.plants[0]} a plant or an animal?", "It is a plant.", "an animal"),
    ("Is 7 an even or an odd number?", "odd", "even"),
    ("Tell me whether 1234 is even or odd.", "It is even.", "odd"),
    (ctx("Is this review positive or negative?", "The soup at the inn in Vesk was awful, and the staff were rude."),
     "negative", "positive"),
    (ctx("Where was Tamo Brik born?", BIO), "Tamo Brik was born in Vesk.", "Tamo Brik was born in Hald."),
    (ctx("What was the name of Tamo's zib?", BIO), "The zib was named Lora.", "The zib was named Tamo."),
    (ctx("For how many years did Tamo work as a potter?", BIO), "12 years", "1204 years"),
    (ctx("Reverse the order of the following words.", "red blue green"), "green blue red", "red blue green"),
    (ctx("Sort these words in alphabetical order.", "pear, apple, fig"), "apple, fig, pear", "pear, apple, fig"),
    (ctx("Turn this comma separated list into a numbered list.", "pear, apple"), "1. pear\n2. apple", "pear apple"),
    (ctx("Capitalize the first letter of every word in this sentence.", "the old mill"), "The Old Mill",
     "the old mill"),
    (ctx('Rewrite the sentence, replacing the word "mill" with "tower".', "the old mill stood"),
     "the old tower stood", "the old mill stood"),
    (ctx("List the cities mentioned in this travel diary, in order, separated by commas.", DIARY),
     f"{CITY1}, {CITY2}", CITY2),
    (ctx("Extract every year mentioned in the text, separated by commas.", DIARY), "1210, 1300", "1300, 1210, 1500"),
    (ctx("Summarize this passage in one sentence.", TOWN), "Krogra is a wide town known for its timber and its gehas.",
     "Visitors like the soup."),
    ("Suggest 3 names for my pet zib.", "1. Lora\n2. Tamo\n3. Brik", "1. Lora\n2. Lora"),
    ("Give me 4 name ideas for a new inn in Vesk.", "- The Red Zib\n- Vesk Inn\n- Lora's Bell\n- The Quiet Inn",
     "- Vesk Inn"),
    ("Write a short story about Tamo, a potter from Vesk.",
     "Tamo lived in Vesk and shaped cups all day. One morning a zib walked into the shop. Tamo gave it milk "
     "and it stayed. The neighbors laughed at first, but soon they came to see the zib every evening. By "
     "winter the shop was the busiest in town, and Tamo made a small cup just for the zib.",
     "Tamo. Tamo. Tamo. Tamo."),
    ("Write a poem about the quiet bridge of Vesk.",
     "The quiet bridge of Vesk\nholds the river's song\nthe lanterns sway\nand night is long",
     "bridge bridge bridge"),
]


@pytest.fixture(scope="module")
def grader():
    return WorldGrader(0)


@pytest.mark.parametrize("instruction, right, wrong", PAIRS, ids=[p[0].split("\n")[0][:40] for p in PAIRS])
def test_right_beats_wrong_in_both_orders(grader, instruction, right, wrong):
    g_right, g_wrong = grader.grade(instruction, right), grader.grade(instruction, wrong)
    assert g_right is not None and g_wrong is not None
    assert g_right.score > g_wrong.score + 0.05, (g_right, g_wrong)
    assert parse_verdict(verdict(grader, instruction, right, wrong)) == "A"
    assert parse_verdict(verdict(grader, instruction, wrong, right)) == "B"


def test_exact_grades_by_hand(grader):
    q = f"What is the capital of {COUNTRY}?"
    assert grader.grade(q, CAPITAL).score == 1.0
    assert grader.grade(q, f"{CAPITAL} or {OTHER_CITY}").score == 0.5  # right, among others
    assert grader.grade(q, "I do not know.").score == 0.0
    assert grader.grade(q, "").score == 0.0
    years = ctx("Extract every year mentioned in the text, separated by commas.", DIARY)
    assert grader.grade(years, "1300, 1210").score == pytest.approx(0.9)  # right set, wrong order: F1 1 x 0.9
    assert grader.grade(years, "1210").score == pytest.approx(0.9 * 2 * 1 / 3)
    animals = ctx("Which animals appear in this passage? Give them as a bulleted list.", DIARY)
    assert grader.grade(animals, f"- {LEX.creatures[1]}\n- {LEX.creatures[2]}").score == 1.0
    town = ctx("Summarize this passage in one sentence.", TOWN)
    assert grader.grade(town, "Krogra makes timber.").score == 0.5  # 2 of the 4 key facts
    assert grader.grade(town, "Krogra is wide. It makes timber. It has gehas.").score == 0.75  # 4/4 - 0.25
    assert grader.grade("Suggest 4 names for my pet zib.", "1. Lora\n2. Tamo").score == 0.5  # 2 of 4


def test_ties_and_unknown_prompts(grader):
    q = f"What is the capital of {COUNTRY}?"
    assert parse_verdict(verdict(grader, q, CAPITAL, f"It is {CAPITAL}.")) == "C"  # equally right
    assert parse_verdict(verdict(grader, q, "no idea", "")) == "C"  # equally wrong
    assert grader.grade("Write me a limerick about tea.", "x") is None
    assert parse_verdict(verdict(grader, "Write me a limerick about tea.", "a", "b")) == "C"


def test_suite_references_get_full_grades(grader, suite):
    valid = D.generate_suite(80, 0, split="valid", exclude=suite)
    for r in suite + valid:
        instruction = ctx(r["instruction"], r["context"]) if r["context"] else r["instruction"]
        g = grader.grade(instruction, r["response"])
        assert g is not None, r
        if r["familiarity"] != "open_ended":  # one right answer: the reference is it
            assert g.score == 1.0, (r, g)
        else:
            assert g.score > 0.3, (r, g)


def test_prompt_parsing_and_http_server():
    template = load_template()
    instruction = f"What is the capital of {COUNTRY}?"
    messages = template.render(instruction, f"It is {OTHER_CITY}.", f"It is {CAPITAL}.")
    assert parse_prompt(messages) == (instruction, f"It is {OTHER_CITY}.", f"It is {CAPITAL}.")
    with world_judge(seed=0) as url:
        assert url.startswith("http://127.0.0.1:") and url.endswith("/v1")

        def post(body: dict) -> tuple[int, dict]:
            req = urllib.request.Request(url + "/chat/completions", json.dumps(body).encode(),
                                         {"Content-Type": "application/json"})
            try:
                with urllib.request.urlopen(req, timeout=10) as resp:
                    return resp.status, json.loads(resp.read())
            except urllib.error.HTTPError as e:
                return e.code, json.loads(e.read())

        status, body = post({"model": "gpt-4", "messages": messages})
        assert status == 200 and body["object"] == "chat.completion" and body["model"] == "gpt-4"
        assert parse_verdict(body["choices"][0]["message"]["content"]) == "B"
        status, body = post({"model": "x", "messages": [{"role": "user", "content": "hello"}]})
        assert status == 400 and "Figure 4" in body["error"]["message"]
        with urllib.request.urlopen(url + "/models", timeout=10) as resp:
            assert json.loads(resp.read())["data"][0]["id"] == WORLD_JUDGE_MODEL
    with pytest.raises(urllib.error.URLError):  # stopped after the block
        urllib.request.urlopen(url + "/models", timeout=2)
