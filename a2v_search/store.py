"""A data directory: SQLite metadata (the truth) + FAISS indexes derived from it + the write lock.

Write protocol: one SQLite transaction per batch of whole media, then the FAISS add in memory (indexes.py saves
them atomically from time to time and at the end, and catches them up with SQLite on open). Layout::

    a2v.sqlite          metadata (WAL)
    index/              the FAISS indexes of the store's spaces (indexes.py; the spaces: space.py)
    write.lock          held by the one writer

The store owns every database session: the layers above call its query methods, one transaction each; its vector
space is ``store.space`` (space.py) and its indexes ``store.indexes`` (indexes.py).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import wait
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np

from db import activities, clusterings, labels, repo
from db.engine import Database, set_meta
from db.errors import DbError, DbMissingError, NotAStoreError, SchemaVersionError, UpgradeError
from db.tracks import rebuild_tracks, videos_with_untracked_persons
from db.values import NewMedia, PersonArrays, as_arrays, person_problem

from .errors import InputError, StoreError
from .faults import fault_point
from .indexes import INDEX_DIR, IndexSet, Problem, index_errors
from .lock import WriteLock, upgrade_lock
from .queries import StoreQueries
from .space import ACTIVITY, INDEX_NAMES, VectorSpace
from .tracks import link

DB_NAME = "a2v.sqlite"
STORE_ID = "store_id"  # meta key: a random id a writer gives a store once (its identity with the file's inode)


def _store_error(e: DbError, data_dir: Path) -> StoreError:
    """A db error as a StoreError, with the command-line fix where there is one."""
    hint = {DbMissingError: f": run `manage.py ingest PATH --data-dir {data_dir}` first",
            NotAStoreError: "; choose another --data-dir",
            SchemaVersionError: ". Use the a2v-search release that wrote it, or ingest again into a new --data-dir",
            UpgradeError: "; open it once where it is writable (e.g. `manage.py stats --data-dir ...`)"}
    return StoreError(f"{e}{hint.get(type(e), '')}")


@dataclass
class CheckReport:
    problems: list[Problem] = field(default_factory=list)
    counts: dict = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return all(p.fixed for p in self.problems)


class Store(StoreQueries):
    """Open a data directory. ``create`` makes it if needed (writers); readers open an existing one."""

    def __init__(self, data_dir: Path | str, create: bool = False):
        self.data_dir = Path(data_dir).expanduser()
        if create:
            try:
                self.data_dir.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise StoreError(f"cannot create data directory {self.data_dir}: {e.strerror}") from e
        elif not (self.data_dir / DB_NAME).is_file():
            raise StoreError(f"no store at {self.data_dir} (no {DB_NAME}); ingest something first: "
                             f"`python manage.py ingest PATH --data-dir {self.data_dir}`")
        st = (self.data_dir / DB_NAME).stat() if (self.data_dir / DB_NAME).exists() else None
        self._lock: WriteLock | None = None
        self.db = self._open_db(create=create, read_only=not create)  # readers never write (but an upgrade)
        #: (device, inode, creation id) of the database this object opened; see :func:`store_identity`
        self.identity = (st.st_dev, st.st_ino, self.meta(STORE_ID)) if st is not None else None
        self.space = VectorSpace(self)
        self.indexes = IndexSet(self)

    def _open_db(self, create: bool, read_only: bool) -> Database:
        """The store's SQLite database, its errors turned into StoreErrors with the CLI's fix."""
        return Database(self.data_dir / DB_NAME, create=create, read_only=read_only, link=link,
                        translate=partial(_store_error, data_dir=self.data_dir),
                        upgrade_lock=lambda: upgrade_lock(self.data_dir, held=self._lock is not None),
                        checkpoint_hook=partial(fault_point, "checkpoint"))

    # ------------------------------------------------------------------ lock

    def lock(self, what: str) -> Store:
        """Take the write lock (StoreLockedError if another writer holds it)."""
        if self._lock is None:
            self._lock = WriteLock(self.data_dir, what).acquire()
            if self.db.read_only:  # opened as a reader: writing needs a read-write connection
                self.db.close()
                self.db = self._open_db(create=False, read_only=False)
            if self.meta(STORE_ID) is None:
                self.set_meta(STORE_ID, uuid.uuid4().hex)
        return self

    @property
    def writable(self) -> bool:
        return self._lock is not None

    def require_lock(self) -> None:
        """StoreError unless this process holds the write lock."""
        if not self.writable:
            raise StoreError("this store was opened for reading; writing needs the write lock")

    def close(self, save: bool = True) -> None:
        """Save changed indexes (writers, unless ``save=False``), release the lock, close the database."""
        try:
            self.indexes.close(save=save and self.writable)
        finally:
            if self._lock is not None:
                self._lock.release()
                self._lock = None
            self.db.close()

    def _write(self, change: Callable, *args):
        """``change(session, *args)`` in one transaction (writers)."""
        self.require_lock()
        return self._read(change, *args)

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------ writes (writers; the reads: queries.py)

    def set_meta(self, key: str, value: str) -> None:
        """Record a metadata value."""
        self._write(set_meta, key, value)

    def touch_media(self, media_id: int, size: int, mtime: float) -> None:
        """Record a new size and mtime for a media whose content is unchanged."""
        self._write(repo.touch_media, media_id, size, mtime)

    def record_failures(self, failures: Sequence[tuple[str, str, str]]) -> None:
        """Record (path, stage, reason) failures of a run, replacing older ones of the same paths."""
        self.require_lock()
        if failures:
            self._write(repo.record_failures, failures)

    def recount_activities(self) -> None:
        """Recompute the kept activity counts from every stored person."""
        self._write(activities.recount_all)

    def save_clustering(self, name: str, space: str, filters: dict, max_person_id: int, centroids: np.ndarray,
                        clusters: list[dict], info: dict, person_ids: np.ndarray, assignment: np.ndarray) -> int:
        """Store a named clustering with its members, replacing one of the same name."""
        return self._write(clusterings.save, name, space, filters, max_person_id, centroids, clusters, info,
                           person_ids, assignment)

    def drop_clustering(self, name: str) -> bool:
        """Delete a clustering; False when there is none of that name."""
        return self._write(clusterings.drop, name)

    # ------------------------------------------------------------------ the write protocol


    @index_errors()
    def write(self, items: list[NewMedia], arrays: PersonArrays | None = None) -> np.ndarray:
        """Add media with their persons: one SQLite transaction, then the FAISS add. Returns new person ids.
        ``arrays``: the items' persons, in order, as ``as_arrays`` gave them (checked) to a caller that checked them
        first; made here when not given.

        Two threads: while this one checks the batch and writes its rows, the writer's second thread finishes the
        FAISS add of the previous batch and computes this batch's vectors (numpy, FAISS and SQLite release the
        GIL). The vectors are awaited inside the transaction, so an error there stores nothing; the FAISS add
        runs after the commit and is awaited by the next write and by anything that uses the indexes
        (``indexes.get``, ``indexes.save``, :meth:`close`...). A kill before it is done is a kill after the commit:
        the next open adds those persons from SQLite."""
        self.require_lock()
        row = self.space.row()
        indexes = self.indexes.unsettled()
        persons = [p for m in items for p in m.persons]
        if not persons:
            arrays = None
        elif arrays is None:  # every check before the commit: a row SQLite holds is a row FAISS takes
            arrays, problem = as_arrays(persons, row.visual_dim)
            if arrays is None:
                self._raise_first_problem(items, row.visual_dim)
        elif len(arrays.pasta) != len(persons):
            raise ValueError(f"arrays of {len(arrays.pasta)} persons given for {len(persons)}")
        add_to, vecs = tuple(indexes), None
        if arrays is not None:
            if np.isnan(arrays.norms).any() and ACTIVITY in indexes:  # no A2V feature: no activity space
                self.space.persons_changed(without_norm=True)
                add_to = tuple(n for n in indexes if n != ACTIVITY)
            self.space.language()  # loaded here, not in the second thread
            vecs = self.indexes.in_second_thread(self._vectors, arrays, add_to)
        try:
            with self.db.session() as s:
                _, ids, removed = repo.add_media(s, row.id, items, link=link, arrays=arrays)
                repo.clear_failures(s, [m.path for m in items])
                # reliability tests kill the process after a chunk is written, before the commit
                labels.close_chunks(s, each=partial(fault_point, "label_chunk"))
                vectors = vecs.result() if vecs is not None else None  # an error here stores nothing
        finally:
            if vecs is not None:
                wait([vecs])
        fault_point("after_commit")
        self.indexes.add_committed(indexes, add_to, ids, removed, vectors)
        self.space.persons_changed(removed=len(removed))  # old persons replaced: count again
        return ids

    def _vectors(self, arrays: PersonArrays, names: tuple[str, ...]) -> dict[str, np.ndarray]:
        """The vectors of checked persons in the spaces ``names`` (the writer's second thread: the float16 values
        are widened there too)."""
        return self.space.vectors(arrays.visual.astype(np.float32), arrays.pasta.astype(np.float32),
                                  arrays.verbs.astype(np.float32), arrays.norms, names, arrays.objects)

    @staticmethod
    def _raise_first_problem(items: list[NewMedia], visual_dim: int) -> None:
        """InputError naming the first person that cannot be stored."""
        for m in items:
            for j, p in enumerate(m.persons):
                problem = person_problem(p, visual_dim)
                if problem:
                    raise InputError(f"{m.path}: person {j}: {problem}; nothing of this batch was stored")
        raise InputError(f"{items[0].path}: a person cannot be stored; nothing of this batch was stored")

    @index_errors()
    def remove_media(self, media_ids: list[int]) -> np.ndarray:
        """Delete media and their persons from SQLite, then from FAISS. Returns removed person ids."""
        self.require_lock()
        indexes = self.indexes.get() if self.space.row() is not None else {}
        with self.db.session() as s:
            removed = repo.delete_media(s, media_ids)
        for idx in indexes.values():
            idx.remove(removed)
        if len(removed):
            self.indexes.mark_changed(indexes)
            self.space.persons_changed(removed=len(removed))  # old persons removed: count again
        return removed

    # ------------------------------------------------------------------ consistency

    def check(self, repair: bool = False) -> CheckReport:
        """Compare SQLite and FAISS (ids, counts, manifests, spaces, orphan files); fix what is found if asked."""
        self.indexes.settle()
        report = CheckReport()
        with self.db.session() as s:
            report.counts = repo.counts(s)
            db_ids = repo.person_ids(s)
            untracked = videos_with_untracked_persons(s)
        if untracked:
            report.problems.append(Problem("tracks", f"{len(untracked)} videos have persons without a track (e.g. "
                                           f"media ids {untracked[:5]})", fixed=repair))
            if repair:
                self.require_lock()
                with self.db.session() as s:
                    rebuild_tracks(s, untracked, link=link)
        with self.db.snapshot() as s:
            kept = activities.read_counts(s)
            counted = activities.scan_counts(s, repo.person_ids(s), examples=0)[0]
        if not activities.same(kept, counted):
            report.problems.append(Problem("activity counts", f"the kept counts (of {kept.persons} persons) differ "
                                           f"from the {counted.persons} stored persons' labels", fixed=repair))
            if repair:
                self.recount_activities()
        if self.space.fingerprint is None:
            return report
        report.problems += self.indexes.problems(db_ids, repair)
        if repair and any(not p.fixed for p in report.problems):
            self.require_lock()
            self.indexes.rebuild()
            for p in report.problems:
                p.fixed = True
        return report


def store_identity(data_dir: Path | str) -> tuple | None:
    """(device, inode, creation id) of the store's database file as it is now (None: no store): another value than
    :attr:`Store.identity` means the store was replaced (a folder moved in its place) since that Store was opened."""
    path = Path(data_dir) / DB_NAME
    try:
        st = path.stat()
    except OSError:
        return None
    probe = Store(data_dir)
    try:
        return st.st_dev, st.st_ino, probe.meta(STORE_ID)
    finally:
        probe.close()


def change_signature(data_dir: Path | str) -> tuple:
    """What changes whenever a writer commits or saves: size and mtime of the SQLite file, its WAL and the index
    manifests (a few ``stat`` calls). Readers compare it between requests to know when to refresh
    (``A2VSearch.refresh``)."""
    folder = Path(data_dir)
    out = []
    for p in (folder / DB_NAME, folder / f"{DB_NAME}-wal", *(folder / INDEX_DIR / f"{n}.json" for n in INDEX_NAMES)):
        try:
            st = p.stat()
            out.append((st.st_size, st.st_mtime_ns, st.st_ino))
        except OSError:
            out.append(None)
    return tuple(out)
