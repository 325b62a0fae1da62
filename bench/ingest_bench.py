"""Benchmark of ingest end to end: persons/s and the per-stage split of ``A2VSearch.ingest`` on generated 640x480
JPEGs (``detector="none"``: one person per image, whole-image mode), in one run.

    python bench/ingest_bench.py [--images N] [--workers W] [--batch-size B] [--device auto|cpu|cuda] [--quick]

Row "tiny": a tiny random CLIP (2 layers, width 32, 224 px input) + tiny BERT, so that wall time is the
pipeline's own cost per image (discover, decode + resize in worker processes, write, save).
With ``--image-size 64x48 --batch-size 256 --images 4000 --no-vit`` it measures the pipeline's own cost per person
in the main process (issue 26's goal: <= 50 us outside decoding and the model), torch on one thread: ingests of the
tiny row of a quarter of the images and of all of them, alternating, ``--rounds`` times, uninstrumented (this
process's CPU, less the model's and the model loading's); a person's cost once a run's fixed costs are paid is the
slope between the two sizes, the fixed cost its intercept. Then one ingest of each size with the CPU split by stage
(each thread's ``thread_time`` in labelled regions; see ``REGIONS``). ``--persons hico``: the same with HICO-DET's
real persons, the boxes of its first training images (HAKE's instance-level annotations, in the file's order)
scaled onto the generated JPEGs and ingested with the boxes detector, about 2 persons an image once merged (see
``hico_boxes``).
Row "ViT-B/16": a random ViT-B/16-shaped CLIP-Activity2Vec checkpoint: the share of wall time in the model stage
(goal >= 90%: decoding overlaps encoding in the workers), and end-to-end persons/s against the model-only persons/s
of the same encoder (``encode_pixels`` on one batch of the same size, measured right after; GPU goal >= 80%).
"""

from __future__ import annotations

import argparse
import functools
import itertools
import json
import statistics
import sys
import tempfile
import threading
import time
from collections import defaultdict
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import gpu_name, header, load_average, log, random_pixels, tiny_models, vitb16_checkpoint, write_jpegs  # noqa: E402

STAGES = ("discover", "decode", "wait", "detect", "encode", "write", "save")
BOXES = "detector: the boxes file (read, checked, merged; matched to the files)"
EXCLUDED = ("model", "model loading", BOXES)  # not the pipeline's own cost: the detector's and the model's


def hico_boxes(images: list[Path], out: Path, width: int, height: int) -> tuple[str, int]:
    """A HAKE instance-level boxes file for ``images`` (generated JPEGs, in turn): the labels of the first
    ``len(images)`` HICO-DET training images in the annotation file's order (none chosen), their person and object
    boxes scaled to width x height. Returns the ``--detector`` value and the persons it gives, merged as training
    merges them."""
    from a2v_search.detect import BoxesFile

    entries = {}
    for path, (_, entry) in zip(images, hico_annotations().items(), strict=False):
        labels = []
        for label in entry["labels"]:
            sx, sy = width / label["width"], height / label["height"]
            scaled = {k: [v[0] * sx, v[1] * sy, v[2] * sx, v[3] * sy] for k in ("human_bbox", "object_bbox")
                      if (v := label.get(k))}
            labels.append({**label, **scaled, "width": width, "height": height})
        entries[path.name] = {"labels": labels}
    out.write_text(json.dumps(entries))
    return f"boxes:{out}", sum(len(d) for d in BoxesFile(out).boxes.values())


@functools.cache
def hico_annotations() -> dict:
    """HAKE's instance-level HICO-DET annotations, read once."""
    from hico_retrieval import ANNOTATIONS

    from a2v_search.training.hake_data import read_json

    return read_json(ANNOTATIONS)


def run_ingest(name: str, data_dir: Path, images: Path, n_images: int, args: argparse.Namespace,
               **models: str) -> tuple[dict, object]:
    """Ingest the image folder into a new store with the given model flags; (row, the A2VSearch). The report's
    seconds start after the models are loaded."""
    from a2v_search.api import A2VSearch

    a2v = A2VSearch.open(data_dir, device=args.device, precision=args.precision, **models)
    report = a2v.ingest([str(images)], detector="none", batch_size=args.batch_size, workers=args.workers)
    if report.failures or report.persons_added != n_images:
        raise SystemExit(f"{name}: ingest stored {report.persons_added} of {n_images} persons, failures "
                         f"{report.failures[:3]}")
    log(f"{name}: {report.persons_added} persons in {report.seconds:.1f} s, stages "
        f"{ {k: round(v, 2) for k, v in report.stages.items()} }")
    row = dict(name=name, persons=report.persons_added, seconds=report.seconds,
               rate=report.persons_per_s, **{k: report.stages.get(k, 0.0) for k in STAGES})
    return row, a2v


