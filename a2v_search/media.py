"""Media shared by ingest, the query layer, the server and pictures: paths as text, and images opened safely
(format allow-list, pixel-count guard, EXIF orientation, any mode to 8-bit RGB). Discovery and the decoding of
files into person crops are the ingest wing's (``a2v_search/ingest/discover.py``, ``decode.py``).
"""

from __future__ import annotations

import math
import os
import warnings
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps

from .errors import InputError

DEFAULT_MAX_PIXELS = 100_000_000
#: the Pillow decoders images go through, at ingest and for query images (what sniff() recognises)
IMAGE_FORMATS = ("JPEG", "PNG", "GIF", "BMP", "TIFF", "WEBP")


def display_path(path: str | os.PathLike) -> str:
    """A path as text that SQLite and terminals accept (undecodable bytes escaped)."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")



class DecodeError(InputError):
    """A file that cannot be decoded; ``stage`` says where (for failure rows)."""

    def __init__(self, stage: str, reason: str):
        super().__init__(reason)
        self.stage = stage


#: images of more pixels than this (over 160 MB as RGB) are reduced, by a whole factor, to at most REDUCED_PIXELS
#: before anything else is done with them (:func:`open_image`)
REDUCE_ABOVE_PIXELS = 40_000_000
REDUCED_PIXELS = 16_000_000
_BAND_PIXELS = 4_000_000  # reduced a band of rows at a time: no copy of the whole image (RGBA premultiplies)
#: the most memory one image may take decoded, in Pillow's own mode (before any conversion)
MAX_DECODED_BYTES = 400 << 20
_ORIENT = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
           5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
           8: Image.Transpose.ROTATE_90}


def decoded_bytes(mode: str, pixels: int) -> int:
    """Bytes Pillow holds for an image of ``pixels`` pixels in ``mode``: 1 a pixel for 1-bit, grey and palette
    images, 2 for 16-bit grey, 4 for every other mode (RGB included)."""
    if mode in ("1", "L", "P"):
        return pixels
    return pixels * (2 if mode.startswith("I;16") else 4)


def load_image(path: str | BinaryIO, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Open an image (a path or a binary file object) as upright RGB at full size (first frame of animations),
    refusing more than ``max_pixels`` and any format but IMAGE_FORMATS (so no PostScript ever reaches Ghostscript).
    Pillow's own bomb guard stays on. :func:`open_image` may decode less, for bounded memory."""
    return open_image(path, max_pixels, bounded=False)[0]


def open_image(path: str | BinaryIO, max_pixels: int = DEFAULT_MAX_PIXELS, need_scale: float = 1.0,
               bounded: bool = True) -> tuple[Image.Image, tuple[int, int]]:
    """(the image as upright 8-bit RGB, its full upright size). The image is at full size, or smaller by a whole
    factor: no smaller than ``need_scale`` of the full size where that suffices, and (``bounded``) at most
    REDUCED_PIXELS when it has over REDUCE_ABOVE_PIXELS. JPEGs are decoded at the smaller size (DCT
    scaling); others are decoded, reduced a band at a time, then converted, so the memory an image takes is its
    decoded size in its own mode (at most MAX_DECODED_BYTES) plus that of the reduced copy. Coordinates in the full
    image times ``image.width / size[0]`` are coordinates in the image.
    Refuses what :func:`load_image` refuses (DecodeError)."""
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
        if decoded_bytes(img.mode, w * h) > MAX_DECODED_BYTES:
            raise DecodeError("decode", f"image is {w}x{h} in mode {img.mode}: {decoded_bytes(img.mode, w * h) >> 20:,}"
                                        f" MB decoded, over the limit of {MAX_DECODED_BYTES >> 20} MB")
        need = max(1, math.floor(1 / need_scale)) if 0 < need_scale < 1 else 1
        memory = math.ceil(math.sqrt(w * h / REDUCED_PIXELS)) if bounded and w * h > REDUCE_ABOVE_PIXELS else 1
        factor = max(need, memory)
        try:
            img.seek(0)
            if factor > 1 and img.format == "JPEG":  # DCT scaling: 1/2, 1/4 or 1/8, at least the size asked
                scaled = max(need, 1 << (memory - 1).bit_length())  # the memory factor, up to a power of two
                img.draft(img.mode if img.mode in ("L", "RGB") else "RGB", (math.ceil(w / scaled),
                                                                             math.ceil(h / scaled)))
            img.load()
        except Image.DecompressionBombError as e:
            raise DecodeError("decode", f"{e} (a decompression bomb?)") from None
        except OSError as e:
            raise DecodeError("decode", f"corrupt or truncated image ({e})") from None
    orientation = img.getexif().get(0x0112)
    size = (h, w) if orientation in (5, 6, 7, 8) else (w, h)
    left = img.width * factor // w  # the factor that DCT scaling (JPEG) has not done
    if left > 1:
        img = _reduce(img, left)  # the full-size image is freed here, before the conversion
        img = to_rgb(img)
        return (img.transpose(_ORIENT[orientation]) if orientation in _ORIENT else img), size
    img = ImageOps.exif_transpose(img) or img
    return to_rgb(img), size


def _reduce(img: Image.Image, factor: int) -> Image.Image:
    """``img`` smaller by ``factor`` (the mean of each factor x factor block; palettes: one pixel of it), made a band
    of rows at a time so that no mode makes a full-size copy on the way (the last ``size % factor`` rows and columns
    are dropped)."""
    w, h = img.width // factor, img.height // factor
    if img.mode in ("1", "P"):
        return img.resize((max(w, 1), max(h, 1)), Image.NEAREST)
    if w == 0 or h == 0:
        return img.resize((max(w, 1), max(h, 1)), Image.BOX)
    out = None
    rows = max(1, _BAND_PIXELS // (w * factor * factor)) * factor  # rows of img per band, a multiple of factor
    for top in range(0, h * factor, rows):
        band = img.crop((0, top, w * factor, min(top + rows, h * factor)))
        band = band.resize((w, band.height // factor), Image.BOX) if img.mode.startswith("I;16") \
            else band.reduce(factor)  # no reduce() for 16-bit modes
        if out is None:
            out = Image.new(band.mode, (w, h))
        out.paste(band, (0, top // factor))
    return out


def to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode to 8-bit RGB: alpha over white, 16-bit/32-bit/float scaled to 0..255 (in place, without a
    temporary the size of the image)."""
    mode = img.mode
    if mode == "RGB":
        return img
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        a = np.array(img, dtype=np.float64)
        hi = 65535.0 if mode.startswith("I;16") else max(float(a.max()), 1.0)
        a /= hi
        a *= 255.0
        a += 0.5
        np.clip(a, 0, 255, out=a)
        return Image.fromarray(a.astype(np.uint8), "L").convert("RGB")
    if mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
        mode = "RGBA"
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        bg = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(bg, rgba).convert("RGB")
    return img.convert("RGB")
