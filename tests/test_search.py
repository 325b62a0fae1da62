from __future__ import annotations

import json

import numpy as np
import pytest
from helpers import run_main
from PIL import Image

from a2v_search.api import A2VSearch
from a2v_search.errors import InputError, QueryError
from a2v_search.models.language import LanguageSpace
from a2v_search.search import SearchOptions, parse_box, parse_weights
from a2v_search.testing.media import write_images
from a2v_search.testing.profiles import FREE_TEXT, PROFILES, STRUCTURED, profile_records
from db import repo, sql


def profile_of(hit) -> str:
    return hit.path.split("/")[2]


@pytest.fixture(scope="module")
def semantic(tmp_path_factory, tiny_clip_dir, minilm_dir):
    """A store of persons with known PaSta profiles (import API), language space of the real MiniLM model."""
    data = tmp_path_factory.mktemp("semantic") / "data"
    api = A2VSearch.open(data, model=str(tiny_clip_dir), text_model=str(minilm_dir), device="cpu")
    report = api.import_records(profile_records(visual_dim=16, copies=3))
    assert report.failures == [] and report.persons_added == 3 * len(PROFILES)
    yield api
    api.close()


@pytest.mark.parametrize("text,profile", sorted(FREE_TEXT.items()))
def test_free_text_ranks_the_matching_profile_first(semantic, text, profile):
    result = semantic.search_text(text, k=3)
    assert [profile_of(h) for h in result] == [profile] * 3
    assert result.query["mode"] == "free" and result.query["pasta"] and result.query["verbs"]


@pytest.mark.parametrize("text,profile", sorted(STRUCTURED.items()))
def test_structured_pasta_text_ranks_exactly(semantic, text, profile):
    result = semantic.search_text(text, k=3)
    assert [profile_of(h) for h in result] == [profile] * 3
    assert result.query["mode"] == "structured"
    named = {n for n, _ in result.query["pasta"]}
    assert named == {part.split("=")[0].strip() for part in text.split(";")}


def test_one_search_door_runs_each_typed_case(semantic):
    text = "drinking from a cup"
    assert [h.person_id for h in semantic.search(text=text, k=4)] == \
        [h.person_id for h in semantic.search_text(text, k=4)]
    first = semantic.search_text(text, k=1).hits[0].person_id
    opts = SearchOptions(k=3, per_media=True)
    assert [h.person_id for h in semantic.search(person=first, weights="0,1", options=opts)] == \
        [h.person_id for h in semantic.search_similar(first, weights=(0.0, 1.0), options=opts)]
    for given in ({}, {"text": text, "person": first}, {"text": text, "image": "x.jpg"}):
        with pytest.raises(QueryError, match="exactly one of text, clip_text, image, person"):
            semantic.search(**given)


@pytest.mark.parametrize("value,want", [("1,2,3,4", [1, 2, 3, 4]), ((0, 0.5, 10, 20.5), [0, 0.5, 10, 20.5]),
                                        (None, None), ("  ", None)])
def test_box_parser_reads_boxes(value, want):
    assert parse_box(value) == want


@pytest.mark.parametrize("value", ["1,2,3", "1,2,3,x", "5,5,1,1", "0,0,nan,4", (0, 0, 0, 1), "0,0,inf,1"])
def test_box_parser_refuses_what_is_no_box(value):
    with pytest.raises(InputError, match="x2 > x1 and y2 > y1"):
        parse_box(value)


@pytest.mark.parametrize("value,want", [("0.5,0.5", (0.5, 0.5)), ("1,0,2", (1.0, 0.0, 2.0)), ((0, 1), (0.0, 1.0))])
def test_weights_parser_reads_two_or_three(value, want):
    assert parse_weights(value) == want


@pytest.mark.parametrize("value", ["1", "1,2,3,4", "0,0", "-1,2", "nan,1", "a,b", (1,)])
def test_weights_parser_refuses_the_rest(value):
    with pytest.raises(QueryError, match="two or three numbers"):
        parse_weights(value)


