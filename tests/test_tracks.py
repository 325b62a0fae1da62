"""Video tracks: the linking rule, tracks written at ingest (resumable, across segments), moments in search,
migration of version-1 stores, remove / re-ingest, and the CLI (``--group track``, ``show --track``, stats)."""

from __future__ import annotations

import json
import signal
import sqlite3
from pathlib import Path

import numpy as np
import pytest
from helpers import StubEncoder, downgrade, in_child, run_main
from PIL import Image
from sqlalchemy.exc import OperationalError

from a2v_search.detect import BoxesFile
from a2v_search.errors import InputError, QueryError, StoreError
from a2v_search.ingest import IngestOptions, run_ingest
from a2v_search.search import Searcher, SearchOptions
from a2v_search.store import Store
from a2v_search.testing.media import write_images, write_people_video
from a2v_search.tracks import TrackRule, link, moment_score, sample_step
from db import migrations, repo
from db.engine import get_meta
from db.schema import SCHEMA_VERSION, Person, Track
from db.tracks import track_members, tracks_of

# ------------------------------------------------------------------ the rule, on vectors


def unit(seed: int, dim: int = 16) -> np.ndarray:
    v = np.random.default_rng(seed).normal(size=dim)
    return v / np.linalg.norm(v)


def test_link_follows_appearance_overlap_and_the_gap_rule():
    a, b, c = unit(1), unit(2), unit(3)
    times, boxes, vis = [], [], []

    def add(t, box, v):
        times.append(float(t))
        boxes.append(box)
        vis.append(v)

    for t in range(6):  # a walks right, b walks left: they cross at t = 2..3
        add(t, [10 + 10 * t, 0, 40 + 10 * t, 60], a)
        add(t, [70 - 10 * t, 0, 100 - 10 * t, 60], b)
    add(8, [60, 0, 90, 60], a)  # a missed t = 6 and 7 (2 sampled frames): same track
    add(12, [60, 0, 90, 60], a)  # then missed 9, 10, 11 (3 frames): a new track
    add(13, [60, 0, 90, 60], c)  # a cut: someone else in the same place
    add(14, [0, 0, 30, 60], c)  # c jumps across the frame: linked on appearance alone
    tracks = link(times, boxes, np.stack(vis))
    assert tracks[:12] == [0, 1] * 6  # crossing paths do not swap identities
    assert tracks[12:] == [0, 2, 3, 3]
    assert link(times, boxes, np.stack(vis), TrackRule(max_missed=3))[12] == 0
    assert link(times, boxes, np.stack(vis), TrackRule(cos_strong=1.01))[15] == 4  # no overlap, weak link
    assert link([], [], np.zeros((0, 16))) == []


def test_sampling_step_and_moment_score():
    assert sample_step([0.0, 0.0, 2.0, 2.5, 4.0]) == pytest.approx(0.5)
    assert sample_step([3.0]) == 1.0
    assert moment_score(np.array([0.2, 0.9, 0.5, 0.7])) == pytest.approx((0.9 + 0.7 + 0.5) / 3)
    assert moment_score(np.array([0.4]), top=3) == pytest.approx(0.4)
    assert moment_score(np.array([0.2, 0.9]), top=1) == pytest.approx(0.9)


# ------------------------------------------------------------------ a synthetic video through ingest


A, B, C = 1, 2, 4  # person looks (a2v_search.testing.media.person_look seeds)
#: (look, t_start, t_end, persons) of the tracks of people_scenes(), in order of first appearance
EXPECTED = [(A, 0.0, 5.0, 5), (B, 0.0, 3.0, 4), (C, 6.0, 11.0, 6), (B, 8.0, 11.0, 4)]


