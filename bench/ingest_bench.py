"""Benchmark of ingest end to end: persons/s and the per-stage split of ``A2VSearch.ingest`` on generated 640x480
JPEGs (``detector="none"``: one person per image, whole-image mode), in one run.

    python bench/ingest_bench.py [--images N] [--workers W] [--batch-size B] [--device auto|cpu|cuda] [--quick]

Row "tiny": a tiny random CLIP (2 layers, width 32, 224 px input) + tiny BERT, so that wall time is the
pipeline's own cost per image (discover, decode + resize in worker processes, write, save).
With ``--image-size 64x48 --batch-size 256 --images 4000 --no-vit`` it measures the pipeline's own cost per person
in the main process (issue 26's goal: <= 50 us outside decoding and the model): the tiny row's stages per person,
with the tiny model's own time (``encode_pixels`` at the same batch) taken out of ``encode``.
Row "ViT-B/16": a random ViT-B/16-shaped CLIP-Activity2Vec checkpoint: the share of wall time in the model stage
(goal >= 90%: decoding overlaps encoding in the workers), and end-to-end persons/s against the model-only persons/s
of the same encoder (``encode_pixels`` on one batch of the same size, measured right after; GPU goal >= 80%).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import gpu_name, header, log, random_pixels, tiny_models, vitb16_checkpoint, write_jpegs  # noqa: E402

STAGES = ("discover", "decode", "wait", "detect", "encode", "write", "save")


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


def main_process_costs(tiny: dict, model_s: float, args: argparse.Namespace, width: int, height: int) -> None:
    """The tiny row per person: the main process's stages, the tiny model's own time taken out of encode."""
    n = tiny["persons"]
    own = {k: tiny[k] for k in STAGES if k not in ("decode", "wait")}
    own["encode"] = max(0.0, own["encode"] - model_s)
    own["other"] = tiny["seconds"] - tiny["wait"] - sum(tiny[k] for k in STAGES if k not in ("decode", "wait"))
    print(f"Tiny models, {n} {width}x{height} JPEGs, batch {args.batch_size}, detector none: {tiny['rate']:.0f} "
          f"persons/s, wall {tiny['seconds']:.2f} s, main process waiting for decoders {tiny['wait']:.2f} s, decode "
          f"{1e6 * tiny['decode'] / n:.0f} us/person of worker time, tiny model {1e6 * model_s / n:.0f} us/person.\n")
    print("| main process, us per person | " + " | ".join(own) + " | total |")
    print("|---|" + "---:|" * (len(own) + 1))
    print("| tiny row | " + " | ".join(f"{1e6 * v / n:.1f}" for v in own.values())
          + f" | {1e6 * sum(own.values()) / n:.1f} |")
    print("\nencode: the stage less the model's own time (encode_pixels at the same batch, same run); other: wall "
          "time in none of the stages (assembly, hashing, queues).")


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
        tiny_model_s = tiny["persons"] / model_only_rate(tiny_a2v.encoder(), args.batch_size, args.repeats)
        tiny_a2v.close()
        if args.no_vit:
            main_process_costs(tiny, tiny_model_s, args, width, height)
            return
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
