from __future__ import annotations

import json
import logging
import os
import re
import sqlite3

import faiss
import numpy as np
import pytest
from helpers import SPACE, downgrade, media, random_language, random_person, run_main, writable_store

from a2v_search import taxonomy as tx
from a2v_search.errors import InputError, LegacySpaceError, SpaceMismatchError, StoreError, StoreLockedError
from a2v_search.models import prompts
from a2v_search.models.language import LANGUAGE_VECTOR, LanguageSpace, PhraseBasis, TextEncoder, build_matrices
from a2v_search.search import Searcher, SearchOptions, make_filters
from a2v_search.space import space_fingerprint
from a2v_search.store import Store
from a2v_search.tracks import link
from db import engine, repo, sql
from db.blobs import TORCH_CAST_MIN, to_float16
from db.errors import DbError
from db.schema import LABEL_PASTA
from db.values import Filters
from index import IndexCorruptError, IndexSpecError, VectorIndex


def filled(tmp_path, n_media=6, per=3, seed=0):
    rng = np.random.default_rng(seed)
    store = writable_store(tmp_path / "data")
    items = [media(f"/m/{c}/img{i}.jpg", [random_person(rng) for _ in range(per)], collection=c)
             for i in range(n_media) for c in ("a", "b")]
    ids = store.write(items)
    store.indexes.save()
    return store, items, ids


def test_round_trip_of_a_batch(tmp_path):
    store, items, ids = filled(tmp_path)
    assert len(ids) == 36 and len(set(ids.tolist())) == 36
    with store.db.session() as s:
        rows = repo.fetch_persons(s, ids[::-1])  # caller's order kept
        assert [r.id for r in rows] == ids[::-1].tolist()
        counts = repo.counts(s)
    assert counts["media"] == 12 and counts["persons"] == 36
    persons = [p for m in items for p in m.persons]
    by_id = {r.id: r for r in rows}
    for pid, p in zip(ids, persons, strict=True):
        r = by_id[int(pid)]
        np.testing.assert_allclose(r.pasta, p.pasta, atol=1e-3)  # float16 storage
        np.testing.assert_allclose(r.visual, p.visual, atol=1e-3)
        assert r.box == tuple(float(v) for v in p.box)
    store.close()


def test_the_writers_second_thread_runs_faiss_on_one_openmp_thread_and_leaves_the_callers_alone(tmp_path):
    """Its FAISS adds overlap the calling thread's SQLite work: a second OpenMP thread would wait for a core."""
    before = faiss.omp_get_max_threads()
    store, _, ids = filled(tmp_path)  # two writes' FAISS adds went through the second thread
    try:
        assert store.indexes.in_second_thread(faiss.omp_get_max_threads).result() == 1
        assert faiss.omp_get_max_threads() == before
        np.testing.assert_array_equal(store.indexes.get()["visual"].ids(), np.sort(ids))  # and added them
    finally:
        store.close()


def test_float16_casts_through_torch_give_numpys_bits():
    """to_float16 casts large float32 arrays with torch once it is loaded: the bits must be astype's (round to nearest
    even) for every finite value, the halfway cases, the subnormals and the overflows; NaN stays NaN."""
    import torch  # noqa: F401  (loaded: to_float16 takes its path)

    rng = np.random.default_rng(0)
    random_bits = rng.integers(0, 2**32, 400_000, dtype=np.uint64).astype(np.uint32).view(np.float32)
    lo = np.arange(0x0001, 0x7BFF, dtype=np.uint16).view(np.float16).astype(np.float64)
    hi = np.arange(0x0002, 0x7C00, dtype=np.uint16).view(np.float16).astype(np.float64)
    halfway = ((lo + hi) / 2).astype(np.float32)  # exactly between two float16 values: ties go to the even one
    grid = np.linspace(-7e4, 7e4, 200_001, dtype=np.float32)  # beyond 65504: inf
    read_only = grid.copy()
    read_only.flags.writeable = False
    for x in (random_bits.reshape(-1, 800), np.concatenate([halfway, -halfway]), grid, random_bits[::3],
              random_bits[::-1], read_only):  # (numpy casts the last three: torch takes contiguous, writable arrays)
        assert x.size >= TORCH_CAST_MIN
        with np.errstate(over="ignore", invalid="ignore"):
            want, got = x.astype(np.float16), to_float16(x)
        assert got.dtype == np.float16 and got.shape == x.shape
        nan = np.isnan(want)
        np.testing.assert_array_equal(np.isnan(got), nan)
        np.testing.assert_array_equal(got.view(np.uint16)[~nan], want.view(np.uint16)[~nan])


def test_bulk_rows_without_their_optional_values_keep_order_values_and_nulls():
    """``sql.insert_rows`` sends a row whose trailing values are all None (a person of an image: no frame, time or
    track) through the statement without those columns; a 0 there is a value, blobs come back as the bytes given, and
    the rows' order is kept."""
    con = sqlite3.connect(":memory:")
    con.execute("CREATE TABLE t (name TEXT, blob BLOB, a INTEGER, b FLOAT, c INTEGER DEFAULT NULL)")
    rows = [("e", bytearray(b"\x00\x01"), None, None, None), ("d", bytearray(b"v"), 0, 0.0, None),
            ("c", b"w", None, None, None), ("b", bytearray(), None, None, 7), ("a", bytearray(b"z"), None, None, None)]
    sql.insert_rows(con.cursor(), "INSERT INTO t (name, blob, a, b, c) VALUES (?, ?, ?, ?, ?)",
                    "INSERT INTO t (name, blob) VALUES (?, ?)", rows, optional=3)
    assert con.execute("SELECT * FROM t ORDER BY rowid").fetchall() == [
        ("e", b"\x00\x01", None, None, None), ("d", b"v", 0, 0.0, None), ("c", b"w", None, None, None),
        ("b", b"", None, None, 7), ("a", b"z", None, None, None)]
    con.close()


