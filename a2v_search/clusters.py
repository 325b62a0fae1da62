"""Clusters of persons: k-means over a stored vector space (``manage.py cluster``), named by what sets each
cluster apart from the persons clustered, stored as a named clustering.

- **Vectors**: the persons' vectors in one space (``language``: the BERT-space vector of their PaSta and verbs,
  ``visual``: CLIP, ``activity``: A2V's classifier feature, trained heads only), computed from SQLite exactly as the
  indexes are. Persons without a direction there (zero vector: an idle person in the language space) belong to no
  cluster.
- **k-means**: FAISS's own ``faiss.Kmeans``, spherical (unit centroids, inner product: the spaces are cosine
  spaces), ``niter`` iterations, on the GPU when FAISS sees one. It trains on a uniform sample of at most
  ``MAX_POINTS_PER_CENTROID`` persons per cluster (FAISS's own default bound), then every person is assigned to
  its nearest centroid streaming, ``CHUNK`` persons at a time: memory stays bounded whatever the number of persons.
- **--auto**: k is the candidate of ``AUTO_KS`` (at most one cluster per ``MIN_AUTO_SIZE`` persons) whose
  clustering of the training sample has the highest mean silhouette (cosine distance) on ``SILHOUETTE_N`` of its
  points; ties go to the smaller k.
- **Names**: a cluster is named by its 2 verbs, 2 objects and 2 PaSta whose mean probability in the cluster exceeds
  their mean over all persons clustered by the most (an object's probability: its best ``p`` among the person's
  objects, 0 without one); each cluster keeps its 5 most distinctive verbs, objects and PaSta (mean in the cluster,
  mean overall) and its ``EXAMPLES`` persons closest to the centroid.
- **Later persons**: a clustering describes the persons stored when it was made. Persons stored since belong to no
  cluster; the clustering then says it is stale (``persons_since``: how many, among those its filters select) until
  ``cluster`` runs again under its name. Removed persons leave their cluster (sizes are counted live).
"""

from __future__ import annotations

import time

import numpy as np

from db.values import Filters

from . import taxonomy as tx
from .errors import InputError, NotFoundError, QueryError
from .space import ACTIVITY
from .store import Store

SPACES = ("language", "visual", ACTIVITY)
MAX_POINTS_PER_CENTROID = 256
CHUNK = 20000
EXAMPLES = 8
AUTO_KS = (2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128)
MIN_AUTO_SIZE = 20
SILHOUETTE_N = 2000
MAX_K = 4096
NAME_CHARS = 100


def check_name(name: str) -> str:
    """A clustering name: 1 to 100 characters, no colon (``NAME:ID`` names a cluster) and no control characters."""
    if not isinstance(name, str) or not name.strip() or len(name) > NAME_CHARS or ":" in name \
            or any(ord(ch) < 32 for ch in name):
        raise InputError(f"clustering name {name!r} must be 1 to {NAME_CHARS} characters without ':'")
    return name


def parse_cluster(text: str) -> tuple[str, int]:
    """``"NAME:ID"`` -> (name, cluster id)."""
    name, _, number = (text or "").rpartition(":")
    if not name or not number.strip().isdigit():
        raise QueryError(f"cannot read cluster {text!r}; write it as NAME:ID, e.g. 'default:3' "
                         "(`manage.py clusters` lists them)")
    return name, int(number)


def _use_gpu() -> bool:
    import faiss

    return hasattr(faiss, "get_num_gpus") and faiss.get_num_gpus() > 0


def kmeans(x: np.ndarray, k: int, seed: int = 0, niter: int = 20) -> np.ndarray:
    """Unit centroids (k, D) of spherical k-means over the unit rows of ``x`` (n, D) with faiss.Kmeans."""
    import faiss

    x = np.ascontiguousarray(x, np.float32)
    km = faiss.Kmeans(x.shape[1], int(k), niter=niter, seed=seed, spherical=True, gpu=_use_gpu(), verbose=False,
                      max_points_per_centroid=MAX_POINTS_PER_CENTROID, min_points_per_centroid=1)
    km.train(x)
    c = km.centroids.astype(np.float32)
    return c / np.maximum(np.linalg.norm(c, axis=1, keepdims=True), 1e-12)


