"""Records computed elsewhere -> stored persons: reading a JSON-lines / JSON-list file, validating each record like
an ingest result, and writing the valid ones (``manage.py import``, :meth:`A2VSearch.import_records`)."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from db.repo import NewMedia, NewPerson

from . import taxonomy as tx
from .errors import InputError
from .store import Store

WRITE_EVERY = 256  # media per SQLite transaction


@dataclass
class ImportReport:
    """What an import of precomputed records did."""

    records: int = 0
    media_added: int = 0
    persons_added: int = 0
    failures: list[dict] = field(default_factory=list)

    def as_dict(self) -> dict:
        return asdict(self)


def import_records(store: Store, records: list, visual_dim: int, collection: str = "default") -> ImportReport:
    """Validate ``records`` (see :meth:`A2VSearch.import_records`) and write the valid ones into ``store`` (write-
    locked, its space registered); a stored path is replaced. Bad records are reported and skipped."""
    report = ImportReport(records=len(records))
    items: list[NewMedia] = []
    for i, rec in enumerate(records):
        try:
            items.append(record_to_media(rec, visual_dim, collection))
        except InputError as e:
            where = rec.get("path", f"record {i}") if isinstance(rec, dict) else f"record {i}"
            report.failures.append({"path": str(where), "stage": "import", "error": f"record {i}: {e}"})
    states = store.media_states([m.path for m in items])
    for m in items:
        if m.path in states:
            m.replaces = states[m.path].id
    for start in range(0, len(items), WRITE_EVERY):
        report.persons_added += len(store.write(items[start:start + WRITE_EVERY]))
    report.media_added = len(items)
    store.save()
    return report


def read_records(source: str | os.PathLike | Iterable[dict]) -> list:
    """The records of a JSON-lines or JSON-list file (InputError naming the problem), or of an iterable of dicts."""
    if not isinstance(source, (str, os.PathLike)):
        return list(source)
    p = Path(source)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as e:
        raise InputError(f"cannot read {p}: {e.strerror or e}") from None
    except UnicodeDecodeError:
        raise InputError(f"{p} is not UTF-8 text (expected JSON lines or a JSON list)") from None
    stripped = text.lstrip()
    try:
        if stripped.startswith("["):
            return json.loads(text)
        return [json.loads(line) for line in text.splitlines() if line.strip()]
    except json.JSONDecodeError as e:
        raise InputError(f"{p} is not valid JSON / JSON lines (line {e.lineno}: {e.msg})") from None


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


def record_to_media(rec, visual_dim: int, collection: str) -> NewMedia:
    """One record -> the media and persons to store (InputError naming the first bad field)."""
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
        norm = float(np.linalg.norm(visual))
        if norm < 1e-6:
            raise InputError(f"persons[{j}].visual is a zero vector")
        tower_norm = p.get("visual_norm", norm)  # the tower output's norm when `visual` is already unit length
        if isinstance(tower_norm, bool) or not isinstance(tower_norm, (int, float)) or not math.isfinite(tower_norm) \
                or tower_norm <= 0:
            raise InputError(f"persons[{j}].visual_norm must be a positive number")
        if "parts" in p:
            parts = _vector(p["parts"], tx.N_PARTS, f"persons[{j}].parts")
        else:  # the strongest interacting state of each part
            parts = np.array([pasta[r.start:r.stop - 1].max() for r in tx.PART_RANGES.values()], np.float32)
        box = p.get("box", [0, 0, width or 1, height or 1])
        if (not isinstance(box, list) or len(box) != 4
                or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in box)
                or box[2] <= box[0] or box[3] <= box[1]):
            raise InputError(f"persons[{j}].box must be [x1, y1, x2, y2] with x2 > x1 and y2 > y1")
        out.append(NewPerson(box=[float(v) for v in box], pasta=pasta, verbs=verbs, parts=parts,
                             visual=visual / norm, visual_norm=float(tower_norm), score=float(p.get("score", 1.0)),
                             frame_index=p.get("frame_index"), t_sec=p.get("t_sec")))
    return NewMedia(path=path, content_hash=rec.get("content_hash"), size=int(rec.get("size", 0) or 0),
                    mtime=float(rec.get("mtime", 0.0) or 0.0), kind=kind,
                    collection=str(rec.get("collection") or collection),
                    width=width if isinstance(width, int) else None, height=height if isinstance(height, int) else None,
                    persons=out)