def test_path_and_hash_lookups_find_odd_names_with_and_without_sqlite_json(tmp_path, monkeypatch):
    """The lookups of ingest and import (which paths are stored, which content is) bind their values as one JSON
    list; names with quotes, backslashes and non-ASCII letters are found, and an SQLite without JSON agrees."""
    rng = np.random.default_rng(0)
    store = writable_store(tmp_path / "data")
    paths = ['/m/caf\u00e9 "noir".jpg', "/m/back\\slash.jpg", "/m/\u65e5\u672c/\u5199\u771f.png", "/m/plain.jpg"]
    store.write([media(p, [random_person(rng)]) for p in paths])
    asked = [*paths[::-1], "/m/not-stored.jpg", "/m/CAF\u00c9 \"noir\".jpg"]

    def look():
        return store.media_states(asked), store.media_with_hashes([f"hash-{p}" for p in asked])

    fast = look()
    monkeypatch.setattr(sql, "JSON_LISTS", False)
    assert look() == fast
    states, firsts = fast
    assert sorted(states) == sorted(paths) and [states[p].id for p in paths] == [1, 2, 3, 4]
    assert firsts == {f"hash-{p}": i for i, p in enumerate(paths, 1)}
    store.close()


def test_search_results_join_back_to_their_media(tmp_path):
    store, items, ids = filled(tmp_path)
    persons = [(m.path, p) for m in items for p in m.persons]
    searcher = Searcher(store)
    for i in (0, 7, 20):
        path, p = persons[i]
        result = searcher.search({"visual": p.visual}, {"visual": 1.0}, SearchOptions(k=3))
        assert result.hits[0].person_id == ids[i] and result.hits[0].path == path
        assert result.hits[0].score == pytest.approx(1.0, abs=2e-3)
    store.close()


def test_delete_removes_from_both(tmp_path):
    store, items, ids = filled(tmp_path)
    with store.db.session() as s:
        mid = repo.media_by_path(s, ["/m/a/img0.jpg"])["/m/a/img0.jpg"].id
    removed = store.remove_media([mid])
    assert len(removed) == 3
    store.indexes.save()
    for idx in store.indexes.get().values():
        assert not np.isin(removed, idx.ids()).any() and idx.ntotal == 33
    with store.db.session() as s:
        assert repo.counts(s)["persons"] == 33 and not repo.fetch_persons(s, removed)
        assert not np.isin(removed, repo.labels.where_ids(s, [(0, 0, ">=", 0.0)])).any()
    store.close()
    assert Store(tmp_path / "data").check().ok


def test_a_deleted_media_frees_its_duplicates_through_an_index(tmp_path):
    """Deleting a media sets its duplicates' ``duplicate_of`` NULL by an index lookup (SQLite scanned the whole media
    table for each deleted media before: hours to remove 100k media from a store of 1M), and a chunk's label columns
    are found by index when it is rewritten; a store of schema 8 gets both indexes when it is opened."""
    store, items, ids = filled(tmp_path)
    first = store.media_states(["/m/a/img0.jpg"])["/m/a/img0.jpg"].id
    copy = media("/m/copy.jpg", [])
    copy.duplicate_of = first
    store.write([copy])
    store.remove_media([first])
    copy_id = store.media_states(["/m/copy.jpg"])["/m/copy.jpg"].id
    assert store.media(copy_id).duplicate_of is None
    store.close()
    db_file = tmp_path / "data" / "a2v.sqlite"

    def plan() -> str:
        con = sqlite3.connect(db_file)
        try:
            return str([con.execute(f"EXPLAIN QUERY PLAN {q}").fetchall() for q in (
                "SELECT id FROM media WHERE duplicate_of = 1", "SELECT p FROM label_columns WHERE chunk = 1")])
        finally:
            con.close()

    indexed = ("ix_media_duplicate_of", "ix_label_columns_chunk")
    assert all(name in plan() for name in indexed)
    downgrade(db_file, 8)
    assert not any(name in plan() for name in indexed)
    Store(tmp_path / "data").close()  # upgraded on open
    assert all(name in plan() for name in indexed)


def test_paths_and_folders_are_found_through_the_path_index(tmp_path):
    """``media_ids_under`` finds a path and everything under it as a folder, never a sibling that only shares a
    prefix, with lookups in the path index (it scanned the media table once a path: ~15 ms a path at 285k media)."""
    rng = np.random.default_rng(4)
    store = writable_store(tmp_path / "data")
    paths = ["/m/a", "/m/a/1.jpg", "/m/a/b/2.jpg", "/m/a/\u00e9t\u00e9.jpg", "/m/ab/3.jpg", "/m/a0.jpg", "/m/a.jpg",
             "/m/a-b.jpg"]
    store.write([media(p, [random_person(rng)]) for p in paths])
    ids = store.media_states(paths)
    assert store.media_ids_under(["/m/a"]) == sorted(ids[p].id for p in paths[:4])
    assert store.media_ids_under(["/m/a/"]) == sorted(ids[p].id for p in paths[1:4])  # the folder only
    assert store.media_ids_under(["/m/a/b", "/m/a.jpg"]) == sorted([ids["/m/a/b/2.jpg"].id, ids["/m/a.jpg"].id])
    assert store.media_ids_under(["/"]) == sorted(m.id for m in ids.values())
    statements = []
    with store.db.session() as s:
        con = s.connection().connection.driver_connection
        con.set_trace_callback(statements.append)
        repo.media_ids_under(s, ["/m/a"])
        con.set_trace_callback(None)
        plans = [str(con.execute("EXPLAIN QUERY PLAN " + q).fetchall()) for q in statements if "FROM media" in q]
    assert plans and not any("SCAN media" in plan for plan in plans), plans
    store.close()