def people_scenes(looks=(A, B, C)) -> list[dict]:
    """12 seconds: A walks right (unseen at 2 s: one missed frame), B walks left, leaves at 4 s and is back at 8 s
    (four missed frames: a new track); a cut at 6 s (darker background) where C stands where A was."""
    a, b, c = looks
    scenes = []
    for t in range(12):
        people = {}
        if t <= 5 and t != 2:
            people[a] = (10 + 8 * t, 20, 30, 60)
        if t <= 3:
            people[b] = (110 - 5 * t, 30, 30, 60)
        if t >= 8:
            people[b] = (100, 30, 30, 60)
        if t >= 6:
            people[c] = (50, 20, 30, 60)
        scenes.append({"background": 128 if t < 6 else 70, "people": people})
    return scenes


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> Path:
    """walk.mp4 (people_scenes) and other.mp4 (the same story with other looks), with one boxes file."""
    folder = tmp_path_factory.mktemp("videos")
    (folder / "in").mkdir()
    walk = write_people_video(folder / "in" / "walk.mp4", people_scenes())
    other = write_people_video(folder / "in" / "other.mp4", people_scenes(looks=(11, 12, 14)))
    shift = len(walk["images"])
    for im in other["images"]:
        im["id"] += shift
    for ann in other["annotations"]:
        ann["image_id"] += shift
        ann["id"] += len(walk["annotations"])
    doc = {"images": walk["images"] + other["images"], "annotations": walk["annotations"] + other["annotations"],
           "categories": walk["categories"]}
    (folder / "boxes.json").write_text(json.dumps(doc))
    return folder


def ingest(data: Path, inputs: list[Path], boxes: Path, **opts):
    store = Store(data, create=True).lock("test")
    try:
        options = IngestOptions(**{"workers": 0, "batch_size": 4, "commit_every": 4, **opts})
        report = run_ingest(store, StubEncoder(), BoxesFile(boxes), [str(p) for p in inputs], options)
    except BaseException:
        store.close(save=False)
        raise
    store.close()
    return report


def stored_tracks(data: Path) -> dict[str, list[tuple]]:
    """Per video file: its tracks as (number, t_start, t_end, persons, [(t_sec, x1) of each person])."""
    store = Store(data)
    with store.db.session() as s:
        rows = s.execute(repo.select(repo.Media.path, Track.number, Track.t_start, Track.t_end, Track.persons,
                                     Track.id).join(repo.Media, repo.Media.id == Track.media_id)
                         .order_by(repo.Media.path, Track.number)).all()
        members = track_members(s, [r[5] for r in rows])
        persons = {p.id: p for p in repo.fetch_persons(s, [i for ids in members.values() for i in ids])}
        untracked = s.execute(repo.select(repo.func.count(Person.id)).join(repo.Media)
                              .where(repo.Media.kind == "video", Person.track_id.is_(None))).scalar()
    store.close()
    assert untracked == 0  # every video person knows its track
    out: dict[str, list[tuple]] = {}
    for path, number, t0, t1, n, tid in rows:
        frames = [(persons[i].t_sec, persons[i].box[0]) for i in members[tid]]
        assert len(frames) == n
        out.setdefault(Path(path).name, []).append((number, t0, t1, n, frames))
    return out


@pytest.fixture(scope="module")
def tracked(videos, tmp_path_factory) -> Path:
    """A store of both videos and two images, ingested in one clean run."""
    data = tmp_path_factory.mktemp("tracked") / "data"
    write_images(videos / "in", 2, w=64, h=64)
    boxes = json.loads((videos / "boxes.json").read_text())
    for i, name in enumerate(("img000.png", "img001.png")):  # one person per image
        boxes["images"].append({"id": 10_000 + i, "file_name": name})
        boxes["annotations"].append({"id": 10_000 + i, "image_id": 10_000 + i, "category_id": 1,
                                     "bbox": [8, 8, 40, 50]})
    (videos / "boxes_all.json").write_text(json.dumps(boxes))
    report = ingest(data, [videos / "in"], videos / "boxes_all.json")
    assert report.failures == [] and report.media_ingested == 4 and report.persons_added == 2 * 19 + 2
    return data


