"""Ingest on a Ray cluster (``--engine ray``): the local driver, with Ray's workers doing the work in between.

The driver is :class:`~a2v_search.ingest.driver.Ingestor` itself: streaming discovery, the skip rule against SQLite, the
duplicate rule, video segments asked for while a stream goes on, and the only writer (lock, SQLite first, FAISS
derived). What changes is who decodes, detects and encodes: :class:`RayWorkers` (the driver's ``Workers``) instead of
``LocalWorkers``:

- decoding: one Ray task per file or video segment (CPU), with two results: a small one the driver reads (hash,
  size, error, whether the video goes on) and the decoded pixels, which stay in Ray's object store;
- detection and encoding: a pool of actors, each loading the models once (on a GPU when ``gpus_per_worker`` > 0).
  The driver hands an actor a batch of pixel references (the pixels go from the decoding node to the actor's node,
  never through the driver) and gets person rows back.

Ray is imported only here, and only when a run has something to decode. A decode task whose worker dies is retried
once (a second death is that file's failure, as locally); a dying actor is restarted and its batch retried.
"""

from __future__ import annotations

import os
import secrets
import shutil
import sys
import tempfile
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from db.values import NewPerson

from ..errors import InputError, ModelError, first_line
from ..faults import fault_point, kill_once
from ..objects import scaled
from .decode import DecodeResult, DecodeTask, Item, decode
from .decode_pool import timed_out
from .driver import IngestOptions, Ingestor
from .workers import Failed, NextTask, Timed

CRASHED = "the decoder crashed on this file (corrupt or hostile content)"  # the local engine's words
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the folder that holds a2v_search/


def local_ray_options() -> dict:
    """How a run without ``--ray-address`` starts its own Ray (call before Ray is imported: it reads these variables
    then): on loopback only (``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``: the single-machine mode, in which Ray's
    servers listen on 127.0.0.1), in a private folder (mode 0700; Ray's sockets, logs and the token under it) and
    with token authentication: unless ``RAY_AUTH_MODE`` is set already, a random token in a 0600 file there
    (``RAY_AUTH_TOKEN_PATH``). Ray's processes inherit the variables. Returns ``ray.init``'s extra arguments."""
    private = tempfile.mkdtemp(prefix="a2v-ray-")
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    if "RAY_AUTH_MODE" not in os.environ:
        fd, token = tempfile.mkstemp(dir=private, prefix="auth_token.")
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32))
        os.environ.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=token)
        if sys.modules.get("ray") is not None:  # imported earlier: read the variables again, as Ray does
            from ray._raylet import Config

            Config.initialize("")
    return {"_node_ip_address": "127.0.0.1", "_temp_dir": os.path.join(private, "ray")}


@dataclass
class RayOptions:
    """Where and how wide a Ray ingest runs."""

    address: str | None = None  # None: start Ray on this machine; "auto": the running cluster; else host:port
    workers: int | None = None  # detection + encoding actors; None: one per GPU of the cluster (1 without GPUs)
    gpus_per_worker: float | None = None  # None: 1 when the cluster has GPUs, else 0 (encode on CPU)
    # returns the picklable ``device -> (encoder, detector or None)`` that each actor runs once; called when the
    # first file needs decoding
    models: Callable[[], Callable] | None = None
    max_retries: int = 3  # restarts of a dying actor (and retries of its batch)


def worker_models(spec, precision: str, detector: str | None, detector_options, device: str):
    """What an actor loads: the encoder of ``spec`` (image tower and heads: the store computes the language
    vectors, so no text model) and the detector model named ``detector`` (None: the decoders crop, no detector)."""
    from ..detect import make_detector
    from ..models import load_encoder
    from ..settings import get_device

    dev = get_device(device)
    encoder = load_encoder(spec, device=dev, with_language=False, precision=precision)
    return encoder, make_detector(detector, dev, detector_options) if detector else None


def decode_split(task: DecodeTask) -> tuple[tuple[DecodeResult, int, float, float], list[Item]]:
    """Ray task body: decode, and return (the result without its items, their number, start, end) and the items
    apart, so the driver reads the small part and the pixels stay in the object store."""
    kill_once("ray_decode")
    start = time.time()
    r = decode(task)
    items, r.items = r.items, []
    return (r, len(items), start, time.time()), items


