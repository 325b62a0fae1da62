"""Export stored persons for downstream work (clustering, VQA, captioning...): Parquet, npz or JSON lines.

One row per person; the columns are the fields of :data:`FIELDS`. Every format carries the same metadata (the
space's models, the PaSta / verb / part names, the phrases of the language space, how each vector is made, the
filters), so a file explains itself. Everything streams in bounded memory: rows are read from one SQLite read
snapshot ``batch_size`` at a time and written as they come:

- **parquet** (pyarrow, the ``[export]`` extra): one row group per batch through ``pyarrow.parquet.ParquetWriter``;
  vectors are fixed-size lists (polars: ``Array``; pandas: numpy arrays per cell); metadata as JSON under the
  schema key ``a2v_search``.
- **npz**: a .npy file cannot be appended to inside a zip, so each field goes to its own temporary file next to the
  output while rows stream in; at the end each one gets its .npy header (the row count is known then) and is
  copied into the zip (ZIP64, stored). A string field is stored compactly, as its values' UTF-8 bytes one after
  another (``path``, uint8) and where each starts (``path_offsets``, int64, rows + 1): one long path does not widen
  the column (:func:`npz_strings` reads it back). ``np.load(f)`` reads it without pickle; the metadata is the JSON
  string ``f["meta"][()]``; images have ``frame_index`` -1 and ``t_sec`` NaN.
- **jsonl**: line 1 is ``{"a2v_search_export": METADATA}``, then one JSON object per person, written line by line;
  missing values are null.

The output appears under its name only when complete: it is written to a new temporary file beside it (created
exclusively, with an unpredictable name, so a link planted there is never written through), then renamed.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from db.values import ClusteringRow, Filters, object_probs

from . import taxonomy as tx
from .errors import InputError, NotFoundError
from .models import prompts
from .objects import MAX_OBJECTS_PER_PERSON, PersonObject
from .store import Store

EXPORT_VERSION = 1
FORMATS = ("parquet", "npz", "jsonl")
_SUFFIXES = {".parquet": "parquet", ".pq": "parquet", ".npz": "npz", ".jsonl": "jsonl", ".ndjson": "jsonl"}
STRING_FIELDS = ("path", "collection", "kind")

#: field -> what it holds (also written into every file's metadata)
FIELDS: dict[str, str] = {
    "person_id": "int64: the person's id in the store (its FAISS id; search results name it)",
    "media_id": "int64: id of its image or video in the store",
    "path": "str: the media file (real path)",
    "collection": "str: collection the media was ingested into",
    "kind": "str: image or video",
    "frame_index": "int64: video frame index (null for images; -1 in npz and numpy batches)",
    "t_sec": "float64: time in the video, seconds (null for images; NaN in npz and numpy batches)",
    "box": "float32 (4,): x1, y1, x2, y2 in pixels of the media",
    "score": "float32: detector score (1 for whole images and given boxes)",
    "pasta": "float32 (93,): PaSta probabilities, in the order of names.pasta",
    "verbs": "float32 (157,): verb probabilities, in the order of names.verbs",
    "parts": "float32 (6,): part interaction flags, in the order of names.parts",
    "visual": "float32 (P,): the unit visual vector (CLIP projection output / its norm), as stored and searched",
    "visual_norm": "float32: norm of the projection output; visual * visual_norm is the trained heads' input "
                   "(null / NaN for persons stored before schema 2)",
    "language": "float32 (2D + 82,): the language vector in the text model's own dimension, "
                "concat(normalise(w_pasta @ W_pasta), normalise(w_verb @ W_verb), normalise(o), rest) / sqrt(3): w "
                "the weights the space's formula (language.formula) makes of pasta and verbs, W the phrase matrices "
                "as it whitens them, o the object block (the largest p of each of names.objects, then 1 for 'none'), "
                "rest the share of empty blocks (docs/design.md)",
    "language_basis": "float32 (r_p + r_v + 82,): the same vector in the compact orthonormal basis the store "
                      "searches in; language = concat(v[:r_p] @ basis_pasta, v[r_p:r_p + r_v] @ basis_verb, "
                      "v[r_p + r_v:])",
    "objects": "the objects the person acts on, best first (at most 4): in jsonl a list of {name, p, box} (box "
               "[x1, y1, x2, y2] or null: the form `import` reads), in parquet a list of structs of the same "
               "fields, in npz and numpy batches float32 (4, 6): rows [class, p, x1, y1, x2, y2] (class: index in "
               "names.objects, -1 in unused rows; box NaN where unknown)",
    "activity": "float32 (6, h): A2V's visual feature, the last hidden layer of the six part heads (foot, leg, "
                "hip, hand, arm, head) on visual * visual_norm; only with trained heads",
    "cluster": "int64: the person's cluster in the clustering named by --clustering (meta.clustering describes "
               "its clusters); -1: in none of them (stored after it, or without a direction in its space)",
}
DEFAULT_FIELDS = tuple(f for f in FIELDS if f not in ("language_basis", "cluster"))


@dataclass
class ExportReport:
    """What an export wrote."""

    path: str
    format: str
    rows: int = 0
    fields: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def as_dict(self) -> dict:
        return asdict(self)


def format_of(out: Path, fmt: str | None) -> str:
    """The format asked for, or the one the file name's suffix names."""
    if fmt is not None:
        if fmt not in FORMATS:
            raise InputError(f"--format must be one of {', '.join(FORMATS)}, not {fmt!r}")
        return fmt
    if Path(out).suffix.lower() not in _SUFFIXES:
        raise InputError(f"cannot tell the format from {Path(out).name!r}; name it .parquet, .npz or .jsonl, or "
                         "give --format parquet|npz|jsonl")
    return _SUFFIXES[Path(out).suffix.lower()]


