"""Records computed elsewhere -> stored persons: reading a JSON-lines / JSON-list file, validating each record like
an ingest result, and writing the valid ones (``manage.py import``, :meth:`A2VSearch.import_records`)."""

from __future__ import annotations

import itertools
import math
import os
import stat
import time
from collections.abc import Callable, Iterable, Iterator, Sized
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
import orjson

from db.values import NewMedia, NewPerson, PersonArrays, checked_arrays

from . import taxonomy as tx
from .errors import InputError
from .heap import frozen_heap
from .objects import parse_objects

if TYPE_CHECKING:  # the reader process imports this module: not SQLite or FAISS
    from .store import Store

# media per SQLite transaction (~4,000 persons at 4 a record): a transaction has fixed costs (its commit, the pages
# it rewrites whatever its size, the writer's second thread handing back the GIL), so against 256 an import into a
# store of a million went JSON lines 8.6k -> 10.6k persons/s, dicts 10.4k -> 11.5k (docs/benchmarks.md, 15th pass)
WRITE_EVERY = 1024
BOM = b"\xef\xbb\xbf"  # the UTF-8 byte order mark that Windows tools put first; skipped (orjson refuses it)


@dataclass
class ImportReport:
    """What an import of precomputed records did."""

    records: int = 0
    media_added: int = 0
    persons_added: int = 0
    failures: list[dict] = field(default_factory=list)

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class ImportProgress:
    """Where an import stands, after each transaction it wrote (``on_progress`` of :func:`import_records`)."""

    records: int  # records read and written (or reported as failures) so far
    persons: int  # persons stored so far
    fraction: float | None  # the share of the input done: a file's bytes, a list's records; None: not known (a pipe)
    seconds: float  # since the import started (the models loaded before it not counted)


def import_records(store: Store, records: Iterable, visual_dim: int, collection: str = "default",
                   on_progress: Callable[[ImportProgress], None] | None = None) -> ImportReport:
    """Validate ``records`` (see :meth:`A2VSearch.import_records`; any iterable, e.g. :func:`read_records`, read as
    the import goes) and write the valid ones into ``store`` (write-locked, its space registered); a stored path is
    replaced. Bad records are reported and skipped, and so is a record whose path an earlier record of the call
    gave. ``WRITE_EVERY`` media a transaction; each is written in a second thread while the next ones are read and
    validated (SQLite, numpy and FAISS release the GIL); a large JSON-lines file is parsed by reader processes
    (records_reader.py). The objects alive when it starts (the caller's records, the modules) are frozen until it
    ends (heap.py): the collector's full walks during the import do not go through them. ``on_progress`` is called
    after each transaction is written."""
    report = ImportReport()
    first_of: dict[str, int] = {}  # path -> the record that gave it
    started = time.perf_counter()

    def written(future: Future, records_done: int, fraction: float | None) -> None:
        report.persons_added += len(future.result())
        if on_progress is not None:
            on_progress(ImportProgress(records_done, report.persons_added, fraction, time.perf_counter() - started))

    with frozen_heap(), ThreadPoolExecutor(max_workers=1, thread_name_prefix="a2v-import") as writer:
        pending: tuple[Future, int, float | None] | None = None  # the write in flight, with where it leaves the input
        for chunk, arrays, fraction in _media_chunks(records, visual_dim, collection, report):
            items = []
            for i, m in chunk:
                first = first_of.setdefault(m.path, i)
                if first == i:
                    items.append(m)
                else:
                    report.failures.append({"path": m.path, "stage": "import", "error": (
                        f"record {i}: record {first} gave the same path; give each media once (all its persons "
                        "in one record)")})
            states = store.media_states([m.path for m in items])
            for m in items:
                if m.path in states:
                    m.replaces = states[m.path].id
            if len(items) < len(chunk):  # its arrays hold the persons of the records skipped too
                arrays = None
            if pending is not None:
                written(*pending)
            pending = writer.submit(store.write, items, arrays), report.records, fraction
            report.media_added += len(items)
        if pending is not None:
            written(*pending)
    store.indexes.save()
    return report