@pytest.mark.guarantee("G3")
def test_lagging_index_catches_up_on_open(tmp_path):
    store, items, ids = filled(tmp_path)
    store.close()
    # a crash between the SQLite commit and the FAISS save: rows written, index file not
    rng = np.random.default_rng(9)
    s2 = writable_store(tmp_path / "data")
    with s2.db.session() as s:
        _, new_ids, _ = repo.add_media(s, s2.space.row().id, [media("/m/late.jpg", [random_person(rng)] * 2)],
                                       link=link)
        gone = repo.delete_media(s, [repo.media_by_path(s, ["/m/b/img3.jpg"])["/m/b/img3.jpg"].id])
    s2.close(save=False)  # exit without saving, like a killed process
    reader = Store(tmp_path / "data")
    for idx in reader.indexes.get().values():
        have = set(idx.ids().tolist())
        assert set(new_ids.tolist()) <= have and not set(gone.tolist()) & have and idx.ntotal == 35
    assert not reader.check().ok  # the saved index file still lags until a writer saves the caught-up one
    writer = Store(tmp_path / "data").lock("test")
    writer.indexes.get()
    writer.close()
    assert Store(tmp_path / "data").check().problems == []


@pytest.mark.guarantee("G8")
def test_truncated_index_is_rebuilt_with_a_warning(tmp_path, caplog):
    store, items, ids = filled(tmp_path)
    store.close()
    manifest = json.loads((tmp_path / "data" / "index" / "visual.json").read_text())
    f = tmp_path / "data" / "index" / manifest["file"]
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    reader = Store(tmp_path / "data")
    with caplog.at_level(logging.WARNING, logger="a2v_search"):
        idx = reader.indexes.get()["visual"]
    assert idx.ntotal == 36 and "rebuilding it from SQLite" in caplog.text
    assert "manage.py reindex" not in caplog.text  # it is rebuilt already: nothing for the user to run
    report = reader.check()
    assert not report.ok and any("visual" in p.what for p in report.problems)


@pytest.mark.guarantee("G8")
def test_a_damaged_tail_is_rebuilt_from_sqlite(tmp_path, caplog):
    """A save after a small change writes a tail; a tail cut short makes the index corrupt, and the store rebuilds
    it from SQLite like a damaged index file."""
    rng = np.random.default_rng(4)
    store = writable_store(tmp_path / "data")
    store.write([media(f"/m/{i}.jpg", [random_person(rng) for _ in range(3)]) for i in range(40)])
    store.indexes.save()
    ids = store.write([media("/m/late.jpg", [random_person(rng)])])  # 1 of 121 persons: a tail
    store.close()
    folder = tmp_path / "data" / "index"
    manifest = json.loads((folder / "visual.json").read_text())
    assert [t["added"] for t in manifest["tail"]] == [1] and Store(tmp_path / "data").check().problems == []
    tail = folder / manifest["tail"][0]["file"]
    tail.write_bytes(tail.read_bytes()[:-10])
    reader = Store(tmp_path / "data")
    with caplog.at_level(logging.WARNING, logger="a2v_search"):
        idx = reader.indexes.get()["visual"]
    assert idx.ntotal == 121 and ids[0] in idx and "rebuilding it from SQLite" in caplog.text
    assert any("visual" in p.what for p in reader.check().problems)


@pytest.mark.guarantee("G16")
def test_index_of_another_space_is_refused_with_the_fix(tmp_path):
    store, _, _ = filled(tmp_path)
    store.close()
    path = tmp_path / "data" / "index" / "language.json"
    doc = json.loads(path.read_text())
    doc["space"] = "0123456789abcdef"
    path.write_text(json.dumps(doc))
    with pytest.raises(SpaceMismatchError, match="manage.py reindex"):
        Store(tmp_path / "data").indexes.get()
    fixed = Store(tmp_path / "data").lock("reindex")
    fixed.indexes.rebuild()
    fixed.close()
    assert Store(tmp_path / "data").indexes.get()["language"].ntotal == 36


def _language_scores(store, ids) -> np.ndarray:
    """Cosines of a structured query with every person, straight from the language index."""
    language = store.space.language()
    q = language.embed_query(language.interpret("hand: hold; head: drink with; verb: drink with"))
    return store.indexes.get()["language"].search(q[None], len(ids))


def test_space_records_the_language_vector_and_a_rebuilt_index_is_identical(tmp_path):
    store, _, ids = filled(tmp_path)
    space = store.space.config()
    assert space["language_vector"] == LANGUAGE_VECTOR == "margin-v5:24/32+white0.75+gate+senses+objects"
    assert space["pooling"] is None
    before = _language_scores(store, ids)
    store.indexes.rebuild()
    after = _language_scores(store, ids)
    store.close()
    reader = Store(tmp_path / "data")
    again = _language_scores(reader, ids)
    for got in (after, again):
        np.testing.assert_array_equal(got[0], before[0])
        np.testing.assert_array_equal(got[1], before[1])


def _make_legacy(data_dir, **changes) -> None:
    """Turn a store into one written before the language vector was recorded: no pooling or formula in its
    space, fingerprint and index manifests of that older space (``changes`` set too)."""
    _set_space(data_dir, drop=("pooling", "language_vector"), **changes)


def _set_space(data_dir, drop: tuple[str, ...] = (), **changes) -> None:
    """Rewrite a store's recorded space (keys in ``drop`` removed, ``changes`` set; fingerprint and index manifests
    follow), as an older version left it."""
    con = sqlite3.connect(data_dir / "a2v.sqlite")
    config = {**json.loads(con.execute("SELECT config FROM spaces").fetchone()[0]), **changes}
    for key in drop:
        config.pop(key)
    fp = space_fingerprint(config)
    con.execute("UPDATE spaces SET config=?, fingerprint=?", (json.dumps(config, sort_keys=True), fp))
    con.commit()
    con.close()
    for name in ("visual", "language"):
        path = data_dir / "index" / f"{name}.json"
        path.write_text(json.dumps({**json.loads(path.read_text()), "space": fp}))


