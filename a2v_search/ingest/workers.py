"""Who decodes, detects and encodes for the ingest driver: the ``Workers`` protocol and its local implementation.

The driver (:class:`~a2v_search.ingest.driver.Ingestor`) plans the files, applies the skip and duplicate rules,
assembles each file and writes; a ``Workers`` object does the work in between. It decodes the tasks the driver
hands it (``decoded``), takes each decoded file's (or video segment's) items (``submit``) and gives back that
segment's persons, with their vectors, once they are detected and encoded (``finished``). :class:`LocalWorkers`
decodes in worker processes (``decode_pool``) and runs the models in this process;
:class:`~a2v_search.ingest.ray_engine.RayWorkers` does both on a Ray cluster.
"""

from __future__ import annotations

import os
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

import numpy as np
from PIL import Image

from db.values import NewPerson

from ..errors import InputError
from ..faults import fault_point
from ..objects import scaled
from ..settings import JPEG_DECODERS, check_choice
from .decode import DecodeResult, DecodeTask, Item, decode
from .decode_pool import DecodePool

if TYPE_CHECKING:  # importing the models means importing torch: a no-op run never does
    from ..models.encoder import ActivityEncoder
    from .driver import IngestOptions
    from .gpu_decode import JpegCrop

#: what the driver asks for next: (key, task), or None when it has nothing more for now
NextTask = Callable[[], "tuple[Any, DecodeTask] | None"]


class Failed(NamedTuple):
    """A submitted segment that could not be detected or encoded: that file's failure."""

    stage: str
    reason: str


class Workers(Protocol):
    """The engine under the ingest driver. Calls come in this order: ``bind`` (at the driver's construction),
    ``connect`` and ``start`` (when the first file needs decoding), then ``decoded``, ``submit`` and ``finished``
    as the run goes, and ``close`` at its end (also after an error)."""

    stage_names: tuple[str, ...]  # its own stages in the report, after the driver's
    gpu_jpeg: bool  # eligible JPEGs are handed on undecoded, to be decoded on the GPU (known after ``start``)

    def bind(self, opt: IngestOptions, stages: dict[str, float]) -> None:
        """Take the run's options (InputError for those it cannot run) and the stage seconds it adds to."""

    def connect(self) -> None:
        """Reach whatever runs the work, before any model loads (so that a missing cluster costs no loading)."""

    def start(self, encoder: ActivityEncoder, detector) -> None:
        """The driver's models are loaded (``opt.batch_size`` is set): get ready to decode."""

    def decoded(self, next_task: NextTask) -> Iterator[tuple[Any, DecodeResult, Any]]:
        """Decode the tasks ``next_task`` gives, ahead, yielding ``(key, result, work)`` in task order. ``work``
        (None when the result holds no person or frame) is what ``submit`` takes; the result's failure, if any,
        is in ``result.error``. ``next_task`` may return None and later a task again (a video's next segment)."""

    def submit(self, key: Any, work: Any) -> None:
        """Detect and encode a decoded segment's persons; ``finished`` gives them back under ``key``."""

    def finished(self, final: bool, eager: bool) -> list[tuple[Any, list[NewPerson] | Failed]]:
        """Move the work along and return the segments that are done: their persons in the local engine's order,
        or their failure. ``eager``: nothing waits for a full batch (no person is committed yet); ``final``: the
        end of the run, wait for everything submitted."""

    def close(self) -> None:
        """Stop what this run started."""


class Timed:
    """``with Timed(stages, name):`` adds the block's seconds to ``stages[name]``."""

    __slots__ = ("stages", "name", "t")

    def __init__(self, stages: dict[str, float], name: str):
        self.stages, self.name = stages, name

    def __enter__(self):
        self.t = time.perf_counter()

    def __exit__(self, *exc):
        self.stages[self.name] += time.perf_counter() - self.t


@dataclass
class _Group:
    """One submitted segment on this process: its persons and what they still wait for (frames not detected yet,
    persons not encoded yet)."""

    key: Any
    persons: list[NewPerson] = field(default_factory=list)
    waiting: int = 0
    failed: bool = False


