"""Import records: the batch conversion gives exactly what the record-by-record one gives, and JSON lines are read
with the line of an error named."""

from __future__ import annotations

import io
import itertools
import json
import os
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import select

from a2v_search.errors import InputError
from a2v_search.records import person_arrays, plain_arrays, plain_media, read_records, record_to_media
from db.values import as_arrays


def records(rng, n=6, visual_dim=16):
    out = []
    for i in range(n):
        persons = []
        for j in range(i % 3):
            p = {"pasta": rng.random(93).tolist(), "verbs": rng.random(157).tolist(),
                 "visual": rng.normal(size=visual_dim).tolist(), "score": 0.5 + j / 10}
            if j == 1:
                p.update(box=[1, 2, 30.5, 40], parts=rng.random(6).tolist(), visual_norm=3.5, frame_index=j, t_sec=0.5)
            persons.append(p)
        out.append({"path": f"/r/{i}.jpg", "width": 64, "height": 48, "persons": persons,
                    **({"collection": "c", "kind": "video"} if i == 4 else {})})
    return out


@pytest.mark.parametrize("given", ["lists", "float32", "float64", "float16", "mixed"])
def test_the_batch_conversion_equals_the_one_by_one(tmp_path, given):
    """The batch conversion of plain records gives what the record-by-record one gives; a Python caller's numpy
    arrays (vectors of any float dtype, boxes, norms as numpy scalars) are plain too."""
    recs = records(np.random.default_rng(0))
    if given != "lists":
        for i, p in enumerate(q for r in recs for q in r["persons"]):
            dtype = {"mixed": (np.float32, np.float64, np.float16)[i % 3]}.get(given, given)
            p.update({k: np.asarray(v, dtype) for k, v in p.items() if k in ("pasta", "verbs", "visual", "parts")})
            if "box" in p:
                p["box"] = np.asarray(p["box"], np.float64)
            if "visual_norm" in p:
                p["visual_norm"] = np.float32(p["visual_norm"])
    arrays = plain_arrays(recs, 16)
    fast = plain_media(recs, arrays, "default")
    slow = [record_to_media(r, 16, "default") for r in recs]
    assert arrays is not None and len(fast) == len(slow) == 6
    for a, b in zip(fast, slow, strict=True):
        assert (a.path, a.kind, a.collection, a.width, a.height) == (b.path, b.kind, b.collection, b.width, b.height)
        assert len(a.persons) == len(b.persons)
        for p, q in zip(a.persons, b.persons, strict=True):
            assert (p.box, p.score, p.visual_norm, p.frame_index, p.t_sec) == (q.box, q.score, q.visual_norm,
                                                                                 q.frame_index, q.t_sec)
            for name in ("pasta", "verbs", "parts", "visual"):
                assert np.array_equal(getattr(p, name), getattr(q, name)), name
    # what the import hands Store.write: the arrays Store.write would make of the persons one by one
    given = person_arrays(fast, arrays)
    made, _ = as_arrays([p for m in slow for p in m.persons], 16)
    for name in ("pasta", "verbs", "parts", "visual", "boxes", "norms", "objects"):
        a, b = getattr(given, name), getattr(made, name)
        assert a.dtype == b.dtype and np.array_equal(a, b), name


@pytest.mark.parametrize("change", [
    lambda r: r["persons"][0]["pasta"].__setitem__(0, 1.5),  # out of range
    lambda r: r["persons"][0].__setitem__("pasta", {"hand: hold": 0.9}),  # names: the one-by-one path
    lambda r: r["persons"][0].__setitem__("visual", [0.0] * 16),
    lambda r: r["persons"][0].__setitem__("box", [5, 5, 1, 1]),
    lambda r: r["persons"][0].__setitem__("box", [0, 0, float("inf"), 5]),  # not storable: named one by one
    lambda r: r.__setitem__("kind", "audio"),
])
def test_anything_not_plain_goes_one_by_one(change):
    recs = records(np.random.default_rng(1))
    change(recs[1])
    assert plain_arrays(recs, 16) is None


