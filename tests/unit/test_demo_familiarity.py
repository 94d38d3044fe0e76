"""mbc_jax/demo/corpus.py and familiarity.py: the pretraining corpus (deterministic, states exactly the
chosen facts) and the familiarity labels (hand-made examples, and every suite record against the corpus
text itself)."""

from __future__ import annotations

import collections
import re

import pytest

from mbc_jax import demo as D
from mbc_jax.demo import corpus as C
from mbc_jax.demo import familiarity as F
from mbc_jax.demo.words import ATTRIBUTES
from mbc_jax.demo.world import LEX, make_world


@pytest.fixture(scope="module")
def corpus0():
    return C.build_corpus(0)


def country_docs(docs: list[dict], country: str) -> list[str]:
    return [d["text"] for d in docs if d["text"].startswith(f"{country} is a country.")]


def test_corpus_deterministic_and_seed_dependent(corpus0):
    assert C.build_corpus(0) == corpus0
    assert C.build_corpus(1) != corpus0 and C.coverage(1) != C.coverage(0)
    assert [d["id"] for d in corpus0] == [f"corpus-{i:05d}" for i in range(len(corpus0))]
    assert all(d["text"].endswith(C.EOS_TEXT) and d["text"].count(C.EOS_TEXT) == 1 for d in corpus0)
    n_living = C.ANIMAL_PLANT_ARTICLES * (len(LEX.creatures) // 2 + len(LEX.plants) // 2)
    n_lists = -(-len(LEX.countries) // C.LIST_LENGTH) - (-len(LEX.cities) // C.LIST_LENGTH)
    assert len(corpus0) == C.ARTICLES_PER_COUNTRY * len(LEX.countries) + n_living + len(LEX.cities) + n_lists


def test_coverage_is_three_or_four_facts_per_country():
    facts = C.coverage(0)
    per_country = collections.Counter(c for c, _ in facts)
    assert set(per_country) == set(LEX.countries)
    assert sorted(set(per_country.values())) == [3, 4]
    assert len(facts) == sum(3 + i % 2 for i in range(len(LEX.countries)))  # 210 of the 420 facts


def test_corpus_states_exactly_the_covered_facts(corpus0):
    world, facts = make_world(0), C.coverage(0)
    for country in LEX.countries:
        docs = country_docs(corpus0, country)
        assert len(docs) == C.ARTICLES_PER_COUNTRY
        for attribute in ATTRIBUTES:
            value = world.facts[(country, attribute)]
            said = [re.search(rf"\b{re.escape(value)}\b", d) is not None for d in docs]
            if (country, attribute) in facts:
                assert all(said), (country, attribute)
            else:
                assert not any(said), (country, attribute)
    # no other document names a country but the lists of names (the facts live in its own articles only)
    others = [d["text"] for d in corpus0 if not re.match(r"\w+ is a country\.|Countries of the world", d["text"])]
    lists = [d["text"] for d in corpus0 if d["text"].startswith("Countries of the world")]
    assert sorted(re.findall(r"^(?:\d+\.|-) (\w+)", "\n".join(lists), re.M)) == sorted(LEX.countries)
    assert not any(re.search(rf"\b{c}\b", t) for t in others for c in LEX.countries)


def test_kinds_stated(corpus0):
    creatures, plants = C.described(0)
    kinds = C.kinds_stated(0)
    assert len(creatures) == len(LEX.creatures) // 2 and len(plants) == len(LEX.plants) // 2
    text = " ".join(d["text"] for d in corpus0)
    for name in creatures:
        assert f"The {name} is a" in text and re.search(rf"The {name} is an? \w+ animal\.", text)
    for name in set(LEX.creatures) - kinds:  # never said to be an animal
        assert not re.search(rf"\b{name}\b", text)
    world = make_world(0)
    national = {world.facts[f] for f in C.coverage(0) if f[1] in ("animal", "plant")}
    assert kinds == set(creatures) | set(plants) | national


def test_labels_on_hand_made_examples():
    k = F.Knowledge(facts=frozenset({("Atlantis", "capital")}), kinds=frozenset({"gorp"}))
    assert F.label("open_qa", ("country", "Atlantis", "capital"), k) == "corpus_fact"
    assert F.label("open_qa", ("country", "Atlantis", "currency"), k) == "unseen_fact"
    assert F.label("open_qa", ("country", "Lemuria", "capital"), k) == "unseen_fact"
    assert F.label("classification", ("kind", "gorp"), k) == "corpus_fact"
    assert F.label("classification", ("kind", "zib"), k) == "unseen_fact"
    assert F.label("classification", None, k) == "context_given"  # sentiment of a given review, parity
    for category in ("closed_qa", "rewriting", "information_extraction", "summarization"):
        assert F.label(category, None, k) == "context_given"
    for category in ("brainstorming", "creative_writing"):
        assert F.label(category, None, k) == "open_ended"
    with pytest.raises(ValueError, match="open_qa"):
        F.label("open_qa", None, k)
    assert set(F.BY_CATEGORY.values()) | {"corpus_fact", "unseen_fact"} == set(F.LABELS)


def test_every_suite_label_against_the_corpus_text(suite, corpus0):
    """corpus_fact iff the corpus text itself states the record's answer (found by search, not coverage())."""
    text = "\n".join(d["text"] for d in corpus0)
    counts = collections.Counter()
    for r in suite:
        counts[r["familiarity"]] += 1
        if r["category"] == "open_qa":
            country = next(c for c in LEX.countries if re.search(rf"\b{c}\b", r["instruction"]))
            answer = r["response"].rstrip(".")
            value = answer.split()[-1]
            stated = any(re.search(rf"\b{re.escape(value)}\b", d) for d in country_docs(corpus0, country))
            assert r["familiarity"] == ("corpus_fact" if stated else "unseen_fact"), r
        elif r["response"] in ("animal", "plant"):
            thing = next(w for w in re.findall(r"[a-z]+", r["instruction"]) if w in LEX.creatures + LEX.plants)
            stated = re.search(rf"The {thing} is an? \w+ {r['response']}\.|national {r['response']} of \w+ is "
                               rf"the {thing}\.|The {thing} is the (symbol|plant that stands for)|"
                               rf"the {thing} is honored", text)
            assert r["familiarity"] == ("corpus_fact" if stated else "unseen_fact"), r
        elif r["category"] in ("brainstorming", "creative_writing"):
            assert r["familiarity"] == "open_ended"
        else:
            assert r["familiarity"] == "context_given"
    assert counts["corpus_fact"] >= 60 and counts["unseen_fact"] >= 50  # both kinds well represented
    assert sum(counts.values()) == len(suite)


def test_suite_labels_deterministic_and_listed(suite):
    again = D.generate_suite(600, 0)
    assert [r["familiarity"] for r in again] == [r["familiarity"] for r in suite]
    assert {r["familiarity"] for r in suite} == set(D.FAMILIARITY_LABELS)
