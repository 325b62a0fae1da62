"""The engine: a store's SQLite file opened in WAL mode (or read-only), its schema version checked and an older
store upgraded on open (db/migrations.py), sessions, and the ``meta`` key-value rows."""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import AbstractContextManager, contextmanager, nullcontext, suppress
from pathlib import Path

from sqlalchemy import create_engine, event, insert, select, update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DatabaseError, OperationalError
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import QueuePool

from .errors import DbError, DbMissingError, NotAStoreError, SchemaVersionError, UpgradeError
from .migrations import can_upgrade, upgrade
from .schema import SCHEMA_VERSION, Base, Meta
from .values import Linker

log = logging.getLogger(__name__)

#: WAL frames (8 KB pages) past which the next transaction waits for the running checkpoint, so that it restarts the
#: WAL from its beginning: the file stays near 64 MB (a WAL that only grows makes every page read search a larger
#: index, docs/benchmarks.md)
WAL_RESTART_FRAMES = 8192
#: write transactions between two checkpoints (each ends with an fsync of the database file): ~50 MB of WAL at
#: 1,024 persons a transaction, as SQLite's own threshold of 8,192 pages was; every 4 cost ~10% more CPU
CHECKPOINT_EVERY = 16


class Database:
    """A SQLite file in WAL mode with foreign keys on, checked for its schema version. ``read_only``: opened with
    ``mode=ro`` (never written, no lock), or ``immutable=1`` where even that cannot open it (a folder or file
    system the user cannot write, with no ``-shm`` file left)."""

    def __init__(self, path: Path, create: bool = True, read_only: bool = False, *, link: Linker | None = None,
                 translate: Callable[[DbError], Exception] | None = None,
                 upgrade_lock: Callable[[], AbstractContextManager] | None = None,
                 checkpoint_hook: Callable[[], None] | None = None):
        self.path = Path(path)
        self.read_only = read_only and not create
        self._checkpoints = None if self.read_only else Checkpointer(self.path, checkpoint_hook)
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
            # the file named by a connect function, not a URL: a folder named "runs?1" or "100%" is a folder
            self.engine = create_engine("sqlite://", creator=lambda: sqlite3.connect(
                self.path, timeout=60, check_same_thread=False), poolclass=QueuePool)
            event.listen(self.engine, "connect", _on_connect)
            event.listen(self.engine, "commit", self._checkpoints.note_commit)
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
        if self._checkpoints is not None:
            self._checkpoints.before_transaction()
        try:
            with self._sessions() as s, s.begin():
                yield s
            if self._checkpoints is not None:
                self._checkpoints.after_commit()  # when this transaction wrote
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
        try:
            if self._checkpoints is not None:
                self._checkpoints.close()
        finally:
            self.engine.dispose()


class Checkpointer:
    """The WAL's checkpoints (its pages copied into the database file, then synced), in a thread of their own and a
    connection of their own: one after every ``CHECKPOINT_EVERY`` write transactions, while the writer goes on with
    the next. SQLite's own checkpoint runs inside the commit that crosses its threshold: ~145 ms of the writer's
    time every ~17 transactions of 1,024 persons at 1M, two thirds of it waiting for the disk (docs/benchmarks.md,
    sixteenth pass: +7% persons/s, the same CPU, against SQLite's every 8,192 pages). The WAL restarts from its
    beginning only in a transaction that begins after a checkpoint copied all of it, so once it holds
    ``WAL_RESTART_FRAMES``, the next transaction first waits for the running checkpoint. A checkpoint that fails
    (a full disk) is logged: the pages stay in the WAL, the data is safe, and the next one tries again."""

    def __init__(self, path: Path, hook: Callable[[], None] | None = None):
        self._path = path
        self._hook = hook  # the reliability tests' kill point
        self._lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None
        self._conn: sqlite3.Connection | None = None
        self._running: Future | None = None
        self._frames = 0  # the WAL's frames when the last checkpoint ran
        self._commits = 0  # write transactions since the last checkpoint started
        self._wrote = threading.local()  # a commit of this thread's session is about to write

    def note_commit(self, conn) -> None:
        """The engine's ``commit`` event (before the commit): whether the transaction wrote (pysqlite begins one at
        the first write; a session that only read commits nothing)."""
        if conn.connection.dbapi_connection.in_transaction:
            self._wrote.value = True

    def before_transaction(self) -> None:
        """Wait for the running checkpoint when the WAL is long: the transaction that follows restarts it."""
        running = self._running
        if running is not None and self._frames >= WAL_RESTART_FRAMES:
            running.exception()  # waits; its failure was logged

    def after_commit(self) -> None:
        """Start a checkpoint after a transaction that wrote, unless one is running (the next one copies this
        commit's pages)."""
        if not getattr(self._wrote, "value", False):
            return
        self._wrote.value = False
        with self._lock:
            self._commits += 1
            if self._running is not None and not self._running.done():
                return
            if self._commits < CHECKPOINT_EVERY and self._frames < WAL_RESTART_FRAMES:
                return
            self._commits = 0
            if self._pool is None:
                self._pool = ThreadPoolExecutor(1, thread_name_prefix="a2v-checkpoint")
            self._running = self._pool.submit(self._checkpoint)

    def _checkpoint(self) -> None:
        if self._hook is not None:
            self._hook()
        try:
            if self._conn is None:
                self._conn = sqlite3.connect(f"{_file_uri(self._path)}?mode=rw", uri=True, check_same_thread=False)
                self._conn.execute("PRAGMA synchronous=NORMAL")
            _busy, frames, _copied = self._conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
            self._frames = max(frames, 0)  # -1: not in WAL mode
        except sqlite3.Error as e:
            log.warning("checkpoint of %s failed (%s); its pages stay in the WAL and the next one tries again",
                        self._path, e)

    def close(self) -> None:
        """Wait for the running checkpoint, then close its connection and thread."""
        with self._lock:
            pool, self._pool, self._running = self._pool, None, None
        if pool is None:
            return
        pool.shutdown(wait=True)
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def _file_uri(path: Path) -> str:
    """The ``file:`` URI of a path, escaped (a folder named "runs?1" or "100%" is a folder)."""
    return Path(path).resolve().as_uri()


def _connect_read_only(path: Path) -> sqlite3.Connection:
    """A read-only connection: ``mode=ro`` (sees the WAL), else ``immutable=1`` (a WAL database whose ``-shm``
    cannot be created: only what was checkpointed into the main file is visible)."""
    uri = _file_uri(path)
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
    # the writer: no checkpoint inside a commit (``Checkpointer`` runs them beside the writer), and a 64 MB page
    # cache; durability is unchanged (docs/guarantees.md)
    cur.execute("PRAGMA wal_autocheckpoint=0")
    cur.execute("PRAGMA cache_size=-65536")
    cur.close()


def get_meta(s: Session, key: str, default: str | None = None) -> str | None:
    value = s.execute(select(Meta.value).where(Meta.key == key)).scalar()
    return default if value is None else value


def set_meta(s: Session, key: str, value: str) -> None:
    if s.get(Meta, key) is None:
        s.add(Meta(key=key, value=value))
    else:
        s.execute(update(Meta).where(Meta.key == key).values(value=value))
