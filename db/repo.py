"""The queries of the store: spaces, writing and deleting media with their persons, reading persons, vectors and
media, and filtering. No SQL is built from user input: every value is a bound parameter."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterator, Sequence

import numpy as np
from sqlalchemy import Column, Integer, MetaData, String, Table, delete, func, insert, select, update
from sqlalchemy.orm import Session

from . import activities, clusterings, labels
from .blobs import fixed16, stack16, unf16
from .errors import DbError
from .schema import LABEL_OBJECT, Failure, Media, Person, PersonObject, Space, Track
from .sql import CHUNK, chunks, dbapi, insert_rows, next_id, rows_in
from .tracks import insert_tracks
from .values import (
    N_OBJECTS,
    N_PARTS,
    N_PASTA,
    N_VERBS,
    Filters,
    Linker,
    MediaState,
    NewMedia,
    ObjectRow,
    PersonArrays,
    PersonRow,
    Vectors,
    as_arrays,
)

# ------------------------------------------------------------------ spaces


def spaces(s: Session) -> list[Space]:
    return list(s.execute(select(Space).order_by(Space.id)).scalars())


#: the compact basis of a language space: pasta (r_p, D), verb (r_v, D) float32; their singular values (r_p,),
#: (r_v,) float64
Basis = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]


def _basis_columns(basis: Basis) -> dict[str, bytes]:
    pasta, verb, s_pasta, s_verb = basis
    return {"basis_pasta": np.asarray(pasta, np.float32).tobytes(),
            "basis_verb": np.asarray(verb, np.float32).tobytes(),
            "sv_pasta": np.asarray(s_pasta, np.float64).tobytes(), "sv_verb": np.asarray(s_verb, np.float64).tobytes()}


def add_space(s: Session, fingerprint: str, config: dict, m_pasta: np.ndarray, m_verb: np.ndarray,
              basis: Basis) -> Space:
    """Register a vector space with its language matrices and their compact basis."""
    space = Space(fingerprint=fingerprint, visual_model=str(config["visual_model"]), heads=str(config["heads"]),
                  text_model=str(config["text_model"]), phrases=str(config["phrases"]),
                  visual_dim=int(config["visual_dim"]), language_dim=int(config["language_dim"]),
                  config=json.dumps(config, sort_keys=True), m_pasta=np.asarray(m_pasta, np.float32).tobytes(),
                  m_verb=np.asarray(m_verb, np.float32).tobytes(), created_at=time.time(), **_basis_columns(basis))
    s.add(space)
    s.flush()
    return space


def set_space_basis(s: Session, space_id: int, basis: Basis) -> None:
    """Record the compact basis of a space made before it was stored (schema < 4)."""
    s.execute(update(Space).where(Space.id == space_id).values(**_basis_columns(basis)))


def update_space(s: Session, space_id: int, fingerprint: str, config: dict,
                 matrices: tuple[np.ndarray, np.ndarray, Basis] | None = None) -> None:
    """Record a migrated space: its new fingerprint and configuration, and its new language matrices (93, D),
    (157, D) with their basis when its phrases changed (else the matrices and basis stay)."""
    values = {"fingerprint": fingerprint, "config": json.dumps(config, sort_keys=True),
              "phrases": str(config["phrases"]), "language_dim": int(config["language_dim"])}
    if matrices is not None:
        values.update(m_pasta=np.asarray(matrices[0], np.float32).tobytes(),
                      m_verb=np.asarray(matrices[1], np.float32).tobytes(), **_basis_columns(matrices[2]))
    s.execute(update(Space).where(Space.id == space_id).values(**values))


def set_space_config(s: Session, space_id: int, config: dict) -> None:
    """Replace a space's recorded configuration (model paths); its fingerprint fields never change."""
    s.execute(update(Space).where(Space.id == space_id).values(config=json.dumps(config, sort_keys=True)))


