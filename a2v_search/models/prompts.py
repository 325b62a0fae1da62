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
from functools import cache
from pathlib import Path

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

#: v1: a verb's row is its bare name; v2: the mean of its sense sentences (``verb_sense_phrases``)
PHRASES_VERSION = "v2"
PASTA_PHRASE = "{part} {state}"
VERB_PHRASE = "{verb}"


def phrases_ref(version: str = PHRASES_VERSION) -> str:
    """How a store records the phrases of its matrices (``spaces.phrases``)."""
    return f"{version}|{PASTA_PHRASE}|{VERB_PHRASE if version == 'v1' else 'verb senses'}"


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


# ---------------------------------------------------------------- verbs and objects in their own senses (phrases v2)

#: How HICO uses a verb, where "<verb>ing <object>" is not it: ``{obj}`` is the object with its article.
VERB_SENSES = {
    "blow": "blowing out the candles on {obj}", "board": "getting on {obj}", "brush_with": "brushing teeth with {obj}",
    "direct": "directing {obj} with hand signals", "drink_with": "drinking from {obj}", "dry": "drying {obj}",
    "eat_at": "eating a meal at {obj}", "exit": "getting off {obj}", "fly": "flying {obj}",
    "grind": "grinding a rail on {obj}", "hop_on": "hopping on {obj}", "hose": "spraying {obj} with a hose",
    "light": "lighting the candles on {obj}", "lose": "losing {obj} to the wind", "pay": "paying at {obj}",
    "pick": "picking {obj} from a tree", "point": "pointing {obj}", "set": "setting {obj}",
    "sign": "signing an autograph on {obj}", "sit_at": "sitting at {obj}", "slide": "sliding {obj} into an oven",
    "spin": "spinning {obj} on a finger", "stick": "sticking {obj} into food", "stop_at": "stopping at {obj}",
    "tag": "tagging {obj} in a game", "toast": "raising {obj} in a toast", "train": "training {obj}",
    "wave": "waving at {obj}", "zip": "zipping up {obj}", "lasso": "lassoing {obj} with a rope",
    "milk": "milking {obj}", "shear": "shearing the wool of {obj}", "herd": "herding {obj}",
    "launch": "launching {obj}", "release": "setting {obj} free", "serve": "serving {obj} in tennis",
    "check": "checking {obj}", "race": "racing {obj}", "turn": "turning {obj} around a corner",
    "tie": "tying {obj}", "park": "parking {obj}", "run": "running with {obj}", "pour": "pouring from {obj}",
    "fill": "filling {obj}", "stand_under": "standing under {obj}",
}
#: The verbs HICO never labels (117-156 of the 157 list), as what a person does.
EXTRA_VERB_SENSES = {
    "bend/bow (at the waist)": "bending over at the waist", "crawl": "crawling on hands and knees",
    "crouch/kneel": "crouching or kneeling down", "dance": "dancing", "fall down": "falling down to the ground",
    "get up": "getting up from the ground", "martial art": "doing martial arts", "swim": "swimming in water",
    "chop": "chopping wood with an axe", "close (e.g., a door, a box)": "closing a door or a box",
    "dig": "digging a hole", "shovel": "shovelling with a spade", "climb (e.g., a mountain)": "climbing up a mountain",
    "dress/put on clothing": "putting on clothes", "enter": "entering a building through a door",
    "fishing": "fishing with a rod", "play board game": "playing a board game",
    "play musical instrument": "playing a musical instrument", "play with pets": "playing with a pet",
    "play with kids": "playing with children", "extract": "pulling something out", "press": "pressing a button",
    "put down": "putting something down", "shoot": "shooting a gun", "smoke": "smoking a cigarette",
    "clink glass": "clinking glasses", "hand clap": "clapping hands", "hand shake": "shaking hands with someone",
    "take a photo": "taking a photo with a camera", "touch (an object)": "touching an object with a hand",
    "work on a computer": "working on a computer", "write": "writing with a pen",
    "fight/hit (a person)": "fighting or hitting another person",
    "give/serve (an object) to (a person)": "handing an object to another person",
    "take (an object) from (a person)": "taking an object from another person",
    "grab (a person)": "grabbing another person", "listen to (a person)": "listening to another person",
    "listen (e.g., to music)": "listening to music with headphones",
    "sing to (e.g., self, a person, a group)": "singing a song", "talk to (e.g., self, a person, a group)":
        "talking to someone",
}
#: Objects as a person would name them, where HICO's name is not it.
OBJECT_WORDS = {"person": "another person", "sports_ball": "ball", "cell_phone": "phone", "tv": "television",
                "hair_drier": "hair dryer", "dining_table": "dining table"}
#: Object words that take no article ("wearing skis").
_NO_ARTICLE = {"skis", "broccoli"}
_GERUND_KEEP_E = {"be", "see", "flee"}
_GERUND_DOUBLE = {"cut", "hit", "hop", "jog", "pet", "run", "set", "sit", "stab", "stir", "swim", "tag", "zip",
                  "drag", "grab", "hug", "shop", "flip", "skip", "chop", "dig", "put", "get", "clap"}


def gerund(verb: str) -> str:
    """``"sit_on"`` -> ``"sitting on"``; ``"lie_on"`` -> ``"lying on"``: the first word as its -ing form."""
    first, _, rest = verb.replace("_", " ").partition(" ")
    if first in ("lie", "tie"):
        ing = first[:-2] + "ying"
    elif first in _GERUND_DOUBLE:
        ing = first + first[-1] + "ing"
    elif first.endswith("e") and not first.endswith(("ee", "ye", "oe")) and first not in _GERUND_KEEP_E:
        ing = first[:-1] + "ing"
    else:
        ing = first + "ing"
    return f"{ing} {rest}".strip()


def object_words(name: str, article: bool = True) -> str:
    """An object class as words: ``"sports_ball"`` -> ``"a ball"``, ``"apple"`` -> ``"an apple"``."""
    words = OBJECT_WORDS.get(name, name.replace("_", " "))
    if not article or words.startswith("another") or words in _NO_ARTICLE:
        return words
    return ("an " if words[0] in "aeiou" else "a ") + words


@cache
def hico_verb_objects() -> dict[str, tuple[str, ...]]:
    """Each HICO verb's objects (HICO's 600 verb-object pairs), in the list's order."""
    text = (Path(__file__).parents[1] / "data" / "hico_hoi_list.txt").read_text(encoding="utf-8")
    out: dict[str, list[str]] = {}
    for row in (line.split() for line in text.splitlines() if line.strip()):
        out.setdefault(row[2], []).append(row[1])
    return {v: tuple(objs) for v, objs in out.items()}


def verb_sense_phrases() -> list[list[str]]:
    """For each of the 157 verbs, the sentences its row averages: a HICO verb as HICO uses it, one sentence per
    object it takes ("a person getting on a bus", "... a train"); an extra verb as ``EXTRA_VERB_SENSES`` says;
    no_interaction: none (its row is zero)."""
    objects = hico_verb_objects()
    out = []
    for name in tx.VERB_NAMES:
        if name == tx.NO_INTERACTION:
            out.append([])
        elif name in EXTRA_VERB_SENSES:
            out.append([f"a person {EXTRA_VERB_SENSES[name]}"])
        else:
            template = VERB_SENSES.get(name, gerund(name) + " {obj}")
            out.append([f"a person {template.format(obj=object_words(o))}" for o in objects[name]])
    return out


def object_phrases() -> list[str]:
    """The 80 object classes as the text model reads them (``"a ball"``, ``"a dining table"``)."""
    return [object_words(name) for name in tx.OBJECT_NAMES]
