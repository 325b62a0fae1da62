"""The values the store's modules pass around: media and persons to store, stored rows, search filters, vectors,
activity counts and clusterings; the widths of the stored blobs; the checks that a person can be stored. Plain
data and numpy only: no SQL, no session."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

from .blobs import to_float16

#: Track numbers (0, 1, ...) of one video's persons from their (n,) frame times, (n, 4) boxes and (n, P) visual
#: vectors; the caller's tracker (a2v-search's Store passes its video tracker's ``link``).
Linker = Callable[[Sequence[float], Sequence[Sequence[float]], np.ndarray], list[int]]
#: Widths of the stored probability blobs: the HAKE taxonomy's 93 PaSta, 157 verbs and 6 parts (tests check them
#: against the taxonomy's sizes).
N_PASTA, N_VERBS, N_PARTS = 93, 157, 6
#: Object classes (HICO-DET's 80 = COCO's 80; a2v_search.taxonomy.OBJECT_NAMES).
N_OBJECTS = 80
#: A person's object: (class 0..79, p in (0, 1], (x1, y1, x2, y2) in media pixels or None).
ObjectRow = tuple[int, float, tuple[float, float, float, float] | None]


@dataclass
class NewPerson:
    """A person to store: its box in pixels and the model outputs (float arrays)."""

    box: Sequence[float]
    pasta: np.ndarray  # (93,)
    verbs: np.ndarray  # (157,)
    parts: np.ndarray  # (6,)
    visual: np.ndarray  # (P,) unit length
    score: float = 1.0
    frame_index: int | None = None
    t_sec: float | None = None
    visual_norm: float | None = None  # norm of the tower output ``visual`` was normalised from
    objects: tuple[ObjectRow, ...] = ()  # the objects it acts on, best first


def person_problem(p: NewPerson, visual_dim: int) -> str | None:
    """Why a person cannot be stored (None when it can). Checked before anything is committed. A person whose
    PaSta and verbs are all zero (or all "no interaction") is valid: it has no language direction, and scores 0
    against text queries while image queries find it by its visual vector."""
    arrays = {}
    for name, value, n in (("pasta", p.pasta, N_PASTA), ("verbs", p.verbs, N_VERBS), ("parts", p.parts, N_PARTS),
                           ("visual", p.visual, visual_dim)):
        if value is None:
            return f"{name} is missing"
        arr = np.asarray(value, np.float32)
        if arr.shape != (n,):
            return f"{name} has shape {arr.shape}, expected ({n},)"
        arrays[name] = arr
    if not np.isfinite(np.concatenate(list(arrays.values()))).all():  # one pass; then name the array
        bad = next(name for name, arr in arrays.items() if not np.isfinite(arr).all())
        return f"{bad} has non-finite values (NaN or infinity)"
    if not arrays["visual"].astype(np.float16).any():
        return "visual is a zero vector (no direction to search by)"
    if len(p.box) != 4 or not all(math.isfinite(float(v)) for v in p.box):
        return "box must be four finite numbers"
    return _objects_problem(p.objects)


def _objects_problem(objects: Sequence[ObjectRow]) -> str | None:
    for cls, prob, box in objects:  # math.isfinite: a fifth of np.isfinite's cost on one number
        if not 0 <= int(cls) < N_OBJECTS:
            return f"object class {cls} is not one of the {N_OBJECTS} classes"
        if not (math.isfinite(prob) and 0 < prob <= 1):
            return f"object p {prob!r} is not in (0, 1]"
        if box is not None and (len(box) != 4 or not all(math.isfinite(float(v)) for v in box)):
            return "an object's box must be four finite numbers"
    return None


@dataclass
class NewMedia:
    """A media row to store with its persons. ``replaces`` is the id of an older row of the same path."""

    path: str
    content_hash: str | None
    size: int
    mtime: float
    kind: str
    collection: str
    width: int | None = None
    height: int | None = None
    persons: list[NewPerson] = field(default_factory=list)
    duplicate_of: int | None = None
    frames: int | None = None
    duration: float | None = None
    replaces: int | None = None


@dataclass
class PersonRow:
    """A stored person joined with its media."""

    id: int
    media_id: int
    path: str
    kind: str
    collection: str
    width: int | None
    height: int | None
    frame_index: int | None
    t_sec: float | None
    box: tuple[float, float, float, float]
    score: float
    pasta: np.ndarray
    verbs: np.ndarray
    parts: np.ndarray
    visual: np.ndarray
    visual_norm: float | None = None
    track_id: int | None = None
    objects: tuple[ObjectRow, ...] = ()  # best first


@dataclass
class TrackRow:
    """A stored track: its video, time range and number of persons."""

    id: int
    media_id: int
    number: int
    t_start: float
    t_end: float
    persons: int


@dataclass
class Filters:
    """Restrictions of a search. ``where`` items are ``(label_kind, class_index, op, value)``."""

    collection: str | None = None
    path_glob: str | None = None
    kind: str | None = None
    where: list[tuple[int, int, str, float]] = field(default_factory=list)
    cluster: tuple[str, int] | None = None  # (clustering name, cluster id)
    after_id: int | None = None  # only persons with a larger id

    def empty(self) -> bool:
        return not (self.collection or self.path_glob or self.kind or self.where or self.cluster
                    or self.after_id is not None)


@dataclass
class MediaState:
    id: int
    content_hash: str | None
    size: int
    mtime: float


class Vectors(NamedTuple):
    """Persons' stored vectors, row i = ``ids[i]``, float32."""

    ids: np.ndarray  # (n,) int64
    visual: np.ndarray  # (n, P) unit length, the float16 values
    pasta: np.ndarray  # (n, 93)
    verbs: np.ndarray  # (n, 157)
    norms: np.ndarray  # (n,) tower-output norms, NaN where unknown (stored before schema 2)
    objects: np.ndarray  # (n, 80) the largest p of each object class (object_probs)