def test_json_lines_name_the_bad_line(tmp_path):
    """A file whose first record is not JSON is refused at once; a later line that is not JSON is a bad record that
    names its line (the import reports it and goes on)."""
    recs = records(np.random.default_rng(2), n=3)
    good = tmp_path / "r.jsonl"
    good.write_text("\n".join(json.dumps(r) for r in recs) + "\n\n")
    assert list(read_records(good)) == recs
    listed = tmp_path / "r.json"
    listed.write_text(" " * 10_000 + json.dumps(recs))
    assert list(read_records(listed)) == recs
    broken = tmp_path / "broken.jsonl"
    broken.write_text("\n\n" + json.dumps(recs[0])[:-3] + "\n" + json.dumps(recs[1]) + "\n")
    with pytest.raises(InputError, match=r"broken.jsonl is not valid JSON / JSON lines \(line 3: "):
        read_records(broken)
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(recs[0]) + "\n" + json.dumps(recs[1])[:-3] + "\n" + json.dumps(recs[2]) + "\n")
    got = list(read_records(bad))
    assert got[0] == recs[0] and got[2] == recs[2]
    with pytest.raises(InputError, match=r"line 2 is not valid JSON \("):
        record_to_media(got[1], 16, "default")
    for name, text in (("bom.jsonl", "\n".join(json.dumps(r) for r in recs)), ("bom.json", json.dumps(recs))):
        bom = tmp_path / name  # UTF-8 with a byte order mark, as Windows tools write it
        bom.write_bytes(b"\xef\xbb\xbf" + text.encode())
        assert list(read_records(bom)) == recs
    latin = tmp_path / "latin.jsonl"
    latin.write_bytes(b'{"path": "caf\xe9"}\n')
    with pytest.raises(InputError, match="not UTF-8"):
        read_records(latin)
    with pytest.raises(InputError, match="cannot read"):
        read_records(tmp_path / "missing.jsonl")


VECTORS = ("pasta", "verbs", "visual", "parts")


def _vectors_of(record) -> list:
    """The persons' vectors of a record, in order."""
    persons = record.get("persons", []) if isinstance(record, dict) else []
    return [p[k] for p in persons if isinstance(p, dict) for k in VECTORS if k in p] if isinstance(persons, list) \
        else []


def _without_vectors(record):
    if not isinstance(record, dict) or not isinstance(record.get("persons"), list):
        return record
    return {**record, "persons": [{k: v for k, v in p.items() if k not in VECTORS} if isinstance(p, dict) else p
                                  for p in record["persons"]]}