def _media_chunks(records: Iterable, visual_dim: int, collection: str, report: ImportReport
                  ) -> Iterator[tuple[list[tuple[int, NewMedia]], PersonArrays | None, float | None]]:
    """(record number, media) of the valid records, ``WRITE_EVERY`` records at a time (counted in
    ``report.records``), with their persons' stored arrays when the chunk's records were all plain (None: made by
    ``Store.write``) and the share of the input read through the chunk (None: not known); the others go to
    ``report.failures``."""
    from . import records_reader

    if isinstance(records, JsonLines):  # parsed by other processes, or here as they do
        parsed = records_reader.parsed_chunks(records, WRITE_EVERY, visual_dim)
    else:
        parsed = _chunks_here(records, visual_dim)
    for chunk, arrays, fraction in parsed:
        start, report.records = report.records, report.records + len(chunk)
        if arrays is not None:
            media = plain_media(chunk, arrays, collection)
            yield list(enumerate(media, start)), person_arrays(media, arrays), fraction
        else:
            yield _chunk_media(chunk, start, visual_dim, collection, report), None, fraction


def _chunks_here(records: Iterable, visual_dim: int) -> Iterator[tuple[list, PlainArrays | None, float | None]]:
    """A list's or an iterable's records, ``WRITE_EVERY`` at a time, each chunk with its arrays (None: not plain) and
    the share of the input read through it: a list's records (None: not known)."""
    total = len(records) if isinstance(records, Sized) else None
    done, it = 0, iter(records)
    while chunk := list(itertools.islice(it, WRITE_EVERY)):
        done += len(chunk)
        yield chunk, plain_arrays(chunk, visual_dim), done / total if total else None


def _chunk_media(chunk: list, start: int, visual_dim: int, collection: str,
                 report: ImportReport) -> list[tuple[int, NewMedia]]:
    """(record number, media) of the valid records of a chunk that starts at record ``start``, one by one (a chunk
    with a record that is not plain); the others go to ``report.failures``."""
    out = []
    for i, rec in enumerate(chunk, start):  # one by one, to name what is wrong with each bad record
        try:
            out.append((i, record_to_media(rec, visual_dim, collection)))
        except InputError as e:
            where = rec.get("path", f"record {i}") if isinstance(rec, dict) else f"record {i}"
            report.failures.append({"path": str(where), "stage": "import", "error": f"record {i}: {e}"})
    return out


def read_records(source: str | os.PathLike | Iterable[dict]) -> Iterable:
    """The records of a JSON-lines or JSON-list file, or of an iterable of dicts: a JSON-lines file is read as the
    import goes, a block at a time (the file is never held in memory; a JSON list is parsed whole). Parsed with orjson
    (about ten times json's speed on the long number lists of a person). Raises InputError at once when the file
    cannot be read or its first record is not JSON (not a records file); a later line that is not JSON is a bad
    record (reported and skipped by the import, like a record that is JSON but not valid)."""
    if not isinstance(source, (str, os.PathLike)):
        return source if isinstance(source, (list, tuple)) else iter(source)  # (a list's length: the progress)
    p = Path(source)
    try:
        f = p.open("rb")
    except OSError as e:
        raise InputError(f"cannot read {p}: {e.strerror or e}") from None
    try:
        head = f.read(4096)  # read once, never again: a pipe or FIFO cannot seek back
        while head and not head.strip() and (more := f.read(1 << 20)):  # leading blank space
            head += more
        text = head.removeprefix(BOM)
        if text.lstrip().startswith(b"["):
            data = text + f.read()
            f.close()
            try:
                data = orjson.loads(data)
            except orjson.JSONDecodeError as e:
                raise _not_records(p, e, e.lineno) from None
            return data if isinstance(data, list) else iter(data)
        where = [0]
        lines = _record_lines(f, head=head, where=where)
        first = next(lines, None)
        first = None if first is None else (first[0], bytes(first[1]))  # (its view is valid until the next line)
    except OSError as e:
        f.close()
        raise InputError(f"cannot read {p}: {e.strerror or e}") from None
    if first is not None and isinstance(problem := parse_line(*first), _BadLine):
        lines.close()
        raise InputError(problem.file_problem(p))
    return JsonLines(p, os.fstat(f.fileno()), first, lines, where)