@dataclass
class PersonArrays:
    """A batch's persons as arrays, row i = the i-th person of the batch in media order (see :func:`as_arrays`)."""

    pasta: np.ndarray  # (n, 93) float16, the stored values
    verbs: np.ndarray  # (n, 157) float16
    parts: np.ndarray  # (n, 6) float16
    visual: np.ndarray  # (n, P) float16
    boxes: np.ndarray  # (n, 4) float64
    norms: np.ndarray  # (n,) float32, NaN where unknown
    objects: np.ndarray  # (n, 80) float32: the largest p of each object class (object_probs)


def object_probs(objects: Sequence[Sequence[ObjectRow]]) -> np.ndarray:
    """Persons' objects -> float32 (n, 80): row i holds the largest ``p`` of each class among person i's objects,
    0 for classes it has none of (what the language space's object block reads)."""
    out = np.zeros((len(objects), N_OBJECTS), np.float32)
    for i, objs in enumerate(objects):
        for cls, prob, _ in objs:
            out[i, int(cls)] = max(out[i, int(cls)], np.float32(prob))
    return out


def as_arrays(persons: Sequence[NewPerson], visual_dim: int) -> tuple[PersonArrays | None, str | None]:
    """The persons as stored arrays, checked all at once: (arrays, None), or (None, why not) when some person
    cannot be stored (:func:`person_problem` then names it)."""
    n = len(persons)
    try:
        pasta = np.array([p.pasta for p in persons], np.float32).reshape(n, N_PASTA)
        verbs = np.array([p.verbs for p in persons], np.float32).reshape(n, N_VERBS)
        parts = np.array([p.parts for p in persons], np.float32).reshape(n, N_PARTS)
        visual = np.array([p.visual for p in persons], np.float32).reshape(n, visual_dim)
        boxes = np.array([p.box for p in persons], np.float64).reshape(n, 4)
    except (TypeError, ValueError):
        return None, "shape"
    norms = np.array([np.nan if p.visual_norm is None else p.visual_norm for p in persons], np.float32)
    return checked_arrays(pasta, verbs, parts, visual, boxes, norms, [p.objects for p in persons])


def checked_arrays(pasta: np.ndarray, verbs: np.ndarray, parts: np.ndarray, visual: np.ndarray, boxes: np.ndarray,
                   norms: np.ndarray, objects: Sequence[Sequence[ObjectRow]]) -> tuple[PersonArrays | None, str | None]:
    """:func:`as_arrays` of persons already in arrays (float32 pasta (n, 93), verbs (n, 157), parts (n, 6), visual
    (n, P); float64 boxes (n, 4); float32 tower norms (n,), NaN where unknown; each person's objects): the same checks
    and the same arrays, without a person object to read them from (an import's plain records)."""
    with np.errstate(over="ignore", invalid="ignore"):
        if not all(np.isfinite(x).all() for x in (pasta, verbs, parts, visual, boxes)):
            return None, "finite"
        visual16 = to_float16(visual)
    if not np.any(visual16, axis=1).all():
        return None, "zero"
    if any(objs and _objects_problem(objs) for objs in objects):
        return None, "objects"
    return PersonArrays(to_float16(pasta), to_float16(verbs), to_float16(parts), visual16,
                        boxes, norms, object_probs(objects)), None


#: The label and pair counts of :class:`Counts` (besides ``persons``), each an int64 blob in ``activity_counts``.
COUNT_FIELDS = ("pasta", "verbs", "objects", "verb_pasta", "verb_object")


@dataclass
class Counts:
    """Persons counted, and how many of them show each PaSta (93,), verb (157,), object (80,), verb + PaSta pair
    (157, 93) and verb + object pair (157, 80)."""

    persons: int
    pasta: np.ndarray
    verbs: np.ndarray
    objects: np.ndarray
    verb_pasta: np.ndarray
    verb_object: np.ndarray

    @classmethod
    def zero(cls) -> Counts:
        return cls(0, np.zeros(N_PASTA, np.int64), np.zeros(N_VERBS, np.int64), np.zeros(N_OBJECTS, np.int64),
                   np.zeros((N_VERBS, N_PASTA), np.int64), np.zeros((N_VERBS, N_OBJECTS), np.int64))

    def __add__(self, other: Counts) -> Counts:
        return Counts(self.persons + other.persons, *(getattr(self, f) + getattr(other, f) for f in COUNT_FIELDS))

    def __neg__(self) -> Counts:
        return Counts(-self.persons, *(-getattr(self, f) for f in COUNT_FIELDS))

    def blobs(self) -> dict[str, bytes]:
        return {"persons": np.array([self.persons], np.int64).tobytes(),
                **{f: getattr(self, f).tobytes() for f in COUNT_FIELDS}}

    @classmethod
    def from_blobs(cls, blobs: dict[str, bytes]) -> Counts:
        c = cls.zero()
        if "persons" in blobs:
            c.persons = int(np.frombuffer(blobs["persons"], np.int64)[0])
        for name in COUNT_FIELDS:
            if name in blobs:
                value = getattr(c, name)
                setattr(c, name, np.frombuffer(blobs[name], np.int64).reshape(value.shape).copy())
        return c


@dataclass
class ClusteringRow:
    """A stored clustering; ``clusters``: one dict per cluster (name, labels, examples...), ``info``: how it was
    made."""

    id: int
    name: str
    space: str
    k: int
    filters: dict
    persons: int
    max_person_id: int
    centroids: np.ndarray  # (k, D) float32
    clusters: list[dict]
    info: dict
    created_at: float
