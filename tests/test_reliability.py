"""Reliability and security suite: kills at many points, disk faults, concurrent readers, a hostile corpus.

Ingest runs in forked children (with a numpy stand-in encoder, so the children never touch torch) that the fault
points of ``a2v_search.faults`` SIGKILL; each rerun must leave every file stored exactly once and FAISS equal to
SQLite. What was tried is counted and printed at the end of the test run (conftest.py).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import resource
import signal
import time
import traceback
from pathlib import Path

import numpy as np
import pytest
from helpers import StubEncoder, in_child, ingest, run_main
from PIL import Image

from a2v_search.detect import BoxesFile, WholeImage
from a2v_search.errors import CheckpointError, InputError, QueryError, StoreError, StoreLockedError
from a2v_search.ingest import IngestOptions, run_ingest
from a2v_search.search import Searcher, SearchOptions, make_filters
from a2v_search.space import INDEX_NAMES
from a2v_search.store import Store
from a2v_search.testing.media import write_bad_files, write_images
from a2v_search.tracks import link
from db import engine, labels, repo
from db.schema import LABEL_VERB
from index import IndexMissingError, VectorIndex

ROOT = Path(__file__).resolve().parents[1]
N_FILES = 12


def assert_exactly_once(data_dir: Path, n_files: int) -> None:
    store = Store(data_dir)
    with store.db.session() as s:
        counts = repo.counts(s)
        per_media = [n for _, n in s.execute(repo.select(repo.Person.media_id, repo.func.count(repo.Person.id))
                                             .group_by(repo.Person.media_id))]
        paths = [p for (p,) in s.execute(repo.select(repo.Media.path))]
        by_label = labels.where_ids(s, [(LABEL_VERB, 0, ">=", 0.0)])  # each person once in the labels' chunks
        assert by_label.tolist() == repo.person_ids(s).tolist()
    report = store.check()
    store.close()
    assert counts["media"] == n_files and counts["persons"] == n_files, counts
    assert per_media == [1] * n_files and len(set(paths)) == n_files  # no duplicated persons or media
    assert report.problems == [], [p.detail for p in report.problems]


# ------------------------------------------------------------------ crash matrix


KILL_POINTS = ["decode", "encode", "label_chunk", "after_commit", "checkpoint", "index_save", "manifest_write"]


@pytest.mark.parametrize("point", KILL_POINTS)
@pytest.mark.guarantee("G1")
def test_crash_matrix(tmp_path, point, reliability, monkeypatch):
    monkeypatch.setattr(labels, "LABEL_CHUNK", 2)  # the labels' chunks close (label_chunk) several times a run
    monkeypatch.setattr(engine, "CHECKPOINT_EVERY", 1)  # a checkpoint (checkpoint) after each write transaction
    inputs = write_images(tmp_path / "in", N_FILES)
    for hit in (1, 2, 4):  # repeated trials: early, middle, late in the run
        data = tmp_path / f"data-{hit}"
        code, err = in_child(lambda data=data: ingest(data, [tmp_path / "in"], save_every_s=0.0),
                             fault=f"{point}:{hit}")
        assert code == -signal.SIGKILL, f"{point}:{hit} was not killed (code {code}): {err}"
        reliability["kill points"] += 1
        for name in INDEX_NAMES:  # an interrupted save never leaves a half-written index in place
            with contextlib.suppress(IndexMissingError):
                VectorIndex.load(data / "index", name)
        ingest(data, [tmp_path / "in"])
        assert_exactly_once(data, len(inputs))
        reliability["records checked"] += len(inputs)


@pytest.mark.guarantee("G2")
def test_killed_decode_workers_cost_no_file(tmp_path, reliability):
    """Decode worker processes SIGKILLed at their 2nd (3rd) file: the run goes on, every file stored once."""
    inputs = write_images(tmp_path / "in", N_FILES)
    for hit in (2, 3):
        data = tmp_path / f"data-{hit}"

        def run(data=data):
            report = ingest(data, [tmp_path / "in"], workers=2)
            assert report.failures == [] and report.media_ingested == N_FILES

        code, err = in_child(run, setup=lambda hit=hit: os.environ.__setitem__("A2V_FAULT", f"decode_worker:{hit}"))
        assert code == 0, err
        reliability["kill points"] += 1
        assert_exactly_once(data, len(inputs))
        reliability["records checked"] += len(inputs)


@pytest.mark.guarantee("G3")
def test_kill_during_index_save_keeps_the_old_pair_and_doctor_cleans_up(tmp_path, reliability):
    write_images(tmp_path / "in", 4)
    data = tmp_path / "data"
    ingest(data, [tmp_path / "in"])
    write_images(tmp_path / "in", 4, start=10)
    code, _ = in_child(lambda: ingest(data, [tmp_path / "in"]), fault="index_save:1")
    assert code == -signal.SIGKILL
    reliability["kill points"] += 1
    store = Store(data)
    for name in INDEX_NAMES:
        idx, manifest = VectorIndex.load(data / "index", name)
        assert idx.ntotal == 4 and manifest["count"] == 4  # the previous complete pair
    report = store.check()
    store.close()
    assert not report.ok  # leftover generation file and the lagging index are reported
    fixer = Store(data).lock("doctor")
    assert fixer.check(repair=True).ok
    fixer.close()
    clean = Store(data).check()
    assert clean.problems == [] and clean.counts["persons"] == 8
    assert not [p for p in (data / "index").iterdir() if ".tmp" in p.name]


# ------------------------------------------------------------------ disk and I/O faults


@pytest.mark.guarantee("G4")
def test_full_disk_gives_one_clear_error_and_loses_nothing(tmp_path, reliability):
    write_images(tmp_path / "in", 6)
    data = tmp_path / "data"
    ingest(data, [tmp_path / "in"])
    write_images(tmp_path / "in", 30, start=100, w=64, h=48)

    def full_disk():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail with EFBIG instead
        biggest = max(p.stat().st_size for p in data.rglob("*") if p.is_file())
        resource.setrlimit(resource.RLIMIT_FSIZE, (biggest + 4096, biggest + 4096))

    code, err = in_child(lambda: ingest(data, [tmp_path / "in"]), setup=full_disk)
    assert code == 1, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: cannot") and "lost" in lines[0], err
    reliability["faults"] += 1
    reader = Store(data)  # still valid and usable: search works
    hits = Searcher(reader).search({"visual": np.eye(16, dtype=np.float32)[0]}, {"visual": 1.0}, SearchOptions(k=3))
    assert len(hits) == 3 and all(Path(h.path).exists() for h in hits)
    reader.close()
    ingest(data, [tmp_path / "in"])  # space again: the same command completes the job
    assert_exactly_once(data, 36)


@pytest.mark.guarantee("G5")
def test_failed_index_save_is_reported_and_recovered(tmp_path, reliability):
    """The index folder cannot be written (a real EPERM/EACCES from the kernel, not a replaced function): the
    ingest commits to SQLite, then fails with one error that says nothing is lost; the rerun completes."""
    write_images(tmp_path / "in", 5)
    data = tmp_path / "data"
    ingest(data, [tmp_path / "in"])
    write_images(tmp_path / "in", 3, start=20)
    with read_only_folder(data / "index"), pytest.raises(StoreError, match="nothing is lost") as err:
        ingest(data, [tmp_path / "in"])
    assert "cannot save the FAISS index" in str(err.value)
    reliability["faults"] += 1
    store = Store(data)
    with store.db.session() as s:
        assert repo.counts(s)["persons"] == 8  # committed before the save failed
    store.close()
    ingest(data, [tmp_path / "in"])
    assert_exactly_once(data, 8)


# ------------------------------------------------------------------ concurrent use


@pytest.mark.guarantee("G9", "G10")
def test_searches_during_ingest_never_fail_and_second_writer_is_told(tmp_path, reliability):
    """The ingest (a forked child) stops after each of its first SYNCS commits (each ``Store.write``) until the
    parent has searched: every search then sees exactly the persons committed so far, each with its media row.
    Between those points the parent keeps searching while the child runs. The sync points are the writes
    themselves, never timing (the progress callback is rate-limited, so it is not called once per commit)."""
    syncs = 5
    write_images(tmp_path / "in", 2)
    data = tmp_path / "data"
    ingest(data, [tmp_path / "in"])
    write_images(tmp_path / "in", 40, start=10)
    from_child, to_parent = os.pipe()
    from_parent, to_child = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(from_child)
        os.close(to_child)
        seen = [0]

        try:
            store = Store(data, create=True).lock("test-ingest")
            write = store.write

            def write_then_wait(items, arrays=None):
                ids = write(items, arrays)  # committed: SQLite, then FAISS
                if len(ids) and len(seen) <= syncs:
                    seen.append(seen[-1] + len(ids))
                    os.write(to_parent, f"{seen[-1]}\n".encode())
                    os.read(from_parent, 1)  # wait until the parent has searched
                return ids

            store.write = write_then_wait
            run_ingest(store, StubEncoder(), WholeImage(), [str(tmp_path / "in")],
                       IngestOptions(workers=0, batch_size=2, commit_every=2, save_every_s=0.0))
            store.close()
            os._exit(0)
        except BaseException:
            traceback.print_exc()
            os._exit(3)
    os.close(to_parent)
    os.close(from_parent)
    rng = np.random.default_rng(0)

    def search_all() -> int:
        """Persons one search sees: at least those committed before it, at most those committed after it."""
        store = Store(data)
        try:
            with store.db.session() as s:
                before = repo.counts(s)["persons"]
            q = rng.normal(size=16).astype(np.float32)
            result = Searcher(store).search({"visual": q / np.linalg.norm(q)}, {"visual": 1.0}, SearchOptions(k=100))
            assert all(h.path and h.media_id and Path(h.path).exists() for h in result)
            with store.db.session() as s:
                after = repo.counts(s)["persons"]
            assert before <= len(result) <= after  # no id in FAISS without its rows, no committed person missing
            return len(result)
        finally:
            store.close()

    lines = os.fdopen(from_child, "r")
    at_sync, locked_told, free = [], False, 0
    for line in lines:  # one line per commit the child waits at
        committed = 2 + int(line)
        assert search_all() == committed  # a reader sees every committed person, and only those
        at_sync.append(committed)
        try:
            Store(data).lock("second writer")
        except StoreLockedError as e:
            locked_told = f"PID {pid}" in str(e)
        os.write(to_child, b"g")
        if len(at_sync) == syncs:
            break
    while True:  # the rest of the run: searches race the writes
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        search_all()
        free += 1
        time.sleep(0.01)
    lines.close()
    os.close(to_child)
    assert os.waitstatus_to_exitcode(status) == 0
    reliability["concurrent searches"] += len(at_sync) + free
    assert len(at_sync) == syncs and at_sync == sorted(set(at_sync)) and locked_told
    assert_exactly_once(data, 42)


# ------------------------------------------------------------------ hostile corpus


@pytest.mark.guarantee("G11")
def test_hostile_corpus_in_one_run(tmp_path, reliability):
    corpus = tmp_path / "corpus"
    good = write_images(corpus / "good", 4)
    bad = write_bad_files(corpus / "bad")
    os.mkfifo(corpus / "bad" / "pipe.jpg")  # would block forever if opened
    bad["fifo"] = corpus / "bad" / "pipe.jpg"
    deep = corpus / "deep"
    for i in range(120):
        deep = deep / f"d{i}"
    deep.mkdir(parents=True)
    good += write_images(deep, 1, start=60)
    os.symlink(corpus, corpus / "good" / "loop")  # a symlink loop
    weird = corpus / "good" / "new\nline name.png"
    Image.fromarray(np.full((30, 40, 3), 90, np.uint8)).save(weird)
    good.append(weird)
    (corpus / "bad" / "empty_dir").mkdir()
    report = ingest(tmp_path / "data", [corpus], max_pixels=10_000_000, workers=1)
    failed = [Path(f["path"]).name for f in report.failures]
    assert len(failed) == len(set(failed)), "a bad file was reported twice"
    for kind, path in bad.items():
        assert os.fsencode(path.name).decode("utf-8", "backslashreplace") in failed, kind
    assert report.media_ingested == len(good) and report.persons_added == len(good)
    store = Store(tmp_path / "data")
    with store.db.session() as s:
        stored = {p for (p,) in s.execute(repo.select(repo.Media.path))}
    assert stored == {os.path.realpath(p) for p in good}
    store.close()
    reliability["hostile files"] += len(bad) + 3  # + deep folder, symlink loop, newline name


@pytest.mark.guarantee("G12")
def test_huge_boxes_files(tmp_path, reliability):
    paths = write_images(tmp_path / "in", 3)
    coco = {"images": [{"id": i, "file_name": p.name} for i, p in enumerate(paths)],
            "annotations": [{"image_id": i % 3, "bbox": [1, 1, 20, 30], "category_id": 1,
                             "segmentation": [[float(j) for j in range(40)]]} for i in range(60_000)],
            "categories": [{"id": 1, "name": "person"}]}
    big = tmp_path / "big.json"
    big.write_text(json.dumps(coco))
    assert big.stat().st_size > 15_000_000
    boxes = BoxesFile(big)
    assert sum(len(v) for v in boxes.boxes.values()) == 60_000
    truncated = tmp_path / "truncated.json"
    truncated.write_bytes(big.read_bytes()[: big.stat().st_size // 2])
    with pytest.raises(InputError, match="not valid JSON"):
        ingest(tmp_path / "data", [tmp_path / "in"], detector=BoxesFile(truncated))
    assert not (tmp_path / "data" / "a2v.sqlite").exists() or Store(tmp_path / "data").check().counts["media"] == 0
    reliability["hostile files"] += 2


# ------------------------------------------------------------------ security


RAW_SQL_CALLS = {"text", "exec_driver_sql"}  # take SQL text: only a literal string is allowed
DBAPI_CALLS = {"execute", "executemany", "executescript"}  # take statements: never a string built at run time


def string_built_sql(source: str) -> list[str]:
    """Calls in ``source`` that hand SQL built from strings to SQLAlchemy or sqlite3 (f-strings, ``%``, ``+``,
    ``.format``/``.join``, or, for raw-SQL calls, anything but a literal)."""
    import ast

    def built(node: ast.expr) -> bool:
        if isinstance(node, ast.JoinedStr):
            return True
        if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Mod)):
            return any(isinstance(n, (ast.Constant, ast.JoinedStr)) and not isinstance(getattr(n, "value", ""), int)
                       or built(n) for n in (node.left, node.right))
        return (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and node.func.attr in ("format", "join", "replace"))

    found = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Call) or not node.args:
            continue
        name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
        if name == "text" and isinstance(node.func, ast.Attribute) and \
                getattr(node.func.value, "id", "") not in ("sqlalchemy", "sa"):
            continue  # e.g. PIL's draw.text(...)
        arg = node.args[0]
        literal = isinstance(arg, ast.Constant) and isinstance(arg.value, str)
        if (name in RAW_SQL_CALLS and not literal) or (name in DBAPI_CALLS and built(arg)):
            found.append(f"line {node.lineno}: {ast.unparse(node)[:80]}")
    return found


@pytest.mark.guarantee("G20")
def test_the_sql_scan_finds_every_way_of_building_sql():
    bad = ['conn.exec_driver_sql(f"SELECT * FROM {t}")', 'text("SELECT * FROM {}".format(t))',
           "s.execute(text('SELECT ' + col))", 'cur.execute("DELETE FROM t WHERE p = \'%s\'" % p)',
           "conn.exec_driver_sql(query)", 's.execute(f"SELECT {x}")', "sqlalchemy.text(' '.join(parts))"]
    good = ['conn.exec_driver_sql("SELECT name FROM sqlite_master")', "draw.text((0, 0), f'#{rank}')",
            "s.execute(select(Person.id).where(x == y))",
            'text("SELECT seq FROM t WHERE name = :n")', "cur.execute(q, params)"]
    assert [len(string_built_sql(src)) for src in bad] == [1] * len(bad)
    assert [string_built_sql(src) for src in good] == [[]] * len(good)


@pytest.mark.guarantee("G20")
def test_no_sql_is_built_from_strings():
    """Every statement is SQLAlchemy constructs with bound parameters (or a literal); none is built from strings."""
    files = sorted(p for folder in ("db", "a2v_search", "index", "bench") for p in (ROOT / folder).rglob("*.py"))
    assert len(files) > 20
    offenders = [f"{py.relative_to(ROOT)} {hit}" for py in files for hit in string_built_sql(py.read_text())]
    assert offenders == []


@pytest.mark.guarantee("G20")
def test_filters_and_texts_cannot_inject_or_execute(tmp_path):
    write_images(tmp_path / "in", 3)
    data = tmp_path / "data"
    ingest(data, [tmp_path / "in"], collection="c1")
    store = Store(data)
    marker = tmp_path / "pwned"
    hostile = ["x' OR '1'='1", "c1'; DROP TABLE persons; --", f"__import__('os').system('touch {marker}')"]
    with store.db.session() as s:
        for value in hostile:
            assert repo.filter_person_ids(s, make_filters(collection=value)).tolist() == []
            assert repo.filter_person_ids(s, make_filters(path=value)).tolist() == []
        assert len(repo.filter_person_ids(s, make_filters(collection="c1"))) == 3
    for expr in [f"__import__('os').system('touch {marker}')>0", "hand: hold>=1e9999'", "hand: hold>=0.5 or 1"]:
        with pytest.raises(QueryError):
            make_filters(where=[expr])
    language = store.space.language()
    for query in ["hand: hold'; DROP TABLE persons; --", f"head: __import__('os').system('touch {marker}')",
                  "hand: hold=__import__('os')"]:
        with pytest.raises(QueryError):
            language.interpret(query)
    with store.db.session() as s:
        assert repo.counts(s)["persons"] == 3  # the tables are intact
    store.close()
    assert not marker.exists()


@pytest.mark.guarantee("G22")
def test_stored_paths_are_real_paths(tmp_path):
    [img] = write_images(tmp_path / "real", 1)
    (tmp_path / "links").mkdir()
    os.symlink(img, tmp_path / "links" / "alias.png")
    os.symlink(tmp_path / "real", tmp_path / "links" / "folder")
    ingest(tmp_path / "data", [tmp_path / "links" / "alias.png", tmp_path / "links" / "folder"])
    store = Store(tmp_path / "data")
    with store.db.session() as s:
        assert [p for (p,) in s.execute(repo.select(repo.Media.path))] == [os.path.realpath(img)]
    store.close()


@pytest.mark.guarantee("G22")
def test_nothing_is_written_outside_the_data_directory(tmp_path, monkeypatch, tiny_clip_dir, tiny_bert_dir):

    write_images(tmp_path / "in", 2)
    home, cwd = tmp_path / "home", tmp_path / "cwd"
    home.mkdir()
    cwd.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(cwd)

    def snapshot():
        return {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*") if "data" not in p.parts}

    before = snapshot()
    common = ["--data-dir", tmp_path / "data", "--model", tiny_clip_dir, "--text-model", tiny_bert_dir]
    assert run_main("ingest", tmp_path / "in", *common, "--detector", "none", "--workers", "0")[0] == 0
    assert run_main("search", "--text", "hand: hold", "--data-dir", tmp_path / "data")[0] == 0
    assert run_main("stats", "--data-dir", tmp_path / "data")[0] == 0
    assert snapshot() == before


@pytest.mark.guarantee("G17")
def test_untrusted_pickle_never_runs_from_the_cli(tmp_path):

    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    import pickle

    evil = tmp_path / "ckpt_4.pth"
    evil.write_bytes(pickle.dumps({"model": Evil()}))
    write_images(tmp_path / "in", 1)
    code, _, err = run_main("predict", tmp_path / "in" / "img000.png", "--checkpoint", evil, "--detector", "none",
                            "--data-dir", tmp_path / "data")
    assert code == 1 and "--trust-checkpoint" in err and err.count("\n") == 1
    code, _, err = run_main("convert-checkpoint", evil, tmp_path / "out")
    assert code == 1 and "--trust-checkpoint" in err
    assert not marker.exists()


@pytest.mark.guarantee("G8")
def test_doctor_and_repair_from_the_cli(tmp_path):

    write_images(tmp_path / "in", 3)
    data = tmp_path / "data"
    ingest(data, [tmp_path / "in"])
    manifest = json.loads((data / "index" / "visual.json").read_text())
    (data / "index" / manifest["file"]).write_bytes(b"garbage")
    code, out, _ = run_main("doctor", "--data-dir", data, "--json")
    doc = json.loads(out)
    assert code == 1 and not doc["ok"] and any("corrupt" in p["detail"] for p in doc["problems"])
    assert run_main("doctor", "--data-dir", data, "--repair")[0] == 0
    code, out, _ = run_main("doctor", "--data-dir", data)
    assert code == 0 and "consistent" in out


# ------------------------------------------------------------------ consent to unpickle never persists


def _marker_pickle(path: Path, marker: Path) -> Path:
    """A pickle that, when loaded with code allowed, creates ``marker``."""
    import pickle

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    path.write_bytes(pickle.dumps({"model": Evil()}))
    return path


def _store_made_with(data: Path, checkpoint: Path, tiny_clip_dir: Path, tiny_bert_dir: Path, **spec) -> None:
    """A store whose space records ``checkpoint`` (path and identity), as one made by ``--checkpoint`` would."""
    from helpers import SPACE, media, random_language, random_person

    from a2v_search.models.checkpoint import checkpoint_identity

    ident = checkpoint_identity(checkpoint)
    space = {**SPACE, "visual_model": f"checkpoint:{ident}", "heads": f"checkpoint:{ident}",
             "spec": {"model": str(tiny_clip_dir), "checkpoint": str(checkpoint), "text_model": str(tiny_bert_dir),
                      **spec}}
    store = Store(data, create=True).lock("test")
    store.space.ensure(space, random_language())
    store.write([media("/m/one.jpg", [random_person(np.random.default_rng(0))])])
    store.close()


@pytest.mark.guarantee("G17")
def test_consent_to_unpickle_is_never_read_from_a_store(tmp_path, tiny_clip_dir, tiny_bert_dir, reliability):
    """A crafted store that says trust_checkpoint=True, with a marker-writing pickle at its recorded checkpoint
    path: no command without --trust-checkpoint runs it; those that need the model say how to fix it."""

    marker = tmp_path / "pwned"
    evil = _marker_pickle(tmp_path / "ckpt_4.pth", marker)
    data = tmp_path / "data"
    _store_made_with(data, evil, tiny_clip_dir, tiny_bert_dir, trust_checkpoint=True)
    [img] = write_images(tmp_path / "in", 1)
    records = tmp_path / "records.jsonl"
    records.write_text(json.dumps({"path": "/x.jpg", "persons": []}) + "\n")
    d = ["--data-dir", data]
    needs_model = [("predict", img, "--detector", "none"), ("show", img, "--out", tmp_path / "o.png", "--detector",
                                                             "none"),
                   ("search", "--image", img, "--detector", "none"), ("search", "--clip-text", "a person"),
                   ("ingest", tmp_path / "in", "--detector", "none", "--workers", "0"), ("import", records),
                   ("reindex",), ("doctor", "--repair"), ("remove", "/m/one.jpg")]  # the activity space needs heads
    for args in needs_model:
        code, _, err = run_main(*args, *d)
        errors = [line for line in err.splitlines() if line.startswith("error:")]
        assert code == 1 and len(errors) == 1 and "Traceback" not in err, (args, err)
        assert "--trust-checkpoint" in err and "convert-checkpoint" in err and str(evil) in err, (args, err)
        assert not marker.exists(), args
    no_model = [("search", "--text", "hand: hold"), ("search", "--person", "1"), ("stats",), ("doctor",)]
    for args in no_model:
        code, out, err = run_main(*args, *d)
        assert (code == 0 or args == ("doctor",) and "index activity" in out) and "Traceback" not in err, (args, err)
        assert not marker.exists(), args
    from a2v_search.api import A2VSearch

    with A2VSearch.open(data) as api, pytest.raises(CheckpointError, match="--trust-checkpoint"):
        api.predict(img, box=[0, 0, 10, 10])
    assert not marker.exists()
    reliability["hostile files"] += len(needs_model) + len(no_model) + 1
    # the pickle is real: the flag given on the command line (and only then) runs it
    run_main("predict", img, "--detector", "none", "--trust-checkpoint", *d)
    assert marker.exists()


@pytest.mark.guarantee("G18")
def test_a_file_swapped_in_at_the_recorded_checkpoint_path_is_refused_before_loading(tmp_path, tiny_clip_dir,
                                                                                     tiny_bert_dir):

    marker = tmp_path / "pwned"
    ckpt = tmp_path / "ckpt_4.pth"
    ckpt.write_bytes(b"the original weights")
    data = tmp_path / "data"
    _store_made_with(data, ckpt, tiny_clip_dir, tiny_bert_dir)
    time.sleep(0.01)
    _marker_pickle(ckpt, marker)  # replaced after the store was made
    [img] = write_images(tmp_path / "in", 1)
    code, _, err = run_main("predict", img, "--detector", "none", "--trust-checkpoint", "--data-dir", data)
    assert code == 1 and "is not the one this store's vectors were made with" in err, err
    assert not marker.exists()


@pytest.mark.guarantee("G18")
def test_a_file_swapped_in_after_the_identity_check_is_never_unpickled(tmp_path, tiny_clip_dir, tiny_bert_dir,
                                                                       monkeypatch):
    """The checkpoint is swapped between the check of its identity and its loading (a race an attacker can win):
    the bytes loaded are the bytes hashed, so the swapped-in pickle never runs, even with --trust-checkpoint."""
    from a2v_search import space as space_module

    marker = tmp_path / "pwned"
    ckpt = tmp_path / "ckpt_4.pth"
    ckpt.write_bytes(b"the original weights")
    data = tmp_path / "data"
    _store_made_with(data, ckpt, tiny_clip_dir, tiny_bert_dir)
    real_check = space_module.check_recorded_identity

    def check_then_swap(path, *args):
        real_check(path, *args)
        if path == str(ckpt) and not marker.with_suffix(".swapped").exists():
            marker.with_suffix(".swapped").touch()
            _marker_pickle(ckpt, marker)

    monkeypatch.setattr(space_module, "check_recorded_identity", check_then_swap)
    [img] = write_images(tmp_path / "in", 1)
    code, _, err = run_main("predict", img, "--detector", "none", "--trust-checkpoint", "--data-dir", data)
    assert marker.with_suffix(".swapped").exists()  # the swap happened after the check passed
    assert code == 1 and "is not the one this store's vectors were made with" in err, err
    assert not marker.exists()


@pytest.mark.guarantee("G18")
def test_a_converted_folder_is_its_source_only_while_its_weights_are_the_converters(tmp_path, tiny_clip_dir):
    from a2v_search.models.checkpoint import HEADS_NAME, checkpoint_identity, load_checkpoint, save_checkpoint
    from a2v_search.models.heads import PastaHeads

    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    folder = save_checkpoint(tmp_path / "converted", PastaHeads(dim_in=16, dim_hidden=8),
                             backbone_ref=str(tiny_clip_dir), extra={"identity": "0123456789abcdef"})
    assert checkpoint_identity(folder) == "0123456789abcdef" == load_checkpoint(folder)[2]["identity"]
    other = save_checkpoint(tmp_path / "other", PastaHeads(dim_in=16, dim_hidden=8), backbone_ref=str(tiny_clip_dir))
    (folder / HEADS_NAME).write_bytes((other / HEADS_NAME).read_bytes())  # other weights, same config
    assert checkpoint_identity(folder) != "0123456789abcdef"
    with pytest.raises(CheckpointError, match="is not the one this store's vectors were made with"):
        load_checkpoint(folder, expect="0123456789abcdef")


# ------------------------------------------------------------------ no person or record bricks a store


class IdleOrBrokenEncoder(StubEncoder):
    """The stand-in encoder, except: an all-black crop is a person whose every part is idle (probability on the
    no_interaction states, the rest rounded away by float16), an all-white crop makes the model output NaN."""

    def encode_pixels(self, pixels, batch_size=32):
        from a2v_search import taxonomy as tx

        out = super().encode_pixels(pixels, batch_size)
        for i, px in enumerate(pixels):
            if px.max() == 0:
                out.pasta[i] = 1e-9
                out.pasta[i, list(tx.NO_INTERACTION_PASTA)] = 0.99
                out.verbs[i] = 1e-9
                out.verbs[i, tx.NO_INTERACTION_VERB] = 0.99
            elif px.min() == 255:
                out.visual[i] = np.nan
        return out


def _idle_language_is_zero(store: Store, person_id: int) -> None:
    with store.db.session() as s:
        v = repo.fetch_vectors(s, [person_id])
    assert not np.any(store.space.vectors(v.visual, v.pasta, v.verbs)["language"])  # no language direction, by design


def _idle_person_is_found_and_shown(store: Store, person_id: int) -> None:
    """An image query (visual + language) finds the idle person first; a text query runs and scores it 0."""
    with store.db.session() as s:
        visual = repo.fetch_vectors(s, [person_id]).visual
    rng = np.random.default_rng(5)
    lang_q = store.space.language().embed(rng.random((1, 93), np.float32), rng.random((1, 157), np.float32))[0]
    assert np.any(lang_q)
    searcher = Searcher(store)
    hits = searcher.search({"visual": visual[0], "language": lang_q}, {"visual": 1.0, "language": 0.1},
                           SearchOptions(k=3))
    assert hits[0].person_id == person_id and hits[0].score == pytest.approx(1.0, abs=2e-3)
    assert hits[0].cosines["language"] == 0.0 and hits[0].path and len(hits[0].pasta) == 5
    text_hits = searcher.search({"language": lang_q}, {"language": 1.0}, SearchOptions(k=100))
    assert {h.person_id: h.score for h in text_hits}[person_id] == 0.0


@pytest.mark.guarantee("G13")
def test_ingest_stores_an_idle_person_and_reports_a_nan_output(tmp_path, reliability):
    inputs = write_images(tmp_path / "in", 3)
    Image.fromarray(np.zeros((48, 64, 3), np.uint8)).save(tmp_path / "in" / "idle.png")
    Image.fromarray(np.full((48, 64, 3), 255, np.uint8)).save(tmp_path / "in" / "nan.png")
    data = tmp_path / "data"
    store = Store(data, create=True).lock("test")
    report = run_ingest(store, IdleOrBrokenEncoder(), WholeImage(), [str(tmp_path / "in")],
                        IngestOptions(workers=0, batch_size=8, commit_every=8))
    store.close()
    assert report.media_ingested == 4 and report.persons_added == 4
    assert [(Path(f["path"]).name, f["stage"]) for f in report.failures] == [("nan.png", "encode")]
    assert "non-finite" in report.failures[0]["error"]
    reader = Store(data)
    with reader.db.session() as s:
        [(idle_id,)] = s.execute(repo.select(repo.Person.id).join(repo.Media).where(
            repo.Media.path == os.path.realpath(tmp_path / "in" / "idle.png"))).all()
        assert [p for p, _, _ in repo.failures(s)] == [os.path.realpath(tmp_path / "in" / "nan.png")]
    _idle_language_is_zero(reader, idle_id)
    _idle_person_is_found_and_shown(reader, idle_id)
    assert reader.check().problems == []
    reader.close()
    fixer = Store(data).lock("reindex")
    fixer.indexes.rebuild()
    fixer.close()
    assert Store(data).check().problems == [] and len(inputs) == 3
    reliability["hostile files"] += 2


@pytest.mark.guarantee("G13")
def test_a_copy_of_a_file_that_fails_is_reported_not_lost(tmp_path):
    """Persons are checked a batch at a time, before the commit: a NaN model output is its file's failure and the
    rest of the batch is stored; a copy of that file, waiting for its first copy's commit, is reported as the
    duplicate of a file that failed (it was once left waiting for ever, in no report)."""
    write_images(tmp_path / "in", 3)
    white = np.full((48, 64, 3), 255, np.uint8)
    for name in ("nan.png", "nan_copy.png"):
        Image.fromarray(white).save(tmp_path / "in" / name)
    store = Store(tmp_path / "data", create=True).lock("test")
    report = run_ingest(store, IdleOrBrokenEncoder(), WholeImage(), [str(tmp_path / "in")],
                        IngestOptions(workers=0, batch_size=8, commit_every=8))
    store.close()
    assert report.media_ingested == 3 and report.persons_added == 3 and report.files_seen == 5
    failures = {Path(f["path"]).name: (f["stage"], f["error"]) for f in report.failures}
    assert failures.keys() == {"nan.png", "nan_copy.png"}
    assert failures["nan.png"][0] == "encode" and "person 0: visual has non-finite" in failures["nan.png"][1]
    assert failures["nan_copy.png"] == ("write", "duplicate of a file that failed")
    assert Store(tmp_path / "data").check().problems == []


@pytest.mark.guarantee("G32", "G12", "G14", "G8")
def test_files_that_lie_never_hang_or_exhaust_a_run(tmp_path, tiny_clip_dir, tiny_bert_dir, reliability):
    """A list file that is a FIFO or /dev/zero, JSON nested a million deep in a boxes file, an import record and an
    index manifest: each is one clear failure and the run goes on."""
    from a2v_search.api import A2VSearch

    write_images(tmp_path / "in", 2)
    os.mkfifo(tmp_path / "fifo.txt")  # nobody ever writes to it
    (tmp_path / "zero.txt").symlink_to("/dev/zero")
    data = tmp_path / "data"
    reports = []

    def run() -> None:
        signal.alarm(120)  # the old code waited on the FIFO for good
        # and read /dev/zero until memory ran out; 12 GB of address space: a torch process with its threads and
        # SQLite's WAL mappings reserves several GB it never touches (4 GB made SQLite fail to map its -shm file)
        resource.setrlimit(resource.RLIMIT_AS, (12 << 30, 12 << 30))
        reports.append(ingest(data, [tmp_path / "in", tmp_path / "fifo.txt", tmp_path / "zero.txt"]))
        failed = {Path(f["path"]).name: f["error"] for f in reports[0].failures}
        assert reports[0].media_ingested == 2 and set(failed) == {"fifo.txt", "zero.txt"}, failed
        assert all("not a regular file" in why for why in failed.values()), failed

    code, err = in_child(run)
    assert code == 0, err
    deep = "[" * 1_000_000 + "]" * 1_000_000
    (tmp_path / "deep.json").write_text(deep)
    with pytest.raises(InputError, match="nests its JSON too deeply"):
        BoxesFile(tmp_path / "deep.json")
    rng = np.random.default_rng(0)
    good = {"path": "/a.jpg", "persons": [{"pasta": {"hand: hold": 0.9}, "visual": rng.normal(size=16).tolist()}]}
    records = tmp_path / "records.jsonl"
    records.write_text(json.dumps(good) + "\n" + deep + "\n" + json.dumps({**good, "path": "/b.jpg"}) + "\n")
    imported = tmp_path / "imported"
    with A2VSearch.open(imported, model=str(tiny_clip_dir), text_model=str(tiny_bert_dir), device="cpu") as api:
        report = api.import_records(records)
        assert report.persons_added == 2 and len(report.failures) == 1, report
        assert "nested too deeply" in report.failures[0]["error"]
    (imported / "index" / "visual.json").write_text(deep)
    reader = Store(imported)
    assert reader.indexes.get()["visual"].ntotal == 2  # the manifest is unreadable: rebuilt from SQLite
    reader.close()
    reliability["hostile files"] += 5


@pytest.mark.guarantee("G14")
def test_import_of_a_record_without_pasta_or_verbs_keeps_the_store_working(tmp_path, tiny_clip_dir, tiny_bert_dir):
    from a2v_search.api import A2VSearch

    rng = np.random.default_rng(0)
    data = tmp_path / "data"

    def record(path, pasta, verbs):
        return {"path": path, "persons": [{"pasta": pasta, "verbs": verbs, "visual": rng.normal(size=16).tolist()}]}

    with A2VSearch.open(data, model=str(tiny_clip_dir), text_model=str(tiny_bert_dir), device="cpu") as api:
        report = api.import_records([record("/a.jpg", {"hand: hold": 0.9}, {}), record("/idle.jpg", {}, {}),
                                     record("/nan.jpg", [float("nan")] * 93, {})])
        assert report.persons_added == 2 and [f["path"] for f in report.failures] == ["/nan.jpg"]
        assert [h.path for h in api.search_text("hand: hold", k=5)][0] == "/a.jpg"
        assert api.doctor().problems == []
        hits = api.search_similar(2, k=5)  # the idle person's own query: no language direction, visual only
        assert hits.hits[0].cosines["visual"] < 1.0 and len(hits) == 1
    store = Store(data)
    _idle_person_is_found_and_shown(store, 2)
    store.close()


@pytest.mark.guarantee("G15")
def test_a_store_already_holding_rows_without_direction_opens_searches_and_repairs(tmp_path, reliability):
    """Rows older code committed (zero probabilities) or that were damaged (NaN, a short blob): every open,
    search, doctor --repair and reindex works, with such a row as a zero vector."""
    from helpers import media, random_person, writable_store

    rng = np.random.default_rng(1)
    data = tmp_path / "data"
    store = writable_store(data)
    store.write([media(f"/m/{i}.jpg", [random_person(rng)]) for i in range(5)])
    store.close()
    store = writable_store(data)  # rows written straight to SQLite, FAISS never told: as after the old crash
    idle = random_person(rng)
    idle.pasta, idle.verbs = np.zeros(93, np.float32), np.zeros(157, np.float32)
    with store.db.session() as s:
        _, new_ids, _ = repo.add_media(s, store.space.row().id, [media("/m/idle.jpg", [idle]),
                                                                 media("/m/nan.jpg", [random_person(rng)]),
                                                                 media("/m/short.jpg", [random_person(rng)])],
                                       link=link)
        s.execute(repo.update(repo.Person).where(repo.Person.id == int(new_ids[1]))
                  .values(visual=np.full(16, np.nan, np.float16).tobytes()))
        s.execute(repo.update(repo.Person).where(repo.Person.id == int(new_ids[2]))
                  .values(pasta=b"\x00\x3c" * 7))
    store.close(save=False)
    reader = Store(data)  # catch-up adds the three rows
    assert all(idx.ntotal == 8 for idx in reader.indexes.get().values())
    _idle_person_is_found_and_shown(reader, int(new_ids[0]))
    assert reader.check().problems != []  # the saved index lags
    reader.close()
    fixer = Store(data).lock("doctor --repair")
    assert fixer.check(repair=True).ok
    fixer.close()
    (data / "index" / "language.json").unlink()  # a rebuild from scratch too
    reader = Store(data)
    assert reader.indexes.get()["language"].ntotal == 8 and reader.check().problems[0].what == "index language"
    reader.close()
    fixer = Store(data).lock("reindex")
    fixer.indexes.rebuild()
    fixer.close()
    assert Store(data).check().problems == []
    reliability["faults"] += 3


# ------------------------------------------------------------------ read-only stores


@contextlib.contextmanager
def read_only_folder(folder: Path):
    """Make ``folder`` (and everything in it) genuinely unwritable for this process, even as root: the
    immutable attribute (chattr +i) for root, permissions otherwise. Skips when neither holds here."""
    if os.geteuid() == 0:
        import shutil
        import subprocess

        if not shutil.which("chattr") or subprocess.run(["chattr", "-R", "+i", str(folder)],
                                                        capture_output=True).returncode:
            pytest.skip("running as root and this file system has no immutable attribute (chattr +i): no way to "
                        "make a folder that root cannot write")
        undo = ["chattr", "-R", "-i", str(folder)]
    else:
        for p in [folder, *folder.rglob("*")]:
            p.chmod(p.stat().st_mode & ~0o222)
        undo = None
    try:
        probe = folder / "probe"
        with pytest.raises(OSError):
            probe.write_text("x")  # really read-only, not just said to be
        yield
    finally:
        if undo:
            import subprocess

            subprocess.run(undo, check=True)
        else:
            for p in [folder, *folder.rglob("*")]:
                p.chmod(p.stat().st_mode | 0o200)


@pytest.mark.guarantee("G6")
def test_a_read_only_store_answers_and_writers_fail_with_one_line(tmp_path, tiny_clip_dir, tiny_bert_dir,
                                                                  reliability):

    imgs = write_images(tmp_path / "in", 3)
    data = tmp_path / "data"
    common = ["--model", tiny_clip_dir, "--text-model", tiny_bert_dir, "--detector", "none", "--workers", "0"]
    assert run_main("ingest", tmp_path / "in", "--data-dir", data, *common)[0] == 0
    assert not (data / "a2v.sqlite-shm").exists()  # closed cleanly: no -shm for a reader to use
    records = tmp_path / "records.jsonl"
    records.write_text(json.dumps({"path": "/x.jpg", "persons": []}) + "\n")
    d = ["--data-dir", data]
    before = sorted((p.relative_to(data), p.stat().st_mtime_ns) for p in data.rglob("*"))
    with read_only_folder(data):
        for args in [("search", "--text", "hand: hold"), ("search", "--image", imgs[0], "--json"), ("stats",),
                     ("predict", imgs[1], "--json"), ("doctor",), ("search", "--person", "1")]:
            code, out, err = run_main(*args, *d)
            assert code == 0 and "error" not in err, (args, err)
        code, out, _ = run_main("search", "--image", imgs[0], "--json", *d)
        assert json.loads(out)["results"][0]["path"] == os.path.realpath(imgs[0])
        for args in [("ingest", tmp_path / "in", "--force"), ("import", records), ("reindex",), ("remove", imgs[0]),
                     ("doctor", "--repair")]:
            code, _, err = run_main(*args, *d)
            errors = [line for line in err.splitlines() if line.startswith("error:")]
            assert code == 1 and len(errors) == 1 and "Traceback" not in err, (args, err)
            assert "writable" in errors[0], (args, err)
            reliability["faults"] += 1
    assert sorted((p.relative_to(data), p.stat().st_mtime_ns) for p in data.rglob("*")) == before


# ------------------------------------------------------------------ bounded query inputs


def _png_header(path: Path, w: int, h: int) -> Path:
    """A PNG that claims w x h pixels (IHDR only, no image data): tiny on disk, huge if decoded."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
                     + chunk(b"IEND", b""))
    return path


