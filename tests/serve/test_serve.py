"""The HTTP API (``manage.py serve``) through the ASGI test client, on a store with known answers: every endpoint
gives what the Python API gives, filters and paging, images, errors, the token, hostile requests, live updates."""

from __future__ import annotations

import io
import json
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from helpers import run_main
from PIL import Image

from a2v_search.testing.profiles import profile_records

pytest.importorskip("fastapi", reason="the serve extra is not installed: pip install -e '.[serve]'")
from fastapi.testclient import TestClient  # noqa: E402

from a2v_search import taxonomy as tx  # noqa: E402
from a2v_search.api import A2VSearch  # noqa: E402
from a2v_search.serve.server import create_app  # noqa: E402

DRINK = "hand: hold; head: drink with"


def local(app, **kwargs) -> TestClient:
    """A test client that talks to the app as a browser on this machine does (``Host: 127.0.0.1``)."""
    return TestClient(app, base_url="http://127.0.0.1:8765", **kwargs)


@pytest.fixture(scope="module")
def client(serve_store):
    api, _ = serve_store
    with local(create_app(api)) as c:
        yield c


def profile(hit: dict) -> str:
    return hit["path"].split("/")[-2]


def person_of(client, path_end: str) -> dict:
    hits = client.get("/api/search", params={"text": DRINK, "k": 100}).json()["results"]
    return next(h for h in hits if h["path"].endswith(path_end))


def test_text_search_is_the_search_json_object(client, serve_store):
    api, _ = serve_store
    for text in (DRINK, "drinking from a cup"):
        r = client.get("/api/search", params={"text": text, "k": 5})
        assert r.status_code == 200 and r.headers["content-type"] == "application/json"
        body = r.json()
        assert body == json.loads(json.dumps(api.search_text(text, k=5).as_dict()))  # the `search --json` object
        assert [profile(h) for h in body["results"][:3]] == ["drink"] * 3
    q = client.get("/api/search", params={"text": DRINK, "k": 1}).json()["query"]
    assert q == {"type": "text", "text": DRINK, "mode": "structured",
                 "pasta": [["hand: hold", 1.0], ["head: drink with", 1.0]], "verbs": [], "objects": []}


def test_same_json_as_the_cli(client, serve_store):
    api, _ = serve_store
    code, out, err = run_main("search", "--text", "kicking a ball", "-k", "4", "--collection", "even",
                              "--data-dir", api.data_dir, "--json")
    assert code == 0, err
    r = client.get("/api/search", params={"text": "kicking a ball", "k": 4, "collection": "even"})
    assert r.json() == json.loads(out)


def test_filters_and_paging(client):
    def ids(**params):
        r = client.get("/api/search", params={"text": "drinking from a cup", **params})
        assert r.status_code == 200, r.text
        return r.json()["results"]

    full = ids(k=30)
    pages = [ids(k=5, offset=o) for o in (0, 5, 10)]
    assert [h["person_id"] for p in pages for h in p] == [h["person_id"] for h in full[:15]]
    assert [h["rank"] for h in pages[1]] == [6, 7, 8, 9, 10]
    odd = ids(k=50, collection="odd")
    assert odd and all(h["path"].split("/")[-1] == "1.jpg" for h in odd)  # copies 0, 2: even; 1: odd
    video = ids(k=50, kind="video")
    assert len(video) == 3 and {h["t_sec"] for h in video} == {0.0, 1.0, 2.0}
    assert len(ids(k=50, kind="video", per_media=True)) == 1
    held = ids(k=50, where=["head: drink with>=0.5", "hand: hold>=0.5"])
    assert {profile(h) for h in held} == {"drink"} and len(held) == 3
    assert {profile(h) for h in ids(k=50, path="*/pictures/kick/*")} == {"kick"}
    cut = full[4]["score"] - 1e-5  # scores in JSON are rounded to 6 decimals
    above = ids(k=50, min_score=cut)
    assert [h["person_id"] for h in above] == [h["person_id"] for h in full if h["score"] >= cut]
    assert ids(k=50, min_score=2.0) == []


def test_clip_text_and_person_queries(client):
    r = client.get("/api/search", params={"clip_text": "a person drinking", "k": 4})
    assert r.status_code == 200 and r.json()["query"] == {"type": "clip_text", "text": "a person drinking"}
    assert len(r.json()["results"]) == 4
    first = person_of(client, "drink/0.jpg")["person_id"]
    body = client.get("/api/search", params={"person": first, "k": 2, "weights": "0,1"}).json()
    assert body["query"]["type"] == "person" and body["query"]["person_id"] == first
    assert first not in [h["person_id"] for h in body["results"]]
    assert [profile(h) for h in body["results"]] == ["drink", "drink"]  # language only: the other drinkers
    three = client.get("/api/search", params={"person": first, "k": 2, "weights": "0,1,0"})  # the CLI's three weights
    assert three.status_code == 200 and three.json()["results"] == body["results"]
    assert three.json()["query"]["weights"] == [0.0, 1.0, 0.0]


