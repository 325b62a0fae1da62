"""Benchmark of the HTTP server (``manage.py serve``): text-query requests/s and p50/p99 latency over loopback HTTP
with 1, 4 and 16 concurrent clients, next to the same queries through the Python API in the same run.

    python bench/serve_bench.py [--persons 100000] [--clients 1 4 16] [--requests 300] [--seconds 20]

A store of ``--persons`` synthetic persons is built in a temporary folder the way bench/search_bench.py builds one
(``Store.write``: clustered activity profiles, 512-d visual vectors, a 768-d language space; the automatic index
type). The server is the real command, ``python manage.py serve --data-dir TMP --port P``, in its own process.
Queries are structured PaSta texts ("hand: hold; head: drink with", k=10), so no text model runs and the numbers
are the search and the HTTP layer. Each client (a thread with its own ``httpx.Client``) sends queries one after
another; a level stops after ``--requests`` requests or ``--seconds``, whichever comes first. The Python API
(``A2VSearch.search_text`` on the same store, in this process) runs the same queries with as many threads.

Overhead: HTTP p50 / API p50 latency and API / HTTP throughput at each level (1.0 = no overhead).
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import ROOT, header, log  # noqa: E402
from search_bench import build_store  # noqa: E402

PARTS_STATES = [
    "hand: hold", "head: drink with", "foot: kick", "hip: sit on", "arm: hug", "leg: kneel", "head: eat",
    "hand: throw", "foot: stand on", "leg: walk with", "hand: carry", "arm: swing", "head: talk with something",
    "foot: tread on", "hand: push", "hand: point to", "head: look at", "leg: ride", "hand: cut with", "arm: hold",
]


def queries(n: int, seed: int = 0) -> list[str]:
    """n structured PaSta texts of one to three states, with weights."""
    from a2v_search import taxonomy as tx

    rng = np.random.default_rng(seed)
    names = [s for s in PARTS_STATES if s in tx.PASTA_NAMES]
    out = []
    for _ in range(n):
        picked = rng.choice(names, rng.integers(1, 4), replace=False)
        out.append("; ".join(f"{s}={rng.choice([1, 1, 2])}" for s in picked))
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(data_dir: Path, port: int) -> subprocess.Popen:
    import httpx

    proc = subprocess.Popen([sys.executable, str(ROOT / "manage.py"), "serve", "--data-dir", str(data_dir),
                             "--port", str(port)], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the server exited: {proc.stderr.read().decode()[-2000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/api/stats", timeout=5).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise SystemExit("the server did not answer within 120 s")


def run_level(clients: int, texts: list[str], call, max_requests: int, max_seconds: float) -> dict:
    """``clients`` threads each calling ``call(session, text)`` in turn until the shared budget is spent."""
    latencies: list[float] = []
    lock = threading.Lock()
    counter = iter(range(max_requests))
    t_end = time.perf_counter() + max_seconds
    errors = []

    def worker(w: int) -> None:
        session = call.session() if hasattr(call, "session") else None
        try:
            while time.perf_counter() < t_end:
                with lock:
                    i = next(counter, None)
                if i is None:
                    return
                t0 = time.perf_counter()
                try:
                    call(session, texts[(i * 7 + w) % len(texts)])
                except Exception as e:  # noqa: BLE001 - reported, not hidden
                    errors.append(repr(e))
                    return
                with lock:
                    latencies.append(time.perf_counter() - t0)
        finally:
            if session is not None:
                session.close()

    t0 = time.perf_counter()
    threads = [threading.Thread(target=worker, args=(w,)) for w in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    if errors:
        raise SystemExit(f"{len(errors)} requests failed, e.g. {errors[0]}")
    ms = np.asarray(latencies) * 1000
    return {"n": len(ms), "per_s": len(ms) / wall, "p50": float(np.median(ms)), "p99": float(np.percentile(ms, 99))}


class HttpCall:
    def __init__(self, port: int):
        self.url = f"http://127.0.0.1:{port}/api/search"

    def session(self):
        import httpx

        return httpx.Client(timeout=60)

    def __call__(self, session, text: str) -> None:
        r = session.get(self.url, params={"text": text, "k": 10})
        if r.status_code != 200 or len(r.json()["results"]) != 10:
            raise RuntimeError(f"HTTP {r.status_code}: {r.text[:200]}")


class ApiCall:
    def __init__(self, api):
        self.api = api

    def __call__(self, _session, text: str) -> None:
        if len(self.api.search_text(text, k=10)) != 10:
            raise RuntimeError("fewer than 10 results")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--persons", type=int, default=100_000)
    ap.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16])
    ap.add_argument("--requests", type=int, default=300, help="requests per level (at most)")
    ap.add_argument("--seconds", type=float, default=20.0, help="seconds per level (at most)")
    ap.add_argument("--queries", type=int, default=50, help="distinct query texts")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    from a2v_search.api import A2VSearch

    header("serve_bench.py")
    tmp = Path(tempfile.mkdtemp(prefix="a2v_serve_bench_"))
    proc = None
    try:
        data = tmp / "data"
        build = build_store(data, args.persons, Path("bench-no-text-model"), batch=2000, seed=args.seed)
        texts = queries(args.queries, args.seed)
        port = free_port()
        t0 = time.perf_counter()
        proc = start_server(data, port)
        log(f"server up in {time.perf_counter() - t0:.1f} s on port {port}")
        http = HttpCall(port)
        api = A2VSearch.open(data)
        api_call = ApiCall(api)
        for call in (http, api_call):  # warm-up: indexes loaded, caches filled
            run_level(2, texts, call, 20, 30)
        rows = []
        for c in args.clients:
            h = run_level(c, texts, http, args.requests, args.seconds)
            log(f"HTTP {c} clients: {h['n']} requests, {h['per_s']:.1f}/s, p50 {h['p50']:.1f} ms")
            a = run_level(c, texts, api_call, args.requests, args.seconds)
            log(f"API {c} threads: {a['n']} queries, {a['per_s']:.1f}/s, p50 {a['p50']:.1f} ms")
            rows.append((c, h, a))
        api.close()
    finally:
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
        shutil.rmtree(tmp, ignore_errors=True)

    print(f"Store: {args.persons:,} persons, indexes {build['specs']}; {len(texts)} structured PaSta queries, k=10; "
          f"at most {args.requests} requests or {args.seconds:g} s per level; loopback HTTP to "
          f"`manage.py serve` in another process; CPU cores {os.cpu_count()}.\n")
    print("| clients | HTTP req/s | HTTP p50 ms | HTTP p99 ms | API q/s | API p50 ms | API p99 ms | "
          "p50 HTTP/API | throughput API/HTTP | requests |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for c, h, a in rows:
        print(f"| {c} | {h['per_s']:.1f} | {h['p50']:.1f} | {h['p99']:.1f} | {a['per_s']:.1f} | {a['p50']:.1f} | "
              f"{a['p99']:.1f} | {h['p50'] / a['p50']:.2f} | {a['per_s'] / h['per_s']:.2f} | {h['n']} / {a['n']} |")


if __name__ == "__main__":
    main()
