"""Thirty activity profiles and thirty paraphrased free-text queries for bench/language_ablation.py.

Each profile names the PaSta and verbs a person doing that activity shows; a query is an everyday paraphrase that
mostly avoids the taxonomy's own words ("sipping coffee", not "drink with"). Kept apart from
a2v_search/testing/profiles.py so that the tests and this measurement do not tune each other.
"""

from __future__ import annotations

#: name -> (PaSta names, verb names) that are on for a person doing it
PROFILES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "drink": (("hand: hold", "head: drink with"), ("drink_with", "sip", "hold")),
    "eat": (("head: eat", "hand: hold"), ("eat",)),
    "kick": (("foot: kick", "leg: run with"), ("kick",)),
    "ride_bike": (("hip: sit on", "foot: tread on", "hand: hold", "leg: straddle"), ("ride", "straddle")),
    "phone": (("hand: hold", "head: talk with something"), ("talk_on", "hold")),
    "hug": (("arm: hug", "arm: be close to"), ("hug",)),
    "shoulder_carry": (("arm: shoulder carry", "hand: carry"), ("carry",)),
    "kneel": (("leg: kneel",), ("crouch/kneel",)),
    "throw": (("hand: throw", "arm: swing"), ("throw",)),
    "walk": (("foot: walk with", "leg: walk with"), ("walk",)),
    "run": (("foot: run with", "leg: run with"), ("run",)),
    "sit_chair": (("hip: sit on",), ("sit_on",)),
    "kiss": (("head: kiss", "arm: be close to"), ("kiss",)),
    "read": (("head: inspect", "hand: hold"), ("read",)),
    "type": (("hand: press", "head: inspect"), ("type_on", "work on a computer")),
    "cut": (("hand: cut with something", "hand: hold"), ("cut_with", "cut")),
    "pour": (("hand: pour into", "hand: hold"), ("pour", "fill")),
    "wash": (("hand: wash", "hand: wash with something"), ("wash", "clean")),
    "push": (("hand: push", "foot: walk with"), ("push",)),
    "pull": (("hand: pull", "hand: hold"), ("pull", "drag")),
    "lift": (("hand: lift", "hand: raise(over head)"), ("lift",)),
    "dance": (("foot: dance", "leg: dance", "arm: dance"), ("dance",)),
    "jump": (("foot: jump with", "leg: jump with"), ("jump",)),
    "smoke": (("hand: hold", "head: blow"), ("smoke",)),
    "music": (("head: listen", "head: wear"), ("listen (e.g., to music)",)),
    "photo": (("hand: hold", "head: inspect"), ("take a photo",)),
    "pet": (("hand: touch",), ("pet", "play with pets")),
    "crawl": (("foot: crawl", "leg: crawl", "hand: crawl", "arm: crawl"), ("crawl",)),
    "wave": (("hand: gesture to",), ("wave", "greet")),
    "drive": (("hip: sit in", "hand: hold"), ("drive", "operate")),
}

#: paraphrased free-text query -> the profile it is about
QUERIES: dict[str, str] = {
    "a man sipping coffee from a mug": "drink",
    "a woman biting into a sandwich": "eat",
    "a kid kicking a football": "kick",
    "someone riding a bicycle down the street": "ride_bike",
    "a person chatting on a mobile phone": "phone",
    "two friends embracing each other": "hug",
    "a worker with a heavy sack on his shoulder": "shoulder_carry",
    "someone down on one knee": "kneel",
    "a boy tossing a frisbee": "throw",
    "a woman strolling through the park": "walk",
    "a jogger running along the beach": "run",
    "a man seated on a wooden chair": "sit_chair",
    "a couple kissing": "kiss",
    "someone reading a newspaper": "read",
    "a person typing on a laptop keyboard": "type",
    "a chef slicing vegetables with a knife": "cut",
    "pouring water into a glass": "pour",
    "washing dishes in the sink": "wash",
    "pushing a shopping cart": "push",
    "dragging a heavy suitcase behind her": "pull",
    "an athlete lifting weights over his head": "lift",
    "people dancing at a party": "dance",
    "a child jumping on a trampoline": "jump",
    "a man smoking a cigarette": "smoke",
    "someone listening to music on headphones": "music",
    "a tourist taking a picture with a camera": "photo",
    "stroking a cat": "pet",
    "a baby crawling on the carpet": "crawl",
    "waving hello to a friend": "wave",
    "a woman driving a car": "drive",
}
