"""The query layer: vectors in, ranked persons out.

Every query becomes one vector per space (visual, language and, with trained heads, activity: A2V's classifier
feature) and a weight per space. Candidates come from the FAISS indexes (filters applied inside the search as
allow-lists of ids), then every candidate is re-scored exactly from SQLite: ``score = sum of w_space *
cos_space``. Ties break by person id, and the candidate pool is at least ``MIN_POOL`` per index, so pages of a
query are disjoint and consistent.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np

from db import repo
from db.repo import Filters, PersonRow

from . import taxonomy as tx
from .activity import ACTIVITY
from .errors import NotFoundError, QueryError, UnknownNameError
from .store import Store

MIN_POOL = 256  # candidates per index for fused queries
EXTRA = 16  # extra candidates when one exact index ranks alone (ties at the cut)
TOP = 5


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

    def as_dict(self) -> dict:
        return {"rank": self.rank, "person_id": self.person_id, "score": round(self.score, 6), "path": self.path,
                "box": [round(v, 2) for v in self.box], "frame_index": self.frame_index, "t_sec": self.t_sec,
                "pasta": [[n, round(p, 4)] for n, p in self.pasta], "verbs": [[n, round(p, 4)] for n, p in self.verbs]}


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


def exact_scores(spec: str) -> bool:
    """True for FAISS index types that keep the vectors themselves (Flat, IVF..,Flat, HNSW), so their scores are
    the exact cosines; False for quantised ones (SQ, PQ, ...), whose candidates are re-scored from SQLite."""
    return not re.search(r"SQ|PQ|RQ|LSH|RaBitQ", spec)


def parse_where(expr: str) -> tuple[int, int, str, float]:
    """``"hand: hold>=0.5"`` / ``"verb: ride > 0.3"`` / ``"kick<0.1"`` -> (label kind, class, op, value)."""
    m = re.match(r"^\s*(.+?)\s*(>=|<=|>|<)\s*([-+0-9.eE]+)\s*$", expr or "")
    if not m:
        raise QueryError(f"cannot read filter {expr!r}; write it like 'hand: hold>=0.5' or 'verb: ride>0.3' "
                         "(comparisons: >=, >, <=, <)")
    name, op, value = m.groups()
    try:
        v = float(value)
    except ValueError:
        raise QueryError(f"{value!r} in filter {expr!r} is not a number") from None
    key = tx.normalize_name(name)
    try:
        if key.startswith("verb:"):
            kind, idx = "verb", tx.verb_index(key[5:])
        else:
            kind, idx = tx.resolve_label(key)
    except UnknownNameError as e:
        raise QueryError(f"in filter {expr!r}: {e}") from None
    return (repo.LABEL_PASTA if kind == "pasta" else repo.LABEL_VERB), idx, op, v


def make_filters(collection: str | None = None, path: str | None = None, kind: str | None = None,
                 where: list[str] | None = None) -> Filters:
    """Filters from CLI-style values (``where`` items parsed with :func:`parse_where`)."""
    if kind not in (None, "image", "video"):
        raise QueryError(f"--kind must be image or video, not {kind!r}")
    return Filters(collection=collection, path_glob=path, kind=kind, where=[parse_where(w) for w in where or []])


class Searcher:
    """Ranks stored persons against query vectors (see module docstring)."""

    def __init__(self, store: Store):
        self.store = store

    def search(self, vectors: dict[str, np.ndarray], weights: dict[str, float], k: int = 10, offset: int = 0,
               filters: Filters | None = None, per_media: bool = False, min_score: float | None = None,
               exclude: set[int] | None = None, query: dict | None = None) -> SearchResult:
        """Top ``k`` persons after ``offset`` for query vectors (one per space name) with their weights."""
        if k < 1 or offset < 0:
            raise QueryError("-k must be >= 1 and --offset >= 0")
        weights = {n: float(w) for n, w in weights.items() if w and n in vectors}
        if not weights:
            raise QueryError("the query has no space with a positive weight (--weights VISUAL,LANGUAGE)")
        if self.store.space_row() is None:
            raise QueryError(f"the store at {self.store.data_dir} is empty; ingest something first")
        if ACTIVITY in weights and self.store.activity_problem():
            raise QueryError(f"no activity space: {self.store.activity_problem()}")
        indexes = self.store.indexes(list(weights))
        allow = None
        if filters is not None and not filters.empty():
            with self.store.db.session() as s:
                allow = repo.filter_person_ids(s, filters)
            if not len(allow):
                return SearchResult(query or {}, [])
        total = len(allow) if allow is not None else max(idx.ntotal for idx in indexes.values())
        # one space whose index keeps exact vectors: FAISS scores are final (same float16 values as SQLite)
        [single] = weights if len(weights) == 1 else [None]
        direct = single is not None and exact_scores(indexes[single].spec)
        need = offset + k
        pool = need + EXTRA if direct else max(MIN_POOL, 4 * need)
        while True:
            if direct:
                ranked = self._from_index(single, indexes[single], vectors[single], weights[single], pool, allow)
            else:
                cand: set[int] = set()
                for name in weights:
                    _, ids = indexes[name].search(np.asarray(vectors[name], np.float32)[None],
                                                  min(pool, max(total, 1)), allow=allow)
                    cand.update(int(i) for i in ids[0] if i >= 0)
                ranked = self._rescore(sorted(cand), vectors, weights)
            ranked = self._keep(ranked, exclude, min_score, per_media)
            if len(ranked) >= need or pool >= total:
                break
            pool *= 4
        top = ranked[offset:need]
        with self.store.db.session() as s:
            rows = {r.id: r for r in repo.fetch_persons(s, [pid for pid, _, _ in top])}
        hits = [self._hit(offset + i + 1, rows[pid], score, cos)
                for i, (pid, score, cos) in enumerate(top) if pid in rows]
        return SearchResult(query or {}, hits)

    @staticmethod
    def _from_index(name: str, index, vector: np.ndarray, weight: float, pool: int, allow) -> list:
        scores, ids = index.search(np.asarray(vector, np.float32)[None], pool, allow=allow)
        found = [(int(i), float(c)) for i, c in zip(ids[0], scores[0], strict=True) if i >= 0]
        found.sort(key=lambda t: (-t[1], t[0]))
        return [(pid, weight * cos, {name: cos}) for pid, cos in found]

    def _rescore(self, ids: list[int], vectors: dict[str, np.ndarray], weights: dict[str, float]) -> list:
        """Exact fused scores of candidates from their stored vectors: [(id, score, cosines)], best first, ties by
        id."""
        with self.store.db.session() as s:
            stored = repo.fetch_vectors(s, ids)
        pids = stored.ids
        if not len(pids):
            return []
        cos = {}
        if "visual" in weights:
            cos["visual"] = stored.visual @ np.asarray(vectors["visual"], np.float32)
        if "language" in weights:
            lang = self.store.language().embed(stored.pasta, stored.verbs)
            cos["language"] = lang @ np.asarray(vectors["language"], np.float32)
        if ACTIVITY in weights:
            act = self.store.activity_vectors(stored.visual, stored.norms)
            cos[ACTIVITY] = act @ np.asarray(vectors[ACTIVITY], np.float32)
        score = sum(weights[n] * cos[n] for n in weights)
        order = np.lexsort((pids, -score))
        return [(int(pids[i]), float(score[i]), {n: float(c[i]) for n, c in cos.items()}) for i in order]

    def _keep(self, ranked: list, exclude: set[int] | None, min_score: float | None, per_media: bool) -> list:
        if exclude:
            ranked = [r for r in ranked if r[0] not in exclude]
        if min_score is not None:
            ranked = [r for r in ranked if r[1] >= min_score]
        if per_media:
            with self.store.db.session() as s:
                media = repo.media_ids_of(s, [r[0] for r in ranked])
            seen: set[int] = set()
            unique = []
            for r in ranked:
                if r[0] in media and media[r[0]] not in seen:
                    seen.add(media[r[0]])
                    unique.append(r)
            ranked = unique
        return ranked

    @staticmethod
    def _hit(rank: int, row: PersonRow, score: float, cos: dict[str, float]) -> Hit:
        return Hit(rank=rank, person_id=row.id, score=score, path=row.path, box=list(row.box),
                   frame_index=row.frame_index, t_sec=row.t_sec, kind=row.kind, collection=row.collection,
                   media_id=row.media_id, pasta=top_labels(row.pasta, tx.PASTA_NAMES, skip=tx.NO_INTERACTION_PASTA),
                   verbs=top_labels(row.verbs, tx.VERB_NAMES, skip=(tx.NO_INTERACTION_VERB,)), cosines=cos)

    def person(self, person_id: int) -> PersonRow:
        """A stored person, or QueryError naming the id."""
        with self.store.db.session() as s:
            rows = repo.fetch_persons(s, [int(person_id)])
        if not rows:
            raise NotFoundError(f"no person with id {person_id} in {self.store.data_dir} "
                                "(ids come from search results)")
        return rows[0]