@pytest.mark.parametrize("fields,words", [({"k": 0}, "-k"), ({"offset": -1}, "--offset"), ({"kind": "audio"}, "--kind"),
                                          ({"group": "media"}, "--group"), ({"moment_frames": 0}, "--moment-frames"),
                                          ({"min_score": float("nan")}, "--min-score")])
def test_search_options_check_themselves(fields, words):
    with pytest.raises(QueryError, match=words):
        SearchOptions(**fields)
    with pytest.raises(QueryError, match=words):
        SearchOptions.of(SearchOptions(), **fields)


@pytest.fixture(scope="module")
def noisy(tmp_path_factory, tiny_clip_dir, minilm_dir):
    """The same profiles with a background U(0, 0.3) on every other PaSta and verb, as real heads leave it."""
    data = tmp_path_factory.mktemp("noisy") / "data"
    api = A2VSearch.open(data, model=str(tiny_clip_dir), text_model=str(minilm_dir), device="cpu")
    api.import_records(profile_records(visual_dim=16, copies=3, noise=0.3))
    yield api
    api.close()


def test_text_queries_hold_on_a_noisy_background(noisy):
    queries = {**FREE_TEXT, **STRUCTURED}
    for text, profile in queries.items():
        assert [profile_of(h) for h in noisy.search_text(text, k=3)] == [profile] * 3, text
    # the same persons as plain p @ M vectors (the formula before margins) lose several of these queries
    store = noisy.store
    language = store.space.language()
    with store.db.session() as s:
        rows = repo.fetch_persons(s, repo.person_ids(s))
    first = LanguageSpace(language.m_pasta, language.m_verb, language.text_model, encoder=language.encoder(),
                          vector="p@M")
    plain = first.embed(np.stack([r.pasta for r in rows]), np.stack([r.verbs for r in rows]))
    missed = 0
    for text, profile in queries.items():
        order = np.argsort(-(plain @ first.embed_query(first.interpret(text))), kind="stable")[:3]
        missed += [rows[i].path.split("/")[2] for i in order] != [profile] * 3
    assert missed >= 3


def test_interpretation_carries_weights(semantic):
    q = semantic.search_text("Hand: Hold=2; head:drink_with", k=1).query
    assert q["pasta"] == [["hand: hold", 2.0], ["head: drink with", 1.0]]


def test_filters_return_k_hits_and_pages_are_disjoint(semantic):
    full = semantic.search_text("drinking from a cup", k=36)
    assert len(full) == 36
    pages = [semantic.search_text("drinking from a cup", k=5, offset=o) for o in (0, 5, 10, 15)]
    ids = [h.person_id for page in pages for h in page]
    assert len(ids) == len(set(ids)) == 20
    assert ids == [h.person_id for h in full][:20]  # pages are slices of one ranking
    assert [h.rank for h in pages[2]] == [11, 12, 13, 14, 15]
    odd = semantic.search_text("kicking a ball", k=10, collection="odd")
    assert len(odd) == 10 and all(h.collection == "odd" for h in odd)
    assert profile_of(odd[0]) == "kick"
    where = semantic.search_text("sitting on a chair", k=10, where=["hip: sit on>=0.5"])
    assert len(where) == 6 and {profile_of(h) for h in where} == {"sit_chair", "ride_bike"}
    none = semantic.search_text("kneeling", k=10, where=["leg: kneel>=0.95"])
    assert len(none) == 0
    per_media = semantic.search_text("kneeling", k=5, per_media=True)
    assert len({h.media_id for h in per_media}) == 5
    scored = semantic.search_text("kneeling", k=36, min_score=0.5)
    assert 0 < len(scored) < 36 and all(h.score >= 0.5 for h in scored)
    globbed = semantic.search_text("kneeling", k=36, path="/profiles/kneel/*")
    assert len(globbed) == 3 and all(profile_of(h) == "kneel" for h in globbed)


