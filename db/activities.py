"""Activity counts: how many persons show each PaSta, verb and verb + PaSta pair (probability >= COUNT_MIN_P).

Two ways to the same numbers:

- **kept**: ``activity_counts`` holds the counts of every (collection, media kind), updated in the transaction
  that adds or removes persons (:func:`count_added`, :func:`uncount_media`); an overview of a whole store, a
  collection or a kind sums a few rows (:func:`read_counts`), whatever the number of persons.
- **scanned**: :func:`scan_counts` reads the probabilities of given persons (any filter) and counts them.

Example persons of a label are the ones with the highest probability of it (ties: the smaller id); of a pair,
the highest probability of its verb among the persons that show both. Kept counts take them from the newest
``EXAMPLE_POOL`` persons of the collection / kind (read like a scan: bounded work whatever the store's size); a
scan from every person it counts. Tests check that both ways agree.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import numpy as np
from sqlalchemy import delete, insert, select, update
from sqlalchemy.orm import Session

from .schema import COUNT_MIN_P, ActivityCount, Media, Person
from .sql import chunks
from .values import N_PASTA, N_VERBS, Counts

EXAMPLE_POOL = 20000  # the newest persons the kept counts' examples come from


def count_block(pasta: np.ndarray, verbs: np.ndarray, min_p: float = COUNT_MIN_P) -> Counts:
    """Counts of persons given their stored probabilities: pasta (n, 93), verbs (n, 157) (float16 values)."""
    p = np.asarray(pasta) >= np.float32(min_p)  # (n, 93)
    v = np.asarray(verbs) >= np.float32(min_p)  # (n, 157)
    pairs = np.zeros((N_VERBS, N_PASTA), np.int64)
    for i in range(0, len(p), 1 << 20):  # float32 sums are exact below 2^24 persons a block
        pairs += np.rint(v[i:i + (1 << 20)].astype(np.float32).T @ p[i:i + (1 << 20)].astype(np.float32)
                         ).astype(np.int64)
    return Counts(len(p), p.sum(0, dtype=np.int64), v.sum(0, dtype=np.int64), pairs)


# ------------------------------------------------------------------ kept counts


def _add(s: Session, collection: str, kind: str, delta: Counts) -> None:
    """Add ``delta`` to the kept counts of (collection, kind)."""
    rows = dict(s.execute(select(ActivityCount.facet, ActivityCount.counts).where(
        ActivityCount.collection == collection, ActivityCount.kind == kind)).all())
    total = Counts.from_blobs(rows) + delta
    if total.persons <= 0:
        s.execute(delete(ActivityCount).where(ActivityCount.collection == collection, ActivityCount.kind == kind))
        return
    for facet, blob in total.blobs().items():
        if facet in rows:
            s.execute(update(ActivityCount).where(ActivityCount.collection == collection, ActivityCount.kind == kind,
                                                  ActivityCount.facet == facet).values(counts=blob))
        else:
            s.execute(insert(ActivityCount).values(collection=collection, kind=kind, facet=facet, counts=blob))


def count_added(s: Session, groups: dict[tuple[str, str], tuple[np.ndarray, np.ndarray]]) -> None:
    """Count new persons: (collection, kind) -> their stored (float16 values) pasta (n, 93) and verbs (n, 157)."""
    for (collection, kind), (pasta, verbs) in groups.items():
        if len(pasta):
            _add(s, collection, kind, count_block(pasta, verbs))


def _probability_rows(s: Session, where) -> Iterator[tuple]:
    q = select(Person.id, Person.pasta, Person.verbs, Media.collection, Media.kind).join(
        Media, Media.id == Person.media_id).where(where)
    yield from s.execute(q)


def _grouped(rows) -> dict[tuple[str, str], tuple[np.ndarray, np.ndarray]]:
    from .blobs import stack16 as _stack16

    by: dict[tuple[str, str], list] = {}
    for r in rows:
        by.setdefault((r[3], r[4]), []).append(r)
    return {key: (_stack16([r[1] for r in rs], N_PASTA), _stack16([r[2] for r in rs], N_VERBS))
            for key, rs in by.items()}


def uncount_media(s: Session, media_ids: Sequence[int]) -> None:
    """Take the persons of these media out of the kept counts (before they are deleted or replaced)."""
    media_ids = [int(m) for m in media_ids]
    for chunk in chunks(media_ids):
        for key, (pasta, verbs) in _grouped(_probability_rows(s, Person.media_id.in_(chunk))
                                            ).items():
            _add(s, *key, -count_block(pasta, verbs))


def same(a: Counts, b: Counts) -> bool:
    """Whether two counts agree everywhere."""
    return a.persons == b.persons and all(np.array_equal(getattr(a, f), getattr(b, f))
                                          for f in ("pasta", "verbs", "verb_pasta"))


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
        for key, (pasta, verbs) in _grouped(rows).items():
            _add(s, *key, count_block(pasta, verbs))
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


def newest_ids(s: Session, n: int, collection: str | None = None, kind: str | None = None) -> np.ndarray:
    """The ``n`` newest persons (largest ids) of a collection and / or media kind, ids ascending: where the kept
    counts' examples are drawn from."""
    q = select(Person.id)
    if collection is not None or kind is not None:
        q = q.join(Media, Media.id == Person.media_id)
        if collection is not None:
            q = q.where(Media.collection == collection)
        if kind is not None:
            q = q.where(Media.kind == kind)
    return np.sort(np.fromiter(s.execute(q.order_by(Person.id.desc()).limit(n)).scalars(), np.int64))