def resolve_fields(store: Store, fields: Sequence[str] | None,
                   clustering: ClusteringRow | None = None) -> tuple[list[str], list[str]]:
    """(fields to write, notes). Default: every field but ``language_basis``, ``activity`` only when the store has
    A2V features, ``cluster`` only with a clustering; asking for ``activity`` without them, or ``cluster`` without a
    clustering, is an error that says why."""
    problem = store.space.activity_problem()
    notes = [] if problem is None else [f"activity: {problem}"]
    if not fields:
        return [f for f in DEFAULT_FIELDS if f != "activity" or problem is None] + (
            ["cluster"] if clustering is not None else []), notes
    wanted = []
    for f in (x.strip() for name in fields for x in name.split(",")):
        if not f:
            continue
        if f not in FIELDS:
            raise InputError(f"unknown field {f!r}; fields: {', '.join(FIELDS)}")
        if f == "activity" and problem is not None:
            raise InputError(f"field 'activity' is not available: {problem}")
        if f == "cluster" and clustering is None:
            raise InputError("field 'cluster' needs --clustering NAME (`manage.py clusters` lists them)")
        if f not in wanted:
            wanted.append(f)
    if not wanted:
        raise InputError(f"--fields names no field; fields: {', '.join(FIELDS)}")
    return wanted, notes


def find_clustering(store: Store, name: str | None) -> ClusteringRow | None:
    """The stored clustering ``name`` (None: none asked for); NotFoundError naming the stored ones."""
    if name is None:
        return None
    found = store.clustering(name)
    if found is None:
        names = ", ".join(r.name for r in store.clusterings()) or "none yet"
        raise NotFoundError(f"no clustering named {name!r} (stored: {names}); make one with "
                            f"`manage.py cluster --name {name}`")
    return found[0]


def iter_batches(store: Store, filters: Filters | None = None, fields: Sequence[str] | None = None,
                 batch_size: int = 4096, clustering: str | None = None) -> Iterator[dict[str, np.ndarray]]:
    """Batches of at most ``batch_size`` persons (in id order) as numpy columns, one per field: ``path``,
    ``collection``, ``kind`` are unicode arrays, the rest as :data:`FIELDS` says (``cluster``: of the clustering
    named ``clustering``). Read from one SQLite snapshot."""
    if batch_size < 1:
        raise InputError("--batch-size must be >= 1")
    if store.space.row() is None:
        return iter(())
    row = find_clustering(store, clustering)
    names = resolve_fields(store, fields, row)[0]  # bad fields fail here, not later
    return _batches(store, filters, names, batch_size, row)


def _batches(store: Store, filters: Filters | None, fields: list[str], batch_size: int,
             clustering: ClusteringRow | None) -> Iterator[dict]:
    for batch in store.person_batches(filters, batch_size):
        yield _columns(store, batch, fields, clustering)


