"""One writer at a time: an advisory lock file in the data directory (released by the OS if the process dies)."""

from __future__ import annotations

import errno
import fcntl
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import StoreError, StoreLockedError


class WriteLock:
    """``with WriteLock(data_dir, "ingest"):`` holds the store's write lock; a second writer gets a clear error."""

    def __init__(self, data_dir: Path, what: str):
        self.path = Path(data_dir) / "write.lock"
        self.what = what
        self._fd: int | None = None

    def acquire(self) -> WriteLock:
        try:  # never through a symlink: a planted link must not make us truncate and write another file
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        except OSError as e:
            if e.errno == errno.ELOOP:
                raise StoreError(f"the lock file {self.path} is a symbolic link; remove it (a2v-search never "
                                 "follows links there)") from e
            raise StoreError(f"cannot create the lock file {self.path}: {e.strerror}; is the data directory "
                             "writable?") from e
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            raise StoreLockedError(f"store {self.path.parent} is locked by {holder}; wait for it to finish "
                                   "(searches can run meanwhile)") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n{self.what}\n{time.strftime('%Y-%m-%d %H:%M:%S')}\n".encode())
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> WriteLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


@contextmanager
def upgrade_lock(data_dir: Path, held: bool) -> Iterator[None]:
    """Held while an older store is upgraded on open: the write lock (unless this process ``held`` it already), so
    that a reader (``serve``, ``search``) never writes beside a writer (StoreLockedError names it). Where not even
    the lock file can be made, the upgrade fails on its own with the fix (write access)."""
    if held:
        yield
        return
    try:
        lock = WriteLock(data_dir, "schema upgrade").acquire()
    except StoreLockedError:
        raise
    except StoreError:
        yield
        return
    try:
        yield
    finally:
        lock.release()


def _read_holder(fd: int) -> str:
    try:
        lines = os.pread(fd, 4096, 0).decode(errors="replace").splitlines()
    except OSError:
        lines = []
    if len(lines) >= 3:
        return f"PID {lines[0]} ({lines[1]}, since {lines[2]})"
    return "another process"