def space_matrices(space: Space) -> tuple[np.ndarray, np.ndarray]:
    """The stored (93, D) and (157, D) language matrices of a space."""
    m_pasta = np.frombuffer(space.m_pasta, np.float32).reshape(N_PASTA, -1)
    return m_pasta, np.frombuffer(space.m_verb, np.float32).reshape(N_VERBS, -1)


def space_basis(space: Space) -> Basis | None:
    """The recorded compact basis of a space, or None where none is recorded yet."""
    if None in (space.basis_pasta, space.basis_verb, space.sv_pasta, space.sv_verb):
        return None
    s_pasta, s_verb = np.frombuffer(space.sv_pasta, np.float64), np.frombuffer(space.sv_verb, np.float64)
    return (np.frombuffer(space.basis_pasta, np.float32).reshape(len(s_pasta), -1),
            np.frombuffer(space.basis_verb, np.float32).reshape(len(s_verb), -1), s_pasta, s_verb)

# ------------------------------------------------------------------ writing


#: bulk inserts through the DBAPI (literal SQL, every value bound), the nullable columns last: a person of an image
#: (no frame, time or track) and a media row that is no duplicate and no video take the short form (``insert_rows``)
_INSERT_PERSON = ("INSERT INTO persons (id, media_id, space_id, x1, y1, x2, y2, score, pasta, verbs, parts, visual, "
                  "visual_norm, frame_index, t_sec, track_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)")
_INSERT_PERSON_SHORT = ("INSERT INTO persons (id, media_id, space_id, x1, y1, x2, y2, score, pasta, verbs, parts, "
                        "visual, visual_norm) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)")
_INSERT_MEDIA = ("INSERT INTO media (id, path, content_hash, size, mtime, width, height, kind, collection, "
                 "ingested_at, duplicate_of, frames, duration) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)")
_INSERT_MEDIA_SHORT = ("INSERT INTO media (id, path, content_hash, size, mtime, width, height, kind, collection, "
                       "ingested_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)")
_UPDATE_MEDIA = ("UPDATE media SET path = ?, content_hash = ?, size = ?, mtime = ?, width = ?, height = ?, kind = ?, "
                 "collection = ?, ingested_at = ?, duplicate_of = ?, frames = ?, duration = ? WHERE id = ?")
_INSERT_OBJECT = "INSERT INTO objects (person_id, rank, cls, p, x1, y1, x2, y2) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
_DELETE_PERSONS_OF = "DELETE FROM persons WHERE media_id IN (SELECT value FROM json_each(?))"
_DELETE_TRACKS_OF = "DELETE FROM tracks WHERE media_id IN (SELECT value FROM json_each(?))"


