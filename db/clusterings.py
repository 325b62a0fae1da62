"""Named clusterings of persons: one row per clustering (centroids, clusters described in JSON) and one row per
member person. A clustering replaces the one of the same name; members go with their person by ON DELETE
CASCADE, so sizes read from the members are always those of the persons still stored."""

from __future__ import annotations

import json
import time

import numpy as np
from sqlalchemy import Select, delete, func, insert, select
from sqlalchemy.orm import Session

from .schema import Clustering, ClusterMember, Person
from .values import ClusteringRow


def _row(c: Clustering) -> ClusteringRow:
    centroids = np.frombuffer(c.centroids, np.float32).reshape(c.k, -1) if c.k else np.zeros((0, 0), np.float32)
    return ClusteringRow(c.id, c.name, c.space, c.k, json.loads(c.filters), c.persons, c.max_person_id,
                         centroids, json.loads(c.clusters), json.loads(c.info), c.created_at)


def save(s: Session, name: str, space: str, filters: dict, max_person_id: int, centroids: np.ndarray,
         clusters: list[dict], info: dict, person_ids: np.ndarray, assignment: np.ndarray) -> int:
    """Store a clustering under ``name`` (replacing an older one) with its members: ``person_ids`` (n,) and their
    cluster numbers ``assignment`` (n,). Returns its id."""
    s.execute(delete(Clustering).where(Clustering.name == name))  # its members go by ON DELETE CASCADE
    centroids = np.ascontiguousarray(centroids, np.float32)
    cid = s.execute(insert(Clustering).values(
        name=name, space=space, k=len(centroids), filters=json.dumps(filters, sort_keys=True),
        persons=int(len(person_ids)), max_person_id=int(max_person_id), centroids=centroids.tobytes(),
        clusters=json.dumps(clusters), info=json.dumps(info, sort_keys=True), created_at=time.time())
    ).inserted_primary_key[0]
    rows = zip(np.asarray(person_ids, np.int64).tolist(), [cid] * len(person_ids),
               np.asarray(assignment, np.int64).tolist(), strict=True)
    s.connection().exec_driver_sql(
        "INSERT INTO cluster_members (person_id, clustering_id, cluster) VALUES (?, ?, ?)", list(rows))
    return int(cid)


def get(s: Session, name: str) -> ClusteringRow | None:
    c = s.execute(select(Clustering).where(Clustering.name == name)).scalar()
    return None if c is None else _row(c)


def all_rows(s: Session) -> list[ClusteringRow]:
    return [_row(c) for c in s.execute(select(Clustering).order_by(Clustering.name)).scalars()]


def drop(s: Session, name: str) -> bool:
    """Delete a clustering and its members; False when there is none of that name."""
    return bool(s.execute(delete(Clustering).where(Clustering.name == name)).rowcount)


def sizes(s: Session, clustering_id: int) -> dict[int, int]:
    """cluster -> number of its persons still stored."""
    q = (select(ClusterMember.cluster, func.count()).where(ClusterMember.clustering_id == clustering_id)
         .group_by(ClusterMember.cluster))
    return {int(c): int(n) for c, n in s.execute(q)}


def persons_since(s: Session, max_person_id: int) -> int:
    """Persons stored after a clustering was made (ids above its newest person): they belong to no cluster."""
    return int(s.execute(select(func.count(Person.id)).where(Person.id > max_person_id)).scalar() or 0)


def member_query(name: str, cluster: int) -> Select:
    """The person ids of one cluster of the clustering ``name`` (a subquery for filters)."""
    return (select(ClusterMember.person_id).join(Clustering, Clustering.id == ClusterMember.clustering_id)
            .where(Clustering.name == name, ClusterMember.cluster == int(cluster)))


def clusters_of(s: Session, clustering_id: int, person_ids: np.ndarray) -> np.ndarray:
    """The cluster of each person (-1: not a member), for (n,) ids."""
    ids = np.asarray(person_ids, np.int64)
    if not len(ids):
        return np.zeros(0, np.int64)
    q = select(ClusterMember.person_id, ClusterMember.cluster).where(
        ClusterMember.clustering_id == clustering_id, ClusterMember.person_id.between(int(ids.min()), int(ids.max())))
    found = dict(s.execute(q).all())
    return np.array([found.get(int(i), -1) for i in ids], np.int64)
