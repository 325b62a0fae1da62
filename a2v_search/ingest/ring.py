"""A ring of shared-memory slots that decode workers write decoded pixels into, so that only byte offsets and
shapes travel back through a worker's results pipe: a 224 x 224 crop is 150 KB, and moving it through a pipe cost
the ingest process ~150-250 us of CPU (reads, polls and an unpickle).

The ingest process owns the ring (:class:`PixelRing`): it gives each worker call in flight (a chunk of tasks,
decode_pool.py) a free slot and, as each result is taken, puts arrays on its items that view the slot
(:meth:`PixelRing.unpack`): no copy is made before the encoder reads them (it takes a batch's crops as a list:
normalised straight into the model's input on the CPU, stacked straight into pinned memory on CUDA). A slot is free
again once its call's results are all taken (:meth:`PixelRing.finish`) and no array viewing it is left (the views of
a call share one base array, which has a finalizer); while fewer than :data:`SPARE` slots are free, results are
copied out instead (~20 us a crop, twice that in fresh pages), so that calls in flight keep finding slots: the ring
has a slot per call in flight, SPARE more, and room for the crops its caller holds (``DecodePool(hold=...)``:
ingest's two batches, waiting for the duplicate check and for a model batch). A ring that scarce shared memory made
smaller than that never gives views (slots held by views would leave calls in flight without one, and their pixels
to the pipe). A worker (:func:`pack`) moves each
result's arrays into its call's slot while they fit; the others travel through the pipe as before, and so does every
array of a call that got no slot (all slots busy, or no ring: shared memory too small or missing). A worker killed
while writing its slot leaves nothing behind: the workers are gone before the slot is given to another call, and
nothing reads what they wrote. The segment is created by the ingest process; multiprocessing's resource tracker
unlinks it even when that process is killed.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
import threading
import weakref
from multiprocessing import shared_memory

import numpy as np

SLOT_BYTES = 4 << 20  # a call's pixels: 24 crops of up to 241 x 241 (27 of 224 x 224), or a 1280 x 960 frame
MAX_SHARE = 4  # the ring takes at most a quarter of the free shared memory
ALIGN = 64
ARRAYS = ("pixels", "frame")  # the Item attributes that may travel in a slot
SPARE = 2  # results are copied out of their slot, not viewed, while fewer slots than this are free


class PixelRing:
    """``slots`` slots of ``slot_bytes`` in one shared-memory segment (see the module docstring)."""

    def __init__(self, slots: int, slot_bytes: int = SLOT_BYTES):
        self.slots, self.slot_bytes = slots, slot_bytes
        self._free = list(range(slots - 1, -1, -1))
        self._views = [0] * slots  # live base arrays over each slot (0 or 1: see _base)
        self._viewed = 0  # live base arrays over any slot: the segment stays mapped while there are some
        self._bases: dict[int, np.ndarray] = {}  # slot -> the base array its call's views share, until it finishes
        self._finished = [False] * slots  # its call's results are all taken
        self._closing = False
        self._lock = threading.Lock()  # a view may die in any thread
        self.views = True  # False: results are always copied out (a ring smaller than its calls and holds need)
        self.shm = shared_memory.SharedMemory(create=True, size=slots * slot_bytes)
        try:  # take the pages now: a full /dev/shm is an error here, not a SIGBUS in a worker later
            if hasattr(os, "posix_fallocate") and getattr(self.shm, "_fd", -1) >= 0:
                os.posix_fallocate(self.shm._fd, 0, slots * slot_bytes)
        except OSError:
            self.close()
            raise

    @classmethod
    def create(cls, slots: int, slot_bytes: int = SLOT_BYTES) -> PixelRing | None:
        """A ring of up to ``slots`` slots, fewer when shared memory is scarce; None when there is too little (the
        pixels then travel through the pipe)."""
        free = shared_free_bytes()
        if free is not None:
            slots = min(slots, free // MAX_SHARE // slot_bytes)
        if slots < 1:
            return None
        try:
            return cls(slots, slot_bytes)
        except (OSError, ValueError):
            return None

    @property
    def name(self) -> str:
        return self.shm.name

    def acquire(self) -> int | None:
        """A free slot, or None when all are in use."""
        with self._lock:
            if not self._free:
                return None
            slot = self._free.pop()
            self._finished[slot] = False
            return slot

    def finish(self, slot: int | None) -> None:
        """The call that held ``slot`` is done with it: free once no array views it."""
        if slot is None:
            return
        with self._lock:
            self._finished[slot] = True
            if self._views[slot] == 0:
                self._free.append(slot)
        self._bases.pop(slot, None)  # (outside the lock: its finalizer takes it) its views keep it alive

    def _dropped(self, slot: int) -> None:
        """The base array of ``slot`` is gone with its last view (its finalizer; the finalizers hold this ring, so it
        outlives its views)."""
        with self._lock:
            self._views[slot] -= 1
            self._viewed -= 1
            if self._views[slot] == 0 and self._finished[slot]:
                self._free.append(slot)
            last = self._closing and self._viewed == 0
        if last:  # the array is being freed: nothing reads the segment any more
            self.shm.close()

    def unpack(self, slot: int, result) -> None:
        """Put the arrays a worker packed into ``slot`` back on ``result``'s items (see :func:`pack`): views of the
        slot, or copies while fewer than :data:`SPARE` slots are free."""
        view = self.views and len(self._free) >= SPARE
        for index, attr, offset, shape in result.in_ring:
            if view:
                a = self._base(slot)[offset:offset + math.prod(shape)].reshape(shape)
            else:
                a = np.ndarray(shape, np.uint8, buffer=self.shm.buf, offset=slot * self.slot_bytes + offset).copy()
            setattr(result.items[index], attr, a)
        result.in_ring = []

    def _base(self, slot: int) -> np.ndarray:
        """The array over ``slot`` that the views of its call's results are cut from (made at the first), with one
        finalizer: numpy keeps it as the base of each view and of views of those (a base whose own base is no array
        ends numpy's collapse of view chains), so it lives as long as the last of them (~4 us a crop less than a
        finalizer on each)."""
        base = self._bases.get(slot)
        if base is None:
            base = np.ndarray((self.slot_bytes,), np.uint8, buffer=self.shm.buf, offset=slot * self.slot_bytes)
            with self._lock:
                self._views[slot] += 1
                self._viewed += 1
            weakref.finalize(base, self._dropped, slot).atexit = False  # at exit the OS unmaps it
            self._bases[slot] = base
        return base

    def close(self) -> None:
        """Remove the segment (workers that still map it keep their mapping until they exit) and unmap it here,
        now or, while arrays still view it, when the last of them is gone: unmapped under a live view, a read
        would crash the process."""
        with contextlib.suppress(FileNotFoundError):
            self.shm.unlink()
        self._bases.clear()  # (outside the lock: finalizers take it) the views left keep theirs
        with self._lock:
            self._closing = True
            viewed = self._viewed > 0
        if not viewed:
            self.shm.close()


def shared_free_bytes() -> int | None:
    """Free bytes of ``/dev/shm`` (where POSIX shared memory lives on Linux); None where it cannot be told."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        st = os.statvfs("/dev/shm")
    except OSError:
        return 0
    return st.f_bavail * st.f_frsize


def attach(name: str) -> shared_memory.SharedMemory:
    """The ring's segment, in a worker (the ingest process, which created it, unlinks it)."""
    if sys.version_info >= (3, 13):
        return shared_memory.SharedMemory(name=name, track=False)
    return shared_memory.SharedMemory(name=name)  # spawned workers share the creator's resource tracker


def pack(shm: shared_memory.SharedMemory, slot: int, slot_bytes: int, result, used: int = 0) -> int:
    """Move ``result``'s uint8 arrays into ``slot`` from byte ``used`` on while they fit, recording each as (item
    index, attribute, byte offset, shape) in ``result.in_ring`` in place of the array. Returns the bytes used."""
    base = slot * slot_bytes
    for index, item in enumerate(result.items):
        for attr in ARRAYS:
            a = getattr(item, attr)
            if a is None or a.dtype != np.uint8 or used + a.nbytes > slot_bytes:
                continue
            np.copyto(np.ndarray(a.shape, np.uint8, buffer=shm.buf, offset=base + used), a)
            result.in_ring.append((index, attr, used, a.shape))
            setattr(item, attr, None)
            used += -(-a.nbytes // ALIGN) * ALIGN
    return used