def add_media(s: Session, space_id: int, items: Sequence[NewMedia], *, link: Linker,
              arrays: PersonArrays | None = None) -> tuple[list[int], np.ndarray, np.ndarray]:
    """Add media rows and their persons in the caller's transaction; ``link`` numbers the tracks of a video's
    persons; ``arrays``: the persons as :func:`as_arrays` gives them (made here when not given). Rows go through
    the DBAPI's ``executemany`` with ids given (the next free ones: one writer holds the lock). The caller then
    closes the labels' chunks these persons fill (``labels.close_chunks``, in the same transaction).

    Returns (media ids, new person ids in input order, person ids removed). A row named by ``replaces`` is
    updated in place (same media id, so duplicates pointing at it stay valid) and its old persons are removed.
    """
    now = time.time()
    replaced = [int(m.replaces) for m in items if m.replaces is not None]
    gone = activities.stored_rows(s, replaced) if replaced else []  # the persons they held, read once
    removed = np.asarray([r[0] for r in gone], np.int64)
    labels.drop_persons(s, removed, gone)
    uncounted = activities.removed_counts(s, gone)  # subtracted with the new persons' counts, below
    rows_in(s, _DELETE_PERSONS_OF, replaced,
            fallback=lambda chunk: delete(Person).where(Person.media_id.in_(chunk)))
    rows_in(s, _DELETE_TRACKS_OF, replaced,
            fallback=lambda chunk: delete(Track).where(Track.media_id.in_(chunk)))
    cursor = dbapi(s)
    cursor.executemany(_UPDATE_MEDIA, [(m.path, m.content_hash, m.size, m.mtime, m.width, m.height, m.kind,
                                        m.collection, now, m.duplicate_of, m.frames, m.duration, int(m.replaces))
                                       for m in items if m.replaces is not None])
    cursor = dbapi(s)
    next_media = next_id(s, "media")
    media_ids = []
    for m in items:
        media_ids.append(int(m.replaces) if m.replaces is not None else next_media)
        next_media += m.replaces is None
    insert_rows(cursor, _INSERT_MEDIA, _INSERT_MEDIA_SHORT, [
        (mid, m.path, m.content_hash, m.size, m.mtime, m.width, m.height, m.kind, m.collection, now, m.duplicate_of,
         m.frames, m.duration) for mid, m in zip(media_ids, items, strict=True) if m.replaces is None], optional=3)
    persons = [p for m in items for p in m.persons]
    if not persons:
        activities.count_added(s, {}, uncounted)
        return media_ids, np.zeros(0, np.int64), removed
    if arrays is None:
        arrays, problem = as_arrays(persons, len(np.asarray(persons[0].visual).ravel()))
        if arrays is None:
            raise DbError(f"a person cannot be stored ({problem}); check them with person_problem first")
    track_ids: list[int | None] = []
    owner: list[int] = []
    start = 0
    for mid, m in zip(media_ids, items, strict=True):
        n = len(m.persons)
        track_ids += insert_tracks(s, mid, m.persons, link, arrays.visual[start:start + n]) if m.kind == "video" \
            else [None] * n
        owner += [mid] * n
        start += n
    first = next_id(s, "persons")
    ids = np.arange(first, first + len(persons), dtype=np.int64)
    boxes, norms = arrays.boxes.tolist(), arrays.norms.tolist()
    pasta, verbs, parts, visual = (_row_blobs(x) for x in (arrays.pasta, arrays.verbs, arrays.parts, arrays.visual))
    insert_rows(cursor, _INSERT_PERSON, _INSERT_PERSON_SHORT, [
        (pid, mid, space_id, *box, float(p.score), pa, ve, pt, vi, None if norm != norm else norm, p.frame_index,
         p.t_sec, tid)
        for pid, mid, p, box, pa, ve, pt, vi, norm, tid in zip(
            ids.tolist(), owner, persons, boxes, pasta, verbs, parts, visual, norms, track_ids, strict=True)],
        optional=3)
    objects = [(pid, rank, int(c), float(prob), *((None,) * 4 if box is None else (float(v) for v in box)))
               for pid, p in zip(ids.tolist(), persons, strict=True) for rank, (c, prob, box) in enumerate(p.objects)]
    if objects:
        cursor.executemany(_INSERT_OBJECT, objects)
    keys = [(m.collection, m.kind) for m in items for _ in m.persons]
    stored_pasta, stored_verbs = (np.asarray(x, np.float16) for x in (arrays.pasta, arrays.verbs))  # compared as stored
    activities.count_added(s, {key: (stored_pasta[rows], stored_verbs[rows], arrays.objects[rows]) for key in set(keys)
                               for rows in [[i for i, k in enumerate(keys) if k == key]]}, uncounted)
    return media_ids, ids, removed


def _row_blobs(x: np.ndarray) -> list[bytearray]:
    """(n, d) -> n blobs of its rows (bytearrays: sqlite3 binds them without an adapter lookup, ``insert_rows``)."""
    raw, width = bytearray(np.ascontiguousarray(x)), x.shape[1] * x.itemsize
    return [raw[i:i + width] for i in range(0, len(raw), width)]


def delete_media(s: Session, media_ids: Sequence[int]) -> np.ndarray:
    """Delete media rows with their persons (and their labels); returns the removed person ids."""
    media_ids = [int(m) for m in media_ids]
    gone = activities.stored_rows(s, media_ids)
    removed = np.asarray([r[0] for r in gone], np.int64)
    labels.drop_persons(s, removed, gone)
    activities.uncount(s, gone)
    for chunk in chunks(media_ids):
        s.execute(update(Media).where(Media.duplicate_of.in_(chunk)).values(duplicate_of=None))
        s.execute(delete(Media).where(Media.id.in_(chunk)))  # persons go by ON DELETE CASCADE
    return removed