def _reindexed(data_dir, caplog) -> Store:
    """Run ``manage.py reindex`` on an older store; it must say it migrated it. The store, opened to read."""
    with caplog.at_level(logging.WARNING, logger="a2v_search"):
        code, out, err = run_main("reindex", "--data-dir", data_dir)
    assert code == 0, err
    assert "migrated" in caplog.text
    return Store(data_dir)


def test_store_of_older_zero_shot_prompts_is_refused_with_the_fix_that_works(tmp_path):

    store, _, _ = filled(tmp_path)
    store.close()
    _set_space(tmp_path / "data", heads="zero-shot:v1:/models/clip")
    reader = Store(tmp_path / "data")
    with pytest.raises(SpaceMismatchError, match="made with the v1 prompts; .* v2 prompts.*new --data-dir") as e:
        reader.space.check({**reader.space.config(), "heads": "zero-shot:v2:/models/clip"})  # this version's heads
    assert "Omit the model flags" not in str(e.value)  # omitting them loads the same v2 heads: no fix
    with pytest.raises(SpaceMismatchError, match="Omit the model flags"):  # another CLIP model: flags are the cause
        reader.space.check({**reader.space.config(), "heads": "zero-shot:v2:/models/other"})
    reader.close()
    code, out, err = run_main("search", "--text", "hand: hold", "--data-dir", tmp_path / "data")
    assert code == 0, err  # as the message says, text queries keep working


@pytest.mark.parametrize("older", ["margin-v1:2/4", "margin-v2:12/8+text0.4", "margin-v3:12/8+white0.75+gate"])
def test_store_of_an_older_formula_is_refused_then_migrated_by_reindex(tmp_path, caplog, older, tiny_bert_dir):

    store, items, ids = filled(tmp_path)
    store.close()
    # as that release wrote it (its indexes hold its vectors; its phrases were the bare verb names)
    _set_space(tmp_path / "data", language_vector=older, text_model=str(tiny_bert_dir),
               phrases="v1|{part} {state}|{verb}")
    with pytest.raises(LegacySpaceError, match=f"older formula '{re.escape(older)}'.*manage.py reindex --data-dir"):
        Store(tmp_path / "data").space.language()
    code, out, err = run_main("search", "--text", "hand: hold", "--data-dir", tmp_path / "data")
    assert code != 0 and "manage.py reindex" in err and "Traceback" not in out + err
    writer = Store(tmp_path / "data").lock("test")
    try:
        with pytest.raises(LegacySpaceError):  # an ingest into it is refused the same way, not as other models
            writer.space.ensure(SPACE, random_language())
    finally:
        writer.close(save=False)
    reader = _reindexed(tmp_path / "data", caplog)
    space = reader.space.config()
    assert space["language_vector"] == LANGUAGE_VECTOR and space["pooling"] is None  # its pooling stays as recorded
    assert reader.space.fingerprint == space_fingerprint(space)
    persons = [p for m in items for p in m.persons]
    pasta, verbs = np.stack([p.pasta for p in persons]), np.stack([p.verbs for p in persons])
    lang = reader.space.language()
    assert lang.vector == LANGUAGE_VECTOR
    # this version's phrases (verb senses), embedded by the store's text model, replaced the older matrices
    assert space["phrases"] == prompts.phrases_ref() and reader.space.row().phrases == prompts.phrases_ref()
    expected = build_matrices(TextEncoder(str(tiny_bert_dir)))
    np.testing.assert_allclose(lang.m_verb, expected[1], atol=1e-6)
    np.testing.assert_allclose(lang.m_pasta, expected[0], atol=1e-6)
    assert reader.space.row().language_dim == lang.dim == space["language_dim"]
    assert repo.space_basis(reader.space.row()) is not None  # the new matrices' basis, recorded with them
    assert reader.space.phrase_basis().digest() == PhraseBasis.of(*expected).digest() == lang.basis.digest()
    was = LanguageSpace(lang.m_pasta, lang.m_verb, lang.text_model, vector=older).embed(pasta, verbs)
    now = lang.embed(pasta, verbs)
    # the migration changes the vectors (their formula, and an object block): the index must be rebuilt
    assert now.shape[1] == was.shape[1] + tx.N_OBJECTS + 2 and not np.allclose(was, now[:, :was.shape[1]], atol=1e-3)
    scores, got = reader.indexes.get()["language"].search(now[5][None], 3)
    assert got[0][0] == ids[5] and scores[0][0] == pytest.approx(1.0, abs=1e-5)


def test_a_store_without_the_object_block_migrates_without_its_text_model(tmp_path, caplog):
    """v4 (no object block) and v5 share their phrases: reindex adds the block from the stored objects alone."""
    rng = np.random.default_rng(3)
    cup, ball = tx.object_index("cup"), tx.object_index("sports_ball")
    persons = [random_person(rng) for _ in range(12)]
    persons[4].objects, persons[7].objects = ((cup, 0.9, (1.0, 2.0, 5.0, 6.0)),), ((ball, 0.8, None),)
    older = "margin-v4:24/32+white0.75+gate+senses"
    v4 = random_language()
    v4 = LanguageSpace(v4.m_pasta, v4.m_verb, text_model=str(tmp_path / "gone"), vector=older)
    store = writable_store(tmp_path / "data", language=v4)
    ids = store.write([media(f"/m/{i}.jpg", [p]) for i, p in enumerate(persons)])
    store.close()
    with pytest.raises(LegacySpaceError, match="no model is loaded"):
        Store(tmp_path / "data").space.language()
    reader = _reindexed(tmp_path / "data", caplog)
    lang = reader.space.language()
    assert lang.vector == LANGUAGE_VECTOR and lang.dim == v4.dim + tx.N_OBJECTS + 2  # objects, none, rest
    assert reader.space.row().language_dim == reader.space.config()["language_dim"] == lang.dim
    q = lang.embed_query(lang.interpret("object: cup"))
    scores, got = reader.indexes.get()["language"].search(q[None], 3)
    assert got[0][0] == ids[4] and scores[0][1] == 0  # only the person with a cup scores
    assert reader.space.phrase_basis().digest() == v4.basis.digest()  # phrases and basis kept


