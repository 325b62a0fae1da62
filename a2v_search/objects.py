"""The objects of a person's activity: what a person holds, rides, sits on... as ``(cls, p, box)`` triples.

``cls`` is the object class (0..79, :data:`a2v_search.taxonomy.OBJECT_NAMES`: HICO-DET's 80 objects, which are
COCO's 80), ``p`` in (0, 1] how sure the store is that the person acts on such an object, ``box`` the object's
(x1, y1, x2, y2) in pixels of the media, or None when unknown (an imported record without one). A person keeps at
most :data:`MAX_OBJECTS_PER_PERSON`, best first.

Tying detected objects to persons (the detector model, COCO boxes files): an object is a candidate for a person
when its box comes within ``REACH`` times the person's size (the longer side of the person's box) of the person's
box. Its affinity is ``0.5 + 0.5 * (share of the object's area inside the person's box)`` when the boxes overlap,
and ``0.5 * (1 - gap / reach)`` when they do not (``gap``: the distance between the boxes), so any overlap ranks
above any gap; ``p = detector score * affinity``. An object may belong to several persons. The rule and its
measurement on HICO-DET's real boxes: docs/design.md ("Objects of an activity"), ``bench/object_association.py``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from . import taxonomy as tx

Box = tuple[float, float, float, float]
#: One object of a person: (class 0..79, p in (0, 1], box in media pixels or None).
PersonObject = tuple[int, float, Box | None]

#: Objects kept per person, best first.
MAX_OBJECTS_PER_PERSON = 4
#: How far from a person's box an object may lie and still be tied to it, in person sizes (longer box side).
REACH = 0.5


def object_vector(objects: Sequence[PersonObject]) -> np.ndarray:
    """float32 (80,): the largest ``p`` of each object class among ``objects``, 0 for classes not there."""
    out = np.zeros(tx.N_OBJECTS, np.float32)
    for cls, p, _ in objects:
        out[int(cls)] = max(out[int(cls)], float(p))
    return out


def affinity(person: Sequence[float], obj: Sequence[float], reach: float = REACH) -> float:
    """How strongly an object box belongs to a person box, in [0, 1] (0: out of reach); see the module doc."""
    px1, py1, px2, py2 = (float(v) for v in person)
    ox1, oy1, ox2, oy2 = (float(v) for v in obj)
    iw, ih = min(px2, ox2) - max(px1, ox1), min(py2, oy2) - max(py1, oy1)
    if iw > 0 and ih > 0:
        area = max((ox2 - ox1) * (oy2 - oy1), 1e-9)
        return 0.5 + 0.5 * min(1.0, iw * ih / area)
    gap = math.hypot(max(0.0, -iw), max(0.0, -ih))
    limit = reach * max(px2 - px1, py2 - py1)
    return 0.5 * (1.0 - gap / limit) if gap < limit else 0.0


def tie_objects(persons: Sequence[Sequence[float] | None], objects: Sequence[tuple[int, float, Sequence[float]]],
                max_objects: int = MAX_OBJECTS_PER_PERSON, reach: float = REACH) -> list[tuple[PersonObject, ...]]:
    """The objects of each person box (None: the whole frame, which holds every object): ``objects`` are
    ``(cls, detector score, box)``; per person at most ``max_objects`` ``(cls, score * affinity, box)``, best first
    (ties: the earlier object)."""
    out = []
    for person in persons:
        scored = []
        for j, (cls, score, box) in enumerate(objects):
            a = 1.0 if person is None else affinity(person, box, reach)
            p = float(score) * a
            if p > 0:
                scored.append((-p, j, (int(cls), round(p, 6), tuple(float(v) for v in box))))
        scored.sort()
        out.append(tuple(o for _, _, o in scored[:max_objects]))
    return out


def scaled(objects: Sequence[PersonObject], factor: float) -> tuple[PersonObject, ...]:
    """Objects with their boxes multiplied by ``factor`` (frame pixels -> media pixels)."""
    return tuple((cls, p, None if box is None else tuple(float(v) * factor for v in box)) for cls, p, box in objects)


def object_dicts(objects: Sequence[PersonObject]) -> list[dict]:
    """Objects as JSON: ``[{"name": "cup", "p": 0.9, "box": [x1, y1, x2, y2] or None}]`` (the import form)."""
    return [{"name": tx.OBJECT_NAMES[cls], "p": round(float(p), 4),
             "box": None if box is None else [round(float(v), 2) for v in box]} for cls, p, box in objects]


def objects_text(objects: Sequence[PersonObject], n: int = MAX_OBJECTS_PER_PERSON) -> str:
    """``"cup 0.90, dining_table 0.55"``: a person's objects on one line ('' when none)."""
    return ", ".join(f"{tx.OBJECT_NAMES[cls]} {p:.2f}" for cls, p, _ in objects[:n])


def parse_objects(value, what: str) -> tuple[PersonObject, ...]:
    """Objects of an import record (``[{"name", "p", "box"?}]``) -> stored form, best first; ValueError naming
    the first bad entry (the caller turns it into its record's error)."""
    if value is None:
        return ()
    if not isinstance(value, list):
        raise ValueError(f"{what} must be a list of {{\"name\", \"p\", \"box\"}} objects")
    out: list[PersonObject] = []
    for k, o in enumerate(value):
        where = f"{what}[{k}]"
        if not isinstance(o, dict):
            raise ValueError(f"{where} must be an object with 'name' and 'p'")
        name = o.get("name")
        if not isinstance(name, str):
            raise ValueError(f"{where}.name must be a string (one of the 80 COCO / HICO-DET object classes)")
        try:
            cls = tx.object_index(name)
        except tx.UnknownNameError as e:
            raise ValueError(f"{where}: {e}") from None
        p = o.get("p")
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 < p <= 1:
            raise ValueError(f"{where}.p must be a number in (0, 1], not {p!r}")
        box = o.get("box")
        if box is not None:
            if (not isinstance(box, list) or len(box) != 4 or not all(
                    isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in box)
                    or box[2] <= box[0] or box[3] <= box[1]):
                raise ValueError(f"{where}.box must be [x1, y1, x2, y2] with x2 > x1 and y2 > y1")
            box = tuple(float(v) for v in box)
        out.append((cls, float(p), box))
    if len(out) > MAX_OBJECTS_PER_PERSON:
        raise ValueError(f"{what} has {len(out)} objects; a person keeps at most {MAX_OBJECTS_PER_PERSON}")
    return tuple(sorted(out, key=lambda o: -o[1]))