def touch_media(s: Session, media_id: int, size: int, mtime: float) -> None:
    """Record a new size/mtime for unchanged content (so the next run skips it on the cheap check)."""
    s.execute(update(Media).where(Media.id == media_id).values(size=size, mtime=mtime))


def record_failures(s: Session, failures: Sequence[tuple[str, str, str]]) -> None:
    """Add failure rows (path, stage, reason); an older failure of the same path is replaced."""
    if not failures:
        return
    paths = [f[0] for f in failures]
    for chunk in chunks(paths):
        s.execute(delete(Failure).where(Failure.path.in_(chunk)))
    now = time.time()
    s.execute(insert(Failure), [{"path": p, "stage": st, "reason": r, "at": now} for p, st, r in failures])


def clear_failures(s: Session, paths: Sequence[str]) -> None:
    """Forget the failures of paths that have now been ingested."""
    if not dbapi(s).execute("SELECT 1 FROM failures LIMIT 1").fetchone():  # the usual case: nothing failed
        return
    for chunk in chunks(paths):
        s.execute(delete(Failure).where(Failure.path.in_(list(chunk))))


# ------------------------------------------------------------------ reading


_MEDIA_AT = "SELECT path, id, content_hash, size, mtime FROM media WHERE path IN (SELECT value FROM json_each(?))"


def media_by_path(s: Session, paths: Sequence[str]) -> dict[str, MediaState]:
    """Stored state of the media at these paths."""
    rows = rows_in(s, _MEDIA_AT, list(paths), fallback=lambda chunk: select(
        Media.path, Media.id, Media.content_hash, Media.size, Media.mtime).where(Media.path.in_(chunk)))
    return {path: MediaState(mid, h, size, mtime) for path, mid, h, size, mtime in rows}


def get_media(s: Session, media_id: int) -> Media | None:
    """A media row by id, or None."""
    return s.get(Media, int(media_id))


_FIRST_WITH_HASH = ("SELECT content_hash, min(id) FROM media WHERE content_hash IN (SELECT value FROM json_each(?)) "
                    "AND duplicate_of IS NULL GROUP BY content_hash")


def media_by_hash(s: Session, hashes: Sequence[str]) -> dict[str, int]:
    """The first non-duplicate media id holding each content hash."""
    rows = rows_in(s, _FIRST_WITH_HASH, list(hashes), fallback=lambda chunk: select(
        Media.content_hash, func.min(Media.id)).where(Media.content_hash.in_(chunk), Media.duplicate_of.is_(None))
        .group_by(Media.content_hash))
    return dict(rows)


def media_ids_under(s: Session, paths: Sequence[str]) -> list[int]:
    """Media ids whose path is one of ``paths`` or lies in one of those folders: two lookups in the path index a
    path (the paths under ``folder/`` are those from ``folder/`` up to ``folder0``, "0" being the byte after "/"),
    not a scan of the media table (~15 ms a path at 285k media)."""
    ids: set[int] = set()
    for p in paths:
        folder = p.rstrip("/") + "/"
        q = select(Media.id).where((Media.path == p) | ((Media.path >= folder) & (Media.path < folder[:-1] + "0")))
        ids.update(s.execute(q).scalars())
    return sorted(ids)


_PERSON_COLUMNS = (Person.id, Person.media_id, Media.path, Media.kind, Media.collection, Media.width, Media.height,
                   Person.frame_index, Person.t_sec, Person.x1, Person.y1, Person.x2, Person.y2, Person.score,
                   Person.pasta, Person.verbs, Person.parts, Person.visual, Person.visual_norm, Person.track_id)
