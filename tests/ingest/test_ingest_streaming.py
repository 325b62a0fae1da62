"""Ingest at library scale (issue 20): discovery streams in bounded chunks checked against SQLite, work starts
while the walk goes on, and a run that finds nothing new loads no model."""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import StubEncoder

from a2v_search.detect import WholeImage
from a2v_search.ingest import IngestOptions, IngestProgress, run_ingest
from a2v_search.ingest.assembly import Assembly
from a2v_search.ingest.discover import Candidate, Found
from a2v_search.store import Store
from a2v_search.testing.media import write_images
from db import repo

ROOT = Path(__file__).resolve().parents[2]


def tree(folder, n: int, per_folder: int = 6) -> None:
    for i in range(0, n, per_folder):
        write_images(folder / f"d{i // per_folder:03d}", min(per_folder, n - i), start=i)


class WatchingEncoder(StubEncoder):
    """The stand-in encoder, counting at each batch how many files the run holds in memory."""

    def __init__(self):
        super().__init__()
        self.peak_files = 0
        self.batches = 0

    def submit(self, pixels, pad_to: int | None = None):
        kinds = {Found, Candidate, Assembly}
        held = sum(type(o) in kinds for o in gc.get_objects())
        self.peak_files = max(self.peak_files, held)
        self.batches += 1
        return super().submit(pixels, pad_to)


def run(data_dir, folder, encoder, progress=None, **opts):
    store = Store(data_dir, create=True).lock("test")
    try:
        options = IngestOptions(**{"workers": 0, "batch_size": 2, "commit_every": 2, "chunk_files": 4, **opts})
        return run_ingest(store, encoder, WholeImage(), [str(folder)], options, on_progress=progress)
    finally:
        store.close()