def test_search_options_object_and_keywords_give_the_same_hits(semantic):
    opts = SearchOptions(k=4, offset=2, collection="odd", min_score=0.0)
    by_object = semantic.search_text("kicking a ball", options=opts)
    by_keywords = semantic.search_text("kicking a ball", k=4, offset=2, collection="odd", min_score=0.0)
    assert [h.person_id for h in by_object] == [h.person_id for h in by_keywords]
    assert len(by_object) == 4 and all(h.collection == "odd" for h in by_object)
    assert [h.rank for h in by_object] == [3, 4, 5, 6]
    narrowed = semantic.search_text("kicking a ball", 2, options=opts)  # keywords override the object's fields
    assert [h.person_id for h in narrowed] == [h.person_id for h in by_object][:2]
    similar = semantic.search_similar(by_object[0].person_id, options=opts, weights=(0.0, 1.0))
    assert len(similar) == 4 and by_object[0].person_id not in {h.person_id for h in similar}
    with pytest.raises(TypeError, match="colection"):
        semantic.search_text("kicking a ball", colection="odd")


def test_where_accepts_verbs_and_below_comparisons(semantic):
    result = semantic.search_text("hugging someone", k=50, where=["verb: hug<0.5", "arm: hug < 0.5"])
    assert len(result) == 33 and "hug" not in {profile_of(h) for h in result}


def test_fused_pages_are_slices_of_one_ranking_without_the_excluded(semantic):
    """Two spaces: candidates are re-scored and only a page's worth (and what ``exclude`` may drop) is kept; the
    pages are still slices of the one ranking, the query person in none."""
    first = semantic.search_text("drinking from a cup", k=1)[0].person_id
    full = [h.person_id for h in semantic.search_similar(first, k=30, weights=(0.5, 0.5))]
    pages = [semantic.search_similar(first, k=4, offset=o, weights=(0.5, 0.5)) for o in (0, 4, 8)]
    assert [h.person_id for page in pages for h in page] == full[:12] and first not in full and len(full) == 30


def test_search_similar_and_clip_text(semantic):
    first = semantic.search_text("kicking a ball", k=1).hits[0]
    similar = semantic.search_similar(first.person_id, k=2, weights=(0.0, 1.0))
    assert first.person_id not in [h.person_id for h in similar]
    assert [profile_of(h) for h in similar] == ["kick", "kick"]
    clip = semantic.search_clip_text("a person kicking a ball", k=4)
    assert len(clip) == 4 and clip.query["type"] == "clip_text"


@pytest.mark.parametrize("call,error,match", [
    (lambda a: a.search_text("", k=3), QueryError, "empty"),
    (lambda a: a.search_text("hand: hodl", k=3), QueryError, "hand: hold"),
    (lambda a: a.search_text("foot: no_interaction", k=3), QueryError, "no meaning"),
    (lambda a: a.search_text("hand: hold=abc", k=3), QueryError, "not a number"),
    (lambda a: a.search_text("kneeling", k=3, where=["hand: hodl>0.5"]), QueryError, "hand: hold"),
    (lambda a: a.search_text("kneeling", k=3, where=["hand: hold"]), QueryError, "write it like"),
    (lambda a: a.search_text("kneeling", k=0), QueryError, "-k"),
    (lambda a: a.search_similar(99999), QueryError, "no person with id 99999"),
    (lambda a: a.search_image("/no/such/image.jpg"), InputError, "does not exist"),
])
def test_clear_errors(semantic, call, error, match):
    with pytest.raises(error, match=match):
        call(semantic)


