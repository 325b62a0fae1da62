"""Large JSON-lines imports parsed in other processes, so that the importing process only writes.

A person's record holds ~770 numbers: parsing them and making arrays of them holds the GIL for ~40-85 us a person,
about as much as the writer's own Python needs. A chunk of records (the importing process's transaction) is parsed by
one of :data:`READERS` processes, chunk c by process c % READERS, which makes arrays of it when it is plain
(``records.plain_arrays``) and sends them with the records' other fields; a chunk that is not plain (names instead
of numbers, a bad record) goes as parsed, to be converted record by record in the importing process, which names
what is wrong with each. The importing process gets the same records, numbered the same, as when it parses them
itself (:func:`_here`, with the same parser), which it does for small files (under :data:`MIN_BYTES`), the first
MIN_BYTES of a stream, and on a single core.
- **A regular file**: each reader process opens the file and reads it from its start, parsing only its chunks.
- **A pipe or FIFO** (``producer | manage.py import /dev/stdin``) can be read once: the importing process reads its
  lines and sends each chunk's lines to a parser process.

A line is parsed with simdjson, which reads a person's number lists straight into arrays (:func:`loads_vectors`: no
Python float is made of each number, about half the parsing CPU a person); a line it cannot give exactly as orjson
would is orjson's own.

These processes are spawned (they import numpy, orjson and simdjson: not torch, SQLite or FAISS), die with the
importing process (processes.py), ignore Ctrl-C (the importing process stops them), and each is at most one chunk
ahead. One that dies stops the import with an error; the transactions before are stored.
"""

from __future__ import annotations

import collections
import contextlib
import fcntl
import itertools
import os
import signal
import stat
from collections.abc import Generator, Iterator
from multiprocessing.connection import Connection

import numpy as np
import orjson
import simdjson

from .errors import InputError, StoreError
from .faults import fault_point
from .processes import CleanSpawnContext, die_with_parent
from .records import HEAVY, JsonLines, PlainArrays, _json_lines, parse_line, plain_arrays

# Smaller inputs are parsed by the importing process: starting two readers (~0.3 s) costs as much as they save up to
# ~3,000 persons of 512-d vectors (~47 MiB of bench/write_bench.py's records).
MIN_BYTES = 64 << 20
READERS = 2  # reader (or parser) processes; each parses every READERS-th chunk


def parsed_chunks(lines: JsonLines, size: int,
                  visual_dim: int) -> Iterator[tuple[list, PlainArrays | None, float | None]]:
    """The file's records ``size`` at a time, each chunk with its arrays (None: not plain) and the share of the file
    read through it: parsed by other processes once the input is large and there are two cores, else here."""
    regular = stat.S_ISREG(lines.stat.st_mode)
    if (os.cpu_count() or 1) < 2 or (regular and lines.stat.st_size < MIN_BYTES):
        return _here(lines, size, visual_dim)
    if not regular:
        return _streamed(lines, size, visual_dim)
    lines.close()
    chunks = _from_readers(os.path.abspath(lines.path), (lines.stat.st_dev, lines.stat.st_ino), size, visual_dim)
    return ((chunk, arrays, lines.fraction(where)) for chunk, arrays, where in chunks)


def _here(lines: JsonLines, size: int, visual_dim: int,
          until: int | None = None) -> Generator[tuple[list, PlainArrays | None, float | None], None, bool]:
    """The records parsed in this process as a reader parses them (:func:`loads_vectors`), while fewer than
    ``until`` bytes are read (None: to the end); returns whether the input ended."""
    given = lines.lines()
    while until is None or lines.bytes_read() < until:
        chunk = [parse_line(n, line, loads_vectors) for n, line in itertools.islice(given, size)]
        if not chunk:
            return True
        yield chunk, plain_arrays(chunk, visual_dim), lines.fraction()
    return False


def _streamed(lines: JsonLines, size: int, visual_dim: int) -> Iterator[tuple[list, PlainArrays | None, None]]:
    """A pipe's or FIFO's records: its first :data:`MIN_BYTES` parsed here (a small stream starts no process), the
    rest by parser processes that this one sends the lines to."""
    if (yield from _here(lines, size, visual_dim, until=MIN_BYTES)):
        return
    for chunk, arrays in _from_parsers(lines.lines(), str(lines.path), size, visual_dim):
        yield chunk, arrays, None