def model_only_rate(encoder, batch: int, repeats: int) -> float:
    """persons/s of encode_pixels on one batch of ``batch`` crops (median of ``repeats`` calls; already warm)."""
    pixels = random_pixels(batch, encoder.image_size, seed=1)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        encoder.encode_pixels(pixels, batch)
        times.append(time.perf_counter() - t0)
    return batch / statistics.median(times)


#: the labelled regions of the per-stage split: (owner, attribute, stage); a region's time is exclusive (what it
#: spends inside a labelled region nested in it goes to that one). Timed stages of the report are labelled too.
REGIONS = [("a2v_search.ingest.driver:Ingestor", "_first_task", "plan: a decode task per file"),
           ("a2v_search.ingest.decode_pool:DecodePool", "put", "hand-off to the decoders"),
           ("a2v_search.ingest.driver:Ingestor", "_on_decoded", "assembly"),
           ("a2v_search.ingest.driver:Ingestor", "_on_finished", "assembly"),
           ("a2v_search.ingest.driver:Ingestor", "_check_unchecked", "assembly"),
           ("a2v_search.ingest.driver:Ingestor", "_write", "assembly"),
           ("a2v_search.store:Store", "media_with_hashes", "duplicate rule: SQLite lookup"),
           ("a2v_search.ingest.driver:Ingestor", "_checked", "person checks (a batch at a time)"),
           ("a2v_search.ingest.workers:LocalWorkers", "submit", "queues"),
           ("a2v_search.ingest.workers:LocalWorkers", "_encode", "batch: crops to the encoder"),
           ("a2v_search.ingest.workers:LocalWorkers", "_collect", "collect: vectors to persons"),
           ("a2v_search.store", "as_arrays", "write: checks"),
           ("db.repo", "add_media", "write: SQLite rows"),
           ("db.labels", "close_chunks", "write: label chunks"),
           ("a2v_search.store:Store", "_vectors", "write: vectors (2nd thread)"),
           ("index.faiss_index:VectorIndex", "add", "write: FAISS add (2nd thread)")]
#: labelled in every run: what is not the pipeline's own cost
EXCLUDED_REGIONS = [("a2v_search.ingest.driver:Ingestor", "_load_models", "model loading"),
                    ("a2v_search.detect:BoxesFile", "__init__", BOXES), ("a2v_search.detect:BoxesFile", "bind", BOXES)]
TIMED = {"discover": "discover: walk, SQLite check, sniff", "wait": "receive: waiting for decoders (polling, queues)",
         "encode": "model",
         "detect": "model", "gpu_decode": "gpu decode", "write": "write: rest (commit, waits)", "save": "save"}


@contextmanager
def split_by_region(labelled: bool):
    """CPU seconds of each thread of this process by stage (``time.thread_time``, exclusive of nested regions);
    ``labelled=False`` labels only the report's timed stages (a batch or a chunk at a time: no per-person cost)."""
    import importlib

    from a2v_search.ingest import driver, workers

    cpu: dict[str, float] = defaultdict(float)
    local = threading.local()

    def enter():
        stack = getattr(local, "stack", None) or []
        local.stack = stack
        stack.append(0.0)
        return time.thread_time()

    def leave(label: str, t0: float) -> None:
        spent = time.thread_time() - t0
        inner = local.stack.pop()
        cpu[label] += spent - inner
        if local.stack:
            local.stack[-1] += spent

    class CpuTimed(workers.Timed):
        __slots__ = ("c",)

        def __enter__(self):
            super().__enter__()
            self.c = enter()

        def __exit__(self, *exc):
            leave(TIMED[self.name], self.c)
            super().__exit__(*exc)

    patched = [(workers, "Timed", workers.Timed), (driver, "Timed", driver.Timed)]
    workers.Timed = driver.Timed = CpuTimed
    for spec, name, label in (REGIONS if labelled else []) + EXCLUDED_REGIONS:
        module, _, cls = spec.partition(":")
        owner = importlib.import_module(module)
        owner = getattr(owner, cls) if cls else owner
        fn = getattr(owner, name)
        patched.append((owner, name, fn))

        def wrapped(*a, _fn=fn, _label=label, **kw):
            t0 = enter()
            try:
                return _fn(*a, **kw)
            finally:
                leave(_label, t0)

        setattr(owner, name, wrapped)
    try:
        yield cpu
    finally:
        for owner, name, fn in patched:
            setattr(owner, name, fn)


