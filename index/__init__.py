"""FAISS vector store: per-person vectors keyed by int64 person ids (pure numpy + faiss, no SQLite).

See docs/index.md for how the index type is chosen, filtered search, the save/load protocol and GPU use. The
package stands alone: its errors derive from :class:`VectorIndexError`, and its fault points call a hook that a
test harness may install (:func:`set_fault_hook`).
"""

from __future__ import annotations

from .errors import (
    IndexCorruptError,
    IndexInputError,
    IndexMissingError,
    IndexSpecError,
    UnknownIdError,
    VectorIndexError,
)
from .faiss_index import MANIFEST_KEYS, VectorIndex, gpu_available, one_thread_here
from .files import orphan_files, saved_summary
from .hooks import set_fault_hook
from .spec import choose_nlist, choose_spec, default_nprobe, exact_scores

__all__ = [
    "MANIFEST_KEYS",
    "IndexCorruptError",
    "IndexInputError",
    "IndexMissingError",
    "IndexSpecError",
    "UnknownIdError",
    "VectorIndex",
    "VectorIndexError",
    "choose_nlist",
    "choose_spec",
    "default_nprobe",
    "exact_scores",
    "gpu_available",
    "one_thread_here",
    "orphan_files",
    "saved_summary",
    "set_fault_hook",
]