def _columns(store: Store, batch: dict, fields: Sequence[str], clustering: ClusteringRow | None = None
             ) -> dict[str, np.ndarray]:
    out = {f: np.array(batch[f]) if f in STRING_FIELDS else batch[f] for f in fields if f in batch}
    if "cluster" in fields:
        out["cluster"] = store.clusters_of(clustering.id, batch["person_id"])
    if "objects" in fields:
        out["objects"] = object_array(batch["objects"])
    if "language" in fields or "language_basis" in fields:
        compact = store.space.language().embed(batch["pasta"], batch["verbs"],  # (n, dim): what FAISS holds
                                               object_probs(batch["objects"]))
        if "language_basis" in fields:
            out["language_basis"] = compact
        if "language" in fields:
            out["language"] = store.space.language().to_full(compact).astype(np.float32)
    if "activity" in fields:
        out["activity"] = store.space.part_features(batch["visual"], batch["visual_norm"]).astype(np.float32)
    return {f: out[f] for f in fields}


def object_array(objects: Sequence[Sequence[PersonObject]]) -> np.ndarray:
    """Persons' objects -> float32 (n, MAX_OBJECTS_PER_PERSON, 6): [class, p, x1, y1, x2, y2], class -1 in unused
    rows, NaN boxes where unknown."""
    out = np.full((len(objects), MAX_OBJECTS_PER_PERSON, 6), np.nan, np.float32)
    out[:, :, 0], out[:, :, 1] = -1, 0
    for i, objs in enumerate(objects):
        for r, (cls, p, box) in enumerate(objs[:MAX_OBJECTS_PER_PERSON]):
            out[i, r, :2] = cls, p
            if box is not None:
                out[i, r, 2:] = box
    return out


def object_lists(rows: np.ndarray) -> list[list[dict]]:
    """float32 (n, MAX, 6) -> per person ``[{"name", "p", "box"}]`` (the import form)."""
    return [[{"name": tx.OBJECT_NAMES[int(o[0])], "p": round(float(o[1]), 4),
              "box": None if np.isnan(o[2]) else [round(float(v), 2) for v in o[2:]]} for o in row if o[0] >= 0]
            for row in rows]


def metadata(store: Store, fields: Sequence[str], filters: Filters | None, notes: Sequence[str],
             clustering: ClusteringRow | None = None) -> dict:
    """What a file needs to explain itself: models, names, phrases, fields, filters."""
    space = store.space.config() or {}
    lang = store.space.language()
    problem = store.space.activity_problem()
    meta = {
        "format": "a2v-search export", "version": EXPORT_VERSION, "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                                                             time.gmtime()),
        "store": str(store.data_dir), "space_fingerprint": store.space.fingerprint,
        "space": {k: space.get(k) for k in ("visual_model", "heads", "text_model", "phrases", "visual_dim",
                                            "language_dim", "spec")},
        "filters": asdict(filters) if filters is not None else None,
        "fields": {f: FIELDS[f] for f in fields},
        "names": {"pasta": list(tx.PASTA_NAMES), "verbs": list(tx.VERB_NAMES), "parts": list(tx.PARTS),
                  "objects": list(tx.OBJECT_NAMES)},
        "phrases": {"pasta": prompts.pasta_phrases(), "verbs": prompts.verb_sense_phrases(),
                    "about": "M_pasta rows are the text model's embeddings of these phrases, M_verb rows the "
                             "normalised mean of the embeddings of each verb's sentences; no_interaction rows are "
                             "zero"},
        "language": {"text_dim": int(lang.m_pasta.shape[1]), "rank_pasta": int(lang.basis_pasta.shape[0]),
                     "rank_verb": int(lang.basis_verb.shape[0]), "formula": lang.vector, "pooling": lang.pooling},
        "activity": ("A2V's visual feature: the last hidden layer of each part head (foot, leg, hip, hand, arm, "
                     "head) of the trained heads; the activity search space uses "
                     "normalise(concat(normalise(part) for each part))") if problem is None else problem,
        "notes": list(notes),
    }
    if "language_basis" in fields:
        meta["basis"] = {"pasta": lang.basis_pasta.tolist(), "verb": lang.basis_verb.tolist()}
    if clustering is not None:
        meta["clustering"] = {"name": clustering.name, "space": clustering.space, "k": clustering.k,
                              "filters": clustering.filters, "clusters": clustering.clusters}
    return meta


