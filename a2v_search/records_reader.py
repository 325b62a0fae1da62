"""Large JSON-lines import files parsed in reader processes, so that the importing process only writes.

A person's record holds ~770 numbers: parsing them (orjson) and making arrays of them holds the GIL for ~60-85 us
a person, more than the writer's own Python needs. Each of :data:`READERS` reader processes reads the file from its
start and parses its share of the chunks (chunk c is reader c % READERS's; a chunk is the importing process's
transaction): it makes arrays of each plain chunk (``records.plain_arrays``) and sends them with the records' other
fields; a chunk that is not plain (names instead of numbers, a bad record) goes as parsed, to be converted record by
record in the importing process, which names what is wrong with each. The importing process gets the same records,
numbered the same, as when it reads the file itself; it reads small files (under :data:`MIN_BYTES`), pipes and
FIFOs itself, and any file on a single core.

A reader parses a line with simdjson, which reads a person's number lists straight into arrays (:func:`loads_vectors`:
no Python float is made of each number, about half a reader's CPU a person); a line it cannot give exactly as orjson
would is orjson's own.

Readers are spawned (they import numpy, orjson and simdjson: not torch, SQLite or FAISS), die with the importing process
(processes.py), ignore Ctrl-C (the importing process stops them), and each is at most one chunk ahead: it waits
while the pipe holds its last one. A reader that dies stops the import with an error; the transactions before are
stored.
"""

from __future__ import annotations

import itertools
import os
import signal
import stat
from collections.abc import Iterator
from multiprocessing.connection import Connection

import numpy as np
import orjson
import simdjson

from .errors import InputError, StoreError
from .faults import fault_point
from .processes import CleanSpawnContext, die_with_parent
from .records import HEAVY, JsonLines, PlainArrays, _json_lines, plain_arrays

# Smaller files are parsed by the importing process: starting two readers (~0.3 s) costs as much as they save up to
# ~3,000 persons of 512-d vectors (~47 MiB of bench/write_bench.py's records).
MIN_BYTES = 64 << 20
READERS = 2  # reader processes; each parses every READERS-th chunk


def parsed_chunks(lines: JsonLines, size: int,
                  visual_dim: int) -> Iterator[tuple[list, PlainArrays | None, float | None]] | None:
    """The file's records ``size`` at a time, each chunk with its arrays (None: not plain) and the share of the file
    read through it, parsed by reader processes; None when this process had better read the file itself (then
    ``lines`` is left as it is)."""
    if not stat.S_ISREG(lines.stat.st_mode) or lines.stat.st_size < MIN_BYTES or (os.cpu_count() or 1) < 2:
        return None
    lines.close()
    chunks = _from_readers(os.path.abspath(lines.path), (lines.stat.st_dev, lines.stat.st_ino), size, visual_dim)
    return ((chunk, arrays, lines.fraction(where)) for chunk, arrays, where in chunks)


def _from_readers(path: str, ident: tuple[int, int], size: int,
                  visual_dim: int) -> Iterator[tuple[list, PlainArrays | None, int]]:
    ctx = CleanSpawnContext()
    readers, pipes = [], []
    try:
        for k in range(READERS):
            receive, send = ctx.Pipe(duplex=False)
            pipes.append(receive)
            readers.append(ctx.Process(target=_read, args=(os.getpid(), path, ident, size, visual_dim, k, READERS,
                                                           send), daemon=True, name=f"a2v-import-reader-{k}"))
            readers[-1].start()
            send.close()  # the reader holds the only writing end: its exit is an EOF here
        for c in itertools.count():  # chunk c comes from reader c % READERS
            try:
                message = pipes[c % READERS].recv()
            except EOFError:
                reader = readers[c % READERS]
                reader.join(5)
                raise StoreError(f"the process reading {path} stopped before the end of the file (exit code "
                                 f"{reader.exitcode}; out of memory?); the records before it are stored, import "
                                 "the file again to finish") from None
            if message[0] == "end":
                return
            if message[0] == "error":
                raise InputError(message[1])
            yield message[1], message[2], message[3]
    finally:
        for receive in pipes:
            receive.close()
        for reader in readers:
            if reader.is_alive():
                reader.kill()
            reader.join()


