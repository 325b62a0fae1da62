"""Activity counts: how many persons show each PaSta, verb, object, verb + PaSta pair and verb + object pair
(probability >= COUNT_MIN_P; an object's is the best ``p`` of its class among the person's objects).

Two ways to the same numbers:

- **kept**: ``activity_counts`` holds the counts of every (collection, media kind), updated in the transaction
  that adds or removes persons (:func:`count_added`, :func:`uncount`); an overview of a whole store, a
  collection or a kind sums a few rows (:func:`read_counts`), whatever the number of persons.
- **scanned**: :func:`scan_counts` reads the probabilities of given persons (any filter) and counts them.

Example persons of a label are the ones with the highest probability of it (ties: the smaller id); of a pair,
the highest probability of its verb among the persons that show both. Kept counts take them from the newest
persons of the collection / kind (:func:`pool_examples`: a quarter of ``EXAMPLE_POOL``, all of it for labels short
of examples there; bounded work whatever the store's size); a scan from every person it counts. Tests check that
both ways agree. Keys of labels and pairs: ``("pasta", c)``, ``("verbs", v)``, ``("objects", o)``,
``("verb_pasta", v, c)``, ``("verb_object", v, o)``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import lru_cache

import numpy as np
from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from .schema import COUNT_MIN_P, ActivityCount, Media, Person, PersonObject
from .sql import chunks, dbapi, rows_in
from .values import COUNT_FIELDS, N_OBJECTS, N_PASTA, N_VERBS, Counts

PAIRS = ("verb_pasta", "verb_object")
EXAMPLE_POOL = 20000  # the newest persons the kept counts' examples come from


def _pairs(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(A, B) int64 counts of rows where both columns hold, for bool (n, A) and (n, B)."""
    out = np.zeros((a.shape[1], b.shape[1]), np.int64)
    if not b.any():  # persons with no object: no product to make
        return out
    for i in range(0, len(a), 1 << 20):  # float32 sums are exact below 2^24 persons a block
        out += np.rint(a[i:i + (1 << 20)].astype(np.float32).T @ b[i:i + (1 << 20)].astype(np.float32)
                       ).astype(np.int64)
    return out


@lru_cache(maxsize=8)
def _first_float16_at_least(min_p: float) -> int:
    """The bits of the smallest non-negative float16 that is >= ``min_p`` (as float32): non-negative float16 values
    are in the order of their bits, 0x0000 (0.0) to 0x7C00 (infinity)."""
    values = np.arange(0x7C01, dtype=np.uint32).astype(np.uint16).view(np.float16).astype(np.float32)
    return int(np.searchsorted(values, np.float32(min_p)))


def at_least(p: np.ndarray, min_p: float) -> np.ndarray:
    """``p >= min_p`` (bool, p's shape) with the value compared as float32; float16 ``p`` (stored probabilities)
    through its bits, without widening each value (numpy casts float16 one value at a time): NaN and negative
    values never pass, as in the float comparison."""
    p = np.asarray(p)
    if p.dtype != np.float16 or min_p <= 0:
        return p >= np.float32(min_p)
    bits = p.view(np.uint16)
    return (bits >= _first_float16_at_least(float(min_p))) & (bits <= 0x7C00)


def count_block(pasta: np.ndarray, verbs: np.ndarray, objects: np.ndarray | None = None,
                min_p: float = COUNT_MIN_P) -> Counts:
    """Counts of persons given their stored probabilities: pasta (n, 93), verbs (n, 157) (float16 values, as
    float16 or float32) and the largest p of each object class (n, 80) as float32 (``values.object_probs``; None: no
    objects)."""
    p = at_least(pasta, min_p)  # (n, 93)
    v = at_least(verbs, min_p)  # (n, 157)
    o = np.zeros((len(p), N_OBJECTS), bool) if objects is None else np.asarray(objects) >= np.float32(min_p)  # (n, 80)
    return Counts(len(p), p.sum(0, dtype=np.int64), v.sum(0, dtype=np.int64), o.sum(0, dtype=np.int64),
                  _pairs(v, p), _pairs(v, o))


