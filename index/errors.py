"""Errors of the FAISS vector store. Every message names the fix."""

from __future__ import annotations

from a2v_search.errors import A2VError, InputError, StoreError

REINDEX_HINT = "run `python manage.py reindex` to rebuild it from SQLite"


class IndexMissingError(StoreError):
    """No saved index (manifest or index file) where one is expected."""


class IndexCorruptError(StoreError):
    """A saved index is truncated, unreadable or does not match its manifest."""


class IndexSpecError(InputError):
    """An index spec (FAISS factory string) cannot be built."""


class UnknownIdError(A2VError, LookupError):
    """Ids asked for are not in the index."""
