"""What a JPEG's header says, read without decoding it (pure Python: decode workers use it without torch), and the
rule for which JPEGs the GPU decoder may take.

The GPU path (``gpu_decode``) must give what the CPU path (``media.load_image``: Pillow, EXIF orientation applied,
converted to RGB) gives. It takes a JPEG only when nothing in the file asks for more than a plain YCbCr or
grayscale decode; every other file goes through the CPU path, unchanged:

- 8-bit baseline, extended or progressive Huffman coding (SOF0, SOF1, SOF2); not arithmetic, lossless,
  hierarchical or 12-bit;
- 1 (grayscale) or 3 components stored as YCbCr; not CMYK / YCCK (4 components), not RGB-coded JPEGs
  (Adobe transform 0, or component ids 'R', 'G', 'B');
- no orientation other than 1 (upright): Pillow takes EXIF's tag, else an XMP ``tiff:Orientation``; and an
  EXIF block that parses;
- at most ``max_pixels`` pixels (the decompression-bomb guard; the CPU path gives the error message);
- a header that parses, with non-zero width and height.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass

_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
_GPU_SOF = {0xC0, 0xC1, 0xC2}  # baseline, extended sequential, progressive; Huffman coded
_NO_LENGTH = {0x01, 0xD8, *range(0xD0, 0xD8)}
_XMP = b"http://ns.adobe.com/xap/1.0/\x00"
_XMP_ORIENTATION = re.compile(rb'tiff:Orientation(="|>)([0-9])')  # the pattern Pillow's getexif uses


@dataclass(frozen=True)
class JpegInfo:
    """Header facts of a JPEG file."""

    sof: int  # the frame marker (0xC0 baseline, 0xC2 progressive, ...)
    precision: int  # bits per sample
    width: int
    height: int
    component_ids: tuple[int, ...]
    orientation: int | None  # EXIF orientation tag, else XMP tiff:Orientation (as Pillow reads it), None when absent
    exif_ok: bool  # False when an EXIF block is there but does not parse
    adobe_transform: int | None  # APP14 "Adobe" colour transform, None when absent


def read_jpeg_info(data: bytes) -> JpegInfo | None:
    """Parse the markers up to the first scan; None when ``data`` is not a JPEG or its header is broken."""
    if not data.startswith(b"\xff\xd8"):
        return None
    i, n = 2, len(data)
    orientation, xmp_orientation, exif_ok, adobe, frame = None, None, True, None, None
    while i < n:
        if data[i] != 0xFF:
            return None
        while i < n and data[i] == 0xFF:  # fill bytes
            i += 1
        if i >= n:
            return None
        marker = data[i]
        i += 1
        if marker in _NO_LENGTH:
            continue
        if marker in (0xD9, 0xDA):  # end of image, start of scan: the header is over
            break
        if i + 2 > n:
            return None
        length = struct.unpack(">H", data[i:i + 2])[0]
        if length < 2 or i + length > n:
            return None
        seg = data[i + 2:i + length]
        i += length
        if marker == 0xE1 and seg.startswith(b"Exif\x00\x00"):
            found = exif_orientation(seg[6:])
            if found is False:
                exif_ok = False
            elif found is not None and orientation is None:
                orientation = found
        elif marker == 0xE1 and seg.startswith(_XMP) and xmp_orientation is None:
            found = _XMP_ORIENTATION.search(seg)
            xmp_orientation = int(found[2]) if found else None
        elif marker == 0xEE and seg.startswith(b"Adobe") and len(seg) >= 12:
            adobe = seg[11]
        elif marker in _SOF and frame is None:
            if len(seg) < 6:
                return None
            precision, height, width, ncomp = seg[0], *struct.unpack(">HH", seg[1:5]), seg[5]
            if len(seg) < 6 + 3 * ncomp:
                return None
            frame = (marker, precision, width, height, tuple(seg[6 + 3 * c] for c in range(ncomp)))
    if frame is None:
        return None
    sof, precision, width, height, ids = frame
    return JpegInfo(sof=sof, precision=precision, width=width, height=height, component_ids=ids,
                    orientation=orientation if orientation is not None else xmp_orientation, exif_ok=exif_ok,
                    adobe_transform=adobe)


def exif_orientation(tiff: bytes) -> int | None | bool:
    """The orientation tag (0x0112) of IFD0 in a TIFF-structured EXIF block; None when absent, False when the
    block does not parse."""
    if len(tiff) < 8 or tiff[:2] not in (b"II", b"MM"):
        return False
    end = "<" if tiff[:2] == b"II" else ">"
    try:
        offset = struct.unpack(end + "I", tiff[4:8])[0]
        count = struct.unpack(end + "H", tiff[offset:offset + 2])[0]
        for k in range(count):
            entry = tiff[offset + 2 + 12 * k:offset + 14 + 12 * k]
            tag, kind = struct.unpack(end + "HH", entry[:4])
            if tag == 0x0112:
                return struct.unpack(end + "H", entry[8:10])[0] if kind == 3 else False
    except struct.error:
        return False
    return None


def gpu_fallback_reason(info: JpegInfo | None, max_pixels: int) -> str | None:
    """Why this JPEG must be decoded on the CPU (see the module docstring), or None when the GPU may take it."""
    if info is None:
        return "not a JPEG, or its header does not parse"
    if info.sof not in _GPU_SOF:
        return f"JPEG coding 0x{info.sof:02X} (arithmetic, lossless or hierarchical)"
    if info.precision != 8:
        return f"{info.precision}-bit samples"
    if len(info.component_ids) not in (1, 3):
        return f"{len(info.component_ids)} colour components (CMYK or YCCK)"
    if len(info.component_ids) == 3 and (info.adobe_transform == 0 or info.component_ids == (82, 71, 66)):
        return "RGB-coded JPEG (no YCbCr transform)"
    if not info.exif_ok:
        return "EXIF block does not parse"
    if info.orientation not in (None, 1):
        return f"orientation {info.orientation} (EXIF or XMP)"
    if info.width == 0 or info.height == 0 or info.width * info.height > max_pixels:
        return "size outside the pixel guard"
    return None
