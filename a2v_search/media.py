"""Media files: discovery (files, folders, list files; sniffed by content), hashing, and decoding of images and
video frames into person crops. Decoding runs in worker processes, so this module never imports torch.

Images: EXIF orientation applied; any mode to RGB (alpha composited on white, 16-bit and float scaled to 8 bits,
CMYK and palettes converted); a pixel-count guard against decompression bombs. Animated GIFs (and other
multi-frame images) use their first frame. Videos: frames sampled at ``video_fps`` through PyAV, decoded in
segments of ``segment_s`` seconds so a long video never sits in memory; each frame keeps its index and time.
With ``DecodeTask.gpu_jpeg`` (ingest on CUDA), a JPEG that ``jpeg_info``'s rule lets the GPU decode is not decoded
here: its bytes travel to the main process (``Item.jpeg``), where ``gpu_decode`` decodes and cuts it.
"""

from __future__ import annotations

import hashlib
import os
import stat
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps

from .errors import InputError
from .faults import fault_point
from .jpeg_info import gpu_fallback_reason, read_jpeg_info
from .preprocess import Preprocess, check_box

IMAGE_EXTS = {".jpg", ".jpeg", ".jpe", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"}
VIDEO_EXTS = {".mp4", ".m4v", ".mov", ".mkv", ".avi", ".webm"}
LIST_EXTS = {".txt", ".lst", ".list"}
DEFAULT_MAX_PIXELS = 100_000_000
GPU_JPEG_MAX_BYTES = 64 << 20  # larger JPEG files are decoded by the CPU path (streamed, not sent whole)
#: the Pillow decoders images go through, at ingest and for query images (what sniff() recognises)
IMAGE_FORMATS = ("JPEG", "PNG", "GIF", "BMP", "TIFF", "WEBP")
DETECT_MAX_SIDE = 1333  # frames handed to a detector model are at most this large (boxes are scaled back)

Failure = tuple[str, str, str]  # (path, stage, reason)


def display_path(path: str | os.PathLike) -> str:
    """A path as text that SQLite and terminals accept (undecodable bytes escaped)."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def sniff(head: bytes) -> str | None:
    """``"image"``, ``"video"`` or None from a file's first bytes."""
    if head.startswith((b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"GIF87a", b"GIF89a", b"BM", b"II*\x00", b"MM\x00*")):
        return "image"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image"
    if head[:4] == b"RIFF" and head[8:12] == b"AVI ":
        return "video"
    if head[4:8] in (b"ftyp", b"moov", b"mdat", b"wide", b"free") or head.startswith(b"\x1aE\xdf\xa3"):
        return "video"
    return None


# ------------------------------------------------------------------ discovery


@dataclass
class Candidate:
    """A media file found by discovery. ``path`` is the real path (symlinks resolved)."""

    path: str
    size: int
    mtime: float
    kind: str
    given: str  # as the user named it (or as found under a folder they named)
    root: str  # the folder it was found under (for boxes-file lookups), or its own folder


@dataclass
class Discovery:
    candidates: list[Candidate] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)


def discover(paths: list[str | os.PathLike]) -> Discovery:
    """Expand files, folders (recursive, hidden folders skipped, symlink loops avoided) and list files
    (``.txt``/``.lst``: one path per line, ``#`` comments, relative to the list's folder) into media files."""
    out = Discovery()
    seen: set[str] = set()
    for p in paths:
        _discover_one(str(p), out, seen, list_depth=0)
    return out


def _discover_one(p: str, out: Discovery, seen: set[str], list_depth: int) -> None:
    shown = display_path(p)
    if shown != p:
        out.failures.append((shown, "discover", "file name is not valid UTF-8; rename the file"))
        return
    if not os.path.lexists(p):
        out.failures.append((shown, "discover", "no such file or directory"))
        return
    if not os.path.exists(p):
        out.failures.append((shown, "discover", f"broken symbolic link (points to {display_path(os.readlink(p))})"))
        return
    if os.path.isdir(p):
        before = len(out.candidates)
        _walk(p, out, seen)
        if len(out.candidates) == before and not any(f[0].startswith(shown.rstrip("/") + "/") for f in out.failures):
            out.failures.append((shown, "discover", "folder holds no images or videos"))
        return
    if Path(p).suffix.lower() in LIST_EXTS and list_depth < 3:
        try:
            lines = Path(p).read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as e:
            out.failures.append((shown, "discover", f"cannot read list file: {e}"))
            return
        base = Path(p).parent
        for line in lines:
            line = line.strip()
            if line and not line.startswith("#"):
                _discover_one(str(base / line), out, seen, list_depth + 1)
        return
    _add_file(p, out, seen, given=p, root=str(Path(p).parent), explicit=True)