def test_a_reader_gives_the_records_and_errors_that_orjson_gives():
    """The reader processes' parser (simdjson, records_reader.loads_vectors) gives exactly orjson's records, its
    vectors as float64 arrays of the same numbers; any line it cannot give so is orjson's own (lists, or orjson's
    error): nested lists in a vector (simdjson would flatten them), a ``[`` in a string, a key given twice (orjson
    keeps the last), names, anything but numbers in a vector, numbers simdjson refuses."""
    import orjson

    from a2v_search.records_reader import loads_vectors

    rec = records(np.random.default_rng(3), n=3)[2]  # two persons, one with parts, a box, a time
    fast = [rec,
            {**rec, "persons": [{**rec["persons"][0], "visual": [1, -0, 2.5, -0.0, 1e-320, 9007199254740993]}]},
            {"path": "/é\\\"\u00e9.jpg", "persons": [], "objects": [{"box": [1, 2, 3, 4]}]},
            {"path": "/x.jpg", "persons": [{"pasta": [], "objects": [{"label": "cup", "box": [[1], 2]}]}]},
            {**rec, "persons": [{**rec["persons"][0], "pasta": {"hand: hold": 0.5}}]}]
    visual = rec["persons"][0]["visual"]
    slow = [json.dumps({**rec, "path": "/a[1].jpg"}),
            json.dumps({**rec, "persons": [{**rec["persons"][0], "visual": [[v] for v in visual]}]}),
            json.dumps({**rec, "persons": [{**rec["persons"][0], "visual": [visual]}]}),
            json.dumps({**rec, "persons": [{**rec["persons"][0], "verbs": [0.5, "x"]}]}),
            json.dumps({**rec, "persons": [{**rec["persons"][0], "verbs": [0.5, True]}]}),
            '{"path": "/a.jpg", "persons": [{"visual": [1, 18446744073709551616]}]}',
            '{"path": "/a.jpg", "path": "/b.jpg", "persons": []}',
            '{"path": "/a.jpg", "persons": [{"visual": [1, 2], "visual": [3, 4]}]}',
            '[1, 2]', '7', '{"path": "/a.jpg", "persons": 5}', '{"path": "/a.jpg", "persons": [5, [1]]}']
    for line in [json.dumps(r).encode() for r in fast] + [s.encode() for s in slow]:
        got, want = loads_vectors(memoryview(bytearray(b"x" + line))[1:]), orjson.loads(line)
        assert _without_vectors(got) == _without_vectors(want), line[:80]
        arrays = [isinstance(v, np.ndarray) and v.dtype == np.float64
                  for v, w in zip(_vectors_of(got), _vectors_of(want), strict=True) if isinstance(w, list)]
        assert all(arrays) if line.decode() not in slow else not any(arrays), line[:80]
        for v, w in zip(_vectors_of(got), _vectors_of(want), strict=True):  # the stored float32 values, or the same
            if isinstance(v, np.ndarray):
                assert np.array_equal(v.astype(np.float32), np.array(w, np.float32))
            else:
                assert v == w
    for line in slow:  # a line given to orjson leaves the parser to the next line
        loads_vectors(line.encode())
        assert isinstance(loads_vectors(json.dumps(rec).encode())["persons"][1]["parts"], np.ndarray)
    for bad in (b'{"path": "/a.jpg", "persons": [{"visual": [NaN]}]}', b'{"a": 1} {"b": 2}', b'{"a": [1,]}',
                b'{"a": "\xff"}', b'{"a": [1e400]}', b'{"a": "\\ud800"}', b"[" * 2000 + b"]" * 2000):
        with pytest.raises(orjson.JSONDecodeError) as want:
            orjson.loads(bad)
        with pytest.raises(orjson.JSONDecodeError) as got:
            loads_vectors(bad)
        assert str(got.value) == str(want.value)


@pytest.mark.parametrize("listed", [False, True])
def test_records_are_read_from_a_fifo(tmp_path, listed):
    """A pipe or FIFO (``producer | manage.py import /dev/stdin``) gives its records as a file does: its first bytes
    are read once, never sought back to (a FIFO was refused: "not seekable")."""
    import threading

    recs = records(np.random.default_rng(5), n=5)
    text = json.dumps(recs) if listed else "\n\n" + "\n".join(json.dumps(r) for r in recs) + "\n"
    fifo = tmp_path / "records.jsonl"
    os.mkfifo(fifo)

    def write():
        with open(fifo, "wb") as f:
            f.write(b"\xef\xbb\xbf" + text.encode())

    writer = threading.Thread(target=write, daemon=True)
    writer.start()
    got = list(read_records(fifo))
    writer.join(10)
    assert got == recs


class _Trickle(io.RawIOBase):
    """A file that gives at most 3 bytes a read."""

    def __init__(self, data: bytes):
        self.data = memoryview(data)

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        n = min(len(b), 3, len(self.data))
        b[:n], self.data = self.data[:n], self.data[n:]
        return n


