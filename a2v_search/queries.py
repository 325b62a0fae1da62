"""The store's reads: each method is one SQLite transaction (one session, or one read snapshot for what streams),
so callers above the store never open their own. :class:`StoreQueries` is part of :class:`~a2v_search.store.Store`
(which owns the database, its lock and its writes); it is kept here so that the store's own module reads on a few
screens.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import numpy as np

from db import activities, clusterings, repo
from db.engine import Database, get_meta
from db.schema import COUNT_MIN_P, Media
from db.tracks import fetch_tracks, track_members, tracks_of
from db.values import ClusteringRow, Counts, Filters, MediaState, PersonRow, TrackRow, Vectors

from .errors import QueryError


class StoreQueries:
    """The read queries of a :class:`~a2v_search.store.Store` (its ``db``)."""

    db: Database

    def meta(self, key: str) -> str | None:
        """A value of the store's key-value metadata (e.g. ``detector``), or None."""
        return self._read(get_meta, key)

    def summary(self) -> tuple[dict[str, int], dict[str, int], list[tuple[str, str, str]]]:
        """(counts of media, persons, tracks, failures; media per collection; the 20 latest failures)."""
        with self.db.session() as s:
            return repo.counts(s), repo.collections(s), repo.failures(s, limit=20)

    def media(self, media_id: int) -> Media | None:
        """One media row by id, or None."""
        return self._read(repo.get_media, media_id)

    def media_states(self, paths: Sequence[str]) -> dict[str, MediaState]:
        """Stored id, hash, size and mtime of the media at these paths (those stored)."""
        return self._read(repo.media_by_path, paths)

    def media_ids_under(self, paths: Sequence[str]) -> list[int]:
        """Ids of the media at these paths or inside these folders."""
        return self._read(repo.media_ids_under, paths)

    def media_with_hashes(self, hashes: Sequence[str]) -> dict[str, int]:
        """The first non-duplicate media id holding each of these content hashes (those stored)."""
        return self._read(repo.media_by_hash, hashes)

    def persons(self, ids: Sequence[int]) -> list[PersonRow]:
        """Persons with their media, in the order of ``ids``; unknown ids are left out."""
        return self._read(repo.fetch_persons, ids)

    def person_vectors(self, ids: Sequence[int]) -> Vectors:
        """The stored vectors (visual, PaSta, verbs, norms) of these persons."""
        return self._read(repo.fetch_vectors, ids)

    def media_ids_of(self, ids: Sequence[int]) -> dict[int, int]:
        """The media id of each of these persons."""
        return self._read(repo.media_ids_of, ids)

    def filter_person_ids(self, filters: Filters) -> np.ndarray | None:
        """Ids of the persons that pass ``filters`` (None: no filter)."""
        with self.db.session() as s:
            _check_cluster_filter(s, filters)
            return repo.filter_person_ids(s, filters)

    def check_filters(self, filters: Filters) -> None:
        """QueryError when a filter names something the store does not hold (a clustering, a cluster)."""
        with self.db.session() as s:
            _check_cluster_filter(s, filters)

    def person_ids(self, filters: Filters | None = None) -> np.ndarray:
        """Ids (sorted) of the persons that pass ``filters``, or of every person."""
        with self.db.session() as s:
            _check_cluster_filter(s, filters)
            ids = repo.filter_person_ids(s, filters) if filters is not None else None
            return repo.person_ids(s) if ids is None else ids

    def iter_vectors(self, ids: np.ndarray, chunk: int = 20000) -> Iterator[Vectors]:
        """The stored vectors of the persons ``ids`` (sorted), ``chunk`` at a time, from one read snapshot."""
        with self.db.snapshot() as s:
            yield from repo.iter_vectors(s, ids=ids, chunk=chunk)

    def activity_counts(self, filters: Filters | None, min_p: float, examples: int,
                        choose: Callable[[Counts], list[tuple]]) -> tuple[Counts, dict, str]:
        """How many persons (passing ``filters``) show each PaSta, verb, object and verb + PaSta / verb + object
        pair (probability >= ``min_p``), with ``examples`` example persons of the labels and pairs that
        ``choose(counts)`` names (keys as db/activities.py): (counts, {key: ids}, how they were counted).
        A whole store, a collection or a media kind at the kept threshold reads the kept counts (a few rows) and
        takes examples from its newest persons; other filters or thresholds read the probabilities of the persons
        that pass (db/activities.py)."""
        with self.db.snapshot() as s:
            f = filters or Filters()
            _check_cluster_filter(s, f)
            if min_p == COUNT_MIN_P and not (f.path_glob or f.where or f.cluster or f.after_id is not None):
                return activities.kept_counts(s, f.collection, f.kind, examples, choose)
            ids = repo.filter_person_ids(s, f)
            return activities.scanned_counts(s, repo.person_ids(s) if ids is None else ids, examples, choose, min_p)

    def clustering(self, name: str) -> tuple[ClusteringRow, dict[int, int]] | None:
        """A stored clustering and the live size of each cluster, or None."""
        with self.db.session() as s:
            row = clusterings.get(s, name)
            return None if row is None else (row, clusterings.sizes(s, row.id))

    def clusterings(self) -> list[ClusteringRow]:
        """Every stored clustering, by name."""
        return self._read(clusterings.all_rows)

    def clusters_of(self, clustering_id: int, person_ids: np.ndarray) -> np.ndarray:
        """The cluster of each person in a clustering (-1: not a member)."""
        return self._read(clusterings.clusters_of, clustering_id, person_ids)

    def tracks_of(self, ids: Sequence[int]) -> tuple[dict[int, int | None], dict[int, list[int]]]:
        """(the track of each person, None for image persons; the members of those tracks in id order)."""
        with self.db.session() as s:
            track_of = tracks_of(s, ids)
            return track_of, track_members(s, [t for t in track_of.values() if t is not None])

    def tracks(self, track_ids: Sequence[int]) -> tuple[dict[int, TrackRow], dict[int, list[int]]]:
        """(the tracks that exist among ``track_ids``; their members in id order)."""
        with self.db.session() as s:
            tracks = fetch_tracks(s, track_ids)
            return tracks, track_members(s, list(tracks))

    def track_members(self, track_ids: Sequence[int]) -> dict[int, list[int]]:
        """The person ids of each track, in id order (empty for a track that does not exist)."""
        return self._read(track_members, track_ids)

    def person_batches(self, filters: Filters | None, batch_size: int) -> Iterator[dict]:
        """The persons passing ``filters`` in id order, as column batches, all read from one SQLite snapshot."""
        with self.db.snapshot() as s:
            _check_cluster_filter(s, filters)
            ids = repo.filter_person_ids(s, filters) if filters is not None else None
            if ids is not None and not len(ids):
                return
            yield from repo.iter_person_batches(s, ids, chunk=batch_size)

    def _read(self, query: Callable, *args):
        """``query(session, *args)`` in one transaction."""
        with self.db.session() as s:
            return query(s, *args)


def _check_cluster_filter(s, filters: Filters | None) -> None:
    """QueryError when a cluster filter names no stored clustering or a cluster it does not have."""
    if filters is None or filters.cluster is None:
        return
    name, number = filters.cluster
    row = clusterings.get(s, name)
    if row is None:
        names = ", ".join(r.name for r in clusterings.all_rows(s)) or "none yet"
        raise QueryError(f"no clustering named {name!r} (stored: {names}); make one with "
                         f"`manage.py cluster --name {name}`")
    if not 0 <= number < row.k:
        raise QueryError(f"clustering {name!r} has clusters 0 to {row.k - 1}, not {number}")
