"""Text built from the taxonomy: zero-shot CLIP prompts and the phrases of the BERT language space.

Zero-shot (CLIP text tower): each PaSta and verb is the normalised mean of the CLIP text embeddings of its prompts
(prompt ensembling, as in CLIP's zero-shot classifiers). A PaSta state is either transitive (it acts on an object:
"hold", "sit on", "wash with something") or intransitive ("kneel", "dance"); the two kinds have their own
templates, filled with the state's *action*: its words with the object put where English puts it ("hold
something", "raise something over their head", "wash with something": a state that names its object keeps it and
gets no second one). A part's no_interaction uses ``NO_INTERACTION_PROMPTS``. Verb names are read as words:
``_`` as a space, ``a/b`` as "a or b", and the parenthesised hints of the 40 extra verbs rewritten
(``VERB_WORDS``).

Language space (BERT family): one phrase per PaSta, ``"{part} {state}"`` (``"head drink with"``), and one per verb,
the verb name with ``_`` as a space (``"drink with"``).
"""

from __future__ import annotations

import re

from .. import taxonomy as tx

PROMPTS_VERSION = "v2"
#: The object a transitive state acts on, in its prompts.
OBJECT = "something"
PASTA_TRANSITIVE_PROMPTS = (
    "a photo of a person whose {part} is used to {action}.",
    "a photo of a person, {part}: {words}.",
    "a person using their {part} to {action}.",
)
PASTA_INTRANSITIVE_PROMPTS = (
    "a photo of a person whose {part} is used to {action}.",
    "a photo of a person, {part}: {words}.",
    "a person using their {part} to {action}, without any object.",
)
NO_INTERACTION_PROMPTS = (
    "a photo of a person whose {part} is not interacting with anything.",
    "a photo of a person with an idle {part}.",
)
VERB_PROMPTS = (
    "a photo of a person who is doing this: {verb}.",
    "a photo of someone, {verb}.",
)
NO_INTERACTION_VERB_PROMPTS = ("a photo of a person who is not interacting with anything.",)

#: States that act on no object (whatever their part).
INTRANSITIVE_STATES = frozenset({"jump down", "walk away", "crawl", "dance", "fall down", "martial art", "bend",
                                 "kneel", "listen"})
#: States whose action is not "<state> something": ``{obj}`` marks where the object goes (absent: none).
STATE_ACTIONS = {
    "is close with": "be close with {obj}",
    "raise(over head)": "raise {obj} over their head",
    "hold in both hands": "hold {obj} in both hands",
    "use something to point to": "point at {obj} with an object",
    "put something over head": "put {obj} over their head",
    "shoulder carry": "carry {obj} on their shoulder",
    "martial art": "do martial arts",
}
#: Verbs whose name is not read as plain words (slashes, parenthesised hints).
VERB_WORDS = {
    "martial art": "do martial arts",
    "hand clap": "clap hands",
    "hand shake": "shake hands",
    "bend/bow (at the waist)": "bend or bow at the waist",
    "close (e.g., a door, a box)": "close a door or a box",
    "climb (e.g., a mountain)": "climb a mountain",
    "dress/put on clothing": "dress or put on clothing",
    "touch (an object)": "touch an object",
    "fight/hit (a person)": "fight or hit a person",
    "give/serve (an object) to (a person)": "give or serve an object to a person",
    "take (an object) from (a person)": "take an object from a person",
    "grab (a person)": "grab a person",
    "listen to (a person)": "listen to a person",
    "listen (e.g., to music)": "listen to music",
    "sing to (e.g., self, a person, a group)": "sing",
    "talk to (e.g., self, a person, a group)": "talk",
}

PHRASES_VERSION = "v1"
PASTA_PHRASE = "{part} {state}"
VERB_PHRASE = "{verb}"


def _verb_words(name: str) -> str:
    return name.replace("_", " ")


def verb_words(name: str) -> str:
    """A verb name as plain words: ``VERB_WORDS``, else ``_`` and ``/`` read as a space and "or"."""
    return VERB_WORDS.get(name) or _verb_words(name).replace("/", " or ")


def is_transitive(state: str) -> bool:
    """Whether a PaSta state (its words, e.g. ``"sit on"``) acts on an object."""
    return state not in INTRANSITIVE_STATES


def state_action(state: str) -> str:
    """The state as an action with its object in place: ``"hold something"``, ``"wash with something"``,
    ``"raise something over their head"``, ``"kneel"``."""
    pattern = STATE_ACTIONS.get(state)
    if pattern is None:
        if not is_transitive(state):
            pattern = state
        elif re.search(rf"\b{OBJECT}\b", state):  # the state names its object already
            pattern = re.sub(rf"\b{OBJECT}\b", "{obj}", state)
        else:
            pattern = state + " {obj}"
    return pattern.format(obj=OBJECT)


def state_words(state: str) -> str:
    """The state's name as words: parentheses opened (``"raise over head"``), ``"is close with"`` as
    ``"be close with"``."""
    words = re.sub(r"\s*\(\s*", " ", state).replace(")", "")
    words = re.sub(r"^is ", "be ", words)
    return re.sub(r"\s+", " ", words).strip()


def pasta_prompts(index: int) -> list[str]:
    """The zero-shot CLIP prompts of one PaSta (93-state index)."""
    part, state = tx.part_of(index), tx.state_of(index)
    if index in tx.NO_INTERACTION_PASTA:
        return [t.format(part=part) for t in NO_INTERACTION_PROMPTS]
    templates = PASTA_TRANSITIVE_PROMPTS if is_transitive(state) else PASTA_INTRANSITIVE_PROMPTS
    return [t.format(part=part, action=state_action(state), words=state_words(state)) for t in templates]


def verb_prompts(index: int) -> list[str]:
    """The zero-shot CLIP prompts of one verb (157-verb index)."""
    if index == tx.NO_INTERACTION_VERB:
        return list(NO_INTERACTION_VERB_PROMPTS)
    return [t.format(verb=verb_words(tx.VERB_NAMES[index])) for t in VERB_PROMPTS]


def pasta_phrases() -> list[str]:
    """The 93 phrases embedded by the text model for the PaSta block of the language space."""
    return [PASTA_PHRASE.format(part=tx.part_of(i), state=tx.state_of(i)) for i in range(len(tx.PASTA_NAMES))]


def verb_phrases() -> list[str]:
    """The 157 phrases embedded by the text model for the verb block of the language space."""
    return [VERB_PHRASE.format(verb=_verb_words(v)) for v in tx.VERB_NAMES]