@pytest.mark.parametrize("block", [1, 2, 5, 64, 4 << 20])
def test_json_lines_are_read_whole_whatever_the_block(tmp_path, monkeypatch, block):
    """A JSON-lines file is read a block at a time and each line parsed where it lies: lines longer than the
    block, across blocks, blank or made of spaces, with CRLF, a byte order mark or no final newline give the same
    records and bad lines as whole lines do."""
    from a2v_search import records as records_module

    recs = records(np.random.default_rng(3), n=4)
    lines = [json.dumps(r) for r in recs]
    text = ("\ufeff" + lines[0] + "\r\n\n  \t\r\n" + lines[1] + "\n" + lines[2][:-2] + "\n\n" + lines[3]).encode()
    assert [bytes(line) for line in records_module._lines(io.BytesIO(text), block)] == text.split(b"\n")
    where, ends = [0], []
    for _ in records_module._lines(io.BufferedReader(_Trickle(text[9:])), block, text[:9], where):
        ends.append(where[0])  # the bytes read through each line (the head's included)
    assert ends == [i + 1 for i, c in enumerate(text) if c == ord("\n")] + [len(text)]
    trickle = io.BufferedReader(_Trickle(text))  # a line in many pieces, as a pipe may give it
    assert [bytes(line) for line in records_module._lines(trickle, block)] == text.split(b"\n")
    raw = _Trickle(text)
    next(records_module._lines(io.BufferedReader(raw), block))
    assert len(raw.data) > 0  # the first line came before the rest was read: a pipe's lines as they are written
    path = tmp_path / "r.jsonl"
    path.write_bytes(text)
    monkeypatch.setattr(records_module, "LINES_BLOCK", block)
    got = list(read_records(path))
    assert got[0] == recs[0] and got[1] == recs[1] and got[3] == recs[3] and len(got) == 4
    with pytest.raises(InputError, match=r"line 5 is not valid JSON \("):
        record_to_media(got[2], 16, "default")


def test_an_import_reads_json_lines_as_it_goes(tmp_path, tiny_clip_dir, tiny_bert_dir, monkeypatch):
    """Records are read a transaction at a time (never the whole file); a broken line in the middle is one failure
    naming its line, the records around it are stored."""
    from a2v_search import records as records_module
    from a2v_search.api import A2VSearch
    from a2v_search.store import Store

    monkeypatch.setattr(records_module, "WRITE_EVERY", 3)
    recs = records(np.random.default_rng(6), n=9)
    lines = [json.dumps(r) for r in recs]
    lines[4] = lines[4][:-5]  # cut short
    path = tmp_path / "r.jsonl"
    path.write_text("\n".join(lines) + "\n")
    read, real = [], records_module._record_lines

    def watched(f, **kwargs):
        for line in real(f, **kwargs):
            read.append(len(read))
            yield line

    monkeypatch.setattr(records_module, "_record_lines", watched)
    written, store_write = [], Store.write

    def write(self, items, arrays=None):
        written.append((len(read), len(items)))
        return store_write(self, items, arrays)

    monkeypatch.setattr(Store, "write", write)
    api = A2VSearch.open(tmp_path / "data", model=str(tiny_clip_dir), text_model=str(tiny_bert_dir), device="cpu")
    report = api.import_records(path)
    api.close()
    assert report.records == 9 and report.media_added == 8
    assert [f["error"].split(":")[0] for f in report.failures] == ["record 4"]
    assert "line 5 is not valid JSON" in report.failures[0]["error"]
    assert report.persons_added == sum(len(r["persons"]) for i, r in enumerate(recs) if i != 4)
    assert len(read) == 9 and written[0][0] < 9  # the first transaction went before the last line was read


def stored_persons(data_dir) -> list[tuple]:
    from a2v_search.store import Store
    from db.schema import Media, Person

    store = Store(data_dir)
    try:
        with store.db.session() as s:
            return [tuple(r) for r in s.execute(select(Media.path, Person.x1, Person.score, Person.pasta, Person.visual)
                                                .join(Media, Media.id == Person.media_id).order_by(Person.id))]
    finally:
        store.close()


def test_an_import_stores_the_same_whatever_its_transactions(tmp_path, tiny_clip_dir, tiny_bert_dir, monkeypatch):
    """Each transaction is written while the next records are validated: the same persons, in the same order, as
    one transaction."""
    from a2v_search import records as records_module
    from a2v_search.api import A2VSearch

    recs = records(np.random.default_rng(4), n=12)
    out = []
    for every in (256, 2):
        monkeypatch.setattr(records_module, "WRITE_EVERY", every)
        data = tmp_path / f"every{every}"
        api = A2VSearch.open(data, model=str(tiny_clip_dir), text_model=str(tiny_bert_dir), device="cpu")
        report = api.import_records(recs)
        api.close()
        assert report.failures == [] and report.media_added == 12
        out.append(stored_persons(data))
    assert out[0] == out[1] and len(out[0]) == sum(len(r["persons"]) for r in recs)


