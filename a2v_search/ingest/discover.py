"""Discovery: files, folders and list files walked as a stream (the link policy), each file typed by its first
bytes (sniffed, never trusted by name: a name's kind is only a first guess that its decoder checks, see
:func:`kind_by_name`)."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ..media import display_path

IMAGE_EXTS = {".jpg", ".jpeg", ".jpe", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"}
VIDEO_EXTS = {".mp4", ".m4v", ".mov", ".mkv", ".avi", ".webm"}
LIST_EXTS = {".txt", ".lst", ".list"}
_KIND_OF_EXT = {**dict.fromkeys(IMAGE_EXTS, "image"), **dict.fromkeys(VIDEO_EXTS, "video")}

Failure = tuple[str, str, str]  # (path, stage, reason)


def sniff(head: bytes) -> str | None:
    """``"image"``, ``"video"`` or None from a file's first bytes."""
    if head.startswith((b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"GIF87a", b"GIF89a", b"BM", b"II*\x00", b"MM\x00*")):
        return "image"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image"
    if head[:4] == b"RIFF" and head[8:12] == b"AVI ":
        return "video"
    if head[4:8] in (b"ftyp", b"moov", b"mdat", b"wide", b"free") or head.startswith(b"\x1aE\xdf\xa3"):
        return "video"
    return None


# ------------------------------------------------------------------ discovery


@dataclass
class Found:
    """A file found by the walk, not opened yet. ``path`` is the real path (symlinks resolved)."""

    path: str
    size: int
    mtime: float
    given: str  # as the user named it (or as found under a folder they named)
    root: str  # the folder it was found under (for boxes-file lookups), or its own folder
    explicit: bool  # named by the user or with a media extension: report it when it is not media
    name_kind: str | None = None  # "image" or "video" when its name has such an extension (a guess: see kind_by_name)


@dataclass
class Candidate:
    """A media file found by discovery. ``path`` is the real path (symlinks resolved). ``sniffed``: ``kind`` was read
    from its first bytes; False: guessed from its name (:func:`kind_by_name`), and its decoder sniffs it."""

    path: str
    size: int
    mtime: float
    kind: str
    given: str
    root: str
    sniffed: bool = True


def kind_by_name(f: Found) -> Candidate | None:
    """A Candidate of the kind its name says (an image or video extension), not opened: its decoder reads its first
    bytes (``DecodeTask.sniff``), so that this process makes no three system calls a file (~10 us of its CPU, three
    round trips on a network file system). None for other names."""
    if f.name_kind is None:
        return None
    return Candidate(path=f.path, size=f.size, mtime=f.mtime, kind=f.name_kind, given=f.given, root=f.root,
                     sniffed=False)


def not_media(size: int) -> str:
    """Why a file that sniffs as nothing is not ingested (a failure of stage ``discover``)."""
    return "empty file (0 bytes)" if size == 0 else "not an image or video (its content matches no supported format)"


def walk(paths: list[str | os.PathLike]) -> Iterator[Found | Failure]:
    """Expand files, folders (recursive, hidden entries skipped) and list files (``.txt``/``.lst``: one path per
    line, ``#`` comments, relative to the list's folder) into files, lazily: a folder is listed when the walk
    reaches it, so memory holds one folder's names, not the tree's.

    Links: a path the user names (argument or list line) is followed wherever it points. Inside a folder, a
    symbolic link (to a file or a folder) is followed only when its target lies inside one of the folders being
    ingested; others are reported and skipped, so a link to ``/`` or to a home directory never widens the run.
    Each file, folder and list is visited once (loops end). Problems come back as ``(path, "discover", reason)``,
    each once. Memory holds a set entry per folder and per file reached by name or link, none per file found in a
    folder: a folder is listed once, so only a name or a link can reach its files again."""
    return Walker(paths).run()


