"""What the modules that run SQL share: ``IN (...)`` lists in chunks, reads of the rows of a list of values bound
as one JSON list, the session's DBAPI cursor, the next free id of a table and the bulk inserts of the write path."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from itertools import groupby

from sqlalchemy.orm import Session

CHUNK = 5000  # ids per IN (...) list


def chunks(ids: Sequence, size: int = CHUNK) -> Iterator[Sequence]:
    """``ids`` in slices of at most ``size`` (one ``IN (...)`` list each)."""
    for i in range(0, len(ids), size):
        yield ids[i:i + size]


#: whether :func:`rows_in` binds lists as JSON (every SQLite this project meets has JSON; False: the IN lists of an
#: SQLite without it, which tests use to check them)
JSON_LISTS = True


def rows_in(s: Session, sql: str, values: Sequence, fallback: Callable[[Sequence], object]) -> list:
    """The rows of the literal ``sql``, whose one parameter is ``values`` (ints or strings) bound as a JSON list
    (``... IN (SELECT value FROM json_each(?))``: one parameter, no IN list for SQLAlchemy to build: ~1-3 ms a read
    of 512 ids, ~1 ms an import's lookup of 256 paths), in chunks; an SQLite without JSON runs ``fallback(chunk)``
    (the same statement with an IN list) instead. A statement that returns no rows (a ``DELETE``) gives []."""
    rows: list = []
    for chunk in chunks(values):
        if JSON_LISTS:
            try:
                rows += dbapi(s).execute(sql, (json.dumps(chunk),)).fetchall()
                continue
            except sqlite3.OperationalError:  # an SQLite built without JSON: the IN list below
                pass
        statement = fallback(chunk)
        result = s.execute(statement)
        rows += result.all() if statement.is_select else []
    return rows


#: (largest id, AUTOINCREMENT's counter) of each table, literal SQL run on the session's own DBAPI connection
_LAST_IDS = {"media": "SELECT max(id), NULL FROM media",
             "persons": "SELECT max(id), (SELECT seq FROM sqlite_sequence WHERE name = 'persons') FROM persons",
             "tracks": "SELECT max(id), (SELECT seq FROM sqlite_sequence WHERE name = 'tracks') FROM tracks"}


def next_id(s: Session, table: str) -> int:
    """The id the next row of ``table`` gets: past every id used, and for the AUTOINCREMENT tables (persons,
    tracks) past every id SQLite ever handed out, so that a deleted row's id is never used again."""
    largest, seq = dbapi(s).execute(_LAST_IDS[table]).fetchone()
    return max(int(largest or 0), int(seq or 0)) + 1


def insert_rows(cursor, sql: str, short_sql: str, rows: Sequence[tuple], optional: int) -> None:
    """INSERT ``rows`` through the DBAPI ``cursor`` with the literal ``sql``; a row whose last ``optional`` values
    are all None goes through ``short_sql``, the same statement without those columns (their default is NULL), in
    runs that keep the rows' order. Python's sqlite3 binds int, float, str and bytearray as they are, but looks every
    other value (None, bytes) up in its adapter registry first: ~0.3 us each, ~1/4 of a person's row with its blobs
    as bytes and its three video fields as None."""
    for short, run in groupby(rows, key=lambda r: r[-optional:] == (None,) * optional):
        if short:
            cursor.executemany(short_sql, [r[:-optional] for r in run])
        else:
            cursor.executemany(sql, run)


def dbapi(s: Session):
    """A DBAPI cursor inside the session's transaction (for bulk inserts and the id queries of the write path)."""
    return s.connection().connection.driver_connection.cursor()
