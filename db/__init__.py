"""The metadata store: SQLite through SQLAlchemy 2.0 (schema in ``schema.py``, functions in ``repo.py``)."""

from __future__ import annotations

from .repo import Database, Filters, NewMedia, NewPerson, PersonRow
from .schema import SCHEMA_VERSION

__all__ = ["SCHEMA_VERSION", "Database", "Filters", "NewMedia", "NewPerson", "PersonRow"]
