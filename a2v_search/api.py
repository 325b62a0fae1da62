"""The Python API: :class:`A2VSearch` ties a store (data directory) to the models of its vector space.

    store = A2VSearch.open("a2v_data")
    store.ingest(["photos/"], detector="none")
    hits = store.search_text("hand: hold; head: drink with", k=10)

Models load lazily, on the first call that needs them. On an existing store, model flags default to the models
recorded in its space; a flag that contradicts the space is a SpaceMismatchError naming the fix.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from db.schema import COUNT_MIN_P
from index import saved_summary

from . import taxonomy as tx
from .detect import Detection, Detector, DetectorOptions, detector_kind, make_detector
from .errors import InputError, NotFoundError, QueryError
from .media import DEFAULT_MAX_PIXELS, DecodeError, display_path, load_image
from .objects import object_dicts
from .records import ImportProgress, ImportReport, import_records, read_records
from .search import (
    Searcher,
    SearchOptions,
    SearchResult,
    check_text,
    make_filters,
    parse_box,
    top_labels,
    weights_by_space,
)
from .settings import COMPILE_MODES, JPEG_DECODERS, Settings, check_choice, get_device
from .space import ACTIVITY, ALL_INDEX_NAMES, INDEX_NAMES, as_stored_visual, model_spec
from .store import CheckReport, Store, change_signature, store_identity

if TYPE_CHECKING:
    from .export import ExportReport
    from .ingest import IngestProgress, IngestReport
    from .models import ModelSpec
    from .models.encoder import ActivityEncoder

log = logging.getLogger("a2v_search")
DEFAULT_WEIGHTS = (0.5, 0.5)


class A2VSearch:
    """A store and its models. Use :meth:`open`; close with :meth:`close` or a ``with`` block."""

    def __init__(self, data_dir: str | os.PathLike | None = None, *, model: str | os.PathLike | None = None,
                 checkpoint: str | os.PathLike | None = None, trust_checkpoint: bool = False,
                 text_model: str | os.PathLike | None = None, device: str | None = None,
                 detector: str | os.PathLike | None = None, detector_options: DetectorOptions | None = None,
                 precision: str = "auto", compile: str = "off"):
        model, checkpoint, text_model, detector = (os.fspath(v) if isinstance(v, os.PathLike) else v
                                                   for v in (model, checkpoint, text_model, detector))
        self.settings = Settings.resolve(data_dir=data_dir, device=device, text_model=text_model, detector=detector)
        self.data_dir = self.settings.data_dir
        given = Settings.given(model=model, text_model=text_model, detector=detector)
        self._flags = {"model": given["model"], "checkpoint": checkpoint, "text_model": given["text_model"]}
        self._trust = trust_checkpoint
        self._default_text_model = self.settings.text_model
        self._detector_flag = given["detector"]
        self._default_detector = self.settings.detector
        self._detector_options = detector_options or DetectorOptions()
        self._precision = precision
        self._compile = check_choice("--compile", compile, COMPILE_MODES)
        self._encoder = None
        self._detectors: dict[str, Detector] = {}
        self._reader: Store | None = None
        self._signature: tuple | None = None

    @classmethod
    def open(cls, data_dir: str | os.PathLike | None = None, **kwargs) -> A2VSearch:
        """Open (lazily) the store in ``data_dir`` (default ``./a2v_data`` or ``A2V_DATA_DIR``)."""
        return cls(data_dir, **kwargs)

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()
            self._reader = None

    def __enter__(self) -> A2VSearch:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def store(self) -> Store:
        """The store this object reads, opened on first use (its query methods, for tools and tests)."""
        return self._open_reader()

    # ------------------------------------------------------------------ models

    def model_spec(self, store: Store | None = None) -> ModelSpec:
        """The models to use: the store's recorded ones, overridden by explicit flags (checked against it)."""
        space = (store.space.config() or {}) if store is not None else {}
        return model_spec(self._flags, self._trust, self._default_text_model, space)

    def encoder(self, store: Store | None = None, standalone: bool = False) -> ActivityEncoder:
        """The activity encoder (loaded on first use), checked against the store's space. ``standalone``: for
        work that stores nothing (predict); the store's models are used only when no model flag is given."""
        from .models import load_encoder

        if store is None and not (standalone and any(self._flags.values())):
            store = self._open_reader(required=False)
        if self._encoder is None:
            language = store.space.language() if store is not None and store.space.row() is not None else None
            self._encoder = load_encoder(self.model_spec(store), device=self.settings.device, language=language,
                                         precision=self._precision, compile=self._compile)
            if language is None and store is not None:
                store.space.set_language(self._encoder.language)
        if store is not None:
            store.space.check(self._encoder.space)
            if store.writable:
                self._remember_checkpoint_folder(store)
        return self._encoder

    def _checkpoint_folder_to_record(self, store: Store) -> str | None:
        """The converted (pickle-free) checkpoint folder given by flag when the store records another path."""
        flag, spec = self._flags["checkpoint"], (store.space.config() or {}).get("spec")
        if not flag or spec is None:  # the usual case: decided without importing the models (and torch)
            return None
        from .models.checkpoint import is_own_checkpoint
        from .models.factory import model_ref

        if is_own_checkpoint(Path(flag)) and spec.get("checkpoint") != model_ref(flag):
            return model_ref(flag)
        return None

    def _remember_checkpoint_folder(self, store: Store) -> None:
        """A writer given a converted folder of the store's own checkpoint records its path, so later commands
        load the folder without flags instead of the pickled file (``encoder`` checked the identity first)."""
        folder = self._checkpoint_folder_to_record(store)
        if folder is not None:
            store.space.record_spec({**store.space.config()["spec"], "checkpoint": folder})

    def detector(self, name: str | None = None) -> Detector:
        """``none``, ``boxes:FILE`` or a detector model (loaded once); ``name`` defaults as :meth:`detector_name`."""
        name = self.detector_name(name)
        if name not in self._detectors:
            device = get_device(self.settings.device) if detector_kind(name) == "model" else None
            self._detectors[name] = make_detector(name, device, self._detector_options)
        return self._detectors[name]

    def use_detector(self, name: str, detector: Detector) -> None:
        """Answer ``detector=name`` with this detector (one built by the caller, e.g. a test's)."""
        self._detectors[name] = detector

    def detector_name(self, name: str | None = None) -> str:
        """``name``, else the flag, else the detector the store was last ingested with (so query persons are cut
        out the way stored ones were), else settings."""
        return name or self._detector_flag or self._store_detector() or self._default_detector

    def _store_detector(self) -> str | None:
        store = self._open_reader(required=False)
        return store.meta("detector") if store is not None else None

    # ------------------------------------------------------------------ stores

    def _open_reader(self, required: bool = True) -> Store | None:
        if self._reader is None:
            if not (self.data_dir / "a2v.sqlite").exists():
                if required:
                    raise QueryError(f"no store at {self.data_dir}; ingest something first: "
                                     f"`python manage.py ingest PATH --data-dir {self.data_dir}`")
                return None
            self._reader = self._attach(Store(self.data_dir))
        return self._reader

    def changed(self) -> bool:
        """True when the store may have changed since the last :meth:`refresh` (a few file stats). A change in the
        last two seconds counts as a change on every call, as file times are coarse."""
        sig = change_signature(self.data_dir)
        now = time.time_ns()
        return sig != self._signature or any(x is not None and now - x[1] < 2_000_000_000 for x in sig)

    def refresh(self) -> None:
        """For long-running readers (the server): load the store's indexes, or bring them up to date with the
        persons that writers added, removed or replaced since, in memory. Nothing is written. A store replaced
        since it was opened (another database file or creation id: a folder moved in its place) is closed and the
        new one opened, indexes and all."""
        if self._reader is not None and self._reader.identity != store_identity(self.data_dir):
            log.warning("the store at %s was replaced; opening the new one", self.data_dir)
            self.close()
        store = self._open_reader(required=False)  # opening may create the WAL file: before the signature
        self._signature = change_signature(self.data_dir)  # before the catch-up: a commit during it is seen next time
        if store is not None and store.space.row() is not None:
            store.space.language()
            store.indexes.get(INDEX_NAMES)  # the activity index loads (with the heads) on its first query
            store.indexes.refresh()

    def _attach(self, store: Store) -> Store:
        """Give a store the way to A2V features: the heads of its models, loaded when first needed."""
        store.space.set_activity_source(lambda: self.encoder(store).part_features)
        return store

    @contextmanager
    def writer(self, what: str) -> Iterator[Store]:
        """The store opened for writing, holding the write lock."""
        self.close()  # a reader's indexes would go stale
        store = self._attach(Store(self.data_dir, create=True))
        try:
            store.lock(what)
        except BaseException:
            store.close(save=False)
            raise
        try:
            yield store
        except BaseException:
            store.close(save=False)  # the next open catches FAISS up from SQLite
            raise
        store.close()

    # ------------------------------------------------------------------ ingest and import

    def ingest(self, paths: Iterable[str | os.PathLike], *, collection: str = "default", detector: str | None = None,
               batch_size: int | None = None, workers: int | None = None, video_fps: float = 1.0, force: bool = False,
               max_pixels: int = DEFAULT_MAX_PIXELS, commit_every: int = 1024, jpeg_decoder: str = "auto",
               file_timeout: float | None = 300.0,
               on_progress: Callable[[IngestProgress], None] | None = None, engine: str = "local",
               ray_address: str | None = None, gpus_per_worker: float | None = None) -> IngestReport:
        """Compute and store the persons of images and videos (files, folders, list files). Models are loaded
        only if some file needs encoding; ``on_progress`` gets an :class:`~a2v_search.ingest.IngestProgress`.

        ``batch_size``: persons per model batch (default: ``models.encoder.default_batch_size``, 32 on the CPU).
        ``jpeg_decoder``: auto (JPEGs decoded on the GPU when the encoder runs on CUDA and torchvision is
        installed, see ``gpu_decode``), gpu, or cpu. ``file_timeout``: seconds a decode worker may spend on one
        file (or video segment); None = no limit.

        ``engine="ray"`` decodes, detects and encodes on a Ray cluster (``ray_address``: None starts Ray here,
        ``"auto"`` joins the running one); ``workers`` is then the number of model actors, each with
        ``gpus_per_worker`` GPUs. This process still discovers, applies the skip rule and writes."""
        from .ingest import IngestOptions, run_ingest

        paths = [str(p) for p in paths]
        _check_ingest_args(paths, jpeg_decoder, engine, ray_address, gpus_per_worker)
        name = self.detector_name(detector)
        cheap = detector_kind(name) != "model"  # a model detector loads when the first file needs decoding
        det = self.detector(name) if cheap else (lambda: self.detector(name))
        opts = IngestOptions(collection=collection, batch_size=batch_size, workers=workers, video_fps=video_fps,
                             force=force, max_pixels=max_pixels, commit_every=commit_every, jpeg_decoder=jpeg_decoder,
                             file_timeout=file_timeout)
        with self.writer("ingest") as store:
            if self._checkpoint_folder_to_record(store) is not None:
                self.encoder(store)  # checks the folder's identity and records it, even when nothing needs encoding
            run = run_ingest if engine == "local" else self._ray_engine(store, name, ray_address, workers,
                                                                        gpus_per_worker)
            report = run(store, lambda: self.encoder(store), det, paths, opts, on_progress)
            if detector_kind(name) != "boxes" and (cheap or report.media_ingested):  # a boxes file cuts no query
                store.set_meta("detector", self.detector(name).name)
            return report

    def _ray_engine(self, store: Store, detector: str, address: str | None, workers: int | None,
                    gpus_per_worker: float | None) -> Callable[..., IngestReport]:
        """``run_ingest``'s counterpart on a Ray cluster, its actors loading this store's models."""
        from .ingest.ray_engine import RayOptions, run_ray_ingest, worker_models

        def actor_models():  # called when the first file needs decoding: a no-op run imports no torch
            model = detector if detector_kind(detector) == "model" else None
            return partial(worker_models, self.model_spec(store), self._precision, model, self._detector_options)

        ray_opt = RayOptions(address=address, workers=workers, gpus_per_worker=gpus_per_worker, models=actor_models)
        return partial(run_ray_ingest, ray_options=ray_opt)

    def import_records(self, source: str | os.PathLike | Iterable[dict], collection: str = "default",
                       on_progress: Callable[[ImportProgress], None] | None = None) -> ImportReport:
        """Add persons computed elsewhere. ``source``: a JSON-lines file, a JSON list file, or dicts::

            {"path": "...", "collection": "...", "kind": "image", "width": W, "height": H,
             "persons": [{"box": [x1, y1, x2, y2], "pasta": [93 floats] or {"hand: hold": 0.9},
                          "verbs": [157] or {"drink_with": 0.8}, "visual": [P floats], "parts": [6] (optional),
                          "score": 1.0, "frame_index": null, "t_sec": null, "visual_norm": (optional),
                          "objects": [{"name": "cup", "p": 0.9, "box": [x1, y1, x2, y2]}] (optional; box
                          optional; names: the 80 COCO classes, HICO's spellings too; at most 4)}]}

        ``visual`` is the image tower's output; give it unnormalised (or unit length with ``visual_norm``, the
        tower output's norm), so that trained heads' input, and A2V's classifier feature, can be recomputed. From
        Python, the vectors and the box may be numpy arrays and the numbers numpy scalars: a model's float32 outputs
        as they are, which import faster than lists (no Python float to read for each value).

        Records are validated like ingest results; bad ones are reported and skipped, the rest is stored. A path
        already stored is replaced; a path that an earlier record of the same import gave is reported and skipped
        (one record a media, with all its persons). A JSON-lines file is read as the import goes, never whole (one of
        64 MiB or more by two reader processes, so that parsing overlaps writing); a line that is not JSON is a bad
        record (but a file whose first record is not JSON is refused). ``on_progress(ImportProgress)`` is called
        after each transaction (256 records): records done, persons stored, the share of the input done (a file's
        bytes, a list's records; None for a pipe or a generator) and the seconds since the import began (the models'
        loading not counted)."""
        records = read_records(source)
        with self.writer("import") as store:
            encoder = self.encoder(store)
            store.space.ensure(encoder.space, encoder.language)
            store.indexes.get()
            return import_records(store, records, encoder.model.visual_dim, collection, on_progress)

    # ------------------------------------------------------------------ predict

    def predict(self, image: str | os.PathLike | Image.Image, box: list[float] | None = None,
                detector: str | None = None) -> list[dict]:
        """PaSta, verbs and part flags of the persons in one image, and the objects the detector tied to them
        (nothing is stored)."""
        img = query_image(image)
        boxes = self._query_boxes(img, box, detector)
        encoder = self.encoder(standalone=True)
        out = encoder.encode_persons([img] * len(boxes), [b for b, _, _ in boxes])
        persons = []
        for i, (b, score, objects) in enumerate(boxes):
            persons.append({
                "box": [round(v, 2) for v in (b or [0.0, 0.0, float(img.width), float(img.height)])],
                "score": round(score, 4), "objects": object_dicts(objects),
                "pasta": {n: round(float(p), 6) for n, p in zip(tx.PASTA_NAMES, out.pasta[i], strict=True)},
                "verbs": {n: round(float(p), 6) for n, p in zip(tx.VERB_NAMES, out.verbs[i], strict=True)},
                "parts": {n: round(float(p), 6) for n, p in zip(tx.PARTS, out.parts[i], strict=True)},
            })
        return persons

    def _query_boxes(self, img: Image.Image, box, detector: str | None) -> list[Detection]:
        if box is not None:
            return [(list(box), 1.0, ())]
        return self.detector(detector).detect([np.asarray(img)])[0]  # a boxes file: InputError naming --box

    # ------------------------------------------------------------------ search

    def _searcher(self) -> Searcher:
        return Searcher(self._open_reader())

    def _rank(self, vectors: dict[str, np.ndarray], weights: dict[str, float], opts: SearchOptions, query: dict,
              exclude: set[int] | None = None, searcher: Searcher | None = None) -> SearchResult:
        """The last step of every search: rank stored persons (or moments) against the query vectors."""
        return (searcher or self._searcher()).search(vectors, weights, opts, exclude=exclude, query=query)

    def search(self, *, text: str | None = None, clip_text: str | None = None,
               image: str | os.PathLike | Image.Image | None = None, person: int | None = None,
               box: str | list[float] | None = None, person_index: int | None = None, detector: str | None = None,
               weights: str | tuple[float, ...] = DEFAULT_WEIGHTS, options: SearchOptions | None = None,
               **fields) -> SearchResult:
        """One door for every search: exactly one of ``text`` (PaSta or free text), ``clip_text``, ``image`` (an
        example; ``box``, ``person_index``, ``detector`` choose its person) or ``person`` (a stored person id).
        ``weights`` (VISUAL,LANGUAGE[,ACTIVITY]) weigh the spaces of image and person queries. Options: as
        :meth:`search_text`. :meth:`search_text`, :meth:`search_clip_text`, :meth:`search_image` and
        :meth:`search_similar` are its typed cases."""
        given = [n for n, v in (("text", text), ("clip_text", clip_text), ("image", image), ("person", person))
                 if v is not None]
        if len(given) != 1:
            raise QueryError("give exactly one of text, clip_text, image, person"
                             + (f" (got {', '.join(given)})" if given else ""))
        if text is not None:
            return self.search_text(text, options=options, **fields)
        if clip_text is not None:
            return self.search_clip_text(clip_text, options=options, **fields)
        if image is not None:
            return self.search_image(image, box=parse_box(box), person_index=person_index, detector=detector,
                                     weights=weights, options=options, **fields)
        return self.search_similar(person, weights=weights, options=options, **fields)

    def search_text(self, text: str, k: int | None = None, *, options: SearchOptions | None = None,
                    **fields) -> SearchResult:
        """Persons matching PaSta text (``"hand: hold=2; head: drink with"``) or free text, in the language space.

        Every search takes a :class:`~a2v_search.search.SearchOptions` as ``options=`` or its fields as keywords
        (``k``, ``offset``, ``collection``, ``path``, ``kind``, ``where``, ``per_media``, ``min_score``, ``group``,
        ``moment_frames``; keywords override ``options``). ``group="track"``: one hit per video moment (a track;
        see :class:`search.Moment`), scored by the mean of its best ``moment_frames`` frame scores (1: its best
        frame)."""
        opts = SearchOptions.of(options, k=k, **fields)
        check_text(text)
        store = self._open_reader()
        if store.space.row() is None:
            raise QueryError(f"the store at {self.data_dir} is empty; ingest something first")
        self.model_spec(store)  # model flags that contradict the store fail here too, though no model loads
        language = store.space.language()
        query = language.interpret(text)
        vec = language.embed_query(query)
        if not np.any(vec):
            raise QueryError(f"query {text!r} maps to no PaSta or verb with meaning")
        return self._rank({"language": vec}, {"language": 1.0}, opts, {"type": "text", **query.as_dict()})

    def search_clip_text(self, text: str, k: int | None = None, *, options: SearchOptions | None = None,
                         **fields) -> SearchResult:
        """Persons whose CLIP visual embedding matches a text through CLIP's text tower (options: as
        :meth:`search_text`)."""
        opts = SearchOptions.of(options, k=k, **fields)
        check_text(text)
        vec = self.encoder(self._open_reader()).clip_text([text])[0]
        return self._rank({"visual": vec}, {"visual": 1.0}, opts, {"type": "clip_text", "text": text})

    def search_image(self, image: str | os.PathLike | Image.Image, k: int | None = None, *,
                     box: list[float] | None = None, person_index: int | None = None, detector: str | None = None,
                     weights: str | tuple[float, ...] = DEFAULT_WEIGHTS, options: SearchOptions | None = None,
                     **fields) -> SearchResult:
        """Persons like the one in a query image (the largest detected, or ``person_index``, or ``box``).
        ``weights``: VISUAL,LANGUAGE or VISUAL,LANGUAGE,ACTIVITY (the activity space needs trained heads);
        options: as :meth:`search_text`."""
        opts = SearchOptions.of(options, k=k, **fields)
        w = weights_by_space(weights)
        store = self._open_reader()
        img = query_image(image)
        boxes = self._query_boxes(img, box, detector)
        chosen = _chosen_person(img, boxes, person_index, image)
        qbox = boxes[chosen][0]
        out = self.encoder(store).encode_persons([img], [qbox])
        vecs = {"visual": out.visual[0], "language": store.space.language().embed(out.pasta, out.verbs)[0]}
        if w.get(ACTIVITY):  # from the values a stored person would keep, so a stored image finds itself at cos 1
            vecs[ACTIVITY] = store.space.activity_vectors(as_stored_visual(out.visual), out.visual_norm)[0]
        query = {"type": "image", "image": str(image) if not isinstance(image, Image.Image) else "<image>",
                 "box": [round(v, 2) for v in qbox] if qbox else None, "persons_found": len(boxes),
                 "person_index": chosen, "weights": list(w.values()),
                 "pasta": [[n, round(p, 4)] for n, p in top_labels(out.pasta[0], tx.PASTA_NAMES,
                                                                    skip=tx.NO_INTERACTION_PASTA)]}
        return self._rank(vecs, w, opts, query)

    def search_similar(self, person_id: int, k: int | None = None, *,
                       weights: str | tuple[float, ...] = DEFAULT_WEIGHTS, options: SearchOptions | None = None,
                       **fields) -> SearchResult:
        """Persons like an indexed person (the person itself left out; with ``group="track"``, its whole track);
        ``weights`` as for :meth:`search_image`, options as for :meth:`search_text`."""
        opts = SearchOptions.of(options, k=k, **fields)
        w = weights_by_space(weights)
        store = self._open_reader()
        searcher = self._searcher()
        row = searcher.person(person_id)
        vecs = {"visual": row.visual, "language": store.space.language().embed(row.pasta[None], row.verbs[None])[0]}
        if w.get(ACTIVITY):
            norm = np.array([np.nan if row.visual_norm is None else row.visual_norm], np.float32)
            vecs[ACTIVITY] = store.space.activity_vectors(row.visual[None], norm)[0]
        query = {"type": "person", "person_id": int(person_id), "path": row.path, "weights": list(w.values())}
        exclude = {int(person_id)}
        if opts.group and row.track_id is not None:  # moments: the person's own track is not a result
            exclude.update(store.track_members([row.track_id])[row.track_id])
        return self._rank(vecs, w, opts, query, exclude, searcher)

    def track(self, track_id: int) -> dict:
        """A stored video track: its video, time range and persons (person_id, t_sec, frame_index, box) in time
        order."""
        tracks, members = self._open_reader().tracks([int(track_id)])
        t = tracks.get(int(track_id))
        if t is None:
            raise QueryError(f"no track with id {track_id} in {self.data_dir} (ids come from `search --group "
                             "track` results)")
        rows = self._open_reader().persons(members[t.id])
        rows.sort(key=lambda r: (r.t_sec or 0.0, r.id))
        return {"track": t.id, "media_id": t.media_id, "path": rows[0].path if rows else None,
                "t_start": t.t_start, "t_end": t.t_end,
                "persons": [{"person_id": r.id, "t_sec": r.t_sec, "frame_index": r.frame_index,
                             "box": [round(v, 2) for v in r.box]} for r in rows]}

    def person(self, person_id: int) -> dict:
        """One stored person: box, detector score, frame and time, its media, the objects it acts on, and every
        PaSta, verb and part probability (``top_pasta`` / ``top_verbs``: the strongest, no_interaction left out)."""
        row = self._searcher().person(person_id)
        return {"person_id": row.id, "score": round(float(row.score), 4), "box": [round(v, 2) for v in row.box],
                "objects": object_dicts(row.objects),
                "frame_index": row.frame_index, "t_sec": row.t_sec,
                "media": {"id": row.media_id, "path": row.path, "kind": row.kind, "collection": row.collection,
                          "width": row.width, "height": row.height},
                "top_pasta": [[n, round(p, 4)] for n, p in top_labels(row.pasta, tx.PASTA_NAMES,
                                                                      skip=tx.NO_INTERACTION_PASTA)],
                "top_verbs": [[n, round(p, 4)] for n, p in top_labels(row.verbs, tx.VERB_NAMES,
                                                                      skip=(tx.NO_INTERACTION_VERB,))],
                "pasta": {n: round(float(p), 4) for n, p in zip(tx.PASTA_NAMES, row.pasta, strict=True)},
                "verbs": {n: round(float(p), 4) for n, p in zip(tx.VERB_NAMES, row.verbs, strict=True)},
                "parts": {n: round(float(p), 4) for n, p in zip(tx.PARTS, row.parts, strict=True)}}

    def media(self, media_id: int) -> dict:
        """One stored image or video: id, path, kind, collection, size in pixels, (videos) duration, and the file's
        size in bytes and modification time as ingested (``file_size``, ``file_mtime``; 0 when not recorded)."""
        m = self._open_reader().media(media_id)
        if m is None:
            raise NotFoundError(f"no media with id {media_id} in {self.data_dir} (ids come from search results)")
        return {"id": m.id, "path": m.path, "kind": m.kind, "collection": m.collection, "width": m.width,
                "height": m.height, "duration": m.duration, "file_size": m.size, "file_mtime": m.mtime}

    # ------------------------------------------------------------------ activities and clusters

    def activities(self, *, collection: str | None = None, path: str | None = None, kind: str | None = None,
                   where: list[str] | None = None, cluster: str | None = None, min_p: float = COUNT_MIN_P,
                   top: int = 20, examples: int = 4) -> dict:
        """What the persons passing the filters are doing: how many show each verb, PaSta, object, verb + PaSta pair
        and verb + object pair (probability >= ``min_p``), the ``top`` most frequent of each with ``examples``
        example person ids (a2v_search/overview.py; the schema of ``activities --json``)."""
        from .overview import overview

        filters = _filters(collection, path, kind, where, cluster)
        store = self._open_reader()
        result = overview(store, filters, min_p, top, examples)
        given = {"collection": collection, "path": path, "kind": kind, "where": where or None, "cluster": cluster}
        return {**result, "filters": {n: v for n, v in given.items() if v is not None}}

    def cluster(self, *, k: int | None = None, auto: bool = False, space: str = "language", name: str = "default",
                collection: str | None = None, path: str | None = None, kind: str | None = None,
                where: list[str] | None = None, cluster: str | None = None, seed: int = 0,
                niter: int = 20) -> dict:
        """k-means over the stored vectors of ``space`` (of the persons passing the filters) into ``k`` clusters,
        or a k chosen with ``auto``; stored as the clustering ``name`` (replacing one of that name). See
        a2v_search/clusters.py."""
        from .clusters import check_name, make_clustering

        if (k is None) == (not auto):
            raise InputError("give either --k N or --auto")
        check_name(name)
        filters = _filters(collection, path, kind, where, cluster)
        given = {"collection": collection, "path": path, "kind": kind, "where": where or None, "cluster": cluster}
        with self.writer("cluster") as store:
            return make_clustering(store, filters, {n: v for n, v in given.items() if v is not None}, name, space,
                                   None if auto else k, seed, niter)

    def clusterings(self) -> list[dict]:
        """Every stored clustering: name, space, k, persons, whether persons were stored since (stale)."""
        from .clusters import clustering_dict

        store = self._open_reader()
        return [clustering_dict(store, row.name, with_clusters=False) for row in store.clusterings()]

    def clustering(self, name: str) -> dict:
        """One stored clustering with its clusters (name, live size, distinctive verbs and PaSta, examples)."""
        from .clusters import clustering_dict

        return clustering_dict(self._open_reader(), name)

    def drop_clustering(self, name: str) -> None:
        """Delete a stored clustering."""
        with self.writer("cluster --drop") as store:
            if not store.drop_clustering(name):
                raise NotFoundError(f"no clustering named {name!r} in {self.data_dir}")

    def cluster_persons(self, cluster: str, k: int = 20, offset: int = 0) -> SearchResult:
        """The persons of one cluster (``NAME:ID``), closest to its centroid first (scores: their cosine)."""
        from .clusters import parse_cluster

        name, number = parse_cluster(cluster)
        store = self._open_reader()
        opts = SearchOptions(k=k, offset=offset, cluster=cluster)
        store.check_filters(opts.filters())  # QueryError for an unknown clustering or cluster
        row = store.clustering(name)[0]
        query = {"type": "cluster", "cluster": cluster, "space": row.space, "name": row.clusters[number]["name"]}
        return self._rank({row.space: row.centroids[number]}, {row.space: 1.0}, opts, query)

    # ------------------------------------------------------------------ export

    def export(self, out: str | os.PathLike, *, format: str | None = None, fields: list[str] | None = None,
               collection: str | None = None, path: str | None = None, kind: str | None = None,
               where: list[str] | None = None, cluster: str | None = None, batch_size: int = 4096,
               clustering: str | None = None) -> ExportReport:
        """Write one row per stored person (passing the filters) to a Parquet, npz or JSON-lines file, with
        metadata that explains it, in bounded memory (a2v_search/export.py); ``clustering``: add the ``cluster``
        column, each person's cluster in that stored clustering."""
        from .export import export

        return export(self._open_reader(), out, format, _filters(collection, path, kind, where, cluster), fields,
                      batch_size, clustering)

    def export_batches(self, *, fields: list[str] | None = None, collection: str | None = None,
                       path: str | None = None, kind: str | None = None, where: list[str] | None = None,
                       cluster: str | None = None, batch_size: int = 4096,
                       clustering: str | None = None) -> Iterator[dict[str, np.ndarray]]:
        """The same rows as :meth:`export`, as numpy batches ``{field: array}`` of at most ``batch_size`` persons;
        ``export_fields()`` describes the fields."""
        from .export import iter_batches

        return iter_batches(self._open_reader(), _filters(collection, path, kind, where, cluster), fields, batch_size,
                            clustering)

    @staticmethod
    def export_fields() -> dict[str, str]:
        """Every export field and what it holds."""
        from .export import FIELDS

        return dict(FIELDS)

    # ------------------------------------------------------------------ maintenance

    def stats(self) -> dict:
        """Counts of media, persons, failures; collections; index types and sizes; the vector space."""
        store = self._open_reader()
        counts, collections, recent = store.summary()
        space = store.space.config()
        indexes = {}
        for name in ALL_INDEX_NAMES:
            summary = saved_summary(store.indexes.folder, name)
            if summary is not None:
                indexes[name] = summary
        problem = store.space.activity_problem() if space else None
        return {"data_dir": str(self.data_dir), **counts, "collections": collections, "indexes": indexes,
                "activity_space": "available" if space and problem is None else problem,
                "space": {k: space[k] for k in ("visual_model", "heads", "text_model", "phrases", "visual_dim",
                                                "language_dim")} if space else None,
                "recent_failures": [{"path": p, "stage": st, "error": r} for p, st, r in recent]}

    def doctor(self, repair: bool = False) -> CheckReport:
        """Report every mismatch between SQLite and FAISS; with ``repair``, fix them."""
        if repair:
            with self.writer("doctor --repair") as store:
                return store.check(repair=True)
        store = self._attach(Store(self.data_dir))
        try:
            return store.check(repair=False)
        finally:
            store.close()

    def reindex(self, spec: str | None = None, memory_budget_mb: int | None = None) -> dict[str, str]:
        """Rebuild both FAISS indexes from SQLite (optionally with a FAISS factory string or a memory budget)."""
        with self.writer("reindex") as store:
            if store.space.row() is None:
                raise QueryError(f"the store at {self.data_dir} is empty; nothing to index")
            return store.indexes.rebuild(spec, memory_budget_mb)

    def remove(self, paths: Iterable[str | os.PathLike]) -> dict:
        """Remove media (files, or everything under folders) and their persons from SQLite and FAISS."""
        targets = [os.path.realpath(p) for p in paths]
        with self.writer("remove") as store:
            media_ids = store.media_ids_under(targets)
            removed = store.remove_media(media_ids)
        return {"media_removed": len(media_ids), "persons_removed": int(len(removed))}