_PERSONS_OF = ("SELECT p.id, p.media_id, m.path, m.kind, m.collection, m.width, m.height, p.frame_index, p.t_sec, "
               "p.x1, p.y1, p.x2, p.y2, p.score, p.pasta, p.verbs, p.parts, p.visual, p.visual_norm, p.track_id "
               "FROM persons p JOIN media m ON m.id = p.media_id WHERE p.id IN (SELECT value FROM json_each(?))")


def fetch_persons(s: Session, ids: Sequence[int]) -> list[PersonRow]:
    """Persons with their media, in the caller's order; ids that do not exist are left out."""
    ids = [int(i) for i in ids]
    rows: dict[int, PersonRow] = {}
    found = rows_in(s, _PERSONS_OF, ids, fallback=lambda chunk: select(*_PERSON_COLUMNS).join(
        Media, Media.id == Person.media_id).where(Person.id.in_(chunk)))
    for r in found:
        rows[r[0]] = PersonRow(id=r[0], media_id=r[1], path=r[2], kind=r[3], collection=r[4], width=r[5],
                               height=r[6], frame_index=r[7], t_sec=r[8], box=(r[9], r[10], r[11], r[12]),
                               score=r[13], pasta=fixed16(r[14], N_PASTA), verbs=fixed16(r[15], N_VERBS),
                               parts=fixed16(r[16], N_PARTS), visual=unf16(r[17]), visual_norm=r[18],
                               track_id=r[19])
    objects = objects_of(s, list(rows))
    for pid, row in rows.items():
        row.objects = objects.get(pid, ())
    return [rows[i] for i in ids if i in rows]


_OBJECT_COLUMNS = (PersonObject.person_id, PersonObject.cls, PersonObject.p, PersonObject.x1, PersonObject.y1,
                   PersonObject.x2, PersonObject.y2, PersonObject.rank)
_OBJECTS_OF = ("SELECT person_id, cls, p, x1, y1, x2, y2, rank FROM objects "
               "WHERE person_id IN (SELECT value FROM json_each(?))")


def objects_of(s: Session, ids: Sequence[int]) -> dict[int, tuple[ObjectRow, ...]]:
    """person id -> its objects, best first (persons without objects are left out)."""
    ids = [int(i) for i in ids]
    rows = rows_in(s, _OBJECTS_OF, ids, fallback=lambda chunk: select(*_OBJECT_COLUMNS).where(
        PersonObject.person_id.in_(chunk)))
    out: dict[int, list[ObjectRow]] = {}
    for pid, cls, p, *box, _ in sorted(rows, key=lambda r: (r[0], r[7])):
        out.setdefault(pid, []).append((cls, p, None if box[0] is None else tuple(box)))
    return {pid: tuple(objs) for pid, objs in out.items()}


def _norms(values: Sequence[float | None]) -> np.ndarray:
    """Stored norms -> float32 (n,), NaN where unknown."""
    return np.array([np.nan if v is None else v for v in values], np.float32)



_VECTOR_COLUMNS = (Person.id, Person.visual, Person.pasta, Person.verbs, Person.visual_norm)
_VECTORS_OF = "SELECT id, visual, pasta, verbs, visual_norm FROM persons WHERE id IN (SELECT value FROM json_each(?))"
_OBJECT_PROBS_IN_RANGE = ("SELECT person_id, cls, max(p) FROM objects WHERE person_id BETWEEN ? AND ? "
                          "GROUP BY person_id, cls")
_OBJECT_PROBS_OF = ("SELECT person_id, cls, max(p) FROM objects WHERE person_id IN (SELECT value FROM json_each(?)) "
                    "GROUP BY person_id, cls")


def _vector_batch(s: Session, rows: Sequence) -> Vectors:
    ids = np.fromiter((r[0] for r in rows), np.int64, len(rows))
    return Vectors(ids, stack16([r[1] for r in rows]), stack16([r[2] for r in rows], N_PASTA),
                   stack16([r[3] for r in rows], N_VERBS), _norms([r[4] for r in rows]), _object_probs_of(s, ids))