def _from_parsers(lines: Iterator[tuple[int, bytes | memoryview]], path: str, size: int,
                  visual_dim: int) -> Iterator[tuple[list, PlainArrays | None]]:
    """The records of ``lines`` ``size`` at a time, parsed by :data:`READERS` processes: each is sent a chunk's lines
    and sent its next chunk as soon as its result is here, before that result is given (it parses while the chunk is
    written)."""
    ctx = CleanSpawnContext()
    parsers: list[tuple] = []  # (process, lines to it, results from it)
    try:
        for k in range(READERS):
            lines_out, lines_in = ctx.Pipe(duplex=False)
            results_in, results_out = ctx.Pipe(duplex=False)
            process = ctx.Process(target=_parse_lines, args=(os.getpid(), lines_out, results_out, visual_dim),
                                  daemon=True, name=f"a2v-import-parser-{k}")
            process.start()
            _wide(lines_in)
            lines_out.close()  # the parser holds the only reading end of its lines and writing end of its results
            results_out.close()
            parsers.append((process, lines_in, results_in))
        busy: collections.deque[int] = collections.deque()  # the parsers with a chunk, in the chunks' order

        def send(k: int) -> None:  # the lines' numbers and ends, then the lines in one block (no pickling)
            numbers, ends, block = [], [], bytearray()
            for n, line in itertools.islice(lines, size):
                block += line
                numbers.append(n)
                ends.append(len(block))
            if numbers:
                parsers[k][1].send((numbers, ends))
                parsers[k][1].send_bytes(block)
                busy.append(k)

        for k in range(READERS):
            send(k)
        while busy:
            k = busy.popleft()
            chunk, arrays = _receive(parsers[k][2], parsers[k][0], path)[1:]
            send(k)
            yield chunk, arrays
    finally:
        _stop(parsers)


def _wide(pipe: Connection) -> None:
    """A pipe that holds 1 MiB (Linux; 64 KiB by default): a chunk's ~16 MiB of lines pass in fewer turns."""
    with contextlib.suppress(AttributeError, OSError):  # not Linux, or over /proc/sys/fs/pipe-max-size
        fcntl.fcntl(pipe.fileno(), fcntl.F_SETPIPE_SZ, 1 << 20)


