"""What a long-running reader (the HTTP server) shares between concurrent requests: one :class:`A2VSearch`, its
models loaded once, and the store's indexes kept up to date with what writers commit.

- Requests run :meth:`Shared.reading`: a cheap check of whether the store changed (file stats), an in-memory
  catch-up if it did (under the exclusive side of a read-write lock, so that no search sees an index being
  changed), then the request itself under the shared side, concurrently with other requests.
- The first call of each kind that may load a model (free text, CLIP text, image) runs alone, so a model is never
  loaded twice; later calls run concurrently.
- Nothing here writes to the store.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

from ..api import A2VSearch

T = TypeVar("T")


class ReadWriteLock:
    """Many readers or one writer; a waiting writer goes before new readers."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._readers = 0
        self._writer = False
        self._writers_waiting = 0

    @property
    def writers_waiting(self) -> int:
        """How many writers wait for the readers inside to leave."""
        with self._cond:
            return self._writers_waiting

    @contextmanager
    def read(self) -> Iterator[None]:
        with self._cond:
            while self._writer or self._writers_waiting:
                self._cond.wait()
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                if not self._readers:
                    self._cond.notify_all()

    @contextmanager
    def write(self) -> Iterator[None]:
        with self._cond:
            self._writers_waiting += 1
            while self._writer or self._readers:
                self._cond.wait()
            self._writers_waiting -= 1
            self._writer = True
        try:
            yield
        finally:
            with self._cond:
                self._writer = False
                self._cond.notify_all()


class Shared:
    """One store and its models, shared by the threads of a server."""

    def __init__(self, api: A2VSearch):
        self.api = api
        self._lock = ReadWriteLock()
        self._check = threading.Lock()
        self._first = threading.Lock()
        self._ready: set[str] = set()
        self.refreshes = 0  # times the indexes were checked against SQLite (for tests and logs)

    def _refresh(self) -> None:
        if not self.api.changed():
            return
        with self._check:  # one thread catches up; the others wait for it rather than do it again
            if not self.api.changed():
                return
            with self._lock.write():
                self.api.refresh()
                self.refreshes += 1

    @contextmanager
    def reading(self) -> Iterator[A2VSearch]:
        """The API, up to date with the store, for one request (shared with concurrent requests)."""
        self._refresh()
        with self._lock.read():
            yield self.api

    def first_alone(self, kind: str, fn: Callable[[], T]) -> T:
        """Run ``fn``; the first successful call of each ``kind`` runs alone (it may load a model)."""
        if kind in self._ready:
            return fn()
        with self._first:
            result = fn()
            self._ready.add(kind)
            return result