class Walker:
    def __init__(self, paths: list[str | os.PathLike]):
        self.paths = [os.fspath(p) for p in paths]
        self.roots: list[str] = []  # real paths of the folders being ingested (named so far)
        for p in self.paths:
            if os.path.isdir(p):
                self._add_root(p)
        self.seen: set[int] = set()  # hashes of the real paths of files found by name or through a link
        self.lists: set[str] = set()  # real paths of list files already read
        self.visited: set[str] = set()  # real paths of folders already walked
        self.listed: set[str] = set()  # those of them whose entries could be listed (their files are found there)
        self.empty: set[str] = set()  # those of them that hold nothing
        self.reported: set[str] = set()  # paths already reported

    def _add_root(self, folder: str) -> None:
        real = os.path.realpath(folder)
        if real not in self.roots:
            self.roots.append(real)

    def _inside_roots(self, real: str) -> bool:
        return any(real == r or real.startswith(r.rstrip(os.sep) + os.sep) for r in self.roots)

    def _failure(self, path: str, reason: str) -> Failure | None:
        """The failure of ``path``, or None when it was reported already (each path once)."""
        shown = display_path(path)
        if shown in self.reported:
            return None
        self.reported.add(shown)
        return (shown, "discover", reason)

    def _fail(self, path: str, reason: str) -> Iterator[Failure]:
        if (failure := self._failure(path, reason)) is not None:
            yield failure

    def run(self) -> Iterator[Found | Failure]:
        for p in self.paths:
            yield from self._named(p, list_depth=0)

    def _named(self, p: str, list_depth: int) -> Iterator[Found | Failure]:
        """A path the user named: followed wherever it points."""
        if display_path(p) != p:
            yield from self._fail(p, "file name is not valid UTF-8; rename the file")
            return
        if not os.path.lexists(p):
            yield from self._fail(p, "no such file or directory")
            return
        if not os.path.exists(p):
            yield from self._fail(p, f"broken symbolic link (points to {display_path(os.readlink(p))})")
            return
        real = os.path.realpath(p)
        if display_path(real) != real:
            yield from self._fail(p, f"links to a name that is not valid UTF-8 ({display_path(real)}); rename it")
            return
        if os.path.isdir(p):
            if real in self.visited:  # named twice, or inside a folder already walked
                if real in self.empty:
                    yield from self._fail(p, "folder holds no images or videos")
                return
            self._add_root(p)
            found = 0
            for x in self._folder(p, real):
                found += 1
                yield x
            if found == 0:
                yield from self._fail(p, "folder holds no images or videos")
            return
        if Path(p).suffix.lower() in LIST_EXTS:
            yield from self._list(p, real, list_depth)
            return
        if (x := self._file(p, real, given=p, root=str(Path(p).parent), explicit=True,
                            name_kind=_name_kind(os.path.basename(p)))) is not None:
            yield x

    def _list(self, p: str, real: str, list_depth: int) -> Iterator[Found | Failure]:
        if real in self.lists:
            yield from self._fail(p, "list file names itself or a list that names it; read once")
            return
        if list_depth >= MAX_LIST_DEPTH:
            yield from self._fail(p, f"list files nested more than {MAX_LIST_DEPTH} deep; not read")
            return
        self.lists.add(real)
        try:
            lines = read_list_file(real).splitlines()
        except (OSError, UnicodeDecodeError) as e:
            yield from self._fail(p, f"cannot read list file: {e}")
            return
        except ValueError as e:
            yield from self._fail(p, str(e))
            return
        base = Path(p).parent
        for line in lines:
            line = line.strip()
            if line and not line.startswith("#"):
                yield from self._named(str(base / line), list_depth + 1)

    def _folder(self, top: str, top_real: str) -> Iterator[Found | Failure]:
        """Depth first, names sorted, as ``os.walk`` top-down; only followed links lead outside ``top``."""
        stack = [(top, top_real)]
        while stack:
            folder, real_folder = stack.pop()
            if real_folder in self.visited:  # a symlink loop or a folder reached twice
                continue
            self.visited.add(real_folder)
            try:
                with os.scandir(folder) as it:
                    entries = sorted(it, key=lambda e: e.name)
            except OSError as e:
                yield from self._fail(folder, f"cannot list folder: {e.strerror or e}")
                continue
            self.listed.add(real_folder)
            if not any(not e.name.startswith(".") for e in entries):
                self.empty.add(real_folder)
            subfolders = []
            real_prefix = os.path.join(real_folder, "")  # the real folder and a separator: + a name is its real path
            for e in entries:
                if e.name.startswith("."):
                    continue
                full = e.path  # the folder as walked, joined with the name
                if not _utf8(e.name):
                    yield from self._fail(full, "name is not valid UTF-8; rename it")
                    continue
                try:
                    is_link = e.is_symlink()
                    is_dir = e.is_dir(follow_symlinks=False)
                except OSError:
                    is_link = is_dir = False
                if is_link:
                    target = os.path.realpath(full)
                    if not os.path.exists(full):
                        yield from self._fail(full, "broken symbolic link")
                    elif display_path(target) != target:
                        yield from self._fail(full, f"links to a name that is not valid UTF-8 "
                                                    f"({display_path(target)}); rename it")
                    elif not self._inside_roots(target):
                        yield from self._fail(full, f"symbolic link to {target}, outside the folders being "
                                                    "ingested: not followed (name that place to ingest it)")
                    elif os.path.isdir(target):
                        subfolders.append((full, target))
                    else:
                        kind = _name_kind(e.name)
                        if (x := self._file(full, target, given=full, root=top, explicit=kind is not None,
                                            name_kind=kind)) is not None:
                            yield x
                elif is_dir:
                    subfolders.append((full, real_prefix + e.name))
                else:
                    kind = _name_kind(e.name)
                    if (x := self._file(full, real_prefix + e.name, given=full, root=top, explicit=kind is not None,
                                        name_kind=kind, entry=e)) is not None:
                        yield x
            stack.extend(reversed(subfolders))

    def _file(self, p: str, real: str, given: str, root: str, explicit: bool, name_kind: str | None,
              entry: os.DirEntry | None = None) -> Found | Failure | None:
        """The file at ``real`` (``entry``: as its folder's listing gave it), its failure, or None (found already,
        or not a regular file that nobody asked for by name or extension). A plain call, not a generator: the walk
        makes one a file."""
        if self.seen and hash(real) in self.seen:  # (files reached by name or link: none in a walk of folders)
            return None
        try:
            st = entry.stat() if entry is not None else os.stat(real)
        except OSError as e:
            return self._failure(p, f"cannot read: {e.strerror or e}") if explicit else None
        if not stat.S_ISREG(st.st_mode):  # FIFOs, sockets, devices: never open them (a FIFO would block)
            return self._failure(p, "not a regular file") if explicit else None
        if entry is None:  # by name or through a link: remembered, unless a folder listing finds it
            if self._in_listed_folder(real):
                return None
            self.seen.add(hash(real))
        return Found(real, st.st_size, st.st_mtime, given, root, explicit, name_kind)

    def _in_listed_folder(self, real: str) -> bool:
        """Whether the walk of a folder found (or, while that folder is being walked, will find) the regular file
        at real path ``real``: its folder was listed and its name is one a listing does not skip."""
        folder, name = os.path.split(real)
        return folder in self.listed and not name.startswith(".") and _utf8(name)