def test_ingest_links_the_people_of_a_video_into_tracks(tracked):
    tracks = stored_tracks(tracked)
    for name in ("walk.mp4", "other.mp4"):
        got = [(t0, t1, n) for _, t0, t1, n, _ in tracks[name]]
        assert got == [(t0, t1, n) for _, t0, t1, n in EXPECTED], name
    a = tracks["walk.mp4"][0][4]
    assert [t for t, _ in a] == [0.0, 1.0, 3.0, 4.0, 5.0] and [x for _, x in a] == [10, 18, 34, 42, 50]
    store = Store(tracked)
    with store.db.session() as s:
        assert repo.counts(s)["tracks"] == 8
        images = s.execute(repo.select(Person.track_id).join(repo.Media).where(repo.Media.kind == "image")).all()
    store.close()
    assert images == [(None,), (None,)]  # images have no tracks


def test_tracks_are_the_same_across_segments_and_after_kills(videos, tracked, tmp_path):
    want = stored_tracks(tracked)
    inputs = [videos / "in"]
    segmented = tmp_path / "segmented"
    ingest(segmented, inputs, videos / "boxes_all.json", segment_s=5.0)  # 3 segments per video
    assert stored_tracks(segmented) == want
    for point in ("after_commit:1", "encode:5"):
        data = tmp_path / point.replace(":", "-")
        code, err = in_child(lambda data=data: ingest(data, inputs, videos / "boxes_all.json", segment_s=5.0),
                             fault=point)
        assert code == -signal.SIGKILL, err
        ingest(data, inputs, videos / "boxes_all.json", segment_s=5.0)
        assert stored_tracks(data) == want, point


# ------------------------------------------------------------------ moments in search


def look_query(store: Store, look_x: float, t: float, path: str = "walk.mp4") -> dict:
    """The stored visual vector of the person at x = look_x, time t, in a video: a query for that look."""
    with store.db.session() as s:
        pid = s.execute(repo.select(Person.id).join(repo.Media).where(
            Person.t_sec == t, Person.x1 == look_x, repo.Media.path.like(f"%/{path}"))).scalar_one()
        return {"visual": repo.fetch_persons(s, [pid])[0].visual}


def test_grouped_search_returns_one_moment_per_track(tracked):
    store = Store(tracked)
    searcher = Searcher(store)
    q = look_query(store, 105.0, 1.0)  # B before she leaves
    frames = searcher.search(q, {"visual": 1.0}, SearchOptions(k=50))
    assert len(frames) == 40  # every person is a hit of its own, and knows its track
    assert {h.as_dict()["track"] is None for h in frames if h.kind == "image"} == {True}
    assert all(isinstance(h.as_dict()["track"], int) for h in frames if h.kind == "video")
    result = searcher.search(q, {"visual": 1.0}, SearchOptions(k=50, group="track"))
    assert len(result) == 8 + 2 and len({h.moment.track for h in result if h.moment}) == 8
    top = result[0]
    assert top.path.endswith("walk.mp4") and (top.moment.t_start, top.moment.t_end) == (0.0, 3.0)
    assert top.moment.persons == 4 and top.score == pytest.approx(1.0, abs=1e-3)
    assert top.moment.frame_score == pytest.approx(1.0, abs=1e-3) and top.t_sec == 1.0
    assert [f["t_sec"] for f in top.moment.strip] == [0.0, 1.0, 2.0, 3.0]
    second = result[1]  # the same look after her return: another track, another moment
    assert (second.moment.t_start, second.moment.t_end, second.moment.persons) == (8.0, 11.0, 4)
    ranges = sorted((h.path.rsplit("/", 1)[1], h.moment.t_start, h.moment.t_end) for h in result if h.moment)
    assert ranges == sorted((n, t0, t1) for n in ("walk.mp4", "other.mp4") for _, t0, t1, _ in EXPECTED)
    images = [h for h in result if h.kind == "image"]
    assert len(images) == 2 and all(h.moment is None and h.track_id is None for h in images)
    as_json = top.as_dict()
    assert (as_json["track"], as_json["t_start"], as_json["t_end"]) == (top.moment.track, 0.0, 3.0)
    assert result.query["group"] == "track" and "3" in result.query["aggregate"]
    # pages are slices of one ranking of moments; filters and per-media work on moments
    pages = [searcher.search(q, {"visual": 1.0}, SearchOptions(k=3, offset=o, group="track")) for o in (0, 3, 6)]
    assert [h.person_id for p in pages for h in p] == [h.person_id for h in result][:9]
    assert [h.rank for h in pages[1]] == [4, 5, 6]
    videos_only = searcher.search(q, {"visual": 1.0}, SearchOptions(k=50, group="track", kind="video"))
    assert len(videos_only) == 8
    other = searcher.search(q, {"visual": 1.0}, SearchOptions(k=50, group="track", path="*/other.mp4"))
    assert len(other) == 4 and all(h.path.endswith("other.mp4") for h in other)
    per_media = searcher.search(q, {"visual": 1.0}, SearchOptions(k=50, group="track", per_media=True))
    assert len(per_media) == 4 and per_media[0].person_id == top.person_id
    high = searcher.search(q, {"visual": 1.0}, SearchOptions(k=50, group="track", min_score=0.9))
    assert [h.person_id for h in high] == [h.person_id for h in result if h.score >= 0.9]
    with pytest.raises(QueryError, match="--group"):
        searcher.search(q, {"visual": 1.0}, SearchOptions(group="media"))
    store.close()


