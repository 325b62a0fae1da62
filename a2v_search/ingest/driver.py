"""Ingest: discover -> decode (worker processes) -> detect -> crop -> encode -> write, with per-stage timings.

Discovery streams: the walk hands files on in chunks of ``chunk_files``, each checked against SQLite as it comes,
so work starts at once and memory holds a chunk and the decode window, not the tree. Models load when the first
file needs decoding: a run that finds nothing new loads none.
Files already stored are skipped when path, size and mtime are unchanged (or, when they changed, the content hash
is); the same content under two paths is stored once and noted as a duplicate. Each SQLite transaction holds whole
media with all their persons, then FAISS is updated: a kill at any moment leaves every file either fully stored or
not at all, and the next run (or any open) brings FAISS back in line with SQLite.
"""

from __future__ import annotations

import logging
import os
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from itertools import islice
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from db.values import NewMedia, NewPerson, person_problem

from ..detect import Detector
from ..errors import InputError
from ..faults import fault_point
from ..media import DEFAULT_MAX_PIXELS
from ..objects import scaled
from ..settings import JPEG_DECODERS, check_choice
from ..store import Store
from .assembly import Assembly
from .decode import DecodeResult, DecodeTask, Item, decode
from .decode_pool import DecodePool
from .discover import sniff_found, walk

if TYPE_CHECKING:  # importing the models means importing torch: a no-op run never does
    from ..models.encoder import ActivityEncoder
    from .gpu_decode import JpegCrop

log = logging.getLogger("a2v_search")


@dataclass
class IngestOptions:
    """Knobs of one ingest run."""

    collection: str = "default"
    batch_size: int | None = 32  # None: the device's default (models.encoder.default_batch_size)
    workers: int | None = None  # decode processes; None = cores - 1 (at least 1); 0 = decode in this process
    video_fps: float = 1.0
    force: bool = False
    max_pixels: int = DEFAULT_MAX_PIXELS
    segment_s: float = 60.0  # videos are decoded in segments of this many seconds
    file_timeout: float | None = 300.0  # seconds a decode worker may spend on one file (or video segment)
    chunk_files: int = 1024  # files found by the walk that are checked against SQLite at a time
    commit_every: int = 256  # persons per SQLite transaction (whole media only)
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
class IngestProgress:
    """Where a run stands: files ``seen`` by the walk so far, files ``done`` (stored, skipped, duplicate or
    failed), ``total`` (None while the walk goes on: nobody knows it yet), persons added."""

    seen: int
    done: int
    total: int | None
    persons: int