def _read(parent_pid: int, path: str, ident: tuple[int, int], size: int, visual_dim: int, k: int, readers: int,
          out: Connection) -> None:
    """Reader ``k`` of ``readers``: ("chunk", records, arrays or None, the bytes read through the chunk) messages for
    chunks k, k + readers, ..., then ("end",) or ("error", message)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    die_with_parent(parent_pid)
    try:
        try:
            f = open(path, "rb")  # noqa: SIM115 (_json_lines closes it)
        except OSError as e:
            raise InputError(f"cannot read {path}: {e.strerror or e}") from None
        st = os.fstat(f.fileno())
        if (st.st_dev, st.st_ino) != ident:
            f.close()
            raise InputError(f"{path} was replaced by another file during the import; import it again")
        where = [0]
        lines = _json_lines(f, wanted=lambda i: i // size % readers == k, where=where, loads=loads_vectors)
        for c in itertools.count():
            chunk = list(itertools.islice(lines, size))
            if not chunk:
                break
            if c % readers != k:
                continue
            fault_point("import_reader")  # reliability tests kill a reader here (A2V_FAULT in its environment)
            arrays = plain_arrays(chunk, visual_dim)
            if arrays is not None:  # only the other fields travel as Python objects
                for rec in chunk:
                    for person in rec.get("persons", []):
                        for name in HEAVY:
                            person.pop(name, None)
            out.send(("chunk", chunk, arrays, where[0]))
        out.send(("end",))
    except InputError as e:
        out.send(("error", str(e)))
    except BrokenPipeError:  # the importing process stopped reading (an error there): nothing to tell
        pass
    finally:
        out.close()


VECTORS = frozenset(("pasta", "verbs", "visual", "parts"))  # a person's number lists that loads_vectors reads as arrays
_parser: list = []  # this process's simdjson parser, made at its first line


def loads_vectors(line) -> object:
    """``orjson.loads(line)``, but a person's :data:`VECTORS` lists of numbers come as float64 arrays, read by
    simdjson (``records.plain_arrays`` takes them as it takes lists, with the same float32 values). A line that this
    cannot give exactly as orjson does is parsed by orjson, so the records and the errors are orjson's: not an
    object, a key given twice in a record or a person, a vector that holds anything but numbers, a number simdjson
    refuses, or a ``[`` that is not a list (in a string: a list nested in a vector is found so, since simdjson reads
    its numbers into the same array)."""
    if not _parser:
        _parser.append(simdjson.Parser())
    try:
        got = _record(_parser[0].parse(line))
    except (ValueError, TypeError, RuntimeError):  # simdjson's errors: orjson's below are the ones reported
        got = None
    if got is None or got[1] != np.count_nonzero(np.frombuffer(line, np.uint8) == ord("[")):
        return orjson.loads(line)
    return got[0]


def _record(doc) -> tuple[dict, int] | None:
    """(the record, how many lists it holds) of a line simdjson parsed; None if it is not an object of distinct keys."""
    if not isinstance(doc, simdjson.Object):
        return None
    keys = list(doc.keys())
    if len(set(keys)) != len(keys):
        return None
    record, lists = {}, 0
    for key in keys:
        value = doc[key]
        if key == "persons" and isinstance(value, simdjson.Array):
            record[key], lists = [], lists + 1
            for person in value:
                got = _person(person) if isinstance(person, simdjson.Object) else _python(person)
                if got is None:
                    return None
                record[key].append(got[0])
                lists += got[1]
        else:
            record[key], n = _python(value)
            lists += n
    return record, lists


def _person(doc) -> tuple[dict, int] | None:
    """(a person, how many lists it holds), its VECTORS as float64 arrays; None if a key is given twice."""
    keys = list(doc.keys())
    if len(set(keys)) != len(keys):
        return None
    person, lists = {}, 0
    for key in keys:
        value = doc[key]
        if key in VECTORS and isinstance(value, simdjson.Array):  # TypeError unless every item is a number
            person[key], lists = np.frombuffer(value.as_buffer(of_type="d"), np.float64), lists + 1
        else:
            person[key], n = _python(value)
            lists += n
    return person, lists


def _python(value) -> tuple[object, int]:
    """(a parsed value as orjson gives it, how many lists it holds)."""
    if isinstance(value, simdjson.Array):
        value = value.as_list()
    elif isinstance(value, simdjson.Object):
        value = value.as_dict()
    else:
        return value, 0
    return value, _lists(value)


def _lists(value) -> int:
    if isinstance(value, list):
        return 1 + sum(_lists(v) for v in value)
    if isinstance(value, dict):
        return sum(_lists(v) for v in value.values())
    return 0
