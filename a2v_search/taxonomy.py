"""HAKE vocabularies: the 93 PaSta, the 157 verbs, the body parts, and the old 76-state list.

PaSta ("part states") are named ``"<part>: <state>"``; each of the six parts ends with ``no_interaction``.
Index ranges in the 93-state list: foot 0-15, leg 16-30, hip 31-36, hand 37-70, arm 71-78, head 79-92.
Source: the HAKE class lists (MIT), shipped in ``a2v_search/data/``.
"""

from __future__ import annotations

import difflib
import re
from functools import cache
from pathlib import Path

from .errors import UnknownNameError

#: The six PaSta parts, in the order of the 93-state list and of the 6 part flags (``pasta_binary``).
PARTS: tuple[str, ...] = ("foot", "leg", "hip", "hand", "arm", "head")

#: The ten annotated body parts of HAKE instance-level data, in their index order.
BODY_PARTS: tuple[str, ...] = (
    "R_foot", "R_leg", "L_leg", "L_foot", "Hip", "Head", "R_hand", "R_arm", "L_arm", "L_hand",
)
#: For each of the ten body parts, the index of the PaSta part it merges into.
BODY_PART_TO_PART: tuple[int, ...] = (0, 1, 1, 0, 2, 5, 3, 4, 4, 3)

NO_INTERACTION = "no_interaction"
NO_INTERACTION_VERB: int = 57


def _read_list(name: str) -> tuple[str, ...]:
    text = (Path(__file__).parent / "data" / name).read_text(encoding="utf-8")
    return tuple(line.strip() for line in text.splitlines() if line.strip())


def _part_ranges(names: tuple[str, ...]) -> dict[str, range]:
    ranges: dict[str, range] = {}
    for part in PARTS:
        idx = [i for i, n in enumerate(names) if n.split(":", 1)[0] == part]
        ranges[part] = range(idx[0], idx[-1] + 1)
    return ranges


#: The 93 PaSta names, ``"<part>: <state>"``.
PASTA_NAMES: tuple[str, ...] = _read_list("Part_State_93.txt")
#: The 157 verb names; index 57 is ``no_interaction``.
VERB_NAMES: tuple[str, ...] = _read_list("verb_list_157.txt")
#: The sizes every vector of a person has: 93 PaSta, 157 verbs, 6 parts (the one place they are written).
N_PASTA, N_VERBS, N_PARTS = len(PASTA_NAMES), len(VERB_NAMES), len(PARTS)
#: The 80 object classes of HICO-DET, which are COCO's 80 (HICO's spelling, alphabetical; HICO's object id - 1).
OBJECT_NAMES: tuple[str, ...] = _read_list("hico_obj_list.txt")
N_OBJECTS = len(OBJECT_NAMES)
#: Other spellings of the same classes (older COCO / VOC names); ``_`` and spaces are interchangeable anyway.
OBJECT_ALIASES: dict[str, str] = {
    "aeroplane": "airplane", "motorbike": "motorcycle", "sofa": "couch", "tvmonitor": "tv", "tv monitor": "tv",
    "diningtable": "dining_table", "pottedplant": "potted_plant", "hair dryer": "hair_drier",
    "cellphone": "cell_phone", "mobile phone": "cell_phone", "ball": "sports_ball", "racket": "tennis_racket",
}
#: The older 76-state list (HAKE 1.0), needed to read HICO-DET instance-level annotations.
PASTA76_NAMES: tuple[str, ...] = _read_list("Part_State_76.txt")

#: Index range of each part in the 93-state list.
PART_RANGES: dict[str, range] = _part_ranges(PASTA_NAMES)
#: Index range of each part in the 76-state list.
PART_RANGES_76: dict[str, range] = _part_ranges(PASTA76_NAMES)
#: Number of states per part (93-state list): foot 16, leg 15, hip 6, hand 34, arm 8, head 14.
PART_SIZES: dict[str, int] = {p: len(r) for p, r in PART_RANGES.items()}
#: Index of each part's ``no_interaction`` state in the 93-state list.
NO_INTERACTION_PASTA: tuple[int, ...] = tuple(r[-1] for r in PART_RANGES.values())
#: For each of the 93 states, the index of its part in ``PARTS``.
PASTA_PART: tuple[int, ...] = tuple(PARTS.index(n.split(":", 1)[0]) for n in PASTA_NAMES)