def test_a_migration_whose_text_model_is_gone_names_the_fix_and_changes_nothing(tmp_path):
    store, _, _ = filled(tmp_path)
    store.close()
    _set_space(tmp_path / "data", language_vector="margin-v3:12/8+white0.75+gate", text_model=str(tmp_path / "gone"),
               phrases="v1|{part} {state}|{verb}")
    before = Store(tmp_path / "data").space.config()
    with pytest.raises(LegacySpaceError, match="its text model .*gone embeds this version's phrases"):
        Store(tmp_path / "data").space.language()
    code, out, err = run_main("reindex", "--data-dir", tmp_path / "data")
    assert code != 0 and "gone" in err and "run reindex again" in err and "Traceback" not in out + err
    assert Store(tmp_path / "data").space.config() == before  # nothing was changed


def test_store_of_an_unknown_formula_is_refused_and_not_migrated(tmp_path):
    store, _, _ = filled(tmp_path)
    store.close()
    con = sqlite3.connect(tmp_path / "data" / "a2v.sqlite")
    config = {**json.loads(con.execute("SELECT config FROM spaces").fetchone()[0]), "language_vector": "margin-v9"}
    con.execute("UPDATE spaces SET config=?", (json.dumps(config, sort_keys=True),))
    con.commit()
    con.close()
    with pytest.raises(StoreError, match="'margin-v9'.*release that wrote it") as e:
        Store(tmp_path / "data").space.language()
    assert not isinstance(e.value, LegacySpaceError)


def test_store_made_before_the_language_vector_is_refused_with_the_fix(tmp_path):

    store, _, _ = filled(tmp_path)
    store.close()
    _make_legacy(tmp_path / "data")
    with pytest.raises(LegacySpaceError, match="manage.py reindex --data-dir"):
        Store(tmp_path / "data").space.language()  # every language vector: text, image and person queries
    code, out, err = run_main("search", "--text", "hand: hold", "--data-dir", tmp_path / "data")
    assert code != 0 and "manage.py reindex" in err and "Traceback" not in out + err
    assert len(err.strip().splitlines()) == 1
    with pytest.raises(LegacySpaceError):
        writable_store(tmp_path / "data")  # an ingest into it is refused the same way


def test_reindex_migrates_a_store_made_before_the_language_vector(tmp_path, caplog, tiny_bert_dir):

    store, items, ids = filled(tmp_path)
    store.close()
    _make_legacy(tmp_path / "data", text_model=str(tiny_bert_dir))
    reader = _reindexed(tmp_path / "data", caplog)
    space = reader.space.config()
    assert space["language_vector"] == LANGUAGE_VECTOR
    assert space["pooling"] == "mean"  # how its matrices were pooled before word pooling: queries must match
    assert reader.space.fingerprint == space_fingerprint(space)
    persons = [p for m in items for p in m.persons]
    expected = reader.space.index_vectors(np.stack([p.visual for p in persons]), np.stack([p.pasta for p in persons]),
                                    np.stack([p.verbs for p in persons]))["language"]
    q = expected[5]
    scores, got = reader.indexes.get()["language"].search(q[None], 3)
    assert got[0][0] == ids[5] and scores[0][0] == pytest.approx(1.0, abs=1e-5)
    assert not reader.check().problems
    reader.close()


def test_other_models_are_refused(tmp_path):
    store, _, _ = filled(tmp_path)
    with pytest.raises(SpaceMismatchError, match="another --data-dir") as err:
        store.space.check({**SPACE, "text_model": "other-bert"})
    assert "other-bert" in str(err.value) and "test-text" in str(err.value)
    store.close()


def test_filtered_search_matches_exact_search_on_the_allowed(tmp_path):
    store, items, ids = filled(tmp_path, n_media=20, per=2)
    persons = [(m.collection, p) for m in items for p in m.persons]
    visual = np.stack([p.visual for _, p in persons]).astype(np.float16).astype(np.float32)
    allowed = np.array([c == "b" for c, _ in persons])
    q = np.random.default_rng(3).normal(size=visual.shape[1]).astype(np.float32)
    q /= np.linalg.norm(q)
    result = Searcher(store).search({"visual": q}, {"visual": 1.0}, SearchOptions(k=10, collection="b"))
    assert len(result) == 10 and all(h.collection == "b" for h in result)
    exact = ids[allowed][np.argsort(-(visual[allowed] @ q), kind="stable")][:10]
    assert [h.person_id for h in result] == exact.tolist()
    store.close()


def test_where_filters_use_labels_and_blobs(tmp_path):
    rng = np.random.default_rng(1)
    store = writable_store(tmp_path / "data")
    people = [random_person(rng) for _ in range(30)]
    store.write([media(f"/x/{i}.jpg", [p]) for i, p in enumerate(people)])
    with store.db.session() as s:
        for expr, test in [("hand: hold>=0.5", lambda p: p.pasta[37] >= 0.5),
                           ("hand: hold<0.02", lambda p: p.pasta[37] < 0.02),
                           ("verb: ride > 0.3", lambda p: p.verbs[tx_verb("ride")] > 0.3)]:
            got = repo.filter_person_ids(s, make_filters(where=[expr]))
            want = [i + 1 for i, p in enumerate(people) if test(_f16(p))]
            assert got.tolist() == want, expr
    store.close()