def pipeline_split(images: Path, n: int, args: argparse.Namespace, labelled: bool, clip_dir: Path,
                   bert_dir: Path, data_dir: Path, detector: str = "none") -> dict:
    """One ingest of the tiny row (``n`` persons) with the CPU of this process split by stage; the model's own CPU
    and the model loading are stages too, so that what is left is the pipeline's own cost."""
    from a2v_search.api import A2VSearch

    a2v = A2VSearch.open(data_dir, device=args.device, precision=args.precision, model=str(clip_dir),
                         text_model=str(bert_dir))
    main_cpu0, process_cpu0 = time.thread_time(), time.process_time()
    with split_by_region(labelled) as cpu:
        report = a2v.ingest([str(images)], detector=detector, batch_size=args.batch_size, workers=args.workers)
    main_cpu, process_cpu = time.thread_time() - main_cpu0, time.process_time() - process_cpu0
    a2v.close()
    if report.failures or report.persons_added != n:
        raise SystemExit(f"ingest stored {report.persons_added} of {n} persons, failures {report.failures[:3]}")
    cpu = dict(cpu)
    staged_main = sum(v for k, v in cpu.items() if "2nd thread" not in k)
    cpu["other, main thread (the loop, queues, progress)"] = main_cpu - staged_main
    cpu["other threads (receiving the decoded crops, task pickling, the writer's)"] = \
        process_cpu - main_cpu - sum(v for k, v in cpu.items() if "2nd thread" in k)
    return {"cpu": cpu, "report": report, "process_cpu": process_cpu}


def own_cpu(run: dict) -> float:
    """A run's process CPU seconds outside the model and the model loading: the pipeline's own cost."""
    return run["process_cpu"] - sum(run["cpu"].get(k, 0.0) for k in EXCLUDED)


def line(n_small: int, n_large: int, small: float, large: float) -> tuple[float, float]:
    """(seconds a person, fixed seconds a run) of the line through (n_small, small) and (n_large, large)."""
    per = (large - small) / (n_large - n_small)
    return per, large - per * n_large


