"""FAISS vector store: per-person vectors keyed by int64 person ids (pure numpy + faiss, no SQLite).

See docs/index.md for how the index type is chosen, filtered search, the save/load protocol and GPU use.
"""

from __future__ import annotations

from .errors import IndexCorruptError, IndexMissingError, IndexSpecError, UnknownIdError
from .faiss_index import MANIFEST_KEYS, VectorIndex, gpu_available
from .files import orphan_files
from .spec import choose_nlist, choose_spec, default_nprobe

__all__ = [
    "MANIFEST_KEYS",
    "IndexCorruptError",
    "IndexMissingError",
    "IndexSpecError",
    "UnknownIdError",
    "VectorIndex",
    "choose_nlist",
    "choose_spec",
    "default_nprobe",
    "gpu_available",
    "orphan_files",
]
