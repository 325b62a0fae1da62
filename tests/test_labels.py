"""The labels by class (db/labels.py): filters and per-class counts answer exactly what the persons' stored
probabilities say, through writes, replaced files, removals and the upgrade of a schema 3 store."""

from __future__ import annotations

import sqlite3

import numpy as np
import pytest
from helpers import downgrade, media, random_person, writable_store

from a2v_search.store import Store
from db import labels, repo
from db.engine import get_meta
from db.schema import LABEL_PASTA, LABEL_VERB, SCHEMA_VERSION, LabelChunk
from db.values import Filters

WHERE = [(LABEL_PASTA, 37, ">=", 0.5), (LABEL_PASTA, 37, ">", 0.3), (LABEL_VERB, 12, "<", 0.02),
         (LABEL_VERB, 3, "<=", 0.3), (LABEL_PASTA, 0, ">=", 0.0), (LABEL_VERB, 156, ">=", 0.05)]


def noisy_person(rng):
    """A person with sigmoid outputs over a background, as trained heads give (many small probabilities)."""
    p = random_person(rng)
    p.pasta = (1 / (1 + np.exp(-rng.normal(-3.0, 1.5, 93)))).astype(np.float32)
    p.verbs = (1 / (1 + np.exp(-rng.normal(-3.0, 1.5, 157)))).astype(np.float32)
    return p


def stored_probs(store):
    """{kind: (ids, (n, classes))} of every stored person, from its blobs."""
    with store.db.session() as s:
        v = repo.fetch_vectors(s, repo.person_ids(s))
    return v.ids, {LABEL_PASTA: v.pasta, LABEL_VERB: v.verbs}


def assert_labels_match_blobs(store):
    ids, probs = stored_probs(store)
    with store.db.session() as s:
        for item in WHERE:
            kind, cls, op, value = item
            want = ids[labels.OPS[op](probs[kind][:, cls], np.float32(value))]
            assert repo.filter_person_ids(s, Filters(where=[item])).tolist() == want.tolist(), item
        both = repo.filter_person_ids(s, Filters(where=WHERE[:2], collection="b"))
        in_b = set(repo.filter_person_ids(s, Filters(collection="b")).tolist())
        want = [i for i, a, b in zip(ids, probs[0][:, 37] >= np.float32(0.5), probs[0][:, 37] > np.float32(0.3),
                                     strict=True) if a and b and i in in_b]
        assert both.tolist() == want
        for p in (0.3, 0.05, 1.0, 0.333):  # on the 0.01 grid (stored counts) and off it (the columns)
            got = labels.count_at_least(s, p)
            for kind in (LABEL_PASTA, LABEL_VERB):
                assert got[kind].tolist() == (probs[kind] >= np.float32(p)).sum(0).tolist(), (p, kind)


def test_filters_and_counts_answer_like_the_blobs(tmp_path, monkeypatch):
    monkeypatch.setattr(labels, "LABEL_CHUNK", 7)
    rng = np.random.default_rng(3)
    store = writable_store(tmp_path / "data")
    for b in range(6):  # 6 batches of 3 media x 1-3 persons: chunks close inside batches and across them
        store.write([media(f"/x/{b}-{j}.jpg", [noisy_person(rng) for _ in range(1 + j)], collection="ab"[j % 2])
                     for j in range(3)])
    with store.db.session() as s:
        chunks = s.execute(repo.select(LabelChunk.first_id, LabelChunk.last_id)).all()
        assert chunks == [(1 + 7 * i, 7 + 7 * i) for i in range(5)]  # 36 persons: 5 chunks and a tail of one
        old = repo.media_by_path(s, ["/x/1-2.jpg", "/x/4-0.jpg", "/x/0-1.jpg", "/x/0-2.jpg"])
    assert_labels_match_blobs(store)
    replaced = media("/x/1-2.jpg", [noisy_person(rng)], collection="b")  # 3 persons of chunk 2 become 1
    replaced.replaces = old["/x/1-2.jpg"].id
    store.write([replaced])
    store.remove_media([old["/x/4-0.jpg"].id])
    with store.db.session() as s:  # noted as dead, the columns unchanged
        dead = dict(s.execute(repo.select(LabelChunk.first_id, LabelChunk.dead)).all())
        assert {k: np.frombuffer(v, np.int64).tolist() for k, v in dead.items() if v} == {8: [10, 11, 12], 22: [25]}
    assert_labels_match_blobs(store)
    store.remove_media([old["/x/0-1.jpg"].id, old["/x/0-2.jpg"].id])  # 5 of chunk 1's 7: written again without
    with store.db.session() as s:
        assert s.execute(repo.select(LabelChunk.ids, LabelChunk.dead).where(LabelChunk.first_id == 1)).one() == (
            np.array([1, 7], np.int64).tobytes(), None)
    assert_labels_match_blobs(store)
    store.write([media(f"/y/{j}.jpg", [noisy_person(rng)] * 4, collection="b") for j in range(3)])
    with store.db.session() as s:
        assert repo.counts(s)["persons"] == 36 - 3 + 1 - 1 - 5 + 12
        assert labels.boundary(s) > 36  # the new persons fill chunks after the gaps
    assert_labels_match_blobs(store)
    store.close()


@pytest.mark.guarantee("G27")
def test_a_schema_4_store_gets_its_labels_by_class(tmp_path, monkeypatch):
    monkeypatch.setattr(labels, "LABEL_CHUNK", 5)
    rng = np.random.default_rng(2)
    store = writable_store(tmp_path / "data")
    store.write([media(f"/x/{j}.jpg", [noisy_person(rng) for _ in range(3)]) for j in range(6)])
    store.close()
    downgrade(tmp_path / "data" / "a2v.sqlite", 4)
    con = sqlite3.connect(tmp_path / "data" / "a2v.sqlite")
    assert con.execute("SELECT count(*) FROM labels").fetchone()[0] > 18 * 20  # one row per person and class
    con.close()
    store = Store(tmp_path / "data").lock("test")
    with store.db.session() as s:
        assert get_meta(s, "schema_version") == str(SCHEMA_VERSION)  # through 5 (labels) to the newest
        assert s.execute(repo.select(LabelChunk.first_id)).scalars().all() == [1, 6, 11]
    con = sqlite3.connect(tmp_path / "data" / "a2v.sqlite")
    assert con.execute("SELECT count(*) FROM sqlite_master WHERE name = 'labels'").fetchone() == (0,)
    con.close()
    assert_labels_match_blobs(store)
    assert store.check().problems == []
    store.close()


def test_new_stores_use_8_kb_pages(tmp_path):
    writable_store(tmp_path / "data").close()
    con = sqlite3.connect(tmp_path / "data" / "a2v.sqlite")
    assert con.execute("PRAGMA page_size").fetchone() == (8192,)
    con.close()


@pytest.mark.parametrize("n", [0, 1, 3, labels.FEW_PERSONS, labels.FEW_PERSONS + 1, 50])
def test_level_counts_count_the_persons_at_each_level(n):
    """Both ways of counting (each person against each level for a few, bins for more) give the plain count."""
    rng = np.random.default_rng(n)
    p16 = rng.random((n, 250)).astype(np.float16)
    p16[:, :5] = np.array([0.0, 0.01, 0.0099, 1.0, np.nan], np.float16)  # the edges of the levels, and a damaged blob
    want = (p16.astype(np.float32)[:, :, None] >= labels.LEVELS).sum(0)
    assert labels.level_counts(p16).tolist() == want.tolist()
