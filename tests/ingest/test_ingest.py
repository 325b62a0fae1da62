from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import run_main

from a2v_search.api import A2VSearch
from a2v_search.errors import InputError
from a2v_search.store import Store
from a2v_search.testing.media import write_bad_files, write_images, write_odd_images, write_video
from db import repo

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture()
def api(tmp_path, tiny_clip_dir, tiny_bert_dir):
    a = A2VSearch.open(tmp_path / "data", model=str(tiny_clip_dir), text_model=str(tiny_bert_dir), detector="none",
                       device="cpu")
    yield a
    a.close()


def store_state(data_dir: Path) -> dict:
    store = Store(data_dir)
    with store.db.session() as s:
        counts = repo.counts(s)
        paths = [r[0] for r in s.execute(repo.select(repo.Media.path))]
        per_media = dict(s.execute(repo.select(repo.Person.media_id, repo.func.count(repo.Person.id))
                                   .group_by(repo.Person.media_id)).all())
    check = store.check()
    store.close()
    return {"counts": counts, "paths": paths, "per_media": per_media, "check": check}


@pytest.mark.guarantee("G11")
def test_end_to_end_with_bad_files(api, tmp_path):
    good = write_images(tmp_path / "in", 5)
    write_video(tmp_path / "in" / "clip.mp4", seconds=3.0)
    bad = write_bad_files(tmp_path / "in" / "bad")
    (tmp_path / "in" / "empty_folder").mkdir()
    (tmp_path / "in" / ".hidden").mkdir()
    write_images(tmp_path / "in" / ".hidden", 2, start=50)  # hidden folders are skipped
    missing = tmp_path / "in" / "missing.jpg"
    report = api.ingest([tmp_path / "in", missing, tmp_path / "in" / "empty_folder"], workers=0,
                        max_pixels=10_000_000)
    failed = {Path(f["path"]).name: f for f in report.failures}
    for kind, path in bad.items():
        name = os.fsencode(path.name).decode("utf-8", "backslashreplace")
        assert name in failed, f"{kind} not reported: {sorted(failed)}"
    assert "missing.jpg" in failed and "empty_folder" in failed
    assert "pixels" in failed["huge.png"]["error"] and "truncated" in failed["truncated.jpg"]["error"]
    assert len(report.failures) == len(bad) + 2  # each bad input once
    assert report.media_ingested == 6 and report.persons_added == 5 + 3  # 3 s of video at 1 fps
    state = store_state(tmp_path / "data")
    assert state["counts"]["media"] == 6 and state["counts"]["persons"] == 8
    assert state["counts"]["failures"] == len(report.failures)
    assert state["check"].problems == []
    assert not any(".hidden" in p for p in state["paths"])
    assert sorted(str(p) for p in good) == sorted(p for p in state["paths"] if p.endswith(".png"))

    again = api.ingest([tmp_path / "in"], workers=0, max_pixels=10_000_000)
    assert again.media_ingested == 0 and again.persons_added == 0 and again.media_skipped == 6
    forced = api.ingest([tmp_path / "in"], workers=0, force=True, max_pixels=10_000_000)
    assert forced.media_ingested == 6 and forced.persons_added == 8
    state = store_state(tmp_path / "data")
    assert state["counts"]["persons"] == 8 and state["counts"]["media"] == 6 and state["check"].problems == []

    hit = api.search_image(good[2], detector="none", k=3).hits[0]
    assert hit.path == str(good[2]) and hit.score == pytest.approx(1.0, abs=1e-2)
    video_hits = api.search_text("hand: hold", k=20, kind="video")
    assert {h.frame_index for h in video_hits} == {0, 10, 20} and {h.t_sec for h in video_hits} == {0.0, 1.0, 2.0}


def test_odd_but_valid_images(api, tmp_path):
    odd = write_odd_images(tmp_path / "odd")
    report = api.ingest([tmp_path / "odd"], workers=1)  # the worker-process path
    assert report.failures == [] and report.media_ingested == len(odd) and report.persons_added == len(odd)
    store = Store(tmp_path / "data")
    with store.db.session() as s:
        sizes = {Path(p).name: (w, h) for p, w, h in s.execute(
            repo.select(repo.Media.path, repo.Media.width, repo.Media.height))}
    store.close()
    assert sizes["rotated.jpg"] == (40, 60)  # EXIF orientation applied
    assert sizes["animated.gif"] == (60, 40) and sizes["no_extension"] == (60, 40)


