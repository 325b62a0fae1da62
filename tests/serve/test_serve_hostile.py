"""The server against the open web (issue 29): DNS rebinding and other sites' pages, filters built to freeze the
parser, the token cookie, slow clients, stored files swapped for links or FIFOs, a replaced store, unbounded caches,
numbers out of range, and the memory one request may take."""

from __future__ import annotations

import io
import socket
import threading

import pytest
from helpers import run_main
from PIL import Image
from serve_store import LiveServer

pytest.importorskip("fastapi", reason="the serve extra is not installed: pip install -e '.[serve]'")
from fastapi.testclient import TestClient  # noqa: E402

from a2v_search.errors import QueryError  # noqa: E402
from a2v_search.search import MAX_FILTER_CHARS, MAX_FILTERS, parse_where  # noqa: E402
from a2v_search.serve import server as srv  # noqa: E402
from a2v_search.serve.server import create_app  # noqa: E402

BASE = "http://127.0.0.1:8765"
HEADERS = {"x-content-type-options": "nosniff", "cross-origin-resource-policy": "same-origin",
           "x-frame-options": "DENY"}


@pytest.fixture(scope="module")
def client(serve_store):
    api, _ = serve_store
    with TestClient(create_app(api), base_url=BASE) as c:
        yield c


def a_person(client) -> dict:
    return client.get("/api/search", params={"text": "foot: kick", "k": 1}).json()["results"][0]


def refused(r, *words) -> bool:
    return r.status_code == 403 and r.headers["content-type"] == "application/json" and all(
        w in r.json()["error"] for w in words)


# ------------------------------------------------------------------ 1. DNS rebinding, other sites


@pytest.mark.guarantee("G37")
def test_only_this_machines_names_are_answered(client, serve_store):
    for host in ("evil.example", "evil.example:8765", "127.0.0.1.evil.example", "localhost.evil.example:8765",
                 "10.0.0.7:8765", ""):
        r = client.get("/api/stats", headers={"Host": host})
        assert refused(r, "does not answer to the host"), host
        assert "persons" not in r.text
    for host in ("127.0.0.1:8765", "127.0.0.1", "localhost:8765", "LOCALHOST", "[::1]:8765", "[::1]"):
        assert client.get("/api/stats", headers={"Host": host}).status_code == 200, host
    api, _ = serve_store
    with TestClient(create_app(api, allowed_hosts=("search.lan",), any_ip=True), base_url=BASE) as c:
        for host, status in (("search.lan:8765", 200), ("10.0.0.7:8765", 200), ("[fe80::1]:80", 200),
                             ("evil.example", 403), ("localhost", 403)):
            assert c.get("/api/stats", headers={"Host": host}).status_code == status, host


