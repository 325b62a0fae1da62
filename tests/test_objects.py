"""The objects of a person's activity: the rule that ties objects to persons, the detector model, boxes files,
import, storage (and the upgrade of older stores), filters, and what search, the API and export show."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import numpy as np
import pytest
from helpers import downgrade, ingest, media, random_person, run_main, writable_store
from PIL import Image

from a2v_search import taxonomy as tx
from a2v_search.api import A2VSearch
from a2v_search.detect import BoxesFile, ModelDetector
from a2v_search.errors import QueryError
from a2v_search.objects import MAX_OBJECTS_PER_PERSON, affinity, object_vector, tie_objects
from a2v_search.search import make_filters
from a2v_search.store import Store
from db import repo, sql
from db.engine import get_meta
from db.schema import SCHEMA_VERSION
from db.values import person_problem

ROOT = Path(__file__).resolve().parents[1]
CUP, BALL, TABLE = tx.object_index("cup"), tx.object_index("sports ball"), tx.object_index("dining_table")


# ------------------------------------------------------------------ the rule


def test_affinity_ranks_overlap_above_any_gap_and_drops_what_is_out_of_reach():
    person = (100, 100, 200, 300)  # size 200 (its longer side): reach 0.5 * 200 = 100 pixels
    assert affinity(person, (120, 150, 140, 170)) == 1.0  # held in front: wholly inside
    assert affinity(person, (180, 150, 220, 170)) == pytest.approx(0.75)  # half inside
    assert affinity(person, (250, 150, 270, 170)) == pytest.approx(0.5 * (1 - 50 / 100))  # 50 px to the right
    assert affinity(person, (230, 340, 250, 360)) == pytest.approx(0.5 * (1 - 50 / 100))  # 30 right, 40 down: 50
    assert affinity(person, (300, 150, 320, 170)) == 0.0  # 100 px away: out of reach
    assert affinity(person, (200, 150, 220, 170)) == pytest.approx(0.5)  # touching: no overlap, no gap


def test_tie_objects_scores_by_detector_score_times_affinity_and_shares_objects():
    left, right = (0, 0, 100, 200), (150, 0, 250, 200)
    objects = [(CUP, 0.8, (90, 50, 110, 70)),  # half in the left person, 40 px from the right one
               (BALL, 0.9, (220, 150, 240, 170)),  # inside the right person, 120 px from the left one
               (TABLE, 1.0, (600, 0, 700, 100))]  # far from both
    ties = tie_objects([left, right], objects)
    assert ties[0] == ((CUP, pytest.approx(0.8 * 0.75), (90.0, 50.0, 110.0, 70.0)),)
    assert [o[0] for o in ties[1]] == [BALL, CUP]  # the cup belongs to both persons; best first
    assert ties[1][0][1] == pytest.approx(0.9) and ties[1][1][1] == pytest.approx(0.8 * 0.5 * (1 - 40 / 100))
    assert tie_objects([None], objects) == [tuple((c, p, tuple(map(float, b))) for c, p, b in
                                                  sorted(objects, key=lambda o: -o[1]))[:MAX_OBJECTS_PER_PERSON]]
    many = [(c, 0.5 + c / 200, (10, 10, 20, 20)) for c in range(6)]
    assert [o[0] for o in tie_objects([left], many)[0]] == [5, 4, 3, 2]  # at most 4, best first


def test_object_vector_keeps_the_best_p_of_each_class():
    v = object_vector([(CUP, 0.4, None), (CUP, 0.9, (0, 0, 1, 1)), (BALL, 0.3, None)])
    assert v.shape == (80,) and v.dtype == np.float32
    assert v[CUP] == pytest.approx(0.9) and v[BALL] == pytest.approx(0.3) and np.count_nonzero(v) == 2
    assert not object_vector(()).any()


# ------------------------------------------------------------------ detectors


class _Found:
    """What a transformers post-processor returns for one image: boxes, labels and scores (tensors)."""

    def __init__(self, rows):
        import torch

        self.result = {"boxes": torch.tensor([r[0] for r in rows], dtype=torch.float32),
                       "labels": torch.tensor([r[1] for r in rows]), "scores": torch.tensor([r[2] for r in rows])}


@pytest.fixture
def cup_detector(tiny_detector_dir, monkeypatch):
    """The tiny YOLOS model (labels N/A, person, cup) whose post-processing finds two persons, a cup between them,
    a cup far away and an N/A box, in every image."""
    det = ModelDetector(str(tiny_detector_dir), "cpu")
    found = _Found([([10, 10, 90, 150], 1, 0.95), ([110, 10, 190, 150], 1, 0.9), ([80, 60, 100, 80], 2, 0.8),
                    ([350, 10, 380, 40], 2, 0.7), ([0, 0, 50, 50], 0, 0.99)])
    monkeypatch.setattr(det.processor, "post_process_object_detection",
                        lambda outputs, threshold, target_sizes: [found.result for _ in target_sizes])
    return det


CUP_LEFT = (CUP, pytest.approx(0.8 * 0.75), (80.0, 60.0, 100.0, 80.0))  # half inside the left person
CUP_RIGHT = (CUP, pytest.approx(0.8 * 0.5 * (1 - 10 / 70)), (80.0, 60.0, 100.0, 80.0))  # 10 px from the right one


def test_the_detector_model_keeps_objects_and_ties_them_to_persons(cup_detector, tmp_path):
    frame = np.zeros((160, 400, 3), np.uint8)
    assert cup_detector.detect([frame]) == [[([10.0, 10.0, 90.0, 150.0], pytest.approx(0.95), (CUP_LEFT,)),
                                             ([110.0, 10.0, 190.0, 150.0], pytest.approx(0.9), (CUP_RIGHT,))]]
    Image.new("RGB", (400, 160), "white").save(tmp_path / "two.png")
    report = ingest(tmp_path / "data", [tmp_path / "two.png"], detector=cup_detector)
    assert report.persons_added == 2 and report.failures == []
    store = Store(tmp_path / "data")
    rows = store.persons([1, 2])
    assert [r.objects for r in rows] == [(CUP_LEFT,), (CUP_RIGHT,)]  # stored in media pixels, best first
    assert store.filter_person_ids(make_filters(where=["object: cup>=0.5"])).tolist() == [1]
    store.close()


def test_predict_and_show_give_the_objects_of_each_person(cup_detector, tmp_path, tiny_clip_dir, tiny_bert_dir):
    from a2v_search.pictures import COLORS, draw_persons

    image = tmp_path / "two.png"
    Image.new("RGB", (400, 160), "white").save(image)
    with A2VSearch.open(tmp_path / "data", model=str(tiny_clip_dir), text_model=str(tiny_bert_dir),
                        device="cpu") as api:
        api.use_detector("cups", cup_detector)
        persons = api.predict(image, detector="cups")
    assert [p["objects"] for p in persons] == [[{"name": "cup", "p": 0.6, "box": [80.0, 60.0, 100.0, 80.0]}],
                                               [{"name": "cup", "p": 0.3429, "box": [80.0, 60.0, 100.0, 80.0]}]]
    drawn = Image.open(draw_persons(Image.open(image), persons[1:], tmp_path / "shown.png"))
    assert drawn.getpixel((82, 60)) == COLORS[0]  # the cup's (dashed) box, in its person's colour
    assert drawn.getpixel((85, 79)) == (255, 255, 255)  # inside it (below its name): the picture


def test_the_whole_image_stores_no_objects(tmp_path):
    Image.new("RGB", (64, 48), "white").save(tmp_path / "a.png")
    assert ingest(tmp_path / "data", [tmp_path / "a.png"]).persons_added == 1
    store = Store(tmp_path / "data")
    assert store.persons([1])[0].objects == ()
    assert store.filter_person_ids(make_filters(where=["object: cup"])).tolist() == []
    store.close()


def test_a_coco_boxes_file_ties_its_other_categories_to_the_persons(tmp_path):
    doc = {"images": [{"id": 1, "file_name": "a.png"}],
           "categories": [{"id": 1, "name": "person"}, {"id": 47, "name": "cup"}, {"id": 99, "name": "widget"}],
           "annotations": [{"image_id": 1, "category_id": 1, "bbox": [10, 10, 80, 140]},
                           {"image_id": 1, "category_id": 47, "bbox": [30, 60, 20, 20], "score": 0.9},
                           {"image_id": 1, "category_id": 99, "bbox": [30, 60, 20, 20]}]}  # not a COCO class: left out
    path = tmp_path / "coco.json"
    path.write_text(json.dumps(doc))
    assert BoxesFile(path).boxes == {"a.png": [([10.0, 10.0, 90.0, 150.0], 1.0,
                                                ((CUP, pytest.approx(0.9), (30.0, 60.0, 50.0, 80.0)),))]}
    Image.new("RGB", (120, 160), "white").save(tmp_path / "a.png")
    report = ingest(tmp_path / "data", [tmp_path / "a.png"], detector=BoxesFile(path))
    assert report.persons_added == 1
    store = Store(tmp_path / "data")
    assert store.persons([1])[0].objects == ((CUP, pytest.approx(0.9), (30.0, 60.0, 50.0, 80.0)),)
    store.close()


def test_a_hake_boxes_file_gives_each_person_the_object_of_its_hoi(tmp_path):
    lines = (ROOT / "a2v_search" / "data" / "hico_hoi_list.txt").read_text().splitlines()
    hoi = {f"{r[1]} {r[2]}": int(r[0]) for r in (line.split() for line in lines) if r}
    labels = [{"human_bbox": [0, 0, 50, 100], "object_bbox": [10, 40, 30, 60], "hoi_id": hoi["cup drink_with"]},
              {"human_bbox": [1, 0, 50, 100], "object_bbox": [10, 41, 30, 60], "hoi_id": hoi["cup hold"]},
              {"human_bbox": [0, 0, 50, 100], "object_bbox": [0, 80, 90, 100], "hoi_id": hoi["dining_table eat_at"]},
              {"human_bbox": [60, 0, 110, 100], "object_bbox": [0, 80, 90, 100],
               "hoi_id": hoi["dining_table no_interaction"]}]
    path = tmp_path / "hake.json"
    path.write_text(json.dumps({"a.png": {"labels": labels}}))
    first, second = BoxesFile(path).boxes["a.png"]
    assert first[2] == ((CUP, 1.0, (10.0, 40.5, 30.0, 60.0)), (TABLE, 1.0, (0.0, 80.0, 90.0, 100.0)))  # cup merged
    assert second[2] == ()  # no_interaction: the table is there, the person does nothing with it


# ------------------------------------------------------------------ import, storage, filters


def record(path: str, objects) -> dict:
    rng = np.random.default_rng(len(path))
    person = {"box": [0, 0, 40, 80], "pasta": rng.random(93).tolist(), "visual": rng.normal(size=16).tolist()}
    if objects is not None:
        person["objects"] = objects
    return {"path": path, "width": 64, "height": 96, "persons": [person]}


@pytest.fixture(scope="module")
def imported(tmp_path_factory, tiny_clip_dir, tiny_bert_dir):
    """Three persons (a cup 0.9 with a box and a ball; a cup 0.3 without box; nothing), and three bad records."""
    data = tmp_path_factory.mktemp("objects") / "data"
    api = A2VSearch.open(data, model=str(tiny_clip_dir), text_model=str(tiny_bert_dir), device="cpu")
    report = api.import_records([
        record("/m/a.jpg", [{"name": "sports_ball", "p": 0.4}, {"name": "cup", "p": 0.9, "box": [5, 30, 20, 45]}]),
        record("/m/b.jpg", [{"name": "Cup", "p": 0.3}]),
        record("/m/c.jpg", None),
        record("/m/bad1.jpg", [{"name": "teapot", "p": 0.9}]),
        record("/m/bad2.jpg", [{"name": "cup", "p": 1.5}]),
        record("/m/bad3.jpg", [{"name": "cup", "p": 0.5, "box": [5, 5, 1, 1]}])])
    yield api, report
    api.close()


def test_import_stores_objects_best_first_and_reports_bad_ones(imported):
    api, report = imported
    assert report.persons_added == 3 and [f["path"] for f in report.failures] == ["/m/bad1.jpg", "/m/bad2.jpg",
                                                                                 "/m/bad3.jpg"]
    errors = [f["error"] for f in report.failures]
    assert "persons[0].objects[0]: unknown object 'teapot'" in errors[0]
    assert "persons[0].objects[0].p must be a number in (0, 1], not 1.5" in errors[1]
    assert "persons[0].objects[0].box must be [x1, y1, x2, y2]" in errors[2]
    assert api.person(1)["objects"] == [{"name": "cup", "p": 0.9, "box": [5.0, 30.0, 20.0, 45.0]},
                                        {"name": "sports_ball", "p": 0.4, "box": None}]
    assert api.person(2)["objects"] == [{"name": "cup", "p": 0.3, "box": None}]
    assert api.person(3)["objects"] == []


@pytest.mark.parametrize(("where", "ids"), [
    ("object: cup", [1, 2]), ("object: cup>=0.5", [1]), ("object: cup > 0.3", [1]), ("object: cup<0.5", [2, 3]),
    ("object: cup<=0.3", [2, 3]), ("object: sports ball", [1]), ("object: ball>0.5", []), ("object: bicycle", [])])
def test_object_filters(imported, where, ids):
    api, _ = imported
    hits = api.search_similar(3, k=10, where=[where])
    assert sorted(h.person_id for h in hits) == [i for i in ids if i != 3]  # the example itself is left out
    assert sorted(api.store.filter_person_ids(make_filters(where=[where])).tolist()) == ids


def test_a_bad_object_filter_names_the_fix():
    with pytest.raises(QueryError, match="in filter 'object: teapot': unknown object 'teapot'; closest"):
        make_filters(where=["object: teapot"])


def test_search_shows_objects_in_json_and_on_the_cli_line(imported):
    api, _ = imported
    data = api.store.data_dir
    code, out, err = run_main("search", "--person", "2", "--json", "--data-dir", data, "--where", "object: cup")
    assert code == 0, err
    assert json.loads(out)["results"][0]["objects"][0] == {"name": "cup", "p": 0.9, "box": [5.0, 30.0, 20.0, 45.0]}
    code, out, err = run_main("search", "--person", "2", "--data-dir", data, "--where", "object: cup")
    assert code == 0, err
    assert "| objects: cup 0.90, sports_ball 0.40" in out


def test_the_http_api_shows_objects_and_filters_by_them(imported):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from a2v_search.serve.server import create_app

    api, _ = imported
    with TestClient(create_app(api), base_url="http://127.0.0.1:8765") as c:
        person = c.get("/api/persons/1").json()
        assert person["objects"][0] == {"name": "cup", "p": 0.9, "box": [5.0, 30.0, 20.0, 45.0]}
        found = c.get("/api/search", params={"person": 3, "where": "object: cup>=0.5"}).json()
        assert [h["person_id"] for h in found["results"]] == [1] and found["results"][0]["objects"][1]["name"] == \
            "sports_ball"


def test_export_writes_the_objects_of_each_person(imported, tmp_path):
    api, _ = imported
    api.export(tmp_path / "p.jsonl")
    rows = [json.loads(line) for line in (tmp_path / "p.jsonl").read_text().splitlines()[1:]]
    assert [r["objects"] for r in rows] == [api.person(i)["objects"] for i in (1, 2, 3)]  # the form import reads
    api.export(tmp_path / "p.npz")
    with np.load(tmp_path / "p.npz") as f:
        objects = f["objects"]
    assert objects.shape == (3, MAX_OBJECTS_PER_PERSON, 6)
    np.testing.assert_allclose(objects[0, :2], [[CUP, 0.9, 5, 30, 20, 45], [BALL, 0.4] + [np.nan] * 4], rtol=1e-6)
    assert (objects[0, 2:, 0] == -1).all() and (objects[2, :, 0] == -1).all()


def test_objects_read_the_same_without_sqlite_json(imported, monkeypatch):
    """Hits and re-scoring read persons' objects through one bound JSON list of ids (a scattered list) or an id
    range; an SQLite without JSON takes IN lists and gives the same."""
    api, _ = imported

    def read():
        with api.store.db.session() as s:
            return (repo.objects_of(s, [3, 1, 2]), repo._object_probs_of(s, np.array([3, 1, 999, 2])),
                    repo._object_probs_of(s, np.array([1, 2, 3])))

    fast = read()
    monkeypatch.setattr(sql, "JSON_LISTS", False)
    slow = read()
    cup, ball = (CUP, pytest.approx(0.9), (5.0, 30.0, 20.0, 45.0)), (BALL, pytest.approx(0.4), None)
    assert fast[0] == slow[0] == {1: (cup, ball), 2: ((CUP, pytest.approx(0.3), None),)}
    np.testing.assert_array_equal(fast[1], slow[1])
    np.testing.assert_array_equal(fast[1][[1, 3, 0]], fast[2])  # the same rows, read as a list or as a range
    assert fast[2][0, CUP] == pytest.approx(0.9) and fast[2][1, CUP] == pytest.approx(0.3) and not fast[2][2].any()


def test_exported_objects_import_back_unchanged(imported, tmp_path, tiny_clip_dir, tiny_bert_dir):
    api, _ = imported
    api.export(tmp_path / "p.jsonl")
    rows = [json.loads(line) for line in (tmp_path / "p.jsonl").read_text().splitlines()[1:]]
    records = [{"path": r["path"], "persons": [{k: r[k] for k in ("box", "pasta", "verbs", "visual", "visual_norm",
                                                                   "objects")}]} for r in rows]
    with A2VSearch.open(tmp_path / "again", model=str(tiny_clip_dir), text_model=str(tiny_bert_dir),
                        device="cpu") as again:
        assert again.import_records(records).persons_added == 3
        assert [again.person(i)["objects"] for i in (1, 2, 3)] == [api.person(i)["objects"] for i in (1, 2, 3)]


# ------------------------------------------------------------------ older stores


@pytest.mark.parametrize("version", [5, 4, 3])
def test_an_older_store_is_upgraded_and_keeps_working(tmp_path, version):
    rng = np.random.default_rng(0)
    store = writable_store(tmp_path)
    store.write([media("/m/a.jpg", [random_person(rng), random_person(rng)])])
    store.close()
    downgrade(tmp_path / "a2v.sqlite", version)  # what a2v-search wrote before objects (4, 3: older still)
    con = sqlite3.connect(tmp_path / "a2v.sqlite")
    assert con.execute("SELECT count(*) FROM sqlite_master WHERE name='objects'").fetchone() == (0,)
    con.close()
    store = Store(tmp_path).lock("test")
    with store.db.session() as s:
        assert get_meta(s, "schema_version") == str(SCHEMA_VERSION)
    assert [r.objects for r in store.persons([1, 2])] == [(), ()]  # older persons have none
    store.write([media("/m/b.jpg", [random_person(rng, objects=((CUP, 0.7, None),))])])
    assert store.persons([3])[0].objects == ((CUP, 0.7, None),)
    assert store.filter_person_ids(make_filters(where=["object: cup"])).tolist() == [3]
    store.remove_media([2])  # objects go with their person
    con = sqlite3.connect(tmp_path / "a2v.sqlite")
    assert con.execute("SELECT count(*) FROM objects").fetchone() == (0,)
    assert "ix_objects_cls_p" in {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='index'")}
    con.close()
    store.close()


def test_a_person_with_bad_objects_is_refused_before_anything_is_written():
    rng = np.random.default_rng(0)
    assert person_problem(random_person(rng, objects=((80, 0.5, None),)), 16) == \
        "object class 80 is not one of the 80 classes"
    assert person_problem(random_person(rng, objects=((1, 0.0, None),)), 16) == "object p 0.0 is not in (0, 1]"
    assert person_problem(random_person(rng, objects=((1, 0.5, (0, 0, 1)),)), 16) == \
        "an object's box must be four finite numbers"


# ------------------------------------------------------------------ search that understands them


def activity_record(path: str, pasta: list[str], verbs: list[str], objects: list[str]) -> dict:
    """One person whose PaSta, verbs and objects are exactly these (p 0.9), everything else 0."""
    p, v = np.zeros(93), np.zeros(157)
    p[[tx.pasta_index(n) for n in pasta]], v[[tx.verb_index(n) for n in verbs]] = 0.9, 0.9
    visual = np.random.default_rng(len(path)).normal(size=16)
    return {"path": path, "width": 64, "height": 96, "persons": [
        {"box": [0, 0, 40, 80], "pasta": p.tolist(), "verbs": v.tolist(), "visual": visual.tolist(),
         "objects": [{"name": o, "p": 0.9} for o in objects]}]}


DRINK = (["hand: hold", "head: drink with"], ["drink_with", "hold"])


@pytest.fixture(scope="module")
def drinkers(tmp_path_factory, tiny_clip_dir, minilm_dir):
    """Four persons with the real MiniLM space: 1 drinks from a cup, 2 from a bottle, 3 washes a cup, 4 drinks
    from nothing the store knows of."""
    api = A2VSearch.open(tmp_path_factory.mktemp("drinkers") / "data", model=str(tiny_clip_dir),
                         text_model=str(minilm_dir), device="cpu")
    report = api.import_records([activity_record("/m/1.jpg", *DRINK, ["cup"]),
                                 activity_record("/m/2.jpg", *DRINK, ["bottle"]),
                                 activity_record("/m/3.jpg", ["hand: wash"], ["wash", "hold"], ["cup"]),
                                 activity_record("/m/4.jpg", *DRINK, [])])
    assert report.persons_added == 4, report.failures
    yield api
    api.close()


@pytest.mark.parametrize(("text", "first", "named"), [
    ("a man sipping coffee from a mug", 1, "cup"), ("someone drinking water out of a bottle", 2, "bottle"),
    ("head: drink with; verb: drink with; object: bottle", 2, "bottle"), ("hand: hold; object: cup=2", 1, "cup")])
def test_a_query_naming_an_object_ranks_the_activity_with_that_object_first(drinkers, text, first, named):
    result = drinkers.search(text=text, k=4)
    assert result.hits[0].person_id == first
    assert result.query["objects"][0][0] == named  # the reading shows the object it understood


def test_a_query_naming_no_object_is_not_hurt_by_objects(drinkers):
    result = drinkers.search(text="a person drinking", k=4)
    assert result.query["objects"] == [] and result.query["match"]["objects"] == 0
    scores = {h.person_id: h.score for h in result.hits}
    assert scores[1] == pytest.approx(scores[2], abs=1e-6) == pytest.approx(scores[4], abs=1e-6)  # with or without
    assert scores[3] < scores[1]  # washing a cup is not drinking
    code, out, err = run_main("search", "--text", "a man sipping coffee from a mug", "-k", "1", "--data-dir",
                              drinkers.store.data_dir)
    assert code == 0, err
    assert "object: cup=" in out and "an object 0." in out  # the CLI line shows the object it read
