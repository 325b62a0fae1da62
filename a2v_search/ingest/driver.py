"""Ingest: discover -> decode (worker processes) -> detect -> crop -> encode -> write, with per-stage timings.

Discovery streams: the walk hands files on in chunks of ``chunk_files``, each checked against SQLite as it comes,
so work starts at once and memory holds a chunk and the decode window, not the tree. Models load when the first
file needs decoding: a run that finds nothing new loads none.
Files already stored are skipped when path, size and mtime are unchanged (or, when they changed, the content hash
is); the same content under two paths is stored once and noted as a duplicate. Each SQLite transaction holds whole
media with all their persons, then FAISS is updated: a kill at any moment leaves every file either fully stored or
not at all, and the next run (or any open) brings FAISS back in line with SQLite.
Decoding, detection and encoding are a ``Workers`` object's (``workers.LocalWorkers`` by default, Ray's with
``--engine ray``): this loop only plans, assembles and writes.
"""

from __future__ import annotations

import logging
import os
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from itertools import islice
from typing import TYPE_CHECKING

from db.values import NewMedia, NewPerson, PersonArrays, as_arrays, person_problem

from ..detect import Detector
from ..errors import InputError
from ..heap import frozen_heap
from ..media import DEFAULT_MAX_PIXELS, display_path
from ..settings import JPEG_DECODERS, check_choice
from ..store import Store
from .assembly import Assembly
from .decode import DecodeResult, DecodeTask
from .discover import kind_by_name, sniff_found, walk
from .workers import Failed, LocalWorkers, Timed, Workers

if TYPE_CHECKING:  # importing the models means importing torch: a no-op run never does
    from ..models.encoder import ActivityEncoder

log = logging.getLogger("a2v_search")