@pytest.mark.guarantee("G37")
def test_other_sites_pages_are_refused(client):
    pid = a_person(client)["person_id"]
    for url in ("/api/stats", f"/api/persons/{pid}", f"/api/persons/{pid}/thumbnail", "/api/search?text=foot:%20kick"):
        for site in ("cross-site", "same-site"):
            assert refused(client.get(url, headers={"Sec-Fetch-Site": site}), site), (url, site)
        assert refused(client.get(url, headers={"Origin": "http://evil.example"}), "evil.example")
        assert refused(client.get(url, headers={"Origin": "null"}))
        assert client.get(url, headers={"Sec-Fetch-Site": "same-origin", "Origin": BASE}).status_code == 200
    upload = client.post("/api/search/image", headers={"Origin": "http://evil.example"},
                         files={"image": ("q.png", b"x", "image/png")})
    assert refused(upload)
    # a link to the page from elsewhere opens it; the page's own requests are same-origin
    link = client.get("/", headers={"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "navigate"})
    assert link.status_code == 200 and "<script>" in link.text


@pytest.mark.guarantee("G37")
def test_every_answer_carries_the_security_headers(client):
    pid = a_person(client)["person_id"]
    for r in (client.get("/"), client.get("/api/stats"), client.get(f"/api/persons/{pid}/thumbnail"),
              client.get("/api/persons/999999"), client.get("/api/stats", headers={"Host": "evil.example"}),
              client.get("/openapi.json")):
        assert {k: r.headers.get(k) for k in HEADERS} == HEADERS, r.url
        assert "frame-ancestors 'none'" in r.headers["content-security-policy"]


# ------------------------------------------------------------------ 2. filters


@pytest.mark.guarantee("G38")
def test_filters_are_bounded_and_read_without_backtracking(client, serve_store):
    long = " " * 2400 + "x"
    with pytest.raises(QueryError, match=f"at most {MAX_FILTER_CHARS}"):
        parse_where(long)
    r = client.get("/api/search", params={"text": "foot: kick", "where": long})
    assert r.status_code == 400 and f"at most {MAX_FILTER_CHARS}" in r.json()["error"]
    many = ["hand: hold>0.1"] * 1000
    r = client.get("/api/search", params={"text": "foot: kick", "where": many})
    assert r.status_code == 400 and f"at most {MAX_FILTERS}" in r.json()["error"]
    assert "write" not in r.json()["error"]
    # within the limits, the parser reads what the regular expression read, and refuses what it refused
    edge = "verb: ride" + " " * (MAX_FILTER_CHARS - 20) + "> 0.3"
    assert parse_where(edge) == parse_where("verb: ride>0.3")
    assert parse_where(" hand: hold >= 1e-1 ") == parse_where("hand: hold>=0.1")
    for bad in ("nonsense", ">0.5", "hand: hold>", "hand: hold<>3", "hand: hold>=nan", "hand: hold>=inf",
                " " * (MAX_FILTER_CHARS - 1) + "x"):
        with pytest.raises(QueryError):
            parse_where(bad)
    api, _ = serve_store
    code, _, err = run_main("search", "--text", "foot: kick", "--where", long, "--data-dir", api.data_dir)
    assert code == 1 and f"at most {MAX_FILTER_CHARS}" in err and "Traceback" not in err


# ------------------------------------------------------------------ 5. the token cookie


@pytest.mark.guarantee("G41")
def test_the_cookie_is_bound_to_this_server_and_is_not_the_token(serve_store):
    api, _ = serve_store
    app = create_app(api, token="s3cret-token")
    with TestClient(app, base_url=BASE) as c:
        r = c.get("/?token=s3cret-token", follow_redirects=False)
        assert r.status_code == 303
        cookie = r.headers["set-cookie"]
        assert cookie.startswith("a2v_session_8765=") and "s3cret-token" not in cookie
        assert "httponly" in cookie.lower() and "samesite=strict" in cookie.lower()
        value = cookie.split(";")[0].split("=", 1)[1]
        assert c.get("/api/stats").status_code == 200
    with TestClient(app, base_url="http://127.0.0.1:9000") as other:  # another port of the same host
        other.cookies.set("a2v_session_8765", value)
        other.cookies.set("a2v_session_9000", value)
        assert other.get("/api/stats").status_code == 401
        other.cookies.set("a2v_token", "s3cret-token")  # the old cookie, the token itself, is no credential
        assert other.get("/api/stats").status_code == 401
    with TestClient(app, base_url="https://127.0.0.1:8443") as tls:
        cookie = tls.get("/?token=s3cret-token", follow_redirects=False).headers["set-cookie"]
        assert cookie.startswith("__Host-a2v_session_8443=") and "secure" in cookie.lower() and "Path=/" in cookie


@pytest.mark.guarantee("G41")
def test_repeated_wrong_tokens_are_slowed(serve_store, monkeypatch):
    api, _ = serve_store
    waits = []

    async def pause(seconds):
        waits.append(seconds)

    monkeypatch.setattr(srv, "_pause", pause)
    with TestClient(create_app(api, token="right"), base_url=BASE) as c:
        assert c.get("/api/stats").status_code == 401 and waits == []  # no credential at all: no penalty
        for _ in range(7):
            assert c.get("/api/stats", headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert waits == [0.25, 0.5, 1.0, 2.0]  # three free tries, then doubling
        assert c.get("/api/stats", headers={"Authorization": "Bearer right"}).status_code == 200
        c.get("/api/stats", headers={"Authorization": "Bearer wrong"})
        assert len(waits) == 4  # the right token reset the count
        for _ in range(20):
            c.get("/?token=guess")
        assert max(waits) == srv.MAX_PENALTY_S


# ------------------------------------------------------------------ 6. slow clients


def _closed_by_server(sock: socket.socket, within: float) -> bool:
    sock.settimeout(within)
    try:
        return sock.recv(1024) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


@pytest.mark.guarantee("G42")
def test_idle_and_dribbling_connections_are_closed(serve_store):
    """Connections that never finish a request head are closed (header deadline), so they cannot hold the
    server's connections and file descriptors; then a real request is answered."""
    import httpx

    api, _ = serve_store
    live = LiveServer(create_app(api), **srv.server_options(header_timeout=0.5, max_connections=8))
    socks = []
    try:
        for i in range(24):  # three times the connection limit
            s = socket.create_connection(("127.0.0.1", live.port), timeout=5)
            if i % 2:
                s.sendall(b"GET /api/stats HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")  # a head that never ends
            socks.append(s)
        assert all(_closed_by_server(s, within=20) for s in socks)
        r = httpx.get(f"http://127.0.0.1:{live.port}/api/stats", timeout=30)
        assert r.status_code == 200 and r.json()["persons"] == 41
        # after an answer, a kept-alive connection must send its next head within the deadline too
        s = socket.create_connection(("127.0.0.1", live.port), timeout=5)
        socks.append(s)
        s.sendall(b"GET /api/stats HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        s.settimeout(20)
        assert s.recv(65536).startswith(b"HTTP/1.1 200")
        assert _closed_by_server(s, within=20)
    finally:
        for s in socks:
            s.close()
        live.stop()


def test_serve_settings_bound_connections():
    options = srv.server_options()
    assert options["timeout_keep_alive"] == srv.KEEP_ALIVE_S and 4 <= options["limit_concurrency"] <= 100
    assert options["http"].__name__ == "HeaderDeadline"


# ------------------------------------------------------------------ 8. caches, statuses, /docs


@pytest.mark.guarantee("G44")
def test_numbers_out_of_range_are_4xx(client):
    video = client.get("/api/search", params={"text": "foot: kick", "kind": "video", "k": 1}).json()["results"][0]
    vid = client.get(f"/api/persons/{video['person_id']}").json()["media"]["id"]
    image = client.get(f"/api/persons/{a_person(client)['person_id']}").json()["media"]["id"]
    big = str(2**63)
    for url, status in ((f"/api/persons/{big}", 422), (f"/api/persons/{big}/thumbnail", 422),
                        (f"/api/media/{big}/image", 422), (f"/api/search?person={big}", 422),
                        (f"/api/persons/{2**63 - 1}", 404), (f"/api/media/{vid}/image?t=1e15", 422),
                        (f"/api/media/{image}/image?t=1", 400), (f"/api/media/{image}/image?t=2.5", 400)):
        r = client.get(url)
        assert r.status_code == status and r.headers["content-type"] == "application/json", (url, r.text)
    assert "videos only" in client.get(f"/api/media/{image}/image?t=1").json()["error"]
    assert client.get(f"/api/media/{vid}/image?t=1").status_code == 200


@pytest.mark.guarantee("G44")
def test_an_oversized_chunked_upload_is_413(serve_store):
    api, _ = serve_store
    with TestClient(create_app(api, max_upload_mb=0.05), base_url=BASE) as c:
        boundary = "b0undary"
        head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"big.png\"\r\n"
                "Content-Type: image/png\r\n\r\n").encode()

        def body():  # no Content-Length: the server counts what arrives
            yield head
            for _ in range(40):
                yield b"\0" * 4096
            yield f"\r\n--{boundary}--\r\n".encode()

        r = c.post("/api/search/image", content=body(),
                   headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
        assert r.status_code == 413 and "too large" in r.json()["error"]


@pytest.mark.guarantee("G44")
def test_the_picture_cache_is_bounded_in_bytes():
    cache = srv.JpegCache(max_bytes=1000, max_entry=300)
    for i in range(50):
        cache.put(("k", i), bytes(250))
    assert cache.bytes <= 1000 and len(cache) == 4 and cache.get(("k", 49)) is not None
    cache.put(("big",), bytes(301))  # a full-size picture is not kept
    assert cache.get(("big",)) is None and cache.bytes <= 1000
    assert srv.JPEG_CACHE_BYTES <= 64 << 20


@pytest.mark.guarantee("G44")
def test_full_size_images_are_not_cached(client):
    pid = a_person(client)["person_id"]
    mid = client.get(f"/api/persons/{pid}").json()["media"]["id"]
    cache = client.app.state.jpeg_cache
    before = len(cache)
    assert client.get(f"/api/persons/{pid}/thumbnail", params={"size": 64}).status_code == 200
    assert len(cache) == before + 1
    cache.max_entry = 100  # as if the image were large
    try:
        assert client.get(f"/api/media/{mid}/image", params={"size": 200}).status_code == 200
        assert len(cache) == before + 1
    finally:
        cache.max_entry = srv.JPEG_CACHE_ENTRY


@pytest.mark.guarantee("G44")
def test_api_docs_come_from_this_server(client):
    pytest.importorskip("swagger_ui_bundle", reason="without swagger-ui-bundle there is no /docs")
    page = client.get("/docs")
    assert page.status_code == 200 and "http://" not in page.text and "https://" not in page.text
    assert '"validatorUrl": null' in page.text
    js = client.get("/docs/swagger-ui-bundle.js")
    assert js.status_code == 200 and js.headers["content-type"].startswith("text/javascript") and len(js.content) > 1e5
    assert client.get("/docs/swagger-ui.css").status_code == 200
    assert client.get("/docs/..%2f..%2fserver.py").status_code == 404
    assert client.get("/redoc").status_code == 404  # ReDoc would load its script from a CDN


def test_a_jpeg_answer_is_an_image(client):
    pid = a_person(client)["person_id"]
    r = client.get(f"/api/persons/{pid}/thumbnail", params={"size": 64})
    assert Image.open(io.BytesIO(r.content)).size == (64, 64)


# ------------------------------------------------------------------ 7. stored files reopened with care


@pytest.fixture
def own_store(tmp_path, tiny_clip_dir, tiny_bert_dir):
    """A store of three ingested pictures that a test may change under the server."""
    from pictures import figure

    from a2v_search.api import A2VSearch

    pics = tmp_path / "pics"
    pics.mkdir()
    for i, name in enumerate(("walk", "throw", "kick")):
        figure(name, seed=i)[0].save(pics / f"{name}.png")
    api = A2VSearch.open(tmp_path / "data", model=str(tiny_clip_dir), text_model=str(tiny_bert_dir), device="cpu",
                         detector="none")
    assert api.ingest([pics], workers=0).persons_added == 3
    yield api, pics
    api.close()


def _media_ids(api) -> dict[str, int]:
    ids = {}
    for i in range(1, 10):
        try:
            ids[api.media(i)["path"].rsplit("/", 1)[-1]] = i
        except QueryError:
            break
    return ids


@pytest.mark.guarantee("G43")
def test_stored_files_swapped_for_fifos_links_or_other_content(own_store, tmp_path):
    import os

    api, pics = own_store
    ids = _media_ids(api)
    outside = tmp_path / "secret.png"
    Image.new("RGB", (64, 48), (255, 0, 0)).save(outside)
    with TestClient(create_app(api), base_url=BASE) as c:
        assert all(c.get(f"/api/media/{i}/image").status_code == 200 for i in ids.values())
        os.remove(pics / "walk.png")
        os.mkfifo(pics / "walk.png")  # opening it for reading would block for ever
        os.remove(pics / "throw.png")
        os.symlink(outside, pics / "throw.png")  # a file from outside the ingested folders
        with open(pics / "kick.png", "ab") as f:
            f.write(b"more")  # another size than was ingested
        answers = {}

        def ask():
            for name in ("walk.png", "throw.png", "kick.png"):
                answers[name] = c.get(f"/api/media/{ids[name]}/image", params={"size": 64})
            answers["thumbnail"] = c.get("/api/persons/1/thumbnail")

        asker = threading.Thread(target=ask, daemon=True)
        asker.start()
        asker.join(60)
        assert not asker.is_alive(), "a request hung on a FIFO"
        fifo, link, changed = answers["walk.png"], answers["throw.png"], answers["kick.png"]
        assert fifo.status_code == 404 and "no longer a regular file" in fifo.json()["error"]
        assert link.status_code == 404 and "symbolic link" in link.json()["error"]
        assert changed.status_code == 409 and "changed since it was ingested" in changed.json()["error"]
        assert answers["thumbnail"].status_code in (404, 409)


@pytest.mark.guarantee("G43")
def test_a_decode_that_hangs_answers_503():
    release = threading.Event()
    decoder = srv.Decoder(threads=1, timeout=0.2)
    try:
        with pytest.raises(srv.Busy, match="longer than"):
            decoder.run(release.wait, 60)  # a decoder stuck on a file
    finally:
        release.set()


# ------------------------------------------------------------------ 4. a replaced or damaged store


def _import(folder, records, clip, bert):
    from a2v_search.api import A2VSearch

    with A2VSearch.open(folder, model=str(clip), text_model=str(bert), device="cpu") as w:
        w.import_records(records)


@pytest.mark.guarantee("G40")
def test_a_store_replaced_while_serving_is_served_whole(tmp_path, tiny_clip_dir, tiny_bert_dir):
    """`mv store store.old && mv new store`: the server answers from the new store, its indexes and all, never from
    the old file through pooled connections nor from indexes mixing both."""
    import os

    from a2v_search.api import A2VSearch
    from a2v_search.testing.profiles import profile_records

    records = profile_records(visual_dim=16, copies=2)
    kicks = [r for r in records if "/kick/" in r["path"]]
    _import(tmp_path / "store", [r for r in records if "/kick/" not in r["path"]], tiny_clip_dir, tiny_bert_dir)
    _import(tmp_path / "new", kicks, tiny_clip_dir, tiny_bert_dir)
    reader = A2VSearch.open(tmp_path / "store", device="cpu")
    with TestClient(create_app(reader), base_url=BASE) as c:
        assert c.get("/api/stats").json()["persons"] == len(records) - len(kicks)
        hits = c.get("/api/search", params={"text": "foot: kick", "k": 50}).json()["results"]
        assert len(hits) == len(records) - len(kicks) and not any("/kick/" in h["path"] for h in hits)
        os.rename(tmp_path / "store", tmp_path / "store.old")
        os.rename(tmp_path / "new", tmp_path / "store")
        assert c.get("/api/stats").json()["persons"] == len(kicks)
        for _ in range(3):  # every request (pooled connections, indexes) sees the new store only
            hits = c.get("/api/search", params={"text": "foot: kick", "k": 50}).json()["results"]
            assert sorted(h["path"] for h in hits) == sorted(r["path"] for r in kicks)
            p = c.get(f"/api/persons/{hits[0]['person_id']}").json()
            assert p["media"]["path"] == hits[0]["path"]
    reader.close()


@pytest.mark.guarantee("G40")
def test_a_truncated_store_is_503_not_500(tmp_path, tiny_clip_dir, tiny_bert_dir):
    from a2v_search.api import A2VSearch
    from a2v_search.testing.profiles import profile_records

    _import(tmp_path / "store", profile_records(visual_dim=16, copies=1), tiny_clip_dir, tiny_bert_dir)
    reader = A2VSearch.open(tmp_path / "store", device="cpu")
    with TestClient(create_app(reader), base_url=BASE) as c:
        assert c.get("/api/stats").status_code == 200
        with open(tmp_path / "store" / "a2v.sqlite", "r+b") as f:
            f.truncate(2048)
        for url in ("/api/stats", "/api/search?text=foot:%20kick", "/api/persons/1"):
            r = c.get(url)
            assert r.status_code == 503 and r.headers["content-type"] == "application/json", (url, r.text)
            assert "Traceback" not in r.text
    reader.close()