def test_numpy_records_are_stored_as_their_lists_are(tmp_path, tiny_clip_dir, tiny_bert_dir):
    """A Python caller's records with numpy values (a model's float32 outputs, numpy scalars for the frame, time,
    score and norm) store exactly what the same records as lists and Python numbers store."""
    from a2v_search.api import A2VSearch

    recs = records(np.random.default_rng(11), n=9)
    as_numpy = []
    for r in recs:
        persons = []
        for p in r["persons"]:
            q = {k: np.asarray(v, np.float32) if k in ("pasta", "verbs", "visual", "parts") else v
                 for k, v in p.items()}
            q.update({k: np.float32(v) for k, v in p.items() if k in ("score", "visual_norm", "t_sec")})
            if "frame_index" in p:
                q["frame_index"] = np.int64(p["frame_index"])
            if "box" in p:
                q["box"] = np.asarray(p["box"], np.float32)
            persons.append(q)
        as_numpy.append({**r, "persons": persons})
    as_lists = [{**r, "persons": [{k: v.tolist() if isinstance(v, np.ndarray) else v.item() if isinstance(v, np.generic)
                                   else v for k, v in p.items()} for p in r["persons"]]} for r in as_numpy]
    stored = []
    for name, given in (("lists", as_lists), ("numpy", as_numpy)):
        with A2VSearch.open(tmp_path / name, model=str(tiny_clip_dir), text_model=str(tiny_bert_dir),
                            device="cpu") as api:
            report = api.import_records(given)
        assert report.failures == [] and report.media_added == 9
        stored.append(stored_persons(tmp_path / name))
    assert stored[0] == stored[1] and len(stored[0]) == sum(len(r["persons"]) for r in recs)


def test_an_import_freezes_the_callers_records_while_it_writes_and_only_then(tmp_path, tiny_clip_dir, tiny_bert_dir,
                                                                             monkeypatch):
    """A full collection walks every object the process holds, the caller's records too (~0.1-0.6 s each in an
    import of 40,000 dicts): they are frozen while the import writes (heap.py), and nothing is once it is done."""
    import gc

    from a2v_search.api import A2VSearch
    from a2v_search.store import Store

    recs = records(np.random.default_rng(5), n=9)
    frozen: list[int] = []
    real = Store.write
    monkeypatch.setattr(Store, "write", lambda self, *a: frozen.append(gc.get_freeze_count()) or real(self, *a))
    gc.unfreeze()
    api = A2VSearch.open(tmp_path / "data", model=str(tiny_clip_dir), text_model=str(tiny_bert_dir), device="cpu")
    try:
        alive = len(gc.get_objects())
        report = api.import_records(recs)
    finally:
        api.close()
    assert report.persons_added == 9 and frozen and min(frozen) >= alive // 2  # the heap of before, not a part
    assert gc.get_freeze_count() == 0


def test_a_path_given_twice_in_one_import_is_reported_not_a_crash(tmp_path, tiny_clip_dir, tiny_bert_dir):
    from a2v_search.api import A2VSearch

    recs = records(np.random.default_rng(5), n=6)
    recs[5]["path"] = recs[2]["path"]
    api = A2VSearch.open(tmp_path / "data", model=str(tiny_clip_dir), text_model=str(tiny_bert_dir), device="cpu")
    report = api.import_records(recs)
    api.close()
    assert [(f["path"], f["error"].split(":")[0]) for f in report.failures] == [(recs[2]["path"], "record 5")]
    assert "record 2 gave the same path" in report.failures[0]["error"]
    assert report.media_added == 5 and report.persons_added == sum(len(r["persons"]) for r in recs[:5])
    paths = [p for p, *_ in stored_persons(tmp_path / "data")]
    assert sorted(set(paths)) == sorted(r["path"] for r in recs[:5] if r["persons"])


