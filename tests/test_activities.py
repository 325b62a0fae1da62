"""The activity overview (``activities``) and clusters (``cluster``, ``--cluster NAME:ID``) on stores whose persons
have known activities."""

from __future__ import annotations

import json
import sqlite3

import numpy as np
import pytest
from activity_store import fill, person
from helpers import downgrade, media, run_main

from a2v_search import A2VSearch
from a2v_search import taxonomy as tx
from a2v_search.errors import InputError, QueryError
from a2v_search.search import make_filters
from a2v_search.store import Store
from db import sql
from db.activities import at_least, count_block


def names(entries, key="name"):
    return {e[key]: e["count"] for e in entries}


@pytest.fixture
def known(tmp_path):
    ids = fill(tmp_path / "data", {"ride": 10, "drink": 6, "kick": 4})
    return tmp_path / "data", ids


def test_overview_counts_examples_and_pairs_of_a_whole_store(known):
    data_dir, ids = known
    with A2VSearch.open(data_dir) as api:
        o = api.activities()
    assert o["persons"] == 20 and o["counted"] == "kept" and o["min_p"] == 0.5
    assert names(o["verbs"]) == {"ride": 10, "straddle": 10, "drink_with": 6, "kick": 4}  # run (0.45) is below
    assert [e["name"] for e in o["verbs"]] == ["ride", "straddle", "drink_with", "kick"]  # count, then index order
    assert names(o["pasta"]) == {"hip: sit on": 10, "foot: stand on": 10, "hand: hold": 6, "head: drink with": 6,
                                 "foot: kick": 4}
    pairs = {(e["verb"], e["pasta"]): e["count"] for e in o["pairs"]["verb_pasta"]}
    assert pairs[("ride", "hip: sit on")] == 10 and pairs[("drink_with", "head: drink with")] == 6
    assert pairs[("kick", "foot: kick")] == 4 and ("ride", "hand: hold") not in pairs and len(pairs) == 4 + 2 + 1
    ride = o["verbs"][0]
    assert ride["share"] == 0.5 and ride["examples"] == ids["ride"][::-1][:4]  # highest probability first
    assert o["pairs"]["verb_pasta"][0]["examples"] == ids["ride"][::-1][:4]


def test_filters_other_than_collection_and_kind_count_by_scanning_with_the_same_answer(known):
    data_dir, ids = known
    with A2VSearch.open(data_dir) as api:
        kept = api.activities(collection="home")
        scanned = api.activities(collection="home", path="/m/*")
        low = api.activities(min_p=0.4)
        drinkers = api.activities(where=["verb: drink_with>=0.5"])
    assert kept["counted"] == "kept" and scanned["counted"] == "scanned" and kept["persons"] == 10
    assert {k: v for k, v in kept.items() if k not in ("counted", "filters")} == \
        {k: v for k, v in scanned.items() if k not in ("counted", "filters")}
    assert names(kept["verbs"]) == {"drink_with": 6, "kick": 4}
    assert low["counted"] == "scanned" and names(low["verbs"])["run"] == 4
    assert drinkers["persons"] == 6 and names(drinkers["verbs"]) == {"drink_with": 6}
    assert drinkers["filters"] == {"where": ["verb: drink_with>=0.5"]}


@pytest.mark.parametrize("sqlite_json", [True, False], ids=["json", "in-lists"])
def test_kept_counts_follow_removals_replacements_and_the_schema_upgrade(known, tmp_path, monkeypatch, sqlite_json):
    """... also on an SQLite without JSON, where the write path's reads and deletes of the replaced and removed
    media take IN lists."""
    data_dir, ids = known
    if not sqlite_json:
        monkeypatch.setattr(sql, "JSON_LISTS", False)
    with A2VSearch.open(data_dir) as api:
        api.remove(["/m/kick/0.jpg", "/m/kick/1.jpg"])
    store = Store(data_dir).lock("test")  # the same path again: its old person is replaced by a drinker
    rng = np.random.default_rng(5)
    item = media("/m/ride/0.jpg", [person(rng, "drink")], collection="trip")
    item.replaces = store.media_ids_under(["/m/ride/0.jpg"])[0]
    store.write([item])
    store.close()

    def both(d):
        with A2VSearch.open(d) as api:
            return api.activities(), api.activities(path="*")

    kept, scanned = both(data_dir)
    assert names(kept["verbs"]) == {"ride": 9, "straddle": 9, "drink_with": 7, "kick": 2}
    assert kept["verbs"] == scanned["verbs"] and kept["pasta"] == scanned["pasta"] and kept["pairs"] == \
        scanned["pairs"]
    downgrade(data_dir / "a2v.sqlite", 4)  # a store made before the counts: counted once when it is opened
    Store(data_dir).close()
    assert both(data_dir)[0]["verbs"] == kept["verbs"]


