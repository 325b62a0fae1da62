"""Benchmark of ``ingest --engine ray`` against the local engine on this machine, in one run, and of the driver's
write rate (the ceiling of the design: one driver writes every person).

    python bench/ray_bench.py [--images N] [--persons P] [--batch-size B] [--quick]

Rows "local" and "ray": the same generated 640x480 JPEGs (``detector="none"``: one person per image) into two new
stores with the tiny random CLIP + BERT of ``bench/common.py``, so that the numbers are the pipeline's own cost; the
Ray row runs on a local Ray started here with every core (one model actor, the other cores decoding). Their ratio is
the Ray overhead on one machine, also without the actor's start-up (stage ``start``). Then P synthetic
ViT-B/16-shaped persons (512-d visual) are written through ``Store.write`` in transactions of 256, as the driver
writes them: persons/s of SQLite (and the FAISS add) alone, then the index save.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402
    VISUAL_DIM,
    SyntheticPersons,
    header,
    log,
    random_language_matrices,
    tiny_models,
    write_jpegs,
)

STAGES = ("discover", "start", "queue", "decode", "wait", "detect", "encode", "transfer", "write", "save")


def ingest_row(engine: str, data_dir: Path, images: Path, n: int, clip: Path, bert: Path, batch: int) -> dict:
    from a2v_search.api import A2VSearch

    a2v = A2VSearch.open(data_dir, model=str(clip), text_model=str(bert), device="cpu")
    kw = {"engine": "ray", "workers": 1} if engine == "ray" else {}
    report = a2v.ingest([str(images)], detector="none", batch_size=batch, **kw)
    a2v.close()
    if report.failures or report.persons_added != n:
        raise SystemExit(f"{engine}: stored {report.persons_added} of {n} persons, failures {report.failures[:3]}")
    stages = {k: round(v, 2) for k, v in report.stages.items()}
    log(f"{engine}: {n} persons in {report.seconds:.1f} s, stages {stages}")
    return {"engine": engine, "persons": n, "seconds": report.seconds, "rate": report.persons_per_s,
            **{k: report.stages.get(k, 0.0) for k in STAGES}}


def write_rate(data_dir: Path, n: int, batch: int = 256) -> tuple[float, float]:
    """(persons/s of Store.write in transactions of ``batch``, seconds to build and save the indexes after)."""
    from a2v_search.models.language import LanguageSpace
    from a2v_search.store import Store
    from db.values import NewMedia, NewPerson

    language = LanguageSpace(*random_language_matrices(), text_model="bench-text")
    space = {"visual_model": "bench:random-vitb16", "heads": "bench:random", "text_model": "bench-text",
             "phrases": "bench", "visual_dim": VISUAL_DIM,
             "spec": {"model": None, "checkpoint": None, "trust_checkpoint": False, "text_model": "bench-text"}}
    gen = SyntheticPersons()
    store = Store(data_dir, create=True).lock("ray_bench")
    try:
        store.space.ensure(space, language)
        store.indexes.get()
        batches = []
        for start in range(0, n, batch):
            d = gen.draw(min(batch, n - start))
            batches.append([NewMedia(path=f"/bench/{start + j:09d}.jpg", content_hash=f"h{start + j}", size=1,
                                     mtime=0.0, kind="image", collection="default", width=640, height=480,
                                     persons=[NewPerson(box=[10.0, 20.0, 200.0, 400.0], pasta=d["pasta"][j],
                                                        verbs=d["verbs"][j], parts=d["parts"][j],
                                                        visual=d["visual"][j])])
                            for j in range(len(d["visual"]))])
        t0 = time.perf_counter()
        for items in batches:
            store.write(items)
        write_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        store.indexes.save()
        save_s = time.perf_counter() - t0
    finally:
        store.close()
    return n / write_s, save_s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=None, help="images per engine (default 200, quick 40)")
    parser.add_argument("--persons", type=int, default=None, help="persons for the write rate (default 20000, "
                                                                  "quick 2000)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--quick", action="store_true", help="smoke run: 40 images, 2000 persons")
    args = parser.parse_args()
    n = args.images or (40 if args.quick else 200)
    n_write = args.persons or (2000 if args.quick else 20000)
    header("ray_bench.py")
    import ray

    with tempfile.TemporaryDirectory(prefix="a2v_ray_bench_") as tmp:
        tmp = Path(tmp)
        clip, bert = tiny_models(tmp / "models")
        write_jpegs(tmp / "images", n)
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # a throwaway local instance: no token in ~/.ray
        os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(Path(__file__).resolve().parents[1]),
                                                                 os.environ.get("PYTHONPATH")]))
        t0 = time.perf_counter()
        ray.init(num_cpus=os.cpu_count(), _temp_dir=str(tmp / "ray"), include_dashboard=False, log_to_driver=False)
        ray_start = time.perf_counter() - t0
        try:
            rows = [ingest_row(e, tmp / f"store_{e}", tmp / "images", n, clip, bert, args.batch_size)
                    for e in ("local", "ray")]
        finally:
            ray.shutdown()
        rate, save_s = write_rate(tmp / "store_write", n_write)
        log(f"driver write: {rate:.0f} persons/s, index build and save {save_s:.1f} s for {n_write} persons")

    print(f"{n} JPEGs 640x480, detector none (one person per image), tiny random CLIP + BERT on the CPU, batch "
          f"{args.batch_size}; Ray: local instance with {os.cpu_count()} CPUs (started in {ray_start:.1f} s, not "
          "counted), 1 model actor, the other CPUs decoding. Seconds of stages are summed over workers.\n")
    print("| engine | persons | wall s | persons/s | " + " | ".join(f"{s} s" for s in STAGES) + " |")
    print("|---|---:|---:|---:|" + "---:|" * len(STAGES))
    for r in rows:
        print(f"| {r['engine']} | {r['persons']} | {r['seconds']:.2f} | {r['rate']:.2f} | "
              + " | ".join(f"{r[s]:.2f}" for s in STAGES) + " |")
    local, remote = rows
    steady = remote["persons"] / max(remote["seconds"] - remote["start"], 1e-9)
    print(f"\nRay / local persons/s: {remote['rate'] / local['rate']:.2f} (wall s leaves out the driver's model "
          "loading, as the summary does, but counts the actor's start and model loading, stage start); without the "
          f"actor's start ({remote['start']:.1f} s): {steady:.2f} persons/s, {steady / local['rate']:.2f} of local.")
    print(f"Driver write rate: {rate:,.0f} persons/s through Store.write (SQLite + FAISS add, 512-d visual, 256 per "
          f"transaction, {n_write:,} persons); index save after: {save_s:.2f} s.")


if __name__ == "__main__":
    main()
