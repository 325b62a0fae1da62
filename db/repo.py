"""Engine, sessions and the repository functions that ingest and search use. No SQL is built from user input:
every value is a bound parameter."""

from __future__ import annotations

import hashlib
import json
import logging
import math
import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np
from sqlalchemy import (
    Column,
    Integer,
    MetaData,
    String,
    Table,
    create_engine,
    delete,
    event,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DatabaseError, OperationalError
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import QueuePool

from . import activities, clusterings, labels
from .blobs import f16, fixed16, stack16, unf16  # noqa: F401  (f16: callers use repo.f16)
from .errors import DbError, DbMissingError, NotAStoreError, SchemaVersionError, UpgradeError
from .migrations import can_upgrade, upgrade
from .schema import (
    LABEL_OBJECT,
    LABEL_PASTA,  # noqa: F401  (the kinds of Filters.where items, for callers of this module)
    LABEL_VERB,  # noqa: F401
    SCHEMA_VERSION,
    Base,
    Failure,
    Media,
    Meta,
    Person,
    PersonObject,
    Space,
    Track,
)

log = logging.getLogger(__name__)

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
_CHUNK = 5000  # ids per IN (...) list


# ------------------------------------------------------------------ records


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
    for cls, prob, box in objects:
        if not 0 <= int(cls) < N_OBJECTS:
            return f"object class {cls} is not one of the {N_OBJECTS} classes"
        if not (np.isfinite(prob) and 0 < prob <= 1):
            return f"object p {prob!r} is not in (0, 1]"
        if box is not None and (len(box) != 4 or not all(np.isfinite(float(v)) for v in box)):
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


# ------------------------------------------------------------------ engine


class Database:
    """A SQLite file in WAL mode with foreign keys on, checked for its schema version. ``read_only``: opened with
    ``mode=ro`` (never written, no lock), or ``immutable=1`` where even that cannot open it (a folder or file
    system the user cannot write, with no ``-shm`` file left)."""

    def __init__(self, path: Path, create: bool = True, read_only: bool = False, *, link: Linker | None = None,
                 translate: Callable[[DbError], Exception] | None = None,
                 upgrade_lock: Callable[[], AbstractContextManager] | None = None):
        self.path = Path(path)
        self.read_only = read_only and not create
        self._link = link  # the video tracker, for upgrading a store from before tracks
        self._upgrade_lock = upgrade_lock or nullcontext  # held while an older store is upgraded
        self._translate = translate or (lambda e: e)
        if not create and not self.path.exists():
            raise self._translate(DbMissingError(f"no store at {self.path.parent}"))
        if self.read_only:
            self.engine: Engine = create_engine("sqlite://", creator=lambda: _connect_read_only(self.path),
                                                poolclass=QueuePool)
            event.listen(self.engine, "connect", _on_connect_read_only)
        else:
            self.engine = create_engine(f"sqlite:///{self.path}", connect_args={"timeout": 60})
            event.listen(self.engine, "connect", _on_connect)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        try:
            if self.read_only and self._older_schema():  # a reader may upgrade an older store once, where it can write
                with suppress(DbError):
                    Database(self.path, create=False, link=link, upgrade_lock=upgrade_lock).close()
            self._check_schema(create)
        except OperationalError as e:
            raise self._translate(DbError(f"cannot open {self.path}: {getattr(e, 'orig', e)}; check that the data "
                                          "directory exists, is writable and has free space")) from e
        except (DatabaseError, sqlite3.DatabaseError) as e:
            reason = getattr(e, "orig", e)
            raise self._translate(DbError(f"{self.path} is not a readable a2v-search database ({reason}); move it "
                                          "away and ingest again, or restore a backup")) from e

    def _older_schema(self) -> bool:
        with self.engine.connect() as conn:
            if not conn.exec_driver_sql("SELECT name FROM sqlite_master WHERE name='meta'").first():
                return False
            version = conn.execute(select(Meta.value).where(Meta.key == "schema_version")).scalar()
        return version is not None and can_upgrade(int(version), SCHEMA_VERSION)

    def _check_schema(self, create: bool) -> None:
        with self.engine.begin() as conn:
            tables = set(conn.exec_driver_sql("SELECT name FROM sqlite_master WHERE type='table'").scalars())
            if "meta" in tables:
                row = conn.execute(select(Meta.value).where(Meta.key == "schema_version")).scalar()
                version = int(row) if row is not None else None
                if version != SCHEMA_VERSION and can_upgrade(version, SCHEMA_VERSION):
                    with self._upgrade_lock():
                        self._upgrade(conn, version)
                elif version != SCHEMA_VERSION:
                    raise self._translate(SchemaVersionError(
                        f"store {self.path} has schema version {version}; this a2v-search reads version "
                        f"{SCHEMA_VERSION}"))
            elif tables - {"sqlite_sequence"}:
                raise self._translate(NotAStoreError(f"{self.path} is a SQLite file but not an a2v-search store"))
            elif create:
                Base.metadata.create_all(conn)
                conn.execute(insert(Meta).values(key="schema_version", value=str(SCHEMA_VERSION)))

    def _upgrade(self, conn, version: int) -> None:
        """Upgrade an older store in place, in one write transaction (all or nothing) that reads the version again."""
        try:
            # pysqlite runs DDL outside transactions unless one is begun by hand; IMMEDIATE also keeps other
            # writers out, and a second opener that waited here finds the store already upgraded
            conn.exec_driver_sql("BEGIN IMMEDIATE")
            if conn.execute(select(Meta.value).where(Meta.key == "schema_version")).scalar() != str(version):
                return
            upgrade(conn, version, SCHEMA_VERSION, self._link)
            conn.execute(update(Meta).where(Meta.key == "schema_version").values(value=str(SCHEMA_VERSION)))
        except OperationalError as e:
            raise self._translate(UpgradeError(
                f"store {self.path} has schema version {version} and must be upgraded to version {SCHEMA_VERSION}, "
                f"which needs write access ({getattr(e, 'orig', e)})")) from e
        log.info("upgraded store %s from schema version %d to %d", self.path, version, SCHEMA_VERSION)

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session in one transaction: committed on success, rolled back on error. A failing disk (full,
        read-only, locked) becomes one DbError that says nothing committed before was lost. DbErrors (this one, or
        a repository function's inside the block) leave through the ``translate`` hook."""
        try:
            with self._sessions() as s, s.begin():
                yield s
        except OperationalError as e:
            raise self._translate(DbError(
                f"cannot write to {self.path}: {getattr(e, 'orig', e)}. Nothing stored before was lost; free disk "
                "space or make the data directory writable, then run the same command again")) from e
        except DbError as e:
            translated = self._translate(e)
            if translated is e:
                raise
            raise translated from e

    @contextmanager
    def snapshot(self) -> Iterator[Session]:
        """A session whose reads all see one state of the database (one SQLite read transaction: writers go on,
        their commits stay invisible until it ends)."""
        with self.session() as s:
            s.connection().exec_driver_sql("BEGIN")
            yield s

    def close(self) -> None:
        self.engine.dispose()


def _connect_read_only(path: Path) -> sqlite3.Connection:
    """A read-only connection: ``mode=ro`` (sees the WAL), else ``immutable=1`` (a WAL database whose ``-shm``
    cannot be created: only what was checkpointed into the main file is visible)."""
    uri = Path(path).resolve().as_uri()
    conn = sqlite3.connect(f"{uri}?mode=ro", uri=True, timeout=60, check_same_thread=False)
    try:
        conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
        return conn
    except sqlite3.OperationalError:
        conn.close()
    wal = Path(f"{path}-wal")
    if wal.exists() and wal.stat().st_size:
        log.warning("%s cannot be read without write access to %s; the store's last transactions may be missing "
                    "from this read-only view", wal.name, wal.parent)
    return sqlite3.connect(f"{uri}?immutable=1", uri=True, check_same_thread=False)


def _on_connect_read_only(dbapi_conn, _record) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA query_only=ON")
    cur.close()


def _on_connect(dbapi_conn, _record) -> None:
    cur = dbapi_conn.cursor()
    # a new database only (a no-op on one with tables): a person's row (~1.6 KB) fills 8 KB pages better than 4 KB
    cur.execute("PRAGMA page_size=8192")
    with suppress(sqlite3.OperationalError):  # read-only folder: readers still work on an existing WAL database
        cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA synchronous=NORMAL")
    # the writer: checkpoint the WAL into the database every 8,192 pages (64 MB) instead of 1,000 (fewer, longer
    # checkpoints, each with its fsync), and a 64 MB page cache; durability is unchanged (docs/guarantees.md)
    cur.execute("PRAGMA wal_autocheckpoint=8192")
    cur.execute("PRAGMA cache_size=-65536")
    cur.close()


# ------------------------------------------------------------------ meta and spaces


def get_meta(s: Session, key: str, default: str | None = None) -> str | None:
    value = s.execute(select(Meta.value).where(Meta.key == key)).scalar()
    return default if value is None else value


def set_meta(s: Session, key: str, value: str) -> None:
    if s.get(Meta, key) is None:
        s.add(Meta(key=key, value=value))
    else:
        s.execute(update(Meta).where(Meta.key == key).values(value=value))


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


#: bulk inserts through the DBAPI (literal SQL, every value bound)
_INSERT_PERSON = ("INSERT INTO persons (id, media_id, space_id, frame_index, t_sec, x1, y1, x2, y2, score, pasta, "
                  "verbs, parts, visual, visual_norm, track_id) "
                  "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)")
_UPDATE_MEDIA = ("UPDATE media SET path = ?, content_hash = ?, size = ?, mtime = ?, width = ?, height = ?, kind = ?, "
                 "collection = ?, ingested_at = ?, duplicate_of = ?, frames = ?, duration = ? WHERE id = ?")
_INSERT_OBJECT = "INSERT INTO objects (person_id, rank, cls, p, x1, y1, x2, y2) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
_INSERT_MEDIA = ("INSERT INTO media (id, path, content_hash, size, mtime, width, height, kind, collection, "
                 "ingested_at, duplicate_of, frames, duration) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)")


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
    with np.errstate(over="ignore", invalid="ignore"):
        if not all(np.isfinite(x).all() for x in (pasta, verbs, parts, visual, boxes)):
            return None, "finite"
        visual16 = visual.astype(np.float16)
    if not np.any(visual16, axis=1).all():
        return None, "zero"
    if any(p.objects and _objects_problem(p.objects) for p in persons):
        return None, "objects"
    norms = np.array([np.nan if p.visual_norm is None else p.visual_norm for p in persons], np.float32)
    return PersonArrays(pasta.astype(np.float16), verbs.astype(np.float16), parts.astype(np.float16), visual16,
                        boxes, norms, object_probs([p.objects for p in persons])), None


#: (largest id, AUTOINCREMENT's counter) of each table, literal SQL run on the session's own DBAPI connection
_LAST_IDS = {"media": "SELECT max(id), NULL FROM media",
             "persons": "SELECT max(id), (SELECT seq FROM sqlite_sequence WHERE name = 'persons') FROM persons",
             "tracks": "SELECT max(id), (SELECT seq FROM sqlite_sequence WHERE name = 'tracks') FROM tracks"}


def _next_id(s: Session, table: str) -> int:
    """The id the next row of ``table`` gets: past every id used, and for the AUTOINCREMENT tables (persons,
    tracks) past every id SQLite ever handed out, so that a deleted row's id is never used again."""
    largest, seq = _dbapi(s).execute(_LAST_IDS[table]).fetchone()
    return max(int(largest or 0), int(seq or 0)) + 1


def _dbapi(s: Session):
    """A DBAPI cursor inside the session's transaction (for bulk inserts and the id queries of the write path)."""
    return s.connection().connection.driver_connection.cursor()


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
    removed = _person_ids_of(s, replaced)
    labels.drop_persons(s, removed)
    if len(removed):
        activities.uncount_media(s, replaced)
    for i in range(0, len(replaced), _CHUNK):
        s.execute(delete(Person).where(Person.media_id.in_(replaced[i:i + _CHUNK])))
        s.execute(delete(Track).where(Track.media_id.in_(replaced[i:i + _CHUNK])))
    cursor = _dbapi(s)
    cursor.executemany(_UPDATE_MEDIA, [(m.path, m.content_hash, m.size, m.mtime, m.width, m.height, m.kind,
                                        m.collection, now, m.duplicate_of, m.frames, m.duration, int(m.replaces))
                                       for m in items if m.replaces is not None])
    cursor = _dbapi(s)
    next_media = _next_id(s, "media")
    media_ids = []
    for m in items:
        media_ids.append(int(m.replaces) if m.replaces is not None else next_media)
        next_media += m.replaces is None
    cursor.executemany(_INSERT_MEDIA, [(mid, m.path, m.content_hash, m.size, m.mtime, m.width, m.height, m.kind,
                                        m.collection, now, m.duplicate_of, m.frames, m.duration)
                                       for mid, m in zip(media_ids, items, strict=True) if m.replaces is None])
    persons = [p for m in items for p in m.persons]
    if not persons:
        return media_ids, np.zeros(0, np.int64), removed
    if arrays is None:
        arrays, problem = as_arrays(persons, len(np.asarray(persons[0].visual).ravel()))
        if arrays is None:
            raise DbError(f"a person cannot be stored ({problem}); check them with person_problem first")
    track_ids: list[int | None] = []
    owner: list[int] = []
    for mid, m in zip(media_ids, items, strict=True):
        track_ids += _insert_tracks(s, mid, m.persons, link) if m.kind == "video" else [None] * len(m.persons)
        owner += [mid] * len(m.persons)
    first = _next_id(s, "persons")
    ids = np.arange(first, first + len(persons), dtype=np.int64)
    boxes, norms = arrays.boxes.tolist(), arrays.norms.tolist()
    pasta, verbs, parts, visual = (_row_blobs(x) for x in (arrays.pasta, arrays.verbs, arrays.parts, arrays.visual))
    cursor.executemany(_INSERT_PERSON, [
        (int(pid), mid, space_id, p.frame_index, p.t_sec, *box, float(p.score), pa, ve, pt, vi,
         None if norm != norm else norm, tid)
        for pid, mid, p, box, pa, ve, pt, vi, norm, tid in zip(
            ids.tolist(), owner, persons, boxes, pasta, verbs, parts, visual, norms, track_ids, strict=True)])
    objects = [(pid, rank, int(c), float(prob), *((None,) * 4 if box is None else (float(v) for v in box)))
               for pid, p in zip(ids.tolist(), persons, strict=True) for rank, (c, prob, box) in enumerate(p.objects)]
    if objects:
        cursor.executemany(_INSERT_OBJECT, objects)
    keys = [(m.collection, m.kind) for m in items for _ in m.persons]
    stored_pasta, stored_verbs = (np.asarray(x, np.float16).astype(np.float32) for x in (arrays.pasta, arrays.verbs))
    activities.count_added(s, {key: (stored_pasta[rows], stored_verbs[rows], arrays.objects[rows]) for key in set(keys)
                               for rows in [[i for i, k in enumerate(keys) if k == key]]})
    return media_ids, ids, removed


def _row_blobs(x: np.ndarray) -> list[bytes]:
    """(n, d) -> n blobs of its rows."""
    x = np.ascontiguousarray(x)
    raw, width = x.tobytes(), x.shape[1] * x.itemsize
    return [raw[i:i + width] for i in range(0, len(raw), width)]


def _norm32(norm: float | None) -> float | None:
    """A norm as the float32 value the heads saw (stored exactly in SQLite's float64)."""
    return None if norm is None or not np.isfinite(norm) else float(np.float32(norm))


def _frame_time(t_sec: float | None, frame_index: int | None) -> float:
    return float(t_sec) if t_sec is not None else float(frame_index or 0)


_INSERT_TRACK = "INSERT INTO tracks (id, media_id, number, t_start, t_end, persons) VALUES (?, ?, ?, ?, ?, ?)"


def _insert_tracks(s: Session, media_id: int, persons: Sequence[NewPerson], link: Linker) -> list[int]:
    """Link the persons of one video into tracks with ``link``, insert the track rows, and return each person's
    track id. Part of the caller's transaction: a video is stored with its tracks or not at all."""
    if not persons:
        return []
    times = [_frame_time(p.t_sec, p.frame_index) for p in persons]
    numbers = link(times, [[float(v) for v in p.box] for p in persons], np.stack([p.visual for p in persons]))
    rows: dict[int, list] = {}
    for number, t in zip(numbers, times, strict=True):
        r = rows.setdefault(number, [media_id, number, t, t, 0])
        r[2], r[3], r[4] = min(r[2], t), max(r[3], t), r[4] + 1
    first = _next_id(s, "tracks")
    _dbapi(s).executemany(
        _INSERT_TRACK, [(first + k, *rows[k]) for k in sorted(rows)])
    return [first + number for number in numbers]


def rebuild_tracks(s: Session, media_ids: Sequence[int], *, link: Linker) -> int:
    """Recompute the tracks of stored videos from their persons (what ingest would have written); returns the
    number of tracks. Used to upgrade stores written before tracks existed."""
    total = 0
    for mid in media_ids:
        s.execute(update(Person).where(Person.media_id == mid).values(track_id=None))
        s.execute(delete(Track).where(Track.media_id == mid))
        q = (select(Person.id, Person.t_sec, Person.frame_index, Person.x1, Person.y1, Person.x2, Person.y2,
                    Person.visual).where(Person.media_id == mid).order_by(Person.id))
        rows = s.execute(q).all()
        if not rows:
            continue
        persons = [NewPerson(box=(r[3], r[4], r[5], r[6]), pasta=None, verbs=None, parts=None, visual=unf16(r[7]),
                             frame_index=r[2], t_sec=r[1]) for r in rows]
        track_ids = _insert_tracks(s, mid, persons, link)
        s.execute(update(Person).execution_options(synchronize_session=False),
                  [{"id": r[0], "track_id": tid} for r, tid in zip(rows, track_ids, strict=True)])
        total += len(set(track_ids))
    return total


def videos_with_untracked_persons(s: Session) -> list[int]:
    """Ids of videos that have persons without a track (none in a consistent store)."""
    q = (select(Person.media_id).join(Media, Media.id == Person.media_id)
         .where(Media.kind == "video", Person.track_id.is_(None)).distinct().order_by(Person.media_id))
    return list(s.execute(q).scalars())


def _person_ids_of(s: Session, media_ids: Sequence[int]) -> np.ndarray:
    out: list[int] = []
    for i in range(0, len(media_ids), _CHUNK):
        out += s.execute(select(Person.id).where(Person.media_id.in_(media_ids[i:i + _CHUNK]))).scalars().all()
    return np.asarray(sorted(out), np.int64)


def delete_media(s: Session, media_ids: Sequence[int]) -> np.ndarray:
    """Delete media rows with their persons (and their labels); returns the removed person ids."""
    media_ids = [int(m) for m in media_ids]
    removed = _person_ids_of(s, media_ids)
    labels.drop_persons(s, removed)
    if len(removed):
        activities.uncount_media(s, media_ids)
    for i in range(0, len(media_ids), _CHUNK):
        chunk = media_ids[i:i + _CHUNK]
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
    for i in range(0, len(paths), _CHUNK):
        s.execute(delete(Failure).where(Failure.path.in_(paths[i:i + _CHUNK])))
    now = time.time()
    s.execute(insert(Failure), [{"path": p, "stage": st, "reason": r, "at": now} for p, st, r in failures])


def clear_failures(s: Session, paths: Sequence[str]) -> None:
    """Forget the failures of paths that have now been ingested."""
    if not s.execute(select(Failure.id).limit(1)).first():  # the usual case: nothing failed
        return
    for i in range(0, len(paths), _CHUNK):
        s.execute(delete(Failure).where(Failure.path.in_(list(paths[i:i + _CHUNK]))))


# ------------------------------------------------------------------ reading


@dataclass
class MediaState:
    id: int
    content_hash: str | None
    size: int
    mtime: float


def media_by_path(s: Session, paths: Sequence[str]) -> dict[str, MediaState]:
    """Stored state of the media at these paths."""
    out: dict[str, MediaState] = {}
    paths = list(paths)
    for i in range(0, len(paths), _CHUNK):
        q = select(Media.path, Media.id, Media.content_hash, Media.size, Media.mtime).where(
            Media.path.in_(paths[i:i + _CHUNK]))
        for path, mid, h, size, mtime in s.execute(q):
            out[path] = MediaState(mid, h, size, mtime)
    return out


def get_media(s: Session, media_id: int) -> Media | None:
    """A media row by id, or None."""
    return s.get(Media, int(media_id))


def media_by_hash(s: Session, hashes: Sequence[str]) -> dict[str, int]:
    """The first non-duplicate media id holding each content hash."""
    out: dict[str, int] = {}
    hashes = list(hashes)
    for i in range(0, len(hashes), _CHUNK):
        q = (select(Media.content_hash, func.min(Media.id))
             .where(Media.content_hash.in_(hashes[i:i + _CHUNK]), Media.duplicate_of.is_(None))
             .group_by(Media.content_hash))
        out.update({h: mid for h, mid in s.execute(q)})
    return out


def media_ids_under(s: Session, paths: Sequence[str]) -> list[int]:
    """Media ids whose path is one of ``paths`` or lies in one of those folders."""
    ids: set[int] = set()
    for p in paths:
        folder = p.rstrip("/") + "/"
        q = select(Media.id).where((Media.path == p) | (func.substr(Media.path, 1, len(folder)) == folder))
        ids.update(s.execute(q).scalars())
    return sorted(ids)


_PERSON_COLUMNS = (Person.id, Person.media_id, Media.path, Media.kind, Media.collection, Media.width, Media.height,
                   Person.frame_index, Person.t_sec, Person.x1, Person.y1, Person.x2, Person.y2, Person.score,
                   Person.pasta, Person.verbs, Person.parts, Person.visual, Person.visual_norm, Person.track_id)


def fetch_persons(s: Session, ids: Sequence[int]) -> list[PersonRow]:
    """Persons with their media, in the caller's order; ids that do not exist are left out."""
    ids = [int(i) for i in ids]
    rows: dict[int, PersonRow] = {}
    for i in range(0, len(ids), _CHUNK):
        q = select(*_PERSON_COLUMNS).join(Media, Media.id == Person.media_id).where(Person.id.in_(ids[i:i + _CHUNK]))
        for r in s.execute(q):
            rows[r[0]] = PersonRow(id=r[0], media_id=r[1], path=r[2], kind=r[3], collection=r[4], width=r[5],
                                   height=r[6], frame_index=r[7], t_sec=r[8], box=(r[9], r[10], r[11], r[12]),
                                   score=r[13], pasta=fixed16(r[14], N_PASTA), verbs=fixed16(r[15], N_VERBS),
                                   parts=fixed16(r[16], N_PARTS), visual=unf16(r[17]), visual_norm=r[18],
                                   track_id=r[19])
    found = objects_of(s, list(rows))
    for pid, row in rows.items():
        row.objects = found.get(pid, ())
    return [rows[i] for i in ids if i in rows]


def objects_of(s: Session, ids: Sequence[int]) -> dict[int, tuple[ObjectRow, ...]]:
    """person id -> its objects, best first (persons without objects are left out)."""
    ids = [int(i) for i in ids]
    out: dict[int, list[ObjectRow]] = {}
    for i in range(0, len(ids), _CHUNK):
        q = (select(PersonObject.person_id, PersonObject.cls, PersonObject.p, PersonObject.x1, PersonObject.y1,
                    PersonObject.x2, PersonObject.y2).where(PersonObject.person_id.in_(ids[i:i + _CHUNK]))
             .order_by(PersonObject.person_id, PersonObject.rank))
        for pid, cls, p, *box in s.execute(q):
            out.setdefault(pid, []).append((cls, p, None if box[0] is None else tuple(box)))
    return {pid: tuple(objs) for pid, objs in out.items()}


def _norms(values: Sequence[float | None]) -> np.ndarray:
    """Stored norms -> float32 (n,), NaN where unknown."""
    return np.array([np.nan if v is None else v for v in values], np.float32)


class Vectors(NamedTuple):
    """Persons' stored vectors, row i = ``ids[i]``, float32."""

    ids: np.ndarray  # (n,) int64
    visual: np.ndarray  # (n, P) unit length, the float16 values
    pasta: np.ndarray  # (n, 93)
    verbs: np.ndarray  # (n, 157)
    norms: np.ndarray  # (n,) tower-output norms, NaN where unknown (stored before schema 2)
    objects: np.ndarray  # (n, 80) the largest p of each object class (object_probs)


_VECTOR_COLUMNS = (Person.id, Person.visual, Person.pasta, Person.verbs, Person.visual_norm)


def _vector_batch(s: Session, rows: Sequence) -> Vectors:
    ids = np.fromiter((r[0] for r in rows), np.int64, len(rows))
    return Vectors(ids, stack16([r[1] for r in rows]), stack16([r[2] for r in rows], N_PASTA),
                   stack16([r[3] for r in rows], N_VERBS), _norms([r[4] for r in rows]), _object_probs_of(s, ids))


def _object_probs_of(s: Session, ids: np.ndarray) -> np.ndarray:
    """(len(ids), 80): :func:`object_probs` of the stored objects of persons ``ids``, in their order. Dense ids (an
    index build's id-ordered chunk) are read as one id range, scattered ones (search re-scoring) by ``IN`` lists;
    either way through the objects table's key, which starts with the person id."""
    out = np.zeros((len(ids), N_OBJECTS), np.float32)
    if not len(ids):
        return out
    row = {int(pid): i for i, pid in enumerate(ids.tolist())}
    lo, hi = int(ids.min()), int(ids.max())
    wheres = ([PersonObject.person_id.between(lo, hi)] if hi - lo < 4 * len(ids) else
              [PersonObject.person_id.in_(chunk) for chunk in _chunks(sorted(row))])
    for where in wheres:
        q = (select(PersonObject.person_id, PersonObject.cls, func.max(PersonObject.p)).where(where)
             .group_by(PersonObject.person_id, PersonObject.cls))
        for pid, cls, prob in s.execute(q):
            if pid in row:
                out[row[pid], cls] = prob
    return out


def _chunks(ids: Sequence[int], size: int = _CHUNK) -> Iterator[Sequence[int]]:
    """``ids`` in slices of at most ``size`` (one ``IN (...)`` list each)."""
    for i in range(0, len(ids), size):
        yield ids[i:i + size]


def fetch_vectors(s: Session, ids: Sequence[int]) -> Vectors:
    """The stored vectors of existing persons, in the caller's order; the narrow read that search re-scoring
    needs."""
    ids = [int(i) for i in ids]
    found: dict[int, tuple] = {}
    for i in range(0, len(ids), _CHUNK):
        found.update({r[0]: r for r in s.execute(select(*_VECTOR_COLUMNS).where(Person.id.in_(ids[i:i + _CHUNK])))})
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
        for i in range(0, len(ids), chunk):
            batch = fetch_vectors(s, ids[i:i + chunk])
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


def tracks_of(s: Session, ids: Sequence[int]) -> dict[int, int | None]:
    """person id -> track id (None for image persons)."""
    ids = [int(i) for i in ids]
    out: dict[int, int | None] = {}
    for i in range(0, len(ids), _CHUNK):
        out.update(dict(s.execute(select(Person.id, Person.track_id).where(Person.id.in_(ids[i:i + _CHUNK]))).all()))
    return out


def track_members(s: Session, track_ids: Sequence[int]) -> dict[int, list[int]]:
    """track id -> its person ids, in id order."""
    track_ids = sorted({int(t) for t in track_ids})
    out: dict[int, list[int]] = {t: [] for t in track_ids}
    for i in range(0, len(track_ids), _CHUNK):
        q = (select(Person.track_id, Person.id).where(Person.track_id.in_(track_ids[i:i + _CHUNK]))
             .order_by(Person.id))
        for tid, pid in s.execute(q):
            out[tid].append(pid)
    return out


def fetch_tracks(s: Session, track_ids: Sequence[int]) -> dict[int, TrackRow]:
    """Stored tracks by id; ids that do not exist are left out."""
    track_ids = [int(t) for t in track_ids]
    out: dict[int, TrackRow] = {}
    for i in range(0, len(track_ids), _CHUNK):
        q = select(Track.id, Track.media_id, Track.number, Track.t_start, Track.t_end, Track.persons).where(
            Track.id.in_(track_ids[i:i + _CHUNK]))
        out.update({r[0]: TrackRow(*r) for r in s.execute(q)})
    return out


def media_ids_of(s: Session, ids: Sequence[int]) -> dict[int, int]:
    """person id -> media id."""
    ids = [int(i) for i in ids]
    out: dict[int, int] = {}
    for i in range(0, len(ids), _CHUNK):
        out.update(dict(s.execute(select(Person.id, Person.media_id).where(Person.id.in_(ids[i:i + _CHUNK]))).all()))
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
    q = select(Person.id).join(Media, Media.id == Person.media_id)
    if f.collection:
        q = q.where(Media.collection == f.collection)
    if f.kind:
        q = q.where(Media.kind == f.kind)
    if f.path_glob:
        q = q.where(Media.path.op("GLOB")(f.path_glob))
    if f.cluster:
        q = q.where(Person.id.in_(clusterings.member_query(*f.cluster)))
    if f.after_id is not None:
        q = q.where(Person.id > f.after_id)
    if ids is not None and len(ids) <= 10 * _CHUNK:  # few label matches: check only those against the media
        found: list[int] = []
        for i in range(0, len(ids), _CHUNK):
            found += s.execute(q.where(Person.id.in_(ids[i:i + _CHUNK].tolist()))).scalars().all()
        return np.array(sorted(found), np.int64)
    media_ids = np.fromiter(s.execute(q.order_by(Person.id)).scalars(), np.int64)
    return media_ids if ids is None else np.intersect1d(media_ids, ids, assume_unique=True)