@pytest.mark.parametrize("n", [24, 72])
def test_discovery_streams_in_chunks_and_memory_does_not_grow_with_the_tree(tmp_path, monkeypatch, n):
    tree(tmp_path / "in", n)
    lookups: list[int] = []
    real_lookup = repo.media_by_path
    monkeypatch.setattr(repo, "media_by_path", lambda s, paths: lookups.append(len(paths)) or real_lookup(s, paths))
    seen: list[IngestProgress] = []
    encoder = WatchingEncoder()
    report = run(tmp_path / "data", tmp_path / "in", encoder, seen.append)
    assert report.failures == [] and report.media_ingested == n and report.persons_added == n
    assert lookups == [4] * (n // 4)  # the skip rule ran per chunk of 4, as the walk went on
    assert encoder.batches >= n // 2 and 0 < encoder.peak_files <= 12, encoder.peak_files  # never the tree
    assert seen[0].total is None and seen[-1] == IngestProgress(seen=n, done=n, total=n, persons=n)
    again = run(tmp_path / "data", tmp_path / "in", encoder)
    assert again.media_skipped == n and again.media_ingested == 0 and again.files_seen == n


def test_a_rerun_that_finds_nothing_new_loads_no_model(tmp_path, monkeypatch, tiny_clip_dir, tiny_bert_dir):
    from a2v_search import models
    from a2v_search.api import A2VSearch

    tree(tmp_path / "in", 5)
    (tmp_path / "in" / "notes.jpg").write_text("not an image")
    flags = dict(model=str(tiny_clip_dir), text_model=str(tiny_bert_dir), detector="none")
    with A2VSearch.open(tmp_path / "data", **flags) as api:
        first = api.ingest([tmp_path / "in"], workers=0)
    assert first.media_ingested == 5 and len(first.failures) == 1

    # a fresh interpreter (this one has torch already): the no-op run, as the CLI makes it, imports no model code
    script = ("import json, sys\nfrom a2v_search.cli import main\ntry:\n    main(sys.argv[1:])\nexcept SystemExit:\n"
              "    pass\nprint(json.dumps(sorted(m for m in ('torch', 'transformers') if m in sys.modules)))")
    out = subprocess.run([sys.executable, "-c", script, "ingest", str(tmp_path / "in"), "--data-dir",
                          str(tmp_path / "data"), "--model", str(tiny_clip_dir), "--text-model", str(tiny_bert_dir),
                          "--detector", "none", "--workers", "0", "--json"], capture_output=True, text=True, cwd=ROOT,
                         env={**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"})
    summary, imported = (json.loads(line) for line in out.stdout.splitlines()[-2:])
    assert summary["media_skipped"] == 5 and summary["media_ingested"] == 0 and imported == [], out.stderr[-2000:]

    def no_loading(*args, **kwargs):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(models, "load_encoder", no_loading)
    with A2VSearch.open(tmp_path / "data", **flags) as api:
        again = api.ingest([tmp_path / "in"], workers=0)
        assert again.media_skipped == 5 and again.media_ingested == 0 and len(again.failures) == 1
        assert api.stats()["persons"] == 5
    os.utime(tmp_path / "in" / "d000" / "img000.png", (1, 1))  # changed mtime: now something needs decoding
    with A2VSearch.open(tmp_path / "data", **flags) as api, pytest.raises(AssertionError, match="model was loaded"):
        api.ingest([tmp_path / "in"], workers=0)


def test_duplicates_across_chunks_are_stored_once(tmp_path):
    tree(tmp_path / "in", 10)
    for i, src in enumerate(sorted((tmp_path / "in" / "d000").iterdir())[:3]):  # copies land in later chunks
        (tmp_path / "in" / "zz").mkdir(exist_ok=True)
        (tmp_path / "in" / "zz" / f"copy{i}.png").write_bytes(src.read_bytes())
    first = tmp_path / "in" / "d000" / "img000.png"
    (tmp_path / "in" / "d000" / "img000c.png").write_bytes(first.read_bytes())  # right behind it, still in flight
    report = run(tmp_path / "data", tmp_path / "in", StubEncoder())
    assert report.media_ingested == 10 and report.duplicates == 4 and report.persons_added == 10
    store = Store(tmp_path / "data")
    with store.db.session() as s:
        rows = s.execute(repo.select(repo.Media.path, repo.Media.duplicate_of)).all()
    store.close()
    assert len(rows) == 14 and sum(d is not None for _, d in rows) == 4


def test_the_walk_finds_each_file_once_and_keeps_nothing_per_file_of_a_plain_tree(tmp_path):
    """The walk remembers only files reached by name or through a link (a folder is listed once): a plain tree
    leaves nothing per file behind, and names, links to files listed before or after, and a link to a hidden file
    (which a listing skips) still give each file once."""
    from a2v_search.ingest import discover as media

    tree(tmp_path / "plain", 30)
    walker = media.Walker([str(tmp_path / "plain")])
    assert len([x for x in walker.run() if isinstance(x, Found)]) == 30 and walker.seen == set()

    a, b = tmp_path / "root" / "a", tmp_path / "root" / "b"
    a.mkdir(parents=True)
    b.mkdir()
    for name in ("m.jpg", "x.jpg", "z.jpg", ".hidden.jpg"):
        (a / name).write_bytes(b"data " + name.encode())
    (a / "a_link.jpg").symlink_to(a / "z.jpg")  # a sibling listed after the link
    (a / "zz_link.jpg").symlink_to(a / "m.jpg")  # a sibling listed before the link
    (b / "to_hidden.jpg").symlink_to(a / ".hidden.jpg")  # a listing skips it: found through the link
    (tmp_path / "root" / "0_to_x.jpg").symlink_to(a / "x.jpg")  # listed before folder a
    named = [str(a / "m.jpg"), str(tmp_path / "root"), str(a / "z.jpg")]  # named before and after its folder
    found = sorted(os.path.relpath(x.path, tmp_path / "root") for x in media.walk(named) if isinstance(x, Found))
    assert found == ["a/.hidden.jpg", "a/m.jpg", "a/x.jpg", "a/z.jpg"]


@pytest.mark.parametrize("name, kind", [
    ("a.jpg", "image"), ("A.JPEG", "image"), ("clip.tar.MP4", "video"), ("x.png.txt", None), ("jpg", None),
    (".jpg", None), ("..jpg", None), (".a.jpg", "image"), ("a.", None), ("a..mov", "video"), ("é.webp", "image"),
    ("a. jpg", None)])
def test_a_name_s_kind_is_its_extension_as_splitext_reads_it(name, kind):
    """Leading dots belong to the name (a hidden ``.jpg`` has no extension), case does not count."""
    from a2v_search.ingest.discover import IMAGE_EXTS, VIDEO_EXTS, _name_kind

    ext = os.path.splitext(name)[1].lower()
    assert _name_kind(name) == kind == ("image" if ext in IMAGE_EXTS else "video" if ext in VIDEO_EXTS else None)


def test_the_objects_alive_once_the_models_load_are_frozen_for_the_run_only(tmp_path):
    """A full collection walks every object the process holds (heap.py): during a run, those alive once the models
    are loaded are frozen (``gc.freeze``), after it none is; a program that froze objects of its own keeps its
    freeze as it was, and the run freezes nothing more."""
    write_images(tmp_path / "in", 6)
    gc.unfreeze()
    during: list[int] = []
    run(tmp_path / "a", tmp_path / "in", StubEncoder(), progress=lambda p: during.append(gc.get_freeze_count()))
    assert max(during) > 0 and gc.get_freeze_count() == 0
    gc.freeze()  # the program's own
    try:
        own = gc.get_freeze_count()
        during.clear()
        run(tmp_path / "b", tmp_path / "in", StubEncoder(), progress=lambda p: during.append(gc.get_freeze_count()))
        assert 0 < gc.get_freeze_count() <= own and max(during) <= own
    finally:
        gc.unfreeze()


def lookups(tmp_path, monkeypatch, persons_of) -> tuple[int, list[int]]:
    """Ingest 12 images whose persons are ``persons_of(i)`` boxes (a boxes file), batches of 4: (persons stored,
    the files each duplicate-rule lookup asked for)."""
    from a2v_search.detect import BoxesFile

    paths = write_images(tmp_path / "in", 12)
    two = [{"human_bbox": [0, 0, 30, 40]}, {"human_bbox": [32, 4, 62, 44]}]
    boxes = tmp_path / "boxes.json"
    boxes.write_text(json.dumps({p.name: {"labels": two[:persons_of(i)]} for i, p in enumerate(paths)}))
    asked: list[int] = []
    real = Store.media_with_hashes
    monkeypatch.setattr(Store, "media_with_hashes", lambda self, hs: asked.append(len(hs)) or real(self, hs))
    store = Store(tmp_path / "data", create=True).lock("test")
    try:
        options = IngestOptions(workers=0, batch_size=4, commit_every=4)
        report = run_ingest(store, StubEncoder(), BoxesFile(boxes), [str(tmp_path / "in")], options)
    finally:
        store.close()
    assert not report.failures
    return report.persons_added, asked


def test_the_duplicate_rule_looks_up_a_model_batch_of_persons_at_a_time(tmp_path, monkeypatch):
    """The decoded files waiting for their SQLite lookup hold their crops in the decode ring, which is sized for a
    model batch of persons: with two persons an image and batches of 4, a lookup asks for 2 files, not 4."""
    persons, asked = lookups(tmp_path, monkeypatch, lambda i: 2)
    assert persons == 24
    assert asked[0] == 1 and max(asked) == 2  # the first file at once (no persons stored yet), then 2 files a lookup


def test_files_holding_no_person_here_are_looked_up_a_batch_at_a_time(tmp_path, monkeypatch):
    """A file without persons (or whose persons stay elsewhere: Ray's object store) counts one: once a person is
    stored, the rest are looked up 4 files at a time, not all at the end."""
    persons, asked = lookups(tmp_path, monkeypatch, lambda i: 1 if i == 0 else 0)
    assert persons == 1
    assert asked[0] == 1 and max(asked) == 4 and sum(asked) == 12
