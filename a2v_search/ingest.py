"""Ingest: discover -> decode (worker processes) -> detect -> crop -> encode -> write, with per-stage timings.

Files already stored are skipped when path, size and mtime are unchanged (or, when they changed, the content hash
is); the same content under two paths is stored once and noted as a duplicate. Each SQLite transaction holds whole
media with all their persons, then FAISS is updated: a kill at any moment leaves every file either fully stored or
not at all, and the next run (or any open) brings FAISS back in line with SQLite.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass, field

import numpy as np
from PIL import Image

from db import repo
from db.repo import MediaState, NewMedia, NewPerson

from .detect import BoxesFile, ModelDetector, WholeImage
from .errors import InputError
from .faults import fault_point
from .gpu_decode import JpegCrop, assemble, available
from .media import DEFAULT_MAX_PIXELS, Candidate, DecodeResult, DecodeTask, Item, decode, discover, probe_video
from .models.encoder import ActivityEncoder
from .settings import JPEG_DECODERS, check_choice
from .store import Store

log = logging.getLogger("a2v_search")


@dataclass
class IngestOptions:
    """Knobs of one ingest run."""

    collection: str = "default"
    batch_size: int = 32
    workers: int | None = None  # decode processes; None = cores - 1 (at least 1); 0 = decode in this process
    video_fps: float = 1.0
    force: bool = False
    max_pixels: int = DEFAULT_MAX_PIXELS
    segment_s: float = 60.0  # videos are decoded in segments of this many seconds
    write_every: int = 256  # persons per SQLite transaction (whole media only)
    save_every_s: float = 60.0  # FAISS is saved at least this often during a run, and at the end
    jpeg_decoder: str = "auto"  # auto | gpu | cpu: where eligible JPEGs are decoded (see gpu_decode)
    inflight: int | None = None  # batches queued on the device before the oldest is collected; None: 1 CUDA, 0 CPU


@dataclass
class IngestReport:
    """What a run did. ``as_dict`` is the ``--json`` summary."""

    files_seen: int = 0
    media_ingested: int = 0
    media_skipped: int = 0
    duplicates: int = 0
    persons_added: int = 0
    failures: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    persons_per_s: float = 0.0
    stages: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict:
        d = asdict(self)
        d["seconds"] = round(self.seconds, 3)
        d["persons_per_s"] = round(self.persons_per_s, 2)
        d["stages"] = {k: round(v, 3) for k, v in self.stages.items()}
        return d


@dataclass
class _Pending:
    """A media file between decode and write."""

    cand: Candidate
    state: MediaState | None
    segments: int
    content_hash: str | None = None
    width: int | None = None
    height: int | None = None
    frames: int = 0
    duration: float | None = None
    persons: list[NewPerson | None] = field(default_factory=list)
    waiting: int = 0  # persons not encoded yet
    received: int = 0  # segments decoded so far
    decided: bool = False
    dropped: bool = False  # failed, skipped, duplicate, or already queued for writing

    @property
    def complete(self) -> bool:
        return not self.dropped and self.received == self.segments and self.waiting == 0


class Ingestor:
    """One ingest run into a store (which must hold the write lock)."""

    def __init__(self, store: Store, encoder: ActivityEncoder, detector, options: IngestOptions | None = None,
                 on_progress: Callable[[int, int, int], None] | None = None):
        self.store, self.encoder, self.detector = store, encoder, detector
        self.opt = options or IngestOptions()
        if self.opt.batch_size < 1 or self.opt.video_fps <= 0:
            raise InputError("--batch-size must be >= 1 and --video-fps > 0")
        self.on_progress = on_progress
        self.report = IngestReport()
        self.stages = {k: 0.0 for k in ("discover", "decode", "wait", "detect", "gpu_decode", "encode", "write",
                                        "save")}
        self._gpu_jpeg = _use_gpu_jpeg(self.opt.jpeg_decoder, encoder.device)
        cuda = encoder.device.type == "cuda"
        self._depth = max(0, self.opt.inflight) if self.opt.inflight is not None else int(cuda)
        self._inflight: deque[tuple[list[tuple[_Pending, int, object]], object]] = deque()
        self._encode_q: list[tuple[_Pending, int, np.ndarray | JpegCrop]] = []
        self._detect_q: list[tuple[_Pending, Item]] = []
        self._write_q: list[NewMedia] = []
        self._failures: list[tuple[str, str, str]] = []
        self._hashes: dict[str, _Pending] = {}  # content hash -> first media of this run holding it
        self._deferred_dups: list[_Pending] = []
        self._done = 0
        self._total = 0

    # ------------------------------------------------------------------ driver

    def run(self, paths: list[str]) -> IngestReport:
        t0 = time.perf_counter()
        with self._stage("discover"):
            found = discover(paths)
        self._failures.extend(found.failures)
        for path, stage, reason in found.failures:
            self._note_failure(path, stage, reason, record=False)
        self.report.files_seen = len(found.candidates) + len(found.failures)
        boxes = self.detector.bind(found.candidates) if isinstance(self.detector, BoxesFile) else None
        self.store.ensure_space(self.encoder.space, self.encoder.language)
        self.store.indexes()  # load and catch up before writing
        with self.store.db.session() as s:
            states = repo.media_by_path(s, [c.path for c in found.candidates])
        todo = []
        for c in found.candidates:
            st = states.get(c.path)
            if st and not self.opt.force and st.size == c.size and abs(st.mtime - c.mtime) < 1e-6:
                self.report.media_skipped += 1
            else:
                todo.append(_Pending(cand=c, state=st, segments=1))
        self._total = len(todo)
        self._progress()
        tasks = [t for p in todo for t in self._tasks(p, boxes)]
        for pending, result in self._decoded(tasks):
            self._on_decoded(pending, result)
            self._flush(final=False)
        self._flush(final=True)
        self._write_deferred_duplicates()
        with self._stage("save"):
            self.store.save()
        self.report.seconds = time.perf_counter() - t0
        self.report.persons_per_s = self.report.persons_added / max(self.report.seconds, 1e-9)
        self.report.stages = self.stages
        return self.report

    def _tasks(self, p: _Pending, boxes: dict | None) -> list[tuple[_Pending, DecodeTask]]:
        for_detector = isinstance(self.detector, ModelDetector)
        common = dict(path=p.cand.path, kind=p.cand.kind, preprocess=self.encoder.preprocess,
                      for_detector=for_detector, max_pixels=self.opt.max_pixels, video_fps=self.opt.video_fps,
                      gpu_jpeg=self._gpu_jpeg and not for_detector and p.cand.kind == "image")
        if isinstance(self.detector, BoxesFile):
            common["boxes"] = boxes.get(p.cand.path, [])
        segments: list[tuple[float, float] | None] = [None]
        if p.cand.kind == "video":
            try:
                duration = probe_video(p.cand.path)
            except Exception:  # the worker reports the real error
                duration = None
            if duration and duration > self.opt.segment_s:
                n = int(np.ceil(duration / self.opt.segment_s))
                segments = [(i * self.opt.segment_s, (i + 1) * self.opt.segment_s if i < n - 1 else float("inf"))
                            for i in range(n)]
        p.segments = len(segments)
        return [(p, DecodeTask(**common, segment=seg, want_hash=(i == 0))) for i, seg in enumerate(segments)]

    def _decoded(self, tasks: list[tuple[_Pending, DecodeTask]]):
        """Yield (pending, result) in task order, decoding ahead in worker processes."""
        workers = self.opt.workers if self.opt.workers is not None else max(1, (os.cpu_count() or 2) - 1)
        if workers == 0:
            for p, task in tasks:
                fault_point("decode")
                yield p, decode(task)
            return
        window = deque()
        pool = ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn"))
        try:
            it = iter(tasks)
            for p, task in it:
                fut, pool = _submit(pool, task, window)
                window.append((p, task, fut))
                if len(window) >= workers * 4:
                    break
            while window:
                p, task, fut = window.popleft()
                with self._stage("wait"):
                    result, pool = self._result(fut, task, pool, window)
                fault_point("decode")
                nxt = next(it, None)
                if nxt is not None:
                    fut, pool = _submit(pool, nxt[1], window)
                    window.append((*nxt, fut))
                yield p, result
        finally:
            pool.shutdown(cancel_futures=True)

    def _result(self, fut: Future, task: DecodeTask, pool: ProcessPoolExecutor, window: deque):
        """A decode result; if a worker crashed (hostile file), retry that file in isolation and the other
        in-flight files in a new pool."""
        try:
            return fut.result(), pool
        except BrokenProcessPool:
            return _isolated(task), _renew(pool, window)

    # ------------------------------------------------------------------ per file

    def _on_decoded(self, p: _Pending, r: DecodeResult) -> None:
        self.stages["decode"] += r.seconds
        p.received += 1
        if p.dropped:
            return
        if r.error:
            p.dropped = True
            self._note_failure(p.cand.path, *r.error)
            self._file_done()
            return
        if not p.decided:
            p.decided = True
            p.content_hash, p.width, p.height, p.duration = r.content_hash, r.width, r.height, r.duration
            if self._skip_or_duplicate(p):
                return
        p.frames += r.frames
        for item in r.items:
            if item.frame is not None:
                p.waiting += 1  # until the detector has looked at this frame
                self._detect_q.append((p, item))
            else:
                crop = None if item.jpeg is None else JpegCrop(item.jpeg, None if item.whole else item.box)
                self._queue_person(p, item, item.pixels if crop is None else crop)
        if p.complete:
            self._complete(p)

    def _skip_or_duplicate(self, p: _Pending) -> bool:
        """Unchanged content at the same path: skip. Same content as another media: store as duplicate."""
        h = p.content_hash
        if p.state is not None and p.state.content_hash == h and not self.opt.force:
            with self.store.db.session() as s:
                repo.touch_media(s, p.state.id, p.cand.size, p.cand.mtime)
            p.dropped = True
            self.report.media_skipped += 1
            self._file_done()
            return True
        if h in self._hashes and self._hashes[h] is not p:
            p.dropped = True
            self._deferred_dups.append(p)
            self._file_done()
            return True
        with self.store.db.session() as s:
            other = repo.media_by_hash(s, [h]).get(h)
        if other is not None and (p.state is None or other != p.state.id):
            p.dropped = True
            self._write_q.append(self._media_row(p, duplicate_of=other))
            self.report.duplicates += 1
            self._file_done()
            return True
        self._hashes[h] = p
        return False

    def _queue_person(self, p: _Pending, item: Item, pixels: np.ndarray | JpegCrop) -> None:
        p.persons.append(None)
        p.waiting += 1
        slot = len(p.persons) - 1
        self._encode_q.append((p, slot, pixels))
        p.persons[slot] = NewPerson(box=item.box, score=item.score, frame_index=item.frame_index, t_sec=item.t_sec,
                                    pasta=None, verbs=None, parts=None, visual=None)  # filled by _encode

    def _complete(self, p: _Pending) -> None:
        p.dropped = True  # nothing more to do for it
        dim = self.store.space_row().visual_dim
        problems = [(j, why) for j, person in enumerate(p.persons) if (why := repo.person_problem(person, dim))]
        if problems:  # checked before the commit, so one bad model output never reaches SQLite
            j, why = problems[0]
            self._note_failure(p.cand.path, "encode", f"person {j}: {why}")
            self._file_done()
            return
        self._write_q.append(self._media_row(p))
        self.report.media_ingested += 1
        self._file_done()

    def _media_row(self, p: _Pending, duplicate_of: int | None = None) -> NewMedia:
        c = p.cand
        return NewMedia(path=c.path, content_hash=p.content_hash, size=c.size, mtime=c.mtime, kind=c.kind,
                        collection=self.opt.collection, width=p.width, height=p.height,
                        persons=[] if duplicate_of else list(p.persons), duplicate_of=duplicate_of,
                        frames=p.frames if c.kind == "video" else None, duration=p.duration,
                        replaces=p.state.id if p.state else None)

    # ------------------------------------------------------------------ batches

    def _flush(self, final: bool) -> None:
        if self._detect_q and (final or len(self._detect_q) >= getattr(self.detector.options, "batch_size", 8)):
            self._detect()
        while self._encode_q and (final or len(self._encode_q) >= self.opt.batch_size):
            self._encode(self._encode_q[:self.opt.batch_size])
            del self._encode_q[:self.opt.batch_size]
        while self._inflight and (final or len(self._inflight) > self._depth):
            self._collect()
        queued = sum(len(m.persons) for m in self._write_q)
        if self._write_q and (final or queued >= self.opt.write_every or len(self._write_q) >= 256):
            self._write()
        if not final and self.store.writable:
            with self._stage("save"):
                self.store.maybe_save(self.opt.save_every_s)

    def _detect(self) -> None:
        items, self._detect_q = self._detect_q, []
        with self._stage("detect"):
            dets = self.detector.detect([it.frame for _, it in items], [it.scale for _, it in items])
        for (p, item), frame_dets in zip(items, dets, strict=True):
            frame = Image.fromarray(item.frame)
            for box, score in frame_dets:
                full_box = [v / item.scale for v in box]
                person = Item(box=full_box, score=score, frame_index=item.frame_index, t_sec=item.t_sec)
                self._queue_person(p, person, self.encoder.preprocess.crop(frame, box))
            p.waiting -= 1  # this frame is detected
        for p in {id(p): p for p, _ in items}.values():
            if p.complete:
                self._complete(p)

    def _encode(self, batch: list[tuple[_Pending, int, np.ndarray | JpegCrop]]) -> None:
        """Submit one batch to the encoder; it is collected (``_collect``) once ``inflight`` newer batches are
        queued, or at the final flush, so that the device works while this process gathers the next batch."""
        fault_point("encode")
        pixels = [px for _, _, px in batch]
        if any(isinstance(px, JpegCrop) for px in pixels):
            with self._stage("gpu_decode"):
                x, failed = assemble(pixels, self.encoder.preprocess, self.encoder.device, self.opt.max_pixels)
            for i in sorted(failed):
                p = batch[i][0]
                p.waiting -= 1
                if not p.dropped:
                    p.dropped = True
                    self._note_failure(p.cand.path, "decode", failed[i])
                    self._file_done()
            batch = [b for i, b in enumerate(batch) if i not in failed]
        else:
            x = np.stack(pixels)
        if not batch:
            return
        with self._stage("encode"):
            self._inflight.append((batch, self.encoder.submit(x, pad_to=self.opt.batch_size)))

    def _collect(self) -> None:
        """Wait for the oldest submitted batch and hand its vectors to the persons."""
        batch, pending = self._inflight.popleft()
        with self._stage("encode"):
            out = self.encoder.vectors([pending.result()])
        touched = {}
        for i, (p, slot, _) in enumerate(batch):
            person = p.persons[slot]
            person.pasta, person.verbs, person.parts, person.visual = out.pasta[i], out.verbs[i], out.parts[i], \
                out.visual[i]
            person.visual_norm = None if out.visual_norm is None else float(out.visual_norm[i])
            p.waiting -= 1
            touched[id(p)] = p
        for p in touched.values():
            if p.complete:
                self._complete(p)

    def _write(self) -> None:
        items, self._write_q = self._write_q, []
        with self._stage("write"):
            ids = self.store.write(items)
            with self.store.db.session() as s:
                repo.record_failures(s, self._failures)
            self._failures = []
        self.report.persons_added += len(ids)
        self._progress()

    def _write_deferred_duplicates(self) -> None:
        if not self._deferred_dups:
            return
        with self.store.db.session() as s:
            firsts = repo.media_by_hash(s, [p.content_hash for p in self._deferred_dups])
        for p in self._deferred_dups:
            if p.content_hash in firsts:
                self._write_q.append(self._media_row(p, duplicate_of=firsts[p.content_hash]))
                self.report.duplicates += 1
            else:  # its first copy failed to encode: nothing to point at
                self._note_failure(p.cand.path, "write", "duplicate of a file that failed")
        self._flush(final=True)

    # ------------------------------------------------------------------ bookkeeping

    def _note_failure(self, path: str, stage: str, reason: str, record: bool = True) -> None:
        path = os.path.abspath(path)  # one form for every stage: discovery sees names as given, decoding real paths
        if record:
            self._failures.append((path, stage, reason))
        self.report.failures.append({"path": path, "stage": stage, "error": reason})
        log.debug("failed %s at %s: %s", path, stage, reason)

    def _file_done(self) -> None:
        self._done += 1
        self._progress()

    def _progress(self) -> None:
        if self.on_progress:
            self.on_progress(self._done, self._total, self.report.persons_added)

    def _stage(self, name: str):
        return _Timer(self.stages, name)


class _Timer:
    def __init__(self, stages: dict[str, float], name: str):
        self.stages, self.name = stages, name

    def __enter__(self):
        self.t = time.perf_counter()

    def __exit__(self, *exc):
        self.stages[self.name] += time.perf_counter() - self.t


def _renew(pool: ProcessPoolExecutor, window: deque) -> ProcessPoolExecutor:
    """A new pool in place of one a dead worker broke, with the in-flight files of ``window`` resubmitted."""
    pool.shutdown(cancel_futures=True)
    pool = ProcessPoolExecutor(max_workers=len(window) + 1, mp_context=mp.get_context("spawn"))
    for i, (p, t, _) in enumerate(list(window)):
        window[i] = (p, t, pool.submit(decode, t))
    return pool


def _submit(pool: ProcessPoolExecutor, task: DecodeTask, window: deque) -> tuple[Future, ProcessPoolExecutor]:
    """Submit a decode; a worker may have died since the last result, breaking the pool: renew it first."""
    try:
        return pool.submit(decode, task), pool
    except BrokenProcessPool:
        pool = _renew(pool, window)
        return pool.submit(decode, task), pool


def _isolated(task: DecodeTask) -> DecodeResult:
    """Decode one file in a fresh process; a crash there is that file's failure."""
    with ProcessPoolExecutor(max_workers=1, mp_context=mp.get_context("spawn")) as pool:
        try:
            return pool.submit(decode, task).result()
        except BrokenProcessPool:
            return DecodeResult(path=task.path, kind=task.kind,
                                error=("decode", "the decoder crashed on this file (corrupt or hostile content)"))


def _use_gpu_jpeg(choice: str, device) -> bool:
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


def run_ingest(store: Store, encoder: ActivityEncoder, detector, paths: list[str],
               options: IngestOptions | None = None,
               on_progress: Callable[[int, int, int], None] | None = None) -> IngestReport:
    """Ingest ``paths`` into ``store`` (write-locked) with a loaded encoder and detector."""
    if not isinstance(detector, (WholeImage, BoxesFile, ModelDetector)):
        raise InputError(f"unknown detector {detector!r}")
    return Ingestor(store, encoder, detector, options, on_progress).run([str(p) for p in paths])