def test_image_upload_finds_itself(client, serve_store):
    _, root = serve_store
    data = (root / "ingested" / "walk.png").read_bytes()
    r = client.post("/api/search/image", files={"image": ("query.png", data, "image/png")}, params={"k": 3})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["results"][0]["path"].endswith("ingested/walk.png") and body["results"][0]["score"] > 0.999
    assert body["query"]["type"] == "image" and body["query"]["image"] == "query.png"
    boxed = client.post("/api/search/image", files={"image": ("q.png", data, "image/png")},
                        data={"box": "10,20,200,300"}, params={"k": 2, "collection": "ingested"})
    assert boxed.status_code == 200 and boxed.json()["query"]["box"] == [10, 20, 200, 300]
    assert {profile(h) for h in boxed.json()["results"]} == {"ingested"}


def test_person_endpoint_has_everything(client):
    hit = person_of(client, "drink/2.jpg")
    p = client.get(f"/api/persons/{hit['person_id']}").json()
    assert list(p["pasta"]) == list(tx.PASTA_NAMES) and list(p["verbs"]) == list(tx.VERB_NAMES)
    assert list(p["parts"]) == list(tx.PARTS)
    assert p["pasta"]["hand: hold"] == pytest.approx(0.9, abs=1e-3) and p["verbs"]["drink_with"] == pytest.approx(0.9,
                                                                                                                abs=1e-3)
    assert p["box"] == hit["box"] and p["media"]["path"] == hit["path"] and p["media"]["kind"] == "image"
    assert (p["media"]["width"], p["media"]["height"]) == (240, 320) and p["media"]["collection"] == "even"
    assert p["top_pasta"][:2] == hit["pasta"][:2]
    video = client.get("/api/search", params={"text": DRINK, "k": 3, "kind": "video"}).json()["results"][1]
    v = client.get(f"/api/persons/{video['person_id']}").json()
    assert v["media"]["kind"] == "video" and v["t_sec"] == video["t_sec"] and v["frame_index"] == video["frame_index"]


def test_thumbnails_and_media_images(client):
    hit = person_of(client, "kick/1.jpg")
    r = client.get(f"/api/persons/{hit['person_id']}/thumbnail", params={"size": 128})
    assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
    img = Image.open(io.BytesIO(r.content))
    assert img.format == "JPEG" and img.size == (128, 128)
    again = client.get(f"/api/persons/{hit['person_id']}/thumbnail", params={"size": 128},
                       headers={"If-None-Match": r.headers["etag"]})
    assert again.status_code == 304 and not again.content
    assert client.get(f"/api/persons/{hit['person_id']}/thumbnail").headers["etag"] != r.headers["etag"]
    # the box is drawn in the box colour
    r, g, b = np.asarray(img).astype(int).transpose(2, 0, 1)
    assert ((r > 170) & (g < 90) & (b < 130)).sum() > 100
    media_id = client.get(f"/api/persons/{hit['person_id']}").json()["media"]["id"]
    full = Image.open(io.BytesIO(client.get(f"/api/media/{media_id}/image", params={"size": 160}).content))
    assert full.size == (120, 160)
    video = client.get("/api/search", params={"text": DRINK, "kind": "video", "k": 1}).json()["results"][0]
    thumb = client.get(f"/api/persons/{video['person_id']}/thumbnail", params={"size": 64})
    assert thumb.status_code == 200 and Image.open(io.BytesIO(thumb.content)).size == (64, 64)
    vid_media = client.get(f"/api/persons/{video['person_id']}").json()["media"]["id"]
    frame = client.get(f"/api/media/{vid_media}/image", params={"t": 1.0})
    assert frame.status_code == 200 and Image.open(io.BytesIO(frame.content)).size == (160, 120)


def test_stats_is_the_stats_json_object(client, serve_store):
    api, _ = serve_store
    body = client.get("/api/stats").json()
    assert body == json.loads(json.dumps(api.stats()))
    assert body["persons"] == 41 and body["videos"] == 1 and body["collections"] == {"even": 24, "odd": 12,
                                                                                      "ingested": 3}