def test_kept_examples_of_a_small_collection_and_from_a_short_pool_are_those_a_scan_finds(known):
    data_dir, ids = known
    fill(data_dir, {"kick": 1}, collection=lambda _: "tiny", start=100)  # 1 of 21 persons: found by the media index
    with A2VSearch.open(data_dir) as api:
        kept, scanned = api.activities(collection="tiny"), api.activities(collection="tiny", path="*")
    assert kept["counted"] == "kept" and kept["persons"] == 1 and names(kept["verbs"]) == {"kick": 1}
    assert [kept[k] for k in ("verbs", "pasta", "pairs")] == [scanned[k] for k in ("verbs", "pasta", "pairs")]
    from db import activities

    store = Store(data_dir)
    with store.db.snapshot() as s:  # a pool of 8: the newest 2 first, then 6 more for labels short of examples
        keys = [("verbs", tx.verb_index("drink_with")), ("verbs", tx.verb_index("kick")),
                ("verb_object", tx.verb_index("drink_with"), tx.object_index("cup"))]
        found = activities.pool_examples(s, keys, 3, pool=8)
        newest = store.person_ids()[-8:]  # 14..21
        expected = activities.scan_counts(s, newest, 3, keys)[1]
        expected.update(activities.scan_counts(s, newest, 3)[1])
    store.close()
    assert found == {k: expected[k] for k in keys}
    assert found[keys[1]] == ids["kick"][::-1][:3]  # the newest 2 held 2 kickers: the next 6 were read too


def test_count_block_counts_pairs_of_labels_shown_together():
    pasta = np.zeros((3, tx.N_PASTA), np.float32)
    verbs = np.zeros((3, tx.N_VERBS), np.float32)
    pasta[:2, 5] = 0.5  # exactly the threshold counts
    verbs[1:, 7] = 0.9
    c = count_block(pasta, verbs)
    assert c.persons == 3 and c.pasta[5] == 2 and c.verbs[7] == 2 and c.verb_pasta[7, 5] == 1
    assert c.verb_pasta.sum() == 1


def test_activities_cli_prints_json_text_and_a_sheet(known, tmp_path):
    data_dir, _ = known
    code, out, err = run_main("activities", "--data-dir", data_dir, "--json", "--top", "2", "--examples", "1")
    assert code == 0, err
    o = json.loads(out)
    assert [e["name"] for e in o["verbs"]] == ["ride", "straddle"] and len(o["verbs"][0]["examples"]) == 1
    code, out, err = run_main("activities", "--data-dir", data_dir, "--collection", "trip")
    assert code == 0 and "10 persons" in out and "ride" in out and "drink_with" not in out
    code, _, err = run_main("activities", "--data-dir", data_dir, "--min-p", "0")
    assert code == 1 and "--min-p" in err
    code, out, err = run_main("activities", "--data-dir", data_dir, "--sheet", tmp_path / "o.png")
    assert code == 0 and (tmp_path / "o.png").stat().st_size > 0  # files are missing: tiles say unreadable


# ------------------------------------------------------------------ objects and verb + object pairs

