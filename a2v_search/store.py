"""A data directory: SQLite metadata (the truth) + FAISS indexes derived from it + the write lock.

Write protocol: one SQLite transaction per batch of whole media, then the FAISS add in memory; indexes are saved
atomically from time to time and at the end, with a manifest (count, max id, space fingerprint). Opening catches
up: rows newer than the manifest are added, rows deleted since are removed; a missing or corrupt index is rebuilt
from SQLite with a warning. Layout::

    a2v.sqlite          metadata (WAL)
    index/              visual.N.faiss + visual.json, language.N.faiss + language.json, and with trained heads
                        activity.N.faiss + activity.json (A2V's classifier feature, see activity.py)
    write.lock          held by the one writer

The activity index needs the heads to compute its vectors, so it is kept only while a source of them is set
(:meth:`Store.set_activity_source`, done by the API); a writer without one leaves it behind, and the next open
with one catches it up like any other index.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np

from db import activities, clusterings, labels, repo
from db.blobs import f16, unf16
from db.engine import Database, get_meta, set_meta
from db.errors import DbError, DbMissingError, NotAStoreError, SchemaVersionError, UpgradeError
from db.schema import COUNT_MIN_P, Media, Space
from db.tracks import fetch_tracks, rebuild_tracks, track_members, tracks_of, videos_with_untracked_persons
from db.values import (
    ClusteringRow,
    Counts,
    Filters,
    MediaState,
    NewMedia,
    PersonRow,
    TrackRow,
    Vectors,
    as_arrays,
    person_problem,
)
from index import (
    IndexCorruptError,
    IndexInputError,
    IndexMissingError,
    UnknownIdError,
    VectorIndex,
    VectorIndexError,
    choose_spec,
    orphan_files,
    set_fault_hook,
)
from index.files import read_manifest_file

from . import activity
from .errors import (
    InputError,
    LegacySpaceError,
    ModelError,
    QueryError,
    SpaceMismatchError,
    StoreError,
    StoreLockedError,
)
from .faults import fault_point
from .lock import WriteLock
from .models import prompts
from .models.language import (
    FORMULAS,
    LANGUAGE_VECTOR,
    LanguageSpace,
    PhraseBasis,
    TextEncoder,
    build_matrices,
    legacy_pooling,
)
from .tracks import link

log = logging.getLogger("a2v_search")

INDEX_NAMES = ("visual", "language")  # every store has these
ALL_INDEX_NAMES = (*INDEX_NAMES, activity.ACTIVITY)  # with trained heads
#: (unit visual (N, P), norms (N,)) -> A2V features (N, 6, h)
PartFeatures = Callable[[np.ndarray, np.ndarray], np.ndarray]
DB_NAME = "a2v.sqlite"
STORE_ID = "store_id"  # meta key: a random id a writer gives a store once (its identity with the file's inode)
INDEX_DIR = "index"
#: the fix for an index that cannot be used
REINDEX_HINT = "run `python manage.py reindex` to rebuild it from SQLite"

set_fault_hook(fault_point)  # the reliability tests' A2V_FAULT points inside index/ (a no-op unless armed)


def _store_error(e: DbError, data_dir: Path) -> StoreError:
    """A db error as a StoreError, with the command-line fix where there is one."""
    hint = {DbMissingError: f": run `manage.py ingest PATH --data-dir {data_dir}` first",
            NotAStoreError: "; choose another --data-dir",
            SchemaVersionError: ". Use the a2v-search release that wrote it, or ingest again into a new --data-dir",
            UpgradeError: "; open it once where it is writable (e.g. `manage.py stats --data-dir ...`)"}
    return StoreError(f"{e}{hint.get(type(e), '')}")


@contextmanager
def _index_errors() -> Iterator[None]:
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


#: the fields that identify a vector space; two stores (or a store and a set of model flags) with the same
#: values produce comparable vectors.
SPACE_FIELDS = ("visual_model", "heads", "text_model", "phrases", "visual_dim", "pooling", "language_vector")


def _older_prompts(stored: str | None, asked: str | None) -> tuple[str, str] | None:
    """(stored, asked) prompt versions when both heads refs are zero-shot (``zero-shot:<prompts>:<model>``) of the
    same model with other prompts, else None."""
    if not (stored and asked and stored.startswith("zero-shot:") and asked.startswith("zero-shot:")):
        return None
    _, old, model = stored.split(":", 2) if stored.count(":") >= 2 else ("", "", stored)
    _, new, model_asked = asked.split(":", 2) if asked.count(":") >= 2 else ("", "", asked)
    return (old, new) if model == model_asked and old != new else None


def space_fingerprint(space: dict) -> str:
    """A short hash of the fields that identify a vector space."""
    key = json.dumps({k: space.get(k) for k in SPACE_FIELDS}, sort_keys=True)
    return hashlib.sha256(key.encode()).hexdigest()[:16]


@dataclass
class Problem:
    """One inconsistency found by :meth:`Store.check`."""

    what: str
    detail: str
    fixed: bool = False

    def as_dict(self) -> dict:
        return {"what": self.what, "detail": self.detail, "fixed": self.fixed}


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
        self.index_dir = self.data_dir / INDEX_DIR
        self._indexes: dict[str, VectorIndex] | None = None
        self._dirty: set[str] = set()
        self._language: LanguageSpace | None = None
        self._basis: PhraseBasis | None = None
        self._basis_recorded = False
        self._space: Space | None = None
        self._last_save = time.monotonic()
        self._activity_source: Callable[[], PartFeatures] | None = None
        self._part_features: PartFeatures | None = None
        self._without_norm: int | None = None
        self._worker: ThreadPoolExecutor | None = None  # the writer's second thread: vectors and FAISS adds
        self._pending: Future | None = None  # the FAISS add of the last batch written, until settled

    def _open_db(self, create: bool, read_only: bool) -> Database:
        """The store's SQLite database, its errors turned into StoreErrors with the CLI's fix."""
        return Database(self.data_dir / DB_NAME, create=create, read_only=read_only, link=link,
                        translate=partial(_store_error, data_dir=self.data_dir), upgrade_lock=self._upgrade_lock)

    @contextmanager
    def _upgrade_lock(self) -> Iterator[None]:
        """Held while an older store is upgraded on open: the write lock, so that a reader (``serve``, ``search``)
        never writes beside a writer (StoreLockedError names it). Where not even the lock file can be made, the
        upgrade fails on its own with the fix (write access)."""
        if self._lock is not None:
            yield
            return
        try:
            lock = WriteLock(self.data_dir, "schema upgrade").acquire()
        except StoreLockedError:
            raise
        except StoreError:
            yield
            return
        try:
            yield
        finally:
            lock.release()

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

    def close(self, save: bool = True) -> None:
        """Save dirty indexes (writers, unless ``save=False``), release the lock, close the database."""
        try:
            self._settle()
            if save and self.writable and self._dirty:
                self.save()
        finally:
            if self._worker is not None:
                self._worker.shutdown(wait=True)
                self._worker = None
            if self._lock is not None:
                self._lock.release()
                self._lock = None
            self.db.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------ space

    def space_row(self) -> Space | None:
        """The store's vector space (read once; a space never changes once written)."""
        if self._space is None:
            with self.db.session() as s:
                rows = repo.spaces(s)
            if len(rows) > 1:
                raise StoreError(f"store {self.data_dir} holds {len(rows)} vector spaces; this version supports one")
            self._space = rows[0] if rows else None
        return self._space

    def space(self) -> dict | None:
        """The recorded space (models, dims, model flags) or None for an empty store."""
        row = self.space_row()
        return json.loads(row.config) if row else None

    @property
    def fingerprint(self) -> str | None:
        row = self.space_row()
        return row.fingerprint if row else None

    def check_space(self, space: dict) -> None:
        """Raise SpaceMismatchError when ``space`` (from loaded models) differs from the store's space."""
        stored = self.space()
        if stored is None or space_fingerprint(space) == space_fingerprint(stored):
            return
        self._require_current_language()
        diffs = [f"{k}: store has {stored.get(k)!r}, asked for {space.get(k)!r}"
                 for k in SPACE_FIELDS if stored.get(k) != space.get(k)]
        prompts = _older_prompts(stored.get("heads"), space.get("heads"))
        if prompts and len(diffs) == 1:  # the same CLIP model; only this version's zero-shot prompts differ
            raise SpaceMismatchError(
                f"store {self.data_dir} holds zero-shot PaSta made with the {prompts[0]} prompts; this version's "
                f"zero-shot heads use the {prompts[1]} prompts, so new images can be neither compared with nor added "
                f"to its persons: ingest the images again into a new --data-dir (text and structured queries on "
                f"this store keep working)")
        raise SpaceMismatchError(
            f"the models asked for differ from the ones this store's vectors were made with ({'; '.join(diffs)}). "
            f"Omit the model flags to use the store's models, or use another --data-dir for these models")

    def ensure_space(self, space: dict, language: LanguageSpace) -> Space:
        """Register the space on first write, or check it matches."""
        row = self.space_row()
        if row is not None:
            self.check_space({**space, **language.record()})
            return row
        config = {**space, "language_dim": language.dim, **language.record()}
        with self.db.session() as s:
            row = repo.add_space(s, space_fingerprint(config), config, language.m_pasta, language.m_verb,
                                 language.basis.arrays())
        self._language, self._space, self._basis, self._basis_recorded = language, row, language.basis, True
        return row

    def record_spec(self, spec: dict) -> None:
        """Replace the model paths recorded with the space (writers; the vectors' identity is unchanged)."""
        self._require_lock()
        row = self.space_row()
        with self.db.session() as s:
            repo.set_space_config(s, row.id, {**json.loads(row.config), "spec": spec})
        self._space = None

    def language(self) -> LanguageSpace:
        """The store's language space, from its stored matrices and recorded pooling (the text model loads only
        for free text)."""
        if self._language is None:
            row = self.space_row()
            if row is None:
                raise StoreError(f"store {self.data_dir} is empty; ingest something first")
            self._require_current_language()
            m_pasta, m_verb = repo.space_matrices(row)
            self._language = LanguageSpace(m_pasta.copy(), m_verb.copy(), text_model=row.text_model,
                                           pooling=self.space()["pooling"], vector=self.space()["language_vector"],
                                           basis=self.phrase_basis())
        return self._language

    def phrase_basis(self) -> PhraseBasis:
        """The language space's compact basis as the store records it. A store made before it was recorded (schema
        < 4) gets it computed from its matrices (signs fixed, so the same on every machine), recorded by the next
        writer's save; a language index built in another basis is rebuilt when loaded (``_load_index``)."""
        if self._basis is None:
            row = self.space_row()
            try:
                recorded = repo.space_basis(row)
            except ValueError as e:  # blobs of the wrong length
                raise StoreError(f"the language basis recorded in {self.data_dir} is damaged ({e}); restore a "
                                 "backup, or ingest again into a new --data-dir") from e
            self._basis_recorded = recorded is not None
            self._basis = PhraseBasis(*recorded) if recorded else PhraseBasis.of(*repo.space_matrices(row))
        return self._basis

    def _record_basis(self) -> None:
        """Writers: record the basis of a store made before it was kept (the one this process's vectors used)."""
        if self._basis is not None and not self._basis_recorded:
            with self.db.session() as s:
                repo.set_space_basis(s, self.space_row().id, self._basis.arrays())
            self._basis_recorded = True
            log.info("store %s: recorded its language basis", self.data_dir)

    def _require_current_language(self) -> None:
        """Refuse a store whose language vectors were made with another formula than this version's."""
        space = self.space()
        if space is None:
            return
        recorded = space.get("language_vector")
        if recorded is None or (recorded != LANGUAGE_VECTOR and recorded in FORMULAS):
            made = "before language vectors kept the strongest states" if recorded is None else \
                f"with language vectors of the older formula {recorded!r}"
            how = ("no model is loaded" if _phrases_of(recorded) == FORMULAS[LANGUAGE_VECTOR].phrases else
                   f"its text model {space.get('text_model')} embeds this version's phrases")
            raise LegacySpaceError(
                f"store {self.data_dir} was made {made}; this version makes {LANGUAGE_VECTOR!r}: migrate it once "
                f"with `python manage.py reindex --data-dir {self.data_dir}` "
                f"(rebuilds the indexes from SQLite; {how}; nothing is lost)")
        if recorded != LANGUAGE_VECTOR:
            raise StoreError(f"store {self.data_dir} holds language vectors of formula {recorded!r}, this version "
                             f"makes {LANGUAGE_VECTOR!r}; use the a2v-search release that wrote it")

    def _migrate_language(self) -> bool:
        """Record this version's language vector in a store made with an older formula or before it was recorded
        (writers; the indexes must then be rebuilt from the stored probabilities). Its matrices stay when the
        formulas share their phrases; otherwise the store's text model embeds this version's phrases (ModelError
        naming the fix when it cannot be loaded). A store without a recorded formula was pooled the old way
        (``legacy_pooling``), which is recorded so that free-text queries are pooled the same. True when something
        was migrated."""
        config = self.space()
        recorded = None if config is None else config.get("language_vector")
        if config is None or recorded == LANGUAGE_VECTOR or (recorded is not None and recorded not in FORMULAS):
            return False
        self._require_lock()
        if recorded is None:
            config = {**config, "pooling": legacy_pooling(config["text_model"])}
        config = {**config, "language_vector": LANGUAGE_VECTOR}
        matrices = None
        if _phrases_of(recorded) != FORMULAS[LANGUAGE_VECTOR].phrases:  # new phrases: new matrices and basis
            m_pasta, m_verb = _embed_phrases(config["text_model"], config["pooling"])
            language = LanguageSpace(m_pasta, m_verb, text_model=config["text_model"], pooling=config["pooling"])
            matrices = (m_pasta, m_verb, language.basis.arrays())
            config = {**config, "phrases": prompts.phrases_ref(), "language_dim": language.dim}
        else:  # same phrases and basis; the formula alone may change the dimension (an object block)
            language = LanguageSpace(*repo.space_matrices(self.space_row()), text_model=config["text_model"],
                                     pooling=config["pooling"], basis=self.phrase_basis())
            config = {**config, "language_dim": language.dim}
        fingerprint = space_fingerprint(config)
        with self.db.session() as s:
            repo.update_space(s, self.space_row().id, fingerprint, config, matrices)
        log.warning("store %s: language vectors migrated to %s; rebuilding the indexes", self.data_dir,
                    LANGUAGE_VECTOR)
        self._space = self._language = None  # the basis stays unless the phrases changed
        if matrices is not None:
            self._basis, self._basis_recorded = None, False
        return True

    def set_language(self, language: LanguageSpace) -> None:
        """Use an already-loaded language space (same matrices) so its text model is not loaded twice."""
        self._language = language

    # ------------------------------------------------------------------ activity space

    def set_activity_source(self, loader: Callable[[], PartFeatures]) -> None:
        """How to get the heads' feature function (called once, when the activity space is first needed)."""
        self._activity_source = loader

    def activity_problem(self) -> str | None:
        """Why this store has no activity space (A2V's classifier feature), or None when it has one."""
        row = self.space_row()
        if row is None:
            return f"store {self.data_dir} is empty"
        if not activity.trained_heads(row.heads):
            return activity.ZERO_SHOT_NOTE
        if self._without_norm is None:
            with self.db.session() as s:
                self._without_norm = repo.count_without_norm(s)
        if self._without_norm:
            return (f"{self._without_norm} persons of this store were stored before it kept the tower-output norm "
                    "(schema 1), so their A2V features cannot be recomputed; re-encode them with `manage.py ingest "
                    "PATHS --force`")
        if self._activity_source is None:
            return "the store was opened without its heads (use the A2VSearch API)"
        return None

    def index_names(self) -> tuple[str, ...]:
        """The spaces this store keeps indexes of: visual, language, and activity when it has that space."""
        return ALL_INDEX_NAMES if self.activity_problem() is None else INDEX_NAMES

    def part_features(self, visual: np.ndarray, norms: np.ndarray) -> np.ndarray:
        """A2V features (N, 6, h) of stored values: unit visual (N, P) float16 values and norms (N,)."""
        problem = self.activity_problem()
        if problem is not None:
            raise QueryError(f"no activity space: {problem}")
        if self._part_features is None:
            self._part_features = self._activity_source()
        return self._part_features(np.asarray(visual, np.float32), np.asarray(norms, np.float32))

    def activity_vectors(self, visual: np.ndarray, norms: np.ndarray) -> np.ndarray:
        """Activity-space vectors (N, 6h) of stored values (see activity.py)."""
        return activity.space_vectors(self.part_features(visual, norms))

    # ------------------------------------------------------------------ vectors

    def index_vectors(self, visual: np.ndarray, pasta: np.ndarray, verbs: np.ndarray,
                      norms: np.ndarray | None = None, names: Sequence[str] = INDEX_NAMES,
                      objects: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """The FAISS vectors of new persons in the spaces ``names``, computed from the values SQLite stores
        (float16 vectors, float32 norms), so that an index built at ingest and one rebuilt from SQLite are
        identical."""
        return self.vectors(unf16(f16(visual)).reshape(len(visual), -1),
                            np.asarray(pasta, np.float16).astype(np.float32),
                            np.asarray(verbs, np.float16).astype(np.float32), norms, names, objects)

    def vectors(self, visual: np.ndarray, pasta: np.ndarray, verbs: np.ndarray, norms: np.ndarray | None = None,
                names: Sequence[str] = INDEX_NAMES, objects: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """Vectors of persons in the spaces ``names`` from their stored values (``objects``: (N, 80) the largest p
        of each object class, ``values.object_probs``; None = no objects). A person without a direction in a
        space (all-zero probabilities, or values that are damaged: NaN, wrong length) gets the zero vector there,
        which scores 0 against every query; nothing here raises on a row."""
        n, dim = len(visual), self.space_row().visual_dim
        v = np.asarray(visual, np.float32)
        v = _finite_rows(v) if v.shape == (n, dim) else np.zeros((n, dim), np.float32)
        out = {}
        if "visual" in names:
            out["visual"] = np.ascontiguousarray(v)
        if "language" in names:
            out["language"] = _finite_rows(self.language().embed(
                _finite_rows(np.asarray(pasta, np.float32)), _finite_rows(np.asarray(verbs, np.float32)),
                None if objects is None else _finite_rows(np.asarray(objects, np.float32))))
        if activity.ACTIVITY in names:
            out[activity.ACTIVITY] = _finite_rows(self.activity_vectors(v, np.asarray(norms, np.float32)))
        return out

    def _space_dims(self, name: str) -> int:
        row = self.space_row()
        if name == activity.ACTIVITY:
            return int(self.part_features(np.ones((1, row.visual_dim), np.float32), np.ones(1, np.float32)).size)
        return {"visual": row.visual_dim, "language": row.language_dim}[name]

    def _index_spec(self) -> tuple[str, int | None]:
        with self.db.session() as s:
            spec = get_meta(s, "index_spec", "auto")
            budget = get_meta(s, "index_memory_mb")
        return spec or "auto", int(budget) if budget else None

    @_index_errors()
    def indexes(self, names: Sequence[str] | None = None) -> dict[str, VectorIndex]:
        """The FAISS indexes of ``names`` (default: every space of the store), loaded on first use and caught up
        with SQLite (rebuilt with a warning if missing or corrupt), holding every person written."""
        self._settle()
        return self._index_map(names)

    def _index_map(self, names: Sequence[str] | None = None) -> dict[str, VectorIndex]:
        """:meth:`indexes` without waiting for the last batch's FAISS add (the writer's own use)."""
        if self.space_row() is None:
            raise StoreError(f"store {self.data_dir} is empty; ingest something first")
        if self._indexes is None:
            self._indexes = {}
        for name in self.index_names() if names is None else names:
            if name not in self._indexes:
                self._indexes[name] = self._load_index(name)
        return {name: self._indexes[name] for name in (self.index_names() if names is None else names)}

    def indexes_current(self) -> bool:
        """Whether every saved index holds exactly SQLite's persons, judged from the manifests and two indexed
        queries (no index is loaded): a run that wrote nothing checks this instead of loading FAISS."""
        if self.space_row() is None:
            return True
        with self.db.session() as s:
            newest = repo.id_stats(s, upto_id=2**62)[1]
            for name in INDEX_NAMES:
                try:
                    manifest = read_manifest_file(self.index_dir, name)
                except (OSError, ValueError):
                    return False
                if manifest is None or manifest.get("space") != self.fingerprint or self._other_basis(name, manifest):
                    return False
                max_id = int(manifest.get("max_id", -1))
                if repo.id_stats(s, upto_id=max_id) != (int(manifest.get("count", -1)), max_id) or newest > max_id:
                    return False
        return True

    def _load_index(self, name: str) -> VectorIndex:
        fp = self.fingerprint
        try:
            idx, manifest = _load_retrying(self.index_dir, name)
        except IndexMissingError:
            with self.db.session() as s:
                n = repo.counts(s)["persons"]
            if n:
                log.warning("FAISS index %r is missing: rebuilding it from SQLite (%d persons)", name, n)
            return self._build_index(name)
        except IndexCorruptError as e:
            log.warning("%s; rebuilding it from SQLite (nothing is lost)", e)
            return self._build_index(name)
        if manifest.get("space") != fp:
            raise SpaceMismatchError(f"FAISS index {name!r} in {self.index_dir} was built for vector space "
                                     f"{manifest.get('space')}, but this store's space is {fp}; rebuild it with "
                                     f"`python manage.py reindex --data-dir {self.data_dir}`")
        stale = self._newer_than_sqlite(manifest) or self._other_basis(name, manifest)
        if stale:
            log.warning("FAISS index %r %s; rebuilding it from SQLite%s", name, stale,
                        "" if self.writable else f" (in memory: `python manage.py reindex --data-dir {self.data_dir}` "
                        "saves it once)")
            return self._build_index(name)
        self._catch_up(name, idx, int(manifest["max_id"]))
        return idx

    def _other_basis(self, name: str, manifest: dict) -> str | None:
        """Why a saved language index is not in the store's language basis (saved by a version that did not record
        it, or in another basis), or None. Other indexes have no basis."""
        if name != "language" or manifest.get("basis") == self.phrase_basis().digest():
            return None
        if manifest.get("basis") is None:
            return "was saved before its language basis was recorded (an older version)"
        return f"was built in language basis {manifest['basis']}, not the store's {self.phrase_basis().digest()}"

    @_index_errors()
    def refresh(self) -> None:
        """Readers: bring the loaded indexes up to date with what writers committed since (persons added, removed
        or replaced), in memory. Nothing is written; indexes not loaded yet are left to load."""
        self._settle()
        for name, idx in (self._indexes or {}).items():
            ids = idx.ids()
            self._catch_up(name, idx, int(ids.max()) if len(ids) else -1)

    def _newer_than_sqlite(self, manifest: dict) -> str | None:
        """Why an index holds persons SQLite lost (an OS crash or power cut took SQLite's last transactions
        after the index was saved; their ids may since have been handed out again), or None."""
        max_id, last = int(manifest.get("max_id", -1)), manifest.get("last")
        if max_id < 0:
            return None
        with self.db.session() as s:
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
        with self.db.session() as s:
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
            vecs = self.vectors(batch.visual, batch.pasta, batch.verbs, batch.norms, (name,), batch.objects)[name]
            idx.add(batch.ids, vecs, allow_zero=True)
            n += len(batch.ids)
        return n

    def _build_index(self, name: str, spec: str | None = None) -> VectorIndex:
        """A new index of every person in SQLite."""
        conf_spec, budget = self._index_spec()
        with self.db.session() as s:
            n = repo.counts(s)["persons"]
            idx = VectorIndex.create(self._space_dims(name), spec or conf_spec, expected_n=n,
                                     memory_budget_mb=budget)
            self._add_from_db(s, name, idx)
        self._dirty.add(name)
        return idx

    @_index_errors()
    def rebuild(self, spec: str | None = None, memory_budget_mb: int | None = None) -> dict[str, str]:
        """Rebuild both indexes from SQLite (optionally with a new index spec, remembered) and save them; a store
        made before this version's language vector is migrated first."""
        self._require_lock()
        self._settle()
        self._migrate_language()
        if spec or memory_budget_mb:
            with self.db.session() as s:
                if spec:
                    set_meta(s, "index_spec", spec)
                if memory_budget_mb:
                    set_meta(s, "index_memory_mb", str(int(memory_budget_mb)))
        self._indexes = {name: self._build_index(name) for name in self.index_names()}
        self.save()
        return {name: idx.spec for name, idx in self._indexes.items()}

    @_index_errors()
    def save(self) -> None:
        """Save dirty indexes atomically with their manifests (writers only)."""
        self._require_lock()
        self._settle()
        if self._indexes is None:
            return
        self._maybe_grow()
        for name in sorted(self._dirty & set(self._indexes)):
            idx = self._indexes[name]
            with self.db.session() as s:  # the newest person, to tell a reused id apart on the next open
                last = repo.person_digest(s, int(idx.ids()[-1])) if idx.ntotal else None
            manifest = {"space": self.fingerprint, "last": last}
            if name == "language":  # the basis its vectors are in, recorded in SQLite first
                manifest["basis"] = self.phrase_basis().digest()
                self._record_basis()
            try:
                idx.save(self.index_dir, name, manifest)
            except (OSError, RuntimeError) as e:  # disk full, read-only folder: SQLite still holds everything
                raise StoreError(f"cannot save the FAISS index {name!r} in {self.index_dir}: {e}. SQLite holds every "
                                 "person, so nothing is lost; free disk space, then run the same command again (or "
                                 "`manage.py reindex`)") from e
        self._dirty.clear()
        self._last_save = time.monotonic()

    def maybe_save(self, every_s: float) -> None:
        if self._dirty and time.monotonic() - self._last_save >= every_s:
            self.save()

    def _maybe_grow(self) -> None:
        """With the automatic spec, switch an index to the type its size now calls for (e.g. Flat -> IVF)."""
        conf_spec, budget = self._index_spec()
        if conf_spec != "auto":
            return
        for name in list(self._indexes):
            idx = self._indexes[name]
            want = choose_spec(idx.ntotal, idx.dim, budget)
            if want != idx.spec:  # a few times over a store's life: Flat -> IVF, nlist doublings, Flat -> SQ8 codes
                log.info("index %s: %d persons, switching from %s to %s", name, idx.ntotal, idx.spec, want)
                # the old index goes first, so that memory never holds both: the new one is built from SQLite
                # (which holds every person), and if that fails the next use loads the saved one and catches up
                del self._indexes[name], idx
                self._indexes[name] = self._build_index(name, want)

    def _require_lock(self) -> None:
        if not self.writable:
            raise StoreError("this store was opened for reading; writing needs the write lock")

    # ------------------------------------------------------------------ what ingest asks of SQLite

    def media_with_hashes(self, hashes: Sequence[str]) -> dict[str, int]:
        """The first non-duplicate media id holding each of these content hashes (those stored)."""
        with self.db.session() as s:
            return repo.media_by_hash(s, hashes)

    def touch_media(self, media_id: int, size: int, mtime: float) -> None:
        """Record a new size and mtime for a media whose content is unchanged (writers)."""
        self._require_lock()
        with self.db.session() as s:
            repo.touch_media(s, media_id, size, mtime)

    def record_failures(self, failures: Sequence[tuple[str, str, str]]) -> None:
        """Record (path, stage, reason) failures of a run, replacing older ones of the same paths (writers)."""
        self._require_lock()
        if failures:
            with self.db.session() as s:
                repo.record_failures(s, failures)

    # ------------------------------------------------------------------ writes

    @_index_errors()
    def write(self, items: list[NewMedia]) -> np.ndarray:
        """Add media with their persons: one SQLite transaction, then the FAISS add. Returns new person ids.

        Two threads: while this one checks the batch and writes its rows, the writer's second thread finishes the
        FAISS add of the previous batch and computes this batch's vectors (numpy, FAISS and SQLite release the
        GIL). The vectors are awaited inside the transaction, so an error there stores nothing; the FAISS add
        runs after the commit and is awaited by the next write and by anything that uses the indexes
        (:meth:`indexes`, :meth:`save`, :meth:`close`...). A kill before it is done is a kill after the commit:
        the next open adds those persons from SQLite."""
        self._require_lock()
        row = self.space_row()
        indexes = self._index_map()
        persons = [p for m in items for p in m.persons]
        arrays = None
        if persons:  # every check before the commit: a row SQLite holds is a row FAISS takes
            arrays, problem = as_arrays(persons, row.visual_dim)
            if arrays is None:
                self._raise_first_problem(items, row.visual_dim)
        add_to, vecs = tuple(indexes), None
        if arrays is not None:
            if np.isnan(arrays.norms).any() and activity.ACTIVITY in indexes:  # no A2V feature: no activity space
                self._without_norm = None
                add_to = tuple(n for n in indexes if n != activity.ACTIVITY)
            self.language()  # loaded here, not in the second thread
            vecs = self._second_thread().submit(
                self.vectors, arrays.visual.astype(np.float32), arrays.pasta.astype(np.float32),
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
        self._settle()  # the previous batch's add, done by now (the second thread worked in order)
        self._pending = self._second_thread().submit(self._add_to_indexes, indexes, add_to, ids, removed, vectors)
        if len(ids) or len(removed):
            self._dirty.update(n for n in indexes if n in add_to or len(removed))
        if self._without_norm and len(removed):
            self._without_norm = None  # old persons replaced: count again
        return ids

    @staticmethod
    def _add_to_indexes(indexes: dict[str, VectorIndex], add_to: Sequence[str], ids: np.ndarray,
                        removed: np.ndarray, vectors: dict[str, np.ndarray] | None) -> None:
        """A committed batch into FAISS: its replaced persons out, its persons in (the second thread)."""
        if len(removed):
            for idx in indexes.values():
                idx.remove(removed)
        if vectors is not None:
            for name in add_to:
                indexes[name].add(ids, vectors[name], allow_zero=True)

    def _second_thread(self) -> ThreadPoolExecutor:
        if self._worker is None:
            self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="a2v-writer")
        return self._worker

    def _settle(self) -> None:
        """Wait for the last batch's FAISS add (raising its error, if any)."""
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.result()

    @staticmethod
    def _raise_first_problem(items: list[NewMedia], visual_dim: int) -> None:
        """InputError naming the first person that cannot be stored."""
        for m in items:
            for j, p in enumerate(m.persons):
                problem = person_problem(p, visual_dim)
                if problem:
                    raise InputError(f"{m.path}: person {j}: {problem}; nothing of this batch was stored")
        raise InputError(f"{items[0].path}: a person cannot be stored; nothing of this batch was stored")

    @_index_errors()
    def remove_media(self, media_ids: list[int]) -> np.ndarray:
        """Delete media and their persons from SQLite, then from FAISS. Returns removed person ids."""
        self._require_lock()
        self._settle()
        indexes = self.indexes() if self.space_row() is not None else {}
        with self.db.session() as s:
            removed = repo.delete_media(s, media_ids)
        for idx in indexes.values():
            idx.remove(removed)
        if len(removed):
            self._dirty.update(indexes)
            if self._without_norm:
                self._without_norm = None  # old persons removed: count again
        return removed

    # ------------------------------------------------------------------ consistency

    def check(self, repair: bool = False) -> CheckReport:
        """Compare SQLite and FAISS (ids, counts, manifests, spaces, orphan files); fix what is found if asked."""
        self._settle()
        report = CheckReport()
        with self.db.session() as s:
            report.counts = repo.counts(s)
            db_ids = repo.person_ids(s)
            untracked = videos_with_untracked_persons(s)
        if untracked:
            report.problems.append(Problem("tracks", f"{len(untracked)} videos have persons without a track (e.g. "
                                           f"media ids {untracked[:5]})", fixed=repair))
            if repair:
                self._require_lock()
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
        fp = self.fingerprint
        if fp is None:
            return report
        for name in self.index_names():
            problem = None
            try:
                idx, manifest = VectorIndex.load(self.index_dir, name, verify_hash=True)
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
            orphans = orphan_files(self.index_dir, name)
            if orphans:
                report.problems.append(Problem(f"index {name}", f"{len(orphans)} leftover files: "
                                               f"{', '.join(p.name for p in orphans[:5])}", fixed=repair))
                if repair:
                    for p in orphans:
                        p.unlink(missing_ok=True)
            if problem:
                report.problems.append(problem)
        if repair and any(not p.fixed for p in report.problems):
            self._require_lock()
            self.rebuild()
            for p in report.problems:
                p.fixed = True
        return report

    # ------------------------------------------------------------------ queries for api / search / export
    # Each method is one SQLite session (one transaction): callers above the store never open their own.

    def meta(self, key: str) -> str | None:
        """A value of the store's key-value metadata (e.g. ``detector``), or None."""
        with self.db.session() as s:
            return get_meta(s, key)

    def set_meta(self, key: str, value: str) -> None:
        """Record a metadata value (writers)."""
        self._require_lock()
        with self.db.session() as s:
            set_meta(s, key, value)

    def summary(self) -> tuple[dict[str, int], dict[str, int], list[tuple[str, str, str]]]:
        """(counts of media, persons, tracks, failures; media per collection; the 20 latest failures)."""
        with self.db.session() as s:
            return repo.counts(s), repo.collections(s), repo.failures(s, limit=20)

    def media(self, media_id: int) -> Media | None:
        """One media row by id, or None."""
        with self.db.session() as s:
            return repo.get_media(s, media_id)

    def media_states(self, paths: Sequence[str]) -> dict[str, MediaState]:
        """Stored id, hash, size and mtime of the media at these paths (those stored)."""
        with self.db.session() as s:
            return repo.media_by_path(s, paths)

    def media_ids_under(self, paths: Sequence[str]) -> list[int]:
        """Ids of the media at these paths or inside these folders."""
        with self.db.session() as s:
            return repo.media_ids_under(s, paths)

    def persons(self, ids: Sequence[int]) -> list[PersonRow]:
        """Persons with their media, in the order of ``ids``; unknown ids are left out."""
        with self.db.session() as s:
            return repo.fetch_persons(s, ids)

    def person_vectors(self, ids: Sequence[int]) -> Vectors:
        """The stored vectors (visual, PaSta, verbs, norms) of these persons."""
        with self.db.session() as s:
            return repo.fetch_vectors(s, ids)

    def media_ids_of(self, ids: Sequence[int]) -> dict[int, int]:
        """The media id of each of these persons."""
        with self.db.session() as s:
            return repo.media_ids_of(s, ids)

    def filter_person_ids(self, filters: Filters) -> np.ndarray | None:
        """Ids of the persons that pass ``filters`` (None: no filter)."""
        with self.db.session() as s:
            _check_cluster_filter(s, filters)
            return repo.filter_person_ids(s, filters)

    def check_filters(self, filters: Filters) -> None:
        """QueryError when a filter names something the store does not hold (a clustering, a cluster)."""
        with self.db.session() as s:
            _check_cluster_filter(s, filters)

    def person_ids(self, filters: Filters | None = None) -> np.ndarray:
        """Ids (sorted) of the persons that pass ``filters``, or of every person."""
        with self.db.session() as s:
            _check_cluster_filter(s, filters)
            ids = repo.filter_person_ids(s, filters) if filters is not None else None
            return repo.person_ids(s) if ids is None else ids

    def iter_vectors(self, ids: np.ndarray, chunk: int = 20000) -> Iterator[Vectors]:
        """The stored vectors of the persons ``ids`` (sorted), ``chunk`` at a time, from one read snapshot."""
        with self.db.snapshot() as s:
            yield from repo.iter_vectors(s, ids=ids, chunk=chunk)

    # ------------------------------------------------------------------ activity counts and clusterings

    def activity_counts(self, filters: Filters | None, min_p: float, examples: int,
                        choose: Callable[[Counts], list[tuple]]) -> tuple[Counts, dict, str]:
        """How many persons (passing ``filters``) show each PaSta, verb, object and verb + PaSta / verb + object
        pair (probability >= ``min_p``), with ``examples`` example persons of the labels and pairs that
        ``choose(counts)`` names (keys as db/activities.py): (counts, {key: ids}, how they were counted).
        A whole store, a collection or a media kind at the kept threshold reads the kept counts (a few rows) and
        takes examples from its newest persons; other filters or thresholds read the probabilities of the persons
        that pass (db/activities.py)."""
        with self.db.snapshot() as s:
            f = filters or Filters()
            _check_cluster_filter(s, f)
            if min_p == COUNT_MIN_P and not (f.path_glob or f.where or f.cluster or f.after_id is not None):
                counts = activities.read_counts(s, f.collection, f.kind)
                keys = choose(counts)
                found = activities.pool_examples(s, keys, examples, min_p, f.collection, f.kind)
                found = {k: found.get(k, []) for k in keys}
                return counts, found, "kept"
            ids = repo.filter_person_ids(s, f)
            ids = repo.person_ids(s) if ids is None else ids
            counts, found = activities.scan_counts(s, ids, examples, min_p=min_p)
            keys = choose(counts)
            if examples and any(k[0] in activities.PAIRS for k in keys):
                found.update(activities.scan_counts(s, ids, examples, keys, min_p=min_p)[1])
            return counts, {k: found.get(k, []) for k in keys}, "scanned"

    def recount_activities(self) -> None:
        """Recompute the kept activity counts from every stored person (writers)."""
        self._require_lock()
        with self.db.session() as s:
            activities.recount_all(s)

    def save_clustering(self, name: str, space: str, filters: dict, max_person_id: int, centroids: np.ndarray,
                        clusters: list[dict], info: dict, person_ids: np.ndarray, assignment: np.ndarray) -> int:
        """Store a named clustering with its members, replacing one of the same name (writers)."""
        self._require_lock()
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
        self._require_lock()
        with self.db.session() as s:
            return clusterings.drop(s, name)

    def clusters_of(self, clustering_id: int, person_ids: np.ndarray) -> np.ndarray:
        """The cluster of each person in a clustering (-1: not a member)."""
        with self.db.session() as s:
            return clusterings.clusters_of(s, clustering_id, person_ids)

    def tracks_of(self, ids: Sequence[int]) -> tuple[dict[int, int | None], dict[int, list[int]]]:
        """(the track of each person, None for image persons; the members of those tracks in id order)."""
        with self.db.session() as s:
            track_of = tracks_of(s, ids)
            return track_of, track_members(s, [t for t in track_of.values() if t is not None])

    def tracks(self, track_ids: Sequence[int]) -> tuple[dict[int, TrackRow], dict[int, list[int]]]:
        """(the tracks that exist among ``track_ids``; their members in id order)."""
        with self.db.session() as s:
            tracks = fetch_tracks(s, track_ids)
            return tracks, track_members(s, list(tracks))

    def track_members(self, track_ids: Sequence[int]) -> dict[int, list[int]]:
        """The person ids of each track, in id order (empty for a track that does not exist)."""
        with self.db.session() as s:
            return track_members(s, track_ids)

    def person_batches(self, filters: Filters | None, batch_size: int) -> Iterator[dict]:
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


def _phrases_of(formula: str | None) -> str:
    """The phrases a recorded formula's matrices were made of (stores before formulas were recorded: v1)."""
    return FORMULAS[formula].phrases if formula in FORMULAS else "v1"


def _embed_phrases(text_model: str, pooling: str) -> tuple[np.ndarray, np.ndarray]:
    """This version's phrase matrices, embedded by a store's text model (a migration whose phrases changed)."""
    try:
        encoder = TextEncoder(text_model, pooling=pooling)
    except ModelError as e:
        raise ModelError(f"migrating the language space needs the store's text model to embed this version's "
                         f"phrases: {e}. Make {text_model} loadable here (the folder it was made from, or a hub "
                         "id in the cache) and run reindex again; nothing was changed") from e
    return build_matrices(encoder)


def _check_cluster_filter(s, filters: Filters | None) -> None:
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


def _finite_rows(x: np.ndarray) -> np.ndarray:
    """``x`` (n, d) with every row that holds a NaN or an infinity replaced by zeros."""
    bad = ~np.all(np.isfinite(x), axis=1)
    if bad.any():
        x = x.copy()
        x[bad] = 0.0
    return x


def _load_retrying(folder: Path, name: str, tries: int = 3) -> tuple[VectorIndex, dict]:
    """Load an index; a writer may replace the generation file between reading the manifest and the file."""
    for attempt in range(tries):
        try:
            return VectorIndex.load(folder, name, verify_hash=False)
        except IndexCorruptError:
            if attempt == tries - 1:
                raise
            time.sleep(0.2)
    raise AssertionError("unreachable")
