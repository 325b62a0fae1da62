"""Persons/s of ``Store.write`` by transaction size, interleaved in one process.

On a shared 2-core machine one ``write_bench`` row can move by 2x between runs of the same code (docs/benchmarks.md),
which hides differences of 10-30%. Here every size writes the same number of persons a group, in the same process
and into the same store (``write_bench``'s realistic persons, seeded store reused), and the groups alternate the
sizes' order, so the machine's phases hit every size alike. Each group is settled (the FAISS add of its last
transaction awaited) before the next starts; the index is not saved. With ``--checkpoints``, each size is written
twice a group: with the store's checkpoints (``db.engine.Checkpointer``, a thread of their own) and with SQLite's
own, inside the commit that crosses 8,192 WAL pages (the writer before issue 26's sixteenth pass).

    python bench/transaction_bench.py --data-dir /work/bench-data/wb3 --transactions 256 1024 4096
    python bench/transaction_bench.py --data-dir /work/bench-data/wb3 --transactions 1024 --checkpoints
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import header  # noqa: E402
from write_bench import Workload, open_store, seeded  # noqa: E402


def checkpoints_in(store, how: str) -> None:
    """The store's checkpoints from now on: ``thread`` (its Checkpointer, as shipped) or ``commit`` (SQLite's own,
    in the commit that crosses 8,192 pages; the Checkpointer idle). Reaches into the Database: a bench's switch."""
    from db.sql import dbapi

    checkpoints = store.db._checkpoints
    checkpoints.close()  # a running checkpoint finishes first
    with store.db.session() as s:
        if how == "thread":
            dbapi(s).execute("PRAGMA wal_autocheckpoint=0")
            checkpoints.__dict__.pop("after_commit", None)  # the class's method again
        else:
            dbapi(s).execute("PRAGMA wal_autocheckpoint=8192")
            checkpoints.after_commit = lambda: None


def interleaved(path: Path, variants: list[tuple[int, str]], groups: int, persons: int,
                driver: bool) -> dict[tuple[int, str], list[float]]:
    """persons/s of each (transaction size, checkpoints) in ``variants``, one value a group of ``persons``
    persons."""
    from a2v_search.heap import frozen_heap

    store = open_store(path, create=True)
    try:
        store.indexes.get()
        work = Workload(f"/run/transactions/{time.time_ns()}", seed=int(time.time()) % 1000, driver=driver)
        for _ in range(16):  # the files that later transactions replace and duplicate; the lists' first growth
            store.write(work.batch(1024))
            work.committed(store.media_states(work.pending))
        rates: dict[tuple[int, str], list[float]] = {v: [] for v in variants}
        with frozen_heap():
            for g in range(groups):
                for n, how in variants if g % 2 == 0 else variants[::-1]:
                    batches = [work.batch(n) for _ in range(max(1, persons // n))]
                    store.indexes.settle()
                    checkpoints_in(store, how)
                    t0 = time.perf_counter()
                    written = sum(len(store.write(items)) for items in batches)
                    store.indexes.settle()
                    rates[n, how].append(written / (time.perf_counter() - t0))
                    work.committed(store.media_states(work.pending))
        return rates
    finally:
        checkpoints_in(store, "thread")
        store.close(save=False)  # the next open catches the index up; the next write_bench run removes these media


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--transactions", type=int, nargs="+", default=[256, 1024, 4096],
                        help="persons per Store.write transaction, the sizes compared")
    parser.add_argument("--size", type=int, default=1_000_000, help="persons in the seeded store")
    parser.add_argument("--groups", type=int, default=6, help="groups; each writes every size once")
    parser.add_argument("--persons", type=int, default=16_384, help="persons each size writes a group")
    parser.add_argument("--driver", action="store_true", help="the Ray driver's shape: one person a media")
    parser.add_argument("--checkpoints", action="store_true",
                        help="each size with the store's checkpoints (a thread) and with SQLite's own (in a commit)")
    parser.add_argument("--data-dir", type=Path, default=None,
                        help="where write_bench keeps its seeded stores (default: a temporary folder, seeded here and "
                             "removed after)")
    args = parser.parse_args()
    if min(args.transactions) < 1 or args.groups < 1 or args.persons < 1:
        parser.error("--transactions, --groups and --persons must be at least 1")
    header("transaction_bench.py")
    tmp = None if args.data_dir else Path(tempfile.mkdtemp(prefix="a2v-transactions-"))
    try:
        path = seeded(args.data_dir or tmp, args.size, 1024)
        variants = [(n, how) for n in args.transactions for how in (("thread", "commit") if args.checkpoints
                                                                   else ("thread",))]
        rates = interleaved(path, variants, args.groups, args.persons, args.driver)
    finally:
        if tmp is not None:  # a store seeded for this run only (GBs at 1M)
            shutil.rmtree(tmp, ignore_errors=True)
    print(f"\nStore.write into {args.size:,} persons ({'one person a media' if args.driver else 'realistic media'}), "
          f"{args.groups} groups of {args.persons:,} persons a size, interleaved\n")
    print("| persons a transaction | checkpoints | median persons/s | mean | each group |\n|---:|---|---:|---:|---|")
    for (n, how), got in rates.items():
        print(f"| {n:,} | {'a thread' if how == 'thread' else 'in the commit'} | {statistics.median(got):,.0f} | "
              f"{statistics.mean(got):,.0f} | " + " / ".join(f"{r:,.0f}" for r in got) + " |")


if __name__ == "__main__":
    main()