# profile -> (verbs, PaSta, objects as the import reads them, how many persons)
OBJECT_PROFILES = {
    "bike": ({"ride": 0.9}, {"hip: sit on": 0.8}, [{"name": "bicycle", "p": 0.9}], 3),
    "horse": ({"ride": 0.8}, {"hip: sit on": 0.7}, [{"name": "horse", "p": 0.8}], 2),
    "drink": ({"drink_with": 0.8}, {"hand: hold": 0.9},
              [{"name": "cup", "p": 0.7}, {"name": "dining_table", "p": 0.4}], 3),  # the table below 0.5
    "hold": ({"hold": 0.7}, {"hand: hold": 0.6}, [{"name": "cup", "p": 0.6}], 1),
    "edge": ({"hold": 0.7}, {"hand: hold": 0.6}, [{"name": "cup", "p": 0.5}], 1),  # exactly the threshold counts
    "idle": ({"run": 0.9}, {"foot: run to": 0.9}, [], 1),
}


def object_records(profiles=OBJECT_PROFILES, prefix="/m"):
    rng = np.random.default_rng(3)
    out = []
    for name, (verbs, pasta, objects, n) in profiles.items():
        for i in range(n):
            person = {"box": [0, 0, 40, 80], "pasta": pasta, "verbs": verbs, "objects": objects,
                      "visual": rng.normal(size=16).tolist()}
            out.append({"path": f"{prefix}/{name}/{i}.jpg", "width": 64, "height": 96, "persons": [person]})
    return out


@pytest.fixture
def with_objects(tmp_path, tiny_clip_dir, tiny_bert_dir):
    """11 imported persons with known verbs, PaSta and objects (ids 1.. in OBJECT_PROFILES order)."""
    api = A2VSearch.open(tmp_path / "data", model=str(tiny_clip_dir), text_model=str(tiny_bert_dir), device="cpu")
    assert api.import_records(object_records()).persons_added == 11
    yield api
    api.close()


def object_pairs(o):
    return {(e["verb"], e["object"]): e["count"] for e in o["pairs"]["verb_object"]}


def test_overview_counts_objects_and_verb_object_pairs_of_imported_persons(with_objects):
    api = with_objects
    o = api.activities()
    assert o["persons"] == 11 and o["counted"] == "kept"
    assert [(e["name"], e["count"]) for e in o["objects"]] == [("cup", 5), ("bicycle", 3), ("horse", 2)]
    cup = o["objects"][0]
    assert cup["share"] == round(5 / 11, 4) and cup["examples"] == [6, 7, 8, 9]  # p 0.7 (ids 6-8), then 0.6
    assert object_pairs(o) == {("drink_with", "cup"): 3, ("ride", "bicycle"): 3, ("ride", "horse"): 2,
                               ("hold", "cup"): 2}
    assert [(e["verb"], e["object"]) for e in o["pairs"]["verb_object"]] == [  # count, then verb and object index
        ("drink_with", "cup"), ("ride", "bicycle"), ("hold", "cup"), ("ride", "horse")]
    ride_horse = next(e for e in o["pairs"]["verb_object"] if e["object"] == "horse")
    assert ride_horse["examples"] == [4, 5]  # the riders of a horse, best verb probability first
    assert names(o["verbs"])["ride"] == 5 and object_pairs(o)[("ride", "bicycle")] + 2 == 5
    scanned = api.activities(path="*")
    assert scanned["counted"] == "scanned"
    same = [k for k in o if k not in ("counted", "filters")]
    assert [o[k] for k in same] == [scanned[k] for k in same]
    low = api.activities(min_p=0.4)  # the table at 0.4 now counts, with its drinkers
    assert names(low["objects"])["dining_table"] == 3 and object_pairs(low)[("drink_with", "dining_table")] == 3
    cups = api.activities(where=["object: cup>=0.5"])  # what a click on the cup facet filters
    assert cups["persons"] == 5 and names(cups["objects"]) == {"cup": 5}
    assert api.activities(where=["object: cup>=0.5", "verb: hold>=0.5"])["persons"] == 2


