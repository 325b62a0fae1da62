"""`VectorIndex`: a FAISS index of L2-normalised float32 vectors keyed by int64 person ids.

Pure numpy + faiss. The caller keeps the truth (SQLite) and uses this to add/remove/search/save/load.
"""

from __future__ import annotations

import atexit
import datetime as _dt
import json
import logging
import os
import select
import signal
import subprocess
import sys
import threading
import time
import zipfile
from contextlib import contextmanager
from pathlib import Path

import faiss
import numpy as np

from .errors import IndexCorruptError, IndexInputError, IndexMissingError, IndexSpecError, UnknownIdError
from .files import (
    check_name,
    file_sha256,
    fsync_and_hash,
    fsync_dir,
    generation_file_name,
    generation_of,
    manifest_path,
    next_generation,
    orphan_files,
    read_manifest_file,
    referenced_files,
    tail_file_name,
    temp_file,
    write_json_atomic,
)
from .hooks import fault_point
from .spec import PQ_MIN_TRAIN, TRAIN_MAX_POINTS_PER_LIST, TRAIN_POINTS_PER_LIST, choose_spec, default_nprobe

log = logging.getLogger(__name__)

MANIFEST_FORMAT = 1
# Keys `save` writes into the manifest (they replace caller keys of the same name).
MANIFEST_KEYS = ("format", "count", "max_id", "dim", "spec", "file", "size", "sha256", "faiss_version", "saved_at",
                 "nprobe", "buffered", "base_count", "tail")
# An allow-list with at most this many ids present is scored exactly (reconstruct + faiss.knn), whatever the index;
# larger ones are filtered inside the FAISS search, which is cheaper from a few thousand ids on (~1 us per id to
# reconstruct vs a few ns per scanned id to check a bitmap), see docs/index.md.
EXACT_ALLOW_MAX = 2_048
# Training sample for indexes that need training but are not IVF (e.g. "SQ8", "HNSW32,SQ8").
MIN_TRAIN_OTHER = 1_000
# Candidates scored per block by exact search (bounds its memory: queries x EXACT_BLOCK floats).
EXACT_BLOCK = 16_384
HNSW_EF_SEARCH = 64
# A save writes only what changed since the last one (a tail file) while the tails' added and removed ids are at most
# this fraction of the index's vectors and the tails number fewer than TAIL_MAX_FILES; then the whole index again.
# A tail costs its vectors' bytes to write (an IVF index's: its codes, with their lists: a quarter of the float32
# vectors with SQ8) and to read and hash on load, where its codes go into their lists as they are (100k at 512-d SQ8:
# 0.02 s, against 0.23 s to add them as vectors). The whole index costs its size each time (~1.8 s for both indexes
# at 1M persons, ~18 us a changed person at 10%): a quarter keeps a load's extra work under what 10% of vectors cost.
TAIL_MAX_FRACTION = 0.25
TAIL_MAX_FILES = 32
# Vectors whose IVF lists are chosen in one matrix product on add ((chunk, nlist) float32 scores: 32 MB at 2048 lists).
ASSIGN_CHUNK = 4_096
_GPU_MAX_K = 2048


def _write_file(final: Path, write) -> tuple[int, str]:
    """``write(f)`` into a temp file beside ``final``, fsync, rename to ``final``, fsync the folder: (size, sha256)."""
    fd, tmp = temp_file(final)
    try:
        with open(fd, "wb") as f:
            write(f)
        os.chmod(tmp, 0o644)
        size, sha = fsync_and_hash(tmp)
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(final.parent)
    return size, sha


def _older_than(path: Path, t: float) -> bool:
    try:
        return path.stat().st_mtime < t
    except OSError:
        return False


def ivf_of(index: faiss.Index) -> faiss.IndexIVF | None:
    """The IndexIVF inside `index` (through IndexPreTransform/IDMap wrappers), or None."""
    try:
        return faiss.extract_index_ivf(index)
    except (RuntimeError, AttributeError):
        return None


def _resolve_spec(spec: str) -> str:
    spec = spec.strip().replace(" ", "")
    if spec.lower() == "flat":
        return "Flat"
    for prefix in ("IDMap2,", "IDMap,"):  # ids are always handled by VectorIndex
        if spec.startswith(prefix):
            spec = spec[len(prefix):]
    return spec


