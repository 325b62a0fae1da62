"""a2v-search: per-person HAKE activity vectors (PaSta, verbs, CLIP visual, BERT language), stored and searched.

The entry points: :class:`A2VSearch` (Python) and ``python manage.py`` (CLI, ``a2v_search/cli.py``).
"""

from __future__ import annotations

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