def test_empty_store_and_unreadable_query_image(tmp_path, tiny_clip_dir, tiny_bert_dir):
    api = A2VSearch.open(tmp_path / "none", model=str(tiny_clip_dir), text_model=str(tiny_bert_dir))
    with pytest.raises(QueryError, match="ingest something first"):
        api.search_text("hand: hold")
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8\xff garbage")
    write_images(tmp_path / "in", 1)
    api.ingest([tmp_path / "in"], detector="none", workers=0)
    with pytest.raises(InputError, match="cannot read query image"):
        api.search_image(bad, detector="none")


def test_image_query_boxes_and_sheet(tmp_path, tiny_clip_dir, tiny_bert_dir):
    api = A2VSearch.open(tmp_path / "data", model=str(tiny_clip_dir), text_model=str(tiny_bert_dir))
    paths = write_images(tmp_path / "in", 4, w=80, h=60)
    api.ingest([tmp_path / "in"], detector="none", workers=0)
    for p in paths:
        assert api.search_image(p, detector="none", k=1).hits[0].path == str(p)
    again = A2VSearch.open(tmp_path / "data").search_image(paths[3], k=1)  # the store's ingest detector: none
    assert again.query["box"] is None and again.hits[0].path == str(paths[3])
    boxed = api.search_image(paths[0], box=[10, 5, 50, 55], k=2)
    assert boxed.query["box"] == [10, 5, 50, 55] and len(boxed) == 2
    code, _, err = run_main("search", "--image", paths[1], "--box", "50,5,10,55", "--data-dir", tmp_path / "data")
    assert code != 0 and "x2 > x1 and y2 > y1" in err and "Traceback" not in err  # the parser the API uses
    code, out, err = run_main("search", "--image", paths[1], "--detector", "none", "--data-dir", tmp_path / "data",
                              "-k", "3", "--sheet", tmp_path / "sheet.png", "--json")
    assert code == 0, err
    doc = json.loads(out)
    assert set(doc) == {"query", "results"} and doc["results"][0]["path"] == str(paths[1])
    assert set(doc["results"][0]) == {"rank", "person_id", "score", "path", "box", "frame_index", "t_sec", "pasta",
                                      "verbs", "track", "objects"}
    assert doc["results"][0]["objects"] == []  # --detector none stores no objects
    assert len(doc["results"][0]["pasta"]) == 5 and len(doc["results"][0]["verbs"]) == 5
    sheet = Image.open(tmp_path / "sheet.png")
    assert sheet.size[0] > 0 and np.asarray(sheet).std() > 0


def test_cli_search_errors_are_one_line(tmp_path, semantic):
    data = semantic.data_dir
    code, _, err = run_main("search", "--text", "hand: hodl", "--data-dir", data)
    assert code == 1 and err.count("\n") == 1 and "hand: hold" in err and "Traceback" not in err
    code, _, err = run_main("search", "--text", "x", "--person", "3", "--data-dir", data)
    assert code == 2 and "exactly one" in err
    code, _, err = run_main("search", "--text", "kneeling", "--data-dir", data, "--text-model", "bert-base-uncased")
    assert code == 1 and "contradicts this store" in err
    code, out, _ = run_main("search", "--text", "kneeling", "--data-dir", data, "-k", "2")
    assert code == 0 and "query read as free text" in out and "kneel" in out
    assert "(best match with a PaSta 0." in out and ", a verb 0." in out


def test_predict_with_model_flags_ignores_the_store(semantic, tiny_clip_dir, tiny_bert_dir, tmp_path):
    from a2v_search.errors import SpaceMismatchError

    [img] = write_images(tmp_path / "in", 1)
    other = A2VSearch.open(semantic.data_dir, model=str(tiny_clip_dir), text_model=str(tiny_bert_dir))
    persons = other.predict(img, detector="none")  # stores nothing: the store's models do not matter
    assert len(persons) == 1 and len(persons[0]["pasta"]) == 93
    with pytest.raises(SpaceMismatchError, match="contradicts this store"):
        other.search_text("kneeling")