def _parse_lines(parent_pid: int, lines: Connection, out: Connection, visual_dim: int) -> None:
    """A parser process: ("chunk", records, arrays or None) for each chunk of (line number, line) it is sent, until
    the importing process closes its end."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    die_with_parent(parent_pid)
    try:
        while True:
            try:
                numbers, ends = lines.recv()
                block = memoryview(lines.recv_bytes())
            except EOFError:  # the end of the input (or of the import)
                break
            fault_point("import_reader")  # reliability tests kill a parser here (A2V_FAULT in its environment)
            chunk = [parse_line(n, block[start:end], loads_vectors)
                     for n, start, end in zip(numbers, [0, *ends], ends, strict=False)]
            out.send(("chunk", *_with_arrays(chunk, visual_dim)))
    except BrokenPipeError:  # the importing process stopped reading (an error there): nothing to tell
        pass
    finally:
        out.close()


def _with_arrays(chunk: list, visual_dim: int) -> tuple[list, PlainArrays | None]:
    """A parsed chunk and its arrays (``records.plain_arrays``; None: not plain), the records without the fields that
    the arrays hold (only the others travel as Python objects)."""
    arrays = plain_arrays(chunk, visual_dim)
    if arrays is not None:
        for rec in chunk:
            for person in rec.get("persons", []):
                for name in HEAVY:
                    person.pop(name, None)
    return chunk, arrays


def _receive(results: Connection, process, path: str) -> tuple:
    """The next message of a reader or parser process; StoreError when it died."""
    try:
        return results.recv()
    except EOFError:
        process.join(5)
        raise StoreError(f"the process reading {path} stopped before the end of the file (exit code "
                         f"{process.exitcode}; out of memory?); the records before it are stored, import "
                         "the file again to finish") from None


def _stop(processes: list[tuple]) -> None:
    """Close the pipes of (process, *pipes) and end the processes (they only parse: nothing is lost)."""
    for _, *pipes in processes:
        for pipe in pipes:
            pipe.close()
    for process, *_ in processes:
        if process.is_alive():
            process.kill()
        process.join()


def _from_readers(path: str, ident: tuple[int, int], size: int,
                  visual_dim: int) -> Iterator[tuple[list, PlainArrays | None, int]]:
    ctx = CleanSpawnContext()
    readers: list[tuple] = []  # (process, results from it)
    try:
        for k in range(READERS):
            receive, send = ctx.Pipe(duplex=False)
            process = ctx.Process(target=_read, args=(os.getpid(), path, ident, size, visual_dim, k, READERS, send),
                                  daemon=True, name=f"a2v-import-reader-{k}")
            process.start()
            send.close()  # the reader holds the only writing end: its exit is an EOF here
            readers.append((process, receive))
        for c in itertools.count():  # chunk c comes from reader c % READERS
            message = _receive(readers[c % READERS][1], readers[c % READERS][0], path)
            if message[0] == "end":
                return
            if message[0] == "error":
                raise InputError(message[1])
            yield message[1], message[2], message[3]
    finally:
        _stop(readers)


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
            out.send(("chunk", *_with_arrays(chunk, visual_dim), where[0]))
        out.send(("end",))
    except InputError as e:
        out.send(("error", str(e)))
    except BrokenPipeError:  # the importing process stopped reading (an error there): nothing to tell
        pass
    finally:
        out.close()


VECTORS = frozenset(("pasta", "verbs", "visual", "parts"))  # a person's number lists that loads_vectors reads as arrays
_PARSER = simdjson.Parser()  # this process's (one line at a time: the values of a line are read before the next)


def loads_vectors(line) -> object:
    """``orjson.loads(line)``, but a person's :data:`VECTORS` lists of numbers come as float64 arrays, read by
    simdjson (``records.plain_arrays`` takes them as it takes lists, with the same float32 values). A line that this
    cannot give exactly as orjson does is parsed by orjson, so the records and the errors are orjson's: not an
    object, a key given twice in a record or a person, a vector that holds anything but numbers, a number simdjson
    refuses, or a ``[`` that is not a list (in a string: a list nested in a vector is found so, since simdjson reads
    its numbers into the same array)."""
    try:
        got = _record(_PARSER.parse(line))
    except (ValueError, TypeError, RuntimeError):  # simdjson's errors: orjson's below are the ones reported
        got = None
    if got is None or got[1] != np.count_nonzero(np.frombuffer(line, np.uint8) == ord("[")):
        return orjson.loads(line)
    return got[0]


def _record(doc) -> tuple[dict, int] | None:
    """(the record, how many lists it holds) of a line simdjson parsed; None if it is not an object of distinct
    keys, or a person in it is not."""
    return _object(doc, _record_field) if isinstance(doc, simdjson.Object) else None


def _object(doc, field) -> tuple[dict, int] | None:
    """(a parsed object as a dict, how many lists it holds), ``field(key, value)`` giving each value as a pair like
    that (None: give up); None if a key is given twice."""
    keys = list(doc.keys())
    if len(set(keys)) != len(keys):
        return None
    out, lists = {}, 0
    for key in keys:
        got = field(key, doc[key])
        if got is None:
            return None
        out[key], n = got
        lists += n
    return out, lists


def _record_field(key: str, value) -> tuple[object, int] | None:
    if key != "persons" or not isinstance(value, simdjson.Array):
        return _python(value)
    persons, lists = [], 1
    for person in value:
        got = _object(person, _person_field) if isinstance(person, simdjson.Object) else _python(person)
        if got is None:
            return None
        persons.append(got[0])
        lists += got[1]
    return persons, lists


def _person_field(key: str, value) -> tuple[object, int]:
    if key in VECTORS and isinstance(value, simdjson.Array):  # TypeError unless every item is a number
        return np.frombuffer(value.as_buffer(of_type="d"), np.float64), 1
    return _python(value)


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