@pytest.mark.parametrize("url,status,words", [
    ("/api/search", 400, "exactly one of"),
    ("/api/search?text=a&person=1", 400, "exactly one of"),
    ("/api/search?text=hand:%20hold&k=0", 422, "k"),
    ("/api/search?text=hand:%20hold&k=5000", 422, "k"),
    ("/api/search?text=hand:%20hold&offset=-1", 422, "offset"),
    ("/api/search?text=hand:%20hold&kind=audio", 400, "image or video"),
    ("/api/search?text=hand:%20hold&where=hand:%20juggle>0.5", 400, "juggle"),
    ("/api/search?text=hand:%20hold&where=nonsense", 400, "cannot read filter"),
    ("/api/search?text=hand:%20hold=x", 400, "not a number"),
    ("/api/search?text=%20%20", 400, "empty"),
    ("/api/search?person=999999", 404, "no person with id 999999"),
    ("/api/search?person=abc", 422, "person"),
    ("/api/search?text=hand:%20hold&min_score=nan", 400, "finite"),
    ("/api/search?person=1&weights=1", 400, "two or three numbers"),
    ("/api/search?person=1&weights=0.5,0.5,1", 400, "no activity space"),  # zero-shot heads have none
    ("/api/persons/999999", 404, "no person with id"),
    ("/api/persons/abc", 422, "person_id"),
    ("/api/persons/1/thumbnail?size=99999", 422, "size"),
    ("/api/media/999999/image", 404, "no media with id"),
    ("/api/media/1/image?t=-1", 422, "t"),
    ("/api/nothing", 404, "Not Found"),
])
@pytest.mark.guarantee("G26")
def test_bad_requests_get_json_errors(client, url, status, words):
    r = client.get(url)
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/json" and words in r.json()["error"]
    assert "Traceback" not in r.text


@pytest.mark.guarantee("G26")
def test_nothing_in_a_request_is_a_path(client):
    for url in ("/api/media/..%2F..%2F..%2Fetc%2Fpasswd/image", "/api/persons/%2e%2e%2f%2e%2e%2fetc%2fpasswd/thumbnail",
                "/api/media/1/image/../../../../etc/passwd", "/../../etc/passwd", "/api/persons/1%00/thumbnail"):
        r = client.get(url)
        assert r.status_code in (404, 422), (url, r.status_code)
        assert "root:" not in r.text and r.headers["content-type"] == "application/json"


@pytest.mark.guarantee("G26")
def test_upload_errors(serve_store):
    api, root = serve_store
    with local(create_app(api, max_upload_mb=0.05, max_pixels=240 * 320)) as c:
        big = io.BytesIO()
        Image.fromarray(np.random.default_rng(0).integers(0, 256, (300, 300, 3), np.uint8)).save(big, "PNG")
        assert len(big.getvalue()) > 0.05 * 2**20
        r = c.post("/api/search/image", files={"image": ("big.png", big.getvalue(), "image/png")})
        assert r.status_code == 413 and "too large" in r.json()["error"]
        wide = io.BytesIO()
        Image.new("RGB", (400, 400)).save(wide, "PNG")  # small file, too many pixels
        r = c.post("/api/search/image", files={"image": ("wide.png", wide.getvalue(), "image/png")})
        assert r.status_code == 400 and "over the limit" in r.json()["error"]
        r = c.post("/api/search/image", files={"image": ("x.jpg", b"not an image at all", "image/jpeg")})
        assert r.status_code == 400 and "cannot read the uploaded image" in r.json()["error"]
        r = c.post("/api/search/image", files={"image": ("x.jpg", b"", "image/jpeg")})
        assert r.status_code == 400 and "empty" in r.json()["error"]
        ok = (root / "ingested" / "walk.png").read_bytes()
        r = c.post("/api/search/image", files={"image": ("q.png", ok, "image/png")}, data={"box": "5,5,1,1"})
        assert r.status_code == 400 and "x2 > x1" in r.json()["error"]
        r = c.post("/api/search/image")
        assert r.status_code == 422 and "image" in r.json()["error"]