def tx_verb(name):
    from a2v_search import taxonomy as tx

    return tx.verb_index(name)


def _f16(p):
    p.pasta = p.pasta.astype(np.float16).astype(np.float32)
    p.verbs = p.verbs.astype(np.float16).astype(np.float32)
    return p


@pytest.mark.guarantee("G9")
def test_second_writer_gets_a_clear_message(tmp_path):
    store, _, _ = filled(tmp_path)
    with pytest.raises(StoreLockedError, match=r"locked by PID \d+ \(test"):
        Store(tmp_path / "data").lock("ingest")
    store.close()
    Store(tmp_path / "data").lock("ingest").close()  # released: free again


def test_schema_version_and_foreign_files_are_refused(tmp_path):
    store, _, _ = filled(tmp_path)
    store.close()
    con = sqlite3.connect(tmp_path / "data" / "a2v.sqlite")
    con.execute("UPDATE meta SET value='99' WHERE key='schema_version'")
    con.commit()
    con.close()
    with pytest.raises(StoreError, match="schema version 99; this a2v-search reads version .*. Use the a2v-search "
                       "release that wrote it, or ingest again into a new --data-dir$"):
        Store(tmp_path / "data")
    other = tmp_path / "other"
    other.mkdir()
    sqlite3.connect(other / "a2v.sqlite").execute("CREATE TABLE x (a)").connection.commit()
    with pytest.raises(StoreError, match="not an a2v-search store; choose another --data-dir$"):
        Store(other)
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "a2v.sqlite").write_bytes(b"not a database at all" * 100)
    with pytest.raises(StoreError, match="not a readable a2v-search database"):
        Store(tmp_path / "junk")
    with pytest.raises(StoreError, match="no store at"):
        Store(tmp_path / "nothing")


def test_doctor_reports_and_repairs(tmp_path):
    store, _, ids = filled(tmp_path)
    idx = store.indexes.get()["visual"]
    idx.remove(ids[:4])  # FAISS loses four persons
    store.indexes.mark_changed(["visual"])
    store.indexes.save()
    store.close()
    report = Store(tmp_path / "data").check()
    assert not report.ok and "4 persons in SQLite not in FAISS" in report.problems[0].detail
    fixer = Store(tmp_path / "data").lock("doctor")
    assert fixer.check(repair=True).ok
    fixer.close()
    assert Store(tmp_path / "data").check().problems == []


def test_automatic_index_type_follows_the_store_size(tmp_path, monkeypatch):
    import a2v_search.indexes as indexes_module

    monkeypatch.setattr(indexes_module, "choose_spec", lambda n, dim, budget=None: "Flat" if n < 500 else "IVF16,Flat")
    rng = np.random.default_rng(5)
    store = writable_store(tmp_path / "data")
    store.write([media(f"/g/{i}.jpg", [random_person(rng)]) for i in range(300)])
    store.indexes.save()
    assert {idx.spec for idx in store.indexes.get().values()} == {"Flat"}
    people = [random_person(rng) for _ in range(700)]
    ids = store.write([media(f"/h/{i}.jpg", [p]) for i, p in enumerate(people)])
    store.indexes.save()
    assert {idx.spec for idx in store.indexes.get().values()} == {"IVF16,Flat"}
    store.close()
    reader = Store(tmp_path / "data")
    hit = Searcher(reader).search({"visual": people[7].visual}, {"visual": 1.0}, SearchOptions(k=1)).hits[0]
    assert hit.person_id == ids[7] and reader.check().problems == []


def test_a_growth_rebuild_never_holds_the_old_and_the_new_index_of_a_space(tmp_path, monkeypatch):
    """The writer's memory at a size threshold: the old index is let go before the new one is built from SQLite,
    so a space never has two indexes alive at once (twice its memory, at 1M persons hundreds of MB)."""
    import gc
    import weakref

    import a2v_search.indexes as indexes_module

    monkeypatch.setattr(indexes_module, "choose_spec", lambda n, dim, budget=None: "Flat" if n < 500 else "IVF16,Flat")
    rng = np.random.default_rng(6)
    store = writable_store(tmp_path / "data")
    store.write([media(f"/g/{i}.jpg", [random_person(rng)]) for i in range(300)])
    store.indexes.save()
    people = [random_person(rng) for _ in range(300)]
    ids = store.write([media(f"/h/{i}.jpg", [p]) for i, p in enumerate(people)])
    old = {name: weakref.ref(idx) for name, idx in store.indexes.get().items()}
    old_alive: list[bool] = []
    real_build = store.indexes.build

    def watching_build(name, spec=None):
        gc.collect()
        old_alive.append(old[name]() is not None)
        return real_build(name, spec)

    monkeypatch.setattr(store.indexes, "build", watching_build)
    store.indexes.save()
    assert old_alive == [False, False] and {idx.spec for idx in store.indexes.get().values()} == {"IVF16,Flat"}
    store.close()
    reader = Store(tmp_path / "data")
    hit = Searcher(reader).search({"visual": people[7].visual}, {"visual": 1.0}, SearchOptions(k=1)).hits[0]
    assert hit.person_id == ids[7] and reader.check().problems == []