def print_split(plain: dict[int, list[dict]], split: dict[int, dict], args: argparse.Namespace, width: int,
                height: int, images: dict[int, int], workload: str) -> None:
    """The pipeline's own CPU per person (issue 26's goal: <= 50 us outside decoding and the model): of the whole
    run of ``--images``, and a person's share once the run's fixed costs (starting the decode workers, the first
    files written one at a time, the final save) are paid: the slope between runs of a quarter and of all the
    images (medians of the uninstrumented runs of each size). Runs are keyed by their persons; ``images``: the
    images of each."""
    n_small, n = sorted(plain)
    med = {k: statistics.median(own_cpu(r) for r in runs) for k, runs in plain.items()}
    per, fixed = line(n_small, n, med[n_small], med[n])
    r = plain[n][0]["report"]
    process_cpu = statistics.median(x["process_cpu"] for x in plain[n])
    print(f"Tiny models, {images[n]} {width}x{height} JPEGs, {workload}, batch {args.batch_size}, torch threads 1: "
          f"{r.persons_per_s:.0f} persons/s, wall {r.seconds:.2f} s (stages, wall: "
          + ", ".join(f"{k} {v:.2f}" for k, v in r.stages.items() if v) + f"); load average {load_average()}.\n")
    runs = " / ".join(f"{1e6 * own_cpu(x) / n:.1f}" for x in plain[n])
    small_runs = " / ".join(f"{1e6 * own_cpu(x) / n_small:.1f}" for x in plain[n_small])
    print(f"**Main process CPU per person outside decoding and the model: {per * 1e6:.1f} us a person once a run's "
          f"fixed costs are paid** (goal <= 50 us), and {fixed * 1e3:.0f} ms a run: the line through the medians "
          f"of runs of {n_small} and {n} persons ({images[n_small]} and {images[n]} images). A whole run: {runs} us "
          f"a person at {n} persons, {small_runs} at {n_small} (uninstrumented runs; process CPU "
          f"{1e6 * process_cpu / n:.1f} us a person at {n}, of which the model "
          f"{1e6 * plain[n][0]['cpu'].get('model', 0.0) / n:.1f}).\n")
    print(f"By stage (instrumented runs, CPU; the wrappers add ~1 us a call; a whole run of {n} persons: "
          f"{1e6 * own_cpu(split[n]) / n:.1f} us a person):\n")
    print("| stage (main process) | whole run, us a person | a person once the run is going, us | fixed, ms a run |")
    print("|---|---:|---:|---:|")
    for k, v in sorted(split[n]["cpu"].items(), key=lambda kv: -kv[1]):
        if k not in EXCLUDED:
            per_k, fixed_k = line(n_small, n, split[n_small]["cpu"].get(k, 0.0), v)
            print(f"| {k} | {1e6 * v / n:.1f} | {1e6 * per_k:.1f} | {1e3 * fixed_k:.0f} |")
    print("| *excluded: the model (encoder submit + vectors, normalise and language included)* | "
          f"{1e6 * split[n]['cpu'].get('model', 0.0) / n:.1f} | | |")
    if BOXES in split[n]["cpu"]:
        per_k, fixed_k = line(n_small, n, split[n_small]["cpu"][BOXES], split[n]["cpu"][BOXES])
        print(f"| *excluded: the {BOXES}* | {1e6 * split[n]['cpu'][BOXES] / n:.1f} | {1e6 * per_k:.1f} | "
              f"{1e3 * fixed_k:.0f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=None, help="images for the tiny row (default 200, quick 30)")
    parser.add_argument("--vit-images", type=int, default=None,
                        help="images for the ViT-B/16 row (default: --images; quick 8)")
    parser.add_argument("--workers", type=int, default=None, help="decode processes (default: ingest's, cores - 1)")
    parser.add_argument("--batch-size", type=int, default=None, help="ingest batch size (default 32, quick 4)")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--precision", default="auto", choices=["auto", "fp32", "fp16", "bf16"])
    parser.add_argument("--repeats", type=int, default=None, help="model-only timed calls (default 3, quick 1)")
    parser.add_argument("--image-size", default="640x480", help="WxH of the generated JPEGs (default 640x480)")
    parser.add_argument("--no-vit", action="store_true", help="the tiny row only (the pipeline's own cost)")
    parser.add_argument("--rounds", type=int, default=2,
                        help="--no-vit: uninstrumented runs of each size, alternating (default 2)")
    parser.add_argument("--persons", default="one", choices=["one", "hico"],
                        help="--no-vit: one person an image (detector none), or HICO-DET's real person boxes")
    parser.add_argument("--quick", action="store_true", help="smoke run: 30 + 8 images, batch 4")
    args = parser.parse_args()
    width, height = (int(v) for v in args.image_size.lower().split("x"))
    import torch

    from a2v_search.settings import get_device

    cuda = get_device(args.device).type == "cuda"
    args.images = args.images or (30 if args.quick else 200)
    args.vit_images = args.vit_images or (8 if args.quick else args.images)
    args.batch_size = args.batch_size or (4 if args.quick else 32)
    args.repeats = args.repeats or (1 if args.quick else 3)
    header("ingest_bench.py")
    with tempfile.TemporaryDirectory(prefix="a2v_ingest_bench_") as tmp:
        tmp = Path(tmp)
        clip_dir, bert_dir = tiny_models(tmp / "models")
        if args.no_vit:  # the pipeline's own cost: the model on this thread only, so that its CPU is taken out whole
            torch.set_num_threads(1)
            paths = write_jpegs(tmp / "images", args.images, width=width, height=height)
            runs = {}  # persons -> (folder, detector, images)
            for n, folder in ((args.images // 4, tmp / "images_small"), (args.images, tmp / "images")):
                if n < args.images:
                    folder.mkdir()
                    for p in paths[:n]:
                        (folder / p.name).hardlink_to(p)
                detector, persons = ("none", n) if args.persons == "one" else \
                    hico_boxes(paths[:n], tmp / f"boxes_{n}.json", width, height)
                runs[persons] = (folder, detector, n)
            workload = "detector none (one person an image)" if args.persons == "one" else \
                f"HICO-DET's person boxes ({max(runs) / args.images:.2f} persons an image)"
            log(f"{args.images} JPEGs and the models are ready; {workload}")
            pipeline_split(paths[0], 1, args, False, clip_dir, bert_dir, tmp / "warm_up")  # imports and caches
            stores = (tmp / f"store_{i}" for i in itertools.count())
            plain: dict[int, list[dict]] = {n: [] for n in runs}
            for _ in range(args.rounds):  # alternating sizes: the machine's speed drifts
                for n, (folder, detector, _) in runs.items():
                    plain[n].append(pipeline_split(folder, n, args, False, clip_dir, bert_dir, next(stores),
                                                   detector))
            split = {n: pipeline_split(folder, n, args, True, clip_dir, bert_dir, next(stores), detector)
                     for n, (folder, detector, _) in runs.items()}
            print_split(plain, split, args, width, height, {n: r[2] for n, r in runs.items()}, workload)
            return
        ckpt = vitb16_checkpoint(tmp / "models")
        n_max = max(args.images, args.vit_images)
        write_jpegs(tmp / "images_all", n_max, width=width, height=height)
        log(f"{n_max} JPEGs and the models are ready")
        tiny_images, vit_images = tmp / "images_tiny", tmp / "images_vit"
        for folder, n in ((tiny_images, args.images), (vit_images, args.vit_images)):
            folder.mkdir()
            for p in sorted((tmp / "images_all").iterdir())[:n]:
                (folder / p.name).hardlink_to(p)

        tiny, tiny_a2v = run_ingest("tiny", tmp / "store_tiny", tiny_images, args.images, args,
                                    model=str(clip_dir), text_model=str(bert_dir))
        tiny_a2v.close()
        vit, a2v = run_ingest("ViT-B/16", tmp / "store_vit", vit_images, args.vit_images, args,
                              checkpoint=str(ckpt), text_model=str(bert_dir))
        encoder = a2v.encoder()
        model_rate = model_only_rate(encoder, args.batch_size, args.repeats)
        a2v.close()
        log(f"model only: {model_rate:.2f} persons/s at batch {args.batch_size}")

    device = f"{encoder.device}" + (f" ({gpu_name()})" if cuda else "")
    workers = args.workers if args.workers is not None else "default (cores - 1)"
    print(f"Device {device}, precision {args.precision} (autocast {encoder.amp_dtype}), batch size "
          f"{args.batch_size}, decode workers {workers}, torch threads {torch.get_num_threads()}; 640x480 JPEGs, "
          "detector none (one person per image, whole-image mode).\n")
    print("| model | persons | wall s | persons/s | ms/image | decode s (workers) | wait s | encode s | write s | "
          "save s | encode share |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in (tiny, vit):
        print(f"| {r['name']} | {r['persons']} | {r['seconds']:.2f} | {r['rate']:.2f} | "
              f"{1000 * r['seconds'] / r['persons']:.1f} | {r['decode']:.2f} | {r['wait']:.2f} | {r['encode']:.2f} | "
              f"{r['write']:.2f} | {r['save']:.2f} | {100 * r['encode'] / r['seconds']:.1f}% |")
    n = tiny["persons"]
    overhead = tiny["seconds"] - tiny["encode"]
    print(f"\nPipeline overhead (tiny row): {1000 * tiny['seconds'] / n:.1f} ms/image wall, of which "
          f"{1000 * overhead / n:.1f} ms/image outside the model stage; per image: decode + resize "
          f"{1000 * tiny['decode'] / n:.1f} ms of worker time, write {1000 * tiny['write'] / n:.2f} ms, save "
          f"{1000 * tiny['save'] / n:.2f} ms, main process waiting for decoders {1000 * tiny['wait'] / n:.1f} ms.")
    share = vit["encode"] / vit["seconds"]
    ratio = vit["rate"] / model_rate
    print(f"\nViT-B/16: model stage {100 * share:.1f}% of wall time (goal >= 90%): "
          f"{'met' if share >= 0.9 else 'NOT met'}.")
    print(f"ViT-B/16: end to end {vit['rate']:.2f} persons/s vs model only {model_rate:.2f} persons/s at batch "
          f"{args.batch_size} (encode_pixels, same encoder, same run): {100 * ratio:.1f}% (GPU goal >= 80%"
          f"{': ' + ('met' if ratio >= 0.8 else 'NOT met') if cuda else '; this run is on the CPU'}).")
    print("\nwall s: IngestReport.seconds (model loading excluded). decode s: summed worker seconds (runs in parallel "
          "with the main process). wait s: main process blocked on decoders (includes starting the worker processes).")


if __name__ == "__main__":
    main()
