"""PaSta and verb probabilities by class, for ``--where`` filters and per-class counts.

Persons are cut into chunks of ``LABEL_CHUNK`` consecutive ids (``label_chunks``). For each closed chunk and each
of the 250 classes, ``label_columns`` holds the chunk's probabilities of that class (float16, in id order) and how
many of them reach each level 0.01, 0.02, ..., 1.0. The persons after the last chunk, the *tail* (fewer than
``LABEL_CHUNK`` ids), are read from their own ``pasta``/``verbs`` blobs. Writing a person therefore adds no row of its
own: the writer closes a chunk (250 rows) in the transaction whose persons fill it (:func:`close_chunks`). A
deletion (a replaced file, ``remove``) only notes the ids in their chunk's ``dead`` list, with their level counts
(``dead_counts``) so that counts subtract them (:func:`drop_persons`); a chunk whose dead reach half of it is
rewritten without them. The values are the stored float16 probabilities, so a filter here answers exactly what a
scan of the blobs would.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from .blobs import stack16
from .schema import LABEL_PASTA, LABEL_VERB, LabelChunk, LabelColumn, Person
from .sql import dbapi

#: persons per chunk: a one-class filter reads 16 KB per chunk, the tail is at most this many persons' blobs
LABEL_CHUNK = 8192
#: the levels whose counts each column keeps: 0.01, 0.02, ..., 1.0 (as float32, the filters' comparison type)
LEVELS = (np.arange(1, 101) / 100).astype(np.float32)
#: the classes of each kind, in column order
KINDS = ((LABEL_PASTA, 93), (LABEL_VERB, 157))
OPS = {">=": np.greater_equal, ">": np.greater, "<=": np.less_equal, "<": np.less}


def boundary(s: Session) -> int:
    """The last person id held in closed chunks (0 when none): the tail is the persons after it."""
    return int(dbapi(s).execute("SELECT max(last_id) FROM label_chunks").fetchone()[0] or 0)


def _probs(rows: Sequence) -> tuple[np.ndarray, dict[int, np.ndarray]]:
    """(id, pasta blob, verbs blob) rows -> (ids (n,), {kind: (n, classes) float16}); a damaged blob is NaN."""
    ids = np.fromiter((r[0] for r in rows), np.int64, len(rows))
    return ids, {LABEL_PASTA: stack16([r[1] for r in rows], 93, np.float16),
                 LABEL_VERB: stack16([r[2] for r in rows], 157, np.float16)}


def _tail(s: Session, after: int) -> tuple[np.ndarray, dict[int, np.ndarray]]:
    """(ids (n,), {kind: (n, classes) float16}) of the persons after ``after``, in id order."""
    return _probs(s.execute(select(Person.id, Person.pasta, Person.verbs).where(Person.id > after)
                            .order_by(Person.id)).all())


def _level_table() -> np.ndarray:
    """(65536,) uint8: for each float16 bit pattern, how many of ``LEVELS`` its value reaches (NaN: none)."""
    values = np.arange(2 ** 16, dtype=np.uint32).astype(np.uint16).view(np.float16).astype(np.float32)
    return np.searchsorted(LEVELS, np.nan_to_num(values, nan=0.0), side="right").astype(np.uint8)


_REACHED = _level_table()


_LEVEL_NUMBERS = np.arange(1, 101, dtype=np.uint8)
#: persons up to which :func:`level_counts` compares each level with each person instead of counting in bins
#: (a replaced file's few persons: ~20-40 us instead of ~100 for 250 columns)
FEW_PERSONS = 8


def level_counts(p16: np.ndarray) -> np.ndarray:
    """(n, c) float16 probabilities -> (c, 100) uint16: how many of each column reach each of ``LEVELS``."""
    n, c = p16.shape
    if n <= FEW_PERSONS:
        reached = _REACHED[np.ascontiguousarray(p16, np.float16).view(np.uint16)]  # (n, c) levels reached
        return (reached[:, :, None] >= _LEVEL_NUMBERS).sum(0, dtype=np.uint16)  # (c, 100)
    key = _REACHED[np.ascontiguousarray(p16, np.float16).view(np.uint16)].astype(np.uint16)  # (n, c) levels reached
    key += np.arange(c, dtype=np.uint16) * 101  # + the column's bins (c * 101 < 2^16)
    hist = np.bincount(key.ravel(), minlength=c * 101).reshape(c, 101)
    return np.cumsum(hist[:, ::-1], axis=1)[:, ::-1][:, 1:].astype(np.uint16)  # (c, 100): count with level >= k


def _column_rows(first_id: int, probs: dict[int, np.ndarray]) -> list[tuple]:
    """The ``label_columns`` rows (kind, cls, chunk, p, hist) of a chunk from its (n, classes) float16
    probabilities of each kind."""
    rows = []
    for kind, p in probs.items():
        columns = np.ascontiguousarray(p.T)  # (classes, n)
        hist = level_counts(p)
        rows += [(kind, c, first_id, columns[c].tobytes(), hist[c].tobytes()) for c in range(p.shape[1])]
    return rows


_CHUNK_PERSONS = "SELECT id, pasta, verbs FROM persons WHERE id BETWEEN ? AND ? ORDER BY id"
_INSERT_CHUNK = "INSERT INTO label_chunks (first_id, last_id, ids) VALUES (?, ?, ?)"
_INSERT_COLUMN = "INSERT INTO label_columns (kind, cls, chunk, p, hist) VALUES (?, ?, ?, ?, ?)"


def close_chunks(s: Session, each: Callable[[], None] | None = None) -> int:
    """Close a chunk for every ``LABEL_CHUNK`` ids after the last chunk (in the caller's transaction), calling
    ``each`` after each one; returns how many. A chunk holds the ids ``k * LABEL_CHUNK + 1`` to
    ``(k + 1) * LABEL_CHUNK`` that exist when it closes."""
    assert LABEL_CHUNK < 2 ** 16  # counts are uint16
    closed = 0
    while True:
        after = boundary(s)
        newest = dbapi(s).execute("SELECT max(id) FROM persons").fetchone()[0] or 0  # O(1): the id b-tree's end
        if newest - after < LABEL_CHUNK:
            return closed
        first, last = after + 1, after + LABEL_CHUNK
        cursor = dbapi(s)  # the write path: the DBAPI cursor, without the ORM's per-row cost
        ids, probs = _probs(cursor.execute(_CHUNK_PERSONS, (first, last)).fetchall())
        whole = len(ids) == LABEL_CHUNK  # every id of the range: the ids need not be stored
        cursor.execute(_INSERT_CHUNK, (first, last, None if whole else ids.tobytes()))
        cursor.executemany(_INSERT_COLUMN, _column_rows(first, probs))
        closed += 1
        if each is not None:
            each()


def _chunk_ids(first: int, last: int, ids: bytes | None) -> np.ndarray:
    """The ids of a chunk's column positions."""
    return np.arange(first, last + 1, dtype=np.int64) if ids is None else np.frombuffer(ids, np.int64)


def _int64(blob: bytes | None) -> np.ndarray:
    return np.frombuffer(blob or b"", np.int64)


_CHUNKS_HOLDING = "SELECT first_id, last_id, ids, dead FROM label_chunks WHERE last_id >= ? AND first_id <= ?"
_DEAD_COUNTS = "SELECT dead_counts FROM label_chunks WHERE first_id = ?"
_SET_DEAD = "UPDATE label_chunks SET dead = ?, dead_counts = ? WHERE first_id = ?"


def drop_persons(s: Session, person_ids: Sequence[int] | np.ndarray, rows: Sequence[tuple] | None = None) -> None:
    """Note persons about to be deleted (call it before deleting them) in the chunks that hold them: their ids
    join the chunk's dead and their level counts its dead counts; a chunk half dead is rewritten without them.
    ``rows``: their (id, pasta blob, verbs blob, ...) when the caller has read them (else they are read here)."""
    if not len(person_ids):  # every write that replaces no file: no query
        return
    gone = np.unique(np.asarray(person_ids, np.int64))
    known = None if rows is None else {r[0]: r[:3] for r in rows}
    gone = gone[gone <= boundary(s)]  # the tail needs nothing: it is read from the persons themselves
    if not len(gone):
        return
    cursor = dbapi(s)  # the write path (a replaced file): literal SQL, no statement to build
    for first, last, ids_blob, dead_blob in cursor.execute(_CHUNKS_HOLDING, (int(gone[0]), int(gone[-1]))).fetchall():
        ids = _chunk_ids(first, last, ids_blob)
        new = np.setdiff1d(gone[(gone >= first) & (gone <= last)], _int64(dead_blob))
        new = new[np.isin(new, ids)]
        if not len(new):
            continue
        dead = np.union1d(_int64(dead_blob), new)
        if 2 * len(dead) >= len(ids):  # rewrite the chunk without its dead
            _rewrite(s, first, ids, dead)
            continue
        if known is not None and all(i in known for i in new.tolist()):
            found = [known[i] for i in new.tolist()]
        else:
            found = s.execute(select(Person.id, Person.pasta, Person.verbs).where(
                Person.id.in_(new.tolist())).order_by(Person.id)).all()
        _, probs = _probs(found)
        counts = level_counts(np.concatenate([probs[kind] for kind, _ in KINDS], axis=1)).astype(np.int64)  # (250, 100)
        counts_blob = cursor.execute(_DEAD_COUNTS, (first,)).fetchone()[0]  # 50 KB: read for the chunks that change
        if counts_blob:
            counts += np.frombuffer(counts_blob, np.uint16).reshape(counts.shape)
        cursor.execute(_SET_DEAD, (dead.tobytes(), counts.astype(np.uint16).tobytes(), first))


def _rewrite(s: Session, first: int, ids: np.ndarray, dead: np.ndarray) -> None:
    """Write a chunk's columns again without its ``dead`` ids."""
    keep = ~np.isin(ids, dead)
    probs = {kind: np.zeros((int(keep.sum()), n), np.float16) for kind, n in KINDS}
    for kind, cls, p in s.execute(select(LabelColumn.kind, LabelColumn.cls, LabelColumn.p).where(
            LabelColumn.chunk == first)):
        probs[kind][:, cls] = np.frombuffer(p, np.float16)[keep]
    s.execute(delete(LabelColumn).where(LabelColumn.chunk == first))
    dbapi(s).executemany(_INSERT_COLUMN, _column_rows(first, probs))
    s.execute(update(LabelChunk).where(LabelChunk.first_id == first).values(
        ids=ids[keep].tobytes(), dead=None, dead_counts=None))


def rebuild(s: Session) -> int:
    """Recompute every chunk from the persons' blobs (upgrades and repairs); returns the number of chunks."""
    s.execute(delete(LabelColumn))
    s.execute(delete(LabelChunk))
    return close_chunks(s)


def _chunks(s: Session) -> dict[int, tuple[np.ndarray, np.ndarray | None]]:
    """first id -> (ids of the column positions, mask of the living ones or None when all live)."""
    out = {}
    for first, last, ids_blob, dead_blob in s.execute(select(
            LabelChunk.first_id, LabelChunk.last_id, LabelChunk.ids, LabelChunk.dead).order_by(LabelChunk.first_id)):
        ids = _chunk_ids(first, last, ids_blob)
        out[first] = (ids, ~np.isin(ids, _int64(dead_blob)) if dead_blob else None)
    return out


def where_ids(s: Session, where: Sequence[tuple[int, int, str, float]]) -> np.ndarray:
    """The sorted ids of the persons whose stored probabilities pass every ``(kind, cls, op, value)``."""
    chunks = _chunks(s)
    tail_ids, tail = _tail(s, boundary(s))
    out: np.ndarray | None = None
    for kind, cls, op, value in where:
        test, v = OPS[op], np.float32(value)
        parts = []
        q = select(LabelColumn.chunk, LabelColumn.p).where(LabelColumn.kind == kind, LabelColumn.cls == cls)
        for chunk, p in s.execute(q.order_by(LabelColumn.chunk)):
            ids, alive = chunks[chunk]
            hit = test(np.frombuffer(p, np.float16), v)
            parts.append(ids[hit if alive is None else hit & alive])
        parts.append(tail_ids[test(tail[kind][:, cls], v)])
        ids = np.concatenate(parts)
        out = ids if out is None else np.intersect1d(out, ids, assume_unique=True)
    return np.zeros(0, np.int64) if out is None else out


def count_at_least(s: Session, p: float) -> dict[int, np.ndarray]:
    """{kind: (classes,) int64}: how many persons of each class have a probability >= ``p``. On the 0.01 grid
    (0.01 ... 1.0) it adds up the columns' stored counts (250 small rows per chunk) less those of the deleted;
    elsewhere it reads the columns."""
    v = np.float32(p)
    level = int(round(float(p) * 100))
    out = {kind: np.zeros(n, np.int64) for kind, n in KINDS}
    if 1 <= level <= 100 and LEVELS[level - 1] == v:
        for kind, cls, hist in s.execute(select(LabelColumn.kind, LabelColumn.cls, LabelColumn.hist)):
            out[kind][cls] += int(np.frombuffer(hist, np.uint16)[level - 1])
        dead = np.zeros(250, np.int64)
        for (blob,) in s.execute(select(LabelChunk.dead_counts).where(LabelChunk.dead_counts.is_not(None))):
            dead += np.frombuffer(blob, np.uint16).reshape(250, 100)[:, level - 1]
        out[LABEL_PASTA] -= dead[:93]
        out[LABEL_VERB] -= dead[93:]
    else:
        chunks = _chunks(s)
        for kind, cls, chunk, col in s.execute(select(LabelColumn.kind, LabelColumn.cls, LabelColumn.chunk,
                                                      LabelColumn.p)):
            hit, alive = np.frombuffer(col, np.float16) >= v, chunks[chunk][1]
            out[kind][cls] += int(np.count_nonzero(hit if alive is None else hit & alive))
    _, tail = _tail(s, boundary(s))
    for kind, _ in KINDS:
        out[kind] += np.count_nonzero(tail[kind] >= v, axis=0)
    return out