def _object_probs_of(s: Session, ids: np.ndarray) -> np.ndarray:
    """(len(ids), 80): :func:`object_probs` of the stored objects of persons ``ids``, in their order. Dense ids (an
    index build's id-ordered chunk) are read as one id range, scattered ones (search re-scoring) as a list;
    either way through the objects table's key, which starts with the person id."""
    out = np.zeros((len(ids), N_OBJECTS), np.float32)
    if not len(ids):
        return out
    row = {int(pid): i for i, pid in enumerate(ids.tolist())}
    lo, hi = int(ids.min()), int(ids.max())
    if hi - lo < 4 * len(ids):
        found = dbapi(s).execute(_OBJECT_PROBS_IN_RANGE, (lo, hi)).fetchall()
    else:
        found = rows_in(s, _OBJECT_PROBS_OF, sorted(row), fallback=lambda chunk: select(
            PersonObject.person_id, PersonObject.cls, func.max(PersonObject.p)).where(
            PersonObject.person_id.in_(chunk)).group_by(PersonObject.person_id, PersonObject.cls))
    for pid, cls, prob in found:
        if pid in row:
            out[row[pid], cls] = prob
    return out


def fetch_vectors(s: Session, ids: Sequence[int]) -> Vectors:
    """The stored vectors of existing persons, in the caller's order; the narrow read that search re-scoring
    needs."""
    ids = [int(i) for i in ids]
    found = {r[0]: r for r in rows_in(s, _VECTORS_OF, ids, fallback=lambda chunk: select(*_VECTOR_COLUMNS).where(
        Person.id.in_(chunk)))}
    rows = [found[i] for i in ids if i in found]
    if not rows:
        return Vectors(np.zeros(0, np.int64), np.zeros((0, 0), np.float32), np.zeros((0, N_PASTA), np.float32),
                       np.zeros((0, N_VERBS), np.float32), np.zeros(0, np.float32),
                       np.zeros((0, N_OBJECTS), np.float32))
    return _vector_batch(s, rows)


def iter_vectors(s: Session, after_id: int = -1, ids: Sequence[int] | None = None,
                 chunk: int = 20000) -> Iterator[Vectors]:
    """Stored vectors in id order, chunk by chunk, for building indexes: the persons with id > ``after_id``, or
    exactly ``ids``."""
    if ids is not None:
        ids = sorted(int(i) for i in ids)
        for part in chunks(ids, chunk):
            batch = fetch_vectors(s, part)
            if len(batch.ids):
                yield batch
        return
    last = after_id
    while True:
        rows = s.execute(select(*_VECTOR_COLUMNS).where(Person.id > last).order_by(Person.id).limit(chunk)).all()
        if not rows:
            return
        yield _vector_batch(s, rows)
        last = rows[-1][0]


def count_without_norm(s: Session) -> int:
    """Persons stored before schema 2, whose tower-output norm is unknown (a partial index makes this cheap)."""
    return int(s.execute(select(func.count(Person.id)).where(Person.visual_norm.is_(None))).scalar() or 0)


_EXPORT_COLUMNS = (Person.id, Person.media_id, Media.path, Media.collection, Media.kind, Person.frame_index,
                   Person.t_sec, Person.x1, Person.y1, Person.x2, Person.y2, Person.score, Person.pasta, Person.verbs,
                   Person.parts, Person.visual, Person.visual_norm)


