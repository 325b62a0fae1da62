"""float16 blobs: how probabilities and visual vectors are stored, and read back (a damaged blob never raises)."""

from __future__ import annotations

import sys
from collections.abc import Sequence

import numpy as np

# float32 arrays of at least this many values are cast to float16 by torch when it is loaded (to_float16)
TORCH_CAST_MIN = 4096


def f16(x: np.ndarray) -> bytes:
    """float array -> float16 blob."""
    return np.asarray(x, np.float16).tobytes()


def to_float16(x: np.ndarray) -> np.ndarray:
    """A float32 array as float16: the bits of ``x.astype(np.float16)`` (round to nearest even; tests/test_store.py
    compares them). numpy casts one value at a time, ~4.6 ns a value here (3.5 us for a person's 768); torch's cast is
    vectorised (F16C, AVX-512: ~0.1 us a person), so it does the large ones when this process has loaded torch (an
    ingest's models): torch is never imported for it."""
    torch = sys.modules.get("torch")
    if (torch is not None and x.dtype == np.float32 and x.size >= TORCH_CAST_MIN and x.flags.c_contiguous
            and x.flags.writeable):  # torch.from_numpy refuses negative strides and warns on read-only arrays
        return torch.from_numpy(x).to(torch.float16).numpy()
    return x.astype(np.float16)


def unf16(b: bytes) -> np.ndarray:
    """float16 blob -> float32 array."""
    return np.frombuffer(b, np.float16).astype(np.float32)


def fixed16(blob: bytes, n: int) -> np.ndarray:
    """A float16 blob of ``n`` values -> (n,) float32; a damaged blob (another length) reads as zeros."""
    return unf16(blob) if len(blob) == 2 * n else np.zeros(n, np.float32)


def stack16(blobs: Sequence[bytes], width: int | None = None, dtype: type = np.float32) -> np.ndarray:
    """float16 blobs -> (n, d) ``dtype`` (float32; float16 keeps the stored values as they are), decoded in one go.
    ``d`` is ``width`` (else the most common length); a blob of another length (a damaged row) becomes a row of NaN,
    which the store treats as no direction."""
    sizes = {len(b) for b in blobs}
    if width is None:
        lengths = [len(b) for b in blobs]
        width = max(set(lengths), key=lengths.count) // 2 if lengths else 0
    if sizes == {2 * width}:
        return np.frombuffer(b"".join(blobs), np.float16).reshape(len(blobs), width).astype(dtype)
    out = np.full((len(blobs), width), np.nan, dtype)
    for i, b in enumerate(blobs):
        if len(b) == 2 * width:
            out[i] = np.frombuffer(b, np.float16)
    return out
