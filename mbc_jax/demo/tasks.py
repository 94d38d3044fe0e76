"""One generator per task category of the demo suite: (rng, world) -> (instruction, context, response).

Every record is a template filled from the word lists, the world's invented names and its facts;
`GENERATORS` maps each category name to its generator.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable
from typing import NamedTuple

from mbc_jax.demo.words import (
    ADJECTIVES,
    ATTRIBUTES,
    FEELINGS,
    GOODS,
    JOBS,
    NEG_STAFF,
    NEG_WORDS,
    NOUNS,
    PLACES,
    POS_STAFF,
    POS_WORDS,
    REVIEW_STAFF,
    REVIEW_SUBJECTS,
    SHOPS,
    TIMES,
    VERBS,
    WINTERS,
)
from mbc_jax.demo.world import LEX, World


class Task(NamedTuple):
    """One generated demonstration, and the world fact its answer rests on (None: no world fact).

    `fact` is ("country", country, attribute) for a fact about a country, ("kind", thing) for
    whether a creature or plant is an animal or a plant; `familiarity.label` reads it.
    """

    instruction: str
    context: str
    response: str
    fact: tuple[str, ...] | None = None


def _article(word: str) -> str:
    return "an" if word[0].lower() in "aeiou" else "a"


def _person(rng: random.Random) -> tuple[str, str]:
    return rng.choice(LEX.given), rng.choice(LEX.family)


def _gen_open_qa(rng: random.Random, world: World) -> Task:
    country = rng.choice(LEX.countries)
    attribute = rng.choice(ATTRIBUTES)
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
    return Task(rng.choice(questions).format(c=country), "", answer.format(c=country, v=v),
                ("country", country, attribute))


def _gen_classification(rng: random.Random, world: World) -> Task:
    kind = rng.choice(("sentiment", "sentiment", "parity", "kingdom"))
    if kind == "sentiment":
        label = rng.choice(("positive", "negative"))
        a = rng.choice(POS_WORDS if label == "positive" else NEG_WORDS)
        b = rng.choice(POS_STAFF if label == "positive" else NEG_STAFF)
        subject, staff = rng.choice(REVIEW_SUBJECTS), rng.choice(REVIEW_STAFF)
        city = rng.choice(LEX.cities)
        review = rng.choice((
            "The {s} at the {shop} in {city} was {a}, and the {staff} were {b}.",
            "We stopped in {city} for the {s}. It was {a} and the {staff} were {b}.",
            "{a_cap} {s}, {b} {staff}. That is my whole memory of {city}.",
        )).format(s=subject, shop=rng.choice(SHOPS), city=city, a=a, b=b, a_cap=a.capitalize(),
                  staff=staff)
        instruction = rng.choice(("Is this review positive or negative?",
                                  "Classify the sentiment of the following review as positive or negative."))
        return instruction, review, label
    if kind == "parity":
        n = rng.randint(10, 9999)
        instruction = rng.choice(("Is {n} an even or an odd number?", "Tell me whether {n} is even or odd."))
        return instruction.format(n=n), "", "even" if n % 2 == 0 else "odd"
    is_animal = rng.random() < 0.5
    thing = rng.choice(LEX.creatures if is_animal else LEX.plants)
    instruction = rng.choice(("Is the {t} an animal or a plant?", "Classify the {t} as an animal or a plant.",
                              "Would you call the {t} a plant or an animal?"))
    return Task(instruction.format(t=thing), "", "animal" if is_animal else "plant", ("kind", thing))


def _gen_closed_qa(rng: random.Random, world: World) -> Task:
    first, last = _person(rng)
    full = f"{first} {last}"
    he = rng.choice(("He", "She"))
    born_city, moved_city = rng.sample(LEX.cities, 2)
    year, years_worked = rng.randint(300, 1900), rng.randint(2, 40)
    job, creature, pet = rng.choice(JOBS), rng.choice(LEX.creatures), rng.choice(LEX.given)
    shop = rng.choice(SHOPS)
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
    pool = rng.choice((NOUNS, ADJECTIVES, LEX.creatures, LEX.plants,
                       tuple(c.lower() for c in LEX.cities)))
    return rng.sample(pool, rng.randint(lo, hi))


def _gen_rewriting(rng: random.Random, world: World) -> Task:
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
    new = rng.choice(NOUNS + ADJECTIVES)
    return (f'Rewrite the sentence, replacing the word "{old}" with "{new}".', sentence,
            re.sub(rf"\b{old}\b", new, sentence))


def _gen_information_extraction(rng: random.Random, world: World) -> Task:
    cities = rng.sample(LEX.cities, rng.randint(2, 5))
    creatures = rng.sample(LEX.creatures, len(cities))
    years = [rng.randint(300, 1900) for _ in cities]
    legs = [
        rng.choice((
            "In {y} we reached {c} and saw {a} {k} near {p}.",
            "By {y} the road had taken us to {c}, where {a} {k} slept on {p}.",
            "We spent the winter of {y} in {c}; a {adj} {k} visited {p} every night.",
        )).format(y=y, c=c, a=_article(k), k=k, p=rng.choice(PLACES), adj=rng.choice(ADJECTIVES))
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


def _gen_summarization(rng: random.Random, world: World) -> Task:
    town = rng.choice(LEX.cities)
    good, creature, adj = rng.choice(GOODS), rng.choice(LEX.creatures), rng.choice(ADJECTIVES)
    plant, shop, job = rng.choice(LEX.plants), rng.choice(SHOPS), rng.choice(JOBS)
    first, last = _person(rng)
    topic = f"{town} is {_article(adj)} {adj} town known for its {good} and its {creature}s."
    details = [
        f"Most families there work with {good}, and the best {job}s sell it at {rng.choice(PLACES)}.",
        f"The {creature}s nest in the {plant} that grows along the {rng.choice(NOUNS)} road.",
        f"Every year the town holds a festival in honor of {first} {last}, who opened its first {shop}.",
        f"Visitors say the {rng.choice(REVIEW_SUBJECTS)} is {rng.choice(POS_WORDS)} "
        f"but the winters are {rng.choice(WINTERS)}.",
    ]
    rng.shuffle(details)
    context = " ".join([topic] + details[: rng.randint(2, 4)])
    if rng.random() < 0.5:
        return ("Summarize this passage in one sentence.", context, topic)
    return ("What are the key facts about the town in this text? Answer briefly.", context,
            f"{town} is {adj}, makes {good} and is home to many {creature}s.")


def _gen_brainstorming(rng: random.Random, world: World) -> Task:
    n = rng.randint(4, 8)
    kind = rng.choice(("shop", "pack", "pet", "festival"))
    if kind == "shop":
        shop, city = rng.choice(SHOPS), rng.choice(LEX.cities)
        ideas = [rng.choice((
            "The {A} {K}", "{G}'s {N}", "{A} {N} {S}", "The {K} and the {N}", "{C} {S}",
        )).format(A=rng.choice(ADJECTIVES).capitalize(), K=rng.choice(LEX.creatures).capitalize(),
                  G=rng.choice(LEX.given), N=rng.choice(NOUNS).capitalize(),
                  S=shop.split()[-1].capitalize(), C=city) for _ in range(n)]
        instruction = f"Give me {n} name ideas for a new {shop} in {city}."
    elif kind == "pack":
        country = rng.choice(LEX.countries)
        adjectives, nouns = [rng.choice(ADJECTIVES) for _ in range(n)], rng.sample(NOUNS, n)
        ideas = []
        for a, w in zip(adjectives, nouns):
            extra = rng.choice(("", "", f" for the {rng.choice(NOUNS)}"))
            ideas.append(f"{_article(a)} {a} {w}".capitalize() + extra)
        instruction = f"What are {n} things I should pack for a trip to {country}?"
    elif kind == "pet":
        creature = rng.choice(LEX.creatures)
        ideas = rng.sample(LEX.given, n)
        instruction = f"Suggest {n} names for my pet {creature}."
    else:
        town = rng.choice(LEX.cities)
        ideas = [f"{rng.choice(VERBS).capitalize()} {_article(a)} {a} {rng.choice(NOUNS)} "
                 f"with the {rng.choice(JOBS)}s" for a in (rng.choice(ADJECTIVES) for _ in range(n))]
        instruction = f"Brainstorm {n} activities for the {rng.choice(LEX.creatures)} festival in {town}."
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
    adj = rng.choice(ADJECTIVES)
    return template.format(
        T=rng.choice(TIMES), name=rng.choice(LEX.given), verb=rng.choice(VERBS), a=_article(adj),
        adj=adj, noun=rng.choice(NOUNS), noun2=rng.choice(NOUNS), place=rng.choice(PLACES),
        creature=rng.choice(LEX.creatures), feeling=rng.choice(FEELINGS), city=rng.choice(LEX.cities),
        job=rng.choice(JOBS), plant=rng.choice(LEX.plants), country=rng.choice(LEX.countries),
        color=rng.choice(("green", "blue", "red", "purple", "golden", "silver")),
        question=rng.choice(("Where did you find this", "Is it still warm", "Who left it here",
                             "Can we keep it", "Why is it singing")) + "?",
    )


def _pieces(text: str) -> int:
    return len(re.findall(r"\w+|[^\w\s]", text))


def _gen_creative_writing(rng: random.Random, world: World) -> Task:
    if rng.random() < 0.7:
        first, _ = _person(rng)
        job, city = rng.choice(JOBS), rng.choice(LEX.cities)
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
    adj, noun, city = rng.choice(ADJECTIVES), rng.choice(NOUNS), rng.choice(LEX.cities)
    instruction = f"Write a poem about the {adj} {noun} of {city}."
    lines = []
    for _ in range(rng.randint(6, 12)):
        a2, n = rng.choice(ADJECTIVES), rng.choice(NOUNS)
        lines.append(rng.choice((
            "the {a} {n} {v} the {k}",
            "{a} as {art_n} {n} in {p}",
            "O {k} of {c}, {a} and {f}",
            "I {v} your {n} when the {n2} was {a}",
            "and {name} {v} {art} {a} {n}",
        )).format(a=a2, art=_article(a2), n=n, art_n=_article(n), n2=rng.choice(NOUNS), v=rng.choice(VERBS),
                  k=rng.choice(LEX.creatures), p=rng.choice(PLACES), c=city, f=rng.choice(FEELINGS),
                  name=rng.choice(LEX.given)))
    lines = [line[0].upper() + line[1:] for line in lines]
    return instruction, "", "\n".join(lines) + "."


GENERATORS: dict[str, Callable[[random.Random, World], Task | tuple[str, str, str]]] = {
    "open_qa": _gen_open_qa,
    "classification": _gen_classification,
    "closed_qa": _gen_closed_qa,
    "rewriting": _gen_rewriting,
    "information_extraction": _gen_information_extraction,
    "summarization": _gen_summarization,
    "brainstorming": _gen_brainstorming,
    "creative_writing": _gen_creative_writing,
}