_OBJECTS_IN_RANGE = "SELECT person_id, cls, p FROM objects WHERE person_id BETWEEN ? AND ?"
_OBJECTS_OF = "SELECT person_id, cls, p FROM objects WHERE person_id IN (SELECT value FROM json_each(?))"


def stored_objects(s: Session, ids: Sequence[int]) -> np.ndarray:
    """float32 (n, 80): the largest p of each object class of the stored persons ``ids`` (rows in that order; 0
    where a person has none), as ``values.object_probs`` makes them for new persons (read here through a DBAPI cursor:
    bulk reads of counts and examples). Ids that lie close together are read as one range of the objects' key."""
    ids = np.asarray(ids, np.int64)
    out = np.zeros((len(ids), N_OBJECTS), np.float32)
    if not len(ids):
        return out
    order = np.argsort(ids, kind="stable")
    ranked = ids[order]
    lo, hi = int(ranked[0]), int(ranked[-1])
    if hi - lo < 4 * len(ids):
        found = dbapi(s).execute(_OBJECTS_IN_RANGE, (lo, hi)).fetchall()
    else:
        found = rows_in(s, _OBJECTS_OF, ranked.tolist(), fallback=lambda chunk: select(
            PersonObject.person_id, PersonObject.cls, PersonObject.p).where(PersonObject.person_id.in_(chunk)))
    if found:
        pid, cls, prob = (np.array(c) for c in zip(*found, strict=True))
        at = np.searchsorted(ranked, pid)
        mine = (at < len(ranked)) & (ranked[np.minimum(at, len(ranked) - 1)] == pid)
        np.maximum.at(out, (order[at[mine]], cls[mine].astype(np.int64)), prob[mine].astype(np.float32))
    return out


# ------------------------------------------------------------------ kept counts


_READ_COUNTS = "SELECT facet, counts FROM activity_counts WHERE collection = ? AND kind = ?"
_DELETE_COUNTS = "DELETE FROM activity_counts WHERE collection = ? AND kind = ?"
_WRITE_COUNTS = ("INSERT INTO activity_counts (collection, kind, facet, counts) VALUES (?, ?, ?, ?) "
                 "ON CONFLICT (collection, kind, facet) DO UPDATE SET counts = excluded.counts")


def _add(s: Session, collection: str, kind: str, delta: Counts) -> None:
    """Add ``delta`` to the kept counts of (collection, kind): the facets it changes are written (a pair table is
    ~100 KB; every write transaction comes here, through the DBAPI cursor)."""
    cursor = dbapi(s)
    rows = dict(cursor.execute(_READ_COUNTS, (collection, kind)).fetchall())
    total = Counts.from_blobs(rows) + delta
    if total.persons <= 0:
        cursor.execute(_DELETE_COUNTS, (collection, kind))
        return
    changed = {"persons"} | {f for f in COUNT_FIELDS if getattr(delta, f).any()}
    cursor.executemany(_WRITE_COUNTS, [(collection, kind, facet, blob) for facet, blob in total.blobs().items()
                                       if facet in changed or facet not in rows])


def count_added(s: Session, groups: dict[tuple[str, str], tuple[np.ndarray, np.ndarray, np.ndarray]],
                removed: dict[tuple[str, str], Counts] | None = None) -> None:
    """Count new persons: (collection, kind) -> their stored (float16 values) pasta (n, 93) and verbs (n, 157),
    and their objects' ``values.object_probs`` (n, 80); less the ``removed`` counts (:func:`removed_counts`) of the
    persons they replace, so that each (collection, kind) is read and written once."""
    deltas = {key: -c for key, c in (removed or {}).items()}
    for key, (pasta, verbs, objects) in groups.items():
        if len(pasta):
            added = count_block(pasta, verbs, objects)
            deltas[key] = deltas[key] + added if key in deltas else added
    for (collection, kind), delta in deltas.items():
        _add(s, collection, kind, delta)


