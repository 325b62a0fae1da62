"""Benchmark of the FAISS vector store (index/): the index `choose_spec` picks vs the exact Flat index, in one run.

    python bench/index_bench.py [--dims 512 768] [--sizes 10000 100000 1000000] [--queries 1000] [--quick]

Data: clustered synthetic unit vectors (100 super-centres -> 1000-10000 cluster centres -> points with gaussian
noise, normalised); queries are drawn the same way, not from the base set. For each (dim, N) it measures build
time (train + add), size of the serialised index, single-query latency p50/p99, batch throughput, recall@10
against exact search and the single-query speed-up over exact search, and prints a markdown table.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from index import VectorIndex, choose_spec  # noqa: E402

K = 10


def machine() -> str:
    """CPU model, cores, library versions and thread count, in one line."""
    model = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return (f"{model}, {cores} cores, faiss {faiss.__version__} ({faiss.get_compile_options().strip()}), "
            f"OpenMP threads {faiss.omp_get_max_threads()}, numpy {np.__version__}, Python {platform.python_version()}"
            f", load average {load_average()}")


def load_average() -> str:
    """1-minute load average: other processes on the machine slow every number down."""
    return f"{os.getloadavg()[0]:.2f}" if hasattr(os, "getloadavg") else "n/a"


def unit(x: np.ndarray) -> np.ndarray:
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


class ClusteredData:
    """Unit vectors around n_centres cluster centres, which are themselves grouped around 100 super-centres."""

    def __init__(self, dim: int, n_centres: int, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.dim = dim
        supers = unit(self.rng.standard_normal((100, dim), dtype=np.float32))
        noise = unit(self.rng.standard_normal((n_centres, dim), dtype=np.float32))
        self.centres = unit(supers[self.rng.integers(0, 100, n_centres)] + 0.8 * noise)  # (c, dim)
        self.spread = self.rng.uniform(0.5, 1.0, n_centres).astype(np.float32)  # (c,) noise norm per cluster

    def draw(self, n: int, block: int = 100_000) -> np.ndarray:
        out = np.empty((n, self.dim), np.float32)
        for start in range(0, n, block):
            m = min(block, n - start)
            c = self.rng.integers(0, len(self.centres), m)
            noise = unit(self.rng.standard_normal((m, self.dim), dtype=np.float32))
            out[start:start + m] = unit(self.centres[c] + self.spread[c, None] * noise)
        return out


def serialised_bytes(vi: VectorIndex) -> int:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "index.faiss"
        faiss.write_index(vi._index, str(path))
        return path.stat().st_size


def latency_ms(vi: VectorIndex, queries: np.ndarray, n_single: int) -> tuple[np.ndarray, int]:
    """Single-query latencies (ms) over the first n_single queries, one search call each, and the OpenMP thread
    count used. Measured with the default thread count and with 1 thread; the run with the lower p50 is kept
    (exact search parallelises one query over threads, which costs more than it gains on a busy machine)."""
    default = faiss.omp_get_max_threads()
    best: tuple[np.ndarray, int] | None = None
    for threads in sorted({default, 1}, reverse=True):
        faiss.omp_set_num_threads(threads)
        try:
            for q in queries[:10]:  # warm-up
                vi.search(q[None], K)
            times = []
            for q in queries[:n_single]:
                t0 = time.perf_counter()
                vi.search(q[None], K)
                times.append(time.perf_counter() - t0)
        finally:
            faiss.omp_set_num_threads(default)
        lat = np.array(times) * 1000
        if best is None or np.median(lat) < np.median(best[0]):
            best = (lat, threads)
    return best


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(np.intersect1d(f, t)) / K for f, t in zip(found, truth, strict=True)]))


def measure(name: str, vi: VectorIndex, build_s: float, queries: np.ndarray, n_single: int,
            truth: np.ndarray | None) -> tuple[dict, np.ndarray]:
    """One table row for an index, and its batch results (q, K)."""
    t0 = time.perf_counter()
    _, found = vi.search(queries, K)
    batch_s = time.perf_counter() - t0
    lat, threads = latency_ms(vi, queries, n_single)
    row = dict(index=name, build_s=build_s, size_mb=serialised_bytes(vi) / 2**20, threads=threads,
               p50=float(np.median(lat)),
               p99=float(np.percentile(lat, 99)), qps=len(queries) / batch_s,
               recall=1.0 if truth is None else recall_at_k(found, truth))
    return row, found


def filtered_lines(vi: VectorIndex, spec: str, base: np.ndarray, ids: np.ndarray, queries: np.ndarray,
                   n_single: int, seed: int) -> list[str]:
    """Single-query p50 and recall@10 (vs exact search restricted to the allow-list) of filtered search with
    random allow-lists covering 0.1%, 1%, 10% and 50% of the store."""
    rng = np.random.default_rng(seed)
    queries = queries[:n_single]
    lines = []
    for fraction in (0.001, 0.01, 0.1, 0.5):
        pick = np.sort(rng.choice(len(ids), max(K, int(len(ids) * fraction)), replace=False))
        allow = ids[pick]
        sims = queries @ base[pick].T  # (q, m) exact scores of the allowed vectors
        truth = allow[np.argsort(-sims, axis=1)[:, :K]]
        found = np.stack([vi.search(q[None], K, allow=allow)[1][0] for q in queries])
        t0 = time.perf_counter()
        times = []
        for q in queries:
            t0 = time.perf_counter()
            vi.search(q[None], K, allow=allow)
            times.append(time.perf_counter() - t0)
        lines.append(f"| {vi.dim} | {len(ids):,} | {spec} | {fraction:.1%} ({len(allow):,}) | "
                     f"{'exact' if len(allow) <= vi.exact_allow_max else 'FAISS selector'} | "
                     f"{recall_at_k(found, truth):.3f} | {np.median(times) * 1000:.2f} |")
    return lines


def build(dim: int, spec: str, ids: np.ndarray, base: np.ndarray) -> tuple[VectorIndex, float]:
    t0 = time.perf_counter()
    vi = VectorIndex.create(dim, spec)
    vi.add(ids, base)
    if vi.needs_training:  # fewer vectors than the spec wants for training: train on what there is
        vi.train()
    return vi, time.perf_counter() - t0


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def run_size(dim: int, n: int, args: argparse.Namespace) -> tuple[list[dict], list[str], list[str]]:
    """Rows for (dim, n): exact Flat, the chosen index, any --specs; plus nprobe sweep and filtered search lines."""
    data = ClusteredData(dim, int(np.clip(n // 100, 1000, 10_000)), seed=args.seed + dim + n)
    base, queries = data.draw(n), data.draw(args.queries)
    ids = np.arange(n, dtype=np.int64) * 7 + 1000  # non-contiguous person ids
    n_single = min(args.single, args.queries)
    log(f"d={dim} N={n}: data ready")

    exact, build_s = build(dim, "flat", ids, base)
    flat_row, truth = measure("Flat (exact)", exact, build_s, queries, n_single, None)
    del exact
    log(f"d={dim} N={n}: exact p50 {flat_row['p50']:.2f} ms, load {load_average()}")
    rows = [flat_row]
    sweep: list[str] = []
    filtered: list[str] = []
    chosen = choose_spec(n, dim, args.memory_budget_mb)
    specs = [chosen] + [s for s in args.specs if s != chosen]
    for spec in specs:
        label = f"{spec} (chosen)" if spec == chosen else spec
        if spec == "Flat":
            rows.append({**flat_row, "index": label})
            continue  # (filtered search on Flat is exact by construction)
        vi, build_s = build(dim, spec, ids, base)
        row, _ = measure(label, vi, build_s, queries, n_single, truth)
        rows.append(row)
        log(f"d={dim} N={n}: {spec} built in {build_s:.1f} s, recall {row['recall']:.3f}, p50 {row['p50']:.2f} ms")
        if args.filtered and spec == chosen:
            filtered += filtered_lines(vi, spec, base, ids, queries, min(100, n_single), args.seed)
        if args.sweep and vi.nprobe is not None:
            default = vi.nprobe
            for nprobe in sorted({max(1, default // 4), max(1, default // 2), default, default * 2, default * 4}):
                vi.nprobe = nprobe
                _, found = vi.search(queries, K)
                lat, _ = latency_ms(vi, queries, min(200, n_single))
                sweep.append(f"| {dim} | {n:,} | {spec} | {nprobe}{' (default)' if nprobe == default else ''} | "
                             f"{recall_at_k(found, truth):.3f} | {np.median(lat):.2f} |")
            vi.nprobe = default
        del vi
    for row in rows:
        row.update(dim=dim, n=n, speedup=flat_row["p50"] / row["p50"])
    return rows, sweep, filtered


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dims", type=int, nargs="+", default=[512, 768])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--queries", type=int, default=1000, help="queries for recall and batch throughput")
    parser.add_argument("--single", type=int, default=300, help="queries timed one at a time")
    parser.add_argument("--specs", nargs="*", default=[], help="more FAISS factory strings to compare")
    parser.add_argument("--memory-budget-mb", type=int, default=None, help="passed to choose_spec")
    parser.add_argument("--no-sweep", dest="sweep", action="store_false", help="skip the nprobe sweep of IVF indexes")
    parser.add_argument("--filtered", action="store_true", help="also time filtered search (allow-lists)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="small run: sizes 10k and 60k, 200 queries, no sweep")
    args = parser.parse_args()
    if args.quick:
        args.sizes, args.queries, args.single, args.sweep = [10_000, 60_000], 200, 100, False

    print(f"Machine: {machine()}\n")
    print(f"Command: python bench/index_bench.py {' '.join(sys.argv[1:])}\n")
    rows, sweep, filtered = [], [], []
    for dim in args.dims:
        for n in args.sizes:
            r, s, f = run_size(dim, n, args)
            rows += r
            sweep += s
            filtered += f
    print("| dim | N | index | build s | size MB | p50 ms | p99 ms | threads | batch q/s | recall@10 | speed-up |")
    print("|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['dim']} | {r['n']:,} | {r['index']} | {r['build_s']:.1f} | {r['size_mb']:.0f} | {r['p50']:.2f} | "
              f"{r['p99']:.2f} | {r['threads']} | {r['qps']:,.0f} | {r['recall']:.3f} | {r['speedup']:.1f}x |")
    print("\np50/p99: one query per search call (threads: OpenMP threads of the faster of the default and 1); "
          "batch: one call with all queries, default threads; speed-up: exact p50 / p50.")
    if sweep:
        print("\nnprobe sweep of the IVF indexes (recall@10 vs exact, single-query p50):\n")
        print("| dim | N | index | nprobe | recall@10 | p50 ms |")
        print("|---:|---:|---|---:|---:|---:|")
        print("\n".join(sweep))
    if filtered:
        print("\nFiltered search with a random allow-list (single query; recall@10 vs exact search over the "
              "allowed ids):\n")
        print("| dim | N | index | allowed | path | recall@10 | p50 ms |")
        print("|---:|---:|---|---:|---|---:|---:|")
        print("\n".join(filtered))
    print(f"\nLoad average at the end: {load_average()}")
    goal = [r for r in rows if r["n"] >= 1_000_000 and r["index"].endswith("(chosen)")]
    for r in goal:
        ok = r["recall"] >= 0.95 and r["p50"] <= 5 and r["speedup"] >= 20
        print(f"\nGoal at d={r['dim']} N={r['n']:,} (recall@10 >= 0.95, p50 <= 5 ms, >= 20x exact): "
              f"{'met' if ok else 'NOT met'}")


if __name__ == "__main__":
    main()