def test_a_record_with_an_infinite_box_is_its_failure_and_the_rest_is_stored(tmp_path, tiny_clip_dir, tiny_bert_dir):
    """A box SQLite cannot hold (Python dicts may carry infinity) is that record's failure, like any bad field; it
    once passed the batch conversion and failed the whole transaction in ``Store.write``."""
    from a2v_search.api import A2VSearch

    recs = records(np.random.default_rng(10), n=6)
    recs[4]["persons"][0]["box"] = [0, 0, float("inf"), 5]
    api = A2VSearch.open(tmp_path / "data", model=str(tiny_clip_dir), text_model=str(tiny_bert_dir), device="cpu")
    report = api.import_records(recs)
    api.close()
    assert [(f["path"], f["error"]) for f in report.failures] == [(recs[4]["path"], (
        "record 4: persons[0].box must be [x1, y1, x2, y2] with x2 > x1 and y2 > y1"))]
    kept = [r for i, r in enumerate(recs) if i != 4]
    assert report.media_added == 5 and report.persons_added == sum(len(r["persons"]) for r in kept)
    assert sorted({p for p, *_ in stored_persons(tmp_path / "data")}) == sorted(r["path"] for r in kept if r["persons"])


def mixed_jsonl(path, rng, n=14, visual_dim=16):
    """A JSON-lines file of ``n`` records with blank lines, a line cut short and a record of PaSta names (not
    plain: converted one by one) among plain ones."""
    recs = records(rng, n=n, visual_dim=visual_dim)
    recs[7]["persons"] = [{"pasta": {"hand: hold": 0.9}, "visual": rng.normal(size=visual_dim).tolist()}]
    lines = [json.dumps(r) for r in recs]
    lines[4] = lines[4][:-5]
    path.write_text("\n\n".join(lines[:3]) + "\n" + "\n".join(lines[3:]) + "\n  \n")
    return recs


def fifo_of(tmp_path: Path, data: bytes) -> Path:
    """A FIFO that a thread writes ``data`` into (a producer piped into ``manage.py import /dev/stdin``); the thread
    stops when the reading end is closed."""
    import threading

    fifo = tmp_path / f"fifo-{uuid.uuid4().hex}"
    os.mkfifo(fifo)

    def write():
        try:
            with open(fifo, "wb") as f:
                f.write(data)
        except BrokenPipeError:  # the import stopped reading
            pass

    threading.Thread(target=write, daemon=True).start()
    return fifo


@pytest.mark.parametrize("readers", [1, 2])
@pytest.mark.parametrize("source", ["file", "fifo"])
def test_reader_processes_give_what_this_process_reads(tmp_path, tiny_clip_dir, tiny_bert_dir, monkeypatch,
                                                       readers, source):
    """A JSON-lines file parsed by reader processes (records_reader.py), or a stream whose lines the importing process
    sends to parser processes (from its start, or after its first lines), is stored exactly as when the importing
    process parses it: the same persons in the same order, the same failures naming the same records and lines."""
    from a2v_search import records as records_module
    from a2v_search import records_reader
    from a2v_search.api import A2VSearch

    path = tmp_path / "r.jsonl"
    recs = mixed_jsonl(path, np.random.default_rng(7))
    monkeypatch.setattr(records_module, "WRITE_EVERY", 3)
    monkeypatch.setattr(records_reader, "READERS", readers)
    started, real = [], {name: getattr(records_reader, name) for name in ("_from_readers", "_from_parsers")}
    for name, fn in real.items():
        monkeypatch.setattr(records_reader, name, lambda *a, name=name, fn=fn: started.append(name) or fn(*a))
    text = path.read_bytes()
    after_two_chunks = len(b"\n".join(text.split(b"\n")[:8]))  # mixed_jsonl's first 6 records, 2 blank lines
    out = []
    for min_bytes in (1 << 40, 0) + ((after_two_chunks,) if source == "fifo" else ()):  # here first
        monkeypatch.setattr(records_reader, "MIN_BYTES", min_bytes)
        data = tmp_path / f"data-{min_bytes}"
        with A2VSearch.open(data, model=str(tiny_clip_dir), text_model=str(tiny_bert_dir), device="cpu") as api:
            report = api.import_records(path if source == "file" else fifo_of(tmp_path, text))
        out.append((report, stored_persons(data)))
    assert started == (["_from_readers"] if source == "file" else ["_from_parsers"] * 2)
    (inline, inline_rows), *others = out
    for parsed, parsed_rows in others:
        assert parsed == inline and parsed.records == 14 and parsed.media_added == 13
        assert [f["error"].split(":")[0] for f in parsed.failures] == ["record 4"]
        assert parsed_rows == inline_rows
        assert len(parsed_rows) == sum(len(r["persons"]) for i, r in enumerate(recs) if i != 4)