@pytest.mark.guarantee("G19")
def test_query_inputs_are_bounded(tmp_path, monkeypatch, tiny_clip_dir, tiny_bert_dir, reliability):
    from PIL import EpsImagePlugin

    write_images(tmp_path / "in", 3)
    data = tmp_path / "data"
    d = ["--data-dir", data]
    assert run_main("ingest", tmp_path / "in", *d, "--model", tiny_clip_dir, "--text-model", tiny_bert_dir,
                    "--detector", "none", "--workers", "0")[0] == 0
    pillow_limit = Image.MAX_IMAGE_PIXELS
    ghostscript = []
    monkeypatch.setattr(EpsImagePlugin, "Ghostscript", lambda *a, **k: ghostscript.append(a) or None)
    eps = tmp_path / "query.eps"
    eps.write_text("%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 32 32\nnewpath 0 0 moveto 32 32 lineto stroke\n"
                   "showpage\n%%EOF\n")
    bomb = _png_header(tmp_path / "bomb.png", 30_000, 30_000)
    cases = [(("search", "--text", "hand: hold", "-k", str(10**7)), "-k must be"),
             (("search", "--text", "hand: hold", "-k", "0"), "-k must be"),
             (("search", "--person", "1", "--offset", str(10**8)), "--offset must be"),
             (("search", "--text", "hand: hold " * 10_000), "characters"),
             (("search", "--clip-text", "x" * 100_000), "characters"),
             (("search", "--image", eps, "--detector", "none"), "not a decodable image"),
             (("predict", eps, "--detector", "none"), "not a decodable image"),
             (("search", "--image", bomb, "--detector", "none"), "pixels"),
             (("predict", bomb, "--detector", "none"), "pixels")]
    for args, says in cases:
        code, _, err = run_main(*args, *d)
        assert code == 1 and err.count("\n") == 1 and says in err, (args[:3], err)
        reliability["hostile files"] += 1
    assert ghostscript == [] and pillow_limit == Image.MAX_IMAGE_PIXELS  # Pillow's own guard left on
    code, out, _ = run_main("search", "--text", "hand: hold", "-k", "10000", "--json", *d)
    assert code == 0 and len(json.loads(out)["results"]) == 3


