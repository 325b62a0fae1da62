"""Upgrades of stores written by older versions, applied on open in one transaction (all or nothing).

Each step takes a store from version N to N + 1; :func:`upgrade` runs the steps from the store's version up to
``SCHEMA_VERSION``. A store newer than this code, or without a path up, is refused by the caller.
"""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy import select
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session

from . import labels
from .activities import recount_all
from .errors import DbError
from .schema import (
    ActivityCount,
    Clustering,
    ClusterMember,
    LabelChunk,
    LabelColumn,
    Media,
    Person,
    PersonObject,
    Track,
)
from .tracks import rebuild_tracks
from .values import Linker


def _v1_to_v2(conn: Connection, link: Linker | None) -> None:
    """Version 2 keeps the norm of the tower output beside the unit visual vector (NULL for older persons)."""
    conn.exec_driver_sql("ALTER TABLE persons ADD COLUMN visual_norm FLOAT")
    conn.exec_driver_sql("CREATE INDEX ix_persons_no_norm ON persons (id) WHERE visual_norm IS NULL")


def _v2_to_v3(conn: Connection, link: Linker | None) -> None:
    """Version 3 adds tracks: the ``tracks`` table, ``persons.track_id``, and the tracks of every stored video,
    computed from its persons with ``link``, exactly as ingest computes them."""
    Track.__table__.create(conn)
    conn.exec_driver_sql("ALTER TABLE persons ADD COLUMN track_id INTEGER REFERENCES tracks(id) ON DELETE SET NULL")
    for index in Person.__table__.indexes:
        if [c.name for c in index.columns] == ["track_id"]:
            index.create(conn)
    with Session(bind=conn) as s:
        videos = s.execute(select(Media.id).where(Media.kind == "video").order_by(Media.id)).scalars().all()
        if videos and link is None:
            raise DbError("upgrading a store with videos to schema version 3 needs a track linker (Database(link=...))")
        rebuild_tracks(s, videos, link=link)
        s.flush()


def _v3_to_v4(conn: Connection, link: Linker | None) -> None:
    """Version 4 records the language space's compact basis with the space (NULL here: the store's first writer
    records it, a2v_search.store)."""
    conn.exec_driver_sql("ALTER TABLE spaces ADD COLUMN basis_pasta BLOB")
    conn.exec_driver_sql("ALTER TABLE spaces ADD COLUMN basis_verb BLOB")
    conn.exec_driver_sql("ALTER TABLE spaces ADD COLUMN sv_pasta BLOB")
    conn.exec_driver_sql("ALTER TABLE spaces ADD COLUMN sv_verb BLOB")


def _v4_to_v5(conn: Connection, link: Linker | None) -> None:
    """Version 5 keeps the PaSta and verb probabilities by class in chunks (db/labels.py) instead of one ``labels``
    row per person and class: the new tables are filled from the persons' blobs and ``labels`` is dropped."""
    LabelChunk.__table__.create(conn)
    LabelColumn.__table__.create(conn)
    conn.exec_driver_sql("DROP TABLE IF EXISTS labels")
    with Session(bind=conn) as s:
        labels.rebuild(s)
        s.flush()


def _v5_to_v6(conn: Connection, link: Linker | None) -> None:
    """Version 6 adds the objects of a person's activity (the ``objects`` table; older persons have none)."""
    PersonObject.__table__.create(conn)  # with its index


def _v6_to_v7(conn: Connection, link: Linker | None) -> None:
    """Version 7 keeps activity counts (counted from every stored person by the next step, which every upgrade
    from here runs) and named clusterings (none yet)."""
    for table in (ActivityCount.__table__, Clustering.__table__, ClusterMember.__table__):
        table.create(conn)


def _v7_to_v8(conn: Connection, link: Linker | None) -> None:
    """Version 8 counts objects and verb + object pairs in ``activity_counts`` too: recounted from every person."""
    with Session(bind=conn) as s:
        recount_all(s)
        s.flush()


def _v8_to_v9(conn: Connection, link: Linker | None) -> None:
    """Version 9 indexes ``media.duplicate_of`` (the duplicates that a media's deletion updates) and
    ``label_columns.chunk`` (the columns of a chunk being rewritten); a store upgraded from version 4 or older has
    the second already (step 5 made the table with it)."""
    for table, name in ((Media.__table__, "ix_media_duplicate_of"), (LabelColumn.__table__, "ix_label_columns_chunk")):
        next(index for index in table.indexes if index.name == name).create(conn, checkfirst=True)


#: version -> the step that upgrades a store of that version to the next.
STEPS: dict[int, Callable[[Connection, Linker | None], None]] = {1: _v1_to_v2, 2: _v2_to_v3, 3: _v3_to_v4,
                                                                 4: _v4_to_v5, 5: _v5_to_v6, 6: _v6_to_v7,
                                                                 7: _v7_to_v8, 8: _v8_to_v9}


def can_upgrade(version: int | None, target: int) -> bool:
    """True when steps lead from ``version`` to ``target``."""
    return version is not None and version < target and all(v in STEPS for v in range(version, target))


def upgrade(conn: Connection, version: int, target: int, link: Linker | None = None) -> None:
    """Run the steps from ``version`` to ``target`` in the caller's transaction (``link``: the video tracker)."""
    for v in range(version, target):
        STEPS[v](conn, link)