def test_object_counts_follow_removals_replacements_and_the_schema_upgrades(with_objects, tmp_path):
    api = with_objects
    api.remove(["/m/drink/0.jpg"])
    replace = object_records({"bike": OBJECT_PROFILES["bike"][:3] + (1,)})
    replace[0]["path"] = "/m/horse/0.jpg"  # the same path again: its rider of a horse now rides a bicycle
    api.import_records(replace)
    kept, scanned = api.activities(), api.activities(path="*")
    assert kept["persons"] == 10 and names(kept["objects"]) == {"cup": 4, "bicycle": 4, "horse": 1}
    assert object_pairs(kept) == {("drink_with", "cup"): 2, ("ride", "bicycle"): 4, ("ride", "horse"): 1,
                                  ("hold", "cup"): 2}
    assert kept["objects"] == scanned["objects"] and kept["pairs"] == scanned["pairs"]
    data_dir = api.data_dir
    api.close()
    for version in (7, 6):  # counts without objects (7), no counts at all (6): counted again on open
        downgrade(data_dir / "a2v.sqlite", version)
        with A2VSearch.open(data_dir) as again:
            o = again.activities()
        assert o["objects"] == kept["objects"] and o["pairs"] == kept["pairs"] and o["verbs"] == kept["verbs"]
    assert Store(data_dir).check().problems == []


def test_count_block_counts_objects_and_verb_object_pairs():
    pasta = np.zeros((3, tx.N_PASTA), np.float32)
    verbs = np.zeros((3, tx.N_VERBS), np.float32)
    verbs[:2, 7] = 0.9
    from db.values import object_probs

    objects = object_probs([[(4, 0.3, None), (4, 0.8, None)], [(9, 0.49, None)], [(9, 0.5, None)]])
    c = count_block(pasta, verbs, objects)
    assert c.objects[4] == 1 and c.objects[9] == 1 and c.objects.sum() == 2  # the best p of a class counts
    assert c.verb_object[7, 4] == 1 and c.verb_object.sum() == 1  # person 3's object has no verb beside it


def test_doctor_finds_object_counts_that_disagree(with_objects):
    data_dir = with_objects.data_dir
    with_objects.close()
    con = sqlite3.connect(data_dir / "a2v.sqlite")
    con.execute("DELETE FROM activity_counts WHERE facet = 'verb_object'")
    con.commit()
    con.close()
    assert [p.what for p in Store(data_dir).check().problems] == ["activity counts"]


def test_activities_cli_lists_objects_and_verb_object_pairs(with_objects):
    code, out, err = run_main("activities", "--data-dir", with_objects.data_dir)
    assert code == 0, err
    assert "objects:" in out and "cup" in out and "verb + object:" in out and "ride + bicycle" in out
    code, out, err = run_main("activities", "--data-dir", with_objects.data_dir, "--json")
    assert code == 0 and json.loads(out)["pairs"]["verb_object"][0]["object"] == "cup"


def test_clusters_are_named_by_their_objects_too(with_objects):
    r = with_objects.cluster(k=2, name="acts")
    riders = next(c for c in r["clusters"] if c["verbs"] and c["verbs"][0][0] == "ride")
    assert [o[0] for o in riders["objects"]][:2] == ["bicycle", "horse"] and riders["size"] == 5
    assert riders["name"] == "ride, bicycle, horse, hip: sit on"


# ------------------------------------------------------------------ clusters


def test_clusters_find_the_profiles_and_are_named_by_them(known):
    data_dir, ids = known
    with A2VSearch.open(data_dir) as api:
        r = api.cluster(k=3, name="acts")
        c = api.clustering("acts")
    by_verb = {cl["verbs"][0][0]: cl for cl in r["clusters"]}
    assert set(by_verb) == {"ride", "drink_with", "kick"}  # each cluster's most distinctive verb is its profile's
    for profile, verb in (("ride", "ride"), ("drink", "drink_with"), ("kick", "kick")):
        cl = by_verb[verb]
        assert cl["size"] == len(ids[profile]) and set(cl["examples"]) <= set(ids[profile])
        assert cl["name"].startswith(verb)
    assert by_verb["ride"]["name"].startswith("ride, straddle, ")
    assert c["k"] == 3 and c["persons"] == 20 and not c["stale"] and c["space"] == "language"
    assert [cl["size"] for cl in c["clusters"]] == [cl["size"] for cl in r["clusters"]]