# ------------------------------------------------------------------ power loss


@pytest.mark.parametrize("reused", [1, 2])  # ids handed out again after the loss: fewer than lost / as many
@pytest.mark.guarantee("G7")
def test_sqlite_losing_its_last_transactions_is_detected_and_the_index_rebuilt(tmp_path, reused, reliability):
    """An OS crash or power cut can take SQLite's last transactions while the (fsynced) index files keep the
    persons they held; the ids are then handed out again to other persons."""
    from helpers import media, random_person, writable_store

    rng = np.random.default_rng(2)
    data = tmp_path / "data"
    store = writable_store(data)
    store.write([media(f"/m/{i}.jpg", [random_person(rng)]) for i in range(4)])
    store.close()
    lost_view = (data / "a2v.sqlite").read_bytes()  # SQLite as the power cut will leave it
    store = writable_store(data)
    store.write([media(f"/m/lost{i}.jpg", [random_person(rng)]) for i in range(2)])  # ids 5, 6; index saved
    store.close()
    (data / "a2v.sqlite").write_bytes(lost_view)
    for leftover in ("a2v.sqlite-wal", "a2v.sqlite-shm"):
        (data / leftover).unlink(missing_ok=True)
    store = writable_store(data)  # a writer that committed new persons and died before saving the index
    fresh = [random_person(rng) for _ in range(reused)]
    with store.db.session() as s:
        _, ids, _ = repo.add_media(s, store.space.row().id, [media(f"/m/new{i}.jpg", [p]) for i, p in enumerate(fresh)],
                                   link=link)
    store.close(save=False)
    assert ids.tolist() == [5, 6][:reused]  # the ids of the lost persons, handed out again
    report = Store(data).check()
    assert [p.what for p in report.problems] == ["index visual", "index language"]
    assert all("lost its last transactions" in p.detail for p in report.problems)
    reader = Store(data)
    assert all(idx.ids().tolist() == list(range(1, 5 + reused)) for idx in reader.indexes.get().values())
    for pid, p in zip(ids, fresh, strict=True):
        hit = Searcher(reader).search({"visual": p.visual}, {"visual": 1.0}, SearchOptions(k=1))[0]
        assert hit.person_id == pid and hit.score == pytest.approx(1.0, abs=2e-3)
    reader.close()
    fixer = Store(data).lock("doctor --repair")
    assert fixer.check(repair=True).ok
    fixer.close()
    assert Store(data).check().problems == []
    reliability["faults"] += 1