def _walk(folder: str, out: Discovery, seen: set[str]) -> None:
    visited: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in visited:  # a symlink loop or a folder reached twice
            dirnames[:] = []
            continue
        visited.add(real)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            full = os.path.join(dirpath, name)
            ext = Path(name).suffix.lower()
            if name.startswith("."):
                continue
            if display_path(full) != full:
                out.failures.append((display_path(full), "discover", "file name is not valid UTF-8; rename the file"))
                continue
            if ext in IMAGE_EXTS or ext in VIDEO_EXTS:
                _add_file(full, out, seen, given=full, root=folder, explicit=True)
            elif os.path.isfile(full) and not os.path.islink(full):  # unknown extension: keep it if content says so
                _add_file(full, out, seen, given=full, root=folder, explicit=False)
            elif os.path.islink(full) and not os.path.exists(full):
                out.failures.append((display_path(full), "discover", "broken symbolic link"))


def _add_file(p: str, out: Discovery, seen: set[str], given: str, root: str, explicit: bool) -> None:
    """Stat and sniff one file; ``explicit`` files (named by the user or with a media extension) that are not
    media become failures, others are skipped quietly."""
    real = os.path.realpath(p)
    if real in seen:
        return
    try:
        st = os.stat(real)
        if not stat.S_ISREG(st.st_mode):  # FIFOs, sockets, devices: never open them (a FIFO would block)
            if explicit:
                out.failures.append((display_path(p), "discover", "not a regular file"))
            return
        with open(real, "rb") as f:
            head = f.read(64)
    except OSError as e:
        if explicit:
            out.failures.append((display_path(p), "discover", f"cannot read: {e.strerror or e}"))
        return
    kind = sniff(head)
    if kind is None:
        if explicit:
            reason = "empty file (0 bytes)" if st.st_size == 0 else \
                "not an image or video (its content matches no supported format)"
            out.failures.append((display_path(p), "discover", reason))
        return
    seen.add(real)
    out.candidates.append(Candidate(path=real, size=st.st_size, mtime=st.st_mtime, kind=kind, given=given, root=root))