def test_store_turns_db_and_index_errors_into_its_own_with_the_fix(tmp_path):
    """db/ and index/ raise their own errors; what leaves the Store is an a2v-search error naming the CLI fix."""
    store, _, _ = filled(tmp_path)
    with pytest.raises(InputError, match="invalid FAISS index spec 'NoSuchIndex42'") as err:
        store.indexes.rebuild(spec="NoSuchIndex42")
    assert isinstance(err.value.__cause__, IndexSpecError)
    bad = Filters(where=[(LABEL_PASTA, 0, "!=", 0.5)])  # a comparison parse_where never produces
    with pytest.raises(StoreError, match="unknown comparison '!='") as err, store.db.session() as s:
        repo.filter_person_ids(s, bad)
    assert isinstance(err.value.__cause__, DbError)
    store.close()
    folder = tmp_path / "data" / "index"
    (folder / json.loads((folder / "visual.json").read_text())["file"]).write_bytes(b"garbage")
    report = Store(tmp_path / "data").check()
    (problem,) = [p for p in report.problems if p.what == "index visual"]
    assert problem.detail.startswith("FAISS index 'visual'") and "is corrupt" in problem.detail
    assert problem.detail.endswith("; run `python manage.py reindex` to rebuild it from SQLite")
    with pytest.raises(IndexCorruptError) as err:  # the index package itself names no CLI command
        VectorIndex.load(folder, "visual")
    assert "manage.py" not in str(err.value)


# ------------------------------------------------------------------ the recorded language basis (issue 30)

#: run in a child process: numpy's SVD returns another valid decomposition (the signs of every other singular pair
#: flipped, as another LAPACK build may), or none at all; then the store answers text, free-text and person queries
_OTHER_SVD = """
import json, sys
import numpy as np
real = np.linalg.svd
def flipped(a, *args, **kw):
    u, s, vt = real(a, *args, **kw)
    u, vt = u.copy(), vt.copy()
    u[..., 1::2] *= -1
    vt[..., 1::2, :] *= -1
    return u, s, vt
def refused(*args, **kw):
    raise AssertionError("SVD called")
np.linalg.svd = {"flipped": flipped, "refused": refused, "real": real}[sys.argv[2]]
from a2v_search.api import A2VSearch
with A2VSearch.open(sys.argv[1]) as api:
    out = [[(h.person_id, round(h.score, 4)) for h in r.hits] for r in (
        api.search_text("hand: hold; head: drink with; verb: drink with", k=8),
        api.search_text("a person drinking from a cup", k=8), api.search_similar(7, k=8))]
print(json.dumps(out))
"""


def _answers(data_dir, svd: str) -> list:
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", _OTHER_SVD, str(data_dir), svd], capture_output=True, text=True,
                          env=env, cwd=root, timeout=600)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.fixture(scope="module")
def text_store(tmp_path_factory, tiny_bert_dir):
    """A store of 300 persons (more than one search's candidate pool) whose language space is the tiny BERT's."""
    data = tmp_path_factory.mktemp("basis") / "data"
    rng = np.random.default_rng(3)
    space = {**SPACE, "text_model": str(tiny_bert_dir), "spec": {**SPACE["spec"], "text_model": str(tiny_bert_dir)}}
    store = Store(data, create=True).lock("test")
    store.space.ensure(space, LanguageSpace.from_text_model(str(tiny_bert_dir)))
    store.write([media(f"/m/{i}.jpg", [random_person(rng) for _ in range(3)]) for i in range(100)])
    store.close()
    return data


@pytest.mark.guarantee("G35")
def test_a_store_answers_the_same_where_the_svd_returns_other_signs_or_is_never_called(text_store):
    ours = _answers(text_store, "real")
    assert all(len(hits) == 8 for hits in ours) and ours[0][0][1] > 0.4  # 1 is sqrt(3/2) times out of reach: no object
    assert _answers(text_store, "flipped") == ours  # another LAPACK build: the same persons, the same scores
    assert _answers(text_store, "refused") == ours  # opening and searching never recompute the basis
    with pytest.MonkeyPatch.context() as mp:  # nor does writing
        mp.setattr(np.linalg, "svd", lambda *a, **kw: pytest.fail("SVD called"))
        writer = Store(text_store, create=True).lock("test")
        writer.write([media("/m/new.jpg", [random_person(np.random.default_rng(9))])])
        writer.close()


def test_the_computed_basis_does_not_depend_on_the_svd_signs():
    lang = random_language()
    real = np.linalg.svd

    def negated(a, **kw):  # every singular pair with the other sign: an equally valid SVD
        u, s, vt = real(a, **kw)
        return -u, s, -vt

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(np.linalg, "svd", negated)
        other = LanguageSpace(lang.m_pasta, lang.m_verb, "test-text")
    np.testing.assert_array_equal(other.basis_pasta, lang.basis_pasta)
    assert other.basis.digest() == lang.basis.digest()


def _as_older_store(data_dir) -> None:
    """What a version before the recorded basis left: schema 3, language manifest without a basis."""
    from helpers import downgrade

    downgrade(data_dir / "a2v.sqlite", 3)
    path = data_dir / "index" / "language.json"
    manifest = json.loads(path.read_text())
    del manifest["basis"]
    path.write_text(json.dumps(manifest))