# ------------------------------------------------------------------ small ones


@pytest.mark.guarantee("G17")
def test_torch_floor_is_one_whose_weights_only_load_holds():
    """torch < 2.6 has a bypassable weights_only=True; the project must not allow it."""
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+

    from packaging.requirements import Requirement
    from packaging.version import Version

    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    [torch_req] = [Requirement(d) for d in deps if Requirement(d).name == "torch"]
    assert not torch_req.specifier.contains("2.5.1") and torch_req.specifier.contains("2.6.0")
    import torch

    assert Version(torch.__version__.split("+")[0]) >= Version("2.6")


@pytest.mark.guarantee("G21")
def test_the_lock_file_is_never_opened_through_a_link(tmp_path):
    from a2v_search.lock import WriteLock

    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    data = tmp_path / "data"
    data.mkdir()
    os.symlink(victim, data / "write.lock")
    with pytest.raises(StoreError, match="symbolic link"):
        WriteLock(data, "ingest").acquire()
    assert victim.read_text() == "precious"


@pytest.mark.guarantee("G21")
def test_temp_files_have_unpredictable_names(tmp_path):
    """Links planted at the temp names an index save would use (old: `visual.json.tmp`, `visual.1.faiss.tmp`)
    are never written through."""
    from helpers import media, random_person, writable_store

    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    data = tmp_path / "data"
    (data / "index").mkdir(parents=True)
    for name in INDEX_NAMES:
        for planted in (f"{name}.json.tmp", f"{name}.1.faiss.tmp"):
            os.symlink(victim, data / "index" / planted)
    store = writable_store(data)
    store.write([media("/m/a.jpg", [random_person(np.random.default_rng(0))])])
    store.close()
    assert victim.read_text() == "precious"
    assert Store(data).check().counts["persons"] == 1


