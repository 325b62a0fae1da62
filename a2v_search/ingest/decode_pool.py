"""Decode worker processes: the isolation that keeps one file from stopping or stalling an ingest.

Workers are spawned (they never import torch), die with the ingest process, even when it is killed by SIGKILL, and
never run the caller's main module (processes.py). Results come back in submission order. A file whose decoding
crashes its worker is retried alone in a fresh process (a second crash is that file's failure); a file still
decoding after ``timeout`` seconds has its worker killed and is that file's failure. Other files in flight at that
moment are decoded again by new workers. Decoded pixels come back through a ring of shared-memory slots, one per
worker call in flight (ring.py), not through the pipes.

Each worker has two pipes of its own: calls (a chunk of tasks) go in on one, their results come back on the other
in the same order, and its death is an EOF there. This process writes and reads them itself: a
``ProcessPoolExecutor`` spent ~25 us of this process's CPU a person in its manager and feeder threads. A thread in
each worker reads its calls as they come, so a send here never waits on a worker that is itself sending.
"""

from __future__ import annotations

import itertools
import math
import os
import queue
import signal
import struct
import threading
import time
import traceback
from collections import deque
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any

from ..processes import CleanSpawnContext, die_with_parent
from . import ring as pixel_ring
from .decode import DecodeResult, DecodeTask, decode

_started = None  # worker side: the pipe on which each task's start is written (START records)
START = struct.Struct("<qd")  # (task number, time.monotonic() when its decoding started): one atomic pipe write
_ring = None  # worker side: (shared memory, slot bytes) of the ingest process's pixel ring, if it has one


def _worker_main(parent_pid: int, calls_in: Connection, results: Connection, started: Connection,
                 ring: tuple[str, int] | None) -> None:
    """A decode worker: calls ``(numbers, tasks, slot)`` come in on ``calls_in``, ``("done", results)`` (or
    ``("raised", error)``: a bug, not a bad file) go out on ``results`` in the same order, until ``calls_in`` ends."""
    global _started, _ring
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the ingest process's: it stops the workers
    _started = started  # kept: its file descriptor is written with os.write
    die_with_parent(parent_pid)
    if ring is not None:
        _ring = (pixel_ring.attach(ring[0]), ring[1])
    calls: queue.SimpleQueue = queue.SimpleQueue()

    def read() -> None:  # drains the pipe at once: the ingest process never blocks on a send
        while True:
            try:
                call = calls_in.recv()
            except (EOFError, OSError):
                calls.put(None)  # the ingest process closed the pool
                return
            except Exception:  # a call that cannot be unpickled here: its answer says so, in its turn
                call = f"a decode worker could not read its call:\n{traceback.format_exc()}"
            calls.put(call)

    threading.Thread(target=read, daemon=True, name="a2v-decode-calls").start()
    while (call := calls.get()) is not None:
        if isinstance(call, str):
            out = ("raised", call)
        else:
            try:
                out = ("done", _decode_chunk(*call))
            except Exception:  # decode() returns a bad file's problem as its failure: this is a bug, shown whole
                out = ("raised", f"a decode worker failed:\n{traceback.format_exc()}")
        results.send(out)


def _decode_chunk(numbers: list[int], tasks: list[DecodeTask], slot: int | None) -> list[DecodeResult]:
    """Decode tasks in turn (each one's number is reported as it starts); their pixels go into ``slot`` of the ring
    while they fit."""
    results, used = [], 0
    for number, task in zip(numbers, tasks, strict=True):
        os.write(_started.fileno(), START.pack(number, time.monotonic()))  # CLOCK_MONOTONIC: one clock for all
        results.append(decode(task))
        if slot is not None and _ring is not None:
            used = pixel_ring.pack(_ring[0], slot, _ring[1], results[-1], used)
    return results


