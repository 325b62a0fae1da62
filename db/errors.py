"""Errors of the SQLite store. This package imports nothing of a2v-search: its ``Store`` turns these errors into
a2v-search errors and adds the command-line fix, through the ``translate`` hook it gives
:class:`db.engine.Database`."""

from __future__ import annotations


class DbError(Exception):
    """Base of every error this package raises on purpose."""


class DbMissingError(DbError):
    """No database file where an existing store is expected."""


class NotAStoreError(DbError):
    """A SQLite file that is not an a2v-search store."""


class SchemaVersionError(DbError):
    """A store of a schema version this code neither reads nor can upgrade."""


class UpgradeError(DbError):
    """A store of an older schema version that cannot be upgraded here (no write access)."""