@pytest.mark.guarantee("G24")
def test_the_python_api_takes_path_objects(tmp_path, tiny_clip_dir, tiny_bert_dir):
    from a2v_search.api import A2VSearch

    write_images(tmp_path / "in", 2)
    with A2VSearch.open(tmp_path / "data", model=Path(tiny_clip_dir), text_model=Path(tiny_bert_dir),
                        detector="none", device="cpu") as api:
        assert api.ingest([tmp_path / "in"], workers=0).persons_added == 2
        assert len(api.search_text("hand: hold", k=5)) == 2
    with A2VSearch.open(tmp_path / "data", text_model=Path(tiny_bert_dir)) as api:  # the store's own, as a Path
        assert len(api.search_image(tmp_path / "in" / "img000.png", k=1)) == 1


@pytest.mark.guarantee("G23")
def test_failures_show_paths_one_way(tmp_path, monkeypatch):
    write_images(tmp_path / "in", 1)
    (tmp_path / "in" / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)  # fails at decode
    monkeypatch.chdir(tmp_path)
    report = ingest(tmp_path / "data", [Path("in"), Path("missing.jpg")])
    stages = {Path(f["path"]).name: (f["stage"], f["path"]) for f in report.failures}
    assert stages["bad.png"][0] == "decode" and stages["missing.jpg"][0] == "discover"
    assert stages["bad.png"][1] == str(tmp_path / "in" / "bad.png")
    assert stages["missing.jpg"][1] == str(tmp_path / "missing.jpg")