@pytest.mark.parametrize("how", ["here", "readers", "fifo", "list", "generator"])
def test_an_import_tells_its_progress_after_each_transaction(tmp_path, tiny_clip_dir, tiny_bert_dir, monkeypatch,
                                                             how):
    """``on_progress`` after each transaction: the records done and persons stored so far (the last call: the
    report's), and the share of the input done, growing to 1 (a file's bytes, read here or by reader processes; a
    list's records); None for a generator or a FIFO, whose length is not known."""
    from a2v_search import records as records_module
    from a2v_search import records_reader
    from a2v_search.api import A2VSearch

    path = tmp_path / "r.jsonl"
    recs = mixed_jsonl(path, np.random.default_rng(8))
    monkeypatch.setattr(records_module, "WRITE_EVERY", 3)
    monkeypatch.setattr(records_reader, "MIN_BYTES", 0 if how in ("readers", "fifo") else 1 << 40)
    source = {"here": path, "readers": path, "list": recs, "generator": (r for r in recs),
              "fifo": fifo_of(tmp_path, path.read_bytes()) if how == "fifo" else None}[how]
    seen = []
    with A2VSearch.open(tmp_path / "data", model=str(tiny_clip_dir), text_model=str(tiny_bert_dir),
                        device="cpu") as api:
        report = api.import_records(source, on_progress=seen.append)
    assert [p.records for p in seen] == [3, 6, 9, 12, 14]
    cut = 4 if how in ("here", "readers", "fifo") else None  # the file's record 4 is cut short
    assert [p.persons for p in seen] == [sum(len(r["persons"]) for i, r in enumerate(recs[:n]) if i != cut)
                                         for n in (3, 6, 9, 12, 14)]
    assert seen[-1].persons == report.persons_added
    assert seen[0].seconds > 0 and all(a.seconds <= b.seconds for a, b in itertools.pairwise(seen))
    fractions = [p.fraction for p in seen]
    if how in ("generator", "fifo"):  # no length known
        assert fractions == [None] * 5
    elif how == "list":
        assert fractions == [3 / 14, 6 / 14, 9 / 14, 12 / 14, 1.0]
    else:  # the bytes through each chunk's last record
        text = path.read_bytes()
        starts = [i for i, line in enumerate(text.split(b"\n")) if line.strip()]
        ends = [len(b"\n".join(text.split(b"\n")[:starts[k] + 1])) + 1 for k in (2, 5, 8, 11)]
        assert fractions == [e / len(text) for e in ends] + [1.0]


def test_a_file_replaced_after_it_was_opened_is_refused_by_the_reader(tmp_path, monkeypatch):
    from a2v_search import records as records_module
    from a2v_search import records_reader

    monkeypatch.setattr(records_reader, "MIN_BYTES", 0)
    path = tmp_path / "r.jsonl"
    mixed_jsonl(path, np.random.default_rng(8))
    lines = read_records(path)
    other = tmp_path / "other.jsonl"
    other.write_text(json.dumps(records(np.random.default_rng(9), n=2)[1]) + "\n")
    os.replace(other, path)
    with pytest.raises(InputError, match="r.jsonl was replaced by another file during the import; import it again"):
        list(records_module._media_chunks(lines, 16, "default", records_module.ImportReport()))


