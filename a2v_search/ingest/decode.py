"""Decoding of images and video frames into person crops (or frames for a detector), in worker processes: this
module never imports torch.

Images: EXIF orientation applied; any mode to RGB (``media.to_rgb``); a pixel-count guard against decompression
bombs. Animated GIFs (and other multi-frame images) use their first frame. Videos: frames sampled at ``video_fps``
through PyAV, decoded in segments of ``segment_s`` seconds so a long video never sits in memory; each frame keeps
its index and time. With ``DecodeTask.gpu_jpeg`` (ingest on CUDA), a JPEG that ``jpeg_info``'s rule lets the GPU
decode is not decoded here: its bytes travel to the main process (``Item.jpeg``), where ``gpu_decode`` decodes
and cuts it.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field, fields
from operator import attrgetter

import numpy as np
from PIL import Image

from ..errors import first_line
from ..faults import fault_point, hang_point
from ..hashing import file_sha256
from ..media import DEFAULT_MAX_PIXELS, DecodeError, open_image
from ..preprocess import Preprocess, check_box
from .discover import not_media, read_head, sniff
from .jpeg_info import gpu_fallback_reason, read_jpeg_info

GPU_JPEG_MAX_BYTES = 64 << 20  # larger JPEG files are decoded by the CPU path (streamed, not sent whole)
DETECT_MAX_SIDE = 1333  # frames handed to a detector model are at most this large (boxes are scaled back)


def pickled_by_fields(cls: type) -> type:
    """Pickle a dataclass's instances as the arguments of its constructor (the values of its fields, in order): an
    unpickle is then one ``__init__`` call, half the cost of the default (an empty object, then a dict of its fields
    as its ``__dict__``). Tasks and results cross the decode workers' pipes ~16 a call (decode_pool.py)."""
    names = [f.name for f in fields(cls)]
    values = attrgetter(*names) if len(names) > 1 else lambda obj: (getattr(obj, names[0]),)

    def __reduce__(self):
        return cls, values(self)

    cls.__reduce__ = __reduce__
    return cls


@pickled_by_fields
@dataclass
class DecodeTask:
    """What a worker does with one file (or one segment of a video)."""

    path: str
    kind: str
    preprocess: Preprocess
    # None: whole image; [] : no persons; else (box, score, objects) in every frame, or {frame_index: [...]}
    boxes: list[tuple[list[float], float, tuple]] | dict[int, list[tuple[list[float], float, tuple]]] | None = None
    for_detector: bool = False  # return (downscaled) frames for a detector model instead of crops
    max_pixels: int = DEFAULT_MAX_PIXELS
    video_fps: float = 1.0
    segment: tuple[float, float] | None = None  # video: [start, end) seconds
    want_hash: bool = True
    gpu_jpeg: bool = False  # pass JPEGs the GPU may decode (jpeg_info's rule) through undecoded, as Item.jpeg
    # ``kind`` is the file name's guess (discover.kind_by_name): its first bytes decide, and the result's kind says
    # what they are (a video named .jpg is decoded as one, from ``segment``, which such a task always has)
    sniff: bool = False

    def pixel_bytes(self) -> int | None:
        """The bytes of pixels its result brings back, when known before decoding: an S x S x 3 crop a box (one for
        the whole image), nothing for JPEG bytes passed through; None for frames handed to a detector."""
        if self.for_detector or isinstance(self.boxes, dict):
            return None
        return 0 if self.gpu_jpeg else (1 if self.boxes is None else len(self.boxes)) * 3 * self.preprocess.size ** 2


@pickled_by_fields
@dataclass
class Item:
    """One person (or one frame awaiting detection)."""

    box: list[float]
    score: float = 1.0
    pixels: np.ndarray | None = None  # (S, S, 3) uint8 crop
    jpeg: bytes | None = None  # instead of pixels: the undecoded JPEG file, to be decoded and cut on the GPU
    whole: bool = False  # whole-image mode: the image is resized, not cut around the box
    frame: np.ndarray | None = None  # (h, w, 3) uint8 frame for the detector
    scale: float = 1.0  # frame pixels per original pixel
    frame_index: int | None = None
    t_sec: float | None = None
    objects: tuple = ()  # the objects it acts on: (class, p, box in media pixels), best first


@pickled_by_fields
@dataclass
class DecodeResult:
    path: str
    kind: str
    content_hash: str | None = None
    width: int | None = None
    height: int | None = None
    items: list[Item] = field(default_factory=list)
    frames: int = 0
    duration: float | None = None
    error: tuple[str, str] | None = None  # (stage, reason)
    seconds: float = 0.0
    more: bool = False  # video: the stream goes on after this segment
    seen_until: float | None = None  # video: end time of the last frame decoded
    in_ring: list = field(default_factory=list)  # arrays sent in a shared-memory slot (ring.pack)


def decode(task: DecodeTask) -> DecodeResult:
    """Decode one file (or video segment) into person crops, or frames for a detector. Never raises: problems
    come back as ``error``."""
    t0 = time.perf_counter()
    fault_point("decode_worker")  # reliability tests kill decode worker processes here (A2V_FAULT in their env)
    res = DecodeResult(path=task.path, kind=task.kind)
    try:
        hang_point(task.path)
        if task.sniff:
            res.kind = _sniffed(task.path)
        if task.want_hash:
            res.content_hash = file_sha256(task.path)
        if res.kind == "video":
            _decode_video(task, res)
        else:
            _decode_image(task, res)
    except DecodeError as e:
        res.error = (e.stage, str(e))
    except MemoryError:
        res.error = ("decode", "out of memory while decoding")
    except Exception as e:  # any library error on a hostile file must not stop the run
        res.error = ("decode", f"{type(e).__name__}: {first_line(e, 'unreadable')}")
    if res.error:
        res.items = []
    res.seconds = time.perf_counter() - t0
    return res