class JsonLines:
    """The records of a JSON-lines file (:func:`read_records`), its first line already read: iterating goes on
    reading the file in this process; :func:`import_records` has a large regular file parsed by reader processes
    instead (records_reader.py), from its start, and closes this one, and a large stream's lines parsed by processes
    it feeds them to (:meth:`lines`)."""

    def __init__(self, path: Path, stat: os.stat_result, first: tuple[int, bytes] | None, lines: Iterator,
                 where: list[int]):
        self.path, self.stat = path, stat
        self._first = first  # (line number, line) of the first record, until it is given
        self._lines = lines
        self._where = where  # the bytes read through the last record given

    def __iter__(self) -> Iterator:
        for n, line in self.lines():
            yield parse_line(n, line)

    def lines(self) -> Iterator[tuple[int, bytes | memoryview]]:
        """(line number, line) of the records not given yet, unparsed; each view is valid until the next is asked
        for."""
        if self._first is not None:
            first, self._first = self._first, None
            yield first
        for line in self._lines:  # noqa: UP028 (`yield from` would close the file when this generator is dropped)
            yield line

    def bytes_read(self) -> int:
        """The bytes read through the last record given."""
        return self._where[0]

    def fraction(self, where: int | None = None) -> float | None:
        """The share of the file read through the last record given (or through byte ``where``); None when its size
        is not known (a pipe or FIFO)."""
        if not stat.S_ISREG(self.stat.st_mode) or not self.stat.st_size:
            return None
        return min(1.0, (self._where[0] if where is None else where) / self.stat.st_size)

    def close(self) -> None:
        """Close the file (when the records are read elsewhere)."""
        self._lines.close()


def parse_line(n: int, line, loads: Callable = orjson.loads):
    """The record of line ``n`` of a JSON-lines file; a _BadLine when it is not JSON (a _TooDeep when nested too
    deeply to parse). ``loads``: orjson's, or one that gives the same records and raises the same errors."""
    try:
        return loads(line)
    except orjson.JSONDecodeError as e:
        return _TooDeep() if "depth" in e.msg else _BadLine(n, e.msg)


def _json_lines(f, wanted: Callable[[int], bool] | None = None, head: bytes = b"",
                where: list[int] | None = None, loads: Callable = orjson.loads) -> Iterator:
    """The records of an open JSON-lines file (:func:`parse_line` of each of :func:`_record_lines`).
    ``wanted(i)``: whether record ``i`` (from 0) is parsed; the others give None (a reader process parses its share
    of a file)."""
    for i, (n, line) in enumerate(_record_lines(f, head, where)):
        yield parse_line(n, line, loads) if wanted is None or wanted(i) else None


def _record_lines(f, head: bytes = b"", where: list[int] | None = None) -> Iterator[tuple[int, memoryview]]:
    """(line number, line) of the lines of an open JSON-lines file that are not blank, the first without a byte
    order mark; each view is valid until the next is asked for. ``head``: the file's first bytes, already read
    from it. ``where[0]``: set to the bytes read through each line given. Closes the file when done; a read error
    is an InputError."""
    n = 0
    with f:
        try:
            for n, line in enumerate(_lines(f, LINES_BLOCK, head, where), 1):
                if n == 1 and line[:3] == BOM:
                    line = line[3:]
                if line and not (line[0] in _SPACE and bytes(line).isspace()):  # (copied only when it may be blank)
                    yield n, line
        except OSError as e:
            raise InputError(f"cannot read {f.name} after line {n}: {e.strerror or e}") from None


_SPACE = b" \t\n\r\x0b\x0c"  # what bytes.isspace calls blank
LINES_BLOCK = 4 << 20  # bytes read at a time by _lines (a longer line grows the buffer)