MEDIA_PER_WRITE = 1024  # at most this many media a transaction (images of one person: commit_every of them)


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
    commit_every: int = 1024  # persons per SQLite transaction (whole media only; docs/benchmarks.md)
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
    """One ingest run into a store (which must hold the write lock): this process plans the files, applies the skip
    and duplicate rules, assembles each file and writes; ``workers`` decode, detect and encode (default:
    :class:`~a2v_search.ingest.workers.LocalWorkers`).

    ``encoder`` and ``detector`` may be given as zero-argument callables that load them: they are called when the
    first file needs decoding, so a run that finds nothing new loads no model."""

    def __init__(self, store: Store, encoder: ActivityEncoder | Callable[[], ActivityEncoder], detector,
                 options: IngestOptions | None = None, on_progress: Callable[[IngestProgress], None] | None = None,
                 workers: Workers | None = None):
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
        self.workers = workers if workers is not None else LocalWorkers()
        self.workers.bind(self.opt, self.stages)
        self.stages.update({k: 0.0 for k in self.workers.stage_names})
        self._write_q: list[NewMedia] = []
        self._write_q_persons = 0
        self._unchecked: list[tuple[Assembly, DecodeResult, object]] = []  # new content, not yet looked up in SQLite
        self._unchecked_items = 0  # their persons (or frames) held here, at least one a file: see _on_decoded
        self._visual_dim = 0
        self._failures: list[tuple[str, str, str]] = []
        self._hashes: dict[str, Assembly] = {}  # content hash -> media of this run holding it, until committed
        self._deferred_dups: list[Assembly] = []  # same content as a media not committed yet
        self._followups: deque[tuple[Assembly, DecodeTask]] = deque()  # next segments of videos
        self._boxes: dict | None = None
        self._models_ready = False
        self._heap = ExitStack()  # frozen_heap() once the models are loaded, until the end of the run
        self._load_seconds = 0.0  # model loading: not part of the run's seconds (as when it came first)
        self._done = 0
        self._total: int | None = None
        self._last_progress = 0.0

    # ------------------------------------------------------------------ driver

    def run(self, paths: list[str]) -> IngestReport:
        try:
            return self._run(paths)
        finally:
            self.workers.close()
            self._heap.close()

    def _run(self, paths: list[str]) -> IngestReport:
        t0 = time.perf_counter()
        found: Iterable = walk(paths)
        if self.detector is not None and self.detector.binds_tree:  # e.g. boxes that must match the whole tree
            with self._stage("discover"):
                found = list(found)
            self._boxes = self.detector.bind([x for x in found if not isinstance(x, tuple)])
        self._progress(force=True)
        planned = self._planned(iter(found))

        def next_task() -> tuple[Assembly, DecodeTask] | None:  # next video segments go before new files
            return self._followups.popleft() if self._followups else next(planned, None)

        for asm, result, work in self.workers.decoded(next_task):
            self._on_decoded(asm, result, work)
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
                with self._stage("discover"):  # once a model is loaded, a media name's kind is checked by its decoder
                    c = (self._models_ready and kind_by_name(x)) or sniff_found(x)
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
        """Load the encoder and detector (when given as loaders), start the workers, register the space, load the
        indexes."""
        if self._models_ready:
            return
        self.workers.connect()  # first: without its cluster, fail before loading any model
        t0 = time.perf_counter()
        if self.encoder is None:
            self.encoder = self._encoder_src()
        if self.detector is None:
            self.detector = self._detector_src()
        self._load_seconds = time.perf_counter() - t0
        if self.opt.batch_size is None:
            from ..models.encoder import default_batch_size

            self.opt.batch_size = default_batch_size(self.encoder.device)
        self.workers.start(self.encoder, self.detector)
        self.store.space.ensure(self.encoder.space, self.encoder.language)
        self.store.indexes.get()  # load and catch up before writing
        self._visual_dim = self.store.space.row().visual_dim
        self._models_ready = True
        self._heap.enter_context(frozen_heap())  # the modules and models: out of the collector's walks (heap.py)

    def _first_task(self, asm: Assembly) -> DecodeTask:
        """A file's first task (a video's first segment; ``_on_decoded`` asks for the next while there is more)."""
        self._load_models()
        boxes = self._boxes.get(asm.cand.path, []) if self._boxes is not None else None
        sniff = not asm.cand.sniffed  # the name's guess: the decoder reads the first bytes (it may be a video)
        segment = (0.0, self.opt.segment_s) if asm.cand.kind == "video" or sniff else None
        for_detector = self.detector.needs_frames
        asm.task = DecodeTask(path=asm.cand.path, kind=asm.cand.kind, preprocess=self.encoder.preprocess,
                              for_detector=for_detector, max_pixels=self.opt.max_pixels,
                              video_fps=self.opt.video_fps, boxes=boxes, segment=segment, want_hash=True,
                              gpu_jpeg=self.workers.gpu_jpeg and not for_detector and asm.cand.kind == "image",
                              sniff=sniff)
        return asm.task

    # ------------------------------------------------------------------ per file

    def _on_decoded(self, asm: Assembly, r: DecodeResult, work) -> None:
        self.stages["decode"] += r.seconds
        asm.receive()
        if asm.dropped:
            return
        if r.error:
            self._fail(asm, *r.error)
            return
        if asm.decide(r):
            if self._unchanged(asm):
                return
            self._unchecked.append((asm, r, work))  # looked up in SQLite a model batch of persons at a time
            # the persons it holds here (in the decode ring); a file whose items stay elsewhere (Ray's object store)
            # counts one, so that every engine's files are looked up a batch at a time
            self._unchecked_items += max(1, len(r.items))
            if r.more or self._unchecked_items >= self.opt.batch_size \
                    or self.report.persons_added == 0:  # a video's next segment, or the first persons: no waiting
                self._check_unchecked()
            return
        self._accept(asm, r, work)

    def _accept(self, asm: Assembly, r: DecodeResult, work) -> None:
        """A decoded segment of a file to store: its footage noted, its persons handed to the workers."""
        asm.add_footage(r)
        if r.more:  # the stream really goes on (its claimed duration is never trusted): ask for the next segment
            self._followups.append((asm, asm.next_segment(self.opt.segment_s)))
        if work is not None:  # this segment's persons, filled when the workers are done (segments keep order)
            self.workers.submit((asm, asm.open_slot()), work)
        if asm.complete:
            self._complete(asm)

    def _on_finished(self, asm: Assembly, slot: int, persons: list[NewPerson] | Failed) -> None:
        if asm.dropped:
            return
        if isinstance(persons, Failed):
            self._fail(asm, persons.stage, persons.reason)
            return
        asm.fill(slot, persons)
        if asm.complete:
            self._complete(asm)

    def _unchanged(self, asm: Assembly) -> bool:
        """Unchanged content at the same path: skip."""
        if asm.state is not None and asm.state.content_hash == asm.content_hash and not self.opt.force:
            self.store.touch_media(asm.state.id, asm.cand.size, asm.cand.mtime)
            asm.dropped = True
            self.report.media_skipped += 1
            self._file_done()
            return True
        return False

    def _check_unchecked(self) -> None:
        """Apply the duplicate rule to the first segments waiting for it, in the order they came, with one SQLite
        lookup for all (as if they had all come now), then accept the others."""
        unchecked, self._unchecked, self._unchecked_items = self._unchecked, [], 0
        if not unchecked:
            return
        stored = self.store.media_with_hashes([asm.content_hash for asm, _, _ in unchecked])
        for asm, r, work in unchecked:
            if not self._duplicate(asm, stored.get(asm.content_hash)):
                self._accept(asm, r, work)

    def _duplicate(self, asm: Assembly, other: int | None) -> bool:
        """Same content as a media of this run: wait for it. Same content as a stored media (``other``): store as
        its duplicate."""
        h = asm.content_hash
        if h in self._hashes and self._hashes[h] is not asm:
            asm.dropped = True
            self._deferred_dups.append(asm)
            self._file_done()
            return True
        if other is not None and (asm.state is None or other != asm.state.id):
            asm.dropped = True
            self._write_q.append(asm.row(self.opt.collection, duplicate_of=other))
            self.report.duplicates += 1
            self._file_done()
            return True
        self._hashes[h] = asm
        return False

    def _complete(self, asm: Assembly) -> None:
        """A file with all its persons: queued for writing (its persons are checked with the batch, ``_checked``)."""
        asm.dropped = True  # nothing more to do for it
        persons = asm.all_persons()
        self._write_q.append(asm.row(self.opt.collection, persons=persons))
        self._write_q_persons += len(persons)
        self.report.media_ingested += 1
        self._file_done()

    # ------------------------------------------------------------------ batches

    def _flush(self, final: bool) -> None:
        """Move work along: the workers' finished segments to their files, then write and save. Nothing waits for
        a full batch until the first persons are committed, or at the end."""
        if final:
            self._check_unchecked()
        for (asm, slot), persons in self.workers.finished(final, eager=self.report.persons_added == 0):
            self._on_finished(asm, slot, persons)
        if self._write_due(final):
            self._write()
        if not final and self.store.writable and self.store.indexes.save_due(self.opt.save_every_s):
            with self._stage("save"):
                self.store.indexes.save()

    def _write_due(self, final: bool) -> bool:
        """Whether the queued media go to SQLite now: at the end, the first persons at once, else in batches of
        ``commit_every`` persons (or MEDIA_PER_WRITE media)."""
        if not self._write_q:
            return False
        queued = self._write_q_persons
        first = self.report.persons_added == 0 and queued > 0
        return final or first or queued >= self.opt.commit_every or len(self._write_q) >= MEDIA_PER_WRITE

    def _write(self) -> None:
        queued, self._write_q, self._write_q_persons = self._write_q, [], 0
        items, arrays = self._checked(queued)
        with self._stage("write"):
            ids = self.store.write(items, arrays)
            self.store.record_failures(self._failures)
            self._failures = []
        for m in queued:
            if m.duplicate_of is None:  # committed (or failed): SQLite answers for it from now on
                self._hashes.pop(m.content_hash, None)
        self.report.persons_added += len(ids)
        self._progress()
        self._resolve_deferred()

    def _checked(self, items: list[NewMedia]) -> tuple[list[NewMedia], PersonArrays | None]:
        """The queued media whose persons can all be stored, with their persons as arrays (checked all at once, a
        batch at a time; ``Store.write`` takes them as they are). A media with a person that cannot be stored (a
        NaN model output...) is that file's failure, so that it never reaches SQLite."""
        persons = [p for m in items for p in m.persons]
        if not persons:
            return items, None
        arrays, _ = as_arrays(persons, self._visual_dim)
        if arrays is not None:
            return items, arrays
        kept = []
        for m in items:
            problem = next(((j, why) for j, p in enumerate(m.persons) if (why := person_problem(p, self._visual_dim))),
                           None)
            if problem is None:
                kept.append(m)
                continue
            self._note_failure(m.path, "encode", f"person {problem[0]}: {problem[1]}")
            self.report.media_ingested -= 1
        persons = [p for m in kept for p in m.persons]
        return kept, as_arrays(persons, self._visual_dim)[0] if persons else None

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

    def _fail(self, asm: Assembly, stage: str, reason: str) -> None:
        """A file failed after its decoding started: it is dropped, and its content hash is free again. (A failure
        of stage discover, from a decoder that sniffed the file, names it as discovery does.)"""
        asm.dropped = True
        self._forget_hash(asm)
        self._note_failure(display_path(asm.cand.given) if stage == "discover" else asm.cand.path, stage, reason)
        self._file_done()

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
        return Timed(self.stages, name)



def run_ingest(store: Store, encoder: ActivityEncoder | Callable[[], ActivityEncoder], detector,
               paths: list[str], options: IngestOptions | None = None,
               on_progress: Callable[[IngestProgress], None] | None = None) -> IngestReport:
    """Ingest ``paths`` into ``store`` (write-locked). ``encoder`` and ``detector``: loaded ones, or callables
    that load them when the first file needs decoding."""
    if not callable(detector) and not isinstance(detector, Detector):
        raise InputError(f"unknown detector {detector!r}")
    return Ingestor(store, encoder, detector, options, on_progress).run([str(p) for p in paths])