def test_duplicates_are_noted_not_encoded_twice(api, tmp_path):
    (tmp_path / "a").mkdir()
    src = write_images(tmp_path / "a", 2)
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "copy.png").write_bytes(src[0].read_bytes())
    report = api.ingest([tmp_path / "a", tmp_path / "b"], workers=0)
    assert report.media_ingested == 2 and report.duplicates == 1 and report.persons_added == 2
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "later.png").write_bytes(src[1].read_bytes())  # duplicate of an already stored file
    later = api.ingest([tmp_path / "c"], workers=0)
    assert later.duplicates == 1 and later.persons_added == 0
    assert store_state(tmp_path / "data")["counts"]["duplicates"] == 2


def test_changed_content_is_replaced(api, tmp_path):
    [p] = write_images(tmp_path / "in", 1)
    api.ingest([p], workers=0)
    before = api.search_text("hand: hold", k=1).hits[0]
    write_images(tmp_path / "in", 1, start=40)[0].rename(p)  # new content under the same path
    again = api.ingest([p], workers=0)
    assert again.media_ingested == 1 and again.persons_added == 1
    state = store_state(tmp_path / "data")
    assert state["counts"]["persons"] == 1 and state["counts"]["media"] == 1 and state["check"].problems == []
    assert api.search_text("hand: hold", k=1).hits[0].person_id != before.person_id


def test_boxes_files(api, tmp_path):
    paths = write_images(tmp_path / "in", 3, w=80, h=60)
    coco = {"images": [{"id": i, "file_name": p.name} for i, p in enumerate(paths)],
            "annotations": [{"image_id": 0, "bbox": [5, 5, 20, 40], "category_id": 1},
                            {"image_id": 0, "bbox": [40, 10, 30, 45], "category_id": 1},
                            {"image_id": 1, "bbox": [0, 0, 10, 10], "category_id": 2},
                            {"image_id": 2, "bbox": [10, 10, 50, 40], "category_id": 1}],
            "categories": [{"id": 1, "name": "person"}, {"id": 2, "name": "cup"}]}
    boxes = tmp_path / "boxes.json"
    boxes.write_text(json.dumps(coco))
    report = api.ingest([tmp_path / "in"], detector=f"boxes:{boxes}", workers=0)
    assert report.persons_added == 3 and report.media_ingested == 3
    hits = api.search_text("hand: hold", k=10)
    assert sorted(tuple(h.box) for h in hits) == [(5, 5, 25, 45), (10, 10, 60, 50), (40, 10, 70, 55)]

    hake = {paths[0].name: {"labels": [{"human_bbox": [1, 1, 30, 50]}, {"human_bbox": [1, 1, 30, 50]}]}}
    (tmp_path / "hake.json").write_text(json.dumps(hake))
    spec = api.model_spec()
    r2 = A2VSearch.open(tmp_path / "d2", model=spec.model, text_model=spec.text_model)
    assert r2.ingest([tmp_path / "in"], detector=f"boxes:{tmp_path / 'hake.json'}", workers=0).persons_added == 1


@pytest.mark.parametrize("content,match", [
    ("{not json", "not valid JSON"),
    (json.dumps({"images": [{"id": 1, "file_name": "img000.png"}],
                 "annotations": [{"image_id": 1, "bbox": [0, 0, -5, 10]}]}), "empty box"),
    (json.dumps({"images": [{"id": 1, "file_name": "elsewhere.png"}], "annotations": []}), "not among the files"),
    (json.dumps([1, 2, 3]), "neither COCO-style"),
])
@pytest.mark.guarantee("G12")
def test_bad_boxes_file_fails_before_any_work(api, tmp_path, content, match):
    write_images(tmp_path / "in", 2)
    (tmp_path / "boxes.json").write_text(content)
    with pytest.raises(InputError, match=match):
        api.ingest([tmp_path / "in"], detector=f"boxes:{tmp_path / 'boxes.json'}", workers=0)
    assert not (tmp_path / "data" / "a2v.sqlite").exists() or store_state(tmp_path / "data")["counts"]["media"] == 0


