"""The file hasher: sha256 of a file's content, read in 1 MiB chunks (content identity of media and checkpoints).

``index/`` keeps its own (it stands alone, and hashes while it fsyncs a new index file)."""

from __future__ import annotations

import hashlib
import os


def file_sha256(path: str | os.PathLike, limit: int | None = None) -> str:
    """Hex sha256 of a file (of its first ``limit`` bytes when given)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        left = limit
        while chunk := f.read(1 << 20 if left is None else min(1 << 20, left)):
            h.update(chunk)
            if left is not None:
                left -= len(chunk)
                if left <= 0:
                    break
    return h.hexdigest()