def iter_person_batches(s: Session, ids: np.ndarray | None = None, chunk: int = 4096) -> Iterator[dict]:
    """Every stored person (or exactly ``ids``, sorted) with its media, ``chunk`` rows at a time, as columns:
    ``person_id``, ``media_id`` (int64), ``path``, ``collection``, ``kind`` (lists of str), ``frame_index``
    (int64, -1 for images), ``t_sec`` (float64, NaN for images), ``box`` (n, 4), ``score``, ``pasta``, ``verbs``,
    ``parts``, ``visual`` (float32, the stored float16 values), ``visual_norm`` (float32, NaN where unknown),
    ``objects`` (a list: each person's objects, best first).
    Keyset pagination: memory is bounded by ``chunk``, whatever the number of persons."""
    base = select(*_EXPORT_COLUMNS).join(Media, Media.id == Person.media_id)
    last, pos = -1, 0
    while True:
        if ids is None:
            rows = s.execute(base.where(Person.id > last).order_by(Person.id).limit(chunk)).all()
        else:
            part = ids[pos:pos + chunk].tolist()
            pos += len(part)
            rows = s.execute(base.where(Person.id.in_(part)).order_by(Person.id)).all() if part else []
            if part and not rows:
                continue  # every person of this slice was deleted meanwhile
        if not rows:
            return
        last = rows[-1][0]
        yield {"person_id": np.fromiter((r[0] for r in rows), np.int64, len(rows)),
               "media_id": np.fromiter((r[1] for r in rows), np.int64, len(rows)),
               "path": [r[2] for r in rows], "collection": [r[3] for r in rows], "kind": [r[4] for r in rows],
               "frame_index": np.array([-1 if r[5] is None else r[5] for r in rows], np.int64),
               "t_sec": np.array([np.nan if r[6] is None else r[6] for r in rows], np.float64),
               "box": np.array([r[7:11] for r in rows], np.float32).reshape(len(rows), 4),
               "score": np.array([r[11] for r in rows], np.float32),
               "pasta": stack16([r[12] for r in rows]), "verbs": stack16([r[13] for r in rows]),
               "parts": stack16([r[14] for r in rows]), "visual": stack16([r[15] for r in rows]),
               "visual_norm": _norms([r[16] for r in rows]),
               "objects": _object_columns(s, [r[0] for r in rows])}


def _object_columns(s: Session, ids: list[int]) -> list[tuple[ObjectRow, ...]]:
    found = objects_of(s, ids)
    return [found.get(i, ()) for i in ids]


def media_ids_of(s: Session, ids: Sequence[int]) -> dict[int, int]:
    """person id -> media id."""
    ids = [int(i) for i in ids]
    out: dict[int, int] = {}
    for chunk in chunks(ids):
        out.update(dict(s.execute(select(Person.id, Person.media_id).where(Person.id.in_(chunk))).all()))
    return out


def person_ids(s: Session, upto_id: int | None = None) -> np.ndarray:
    """All person ids (sorted), optionally only those <= upto_id."""
    q = select(Person.id).order_by(Person.id)
    if upto_id is not None:
        q = q.where(Person.id <= upto_id)
    return np.fromiter(s.execute(q).scalars(), np.int64)


def id_stats(s: Session, upto_id: int) -> tuple[int, int]:
    """(number of persons, largest id) among the ids <= upto_id."""
    n, largest = s.execute(select(func.count(Person.id), func.max(Person.id)).where(Person.id <= upto_id)).one()
    return int(n or 0), int(largest if largest is not None else -1)


_SEQUENCE = Table("sqlite_sequence", MetaData(), Column("name", String), Column("seq", Integer))


def person_sequence(s: Session) -> int:
    """The largest person id SQLite ever handed out (AUTOINCREMENT's counter; rolled back only with lost
    transactions), or -1."""
    seq = s.execute(select(_SEQUENCE.c.seq).where(_SEQUENCE.c.name == Person.__tablename__)).scalar()
    return int(seq) if seq is not None else -1


def person_digest(s: Session, person_id: int) -> str | None:
    """A short hash of a person's stored vectors (None when there is no such person): tells a reused id apart."""
    row = s.execute(select(Person.visual, Person.pasta, Person.verbs).where(Person.id == int(person_id))).first()
    if row is None:
        return None
    return hashlib.sha256(b"|".join(row)).hexdigest()[:16]


def counts(s: Session) -> dict[str, int]:
    """Numbers of media (by kind), duplicates, persons and failures."""
    def n(q) -> int:
        return int(s.execute(q).scalar() or 0)

    return {"media": n(select(func.count(Media.id))),
            "images": n(select(func.count(Media.id)).where(Media.kind == "image")),
            "videos": n(select(func.count(Media.id)).where(Media.kind == "video")),
            "duplicates": n(select(func.count(Media.id)).where(Media.duplicate_of.is_not(None))),
            "persons": n(select(func.count(Person.id))),
            "tracks": n(select(func.count(Track.id))),
            "failures": n(select(func.count(Failure.id)))}