def _filters(collection, path, kind, where, cluster=None):
    filters = make_filters(collection, path, kind, where, cluster)
    return None if filters.empty() else filters


def _check_ingest_args(paths: list[str], jpeg_decoder: str, engine: str, ray_address: str | None,
                       gpus_per_worker: float | None) -> None:
    """InputError naming the flag, before anything is opened."""
    if not paths:
        raise InputError("nothing to ingest: give files, folders or list files")
    check_choice("--jpeg-decoder", jpeg_decoder, JPEG_DECODERS)
    if engine not in ("local", "ray"):
        raise InputError(f"unknown engine {engine!r}; valid: local, ray")
    if engine == "local" and (ray_address is not None or gpus_per_worker is not None):
        raise InputError("--ray-address and --gpus-per-worker need --engine ray")


def _chosen_person(img: Image.Image, boxes: list, person_index: int | None, image) -> int:
    """Which found person a query image means: ``person_index``, else the largest (QueryError when none fits)."""
    if not boxes:
        raise QueryError(f"no person found in {image}; give --box x1,y1,x2,y2 or --detector none")
    if person_index is None:
        areas = [((b[2] - b[0]) * (b[3] - b[1]) if b else img.width * img.height) for b, _, _ in boxes]
        return int(np.argmax(areas))
    if 0 <= person_index < len(boxes):
        return person_index
    raise QueryError(f"--person-index {person_index} is out of range: {len(boxes)} persons found")


def query_image(image: str | os.PathLike | Image.Image) -> Image.Image:
    """A query image (a path or a PIL image) as RGB; InputError naming the file when it is missing or unreadable."""
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    p = Path(image)
    if not p.is_file():
        raise InputError(f"query image {display_path(p)} does not exist or is not a file")
    try:
        return load_image(str(p))
    except DecodeError as e:
        raise InputError(f"cannot read query image {display_path(p)}: {e}") from None
    except OSError as e:
        raise InputError(f"cannot read query image {display_path(p)}: {e.strerror or e}") from None
