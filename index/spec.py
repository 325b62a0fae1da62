"""Which FAISS index to build: `choose_spec` and the defaults that go with a spec (nprobe, training size)."""

from __future__ import annotations

import math
import re

# Exact search while one query scans at most FLAT_MAX_BYTES of vectors (~6 ms at ~10 GB/s on 2 CPU cores):
# 21k vectors at d=768, 32k at d=512. See docs/index.md.
FLAT_MAX_BYTES = 64 * 2**20
# IVF lists keep full float32 vectors while they total at most IVF_FLAT_MAX_BYTES, 8-bit codes above.
IVF_FLAT_MAX_BYTES = 2**30
# IVF training: k-means wants >= 39 points per list (FAISS warns below that); more adds training time, not recall.
TRAIN_POINTS_PER_LIST = 39
TRAIN_MAX_POINTS_PER_LIST = 50
# PQ codebooks (8 bits: 256 centroids per sub-quantizer) want >= 39 x 256 training points.
PQ_MIN_TRAIN = 39 * 256
# Most PQ sub-quantizers chosen (IVF-PQ precomputes nlist x m x 256 floats of tables).
PQ_MAX_M = 64
# Lists probed per query by default, as a fraction of nlist (and at least NPROBE_MIN).
NPROBE_FRACTION = 1 / 128
NPROBE_MIN = 8


def choose_nlist(n: int) -> int:
    """Number of IVF lists for n vectors: the power of two nearest sqrt(n) (256 at 100k, 1024 at 1M), with >= 39
    training points per list. Every added vector is compared with every list's centroid, so adds cost O(nlist): at
    1M (d=512, SQ8, bench/index_bench.py) 1024 lists against 2048 gave recall@10 0.982 against 0.979, a single query
    in 1.13 against 1.38 ms, a build in 26.5 against 73.6 s, and halve the writer's list assignment (32 -> 16 us a
    person). 4*sqrt(n) (4096 at 1M) had given the same recall and latency as 2*sqrt(n), 1.8-3.6x slower to build."""
    nlist = 2 ** round(math.log2(max(math.sqrt(max(n, 1)), 1)))
    while nlist > 16 and n < TRAIN_POINTS_PER_LIST * nlist:
        nlist //= 2
    return max(nlist, 16)


def default_nprobe(nlist: int) -> int:
    """Lists probed per query by default for an IVF index with nlist lists."""
    return min(nlist, max(NPROBE_MIN, round(nlist * NPROBE_FRACTION)))


def choose_spec(n: int, dim: int, memory_budget_mb: int | None = None) -> str:
    """FAISS factory string for a store of about n vectors of dimension dim (float32, 4 bytes per value).

    - n*dim*4 <= FLAT_MAX_BYTES (64 MiB: 21k vectors at d=768, 32k at d=512): "Flat", exact search, no training.
    - otherwise IVF with nlist = choose_nlist(n) lists (the power of two nearest sqrt(n): 256 at 100k, 1024 at
      1M), nprobe = default_nprobe(nlist) = nlist/128 (at least 8) of them probed per query:
      - "IVF{nlist},Flat" (full vectors, recall@10 ~1.0) while n*dim*4 <= IVF_FLAT_MAX_BYTES (1 GiB: 350k vectors
        at d=768, 520k at d=512) and within memory_budget_mb;
      - "IVF{nlist},SQ8" above (1 byte per dimension, a quarter of the memory, and a query scans 4x fewer bytes;
        recall@10 ~0.98 at 1M) or when the budget only fits 1 byte per dimension;
      - "IVF{nlist},SQ4" (half a byte), then "IVF{nlist},PQ{m}" (m <= 64 bytes per vector, m a divisor of dim)
        for smaller budgets.
    - Below the exact threshold with a budget too small for float32: "SQ8" (exact scan of 8-bit codes).
    Only Flat, SQ and IVF types are chosen: all support remove_ids, reconstruct (IVF through a hash-table direct
    map) and filtered search (IVF with nprobe escalation). HNSW is never chosen (no removal, weak filtering).
    Measured with bench/index_bench.py, see docs/index.md.
    """
    if n < 0 or dim < 1:
        raise ValueError(f"choose_spec needs n >= 0 and dim >= 1, got n={n}, dim={dim}")
    budget = None if memory_budget_mb is None else memory_budget_mb * 2**20

    def fits(nbytes: int) -> bool:
        return budget is None or nbytes <= budget

    full = n * dim * 4
    if full <= FLAT_MAX_BYTES:
        return "Flat" if fits(full) else "SQ8"
    nlist = choose_nlist(n)
    if full <= IVF_FLAT_MAX_BYTES and fits(full):
        return f"IVF{nlist},Flat"
    if fits(n * dim):
        return f"IVF{nlist},SQ8"
    if fits(n * dim // 2):
        return f"IVF{nlist},SQ4"
    m = max(8, min(PQ_MAX_M, dim // 2, int(budget // max(n, 1))))
    while dim % m:
        m -= 1
    return f"IVF{nlist},PQ{m}"


def exact_scores(spec: str) -> bool:
    """True for FAISS index types that keep the vectors themselves (Flat, IVF..,Flat, HNSW), so their scores are
    the exact cosines; False for quantised ones (SQ, PQ, ...), whose candidates a caller re-scores exactly."""
    return not re.search(r"SQ|PQ|RQ|LSH|RaBitQ", spec)