def failures(s: Session, limit: int = 100) -> list[tuple[str, str, str]]:
    q = select(Failure.path, Failure.stage, Failure.reason).order_by(Failure.id.desc()).limit(limit)
    return [tuple(r) for r in s.execute(q)]


def collections(s: Session) -> dict[str, int]:
    q = select(Media.collection, func.count(Media.id)).group_by(Media.collection)
    return {c: n for c, n in s.execute(q)}


# ------------------------------------------------------------------ filters


def _object_ids(s: Session, where: Sequence[tuple[int, int, str, float]]) -> np.ndarray:
    """The sorted ids of persons whose objects pass every object item of ``where`` (its best object of the class
    compared with the value; no such object: p = 0). ``>``, ``>=`` are lookups in the objects index of those that
    pass, ``<``, ``<=`` of those that fail."""
    q = select(Person.id)
    for _, cls, op, value in where:
        obj = select(PersonObject.person_id).where(PersonObject.cls == cls)
        if op in (">=", ">"):
            q = q.where(Person.id.in_(obj.where(PersonObject.p >= value if op == ">=" else PersonObject.p > value)))
        elif (op == "<" and value <= 0) or value < 0:
            return np.zeros(0, np.int64)  # no p is below 0
        else:
            q = q.where(Person.id.not_in(obj.where(PersonObject.p >= value if op == "<" else PersonObject.p > value)))
    return np.fromiter(s.execute(q.order_by(Person.id)).scalars(), np.int64)


def filter_person_ids(s: Session, f: Filters) -> np.ndarray | None:
    """The sorted ids of persons passing the filters (None when there are no filters).

    Media filters are indexed columns; ``where`` items read the stored probabilities of their class from the
    labels' chunks (db/labels.py), whatever the comparison and threshold.
    Object items (kind LABEL_OBJECT) read the objects table (:func:`_object_ids`).
    """
    if f.empty():
        return None
    for _, _, op, _ in f.where:
        if op not in labels.OPS:
            raise DbError(f"unknown comparison {op!r}; use one of {', '.join(labels.OPS)}")
    label_where = [w for w in f.where if w[0] != LABEL_OBJECT]
    object_where = [w for w in f.where if w[0] == LABEL_OBJECT]
    ids = labels.where_ids(s, label_where) if label_where else None
    if object_where:
        found = _object_ids(s, object_where)
        ids = found if ids is None else np.intersect1d(ids, found, assume_unique=True)
    if not (f.collection or f.kind or f.path_glob or f.cluster or f.after_id is not None):
        return ids
    few = ids is not None and len(ids) <= 10 * CHUNK  # few label matches: check only those against the media

    def media(column):
        # with few ids, persons are found by id first and their media by key: ``|| ''`` keeps SQLite from walking
        # a collection's media through its index instead and probing each one for every id (5.6 s -> 83 ms for
        # 15k ids of a 100k-person store, bench/write_bench.py)
        return column.concat("") if few else column

    q = select(Person.id).join(Media, Media.id == Person.media_id)
    if f.collection:
        q = q.where(media(Media.collection) == f.collection)
    if f.kind:
        q = q.where(media(Media.kind) == f.kind)
    if f.path_glob:
        q = q.where(media(Media.path).op("GLOB")(f.path_glob))
    if f.cluster:
        q = q.where(Person.id.in_(clusterings.member_query(*f.cluster)))
    if f.after_id is not None:
        q = q.where(Person.id > f.after_id)
    if few:
        found: list[int] = []
        for chunk in chunks(ids):
            found += s.execute(q.where(Person.id.in_(chunk.tolist()))).scalars().all()
        return np.array(sorted(found), np.int64)
    media_ids = np.fromiter(s.execute(q.order_by(Person.id)).scalars(), np.int64)
    return media_ids if ids is None else np.intersect1d(media_ids, ids, assume_unique=True)