MAX_LIST_DEPTH = 3
MAX_LIST_BYTES = 256 << 20  # a list of a few million paths


def read_list_file(path: str, limit: int = MAX_LIST_BYTES) -> str:
    """The text of a list file, opened without blocking (a FIFO named ``*.txt`` would wait for a writer forever)
    and only when it is a regular file of at most ``limit`` bytes (``/dev/zero`` never ends); ValueError otherwise."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ValueError("list file is not a regular file (a FIFO, socket or device); not read")
        data = f.read(limit + 1)
    if len(data) > limit:
        raise ValueError(f"list file is larger than {limit >> 20} MiB; split it")
    return data.decode("utf-8")


def _name_kind(name: str) -> str | None:
    """"image" or "video" when a file's name (not a path) has such an extension, else None (as ``os.path.splitext``
    reads an extension: leading dots belong to the name)."""
    dot = name.rfind(".")
    if dot < 1 or (name[0] == "." and not name[:dot].strip(".")):
        return None
    return _KIND_OF_EXT.get(name[dot:].lower())


def _utf8(name: str) -> bool:
    return name.isascii() or display_path(name) == name


def read_head(path: str) -> bytes:
    """The first 64 bytes of a file (what :func:`sniff` reads), with os calls: open() would add an fstat, an ioctl
    and two objects (~3 us a file)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        return os.read(fd, 64)
    finally:
        os.close(fd)


def sniff_found(f: Found) -> Candidate | Failure | None:
    """Open a found file and type it by its first bytes: a Candidate, a failure (for ``explicit`` files that are
    not media), or None (other files that are not media are skipped quietly)."""
    try:
        head = read_head(f.path)
    except OSError as e:
        return (display_path(f.given), "discover", f"cannot read: {e.strerror or e}") if f.explicit else None
    kind = sniff(head)
    if kind is None:
        if not f.explicit:
            return None
        return (display_path(f.given), "discover", not_media(f.size))
    return Candidate(path=f.path, size=f.size, mtime=f.mtime, kind=kind, given=f.given, root=f.root)