def test_grouped_scores_aggregate_every_frame_of_a_track(tracked):
    """A moment's score is the mean of its best three frame scores, all of its frames re-scored exactly, even
    when only one of them was among the candidates."""
    store = Store(tracked)
    searcher = Searcher(store)
    q = look_query(store, 50.0, 5.0)  # A's last frame
    with store.db.session() as s:  # every frame's exact score, from the stored vectors
        stored = repo.fetch_vectors(s, repo.person_ids(s))
        pids, visual = stored.ids, stored.visual
    scores = dict(zip(pids.tolist(), (visual @ q["visual"]).tolist(), strict=True))
    [moment] = searcher.search(q, {"visual": 1.0}, SearchOptions(k=1, group="track"))
    assert (moment.moment.t_start, moment.moment.t_end) == (0.0, 5.0)
    with store.db.session() as s:
        members = track_members(s, [moment.moment.track])[moment.moment.track]
    assert moment.score == pytest.approx(moment_score(np.array([scores[m] for m in members])), abs=1e-5)
    assert moment.score < moment.moment.frame_score == pytest.approx(max(scores[m] for m in members), abs=1e-5)
    best = searcher.search(q, {"visual": 1.0}, SearchOptions(k=1, group="track", moment_frames=1))
    assert best[0].score == pytest.approx(best[0].moment.frame_score) and "best frame" in best.query["aggregate"]
    with pytest.raises(QueryError, match="--moment-frames"):
        searcher.search(q, {"visual": 1.0}, SearchOptions(group="track", moment_frames=0))
    store.close()


# ------------------------------------------------------------------ upgrade, remove, re-ingest


@pytest.mark.guarantee("G27")
def test_older_stores_are_upgraded_with_the_same_tracks(tracked, tmp_path, monkeypatch):
    import shutil

    old = tmp_path / "old"
    shutil.copytree(tracked, old)
    downgrade(old / "a2v.sqlite", 2)

    def fails_at_the_end(conn, link):  # the whole step runs, then the disk refuses: nothing of it may stay
        real_step(conn, link)
        raise OperationalError("UPDATE", {}, sqlite3.OperationalError("attempt to write a readonly database"))

    real_step = migrations.STEPS[2]
    monkeypatch.setitem(migrations.STEPS, 2, fails_at_the_end)
    with pytest.raises(StoreError, match="schema version 2 and must be upgraded .* readonly database.*; open it "
                       r"once where it is writable \(e.g. `manage.py stats --data-dir ...`\)$"):
        Store(old)
    con = sqlite3.connect(old / "a2v.sqlite")
    assert con.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone() == ("2",)
    assert con.execute("SELECT count(*) FROM sqlite_master WHERE name='tracks'").fetchone() == (0,)
    con.close()
    monkeypatch.setitem(migrations.STEPS, 2, real_step)
    assert stored_tracks(old) == stored_tracks(tracked)
    oldest = tmp_path / "oldest"  # a schema 1 store goes through both steps
    shutil.copytree(tracked, oldest)
    downgrade(oldest / "a2v.sqlite", 1)
    assert stored_tracks(oldest) == stored_tracks(tracked)
    store = Store(old)
    with store.db.session() as s:
        assert get_meta(s, "schema_version") == str(SCHEMA_VERSION)
    assert store.check().problems == []
    store.close()


