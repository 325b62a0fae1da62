"""a2v-search: per-person HAKE activity vectors (PaSta, verbs, CLIP visual, BERT language), stored and searched.

The entry points: :class:`A2VSearch` (Python) and ``python manage.py`` (CLI, ``a2v_search/cli.py``).
"""

from __future__ import annotations

import os

# numpy's OpenBLAS runs one thread unless told otherwise, set before numpy loads (so the CLI, the server and any
# program importing a2v_search before numpy): our matrix products are small (hundreds of candidates, a batch of
# persons), and OpenBLAS's idle threads spin after each one, taking the cores from torch and FAISS. Measured at 1M
# persons on 2 cores: a text query's encoding 16.2 -> 6.5 ms when interleaved with searches, clustering no slower
# (docs/benchmarks.md). FAISS's own BLAS and torch follow OMP_NUM_THREADS / torch.set_num_threads as before.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

__version__ = "0.1.0"
__all__ = ["A2VSearch", "SearchOptions", "__version__"]


def __getattr__(name: str):
    if name == "A2VSearch":  # imported lazily: it pulls torch, transformers and faiss
        from .api import A2VSearch

        return A2VSearch
    if name == "SearchOptions":
        from .search import SearchOptions

        return SearchOptions
    raise AttributeError(f"module 'a2v_search' has no attribute {name!r}")
