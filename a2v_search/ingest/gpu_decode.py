"""JPEG decoding and person crops on the GPU, for ingest on CUDA (torchvision is needed: the ``gpu`` extra).

Decode workers pass eligible JPEGs through as bytes (:class:`JpegCrop`, the rule is in ``jpeg_info``); here a
batch of them is decoded at once with ``torchvision.io.decode_jpeg(device="cuda")`` and cut with the same crop
policy as ``preprocess.Preprocess`` (square context box, mean-colour fill, bilinear antialiased resize to S x S,
rounded to uint8). A JPEG the GPU decoder rejects is decoded on the CPU, by the CPU path, in this process.

Pixels differ from the CPU path only by the decoders' rounding (IDCT and chroma upsampling) and the resize's
(a few grey levels); the policy (what is cropped, filled, rotated or refused) is the same.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import first_line
from ..media import DecodeError, load_image
from ..preprocess import Box, Preprocess


@dataclass
class JpegCrop:
    """A person to cut from an undecoded JPEG: the file's bytes and the box (None: whole-image mode)."""

    data: bytes
    box: Box | None = None


def available(device: torch.device) -> bool:
    """Whether JPEGs can be decoded on ``device``: a CUDA device and torchvision with GPU decode_jpeg."""
    if device.type != "cuda":
        return False
    try:
        from torchvision.io import decode_jpeg  # noqa: F401
    except ImportError:
        return False
    return True


def decode_jpegs(datas: Sequence[bytes], device: torch.device) -> list[torch.Tensor]:
    """JPEG files -> RGB (3, H, W) uint8 tensors on ``device``, decoded in one batched call."""
    from torchvision.io import ImageReadMode, decode_jpeg

    encoded = [torch.frombuffer(bytearray(d), dtype=torch.uint8) for d in datas]
    return list(decode_jpeg(encoded, mode=ImageReadMode.RGB, device=device))


def resize_uint8(images: torch.Tensor, size: int) -> torch.Tensor:
    """(N, 3, H, W) or (3, H, W) uint8 -> (N, size, size, 3) or (size, size, 3) uint8: bilinear with antialiasing
    (Pillow's BILINEAR filter), rounded."""
    x = images.unsqueeze(0) if images.dim() == 3 else images
    x = x.float()  # (N, 3, H, W)
    if x.shape[-2:] != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    out = x.round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1)  # (N, S, S, 3)
    return out[0] if images.dim() == 3 else out


def crop_resize(image: torch.Tensor, box: Box | None, preprocess: Preprocess) -> torch.Tensor:
    """The person of ``box`` (None: the whole image) from a decoded (3, H, W) uint8 image -> (S, S, 3) uint8, by
    the crop policy of ``Preprocess.crop`` / ``Preprocess.whole``."""
    if box is None:
        return resize_uint8(image, preprocess.size)
    _, h, w = image.shape
    left, top, right, bottom = preprocess.crop_region(box, w, h)
    side = right - left
    fill = torch.tensor([int(round(m * 255)) for m in preprocess.mean], dtype=torch.uint8, device=image.device)
    canvas = fill.view(3, 1, 1).expand(3, side, side).clone()  # (3, side, side)
    x1, y1, x2, y2 = max(left, 0), max(top, 0), min(right, w), min(bottom, h)
    canvas[:, y1 - top:y2 - top, x1 - left:x2 - left] = image[:, y1:y2, x1:x2]
    return resize_uint8(canvas, preprocess.size)


_side_streams: dict[torch.device, torch.cuda.Stream] = {}


@contextmanager
def _side_stream(device: torch.device):
    """On CUDA, run the block on a side stream that the compute stream then waits for, so that decoding batch i + 1
    overlaps the tower on batch i; on the CPU, nothing."""
    if device.type != "cuda":
        yield
        return
    if device not in _side_streams:
        _side_streams[device] = torch.cuda.Stream(device)
    side = _side_streams[device]
    compute = torch.cuda.current_stream(device)
    with torch.cuda.stream(side):  # new tensors only: no need to wait for the compute stream
        yield
    compute.wait_stream(side)


def assemble(pixels: Sequence[np.ndarray | JpegCrop], preprocess: Preprocess, device: torch.device,
             max_pixels: int, decode=decode_jpegs) -> tuple[torch.Tensor, dict[int, str]]:
    """One batch of persons on ``device``: uint8 (B', S, S, 3), rows in the order of ``pixels`` less the failed
    ones, and {index: reason} of the persons that could not be decoded at all.

    Crops already made on the CPU (numpy) are uploaded; the distinct JPEGs among the rest are decoded in one
    ``decode`` call; if that call fails, each is decoded alone, and one the GPU rejects goes through the CPU path
    (``media.load_image`` on the bytes, then ``Preprocess.pixels``), which refuses it with the CPU path's reason
    when it is broken.
    """
    with _side_stream(device):
        batch, failed = _assemble(pixels, preprocess, device, max_pixels, decode)
    if device.type == "cuda":
        batch.record_stream(torch.cuda.current_stream(device))  # made on the side stream, used on the compute one
    return batch, failed


def _assemble(pixels: Sequence[np.ndarray | JpegCrop], preprocess: Preprocess, device: torch.device,
              max_pixels: int, decode) -> tuple[torch.Tensor, dict[int, str]]:
    jpegs: dict[int, bytes] = {}  # id(data) -> data
    for px in pixels:
        if isinstance(px, JpegCrop):
            jpegs.setdefault(id(px.data), px.data)
    decoded: dict[int, torch.Tensor | None] = {}
    keys = list(jpegs)
    if keys:
        try:
            decoded = dict(zip(keys, decode([jpegs[k] for k in keys], device), strict=True))
        except Exception:  # one file the decoder rejects fails the whole call: try each alone
            for k in keys:
                try:
                    decoded[k] = decode([jpegs[k]], device)[0]
                except Exception:
                    decoded[k] = None  # the CPU path below
    rows: list[torch.Tensor | None] = [None] * len(pixels)
    failed: dict[int, str] = {}
    wholes: dict[tuple[int, int], list[int]] = {}  # whole images by size: resized together, one call per size
    for i, px in enumerate(pixels):
        if isinstance(px, np.ndarray):
            rows[i] = torch.from_numpy(np.array(px)).to(device)
            continue
        image = decoded[id(px.data)]
        if image is not None and px.box is None:
            wholes.setdefault(tuple(image.shape[1:]), []).append(i)
            continue
        if image is not None:
            rows[i] = crop_resize(image, px.box, preprocess)
            continue
        try:  # the GPU decoder rejected it: the CPU path decides
            cpu = preprocess.pixels(load_image(io.BytesIO(px.data), max_pixels), px.box)  # (S, S, 3) uint8
            rows[i] = torch.from_numpy(np.array(cpu)).to(device)  # Pillow arrays are read-only
        except DecodeError as e:
            failed[i] = str(e)
        except Exception as e:  # as media.decode: a library error on a hostile file is that file's failure
            failed[i] = f"{type(e).__name__}: {first_line(e, 'unreadable')}"
    for members in wholes.values():
        resized = resize_uint8(torch.stack([decoded[id(pixels[i].data)] for i in members]), preprocess.size)
        for i, row in zip(members, resized, strict=True):
            rows[i] = row
    kept = [r for r in rows if r is not None]
    size = preprocess.size
    batch = torch.stack(kept) if kept else torch.zeros((0, size, size, 3), dtype=torch.uint8, device=device)
    return batch, failed
