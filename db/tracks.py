"""Tracks: the persons of a video linked into tracks when the video is stored (or recomputed for an older store),
and the reads of tracks and their members."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from .blobs import unf16
from .schema import Media, Person, Track
from .sql import chunks, dbapi, next_id
from .values import Linker, NewPerson, TrackRow


def _frame_time(t_sec: float | None, frame_index: int | None) -> float:
    return float(t_sec) if t_sec is not None else float(frame_index or 0)


_INSERT_TRACK = "INSERT INTO tracks (id, media_id, number, t_start, t_end, persons) VALUES (?, ?, ?, ?, ?, ?)"


def insert_tracks(s: Session, media_id: int, persons: Sequence[NewPerson], link: Linker,
                  visual: np.ndarray | None = None) -> list[int]:
    """Link the persons of one video into tracks with ``link``, insert the track rows, and return each person's
    track id. ``visual``: their (n, P) visual vectors as stored (float16), where the caller has them. Part of the
    caller's transaction: a video is stored with its tracks or not at all."""
    if not persons:
        return []
    times = [_frame_time(p.t_sec, p.frame_index) for p in persons]
    numbers = link(times, [[float(v) for v in p.box] for p in persons],
                   np.stack([p.visual for p in persons]) if visual is None else visual)
    rows: dict[int, list] = {}
    for number, t in zip(numbers, times, strict=True):
        r = rows.setdefault(number, [media_id, number, t, t, 0])
        r[2], r[3], r[4] = min(r[2], t), max(r[3], t), r[4] + 1
    first = next_id(s, "tracks")
    dbapi(s).executemany(
        _INSERT_TRACK, [(first + k, *rows[k]) for k in sorted(rows)])
    return [first + number for number in numbers]


def rebuild_tracks(s: Session, media_ids: Sequence[int], *, link: Linker) -> int:
    """Recompute the tracks of stored videos from their persons (what ingest would have written); returns the
    number of tracks. Used to upgrade stores written before tracks existed."""
    total = 0
    for mid in media_ids:
        s.execute(update(Person).where(Person.media_id == mid).values(track_id=None))
        s.execute(delete(Track).where(Track.media_id == mid))
        q = (select(Person.id, Person.t_sec, Person.frame_index, Person.x1, Person.y1, Person.x2, Person.y2,
                    Person.visual).where(Person.media_id == mid).order_by(Person.id))
        rows = s.execute(q).all()
        if not rows:
            continue
        persons = [NewPerson(box=(r[3], r[4], r[5], r[6]), pasta=None, verbs=None, parts=None, visual=unf16(r[7]),
                             frame_index=r[2], t_sec=r[1]) for r in rows]
        track_ids = insert_tracks(s, mid, persons, link)
        s.execute(update(Person).execution_options(synchronize_session=False),
                  [{"id": r[0], "track_id": tid} for r, tid in zip(rows, track_ids, strict=True)])
        total += len(set(track_ids))
    return total


def videos_with_untracked_persons(s: Session) -> list[int]:
    """Ids of videos that have persons without a track (none in a consistent store)."""
    q = (select(Person.media_id).join(Media, Media.id == Person.media_id)
         .where(Media.kind == "video", Person.track_id.is_(None)).distinct().order_by(Person.media_id))
    return list(s.execute(q).scalars())


def tracks_of(s: Session, ids: Sequence[int]) -> dict[int, int | None]:
    """person id -> track id (None for image persons)."""
    ids = [int(i) for i in ids]
    out: dict[int, int | None] = {}
    for chunk in chunks(ids):
        out.update(dict(s.execute(select(Person.id, Person.track_id).where(Person.id.in_(chunk))).all()))
    return out


def track_members(s: Session, track_ids: Sequence[int]) -> dict[int, list[int]]:
    """track id -> its person ids, in id order."""
    track_ids = sorted({int(t) for t in track_ids})
    out: dict[int, list[int]] = {t: [] for t in track_ids}
    for chunk in chunks(track_ids):
        q = (select(Person.track_id, Person.id).where(Person.track_id.in_(chunk))
             .order_by(Person.id))
        for tid, pid in s.execute(q):
            out[tid].append(pid)
    return out


def fetch_tracks(s: Session, track_ids: Sequence[int]) -> dict[int, TrackRow]:
    """Stored tracks by id; ids that do not exist are left out."""
    track_ids = [int(t) for t in track_ids]
    out: dict[int, TrackRow] = {}
    for chunk in chunks(track_ids):
        q = select(Track.id, Track.media_id, Track.number, Track.t_start, Track.t_end, Track.persons).where(
            Track.id.in_(chunk))
        out.update({r[0]: TrackRow(*r) for r in s.execute(q)})
    return out
