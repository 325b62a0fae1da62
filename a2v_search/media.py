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

import os
import stat
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps

from .errors import InputError, first_line
from .faults import fault_point, hang_point
from .hashing import file_sha256
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
class Found:
    """A file found by the walk, not opened yet. ``path`` is the real path (symlinks resolved)."""

    path: str
    size: int
    mtime: float
    given: str  # as the user named it (or as found under a folder they named)
    root: str  # the folder it was found under (for boxes-file lookups), or its own folder
    explicit: bool  # named by the user or with a media extension: report it when it is not media


@dataclass
class Candidate:
    """A media file found by discovery. ``path`` is the real path (symlinks resolved)."""

    path: str
    size: int
    mtime: float
    kind: str
    given: str
    root: str


@dataclass
class Discovery:
    candidates: list[Candidate] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)


def discover(paths: list[str | os.PathLike]) -> Discovery:
    """All of :func:`walk` at once, each file sniffed (small inputs; ingest streams :func:`walk` instead)."""
    out = Discovery()
    for x in walk(paths):
        if isinstance(x, tuple):
            out.failures.append(x)
        elif isinstance(c := sniff_found(x), tuple):
            out.failures.append(c)
        elif c is not None:
            out.candidates.append(c)
    return out


def walk(paths: list[str | os.PathLike]) -> Iterator[Found | Failure]:
    """Expand files, folders (recursive, hidden entries skipped) and list files (``.txt``/``.lst``: one path per
    line, ``#`` comments, relative to the list's folder) into files, lazily: a folder is listed when the walk
    reaches it, so memory holds one folder's names, not the tree's.

    Links: a path the user names (argument or list line) is followed wherever it points. Inside a folder, a
    symbolic link (to a file or a folder) is followed only when its target lies inside one of the folders being
    ingested; others are reported and skipped, so a link to ``/`` or to a home directory never widens the run.
    Each file, folder and list is visited once (loops end). Problems come back as ``(path, "discover", reason)``,
    each once. Memory holds a set entry per folder and per file reached by name or link, none per file found in a
    folder: a folder is listed once, so only a name or a link can reach its files again."""
    return _Walker(paths).run()