def export(store: Store, out: str | os.PathLike, fmt: str | None = None, filters: Filters | None = None,
           fields: Sequence[str] | None = None, batch_size: int = 4096, clustering: str | None = None) -> ExportReport:
    """Write the persons passing ``filters`` to ``out`` (format from ``fmt`` or the suffix); ``clustering``: the
    name of a stored clustering whose cluster ids go into the ``cluster`` column."""
    start = time.monotonic()
    out = Path(out)
    fmt = format_of(out, fmt)
    if store.space.row() is None:
        raise InputError(f"the store at {store.data_dir} is empty; nothing to export")
    if out.is_dir():
        raise InputError(f"{out} is a folder; --out takes a file name")
    if not out.parent.is_dir():
        raise InputError(f"folder {out.parent} does not exist")
    row = find_clustering(store, clustering)
    names, notes = resolve_fields(store, fields, row)
    meta = metadata(store, names, filters, notes, row)
    batches = iter_batches(store, filters, names, batch_size, clustering)
    writer = {"parquet": _write_parquet, "npz": _write_npz, "jsonl": _write_jsonl}[fmt]
    tmp = None
    try:
        fd, name = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")  # O_EXCL, random name
        os.close(fd)
        tmp = Path(name)
        rows = writer(tmp, batches, names, meta, store)
        os.chmod(tmp, 0o644)
        os.replace(tmp, out)
    except OSError as e:
        raise InputError(f"cannot write {out}: {e.strerror or e}") from None
    finally:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
    return ExportReport(path=str(out), format=fmt, rows=rows, fields=names, notes=notes,
                        seconds=round(time.monotonic() - start, 3))


# ------------------------------------------------------------------ parquet


def _pyarrow():
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise InputError("Parquet export needs pyarrow: pip install 'a2v-search[export]' (or pip install pyarrow); "
                         "npz and jsonl need nothing more") from None
    return pa, pq


def _object_type(pa):
    return pa.list_(pa.struct([("name", pa.string()), ("p", pa.float32()), ("box", pa.list_(pa.float32(), 4))]))


def _arrow_column(pa, name: str, values: np.ndarray):
    if name in STRING_FIELDS:
        return pa.array(values.tolist(), pa.string())
    if name == "objects":
        return pa.array(object_lists(values), _object_type(pa))
    if name == "frame_index":
        return pa.array(values, pa.int64(), mask=values < 0)
    if name in ("t_sec", "visual_norm"):
        return pa.array(values, mask=np.isnan(values))
    if values.ndim == 1:
        return pa.array(values)
    arr = pa.array(np.ascontiguousarray(values).reshape(-1))
    for size in reversed(values.shape[1:]):  # (n, 6, h) -> fixed-size list of fixed-size lists
        arr = pa.FixedSizeListArray.from_arrays(arr, size)
    return arr


def _write_parquet(tmp: Path, batches, names: list[str], meta: dict, store: Store) -> int:
    pa, pq = _pyarrow()
    rows, writer = 0, None
    try:
        for batch in batches:
            table = pa.table({n: _arrow_column(pa, n, batch[n]) for n in names})
            if writer is None:
                schema = table.schema.with_metadata({"a2v_search": json.dumps(meta)})
                writer = pq.ParquetWriter(str(tmp), schema)
            writer.write_table(table.cast(writer.schema))  # one row group per batch
            rows += table.num_rows
        if writer is None:  # no rows: an empty table with the right columns
            writer = pq.ParquetWriter(str(tmp), _empty_schema(pa, names, store).with_metadata(
                {"a2v_search": json.dumps(meta)}))
    finally:
        if writer is not None:
            writer.close()
    return rows


def _empty_schema(pa, names: list[str], store: Store):
    dims = _dims(store, names)
    types = {}
    for n in names:
        if n in STRING_FIELDS:
            types[n] = pa.string()
        elif n == "objects":
            types[n] = _object_type(pa)
        elif n in ("person_id", "media_id", "frame_index", "cluster"):
            types[n] = pa.int64()
        elif n == "t_sec":
            types[n] = pa.float64()
        else:
            t = pa.float32()
            for size in reversed(dims[n]):
                t = pa.list_(t, size)
            types[n] = t
    return pa.schema([(n, types[n]) for n in names])