class LocalWorkers:
    """Decoding in worker processes (``opt.workers``; 0: in this process), detection and encoding with this
    process's models; encoder batches are collected once ``inflight`` newer ones are queued on the device, so
    that it works while this process gathers the next batch."""

    stage_names: tuple[str, ...] = ()

    def __init__(self):
        self.gpu_jpeg = False
        self._depth = 0
        self._detect_q: list[tuple[_Group, Item]] = []
        self._encode_q: list[tuple[_Group, int, np.ndarray | JpegCrop]] = []
        self._inflight: deque[tuple[list[tuple[_Group, int]], object]] = deque()
        self._done: list[tuple[Any, list[NewPerson] | Failed]] = []

    def bind(self, opt: IngestOptions, stages: dict[str, float]) -> None:
        self.opt, self.stages = opt, stages

    def connect(self) -> None:
        pass

    def start(self, encoder: ActivityEncoder, detector) -> None:
        self.encoder, self.detector = encoder, detector
        device = encoder.device
        self.gpu_jpeg = use_gpu_jpeg(self.opt.jpeg_decoder, device)
        self._depth = max(0, self.opt.inflight) if self.opt.inflight is not None else int(device.type == "cuda")

    def decoded(self, next_task: NextTask) -> Iterator[tuple[Any, DecodeResult, list[Item] | None]]:
        """Decoding ahead in worker processes (started with the first task: a run with nothing to decode starts
        none), at most ``DecodePool.ahead`` tasks in flight."""
        workers = self.opt.workers if self.opt.workers is not None else max(1, (os.cpu_count() or 2) - 1)
        if workers == 0:
            while (nxt := next_task()) is not None:
                fault_point("decode")
                r = decode(nxt[1])
                yield nxt[0], r, r.items or None
            return
        pool: DecodePool | None = None
        try:
            while True:
                while (pool is None or len(pool) < pool.ahead) and (nxt := next_task()) is not None:
                    # the crops wait in their slots for a model batch (and for the driver's SQLite check)
                    pool = pool or DecodePool(workers, self.opt.file_timeout, ring=True, hold=2 * self.opt.batch_size)
                    pool.put(*nxt)
                if pool is None or not len(pool):
                    break
                with Timed(self.stages, "wait"):
                    key, r = pool.take()
                fault_point("decode")
                yield key, r, r.items or None
        finally:
            if pool is not None:
                pool.close()

    def submit(self, key: Any, items: list[Item]) -> None:
        """Frames go to the detector, persons to the encoder."""
        group = _Group(key)
        for item in items:
            if item.frame is not None:
                group.waiting += 1  # until the detector has looked at this frame
                self._detect_q.append((group, item))
            else:
                if item.jpeg is not None:
                    from .gpu_decode import JpegCrop
                crop = None if item.jpeg is None else JpegCrop(item.jpeg, None if item.whole else item.box)
                self._queue(group, item, item.pixels if crop is None else crop)

    def finished(self, final: bool, eager: bool) -> list[tuple[Any, list[NewPerson] | Failed]]:
        """Detect, encode and collect, each when its queue holds a batch (or at once while ``eager``, or at the
        end)."""
        early = final or eager
        if self._detect_q and (early or len(self._detect_q) >= getattr(self.detector.options, "batch_size", 8)):
            self._detect()
        while self._encode_q and (early or len(self._encode_q) >= self.opt.batch_size):
            self._encode(self._encode_q[:self.opt.batch_size])
            del self._encode_q[:self.opt.batch_size]
        while self._inflight and (final or len(self._inflight) > self._depth):
            self._collect()
        done, self._done = self._done, []
        return done

    def close(self) -> None:
        pass  # the decode pool stops with ``decoded``

    def _queue(self, group: _Group, item: Item, pixels: np.ndarray | JpegCrop) -> None:
        group.persons.append(NewPerson(box=item.box, score=item.score, frame_index=item.frame_index, t_sec=item.t_sec,
                                       pasta=None, verbs=None, parts=None, visual=None,  # filled by _collect
                                       objects=item.objects))
        group.waiting += 1
        self._encode_q.append((group, len(group.persons) - 1, pixels))

    def _settle(self, group: _Group) -> None:
        """One thing the group waited for is done."""
        group.waiting -= 1
        if group.waiting == 0 and not group.failed:
            self._done.append((group.key, group.persons))

    def _fail(self, group: _Group, failure: Failed) -> None:
        group.waiting -= 1
        if not group.failed:
            group.failed = True
            self._done.append((group.key, failure))

    def _detect(self) -> None:
        items, self._detect_q = self._detect_q, []
        with Timed(self.stages, "detect"):
            dets = self.detector.detect([it.frame for _, it in items], [it.scale for _, it in items])
        for (group, item), frame_dets in zip(items, dets, strict=True):
            frame = Image.fromarray(item.frame)
            for box, score, objects in frame_dets:
                full_box = [v / item.scale for v in box]
                person = Item(box=full_box, score=score, frame_index=item.frame_index, t_sec=item.t_sec,
                              objects=scaled(objects, 1 / item.scale))
                self._queue(group, person, self.encoder.preprocess.crop(frame, box))
            self._settle(group)  # this frame is detected

    def _encode(self, batch: list[tuple[_Group, int, np.ndarray | JpegCrop]]) -> None:
        """Submit one batch to the encoder (JPEG bytes decoded and cut on the GPU first)."""
        fault_point("encode")
        from .gpu_decode import JpegCrop

        pixels = [px for _, _, px in batch]
        if any(isinstance(px, JpegCrop) for px in pixels):
            with Timed(self.stages, "gpu_decode"):
                x, failed = assemble(pixels, self.encoder.preprocess, self.encoder.device, self.opt.max_pixels)
            for i in sorted(failed):
                self._fail(batch[i][0], Failed("decode", failed[i]))
            batch = [b for i, b in enumerate(batch) if i not in failed]
        else:
            x = pixels  # the crops where they lie (their ring slots): the encoder reads them once, no stacked copy
        if not batch:
            return
        with Timed(self.stages, "encode"):
            self._inflight.append(([(group, slot) for group, slot, _ in batch],
                                   self.encoder.submit(x, pad_to=self.opt.batch_size)))

    def _collect(self) -> None:
        """Wait for the oldest submitted batch and hand its vectors to the persons."""
        batch, pending = self._inflight.popleft()
        with Timed(self.stages, "encode"):
            out = self.encoder.vectors([pending.result()])
        for i, (group, slot) in enumerate(batch):
            person = group.persons[slot]
            person.pasta, person.verbs, person.parts, person.visual = out.pasta[i], out.verbs[i], out.parts[i], \
                out.visual[i]
            person.visual_norm = None if out.visual_norm is None else float(out.visual_norm[i])
            self._settle(group)


def available(device) -> bool:
    """``gpu_decode.available``, imported when asked (it imports torch; a no-op run never does)."""
    from .gpu_decode import available as gpu_available

    return gpu_available(device)


def assemble(*args, **kwargs):
    """``gpu_decode.assemble``, imported when first needed."""
    from .gpu_decode import assemble as gpu_assemble

    return gpu_assemble(*args, **kwargs)


def use_gpu_jpeg(choice: str, device) -> bool:
    """Whether eligible JPEGs are decoded on the GPU: ``auto`` when the encoder is on CUDA and torchvision can,
    ``gpu`` demands it (an InputError naming the fix otherwise), ``cpu`` never."""
    check_choice("--jpeg-decoder", choice, JPEG_DECODERS)
    if choice == "cpu" or (choice == "auto" and device.type != "cuda"):
        return False
    if available(device):
        return True
    if choice == "gpu":
        raise InputError("--jpeg-decoder gpu needs a CUDA device (--device cuda) and torchvision (pip install "
                         "'a2v-search[gpu]'); use --jpeg-decoder cpu or auto")
    return False