def file_hash(path: str) -> str:
    """sha256 of a file's content."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


# ------------------------------------------------------------------ decoding (worker side)


@dataclass
class DecodeTask:
    """What a worker does with one file (or one segment of a video)."""

    path: str
    kind: str
    preprocess: Preprocess
    # None: whole image; [] : no persons; else (box, score) in every frame, or {frame_index: [(box, score)]}
    boxes: list[tuple[list[float], float]] | dict[int, list[tuple[list[float], float]]] | None = None
    for_detector: bool = False  # return (downscaled) frames for a detector model instead of crops
    max_pixels: int = DEFAULT_MAX_PIXELS
    video_fps: float = 1.0
    segment: tuple[float, float] | None = None  # video: [start, end) seconds
    want_hash: bool = True
    gpu_jpeg: bool = False  # pass JPEGs the GPU may decode (jpeg_info's rule) through undecoded, as Item.jpeg


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


def decode(task: DecodeTask) -> DecodeResult:
    """Decode one file (or video segment) into person crops, or frames for a detector. Never raises: problems
    come back as ``error``."""
    t0 = time.perf_counter()
    fault_point("decode_worker")  # reliability tests kill decode worker processes here (A2V_FAULT in their env)
    res = DecodeResult(path=task.path, kind=task.kind)
    try:
        if task.want_hash:
            res.content_hash = file_hash(task.path)
        if task.kind == "video":
            _decode_video(task, res)
        else:
            _decode_image(task, res)
    except DecodeError as e:
        res.error = (e.stage, str(e))
    except MemoryError:
        res.error = ("decode", "out of memory while decoding")
    except Exception as e:  # any library error on a hostile file must not stop the run
        res.error = ("decode", f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else 'unreadable'}")
    if res.error:
        res.items = []
    res.seconds = time.perf_counter() - t0
    return res


class DecodeError(InputError):
    """A file that cannot be decoded; ``stage`` says where (for failure rows)."""

    def __init__(self, stage: str, reason: str):
        super().__init__(reason)
        self.stage = stage


def load_image(path: str | BinaryIO, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Open an image (a path or a binary file object) as upright RGB (first frame of animations), refusing more
    than ``max_pixels`` and any format but IMAGE_FORMATS (so no PostScript ever reaches Ghostscript). Pillow's own
    bomb guard stays on."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our guard below says it more clearly
        try:
            img = Image.open(path, formats=IMAGE_FORMATS)
        except Image.DecompressionBombError as e:
            raise DecodeError("decode", f"{e} (a decompression bomb?)") from None
        except Image.UnidentifiedImageError:
            raise DecodeError("decode", "not a decodable image (unknown or corrupt format; supported: "
                                        f"{', '.join(IMAGE_FORMATS)})") from None
        w, h = img.size
        if w * h > max_pixels:
            raise DecodeError("decode", f"image is {w}x{h} = {w * h:,} pixels, over the limit of {max_pixels:,} "
                                         "(a decompression bomb?); raise --max-pixels if it is genuine")
        if w == 0 or h == 0:
            raise DecodeError("decode", "image has no pixels")
        try:
            img.seek(0)
            img.load()
        except Image.DecompressionBombError as e:
            raise DecodeError("decode", f"{e} (a decompression bomb?)") from None
        except OSError as e:
            raise DecodeError("decode", f"corrupt or truncated image ({e})") from None
    img = ImageOps.exif_transpose(img) or img
    return to_rgb(img)


def to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode to 8-bit RGB: alpha over white, 16-bit/32-bit/float scaled to 0..255."""
    mode = img.mode
    if mode == "RGB":
        return img
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        a = np.asarray(img, dtype=np.float64)
        hi = 65535.0 if mode.startswith("I;16") else max(float(a.max()), 1.0)
        a = np.clip(a / hi * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(a, "L").convert("RGB")
    if mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
        mode = "RGBA"
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        bg = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(bg, rgba).convert("RGB")
    return img.convert("RGB")


def _frame_items(task: DecodeTask, img: Image.Image, frame_index: int | None, t_sec: float | None) -> list[Item]:
    w, h = img.size
    if task.for_detector:
        scale = min(1.0, DETECT_MAX_SIDE / max(w, h))
        small = img if scale == 1.0 else img.resize((max(1, round(w * scale)), max(1, round(h * scale))),
                                                    Image.BILINEAR)
        return [Item(box=[0.0, 0.0, float(w), float(h)], frame=np.asarray(small), scale=scale,
                     frame_index=frame_index, t_sec=t_sec)]
    if task.boxes is None:  # whole-image mode
        return [Item(box=[0.0, 0.0, float(w), float(h)], pixels=task.preprocess.whole(img), frame_index=frame_index,
                     t_sec=t_sec)]
    boxes = task.boxes.get(frame_index or 0, []) if isinstance(task.boxes, dict) else task.boxes
    items = []
    for box, score in boxes:
        clipped = list(check_box(box, w, h))
        items.append(Item(box=clipped, score=score, pixels=task.preprocess.crop(img, clipped),
                          frame_index=frame_index, t_sec=t_sec))
    return items


def _decode_image(task: DecodeTask, res: DecodeResult) -> None:
    if task.gpu_jpeg and _pass_jpeg(task, res):
        return
    img = load_image(task.path, task.max_pixels)
    res.width, res.height = img.size
    res.frames = 1
    res.items = _frame_items(task, img, None, None)


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
        res.items = [Item(box=list(check_box(box, w, h)), score=score, jpeg=data) for box, score in task.boxes]
    return True


def probe_video(path: str) -> float | None:
    """Duration of a video in seconds (None when the container does not say)."""
    import av

    with av.open(path) as container:
        return probe_duration(container, container.streams.video[0]) if container.streams.video else None


def _decode_video(task: DecodeTask, res: DecodeResult) -> None:
    import av

    try:
        container = av.open(task.path)
    except av.error.FFmpegError as e:
        raise DecodeError("decode", f"not a decodable video ({e})") from None
    with container:
        if not container.streams.video:
            raise DecodeError("decode", "video has no video stream")
        stream = container.streams.video[0]
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
            if t < start - 1e-6 or t < next_t - 1e-6:
                continue
            if t >= end - 1e-6:
                break
            img = frame.to_image()
            if res.width is None:
                res.width, res.height = img.size
            index = int(round(t * rate)) if rate else decoded - 1
            res.items.extend(_frame_items(task, img, index, round(t, 3)))
            res.frames += 1
            next_t = (np.floor(t / step + 1e-6) + 1) * step
    if res.frames == 0 and start == 0:
        raise DecodeError("decode", "video has no decodable frames")


def probe_duration(container, stream) -> float | None:
    """Duration in seconds of a video stream, from the stream or else the container."""
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    return float(container.duration) / 1e6 if container.duration else None
