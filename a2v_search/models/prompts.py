"""Text built from the taxonomy: zero-shot CLIP prompts and the phrases of the BERT language space.

Zero-shot (CLIP text tower): each PaSta and verb is the normalised mean of the CLIP text embeddings of
``PASTA_PROMPTS`` / ``VERB_PROMPTS`` (prompt ensembling, as in CLIP's zero-shot classifiers); a part's
no_interaction uses ``NO_INTERACTION_PROMPTS``.

Language space (BERT family): one phrase per PaSta, ``"{part} {state}"`` (``"head drink with"``), and one per verb,
the verb name with ``_`` as a space (``"drink with"``).
"""

from __future__ import annotations

from .. import taxonomy as tx

PROMPTS_VERSION = "v1"
PASTA_PROMPTS = (
    "a photo of a person whose {part} is used to {state}.",
    "a photo of a person, {part}: {state}.",
    "a person using their {part} to {state} something.",
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

PHRASES_VERSION = "v1"
PASTA_PHRASE = "{part} {state}"
VERB_PHRASE = "{verb}"


def _verb_words(name: str) -> str:
    return name.replace("_", " ")


def pasta_prompts(index: int) -> list[str]:
    """The zero-shot CLIP prompts of one PaSta (93-state index)."""
    part, state = tx.part_of(index), tx.state_of(index)
    templates = NO_INTERACTION_PROMPTS if index in tx.NO_INTERACTION_PASTA else PASTA_PROMPTS
    return [t.format(part=part, state=state) for t in templates]


def verb_prompts(index: int) -> list[str]:
    """The zero-shot CLIP prompts of one verb (157-verb index)."""
    if index == tx.NO_INTERACTION_VERB:
        return list(NO_INTERACTION_VERB_PROMPTS)
    return [t.format(verb=_verb_words(tx.VERB_NAMES[index])) for t in VERB_PROMPTS]


def pasta_phrases() -> list[str]:
    """The 93 phrases embedded by the text model for the PaSta block of the language space."""
    return [PASTA_PHRASE.format(part=tx.part_of(i), state=tx.state_of(i)) for i in range(len(tx.PASTA_NAMES))]


def verb_phrases() -> list[str]:
    """The 157 phrases embedded by the text model for the verb block of the language space."""
    return [VERB_PHRASE.format(verb=_verb_words(v)) for v in tx.VERB_NAMES]