def _lines(f, block: int, head: bytes = b"", where: list[int] | None = None) -> Iterator[memoryview]:
    """The lines of ``head`` and then of a binary file, without their newline, as views of one buffer that each stay
    valid until the next is asked for; ``where[0]``: set to the bytes read through each line given, its newline
    included. The file is read a large block at a time into that buffer and each line is parsed where it lies:
    iterating the file copied every line (records of many persons are ~1 MB lines), and a reader process that skips
    the other reader's lines no longer copies those at all."""
    where = [0] if where is None else where
    buf = bytearray(max(block, len(head)))
    buf[:len(head)] = head
    start, end = 0, len(head)  # buf[start:end]: read, not yet a line
    base = 0  # the offset in the input of buf[0]
    searched = 0  # buf[start:searched] holds no newline (a long line read in many small pieces is searched once)
    while True:
        nl = buf.find(b"\n", max(start, searched), end)
        if nl >= 0:
            where[0] = base + nl + 1
            yield memoryview(buf)[start:nl]
            start = nl + 1
            continue
        if start:  # the unfinished line moves to the front (through a copy: the two places may overlap; same size,
            buf[:end - start] = buf[start:end]  # so a view handed out never sees a resize)
            base += start
            end, start = end - start, 0
        searched = end
        if end == len(buf):  # one line fills the buffer: a new one twice as large
            bigger = bytearray(2 * len(buf))
            bigger[:end] = memoryview(buf)[:end]
            buf = bigger
        got = f.readinto1(memoryview(buf)[end:])  # what one read gives: a pipe's lines come as they are written
        if not got:
            if end:
                where[0] = base + end
                yield memoryview(buf)[:end]
            return
        end += got


def _not_records(p: Path, e: orjson.JSONDecodeError, line: int) -> InputError:
    return InputError(_BadLine(line, e.msg).file_problem(p))


class _BadLine:
    """A JSON line that does not parse: a bad record, or (the first line) not a records file."""

    def __init__(self, line: int, msg: str):
        self.line, self.msg = line, msg

    def file_problem(self, p: Path) -> str:
        if "UTF-8" in self.msg:
            return f"{p} is not UTF-8 text (expected JSON lines or a JSON list)"
        return f"{p} is not valid JSON / JSON lines (line {self.line}: {self.msg})"


class _TooDeep:
    """A JSON line nested too deeply to parse: a bad record (reported and skipped), not the end of the import."""


def _vector(value, n: int, what: str, names: tuple[str, ...] | None = None, unit_range: bool = True) -> np.ndarray:
    if isinstance(value, dict) and names is not None:
        out = np.zeros(n, np.float32)
        lookup = tx.pasta_index if names is tx.PASTA_NAMES else tx.verb_index
        for name, p in value.items():
            try:
                out[lookup(name)] = float(p)
            except (TypeError, ValueError):
                raise InputError(f"{what}[{name!r}] is not a number") from None
            except tx.UnknownNameError as e:
                raise InputError(str(e)) from None
        value = out
    try:
        arr = np.asarray(value, np.float32)
    except (TypeError, ValueError):
        raise InputError(f"{what} must be a list of {n} numbers") from None
    if arr.shape != (n,):
        raise InputError(f"{what} has shape {arr.shape}, expected ({n},)")
    if not np.all(np.isfinite(arr)):
        raise InputError(f"{what} has non-finite values")
    if unit_range and (arr.min() < 0 or arr.max() > 1):
        raise InputError(f"{what} must be probabilities in [0, 1]")
    return arr


def _norms(visual: np.ndarray) -> np.ndarray:
    """(n, P) float32 -> (n,) float32 norms (one formula for a record and a batch of them)."""
    return np.sqrt(np.einsum("ij,ij->i", visual, visual))


def _parts(pasta: np.ndarray) -> np.ndarray:
    """(n, 93) -> (n, 6): the strongest interacting state of each part."""
    return np.stack([pasta[:, r.start:r.stop - 1].max(1) for r in tx.PART_RANGES.values()], axis=1)


def _plain_number_list(value, n: int) -> bool:
    """A list of ``n`` values, or a 1-d numpy array of ``n`` numbers (a Python caller's model output)."""
    if isinstance(value, np.ndarray):
        return value.shape == (n,) and value.dtype.kind in "fiu"
    return isinstance(value, list) and len(value) == n


def _number(value) -> bool:
    """A real number, a numpy scalar included (not a bool)."""
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))


def _positive(value) -> bool:
    return _number(value) and math.isfinite(value) and value > 0


def _box_list(box):
    """A box given as a numpy array of 4 numbers, as the list of them; anything else as it is."""
    return box.tolist() if isinstance(box, np.ndarray) and box.shape == (4,) and box.dtype.kind in "fiu" else box


