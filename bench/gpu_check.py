"""One check of the GPU path (issue 15), in one run, printing markdown tables: the card and versions; the model stage
(persons/s per precision and batch, optionally torch.compile, and where one batch's time goes); JPEG decoding on the
CPU and on the GPU; ingest end to end on generated JPEGs (GPU and CPU decoding) and a short video, against the
model-only rate of the same run; FAISS index build and search on the GPU and on the CPU at 1M vectors.

    python bench/gpu_check.py [--smoke] [--no-compile] [--images N] [--index-size N]

Run it through bench/gpu_check.sh (installs nothing, needs no network). Full: ViT-B/16-shaped random weights on
CUDA, about 5-7 minutes on one H100. ``--smoke``: the same steps, tiny (tiny CLIP, 16 images, 20k vectors), on the
CPU or GPU, in under 2 minutes; CI runs it (tests/test_gpu_check.py). A step whose packages are missing (faiss,
sqlalchemy, av, torchvision) prints why it was skipped; a step that fails prints the error; the script exits 0.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import sys
import tempfile
import time
import traceback
from contextlib import nullcontext
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
from common import ROOT, cpu_model, log, random_pixels, write_jpegs  # noqa: E402

GOAL_MODEL = 5000.0  # persons/s, ViT-B/16, one H100
GOAL_RATIO = 0.8  # ingest end to end / model stage


def has(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def version(module: str) -> str:
    if not has(module):
        return "not installed"
    try:
        return str(__import__(module).__version__)
    except Exception as e:  # a broken install: say so, go on
        return f"broken ({type(e).__name__})"


class Check:
    """Settings of one run and the models it uses, built once in a temporary folder."""

    def __init__(self, args: argparse.Namespace, tmp: Path):
        import torch

        self.args, self.tmp = args, tmp
        self.cuda = torch.cuda.is_available() and not args.cpu
        self.device = "cuda" if self.cuda else "cpu"
        self.smoke = args.smoke
        self.cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        self.precisions = ["bf16", "fp16", "fp32"] if self.cuda else ["fp32"]
        if args.batch_sizes:
            self.batches = args.batch_sizes
        elif self.smoke:
            self.batches = [1, 4] if not self.cuda else [8, 32]
        else:
            self.batches = [32, 64, 128, 256, 512] if self.cuda else [1, 8, 32]
        self.repeats = args.repeats or (2 if self.smoke else 5)
        self.calls = 2 if self.smoke else 4  # batches per timed encode_pixels call (so batches overlap)
        self.images = args.images or (16 if self.smoke else 4096)
        self.index_size = args.index_size or (20_000 if self.smoke else 1_000_000)
        self.best: dict[str, tuple[int, float]] = {}  # precision -> (batch, persons/s)
        self._models: dict[str, Path] = {}

    def models(self) -> dict[str, str]:
        """Model flags for A2VSearch / load_encoder: ViT-B/16 random checkpoint (full) or the tiny CLIP (smoke)."""
        from common import tiny_models, vitb16_checkpoint

        if not self._models:
            clip, bert = tiny_models(self.tmp / "models")
            self._models = {"clip": clip, "bert": bert}
            if not self.smoke:
                self._models["ckpt"] = vitb16_checkpoint(self.tmp / "models")
        m = self._models
        return {"checkpoint": str(m["ckpt"])} if "ckpt" in m else {"model": str(m["clip"])}

    def text_model(self) -> str:
        """The tiny BERT of the language space (its cost per person is a small matrix product either way)."""
        self.models()
        return str(self._models["bert"])

    def model_name(self) -> str:
        return "tiny CLIP (224 px, 32 px patches, width 32)" if self.smoke else \
            "ViT-B/16 CLIP-Activity2Vec, random weights (224 px, 512-d projection, 8 heads)"

    def encoder(self, precision: str, compile: str = "off"):
        from a2v_search.models import ModelSpec, load_encoder

        m = self.models()
        spec = ModelSpec(checkpoint=m.get("checkpoint"), model=m.get("model"))
        return load_encoder(spec, device=self.device, with_language=False, precision=precision, compile=compile)

    def sync(self) -> None:
        if self.cuda:
            import torch

            torch.cuda.synchronize()

    def best_precision(self) -> str:
        return "bf16" if "bf16" in self.best else next(iter(self.best), self.precisions[0])


def rate_of(enc, batch: int, calls: int, repeats: int) -> tuple[float, float]:
    """(persons/s, ms per batch) of encode_pixels on ``calls`` batches of uint8 numpy crops per call (the model
    stage as ingest runs it: upload, tower, heads, copy back, batches overlapping), median of ``repeats`` calls."""
    pixels = random_pixels(batch * calls, enc.image_size, seed=batch)
    enc.encode_pixels(pixels[:batch], batch)  # warm-up: kernels, cuDNN choices, allocator
    enc.encode_pixels(pixels, batch)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        enc.encode_pixels(pixels, batch)
        times.append(time.perf_counter() - t0)
    t = statistics.median(times)
    return len(pixels) / t, 1000 * t / calls


# ------------------------------------------------------------------ sections


def section_versions(c: Check) -> list[str]:
    import platform

    import torch

    lines = ["| what | value |", "|---|---|"]
    card = torch.cuda.get_device_name(0) if c.cuda else "none (CPU run)"
    if c.cuda:
        p = torch.cuda.get_device_properties(0)
        card += f", {p.total_memory / 2**30:.0f} GiB, compute capability {p.major}.{p.minor}"
    rows = [("GPU", card), ("CPU", f"{cpu_model()}, {c.cores} cores"),
            ("torch", f"{torch.__version__} (CUDA {torch.version.cuda or 'none'}, cuDNN "
                      f"{torch.backends.cudnn.version() if c.cuda else 'n/a'})"),
            ("torchvision", version("torchvision")), ("transformers", version("transformers")),
            ("faiss", faiss_line()), ("sqlalchemy", version("sqlalchemy")), ("av", version("av")),
            ("numpy", np.__version__), ("Python", platform.python_version()),
            ("run", "smoke (tiny)" if c.smoke else "full")]
    return lines + [f"| {k} | {v} |" for k, v in rows]


def faiss_line() -> str:
    if not has("faiss"):
        return "not installed"
    import faiss

    from index import gpu_available

    return f"{faiss.__version__}, GPU support: {'yes, sees a GPU' if gpu_available() else 'no (CPU only)'}"


def section_model(c: Check) -> list[str]:
    lines = [f"Model: {c.model_name()}; `ActivityEncoder.encode_pixels` on uint8 numpy crops, {c.calls} batches "
             f"per call, median of {c.repeats} calls.", "",
             "| device | precision | batch | persons/s | ms per batch |", "|---|---|---:|---:|---:|"]
    for precision in c.precisions:
        enc = c.encoder(precision)
        for batch in c.batches:
            try:
                rate, ms = rate_of(enc, batch, c.calls, c.repeats)
            except RuntimeError as e:  # CUDA out of memory at a large batch: report it, go on
                lines.append(f"| {c.device} | {precision} | {batch} | failed: {str(e).splitlines()[0][:60]} | |")
                continue
            log(f"model {precision} batch {batch}: {rate:.1f} persons/s")
            lines.append(f"| {c.device} | {precision} | {batch} | {rate:,.1f} | {ms:.2f} |")
            if rate > c.best.get(precision, (0, 0.0))[1]:
                c.best[precision] = (batch, rate)
        del enc
    p = c.best_precision()
    batch, rate = c.best[p]
    lines.append("")
    goal = "met" if rate >= GOAL_MODEL else f"NOT met: {100 * rate / GOAL_MODEL:.0f}% of it"
    lines.append(f"Best: {p} at batch {batch}: **{rate:,.1f} persons/s**"
                 + (f" (goal >= {GOAL_MODEL:,.0f} on one H100: {goal})" if c.cuda and not c.smoke else ""))
    return lines


def section_compile(c: Check) -> list[str]:
    if c.args.no_compile or c.smoke or not c.cuda:
        return ["Skipped: " + ("--no-compile" if c.args.no_compile else "CUDA full runs only (compiling takes minutes "
                                                                          "on a CPU)")]
    p = c.best_precision()
    batch, eager = c.best[p]
    lines = [f"{p}, batch {batch}; eager: {eager:,.1f} persons/s.", "",
             "| compile | first call s (compiling) | persons/s | vs eager |", "|---|---:|---:|---:|"]
    try:  # an experiment, not an encoder option: the tower's weights in bf16, no autocast (LayerNorm in bf16 too)
        import torch

        enc = c.encoder("fp32")
        enc.model.vision.to(torch.bfloat16)  # features() casts the input to the tower's dtype; heads stay fp32
        rate, _ = rate_of(enc, batch, c.calls, c.repeats)
        lines.append(f"| off, bf16 weights without autocast (experiment) | | {rate:,.1f} | {rate / eager:.2f}x |")
        del enc
    except Exception as e:
        lines.append(f"| bf16 weights without autocast | failed: {type(e).__name__} | | |")
    for mode in ("default", "reduce-overhead"):
        try:
            enc = c.encoder(p, compile=mode)
            t0 = time.perf_counter()
            enc.encode_pixels(random_pixels(batch, enc.image_size), batch)
            first = time.perf_counter() - t0
            rate, _ = rate_of(enc, batch, c.calls, c.repeats)
            lines.append(f"| {mode} | {first:.1f} | {rate:,.1f} | {rate / eager:.2f}x |")
            log(f"compile {mode}: {rate:.1f} persons/s (first call {first:.1f} s)")
            del enc
        except Exception as e:  # a compiler failure is a result too
            reason = str(e).splitlines()[0][:80] if str(e) else ""
            lines.append(f"| {mode} | failed: {type(e).__name__}: {reason} | | |")
    return lines


def section_split(c: Check) -> list[str]:
    """Where one batch's time goes: upload, normalise, tower, heads, copy back, each run alone and synchronised."""
    import torch

    from a2v_search.models.device_io import PendingBatch, Uploader

    p = c.best_precision()
    batch = c.best[p][0]
    enc = c.encoder(p)
    pixels = random_pixels(batch, enc.image_size, seed=7)
    up = Uploader(enc.device)
    stages: dict[str, list[float]] = {k: [] for k in ("upload", "normalise", "tower", "heads", "copy back")}
    with torch.inference_mode():
        for i in range(c.repeats + 1):
            t = [time.perf_counter()]
            x = up.upload(pixels)
            c.sync()
            t.append(time.perf_counter())
            x = enc.preprocess.to_tensor(x)
            c.sync()
            t.append(time.perf_counter())
            with torch.autocast(enc.device.type, dtype=enc.amp_dtype) if enc.amp_dtype else nullcontext():
                feat = enc.model.features(x)  # as the encoder runs it: under its autocast
            c.sync()
            t.append(time.perf_counter())
            out = enc.model.run_heads(feat)  # fp32, and the normalised visual vector
            c.sync()
            t.append(time.perf_counter())
            PendingBatch(out, enc.device).result()
            t.append(time.perf_counter())
            if i:  # the first round warms up
                for k, a, b in zip(stages, t, t[1:], strict=False):
                    stages[k].append(b - a)
    med = {k: statistics.median(v) * 1000 for k, v in stages.items()}
    total = sum(med.values())
    lines = [f"{p}, batch {batch}, each step synchronised (no overlap), median of {c.repeats}:", "",
             "| step | ms per batch | share |", "|---|---:|---:|"]
    lines += [f"| {k} | {v:.2f} | {100 * v / total:.1f}% |" for k, v in med.items()]
    lines.append(f"| total | {total:.2f} | {batch / total * 1000:,.1f} persons/s unoverlapped |")
    return lines


