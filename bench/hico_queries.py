"""The natural queries of bench/hico_retrieval.py, written as a person would type them (never the label strings).

Each query: its text, the HICO verbs that make a person relevant (any of them; a few activities have two HICO
verbs, e.g. *sip* and *drink_with*), the object it names (HICO's spelling; None for verb-only queries) and the
body part the activity is mostly about (for the per-part table). Queries alternate between the two halves ``A``
(used while choosing the formula) and ``B`` (held out until the end): ``half(i)``.
"""

from __future__ import annotations

from typing import NamedTuple


class Query(NamedTuple):
    text: str
    verbs: tuple[str, ...]
    object: str | None
    part: str


def q(text: str, verbs: str, obj: str | None, part: str) -> Query:
    return Query(text, tuple(verbs.split(",")), obj, part)


QUERIES: tuple[Query, ...] = (
    # verb only: the text names no object
    q("a player giving it a good kick", "kick", None, "foot"),
    q("someone balancing upright on top of it", "stand_on", None, "foot"),
    q("a person out for a stroll", "walk", None, "leg"),
    q("someone sprinting along", "run", None, "leg"),
    q("a person leaping high into the air", "jump", None, "leg"),
    q("someone sitting astride with a leg on each side", "straddle", None, "leg"),
    q("a person seated on something", "sit_on", None, "hip"),
    q("someone lying down stretched out", "lie_on", None, "hip"),
    q("a rider travelling along", "ride", None, "hip"),
    q("someone gripping something in one hand", "hold", None, "hand"),
    q("a person slicing something into pieces", "cut", None, "hand"),
    q("someone typing away on keys", "type_on", None, "hand"),
    q("a person gently stroking an animal", "pet", None, "hand"),
    q("someone fixing something that broke", "repair", None, "hand"),
    q("a person behind the wheel steering", "drive", None, "hand"),
    q("someone catching something thrown at them", "catch", None, "hand"),
    q("a person lugging something around", "carry", None, "arm"),
    q("someone hurling something through the air", "throw", None, "arm"),
    q("a person taking a big swing", "swing", None, "arm"),
    q("someone giving a warm embrace", "hug", None, "arm"),
    q("a person paddling with oars", "row", None, "arm"),
    q("someone tugging on a string", "pull", None, "arm"),
    q("a person chewing on some food", "eat", None, "head"),
    q("someone absorbed in reading", "read", None, "head"),
    q("a person giving a kiss", "kiss", None, "head"),
    q("someone looking something over closely", "inspect", None, "head"),
    q("a person feeding an animal", "feed", None, "hand"),
    q("someone sitting at a meal table", "sit_at", None, "hip"),
    q("a person blowing out air hard", "blow", None, "head"),
    q("someone dressed in it", "wear", None, "head"),
    # verb and object
    q("someone pedalling a bicycle", "ride", "bicycle", "leg"),
    q("a man sipping from a mug", "sip,drink_with", "cup", "head"),
    q("passengers getting on a bus", "board", "bus", "leg"),
    q("a child flying a kite on the beach", "fly", "kite", "hand"),
    q("a skater standing on a skateboard", "stand_on", "skateboard", "foot"),
    q("someone kicking a football", "kick", "sports_ball", "foot"),
    q("a person on horseback", "ride", "horse", "hip"),
    q("a woman sitting on a park bench", "sit_on", "bench", "hip"),
    q("someone lying in bed", "lie_on", "bed", "hip"),
    q("a man cutting a birthday cake", "cut", "cake", "hand"),
    q("someone slicing food with a knife", "cut_with", "knife", "hand"),
    q("a person typing on a laptop", "type_on", "laptop", "hand"),
    q("a teenager texting on her phone", "text_on", "cell_phone", "hand"),
    q("a man chatting on his mobile", "talk_on", "cell_phone", "head"),
    q("a woman holding an umbrella in the rain", "hold", "umbrella", "hand"),
    q("someone stroking a cat", "pet", "cat", "hand"),
    q("a traveller carrying a suitcase", "carry", "suitcase", "arm"),
    q("a batter swinging a baseball bat", "swing", "baseball_bat", "arm"),
    q("someone tossing a frisbee", "throw", "frisbee", "arm"),
    q("a person catching a frisbee", "catch", "frisbee", "hand"),
    q("a girl cuddling a teddy bear", "hug", "teddy_bear", "arm"),
    q("someone biting into a slice of pizza", "eat", "pizza", "head"),
    q("a person reading a book", "read", "book", "head"),
    q("a family watching television", "watch", "tv", "head"),
    q("someone brushing his teeth with a toothbrush", "brush_with", "toothbrush", "head"),
    q("a surfer riding a surfboard", "ride", "surfboard", "foot"),
    q("someone driving a car", "drive", "car", "hand"),
    q("people rowing a boat", "row", "boat", "arm"),
    q("someone walking a dog on a leash", "walk", "dog", "leg"),
    q("a biker straddling a motorcycle", "straddle", "motorcycle", "leg"),
    q("a man opening the fridge door", "open", "refrigerator", "hand"),
    q("a tourist feeding a giraffe", "feed", "giraffe", "hand"),
    q("a person blowing out birthday candles on a cake", "blow", "cake", "head"),
    q("a tennis player hitting the ball", "hit", "sports_ball", "arm"),
)


def half(i: int) -> str:
    """The half of query i: ``A`` (even positions) or ``B`` (odd)."""
    return "A" if i % 2 == 0 else "B"