def _sniffed(path: str) -> str:
    """The kind of a file by its first bytes; DecodeError (stage ``discover``) when it is no media."""
    try:
        head = read_head(path)
    except OSError as e:
        raise DecodeError("discover", f"cannot read: {e.strerror or e}") from None
    kind = sniff(head)
    if kind is None:
        raise DecodeError("discover", not_media(len(head)))
    return kind


def _frame_items(task: DecodeTask, img: Image.Image, frame_index: int | None, t_sec: float | None,
                 size: tuple[int, int] | None = None) -> list[Item]:
    """The items of one image or frame. ``size``: the full size when ``img`` was decoded smaller (boxes are in full
    size coordinates)."""
    w, h = size or img.size
    s = img.width / w  # image pixels per full-size pixel
    if task.for_detector:
        scale = min(1.0, DETECT_MAX_SIDE / max(w, h))
        small = img if scale == s else img.resize((max(1, round(w * scale)), max(1, round(h * scale))),
                                                  Image.BILINEAR)
        return [Item(box=[0.0, 0.0, float(w), float(h)], frame=np.asarray(small), scale=scale,
                     frame_index=frame_index, t_sec=t_sec)]
    if task.boxes is None:  # whole-image mode
        return [Item(box=[0.0, 0.0, float(w), float(h)], pixels=task.preprocess.whole(img), frame_index=frame_index,
                     t_sec=t_sec)]
    boxes = task.boxes.get(frame_index or 0, []) if isinstance(task.boxes, dict) else task.boxes
    items = []
    for box, score, objects in boxes:
        clipped = list(check_box(box, w, h))
        items.append(Item(box=clipped, score=score, pixels=task.preprocess.crop(img, [v * s for v in clipped]),
                          frame_index=frame_index, t_sec=t_sec, objects=objects))
    return items


def _decode_image(task: DecodeTask, res: DecodeResult) -> None:
    if task.gpu_jpeg and _pass_jpeg(task, res):
        return
    img, size = open_image(task.path, task.max_pixels)  # images over REDUCE_ABOVE_PIXELS come smaller
    res.width, res.height = size
    res.frames = 1
    res.items = _frame_items(task, img, None, None, size)


def _pass_jpeg(task: DecodeTask, res: DecodeResult) -> bool:
    """The GPU path: a JPEG that jpeg_info's rule lets the GPU decode becomes items carrying its bytes (boxes checked
    against its size as on the CPU path). False, with nothing done, for any other file: it is decoded here."""
    if task.for_detector or os.path.getsize(task.path) > GPU_JPEG_MAX_BYTES:
        return False
    with open(task.path, "rb") as f:
        data = f.read()
    info = read_jpeg_info(data)
    if gpu_fallback_reason(info, task.max_pixels) is not None:
        return False
    w, h = info.width, info.height
    res.width, res.height, res.frames = w, h, 1
    if task.boxes is None:  # whole-image mode
        res.items = [Item(box=[0.0, 0.0, float(w), float(h)], jpeg=data, whole=True)]
    else:
        res.items = [Item(box=list(check_box(box, w, h)), score=score, jpeg=data, objects=objects)
                     for box, score, objects in task.boxes]
    return True


def _decode_video(task: DecodeTask, res: DecodeResult) -> None:
    """Decode ``task.segment`` (or all) of a video. The container's claimed duration is recorded, never trusted:
    ``res.more`` says whether the stream really goes on past the segment (then the next one is asked for)."""
    import av

    try:
        container = av.open(task.path)
    except av.error.FFmpegError as e:
        raise DecodeError("decode", f"not a decodable video ({e})") from None
    with container:
        if not container.streams.video:
            raise DecodeError("decode", "video has no video stream")
        stream = container.streams.video[0]
        _check_video_size(stream.codec_context.width, stream.codec_context.height, task.max_pixels)
        stream.thread_type = "AUTO"
        rate = float(stream.average_rate) if stream.average_rate else None
        res.duration = probe_duration(container, stream)
        start, end = task.segment or (0.0, float("inf"))
        if start > 0 and stream.time_base is not None:
            container.seek(int(start / stream.time_base), stream=stream, backward=True, any_frame=False)
        step = 1.0 / task.video_fps
        next_t = start
        decoded = 0
        for frame in container.decode(stream):
            t = float(frame.time) if frame.time is not None else decoded / (rate or 25.0)
            decoded += 1
            if t >= end - 1e-6:
                res.more = True
                break
            res.seen_until = t + 1.0 / (rate or 25.0)
            if t < start - 1e-6 or t < next_t - 1e-6:
                continue
            _check_video_size(frame.width, frame.height, task.max_pixels)
            img = frame.to_image()
            if res.width is None:
                res.width, res.height = img.size
            index = int(round(t * rate)) if rate else decoded - 1
            res.items.extend(_frame_items(task, img, index, round(t, 3)))
            res.frames += 1
            next_t = (np.floor(t / step + 1e-6) + 1) * step
    if res.frames == 0 and start == 0:
        raise DecodeError("decode", "video has no decodable frames")


def _check_video_size(w: int, h: int, max_pixels: int) -> None:
    if w and h and w * h > max_pixels:
        raise DecodeError("decode", f"video frames are {w}x{h} = {w * h:,} pixels, over the limit of {max_pixels:,}; "
                                    "raise --max-pixels if it is genuine")


def probe_duration(container, stream) -> float | None:
    """Duration in seconds of a video stream, from the stream or else the container."""
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    return float(container.duration) / 1e6 if container.duration else None
