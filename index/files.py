"""On-disk layout of a saved index: generation files `{name}.{gen}.faiss`, their tails `{name}.{gen}.{k}.tail` and
the manifest `{name}.json`.

The manifest is the commit point: it names the one generation file that belongs to it and the tails to apply to it
in order (each: the ids removed and the vectors added since the previous file, an uncompressed `.npz`). Files are
written to temp files with unpredictable names (`*.<random>.tmp`), fsynced, then renamed, so a final name never
holds a half-written file.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import tempfile
from pathlib import Path

from .hooks import fault_point

TMP_SUFFIX = ".tmp"


def manifest_path(folder: Path, name: str) -> Path:
    return Path(folder) / f"{name}.json"


def generation_file_name(name: str, gen: int) -> str:
    return f"{name}.{gen}.faiss"


def tail_file_name(name: str, gen: int, k: int) -> str:
    return f"{name}.{gen}.{k}.tail"


def _generation_re(name: str) -> re.Pattern[str]:
    """Generation files and their tails (and their temp files); group 1: the generation."""
    return re.compile(re.escape(name) + r"\.(\d+)\.(?:faiss|\d+\.tail)((\.\w+)?" + re.escape(TMP_SUFFIX) + ")?")


def _manifest_tmp_re(name: str) -> re.Pattern[str]:
    return re.compile(re.escape(name) + r"\.json(\.\w+)?" + re.escape(TMP_SUFFIX))


def temp_file(final: Path) -> tuple[int, Path]:
    """A new temp file beside ``final`` with an unpredictable name (created exclusively, mode 0600, never through
    a link someone planted): (open fd, path)."""
    fd, tmp = tempfile.mkstemp(dir=final.parent, prefix=final.name + ".", suffix=TMP_SUFFIX)
    return fd, Path(tmp)


def check_name(name: str) -> None:
    """Index names become file names: no separators, no leading dot, not empty."""
    if not name or name.startswith(".") or "/" in name or "\\" in name or "\0" in name:
        raise ValueError(f"invalid index name {name!r}: use a plain file name such as 'visual'")


def generation_of(file_name: str, name: str) -> int | None:
    """Generation number of `{name}.{gen}.faiss` or of a tail `{name}.{gen}.{k}.tail` (or their .tmp), None for any
    other file name."""
    match = _generation_re(name).fullmatch(file_name)
    return int(match.group(1)) if match else None


def read_manifest_file(folder: Path, name: str) -> dict | None:
    """The manifest as a dict; None when absent. Raises ValueError/OSError when unreadable."""
    path = manifest_path(folder, name)
    if not path.exists():
        return None
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except RecursionError:
        raise ValueError("manifest nests its JSON too deeply") from None
    if not isinstance(doc, dict):
        raise ValueError("manifest is not a JSON object")
    return doc


def saved_summary(folder: Path, name: str) -> dict | None:
    """What the manifest says of a saved index: spec, count, dim, bytes (of the index file) and saved_at; None
    when there is no manifest. Raises ValueError/OSError when it is unreadable."""
    doc = read_manifest_file(folder, name)
    if doc is None:
        return None
    tails = doc.get("tail") if isinstance(doc.get("tail"), list) else []
    size = doc.get("size")
    if isinstance(size, int):
        size += sum(t["size"] for t in tails if isinstance(t, dict) and isinstance(t.get("size"), int))
    return {"spec": doc.get("spec"), "count": doc.get("count"), "dim": doc.get("dim"), "bytes": size,
            "saved_at": doc.get("saved_at"), "tails": len(tails)}


def referenced_files(doc: dict | None) -> list[str]:
    """The files a manifest names: its generation file, then its tails in order."""
    if not doc:
        return []
    files = [doc.get("file")] + [t.get("file") for t in doc.get("tail") or [] if isinstance(t, dict)]
    return [f for f in files if isinstance(f, str)]


def _referenced_file(folder: Path, name: str) -> str | None:
    files = _referenced(folder, name)
    return files[0] if files else None


def _referenced(folder: Path, name: str) -> list[str]:
    try:
        doc = read_manifest_file(folder, name)
    except (OSError, ValueError):
        return []
    return referenced_files(doc)


def orphan_files(folder: Path | str, name: str) -> list[Path]:
    """Generation and tail files (and temp files) of index `name` in `folder` that the manifest does not reference.

    They are left by a crash during save (or by a manifest that is missing or unreadable) and can be deleted.
    """
    folder = Path(folder)
    check_name(name)
    if not folder.is_dir():
        return []
    keep = set(_referenced(folder, name))
    pattern = _generation_re(name)
    manifest_tmp = _manifest_tmp_re(name)
    orphans = [p for p in folder.iterdir()
               if (pattern.fullmatch(p.name) and p.name not in keep) or manifest_tmp.fullmatch(p.name)]
    return sorted(orphans)


def next_generation(folder: Path, name: str) -> int:
    """One more than any generation present (referenced or not), so no existing file is ever overwritten."""
    gens = [generation_of(p.name, name) for p in folder.iterdir()]
    referenced = _referenced_file(folder, name)
    if referenced is not None:
        gens.append(generation_of(referenced, name))
    return max([g for g in gens if g is not None], default=0) + 1


def fsync_dir(folder: Path) -> None:
    """Make renames in `folder` durable (no-op where directories cannot be opened, e.g. Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def fsync_and_hash(path: Path, chunk: int = 1 << 22) -> tuple[int, str]:
    """fsync a written file; return (size in bytes, sha256 hex)."""
    digest = hashlib.sha256()
    with open(path, "rb+") as f:
        os.fsync(f.fileno())
        while block := f.read(chunk):
            digest.update(block)
        size = f.tell()
    return size, digest.hexdigest()


def file_sha256(path: Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def write_json_atomic(path: Path, doc: dict) -> None:
    """Write JSON through a new temp file + fsync + os.replace + fsync of the directory."""
    text = json.dumps(doc, indent=2, sort_keys=True)
    fd, tmp = temp_file(path)
    try:
        with open(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        fault_point("manifest_write")  # reliability tests kill the process here: temp manifest written, not renamed
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    fsync_dir(path.parent)
