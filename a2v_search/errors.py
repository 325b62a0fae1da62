"""Typed errors. Every message says what went wrong and how to fix it; the CLI prints it as one line."""

from __future__ import annotations


class A2VError(Exception):
    """Base of every error a2v-search raises on purpose."""


class UnknownNameError(A2VError, ValueError):
    """A PaSta, verb or part name that is not in the taxonomy."""


class InputError(A2VError, ValueError):
    """A file, path, box or argument given by the user cannot be used."""


class ModelError(A2VError):
    """A model cannot be loaded or does not fit what is asked of it."""


class CheckpointError(ModelError):
    """A checkpoint file is missing, corrupt, untrusted or of the wrong layout."""


class StoreError(A2VError):
    """The data directory (SQLite + FAISS) cannot be opened or written."""


class StoreLockedError(StoreError):
    """Another process holds the store's write lock."""


class SpaceMismatchError(StoreError):
    """The models asked for differ from the models the store's vectors were built with."""


class LegacySpaceError(StoreError):
    """A store made by an older version whose vectors must be migrated (``manage.py reindex``) before use."""


class QueryError(A2VError, ValueError):
    """A search query cannot be run (empty store, unknown id, text that matches nothing...)."""


class NotFoundError(QueryError):
    """A person or media id that names nothing stored (or whose file is gone)."""


class FileChangedError(QueryError):
    """A stored file that is no longer what was ingested (another size or modification time)."""


def first_line(e: BaseException, empty: str | None = None) -> str:
    """The first line of an exception's message, for one-line error text; ``empty`` (default: ``repr(e)``) when
    the message is empty."""
    text = str(e)
    if text:
        return text.splitlines()[0]
    return repr(e) if empty is None else empty
