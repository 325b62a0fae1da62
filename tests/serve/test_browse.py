"""The overview and clusters over HTTP (``/api/activities``, ``/api/clusterings``, ``cluster=`` on searches) and the
page's browse view in a real headless Chromium (skipped, saying why, without one), on a store of known activities."""

from __future__ import annotations

import pytest
from activity_store import fill

pytest.importorskip("fastapi", reason="the serve extra is not installed: pip install -e '.[serve]'")
from serve_store import LiveServer  # noqa: E402
from test_serve import local  # noqa: E402
from test_web import ARGS, CHROMIUM, playwright  # noqa: E402

from a2v_search import A2VSearch  # noqa: E402
from a2v_search.serve.server import create_app  # noqa: E402


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("browse")
    ids = fill(root / "data", {"ride": 10, "drink": 6, "kick": 4}, images=root / "images")
    with A2VSearch.open(root / "data") as api:
        r = api.cluster(k=3, name="acts")
    kick = next(c["cluster"] for c in r["clusters"] if c["verbs"][0][0] == "kick")
    return root / "data", ids, kick


@pytest.fixture(scope="module")
def client(store):
    api = A2VSearch.open(store[0])
    with local(create_app(api)) as c:
        yield c
    api.close()


def test_activities_endpoint_is_the_cli_json(client, store):
    data_dir, ids, _ = store
    r = client.get("/api/activities", params={"collection": "home", "top": 3})
    assert r.status_code == 200
    with A2VSearch.open(data_dir) as api:
        assert r.json() == api.activities(collection="home", top=3)
    o = r.json()
    assert [e["name"] for e in o["verbs"]] == ["drink_with", "kick"] and o["verbs"][0]["count"] == 6
    assert o["verbs"][0]["examples"] == ids["drink"][::-1][:4]
    scanned = client.get("/api/activities", params={"where": "verb: kick>=0.5"}).json()
    assert scanned["persons"] == 4 and scanned["counted"] == "scanned"
    assert client.get("/api/activities", params={"min_p": 0}).status_code == 422
    assert [(e["name"], e["count"], e["examples"]) for e in o["objects"]] == [("cup", 6, ids["drink"][:4])]  # p ties
    assert [(e["verb"], e["object"], e["count"]) for e in o["pairs"]["verb_object"]] == [("drink_with", "cup", 6)]


def test_clusterings_endpoints_and_the_cluster_filter(client, store):
    _, ids, kick = store
    listed = client.get("/api/clusterings").json()
    assert [(c["name"], c["k"], c["persons"], c["stale"]) for c in listed] == [("acts", 3, 20, False)]
    one = client.get("/api/clusterings/acts").json()
    assert sorted(c["size"] for c in one["clusters"]) == [4, 6, 10]
    persons = client.get(f"/api/clusterings/acts/{kick}", params={"k": 10}).json()
    assert persons["query"]["type"] == "cluster" and {h["person_id"] for h in persons["results"]} == set(ids["kick"])
    hits = client.get("/api/search", params={"text": "hand: hold", "k": 20, "cluster": f"acts:{kick}"}).json()
    assert {h["person_id"] for h in hits["results"]} == set(ids["kick"])
    assert client.get("/api/clusterings/nope").status_code == 404
    bad = client.get("/api/search", params={"text": "hand: hold", "cluster": "acts:7"})
    assert bad.status_code == 400 and "clusters 0 to 2" in bad.json()["error"]
    kicks = client.get("/api/activities", params={"cluster": f"acts:{kick}"}).json()
    assert kicks["persons"] == 4


@pytest.mark.skipif(CHROMIUM is None, reason="no Chromium installed: `apt-get install chromium` (CI does) or set "
                                              "A2V_CHROMIUM to its executable")
def test_browse_view_shows_facets_with_pictures_and_a_click_filters_the_search(store):
    data_dir, ids, kick = store
    api = A2VSearch.open(data_dir)
    server = LiveServer(create_app(api))
    try:
        with playwright.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
            page = browser.new_page(viewport={"width": 1360, "height": 860})
            errors = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(server.url + "/")  # no query: the page opens on the browse view
            page.wait_for_selector(".facet")
            page.wait_for_function("[...document.querySelectorAll('.facet img')].slice(0, 4)"
                                   ".every(i => i.complete && i.naturalWidth > 0)")
            names = page.locator(".facet .name").all_inner_texts()
            assert names[:4] == ["ride", "straddle", "drink with", "kick"]
            assert any(n.startswith(f"{kick}: kick") for n in names)  # the clusters, named
            assert "20 persons" in page.inner_text("#status")
            page.locator(".facet", has_text="drink with").first.click()  # a click searches that label's persons
            page.wait_for_selector(".card")
            assert page.input_value("#where") == "verb: drink_with>=0.5"
            page.wait_for_function("document.querySelectorAll('.card').length === 6")
            assert all("/drink/" in t for t in page.locator(".card").evaluate_all("cs => cs.map(c => c.title)"))
            page.click("#browse")
            page.wait_for_selector(".facet")
            cup = page.locator(".facet:has(.name:text-is('cup'))")  # the objects facet, with its pictures
            assert "6 persons" in cup.inner_text() and cup.locator("img").count() == 4
            assert page.locator(".facet:has(.name:text-is('drink with + cup'))").count() == 1  # the pair
            cup.click()  # a click on an object searches the persons acting on one
            page.wait_for_selector(".card")
            assert page.input_value("#where") == "object: cup>=0.5"
            page.wait_for_function("document.querySelectorAll('.card').length === 6")
            assert all("/drink/" in t for t in page.locator(".card").evaluate_all("cs => cs.map(c => c.title)"))
            page.click("#browse")
            page.wait_for_selector(".facet")
            page.locator(".facet", has_text=f"{kick}: kick").click()  # a cluster: its persons, closest first
            page.wait_for_function("document.querySelectorAll('.card').length === 4")
            assert f"cluster acts:{kick}" in page.inner_text("#status")
            assert errors == []
            browser.close()
    finally:
        server.stop()
        api.close()
