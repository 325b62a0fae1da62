"""Errors of the FAISS vector store. This package imports nothing of a2v-search: its ``Store`` turns these errors
into a2v-search errors and adds the command-line fix."""

from __future__ import annotations


class VectorIndexError(Exception):
    """Base of every error this package raises on purpose."""


class IndexInputError(VectorIndexError, ValueError):
    """An argument (ids, vectors, k, nprobe, dimension, manifest) cannot be used."""


class IndexMissingError(VectorIndexError):
    """No saved index (manifest or index file) where one is expected."""


class IndexCorruptError(VectorIndexError):
    """A saved index is truncated, unreadable or does not match its manifest."""


class IndexSpecError(IndexInputError):
    """An index spec (FAISS factory string) cannot be built."""


class UnknownIdError(VectorIndexError, LookupError):
    """Ids asked for are not in the index."""
