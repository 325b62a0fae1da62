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
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import wait
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np

from db import activities, clusterings, labels, repo
from db.activities import Counts
from db.clusterings import ClusteringRow
from db.errors import DbError, DbMissingError, NotAStoreError, SchemaVersionError, UpgradeError
from db.repo import Database, NewMedia
from db.schema import COUNT_MIN_P, Media

from .errors import InputError, QueryError, StoreError
from .faults import fault_point
from .indexes import INDEX_DIR, IndexSet, Problem, index_errors
from .lock import WriteLock, upgrade_lock
from .space import ACTIVITY, ALL_INDEX_NAMES, INDEX_NAMES, VectorSpace, space_fingerprint
from .tracks import link

__all__ = ["ALL_INDEX_NAMES", "INDEX_NAMES", "CheckReport", "Problem", "Store", "change_signature",
           "space_fingerprint", "store_identity"]

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


class Store:
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
                        upgrade_lock=lambda: upgrade_lock(self.data_dir, held=self._lock is not None))

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

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------ what ingest asks of SQLite

    def media_with_hashes(self, hashes: Sequence[str]) -> dict[str, int]:
        """The first non-duplicate media id holding each of these content hashes (those stored)."""
        with self.db.session() as s:
            return repo.media_by_hash(s, hashes)

    def touch_media(self, media_id: int, size: int, mtime: float) -> None:
        """Record a new size and mtime for a media whose content is unchanged (writers)."""
        self.require_lock()
        with self.db.session() as s:
            repo.touch_media(s, media_id, size, mtime)

    def record_failures(self, failures: Sequence[tuple[str, str, str]]) -> None:
        """Record (path, stage, reason) failures of a run, replacing older ones of the same paths (writers)."""
        self.require_lock()
        if failures:
            with self.db.session() as s:
                repo.record_failures(s, failures)

    # ------------------------------------------------------------------ writes

    @index_errors()
    def write(self, items: list[NewMedia]) -> np.ndarray:
        """Add media with their persons: one SQLite transaction, then the FAISS add. Returns new person ids.

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
        arrays = None
        if persons:  # every check before the commit: a row SQLite holds is a row FAISS takes
            arrays, problem = repo.as_arrays(persons, row.visual_dim)
            if arrays is None:
                self._raise_first_problem(items, row.visual_dim)
        add_to, vecs = tuple(indexes), None
        if arrays is not None:
            if np.isnan(arrays.norms).any() and ACTIVITY in indexes:  # no A2V feature: no activity space
                self.space.persons_changed(without_norm=True)
                add_to = tuple(n for n in indexes if n != ACTIVITY)
            self.space.language()  # loaded here, not in the second thread
            vecs = self.indexes.in_second_thread(
                self.space.vectors, arrays.visual.astype(np.float32), arrays.pasta.astype(np.float32),
                arrays.verbs.astype(np.float32), arrays.norms, add_to, arrays.objects)
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

    @staticmethod
    def _raise_first_problem(items: list[NewMedia], visual_dim: int) -> None:
        """InputError naming the first person that cannot be stored."""
        for m in items:
            for j, p in enumerate(m.persons):
                problem = repo.person_problem(p, visual_dim)
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
            untracked = repo.videos_with_untracked_persons(s)
        if untracked:
            report.problems.append(Problem("tracks", f"{len(untracked)} videos have persons without a track (e.g. "
                                           f"media ids {untracked[:5]})", fixed=repair))
            if repair:
                self.require_lock()
                with self.db.session() as s:
                    repo.rebuild_tracks(s, untracked, link=link)
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

    # ------------------------------------------------------------------ queries for api / search / export
    # Each method is one SQLite session (one transaction): callers above the store never open their own.

    def meta(self, key: str) -> str | None:
        """A value of the store's key-value metadata (e.g. ``detector``), or None."""
        with self.db.session() as s:
            return repo.get_meta(s, key)

    def set_meta(self, key: str, value: str) -> None:
        """Record a metadata value (writers)."""
        self.require_lock()
        with self.db.session() as s:
            repo.set_meta(s, key, value)

    def summary(self) -> tuple[dict[str, int], dict[str, int], list[tuple[str, str, str]]]:
        """(counts of media, persons, tracks, failures; media per collection; the 20 latest failures)."""
        with self.db.session() as s:
            return repo.counts(s), repo.collections(s), repo.failures(s, limit=20)

    def media(self, media_id: int) -> Media | None:
        """One media row by id, or None."""
        with self.db.session() as s:
            return repo.get_media(s, media_id)

    def media_states(self, paths: Sequence[str]) -> dict[str, repo.MediaState]:
        """Stored id, hash, size and mtime of the media at these paths (those stored)."""
        with self.db.session() as s:
            return repo.media_by_path(s, paths)

    def media_ids_under(self, paths: Sequence[str]) -> list[int]:
        """Ids of the media at these paths or inside these folders."""
        with self.db.session() as s:
            return repo.media_ids_under(s, paths)

    def persons(self, ids: Sequence[int]) -> list[repo.PersonRow]:
        """Persons with their media, in the order of ``ids``; unknown ids are left out."""
        with self.db.session() as s:
            return repo.fetch_persons(s, ids)

    def person_vectors(self, ids: Sequence[int]) -> repo.Vectors:
        """The stored vectors (visual, PaSta, verbs, norms) of these persons."""
        with self.db.session() as s:
            return repo.fetch_vectors(s, ids)

    def media_ids_of(self, ids: Sequence[int]) -> dict[int, int]:
        """The media id of each of these persons."""
        with self.db.session() as s:
            return repo.media_ids_of(s, ids)

    def filter_person_ids(self, filters: repo.Filters) -> np.ndarray | None:
        """Ids of the persons that pass ``filters`` (None: no filter)."""
        with self.db.session() as s:
            _check_cluster_filter(s, filters)
            return repo.filter_person_ids(s, filters)

    def check_filters(self, filters: repo.Filters) -> None:
        """QueryError when a filter names something the store does not hold (a clustering, a cluster)."""
        with self.db.session() as s:
            _check_cluster_filter(s, filters)

    def person_ids(self, filters: repo.Filters | None = None) -> np.ndarray:
        """Ids (sorted) of the persons that pass ``filters``, or of every person."""
        with self.db.session() as s:
            _check_cluster_filter(s, filters)
            ids = repo.filter_person_ids(s, filters) if filters is not None else None
            return repo.person_ids(s) if ids is None else ids

    def iter_vectors(self, ids: np.ndarray, chunk: int = 20000) -> Iterator[repo.Vectors]:
        """The stored vectors of the persons ``ids`` (sorted), ``chunk`` at a time, from one read snapshot."""
        with self.db.snapshot() as s:
            yield from repo.iter_vectors(s, ids=ids, chunk=chunk)

    # ------------------------------------------------------------------ activity counts and clusterings

    def activity_counts(self, filters: repo.Filters | None, min_p: float, examples: int,
                        choose: Callable[[Counts], list[tuple]]) -> tuple[Counts, dict, str]:
        """How many persons (passing ``filters``) show each PaSta, verb and verb + PaSta pair (probability >=
        ``min_p``), with ``examples`` example persons of the labels and pairs that ``choose(counts)`` names
        (keys ``("pasta", c)``, ``("verbs", v)``, ``("pair", v, c)``): (counts, {key: ids}, how they were counted).
        A whole store, a collection or a media kind at the kept threshold reads the kept counts (a few rows) and
        takes examples from its newest persons; other filters or thresholds read the probabilities of the persons
        that pass (db/activities.py)."""
        with self.db.snapshot() as s:
            f = filters or repo.Filters()
            _check_cluster_filter(s, f)
            if min_p == COUNT_MIN_P and not (f.path_glob or f.where or f.cluster or f.after_id is not None):
                counts = activities.read_counts(s, f.collection, f.kind)
                pool = activities.newest_ids(s, activities.EXAMPLE_POOL, f.collection, f.kind)
                keys = choose(counts)
                found = activities.scan_counts(s, pool, examples, [k[1:] for k in keys if k[0] == "pair"], min_p)[1]
                found = {k: found.get(k, []) for k in keys}
                return counts, found, "kept"
            ids = repo.filter_person_ids(s, f)
            ids = repo.person_ids(s) if ids is None else ids
            counts, found = activities.scan_counts(s, ids, examples, min_p=min_p)
            keys = choose(counts)
            pairs = [k[1:] for k in keys if k[0] == "pair"]
            if pairs:
                found.update(activities.scan_counts(s, ids, examples, pairs, min_p=min_p)[1])
            return counts, {k: found.get(k, []) for k in keys}, "scanned"

    def recount_activities(self) -> None:
        """Recompute the kept activity counts from every stored person (writers)."""
        self.require_lock()
        with self.db.session() as s:
            activities.recount_all(s)

    def save_clustering(self, name: str, space: str, filters: dict, max_person_id: int, centroids: np.ndarray,
                        clusters: list[dict], info: dict, person_ids: np.ndarray, assignment: np.ndarray) -> int:
        """Store a named clustering with its members, replacing one of the same name (writers)."""
        self.require_lock()
        with self.db.session() as s:
            return clusterings.save(s, name, space, filters, max_person_id, centroids, clusters, info, person_ids,
                                    assignment)

    def clustering(self, name: str) -> tuple[ClusteringRow, dict[int, int]] | None:
        """A stored clustering and the live size of each cluster, or None."""
        with self.db.session() as s:
            row = clusterings.get(s, name)
            return None if row is None else (row, clusterings.sizes(s, row.id))

    def clusterings(self) -> list[ClusteringRow]:
        """Every stored clustering, by name."""
        with self.db.session() as s:
            return clusterings.all_rows(s)

    def drop_clustering(self, name: str) -> bool:
        """Delete a clustering (writers); False when there is none of that name."""
        self.require_lock()
        with self.db.session() as s:
            return clusterings.drop(s, name)

    def clusters_of(self, clustering_id: int, person_ids: np.ndarray) -> np.ndarray:
        """The cluster of each person in a clustering (-1: not a member)."""
        with self.db.session() as s:
            return clusterings.clusters_of(s, clustering_id, person_ids)

    def tracks_of(self, ids: Sequence[int]) -> tuple[dict[int, int | None], dict[int, list[int]]]:
        """(the track of each person, None for image persons; the members of those tracks in id order)."""
        with self.db.session() as s:
            track_of = repo.tracks_of(s, ids)
            return track_of, repo.track_members(s, [t for t in track_of.values() if t is not None])

    def tracks(self, track_ids: Sequence[int]) -> tuple[dict[int, repo.TrackRow], dict[int, list[int]]]:
        """(the tracks that exist among ``track_ids``; their members in id order)."""
        with self.db.session() as s:
            tracks = repo.fetch_tracks(s, track_ids)
            return tracks, repo.track_members(s, list(tracks))

    def track_members(self, track_ids: Sequence[int]) -> dict[int, list[int]]:
        """The person ids of each track, in id order (empty for a track that does not exist)."""
        with self.db.session() as s:
            return repo.track_members(s, track_ids)

    def person_batches(self, filters: repo.Filters | None, batch_size: int) -> Iterator[dict]:
        """The persons passing ``filters`` in id order, as column batches, all read from one SQLite snapshot."""
        with self.db.snapshot() as s:
            _check_cluster_filter(s, filters)
            ids = repo.filter_person_ids(s, filters) if filters is not None else None
            if ids is not None and not len(ids):
                return
            yield from repo.iter_person_batches(s, ids, chunk=batch_size)


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