def test_a_cluster_filters_search_show_and_activities(known, tmp_path):
    data_dir, ids = known
    with A2VSearch.open(data_dir) as api:
        r = api.cluster(k=3, name="acts")
        kick = next(cl["cluster"] for cl in r["clusters"] if cl["verbs"][0][0] == "kick")
        hits = api.search_text("hand: hold", k=20, cluster=f"acts:{kick}")
        assert {h.person_id for h in hits} == set(ids["kick"])
        close = api.cluster_persons(f"acts:{kick}")
        assert {h.person_id for h in close} == set(ids["kick"])
        assert [h.score for h in close] == sorted((h.score for h in close), reverse=True)
        assert names(api.activities(cluster=f"acts:{kick}")["verbs"]) == {"kick": 4}
        for bad, why in (("acts:9", "clusters 0 to 2"), ("nope:0", "no clustering named 'nope'"),
                         ("acts", "NAME:ID")):
            with pytest.raises(QueryError, match=why):
                api.search_text("hand: hold", cluster=bad)
    code, out, err = run_main("search", "--data-dir", data_dir, "--text", "foot: kick", "--cluster", f"acts:{kick}",
                              "--json")
    assert code == 0 and {h["person_id"] for h in json.loads(out)["results"]} == set(ids["kick"])
    code, out, err = run_main("show", "--data-dir", data_dir, "--cluster", f"acts:{kick}", "--out",
                              tmp_path / "c.png")
    assert code == 0 and (tmp_path / "c.png").is_file(), err


def test_clusterings_coexist_replace_by_name_and_go_stale_when_persons_arrive(known):
    data_dir, ids = known
    with A2VSearch.open(data_dir) as api:
        api.cluster(k=3, name="a")
        api.cluster(k=2, name="b", collection="home")
        api.cluster(k=2, name="a")  # replaces a
        listed = {c["name"]: c for c in api.clusterings()}
    assert listed["a"]["k"] == 2 and listed["b"]["persons"] == 10 and listed["b"]["filters"] == {
        "collection": "home"}
    fill(data_dir, {"ride": 3}, start=100)  # three riders arrive in "trip": outside b's filter
    with A2VSearch.open(data_dir) as api:
        a, b = api.clustering("a"), api.clustering("b")
        assert a["stale"] and a["persons_since"] == 3 and a["persons"] == 20
        assert not b["stale"] and b["persons_since"] == 0
        api.remove(["/m/drink/0.jpg"])
        assert api.clustering("b")["persons"] == 9  # removed persons leave their cluster
        api.drop_clustering("a")
        assert [c["name"] for c in api.clusterings()] == ["b"]


def test_auto_picks_the_number_of_profiles(tmp_path):
    fill(tmp_path / "d", {"ride": 30, "drink": 30, "kick": 30})
    with A2VSearch.open(tmp_path / "d") as api:
        r = api.cluster(auto=True, name="auto")
    assert r["k"] == 3 and set(r["info"]["auto"]["silhouette"]) == {2, 3, 4}
    assert sorted(c["size"] for c in r["clusters"]) == [30, 30, 30]


def test_cluster_arguments_are_checked(known):
    data_dir, _ = known
    with A2VSearch.open(data_dir) as api:
        for kwargs, why in (({}, "--k N or --auto"), ({"k": 3, "auto": True}, "--k N or --auto"),
                            ({"k": 3, "name": "a:b"}, "without ':'"), ({"k": 3, "space": "smell"}, "--space"),
                            ({"k": 0}, "--k must be")):
            with pytest.raises(InputError, match=why):
                api.cluster(**kwargs)
        with pytest.raises(QueryError, match="activity space"):
            api.cluster(k=2, space="activity")  # the test space has no trained heads
        with pytest.raises(QueryError, match="no person passes"):
            api.cluster(k=2, collection="elsewhere")
    code, out, err = run_main("cluster", "--data-dir", data_dir, "-k", "3", "--name", "x")
    assert code == 0 and "x:" in out, err
    code, out, err = run_main("clusters", "--data-dir", data_dir, "--json")
    assert code == 0 and json.loads(out)[0]["name"] == "x"
    code, out, err = run_main("clusters", "x", "--data-dir", data_dir)
    assert code == 0 and "x:0" in out


