"""Benchmark of the model stage: persons/s of ``ActivityEncoder.encode_pixels`` (what ingest calls on each batch of
preprocessed uint8 crops) with a random ViT-B/16-shaped CLIP-Activity2Vec model, per device, precision and batch.

    python bench/model_bench.py [--device auto|cpu|cuda] [--batch-sizes 1 2 4 ...] [--repeats N] [--quick]

CPU: fp32 at batch sizes 1-64. CUDA (when torch sees a GPU): fp32, fp16 and bf16 autocast at batch sizes 1-512.
Each (device, precision, batch) is warmed up, then timed ``--repeats`` times, one encode_pixels call of one batch
each; the median is reported.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import gpu_name, header, log, random_pixels, vitb16_encoder  # noqa: E402

CPU_BATCHES = [1, 2, 4, 8, 16, 32, 64]
GPU_BATCHES = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512]
GPU_PRECISIONS = ["fp32", "fp16", "bf16"]


def time_batches(encoder, batch: int, repeats: int, warmup: int = 1) -> list[float]:
    """Seconds of ``repeats`` encode_pixels calls on one batch of ``batch`` random crops, after ``warmup`` calls."""
    pixels = random_pixels(batch, encoder.image_size, seed=batch)
    for _ in range(warmup):
        encoder.encode_pixels(pixels, batch)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        encoder.encode_pixels(pixels, batch)  # returns numpy: the device work is finished
        times.append(time.perf_counter() - t0)
    return times


def persons_per_s(encoder, batch: int, repeats: int, warmup: int = 1) -> tuple[float, float]:
    """(persons/s, median ms per batch) of the model stage at this batch size."""
    median = statistics.median(time_batches(encoder, batch, repeats, warmup))
    return batch / median, median * 1000


def bench_device(device: str, precisions: list[str], batches: list[int], repeats: int, folder: Path) -> list[dict]:
    rows = []
    for precision in precisions:
        encoder = vitb16_encoder(folder, device=device, precision=precision)
        log(f"{device} {precision}: model loaded (autocast {encoder.amp_dtype})")
        for batch in batches:
            try:
                rate, ms = persons_per_s(encoder, batch, repeats)
            except RuntimeError as e:  # CUDA out of memory at large batches: report and go on
                log(f"{device} {precision} batch {batch}: {str(e).splitlines()[0]}")
                rows.append(dict(device=device, precision=precision, batch=batch, rate=None, ms=None))
                continue
            log(f"{device} {precision} batch {batch}: {rate:.2f} persons/s ({ms:.1f} ms per batch)")
            rows.append(dict(device=device, precision=precision, batch=batch, rate=rate, ms=ms))
        del encoder
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                        help="auto: CPU, and CUDA too when present")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=None,
                        help=f"default CPU {CPU_BATCHES}, CUDA {GPU_BATCHES}")
    parser.add_argument("--repeats", type=int, default=None, help="timed calls per batch size (default CPU 3, GPU 20)")
    parser.add_argument("--quick", action="store_true", help="smoke run: CPU batches 1, 2, 2 repeats; GPU batches "
                                                             "1, 32, 256, 5 repeats")
    args = parser.parse_args()
    import torch

    has_cuda = torch.cuda.is_available()
    if args.device == "cuda" and not has_cuda:
        parser.error("--device cuda, but torch sees no CUDA GPU")
    header("model_bench.py")
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="a2v_model_bench_") as tmp:
        if args.device in ("auto", "cpu"):
            batches = args.batch_sizes or ([1, 2] if args.quick else CPU_BATCHES)
            repeats = args.repeats or (2 if args.quick else 3)
            rows += bench_device("cpu", ["fp32"], batches, repeats, Path(tmp))
        if args.device in ("auto", "cuda") and has_cuda:
            batches = args.batch_sizes or ([1, 32, 256] if args.quick else GPU_BATCHES)
            repeats = args.repeats or (5 if args.quick else 20)
            rows += bench_device("cuda", GPU_PRECISIONS, batches, repeats, Path(tmp))
    print("Model stage, random ViT-B/16 CLIP-Activity2Vec (image 224, 512-d projection, 8 heads), "
          "ActivityEncoder.encode_pixels on uint8 crops:\n")
    print("| device | precision | batch | persons/s | ms per batch (median) | ms per person |")
    print("|---|---|---:|---:|---:|---:|")
    for r in rows:
        if r["rate"] is None:
            print(f"| {r['device']} | {r['precision']} | {r['batch']} | failed (out of memory?) | | |")
            continue
        print(f"| {r['device']} | {r['precision']} | {r['batch']} | {r['rate']:.2f} | {r['ms']:.1f} | "
              f"{r['ms'] / r['batch']:.1f} |")
    if has_cuda and args.device != "cpu":
        print(f"\nGPU: {gpu_name()}")
    print("\nCPU rows are fp32 (autocast is CUDA-only in the encoder). ms per batch: median of the timed calls.")


if __name__ == "__main__":
    main()