def _check_cluster_filter(s, filters: repo.Filters | None) -> None:
    """QueryError when a cluster filter names no stored clustering or a cluster it does not have."""
    if filters is None or filters.cluster is None:
        return
    name, number = filters.cluster
    row = clusterings.get(s, name)
    if row is None:
        names = ", ".join(r.name for r in clusterings.all_rows(s)) or "none yet"
        raise QueryError(f"no clustering named {name!r} (stored: {names}); make one with "
                         f"`manage.py cluster --name {name}`")
    if not 0 <= number < row.k:
        raise QueryError(f"clustering {name!r} has clusters 0 to {row.k - 1}, not {number}")


def change_signature(data_dir: Path | str) -> tuple:
    """What changes whenever a writer commits or saves: size and mtime of the SQLite file, its WAL and the index
    manifests (a few ``stat`` calls). Readers compare it between requests to know when to :meth:`Store.refresh`."""
    folder = Path(data_dir)
    out = []
    for p in (folder / DB_NAME, folder / f"{DB_NAME}-wal", *(folder / INDEX_DIR / f"{n}.json" for n in INDEX_NAMES)):
        try:
            st = p.stat()
            out.append((st.st_size, st.st_mtime_ns, st.st_ino))
        except OSError:
            out.append(None)
    return tuple(out)
