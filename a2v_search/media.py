"""Media shared by ingest, the query layer, the server and pictures: paths as text, and images opened safely
(format allow-list, pixel-count guard, EXIF orientation, any mode to 8-bit RGB). Discovery and the decoding of
files into person crops are the ingest wing's (``a2v_search/ingest/discover.py``, ``decode.py``).
"""

from __future__ import annotations

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