def assign(x: np.ndarray, centroids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(nearest centroid (n,), its cosine (n,)) of unit rows ``x``; ties to the smaller cluster number."""
    sims = x @ centroids.T  # (n, k)
    best = np.argmax(sims, axis=1)
    return best, sims[np.arange(len(x)), best]


def silhouette(x: np.ndarray, labels: np.ndarray) -> float:
    """Mean silhouette of unit rows ``x`` (n, D) under ``labels`` with cosine distance (0 for one cluster)."""
    ks = np.unique(labels)
    if len(ks) < 2:
        return 0.0
    d = 1.0 - x @ x.T  # (n, n)
    member = labels[:, None] == ks[None, :]  # (n, c)
    sums = d @ member.astype(np.float32)  # (n, c): summed distance to each cluster
    sizes = member.sum(0).astype(np.float32)
    own = member.argmax(1)
    a = sums[np.arange(len(x)), own] / np.maximum(sizes[own] - 1, 1)
    other = np.where(member, np.inf, sums / sizes[None, :])
    b = other.min(1)
    s = np.where(sizes[own] > 1, (b - a) / np.maximum(np.maximum(a, b), 1e-12), 0.0)
    return float(s.mean())


def choose_k(x: np.ndarray, seed: int = 0) -> tuple[int, dict[int, float]]:
    """The --auto k for training vectors ``x`` and the silhouette of every candidate tried."""
    rng = np.random.default_rng(seed)
    sub = x[np.sort(rng.choice(len(x), min(len(x), SILHOUETTE_N), replace=False))]
    scores = {}
    for k in AUTO_KS:
        if k * MIN_AUTO_SIZE > len(x):
            break
        c = kmeans(x, k, seed, niter=10)
        scores[k] = round(silhouette(sub, assign(sub, c)[0]), 4)
    if not scores:
        raise QueryError(f"--auto needs at least {AUTO_KS[0] * MIN_AUTO_SIZE} persons with a direction in this "
                         f"space, found {len(x)}; give --k")
    best = max(scores.values())
    return min(k for k, v in scores.items() if v == best), scores


def _unit_rows(v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(unit rows of v, mask of rows that had a direction)."""
    norms = np.linalg.norm(v, axis=1)
    ok = np.isfinite(norms) & (norms > 1e-6)
    out = np.zeros_like(v, dtype=np.float32)
    out[ok] = v[ok] / norms[ok, None]
    return out, ok


def _space_vectors(store: Store, batch, space: str) -> np.ndarray:
    return store.space.vectors(batch.visual, batch.pasta, batch.verbs, batch.norms, (space,), batch.objects)[space]


def _distinct(means: np.ndarray, overall: np.ndarray, names: tuple[str, ...], skip: set[int], n: int) -> list:
    """[[name, mean in cluster, mean overall]] of the n labels whose cluster mean exceeds the overall mean most."""
    lift = means - overall
    order = [i for i in np.lexsort((np.arange(len(lift)), -lift)) if i not in skip and lift[i] > 0][:n]
    return [[names[i], round(float(means[i]), 4), round(float(overall[i]), 4)] for i in order]


def describe(count: np.ndarray, pasta_sum: np.ndarray, verb_sum: np.ndarray,
             object_sum: np.ndarray | None = None) -> list[dict]:
    """Per cluster: a name and its distinctive verbs, objects and PaSta, from (k,) sizes and (k, 93) / (k, 157) /
    (k, 80) sums of the members' probabilities."""
    total = max(int(count.sum()), 1)
    object_sum = np.zeros((len(count), tx.N_OBJECTS)) if object_sum is None else object_sum
    overall_p, overall_v, overall_o = pasta_sum.sum(0) / total, verb_sum.sum(0) / total, object_sum.sum(0) / total
    out = []
    for c in range(len(count)):
        m = max(int(count[c]), 1)
        verbs = _distinct(verb_sum[c] / m, overall_v, tx.VERB_NAMES, {tx.NO_INTERACTION_VERB}, 5)
        objects = _distinct(object_sum[c] / m, overall_o, tx.OBJECT_NAMES, set(), 5)
        pasta = _distinct(pasta_sum[c] / m, overall_p, tx.PASTA_NAMES, set(tx.NO_INTERACTION_PASTA), 5)
        words = [v[0] for v in verbs[:2]] + [o[0] for o in objects[:2]] + [p[0] for p in pasta[:2]]
        out.append({"cluster": c, "name": ", ".join(words) if words else "no distinctive activity",
                    "verbs": verbs, "objects": objects, "pasta": pasta})
    return out


def make_clustering(store: Store, filters: Filters | None, filter_args: dict, name: str, space: str = "language",
                    k: int | None = None, seed: int = 0, niter: int = 20) -> dict:
    """Cluster the persons passing ``filters`` in ``space`` into ``k`` clusters (None: --auto) and store the
    clustering as ``name`` (the store must hold the write lock). ``filter_args``: the filters as given, recorded."""
    check_name(name)
    if space not in SPACES:
        raise InputError(f"--space must be one of {', '.join(SPACES)}, not {space!r}")
    if k is not None and not 1 <= k <= MAX_K:
        raise InputError(f"--k must be from 1 to {MAX_K}, not {k}")
    if store.space.row() is None:
        raise QueryError(f"the store at {store.data_dir} is empty; ingest something first")
    if space == ACTIVITY and store.space.activity_problem():
        raise QueryError(f"no activity space: {store.space.activity_problem()}")
    started = time.perf_counter()
    ids = store.person_ids(filters)
    if not len(ids):
        raise QueryError("no person passes these filters; nothing to cluster")
    max_id = int(ids.max())
    rng = np.random.default_rng(seed)
    n_train = min(len(ids), (k or max(AUTO_KS)) * MAX_POINTS_PER_CENTROID)
    sample = np.sort(rng.choice(ids, n_train, replace=False))
    train = np.concatenate([x[ok] for x, ok in (_unit_rows(_space_vectors(store, b, space))
                                                 for b in store.iter_vectors(sample))])
    info = {"seed": seed, "niter": niter, "trained_on": int(len(train))}
    if k is None:
        k, scores = choose_k(train, seed)
        info["auto"] = {"criterion": "highest mean silhouette (cosine) of the training sample", "silhouette": scores}
    if len(train) < k:
        raise QueryError(f"only {len(train)} of the persons selected have a direction in the {space} space; "
                         f"--k {k} needs at least as many")
    centroids = kmeans(train, k, seed, niter)
    trained = time.perf_counter()
    assignment = np.full(len(ids), -1, np.int64)
    closeness = np.full(len(ids), -np.inf, np.float32)
    count = np.zeros(k, np.int64)
    pasta_sum, verb_sum, object_sum = np.zeros((k, tx.N_PASTA)), np.zeros((k, tx.N_VERBS)), np.zeros((k, tx.N_OBJECTS))
    pos = 0
    for batch in store.iter_vectors(ids, CHUNK):
        x, ok = _unit_rows(_space_vectors(store, batch, space))
        at = np.searchsorted(ids, batch.ids)
        best, sim = assign(x[ok], centroids)
        assignment[at[ok]], closeness[at[ok]] = best, sim
        count += np.bincount(best, minlength=k)
        np.add.at(pasta_sum, best, np.nan_to_num(batch.pasta[ok]))
        np.add.at(verb_sum, best, np.nan_to_num(batch.verbs[ok]))
        np.add.at(object_sum, best, batch.objects[ok])
        pos += len(batch.ids)
    members = assignment >= 0
    clusters = describe(count, pasta_sum, verb_sum, object_sum)
    order = np.lexsort((ids, -closeness, assignment))  # by cluster, closest first, then id
    starts = np.searchsorted(assignment[order], np.arange(k))
    for c, entry in enumerate(clusters):
        entry["size"] = int(count[c])
        entry["examples"] = [int(i) for i in ids[order[starts[c]:starts[c] + min(EXAMPLES, int(count[c]))]]]
    info.update({"persons_read": int(pos), "without_direction": int((~members).sum()),
                 "seconds": {"train": round(trained - started, 3),
                             "assign": round(time.perf_counter() - trained, 3)}, "gpu": _use_gpu()})
    store.save_clustering(name, space, filter_args, max_id, centroids, clusters, info, ids[members],
                          assignment[members])
    info["seconds"]["total"] = round(time.perf_counter() - started, 3)
    return {"name": name, "space": space, "k": int(k), "persons": int(members.sum()), "filters": filter_args,
            "info": info, "clusters": clusters}


def clustering_dict(store: Store, name: str, with_clusters: bool = True) -> dict:
    """A stored clustering as ``clusters NAME --json`` prints it: live sizes, stale count, clusters."""
    from .search import make_filters

    found = store.clustering(name)
    if found is None:
        names = ", ".join(r.name for r in store.clusterings()) or "none yet"
        raise NotFoundError(f"no clustering named {name!r} (stored: {names}); make one with "
                         f"`manage.py cluster --name {name}`")
    row, sizes = found
    f = row.filters
    since = make_filters(f.get("collection"), f.get("path"), f.get("kind"), f.get("where"),
                         f.get("cluster"))
    since.after_id = row.max_person_id
    new = len(store.person_ids(since)) if not _missing_cluster(store, since) else 0
    out = {"name": row.name, "space": row.space, "k": row.k, "filters": row.filters,
           "persons": int(sum(sizes.values())), "persons_when_made": row.persons, "persons_since": new,
           "stale": bool(new), "created_at": row.created_at, "info": row.info}
    if with_clusters:
        out["clusters"] = [{**c, "size": int(sizes.get(c["cluster"], 0))} for c in row.clusters]
    return out


def _missing_cluster(store: Store, f: Filters) -> bool:
    """True when a clustering was made inside a cluster of another clustering that is gone (nothing to count)."""
    return f.cluster is not None and store.clustering(f.cluster[0]) is None