class _Worker:
    """A decode process, the pipe its calls go in on and the one their results come back on, and its calls in
    flight, oldest first."""

    __slots__ = ("process", "calls_out", "results", "calls")

    def __init__(self, ctx: CleanSpawnContext, started: Connection, ring: tuple[str, int] | None):
        calls_in, self.calls_out = ctx.Pipe(duplex=False)
        self.results, results_out = ctx.Pipe(duplex=False)
        self.process: BaseProcess = ctx.Process(target=_worker_main, name="a2v-decode", daemon=True,
                                                args=(os.getpid(), calls_in, results_out, started, ring))
        self.process.start()
        calls_in.close()  # the worker holds these ends alone: its exit is an EOF on ``results``
        results_out.close()
        self.calls: deque[_Chunk] = deque()

    def close(self, kill: bool) -> None:
        """Let the worker finish and exit (``kill``: at once), and wait for it."""
        self.calls_out.close()
        if kill and self.process.is_alive():
            self.process.kill()
        self.process.join(timeout=None if kill else 30)
        if self.process.is_alive():  # a decoder that does not return
            self.process.kill()
            self.process.join()
        self.results.close()


CHUNK = 24  # image tasks per worker call: a call's own cost in this process (pickling, pipes, polling) is shared
CHUNKS_AHEAD = 3  # calls in flight per worker


_TIMED_OUT, _CRASHED = object(), object()  # a task's verdict in place of its chunk, after a restart


class _Stuck(Exception):
    def __init__(self, number: int):
        self.number = number


class _Crashed(Exception):
    """The worker of the awaited call died (killed, or its decoder crashed the process)."""


class _Chunk:
    """Tasks that one worker call decodes in turn, and the ring slot their pixels come back in."""

    __slots__ = ("numbers", "tasks", "bytes", "slot", "worker", "left", "results")

    def __init__(self):
        self.numbers: list[int] = []
        self.tasks: list[DecodeTask] = []
        self.bytes = 0  # the pixels its tasks are expected to bring back
        self.slot: int | None = None
        self.worker: _Worker | None = None  # None: not sent yet
        self.left = 0  # its results not taken yet
        self.results: list[DecodeResult] | None = None  # once its call returned: the next takes wait for nothing