class _Walker:
    def __init__(self, paths: list[str | os.PathLike]):
        self.paths = [os.fspath(p) for p in paths]
        self.roots: list[str] = []  # real paths of the folders being ingested (named so far)
        for p in self.paths:
            if os.path.isdir(p):
                self._add_root(p)
        self.seen: set[int] = set()  # hashes of the real paths of files found by name or through a link
        self.lists: set[str] = set()  # real paths of list files already read
        self.visited: set[str] = set()  # real paths of folders already walked
        self.listed: set[str] = set()  # those of them whose entries could be listed (their files are found there)
        self.empty: set[str] = set()  # those of them that hold nothing
        self.reported: set[str] = set()  # paths already reported

    def _add_root(self, folder: str) -> None:
        real = os.path.realpath(folder)
        if real not in self.roots:
            self.roots.append(real)

    def _inside_roots(self, real: str) -> bool:
        return any(real == r or real.startswith(r.rstrip(os.sep) + os.sep) for r in self.roots)

    def _fail(self, path: str, reason: str) -> Iterator[Failure]:
        shown = display_path(path)
        if shown not in self.reported:
            self.reported.add(shown)
            yield (shown, "discover", reason)

    def run(self) -> Iterator[Found | Failure]:
        for p in self.paths:
            yield from self._named(p, list_depth=0)

    def _named(self, p: str, list_depth: int) -> Iterator[Found | Failure]:
        """A path the user named: followed wherever it points."""
        if display_path(p) != p:
            yield from self._fail(p, "file name is not valid UTF-8; rename the file")
            return
        if not os.path.lexists(p):
            yield from self._fail(p, "no such file or directory")
            return
        if not os.path.exists(p):
            yield from self._fail(p, f"broken symbolic link (points to {display_path(os.readlink(p))})")
            return
        real = os.path.realpath(p)
        if display_path(real) != real:
            yield from self._fail(p, f"links to a name that is not valid UTF-8 ({display_path(real)}); rename it")
            return
        if os.path.isdir(p):
            if real in self.visited:  # named twice, or inside a folder already walked
                if real in self.empty:
                    yield from self._fail(p, "folder holds no images or videos")
                return
            self._add_root(p)
            found = 0
            for x in self._folder(p, real):
                found += 1
                yield x
            if found == 0:
                yield from self._fail(p, "folder holds no images or videos")
            return
        if Path(p).suffix.lower() in LIST_EXTS:
            yield from self._list(p, real, list_depth)
            return
        yield from self._file(p, real, given=p, root=str(Path(p).parent), explicit=True)

    def _list(self, p: str, real: str, list_depth: int) -> Iterator[Found | Failure]:
        if real in self.lists:
            yield from self._fail(p, "list file names itself or a list that names it; read once")
            return
        if list_depth >= MAX_LIST_DEPTH:
            yield from self._fail(p, f"list files nested more than {MAX_LIST_DEPTH} deep; not read")
            return
        self.lists.add(real)
        try:
            lines = Path(p).read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as e:
            yield from self._fail(p, f"cannot read list file: {e}")
            return
        base = Path(p).parent
        for line in lines:
            line = line.strip()
            if line and not line.startswith("#"):
                yield from self._named(str(base / line), list_depth + 1)

    def _folder(self, top: str, top_real: str) -> Iterator[Found | Failure]:
        """Depth first, names sorted, as ``os.walk`` top-down; only followed links lead outside ``top``."""
        stack = [(top, top_real)]
        while stack:
            folder, real_folder = stack.pop()
            if real_folder in self.visited:  # a symlink loop or a folder reached twice
                continue
            self.visited.add(real_folder)
            try:
                with os.scandir(folder) as it:
                    entries = sorted(it, key=lambda e: e.name)
            except OSError as e:
                yield from self._fail(folder, f"cannot list folder: {e.strerror or e}")
                continue
            self.listed.add(real_folder)
            if not any(not e.name.startswith(".") for e in entries):
                self.empty.add(real_folder)
            subfolders = []
            for e in entries:
                if e.name.startswith("."):
                    continue
                full = os.path.join(folder, e.name)
                if not _utf8(e.name):
                    yield from self._fail(full, "name is not valid UTF-8; rename it")
                    continue
                try:
                    is_link = e.is_symlink()
                    is_dir = e.is_dir(follow_symlinks=False)
                except OSError:
                    is_link = is_dir = False
                if is_link:
                    target = os.path.realpath(full)
                    if not os.path.exists(full):
                        yield from self._fail(full, "broken symbolic link")
                    elif display_path(target) != target:
                        yield from self._fail(full, f"links to a name that is not valid UTF-8 "
                                                    f"({display_path(target)}); rename it")
                    elif not self._inside_roots(target):
                        yield from self._fail(full, f"symbolic link to {target}, outside the folders being "
                                                    "ingested: not followed (name that place to ingest it)")
                    elif os.path.isdir(target):
                        subfolders.append((full, target))
                    else:
                        yield from self._file(full, target, given=full, root=top,
                                              explicit=_media_ext(e.name))
                elif is_dir:
                    subfolders.append((full, os.path.join(real_folder, e.name)))
                else:
                    yield from self._file(full, os.path.join(real_folder, e.name), given=full, root=top,
                                          explicit=_media_ext(e.name), entry=e)
            stack.extend(reversed(subfolders))

    def _file(self, p: str, real: str, given: str, root: str, explicit: bool,
              entry: os.DirEntry | None = None) -> Iterator[Found | Failure]:
        key = hash(real)
        if key in self.seen:
            return
        try:
            st = entry.stat() if entry is not None else os.stat(real)
        except OSError as e:
            if explicit:
                yield from self._fail(p, f"cannot read: {e.strerror or e}")
            return
        if not stat.S_ISREG(st.st_mode):  # FIFOs, sockets, devices: never open them (a FIFO would block)
            if explicit:
                yield from self._fail(p, "not a regular file")
            return
        if entry is None:  # by name or through a link: remembered, unless a folder listing finds it
            if self._in_listed_folder(real):
                return
            self.seen.add(key)
        yield Found(path=real, size=st.st_size, mtime=st.st_mtime, given=given, root=root, explicit=explicit)

    def _in_listed_folder(self, real: str) -> bool:
        """Whether the walk of a folder found (or, while that folder is being walked, will find) the regular file
        at real path ``real``: its folder was listed and its name is one a listing does not skip."""
        folder, name = os.path.split(real)
        return folder in self.listed and not name.startswith(".") and _utf8(name)


MAX_LIST_DEPTH = 3


def _media_ext(name: str) -> bool:
    ext = os.path.splitext(name)[1].lower()
    return ext in IMAGE_EXTS or ext in VIDEO_EXTS


def _utf8(name: str) -> bool:
    return name.isascii() or display_path(name) == name


def sniff_found(f: Found) -> Candidate | Failure | None:
    """Open a found file and type it by its first bytes: a Candidate, a failure (for ``explicit`` files that are
    not media), or None (other files that are not media are skipped quietly)."""
    try:
        with open(f.path, "rb") as fh:
            head = fh.read(64)
    except OSError as e:
        return (display_path(f.given), "discover", f"cannot read: {e.strerror or e}") if f.explicit else None
    kind = sniff(head)
    if kind is None:
        if not f.explicit:
            return None
        reason = "empty file (0 bytes)" if f.size == 0 else \
            "not an image or video (its content matches no supported format)"
        return (display_path(f.given), "discover", reason)
    return Candidate(path=f.path, size=f.size, mtime=f.mtime, kind=kind, given=f.given, root=f.root)


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
    more: bool = False  # video: the stream goes on after this segment
    seen_until: float | None = None  # video: end time of the last frame decoded


def decode(task: DecodeTask) -> DecodeResult:
    """Decode one file (or video segment) into person crops, or frames for a detector. Never raises: problems
    come back as ``error``."""
    t0 = time.perf_counter()
    fault_point("decode_worker")  # reliability tests kill decode worker processes here (A2V_FAULT in their env)
    res = DecodeResult(path=task.path, kind=task.kind)
    try:
        hang_point(task.path)
        if task.want_hash:
            res.content_hash = file_sha256(task.path)
        if task.kind == "video":
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