def _dims(store: Store, names: Sequence[str]) -> dict[str, tuple[int, ...]]:
    """Per-row shape of each numeric field (for empty exports)."""
    row = store.space.row()
    lang = store.space.language()
    dims = {"box": (4,), "objects": (MAX_OBJECTS_PER_PERSON, 6), "pasta": (tx.N_PASTA,), "verbs": (tx.N_VERBS,),
            "parts": (tx.N_PARTS,), "visual": (row.visual_dim,),
            "language": (2 * lang.m_pasta.shape[1] + lang.dim - len(lang.basis_pasta) - len(lang.basis_verb),),
            "language_basis": (lang.dim,)}
    if "activity" in names:
        dims["activity"] = store.space.part_features(np.ones((1, row.visual_dim), np.float32),
                                               np.ones(1, np.float32)).shape[1:]
    return {n: dims.get(n, ()) for n in names}


# ------------------------------------------------------------------ npz


def npz_strings(npz, name: str) -> list[str]:
    """A string field of an npz export (``np.load(f)``) as Python strings."""
    data, offsets = npz[name], npz[f"{name}_offsets"]
    raw = data.tobytes()
    bounds = offsets.tolist()
    return [raw[a:b].decode("utf-8", "surrogateescape") for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


def _write_npz(tmp: Path, batches, names: list[str], meta: dict, store: Store) -> int:
    rows = 0
    offsets = {n: [0] for n in STRING_FIELDS}
    shapes: dict[str, tuple[int, ...]] = {}
    dtypes: dict[str, np.dtype] = {}
    with tempfile.TemporaryDirectory(prefix=f".{tmp.name}.", dir=tmp.parent) as work:
        parts = {n: open(Path(work) / n, "wb") for n in names}  # noqa: SIM115 (closed below)
        try:
            for batch in batches:
                for n in names:
                    values = batch[n]
                    if n in STRING_FIELDS:
                        for v in values.tolist():
                            data = v.encode("utf-8", "surrogateescape")
                            parts[n].write(data)
                            offsets[n].append(offsets[n][-1] + len(data))
                    else:
                        shapes[n], dtypes[n] = values.shape[1:], values.dtype
                        parts[n].write(np.ascontiguousarray(values).tobytes())
                rows += len(batch[names[0]])
        finally:
            for f in parts.values():
                f.close()
        if not rows:
            dims = _dims(store, names)
            for n in names:
                shapes[n] = dims[n]
                dtypes[n] = np.dtype(np.int64 if n in ("person_id", "media_id", "frame_index", "cluster") else
                                     np.float64 if n == "t_sec" else np.float32)
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
            for n in names:
                with zf.open(f"{n}.npy", "w", force_zip64=True) as dst, open(Path(work) / n, "rb") as src:
                    if n in STRING_FIELDS:
                        _npy_header(dst, np.dtype(np.uint8), (offsets[n][-1],))
                        shutil.copyfileobj(src, dst, 1 << 20)
                    else:
                        _npy_header(dst, dtypes[n], (rows, *shapes[n]))
                        shutil.copyfileobj(src, dst, 1 << 20)
            for n in STRING_FIELDS:
                if n in names:
                    _add_array(zf, f"{n}_offsets", np.asarray(offsets[n], np.int64))
            _add_array(zf, "meta", np.array(json.dumps(meta)))
            if "basis" in meta:
                lang = store.space.language()
                _add_array(zf, "basis_pasta", lang.basis_pasta)
                _add_array(zf, "basis_verb", lang.basis_verb)
    return rows


def _npy_header(f, dtype: np.dtype, shape: tuple[int, ...]) -> None:
    header = {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False, "shape": shape}
    np.lib.format.write_array_header_2_0(f, header)


def _add_array(zf: zipfile.ZipFile, name: str, value: np.ndarray) -> None:
    with zf.open(f"{name}.npy", "w", force_zip64=True) as f:
        np.lib.format.write_array(f, np.asarray(value), allow_pickle=False)


# ------------------------------------------------------------------ jsonl


def _write_jsonl(tmp: Path, batches, names: list[str], meta: dict, store: Store) -> int:
    rows = 0
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(json.dumps({"a2v_search_export": meta}, ensure_ascii=False) + "\n")
        for batch in batches:
            cols = {n: object_lists(batch[n]) if n == "objects" else batch[n].tolist() for n in names}
            n_rows = len(cols[names[0]])
            for i in range(n_rows):
                row = {n: cols[n][i] for n in names}
                if "frame_index" in row and row["frame_index"] < 0:
                    row["frame_index"] = None
                for n in ("t_sec", "visual_norm"):
                    if n in row and row[n] != row[n]:  # NaN
                        row[n] = None
                f.write(json.dumps(row, ensure_ascii=False, allow_nan=False) + "\n")
            rows += n_rows
    return rows