#: For each of the 76 old states (global index), its index in the 93-state list. The 17 new states are
#: inserted before each part's no_interaction, so this is not the identity.
MAP_76_TO_93: tuple[int, ...] = tuple(PASTA_NAMES.index(n) for n in PASTA76_NAMES)


def pasta_76_to_93(part: int | str, state: int) -> int:
    """Index in the 93-state list of state ``state`` (0-based within ``part``) of the 76-state list."""
    name = PARTS[part] if isinstance(part, int) else part
    rng = PART_RANGES_76[name]
    if not 0 <= state < len(rng):
        raise UnknownNameError(f"state {state} is out of range for part {name!r} in the 76-state list "
                               f"(0..{len(rng) - 1})")
    return MAP_76_TO_93[rng[state]]


def part_of(name_or_index: str | int) -> str:
    """The part (``"hand"``...) of a PaSta given by name or 93-state index."""
    i = name_or_index if isinstance(name_or_index, int) else pasta_index(name_or_index)
    return PARTS[PASTA_PART[i]]


def state_of(index: int) -> str:
    """The state words of a PaSta (``"drink with"`` for ``"head: drink with"``)."""
    return PASTA_NAMES[index].split(":", 1)[1].strip()


def normalize_name(name: str) -> str:
    """Canonical form for lookups: lower case, ``_`` as space, single spaces, ``"part: state"``."""
    s = name.strip().lower().replace("_", " ")
    s = re.sub(r"\s*:\s*", ": ", s)
    return re.sub(r"\s+", " ", s).strip()


_NAMES = {"pasta": PASTA_NAMES, "verb": VERB_NAMES, "object": OBJECT_NAMES}


@cache
def _lookup(kind: str) -> dict[str, int]:
    table = {normalize_name(n): i for i, n in enumerate(_NAMES[kind])}
    if kind == "object":
        table.update({normalize_name(a): table[normalize_name(n)] for a, n in OBJECT_ALIASES.items()})
    return table


def _closest(key: str, kind: str, n: int = 5) -> list[str]:
    names = _NAMES[kind]
    table = _lookup(kind)
    close = difflib.get_close_matches(key, list(table), n=n, cutoff=0.5)
    if not close and ":" in key:  # right part, unknown state: list that part's states
        part = key.split(":", 1)[0]
        close = [k for k in table if k.startswith(part + ":")][:n]
    if not close:  # fall back to names sharing a word
        words = set(re.split(r"[\s:/()]+", key)) - {""}
        close = [k for k in table if words & set(re.split(r"[\s:/()]+", k))][:n]
    return [names[table[c]] for c in close]


def _index(kind: str, name: str, hint_suffix: str = "") -> int:
    key = normalize_name(name)
    table = _lookup(kind)
    if key in table:
        return table[key]
    label = {"pasta": "PaSta", "verb": "verb", "object": "object"}[kind]
    raise UnknownNameError(f"unknown {label} {name!r}; closest: {', '.join(_closest(key, kind)) or 'none'}"
                           + hint_suffix)


def pasta_index(name: str) -> int:
    """Index (0..92) of a PaSta name, tolerant of case, spaces and underscores (``"Hand: Hold"``)."""
    return _index("pasta", name, f" (names are '<part>: <state>', parts: {', '.join(PARTS)})")


def verb_index(name: str) -> int:
    """Index (0..156) of a verb name, tolerant of case, spaces and underscores (``"drink with"``)."""
    return _index("verb", name)


def object_index(name: str) -> int:
    """Index (0..79) of an object class: HICO's names (``"sports_ball"``), COCO's (``"sports ball"``) or an alias."""
    return _index("object", name, " (the 80 COCO / HICO-DET object classes)")


@cache
def hico_hois() -> tuple[tuple[int, int], ...]:
    """For each HICO HOI (id 1..600 at position id - 1): (its object class 0..79, its verb's index 0..156)."""
    rows = [line.split() for line in _read_list("hico_hoi_list.txt")]
    return tuple((object_index(r[1]), verb_index(r[2])) for r in rows)


def resolve_label(name: str) -> tuple[str, int]:
    """A PaSta or verb name to ``("pasta", i)`` or ``("verb", i)``; PaSta names win (they hold a part)."""
    key = normalize_name(name)
    if key in _lookup("pasta"):
        return "pasta", _lookup("pasta")[key]
    if key in _lookup("verb"):
        return "verb", _lookup("verb")[key]
    hint = _closest(key, "pasta", 3) + _closest(key, "verb", 3)
    raise UnknownNameError(f"unknown PaSta or verb {name!r}; closest: {', '.join(hint) or 'none'}")