def distinct_jpegs(folder: Path, n: int, base: int = 64) -> Path:
    """n JPEG files of 640x480: ``base`` generated photos, each copy made distinct (for the content hash) by a
    comment segment; the pixels, and so the decoding work, are those of the base photo."""
    folder.mkdir(parents=True, exist_ok=True)
    bases = [p.read_bytes() for p in write_jpegs(folder / "_base", min(n, base))]
    for i in range(n):
        data = bases[i % len(bases)]
        note = f"a2v gpu_check copy {i}".encode()
        (folder / f"img_{i:06d}.jpg").write_bytes(data[:2] + b"\xff\xfe" + (len(note) + 2).to_bytes(2, "big") + note
                                                  + data[2:])
    for p in (folder / "_base").iterdir():
        p.unlink()
    (folder / "_base").rmdir()
    return folder


def section_decode(c: Check, folder: Path) -> list[str]:
    """Decode throughput: the worker's CPU path (hash, decode, resize), the worker's pass-through, the GPU batch."""
    import torch

    from a2v_search.ingest.decode import DecodeTask, decode
    from a2v_search.ingest.gpu_decode import JpegCrop, assemble, available
    from a2v_search.preprocess import Preprocess

    pre = Preprocess(size=224)
    paths = sorted(folder.iterdir())[:256 if not c.smoke else 16]
    lines = [f"{len(paths)} JPEGs, 640x480, whole-image mode, 224 px output.", "",
             "| path | images/s | note |", "|---|---:|---|"]
    for label, gpu_jpeg in (("CPU decode + resize (worker, 1 core)", False), ("pass-through (worker, 1 core)", True)):
        t0 = time.perf_counter()
        for p in paths:
            r = decode(DecodeTask(path=str(p), kind="image", preprocess=pre, gpu_jpeg=gpu_jpeg))
            assert not r.error, r.error
        rate = len(paths) / (time.perf_counter() - t0)
        workers = max(1, c.cores - 1)
        lines.append(f"| {label} | {rate:,.1f} | x {workers} workers: ~{rate * workers:,.0f}/s |")
    if not c.cuda or not available(torch.device("cuda")):
        lines.append(f"| GPU decode + resize | skipped | {'no CUDA device' if not c.cuda else 'torchvision missing'} |")
        return lines
    datas = [p.read_bytes() for p in paths]
    for batch in (64, 256):
        crops = [JpegCrop(d, None) for d in (datas * (batch // len(datas) + 1))[:batch]]
        crops = [JpegCrop(bytes(bytearray(x.data)), None) for x in crops]  # distinct objects: no dedupe
        assemble(crops, pre, torch.device("cuda"), 10**8)
        c.sync()
        t0 = time.perf_counter()
        for _ in range(3):
            assemble(crops, pre, torch.device("cuda"), 10**8)
        c.sync()
        lines.append(f"| GPU decode + resize, batch {batch} (main process) | "
                     f"{3 * batch / (time.perf_counter() - t0):,.1f} | torchvision.io.decode_jpeg(device='cuda') |")
    return lines


def section_ingest(c: Check, folder: Path) -> list[str]:
    if not (has("sqlalchemy") and has("faiss")):
        return ["Skipped: the store needs sqlalchemy and faiss (carry their wheels, see bench/gpu_check.sh)."]
    import torch

    from a2v_search.api import A2VSearch
    from a2v_search.ingest.gpu_decode import available

    p = c.best_precision()
    batch, model_rate = c.best[p]
    workers = max(1, c.cores - 1)
    decoders = ["auto", "cpu"] if c.cuda and available(torch.device("cuda")) else ["cpu"]
    runs = [(f"{c.images} JPEGs, {d} decode", folder, dict(jpeg_decoder=d)) for d in decoders]
    if has("av"):
        from a2v_search.testing.media import write_video

        seconds = 2.0 if c.smoke else 20.0
        video = c.tmp / "video"
        video.mkdir()
        write_video(video / "clip.mp4", seconds=seconds, fps=25, w=640, h=480)
        runs.append((f"video {seconds:.0f} s 640x480 @25 fps, 5 frames/s", video, dict(video_fps=5.0)))
    lines = [f"`A2VSearch.ingest(detector='none')`, {p}, batch {batch}, {workers} decode workers; model only "
             f"(same encoder, same run, table above): {model_rate:,.1f} persons/s.", "",
             "| input | persons | wall s | persons/s | vs model only | decode s (workers) | wait s | gpu_decode s | "
             "encode s | write s | save s |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for i, (label, src, opts) in enumerate(runs):
        a2v = A2VSearch.open(c.tmp / f"store_{i}", device=c.device, precision=p, text_model=c.text_model(),
                             **c.models())
        r = a2v.ingest([str(src)], detector="none", batch_size=batch, workers=workers, **opts)
        a2v.close()
        if r.failures:
            raise RuntimeError(f"ingest failed on {len(r.failures)} files: {r.failures[:2]}")
        s = r.stages
        log(f"ingest {label}: {r.persons_per_s:.1f} persons/s")
        lines.append(f"| {label} | {r.persons_added} | {r.seconds:.2f} | {r.persons_per_s:,.1f} | "
                     f"{100 * r.persons_per_s / model_rate:.0f}% | {s['decode']:.2f} | {s['wait']:.2f} | "
                     f"{s.get('gpu_decode', 0.0):.2f} | {s['encode']:.2f} | {s['write']:.2f} | {s['save']:.2f} |")
    lines.append("")
    lines.append(f"Goal: JPEG ingest end to end >= {100 * GOAL_RATIO:.0f}% of the model stage (on one H100 with 16 "
                 "cores). wall s excludes model loading; worker start-up is included.")
    return lines


def section_index(c: Check) -> list[str]:
    if not has("faiss"):
        return ["Skipped: faiss is not installed (carry a faiss-gpu or faiss-cpu wheel, see bench/gpu_check.sh)."]
    import faiss
    from index_bench import ClusteredData

    from index import VectorIndex, choose_spec, gpu_available

    n, dim, q, k = c.index_size, 512, (1000 if c.smoke else 10_000), 10
    spec = "IVF64,Flat" if c.smoke else choose_spec(n, dim)
    data = ClusteredData(dim, int(np.clip(n // 100, 100, 10_000)), seed=0)
    base, queries = data.draw(n), data.draw(q)
    ids = np.arange(n, dtype=np.int64)
    log(f"index: {n} x {dim} vectors ready")
    picked = "a small IVF, so that the IVF path runs" if c.smoke else "what the store picks at this size"
    lines = [f"{n:,} clustered unit vectors, d = {dim}, spec {spec} ({picked}), {q:,} "
             f"queries, k = {k}; faiss {faiss.__version__}, {faiss.omp_get_max_threads()} CPU threads.", "",
             "| where | build s (train + add) | batch search s | queries/s | single query p50 ms | "
             "top-10 overlap with CPU |", "|---|---:|---:|---:|---:|---:|"]
    found_cpu = None
    for where in ("CPU", "GPU"):
        if where == "GPU" and not gpu_available():
            lines.append("| GPU | skipped: faiss has no GPU support here | | | | |")
            continue
        t0 = time.perf_counter()
        vi = VectorIndex.create(dim, spec, use_gpu=where == "GPU")
        vi.add(ids, base)
        build = time.perf_counter() - t0
        vi.search(queries[:10], k)  # a GPU copy is made on the first search
        t0 = time.perf_counter()
        _, found = vi.search(queries, k)
        batch_s = time.perf_counter() - t0
        single = []
        for x in queries[:200]:
            t1 = time.perf_counter()
            vi.search(x[None], k)
            single.append(time.perf_counter() - t1)
        overlap = "1.000 (itself)" if found_cpu is None else \
            f"{np.mean([len(np.intersect1d(a, b)) / k for a, b in zip(found, found_cpu, strict=True)]):.3f}"
        found_cpu = found if found_cpu is None else found_cpu
        log(f"index {where}: build {build:.1f} s, batch {batch_s:.2f} s")
        lines.append(f"| {where} | {build:.1f} | {batch_s:.3f} | {q / batch_s:,.0f} | "
                     f"{1000 * statistics.median(single):.2f} | {overlap} |")
        del vi
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny run of every step (CPU is fine), < 2 minutes")
    parser.add_argument("--cpu", action="store_true", help="ignore the GPU")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile rows")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=None)
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--images", type=int, default=None, help="JPEGs for ingest (default 4096, smoke 16)")
    parser.add_argument("--index-size", type=int, default=None, help="vectors (default 1,000,000, smoke 20,000)")
    args = parser.parse_args()
    os.chdir(ROOT)
    start = time.perf_counter()
    print(f"# GPU check (bench/gpu_check.py{' --smoke' if args.smoke else ''})\n")
    print(f"Command: python bench/gpu_check.py {' '.join(sys.argv[1:])}\n")
    failed = []
    with tempfile.TemporaryDirectory(prefix="a2v_gpu_check_") as tmp:
        c = Check(args, Path(tmp))
        jpegs = c.tmp / "jpegs"
        steps = [("Card and versions", lambda: section_versions(c)),
                 ("Model stage", lambda: section_model(c)),
                 ("torch.compile and bf16 weights", lambda: section_compile(c)),
                 ("Where one batch's time goes", lambda: section_split(c)),
                 ("JPEG decoding", lambda: section_decode(c, distinct_jpegs(jpegs, c.images))),
                 ("Ingest end to end", lambda: section_ingest(c, jpegs)),
                 ("FAISS index", lambda: section_index(c))]
        for title, step in steps:
            t0 = time.perf_counter()
            log(f"{title} ...")
            try:
                body = step()
            except Exception as e:
                failed.append(title)
                body = [f"FAILED: {type(e).__name__}: {e}", "", "```", traceback.format_exc().strip()[-1500:], "```"]
            print(f"## {title}\n")
            print("\n".join(body))
            print(f"\n({time.perf_counter() - t0:.1f} s)\n", flush=True)
    print(f"Total: {time.perf_counter() - start:.1f} s; steps failed: {', '.join(failed) or 'none'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