@pytest.mark.guarantee("G26")
def test_token_is_required_everywhere(serve_store):
    api, _ = serve_store
    with local(create_app(api, token="s3cret")) as c:
        for url in ("/", "/api/stats", "/api/search?text=hand:%20hold", "/api/persons/1", "/api/persons/1/thumbnail",
                    "/docs", "/openapi.json"):
            r = c.get(url)
            assert r.status_code == 401 and "token" in r.json()["error"], url
            assert c.get(url, headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert c.get("/api/stats", headers={"Authorization": "Bearer s3cret"}).status_code == 200
        assert c.post("/api/search/image", files={"image": ("q.png", b"x", "image/png")}).status_code == 401
        r = c.get("/?token=wrong", follow_redirects=False)
        assert r.status_code == 401
        r = c.get("/?token=s3cret", follow_redirects=False)  # the URL serve prints: sets a cookie for the page
        assert r.status_code == 303 and r.headers["location"] == "/" and "httponly" in r.headers["set-cookie"].lower()
        assert c.get("/").status_code == 200 and c.get("/api/stats").status_code == 200  # the cookie now


def test_page_and_docs_are_served(client):
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "<script>" in page.text and "http://" not in page.text and "https://" not in page.text  # nothing fetched
    schema = client.get("/openapi.json").json()
    assert {"/api/search", "/api/search/image", "/api/persons/{person_id}", "/api/persons/{person_id}/thumbnail",
            "/api/media/{media_id}/image", "/api/stats"} <= set(schema["paths"])
    assert client.get("/docs").status_code == 200


def test_concurrent_requests_agree(client):
    want = client.get("/api/search", params={"text": "drinking from a cup", "k": 8}).json()
    urls = [("/api/search", {"text": "drinking from a cup", "k": 8})] * 16 + [("/api/stats", {})] * 4

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda u: client.get(u[0], params=u[1]), urls))
    assert all(r.status_code == 200 for r in answers)
    assert all(r.json() == want for r in answers[:16])


@pytest.mark.guarantee("G25")
def test_new_persons_appear_without_restart(tmp_path, tiny_clip_dir, tiny_bert_dir):
    data = tmp_path / "data"
    writer = A2VSearch.open(data, model=str(tiny_clip_dir), text_model=str(tiny_bert_dir), device="cpu")
    records = profile_records(visual_dim=16, copies=2)
    kicks = [r for r in records if "/kick/" in r["path"]]
    writer.import_records([r for r in records if "/kick/" not in r["path"]])
    reader = A2VSearch.open(data, device="cpu")
    app = create_app(reader)
    with local(app) as c:
        def kick_hits() -> list[str]:
            hits = c.get("/api/search", params={"text": "foot: kick", "k": 3}).json()["results"]
            return [h["path"] for h in hits if "/kick/" in h["path"]]

        assert c.get("/api/stats").json()["persons"] == len(records) - 2 and kick_hits() == []
        writer.import_records(kicks)  # another writer (as an ingest in another process would)
        assert c.get("/api/stats").json()["persons"] == len(records)
        assert sorted(kick_hits()) == sorted(r["path"] for r in kicks)
        writer.remove([kicks[0]["path"]])
        assert kick_hits() == [kicks[1]["path"]]
        assert app.state.shared.refreshes >= 3
    writer.close()
    reader.close()


@pytest.mark.guarantee("G26")
def test_serve_command_warns_off_loopback(monkeypatch, serve_store):
    import uvicorn

    api, _ = serve_store
    calls = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: calls.append(kw))
    code, _, err = run_main("serve", "--data-dir", api.data_dir, "--host", "0.0.0.0", "--port", "9999")
    assert code == 0 and [(c["host"], c["port"]) for c in calls] == [("0.0.0.0", 9999)]
    assert calls[0]["timeout_keep_alive"] > 0 and calls[0]["limit_concurrency"] > 0  # slow clients: docs/serve.md
    assert "warning: listening on 0.0.0.0" in err and "--token" in err and "http://127.0.0.1:9999/" in err
    code, _, err = run_main("serve", "--data-dir", api.data_dir, "--token", "abc")
    assert code == 0 and "warning" not in err and "http://127.0.0.1:8765/?token=abc" in err
    code, _, err = run_main("serve", "--data-dir", api.data_dir, "--port", "0")
    assert code == 1 and "--port" in err
    code, _, err = run_main("serve", "--data-dir", api.data_dir / "nothing-here")
    assert code == 0 and "warning: no store at" in err and len(calls) == 3