def test_profile_records_are_the_same_in_every_process():
    """The seeded profiles must not depend on Python's per-process string hashing."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).parents[1]
    code = ("import json; from a2v_search.testing import profiles; "
            "print(json.dumps(profiles.profile_records(visual_dim=4, copies=2)))")
    outs = [subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                           env={**os.environ, "PYTHONHASHSEED": seed, "PYTHONPATH": str(root)}).stdout
            for seed in ("1", "2")]
    assert outs[0] == outs[1] and json.loads(outs[0]) == profile_records(visual_dim=4, copies=2)


def test_a_quantised_index_alone_gives_the_exact_ranking(tmp_path, tiny_clip_dir, minilm_dir):
    """Text queries on an SQ8 language index re-score a small pool (search.SINGLE_POOL) from SQLite: the pages and
    scores are those of exact (Flat) search on the same persons."""
    api = A2VSearch.open(tmp_path / "data", model=str(tiny_clip_dir), text_model=str(minilm_dir), device="cpu")
    try:
        rng = np.random.default_rng(5)  # the profiles, and persons doing a bit of everything around them
        api.import_records(profile_records(visual_dim=16, copies=6, noise=0.3) + [
            {"path": f"/mixed/{i}.jpg", "width": 100, "height": 200,
             "persons": [{"box": [10, 10, 90, 190], "pasta": (rng.random(93) ** 3).tolist(),
                          "verbs": (rng.random(157) ** 3).tolist(), "visual": rng.normal(size=16).tolist()}]}
            for i in range(1100)])  # SQ8 trains from 1,000 vectors (a staging Flat index before)
        texts = sorted(FREE_TEXT)[:6]

        def pages(spec: str) -> list:
            assert api.reindex(spec)["language"] == spec
            assert not api.store.indexes.get()["language"].needs_training  # SQ8 codes, not the staging Flat index
            return [api.search_text(t, k=10, offset=o) for t in texts for o in (0, 10, 70)]

        quantised, exact = pages("SQ8"), pages("Flat")
        assert [[h.person_id for h in p] for p in quantised] == [[h.person_id for h in p] for p in exact]
        scores = np.array([[h.score for h in p] for p in quantised]), np.array([[h.score for h in p] for p in exact])
        assert scores[0].shape == (18, 10) and np.abs(scores[0] - scores[1]).max() < 1e-6  # 8-bit codes: ~1e-3
    finally:
        api.close()


def test_candidate_reads_are_the_same_without_sqlite_json(semantic, monkeypatch):
    """Re-scoring and hits read candidates through one bound JSON list; an SQLite without JSON takes IN lists."""
    store = semantic.store
    ids = [5, 1, 999999, 3, 2]  # in the caller's order; an unknown id left out

    def read():
        with store.db.session() as s:
            return repo.fetch_vectors(s, ids), repo.fetch_persons(s, ids)

    fast = read()
    # an SQLite without json_each: the JSON statement fails and the IN list is taken
    monkeypatch.setattr(repo, "_VECTORS_OF", "SELECT id FROM persons WHERE id IN (SELECT value FROM no_json_here(?))")
    via_error = read()[0]
    assert via_error.ids.tolist() == [5, 1, 3, 2]
    np.testing.assert_array_equal(via_error.visual, fast[0].visual)
    monkeypatch.setattr(sql, "JSON_LISTS", False)
    slow = read()
    assert fast[0].ids.tolist() == slow[0].ids.tolist() == [5, 1, 3, 2]
    for name in ("visual", "pasta", "verbs", "norms", "objects"):
        np.testing.assert_array_equal(getattr(fast[0], name), getattr(slow[0], name))
    assert [r.id for r in fast[1]] == [r.id for r in slow[1]] == [5, 1, 3, 2]
    for f, w in zip(fast[1], slow[1], strict=True):
        assert (f.path, f.box, f.track_id, f.objects) == (w.path, w.box, w.track_id, w.objects)
        np.testing.assert_array_equal(f.visual, w.visual)
