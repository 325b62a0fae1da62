"""The query layer: vectors in, ranked persons out.

Every query becomes one vector per space (visual, language and, with trained heads, activity: A2V's classifier
feature) and a weight per space. Candidates come from the FAISS indexes (filters applied inside the search as
allow-lists of ids), then every candidate is re-scored exactly from SQLite: ``score = sum of w_space *
cos_space``. Ties break by person id, and the candidate pool is at least ``MIN_POOL`` per index (``SINGLE_POOL``
when one quantised index ranks alone: its 8-bit scores are close enough to the exact ones that the exact top k lies
far inside 64 candidates), so pages of a query are disjoint and consistent. One space whose index keeps the
vectors themselves (Flat) ranks alone: its scores are final.

``group="track"`` ranks *moments* instead of persons: the persons of a video track count as one hit whose score is
:func:`a2v_search.tracks.moment_score` of its persons' scores (every person of a candidate track is re-scored
exactly); image persons stay hits of their own. The pool grows until the moments returned all score at least as
high as the lowest candidate, so no track outside the pool could rank above them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import NamedTuple

import numpy as np

from db.schema import LABEL_OBJECT, LABEL_PASTA, LABEL_VERB
from db.values import Filters, PersonRow
from index import exact_scores

from . import taxonomy as tx
from .errors import InputError, NotFoundError, QueryError, UnknownNameError
from .objects import object_dicts
from .space import ACTIVITY
from .store import Store
from .tracks import TOP_FRAMES, moment_score

MIN_POOL = 256  # candidates per index for fused queries
# candidates when one quantised index (SQ8 at 1M persons) ranks alone: on 200 queries at 1M persons, the exact top
# 10 of 32, 64, 128 and 256 candidates were those of 1,024; 64 fewer re-scored save ~0.9 ms (docs/design.md, Search)
SINGLE_POOL = 64
MAX_K = 10_000  # results per query
MAX_DEPTH = 100_000  # offset + k: deeper pages cost memory and time for nothing a person reads
MAX_QUERY_CHARS = 2_000  # query texts
MAX_FILTERS = 32  # --where items per query
MAX_FILTER_CHARS = 200  # characters of one --where item
EXTRA = 16  # extra candidates when one exact index ranks alone (ties at the cut)
TOP = 5
GROUPS = ("track",)
STRIP = 5  # frames of a moment's strip
SPACES = ("visual", "language", ACTIVITY)  # the spaces that image and person queries weigh, in --weights order


class Ranked(NamedTuple):
    """A ranked candidate: a person (or, grouped, a moment's best person) with its fused score, its cosine in
    each weighted space and, for a moment, the score of its best frame."""

    id: int
    score: float
    cosines: dict[str, float]
    frame_score: float | None = None


@dataclass
class Hit:
    """One result: the person, its media, its score (and the per-space cosines), its top PaSta and verbs."""

    rank: int
    person_id: int
    score: float
    path: str
    box: list[float]
    frame_index: int | None
    t_sec: float | None
    kind: str
    collection: str
    media_id: int
    pasta: list[tuple[str, float]]
    verbs: list[tuple[str, float]]
    cosines: dict[str, float] = field(default_factory=dict)
    track_id: int | None = None
    moment: Moment | None = None  # set in grouped searches (None there for image persons)
    objects: tuple = ()  # the objects it acts on: (class, p, box or None), best first (a2v_search.objects)

    def as_dict(self) -> dict:
        d = {"rank": self.rank, "person_id": self.person_id, "score": round(self.score, 6), "path": self.path,
             "box": [round(v, 2) for v in self.box], "frame_index": self.frame_index, "t_sec": self.t_sec,
             "pasta": [[n, round(p, 4)] for n, p in self.pasta], "verbs": [[n, round(p, 4)] for n, p in self.verbs],
             "track": self.track_id, "objects": object_dicts(self.objects)}
        if self.moment is not None:
            d.update(self.moment.as_dict())
        return d


@dataclass
class Moment:
    """A track as a search result: its time range, how many persons it holds, the score of its best frame (the
    hit's person), and a few of its frames spread over the range (``strip``: dicts of t_sec, frame_index, box)."""

    track: int
    t_start: float
    t_end: float
    persons: int
    frame_score: float
    strip: list[dict] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {"track": self.track, "t_start": self.t_start, "t_end": self.t_end, "track_persons": self.persons,
                "frame_score": round(self.frame_score, 6), "strip": self.strip}


@dataclass
class SearchResult:
    """The hits of a query and how the query was read."""

    query: dict
    hits: list[Hit]

    def as_dict(self) -> dict:
        return {"query": self.query, "results": [h.as_dict() for h in self.hits]}

    def __iter__(self):
        return iter(self.hits)

    def __len__(self) -> int:
        return len(self.hits)

    def __getitem__(self, i):
        return self.hits[i]


def top_labels(probs: np.ndarray, names: tuple[str, ...], n: int = TOP, skip: tuple[int, ...] = ()) -> list:
    """The n most probable (name, p), no_interaction classes left out."""
    p = np.array(probs, np.float32)
    p[list(skip)] = -np.inf
    order = np.argsort(-p, kind="stable")[:n]
    return [(names[i], float(probs[i])) for i in order]


def check_page(k: int, offset: int) -> None:
    """-k and --offset within bounds (QueryError naming them otherwise); checked before any work."""
    if not isinstance(k, (int, np.integer)) or not 1 <= k <= MAX_K:
        raise QueryError(f"-k must be a whole number from 1 to {MAX_K:,}, not {k!r}")
    if not isinstance(offset, (int, np.integer)) or offset < 0 or offset + k > MAX_DEPTH:
        raise QueryError(f"--offset must be >= 0 with --offset + -k at most {MAX_DEPTH:,} (got {offset!r} + {k!r}); "
                         "narrow the query with filters (--collection, --path, --where) instead of paging deeper")


def check_text(text: str) -> str:
    """A query text that is a non-empty string of at most MAX_QUERY_CHARS characters."""
    if not isinstance(text, str) or not text.strip():
        raise QueryError("the query text is empty")
    if len(text) > MAX_QUERY_CHARS:
        raise QueryError(f"the query text has {len(text):,} characters; at most {MAX_QUERY_CHARS:,} are read")
    return text


def parse_weights(value: str | Sequence[float]) -> tuple[float, ...]:
    """``"0.5,0.5"`` / ``"0.5,0.5,1"`` or a sequence -> VISUAL, LANGUAGE[, ACTIVITY] weights: two or three finite
    numbers >= 0, not all 0 (InputError otherwise). The one reader of ``--weights`` and the API's ``weights``."""
    try:
        w = tuple(float(v) for v in (value.split(",") if isinstance(value, str) else value))
    except (TypeError, ValueError):
        w = ()
    if len(w) not in (2, 3) or not all(math.isfinite(v) and v >= 0 for v in w) or not any(w):
        raise QueryError(f"weights {value!r} must be two or three numbers >= 0, not all 0: VISUAL,LANGUAGE[,ACTIVITY] "
                         "(ACTIVITY: A2V's classifier feature, trained heads only)")
    return w


def weights_by_space(weights: str | Sequence[float]) -> dict[str, float]:
    """Parsed weights as ``{space: weight}`` (visual, language and, given a third, activity)."""
    return dict(zip(SPACES, parse_weights(weights), strict=False))


def parse_box(value: str | Sequence[float] | None) -> list[float] | None:
    """``"x1,y1,x2,y2"`` or four numbers -> a box of four finite numbers with x2 > x1 and y2 > y1 (InputError
    otherwise); None or blank -> None. The one reader of ``--box`` and the API's ``box``."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    try:
        box = [float(v) for v in (value.split(",") if isinstance(value, str) else value)]
    except (TypeError, ValueError):
        box = []
    if len(box) != 4 or not all(math.isfinite(v) for v in box) or box[2] <= box[0] or box[3] <= box[1]:
        raise InputError(f"box {value!r} must be four numbers x1,y1,x2,y2 with x2 > x1 and y2 > y1")
    return box


def parse_where(expr: str) -> tuple[int, int, str, float]:
    """``"hand: hold>=0.5"`` / ``"verb: ride > 0.3"`` / ``"kick<0.1"`` / ``"object: cup"`` (the person acts on a
    cup: p > 0) / ``"object: cup>=0.5"`` -> (label kind, class, op, value).

    A plain split, not a regular expression: the first ``<`` or ``>`` ends the name, so any input takes time
    linear in its length (a filter is at most MAX_FILTER_CHARS characters)."""
    if not isinstance(expr, str):
        raise QueryError(f"a filter must be text, not {type(expr).__name__}")
    if len(expr) > MAX_FILTER_CHARS:
        raise QueryError(f"a filter has {len(expr):,} characters; at most {MAX_FILTER_CHARS} are read")
    bare_object = expr.strip().lower().startswith("object") and "<" not in expr and ">" not in expr
    text = f"{expr}>0" if bare_object else expr  # an object named without a comparison: the person has one
    cut = min((i for i in (text.find("<"), text.find(">")) if i >= 0), default=-1)
    op = text[cut:cut + 2] if text[cut + 1:cut + 2] == "=" else text[cut:cut + 1]
    name, value = text[:cut].strip(), text[cut + len(op):].strip()
    if cut < 0 or not name or not value or "<" in value or ">" in value:
        raise QueryError(f"cannot read filter {expr!r}; write it like 'hand: hold>=0.5', 'verb: ride>0.3' or "
                         "'object: cup' (comparisons: >=, >, <=, <)")
    try:
        v = float(value)
    except ValueError:
        v = float("nan")
    if not math.isfinite(v):
        raise QueryError(f"{value!r} in filter {expr!r} is not a number") from None
    key = tx.normalize_name(name)
    try:
        if key.startswith("object:"):
            return LABEL_OBJECT, tx.object_index(key[7:].strip()), op, v
        if key.startswith("verb:"):
            kind, idx = "verb", tx.verb_index(key[5:])
        else:
            kind, idx = tx.resolve_label(key)
    except UnknownNameError as e:
        raise QueryError(f"in filter {expr!r}: {e}") from None
    return (LABEL_PASTA if kind == "pasta" else LABEL_VERB), idx, op, v


def make_filters(collection: str | None = None, path: str | None = None, kind: str | None = None,
                 where: list[str] | None = None, cluster: str | None = None) -> Filters:
    """Filters from CLI-style values (``where`` items parsed with :func:`parse_where`, ``cluster`` as
    ``NAME:ID``)."""
    from .clusters import parse_cluster

    if kind not in (None, "image", "video"):
        raise QueryError(f"--kind must be image or video, not {kind!r}")
    if len(where or []) > MAX_FILTERS:
        raise QueryError(f"{len(where):,} filters; at most {MAX_FILTERS} are read")
    return Filters(collection=collection, path_glob=path, kind=kind, where=[parse_where(w) for w in where or []],
                   cluster=parse_cluster(cluster) if cluster else None)


@dataclass(frozen=True)
class SearchOptions:
    """What every search takes besides its query: the page (``k`` results after ``offset``), the filters
    (``collection``, ``path`` glob, ``kind``, ``where`` expressions), at most one hit ``per_media``, a
    ``min_score``, ``group="track"`` (one hit per video moment, scored by the mean of its best
    ``moment_frames`` frame scores), and ``cluster`` (``NAME:ID``: only the persons of one cluster of a stored
    clustering). Checked when made: a bad value is a QueryError naming it."""

    k: int = 10
    offset: int = 0
    collection: str | None = None
    path: str | None = None
    kind: str | None = None
    where: list[str] | None = None
    per_media: bool = False
    min_score: float | None = None
    group: str | None = None
    moment_frames: int = TOP_FRAMES
    cluster: str | None = None

    def __post_init__(self) -> None:
        check_page(self.k, self.offset)
        if self.kind not in (None, "image", "video"):
            raise QueryError(f"--kind must be image or video, not {self.kind!r}")
        if self.group is not None and self.group not in GROUPS:
            raise QueryError(f"--group must be one of {', '.join(GROUPS)}, not {self.group!r}")
        if not isinstance(self.moment_frames, (int, np.integer)) or self.moment_frames < 1:
            raise QueryError(f"--moment-frames must be >= 1 (1 scores a moment by its best frame), "
                             f"not {self.moment_frames}")
        if self.min_score is not None and not math.isfinite(self.min_score):
            raise QueryError(f"--min-score must be a finite number, not {self.min_score!r}")

    @classmethod
    def of(cls, options: SearchOptions | None = None, **fields) -> SearchOptions:
        """``options`` (default: the defaults) with the given fields replaced; None values leave a field as is.
        An unknown field is a TypeError, as an unknown keyword argument would be."""
        given = {n: v for n, v in fields.items() if v is not None}
        return replace(options or cls(), **given)

    def filters(self) -> Filters:
        """The filters as the store reads them (QueryError for a bad ``kind`` or ``where``)."""
        return make_filters(self.collection, self.path, self.kind, self.where, self.cluster)


class Searcher:
    """Ranks stored persons against query vectors (see module docstring)."""

    def __init__(self, store: Store):
        self.store = store

    def search(self, vectors: dict[str, np.ndarray], weights: dict[str, float], options: SearchOptions | None = None,
               exclude: set[int] | None = None, query: dict | None = None) -> SearchResult:
        """The page of ``options`` (default: the first 10) of persons, or of moments with ``group="track"``, for
        query vectors (one per space name) with their weights; ``exclude``: person ids that are no result;
        ``query``: how the query was read, returned with the hits."""
        opts = options or SearchOptions()
        k, offset, group, min_score, per_media = opts.k, opts.offset, opts.group, opts.min_score, opts.per_media
        filters = opts.filters()
        weights = {n: float(w) for n, w in weights.items() if w and n in vectors}
        if not weights:
            raise QueryError("the query has no space with a positive weight (--weights VISUAL,LANGUAGE)")
        # a query without a direction in a space (an idle person's language vector) scores 0 there for everyone
        weights = {n: w for n, w in weights.items() if np.all(np.isfinite(vectors[n])) and np.any(vectors[n])}
        if not weights:
            raise QueryError("the query has no direction in any space it is weighted in (its vectors are zero); "
                             "give another query or change --weights VISUAL,LANGUAGE")
        if self.store.space.row() is None:
            raise QueryError(f"the store at {self.store.data_dir} is empty; ingest something first")
        if ACTIVITY in weights and self.store.space.activity_problem():
            raise QueryError(f"no activity space: {self.store.space.activity_problem()}")
        indexes = self.store.indexes.get(list(weights))
        allow = None
        if not filters.empty():
            allow = self.store.filter_person_ids(filters)
            if not len(allow):
                return SearchResult(query or {}, [])
        total = len(allow) if allow is not None else max(idx.ntotal for idx in indexes.values())
        # one space whose index keeps exact vectors: FAISS scores are final (same float16 values as SQLite)
        [single] = weights if len(weights) == 1 else [None]
        direct = single is not None and exact_scores(indexes[single].spec)
        need = offset + k
        pool = need + EXTRA if direct else max(SINGLE_POOL if single else MIN_POOL, 4 * need)
        while True:
            if direct:
                ranked = self._from_index(single, indexes[single], vectors[single], weights[single], pool, allow)
            else:
                cand: set[int] = set()
                for name in weights:
                    _, ids = indexes[name].search(np.asarray(vectors[name], np.float32)[None],
                                                  min(pool, max(total, 1)), allow=allow)
                    cand.update(int(i) for i in ids[0] if i >= 0)
                # a plain page needs only its best ``need`` (and as many more as ``exclude`` may drop: min_score
                # cuts the end); moments and one-per-media look further
                limit = None if group or per_media else need + len(exclude or ())
                ranked = self._rescore(sorted(cand), vectors, weights, limit)
            if group:
                floor = ranked[-1].score if ranked and pool < total else -np.inf
                ranked = self._moments(self._keep(ranked, exclude, None, False), vectors, weights, allow, exclude,
                                       opts.moment_frames)
                ranked = self._keep(ranked, None, min_score, per_media)
                if sum(r.score >= floor for r in ranked) >= need or pool >= total:
                    break
            else:
                ranked = self._keep(ranked, exclude, min_score, per_media)
                if len(ranked) >= need or pool >= total:
                    break
            pool *= 4
        top = ranked[offset:need]
        rows = {r.id: r for r in self.store.persons([r.id for r in top])}
        hits = [self._hit(offset + i + 1, rows[r.id], r.score, r.cosines) for i, r in enumerate(top) if r.id in rows]
        if group:
            self._add_moments(hits, {r.id: r.frame_score for r in top})
            n = opts.moment_frames
            how = "the best frame's score" if n == 1 else f"mean of the best {n} frame scores"
            query = {**(query or {}), "group": group, "aggregate": how}
        return SearchResult(query or {}, hits)

    def _moments(self, ranked: list[Ranked], vectors: dict[str, np.ndarray], weights: dict[str, float], allow,
                 exclude: set[int] | None, top: int) -> list[Ranked]:
        """Candidate persons -> moments (the best person's id, the moment's score, its cosines, the best frame's
        score), best first, ties by person id. Every person of a candidate track that passes the filters is
        re-scored exactly."""
        track_of, members = self.store.tracks_of([r.id for r in ranked])
        allowed = None if allow is None else set(allow.tolist())
        wanted = [pid for ids in members.values() for pid in ids
                  if (allowed is None or pid in allowed) and not (exclude and pid in exclude)]
        # every frame of a candidate track scored the same way, from SQLite (FAISS may hold renormalised vectors)
        known = {r.id: r for r in self._rescore(wanted, vectors, weights)} if wanted else {}
        out = [r._replace(frame_score=r.score) for r in ranked if track_of.get(r.id) is None]
        for ids in members.values():
            scored = sorted((known[i] for i in ids if i in known), key=lambda r: (-r.score, r.id))
            if scored:
                best = scored[0]
                out.append(Ranked(best.id, moment_score(np.array([r.score for r in scored]), top), best.cosines,
                                  best.score))
        out.sort(key=lambda r: (-r.score, r.id))
        return out

    def _add_moments(self, hits: list[Hit], frame_scores: dict[int, float]) -> None:
        """Attach each hit's track as a Moment (time range, size, best frame score, a strip of frames)."""
        tracks, members = self.store.tracks([h.track_id for h in hits if h.track_id is not None])
        picks = {}  # track id -> the persons of its strip, spread over the track
        for t in tracks.values():
            ids = members[t.id]
            n = min(STRIP, len(ids))
            picks[t.id] = sorted({ids[round(j * (len(ids) - 1) / max(n - 1, 1))] for j in range(n)})
        rows = {r.id: r for r in self.store.persons([pid for ids in picks.values() for pid in ids])}
        for h in hits:
            t = tracks.get(h.track_id)
            if t is None:
                continue
            strip = [{"person_id": r.id, "t_sec": r.t_sec, "frame_index": r.frame_index,
                      "box": [round(v, 2) for v in r.box]} for r in (rows[i] for i in picks[t.id] if i in rows)]
            h.moment = Moment(track=t.id, t_start=t.t_start, t_end=t.t_end, persons=t.persons,
                              frame_score=frame_scores[h.person_id], strip=strip)

    @staticmethod
    def _from_index(name: str, index, vector: np.ndarray, weight: float, pool: int, allow) -> list[Ranked]:
        scores, ids = index.search(np.asarray(vector, np.float32)[None], pool, allow=allow)
        found = [(int(i), float(c)) for i, c in zip(ids[0], scores[0], strict=True) if i >= 0]
        found.sort(key=lambda t: (-t[1], t[0]))
        return [Ranked(pid, weight * cos, {name: cos}) for pid, cos in found]

    def _rescore(self, ids: list[int], vectors: dict[str, np.ndarray], weights: dict[str, float],
                 limit: int | None = None) -> list[Ranked]:
        """Exact fused scores of candidates from their stored vectors, best first, ties by id (the best ``limit``
        only, when given)."""
        stored = self.store.person_vectors(ids)
        pids = stored.ids
        if not len(pids):
            return []
        vecs = self.store.space.vectors(stored.visual, stored.pasta, stored.verbs, stored.norms, tuple(weights),
                                  stored.objects)
        cos = {n: vecs[n] @ np.asarray(vectors[n], np.float32) for n in weights}
        score = sum(weights[n] * cos[n] for n in weights)
        order = np.lexsort((pids, -score))[:limit]
        return [Ranked(int(pids[i]), float(score[i]), {n: float(c[i]) for n, c in cos.items()}) for i in order]

    def _keep(self, ranked: list[Ranked], exclude: set[int] | None, min_score: float | None,
              per_media: bool) -> list[Ranked]:
        if exclude:
            ranked = [r for r in ranked if r.id not in exclude]
        if min_score is not None:
            ranked = [r for r in ranked if r.score >= min_score]
        if per_media:
            media = self.store.media_ids_of([r.id for r in ranked])
            seen: set[int] = set()
            unique = []
            for r in ranked:
                if r.id in media and media[r.id] not in seen:
                    seen.add(media[r.id])
                    unique.append(r)
            ranked = unique
        return ranked

    @staticmethod
    def _hit(rank: int, row: PersonRow, score: float, cos: dict[str, float]) -> Hit:
        return Hit(rank=rank, person_id=row.id, score=score, path=row.path, box=list(row.box),
                   frame_index=row.frame_index, t_sec=row.t_sec, kind=row.kind, collection=row.collection,
                   media_id=row.media_id, pasta=top_labels(row.pasta, tx.PASTA_NAMES, skip=tx.NO_INTERACTION_PASTA),
                   verbs=top_labels(row.verbs, tx.VERB_NAMES, skip=(tx.NO_INTERACTION_VERB,)), cosines=cos,
                   track_id=row.track_id, objects=row.objects)

    def person(self, person_id: int) -> PersonRow:
        """A stored person, or QueryError naming the id."""
        rows = self.store.persons([int(person_id)])
        if not rows:
            raise NotFoundError(f"no person with id {person_id} in {self.store.data_dir} "
                                "(ids come from search results)")
        return rows[0]