class Ingestor:
    """One ingest run into a store (which must hold the write lock).

    ``encoder`` and ``detector`` may be given as zero-argument callables that load them: they are called when the
    first file needs decoding, so a run that finds nothing new loads no model."""

    def __init__(self, store: Store, encoder: ActivityEncoder | Callable[[], ActivityEncoder], detector,
                 options: IngestOptions | None = None, on_progress: Callable[[IngestProgress], None] | None = None):
        self.store = store
        self._encoder_src, self._detector_src = encoder, detector
        self.encoder = None if callable(encoder) else encoder
        self.detector = None if callable(detector) else detector
        self.opt = options or IngestOptions()
        check_choice("--jpeg-decoder", self.opt.jpeg_decoder, JPEG_DECODERS)
        if (self.opt.batch_size is not None and self.opt.batch_size < 1) or self.opt.video_fps <= 0 \
                or self.opt.chunk_files < 1:
            raise InputError("--batch-size must be >= 1 and --video-fps > 0")
        if self.opt.file_timeout is not None and self.opt.file_timeout <= 0:
            raise InputError("--file-timeout must be > 0 seconds")
        self.on_progress = on_progress
        self.report = IngestReport()
        self.stages = {k: 0.0 for k in ("discover", "decode", "wait", "detect", "gpu_decode", "encode", "write",
                                        "save")}
        self._gpu_jpeg = False  # these two are set when the models load
        self._depth = 0
        self._inflight: deque[tuple[list[tuple[Assembly, int, object]], object]] = deque()
        self._encode_q: list[tuple[Assembly, int, np.ndarray | JpegCrop]] = []
        self._detect_q: list[tuple[Assembly, Item]] = []
        self._write_q: list[NewMedia] = []
        self._failures: list[tuple[str, str, str]] = []
        self._hashes: dict[str, Assembly] = {}  # content hash -> media of this run holding it, until committed
        self._deferred_dups: list[Assembly] = []  # same content as a media not committed yet
        self._followups: deque[tuple[Assembly, DecodeTask]] = deque()  # next segments of videos
        self._boxes: dict | None = None
        self._models_ready = False
        self._load_seconds = 0.0  # model loading: not part of the run's seconds (as when it came first)
        self._done = 0
        self._total: int | None = None
        self._last_progress = 0.0

    # ------------------------------------------------------------------ driver

    def run(self, paths: list[str]) -> IngestReport:
        t0 = time.perf_counter()
        found: Iterable = walk(paths)
        if self.detector is not None and self.detector.binds_tree:  # e.g. boxes that must match the whole tree
            with self._stage("discover"):
                found = list(found)
            self._boxes = self.detector.bind([x for x in found if not isinstance(x, tuple)])
        self._progress(force=True)
        for pending, result in self._decoded(self._planned(iter(found))):
            self._on_decoded(pending, result)
            self._flush(final=False)
        self._flush(final=True)
        self._resolve_deferred()
        self._flush(final=True)
        self.store.record_failures(self._failures)
        self._failures = []
        with self._stage("save"):
            if not self._models_ready and not self.store.indexes.current():
                self.store.indexes.get()  # nothing new, but FAISS lags SQLite (a save failed last time): catch it up
            self.store.indexes.save()
        self.report.seconds = time.perf_counter() - t0 - self._load_seconds
        self.report.persons_per_s = self.report.persons_added / max(self.report.seconds, 1e-9)
        self.report.stages = self.stages
        self._progress(force=True)
        return self.report

    def _planned(self, found: Iterator) -> Iterator[tuple[Assembly, DecodeTask]]:
        """First decode tasks of the files the walk finds, chunk by chunk: each chunk is checked against SQLite
        (unchanged path, size and mtime: skipped without opening the file), the rest is sniffed and planned."""
        while True:
            with self._stage("discover"):
                chunk = list(islice(found, self.opt.chunk_files))
                if not chunk:
                    break
                files = [x for x in chunk if not isinstance(x, tuple)]
                states = self.store.media_states([f.path for f in files])
            for x in chunk:
                if isinstance(x, tuple):
                    self._discovery_failure(x)
                    continue
                st = states.get(x.path)
                if st and not self.opt.force and st.size == x.size and abs(st.mtime - x.mtime) < 1e-6:
                    self.report.files_seen += 1
                    self.report.media_skipped += 1
                    self._file_done()
                    continue
                with self._stage("discover"):
                    c = sniff_found(x)
                if isinstance(c, tuple):
                    self._discovery_failure(c)
                elif c is not None:
                    self.report.files_seen += 1
                    asm = Assembly(cand=c, state=st)
                    yield asm, self._first_task(asm)
            self._progress()
        self._total = self.report.files_seen
        self._progress(force=True)

    def _discovery_failure(self, failure: tuple[str, str, str]) -> None:
        self.report.files_seen += 1
        self._note_failure(*failure)
        self._file_done()

    def _load_models(self) -> None:
        """Load the encoder and detector (when given as loaders), register the space, load the indexes."""
        if self._models_ready:
            return
        t0 = time.perf_counter()
        if self.encoder is None:
            self.encoder = self._encoder_src()
        if self.detector is None:
            self.detector = self._detector_src()
        self._load_seconds = time.perf_counter() - t0
        device = self.encoder.device
        self._gpu_jpeg = use_gpu_jpeg(self.opt.jpeg_decoder, device)
        self._depth = max(0, self.opt.inflight) if self.opt.inflight is not None else int(device.type == "cuda")
        if self.opt.batch_size is None:
            from ..models.encoder import default_batch_size

            self.opt.batch_size = default_batch_size(device)
        self.store.space.ensure(self.encoder.space, self.encoder.language)
        self.store.indexes.get()  # load and catch up before writing
        self._models_ready = True

    def _first_task(self, asm: Assembly) -> DecodeTask:
        """A file's first task (a video's first segment; ``_on_decoded`` asks for the next while there is more)."""
        self._load_models()
        boxes = self._boxes.get(asm.cand.path, []) if self._boxes is not None else None
        segment = (0.0, self.opt.segment_s) if asm.cand.kind == "video" else None
        for_detector = self.detector.needs_frames
        asm.task = DecodeTask(path=asm.cand.path, kind=asm.cand.kind, preprocess=self.encoder.preprocess,
                            for_detector=for_detector, max_pixels=self.opt.max_pixels,
                            video_fps=self.opt.video_fps, boxes=boxes, segment=segment, want_hash=True,
                            gpu_jpeg=self._gpu_jpeg and not for_detector and asm.cand.kind == "image")
        return asm.task

    def _decoded(self, tasks: Iterator[tuple[Assembly, DecodeTask]]):
        """Yield (pending, result) in task order, decoding ahead in worker processes (started with the first
        task: a run with nothing to decode starts none). Next video segments go before new files."""
        workers = self.opt.workers if self.opt.workers is not None else max(1, (os.cpu_count() or 2) - 1)

        def next_task():
            return self._followups.popleft() if self._followups else next(tasks, None)

        if workers == 0:
            while (nxt := next_task()) is not None:
                fault_point("decode")
                yield nxt[0], decode(nxt[1])
            return
        pool: DecodePool | None = None
        try:
            while True:
                while (pool is None or len(pool) < workers * 4) and (nxt := next_task()) is not None:
                    pool = pool or DecodePool(workers, self.opt.file_timeout)
                    pool.put(*nxt)
                if pool is None or not len(pool):
                    break
                with self._stage("wait"):
                    asm, result = pool.take()
                fault_point("decode")
                yield asm, result
        finally:
            if pool is not None:
                pool.close()

    # ------------------------------------------------------------------ per file

    def _on_decoded(self, asm: Assembly, r: DecodeResult) -> None:
        self.stages["decode"] += r.seconds
        asm.receive()
        if asm.dropped:
            return
        if r.error:
            asm.dropped = True
            self._forget_hash(asm)
            self._note_failure(asm.cand.path, *r.error)
            self._file_done()
            return
        if asm.decide(r) and self._skip_or_duplicate(asm):
            return
        asm.add_footage(r)
        if r.more:  # the stream really goes on (its claimed duration is never trusted): ask for the next segment
            self._followups.append((asm, asm.next_segment(self.opt.segment_s)))
        self._dispatch(asm, r)
        if asm.complete:
            self._complete(asm)

    def _dispatch(self, asm: Assembly, r: DecodeResult) -> None:
        """Queue a decoded file's (or segment's) frames for detection and persons for encoding."""
        for item in r.items:
            if item.frame is not None:
                asm.expect()  # until the detector has looked at this frame
                self._detect_q.append((asm, item))
            else:
                if item.jpeg is not None:
                    from .gpu_decode import JpegCrop
                crop = None if item.jpeg is None else JpegCrop(item.jpeg, None if item.whole else item.box)
                self._queue_person(asm, item, item.pixels if crop is None else crop)

    def _skip_or_duplicate(self, asm: Assembly) -> bool:
        """Unchanged content at the same path: skip. Same content as another media: store as duplicate."""
        h = asm.content_hash
        if asm.state is not None and asm.state.content_hash == h and not self.opt.force:
            self.store.touch_media(asm.state.id, asm.cand.size, asm.cand.mtime)
            asm.dropped = True
            self.report.media_skipped += 1
            self._file_done()
            return True
        if h in self._hashes and self._hashes[h] is not asm:
            asm.dropped = True
            self._deferred_dups.append(asm)
            self._file_done()
            return True
        other = self.store.media_with_hashes([h]).get(h)
        if other is not None and (asm.state is None or other != asm.state.id):
            asm.dropped = True
            self._write_q.append(asm.row(self.opt.collection, duplicate_of=other))
            self.report.duplicates += 1
            self._file_done()
            return True
        self._hashes[h] = asm
        return False

    def _queue_person(self, asm: Assembly, item: Item, pixels: np.ndarray | JpegCrop) -> None:
        slot = asm.open_slot(NewPerson(box=item.box, score=item.score, frame_index=item.frame_index, t_sec=item.t_sec,
                                       pasta=None, verbs=None, parts=None, visual=None,  # filled by _collect
                                       objects=item.objects))
        self._encode_q.append((asm, slot, pixels))

    def _complete(self, asm: Assembly) -> None:
        asm.dropped = True  # nothing more to do for it
        dim = self.store.space.row().visual_dim
        problems = [(j, why) for j, person in enumerate(asm.persons) if (why := person_problem(person, dim))]
        if problems:  # checked before the commit, so one bad model output never reaches SQLite
            j, why = problems[0]
            self._note_failure(asm.cand.path, "encode", f"person {j}: {why}")
            self._file_done()
            return
        self._write_q.append(asm.row(self.opt.collection))
        self.report.media_ingested += 1
        self._file_done()

    # ------------------------------------------------------------------ batches

    def _flush(self, final: bool) -> None:
        """Move work along, stage by stage: detect, encode, collect, write, save. A stage runs when its queue
        holds a batch, or at once until the first persons are committed (nothing waits), or at the end."""
        early = final or self.report.persons_added == 0
        if self._detect_q and (early or len(self._detect_q) >= getattr(self.detector.options, "batch_size", 8)):
            self._detect()
        while self._encode_q and (early or len(self._encode_q) >= self.opt.batch_size):
            self._encode(self._encode_q[:self.opt.batch_size])
            del self._encode_q[:self.opt.batch_size]
        while self._inflight and (final or len(self._inflight) > self._depth):
            self._collect()
        if self._write_due(final):
            self._write()
        if not final and self.store.writable:
            with self._stage("save"):
                self.store.indexes.maybe_save(self.opt.save_every_s)

    def _write_due(self, final: bool) -> bool:
        """Whether the queued media go to SQLite now: at the end, the first persons at once, else in batches of
        ``commit_every`` persons (or 256 media)."""
        if not self._write_q:
            return False
        queued = sum(len(m.persons) for m in self._write_q)
        first = self.report.persons_added == 0 and queued > 0
        return final or first or queued >= self.opt.commit_every or len(self._write_q) >= 256

    def _detect(self) -> None:
        items, self._detect_q = self._detect_q, []
        with self._stage("detect"):
            dets = self.detector.detect([it.frame for _, it in items], [it.scale for _, it in items])
        for (asm, item), frame_dets in zip(items, dets, strict=True):
            frame = Image.fromarray(item.frame)
            for box, score, objects in frame_dets:
                full_box = [v / item.scale for v in box]
                person = Item(box=full_box, score=score, frame_index=item.frame_index, t_sec=item.t_sec,
                              objects=scaled(objects, 1 / item.scale))
                self._queue_person(asm, person, self.encoder.preprocess.crop(frame, box))
            asm.settle()  # this frame is detected
        for asm in {id(asm): asm for asm, _ in items}.values():
            if asm.complete:
                self._complete(asm)

    def _encode(self, batch: list[tuple[Assembly, int, np.ndarray | JpegCrop]]) -> None:
        """Submit one batch to the encoder; it is collected (``_collect``) once ``inflight`` newer batches are
        queued, or at the final flush, so that the device works while this process gathers the next batch."""
        fault_point("encode")
        from .gpu_decode import JpegCrop

        pixels = [px for _, _, px in batch]
        if any(isinstance(px, JpegCrop) for px in pixels):
            with self._stage("gpu_decode"):
                x, failed = assemble(pixels, self.encoder.preprocess, self.encoder.device, self.opt.max_pixels)
            for i in sorted(failed):
                asm = batch[i][0]
                asm.settle()
                if not asm.dropped:
                    asm.dropped = True
                    self._note_failure(asm.cand.path, "decode", failed[i])
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
        for i, (asm, slot, _) in enumerate(batch):
            person = asm.persons[slot]
            person.pasta, person.verbs, person.parts, person.visual = out.pasta[i], out.verbs[i], out.parts[i], \
                out.visual[i]
            person.visual_norm = None if out.visual_norm is None else float(out.visual_norm[i])
            asm.fill(slot, person)
            touched[id(asm)] = asm
        for asm in touched.values():
            if asm.complete:
                self._complete(asm)

    def _write(self) -> None:
        items, self._write_q = self._write_q, []
        with self._stage("write"):
            ids = self.store.write(items)
            self.store.record_failures(self._failures)
            self._failures = []
        for m in items:
            if m.duplicate_of is None:
                self._hashes.pop(m.content_hash, None)  # committed: SQLite answers for it from now on
        self.report.persons_added += len(ids)
        self._progress()
        self._resolve_deferred()

    def _resolve_deferred(self) -> None:
        """Queue the duplicates whose first copy is now committed (or failed: then they are failures)."""
        ready = [asm for asm in self._deferred_dups if asm.content_hash not in self._hashes]
        if not ready:
            return
        self._deferred_dups = [asm for asm in self._deferred_dups if asm.content_hash in self._hashes]
        firsts = self.store.media_with_hashes([asm.content_hash for asm in ready])
        for asm in ready:
            if asm.content_hash in firsts:
                self._write_q.append(asm.row(self.opt.collection, duplicate_of=firsts[asm.content_hash]))
                self.report.duplicates += 1
            else:  # its first copy failed to encode: nothing to point at
                self._note_failure(asm.cand.path, "write", "duplicate of a file that failed")

    # ------------------------------------------------------------------ bookkeeping

    def _note_failure(self, path: str, stage: str, reason: str) -> None:
        path = os.path.abspath(path)  # one form for every stage: discovery sees names as given, decoding real paths
        self._failures.append((path, stage, reason))
        self.report.failures.append({"path": path, "stage": stage, "error": reason})
        log.debug("failed %s at %s: %s", path, stage, reason)

    def _forget_hash(self, asm: Assembly) -> None:
        """A file that held a content hash for this run failed: the next copy of that content is a first copy."""
        if asm.content_hash and self._hashes.get(asm.content_hash) is asm:
            del self._hashes[asm.content_hash]

    def _file_done(self) -> None:
        self._done += 1
        self._progress()

    def _progress(self, force: bool = False) -> None:
        if self.on_progress and (force or time.monotonic() - self._last_progress >= 0.1):
            self._last_progress = time.monotonic()
            self.on_progress(IngestProgress(seen=self.report.files_seen, done=self._done, total=self._total,
                                            persons=self.report.persons_added))

    def _stage(self, name: str):
        return _Timer(self.stages, name)


class _Timer:
    def __init__(self, stages: dict[str, float], name: str):
        self.stages, self.name = stages, name

    def __enter__(self):
        self.t = time.perf_counter()

    def __exit__(self, *exc):
        self.stages[self.name] += time.perf_counter() - self.t


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


def run_ingest(store: Store, encoder: ActivityEncoder | Callable[[], ActivityEncoder], detector,
               paths: list[str], options: IngestOptions | None = None,
               on_progress: Callable[[IngestProgress], None] | None = None) -> IngestReport:
    """Ingest ``paths`` into ``store`` (write-locked). ``encoder`` and ``detector``: loaded ones, or callables
    that load them when the first file needs decoding."""
    if not callable(detector) and not isinstance(detector, Detector):
        raise InputError(f"unknown detector {detector!r}")
    return Ingestor(store, encoder, detector, options, on_progress).run([str(p) for p in paths])