def _build_index(dim: int, spec: str, nprobe: int | None = None) -> faiss.Index:
    """A new, empty faiss index for `spec` that takes ids: IVF types natively (with a hash-table direct map for
    remove/reconstruct), everything else wrapped in IndexIDMap2."""
    try:
        index = faiss.index_factory(dim, spec, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as exc:
        first_line = str(exc).strip().splitlines()[-1] if str(exc).strip() else "unknown error"
        raise IndexSpecError(
            f"invalid FAISS index spec {spec!r} ({first_line}); use 'auto', 'flat' or a FAISS factory string "
            "such as 'IVF1024,Flat', 'IVF4096,SQ8' or 'HNSW32'") from None
    if index.metric_type != faiss.METRIC_INNER_PRODUCT:
        raise IndexSpecError(f"index spec {spec!r} does not support inner-product search; use e.g. 'IVF1024,Flat'")
    ivf = ivf_of(index)
    if ivf is not None:
        ivf.set_direct_map_type(faiss.DirectMap.Hashtable)
        ivf.nprobe = max(1, min(ivf.nlist, nprobe)) if nprobe is not None else default_nprobe(ivf.nlist)
        return index
    if isinstance(index, faiss.IndexHNSW):
        index.hnsw.efSearch = HNSW_EF_SEARCH
    return faiss.IndexIDMap2(index)  # the wrapper keeps a Python reference to `index`


def _staging_index(dim: int) -> faiss.Index:
    """Exact index that holds vectors until the real index has enough of them to train."""
    return faiss.IndexIDMap2(faiss.IndexFlatIP(dim))


def _index_ids(index: faiss.Index) -> np.ndarray:
    """All ids stored in `index` (int64, unsorted): the IDMap's id_map or the IVF inverted lists."""
    if isinstance(index, (faiss.IndexIDMap, faiss.IndexIDMap2)):
        return faiss.vector_to_array(index.id_map).astype(np.int64, copy=False)
    ivf = ivf_of(index)
    if ivf is None:
        raise TypeError(f"{type(index).__name__} stores no ids")
    invlists = ivf.invlists
    parts = [np.empty(0, np.int64)]
    for list_no in range(ivf.nlist):
        size = invlists.list_size(list_no)
        if size:
            ptr = invlists.get_ids(list_no)
            parts.append(faiss.rev_swig_ptr(ptr, size).copy())
            invlists.release_ids(list_no, ptr)
    return np.concatenate(parts)


def gpu_available() -> bool:
    """Whether the installed faiss has GPU support and sees at least one GPU."""
    if not all(hasattr(faiss, a) for a in ("get_num_gpus", "index_cpu_to_gpu", "StandardGpuResources")):
        return False
    try:
        return faiss.get_num_gpus() > 0
    except Exception:  # a broken CUDA setup means no GPU
        return False


def one_thread_here() -> None:
    """Make the FAISS calls of the calling thread run on one OpenMP thread (OpenMP's setting is per thread; the
    others keep theirs). For a thread whose FAISS work overlaps another busy thread of the process: OpenMP's second
    thread then waits for a core, its peers spin at each barrier, and both threads slow down (docs/benchmarks.md)."""
    faiss.omp_set_num_threads(1)


_gpu_resources = None


def _gpu_resources_shared():
    global _gpu_resources
    if _gpu_resources is None:
        _gpu_resources = faiss.StandardGpuResources()
    return _gpu_resources


def _gpu_copy(index: faiss.Index) -> faiss.Index:
    """A copy of `index` on GPU 0 (shared resources)."""
    return faiss.index_cpu_to_gpu(_gpu_resources_shared(), 0, index)


@contextmanager
def _quantizer_on_gpu(ivf: faiss.IndexIVF | None):
    """While the block runs, the coarse quantizer of `ivf` is a GPU copy, so that adding vectors finds their lists
    on the GPU; the CPU quantizer (the one saved) is put back after. Nothing happens for None."""
    if ivf is None:
        yield
        return
    cpu_quantizer = ivf.quantizer
    gpu_quantizer = _gpu_copy(cpu_quantizer)  # held here for as long as the index points at it
    ivf.quantizer = gpu_quantizer
    try:
        yield
    finally:
        ivf.quantizer = cpu_quantizer
        del gpu_quantizer


class VectorIndex:
    """FAISS index of L2-normalised float32 vectors scored by inner product (= cosine); ids are int64 person ids
    (never row positions).

    Adding an id that is present replaces its vector (upsert). Index types that need training (IVF, PQ, SQ) keep
    added vectors in an exact staging index until `min_train` vectors are there, then train on them and move them
    in (`needs_training` is True until then); search, remove, save and load work the same in both states.
    One writer at a time; searches may run concurrently with each other but not with a write.

    With a GPU (faiss built with GPU support, `gpu_available()`): IVF indexes train their k-means and assign added
    vectors to lists on the GPU, and unfiltered searches run on a GPU copy; the index kept and saved is the CPU one,
    so files are the same with and without a GPU. `use_gpu=False` keeps everything on the CPU.
    """

    def __init__(self, dim: int, spec: str, index: faiss.Index, pending: faiss.Index | None = None,
                 use_gpu: bool | None = None) -> None:
        # Use `create` or `load`. `index` is the live index; `pending` the untrained target while buffering.
        self.dim = dim
        self.spec = spec
        self._index = index
        self._pending = pending
        self._ids_sorted = np.sort(_index_ids(index))
        if use_gpu and not gpu_available():
            raise IndexInputError("use_gpu=True but faiss has no GPU support or sees no GPU; install the `gpu` extra "
                                  "(faiss-gpu) on a GPU machine or leave use_gpu unset")
        self._use_gpu = gpu_available() if use_gpu is None else use_gpu
        self._gpu_index: faiss.Index | None = None
        self._gpu_unsupported = False
        self.exact_allow_max = EXACT_ALLOW_MAX
        self._centroids: tuple[faiss.Index, np.ndarray] | None = None  # (index, its IVF list centroids (nlist, dim))
        # the files this index was loaded from or last saved to (folder, name, the manifest's file entries), and the
        # ids added and removed since (_forget_changes): what the next save may write as a tail (None: the whole index)
        self._saved: dict | None = None
        self._forget_changes()

    # ----------------------------------------------------------------------------------------------- creation
    @classmethod
    def create(cls, dim: int, spec: str = "auto", expected_n: int = 0, memory_budget_mb: int | None = None,
               use_gpu: bool | None = None, nprobe: int | None = None) -> VectorIndex:
        """Empty index. spec: "auto" (choose_spec(expected_n, dim, memory_budget_mb)), "flat" (exact) or a FAISS
        factory string ("IVF1024,Flat", "IVF4096,SQ8", "HNSW32", "OPQ16,IVF4096,PQ16"...), metric inner product.
        nprobe: lists probed per query for IVF types (default: default_nprobe(nlist))."""
        if not isinstance(dim, (int, np.integer)) or dim < 1:
            raise IndexInputError(f"index dimension must be a positive integer, got {dim!r}")
        if not isinstance(spec, str) or not spec.strip():
            raise IndexSpecError(f"index spec must be a non-empty string such as 'auto' or 'IVF1024,Flat', "
                                 f"not {spec!r}")
        resolved = choose_spec(expected_n, int(dim), memory_budget_mb) if spec.strip().lower() == "auto" \
            else _resolve_spec(spec)
        index = _build_index(int(dim), resolved, nprobe)
        if index.is_trained:
            return cls(int(dim), resolved, index, use_gpu=use_gpu)
        return cls(int(dim), resolved, _staging_index(int(dim)), pending=index, use_gpu=use_gpu)

    # ----------------------------------------------------------------------------------------------- properties
    @property
    def _ids_sorted(self) -> np.ndarray:
        """The ids in the index, sorted (n,): a view of a buffer with room to grow (new ids are mostly the largest)."""
        return self._ids_buf[:self._n_ids]

    @_ids_sorted.setter
    def _ids_sorted(self, ids: np.ndarray) -> None:
        self._ids_buf, self._n_ids = ids, len(ids)

    def _insert_ids(self, uniq: np.ndarray) -> None:
        """Insert sorted new ids: appended in place when they are all larger than the largest (no copy of the
        million ids there are), else merged."""
        n = self._n_ids
        if n and uniq[0] <= self._ids_buf[n - 1]:
            self._ids_sorted = np.insert(self._ids_sorted, np.searchsorted(self._ids_sorted, uniq), uniq)
            return
        if n + len(uniq) > len(self._ids_buf):
            grown = np.empty(n + len(uniq) + max(n // 2, 1024), np.int64)
            grown[:n] = self._ids_buf[:n]
            self._ids_buf = grown
        self._ids_buf[n:n + len(uniq)] = uniq
        self._n_ids = n + len(uniq)

    def _delete_ids(self, gone: np.ndarray) -> None:
        """Delete sorted ids that are present, in place: the ids after the first of them move down in the buffer,
        which keeps its room to grow (a new array a removal, then a larger one at the next add, cost ~5 ms a
        replaced file's batch at 2M persons)."""
        pos = np.searchsorted(self._ids_sorted, gone)  # (k,) sorted
        start, n = int(pos[0]), self._n_ids
        keep = np.ones(n - start, bool)
        keep[pos - start] = False
        kept = self._ids_buf[start:n][keep]
        self._ids_buf[start:start + len(kept)] = kept
        self._n_ids = start + len(kept)

    @property
    def ntotal(self) -> int:
        """Number of vectors in the index (staged ones included)."""
        return int(self._index.ntotal)

    @property
    def ivf(self) -> faiss.IndexIVF | None:
        """The IVF part of the CPU index (its quantizer, its lists), or None for an index without one."""
        return ivf_of(self._index)

    @property
    def needs_training(self) -> bool:
        """True while vectors are staged because the index type needs training and has not been trained."""
        return self._pending is not None

    @property
    def min_train(self) -> int:
        """Vectors needed before the index trains itself on add (0 for types without training)."""
        target = self._pending
        if target is None:
            return 0
        ivf = ivf_of(target)
        need = TRAIN_POINTS_PER_LIST * ivf.nlist if ivf is not None else MIN_TRAIN_OTHER
        return max(need, PQ_MIN_TRAIN) if "PQ" in self.spec else need

    @property
    def nprobe(self) -> int | None:
        """Lists probed per query (IVF types), None for other types. Settable; saved with the index."""
        ivf = ivf_of(self._pending if self._pending is not None else self._index)
        return None if ivf is None else int(ivf.nprobe)

    @nprobe.setter
    def nprobe(self, value: int) -> None:
        ivf = ivf_of(self._pending if self._pending is not None else self._index)
        if ivf is None:
            raise IndexInputError(f"nprobe applies to IVF indexes only; this index is {self.spec!r}")
        ivf.nprobe = max(1, min(int(value), ivf.nlist))
        self._gpu_index = None
        self._saved = None  # the setting lives in the index file: the next save writes it whole

    def __repr__(self) -> str:
        state = ", staging" if self.needs_training else ""
        return f"VectorIndex(dim={self.dim}, spec={self.spec!r}, ntotal={self.ntotal}{state})"

    # ----------------------------------------------------------------------------------------------- input checks
    def _check_ids(self, ids: np.ndarray) -> np.ndarray:
        arr = np.asarray(ids)
        if arr.ndim != 1:
            raise IndexInputError(f"ids must be a 1-d array, got shape {arr.shape}")
        if arr.size and not np.issubdtype(arr.dtype, np.integer):
            raise IndexInputError(f"ids must be integers (int64 person ids), got dtype {arr.dtype}")
        arr = np.ascontiguousarray(arr, dtype=np.int64)
        if arr.size and arr.min() < 0:
            raise IndexInputError("ids must be >= 0 (-1 marks 'no result' in search output)")
        return arr

    def _check_vectors(self, vectors: np.ndarray, what: str, allow_zero: bool = False) -> np.ndarray:
        """(n, dim) float32, C-contiguous, rows L2-normalised (a copy only when they were not); zero rows stay
        zero when ``allow_zero``."""
        arr = np.asarray(vectors)
        if arr.ndim == 1 and arr.size == self.dim:
            arr = arr[None, :]
        if arr.ndim != 2 or arr.shape[1] != self.dim:
            raise IndexInputError(f"{what} must have shape (n, {self.dim}), got {arr.shape}")
        arr = np.ascontiguousarray(arr, dtype=np.float32)
        norms = np.linalg.norm(arr, axis=1)  # (n,)
        if not np.all(np.isfinite(norms)) or (not allow_zero and np.any(norms == 0)):
            raise IndexInputError(f"{what} contain zero, NaN or infinite rows; every row must be a non-zero finite "
                                  "vector")
        if np.any((np.abs(norms - 1) > 1e-4) & (norms > 0)):
            arr = arr / np.where(norms > 0, norms, 1.0)[:, None]
        return arr

    def _present(self, ids: np.ndarray) -> np.ndarray:
        """Boolean mask (len(ids),) of ids that are in the index."""
        pos = np.searchsorted(self._ids_sorted, ids)
        pos[pos == len(self._ids_sorted)] = 0
        return self._ids_sorted[pos] == ids if len(self._ids_sorted) else np.zeros(len(ids), bool)

    # ----------------------------------------------------------------------------------------------- writes
    def add(self, ids: np.ndarray, vectors: np.ndarray, allow_zero: bool = False) -> None:
        """Add vectors (n, dim) under ids (n,). An id already present is replaced (no duplicate); an id given twice
        in one call is an error. Rows are L2-normalised if they are not; a zero row is an error unless
        ``allow_zero`` (it then scores 0 against every query). Index types that need training stage the vectors
        (exact search) until `min_train` are there, then train on them (see the class docstring)."""
        ids = self._check_ids(ids)
        vectors = self._check_vectors(vectors, "vectors", allow_zero)
        if len(ids) != len(vectors):
            raise IndexInputError(f"add got {len(ids)} ids for {len(vectors)} vectors; give one id per vector")
        if len(ids) == 0:
            return
        uniq = _sorted_unique(ids)
        if len(uniq) != len(ids):
            raise IndexInputError("add got the same id twice in one call; give each person id once")
        present = self._present(ids)
        if present.any():
            self.remove(ids[present])
        lists = None
        if self._pending is not None and self.ntotal + len(ids) >= self.min_train:
            self._train_and_move(None, ids, vectors)
        else:
            lists = self._add_with_ids(self._index, vectors, ids)
        self._insert_ids(uniq)
        self._gpu_index = None
        # the IVF list of each added id, when chosen here (-1: ask FAISS's direct map at the next tail's save)
        self._note_change(self._added_since, (uniq, np.full(len(uniq), -1, np.int64) if lists is None
                                              else lists[np.argsort(ids, kind="stable")]), len(uniq))

    def train(self, vectors: np.ndarray | None = None) -> None:
        """Train now (instead of waiting for `min_train` staged vectors) on `vectors` (n, dim), or on the staged
        vectors when None, then move the staged vectors into the trained index. k-means needs at least nlist
        vectors (FAISS warns below 39 per list). No-op when the index needs no training."""
        if self._pending is None:
            return
        sample = None if vectors is None else self._check_vectors(vectors, "training vectors")
        self._train_and_move(sample, np.empty(0, np.int64), np.empty((0, self.dim), np.float32))
        self._gpu_index = None

    def _train_cap(self) -> int:
        """Most vectors used to train the pending index (a random sample is drawn above that)."""
        ivf = ivf_of(self._pending)
        cap = TRAIN_MAX_POINTS_PER_LIST * ivf.nlist if ivf is not None else 100_000
        return max(cap, PQ_MIN_TRAIN) if "PQ" in self.spec else cap

    def _train_and_move(self, sample: np.ndarray | None, new_ids: np.ndarray, new_vectors: np.ndarray) -> None:
        """Train the pending index on `sample` (default: a sample of the staged + new vectors), then add the
        staged and the new vectors to it and make it the live index."""
        target = self._pending
        staged_ids = _index_ids(self._index)
        staged = self._index.reconstruct_batch(staged_ids)  # (s, dim), s < min_train
        if sample is None:
            total = len(staged) + len(new_vectors)
            pick = np.arange(total)
            if total > self._train_cap():
                pick = np.sort(np.random.default_rng(0).choice(total, self._train_cap(), replace=False))
            from_staged = pick[pick < len(staged)]
            sample = np.concatenate([staged[from_staged], new_vectors[pick[len(from_staged):] - len(staged)]])
        elif len(sample) > self._train_cap():
            sample = sample[np.random.default_rng(0).choice(len(sample), self._train_cap(), replace=False)]
        ivf = ivf_of(target)
        if ivf is not None and len(sample) < ivf.nlist:
            raise IndexInputError(f"training {self.spec!r} needs at least {ivf.nlist} vectors, got {len(sample)}; "
                                  "add more vectors first or use a smaller nlist "
                                  f"(e.g. 'IVF{max(1, len(sample) // 39)},Flat')")
        gpu = ivf is not None and self._use_gpu
        try:
            if gpu:  # k-means assignments on the GPU
                ivf.clustering_index = _gpu_copy(faiss.IndexFlat(ivf.d, ivf.metric_type))
            target.train(np.ascontiguousarray(sample))
        except RuntimeError as exc:
            raise IndexInputError(f"training {self.spec!r} on {len(sample)} vectors failed: {exc}".strip()) from None
        finally:
            if gpu:
                ivf.clustering_index = None
        with _quantizer_on_gpu(ivf if gpu else None):  # each added vector's list is found on the GPU
            for ids, vectors in ((staged_ids, staged), (new_ids, new_vectors)):
                if len(ids):
                    self._add_with_ids(target, vectors, ids)
        self._index, self._pending = target, None
        self._saved = None  # a new index: the next save writes it whole

    def _add_with_ids(self, index: faiss.Index, vectors: np.ndarray, ids: np.ndarray,
                      lists: np.ndarray | None = None) -> np.ndarray | None:
        """``index.add_with_ids(vectors, ids)``. An IVF index takes the vectors through ``add_core`` into ``lists``
        (n,) when given (a tail's, on load); else, on the CPU, its lists are chosen here, one matrix product per chunk
        (numpy's BLAS, ~4x faster than the flat quantizer's search: 32 against 138 us a vector at 2048 lists of
        d=512 on one core), the same lists but for exact ties. Returns the lists (n,), or None where FAISS chose
        them (or the index has none)."""
        ivf = isinstance(index, faiss.IndexIVF)
        centroids = self._list_centroids(index) if ivf and lists is None and not self._use_gpu else None
        if not ivf or (lists is None and centroids is None):
            index.add_with_ids(vectors, ids)
            return None
        out = np.empty(len(ids), np.int64)
        for start in range(0, len(ids), ASSIGN_CHUNK):
            x = np.ascontiguousarray(vectors[start:start + ASSIGN_CHUNK])  # (c, dim)
            xids = np.ascontiguousarray(ids[start:start + ASSIGN_CHUNK])  # (c,)
            chosen = lists[start:start + ASSIGN_CHUNK] if lists is not None else \
                np.argmax(x @ centroids.T, axis=1)  # (c,): inner product, as the quantizer
            chosen = np.ascontiguousarray(chosen, np.int64)
            index.add_core(len(xids), faiss.swig_ptr(x), faiss.swig_ptr(xids), faiss.swig_ptr(chosen))
            out[start:start + len(xids)] = chosen
        return out

    def _list_centroids(self, index: faiss.Index) -> np.ndarray | None:
        """The list centroids (nlist, dim) of the trained IVF ``index`` when its quantizer is a flat inner-product
        index (what ``_build_index`` makes), else None (FAISS assigns)."""
        if self._centroids is None or self._centroids[0] is not index:
            quantizer = faiss.downcast_index(index.quantizer)
            if not (isinstance(quantizer, faiss.IndexFlat) and quantizer.metric_type == faiss.METRIC_INNER_PRODUCT
                    and index.metric_type == faiss.METRIC_INNER_PRODUCT and index.is_trained):
                return None
            self._centroids = (index, quantizer.reconstruct_n(0, index.nlist))
        return self._centroids[1]

    def remove(self, ids: np.ndarray) -> int:
        """Remove ids (absent ones are ignored); returns how many were removed. Types without remove_ids (HNSW)
        are rebuilt from their remaining vectors (O(n))."""
        ids = _sorted_unique(self._check_ids(ids))
        gone = ids[self._present(ids)]
        if len(gone) == 0:
            return 0
        try:
            removed = self._index.remove_ids(gone)
        except RuntimeError:  # not implemented for this type: the index is unchanged, rebuild it
            removed = self._rebuild_without(gone)
        if removed != len(gone):
            raise IndexCorruptError(f"removing {len(gone)} ids removed {removed} vectors: the in-memory index is "
                                    "inconsistent")
        self._delete_ids(gone)
        self._gpu_index = None
        self._note_change(self._removed_since, gone, len(gone))
        return len(gone)

    def _rebuild_without(self, gone: np.ndarray) -> int:
        keep = np.setdiff1d(self._ids_sorted, gone, assume_unique=True)
        vectors = self._index.reconstruct_batch(keep)  # (len(keep), dim)
        fresh = faiss.clone_index(self._index)
        fresh.reset()  # keeps training and search parameters
        if len(keep):
            fresh.add_with_ids(vectors, keep)
        before = self.ntotal
        self._index = fresh
        self._saved = None
        return before - self.ntotal

    # ----------------------------------------------------------------------------------------------- reads
    def ids(self) -> np.ndarray:
        """All ids in the index, sorted (int64, (ntotal,))."""
        return self._ids_sorted.copy()

    def __contains__(self, person_id: int) -> bool:
        return bool(self._present(np.array([person_id], np.int64))[0])

    def reconstruct(self, ids: np.ndarray) -> np.ndarray:
        """Stored vectors (n, dim) float32 for ids, in the given order (approximate for SQ/PQ codes)."""
        ids = self._check_ids(ids)
        missing = ids[~self._present(ids)]
        if len(missing):
            shown = ", ".join(map(str, missing[:5])) + (" ..." if len(missing) > 5 else "")
            raise UnknownIdError(f"{len(missing)} id(s) not in the index: {shown}; check the ids against the store")
        if len(ids) == 0:
            return np.empty((0, self.dim), np.float32)
        return self._index.reconstruct_batch(ids)

    def search(self, queries: np.ndarray, k: int, allow: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-k by inner product for queries (q, dim) -> (scores float32 (q, k), ids int64 (q, k)), best first,
        padded with -inf / -1 when fewer than k exist. allow: only these ids may come back; k results whenever at
        least k of them are in the index (small allow-lists are scored exactly, large ones filtered inside FAISS
        with nprobe escalation for IVF)."""
        queries = self._check_vectors(queries, "queries")
        if not isinstance(k, (int, np.integer)) or k < 1:
            raise IndexInputError(f"k must be a positive integer, got {k!r}")
        k = int(k)
        if allow is None:
            if self.ntotal == 0 or len(queries) == 0:
                return _padded(len(queries), k)
            return self._search_faiss(queries, k, None, want=min(k, self.ntotal))
        allow = _sorted_unique(self._check_ids(np.asarray(allow).ravel()))
        allowed = allow[self._present(allow)]
        if len(allowed) == 0 or len(queries) == 0:
            return _padded(len(queries), k)
        if len(allowed) <= self.exact_allow_max:
            return self._search_exact(queries, k, allowed)
        if len(allowed) == self.ntotal:  # everything is allowed
            return self._search_faiss(queries, k, None, want=min(k, self.ntotal))
        return self._search_faiss(queries, k, allowed, want=min(k, len(allowed)))

    def _search_exact(self, queries: np.ndarray, k: int, cand: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Exact top-k of queries (q, dim) against the stored vectors of the ids `cand` (m,), in blocks. Scoring
        uses faiss.knn (single-threaded for one query, unlike numpy's BLAS, which is slow on a busy machine)."""
        scores, ids = _padded(len(queries), k)  # running top-k, (q, k)
        for start in range(0, len(cand), EXACT_BLOCK):
            block = cand[start:start + EXACT_BLOCK]  # (b,)
            vectors = self._index.reconstruct_batch(block)  # (b, dim)
            block_scores, pos = faiss.knn(queries, vectors, min(k, len(block)), metric=faiss.METRIC_INNER_PRODUCT)
            if start == 0 and block_scores.shape[1] == k:
                scores, ids = block_scores, block[pos]
                continue
            all_scores = np.concatenate([scores, block_scores], axis=1)  # (q, k + kb)
            all_ids = np.concatenate([ids, block[pos]], axis=1)
            top = np.argsort(-all_scores, axis=1, kind="stable")[:, :k]  # (q, k)
            scores, ids = np.take_along_axis(all_scores, top, axis=1), np.take_along_axis(all_ids, top, axis=1)
        return scores, ids

    def _search_faiss(self, queries: np.ndarray, k: int, allowed: np.ndarray | None,
                      want: int) -> tuple[np.ndarray, np.ndarray]:
        """FAISS search (GPU when available and unfiltered). With an allow-list covering a fraction f of the index,
        IVF types probe nprobe / f lists. Rows that found fewer than `want` results are searched again with 4x
        nprobe until nprobe = nlist, then exactly."""
        ivf = ivf_of(self._index)
        scores = ids = None
        if allowed is None:
            gpu_result = self._search_gpu(queries, k)
            if gpu_result is not None:
                scores, ids = gpu_result
        sel = None if allowed is None else _selector(allowed)
        nprobe = None if ivf is None else int(ivf.nprobe)
        if nprobe is not None and allowed is not None:
            # probe 1/fraction more lists, so that as many allowed vectors are scored as in an unfiltered search
            nprobe = min(ivf.nlist, -(-nprobe * self.ntotal // len(allowed)))
        if scores is None:
            scores, ids = self.search_cpu(queries, k, sel, nprobe)
        short = (ids >= 0).sum(axis=1) < want  # (q,)
        while short.any() and ivf is not None and nprobe < ivf.nlist:
            nprobe = min(ivf.nlist, nprobe * 4)
            scores[short], ids[short] = self.search_cpu(queries[short], k, sel, nprobe)
            short[short] = (ids[short] >= 0).sum(axis=1) < want
        if short.any():
            cand = self._ids_sorted if allowed is None else allowed
            scores[short], ids[short] = self._search_exact(queries[short], k, cand)
        scores[ids < 0] = -np.inf
        return scores, ids

    def search_cpu(self, queries: np.ndarray, k: int, sel: faiss.IDSelector | None,
                   nprobe: int | None) -> tuple[np.ndarray, np.ndarray]:
        """The search on the CPU index (the reference of the GPU path): ``sel`` an id selector, ``nprobe`` IVF
        lists probed."""
        if sel is None and nprobe is None:
            return self._index.search(queries, k)
        if nprobe is not None:
            params = faiss.SearchParametersIVF(sel=sel, nprobe=nprobe) if sel is not None \
                else faiss.SearchParametersIVF(nprobe=nprobe)
        elif self._is_hnsw():
            params = faiss.SearchParametersHNSW(sel=sel, efSearch=max(HNSW_EF_SEARCH, k))
        else:
            params = faiss.SearchParameters(sel=sel)
        try:
            return self._index.search(queries, k, params=params)
        except RuntimeError:  # this type does not take search parameters: let the caller fall back to exact
            return _padded(len(queries), k)

    def _is_hnsw(self) -> bool:
        sub = self._index.index if isinstance(self._index, (faiss.IndexIDMap, faiss.IndexIDMap2)) else self._index
        return isinstance(faiss.downcast_index(sub), faiss.IndexHNSW)

    def _search_gpu(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray] | None:
        """Search a GPU copy of the index; None when no GPU is used (disabled, absent, type unsupported, k too big)."""
        if not self._use_gpu or self._gpu_unsupported or k > _GPU_MAX_K:
            return None
        if self._gpu_index is None:
            try:
                self._gpu_index = faiss.index_cpu_to_gpu(_gpu_resources_shared(), 0, self._index)
            except (RuntimeError, AttributeError):
                self._gpu_unsupported = True  # e.g. HNSW has no GPU version: search on the CPU
                return None
        try:
            return self._gpu_index.search(queries, k)
        except RuntimeError:
            return None

    # ----------------------------------------------------------------------------------------------- persistence
    def save(self, folder: Path | str, name: str, manifest: dict) -> None:
        """Atomically save to `folder`. What changed since the index was loaded from or last saved to the same files
        goes to a new tail file `{name}.{gen}.{k}.tail` while the tails stay small (TAIL_MAX_FRACTION of the vectors,
        fewer than TAIL_MAX_FILES); otherwise the whole index goes to a new generation file `{name}.{gen}.faiss`.
        Either file is written as a temp file, fsynced and renamed; then the manifest `{name}.json` (temp file +
        fsync + os.replace + fsync of the folder) names the generation file and its tails; then files of older
        generations are deleted. A crash leaves the old manifest and its files or the new ones.
        The manifest written is `manifest` plus MANIFEST_KEYS (count, max_id, dim, spec, file, size, sha256,
        faiss_version, saved_at, nprobe, buffered, format, base_count, tail), which replace caller keys of the same
        name."""
        check_name(name)
        if not isinstance(manifest, dict):
            raise IndexInputError(f"manifest must be a dict, got {type(manifest).__name__}")
        try:
            json.dumps(manifest)
        except (TypeError, ValueError) as exc:
            raise IndexInputError(f"manifest must be JSON-serialisable: {exc}") from None
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        started = time.time()
        if self._tail_fits(folder, name):
            saved = dict(self._saved, tail=[*self._saved["tail"], self._write_tail(folder, name)])
        else:
            gen = next_generation(folder, name)
            final = folder / generation_file_name(name, gen)
            size, sha = _write_file(final, lambda f: faiss.write_index(self._index, faiss.PyCallbackIOWriter(f.write)))
            saved = {"folder": folder.resolve(), "name": name, "file": final.name, "size": size, "sha256": sha,
                     "base_count": self.ntotal, "tail": []}
        fault_point("index_save")  # reliability tests kill the process here: new file written, manifest not yet
        doc = dict(manifest)
        doc.update(format=MANIFEST_FORMAT, count=self.ntotal,
                   max_id=int(self._ids_sorted[-1]) if self.ntotal else -1, dim=self.dim, spec=self.spec,
                   file=saved["file"], size=saved["size"], sha256=saved["sha256"], base_count=saved["base_count"],
                   tail=saved["tail"], faiss_version=faiss.__version__,
                   saved_at=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), nprobe=self.nprobe,
                   buffered=self.needs_training)
        write_json_atomic(manifest_path(folder, name), doc)
        self._saved = saved
        self._forget_changes()
        gen = generation_of(saved["file"], name)
        for path in orphan_files(folder, name):
            gen_of = generation_of(path.name, name)
            # older generations only, never a newer file of a concurrent writer; and temp manifests and files of this
            # generation that a killed save left behind (written before this save began)
            if (gen_of is not None and gen_of < gen) or (gen_of in (None, gen) and _older_than(path, started)):
                path.unlink(missing_ok=True)

    def _note_change(self, journal: list, entry: object, count: int) -> None:
        """Remember ``count`` ids added (``entry``: ids and their lists) or removed (``entry``: ids) since the last
        save, for a tail; once they are more than a tail may hold
        (or nothing was saved or loaded), forget them: the next save writes the whole index. So a reader that only
        catches up in memory never holds more than TAIL_MAX_FRACTION of the index's ids here."""
        if self._saved is None:
            return
        journal.append(entry)
        self._changed_since += count
        if self._changed_since > TAIL_MAX_FRACTION * max(self.ntotal, 1):
            self._saved = None
            self._forget_changes()

    def _forget_changes(self) -> None:
        self._added_since: list[tuple[np.ndarray, np.ndarray]] = []  # (ids, their IVF lists or -1)
        self._removed_since: list[np.ndarray] = []
        self._changed_since = 0  # ids in both lists

    def _tail_fits(self, folder: Path, name: str) -> bool:
        """Whether this save may write a tail: the manifest on disk still names the files this index was loaded from
        or last saved to, nothing but adds and removes happened since, and the tails stay small."""
        saved = self._saved
        if saved is None or saved["folder"] != folder.resolve() or saved["name"] != name or self.needs_training:
            return False
        try:
            doc = read_manifest_file(folder, name)
        except (OSError, ValueError):
            return False
        if referenced_files(doc) != [saved["file"]] + [t["file"] for t in saved["tail"]]:
            return False
        in_tails = sum(t["added"] + t["removed"] for t in saved["tail"]) + self._changed_since
        return len(saved["tail"]) + 1 < TAIL_MAX_FILES and in_tails <= TAIL_MAX_FRACTION * max(self.ntotal, 1)

    def _write_tail(self, folder: Path, name: str) -> dict:
        """Write what changed since the last save as a tail file: the ids removed, then the ids added (still present)
        with their stored vectors, or for IVF indexes their lists and codes. Returns its manifest entry."""
        empty = np.empty(0, np.int64)
        removed = np.unique(np.concatenate([empty, *self._removed_since]))
        added = np.concatenate([empty, *(i for i, _ in self._added_since)])[::-1]  # newest first
        noted = np.concatenate([empty, *(li for _, li in self._added_since)])[::-1]
        added, newest = np.unique(added, return_index=True)  # (a,) sorted; each id's last add
        still = self._present(added)
        added, lists = added[still], noted[newest[still]]
        vectors = self._index.reconstruct_batch(added) if len(added) else np.empty((0, self.dim), np.float32)
        arrays = {"removed": removed, "ids": added, "lists": lists}
        if isinstance(self._index, faiss.IndexIVF):
            for j in np.flatnonzero(lists < 0):  # lists FAISS chose: its direct map knows them
                lists[j] = faiss.lo_listno(self._index.direct_map.get(int(added[j])))
            arrays["codes"] = self._sa_codes(np.ascontiguousarray(vectors), lists)
        else:
            lists[:] = -1
            arrays["vectors"] = vectors
        gen = generation_of(self._saved["file"], name)
        k = len(self._saved["tail"]) + 1
        while (folder / tail_file_name(name, gen, k)).exists():  # a file a killed save left: never overwritten
            k += 1
        final = folder / tail_file_name(name, gen, k)
        size, sha = _write_file(final, lambda f: np.savez(f, **arrays))
        return {"file": final.name, "size": size, "sha256": sha, "added": int(len(added)), "removed": int(len(removed))}

    def _sa_codes(self, vectors: np.ndarray, lists: np.ndarray) -> np.ndarray:
        """(n, sa_code_size) uint8: the IVF index's codes of ``vectors`` (n, dim) float32 in ``lists`` (n,), each led
        by its list number (FAISS's standalone form, which ``add_sa_codes`` takes). For vectors the index holds (its
        reconstructions), these are the codes it holds."""
        codes = np.empty((len(vectors), self._index.sa_code_size()), np.uint8)
        if len(vectors):
            self._index.encode_vectors(len(vectors), faiss.swig_ptr(vectors), faiss.swig_ptr(lists),
                                       faiss.swig_ptr(codes), True)
        return codes

    def _apply_tail(self, removed: np.ndarray, ids: np.ndarray, added: np.ndarray, lists: np.ndarray) -> None:
        """Apply a tail on load: remove its removed ids, then add its vectors (as stored: not normalised again; IVF
        indexes into the saved lists) or, ``added`` uint8, its IVF codes as they are."""
        self.remove(removed)
        if len(ids) and self._present(ids).any():
            raise IndexCorruptError("a tail adds ids the index already holds")
        if not len(ids):
            return
        known = isinstance(self._index, faiss.IndexIVF) and (lists >= 0).all()
        if known and lists.max() >= self._index.nlist:
            raise IndexCorruptError("a tail names IVF lists the index does not have")
        if added.dtype == np.uint8:
            if not known or added.shape[1] != self._index.sa_code_size() or \
                    not np.array_equal(self._code_lists(added), lists):
                raise IndexCorruptError("its codes do not fit the index")
            self._index.add_sa_codes(added, ids)
        else:
            self._add_with_ids(self._index, added, ids, lists if known else None)
        self._insert_ids(np.sort(ids))

    def _code_lists(self, codes: np.ndarray) -> np.ndarray:
        """(n,) the list numbers that lead the IVF index's standalone codes (n, sa_code_size), little-endian."""
        lead = codes[:, :self._index.coarse_code_size()].astype(np.int64)
        return (lead << (8 * np.arange(lead.shape[1], dtype=np.int64))).sum(axis=1)

    @classmethod
    def load(cls, folder: Path | str, name: str, use_gpu: bool | None = None,
             verify_hash: bool = True) -> tuple[VectorIndex, dict]:
        """Load the (index, manifest) saved under `name` in `folder`: its generation file, then its tails in order.
        Raises IndexMissingError when there is no manifest, IndexCorruptError when the manifest is unreadable, or a
        file it names is missing, truncated, corrupt or does not match it (size, sha256 unless verify_hash=False,
        count, dim, ids)."""
        check_name(name)
        folder = Path(folder)
        mpath = manifest_path(folder, name)

        def corrupt(why: str) -> IndexCorruptError:
            return IndexCorruptError(f"FAISS index {name!r} in {folder} is corrupt: {why}")

        try:
            doc = read_manifest_file(folder, name)
        except (OSError, ValueError) as exc:
            raise corrupt(f"manifest {mpath.name} is unreadable ({exc})") from None
        if doc is None:
            raise IndexMissingError(f"no FAISS index {name!r} in {folder} ({mpath.name} not found)")
        types = {"file": str, "size": int, "sha256": str, "count": int, "dim": int, "spec": str, "max_id": int}
        for key, typ in types.items():
            if not isinstance(doc.get(key), typ) or isinstance(doc.get(key), bool):
                raise corrupt(f"manifest {mpath.name} lacks a valid {key!r}")
        if generation_of(doc["file"], name) is None or not doc["file"].endswith(".faiss"):
            raise corrupt(f"manifest names {doc['file']!r}, not a generation file of {name!r}")
        fpath = folder / doc["file"]
        if not fpath.is_file():
            raise corrupt(f"manifest names {doc['file']} which does not exist")
        size = fpath.stat().st_size
        if size != doc["size"]:
            raise corrupt(f"{doc['file']} has {size} bytes, manifest says {doc['size']} (truncated or replaced)")
        if verify_hash and file_sha256(fpath) != doc["sha256"]:
            raise corrupt(f"{doc['file']} does not match the sha256 in the manifest")
        lie = _reads_beyond_bound(fpath, size)
        if lie:
            raise corrupt(f"FAISS cannot read {doc['file']} ({lie})")
        try:
            index = faiss.read_index(str(fpath))
        except RuntimeError as exc:
            reason = (str(exc).strip().splitlines() or ["unknown error"])[-1]
            raise corrupt(f"FAISS cannot read {doc['file']} ({reason})") from None
        tails = _tail_entries(doc, name)
        if tails is None:
            raise corrupt(f"manifest {mpath.name} lists tails that are not valid tail files of {doc['file']}")
        base_count = doc.get("base_count") if tails else doc["count"]
        if not isinstance(base_count, int) or isinstance(base_count, bool):
            raise corrupt(f"manifest {mpath.name} lacks a valid 'base_count'")
        if index.d != doc["dim"] or index.ntotal != base_count:
            raise corrupt(f"{doc['file']} holds {index.ntotal} vectors of dim {index.d}, manifest says "
                          f"{base_count} of dim {doc['dim']}")
        if not index.is_trained:
            raise corrupt(f"{doc['file']} holds an untrained index")
        pending = None
        if doc.get("buffered"):
            try:
                pending = _build_index(doc["dim"], doc["spec"], doc.get("nprobe"))
            except IndexSpecError as exc:
                raise corrupt(f"manifest spec {doc['spec']!r} cannot be built ({exc})") from None
        try:
            vi = cls(doc["dim"], doc["spec"], index, pending=pending, use_gpu=use_gpu)
        except TypeError:
            raise corrupt(f"{doc['file']} holds a {type(index).__name__}, which stores no ids") from None
        for entry in tails:
            try:
                vi._apply_tail(*_read_tail(folder / entry["file"], entry, doc["dim"], verify_hash))
            except (IndexCorruptError, IndexInputError) as exc:
                raise corrupt(f"{entry['file']}: {exc}") from None
        if vi.ntotal != doc["count"]:
            raise corrupt(f"{doc['file']} and its {len(tails)} tails hold {vi.ntotal} vectors, manifest says "
                          f"{doc['count']}")
        max_id = int(vi._ids_sorted[-1]) if vi.ntotal else -1
        if max_id != doc["max_id"] or (vi.ntotal > 1 and np.any(vi._ids_sorted[1:] == vi._ids_sorted[:-1])):
            raise corrupt(f"{doc['file']} ids do not match the manifest (max id {max_id} vs {doc['max_id']}, or "
                          "duplicate ids)")
        vi._saved = {"folder": folder.resolve(), "name": name, "file": doc["file"], "size": doc["size"],
                     "sha256": doc["sha256"], "base_count": base_count, "tail": tails}
        vi._forget_changes()
        return vi, doc


def _tail_entries(doc: dict, name: str) -> list[dict] | None:
    """The manifest's tail entries, checked (file names of its generation, sizes, counts); None when invalid."""
    tails = doc.get("tail") or []
    gen = generation_of(doc["file"], name)
    types = {"file": str, "size": int, "sha256": str, "added": int, "removed": int}
    if not isinstance(tails, list):
        return None
    for t in tails:
        if not (isinstance(t, dict) and all(isinstance(t.get(k), v) and not isinstance(t.get(k), bool)
                                            for k, v in types.items())
                and t["file"].endswith(".tail") and generation_of(t["file"], name) == gen):
            return None
    return tails


def _read_tail(path: Path, entry: dict, dim: int, verify_hash: bool) -> tuple[np.ndarray, ...]:
    """(removed (r,), ids (a,), vectors (a, dim) float32 or an IVF index's codes (a, code size) uint8, lists (a,)) of
    a tail file, checked against its entry."""
    if not path.is_file():
        raise IndexCorruptError("the file does not exist")
    size = path.stat().st_size
    if size != entry["size"]:
        raise IndexCorruptError(f"it has {size} bytes, manifest says {entry['size']} (truncated or replaced)")
    if verify_hash and file_sha256(path) != entry["sha256"]:
        raise IndexCorruptError("it does not match the sha256 in the manifest")
    try:
        with np.load(path, allow_pickle=False) as z:
            added = "codes" if "codes" in z.files else "vectors"
            removed, ids, added, lists = (z[k] for k in ("removed", "ids", added, "lists"))
    except (OSError, ValueError, KeyError, EOFError, MemoryError, zipfile.BadZipFile) as exc:
        raise IndexCorruptError(f"it cannot be read ({exc})") from None
    a = entry["added"]
    if not (removed.shape == (entry["removed"],) and removed.dtype == np.int64 and ids.shape == (a,)
            and ids.dtype == np.int64 and lists.shape == (a,) and lists.dtype == np.int64
            and (added.shape == (a, dim) and added.dtype == np.float32
                 or added.ndim == 2 and len(added) == a and added.dtype == np.uint8)):
        raise IndexCorruptError("its arrays do not match the manifest")
    if (added.dtype == np.float32 and not np.isfinite(added).all()) or \
            (len(ids) and (ids.min() < 0 or len(np.unique(ids)) != a)):
        raise IndexCorruptError("it holds non-finite vectors or invalid ids")
    return removed, ids, np.ascontiguousarray(added), lists


#: what reading an index file may take beyond the file's own size (its structures are that size, give or take)
READ_SLACK_BYTES = 256 << 20
#: a bounded read's child that has not answered after this long, plus a second for each PROBE_BYTES_PER_S of the
#: file, is killed and the file is read in this process as where there is no fork.
PROBE_TIMEOUT_S = 30.0
PROBE_BYTES_PER_S = 20 << 20


def _reads_beyond_bound(path: Path, size: int) -> str | None:
    """Why FAISS cannot read ``path`` within 4x its size + READ_SLACK_BYTES of memory, tried first in a child process
    whose address space is bounded (None: it can, or no fork here, or the child hung: PROBE_TIMEOUT_S). A header that
    claims a huge length (a corrupt or crafted file) would otherwise make this process allocate it before FAISS finds
    the file short.

    The child is forked from this process when it runs no other Python thread, else from :class:`_ProbeServer`.
    Forking a process that has other threads can hang the child: Python 3.11 clears their thread states there, so
    what their frames held is freed in the child (a PyAV 18.1.1 frame converter's destructor waited forever there for
    threads of its own that the child does not have)."""
    if not hasattr(os, "fork"):
        return None
    timeout = PROBE_TIMEOUT_S + size / PROBE_BYTES_PER_S
    if _only_python_thread():
        reason, hung = _forked_probe(str(path), size, timeout)
    else:
        reason, hung = _ProbeServer.probe(str(path), size, timeout)
    if hung:
        log.warning("reading %s in a bounded child process did not finish; reading it here", path.name)
        return None
    if reason is None:
        return None
    if "MemoryError" in reason or "bad_alloc" in reason or "memory" in reason.lower():
        return f"it claims more memory than a file of {size} bytes can hold"
    return reason


def _only_python_thread() -> bool:
    """Whether this thread is the process's only Python thread (a fork then frees nothing that another holds)."""
    return threading.active_count() == 1 and len(sys._current_frames()) == 1


def _forked_probe(path: str, size: int, timeout: float) -> tuple[str | None, bool]:
    """(why FAISS cannot read ``path`` in a forked child bounded to what this process holds + 4x ``size`` +
    READ_SLACK_BYTES of address space, or None; whether the child was killed after ``timeout`` s without a word)."""
    import resource

    with open("/proc/self/status") as f:
        vm = next((int(line.split()[1]) * 1024 for line in f if line.startswith("VmSize:")), None)
    if vm is None:
        return None, False
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: read the file under the bound and say how it went
        os.close(r)
        code = 0
        try:
            limit = vm + 4 * size + READ_SLACK_BYTES
            resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
            faiss.read_index(path)
        except BaseException as exc:  # noqa: BLE001 - MemoryError, RuntimeError: either way not readable here
            lines = str(exc).strip().splitlines()
            os.write(w, (f"{type(exc).__name__}: {lines[-1] if lines else ''}")[:500].encode())
            code = 1
        os._exit(code)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        if not select.select([f], [], [], timeout)[0]:  # no word, no exit: stuck
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            return None, True
        reason = f.read().decode(errors="replace")
    _, status = os.waitpid(pid, 0)
    return (None if os.waitstatus_to_exitcode(status) == 0 else reason or "the reader died"), False


class _ProbeServer:
    """A clean interpreter that forks the bounded reads' children for a process with other threads. Started at the
    first such read (~0.2 s: Python, numpy and FAISS; by posix_spawn, which runs no Python code in the child, so it
    is safe from a process with threads), it runs one thread, reads a request a JSON line on stdin and answers a line
    on stdout, and ends when this process closes its stdin (at exit, or when it dies). One read at a time."""

    _lock = threading.Lock()
    _proc: subprocess.Popen | None = None

    @classmethod
    def probe(cls, path: str, size: int, timeout: float) -> tuple[str | None, bool]:
        """What :func:`_forked_probe` of ``path`` says in the server; (None, True) when the server does not answer
        (it is stopped, and started again for the next read); (None, False) when it cannot start (a warning)."""
        with cls._lock:
            try:
                proc = cls._proc if cls._proc is not None and cls._proc.poll() is None else cls._start()
            except OSError as e:  # no interpreter to start (an embedded Python): read as where there is no fork
                log.warning("cannot start a process to read %s with bounded memory (%s); reading it here",
                            Path(path).name, e)
                return None, False
            try:
                proc.stdin.write(json.dumps({"path": path, "size": size, "timeout": timeout}).encode() + b"\n")
                proc.stdin.flush()
                answer = (proc.stdout.readline() if select.select([proc.stdout], [], [], timeout + 60)[0]  # + start
                          else b"")
            except OSError:
                answer = b""
            if not answer:  # it died, or hangs itself
                cls._stop()
                return None, True
            doc = json.loads(answer)
            return doc["reason"], doc["hung"]

    @classmethod
    def _start(cls) -> subprocess.Popen:
        cls._stop()
        root = str(Path(__file__).resolve().parents[1])  # where the index package lies
        code = f"import sys; sys.path.insert(0, {root!r}); from index.faiss_index import _ProbeServer; " \
               "_ProbeServer.serve()"
        cls._proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     close_fds=True)
        atexit.register(cls._stop)  # (once: unregistered by _stop)
        return cls._proc

    @classmethod
    def _stop(cls) -> None:
        atexit.unregister(cls._stop)
        if cls._proc is not None:
            cls._proc.kill()
            cls._proc.wait()
            for pipe in (cls._proc.stdin, cls._proc.stdout):
                pipe.close()
            cls._proc = None

    @staticmethod
    def serve() -> None:
        """The server's loop (in its own interpreter)."""
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C stops the process that uses it; its stdin's end ends it
        for line in sys.stdin.buffer:
            req = json.loads(line)
            reason, hung = _forked_probe(req["path"], req["size"], req["timeout"])
            sys.stdout.buffer.write(json.dumps({"reason": reason, "hung": hung}).encode() + b"\n")
            sys.stdout.buffer.flush()


def _selector(allowed: np.ndarray) -> faiss.IDSelector:
    """FAISS selector for sorted distinct ids >= 0: a bitmap over 0..max id when it takes at most 2 MiB or no more
    than the id array itself (ids are SQLite row ids, so it usually does), else the hash set of IDSelectorBatch,
    which is ~20x slower to build."""
    top = int(allowed[-1])
    if top // 8 < max(8 * len(allowed), 2**21):
        flags = np.zeros(top + 1, bool)
        flags[allowed] = True
        bitmap = np.packbits(flags, bitorder="little")  # FAISS reads bit (id & 7) of byte (id >> 3)
        sel = faiss.IDSelectorBitmap(len(bitmap), faiss.swig_ptr(bitmap))
        sel.keep_alive = bitmap  # the selector points into the array
        return sel
    return faiss.IDSelectorBatch(allowed)


def _sorted_unique(ids: np.ndarray) -> np.ndarray:
    """Sorted distinct values of a 1-d int64 array (np.unique is several times slower on numpy 2.x)."""
    if len(ids) < 2 or np.all(ids[1:] > ids[:-1]):  # already sorted and distinct, e.g. ids from SQLite
        return ids
    ids = np.sort(ids)
    return ids[np.concatenate(([True], ids[1:] != ids[:-1]))] if len(ids) else ids


def _padded(nq: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(scores (nq, k) = -inf, ids (nq, k) = -1)."""
    return np.full((nq, k), -np.inf, np.float32), np.full((nq, k), -1, np.int64)