def test_remove_and_reingest_rebuild_the_tracks(videos, tracked, tmp_path):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(tracked, data)
    before = stored_tracks(data)
    store = Store(data).lock("test")
    with store.db.session() as s:
        walk = repo.media_ids_under(s, [str(videos / "in" / "walk.mp4")])
        old_ids = set(s.execute(repo.select(Track.id)).scalars())
    store.remove_media(walk)
    with store.db.session() as s:
        assert repo.counts(s)["tracks"] == 4
    store.close()
    assert "walk.mp4" not in stored_tracks(data)
    con = sqlite3.connect(data / "a2v.sqlite")  # lose the tracks of a video behind the store's back
    con.executescript("PRAGMA foreign_keys=ON; DELETE FROM tracks WHERE number = 1;")
    con.close()
    store = Store(data).lock("test")
    assert [p.what for p in store.check().problems] == ["tracks"]
    assert store.check(repair=True).ok and store.check().problems == []
    store.close()
    ingest(data, [videos / "in"], videos / "boxes_all.json")
    assert stored_tracks(data) == before
    ingest(data, [videos / "in"], videos / "boxes_all.json", force=True)  # every file replaced in place
    assert stored_tracks(data) == before
    store = Store(data)
    with store.db.session() as s:
        assert repo.counts(s)["tracks"] == 8
        assert not old_ids & set(s.execute(repo.select(Track.id)).scalars())  # ids are never reused
    store.close()


def test_per_frame_boxes_are_validated(tmp_path):
    doc = {"images": [{"id": 1, "file_name": "v.mp4", "frame_index": -1}], "annotations": []}
    (tmp_path / "b.json").write_text(json.dumps(doc))
    with pytest.raises(InputError, match="frame_index"):
        BoxesFile(tmp_path / "b.json")
    doc["images"] = [{"id": 1, "file_name": "v.mp4", "frame_index": 3}, {"id": 2, "file_name": "v.mp4"}]
    (tmp_path / "b.json").write_text(json.dumps(doc))
    with pytest.raises(InputError, match="with and without frame_index"):
        BoxesFile(tmp_path / "b.json")


# ------------------------------------------------------------------ CLI