@pytest.mark.guarantee("G27", "G35")
def test_an_older_store_built_in_another_basis_answers_right_and_records_its_basis_once(tmp_path, caplog):
    from a2v_search.models.language import PhraseBasis

    lang = random_language()
    b = lang.basis
    flip = np.where(np.arange(len(b.pasta)) % 2, -1, 1)[:, None].astype(np.float32)
    other = PhraseBasis(b.pasta * flip, b.verb, b.s_pasta, b.s_verb)  # another machine's SVD built its indexes
    data = tmp_path / "data"
    rng = np.random.default_rng(0)
    store = writable_store(data, LanguageSpace(lang.m_pasta, lang.m_verb, "test-text", basis=other))
    store.write([media(f"/m/{i}.jpg", [random_person(rng) for _ in range(3)]) for i in range(20)])
    store.close()
    _as_older_store(data)

    def expected(store) -> np.ndarray:  # the ranking by exact cosines in the store's basis
        with store.db.session() as s:
            batch = next(repo.iter_vectors(s))
        q = store.space.language().embed_query(store.space.language().interpret("hand: hold; verb: drink with"))
        return batch.ids[np.argsort(-(store.space.language().embed(batch.pasta, batch.verbs) @ q), kind="stable")][:5]

    saved, _ = VectorIndex.load(data / "index", "language")
    q = lang.embed_query(lang.interpret("hand: hold; verb: drink with"))
    assert saved.search(q[None], 5)[1][0].tolist() != expected(Store(data)).tolist()  # what the old version found
    with caplog.at_level(logging.WARNING, logger="a2v_search"):
        reader = Store(data)
        assert reader.space.phrase_basis().digest() == b.digest()  # computed here, signs fixed: not the flipped one
        got = _top(reader, "hand: hold; verb: drink with")
    assert "before its language basis was recorded" in caplog.text and "reindex" in caplog.text
    assert got == expected(reader).tolist()
    reader.close()
    con = sqlite3.connect(data / "a2v.sqlite")
    assert con.execute("SELECT basis_pasta FROM spaces").fetchone() == (None,)  # a reader writes nothing
    con.close()
    writer = Store(data, create=True).lock("test")  # the first writer records the basis and saves the index
    writer.indexes.get()
    writer.close()
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="a2v_search"):
        again = Store(data)
        assert _top(again, "hand: hold; verb: drink with") == got
        assert again.check().problems == []
    assert caplog.text == ""
    assert repo.space_basis(again.space.row()) is not None
    assert json.loads((data / "index" / "language.json").read_text())["basis"] == b.digest()
    again.close()


def _top(store, text: str, k: int = 5) -> list[int]:
    lang = store.space.language()
    _, ids = store.indexes.get()["language"].search(lang.embed_query(lang.interpret(text))[None], k)
    return ids[0].tolist()


@pytest.mark.guarantee("G25", "G27")
def test_a_reader_upgrades_an_older_store_only_under_the_write_lock(tmp_path):
    from helpers import downgrade

    from a2v_search.lock import WriteLock
    from db.schema import SCHEMA_VERSION

    store, _, _ = filled(tmp_path)
    store.close()
    downgrade(tmp_path / "data" / "a2v.sqlite", 3)

    def version() -> str:
        con = sqlite3.connect(tmp_path / "data" / "a2v.sqlite")
        try:
            return con.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()[0]
        finally:
            con.close()

    with WriteLock(tmp_path / "data", "ingest"), pytest.raises(StoreLockedError, match=r"locked by PID \d+ \(ingest"):
        Store(tmp_path / "data")  # e.g. serve, while an older release's ingest writes: it never writes beside it
    assert version() == "3"
    reader = Store(tmp_path / "data")  # alone: upgraded once, under the lock
    assert version() == str(SCHEMA_VERSION) and reader.indexes.get()["visual"].ntotal == 36
    reader.close()
    with WriteLock(tmp_path / "data", "ingest"):  # an upgraded store's readers never need the lock
        Store(tmp_path / "data").close()


def test_checkpoints_run_beside_the_writer_and_the_wal_stays_short(tmp_path, monkeypatch):
    """The WAL is copied into the database by a thread of its own every CHECKPOINT_EVERY writes
    (db.engine.Checkpointer), and restarts from its beginning once it holds WAL_RESTART_FRAMES: it does not grow
    with the store."""
    monkeypatch.setattr(engine, "WAL_RESTART_FRAMES", 40)
    monkeypatch.setattr(engine, "CHECKPOINT_EVERY", 4)
    rng = np.random.default_rng(4)
    store = writable_store(tmp_path / "data")
    wal = tmp_path / "data" / "a2v.sqlite-wal"
    sizes = []
    for b in range(60):
        store.write([media(f"/x/{b}.jpg", [random_person(rng) for _ in range(6)])])
        sizes.append(wal.stat().st_size // 8192)
    # a write adds ~28 pages: at most 40 pages, then those of the writes until a checkpoint copied them all (one
    # every CHECKPOINT_EVERY writes); without the restart the file grows to ~550 pages in these 60 writes
    assert sizes[0] > 0 and max(sizes) <= 40 + (engine.CHECKPOINT_EVERY + 2) * 30 + 30
    store.close()
    assert not wal.exists() or wal.stat().st_size == 0  # the last checkpoint, at close
    with sqlite3.connect(tmp_path / "data" / "a2v.sqlite") as con:
        assert con.execute("SELECT count(*) FROM persons").fetchone() == (360,)


def test_a_failed_checkpoint_is_logged_and_leaves_the_pages_in_the_wal(tmp_path, caplog, monkeypatch):
    monkeypatch.setattr(engine, "CHECKPOINT_EVERY", 1)
    checkpoints = engine.Checkpointer(tmp_path / "missing" / "a2v.sqlite")  # nothing to open: the checkpoint fails
    checkpoints._wrote.value = True
    with caplog.at_level(logging.WARNING, logger="db.engine"):
        checkpoints.after_commit()
        checkpoints.close()
    assert "checkpoint of" in caplog.text and "the next one tries again" in caplog.text


@pytest.mark.parametrize("name", ["runs?1", "100%41", "a #1"])
def test_a_data_dir_named_like_a_url_holds_its_store(tmp_path, name):
    """The database is the file in the data directory whatever its name: SQLite's URL syntax (? starts a query, %41
    is an escape, # a fragment) plays no part, for the writer, its checkpoints and readers."""
    rng = np.random.default_rng(6)
    store = writable_store(tmp_path / name)
    store.write([media(f"/x/{j}.jpg", [random_person(rng) for _ in range(3)]) for j in range(4)])
    store.close()
    assert [p.name for p in tmp_path.iterdir()] == [name]  # nothing beside it (a "runs" file, say)
    assert (tmp_path / name / "a2v.sqlite").stat().st_size > 0
    reader = Store(tmp_path / name)
    assert reader.summary()[0]["persons"] == 12
    reader.close()