def kept_counts(s: Session, collection: str | None, kind: str | None, examples: int,
                choose: Callable[[Counts], list[tuple]]) -> tuple[Counts, dict, str]:
    """The kept counts of a whole store, a collection or a media kind, with ``examples`` example persons (of the
    newest ``EXAMPLE_POOL``) of the labels and pairs ``choose(counts)`` names: (counts, {key: ids}, "kept")."""
    counts = read_counts(s, collection, kind)
    pool = newest_ids(s, EXAMPLE_POOL, collection, kind)
    keys = choose(counts)
    found = scan_counts(s, pool, examples, [k[1:] for k in keys if k[0] == "pair"], COUNT_MIN_P)[1]
    return counts, {k: found.get(k, []) for k in keys}, "kept"


def scanned_counts(s: Session, ids: np.ndarray, examples: int, choose: Callable[[Counts], list[tuple]],
                   min_p: float) -> tuple[Counts, dict, str]:
    """The counts of the persons ``ids`` at ``min_p``, with ``examples`` example persons of the labels and pairs
    ``choose(counts)`` names: (counts, {key: ids}, "scanned")."""
    counts, found = scan_counts(s, ids, examples, min_p=min_p)
    keys = choose(counts)
    pairs = [k[1:] for k in keys if k[0] == "pair"]
    if pairs:
        found.update(scan_counts(s, ids, examples, pairs, min_p=min_p)[1])
    return counts, {k: found.get(k, []) for k in keys}, "scanned"


def scan_counts(s: Session, ids: np.ndarray, examples: int, pairs: Sequence[tuple[int, int]] = (),
                min_p: float = COUNT_MIN_P, chunk: int = 20000) -> tuple[Counts, dict]:
    """Count the persons ``ids`` (sorted) from their stored probabilities, with ``examples`` example persons of
    every PaSta and verb, and of the verb + PaSta ``pairs`` given: (counts, {("pasta"|"verbs", cls) or
    ("pair", verb, pasta): [person ids]})."""
    from .blobs import stack16 as _stack16

    total = Counts.zero()
    best: dict[tuple, list[tuple[float, int]]] = {}
    for start in range(0, len(ids), chunk):
        part = ids[start:start + chunk].tolist()
        rows = []
        for in_list in chunks(part):
            rows += s.execute(select(Person.id, Person.pasta, Person.verbs)
                              .where(Person.id.in_(in_list))).all()
        if not rows:
            continue
        rows.sort(key=lambda r: r[0])
        pid = np.fromiter((r[0] for r in rows), np.int64, len(rows))
        pasta, verbs = _stack16([r[1] for r in rows], N_PASTA), _stack16([r[2] for r in rows], N_VERBS)
        total = total + count_block(pasta, verbs, min_p)
        if not examples:
            continue
        for name, probs in (("pasta", pasta), ("verbs", verbs)):
            for cls in np.flatnonzero((probs >= min_p).any(0)):
                _keep_best(best, (name, int(cls)), probs[:, cls], pid, probs[:, cls] >= min_p, examples)
        for v, c in pairs:
            both = (verbs[:, v] >= min_p) & (pasta[:, c] >= min_p)
            if both.any():
                _keep_best(best, ("pair", v, c), verbs[:, v], pid, both, examples)
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
