"""Decode worker processes: the isolation that keeps one file from stopping or stalling an ingest.

Workers are spawned (they never import torch) and die with the ingest process, even when it is killed by SIGKILL
(``PR_SET_PDEATHSIG`` on Linux, a watch on the parent's pid elsewhere). They never run the caller's main module:
multiprocessing's spawn re-runs it in every worker (a script without ``if __name__ == "__main__":`` would start its
ingest again there, and ``python - <<EOF`` names a ``<stdin>`` file that does not exist), so each worker is launched
as if the main module were empty (``_CleanSpawnContext``); workers need nothing of it. Results come back in
submission order. A file whose decoding crashes its worker is retried alone in a fresh process (a second crash is
that file's failure); a file still decoding after ``timeout`` seconds has its worker killed and is that file's
failure. Other files in flight at that moment are decoded again by new workers.
"""

from __future__ import annotations

import itertools
import multiprocessing as mp
import os
import signal
import sys
import threading
import time
import types
from collections import deque
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from typing import Any

from .decode import DecodeResult, DecodeTask, decode

PR_SET_PDEATHSIG = 1
_started = None  # worker side: the queue on which each task's number is put when its decoding starts


_LAUNCH = threading.Lock()  # one launch at a time hides (and restores) the main module


@contextmanager
def _empty_main():
    """While a worker is launched, ``__main__`` is an empty module: spawn then passes the worker no main module to
    re-run (neither a script's path nor ``-m``'s module name). Nothing of the caller's main is pickled for it."""
    with _LAUNCH:
        real = sys.modules.get("__main__")
        sys.modules["__main__"] = types.ModuleType("__main__")
        try:
            yield
        finally:
            if real is not None:
                sys.modules["__main__"] = real


class _CleanSpawnProcess(mp.context.SpawnProcess):
    @staticmethod
    def _Popen(process_obj):
        with _empty_main():
            return mp.context.SpawnProcess._Popen(process_obj)


class _CleanSpawnContext(mp.context.SpawnContext):
    """The spawn start method, without the caller's main module in the workers."""

    Process = _CleanSpawnProcess


def _worker_init(parent_pid: int, started) -> None:
    global _started
    _started = started
    die_with_parent(parent_pid)


def _decode_numbered(number: int, task: DecodeTask) -> DecodeResult:
    _started.put(number)
    return decode(task)


def die_with_parent(parent_pid: int) -> None:
    """Worker initializer: exit as soon as ``parent_pid`` is gone."""
    if sys.platform.startswith("linux"):
        import ctypes

        try:
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        except (OSError, AttributeError):
            _watch_parent(parent_pid)
    else:
        _watch_parent(parent_pid)
    if os.getppid() != parent_pid:  # the parent died before the line above took effect
        os._exit(1)


def _watch_parent(parent_pid: int) -> None:
    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, daemon=True).start()


class DecodePool:
    """A bounded FIFO of decode tasks over worker processes. ``put`` a task with a key, ``take`` the oldest
    result as ``(key, DecodeResult)``. ``timeout`` (seconds, None = no limit) counts from the moment a worker
    starts decoding the task (a worker's own start-up never counts)."""

    def __init__(self, workers: int, timeout: float | None, retry_crashes: bool = True):
        self.workers, self.timeout, self.retry_crashes = max(1, workers), timeout, retry_crashes
        self._queue: deque[tuple[Any, DecodeTask, int, Future]] = deque()
        self._numbers = itertools.count()
        self._starts: dict[int, float] = {}
        self._new_pool()

    def __len__(self) -> int:
        return len(self._queue)

    def _new_pool(self) -> None:
        ctx = _CleanSpawnContext()
        self._started = ctx.SimpleQueue()
        self._starts.clear()
        self._pool = ProcessPoolExecutor(max_workers=self.workers, mp_context=ctx, initializer=_worker_init,
                                         initargs=(os.getpid(), self._started))

    def _submit(self, task: DecodeTask) -> tuple[int, Future]:
        number = next(self._numbers)
        return number, self._pool.submit(_decode_numbered, number, task)

    def put(self, key: Any, task: DecodeTask) -> None:
        try:
            submitted = self._submit(task)
        except BrokenProcessPool:  # a worker died since the last result (killed, or crashed on a file): renew
            self._restart()
            submitted = self._submit(task)
        self._queue.append((key, task, *submitted))

    def take(self) -> tuple[Any, DecodeResult]:
        """The oldest task's result (or its failure: a crash, or longer than ``timeout``)."""
        key, task, number, fut = self._queue.popleft()
        try:
            return key, self._wait(fut, number)
        except TimeoutError:
            self._restart()
            return key, timed_out(task, self.timeout)
        except BrokenProcessPool:
            self._restart()
            if not self.retry_crashes:
                return key, DecodeResult(path=task.path, kind=task.kind, error=(
                    "decode", "the decoder crashed on this file (corrupt or hostile content)"))
            solo = DecodePool(1, self.timeout, retry_crashes=False)  # alone, so that a crash is its own
            try:
                solo.put(key, task)
                return solo.take()
            finally:
                solo.close()
        finally:
            self._starts.pop(number, None)

    def _wait(self, fut: Future, number: int) -> DecodeResult:
        if self.timeout is None:
            return fut.result()
        while True:
            while not self._started.empty():
                self._starts[self._started.get()] = time.monotonic()
            start = self._starts.get(number)
            wait = 0.05 if start is None else start + self.timeout - time.monotonic()
            if wait <= 0:
                raise TimeoutError
            try:
                return fut.result(timeout=wait)
            except TimeoutError:
                if start is not None:
                    raise

    def _restart(self) -> None:
        """Kill every worker and decode the tasks still in flight again in new ones."""
        _kill(self._pool)
        self._new_pool()
        for i, (key, task, _, _) in enumerate(list(self._queue)):
            self._queue[i] = (key, task, *self._submit(task))

    def close(self) -> None:
        """Stop the workers (at once when tasks are still in flight: those are dropped)."""
        if self._queue:
            self._queue.clear()
            _kill(self._pool)
        else:
            self._pool.shutdown(wait=True)
        self._started.close()


def timed_out(task: DecodeTask, timeout: float | None) -> DecodeResult:
    """The failure of a task that ran past ``timeout`` seconds."""
    what = "this video segment" if task.kind == "video" and task.segment and task.segment[0] > 0 else "this file"
    return DecodeResult(path=task.path, kind=task.kind,
                        error=("decode", f"decoding {what} took longer than {timeout:g} s (a decoder stuck on "
                                         "corrupt content?); raise --file-timeout if it is genuine"))


def _kill(pool: ProcessPoolExecutor) -> None:
    """Shut a pool down without waiting for its workers, killing them (a hung decoder never returns)."""
    processes = list((getattr(pool, "_processes", None) or {}).values())
    pool.shutdown(wait=False, cancel_futures=True)
    for p in processes:
        if p.is_alive():
            p.kill()
    for p in processes:
        p.join(timeout=5)