def test_cli_group_track_sheet_show_and_stats(videos, tracked, tmp_path):
    data = ["--data-dir", tracked]
    store = Store(tracked)
    with store.db.session() as s:
        pid = s.execute(repo.select(Person.id).join(repo.Media).where(
            Person.t_sec == 1.0, Person.x1 == 105.0, repo.Media.path.like("%/walk.mp4"))).scalar_one()
    store.close()
    sheet = tmp_path / "sheet.png"
    code, out, err = run_main("search", "--person", pid, "--group", "track", "--weights", "1,0", "-k", "3", "--json",
                              "--sheet", sheet, *data)
    assert code == 0, err
    results = json.loads(out)["results"]
    assert len(results) == 3 and len({r["track"] for r in results}) == 3
    assert (results[0]["t_start"], results[0]["t_end"]) == (8.0, 11.0)  # B after her return; her own track is left out
    assert results[0]["path"].endswith("walk.mp4") and results[0]["strip"]
    assert Image.open(sheet).size[0] == 5 * 224
    code, out, err = run_main("search", "--person", pid, "--group", "track", "-k", "2", *data)
    assert code == 0 and "track" in out and "8.00-11.00 s (4 frames)" in out, err
    code, out, err = run_main("search", "--text", "hand: hold", "--group", "track", "--kind", "video", "-k", "20",
                              "--moment-frames", "1", "--json", *data)
    assert code == 0, err
    doc = json.loads(out)
    assert len(doc["results"]) == 8 and doc["query"]["aggregate"] == "the best frame's score"
    assert all(r["score"] == r["frame_score"] for r in doc["results"])
    code, _, err = run_main("search", "--person", pid, "--group", "video", *data)
    assert code == 1 and err.count("\n") == 1 and "--group" in err
    strip = tmp_path / "track.png"
    code, out, err = run_main("show", "--track", results[0]["track"], "--out", strip, *data)
    assert code == 0 and "8.00-11.00 s, 4 frames" in out, err
    assert Image.open(strip).size[1] == 160 + 20
    code, _, err = run_main("show", "--track", 999999, "--out", strip, *data)
    assert code == 1 and "no track with id 999999" in err
    moved = videos / "in" / "walk.mp4"
    moved.rename(tmp_path / "elsewhere.mp4")
    try:
        code, _, err = run_main("show", "--track", results[0]["track"], "--out", strip, *data)
    finally:
        (tmp_path / "elsewhere.mp4").rename(moved)
    assert code == 1 and err.startswith("error: cannot read the frame at 8.0 s of") and err.count("\n") == 1
    code, out, _ = run_main("stats", *data, "--json")
    assert json.loads(out)["tracks"] == 8
    code, out, _ = run_main("stats", *data)
    assert "8 video tracks" in out


def test_grouped_ranking_equals_brute_force(tmp_path):
    """Moments from the growing candidate pool are the exact top moments over every stored person."""
    from helpers import media, random_person, writable_store

    rng = np.random.default_rng(7)
    store = writable_store(tmp_path / "data")
    items = []
    for v in range(30):  # 30 videos, 2 people each, 20 frames: 1200 persons, 60 tracks
        looks = [rng.normal(size=16) for _ in range(2)]
        persons = []
        for f in range(20):
            for j, look in enumerate(looks):
                p = random_person(rng, box=[10 + 60 * j, 10, 50 + 60 * j, 90], frame_index=f, t_sec=float(f))
                vis = look + 0.2 * rng.normal(size=16)
                p.visual = (vis / np.linalg.norm(vis)).astype(np.float32)
                persons.append(p)
        items.append(media(f"/videos/v{v:02d}.mp4", persons, kind="video"))
    store.write(items)
    searcher = Searcher(store)
    q = unit(99)
    with store.db.session() as s:
        stored = repo.fetch_vectors(s, repo.person_ids(s))
        pids, visual = stored.ids, stored.visual
        track_of = tracks_of(s, pids)
    assert len(set(track_of.values())) == 60
    scores = dict(zip(pids.tolist(), (visual @ q).tolist(), strict=True))
    by_track: dict[int, list[float]] = {}
    for pid, t in track_of.items():
        by_track.setdefault(t, []).append(scores[pid])
    want = sorted(((moment_score(np.array(v)), t) for t, v in by_track.items()), key=lambda x: -x[0])
    got = [h for o in (0, 10, 20) for h in searcher.search({"visual": q}, {"visual": 1.0},
                                                            SearchOptions(k=10, offset=o, group="track"))]
    assert [h.track_id for h in got] == [t for _, t in want[:30]]
    assert [h.score for h in got] == pytest.approx([s for s, _ in want[:30]], abs=1e-5)
    store.close()