def test_change_check_is_cheap_and_sees_commits(tmp_path, tiny_clip_dir, tiny_bert_dir):
    """Nothing changed: no catch-up (file stats only). A commit by another writer: seen on the next check."""
    import os
    import time

    data = tmp_path / "data"
    writer = A2VSearch.open(data, model=str(tiny_clip_dir), text_model=str(tiny_bert_dir), device="cpu")
    records = profile_records(visual_dim=16, copies=1)
    writer.import_records(records[:4])
    reader = A2VSearch.open(data, device="cpu")
    assert reader.changed()
    reader.refresh()
    old = time.time() - 60
    for p in [data / "a2v.sqlite", data / "a2v.sqlite-wal", *(data / "index").glob("*.json")]:
        if p.exists():
            os.utime(p, (old, old))  # past the two seconds in which coarse file times count as a change
    assert reader.changed()
    reader.refresh()
    assert not reader.changed() and len(reader.search_text("foot: kick", k=10)) == 4
    writer.import_records(records[4:6])
    assert reader.changed()
    reader.refresh()
    assert len(reader.search_text("foot: kick", k=10)) == 6
    writer.close()
    reader.close()


def test_read_write_lock_excludes_writers_from_readers():
    import threading
    import time

    from a2v_search.serve.shared import ReadWriteLock

    lock, events = ReadWriteLock(), []
    inside = threading.Barrier(3)  # two readers inside at once, and this thread
    release = threading.Event()

    def reader(name):
        with lock.read():
            events.append(f"{name} in")
            inside.wait(10)
            release.wait(10)
            events.append(f"{name} out")

    def writer():
        with lock.write():
            events.append("writer")

    readers = [threading.Thread(target=reader, args=(n,)) for n in ("r1", "r2")]
    for t in readers:
        t.start()
    inside.wait(10)  # both readers hold the lock together
    w = threading.Thread(target=writer)
    w.start()
    deadline = time.monotonic() + 10
    while not lock.writers_waiting and time.monotonic() < deadline:  # the writer has arrived and waits
        time.sleep(0.01)
    assert lock.writers_waiting == 1 and "writer" not in events
    release.set()
    for t in [*readers, w]:
        t.join(10)
    assert events.index("writer") > max(events.index("r1 out"), events.index("r2 out"))
    assert sorted(events[:2]) == ["r1 in", "r2 in"]


def test_a_store_that_appears_later_is_served(tmp_path, tiny_clip_dir, tiny_bert_dir):
    data = tmp_path / "data"
    with local(create_app(A2VSearch.open(data, device="cpu"))) as c:
        r = c.get("/api/search", params={"text": "foot: kick"})
        assert r.status_code == 400 and "ingest something first" in r.json()["error"]
        assert c.get("/").status_code == 200
        writer = A2VSearch.open(data, model=str(tiny_clip_dir), text_model=str(tiny_bert_dir), device="cpu")
        writer.import_records([r for r in profile_records(visual_dim=16, copies=1) if "/kick/" in r["path"]])
        writer.close()
        hits = c.get("/api/search", params={"text": "foot: kick"}).json()["results"]
        assert [h["path"] for h in hits] == ["/profiles/kick/0.jpg"]


@pytest.mark.guarantee("G25")
def test_the_serve_command_serves_while_another_process_writes(tmp_path, tiny_clip_dir, tiny_bert_dir):
    """`manage.py serve` in its own process; an import in this one; the server sees it without a restart."""
    import socket
    import subprocess
    import sys
    import time
    from pathlib import Path

    import httpx

    data = tmp_path / "data"
    records = profile_records(visual_dim=16, copies=1)
    first = tmp_path / "first.jsonl"
    first.write_text("\n".join(json.dumps(r) for r in records if "/kick/" not in r["path"]))
    later = tmp_path / "later.jsonl"
    later.write_text("\n".join(json.dumps(r) for r in records if "/kick/" in r["path"]))
    models = ["--model", tiny_clip_dir, "--text-model", tiny_bert_dir, "--device", "cpu", "--data-dir", data]
    assert run_main("import", first, *models)[0] == 0
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    root = Path(__file__).resolve().parents[2]
    server = subprocess.Popen([sys.executable, str(root / "manage.py"), "serve", "--data-dir", str(data), "--port",
                               str(port)], cwd=root, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while True:
            assert server.poll() is None and time.monotonic() < deadline, server.stderr.read() if server.poll() else ""
            try:
                stats = httpx.get(url + "/api/stats", timeout=5).json()
                break
            except httpx.HTTPError:
                time.sleep(0.2)
        assert stats["persons"] == len(records) - 1
        assert run_main("import", later, *models)[0] == 0  # a writer in another process than the server
        hits = httpx.get(url + "/api/search", params={"text": "foot: kick", "k": 1}, timeout=30).json()["results"]
        assert hits[0]["path"] == "/profiles/kick/0.jpg"
    finally:
        server.terminate()
        _, err = server.communicate(timeout=30)
    assert f"serving {data} at http://127.0.0.1:{port}/" in err and "Traceback" not in err