class EncoderActor:
    """Ray actor: the models loaded once; ``run`` detects and encodes batches of decoded items."""

    def __init__(self, models: Callable, device: str, batch_size: int):
        self.encoder, self.detector = models(device)
        self.batch_size = batch_size

    def ready(self) -> bool:
        return True

    def run(self, *groups: list[Item]) -> tuple[list[list[NewPerson]], dict[str, float]]:
        """Persons of each group (one decoded file or segment), in the order the local engine gives them."""
        kill_once("ray_actor")
        t = {"start": time.time(), "detect": 0.0, "encode": 0.0}
        crops: list[tuple[int, Item, np.ndarray]] = []  # (group, person, pixels)
        frames = [(g, it) for g, items in enumerate(groups) for it in items if it.frame is not None]
        if frames:
            t0 = time.perf_counter()
            dets = self.detector.detect([it.frame for _, it in frames], [it.scale for _, it in frames])
            t["detect"] = time.perf_counter() - t0
            for (g, item), frame_dets in zip(frames, dets, strict=True):
                frame = Image.fromarray(item.frame)
                for box, score, objects in frame_dets:
                    person = Item(box=[v / item.scale for v in box], score=score, frame_index=item.frame_index,
                                  t_sec=item.t_sec, objects=scaled(objects, 1 / item.scale))
                    crops.append((g, person, self.encoder.preprocess.crop(frame, box)))
        crops += [(g, it, it.pixels) for g, items in enumerate(groups) for it in items if it.frame is None]
        out: list[list[NewPerson]] = [[] for _ in groups]
        if crops:
            t0 = time.perf_counter()
            v = self.encoder.encode_pixels(np.stack([px for _, _, px in crops]), self.batch_size)
            t["encode"] = time.perf_counter() - t0
            for i, (g, it, _) in enumerate(crops):
                out[g].append(NewPerson(box=it.box, score=it.score, frame_index=it.frame_index, t_sec=it.t_sec,
                                        objects=it.objects,
                                        pasta=v.pasta[i], verbs=v.verbs[i], parts=v.parts[i], visual=v.visual[i],
                                        visual_norm=None if v.visual_norm is None else float(v.visual_norm[i])))
        t["end"] = time.time()
        return out, t


@dataclass
class _Decoding:
    key: Any
    task: DecodeTask
    meta: object  # ObjectRef of (DecodeResult, n_items, start, end)
    items: object  # ObjectRef of list[Item]
    submitted: float


@dataclass
class _Call:
    """One batch on an actor: the key of each group it holds."""

    keys: list[Any]
    actor: int
    submitted: float