def _plain_box(box) -> bool:
    box = _box_list(box)
    return (isinstance(box, list) and len(box) == 4 and all(type(v) in (int, float) and math.isfinite(v) for v in box)
            and box[2] > box[0] and box[3] > box[1])


class PlainArrays(NamedTuple):
    """The numbers of a chunk of plain, valid records, one row a person in record order (:func:`plain_arrays`)."""

    pasta: np.ndarray  # (n, 93) float32
    verbs: np.ndarray  # (n, 157) float32
    parts: np.ndarray  # (n, 6) float32
    visual: np.ndarray  # (n, P) float32, unit rows
    norms: np.ndarray  # (n,) float32: the norms of the given visual rows
    objects: list  # n stored-form object tuples (objects.parse_objects)


HEAVY = ("pasta", "verbs", "parts", "visual", "objects")  # a person's fields that plain_arrays turns into arrays


def plain_arrays(records: list, visual_dim: int) -> PlainArrays | None:
    """The numbers of ``records`` as arrays, all at once (numpy over the whole list), when every record is plain and
    valid: PaSta and verbs as lists of numbers (not names). None when any is not: the caller then converts them one
    by one with :func:`record_to_media`, which names what is wrong (:func:`plain_media` of these arrays gives the
    same values). Only the persons' :data:`HEAVY` fields are read into them: the records may drop those fields
    afterwards (a reader process sends the rest, records_reader.py)."""
    persons, objects = [], []
    for rec in records:
        if not (isinstance(rec, dict) and isinstance(rec.get("path"), str) and rec["path"].strip()
                and rec.get("kind", "image") in ("image", "video") and isinstance(rec.get("persons", []), list)):
            return None
        for p in rec.get("persons", []):
            if not (isinstance(p, dict) and _plain_number_list(p.get("pasta"), tx.N_PASTA)
                    and _plain_number_list(p.get("verbs", [0.0] * tx.N_VERBS), tx.N_VERBS)
                    and _plain_number_list(p.get("visual"), visual_dim)
                    and ("parts" not in p or _plain_number_list(p["parts"], tx.N_PARTS))
                    and ("visual_norm" not in p or _positive(p["visual_norm"]))
                    and ("box" not in p or _plain_box(p["box"]))):
                return None
            try:
                objects.append(parse_objects(p.get("objects"), "objects"))
            except ValueError:
                return None
            persons.append(p)
    try:
        pasta = np.array([p["pasta"] for p in persons], np.float32).reshape(len(persons), tx.N_PASTA)
        verbs = np.array([p.get("verbs", [0.0] * tx.N_VERBS) for p in persons], np.float32).reshape(
            len(persons), tx.N_VERBS)
        visual = np.array([p["visual"] for p in persons], np.float32).reshape(len(persons), visual_dim)
    except (TypeError, ValueError):
        return None
    parts = _parts(pasta)
    given = [i for i, p in enumerate(persons) if "parts" in p]
    if given:
        try:
            parts[given] = np.array([persons[i]["parts"] for i in given], np.float32)
        except (TypeError, ValueError):
            return None
    probs = np.concatenate([pasta, verbs, parts], axis=1)
    if not (np.isfinite(probs).all() and np.isfinite(visual).all() and (probs >= 0).all() and (probs <= 1).all()):
        return None
    norms = _norms(visual)
    if (norms < 1e-6).any():
        return None
    return PlainArrays(pasta, verbs, parts, visual / norms[:, None], norms, objects)


def plain_media(records: list, arrays: PlainArrays, collection: str) -> list[NewMedia]:
    """The media of records that :func:`plain_arrays` turned into ``arrays`` (their persons' :data:`HEAVY` fields
    are not read again)."""
    out, i = [], 0
    for rec in records:
        width, height = rec.get("width"), rec.get("height")
        people = []
        for p in rec.get("persons", []):
            box = _box_list(p.get("box", [0, 0, width or 1, height or 1]))
            people.append(NewPerson(box=[float(v) for v in box], pasta=arrays.pasta[i], verbs=arrays.verbs[i],
                                    parts=arrays.parts[i], visual=arrays.visual[i],
                                    visual_norm=float(p.get("visual_norm", arrays.norms[i])),
                                    score=float(p.get("score", 1.0)), frame_index=p.get("frame_index"),
                                    t_sec=p.get("t_sec"), objects=arrays.objects[i]))
            i += 1
        out.append(_media(rec, collection, people))
    return out