def test_detector_model(tmp_path, tiny_clip_dir, tiny_bert_dir, tiny_detector_dir):
    api = A2VSearch.open(tmp_path / "data", model=str(tiny_clip_dir), text_model=str(tiny_bert_dir),
                         detector=str(tiny_detector_dir), device="cpu")
    write_images(tmp_path / "in", 3, w=96, h=80)
    report = api.ingest([tmp_path / "in"], workers=0)
    assert report.failures == [] and report.media_ingested == 3 and report.persons_added >= 3
    hits = api.search_text("hand: hold", k=50)
    assert all(0 <= h.box[0] < h.box[2] <= 96 and 0 <= h.box[1] < h.box[3] <= 80 for h in hits)
    persons = api.predict(tmp_path / "in" / "img000.png")
    assert persons and all(p["score"] >= 0.5 for p in persons)


def _cli(*args, env=None, cwd=ROOT):
    return subprocess.run([sys.executable, "manage.py", *map(str, args)], capture_output=True, text=True, cwd=cwd,
                          env={**os.environ, **(env or {})})


@pytest.mark.guarantee("G1")
def test_sigkill_mid_run_then_rerun_ingests_each_file_once(tmp_path, tiny_clip_dir, tiny_bert_dir):
    write_images(tmp_path / "in", 12)
    args = ["ingest", tmp_path / "in", "--data-dir", tmp_path / "data", "--model", tiny_clip_dir, "--text-model",
            tiny_bert_dir, "--detector", "none", "--workers", "0", "--batch-size", "2", "--commit-every", "2",
            "--json"]
    killed = _cli(*args, env={"A2V_FAULT": "after_commit:3"})
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    partial = store_state(tmp_path / "data")
    assert 0 < partial["counts"]["media"] < 12  # killed between a commit and the FAISS save
    code, out, err = run_main(*args)  # the rerun, in process
    assert code == 0, err
    summary = json.loads(out)
    assert summary["media_ingested"] + summary["media_skipped"] == 12
    state = store_state(tmp_path / "data")
    assert state["counts"]["media"] == 12 and state["counts"]["persons"] == 12
    assert set(state["per_media"].values()) == {1} and state["check"].problems == []


def test_cli_json_summary_and_exit_codes(tmp_path, tiny_clip_dir, tiny_bert_dir):
    write_images(tmp_path / "in", 2)
    (tmp_path / "in" / "bad.jpg").write_text("nope")
    base = ["--data-dir", tmp_path / "data", "--model", tiny_clip_dir, "--text-model", tiny_bert_dir,
            "--detector", "none", "--workers", "0"]
    code, out, err = run_main("ingest", tmp_path / "in", *base, "--json")
    assert code == 0, err
    summary = json.loads(out)
    assert set(summary) >= {"files_seen", "media_ingested", "media_skipped", "persons_added", "failures", "seconds",
                            "persons_per_s", "stages"}
    assert summary["files_seen"] == 3 and summary["failures"][0]["path"].endswith("bad.jpg")
    assert set(summary["failures"][0]) == {"path", "stage", "error"}
    code, out, _ = run_main("ingest", tmp_path / "in", *base, "--strict")
    assert code == 1 and "bad.jpg" in out
    code, _, err = run_main("ingest", tmp_path / "in" / "bad.jpg", *base)
    assert code == 1
    assert np.isfinite(summary["persons_per_s"])


def test_engine_flags_are_checked_before_any_work(api, tmp_path):
    write_images(tmp_path / "in", 1)
    with pytest.raises(InputError, match="unknown engine 'spark'"):
        api.ingest([tmp_path / "in"], engine="spark")
    with pytest.raises(InputError, match="need --engine ray"):
        api.ingest([tmp_path / "in"], ray_address="auto")
    assert not (tmp_path / "data").exists()  # nothing was opened or written


def test_ray_engine_without_ray_names_the_extra(api, tmp_path, monkeypatch):
    write_images(tmp_path / "in", 1)
    monkeypatch.setitem(sys.modules, "ray", None)  # as if Ray were not installed
    with pytest.raises(InputError, match=r"pip install 'a2v-search\[ray\]'"):
        api.ingest([tmp_path / "in"], engine="ray")
    assert store_state(tmp_path / "data")["counts"]["media"] == 0


def test_ray_engine_refuses_gpu_jpeg_decoding(api, tmp_path, monkeypatch):
    write_images(tmp_path / "in", 1)
    monkeypatch.setitem(sys.modules, "ray", None)  # refused before Ray is needed
    with pytest.raises(InputError, match="--jpeg-decoder gpu is for the local engine"):
        api.ingest([tmp_path / "in"], engine="ray", jpeg_decoder="gpu")
    assert store_state(tmp_path / "data")["counts"]["media"] == 0