class RayWorkers:
    """Decoding on Ray tasks, detection + encoding on a Ray actor pool: the driver's ``Workers`` for ``--engine ray``.
    ``decoded`` yields as ``work`` the reference of a result's items in Ray's object store and their number."""

    stage_names = ("start", "queue", "transfer")
    gpu_jpeg = False  # decoding runs on Ray's CPU tasks: the actors get pixels, never JPEG bytes

    def __init__(self, ray_options: RayOptions):
        self.ray_opt = ray_options
        self._ray = None
        self._started_ray: str | None = None  # the private temp folder of a Ray instance this run started
        self._actors: list = []
        self._actor_load: list[int] = []
        self._batch: list[tuple[Any, object, int]] = []  # (key, items ref, n items)
        self._calls: dict = {}  # ObjectRef -> _Call
        self._done: list[tuple[Any, list[NewPerson] | Failed]] = []
        self._decoding = 0  # decode tasks in flight
        self._slots = 1  # decode tasks that run at once (set when the actors start)

    def bind(self, opt: IngestOptions, stages: dict[str, float]) -> None:
        if self.ray_opt.models is None:
            raise InputError("the Ray engine needs a model loader for its actors (use A2VSearch.ingest)")
        if opt.jpeg_decoder == "gpu":
            raise InputError("--jpeg-decoder gpu is for the local engine; the Ray engine decodes on Ray's CPU tasks "
                             "(use --jpeg-decoder auto or cpu)")
        self.opt, self.stages = opt, stages

    # ------------------------------------------------------------------ cluster

    def connect(self) -> None:
        ray = sys.modules.get("ray")
        if ray is not None and ray.is_initialized():
            self._ray = ray
            return
        local = {} if self.ray_opt.address else local_ray_options()  # before Ray is imported
        try:
            import ray
        except ImportError:
            if local:
                shutil.rmtree(os.path.dirname(local["_temp_dir"]), ignore_errors=True)
            raise InputError("--engine ray needs Ray: pip install 'a2v-search[ray]' (ray[data])") from None
        self._ray = ray
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no usage reports from a2v-search's runs
        env = {"PYTHONPATH": os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")]))}
        try:
            ray.init(address=self.ray_opt.address, runtime_env={"env_vars": env}, log_to_driver=False,
                     include_dashboard=False, configure_logging=False, **local)
        except ConnectionError as e:
            raise InputError(f"cannot reach the Ray cluster at {self.ray_opt.address}: {e}; start it with "
                             "`ray start --head` or give its address with --ray-address") from None
        self._started_ray = os.path.dirname(local["_temp_dir"]) if local else None

    def start(self, encoder, detector) -> None:
        """Nothing to do with the driver's models: the actors load their own (after the driver's space checks,
        when the first task is decoded)."""

    def _launch(self) -> None:
        """Start the actor pool (a model that cannot load on them is the run's error, not each file's)."""
        ray = self._ray
        gpus = self.ray_opt.gpus_per_worker
        cluster_gpus = ray.cluster_resources().get("GPU", 0)
        if gpus is None:
            gpus = 1 if cluster_gpus else 0
        if gpus > cluster_gpus:
            raise InputError(f"--gpus-per-worker {gpus:g}, but the Ray cluster has {cluster_gpus:g} GPUs; "
                             "use --gpus-per-worker 0 to encode on CPUs")
        n = self.ray_opt.workers or (max(1, int(cluster_gpus // gpus)) if gpus else 1)
        cpus = int(ray.cluster_resources().get("CPU", 1))
        if n * gpus > cluster_gpus or n >= cpus:
            raise InputError(f"{n} workers of {gpus:g} GPUs and 1 CPU each do not fit the Ray cluster ({cpus} CPUs, "
                             f"{cluster_gpus:g} GPUs; decoding needs a CPU too); lower --workers")
        retries = self.ray_opt.max_retries
        actor_cls = ray.remote(EncoderActor).options(num_cpus=1, num_gpus=gpus, max_restarts=retries,
                                                     max_task_retries=retries)
        device = "cuda" if gpus else "cpu"
        models = self.ray_opt.models()
        self._actors = [actor_cls.remote(models, device, self.opt.batch_size) for _ in range(n)]
        self._actor_load = [0] * n
        self._slots = max(1, cpus - n)  # decode tasks that run at once (the actors hold one CPU each)
        try:
            with Timed(self.stages, "start"):
                ray.get(ray.wait([a.ready.remote() for a in self._actors], num_returns=1)[0])
        except ray.exceptions.RayActorError as e:
            raise ModelError(f"a Ray worker could not load the models: {first_line(e)}") from None
        self._decode_fn = ray.remote(decode_split).options(num_returns=2, max_retries=1, num_cpus=1)

    def close(self) -> None:
        ray = self._ray
        if ray is None:
            return
        for ref in self._calls:
            ray.cancel(ref, force=False)
        for actor in self._actors:
            ray.kill(actor)
        self._actors, self._calls = [], {}
        if self._started_ray is not None:
            ray.shutdown()
            shutil.rmtree(self._started_ray, ignore_errors=True)
            self._started_ray = None

    # ------------------------------------------------------------------ decoding on tasks

    def decoded(self, next_task: NextTask) -> Iterator[tuple[Any, DecodeResult, tuple[object, int] | None]]:
        """Decoding ahead on Ray tasks, sending batches to the actors while it waits. A task still running
        ``file_timeout`` seconds after it was submitted is cancelled and is that file's failure. At most two tasks
        per decoding CPU are unfinished at a time, so a task waits for at most one other to start; the clocks of
        those behind a cancelled one start again."""
        ray = None
        inflight: deque[_Decoding] = deque()
        try:
            while True:
                while True:
                    if inflight and self._running(inflight) >= 2 * self._slots:
                        break
                    if len(inflight) >= 8 * self._slots or (nxt := next_task()) is None:
                        break
                    if not self._actors:  # the first task: the driver's models are loaded and its space checked
                        self._launch()
                    ray = self._ray
                    meta, items = self._decode_fn.remote(nxt[1])
                    inflight.append(_Decoding(nxt[0], nxt[1], meta, items, time.time()))
                self._decoding = len(inflight)
                if not inflight:
                    break
                head = inflight[0]
                with Timed(self.stages, "wait"):
                    ready, _ = ray.wait([head.meta], timeout=0.05)
                self._send(final=False)
                self._harvest(need=int(len(self._calls) >= 2 * len(self._actors)))  # actors behind: wait for one
                if not ready:
                    limit = self.opt.file_timeout
                    if limit is not None and time.time() - head.submitted > limit:
                        inflight.popleft()
                        ray.cancel(head.meta, force=True)
                        for d in inflight:
                            d.submitted = time.time()
                        yield head.key, timed_out(head.task, limit), None
                    continue
                inflight.popleft()
                result, work = self._fetch(head)
                fault_point("decode")
                yield head.key, result, work
        finally:
            self._decoding = 0
            for d in inflight:
                ray.cancel(d.meta, force=True)

    def _running(self, inflight: deque[_Decoding]) -> int:
        refs = [d.meta for d in inflight]
        ready, _ = self._ray.wait(refs, num_returns=len(refs), timeout=0)
        return len(refs) - len(ready)

    def _fetch(self, d: _Decoding) -> tuple[DecodeResult, tuple[object, int] | None]:
        """The result and its items' reference (None when it holds none: a failed, skipped or duplicate file's
        pixels leave the object store as soon as the driver drops the reference)."""
        ray = self._ray
        try:
            result, n, start, end = ray.get(d.meta)
        except (ray.exceptions.WorkerCrashedError, ray.exceptions.OutOfMemoryError):
            return DecodeResult(path=d.task.path, kind=d.task.kind, error=("decode", CRASHED)), None
        except ray.exceptions.RayError as e:
            return DecodeResult(path=d.task.path, kind=d.task.kind,
                                error=("decode", f"decode task failed: {type(e).__name__}")), None
        now = time.time()
        self.stages["queue"] += max(0.0, start - d.submitted)
        self.stages["transfer"] += max(0.0, now - end)
        return result, ((d.items, n) if n else None)

    # ------------------------------------------------------------------ detection and encoding on actors

    def submit(self, key: Any, work: tuple[object, int]) -> None:
        ref, n = work
        self._batch.append((key, ref, n))

    def finished(self, final: bool, eager: bool) -> list[tuple[Any, list[NewPerson] | Failed]]:
        self._send(final or self._decoding == 0 or eager)  # first persons: nothing waits
        self._harvest(need=len(self._calls) if final else 0)
        done, self._done = self._done, []
        return done

    def _send(self, final: bool) -> None:
        """Hand the batch to the least busy actor when it holds ``batch_size`` persons (or frames), or at the end."""
        while self._batch and (final or sum(n for *_, n in self._batch) >= self.opt.batch_size):
            take, size = 0, 0
            while take < len(self._batch) and (size < self.opt.batch_size or take == 0):
                size += self._batch[take][2]
                take += 1
            batch, self._batch = self._batch[:take], self._batch[take:]
            a = min(range(len(self._actors)), key=self._actor_load.__getitem__)
            self._actor_load[a] += 1
            ref = self._actors[a].run.remote(*[ref for _, ref, _ in batch])
            self._calls[ref] = _Call([key for key, _, _ in batch], a, time.time())

    def _harvest(self, need: int) -> None:
        """Take the persons of the batches that are back, waiting until at least ``need`` are."""
        if not self._calls:
            return
        refs = list(self._calls)
        with Timed(self.stages, "wait"):
            ray = self._ray
            ready, _ = ray.wait(refs, num_returns=len(refs), timeout=0)
            if len(ready) < need:
                ready, _ = ray.wait(refs, num_returns=need, timeout=None)
                ready = ray.wait(refs, num_returns=len(refs), timeout=0)[0]
        for ref in ready:
            call = self._calls.pop(ref)
            self._actor_load[call.actor] -= 1
            self._take(ref, call)

    def _take(self, ref, call: _Call) -> None:
        ray = self._ray
        try:
            groups, t = ray.get(ref)
        except ray.exceptions.RayActorError:  # the actor died more often than it may be restarted
            died = Failed("encode", "the encoding worker died on every try with this file")
            self._done += [(key, died) for key in call.keys]
            return
        now = time.time()
        self.stages["queue"] += max(0.0, t["start"] - call.submitted)
        self.stages["transfer"] += max(0.0, now - t["end"])
        self.stages["detect"] += t["detect"]
        self.stages["encode"] += t["encode"]
        self._done += list(zip(call.keys, groups, strict=True))


def run_ray_ingest(store, encoder, detector, paths: list[str], options, on_progress, ray_options: RayOptions):
    """:func:`~a2v_search.ingest.driver.run_ingest` on a Ray cluster: the same driver with :class:`RayWorkers`."""
    return Ingestor(store, encoder, detector, options, on_progress, RayWorkers(ray_options)).run(
        [str(p) for p in paths])