def person_arrays(media: list[NewMedia], arrays: PlainArrays) -> PersonArrays | None:
    """The persons of ``media`` that :func:`plain_media` made of ``arrays``, as ``Store.write`` stores them
    (``values.as_arrays``, without reading each person's vectors again); None when one cannot be stored."""
    persons = [p for m in media for p in m.persons]
    boxes = np.array([p.box for p in persons], np.float64).reshape(len(persons), 4)
    norms = np.array([p.visual_norm for p in persons], np.float32)
    return checked_arrays(arrays.pasta, arrays.verbs, arrays.parts, arrays.visual, boxes, norms, arrays.objects)[0]


def _media(rec: dict, collection: str, persons: list[NewPerson]) -> NewMedia:
    width, height = rec.get("width"), rec.get("height")
    return NewMedia(path=rec["path"], content_hash=rec.get("content_hash"), size=int(rec.get("size", 0) or 0),
                    mtime=float(rec.get("mtime", 0.0) or 0.0), kind=rec.get("kind", "image"),
                    collection=str(rec.get("collection") or collection),
                    width=width if isinstance(width, int) else None, height=height if isinstance(height, int) else None,
                    persons=persons)


def record_to_media(rec, visual_dim: int, collection: str) -> NewMedia:
    """One record -> the media and persons to store (InputError naming the first bad field)."""
    if isinstance(rec, _TooDeep):
        raise InputError("its JSON is nested too deeply to be a record")
    if isinstance(rec, _BadLine):
        raise InputError(f"line {rec.line} is not valid JSON ({rec.msg})")
    if not isinstance(rec, dict):
        raise InputError("a record must be a JSON object")
    path = rec.get("path")
    if not isinstance(path, str) or not path.strip():
        raise InputError("'path' must be a non-empty string")
    kind = rec.get("kind", "image")
    if kind not in ("image", "video"):
        raise InputError(f"'kind' must be image or video, not {kind!r}")
    persons = rec.get("persons", [])
    if not isinstance(persons, list):
        raise InputError("'persons' must be a list")
    width, height = rec.get("width"), rec.get("height")
    out = []
    for j, p in enumerate(persons):
        if not isinstance(p, dict):
            raise InputError(f"persons[{j}] must be an object")
        pasta = _vector(p.get("pasta"), tx.N_PASTA, f"persons[{j}].pasta", tx.PASTA_NAMES)
        verbs = _vector(p.get("verbs", [0.0] * tx.N_VERBS), tx.N_VERBS, f"persons[{j}].verbs", tx.VERB_NAMES)
        visual = _vector(p.get("visual"), visual_dim, f"persons[{j}].visual", unit_range=False)
        norm = float(_norms(visual[None])[0])
        if norm < 1e-6:
            raise InputError(f"persons[{j}].visual is a zero vector")
        tower_norm = p.get("visual_norm", norm)  # the tower output's norm when `visual` is already unit length
        if not _positive(tower_norm):
            raise InputError(f"persons[{j}].visual_norm must be a positive number")
        if "parts" in p:
            parts = _vector(p["parts"], tx.N_PARTS, f"persons[{j}].parts")
        else:  # the strongest interacting state of each part
            parts = _parts(pasta[None])[0]
        box = _box_list(p.get("box", [0, 0, width or 1, height or 1]))
        if (not isinstance(box, list) or len(box) != 4
                or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in box)
                or box[2] <= box[0] or box[3] <= box[1]):
            raise InputError(f"persons[{j}].box must be [x1, y1, x2, y2] with x2 > x1 and y2 > y1")
        try:
            objects = parse_objects(p.get("objects"), f"persons[{j}].objects")
        except ValueError as e:
            raise InputError(str(e)) from None
        out.append(NewPerson(box=[float(v) for v in box], pasta=pasta, verbs=verbs, parts=parts,
                             visual=visual / norm, visual_norm=float(tower_norm), score=float(p.get("score", 1.0)),
                             frame_index=p.get("frame_index"), t_sec=p.get("t_sec"), objects=objects))
    return _media(rec, collection, out)
