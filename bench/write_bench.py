"""Benchmark of the one writer: persons/s through ``Store.write``, through ``import`` (JSON lines, Python dicts)
and in the Ray driver's shape, into stores of 0, 100k and 1M persons, with realistic persons and the time split by
part.

    python bench/write_bench.py [--sizes 0 100000 1000000] [--persons 40000] [--data-dir DIR] [--rounds 3] [--quick]

With ``--rounds R`` the rate rows run R times, each round from the seeded store, and the tables show each row's
median round: one row's persons/s moves by up to 2x between the phases of a shared machine.

Persons are realistic: the clustered activity profiles of ``common.SyntheticPersons`` turned into sigmoid outputs
over a background (logits N(-3.3, 1.1) off the profile), as trained heads give: about 94 of the 250 PaSta and verb
probabilities are >= 0.05. The media mix: images of 1-5 persons; videos of 24 sampled frames whose 1-3 persons
are linked into tracks in the write transaction (2% of the media, a quarter of the persons); 5% duplicates (a
media row, no persons); 5% replaced files (a path written again with new persons: the old ones are removed from
SQLite, the labels' chunks and FAISS). Duplicates and replacements need stored media: the seed and the import rows,
which store none first, have images in their place.

Rows (each into a store of N persons; N > 0: a store seeded once under ``--data-dir`` and reused: each row adds
its persons to it, and the next run removes them before its first row; each row starts after ``os.sync()``, so
that it does not pay for the disk writing back the index files the row before saved: a whole-index save is ~1.7 GB
at 2M persons):
- ``Store.write``: transactions of ``--batch`` persons (ingest's ``commit_every`` is 1,024, an import's 1,024
  media);
  the time split into the calling thread's parts: checks (``values.as_arrays``), SQLite rows (``repo.add_media``
  less the tracker), tracks (``tracks.link``), label chunks (``labels.close_chunks``), commit and waits (the
  rest); and the writer's second thread's, which overlap them: vectors (``VectorSpace.vectors``: language embedding,
  visual copy) and the FAISS add. Then the index save apart. Wall and CPU time: on a shared machine the persons
  per CPU second say what an idle one would do. Each part also in CPU of the thread that ran it: a part's wall time
  holds its waits (for a core, for the GIL the other thread holds), so an A/B of one part compares its CPU. The
  batches are made before the row and frozen out of the collector's walks during it, as an ingest freezes its
  models and an import its caller's records (heap.py).
- ``driver``: the Ray driver's shape (one person per media, ingest's ``commit_every`` a transaction), as
  ``bench/ray_bench.py``.
- ``import jsonl`` / ``jsonl32`` / ``pipe`` / ``dicts`` / ``arrays``: ``records.import_records`` of
  ``records.read_records`` of a JSON-lines file (read as the import goes; ``jsonl``: numbers as Python writes
  floats, up to 17 digits; ``jsonl32``: the vectors' float32 values in their shortest form, as ``orjson.dumps``
  writes numpy float32 arrays with ``OPT_SERIALIZE_NUMPY``; ``pipe``: the ``jsonl`` file through a FIFO that a
  ``cat`` process writes, as ``producer | manage.py import /dev/stdin``), of the dicts (vectors as lists), or of the
  dicts with numpy float32 vectors (as a Python caller's model gives them), what ``manage.py import`` and
  ``A2VSearch.import_records`` do once the models are loaded; its final index save is counted; "read s": the time
  the import waits for its next chunk of media (parsing and validating the records in this process, or waiting for
  the chunks of the reader processes that parse a JSON-lines file of 64 MiB or more, or a stream past its first 64
  MiB, records_reader.py); the CPU per person of this process and of the readers (``cat`` included): 2 cores cap
  persons/s at 2e6 / their sum.
Also: ``--where`` filter latency and the SQLite bytes per person of each store (its pages in use and its WAL).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from contextlib import contextmanager
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # before numpy loads, as a2v_search sets it for the CLI

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import VISUAL_DIM, SyntheticPersons, header, log, random_language_matrices  # noqa: E402

SPACE = {"visual_model": "bench:random-vitb16", "heads": "bench:random", "text_model": "bench-text",
         "phrases": "bench", "visual_dim": VISUAL_DIM,
         "spec": {"model": None, "checkpoint": None, "trust_checkpoint": False, "text_model": "bench-text"}}
#: parts of Store.write: the calling thread's, then the second thread's (vectors, FAISS add: they overlap the first)
PARTS = ("checks", "sqlite rows", "tracks", "label chunks", "commit + waits", "vectors", "faiss add")
MAIN = PARTS[:4]
WHERE = ["hand: hold>=0.5", "hand: hold>=0.1", "verb: ride>=0.3", "hand: hold<0.02"]


def realistic(gen: SyntheticPersons, n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """n persons with sigmoid outputs over a background (see the module docstring)."""
    d = gen.draw(n)
    for key in ("pasta", "verbs"):
        clean = d[key]
        p = np.clip(clean, 1e-3, 0.999)
        active = np.log(p / (1 - p)) + rng.normal(0, 0.3, clean.shape)
        logits = np.where(clean > 0.2, active, rng.normal(-3.3, 1.1, clean.shape))
        d[key] = (1 / (1 + np.exp(-logits))).astype(np.float32)
    return d


class Workload:
    """Batches of media with realistic persons: images, videos with tracks, duplicates, replaced files; with
    ``objects``, each person acts on an object that HICO-DET labels with its verb, for each verb it shows (>= 0.5;
    p U(0.5, 0.95)), and a third of them have an object at hand that they do not use (p U(0.2, 0.6))."""

    def __init__(self, prefix: str, seed: int = 0, driver: bool = False, objects: bool = False):
        from a2v_search import taxonomy as tx
        from db.values import NewPerson

        self.NewPerson = NewPerson
        self.gen, self.rng = SyntheticPersons(seed=seed, stream=1), np.random.default_rng(seed)
        self.prefix, self.driver, self.n_media = prefix, driver, 0
        self.verb_objects: dict[int, list[int]] | None = None
        if objects:
            self.verb_objects = {}
            for obj, verb in tx.hico_hois():
                self.verb_objects.setdefault(verb, []).append(obj)
        self.pending: list[str] = []  # paths with persons, until the caller says they are committed
        self.written: list[str] = []  # committed paths with persons, for replacing
        self.stored: dict[str, int] = {}  # their media ids
        self.replaced: list[str] = []  # paths replaced in the current batch

    def _persons(self, n: int, video: bool = False, tracks: int = 1) -> list:
        d = realistic(self.gen, n, self.rng)
        out = []
        for i in range(n):
            frame = i // tracks if video else None
            x = 40.0 * (i % tracks) + 2.0 * (frame or 0)
            out.append(self.NewPerson(box=[x, 20.0, x + 120.0, 300.0], pasta=d["pasta"][i], verbs=d["verbs"][i],
                                      parts=d["parts"][i], visual=d["visual"][i], visual_norm=9.5, frame_index=frame,
                                      t_sec=None if frame is None else frame * 0.5,
                                      objects=self._objects(d["verbs"][i])))
        return out

    def _objects(self, verbs: np.ndarray) -> tuple:
        """The objects of a person with these verb probabilities (157,): none without ``objects``."""
        if self.verb_objects is None:
            return ()
        found: dict[int, float] = {}
        for v in np.flatnonzero(verbs >= 0.5):
            choices = self.verb_objects.get(int(v))
            if choices:
                cls = choices[int(self.rng.integers(len(choices)))]
                found[cls] = max(found.get(cls, 0.0), round(float(self.rng.uniform(0.5, 0.95)), 4))
        if self.rng.random() < 1 / 3:
            cls = int(self.rng.integers(80))
            found.setdefault(cls, round(float(self.rng.uniform(0.2, 0.6)), 4))
        return tuple((c, p, None) for c, p in sorted(found.items(), key=lambda t: -t[1])[:4])

    def batch(self, persons: int) -> list:
        """Media holding about ``persons`` persons (whole media)."""
        from db.values import NewMedia

        items, n = [], 0
        self.written += self.replaced  # replaced in the last batch (same media ids): may be replaced again
        self.replaced = []
        while n < persons:
            self.n_media += 1
            path = f"{self.prefix}/{self.n_media:09d}"
            roll = self.rng.random()
            if self.driver:
                m = NewMedia(path=path + ".jpg", content_hash=path, size=1, mtime=0.0, kind="image",
                             collection="default", width=640, height=480, persons=self._persons(1))
            elif 0.10 <= roll < 0.12:  # a video: 24 sampled frames, 1-3 persons followed through them
                tracks = int(self.rng.integers(1, 4))
                m = NewMedia(path=path + ".mp4", content_hash=path, size=1, mtime=0.0, kind="video",
                             collection="videos", width=640, height=360, frames=24, duration=12.0,
                             persons=self._persons(24 * tracks, video=True, tracks=tracks))
            elif roll < 0.05 and self.stored:  # a duplicate of a stored file: a media row without persons
                first = next(iter(self.stored.values()))
                m = NewMedia(path=path + ".jpg", content_hash=f"dup{first}", size=1, mtime=0.0, kind="image",
                             collection="default", duplicate_of=first)
            elif 0.05 <= roll < 0.10 and self.written:  # a file written again with new content: replaces its row
                old = self.written.pop(int(self.rng.integers(len(self.written))))
                self.replaced.append(old)
                k = int(self.rng.integers(1, 6))
                m = NewMedia(path=old, content_hash=path, size=2, mtime=1.0, kind="image", collection="default",
                             width=640, height=480, persons=self._persons(k), replaces=self.stored[old])
            else:
                m = NewMedia(path=path + ".jpg", content_hash=path, size=1, mtime=0.0, kind="image",
                             collection="default", width=640, height=480,
                             persons=self._persons(int(self.rng.integers(1, 6))))
            items.append(m)
            n += len(m.persons)
            if m.persons and m.replaces is None:
                self.pending.append(m.path)
        return items

    def committed(self, states: dict) -> None:
        """The media states (``Store.media_states``) of the pending paths, now committed."""
        for path, state in states.items():
            self.stored[path] = state.id
            self.written.append(path)
        self.pending = []


@contextmanager
def timed_parts():
    """Time spent in the parts of ``Store.write`` (and the index save), by wrapping the functions it calls: wall
    time under each part's name, and the CPU of the thread that ran it under ``("cpu", name)`` (on a shared machine,
    or while the writer's two threads contend for the GIL, a part's wall time holds waits of its own)."""
    from a2v_search import store as store_mod
    from a2v_search.indexes import IndexSet
    from a2v_search.space import VectorSpace
    from db import labels, repo
    from index.faiss_index import VectorIndex

    spent: dict = defaultdict(float)
    targets = [(store_mod, "as_arrays", "checks"), (VectorSpace, "vectors", "vectors"), (store_mod, "link", "tracks"),
               (repo, "add_media", "sqlite rows"), (labels, "close_chunks", "label chunks"),
               (VectorIndex, "add", "faiss add"), (IndexSet, "save", "save"),
               (store_mod.Store, "write", "total")]
    originals = []
    for owner, name, part in targets:
        fn = getattr(owner, name)
        originals.append((owner, name, fn))

        def wrapped(*a, _fn=fn, _part=part, **kw):
            t0, c0 = time.perf_counter(), time.thread_time()
            try:
                return _fn(*a, **kw)
            finally:
                spent[_part] += time.perf_counter() - t0
                spent["cpu", _part] += time.thread_time() - c0

        setattr(owner, name, wrapped)
    try:
        yield spent
    finally:
        for owner, name, fn in originals:
            setattr(owner, name, fn)


def by_part(spent: dict, key) -> dict[str, float]:
    """The parts of ``Store.write`` from ``timed_parts``' ``spent``, each read at ``key(part)`` (its wall time or its
    CPU): the tracker out of the SQLite rows (it runs inside add_media), the rest of the calling thread's total as
    commit + waits."""
    parts = {p: spent[key(p)] for p in PARTS}
    parts["sqlite rows"] -= parts["tracks"]
    parts["commit + waits"] = spent[key("total")] - sum(parts[p] for p in MAIN)
    return parts


def open_store(path: Path, create: bool):
    from a2v_search.models.language import LanguageSpace
    from a2v_search.store import Store

    store = Store(path, create=create).lock("write_bench")
    store.space.ensure(SPACE, LanguageSpace(*random_language_matrices(), text_model="bench-text"))
    return store


def persons_in(store) -> int:
    return store.summary()[0]["persons"]


RUN_PREFIXES = ["/run", "/import"]  # the media that rows add (Workload prefixes); the seed's are under /seed


def seeded(folder: Path, n: int, batch: int, objects: bool = False) -> Path:
    """A store of about n realistic persons under ``folder`` (made once through Store.write, then reused: the
    media that earlier runs' rows added are removed first, so that each run starts from the seeded store); with
    ``objects``, persons act on objects (``Workload``)."""
    path = folder / (f"store-{n}" + ("-objects" if objects else ""))
    if n == 0:
        shutil.rmtree(path, ignore_errors=True)
        return path
    store = open_store(path, create=True)
    try:
        earlier = store.media_ids_under(RUN_PREFIXES)
        if earlier:
            t0 = time.perf_counter()
            removed = len(store.remove_media(earlier))
            store.indexes.save()
            log(f"{path}: removed the {len(earlier):,} media ({removed:,} persons) of earlier runs in "
                f"{time.perf_counter() - t0:.0f} s")
        have = persons_in(store)
        if have < n:
            log(f"seeding {path}: {have:,} -> {n:,} persons")
            work, t0 = Workload(f"/seed/{n}", seed=7, objects=objects), time.perf_counter()
            work.n_media = store.summary()[0]["media"]
            while have < n:
                items = work.batch(min(batch, n - have))
                have += len(store.write(items))
                if store.indexes.save_due(600):
                    store.indexes.save()
            store.indexes.save()
            log(f"seeded in {time.perf_counter() - t0:.0f} s")
    finally:
        store.close()
    return path


def write_row(path: Path, persons: int, batch: int, driver: bool, tag: str) -> dict:
    """persons/s of Store.write (workload of ``persons``) into the store at ``path``, split by part. The batches are
    made first and frozen out of the collector's walks while they are written (heap.py), as the callers of
    ``Store.write`` do with what they hold (an ingest its models, an import its caller's records)."""
    from a2v_search.heap import frozen_heap

    os.sync()  # the index files that the row before saved are on disk, not written back during this row
    store = open_store(path, create=True)
    try:
        n0 = persons_in(store)
        t0 = time.perf_counter()
        store.indexes.get()
        open_s = time.perf_counter() - t0
        work = Workload(f"/run/{tag}/{time.time_ns()}", seed=int(time.time()) % 1000, driver=driver)
        if not driver:  # a first batch, not timed: the files that the timed ones replace and duplicate
            store.write(work.batch(batch))
            work.committed(store.media_states(work.pending))
        batches, written = [], 0
        while written < persons:
            batches.append(work.batch(min(batch, persons - written)))
            written += sum(len(m.persons) for m in batches[-1])
        added = 0
        with frozen_heap(), timed_parts() as spent:  # the batches made above: frozen, as an ingest and an import do
            cpu0 = time.process_time()
            for items in batches:
                added += len(store.write(items))
            cpu_s = time.process_time() - cpu0
            write_s = spent["total"]
            store.indexes.save()
        save_s = spent["save"]
        parts = by_part(spent, lambda p: p)
        cpu = by_part(spent, lambda p: ("cpu", p))  # its commit + waits: the commit's own (a wait holds no CPU)
        return {"N": n0, "persons": added, "write_s": write_s, "rate": added / write_s, "save_s": save_s,
                "cpu_rate": added / cpu_s,
                "open_s": open_s, "parts": parts,
                "us": {p: 1e6 * v / added for p, v in parts.items()},
                "cpu_us": {p: 1e6 * v / added for p, v in cpu.items()}}
    finally:
        store.close()


def records_of(items: list) -> list[dict]:
    """The media as import records (what another system exports), tracks left to the importer."""
    out = []
    for m in items:
        out.append({"path": m.path, "kind": m.kind, "width": m.width, "height": m.height, "collection": m.collection,
                    "persons": [{"box": [float(v) for v in p.box], "pasta": p.pasta.tolist(), "verbs": p.verbs.tolist(),
                                 "visual": (p.visual * 9.5).tolist(), "frame_index": p.frame_index,
                                 "t_sec": p.t_sec} for p in m.persons]})
    return out


def import_row(path: Path, persons: int, kind: str, tmp: Path) -> dict:
    """persons/s of an import of ``persons`` (one call) into the store at ``path``, final save included; ``kind``:
    jsonl (a file, numbers as Python writes floats), jsonl32 (a file, the vectors' float32 values as orjson writes
    numpy arrays), pipe (the jsonl file through a FIFO that ``cat`` writes), dicts (the vectors as lists) or arrays
    (dicts whose vectors are numpy float32 arrays, as a Python caller's model gives them)."""
    from a2v_search import records as records_module
    from a2v_search.records import import_records, read_records

    work = Workload(f"/import/{time.time_ns()}", seed=3)
    records = records_of(work.batch(persons))
    source: object = records
    if kind in ("arrays", "jsonl32"):  # the vectors as a model gives them: float32 arrays
        for r in records:
            for p in r["persons"]:
                p.update({k: np.asarray(p[k], np.float32) for k in ("pasta", "verbs", "visual")})
    if kind in ("jsonl", "pipe"):  # numbers as Python writes floats: a float32 value in up to 17 digits
        source = tmp / "records.jsonl"
        source.write_text("\n".join(json.dumps(r) for r in records) + "\n")
    elif kind == "jsonl32":  # the arrays written as orjson writes them: ~9 digits a number
        import orjson

        source = tmp / "records.jsonl"
        source.write_bytes(b"".join(orjson.dumps(r, option=orjson.OPT_SERIALIZE_NUMPY) + b"\n" for r in records))
    os.sync()  # as in write_row
    store = open_store(path, create=True)
    try:
        n0 = persons_in(store)
        store.indexes.get()
        reading = [0.0]
        media_chunks = records_module._media_chunks

        def timed_chunks(*args):  # the time the import waits for its next chunk of media: parsing and validating
            it = media_chunks(*args)  # the records here, or waiting for the reader processes' chunks
            while True:
                t = time.perf_counter()
                chunk = next(it, None)
                reading[0] += time.perf_counter() - t
                if chunk is None:
                    return
                yield chunk

        with timed_parts() as spent:
            t0, cpu0, readers0 = time.perf_counter(), time.process_time(), children_cpu()
            records_module._media_chunks = timed_chunks
            cat = None
            if kind == "pipe":  # `producer | manage.py import /dev/stdin`, the producer a cat of the file
                fifo = tmp / "records.fifo"
                os.mkfifo(fifo)
                cat = subprocess.Popen(f"exec cat {shlex.quote(str(source))} > {shlex.quote(str(fifo))}", shell=True)
                source = fifo
            try:
                report = import_records(store, read_records(source), VISUAL_DIM)
            finally:
                records_module._media_chunks = media_chunks
                if cat is not None:
                    cat.wait()
                    os.unlink(source)
            total = time.perf_counter() - t0
            cpu, readers_cpu = time.process_time() - cpu0, children_cpu() - readers0
        read_s = reading[0]
        assert not report.failures, report.failures[:3]
        return {"N": n0, "persons": report.persons_added, "total_s": total, "read_s": read_s,
                "cpu_us": 1e6 * cpu / report.persons_added, "readers_cpu_us": 1e6 * readers_cpu / report.persons_added,
                "write_s": spent["total"], "save_s": spent["save"],
                "rate": report.persons_added / total,
                "rate_no_save": report.persons_added / (total - spent["save"])}
    finally:
        store.close()


def children_cpu() -> float:
    """CPU seconds of this process's ended children (the import's reader processes, once joined)."""
    import resource

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def filter_rows(path: Path, repeats: int = 5) -> list[tuple[str, int, float]]:
    """(filter, ids, median ms) of --where filters on the store at ``path``."""
    from a2v_search.search import make_filters
    from a2v_search.store import Store

    store = Store(path)
    out = []
    try:
        for expr in WHERE:
            for collection in (None, "videos"):
                f = make_filters(where=[expr], collection=collection)
                times = []
                for _ in range(repeats):
                    t0 = time.perf_counter()
                    ids = store.filter_person_ids(f)
                    times.append(time.perf_counter() - t0)
                label = expr + (f" --collection {collection}" if collection else "")
                out.append((label, len(ids), 1000 * float(np.median(times))))
    finally:
        store.close()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[0, 100_000, 1_000_000])
    parser.add_argument("--persons", type=int, default=40_000, help="persons written per row")
    parser.add_argument("--batch", type=int, default=1024, help="persons per Store.write transaction")
    parser.add_argument("--data-dir", type=Path, default=None,
                        help="where the seeded stores are kept between runs (default: a temporary folder)")
    parser.add_argument("--skip", nargs="*", default=[],
                        choices=["write", "driver", "jsonl", "jsonl32", "pipe", "dicts", "arrays", "filters"])
    parser.add_argument("--rounds", type=int, default=1,
                        help="rounds of the rate rows (Store.write, driver, imports), each from the seeded store: "
                             "the tables show each row's median round, a last table every round")
    parser.add_argument("--quick", action="store_true", help="smoke: sizes 0 and 20k, 5,000 persons per row")
    args = parser.parse_args()
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    if args.quick:
        args.sizes, args.persons = [0, 20_000], 5_000
    header("write_bench")
    tmp = Path(tempfile.mkdtemp(prefix="a2v-write-"))
    folder = args.data_dir or tmp
    folder.mkdir(parents=True, exist_ok=True)
    try:
        results = []
        for n in args.sizes:
            row: dict = {"N": n, "rounds": {kind: [] for kind in RATE_ROWS}}
            for _ in range(args.rounds):
                path = seeded(folder, n, args.batch)  # each round from the seeded store: the last one's rows removed
                rate_rows(row["rounds"], path, n, args, tmp)
            row.update({kind: median_round(got) for kind, got in row["rounds"].items() if got})
            if "filters" not in args.skip:
                row["filters"] = filter_rows(path)
            row["bytes_per_person"] = _used_bytes(path / "a2v.sqlite") / max(1, _count(path))
            results.append(row)
            if n == 0:
                shutil.rmtree(path, ignore_errors=True)
        report(results, args)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# import rows: JSON lines (Python's floats, float32's shortest form, the first through a FIFO), dicts of lists, dicts
# of numpy arrays
IMPORTS = ("jsonl", "jsonl32", "pipe", "dicts", "arrays")
RATE_ROWS = ("write", "driver", *IMPORTS)


def rate_rows(rounds: dict[str, list], path: Path, n: int, args, tmp: Path) -> None:
    """One round of the rate rows not skipped into the store of ``n`` persons at ``path``, each appended to
    ``rounds[kind]``."""
    if "write" not in args.skip:
        w = write_row(path, args.persons, args.batch, driver=False, tag="write")
        rounds["write"].append(w)
        log(f"N={n:,}: Store.write {w['rate']:,.0f} persons/s ({w['cpu_rate']:,.0f} per CPU second) "
            + ", ".join(f"{p} {u:.1f}" for p, u in w["us"].items()) + f" us/person; save {w['save_s']:.2f} s; "
            "thread CPU: " + ", ".join(f"{p} {u:.1f}" for p, u in w["cpu_us"].items()) + " us/person")
    if "driver" not in args.skip:
        from a2v_search.ingest import IngestOptions

        d = write_row(path, args.persons // 2, IngestOptions.commit_every, driver=True, tag="driver")
        rounds["driver"].append(d)
        log(f"N={n:,}: driver shape {d['rate']:,.0f} persons/s ({d['cpu_rate']:,.0f} per CPU second)")
    for kind in IMPORTS:
        if kind not in args.skip:
            x = import_row(path, args.persons // 2, kind, tmp)
            rounds[kind].append(x)
            log(f"N={n:,}: import {kind} {x['rate']:,.0f} persons/s ({x['rate_no_save']:,.0f} without the final "
                f"save of {x['save_s']:.2f} s; reading {x['read_s']:.2f} s)")


def median_round(rounds: list[dict]) -> dict:
    """The round of median persons/s (the lower of the two middle ones for an even count)."""
    return sorted(rounds, key=lambda r: r["rate"])[(len(rounds) - 1) // 2]


def _used_bytes(db: Path) -> int:
    """Bytes of the SQLite file's pages in use (not those that removed rows freed, which the file keeps for the next
    rows) and of its write-ahead log."""
    import sqlite3

    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        page = con.execute("PRAGMA page_size").fetchone()[0]
        pages = con.execute("PRAGMA page_count").fetchone()[0]
        free = con.execute("PRAGMA freelist_count").fetchone()[0]
    finally:
        con.close()
    wal = db.with_name(db.name + "-wal")
    return page * (pages - free) + (wal.stat().st_size if wal.exists() else 0)


def _count(path: Path) -> int:
    from a2v_search.store import Store

    store = Store(path)
    try:
        return persons_in(store)
    finally:
        store.close()


def report(results: list[dict], args) -> None:
    print(f"\nStore.write, {args.persons:,} realistic persons per row, {args.batch} per transaction "
          "(us per person by part; save: the index save after the row)\n")
    print("| N | persons/s | per CPU s | " + " | ".join(PARTS) + " | save s | driver persons/s | per CPU s |")
    print("|---:|---:|---:|" + "---:|" * len(PARTS) + "---:|---:|---:|")
    for r in results:
        w, d = r.get("write"), r.get("driver")
        if w:
            driver = f"{d['rate']:,.0f} | {d['cpu_rate']:,.0f}" if d else " | "
            print(f"| {w['N']:,} | {w['rate']:,.0f} | {w['cpu_rate']:,.0f} | "
                  + " | ".join(f"{w['us'].get(p, 0):.1f}" for p in PARTS) + f" | {w['save_s']:.2f} | {driver} |")
    print("\nThe same parts in CPU of the thread that ran each (us per person; commit + waits: the calling thread's "
          "CPU outside the parts before it, the commit and its bookkeeping: a wait holds none)\n")
    print("| N | " + " | ".join(PARTS) + " |\n|---:|" + "---:|" * len(PARTS))
    for r in results:
        if r.get("write"):
            print(f"| {r['write']['N']:,} | " + " | ".join(f"{r['write']['cpu_us'][p]:.1f}" for p in PARTS) + " |")
    print("\n| N | import | persons | persons/s | without the final save | read s | write s | save s | CPU us/person "
          "(this process + readers) |")
    print("|---:|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        for kind in IMPORTS:
            if kind in r:
                x = r[kind]
                print(f"| {x['N']:,} | {kind} | {x['persons']:,} | {x['rate']:,.0f} | {x['rate_no_save']:,.0f} | "
                      f"{x['read_s']:.2f} | {x['write_s']:.2f} | {x['save_s']:.2f} | "
                      f"{x['cpu_us']:.0f} + {x['readers_cpu_us']:.0f} |")
    print("\n| N | filter | ids | median ms |\n|---:|---|---:|---:|")
    for r in results:
        for label, n_ids, ms in r.get("filters", []):
            print(f"| {r['N']:,} | `{label}` | {n_ids:,} | {ms:.1f} |")
    if args.rounds > 1:
        print("\nEvery round, persons/s in the order run (the tables above: each row's median round)\n")
        print("| N | row | rounds | median |\n|---:|---|---|---:|")
        for r in results:
            for kind, got in r["rounds"].items():
                if got:
                    print(f"| {r['N']:,} | {kind} | " + " / ".join(f"{x['rate']:,.0f}" for x in got)
                          + f" | {r[kind]['rate']:,.0f} |")
    print("\n| N | SQLite bytes per person |\n|---:|---:|")
    for r in results:
        print(f"| {r['N']:,} | {r['bytes_per_person']:,.0f} |")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
