"""The embedded default: a generated demonstration suite, its tokenizer and a tiny GPT-Neo config.

This is what the README's one command trains on when no network, no GPU and no real checkpoint
are at hand. Nothing here is real human data and nothing is downloaded:

* `generate_suite` writes instruction / context / response records in the databricks-dolly-15k
  schema from a made-up world (invented countries, cities, people, creatures and plants with
  randomly drawn facts) and a few hundred hand-written English words. Every record is produced
  by a template and `random.Random` streams derived from one integer seed, so the same seed
  always gives the same bytes. The records imitate the *shape* of human demonstrations (eight
  labelled task categories, from one-word classification labels to long free-form stories) so
  that memorization can be compared across categories of very different difficulty; they say
  nothing about how a model trained on real demonstrations behaves.
* `build_tokenizer` trains a small byte-level BPE tokenizer on those records at run time
  (GPT-2 style pre-tokenization, so every byte string round-trips, spaces and newlines included),
  with `<|endoftext|>` as bos / eos / unk as in GPT-Neo and a separate `<|pad|>`.
* `tiny_gpt_neo_config` is a Hugging Face GPT-Neo `config.json` of about a million parameters.
* `materialize` writes all of it to a folder: `data.jsonl`, `valid.jsonl`, `tokenizer/` and a
  weightless checkpoint-style `model/` (config plus tokenizer), byte-identical on every call.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable

from mbc_jax import UserError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

__all__ = [
    "CATEGORIES",
    "DEFAULT_NUM_RECORDS",
    "DEFAULT_NUM_VALID",
    "DESCRIPTION",
    "EOS_TOKEN",
    "EmbeddedError",
    "PAD_TOKEN",
    "TOKENIZER_VOCAB_SIZE",
    "build_tokenizer",
    "category_counts",
    "generate_suite",
    "materialize",
    "tiny_gpt_neo_config",
]

DEFAULT_NUM_RECORDS = 600
DEFAULT_NUM_VALID = 80
EOS_TOKEN = "<|endoftext|>"
PAD_TOKEN = "<|pad|>"
# Byte-level BPE target size: 256 byte symbols + 2 special tokens + merges. Large enough that
# nearly every word of the suite becomes a single token, small enough to keep the embedding tiny.
TOKENIZER_VOCAB_SIZE = 2048
MAX_POSITIONS = 256
# Only used to give the BPE trainer the same strings the data pipeline will encode (prompt, then
# " " + response); the real template lives in `mbc_jax.data`. Any text still encodes, byte-level.
_TRAIN_PROMPT = "Human: {instruction}{context}\n\nAssistant:"

DESCRIPTION = (
    "The embedded default run uses a synthetic, generated demonstration suite, not real human data: "
    "{n} instruction/context/response records in the databricks-dolly-15k schema, produced "
    "deterministically from one seed by templates over a made-up world (invented countries, cities, "
    "people, creatures and plants with randomly drawn facts) and a few hundred hand-written English "
    "words. Its eight labelled categories span very different difficulty to memorize, from one-word "
    "classification labels and one-fact answers to long randomized stories. A byte-level BPE "
    "tokenizer ({v} tokens) is trained on it at run time and the model is a randomly initialized "
    "tiny GPT-Neo (4 layers, hidden size 128, about one million parameters). It exists so that the "
    "whole method runs end to end in minutes on a CPU without a network; its numbers say nothing "
    "about real models or real data."
).format(n=DEFAULT_NUM_RECORDS, v=TOKENIZER_VOCAB_SIZE)


class EmbeddedError(UserError, ValueError):
    """A size or split the embedded suite cannot provide (a one-line message naming what to change)."""


# --------------------------------------------------------------------------------------------
# Categories


@dataclass(frozen=True)
class Category:
    name: str
    weight: int  # share of the suite = weight / sum of weights (sixtieths: 600 records -> 10 x weight)
    difficulty: str  # expected difficulty to memorize the response: easy / medium / hard
    about: str


CATEGORIES: tuple[Category, ...] = (
    Category("open_qa", 12, "easy", "one fact about a made-up country, one short sentence"),
    Category("classification", 10, "easy", "sentiment, even/odd or animal/plant; a one-word label"),
    Category("closed_qa", 8, "easy", "a question answered by one sentence copied from a biography"),
    Category("rewriting", 7, "medium", "reverse, sort, number, capitalize or substitute words"),
    Category("information_extraction", 6, "medium", "list the cities, creatures or years in a diary"),
    Category("summarization", 5, "medium", "topic sentence or key facts of a town description"),
    Category("brainstorming", 6, "hard", "a list of randomly drawn names or ideas"),
    Category("creative_writing", 6, "hard", "a long story or poem from random templates"),
)
_CATEGORY_NAMES = tuple(c.name for c in CATEGORIES)


def category_counts(num_records: int) -> dict[str, int]:
    """How many records of each category a suite of `num_records` holds (largest remainder)."""
    if num_records < len(CATEGORIES):
        raise EmbeddedError(
            f"num_records={num_records}: the embedded suite needs at least {len(CATEGORIES)} records "
            "(one per category); ask for more"
        )
    total = sum(c.weight for c in CATEGORIES)
    exact = [c.weight * num_records / total for c in CATEGORIES]
    counts = [max(1, math.floor(x)) for x in exact]
    by_remainder = sorted(range(len(CATEGORIES)), key=lambda i: (-(exact[i] - math.floor(exact[i])), i))
    i = 0
    while sum(counts) < num_records:
        counts[by_remainder[i % len(counts)]] += 1
        i += 1
    while sum(counts) > num_records:  # only when the max(1, .) floor overshot on tiny suites
        j = max(range(len(counts)), key=lambda k: (counts[k], -k))
        counts[j] -= 1
    return dict(zip(_CATEGORY_NAMES, counts))


# --------------------------------------------------------------------------------------------
# The made-up world. The invented words are fixed (the world's "language"); which facts hold
# (which city is which country's capital, ...) is drawn from the suite's seed.

_ONSETS = ("b", "d", "f", "g", "h", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "br", "dr",
           "gr", "kr", "st", "th", "tr", "sh")
_VOWELS = ("a", "e", "i", "o", "u", "a", "e", "o", "ai", "ou")
_CODAS = ("", "", "n", "r", "l", "s", "k", "m", "th", "nd")

_NOUNS = ("lantern", "basket", "bridge", "garden", "river", "mountain", "tower", "market", "harbor",
          "forest", "meadow", "village", "castle", "kettle", "blanket", "ladder", "window", "mirror",
          "compass", "drum", "flute", "boat", "wagon", "letter", "map", "key", "coin", "candle",
          "rope", "stone", "feather", "shell", "cloak", "boot", "hat", "cup", "bowl", "table",
          "chair", "door", "roof", "field", "valley", "island", "lake", "cave", "road", "well",
          "mill", "clock", "book", "song", "storm", "cloud", "star", "moon", "fire", "wheel",
          "bell", "sail")
_ADJECTIVES = ("quiet", "bright", "old", "tiny", "huge", "golden", "silver", "gentle", "brave",
               "clever", "lazy", "curious", "ancient", "cold", "warm", "hidden", "broken", "shiny",
               "dusty", "soft", "loud", "strange", "lucky", "proud", "sleepy", "hungry", "wild",
               "calm", "tall", "narrow", "wide", "heavy", "empty", "green", "blue", "red", "purple",
               "young", "secret", "patient", "restless", "foggy", "crooked", "humble", "fierce")
_VERBS = ("found", "lost", "carried", "painted", "built", "followed", "chased", "repaired",
          "borrowed", "opened", "hid", "visited", "discovered", "sold", "bought", "planted",
          "crossed", "climbed", "watched", "remembered", "forgot", "guarded", "cleaned", "traded",
          "sketched", "counted", "named", "fed", "woke", "answered")
_JOBS = ("baker", "potter", "sailor", "weaver", "farmer", "teacher", "miner", "singer", "painter",
         "tailor", "healer", "merchant", "fisher", "carpenter", "scribe", "gardener", "smith",
         "guard", "cook", "clockmaker", "beekeeper", "glassblower")
_GOODS = ("salt", "wool", "copper", "glass", "timber", "silk", "honey", "tea", "iron", "pottery",
          "paper", "rice", "cheese", "spices", "amber", "leather", "rope", "dye")
_SHOPS = ("bakery", "tea shop", "bookshop", "inn", "bicycle shop", "flower stall", "tailor shop",
          "music school", "bathhouse", "toy shop", "library", "garden center")
_FEELINGS = ("happy", "worried", "surprised", "tired", "hopeful", "lonely", "proud", "nervous",
             "cheerful", "confused", "grateful", "angry")
_TIMES = ("One morning", "At dawn", "Late at night", "In the spring", "After the storm",
          "On a rainy day", "Long ago", "Every winter", "Just before sunset", "On market day",
          "In the middle of summer", "When the bells rang")
_PLACES = ("the harbor", "the old mill", "the market square", "the forest path", "the river bank",
           "the top of the hill", "a crowded inn", "the castle gate", "a quiet garden", "the bridge")
# sentiment words: (for things, for people), positive and negative
_POS_WORDS = ("wonderful", "delicious", "clean", "cozy", "excellent", "fresh", "pleasant", "lovely")
_POS_STAFF = ("friendly", "helpful", "cheerful", "generous", "kind", "patient")
_NEG_WORDS = ("awful", "bland", "dirty", "cramped", "terrible", "stale", "unpleasant", "noisy")
_NEG_STAFF = ("rude", "careless", "gloomy", "greedy", "slow", "unfriendly")
_WINTERS = ("long", "harsh", "bitter", "dark", "windy", "wet")
_REVIEW_SUBJECTS = ("soup", "bread", "tea", "room", "service", "music", "view", "garden", "stew",
                    "pastry", "bath", "lesson")
_REVIEW_STAFF = ("staff", "owners", "cooks", "guides", "musicians", "hosts")
_ATTRIBUTES = ("capital", "language", "currency", "animal", "plant", "founded", "export")


def _made_up_words(rng: random.Random, count: int, syllables: tuple[int, ...], suffixes: tuple[str, ...],
                   taken: set[str]) -> list[str]:
    words: list[str] = []
    while len(words) < count:
        k = rng.choice(syllables)
        w = "".join(rng.choice(_ONSETS) + rng.choice(_VOWELS) for _ in range(k))
        w += rng.choice(suffixes) if suffixes else rng.choice(_CODAS)
        if 3 <= len(w) <= 10 and w not in taken:
            taken.add(w)
            words.append(w)
    return words


@dataclass(frozen=True)
class _Lexicon:
    countries: tuple[str, ...]
    cities: tuple[str, ...]
    given: tuple[str, ...]
    family: tuple[str, ...]
    languages: tuple[str, ...]
    currencies: tuple[str, ...]
    creatures: tuple[str, ...]
    plants: tuple[str, ...]


def _lexicon() -> _Lexicon:
    rng = random.Random(20240611)  # fixed: the invented words do not depend on the suite's seed
    taken: set[str] = set()

    def names(count: int, syllables: tuple[int, ...], suffixes: tuple[str, ...] = ()) -> tuple[str, ...]:
        return tuple(w.capitalize() for w in _made_up_words(rng, count, syllables, suffixes, taken))

    def lower(count: int, syllables: tuple[int, ...], suffixes: tuple[str, ...] = ()) -> tuple[str, ...]:
        return tuple(_made_up_words(rng, count, syllables, suffixes, taken))

    return _Lexicon(
        countries=names(60, (2, 3), ("ria", "ora", "and", "ene", "ar", "ia")),
        cities=names(90, (2, 2, 3)),
        given=names(50, (2,)),
        family=names(50, (2, 3)),
        languages=names(30, (2,), ("ic", "ese", "ish")),
        currencies=lower(30, (1, 2), ("l", "n", "ck")),
        creatures=lower(45, (1, 2)),
        plants=lower(45, (2,), ("wort", "leaf", "root", "moss", "")),
    )


_LEX = _lexicon()


@dataclass(frozen=True)
class _World:
    facts: dict[tuple[str, str], str]  # (country, attribute) -> value


def _world(seed: int) -> _World:
    rng = random.Random(f"mbc-embedded/{seed}/world")
    facts: dict[tuple[str, str], str] = {}
    capitals = rng.sample(_LEX.cities, len(_LEX.countries))
    for country, capital in zip(_LEX.countries, capitals):
        facts[(country, "capital")] = capital
        facts[(country, "language")] = rng.choice(_LEX.languages)
        facts[(country, "currency")] = rng.choice(_LEX.currencies)
        facts[(country, "animal")] = rng.choice(_LEX.creatures)
        facts[(country, "plant")] = rng.choice(_LEX.plants)
        facts[(country, "founded")] = str(rng.randint(120, 1890))
        facts[(country, "export")] = rng.choice(_GOODS)
    return _World(facts)


# --------------------------------------------------------------------------------------------
# One generator per category: (rng, world) -> (instruction, context, response)

Example = tuple[str, str, str]


def _article(word: str) -> str:
    return "an" if word[0].lower() in "aeiou" else "a"


def _person(rng: random.Random) -> tuple[str, str]:
    return rng.choice(_LEX.given), rng.choice(_LEX.family)


def _gen_open_qa(rng: random.Random, world: _World) -> Example:
    country = rng.choice(_LEX.countries)
    attribute = rng.choice(_ATTRIBUTES)
    v = world.facts[(country, attribute)]
    questions, answer = {
        "capital": (("What is the capital of {c}?", "Which city is the capital of {c}?",
                     "Name the capital city of {c}."), "The capital of {c} is {v}."),
        "language": (("What language do people speak in {c}?", "Which language is spoken in {c}?"),
                     "People in {c} speak {v}."),
        "currency": (("What is the currency of {c}?", "What money do people use in {c}?"),
                     "The currency of {c} is the {v}."),
        "animal": (("What is the national animal of {c}?", "Which animal is the symbol of {c}?"),
                   "The national animal of {c} is the {v}."),
        "plant": (("What is the national plant of {c}?", "Which plant is the symbol of {c}?"),
                  "The national plant of {c} is the {v}."),
        "founded": (("When was {c} founded?", "In what year was {c} founded?"),
                    "{c} was founded in {v}."),
        "export": (("What is the main export of {c}?", "What does {c} sell most to other countries?"),
                   "The main export of {c} is {v}."),
    }[attribute]
    return rng.choice(questions).format(c=country), "", answer.format(c=country, v=v)


def _gen_classification(rng: random.Random, world: _World) -> Example:
    kind = rng.choice(("sentiment", "sentiment", "parity", "kingdom"))
    if kind == "sentiment":
        label = rng.choice(("positive", "negative"))
        a = rng.choice(_POS_WORDS if label == "positive" else _NEG_WORDS)
        b = rng.choice(_POS_STAFF if label == "positive" else _NEG_STAFF)
        subject, staff = rng.choice(_REVIEW_SUBJECTS), rng.choice(_REVIEW_STAFF)
        city = rng.choice(_LEX.cities)
        review = rng.choice((
            "The {s} at the {shop} in {city} was {a}, and the {staff} were {b}.",
            "We stopped in {city} for the {s}. It was {a} and the {staff} were {b}.",
            "{a_cap} {s}, {b} {staff}. That is my whole memory of {city}.",
        )).format(s=subject, shop=rng.choice(_SHOPS), city=city, a=a, b=b, a_cap=a.capitalize(),
                  staff=staff)
        instruction = rng.choice(("Is this review positive or negative?",
                                  "Classify the sentiment of the following review as positive or negative."))
        return instruction, review, label
    if kind == "parity":
        n = rng.randint(10, 9999)
        instruction = rng.choice(("Is {n} an even or an odd number?", "Tell me whether {n} is even or odd."))
        return instruction.format(n=n), "", "even" if n % 2 == 0 else "odd"
    is_animal = rng.random() < 0.5
    thing = rng.choice(_LEX.creatures if is_animal else _LEX.plants)
    instruction = rng.choice(("Is the {t} an animal or a plant?", "Classify the {t} as an animal or a plant.",
                              "Would you call the {t} a plant or an animal?"))
    return instruction.format(t=thing), "", "animal" if is_animal else "plant"


def _gen_closed_qa(rng: random.Random, world: _World) -> Example:
    first, last = _person(rng)
    full = f"{first} {last}"
    he = rng.choice(("He", "She"))
    born_city, moved_city = rng.sample(_LEX.cities, 2)
    year, years_worked = rng.randint(300, 1900), rng.randint(2, 40)
    job, creature, pet = rng.choice(_JOBS), rng.choice(_LEX.creatures), rng.choice(_LEX.given)
    shop = rng.choice(_SHOPS)
    facts = {
        "born_where": (f"{full} was born in {born_city} in {year}.",
                       f"Where was {full} born?", f"{full} was born in {born_city}."),
        "born_when": (None, f"In what year was {full} born?", f"{full} was born in {year}."),
        "job": (f"{he} worked as {_article(job)} {job} for {years_worked} years.",
                f"What did {full} do for a living?", f"{first} worked as {_article(job)} {job}."),
        "years": (None, f"For how many years did {first} work as {_article(job)} {job}?",
                  f"{first} worked as {_article(job)} {job} for {years_worked} years."),
        "pet": (f"{he} kept {_article(creature)} {creature} named {pet}.",
                f"What kind of animal did {first} keep?", f"{first} kept {_article(creature)} {creature}."),
        "pet_name": (None, f"What was the name of {first}'s {creature}?", f"The {creature} was named {pet}."),
        "moved": (f"Later {he.lower()} moved to {moved_city}, where {he.lower()} opened a small {shop}.",
                  f"Where did {first} move later in life?", f"{first} moved to {moved_city}."),
        "shop": (None, f"What did {first} open in {moved_city}?", f"{first} opened a small {shop}."),
    }
    sentences = [facts[k][0] for k in ("born_where", "job", "pet", "moved")]
    context = " ".join(sentences)
    _, question, answer = facts[rng.choice(tuple(facts))]
    return question, context, answer


def _word_list(rng: random.Random, lo: int, hi: int) -> list[str]:
    pool = rng.choice((_NOUNS, _ADJECTIVES, _LEX.creatures, _LEX.plants,
                       tuple(c.lower() for c in _LEX.cities)))
    return rng.sample(pool, rng.randint(lo, hi))


def _gen_rewriting(rng: random.Random, world: _World) -> Example:
    kind = rng.choice(("reverse", "sort", "number", "capitalize", "replace"))
    if kind == "reverse":
        words = _word_list(rng, 4, 9)
        return ("Reverse the order of the following words.", " ".join(words), " ".join(reversed(words)))
    if kind == "sort":
        words = _word_list(rng, 4, 9)
        return ("Sort these words in alphabetical order.", ", ".join(words), ", ".join(sorted(words)))
    if kind == "number":
        words = _word_list(rng, 3, 7)
        return ("Turn this comma separated list into a numbered list.", ", ".join(words),
                "\n".join(f"{i}. {w}" for i, w in enumerate(words, 1)))
    sentence = _story_sentence(rng)
    if kind == "capitalize":
        return ("Capitalize the first letter of every word in this sentence.", sentence,
                " ".join(w[:1].upper() + w[1:] for w in sentence.split(" ")))
    words = re.findall(r"[a-z]+", sentence)
    old = rng.choice([w for w in words if len(w) > 3] or words)
    new = rng.choice(_NOUNS + _ADJECTIVES)
    return (f'Rewrite the sentence, replacing the word "{old}" with "{new}".', sentence,
            re.sub(rf"\b{old}\b", new, sentence))


def _gen_information_extraction(rng: random.Random, world: _World) -> Example:
    cities = rng.sample(_LEX.cities, rng.randint(2, 5))
    creatures = rng.sample(_LEX.creatures, len(cities))
    years = [rng.randint(300, 1900) for _ in cities]
    legs = [
        rng.choice((
            "In {y} we reached {c} and saw {a} {k} near {p}.",
            "By {y} the road had taken us to {c}, where {a} {k} slept on {p}.",
            "We spent the winter of {y} in {c}; a {adj} {k} visited {p} every night.",
        )).format(y=y, c=c, a=_article(k), k=k, p=rng.choice(_PLACES), adj=rng.choice(_ADJECTIVES))
        for c, k, y in zip(cities, creatures, years)
    ]
    context = " ".join(legs)
    kind = rng.choice(("cities", "creatures", "years"))
    if kind == "cities":
        return ("List the cities mentioned in this travel diary, in order, separated by commas.",
                context, ", ".join(cities))
    if kind == "creatures":
        return ("Which animals appear in this passage? Give them as a bulleted list.",
                context, "\n".join(f"- {k}" for k in creatures))
    return ("Extract every year mentioned in the text, separated by commas.", context,
            ", ".join(str(y) for y in years))


def _gen_summarization(rng: random.Random, world: _World) -> Example:
    town = rng.choice(_LEX.cities)
    good, creature, adj = rng.choice(_GOODS), rng.choice(_LEX.creatures), rng.choice(_ADJECTIVES)
    plant, shop, job = rng.choice(_LEX.plants), rng.choice(_SHOPS), rng.choice(_JOBS)
    first, last = _person(rng)
    topic = f"{town} is {_article(adj)} {adj} town known for its {good} and its {creature}s."
    details = [
        f"Most families there work with {good}, and the best {job}s sell it at {rng.choice(_PLACES)}.",
        f"The {creature}s nest in the {plant} that grows along the {rng.choice(_NOUNS)} road.",
        f"Every year the town holds a festival in honor of {first} {last}, who opened its first {shop}.",
        f"Visitors say the {rng.choice(_REVIEW_SUBJECTS)} is {rng.choice(_POS_WORDS)} "
        f"but the winters are {rng.choice(_WINTERS)}.",
    ]
    rng.shuffle(details)
    context = " ".join([topic] + details[: rng.randint(2, 4)])
    if rng.random() < 0.5:
        return ("Summarize this passage in one sentence.", context, topic)
    return ("What are the key facts about the town in this text? Answer briefly.", context,
            f"{town} is {adj}, makes {good} and is home to many {creature}s.")


def _gen_brainstorming(rng: random.Random, world: _World) -> Example:
    n = rng.randint(4, 8)
    kind = rng.choice(("shop", "pack", "pet", "festival"))
    if kind == "shop":
        shop, city = rng.choice(_SHOPS), rng.choice(_LEX.cities)
        ideas = [rng.choice((
            "The {A} {K}", "{G}'s {N}", "{A} {N} {S}", "The {K} and the {N}", "{C} {S}",
        )).format(A=rng.choice(_ADJECTIVES).capitalize(), K=rng.choice(_LEX.creatures).capitalize(),
                  G=rng.choice(_LEX.given), N=rng.choice(_NOUNS).capitalize(),
                  S=shop.split()[-1].capitalize(), C=city) for _ in range(n)]
        instruction = f"Give me {n} name ideas for a new {shop} in {city}."
    elif kind == "pack":
        country = rng.choice(_LEX.countries)
        adjectives, nouns = [rng.choice(_ADJECTIVES) for _ in range(n)], rng.sample(_NOUNS, n)
        ideas = []
        for a, w in zip(adjectives, nouns):
            extra = rng.choice(("", "", f" for the {rng.choice(_NOUNS)}"))
            ideas.append(f"{_article(a)} {a} {w}".capitalize() + extra)
        instruction = f"What are {n} things I should pack for a trip to {country}?"
    elif kind == "pet":
        creature = rng.choice(_LEX.creatures)
        ideas = rng.sample(_LEX.given, n)
        instruction = f"Suggest {n} names for my pet {creature}."
    else:
        town = rng.choice(_LEX.cities)
        ideas = [f"{rng.choice(_VERBS).capitalize()} {_article(a)} {a} {rng.choice(_NOUNS)} "
                 f"with the {rng.choice(_JOBS)}s" for a in (rng.choice(_ADJECTIVES) for _ in range(n))]
        instruction = f"Brainstorm {n} activities for the {rng.choice(_LEX.creatures)} festival in {town}."
    bullet = rng.choice(("numbered", "dash"))
    lines = [f"{i}. {x}" if bullet == "numbered" else f"- {x}" for i, x in enumerate(ideas, 1)]
    return instruction, "", "\n".join(lines)


def _story_sentence(rng: random.Random) -> str:
    template = rng.choice((
        "{T}, {name} {verb} {a} {adj} {noun} near {place}.",
        "The {creature} {verb} the {noun} and ran toward {place}.",
        "{name} felt {feeling} when the {adj} {noun} began to glow.",
        "Nobody in {city} had ever seen {a} {adj} {creature} before.",
        "{T}, the {job} {verb} {a} {noun} and hid it under the {noun2}.",
        "{name} asked the {job} why the {noun} was so {adj}.",
        "The {adj} {creature} followed {name} all the way to {city}.",
        "A {feeling} {job} from {city} {verb} the {noun} without a word.",
        "{T}, the {plant} near {place} turned {color}.",
        "\"{question}\" said {name}, holding the {adj} {noun}.",
        "They {verb} the {noun} together and felt {feeling}.",
        "In {city} the {job}s still talk about the {adj} {noun}.",
        "{name} {verb} {a} {adj} {creature} and gave it to the {job}.",
        "Behind {place} stood {a} {adj} {noun} that nobody {verb}.",
        "The wind from {country} smelled of {plant} and {noun}s.",
        "Was the {noun} {adj}, or was {name} only {feeling}?",
        "{T}, {name} and the {job} {verb} every {noun} in {city}.",
        "Three {creature}s sat on the {noun} and watched {place}.",
        "{name} never {verb} the {noun} again.",
        "Far away in {country}, a {job} {verb} the same {noun}.",
    ))
    adj = rng.choice(_ADJECTIVES)
    return template.format(
        T=rng.choice(_TIMES), name=rng.choice(_LEX.given), verb=rng.choice(_VERBS), a=_article(adj),
        adj=adj, noun=rng.choice(_NOUNS), noun2=rng.choice(_NOUNS), place=rng.choice(_PLACES),
        creature=rng.choice(_LEX.creatures), feeling=rng.choice(_FEELINGS), city=rng.choice(_LEX.cities),
        job=rng.choice(_JOBS), plant=rng.choice(_LEX.plants), country=rng.choice(_LEX.countries),
        color=rng.choice(("green", "blue", "red", "purple", "golden", "silver")),
        question=rng.choice(("Where did you find this", "Is it still warm", "Who left it here",
                             "Can we keep it", "Why is it singing")) + "?",
    )


def _pieces(text: str) -> int:
    return len(re.findall(r"\w+|[^\w\s]", text))


def _gen_creative_writing(rng: random.Random, world: _World) -> Example:
    if rng.random() < 0.7:
        first, _ = _person(rng)
        job, city = rng.choice(_JOBS), rng.choice(_LEX.cities)
        instruction = rng.choice((
            f"Write a short story about {first}, {_article(job)} {job} from {city}.",
            f"Tell me a story about {_article(job)} {job} named {first} who lives in {city}.",
        ))
        budget = rng.randint(80, 150)  # words and punctuation marks of the response
        sentences: list[str] = []
        while _pieces(" ".join(sentences)) < budget:
            sentences.append(_story_sentence(rng))
        paragraphs, i = [], 0
        while i < len(sentences):
            k = rng.randint(2, 4)
            paragraphs.append(" ".join(sentences[i : i + k]))
            i += k
        return instruction, "", "\n\n".join(paragraphs)
    adj, noun, city = rng.choice(_ADJECTIVES), rng.choice(_NOUNS), rng.choice(_LEX.cities)
    instruction = f"Write a poem about the {adj} {noun} of {city}."
    lines = []
    for _ in range(rng.randint(6, 12)):
        a2, n = rng.choice(_ADJECTIVES), rng.choice(_NOUNS)
        lines.append(rng.choice((
            "the {a} {n} {v} the {k}",
            "{a} as {art_n} {n} in {p}",
            "O {k} of {c}, {a} and {f}",
            "I {v} your {n} when the {n2} was {a}",
            "and {name} {v} {art} {a} {n}",
        )).format(a=a2, art=_article(a2), n=n, art_n=_article(n), n2=rng.choice(_NOUNS), v=rng.choice(_VERBS),
                  k=rng.choice(_LEX.creatures), p=rng.choice(_PLACES), c=city, f=rng.choice(_FEELINGS),
                  name=rng.choice(_LEX.given)))
    lines = [line[0].upper() + line[1:] for line in lines]
    return instruction, "", "\n".join(lines) + "."


_GENERATORS: dict[str, Callable[[random.Random, _World], Example]] = {
    "open_qa": _gen_open_qa,
    "classification": _gen_classification,
    "closed_qa": _gen_closed_qa,
    "rewriting": _gen_rewriting,
    "information_extraction": _gen_information_extraction,
    "summarization": _gen_summarization,
    "brainstorming": _gen_brainstorming,
    "creative_writing": _gen_creative_writing,
}
assert tuple(_GENERATORS) == _CATEGORY_NAMES


# --------------------------------------------------------------------------------------------
# Public API


def generate_suite(num_records: int = DEFAULT_NUM_RECORDS, seed: int = 0, *, split: str = "train",
                   exclude: Iterable[dict] = ()) -> list[dict]:
    """A deterministic synthetic demonstration suite in the Dolly schema.

    Returns `num_records` dicts `{"id", "instruction", "context", "response", "category"}`, split
    over `CATEGORIES` by their shares (`category_counts`) and shuffled. The same `(num_records,
    seed, split, exclude)` always gives the same list; each category draws from its own random
    stream, so its records do not depend on the other categories' counts. No two records share a
    prompt (instruction and context). `split="valid"` draws from fresh streams of the same world
    (the same facts) and skips every prompt of the records in `exclude` (pass the training suite).
    """
    if split not in ("train", "valid"):
        raise EmbeddedError(f"split={split!r}: use 'train' or 'valid'")
    world = _world(seed)
    seen = {(r["instruction"], r["context"]) for r in exclude}
    records: list[dict] = []
    for name, count in category_counts(num_records).items():
        rng = random.Random(f"mbc-embedded/{seed}/{split}/{name}")
        made = 0
        attempts = 0
        while made < count:
            attempts += 1
            if attempts > 50 * count + 1000:
                raise EmbeddedError(
                    f"num_records={num_records}: could not draw {count} distinct '{name}' prompts from "
                    "the embedded world; ask for fewer records or use real data"
                )
            instruction, context, response = _GENERATORS[name](rng, world)
            if (instruction, context) in seen:
                continue
            seen.add((instruction, context))
            records.append({"instruction": instruction, "context": context, "response": response,
                            "category": name})
            made += 1
    random.Random(f"mbc-embedded/{seed}/{split}/order").shuffle(records)
    return [{"id": f"{split}-{i:05d}", **r} for i, r in enumerate(records)]


def _training_texts(records: Iterable[dict]) -> Iterable[str]:
    for r in records:
        context = f"\n\n{r['context']}" if r["context"] else ""
        yield _TRAIN_PROMPT.format(instruction=r["instruction"], context=context)
        yield " " + r["response"]


def build_tokenizer(records: list[dict], out_dir: str | Path,
                    vocab_size: int = TOKENIZER_VOCAB_SIZE) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer on `records`, save it to `out_dir` and return it.

    GPT-2 style: bytes are mapped to 256 visible symbols and split by the GPT-2 regex before BPE,
    so any string encodes and decodes to itself (spaces, tabs and newlines included), and
    `" " + response` encodes as the response's words with their leading space. Ids 0 and 1 are
    `<|endoftext|>` (bos, eos and unk, as in GPT-Neo) and `<|pad|>`; no special token is added
    by `encode`. The result is a `transformers.PreTrainedTokenizerFast` that
    `AutoTokenizer.from_pretrained(out_dir)` loads; the same records give the same files.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=[EOS_TOKEN, PAD_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_training_texts(records), trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=EOS_TOKEN,
        eos_token=EOS_TOKEN,
        unk_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        clean_up_tokenization_spaces=False,
        model_max_length=MAX_POSITIONS,
    )
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(str(out_dir))
    return fast


def tiny_gpt_neo_config(vocab_size: int, *, eos_token_id: int = 0, pad_token_id: int | None = 1) -> dict:
    """The `config.json` of the embedded model: GPT-Neo, 4 layers, hidden 128, 4 heads.

    Alternating global / local attention (local window 32 tokens), 256 positions, MLP 4 x hidden,
    no dropout, LM head tied to the token embedding: about 0.8M parameters plus 128 per vocabulary
    entry. Field for field what `transformers.GPTNeoConfig(...).save_pretrained` writes.
    """
    num_layers = 4
    return {
        "activation_function": "gelu_new",
        "architectures": ["GPTNeoForCausalLM"],
        "attention_dropout": 0.0,
        "attention_layers": ["global", "local"] * (num_layers // 2),
        "attention_types": [[["global", "local"], num_layers // 2]],
        "bos_token_id": eos_token_id,
        "classifier_dropout": 0.1,
        "dtype": "float32",
        "embed_dropout": 0.0,
        "eos_token_id": eos_token_id,
        "hidden_size": 128,
        "initializer_range": 0.02,
        "intermediate_size": None,
        "layer_norm_epsilon": 1e-05,
        "max_position_embeddings": MAX_POSITIONS,
        "model_type": "gpt_neo",
        "num_heads": 4,
        "num_layers": num_layers,
        "pad_token_id": pad_token_id,
        "resid_dropout": 0.0,
        "tie_word_embeddings": True,
        "use_cache": True,
        "vocab_size": int(vocab_size),
        "window_size": 32,
    }


def _write_jsonl(path: Path, records: list[dict]) -> None:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")


def _sync(src: Path, dst: Path) -> None:
    """Copy the files of `src` into `dst`, touching only those whose bytes differ."""
    dst.mkdir(parents=True, exist_ok=True)
    for f in sorted(src.iterdir()):
        target = dst / f.name
        if f.is_dir():
            _sync(f, target)
        elif not target.is_file() or target.read_bytes() != f.read_bytes():
            partial = target.with_name(target.name + ".partial")
            shutil.copyfile(f, partial)
            os.replace(partial, target)  # a reader never sees half a file


def materialize(out_dir: str | Path, num_records: int = DEFAULT_NUM_RECORDS, seed: int = 0,
                num_valid: int = DEFAULT_NUM_VALID) -> dict[str, Path]:
    """Write the embedded default to `out_dir` and return its paths.

    Layout: `data.jsonl` (training records), `valid.jsonl` (`num_valid` held-out records of the
    same world, no prompt shared with training; omitted when 0), `tokenizer/` (trained on the
    training records) and `model/` (`config.json` plus the same tokenizer files: a Hugging Face
    checkpoint folder without weights, so the trainer initializes them at random), and
    `manifest.json` (seed, sizes, category counts). Calling it again with the same arguments
    leaves every file byte-identical (and unwritten).
    """
    out_dir = Path(out_dir)
    train = generate_suite(num_records, seed)
    valid = generate_suite(num_valid, seed, split="valid", exclude=train) if num_valid else []
    with tempfile.TemporaryDirectory(prefix="mbc-embedded-") as tmp:
        stage = Path(tmp)
        _write_jsonl(stage / "data.jsonl", train)
        if valid:
            _write_jsonl(stage / "valid.jsonl", valid)
        tokenizer = build_tokenizer(train, stage / "tokenizer")
        model = stage / "model"
        model.mkdir()
        for f in sorted((stage / "tokenizer").iterdir()):
            shutil.copyfile(f, model / f.name)
        config = tiny_gpt_neo_config(len(tokenizer), eos_token_id=tokenizer.eos_token_id,
                                     pad_token_id=tokenizer.pad_token_id)
        (model / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        manifest = {
            "what": "synthetic generated demonstration suite (mbc_jax.embedded); not real human data",
            "seed": seed,
            "num_records": num_records,
            "num_valid": num_valid,
            "categories": category_counts(num_records),
            "vocab_size": len(tokenizer),
            "data_sha256": hashlib.sha256((stage / "data.jsonl").read_bytes()).hexdigest(),
        }
        (stage / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
        _sync(stage, out_dir)
    if not valid:
        (out_dir / "valid.jsonl").unlink(missing_ok=True)  # left by an earlier call with num_valid > 0
    paths = {
        "data": out_dir / "data.jsonl",
        "tokenizer": out_dir / "tokenizer",
        "model": out_dir / "model",
        "config": out_dir / "model" / "config.json",
        "manifest": out_dir / "manifest.json",
    }
    if valid:
        paths["valid"] = out_dir / "valid.jsonl"
    return paths
