"""Pictures of stored persons and media, small and fast: a person's crop with context and its box drawn, a media
image or video frame scaled down, as JPEG bytes. Used by the server's image endpoints and by contact sheets.

Paths come from SQLite rows only. JPEGs are decoded at a reduced scale when the output is small (``Image.draft``:
1/2, 1/4 or 1/8 of the pixels), so a thumbnail of a 24-megapixel photo does not decode all of it.
"""

from __future__ import annotations

import io
import math
import warnings

from PIL import Image, ImageDraw, ImageOps

from .errors import InputError
from .media import DEFAULT_MAX_PIXELS, IMAGE_FORMATS, DecodeError, to_rgb

BOX_COLOR = (230, 25, 75)
BACKGROUND = (38, 41, 48)
CONTEXT = 1.2  # crop side = CONTEXT x the longer side of the box


def open_scaled(path: str, need_scale: float = 1.0, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[Image.Image, float]:
    """An image file as upright RGB, decoded at no less than ``need_scale`` of its size where the format allows
    (JPEG). Returns (image, scale): pixel coordinates of the file times ``scale`` are coordinates in the image."""
    try:  # the ingest allow-list of formats; Pillow's own bomb guard stays on (its warning is ours below)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(path, formats=IMAGE_FORMATS)
    except Image.DecompressionBombError as e:
        raise DecodeError("decode", f"{e} (a decompression bomb?)") from None
    except Image.UnidentifiedImageError:
        raise DecodeError("decode", "not a decodable image (unknown or corrupt format)") from None
    w, h = img.size
    if w * h > max_pixels:
        raise DecodeError("decode", f"image is {w}x{h} = {w * h:,} pixels, over the limit of {max_pixels:,}")
    if w == 0 or h == 0:
        raise DecodeError("decode", "image has no pixels")
    if need_scale < 1.0 and img.format == "JPEG":
        img.draft("RGB", (max(1, math.ceil(w * need_scale)), max(1, math.ceil(h * need_scale))))
    try:
        img.seek(0)
        img.load()
    except OSError as e:
        raise DecodeError("decode", f"corrupt or truncated image ({e})") from None
    scale = img.size[0] / w
    img = ImageOps.exif_transpose(img) or img
    return to_rgb(img), scale


def video_frame(path: str, t_sec: float | None) -> Image.Image:
    """The first decoded frame of a video at or after ``t_sec`` seconds (the start when None), as RGB."""
    import av

    try:
        with av.open(path) as container:
            stream = container.streams.video[0]
            t = max(float(t_sec or 0.0), 0.0)
            if t > 0 and stream.time_base:
                container.seek(int(t / stream.time_base), stream=stream, backward=True, any_frame=False)
            for frame in container.decode(stream):
                if frame.time is None or frame.time >= t - 1e-3:
                    return frame.to_image().convert("RGB")
    except (av.error.FFmpegError, IndexError, OSError) as e:
        raise DecodeError("decode", f"cannot read a frame of this video ({e})") from None
    raise InputError(f"no frame at {t_sec} s in this video")


def media_frame(path: str, kind: str, t_sec: float | None = None, need_scale: float = 1.0) -> tuple[Image.Image, float]:
    """(the image, or the video frame at ``t_sec``; its scale relative to the stored pixel coordinates)."""
    if kind == "video":
        return video_frame(path, t_sec), 1.0
    return open_scaled(path, need_scale)


def crop_region(box, context: float = CONTEXT) -> tuple[float, float, float, float]:
    """The square around a box (x1, y1, x2, y2) with context: side = context x the box's longer side."""
    x1, y1, x2, y2 = box
    side = max(x2 - x1, y2 - y1, 1.0) * context
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    return cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2


def person_crop(frame: Image.Image, box, size: int, scale: float = 1.0, context: float = CONTEXT) -> Image.Image:
    """A ``size`` x ``size`` crop of a person with context (outside the image: dark grey) and its box drawn.
    ``box`` is in stored pixel coordinates, ``scale`` maps them to ``frame``."""
    box = [v * scale for v in box]
    region = crop_region(box, context)
    x0, y0, x1, y1 = (int(round(v)) for v in region)
    canvas = Image.new("RGB", (max(x1 - x0, 1), max(y1 - y0, 1)), BACKGROUND)  # context outside the image: grey
    canvas.paste(frame, (-x0, -y0))
    crop = canvas.resize((size, size), Image.BILINEAR)
    k = size / max(region[2] - region[0], 1e-6)
    x1, y1, x2, y2 = ((box[0] - region[0]) * k, (box[1] - region[1]) * k, (box[2] - region[0]) * k,
                      (box[3] - region[1]) * k)
    ImageDraw.Draw(crop).rectangle([x1, y1, x2, y2], outline=BOX_COLOR, width=max(2, size // 64))
    return crop


def person_thumbnail(path: str, kind: str, box, t_sec: float | None, size: int = 256) -> Image.Image:
    """The crop of a stored person (see :func:`person_crop`), decoding only as many pixels as it needs."""
    side = crop_region(box)[2] - crop_region(box)[0]
    frame, scale = media_frame(path, kind, t_sec, need_scale=min(1.0, size / max(side, 1.0)))
    return person_crop(frame, box, size, scale)


def scaled_image(path: str, kind: str, width: int | None, height: int | None, max_side: int,
                 t_sec: float | None = None) -> Image.Image:
    """A media image (or the video frame at ``t_sec``) whose longer side is at most ``max_side``."""
    need = min(1.0, max_side / max(width or 0, height or 0, 1)) if width and height else 1.0
    img, _ = media_frame(path, kind, t_sec, need_scale=need)
    img.thumbnail((max_side, max_side), Image.BILINEAR)
    return img


def jpeg_bytes(img: Image.Image, quality: int = 85) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality, optimize=False)
    return buf.getvalue()