def test_every_guarantee_in_the_docs_is_held_by_a_test():
    from conftest import guarantee_ids

    ids = guarantee_ids()
    assert sorted(ids, key=lambda g: int(g[1:])) == [f"G{i}" for i in range(1, len(ids) + 1)] and len(ids) >= 24
    marked = set()
    for py in (ROOT / "tests").rglob("test_*.py"):
        for args in re.findall(r"@pytest\.mark\.guarantee\(([^)]*)\)", py.read_text()):
            marked.update(re.findall(r'"(G\d+)"', args))
    assert sorted(set(ids) - marked, key=lambda g: int(g[1:])) == []
    assert marked <= set(ids)  # no test claims a promise the docs do not make


@pytest.mark.guarantee("G17")
def test_a_converted_folder_given_once_to_a_writer_replaces_the_recorded_pickle(tmp_path, tiny_clip_dir,
                                                                                tiny_bert_dir):

    from a2v_search.models.checkpoint import checkpoint_identity, save_checkpoint
    from a2v_search.models.heads import PastaHeads

    marker = tmp_path / "pwned"
    evil = _marker_pickle(tmp_path / "ckpt_4.pth", marker)
    folder = save_checkpoint(tmp_path / "converted", PastaHeads(dim_in=16, dim_hidden=8),
                             backbone_ref=str(tiny_clip_dir), extra={"identity": checkpoint_identity(evil)})
    [img, _] = write_images(tmp_path / "in", 2)
    data = tmp_path / "data"
    ingest_args = ["ingest", tmp_path / "in", "--data-dir", data, "--text-model", tiny_bert_dir, "--detector", "none",
                   "--workers", "0"]
    assert run_main(*ingest_args, "--checkpoint", folder)[0] == 0
    store = Store(data).lock("test")  # now as a store made with `--checkpoint ckpt_4.pth --trust-checkpoint`
    store.space.record_spec({**store.space.config()["spec"], "checkpoint": str(evil)})
    store.close()
    code, _, err = run_main("search", "--image", img, "--data-dir", data)
    assert code == 1 and "convert-checkpoint" in err and not marker.exists()
    assert run_main(*ingest_args, "--checkpoint", folder)[0] == 0  # a writer given the folder once...
    for args in [("search", "--image", img), ("predict", img, "--detector", "none")]:  # ...and no flag after
        code, _, err = run_main(*args, "--data-dir", data)
        assert code == 0, (args, err)
    assert not marker.exists()