@pytest.mark.guarantee("G46")
@pytest.mark.parametrize("source", ["file", "fifo"])
def test_a_reader_that_dies_stops_the_import_and_a_second_import_finishes_it(tmp_path, tiny_clip_dir,
                                                                             tiny_bert_dir, monkeypatch, reliability,
                                                                             source):
    """The reader (or parser) processes are killed at their second chunk (A2V_FAULT reaches them through the
    environment): the import stops with an error naming the file, the chunks before are stored whole, and importing
    the file again stores every record once."""
    from a2v_search import records as records_module
    from a2v_search import records_reader
    from a2v_search.api import A2VSearch
    from a2v_search.errors import StoreError

    monkeypatch.setattr(records_reader, "MIN_BYTES", 0)
    monkeypatch.setattr(records_reader, "READERS", 2)  # chunks 0, 2, 4 from one, 1, 3 from the other
    monkeypatch.setattr(records_module, "WRITE_EVERY", 3)
    path = tmp_path / "r.jsonl"
    recs = mixed_jsonl(path, np.random.default_rng(10))
    data = tmp_path / "data"
    opened = (lambda: path) if source == "file" else (lambda: fifo_of(tmp_path, path.read_bytes()))
    monkeypatch.setenv("A2V_FAULT", "import_reader:2")
    with A2VSearch.open(data, model=str(tiny_clip_dir), text_model=str(tiny_bert_dir), device="cpu") as api, \
            pytest.raises(StoreError, match=r"the process reading .*(r.jsonl|fifo-\w+) stopped before the end of "
                                            r"the file \(exit code -9; out of memory\?\); the records before it are "
                                            r"stored"):
        api.import_records(opened())
    persons = lambda picked: sum(len(r["persons"]) for i, r in enumerate(recs) if i in picked)  # noqa: E731
    assert len(stored_persons(data)) == persons({0, 1, 2, 3, 5})  # chunks 0 and 1; record 4 is the bad line
    monkeypatch.delenv("A2V_FAULT")
    with A2VSearch.open(data, model=str(tiny_clip_dir), text_model=str(tiny_bert_dir), device="cpu") as api:
        report = api.import_records(opened())
    rows = stored_persons(data)
    assert report.media_added == 13 and len(rows) == persons(set(range(14)) - {4})
    assert len({(path, x1, score) for path, x1, score, _, _ in rows}) == len(rows)  # nothing twice
    reliability["kill points"] += 1
    reliability["records checked"] += 13


def _processes_with(marker: str) -> list[int]:
    """Pids of the processes whose environment holds ``marker``."""
    out = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and marker.encode() in (proc / "environ").read_bytes():
                out.append(int(proc.name))
        except OSError:
            pass
    return out


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.guarantee("G31")
@pytest.mark.parametrize("source", ["file", "fifo"])
def test_an_import_killed_mid_file_leaves_no_reader_and_a_rerun_stores_each_record_once(tmp_path, monkeypatch,
                                                                                       reliability, source):
    """The importing process SIGKILLed after its second commit, its readers (or parsers) at work: they die with it,
    and the same import run again stores every valid record once. (A forked child never touches torch: the store's
    space is the tests' stand-in, as in the reliability suite.)"""
    from helpers import SPACE, VISUAL_DIM, in_child, random_language

    from a2v_search import records as records_module
    from a2v_search import records_reader
    from a2v_search.store import Store

    monkeypatch.setattr(records_reader, "MIN_BYTES", 0)
    monkeypatch.setattr(records_module, "WRITE_EVERY", 3)
    path = tmp_path / "r.jsonl"
    recs = mixed_jsonl(path, np.random.default_rng(11), visual_dim=VISUAL_DIM)
    data, marker = tmp_path / "data", f"A2V_TEST_READER={uuid.uuid4().hex}"

    def run() -> records_module.ImportReport:
        store = Store(data, create=True).lock("import")
        try:
            store.space.ensure(SPACE, random_language())
            store.indexes.get()
            given = path if source == "file" else fifo_of(tmp_path, path.read_bytes())
            return records_module.import_records(store, read_records(given), VISUAL_DIM)
        finally:
            store.close()

    code, err = in_child(run, fault="after_commit:2", setup=lambda: os.environ.__setitem__(*marker.split("=")))
    assert code == -9, err
    reliability["kill points"] += 1
    deadline = time.monotonic() + 10
    while _processes_with(marker) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _processes_with(marker) == []
    assert 0 < len(stored_persons(data)) < sum(len(r["persons"]) for r in recs)
    report = run()
    rows = stored_persons(data)
    assert report.media_added == 13 and len(rows) == sum(len(r["persons"]) for i, r in enumerate(recs) if i != 4)
    assert len({(p, x1, score) for p, x1, score, _, _ in rows}) == len(rows)
    store = Store(data)
    assert [p.detail for p in store.check().problems] == []  # FAISS caught up with SQLite
    store.close()
    reliability["records checked"] += 13