def test_http_api_groups_by_track(tracked):
    pytest.importorskip("fastapi", reason="the serve extra is not installed: pip install -e '.[serve]'")
    from fastapi.testclient import TestClient

    from a2v_search.api import A2VSearch
    from a2v_search.serve.server import create_app

    api = A2VSearch.open(tracked)
    with TestClient(create_app(api), base_url="http://127.0.0.1") as client:
        params = {"text": "hand: hold", "kind": "video", "k": 20, "group": "track"}
        grouped = client.get("/api/search", params=params).json()
        assert len(grouped["results"]) == 8 and grouped["query"]["group"] == "track"
        code, out, _ = run_main("search", "--text", "hand: hold", "--kind", "video", "-k", "20", "--group", "track",
                                "--json", "--data-dir", tracked)
        assert code == 0 and json.loads(out)["results"] == grouped["results"]  # the CLI's JSON, moment for moment
        bad = client.get("/api/search", params={**params, "group": "media"})
        assert bad.status_code == 400 and "--group" in bad.json()["error"]
    api.close()


def test_small_frames_and_crowds_link_by_the_same_overlaps() -> None:
    """Frames with few pairs compute box overlaps on Python floats, crowds with numpy: the same numbers, so a crowd
    split into small frames links as the numbers say whichever way they were computed."""
    from a2v_search.tracks import _iou, _iou_matrix

    rng = np.random.default_rng(3)
    xy = rng.uniform(0, 300, (60, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(1, 120, (60, 2))], axis=1)
    boxes[5] = boxes[9]  # identical boxes: IoU 1
    boxes[7] = [10, 10, 20, 20]
    boxes[8] = [20, 10, 30, 20]  # touching: IoU 0
    want = _iou_matrix(boxes, boxes)
    got = np.array([[_iou(list(a), list(b)) for b in boxes] for a in boxes])
    np.testing.assert_array_equal(got, want)
    assert got[5, 9] == 1.0 and got[7, 8] == 0.0
    # 12 persons walking right, one frame each second: 12 x 12 pairs per frame (numpy) or 2 x 2 (Python floats)
    visual = np.tile(np.eye(12, 16, dtype=np.float32), (4, 1))  # 4 frames of the same 12 persons
    moving = [[10.0 + 30 * p + 3 * f, 50.0, 35.0 + 30 * p + 3 * f, 150.0] for f in range(4) for p in range(12)]
    times = [float(f) for f in range(4) for _ in range(12)]
    assert link(times, moving, visual) == list(range(12)) * 4
    pick = [f * 12 + p for f in range(4) for p in (0, 1)]
    assert link([times[i] for i in pick], [moving[i] for i in pick], visual[pick]) == [0, 1] * 4


def test_a_short_video_links_the_same_with_every_overlap_computed_at_once(monkeypatch) -> None:
    """Videos of up to ALL_PAIRS_MAX persons take their box overlaps from one n x n matrix, longer ones frame by
    frame: the same tracks either way, on crowds that cross, occlude and leave."""
    from a2v_search import tracks

    rng = np.random.default_rng(11)
    for trial in range(20):
        frames, people = int(rng.integers(2, 12)), int(rng.integers(1, 8))
        times, boxes, visual = [], [], []
        looks = rng.normal(size=(people, 32))
        for f in range(frames):
            for p in range(people):
                if rng.random() < 0.2:
                    continue  # out of sight in this frame
                x = 40.0 * p + rng.normal(0, 8) + 6 * f
                times.append(f * 0.5)
                boxes.append([x, 20.0, x + rng.uniform(30, 90), 200.0])
                visual.append(looks[p] + rng.normal(0, 0.6, 32))
        visual = np.asarray(visual, np.float32).reshape(len(times), 32)
        visual /= np.linalg.norm(visual, axis=1, keepdims=True) + 1e-9
        at_once = tracks.link(times, boxes, visual)
        monkeypatch.setattr(tracks, "ALL_PAIRS_MAX", 0)
        by_frame = tracks.link(times, boxes, visual)
        monkeypatch.setattr(tracks, "ALL_PAIRS_MAX", 300)
        assert at_once == by_frame, trial