class DecodePool:
    """A bounded FIFO of decode tasks over worker processes. ``put`` a task with a key, ``take`` the oldest
    result as ``(key, DecodeResult)``; keep at most :attr:`ahead` tasks in it. ``timeout`` (seconds, None = no
    limit) counts from the moment a worker starts decoding the task (a worker's own start-up never counts).

    Images go to the workers :data:`CHUNK` at a time (one call each chunk; a chunk is sent when full, or when a
    result of it is asked for), fewer when their pixels would not fit one ring slot (persons cut out by boxes: an
    S x S crop each, known before decoding; frames for a detector: the mean of those decoded so far); videos one
    segment a call. With ``ring``, the pixels of a call come back in a shared-memory slot (ring.py), viewed by the
    results' arrays; ``hold``: how many of those arrays the caller keeps alive at most (e.g. until a model batch is
    full), each a slot's share that is not free meanwhile."""

    def __init__(self, workers: int, timeout: float | None, retry_crashes: bool = True, ring: bool = False,
                 hold: int = 0):
        self.workers, self.timeout, self.retry_crashes = max(1, workers), timeout, retry_crashes
        # calls in flight: CHUNKS_AHEAD per worker, and at least a held batch's worth and one call more, so that the
        # workers decode the next model batch while this process runs the model on one (few workers, large batches)
        self._calls = max(self.workers * CHUNKS_AHEAD, -(-hold // 2 // CHUNK) + 1)
        self._full = [0, 0]  # image tasks of the calls sent full (their slot, or CHUNK), and their number
        self._frames = [0, 0]  # bytes of the frames decoded for a detector so far, and their number
        self._queue: deque[list] = deque()  # [key, task, number, chunk, index in the chunk], oldest first
        self._open = _Chunk()
        self._numbers = itertools.count()
        self._starts: dict[int, float] = {}
        slots = self._calls + pixel_ring.SPARE + -(-hold // CHUNK)
        self.ring = pixel_ring.PixelRing.create(slots) if ring else None
        if self.ring is not None and self.ring.slots < slots:  # scarce shared memory: slots must cycle fast
            self.ring.views = False
        self._started: Connection | None = None  # where workers report starts, and its writing end
        self._started_w: Connection | None = None
        self._new_pool()

    def __len__(self) -> int:
        return len(self._queue)

    @property
    def files(self) -> int:
        """Image tasks a call: the mean of the calls sent full so far (CHUNK before any)."""
        return self._full[0] // self._full[1] if self._full[1] else CHUNK

    @property
    def ahead(self) -> int:
        """Tasks to keep in the pool: a call's worth (:attr:`files`) for each call in flight (each has a ring slot)."""
        return self._calls * self.files

    def _new_pool(self) -> None:
        ctx = CleanSpawnContext()
        self._close_starts()
        # workers report starts here (read without blocking; the writing end stays open for workers started later)
        self._started, self._started_w = ctx.Pipe(duplex=False)
        os.set_blocking(self._started.fileno(), False)
        self._starts.clear()
        self._ctx = ctx
        self._workers: list[_Worker] = []  # started as calls need them, up to ``self.workers``

    def _close_starts(self) -> None:
        for end in (self._started, self._started_w):
            if end is not None:
                end.close()

    def put(self, key: Any, task: DecodeTask) -> None:
        size = 0  # the pixels it brings back: a video segment goes in a call of its own
        if task.kind == "image":
            size = task.pixel_bytes()
            size = size if size is not None else self._frames[0] // max(1, self._frames[1])
        full = self.ring is not None and self._open.bytes + size > self.ring.slot_bytes
        if self._open.tasks and (task.kind != "image" or full):
            self._send(self._open, full)
        chunk = self._open
        self._queue.append([key, task, next(self._numbers), chunk, len(chunk.tasks)])
        chunk.numbers.append(self._queue[-1][2])
        chunk.tasks.append(task)
        chunk.bytes += size
        chunk.left += 1
        if task.kind != "image" or len(chunk.tasks) >= CHUNK:
            self._send(chunk, task.kind == "image")

    def _send(self, chunk: _Chunk, full: bool = False) -> None:
        """Submit a chunk (a new pool first when a worker died since the last result: killed, or crashed); ``full``:
        a chunk of images that could take no more (its size counts in :attr:`files`)."""
        if chunk is self._open:
            self._open = _Chunk()
        if full:
            self._full[0] += len(chunk.tasks)
            self._full[1] += 1
        if self.ring is not None and chunk.slot is None:
            chunk.slot = self.ring.acquire()
        try:
            self._call(chunk)
        except OSError:  # a worker is gone (killed, or crashed): new ones, and the calls in flight again
            self._restart()
            self._call(chunk)

    def _call(self, chunk: _Chunk) -> None:
        """Hand a chunk to an idle worker (a new one while there are fewer than ``workers``: a run of a few files
        starts a few), else to the one with the fewest calls in flight."""
        worker = min(self._workers, key=lambda w: len(w.calls), default=None)
        if (worker is None or worker.calls) and len(self._workers) < self.workers:
            ring = None if self.ring is None else (self.ring.name, self.ring.slot_bytes)
            worker = _Worker(self._ctx, self._started_w, ring)
            self._workers.append(worker)
        worker.calls_out.send((chunk.numbers, chunk.tasks, chunk.slot))
        worker.calls.append(chunk)
        chunk.worker = worker

    def take(self) -> tuple[Any, DecodeResult]:
        """The oldest task's result (or its failure: a crash, or longer than ``timeout``)."""
        entry = self._queue.popleft()
        key, task, number, chunk, index = entry
        if chunk is _TIMED_OUT:
            return key, timed_out(task, self.timeout)
        if chunk is _CRASHED:
            return key, self._alone(key, task)
        try:
            if chunk.worker is None:
                self._send(chunk)
            if chunk.results is None:
                chunk.results = self._wait(chunk)
            results = chunk.results
        except (_Stuck, _Crashed) as e:
            # the task that ran past the timeout or crashed the worker is the one of its call that started last
            # (this one, or one after it); the others in flight are decoded again, each alone
            culprit = e.number if isinstance(e, _Stuck) else self._running(chunk)
            culprit = number if culprit is None else culprit  # nothing of its call started: this one
            self._queue.appendleft(entry)
            self._restart(culprit, _TIMED_OUT if isinstance(e, _Stuck) else _CRASHED)
            return self.take()
        result = results[index]
        if result.in_ring:
            self.ring.unpack(chunk.slot, result)
        self._starts.pop(number, None)
        chunk.left -= 1
        if chunk.left == 0:
            self._release(chunk)
        return key, result

    def _alone(self, key: Any, task: DecodeTask) -> DecodeResult:
        """A task that crashed its worker, decoded again alone in a fresh process (a second crash is its failure)."""
        if not self.retry_crashes:
            return DecodeResult(path=task.path, kind=task.kind, error=(
                "decode", "the decoder crashed on this file (corrupt or hostile content)"))
        solo = DecodePool(1, self.timeout, retry_crashes=False)
        try:
            solo.put(key, task)
            return solo.take()[1]
        finally:
            solo.close()

    def _wait(self, chunk: _Chunk) -> list[DecodeResult]:
        """The results of a sent chunk; _Stuck when its running task passes the timeout, _Crashed when its worker
        died."""
        worker = chunk.worker
        while chunk.results is None:
            self._read_starts()
            running = self._running(chunk)
            if self.timeout is None:
                wait = None
            elif running is None:
                wait = 0.05
            elif (wait := self._starts[running] + self.timeout - time.monotonic()) <= 0:
                raise _Stuck(running)
            if worker.results.poll(wait):
                self._receive(worker)
        return chunk.results

    def _receive(self, worker: _Worker) -> None:
        """The next results of ``worker``, for its oldest call in flight."""
        try:
            kind, value = worker.results.recv()
        except (EOFError, OSError):
            self._read_starts()  # the starts it wrote before it died name the culprit
            raise _Crashed from None
        call = worker.calls.popleft()
        if kind == "raised":
            raise RuntimeError(value)
        call.results = value
        if call.tasks[0].for_detector and call.tasks[0].kind == "image":  # the mean frame: how many a call takes
            self._frames[0] += sum(math.prod(shape) for r in value for *_, shape in r.in_ring) + sum(
                it.frame.nbytes for r in value for it in r.items if it.frame is not None)
            self._frames[1] += len(value)

    def _read_starts(self) -> None:
        """The starts the workers reported since the last read (one non-blocking read; records are written whole)."""
        while True:
            try:
                data = os.read(self._started.fileno(), START.size * 4096)
            except BlockingIOError:
                return
            for number, at in START.iter_unpack(data[:len(data) - len(data) % START.size]):
                self._starts[number] = at
            if len(data) < START.size * 4096:
                return

    def _running(self, chunk: _Chunk) -> int | None:
        """The number of the chunk's task that started last (the one decoding now, if the call is not done)."""
        return max((n for n in chunk.numbers if n in self._starts), default=None)

    def _release(self, chunk: _Chunk) -> None:
        if self.ring is not None:
            self.ring.finish(chunk.slot)
        chunk.slot, chunk.results = None, None

    def _restart(self, culprit: int | None = None, verdict: object = None) -> None:
        """Kill every worker and send the tasks in flight again to new ones, each alone; the ``culprit`` task
        instead gets ``verdict`` (timed out, or to be retried alone)."""
        self._stop_workers(kill=True)
        self._new_pool()
        for entry in self._queue:
            old = entry[3]
            if not isinstance(old, _Chunk) or old.worker is None:
                continue  # settled, or not sent yet
            self._release(old)
            if entry[2] == culprit:
                entry[3] = verdict
                continue
            single = _Chunk()
            single.numbers, single.tasks, single.left = [entry[2]], [entry[1]], 1
            entry[3], entry[4] = single, 0
            self._send(single)

    def close(self) -> None:
        """Stop the workers (at once when tasks are still in flight: those are dropped) and close the ring (unmapped
        when the last array of a taken result that views it is gone)."""
        try:
            kill = bool(self._queue)
            self._queue.clear()
            self._stop_workers(kill)
            self._close_starts()
        finally:
            if self.ring is not None:
                self.ring.close()

    def _stop_workers(self, kill: bool) -> None:
        for worker in self._workers:
            worker.close(kill)


def timed_out(task: DecodeTask, timeout: float | None) -> DecodeResult:
    """The failure of a task that ran past ``timeout`` seconds."""
    what = "this video segment" if task.kind == "video" and task.segment and task.segment[0] > 0 else "this file"
    return DecodeResult(path=task.path, kind=task.kind,
                        error=("decode", f"decoding {what} took longer than {timeout:g} s (a decoder stuck on "
                                         "corrupt content?); raise --file-timeout if it is genuine"))
