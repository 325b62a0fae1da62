"""PaSta and verb probabilities by class, for ``--where`` filters and per-class counts.

Persons are cut into chunks of ``LABEL_CHUNK`` consecutive ids (``label_chunks``). For each closed chunk and each
of the 250 classes, ``label_columns`` holds the chunk's probabilities of that class (float16, in id order) and how
many of them reach each level 0.01, 0.02, ..., 1.0. The persons after the last chunk, the *tail* (fewer than
``LABEL_CHUNK``), are read from their own ``pasta``/``verbs`` blobs. Writing a person therefore adds no row of its
own: the writer closes a chunk (250 rows) in the transaction whose persons fill it (:func:`close_chunks`), and a
deletion rewrites the chunks that held the deleted persons (:func:`drop_persons`). The values are the stored
float16 probabilities, so a filter here answers exactly what a scan of the blobs would.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.orm import Session

from .blobs import stack16
from .schema import LABEL_PASTA, LABEL_VERB, LabelChunk, LabelColumn, Person

#: persons per chunk: a one-class filter reads 16 KB per chunk, the tail is at most this many persons' blobs
LABEL_CHUNK = 8192
#: the levels whose counts each column keeps: 0.01, 0.02, ..., 1.0 (as float32, the filters' comparison type)
LEVELS = (np.arange(1, 101) / 100).astype(np.float32)
#: the classes of each kind, in column order
KINDS = ((LABEL_PASTA, 93), (LABEL_VERB, 157))
OPS = {">=": np.greater_equal, ">": np.greater, "<=": np.less_equal, "<": np.less}


def boundary(s: Session) -> int:
    """The last person id held in closed chunks (0 when none): the tail is the persons after it."""
    return int(s.execute(select(func.max(LabelChunk.last_id))).scalar() or 0)


def _tail(s: Session, after: int, limit: int | None = None) -> tuple[np.ndarray, dict[int, np.ndarray]]:
    """(ids (n,), {kind: (n, classes) float32}) of the persons after ``after``, in id order."""
    q = select(Person.id, Person.pasta, Person.verbs).where(Person.id > after).order_by(Person.id)
    rows = s.execute(q if limit is None else q.limit(limit)).all()
    ids = np.fromiter((r[0] for r in rows), np.int64, len(rows))
    return ids, {LABEL_PASTA: stack16([r[1] for r in rows], 93), LABEL_VERB: stack16([r[2] for r in rows], 157)}


def level_counts(p: np.ndarray) -> np.ndarray:
    """(n, c) probabilities -> (c, 100) uint16: how many of each column reach each of ``LEVELS`` (NaN: none)."""
    n, c = p.shape
    reached = np.searchsorted(LEVELS, np.nan_to_num(p, nan=0.0), side="right")  # (n, c): levels <= p
    hist = np.bincount((np.arange(c) * 101 + reached).ravel(), minlength=c * 101).reshape(c, 101)
    return np.cumsum(hist[:, ::-1], axis=1)[:, ::-1][:, 1:].astype(np.uint16)  # (c, 100): count with level >= k


def _column_rows(first_id: int, probs: dict[int, np.ndarray]) -> list[dict]:
    rows = []
    for kind, p in probs.items():
        p16 = np.ascontiguousarray(p.T.astype(np.float16))  # (classes, n)
        hist = level_counts(p)
        rows += [{"kind": kind, "cls": c, "chunk": first_id, "p": p16[c].tobytes(), "hist": hist[c].tobytes()}
                 for c in range(p.shape[1])]
    return rows


def close_chunks(s: Session, each: Callable[[], None] | None = None) -> int:
    """Close a chunk for every ``LABEL_CHUNK`` tail persons (in the caller's transaction), calling ``each`` after
    each one; returns how many."""
    assert LABEL_CHUNK < 2 ** 16  # counts are uint16
    closed = 0
    while True:
        after = boundary(s)
        n = s.execute(select(func.count(Person.id)).where(Person.id > after)).scalar() or 0
        if n < LABEL_CHUNK:
            return closed
        ids, probs = _tail(s, after, LABEL_CHUNK)
        first, last = after + 1, int(ids[-1])
        whole = len(ids) == last - first + 1  # every id of the range (no deletion): ids need not be stored
        s.execute(insert(LabelChunk).values(first_id=first, last_id=last, ids=None if whole else ids.tobytes()))
        s.execute(insert(LabelColumn), _column_rows(first, probs))
        closed += 1
        if each is not None:
            each()


def _chunk_ids(first: int, last: int, ids: bytes | None) -> np.ndarray:
    return np.arange(first, last + 1, dtype=np.int64) if ids is None else np.frombuffer(ids, np.int64)


def drop_persons(s: Session, person_ids: Sequence[int] | np.ndarray) -> None:
    """Take deleted persons out of the closed chunks that held them (the tail needs nothing)."""
    gone = np.unique(np.asarray(person_ids, np.int64))
    if not len(gone):
        return
    q = select(LabelChunk.first_id, LabelChunk.last_id, LabelChunk.ids).where(
        LabelChunk.last_id >= int(gone[0]), LabelChunk.first_id <= int(gone[-1]))
    for first, last, blob in s.execute(q).all():
        ids = _chunk_ids(first, last, blob)
        keep = ~np.isin(ids, gone)
        if keep.all():
            continue
        s.execute(update(LabelChunk).where(LabelChunk.first_id == first).values(ids=ids[keep].tobytes()))
        cols = s.execute(select(LabelColumn.kind, LabelColumn.cls, LabelColumn.p).where(
            LabelColumn.chunk == first)).all()
        rows = []
        for kind, cls, p in cols:
            kept = np.frombuffer(p, np.float16)[keep]
            rows.append({"kind": kind, "cls": cls, "chunk": first, "p": kept.tobytes(),
                         "hist": level_counts(kept.astype(np.float32)[:, None])[0].tobytes()})
        s.execute(delete(LabelColumn).where(LabelColumn.chunk == first))
        s.execute(insert(LabelColumn), rows)


def rebuild(s: Session) -> int:
    """Recompute every chunk from the persons' blobs (upgrades and repairs); returns the number of chunks."""
    s.execute(delete(LabelColumn))
    s.execute(delete(LabelChunk))
    return close_chunks(s)


def where_ids(s: Session, where: Sequence[tuple[int, int, str, float]]) -> np.ndarray:
    """The sorted ids of the persons whose stored probabilities pass every ``(kind, cls, op, value)``."""
    chunks = {first: _chunk_ids(first, last, ids) for first, last, ids in s.execute(
        select(LabelChunk.first_id, LabelChunk.last_id, LabelChunk.ids).order_by(LabelChunk.first_id))}
    tail_ids, tail = _tail(s, boundary(s))
    out: np.ndarray | None = None
    for kind, cls, op, value in where:
        test, v = OPS[op], np.float32(value)
        parts = []
        q = select(LabelColumn.chunk, LabelColumn.p).where(LabelColumn.kind == kind, LabelColumn.cls == cls)
        for chunk, p in s.execute(q.order_by(LabelColumn.chunk)):
            parts.append(chunks[chunk][test(np.frombuffer(p, np.float16), v)])
        parts.append(tail_ids[test(tail[kind][:, cls], v)])
        ids = np.concatenate(parts)
        out = ids if out is None else np.intersect1d(out, ids, assume_unique=True)
    return np.zeros(0, np.int64) if out is None else out


def count_at_least(s: Session, p: float) -> dict[int, np.ndarray]:
    """{kind: (classes,) int64}: how many persons of each class have a probability >= ``p``. On the 0.01 grid
    (0.01 ... 1.0) it adds up the columns' stored counts (250 small rows per chunk); elsewhere it reads the
    columns."""
    v = np.float32(p)
    level = int(round(float(p) * 100))
    out = {kind: np.zeros(n, np.int64) for kind, n in KINDS}
    if 1 <= level <= 100 and LEVELS[level - 1] == v:
        for kind, cls, hist in s.execute(select(LabelColumn.kind, LabelColumn.cls, LabelColumn.hist)):
            out[kind][cls] += int(np.frombuffer(hist, np.uint16)[level - 1])
    else:
        for kind, cls, col in s.execute(select(LabelColumn.kind, LabelColumn.cls, LabelColumn.p)):
            out[kind][cls] += int(np.count_nonzero(np.frombuffer(col, np.float16) >= v))
    _, tail = _tail(s, boundary(s))
    for kind, _ in KINDS:
        out[kind] += np.count_nonzero(tail[kind] >= v, axis=0)
    return out
