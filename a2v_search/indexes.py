"""A store's FAISS indexes, one per space: loaded on first use and caught up with SQLite (the truth), grown,
rebuilt and saved. Layout in the data directory::

    index/              visual.N.faiss + visual.json, language.N.faiss + language.json, and with trained heads
                        activity.N.faiss + activity.json (A2V's classifier feature, see space.py)

Indexes are saved atomically from time to time and at the end, with a manifest (count, max id, space fingerprint,
the newest person's digest, the language basis). Loading catches up: rows newer than the manifest are added, rows
deleted since are removed; a missing or corrupt index, or one that holds persons SQLite lost, is rebuilt from
SQLite with a warning.

The activity index needs the heads to compute its vectors, so it is kept only while a source of them is set
(:meth:`VectorSpace.set_activity_source`, done by the API); a writer without one leaves it behind, and the next
open with one catches it up like any other index.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from db import repo
from db.engine import get_meta, set_meta
from index import (
    IndexCorruptError,
    IndexInputError,
    IndexMissingError,
    UnknownIdError,
    VectorIndex,
    VectorIndexError,
    choose_spec,
    one_thread_here,
    orphan_files,
    set_fault_hook,
)
from index.files import read_manifest_file

from .errors import InputError, QueryError, SpaceMismatchError, StoreError
from .faults import fault_point
from .space import INDEX_NAMES

if TYPE_CHECKING:
    from .store import Store

log = logging.getLogger("a2v_search")

INDEX_DIR = "index"
#: the fix for an index that cannot be used
REINDEX_HINT = "run `python manage.py reindex` to rebuild it from SQLite"

set_fault_hook(fault_point)  # the reliability tests' A2V_FAULT points inside index/ (a no-op unless armed)


@contextmanager
def index_errors() -> Iterator[None]:
    """Index errors as a2v-search errors, with the command-line fix where an index cannot be used."""
    try:
        yield
    except (IndexMissingError, IndexCorruptError) as e:
        raise StoreError(f"{e}; {REINDEX_HINT}") from e
    except IndexInputError as e:
        raise InputError(str(e)) from e
    except UnknownIdError as e:
        raise QueryError(f"{e} or run `python manage.py doctor`") from e
    except VectorIndexError as e:
        raise StoreError(str(e)) from e


@dataclass
class Problem:
    """One inconsistency found by :meth:`Store.check`."""

    what: str
    detail: str
    fixed: bool = False

    def as_dict(self) -> dict:
        return {"what": self.what, "detail": self.detail, "fixed": self.fixed}


class IndexSet:
    """The FAISS indexes of a store (``store.indexes``), and the writer's second thread that adds to them."""

    def __init__(self, store: Store):
        self._store = store
        self.folder = store.data_dir / INDEX_DIR
        self._indexes: dict[str, VectorIndex] | None = None
        self._dirty: set[str] = set()
        self._last_save = time.monotonic()
        self._worker: ThreadPoolExecutor | None = None  # the writer's second thread: vectors and FAISS adds
        self._pending: Future | None = None  # the FAISS add of the last batch written, until settled

    @index_errors()
    def get(self, names: Sequence[str] | None = None) -> dict[str, VectorIndex]:
        """The FAISS indexes of ``names`` (default: every space of the store), loaded on first use and caught up
        with SQLite (rebuilt with a warning if missing or corrupt), holding every person written."""
        self.settle()
        return self.unsettled(names)

    def unsettled(self, names: Sequence[str] | None = None) -> dict[str, VectorIndex]:
        """:meth:`get` without waiting for the last batch's FAISS add (the writer's own use)."""
        space = self._store.space
        if space.row() is None:
            raise StoreError(f"store {self._store.data_dir} is empty; ingest something first")
        if self._indexes is None:
            self._indexes = {}
        for name in space.index_names() if names is None else names:
            if name not in self._indexes:
                self._indexes[name] = self._load(name)
        return {name: self._indexes[name] for name in (space.index_names() if names is None else names)}

    def current(self) -> bool:
        """Whether every saved index holds exactly SQLite's persons, judged from the manifests and two indexed
        queries (no index is loaded): a run that wrote nothing checks this instead of loading FAISS."""
        if self._store.space.row() is None:
            return True
        with self._store.db.session() as s:
            newest = repo.id_stats(s, upto_id=2**62)[1]
            for name in INDEX_NAMES:
                try:
                    manifest = read_manifest_file(self.folder, name)
                except (OSError, ValueError):
                    return False
                if (manifest is None or manifest.get("space") != self._store.space.fingerprint
                        or self._other_basis(name, manifest)):
                    return False
                max_id = int(manifest.get("max_id", -1))
                if repo.id_stats(s, upto_id=max_id) != (int(manifest.get("count", -1)), max_id) or newest > max_id:
                    return False
        return True

    def _load(self, name: str) -> VectorIndex:
        fp, data_dir = self._store.space.fingerprint, self._store.data_dir
        try:
            idx, manifest = load_retrying(self.folder, name)
        except IndexMissingError:
            with self._store.db.session() as s:
                n = repo.counts(s)["persons"]
            if n:
                log.warning("FAISS index %r is missing: rebuilding it from SQLite (%d persons)", name, n)
            return self.build(name)
        except IndexCorruptError as e:
            log.warning("%s; rebuilding it from SQLite (nothing is lost)", e)
            return self.build(name)
        if manifest.get("space") != fp:
            raise SpaceMismatchError(f"FAISS index {name!r} in {self.folder} was built for vector space "
                                     f"{manifest.get('space')}, but this store's space is {fp}; rebuild it with "
                                     f"`python manage.py reindex --data-dir {data_dir}`")
        stale = self._newer_than_sqlite(manifest) or self._other_basis(name, manifest)
        if stale:
            log.warning("FAISS index %r %s; rebuilding it from SQLite%s", name, stale,
                        "" if self._store.writable else f" (in memory: `python manage.py reindex --data-dir "
                        f"{data_dir}` saves it once)")
            return self.build(name)
        self._catch_up(name, idx, int(manifest["max_id"]))
        return idx

    def _other_basis(self, name: str, manifest: dict) -> str | None:
        """Why a saved language index is not in the store's language basis (saved by a version that did not record
        it, or in another basis), or None. Other indexes have no basis."""
        digest = self._store.space.phrase_basis().digest() if name == "language" else None
        if name != "language" or manifest.get("basis") == digest:
            return None
        if manifest.get("basis") is None:
            return "was saved before its language basis was recorded (an older version)"
        return f"was built in language basis {manifest['basis']}, not the store's {digest}"

    @index_errors()
    def refresh(self) -> None:
        """Readers: bring the loaded indexes up to date with what writers committed since (persons added, removed
        or replaced), in memory. Nothing is written; indexes not loaded yet are left to load."""
        self.settle()
        for name, idx in (self._indexes or {}).items():
            ids = idx.ids()
            self._catch_up(name, idx, int(ids.max()) if len(ids) else -1)

    def _newer_than_sqlite(self, manifest: dict) -> str | None:
        """Why an index holds persons SQLite lost (an OS crash or power cut took SQLite's last transactions
        after the index was saved; their ids may since have been handed out again), or None."""
        max_id, last = int(manifest.get("max_id", -1)), manifest.get("last")
        if max_id < 0:
            return None
        with self._store.db.session() as s:
            seq = repo.person_sequence(s)
            digest = repo.person_digest(s, max_id) if last else None
        if seq < max_id:
            return (f"holds person ids up to {max_id} but SQLite has only ever handed out ids up to {seq} (SQLite "
                    "lost its last transactions, e.g. in a power cut)")
        if digest is not None and digest != last:
            return (f"holds another person under id {max_id} than SQLite (SQLite lost its last transactions, e.g. "
                    "in a power cut, and the id was used again)")
        return None

    def _catch_up(self, name: str, idx: VectorIndex, max_id: int) -> None:
        """Remove persons deleted since the index was saved; add persons newer than it."""
        with self._store.db.session() as s:
            n_db, max_db = repo.id_stats(s, upto_id=max_id)  # one indexed query; ids are listed only on a mismatch
            if n_db != idx.ntotal or (n_db and max_db != max_id):
                db_ids = repo.person_ids(s, upto_id=max_id)
                have = idx.ids()
                stale = np.setdiff1d(have, db_ids)
                if len(stale):
                    idx.remove(stale)
                    log.info("index %s: removed %d persons deleted since it was saved", name, len(stale))
                missing = np.setdiff1d(db_ids, have)
                if len(missing):
                    self._add_from_db(s, name, idx, ids=missing)
                self._dirty.add(name)
            added = self._add_from_db(s, name, idx, after_id=max_id)
        if added:
            log.info("index %s: caught up %d persons newer than its last save", name, added)
            self._dirty.add(name)

    def _add_from_db(self, s, name: str, idx: VectorIndex, after_id: int = -1, ids=None) -> int:
        n = 0
        for batch in repo.iter_vectors(s, after_id=after_id, ids=ids):
            vecs = self._store.space.vectors(batch.visual, batch.pasta, batch.verbs, batch.norms, (name,),
                                             batch.objects)[name]
            idx.add(batch.ids, vecs, allow_zero=True)
            n += len(batch.ids)
        return n

    def _spec(self) -> tuple[str, int | None]:
        with self._store.db.session() as s:
            spec = get_meta(s, "index_spec", "auto")
            budget = get_meta(s, "index_memory_mb")
        return spec or "auto", int(budget) if budget else None

    def build(self, name: str, spec: str | None = None) -> VectorIndex:
        """A new index of every person in SQLite in the space ``name`` (the configured spec unless ``spec``)."""
        conf_spec, budget = self._spec()
        with self._store.db.session() as s:
            n = repo.counts(s)["persons"]
            idx = VectorIndex.create(self._store.space.dim(name), spec or conf_spec, expected_n=n,
                                     memory_budget_mb=budget)
            self._add_from_db(s, name, idx)
        self._dirty.add(name)
        return idx

    @index_errors()
    def rebuild(self, spec: str | None = None, memory_budget_mb: int | None = None) -> dict[str, str]:
        """Rebuild every index from SQLite (optionally with a new index spec, remembered) and save them; a store
        made before this version's language vector is migrated first."""
        self._store.require_lock()
        self.settle()
        self._store.space.migrate_language()
        if spec or memory_budget_mb:
            with self._store.db.session() as s:
                if spec:
                    set_meta(s, "index_spec", spec)
                if memory_budget_mb:
                    set_meta(s, "index_memory_mb", str(int(memory_budget_mb)))
        self._indexes = {name: self.build(name) for name in self._store.space.index_names()}
        self.save()
        return {name: idx.spec for name, idx in self._indexes.items()}

    @index_errors()
    def save(self) -> None:
        """Save changed indexes atomically with their manifests (writers only)."""
        self._store.require_lock()
        self.settle()
        if self._indexes is None:
            return
        self._maybe_grow()
        jobs = []
        for name in sorted(self._dirty & set(self._indexes)):
            idx = self._indexes[name]
            with self._store.db.session() as s:  # the newest person, to tell a reused id apart on the next open
                last = repo.person_digest(s, int(idx.ids()[-1])) if idx.ntotal else None
            manifest = {"space": self._store.space.fingerprint, "last": last}
            if name == "language":  # the basis its vectors are in, recorded in SQLite first
                manifest["basis"] = self._store.space.phrase_basis().digest()
                self._store.space.record_basis()
            jobs.append((name, partial(idx.save, self.folder, name, manifest)))
        # all but the last in the writer's second thread, the last here: each index's file is written, hashed and
        # synced while the other's is (FAISS, hashlib and fsync release the GIL); each save is atomic on its own
        saving = [(name, self.in_second_thread(save)) for name, save in jobs[:-1]]
        errors = []
        try:
            for name, save in jobs[-1:]:
                try:
                    save()
                except (OSError, RuntimeError) as e:
                    errors.append((name, e))
        finally:  # never leave a save running behind
            for name, future in saving:
                try:
                    future.result()
                except (OSError, RuntimeError) as e:
                    errors.append((name, e))
        if errors:  # disk full, read-only folder: SQLite still holds everything
            name, e = errors[0]
            raise StoreError(f"cannot save the FAISS index {name!r} in {self.folder}: {e}. SQLite holds every "
                             "person, so nothing is lost; free disk space, then run the same command again (or "
                             "`manage.py reindex`)") from e
        self._dirty.clear()
        self._last_save = time.monotonic()

    def save_due(self, every_s: float) -> bool:
        """Whether indexes changed since the last save, ``every_s`` seconds or more ago (then :meth:`save`)."""
        return bool(self._dirty) and time.monotonic() - self._last_save >= every_s

    def mark_changed(self, names: Sequence[str]) -> None:
        """Have the indexes ``names`` saved by the next save (they changed in memory)."""
        self._dirty.update(names)

    def _maybe_grow(self) -> None:
        """With the automatic spec, switch an index to the type its size now calls for (e.g. Flat -> IVF)."""
        conf_spec, budget = self._spec()
        if conf_spec != "auto":
            return
        for name in list(self._indexes):
            idx = self._indexes[name]
            want = choose_spec(idx.ntotal, idx.dim, budget)
            if want != idx.spec:  # a few times over a store's life: Flat -> IVF, nlist doublings, Flat -> SQ8 codes
                # a warning, so that the CLI shows it: at millions of persons this is minutes of silence otherwise
                log.warning("index %s: %s persons, rebuilding it from SQLite as %s (was %s); this happens each time "
                            "the store grows about 4x", name, f"{idx.ntotal:,}", want, idx.spec)
                # the old index goes first, so that memory never holds both: the new one is built from SQLite
                # (which holds every person), and if that fails the next use loads the saved one and catches up
                del self._indexes[name], idx
                self._indexes[name] = self.build(name, want)

    # ------------------------------------------------------------------ the writer's second thread

    def in_second_thread(self, fn: Callable, *args) -> Future:
        """Run ``fn(*args)`` in the writer's second thread (in order with the FAISS adds). Its FAISS calls run on one
        OpenMP thread: they overlap the calling thread's work, which a second OpenMP thread would wait on."""
        if self._worker is None:
            self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="a2v-writer",
                                              initializer=one_thread_here)
        return self._worker.submit(fn, *args)

    def add_committed(self, indexes: dict[str, VectorIndex], add_to: Sequence[str], ids: np.ndarray,
                      removed: np.ndarray, vectors: dict[str, np.ndarray] | None) -> None:
        """Queue a committed batch's FAISS add in the second thread, after the previous batch's (awaited here):
        its replaced persons out of every index, its persons into ``add_to``."""
        self.settle()  # the previous batch's add, done by now (the second thread works in order)
        self._pending = self.in_second_thread(_add_to_indexes, indexes, add_to, ids, removed, vectors)
        if len(ids) or len(removed):
            self._dirty.update(n for n in indexes if n in add_to or len(removed))

    def settle(self) -> None:
        """Wait for the last batch's FAISS add (raising its error, if any)."""
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.result()

    def close(self, save: bool) -> None:
        """Wait for the last FAISS add, save changed indexes if ``save``, stop the second thread."""
        try:
            self.settle()
            if save and self._dirty:
                self.save()
        finally:
            if self._worker is not None:
                self._worker.shutdown(wait=True)
                self._worker = None

    # ------------------------------------------------------------------ consistency

    def problems(self, db_ids: np.ndarray, repair: bool) -> list[Problem]:
        """The saved indexes compared with SQLite's persons ``db_ids`` (ids, counts, manifests, spaces, leftover
        files, removed when ``repair``); what ``Store.check`` reports of FAISS."""
        fp, found = self._store.space.fingerprint, []
        for name in self._store.space.index_names():
            problem = None
            try:
                idx, manifest = VectorIndex.load(self.folder, name, verify_hash=True)
            except (IndexMissingError, IndexCorruptError) as e:
                problem = Problem(f"index {name}", f"{e}; {REINDEX_HINT}")
            else:
                stale = self._newer_than_sqlite(manifest) or self._other_basis(name, manifest)
                if manifest.get("space") != fp:
                    problem = Problem(f"index {name}", f"built for space {manifest.get('space')}, store space is {fp}")
                elif stale:
                    problem = Problem(f"index {name}", stale)
                else:
                    have = idx.ids()
                    extra, missing = np.setdiff1d(have, db_ids), np.setdiff1d(db_ids, have)
                    if len(extra) or len(missing):
                        problem = Problem(f"index {name}", (
                            f"{len(missing)} persons in SQLite not in FAISS (e.g. {missing[:5].tolist()}), "
                            f"{len(extra)} in FAISS not in SQLite (e.g. {extra[:5].tolist()}); "
                            f"manifest count {manifest['count']}, SQLite {len(db_ids)}"))
            orphans = orphan_files(self.folder, name)
            if orphans:
                found.append(Problem(f"index {name}", f"{len(orphans)} leftover files: "
                                     f"{', '.join(p.name for p in orphans[:5])}", fixed=repair))
                if repair:
                    for p in orphans:
                        p.unlink(missing_ok=True)
            if problem:
                found.append(problem)
        return found


def _add_to_indexes(indexes: dict[str, VectorIndex], add_to: Sequence[str], ids: np.ndarray,
                    removed: np.ndarray, vectors: dict[str, np.ndarray] | None) -> None:
    """A committed batch into FAISS: its replaced persons out, its persons in (the second thread)."""
    if len(removed):
        for idx in indexes.values():
            idx.remove(removed)
    if vectors is not None:
        for name in add_to:
            indexes[name].add(ids, vectors[name], allow_zero=True)


def load_retrying(folder: Path, name: str, tries: int = 3) -> tuple[VectorIndex, dict]:
    """Load an index; a writer may replace the generation file between reading the manifest and the file."""
    for attempt in range(tries):
        try:
            return VectorIndex.load(folder, name, verify_hash=False)
        except IndexCorruptError:
            if attempt == tries - 1:
                raise
            time.sleep(0.2)
    raise AssertionError("unreachable")