_PERSONS_OF_MEDIA = ("SELECT p.id, p.pasta, p.verbs, m.collection, m.kind FROM persons p JOIN media m ON "
                     "m.id = p.media_id WHERE p.media_id IN (SELECT value FROM json_each(?))")


def stored_rows(s: Session, media_ids: Sequence[int]) -> list[tuple]:
    """(id, pasta blob, verbs blob, collection, kind) of the persons of these media, by id: what the write path's
    removals of replaced and deleted media need, read once."""
    out = rows_in(s, _PERSONS_OF_MEDIA, [int(m) for m in media_ids], fallback=lambda chunk: select(
        Person.id, Person.pasta, Person.verbs, Media.collection, Media.kind).join(
        Media, Media.id == Person.media_id).where(Person.media_id.in_(chunk)))
    return sorted(map(tuple, out))


def removed_counts(s: Session, rows: Sequence[tuple]) -> dict[tuple[str, str], Counts]:
    """The counts of stored persons about to be removed, by (collection, kind); ``rows`` as :func:`stored_rows`
    gives them (read before the persons' objects are deleted)."""
    return {key: count_block(*arrays) for key, arrays in _grouped(s, rows).items()}


def _grouped(s: Session, rows) -> dict[tuple[str, str], tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Rows (id, pasta, verbs, collection, kind) -> (collection, kind) -> (pasta, verbs, objects) arrays."""
    from .blobs import stack16 as _stack16

    by: dict[tuple[str, str], list] = {}
    for r in rows:
        by.setdefault((r[3], r[4]), []).append(r)
    return {key: (_stack16([r[1] for r in rs], N_PASTA), _stack16([r[2] for r in rs], N_VERBS),
                  stored_objects(s, [r[0] for r in rs])) for key, rs in by.items()}


def uncount(s: Session, rows: Sequence[tuple]) -> None:
    """Take stored persons (``rows`` as :func:`stored_rows` gives them) out of the kept counts, before they are
    deleted."""
    for key, counts in removed_counts(s, rows).items():
        _add(s, *key, -counts)


def same(a: Counts, b: Counts) -> bool:
    """Whether two counts agree everywhere."""
    return a.persons == b.persons and all(np.array_equal(getattr(a, f), getattr(b, f)) for f in COUNT_FIELDS)


def recount_all(s: Session, chunk: int = 20000) -> None:
    """Recompute every kept count from the stored persons (the schema upgrade; ``doctor --repair``)."""
    s.execute(delete(ActivityCount))
    last = -1
    while True:
        rows = s.execute(select(Person.id, Person.pasta, Person.verbs, Media.collection, Media.kind)
                         .join(Media, Media.id == Person.media_id).where(Person.id > last)
                         .order_by(Person.id).limit(chunk)).all()
        if not rows:
            return
        for key, arrays in _grouped(s, rows).items():
            _add(s, *key, count_block(*arrays))
        last = rows[-1][0]


def read_counts(s: Session, collection: str | None = None, kind: str | None = None) -> Counts:
    """The kept counts of the persons of a collection and / or kind (None: all)."""
    q = select(ActivityCount.collection, ActivityCount.kind, ActivityCount.facet, ActivityCount.counts)
    if collection is not None:
        q = q.where(ActivityCount.collection == collection)
    if kind is not None:
        q = q.where(ActivityCount.kind == kind)
    by: dict[tuple[str, str], dict[str, bytes]] = {}
    for c, k, facet, blob in s.execute(q):
        by.setdefault((c, k), {})[facet] = blob
    total = Counts.zero()
    for blobs in by.values():
        total = total + Counts.from_blobs(blobs)
    return total


# ------------------------------------------------------------------ examples


def pool_examples(s: Session, keys: Sequence[tuple], examples: int, min_p: float = COUNT_MIN_P,
                  collection: str | None = None, kind: str | None = None, pool: int = EXAMPLE_POOL) -> dict:
    """``examples`` example persons of each label and pair of ``keys`` among the newest persons (largest ids) of a
    collection and / or media kind: the kept counts' examples. The newest ``pool // 4`` persons are read first;
    the next ones, up to ``pool`` in all, only when a label or pair has fewer than ``examples`` there."""
    if not examples:
        return {}
    best: dict[tuple, list[tuple[float, int]]] = {}
    before, todo = None, list(keys)
    for size in (pool // 4, pool - pool // 4):
        rows = _newest_rows(s, size, before, collection, kind)
        if not rows:
            break
        pid, pasta, verbs, objects = _block(s, rows[::-1])
        _examples(best, pid, pasta, verbs, objects, todo, examples, min_p)
        todo, before = [k for k in todo if len(best.get(tuple(k), ())) < examples], int(pid[0])
        if not todo:
            break
    return {key: [i for _, i in items] for key, items in best.items()}


def kept_counts(s: Session, collection: str | None, kind: str | None, examples: int,
                choose: Callable[[Counts], list[tuple]]) -> tuple[Counts, dict, str]:
    """The kept counts of a whole store, a collection or a media kind, with ``examples`` example persons (of its
    newest persons, :func:`pool_examples`) of the labels and pairs ``choose(counts)`` names: (counts, {key: ids},
    "kept")."""
    counts = read_counts(s, collection, kind)
    keys = choose(counts)
    found = pool_examples(s, keys, examples, COUNT_MIN_P, collection, kind)
    return counts, {k: found.get(k, []) for k in keys}, "kept"


def scanned_counts(s: Session, ids: np.ndarray, examples: int, choose: Callable[[Counts], list[tuple]],
                   min_p: float) -> tuple[Counts, dict, str]:
    """The counts of the persons ``ids`` at ``min_p``, with ``examples`` example persons of the labels and pairs
    ``choose(counts)`` names: (counts, {key: ids}, "scanned")."""
    counts, found = scan_counts(s, ids, examples, min_p=min_p)
    keys = choose(counts)
    if examples and any(k[0] in PAIRS for k in keys):
        found.update(scan_counts(s, ids, examples, keys, min_p=min_p)[1])
    return counts, {k: found.get(k, []) for k in keys}, "scanned"


def _newest_rows(s: Session, n: int, before: int | None, collection: str | None, kind: str | None) -> list:
    """(id, pasta, verbs) of the ``n`` newest persons (ids below ``before``) of a collection and / or kind, newest
    first. Those of the whole store are one read back along the persons' key; those of a collection or kind that
    holds at least 1/16 of the persons too (its persons are met at least every 16th: ``media_id + 0`` keeps SQLite
    from the media index); those of a smaller one are found through the media index, then read by id."""
    media = [c for c, v in ((Media.collection == collection, collection), (Media.kind == kind, kind)) if v is not None]
    q = select(Person.id, Person.pasta, Person.verbs).order_by(Person.id.desc()).limit(n)
    if before is not None:
        q = q.where(Person.id < before)
    if not media:
        return _fetch(s, q)
    if 16 * read_counts(s, collection, kind).persons >= read_counts(s).persons:
        return _fetch(s, q.where((Person.media_id + 0).in_(select(Media.id).where(*media))))
    newest = select(Person.id).join(Media, Media.id == Person.media_id).where(*media)
    newest = newest.where(Person.id < before) if before is not None else newest
    ids = [r[0] for r in _fetch(s, newest.order_by(Person.id.desc()).limit(n))]
    rows = []
    for in_list in chunks(ids):
        rows += _fetch(s, select(Person.id, Person.pasta, Person.verbs).where(Person.id.in_(in_list)))
    return sorted(rows, key=lambda r: -r[0])


def _fetch(s: Session, statement) -> list:
    """Every row (plain tuples) of a SQLAlchemy statement, compiled with its bound parameters and run on the
    session's DBAPI cursor: bulk reads without SQLAlchemy's per-row cost."""
    compiled = statement.compile(dialect=s.get_bind().dialect, compile_kwargs={"render_postcompile": True})
    params = compiled.params
    return dbapi(s).execute(
        compiled.string, [params[name] for name in compiled.positiontup]).fetchall()


def _block(s: Session, rows: list) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Rows (id, pasta blob, verbs blob), ids ascending -> ids (n,), pasta (n, 93), verbs (n, 157), objects (n, 80)."""
    from .blobs import stack16 as _stack16

    pid = np.fromiter((r[0] for r in rows), np.int64, len(rows))
    return (pid, _stack16([r[1] for r in rows], N_PASTA), _stack16([r[2] for r in rows], N_VERBS),
            stored_objects(s, pid))


def _examples(best: dict, pid: np.ndarray, pasta: np.ndarray, verbs: np.ndarray, objects: np.ndarray,
              keys: Sequence[tuple] | None, n: int, min_p: float) -> None:
    """Merge a block's example persons into ``best``: of the labels and pairs of ``keys``, or (None) of every
    label some person of the block shows."""
    probs = {"pasta": pasta, "verbs": verbs, "objects": objects}
    shown = {"pasta": pasta >= np.float32(min_p), "verbs": verbs >= np.float32(min_p),
             "objects": objects >= np.float32(min_p)}
    if keys is None:
        keys = [(name, int(c)) for name, m in shown.items() for c in np.flatnonzero(m.any(0))]
    for key in keys:
        if key[0] in probs:
            _keep_best(best, tuple(key), probs[key[0]][:, key[1]], pid, shown[key[0]][:, key[1]], n)
        elif key[0] in PAIRS:
            both = shown["verbs"][:, key[1]] & shown["pasta" if key[0] == "verb_pasta" else "objects"][:, key[2]]
            if both.any():
                _keep_best(best, tuple(key), verbs[:, key[1]], pid, both, n)


def scan_counts(s: Session, ids: np.ndarray, examples: int, pairs: Sequence[tuple] = (),
                min_p: float = COUNT_MIN_P, chunk: int = 20000) -> tuple[Counts, dict]:
    """Count the persons ``ids`` (sorted) from their stored probabilities and objects, with ``examples`` example
    persons of every PaSta, verb and object, or (``pairs`` given) of the pairs among the keys ``pairs``
    (``("verb_pasta", v, c)``, ``("verb_object", v, o)``; other keys are ignored): (counts, {key: [person ids]})."""
    pairs = [k for k in pairs if k[0] in PAIRS]
    total = Counts.zero()
    best: dict[tuple, list[tuple[float, int]]] = {}
    for start in range(0, len(ids), chunk):
        part = ids[start:start + chunk].tolist()
        rows = []
        for in_list in chunks(part):
            rows += _fetch(s, select(Person.id, Person.pasta, Person.verbs).where(Person.id.in_(in_list)))
        if not rows:
            continue
        rows.sort(key=lambda r: r[0])
        pid, pasta, verbs, objects = _block(s, rows)
        total = total + count_block(pasta, verbs, objects, min_p)
        if examples:
            _examples(best, pid, pasta, verbs, objects, pairs or None, examples, min_p)
    return total, {key: [i for _, i in items] for key, items in best.items()}


def _keep_best(best: dict, key: tuple, p: np.ndarray, ids: np.ndarray, mask: np.ndarray, n: int) -> None:
    """Merge the persons of ``mask`` (ids ascending) into the ``n`` best (highest p, then smallest id) kept under
    ``key`` as (-p, id) pairs."""
    idx = np.flatnonzero(mask)
    if len(idx) > n:  # the n best of this chunk: above the n-th value, then the first ids at it
        vals = p[idx]
        kth = np.partition(vals, len(vals) - n)[len(vals) - n]
        above = idx[vals > kth]
        idx = np.concatenate([above, idx[vals == kth][:n - len(above)]])
    items = sorted(best.get(key, []) + [(-float(p[i]), int(ids[i])) for i in idx])
    best[key] = items[:n]