def test_filters_carry_the_cluster():
    f = make_filters(cluster="acts:3")
    assert f.cluster == ("acts", 3) and not f.empty()


def test_export_writes_each_persons_cluster(known, tmp_path):
    data_dir, ids = known
    with A2VSearch.open(data_dir) as api:
        r = api.cluster(k=3, name="acts")
    fill(data_dir, {"kick": 1}, start=50)  # stored after the clustering: in no cluster
    with A2VSearch.open(data_dir) as api:
        api.export(tmp_path / "p.jsonl", clustering="acts")
        rows = [json.loads(line) for line in (tmp_path / "p.jsonl").read_text().splitlines()]
        npz = np.load(api.export(tmp_path / "p.npz", fields=["person_id", "cluster"], clustering="acts").path)
        with pytest.raises(InputError, match="needs --clustering"):
            api.export(tmp_path / "x.jsonl", fields=["person_id", "cluster"])
        with pytest.raises(QueryError, match="no clustering named 'nope'"):
            api.export(tmp_path / "x.jsonl", clustering="nope")
    meta = rows[0]["a2v_search_export"]
    assert meta["clustering"]["name"] == "acts" and len(meta["clustering"]["clusters"]) == 3
    got = {row["person_id"]: row["cluster"] for row in rows[1:]}
    for c in r["clusters"]:
        verb = c["verbs"][0][0]
        profile = {"ride": "ride", "drink_with": "drink", "kick": "kick"}[verb]
        assert {got[i] for i in ids[profile]} == {c["cluster"]}
    assert list(got.values())[-1] == -1 and len(got) == 21
    assert dict(zip(npz["person_id"].tolist(), npz["cluster"].tolist(), strict=True)) == got
    code, out, err = run_main("export", "--data-dir", data_dir, "--out", tmp_path / "c.jsonl", "--clustering", "acts",
                              "--cluster", "acts:0")
    assert code == 0, err
    assert {json.loads(line)["cluster"] for line in (tmp_path / "c.jsonl").read_text().splitlines()[1:]} == {0}


def test_doctor_finds_and_repairs_kept_counts_that_disagree_with_the_persons(known):
    data_dir, _ = known
    con = sqlite3.connect(data_dir / "a2v.sqlite")
    con.execute("DELETE FROM activity_counts WHERE collection = 'trip'")  # lost: what a bug would leave
    con.commit()
    con.close()
    report = Store(data_dir).check()
    assert [p.what for p in report.problems] == ["activity counts"] and "of 10 persons" in report.problems[0].detail
    code, out, _ = run_main("doctor", "--data-dir", data_dir, "--repair")
    assert code == 0 and "fixed: activity counts" in out
    with A2VSearch.open(data_dir) as api:
        assert api.activities()["persons"] == 20 and Store(data_dir).check().problems == []


@pytest.mark.parametrize("min_p", [0.5, 0.05, 1.0, 0.0, 1e-7, 70000.0])
def test_float16_probabilities_are_compared_as_their_values(min_p):
    """activities.at_least reads float16 probabilities through their bits: every one of the 65,536 patterns
    (NaN, infinities, negatives, subnormals included) compares as its float32 value does."""
    p16 = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16).view(np.float16).reshape(-1, 16)
    with np.errstate(invalid="ignore"):
        want = p16.astype(np.float32) >= np.float32(min_p)
    assert (at_least(p16, min_p) == want).all()


def test_counts_of_float16_and_float32_probabilities_agree():
    rng = np.random.default_rng(8)
    pasta = rng.random((300, 93)).astype(np.float16)
    verbs = rng.random((300, 157)).astype(np.float16)
    objects = np.where(rng.random((300, 80)) < 0.05, rng.random((300, 80)), 0).astype(np.float32)
    for objs in (objects, None, np.zeros((300, 80), np.float32)):
        a = count_block(pasta, verbs, objs)
        b = count_block(pasta.astype(np.float32), verbs.astype(np.float32), objs)
        assert a.blobs() == b.blobs() and a.persons == 300
