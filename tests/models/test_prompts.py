"""Zero-shot prompts: every PaSta and verb prompt rendered and checked for the malformed patterns once found in them
("using their leg to is close with something", "wash with something something", "raise(over head) something")."""

from __future__ import annotations

import re

import pytest

from a2v_search import taxonomy as tx
from a2v_search.models import prompts

ALL_PASTA = [p for i in range(len(tx.PASTA_NAMES)) for p in prompts.pasta_prompts(i)]
ALL_VERBS = [p for i in range(len(tx.VERB_NAMES)) for p in prompts.verb_prompts(i)]


def malformed(prompt: str) -> list[str]:
    """What is wrong with one prompt (empty when nothing)."""
    words = re.findall(r"[a-z']+", prompt.lower())
    problems = [f"doubled word {a!r}" for a, b in zip(words, words[1:], strict=False) if a == b]
    if words.count("something") > 1:
        problems.append("two objects")
    for pattern, what in ((r"\bto (is|are)\b", "'to' + finite verb"), (r"[()\[\]/_]", "bracket, slash or _"),
                          (r"\w\(", "word glued to a bracket"), (r"\s[,.:]", "space before punctuation"),
                          (r"\s\s", "double space"), (r"no interaction", "the class name no_interaction")):
        if re.search(pattern, prompt):
            problems.append(what)
    if not prompt.endswith("."):
        problems.append("no final full stop")
    return problems


def test_every_prompt_is_well_formed():
    assert len(ALL_PASTA) == 6 * 2 + 87 * 3 and len(ALL_VERBS) == 1 + 156 * 2
    bad = {p: malformed(p) for p in ALL_PASTA + ALL_VERBS if malformed(p)}
    assert bad == {}


@pytest.mark.parametrize("bad", ["a person using their leg to is close with something.",
                                 "a person using their hand to wash with something something.",
                                 "a person using their hand to raise(over head) something.",
                                 "a photo of someone, give/serve (an object) to (a person)."])
def test_the_check_catches_the_old_malformations(bad):
    assert malformed(bad)


def test_known_renderings():
    def pasta(name: str) -> list[str]:
        return prompts.pasta_prompts(tx.pasta_index(name))

    assert "a person using their leg to be close with something." in pasta("leg: is close with")
    assert "a person using their hand to wash with something." in pasta("hand: wash with something")
    assert "a photo of a person whose hand is used to raise something over their head." in pasta(
        "hand: raise(over head)")
    assert "a photo of a person, hand: raise over head." in pasta("hand: raise(over head)")
    assert "a photo of a person whose hand is used to hold something." in pasta("hand: hold")
    # intransitive states get no object and their own template
    assert pasta("leg: kneel") == ["a photo of a person whose leg is used to kneel.",
                                   "a photo of a person, leg: kneel.",
                                   "a person using their leg to kneel, without any object."]
    for i in range(len(tx.PASTA_NAMES)):  # "using their foot to dance something" is gone
        if tx.state_of(i) in prompts.INTRANSITIVE_STATES:
            assert not any("something" in p for p in prompts.pasta_prompts(i)), tx.PASTA_NAMES[i]
    assert pasta("foot: no_interaction")[0] == "a photo of a person whose foot is not interacting with anything."
    verb = prompts.verb_prompts(tx.verb_index("give/serve (an object) to (a person)"))
    assert verb[0] == "a photo of a person who is doing this: give or serve an object to a person."
    assert prompts.verb_prompts(tx.verb_index("brush_with"))[1] == "a photo of someone, brush with."


def test_transitivity_table_names_real_states():
    states = {tx.state_of(i) for i in range(len(tx.PASTA_NAMES))}
    assert states >= prompts.INTRANSITIVE_STATES and set(prompts.STATE_ACTIONS) <= states
    assert set(prompts.VERB_WORDS) <= set(tx.VERB_NAMES)
    # every verb name with a bracket or a slash has a rewrite, so the generic rule never sees one
    assert {v for v in tx.VERB_NAMES if "(" in v} <= set(prompts.VERB_WORDS)


# ------------------------------------------------------------------ the language space's verb senses (phrases v2)


def test_every_verb_has_its_sense_sentences():
    senses = prompts.verb_sense_phrases()
    objects = prompts.hico_verb_objects()
    assert len(senses) == len(tx.VERB_NAMES) == 157 and senses[tx.NO_INTERACTION_VERB] == []
    for name, sentences in zip(tx.VERB_NAMES, senses, strict=True):
        if name == tx.NO_INTERACTION:
            continue
        want = len(objects[name]) if name in objects else 1  # HICO's: one per object it takes; extras: one
        assert len(sentences) == want and len(set(sentences)) == want, name
        for s in sentences:
            assert s.startswith("a person ") and not re.search(r"[()\[\]/_{}]|\s\s|\ba an?\b|\ban? an?\b", s), s
    assert set(prompts.EXTRA_VERB_SENSES) == set(tx.VERB_NAMES[117:])  # the 40 verbs HICO never labels


def test_verbs_are_read_as_the_actions_hico_labels():
    sense = dict(zip(tx.VERB_NAMES, prompts.verb_sense_phrases(), strict=True))
    assert "a person getting on a bus" in sense["board"] and "a person training a dog" in sense["train"]
    assert sense["fly"] == ["a person flying an airplane", "a person flying a kite"]
    assert "a person parking a car" in sense["park"] and "a person grooming a horse" in sense["groom"]
    assert "a person drinking from a cup" in sense["drink_with"] and "a person wearing skis" in sense["wear"]
    assert "a person hugging a teddy bear" in sense["hug"] and "a person kicking a ball" in sense["kick"]
    assert sense["crouch/kneel"] == ["a person crouching or kneeling down"]
    assert [prompts.gerund(v) for v in ("sit_on", "lie_on", "ride", "run", "hop_on", "see", "type_on")] == [
        "sitting on", "lying on", "riding", "running", "hopping on", "seeing", "typing on"]
    assert prompts.object_phrases()[:3] == ["an airplane", "an apple", "a backpack"]
    assert prompts.phrases_ref("v1") == "v1|{part} {state}|{verb}" and prompts.phrases_ref().startswith("v2|")
