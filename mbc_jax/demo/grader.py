"""The demo world's grader: how well one response answers one demonstration prompt, by the world's facts
and the task's rule (the local judge's knowledge: `mbc_jax.judge.world_server`).

    grader = WorldGrader(seed=0)
    grader.grade("What is the capital of Drolaria?", "The capital of Drolaria is Vesk.")   # Grade(1.0, ...)

`grade(instruction, response)` reads the prompt as the judge receives it (the instruction, then the
context under "Context:" when there is one), recognizes which of the suite's task templates
(tasks.py) produced it, and scores the response in [0, 1]:

- facts (open_qa, animal or plant): 1 when the response names the true value and no other value of
  that kind, 0.5 when it names the true one among others, else 0;
- rules with one right answer (sentiment, parity, closed_qa, rewriting, extraction): 1 for the
  right answer; rewriting and extraction give partial credit below 1 (token similarity, list F1);
- summaries: the share of the town's four key facts (name, adjective, good, creature) mentioned,
  less 0.25 when "one sentence" was asked and more were given;
- open-ended tasks (brainstorming, stories, poems), where many answers are valid: the task's
  rules only (the asked number of distinct items; a story that names its hero, is long enough and
  does not repeat itself; a poem of several distinct lines about its subject), never the wording
  of one reference.

A prompt no template matches gets `None` (the judge then calls a tie).
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable
from dataclasses import dataclass

from mbc_jax.demo.words import NEG_STAFF, NEG_WORDS, POS_STAFF, POS_WORDS
from mbc_jax.demo.world import LEX, make_world

CONTEXT_MARK = "\n\nContext:\n"  # as mbc_jax.generate.answers.instruction_text writes it
_ATTRIBUTE_QUESTIONS = {
    "capital": ("What is the capital of {c}?", "Which city is the capital of {c}?", "Name the capital city of {c}."),
    "language": ("What language do people speak in {c}?", "Which language is spoken in {c}?"),
    "currency": ("What is the currency of {c}?", "What money do people use in {c}?"),
    "animal": ("What is the national animal of {c}?", "Which animal is the symbol of {c}?"),
    "plant": ("What is the national plant of {c}?", "Which plant is the symbol of {c}?"),
    "founded": ("When was {c} founded?", "In what year was {c} founded?"),
    "export": ("What is the main export of {c}?", "What does {c} sell most to other countries?"),
}
_KIND_QUESTIONS = ("Is the {t} an animal or a plant?", "Classify the {t} as an animal or a plant.",
                   "Would you call the {t} a plant or an animal?")


@dataclass(frozen=True)
class Grade:
    score: float
    reason: str


def _template_regex(template: str, **groups: str) -> re.Pattern:
    pattern = re.escape(template)
    for name, group in groups.items():
        pattern = pattern.replace(re.escape("{" + name + "}"), f"(?P<{name}>{group})")
    return re.compile(pattern + r"\Z")


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", text.lower())


def _mentions(text: str, value: str) -> bool:
    return re.search(rf"(?<![A-Za-z0-9]){re.escape(value.lower())}(?![A-Za-z0-9])", text.lower()) is not None


def _choice(response: str, right: str, options: tuple[str, ...]) -> Grade:
    named = [o for o in options if _mentions(response, o)]
    if named == [right]:
        return Grade(1.0, f"answers {right}, which is right")
    if right in named:
        return Grade(0.5, f"names {right} but also {', '.join(o for o in named if o != right)}")
    return Grade(0.0, f"does not answer {right}" + (f" (says {', '.join(named)})" if named else ""))


def _items(response: str) -> list[str]:
    """List items of a response: bulleted / numbered lines, else comma-separated parts."""
    lines = [x.strip() for x in response.splitlines() if x.strip()]
    marked = [re.sub(r"^(\d+[.)]|[-*\u2022])\s*", "", x) for x in lines if re.match(r"^(\d+[.)]|[-*\u2022])\s*", x)]
    if marked:
        return [x.strip() for x in marked if x.strip()]
    if len(lines) > 1:
        return lines
    return [x.strip().rstrip(".") for x in response.split(",") if x.strip()]


def _list_grade(response: str, expected: list[str]) -> Grade:
    got = [x.lower() for x in _items(response)]
    want = [x.lower() for x in expected]
    if got == want:
        return Grade(1.0, f"lists exactly the {len(want)} items, in order")
    common = len(set(got) & set(want))
    f1 = 2 * common / (len(set(got)) + len(set(want))) if got else 0.0
    return Grade(0.9 * f1, f"lists {common} of the {len(want)} items (and {len(set(got)) - common} others)")


class WorldGrader:
    """Grades responses to prompts of the demo world of `seed`."""

    def __init__(self, seed: int = 0):
        self.world = make_world(seed)
        self.handlers: list[tuple[re.Pattern, Callable[..., Grade]]] = []
        country, name, word = "|".join(LEX.countries), r"[A-Z][a-z]+", r"[a-z]+"
        for attribute, questions in _ATTRIBUTE_QUESTIONS.items():
            for q in questions:
                self._on(_template_regex(q, c=country), lambda r, m, c, a=attribute: self._fact(r, m["c"], a))
        for q in _KIND_QUESTIONS:
            self._on(_template_regex(q, t=word), lambda r, m, c: self._kind(r, m["t"]))
        for q in ("Is {n} an even or an odd number?", "Tell me whether {n} is even or odd."):
            self._on(_template_regex(q, n=r"\d+"),
                     lambda r, m, c: _choice(r, ("odd", "even")[int(m["n"]) % 2 == 0], ("even", "odd")))
        for q in ("Is this review positive or negative?",
                  "Classify the sentiment of the following review as positive or negative."):
            self._on(_template_regex(q), lambda r, m, c: self._sentiment(r, c))
        self._closed_qa(name)
        self._rewriting()
        self._extraction()
        self._on(_template_regex("Summarize this passage in one sentence."), lambda r, m, c: self._summary(r, c, True))
        self._on(_template_regex("What are the key facts about the town in this text? Answer briefly."),
                 lambda r, m, c: self._summary(r, c, False))
        self._open_ended(name, word)

    def _on(self, pattern: re.Pattern, handler: Callable[..., Grade]) -> None:
        self.handlers.append((pattern, handler))

    def grade(self, instruction: str, response: str) -> Grade | None:
        """The response's grade, or None when the prompt is not one of the world's task templates."""
        text, _, context = instruction.partition(CONTEXT_MARK)
        text, response = text.strip(), response.strip()
        for pattern, handler in self.handlers:
            m = pattern.match(text)
            if m:
                if not response:
                    return Grade(0.0, "empty response")
                return handler(response, m, context)
        return None

    # ------------------------------------------------------------------ facts and labels

    def _fact(self, response: str, country: str, attribute: str) -> Grade:
        right = self.world.facts[(country, attribute)]
        options = tuple(sorted({v for (_, a), v in self.world.facts.items() if a == attribute}))
        return _choice(response, right, options)

    def _kind(self, response: str, thing: str) -> Grade:
        if thing in LEX.creatures:
            return _choice(response, "animal", ("animal", "plant"))
        if thing in LEX.plants:
            return _choice(response, "plant", ("animal", "plant"))
        return Grade(0.0, f"{thing} is not a creature or plant of this world")

    def _sentiment(self, response: str, review: str) -> Grade:
        words = set(_words(review))
        pos = len(words & set(POS_WORDS + POS_STAFF))
        neg = len(words & set(NEG_WORDS + NEG_STAFF))
        return _choice(response, "positive" if pos >= neg else "negative", ("positive", "negative"))

    # ------------------------------------------------------------------ answers in the context

    def _closed_qa(self, name: str) -> None:
        facts = {
            "born_where": (r"(?P<who>{n} {n})", "Where was {who} born?", r"born in (\w+) in \d+"),
            "born_when": (r"(?P<who>{n} {n})", "In what year was {who} born?", r"born in \w+ in (\d+)"),
            "job": (r"(?P<who>{n} {n})", "What did {who} do for a living?", r"worked as an? (\w+) for"),
            "years": (r"(?P<who>{n})", "For how many years did {who} work as {x}?", r"for (\d+) years"),
            "pet": (r"(?P<who>{n})", "What kind of animal did {who} keep?", r"kept an? (\w+) named"),
            "pet_name": (r"(?P<who>{n})", "What was the name of {who}'s {x}?", r"named (\w+)\."),
            "moved": (r"(?P<who>{n})", "Where did {who} move later in life?", r"moved to (\w+),"),
            "shop": (r"(?P<who>{n})", "What did {who} open in {x}?", r"opened a small ([\w ]+)\."),
        }
        for who, question, answer in facts.values():
            pattern = re.escape(question).replace(re.escape("{who}"), who.format(n=name))
            pattern = pattern.replace(re.escape("{x}"), r".+")
            self._on(re.compile(pattern + r"\Z"), lambda r, m, c, a=answer: self._from_context(r, c, a))

    def _from_context(self, response: str, context: str, answer: str) -> Grade:
        found = re.search(answer, context)
        if not found:
            return Grade(0.0, "the context does not hold the answer")
        right = found.group(1)
        if _mentions(response, right):
            return Grade(1.0, f"gives {right}, as the context says")
        return Grade(0.0, f"does not give {right}, which the context says")

    def _rewriting(self) -> None:
        rules: dict[str, Callable[[str, re.Match], str]] = {
            "Reverse the order of the following words.": lambda c, m: " ".join(reversed(c.split(" "))),
            "Sort these words in alphabetical order.": lambda c, m: ", ".join(sorted(c.split(", "))),
            "Turn this comma separated list into a numbered list.":
                lambda c, m: "\n".join(f"{i}. {w}" for i, w in enumerate(c.split(", "), 1)),
            "Capitalize the first letter of every word in this sentence.":
                lambda c, m: " ".join(w[:1].upper() + w[1:] for w in c.split(" ")),
        }
        for instruction, rule in rules.items():
            self._on(_template_regex(instruction), lambda r, m, c, f=rule: self._exact(r, f(c, m)))
        replace = _template_regex('Rewrite the sentence, replacing the word "{old}" with "{new}".',
                                  old=r"[a-z]+", new=r"[a-z]+")
        self._on(replace, lambda r, m, c: self._exact(r, re.sub(rf"\b{m['old']}\b", m["new"], c)))

    def _exact(self, response: str, expected: str) -> Grade:
        if response == expected.strip():
            return Grade(1.0, "applies the rule exactly")
        ratio = difflib.SequenceMatcher(None, response.split(), expected.split(), autojunk=False).ratio()
        return Grade(0.9 * ratio, f"departs from the rule's output (token similarity {ratio:.2f})")

    def _extraction(self) -> None:
        def in_order(names: tuple[str, ...]) -> Callable[[str], list[str]]:
            pattern = re.compile(r"\b(" + "|".join(sorted(names, key=len, reverse=True)) + r")\b")
            return lambda c: pattern.findall(c)

        kinds = {
            "List the cities mentioned in this travel diary, in order, separated by commas.": in_order(LEX.cities),
            "Which animals appear in this passage? Give them as a bulleted list.": in_order(LEX.creatures),
            "Extract every year mentioned in the text, separated by commas.": lambda c: re.findall(r"\b\d{3,4}\b", c),
        }
        for instruction, find in kinds.items():
            self._on(_template_regex(instruction), lambda r, m, c, f=find: _list_grade(r, f(c)))

    def _summary(self, response: str, context: str, one_sentence: bool) -> Grade:
        m = re.match(r"(\w+) is an? (\w+) town known for its ([\w ]+?) and its (\w+)s\.", context)
        if not m:
            return Grade(0.0, "the context has no topic sentence")
        keys = m.groups()
        hit = [k for k in keys if _mentions(response, k) or _mentions(response, k + "s")]
        score = len(hit) / len(keys)
        sentences = len(re.findall(r"[.!?](\s|$)", response.strip() + " "))
        reason = f"mentions {len(hit)} of the 4 key facts ({', '.join(hit) or 'none'})"
        if one_sentence and sentences > 1:
            score, reason = max(0.0, score - 0.25), reason + f", in {sentences} sentences (one was asked)"
        return Grade(score, reason)

    # ------------------------------------------------------------------ open-ended: rules only

    def _open_ended(self, name: str, word: str) -> None:
        n = r"(?P<n>\d+)"
        for q in (f"Give me {n} name ideas for a new .+ in {name}\\.",
                  f"What are {n} things I should pack for a trip to .+\\?",
                  f"Brainstorm {n} activities for the {word} festival in {name}\\."):
            self._on(re.compile(q + r"\Z"), lambda r, m, c: self._ideas(r, int(m["n"]), names=False))
        self._on(re.compile(f"Suggest {n} names for my pet {word}\\." + r"\Z"),
                 lambda r, m, c: self._ideas(r, int(m["n"]), names=True))
        for q in (f"Write a short story about (?P<who>{name}), an? (?P<job>{word}) from (?P<city>{name})\\.",
                  f"Tell me a story about an? (?P<job>{word}) named (?P<who>{name}) who lives in (?P<city>{name})\\."):
            self._on(re.compile(q + r"\Z"), lambda r, m, c: self._story(r, m["who"], (m["job"], m["city"])))
        self._on(re.compile(f"Write a poem about the {word} (?P<noun>{word}) of (?P<city>{name})\\." + r"\Z"),
                 lambda r, m, c: self._poem(r, (m["noun"], m["city"])))

    def _ideas(self, response: str, n: int, names: bool) -> Grade:
        items = _items(response)
        distinct = len({x.lower() for x in items})
        count = max(0.0, 1 - abs(len(items) - n) / n)
        score = count * (distinct / len(items) if items else 0.0)
        reason = f"{len(items)} items ({distinct} distinct) for the {n} asked"
        if names:
            ok = sum(bool(re.fullmatch(r"[A-Z][a-z]+", x)) for x in items)
            score *= ok / len(items) if items else 0.0
            reason += f", {ok} of them single names"
        return Grade(score, reason)

    def _story(self, response: str, hero: str, about: tuple[str, ...]) -> Grade:
        sentences = [s.strip() for s in re.split(r"(?<=[.!?\"])\s+", response) if s.strip()]
        distinct = len(set(sentences)) / len(sentences) if sentences else 0.0
        words = len(response.split())
        score = (0.25 * _mentions(response, hero) + 0.15 * any(_mentions(response, x) for x in about)
                 + 0.3 * min(1.0, words / 60) + 0.3 * distinct)
        return Grade(score, f"{'names' if _mentions(response, hero) else 'never names'} {hero}, {words} words, "
                            f"{distinct:.0%} of sentences distinct")

    def _poem(self, response: str, about: tuple[str, ...]) -> Grade:
        lines = [x.strip() for x in response.splitlines() if x.strip()]
        distinct = len(set(lines)) / len(lines) if lines else 0.0
        on_topic = any(_mentions(response, x) for x in about)
        score = 0.3 * min(1.0, len(lines) / 4) + 0.4 * on_topic + 0.3 * distinct
        return Grade(score, f"{len(lines)} lines ({distinct:.0%} distinct), "
                            f"{'on' if on_topic else 'off'} its subject")
